// Integer epilogues: requantization with fixed-point multipliers, residual add, pooling and
// input lookup on int32 activation codes. Layout is NCHW; "channels" is dim 1.
//
// Fixed-point requantization (docs/FORMAT.md, "Integer semantics"):
//   out = clamp(zp_out + rounding_shift(clamp32(in - zp_in) * multiplier + bias, shift), qmin, qmax)
// rounding_shift(v, s) = floor((v + 2^(s-1)) / 2^s) for s >= 1 (round half toward +infinity), v for s = 0.
// The real factor is multiplier * 2^-shift; the bias lives in the same (multiplied) domain, as int64.
#pragma once
#include <cstdint>

namespace qcnn {

inline int64_t rounding_shift(int64_t v, int shift) {
  // Arithmetic right shift of a signed value is floor division (guaranteed since C++20, and what
  // every supported compiler does in C++17).
  return shift == 0 ? v : (v + (int64_t{1} << (shift - 1))) >> shift;
}

inline int64_t clamp_to_int32(int64_t v) {
  return v < INT32_MIN ? INT32_MIN : (v > INT32_MAX ? INT32_MAX : v);
}

// Per-channel requantization. multiplier/shift/bias have `channels` entries (bias may be null),
// shift in [0, 62], |multiplier| < 2^31, |bias| <= 2^62.
void requantize(const int32_t* in, int64_t outer, int64_t channels, int64_t inner, int32_t in_zero_point,
                const int64_t* bias, const int32_t* multiplier, const int32_t* shift, int32_t out_zero_point,
                int32_t qmin, int32_t qmax, int32_t* out, int num_threads);

// out = clamp(zo + rounding_shift((a - za) * ma + (b - zb) * mb, shift), qmin, qmax), |ma|,|mb| < 2^30.
void add_requant(const int32_t* a, int32_t a_zero_point, int32_t a_multiplier, const int32_t* b, int32_t b_zero_point,
                 int32_t b_multiplier, int shift, int32_t out_zero_point, int32_t qmin, int32_t qmax, int64_t count,
                 int32_t* out, int num_threads);

// Float logits of the last layer: out = acc * scale[c] + bias[c] (outside every inner loop).
void dequantize_channels(const int32_t* acc, int64_t outer, int64_t channels, int64_t inner, const float* scale,
                         const float* bias, float* out);

// Max pooling on codes (max commutes with monotone quantization); padded positions are skipped.
void max_pool2d_int(const int32_t* x, int64_t n, int64_t c, int64_t h, int64_t w, int kh, int kw, int sh, int sw,
                    int ph, int pw, int32_t* out, int num_threads);

// Average pooling on codes without padding: out = floor((sum + count/2) / count), i.e. the mean
// rounded half toward +infinity. Global average pooling is kh = h, kw = w.
void avg_pool2d_int(const int32_t* x, int64_t n, int64_t c, int64_t h, int64_t w, int kh, int kw, int sh, int sw,
                    int32_t* out, int num_threads);

// First-layer input codes from raw uint8 pixels through a per-channel 256-entry table lut[c*256 + p].
void lookup_pixels(const uint8_t* pixels, int64_t n, int64_t c, int64_t hw, const int32_t* lut, int32_t* out);

// Output size of a pooling/convolution window; throws std::invalid_argument when it would be < 1.
int64_t window_output_size(int64_t in, int kernel, int stride, int pad, const char* what);

}  // namespace qcnn
