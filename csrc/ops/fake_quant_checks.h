// Argument checks shared by every backend of the fake-quant ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace qcnn {
namespace ops {

// A tensor seen as [outer, channels, inner] around the quantization axis (channels == 1 for
// per-tensor quantization).
struct ChannelLayout {
  int64_t outer = 1;
  int64_t channels = 1;
  int64_t inner = 1;
};

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// `axis` as a dimension index of x (negative counts from the end), checked.
inline int64_t resolve_axis(const at::Tensor& x, int64_t axis) {
  const int64_t dim = x.dim();
  TORCH_CHECK(dim > 0 && axis >= -dim && axis < dim, "qcnn: axis=", axis, " is out of range for an input with ", dim,
              " dimensions");
  return axis < 0 ? axis + dim : axis;
}

// Resolves `axis` (None = per tensor) against x and checks the parameter tensors' sizes.
inline ChannelLayout channel_layout(const at::Tensor& x, c10::optional<int64_t> axis, int64_t params_numel,
                                    const char* params_name) {
  ChannelLayout layout;
  if (!axis.has_value()) {
    TORCH_CHECK(params_numel == 1, "qcnn: per-tensor quantization (axis=None) needs one ", params_name,
                " value, got ", params_numel);
    layout.inner = x.numel();
    return layout;
  }
  const int64_t a = *axis;
  const int64_t ax = resolve_axis(x, a);
  const int64_t dim = x.dim();
  for (int64_t d = 0; d < ax; ++d) layout.outer *= x.size(d);
  layout.channels = x.size(ax);
  for (int64_t d = ax + 1; d < dim; ++d) layout.inner *= x.size(d);
  TORCH_CHECK(params_numel == layout.channels, "qcnn: ", params_name, " has ", params_numel,
              " elements but the input has ", layout.channels, " channels along axis ", a);
  return layout;
}

// The binary ops' checks and layout: w floating point, one alpha per channel along `axis` (None: one per tensor).
inline ChannelLayout binary_layout(const at::Tensor& w, c10::optional<int64_t> axis) {
  TORCH_CHECK(is_float_dtype(w.scalar_type()), "qcnn: w must be float32, float16 or bfloat16, got ", w.scalar_type());
  const int64_t channels = axis.has_value() ? w.size(resolve_axis(w, *axis)) : 1;
  return channel_layout(w, axis, channels, "w");
}

inline void check_qrange(int64_t qmin, int64_t qmax) {
  TORCH_CHECK(qmin < qmax, "qcnn: qmin (", qmin, ") must be smaller than qmax (", qmax, ")");
  TORCH_CHECK(qmin >= -65536 && qmax <= 65535 && qmax - qmin <= 65535, "qcnn: [qmin, qmax] = [", qmin, ", ", qmax,
              "] needs more than 16 bits");
}

inline void check_fake_quant_args(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                                  int64_t qmin, int64_t qmax) {
  TORCH_CHECK(is_float_dtype(x.scalar_type()), "qcnn: x must be float32, float16 or bfloat16, got ",
              x.scalar_type());
  TORCH_CHECK(scale.scalar_type() == at::kFloat, "qcnn: scale must be float32, got ", scale.scalar_type());
  TORCH_CHECK(zero_point.scalar_type() == at::kInt || zero_point.scalar_type() == at::kFloat,
              "qcnn: zero_point must be int32 or float32, got ", zero_point.scalar_type());
  TORCH_CHECK(scale.dim() <= 1 && zero_point.dim() <= 1, "qcnn: scale and zero_point must be 0-d or 1-d tensors");
  TORCH_CHECK(scale.numel() == zero_point.numel(), "qcnn: scale has ", scale.numel(), " elements but zero_point has ",
              zero_point.numel());
  TORCH_CHECK(scale.device() == x.device() && zero_point.device() == x.device(),
              "qcnn: x, scale and zero_point must be on one device (x on ", x.device(), ", scale on ", scale.device(),
              ", zero_point on ", zero_point.device(), ")");
  check_qrange(qmin, qmax);
}

}  // namespace ops
}  // namespace qcnn
