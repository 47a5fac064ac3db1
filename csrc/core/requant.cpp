#include "core/requant.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace qcnn {

namespace {

// Calls f(typed pointer) for the storage of a code buffer.
template <typename F>
void with_input(const CodesIn& in, F&& f) {
  if (in.storage == Storage::U8)
    f(static_cast<const uint8_t*>(in.data));
  else if (in.storage == Storage::I32)
    f(static_cast<const int32_t*>(in.data));
  else
    throw std::invalid_argument("codes must be stored as U8 or I32");
}

template <typename F>
void with_output(const CodesOut& out, F&& f) {
  if (out.storage == Storage::U8)
    f(static_cast<uint8_t*>(out.data));
  else if (out.storage == Storage::I32)
    f(static_cast<int32_t*>(out.data));
  else
    throw std::invalid_argument("codes must be stored as U8 or I32");
}

template <typename F>
void with_codes(const CodesIn& in, const CodesOut& out, F&& f) {
  with_input(in, [&](auto src) { with_output(out, [&](auto dst) { f(src, dst); }); });
}

template <typename T>
inline void put(T* dst, int64_t code, int32_t offset) {
  *dst = static_cast<T>(code - offset);
}

}  // namespace

void requantize_codes(CodesIn in, int64_t count, int32_t in_zero_point, int32_t multiplier, int shift,
                      int32_t out_zero_point, int32_t lo, int32_t hi, CodesOut out) {
  with_codes(in, out, [&](auto src, auto dst) {
    for (int64_t i = 0; i < count; ++i) {
      const int64_t x = int64_t{src[i]} + in.offset;
      const int64_t q = rounding_shift(clamp_to_int32(x - in_zero_point) * multiplier, shift) + out_zero_point;
      put(dst + i, std::clamp<int64_t>(q, lo, hi), out.offset);
    }
  });
}

void add_codes(CodesIn a, int32_t a_zero_point, int32_t a_multiplier, CodesIn b, int32_t b_zero_point,
               int32_t b_multiplier, int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count,
               CodesOut out) {
  with_codes(a, out, [&](auto sa, auto dst) {
    with_input(b, [&](auto sb) {
      for (int64_t i = 0; i < count; ++i) {
        const int64_t va = clamp_to_int32(int64_t{sa[i]} + a.offset - a_zero_point) * a_multiplier;
        const int64_t vb = clamp_to_int32(int64_t{sb[i]} + b.offset - b_zero_point) * b_multiplier;
        const int64_t q = rounding_shift(va + vb, shift) + out_zero_point;
        put(dst + i, std::clamp<int64_t>(q, lo, hi), out.offset);
      }
    });
  });
}

void mul_codes(CodesIn a, int32_t a_zero_point, CodesIn b, int32_t b_zero_point, int64_t b_channels,
               int32_t multiplier, int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count,
               CodesOut out) {
  with_codes(a, out, [&](auto sa, auto dst) {
    with_input(b, [&](auto sb) {
      for (int64_t i = 0; i < count; ++i) {
        const int64_t j = b_channels > 0 ? i % b_channels : i;
        const int64_t product = (int64_t{sa[i]} + a.offset - a_zero_point) * (int64_t{sb[j]} + b.offset - b_zero_point);
        const int64_t q = rounding_shift(product * multiplier, shift) + out_zero_point;
        put(dst + i, std::clamp<int64_t>(q, lo, hi), out.offset);
      }
    });
  });
}

void clamp_codes(CodesIn in, int64_t count, int32_t lo, int32_t hi, CodesOut out) {
  with_codes(in, out, [&](auto src, auto dst) {
    for (int64_t i = 0; i < count; ++i)
      put(dst + i, std::clamp<int64_t>(int64_t{src[i]} + in.offset, lo, hi), out.offset);
  });
}

void concat_nhwc(const std::vector<CodesIn>& inputs, const std::vector<int64_t>& channels, int64_t pixels,
                 CodesOut out) {
  if (inputs.size() != channels.size()) throw std::invalid_argument("concat: one channel count per input");
  int64_t total = 0;
  for (int64_t c : channels) total += c;
  int64_t offset = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const int64_t c = channels[i];
    with_input(inputs[i], [&](auto src) {
      with_output(out, [&](auto dst) {
        for (int64_t p = 0; p < pixels; ++p)
          for (int64_t k = 0; k < c; ++k)
            put(dst + p * total + offset + k, int64_t{src[p * c + k]} + inputs[i].offset, out.offset);
      });
    });
    offset += c;
  }
}

void lookup_codes(CodesIn in, int64_t count, const int32_t* table, int64_t input_min, CodesOut out) {
  const int64_t base = int64_t{in.offset} - input_min;
  with_codes(in, out, [&](auto src, auto dst) {
    for (int64_t i = 0; i < count; ++i) put(dst + i, table[int64_t{src[i]} + base], out.offset);
  });
}

void max_pool_nhwc(CodesIn in, int64_t h, int64_t w, int64_t c, int kh, int kw, int sh, int sw, int ph, int pw,
                   int64_t oh, int64_t ow, CodesOut out) {
  if (in.storage != out.storage || in.offset != out.offset)
    throw std::invalid_argument("max_pool: input and output must share storage and offset");
  with_input(in, [&](auto src) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(src)>>;
    T* dst = static_cast<T*>(out.data);
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox) {
        const int64_t y0 = std::max<int64_t>(0, oy * sh - ph), y1 = std::min<int64_t>(h, oy * sh - ph + kh);
        const int64_t x0 = std::max<int64_t>(0, ox * sw - pw), x1 = std::min<int64_t>(w, ox * sw - pw + kw);
        T* d = dst + (oy * ow + ox) * c;
        std::copy(src + (y0 * w + x0) * c, src + (y0 * w + x0 + 1) * c, d);
        for (int64_t yy = y0; yy < y1; ++yy)
          for (int64_t xx = x0; xx < x1; ++xx) {
            const T* s = src + (yy * w + xx) * c;
            for (int64_t ch = 0; ch < c; ++ch) d[ch] = std::max(d[ch], s[ch]);
          }
      }
  });
}

void avg_pool_nhwc(CodesIn in, int64_t h, int64_t w, int64_t c, int kh, int kw, int sh, int sw, int64_t oh,
                   int64_t ow, CodesOut out) {
  if (in.storage != out.storage || in.offset != out.offset)
    throw std::invalid_argument("avg_pool: input and output must share storage and offset");
  (void)h;
  const int64_t area = int64_t{kh} * kw;
  std::vector<int64_t> sum(static_cast<size_t>(c));
  with_input(in, [&](auto src) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(src)>>;
    T* dst = static_cast<T*>(out.data);
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox) {
        std::fill(sum.begin(), sum.end(), 0);
        for (int64_t yy = oy * sh; yy < oy * sh + kh; ++yy)
          for (int64_t xx = ox * sw; xx < ox * sw + kw; ++xx) {
            const auto* s = src + (yy * w + xx) * c;
            for (int64_t ch = 0; ch < c; ++ch) sum[ch] += s[ch];
          }
        auto* d = dst + (oy * ow + ox) * c;
        for (int64_t ch = 0; ch < c; ++ch) {
          // floor((sum + area/2) / area), floor division also for negative sums.
          const int64_t num = sum[ch] + area / 2;
          int64_t q = num / area;
          if (num % area != 0 && num < 0) --q;
          d[ch] = static_cast<T>(q);
        }
      }
  });
}

void lookup_pixels_nhwc(const uint8_t* pixels, int64_t c, int64_t hw, const int32_t* lut, CodesOut out) {
  with_output(out, [&](auto dst) {
    for (int64_t ch = 0; ch < c; ++ch) {
      const int32_t* table = lut + ch * 256;
      const uint8_t* plane = pixels + ch * hw;
      for (int64_t i = 0; i < hw; ++i) put(dst + i * c + ch, table[plane[i]], out.offset);
    }
  });
}

int64_t window_output_size(int64_t in, int kernel, int stride, int pad, const char* what, bool ceil_mode) {
  if (kernel < 1 || stride < 1 || pad < 0)
    throw std::invalid_argument(std::string(what) + ": kernel and stride must be >= 1 and padding >= 0");
  if (in + 2 * int64_t{pad} < kernel)
    throw std::invalid_argument(std::string(what) + ": window " + std::to_string(kernel) + " larger than padded input " +
                                std::to_string(in + 2 * int64_t{pad}));
  const int64_t span = in + 2 * int64_t{pad} - kernel;
  if (!ceil_mode) return span / stride + 1;
  int64_t out = (span + stride - 1) / stride + 1;
  if ((out - 1) * stride >= in + pad) --out;
  return out;
}

}  // namespace qcnn
