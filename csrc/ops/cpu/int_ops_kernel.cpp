// CPU kernels of the integer-inference ops: argument checks, then the torch-free csrc/core code.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <stdexcept>

#include "core/bitpack.h"
#include "core/conv_int.h"
#include "core/huffman.h"
#include "core/requant.h"

namespace qcnn {
namespace {

void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
}

int threads() { return at::get_num_threads(); }

// Core functions throw std::invalid_argument; surface them as torch errors with the op name.
template <typename Fn>
auto guarded(const char* op, Fn fn) {
  try {
    return fn();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK(false, op, ": ", e.what());
  }
}

int32_t as_int32(int64_t v, const char* name) {
  TORCH_CHECK(v >= INT32_MIN && v <= INT32_MAX, name, " must fit int32, got ", v);
  return static_cast<int32_t>(v);
}

void check_pair(at::IntArrayRef v, const char* name, int64_t min) {
  TORCH_CHECK(v.size() == 2, name, " must have 2 elements");
  TORCH_CHECK(v[0] >= min && v[1] >= min && v[0] <= INT32_MAX && v[1] <= INT32_MAX, name, " entries must be >= ", min);
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

ConvShape conv_shape(const at::Tensor& x, int64_t m, int64_t kh, int64_t kw, at::IntArrayRef stride,
                     at::IntArrayRef padding) {
  check_dtype(x, at::kInt, "x");
  TORCH_CHECK(x.dim() == 4, "x must be 4-D [N, C, H, W], got ", x.sizes());
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  return guarded("int_conv2d", [&] {
    return make_conv_shape(x.size(0), x.size(1), x.size(2), x.size(3), m, static_cast<int>(kh), static_cast<int>(kw),
                           static_cast<int>(stride[0]), static_cast<int>(stride[1]), static_cast<int>(padding[0]),
                           static_cast<int>(padding[1]));
  });
}

at::Tensor int_conv2d_cpu(const at::Tensor& x, int64_t x_zero_point, const at::Tensor& weight, at::IntArrayRef stride,
                          at::IntArrayRef padding) {
  check_dtype(weight, at::kShort, "weight");
  TORCH_CHECK(weight.dim() == 4, "weight must be 4-D [M, C, kh, kw], got ", weight.sizes());
  TORCH_CHECK(x.dim() == 4 && weight.size(1) == x.size(1), "weight input channels (", weight.size(1),
              ") must equal x channels (", x.dim() == 4 ? x.size(1) : -1, ")");
  auto s = conv_shape(x, weight.size(0), weight.size(2), weight.size(3), stride, padding);
  const int32_t zp = as_int32(x_zero_point, "x_zero_point");
  auto xc = x.contiguous();
  auto wc = weight.contiguous();
  auto acc = at::empty({s.n, s.m, s.oh, s.ow}, x.options());
  conv2d_int(xc.data_ptr<int32_t>(), zp, wc.data_ptr<int16_t>(), s, acc.data_ptr<int32_t>(), threads());
  return acc;
}

at::Tensor int_conv2d_shared_cpu(const at::Tensor& x, int64_t x_zero_point, const at::Tensor& indices,
                                 const at::Tensor& codebook, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding) {
  check_dtype(indices, at::kByte, "indices");
  check_dtype(codebook, at::kInt, "codebook");
  check_pair(kernel_size, "kernel_size", 1);
  TORCH_CHECK(indices.dim() == 2, "indices must be 2-D [M, C*kh*kw], got ", indices.sizes());
  TORCH_CHECK(codebook.dim() == 2 && (codebook.size(0) == 1 || codebook.size(0) == indices.size(0)),
              "codebook must be [1, k] or [M, k], got ", codebook.sizes());
  auto s = conv_shape(x, indices.size(0), kernel_size[0], kernel_size[1], stride, padding);
  TORCH_CHECK(indices.size(1) == s.k(), "indices must have C*kh*kw = ", s.k(), " columns, got ", indices.size(1));
  const int32_t zp = as_int32(x_zero_point, "x_zero_point");
  auto ic = indices.contiguous();
  auto cc = codebook.contiguous();
  auto plan = guarded("int_conv2d_shared", [&] {
    return make_shared_weights(ic.data_ptr<uint8_t>(), cc.data_ptr<int32_t>(), cc.size(0),
                               static_cast<int>(cc.size(1)), s.m, s.k());
  });
  auto xc = x.contiguous();
  auto acc = at::empty({s.n, s.m, s.oh, s.ow}, x.options());
  conv2d_int_shared(xc.data_ptr<int32_t>(), zp, plan, s, acc.data_ptr<int32_t>(), threads());
  return acc;
}

at::Tensor int_requantize_cpu(const at::Tensor& x, int64_t x_zero_point, const c10::optional<at::Tensor>& bias,
                              const at::Tensor& multiplier, const at::Tensor& shift, int64_t zero_point, int64_t qmin,
                              int64_t qmax) {
  check_dtype(x, at::kInt, "x");
  check_dtype(multiplier, at::kInt, "multiplier");
  check_dtype(shift, at::kInt, "shift");
  TORCH_CHECK(x.dim() >= 1, "x must have at least 1 dimension");
  TORCH_CHECK(multiplier.dim() == 1 && shift.sizes() == multiplier.sizes(), "multiplier and shift must be 1-D of equal size");
  const int64_t channels = multiplier.numel();
  TORCH_CHECK(channels == 1 || (x.dim() >= 2 && x.size(1) == channels), "multiplier must have 1 entry or one per channel (dim 1 of x), got ",
              channels);
  TORCH_CHECK(qmin <= qmax, "qmin must be <= qmax");
  auto sh = shift.contiguous();
  for (int64_t i = 0; i < channels; ++i)
    TORCH_CHECK(sh.data_ptr<int32_t>()[i] >= 0 && sh.data_ptr<int32_t>()[i] <= 62, "shift entries must be in [0, 62]");
  at::Tensor b;
  if (bias.has_value()) {
    check_dtype(*bias, at::kLong, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == channels, "bias must be 1-D with ", channels, " entries");
    b = bias->contiguous();
    for (int64_t i = 0; i < channels; ++i)
      TORCH_CHECK(std::llabs(b.data_ptr<int64_t>()[i]) <= (int64_t{1} << 62), "bias entries must be within +-2^62");
  }
  auto xc = x.contiguous();
  const int64_t outer = channels == 1 ? 1 : x.size(0);
  const int64_t inner = channels == 1 ? x.numel() : x.numel() / (x.size(0) * channels);
  auto out = at::empty_like(xc);
  auto mc = multiplier.contiguous();
  requantize(xc.data_ptr<int32_t>(), outer, channels, inner, as_int32(x_zero_point, "x_zero_point"),
             b.defined() ? b.data_ptr<int64_t>() : nullptr, mc.data_ptr<int32_t>(), sh.data_ptr<int32_t>(),
             as_int32(zero_point, "zero_point"), as_int32(qmin, "qmin"), as_int32(qmax, "qmax"), out.data_ptr<int32_t>(),
             threads());
  return out;
}

at::Tensor int_add_cpu(const at::Tensor& a, int64_t a_zero_point, int64_t a_multiplier, const at::Tensor& b,
                       int64_t b_zero_point, int64_t b_multiplier, int64_t shift, int64_t zero_point, int64_t qmin,
                       int64_t qmax) {
  check_dtype(a, at::kInt, "a");
  check_dtype(b, at::kInt, "b");
  TORCH_CHECK(a.sizes() == b.sizes(), "a and b must have the same shape, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(std::llabs(a_multiplier) < (int64_t{1} << 30), "a_multiplier must be within +-2^30");
  TORCH_CHECK(std::llabs(b_multiplier) < (int64_t{1} << 30), "b_multiplier must be within +-2^30");
  TORCH_CHECK(shift >= 0 && shift <= 62, "shift must be in [0, 62]");
  TORCH_CHECK(qmin <= qmax, "qmin must be <= qmax");
  auto ac = a.contiguous();
  auto bc = b.contiguous();
  auto out = at::empty_like(ac);
  add_requant(ac.data_ptr<int32_t>(), as_int32(a_zero_point, "a_zero_point"), static_cast<int32_t>(a_multiplier),
              bc.data_ptr<int32_t>(), as_int32(b_zero_point, "b_zero_point"), static_cast<int32_t>(b_multiplier),
              static_cast<int>(shift), as_int32(zero_point, "zero_point"), as_int32(qmin, "qmin"), as_int32(qmax, "qmax"),
              ac.numel(), out.data_ptr<int32_t>(), threads());
  return out;
}

at::Tensor int_max_pool2d_cpu(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding) {
  check_dtype(x, at::kInt, "x");
  TORCH_CHECK(x.dim() == 4, "x must be 4-D [N, C, H, W], got ", x.sizes());
  check_pair(kernel_size, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  auto xc = x.contiguous();
  return guarded("int_max_pool2d", [&] {
    const int64_t oh = window_output_size(x.size(2), kernel_size[0], stride[0], padding[0], "int_max_pool2d");
    const int64_t ow = window_output_size(x.size(3), kernel_size[1], stride[1], padding[1], "int_max_pool2d");
    auto out = at::empty({x.size(0), x.size(1), oh, ow}, x.options());
    max_pool2d_int(xc.data_ptr<int32_t>(), x.size(0), x.size(1), x.size(2), x.size(3), kernel_size[0], kernel_size[1],
                   stride[0], stride[1], padding[0], padding[1], out.data_ptr<int32_t>(), threads());
    return out;
  });
}

at::Tensor int_avg_pool2d_cpu(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride) {
  check_dtype(x, at::kInt, "x");
  TORCH_CHECK(x.dim() == 4, "x must be 4-D [N, C, H, W], got ", x.sizes());
  check_pair(kernel_size, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  auto xc = x.contiguous();
  return guarded("int_avg_pool2d", [&] {
    const int64_t oh = window_output_size(x.size(2), kernel_size[0], stride[0], 0, "int_avg_pool2d");
    const int64_t ow = window_output_size(x.size(3), kernel_size[1], stride[1], 0, "int_avg_pool2d");
    auto out = at::empty({x.size(0), x.size(1), oh, ow}, x.options());
    avg_pool2d_int(xc.data_ptr<int32_t>(), x.size(0), x.size(1), x.size(2), x.size(3), kernel_size[0], kernel_size[1],
                   stride[0], stride[1], out.data_ptr<int32_t>(), threads());
    return out;
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(qcnn, CPU, m) {
  m.impl("pack_bits", &pack_bits_cpu);
  m.impl("unpack_bits", &unpack_bits_cpu);
  m.impl("huffman_code_lengths", &huffman_code_lengths_cpu);
  m.impl("huffman_encode", &huffman_encode_cpu);
  m.impl("huffman_decode", &huffman_decode_cpu);
  m.impl("int_conv2d", &int_conv2d_cpu);
  m.impl("int_conv2d_shared", &int_conv2d_shared_cpu);
  m.impl("int_requantize", &int_requantize_cpu);
  m.impl("int_add", &int_add_cpu);
  m.impl("int_max_pool2d", &int_max_pool2d_cpu);
  m.impl("int_avg_pool2d", &int_avg_pool2d_cpu);
}

}  // namespace qcnn
