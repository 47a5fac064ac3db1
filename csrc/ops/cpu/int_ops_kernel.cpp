// CPU kernels of the weight-index coding ops: argument checks, then the torch-free csrc/core code.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

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

// values: uint8 for bits <= 8, int32 in [0, 2^bits) for bits <= 16 (torch has no uint16 arithmetic).
at::Tensor pack_bits_cpu(const at::Tensor& values, int64_t bits) {
  const bool wide = values.scalar_type() == at::kInt;
  TORCH_CHECK(wide || values.scalar_type() == at::kByte, "values must be uint8 (bits <= 8) or int32 (bits <= 16), got ",
              values.scalar_type());
  TORCH_CHECK(bits >= 1 && bits <= (wide ? kMaxPackedBits : 8), "bits must be in [1, ", wide ? kMaxPackedBits : 8,
              "] for ", values.scalar_type(), " values, got ", bits);
  auto v = values.contiguous();
  auto out = at::empty({packed_size(v.numel(), static_cast<int>(bits))}, v.options().dtype(at::kByte));
  guarded("pack_bits", [&] {
    if (!wide) {
      pack_bits(v.data_ptr<uint8_t>(), v.numel(), static_cast<int>(bits), out.data_ptr<uint8_t>());
      return 0;
    }
    const int32_t* src = v.data_ptr<int32_t>();
    std::vector<uint16_t> narrow(static_cast<size_t>(v.numel()));
    for (int64_t i = 0; i < v.numel(); ++i) {
      if (src[i] < 0 || src[i] >= (int32_t{1} << bits))
        throw std::invalid_argument("value " + std::to_string(src[i]) + " at index " + std::to_string(i) +
                                    " does not fit in " + std::to_string(bits) + " bits");
      narrow[static_cast<size_t>(i)] = static_cast<uint16_t>(src[i]);
    }
    pack_bits(narrow.data(), v.numel(), static_cast<int>(bits), out.data_ptr<uint8_t>());
    return 0;
  });
  return out;
}

// uint8 values for bits <= 8, int32 for wider ones.
at::Tensor unpack_bits_cpu(const at::Tensor& packed, int64_t bits, int64_t count) {
  check_dtype(packed, at::kByte, "packed");
  TORCH_CHECK(bits >= 1 && bits <= kMaxPackedBits, "bits must be in [1, ", kMaxPackedBits, "], got ", bits);
  TORCH_CHECK(count >= 0, "count must be >= 0, got ", count);
  TORCH_CHECK(packed.dim() == 1 && packed.numel() == packed_size(count, static_cast<int>(bits)), "packed must be 1-D with ",
              packed_size(count, static_cast<int>(bits)), " bytes for ", count, " values of ", bits, " bits, got ",
              packed.sizes());
  auto p = packed.contiguous();
  if (bits <= 8) {
    auto out = at::empty({count}, p.options());
    unpack_bits(p.data_ptr<uint8_t>(), count, static_cast<int>(bits), out.data_ptr<uint8_t>());
    return out;
  }
  std::vector<uint16_t> narrow(static_cast<size_t>(count));
  unpack_bits(p.data_ptr<uint8_t>(), count, static_cast<int>(bits), narrow.data());
  auto out = at::empty({count}, p.options().dtype(at::kInt));
  std::copy(narrow.begin(), narrow.end(), out.data_ptr<int32_t>());
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
