#include "core/requant.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "core/threads.h"

namespace qcnn {

void requantize(const int32_t* in, int64_t outer, int64_t channels, int64_t inner, int32_t in_zero_point,
                const int64_t* bias, const int32_t* multiplier, const int32_t* shift, int32_t out_zero_point,
                int32_t qmin, int32_t qmax, int32_t* out, int num_threads) {
  const int64_t rows = outer * channels;
  QCNN_PARALLEL_FOR(num_threads, rows * inner > 16384)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t ch = r % channels;
    const int64_t m = multiplier[ch];
    const int s = shift[ch];
    const int64_t b = bias ? bias[ch] : 0;
    const int32_t* src = in + r * inner;
    int32_t* dst = out + r * inner;
    for (int64_t i = 0; i < inner; ++i) {
      const int64_t v = clamp_to_int32(int64_t{src[i]} - in_zero_point) * m + b;
      const int64_t q = rounding_shift(v, s) + out_zero_point;
      dst[i] = static_cast<int32_t>(std::min<int64_t>(std::max<int64_t>(q, qmin), qmax));
    }
  }
}

void add_requant(const int32_t* a, int32_t a_zero_point, int32_t a_multiplier, const int32_t* b, int32_t b_zero_point,
                 int32_t b_multiplier, int shift, int32_t out_zero_point, int32_t qmin, int32_t qmax, int64_t count,
                 int32_t* out, int num_threads) {
  QCNN_PARALLEL_FOR(num_threads, count > 65536)
  for (int64_t i = 0; i < count; ++i) {
    const int64_t v = clamp_to_int32(int64_t{a[i]} - a_zero_point) * a_multiplier +
                      clamp_to_int32(int64_t{b[i]} - b_zero_point) * b_multiplier;
    const int64_t q = rounding_shift(v, shift) + out_zero_point;
    out[i] = static_cast<int32_t>(std::min<int64_t>(std::max<int64_t>(q, qmin), qmax));
  }
}

void dequantize_channels(const int32_t* acc, int64_t outer, int64_t channels, int64_t inner, const float* scale,
                         const float* bias, float* out) {
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t ch = 0; ch < channels; ++ch) {
      const int64_t base = (o * channels + ch) * inner;
      for (int64_t i = 0; i < inner; ++i) out[base + i] = static_cast<float>(acc[base + i]) * scale[ch] + bias[ch];
    }
}

int64_t window_output_size(int64_t in, int kernel, int stride, int pad, const char* what) {
  if (kernel < 1 || stride < 1 || pad < 0)
    throw std::invalid_argument(std::string(what) + ": kernel and stride must be >= 1 and padding >= 0");
  const int64_t out = (in + 2 * pad - kernel) / stride + 1;
  if (in + 2 * pad < kernel || out < 1)
    throw std::invalid_argument(std::string(what) + ": window " + std::to_string(kernel) + " larger than padded input " +
                                std::to_string(in + 2 * pad));
  return out;
}

void max_pool2d_int(const int32_t* x, int64_t n, int64_t c, int64_t h, int64_t w, int kh, int kw, int sh, int sw,
                    int ph, int pw, int32_t* out, int num_threads) {
  const int64_t oh = window_output_size(h, kh, sh, ph, "max_pool2d");
  const int64_t ow = window_output_size(w, kw, sw, pw, "max_pool2d");
  if (ph * 2 > kh || pw * 2 > kw) throw std::invalid_argument("max_pool2d: padding must be at most half the kernel");
  QCNN_PARALLEL_FOR(num_threads, n * c * oh * ow > 16384)
  for (int64_t plane = 0; plane < n * c; ++plane) {
    const int32_t* src = x + plane * h * w;
    int32_t* dst = out + plane * oh * ow;
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox) {
        const int64_t y0 = std::max<int64_t>(0, oy * sh - ph), y1 = std::min<int64_t>(h, oy * sh - ph + kh);
        const int64_t x0 = std::max<int64_t>(0, ox * sw - pw), x1 = std::min<int64_t>(w, ox * sw - pw + kw);
        int32_t best = INT32_MIN;
        for (int64_t yy = y0; yy < y1; ++yy)
          for (int64_t xx = x0; xx < x1; ++xx) best = std::max(best, src[yy * w + xx]);
        dst[oy * ow + ox] = best;
      }
  }
}

void avg_pool2d_int(const int32_t* x, int64_t n, int64_t c, int64_t h, int64_t w, int kh, int kw, int sh, int sw,
                    int32_t* out, int num_threads) {
  const int64_t oh = window_output_size(h, kh, sh, 0, "avg_pool2d");
  const int64_t ow = window_output_size(w, kw, sw, 0, "avg_pool2d");
  const int64_t area = int64_t{kh} * kw;
  QCNN_PARALLEL_FOR(num_threads, n * c * h * w > 16384)
  for (int64_t plane = 0; plane < n * c; ++plane) {
    const int32_t* src = x + plane * h * w;
    int32_t* dst = out + plane * oh * ow;
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox) {
        int64_t sum = 0;
        for (int64_t yy = oy * sh; yy < oy * sh + kh; ++yy)
          for (int64_t xx = ox * sw; xx < ox * sw + kw; ++xx) sum += src[yy * w + xx];
        // floor((sum + area/2) / area) with floor division for negative sums.
        const int64_t num = sum + area / 2;
        int64_t q = num / area;
        if ((num % area != 0) && (num < 0)) --q;
        dst[oy * ow + ox] = static_cast<int32_t>(q);
      }
  }
}

void lookup_pixels(const uint8_t* pixels, int64_t n, int64_t c, int64_t hw, const int32_t* lut, int32_t* out) {
  for (int64_t img = 0; img < n; ++img)
    for (int64_t ch = 0; ch < c; ++ch) {
      const int32_t* table = lut + ch * 256;
      const int64_t base = (img * c + ch) * hw;
      for (int64_t i = 0; i < hw; ++i) out[base + i] = table[pixels[base + i]];
    }
}

}  // namespace qcnn
