// Scalar uniform-quantization primitives shared by the CPU kernels, the CUDA kernels and the
// integer runtime. Plain C++ (no ATen); callable from device code.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define QCNN_HOST_DEVICE __host__ __device__
#else
#define QCNN_HOST_DEVICE
#endif

namespace qcnn {
namespace core {

// Round half to even under the default floating-point environment (IEEE round-to-nearest-even),
// the rounding of torch.fake_quantize_* and of x86/ARM vector rounding instructions.
QCNN_HOST_DEVICE inline float round_half_even(float x) { return nearbyintf(x); }
QCNN_HOST_DEVICE inline double round_half_even(double x) { return nearbyint(x); }

QCNN_HOST_DEVICE inline float clamp(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Quantization codes and their real values for a uniform affine grid: x ~ scale * (q - zero_point).
// The code is computed exactly as torch does: zero_point + nearbyint(x * inv_scale) in float with
// inv_scale = 1.0f / scale (a division would round differently at ties).
QCNN_HOST_DEVICE inline float unclamped_code(float x, float inv_scale, float zero_point) {
  return zero_point + round_half_even(x * inv_scale);
}

// True when x lies inside the representable range (the straight-through estimator passes the
// gradient there). NaN is never inside.
QCNN_HOST_DEVICE inline bool code_in_range(float code, float qmin, float qmax) {
  return code >= qmin && code <= qmax;
}

// Clamped code; NaN stays NaN so that a NaN input is visible in the output instead of being
// silently mapped to a grid point (torch maps it to qmin).
QCNN_HOST_DEVICE inline float quantize_code(float x, float inv_scale, float zero_point, float qmin, float qmax) {
  const float q = unclamped_code(x, inv_scale, zero_point);
  return q != q ? q : clamp(q, qmin, qmax);
}

QCNN_HOST_DEVICE inline float dequantize_code(float code, float scale, float zero_point) {
  return (code - zero_point) * scale;
}

QCNN_HOST_DEVICE inline float fake_quantize(float x, float scale, float inv_scale, float zero_point, float qmin,
                                            float qmax) {
  return dequantize_code(quantize_code(x, inv_scale, zero_point, qmin, qmax), scale, zero_point);
}

// LSQ (Esser et al. 2020, eq. 3) partial derivative of fake_quantize(x) with respect to the scale,
// and of the zero point, per element, before the grad scale factor:
//   inside the range:  d/ds = round(x/s) - x/s = (x_fq - x) / s,  d/dz = 0
//   clipped low/high:  d/ds = qmin - z or qmax - z,               d/dz = -s
struct LsqPartials {
  float d_scale;
  float d_zero_point;
};

QCNN_HOST_DEVICE inline LsqPartials lsq_partials(float x, float scale, float inv_scale, float zero_point, float qmin,
                                                 float qmax) {
  const float code = unclamped_code(x, inv_scale, zero_point);
  if (code < qmin) return {qmin - zero_point, -scale};
  if (code > qmax) return {qmax - zero_point, -scale};
  const float x_fq = dequantize_code(code, scale, zero_point);
  return {(x_fq - x) * inv_scale, 0.0f};
}

// Signed fixed-point Qm.n grid of Goyal et al.: `bits` total with one sign bit, symmetric narrow
// range, step 2^-frac_bits. frac_bits may be negative or exceed bits.
struct FixedPointGrid {
  float scale;
  float qmin;
  float qmax;
};

inline FixedPointGrid fixed_point_grid(int bits, int frac_bits) {
  const float qmax = static_cast<float>((int64_t{1} << (bits - 1)) - 1);
  return {std::ldexp(1.0f, -frac_bits), -qmax, qmax};
}

}  // namespace core
}  // namespace qcnn
