// CPU kernels of the weight-index coding ops: argument checks, then the torch-free csrc/core code.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <stdexcept>

#include "core/bitpack.h"
#include "core/huffman.h"

namespace qcnn {
namespace {

void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
}

// Core functions throw std::invalid_argument; surface them as torch errors with the op name.
template <typename Fn>
auto guarded(const char* op, Fn fn) {
  try {
    return fn();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK(false, op, ": ", e.what());
  }
}

at::Tensor pack_bits_cpu(const at::Tensor& values, int64_t bits) {
  check_dtype(values, at::kByte, "values");
  TORCH_CHECK(bits >= 1 && bits <= 8, "bits must be in [1, 8], got ", bits);
  auto v = values.contiguous();
  auto out = at::empty({packed_size(v.numel(), static_cast<int>(bits))}, v.options());
  guarded("pack_bits", [&] {
    pack_bits(v.data_ptr<uint8_t>(), v.numel(), static_cast<int>(bits), out.data_ptr<uint8_t>());
    return 0;
  });
  return out;
}

at::Tensor unpack_bits_cpu(const at::Tensor& packed, int64_t bits, int64_t count) {
  check_dtype(packed, at::kByte, "packed");
  TORCH_CHECK(bits >= 1 && bits <= 8, "bits must be in [1, 8], got ", bits);
  TORCH_CHECK(count >= 0, "count must be >= 0, got ", count);
  TORCH_CHECK(packed.dim() == 1 && packed.numel() == packed_size(count, static_cast<int>(bits)), "packed must be 1-D with ",
              packed_size(count, static_cast<int>(bits)), " bytes for ", count, " values of ", bits, " bits, got ",
              packed.sizes());
  auto p = packed.contiguous();
  auto out = at::empty({count}, p.options());
  unpack_bits(p.data_ptr<uint8_t>(), count, static_cast<int>(bits), out.data_ptr<uint8_t>());
  return out;
}

at::Tensor huffman_code_lengths_cpu(const at::Tensor& counts, int64_t max_length) {
  check_dtype(counts, at::kLong, "counts");
  TORCH_CHECK(counts.dim() == 1 && counts.numel() >= 1 && counts.numel() <= 256, "counts must be 1-D with 1..256 entries");
  auto c = counts.contiguous();
  auto lengths = guarded("huffman_code_lengths", [&] {
    return huffman_code_lengths(c.data_ptr<int64_t>(), static_cast<int>(c.numel()), static_cast<int>(max_length));
  });
  auto out = at::empty({c.numel()}, c.options().dtype(at::kByte));
  std::copy(lengths.begin(), lengths.end(), out.data_ptr<uint8_t>());
  return out;
}

at::Tensor huffman_encode_cpu(const at::Tensor& values, const at::Tensor& code_lengths) {
  check_dtype(values, at::kByte, "values");
  check_dtype(code_lengths, at::kByte, "code_lengths");
  TORCH_CHECK(code_lengths.dim() == 1 && code_lengths.numel() >= 1 && code_lengths.numel() <= 256,
              "code_lengths must be 1-D with 1..256 entries");
  auto v = values.contiguous();
  auto l = code_lengths.contiguous();
  auto bytes = guarded("huffman_encode", [&] {
    return huffman_encode(v.data_ptr<uint8_t>(), v.numel(), l.data_ptr<uint8_t>(), static_cast<int>(l.numel()));
  });
  auto out = at::empty({static_cast<int64_t>(bytes.size())}, v.options());
  std::copy(bytes.begin(), bytes.end(), out.data_ptr<uint8_t>());
  return out;
}

at::Tensor huffman_decode_cpu(const at::Tensor& data, const at::Tensor& code_lengths, int64_t count) {
  check_dtype(data, at::kByte, "data");
  check_dtype(code_lengths, at::kByte, "code_lengths");
  TORCH_CHECK(data.dim() == 1, "data must be 1-D");
  TORCH_CHECK(code_lengths.dim() == 1 && code_lengths.numel() >= 1 && code_lengths.numel() <= 256,
              "code_lengths must be 1-D with 1..256 entries");
  TORCH_CHECK(count >= 0, "count must be >= 0, got ", count);
  auto d = data.contiguous();
  auto l = code_lengths.contiguous();
  auto out = at::empty({count}, d.options());
  guarded("huffman_decode", [&] {
    huffman_decode(d.data_ptr<uint8_t>(), d.numel(), l.data_ptr<uint8_t>(), static_cast<int>(l.numel()), count,
                   out.data_ptr<uint8_t>());
    return 0;
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qcnn, CPU, m) {
  m.impl("pack_bits", &pack_bits_cpu);
  m.impl("unpack_bits", &unpack_bits_cpu);
  m.impl("huffman_code_lengths", &huffman_code_lengths_cpu);
  m.impl("huffman_encode", &huffman_encode_cpu);
  m.impl("huffman_decode", &huffman_decode_cpu);
}

}  // namespace qcnn
