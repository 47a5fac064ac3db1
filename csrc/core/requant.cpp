#include "core/requant.h"

#include "core/avx2.h"
#include "core/eltwise_kernels.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace qcnn {

namespace {

// Calls f(typed pointer) for the storage of a code buffer.
template <typename F>
void with_input(const CodesIn& in, F&& f) {
  if (!with_vector_input(in, f)) throw std::invalid_argument("codes must be stored as U8 or I32");
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

void requantize_codes_scalar(CodesIn in, int64_t count, int32_t in_zero_point, int32_t multiplier, int shift,
                             int32_t out_zero_point, int32_t lo, int32_t hi, CodesOut out) {
  with_codes(in, out, [&](auto src, auto dst) {
    for (int64_t i = 0; i < count; ++i) {
      const int64_t x = int64_t{src[i]} + in.offset;
      const int64_t q = rounding_shift(clamp_to_int32(x - in_zero_point) * multiplier, shift) + out_zero_point;
      put(dst + i, std::clamp<int64_t>(q, lo, hi), out.offset);
    }
  });
}

void add_codes_scalar(CodesIn a, int32_t a_zero_point, int32_t a_multiplier, CodesIn b, int32_t b_zero_point,
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

void mul_codes_scalar(CodesIn a, int32_t a_zero_point, CodesIn b, int32_t b_zero_point, int64_t b_channels,
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

void clamp_codes_scalar(CodesIn in, int64_t count, int32_t lo, int32_t hi, CodesOut out) {
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

void gather_channels_nhwc(CodesIn in, int64_t pixels, int64_t in_channels, const int32_t* index, int64_t out_channels,
                          CodesOut out) {
  if (in.storage != out.storage || in.offset != out.offset)
    throw std::invalid_argument("gather_channels: input and output must share storage and offset");
  with_input(in, [&](auto src) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(src)>>;
    T* dst = static_cast<T*>(out.data);
    for (int64_t p = 0; p < pixels; ++p)
      for (int64_t c = 0; c < out_channels; ++c) dst[p * out_channels + c] = src[p * in_channels + index[c]];
  });
}

void lookup_codes_scalar(CodesIn in, int64_t count, const int32_t* table, int64_t table_size, int64_t input_min,
                         CodesOut out) {
  const int64_t base = int64_t{in.offset} - input_min;
  with_codes(in, out, [&](auto src, auto dst) {
    for (int64_t i = 0; i < count; ++i)
      put(dst + i, table[std::clamp<int64_t>(int64_t{src[i]} + base, 0, table_size - 1)], out.offset);
  });
}

void affine_codes_scalar(CodesIn in, int64_t count, int64_t channels, int32_t in_zero_point, const int32_t* multiplier,
                         const uint8_t* shift, const int64_t* bias, int32_t out_zero_point, int32_t lo, int32_t hi,
                         CodesOut out) {
  if (channels < 1 || count % channels) throw std::invalid_argument("affine: count must be a multiple of channels");
  // In __int128, exact for every int32 multiplier, int64 bias and shift: |v| < 2^63 + 2^62, and a shift beyond 126
  // rounds v to 0 as 126 does. In int64 the rounding sum v + 2^(s-1) passes 2^63 at shift 63, or at 62 with
  // multiplier INT32_MIN, for x * multiplier near 2^62 and bias near 2^61.
  with_codes(in, out, [&](auto src, auto dst) {
    for (int64_t i = 0; i < count; i += channels)
      for (int64_t ch = 0; ch < channels; ++ch) {
        const int64_t x = clamp_to_int32(int64_t{src[i + ch]} + in.offset - in_zero_point);
        const __int128 v = static_cast<__int128>(x) * multiplier[ch] + bias[ch];
        const __int128 q = rounding_shift(v, std::min<int>(shift[ch], 126)) + out_zero_point;
        put(dst + i + ch, q < lo ? int64_t{lo} : (q > hi ? int64_t{hi} : static_cast<int64_t>(q)), out.offset);
      }
  });
}

void sum_positions_scalar(CodesIn in, int64_t positions, int64_t channels, InputRange /*stored*/, int64_t* sums) {
  with_input(in, [&](auto src) {
    for (int64_t p = 0; p < positions; ++p)
      for (int64_t ch = 0; ch < channels; ++ch) sums[ch] += src[p * channels + ch];
  });
}

void max_positions_scalar(CodesIn in, int64_t positions, int64_t channels, int32_t* maxima) {
  with_input(in, [&](auto src) {
    for (int64_t p = 0; p < positions; ++p)
      for (int64_t ch = 0; ch < channels; ++ch) maxima[ch] = std::max<int32_t>(maxima[ch], src[p * channels + ch]);
  });
}

namespace {
// The vector table of `isa`, or nullptr for the scalar path.
const EltwiseKernels* vector_kernels(Isa isa) {
  switch (isa) {
    case Isa::Avx2: return eltwise_kernels_avx2();
    case Isa::Avx512Vnni:
    case Isa::Amx: return eltwise_kernels_avx512();
    case Isa::Neon:
    case Isa::NeonDot:
    case Isa::I8mm: return eltwise_kernels_neon();
    default: return nullptr;
  }
}
}  // namespace

void requantize_codes(Isa isa, CodesIn in, int64_t count, int32_t in_zero_point, int32_t multiplier, int shift,
                      int32_t out_zero_point, int32_t lo, int32_t hi, CodesOut out) {
  const EltwiseKernels* k = vector_kernels(isa);
  (k ? k->requantize : requantize_codes_scalar)(in, count, in_zero_point, multiplier, shift, out_zero_point, lo, hi,
                                                 out);
}

void add_codes(Isa isa, CodesIn a, int32_t a_zero_point, int32_t a_multiplier, CodesIn b, int32_t b_zero_point,
               int32_t b_multiplier, int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count,
               CodesOut out, InputRange a_range, InputRange b_range) {
  if (const EltwiseKernels* k = vector_kernels(isa))
    return k->add(a, a_zero_point, a_multiplier, b, b_zero_point, b_multiplier, shift, out_zero_point, lo, hi, count,
                  out, a_range, b_range);
  add_codes_scalar(a, a_zero_point, a_multiplier, b, b_zero_point, b_multiplier, shift, out_zero_point, lo, hi, count,
                   out);
}

bool add_fits_int32(InputRange a_range, int32_t a_multiplier, InputRange b_range, int32_t b_multiplier, int shift,
                    int32_t out_zero_point) {
  if (shift < 0 || shift > 30) return false;
  auto reach = [](InputRange r, int32_t m) {
    return static_cast<__int128>(std::max(std::abs(r.lo), std::abs(r.hi))) * std::abs(int64_t{m});
  };
  // |v| + half + 1 bounds every sum before the shift; |RS(v)| <= that / 2^shift + 1.
  const __int128 v = reach(a_range, a_multiplier) + reach(b_range, b_multiplier) + (int64_t{1} << shift);
  return v <= INT32_MAX && (v >> shift) + 1 + std::abs(int64_t{out_zero_point}) <= INT32_MAX;
}

namespace {
__int128 floor_div(__int128 a, int64_t b) {
  const __int128 q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}
bool in_int32(__int128 v) { return v >= INT32_MIN && v <= INT32_MAX; }
}  // namespace

bool tie_free_requant(InputRange x, int32_t multiplier, int64_t bias, int shift, int32_t out_zero_point, int32_t lo,
                      int32_t hi, int32_t out_offset, TieFreeRequant* t) {
  if (multiplier == 0 || shift < 0 || shift > 62 || lo > hi || x.lo > x.hi || !in_int32(x.lo) || !in_int32(x.hi))
    return false;
  const int64_t m = multiplier;
  // x * m + bias >= up gives RS >= hi - zo + 1, x * m + bias <= down gives RS <= lo - zo - 1: saturated either way.
  const __int128 scale = static_cast<__int128>(1) << shift;  // times, not <<: the bounds may be negative
  const __int128 up = (static_cast<__int128>(int64_t{hi} - out_zero_point) + 1) * scale - bias;
  const __int128 down = (static_cast<__int128>(int64_t{lo} - out_zero_point) - 1) * scale - bias;
  const __int128 x_lo = std::max<__int128>(x.lo, floor_div(m > 0 ? down : up, m));
  const __int128 x_hi = std::min<__int128>(x.hi, -floor_div(-(m > 0 ? up : down), m));
  if (x_lo > x_hi) return false;
  const int64_t half = shift == 0 ? 0 : int64_t{1} << (shift - 1);
  if (shift > 0) {
    // A tie is x * m + bias = 2^(s-1) mod 2^s. With m = 2^t o (o odd): none unless 2^t divides c = 2^(s-1) - bias
    // (mod 2^s), and then exactly the x = (c / 2^t) o^-1 mod 2^(s-t) (for t >= s: none unless c = 0, then all).
    const int t_twos = __builtin_ctzll(static_cast<uint64_t>(m < 0 ? -m : m));
    const uint64_t mod_mask = (uint64_t{1} << shift) - 1;
    const uint64_t c = (static_cast<uint64_t>(half) - static_cast<uint64_t>(bias)) & mod_mask;
    if (t_twos >= shift) {
      if (c == 0) return false;
    } else if ((c & ((uint64_t{1} << t_twos) - 1)) == 0) {
      const uint64_t odd = static_cast<uint64_t>(m) >> t_twos;  // o mod 2^64 (m < 0: the two's complement)
      uint64_t inverse = odd;                                   // Newton: each step doubles the correct low bits
      for (int i = 0; i < 6; ++i) inverse *= 2 - odd * inverse;
      const int period_bits = shift - t_twos;
      const uint64_t period_mask = (uint64_t{1} << period_bits) - 1;
      const int64_t residue = static_cast<int64_t>(((c >> t_twos) * inverse) & period_mask);
      // the first x >= x_lo in the residue class
      const __int128 first = x_lo + ((residue - static_cast<__int128>(x_lo)) % (__int128{1} << period_bits) +
                                     (__int128{1} << period_bits)) % (__int128{1} << period_bits);
      if (first <= x_hi) return false;
    }
  }
  // Every step of (x * m + bias + half) >> shift in int64, the result and the int32 lanes' values in int32.
  const __int128 v_a = x_lo * m + bias + half, v_b = x_hi * m + bias + half;
  if (v_a < INT64_MIN || v_a > INT64_MAX || v_b < INT64_MIN || v_b > INT64_MAX) return false;
  const int64_t r_a = static_cast<int64_t>(v_a) >> shift, r_b = static_cast<int64_t>(v_b) >> shift;
  const __int128 out_add = int64_t{out_zero_point} - out_offset;
  if (!in_int32(r_a) || !in_int32(r_b) || !in_int32(std::min(r_a, r_b) + out_add) ||
      !in_int32(std::max(r_a, r_b) + out_add) || !in_int32(int64_t{lo} - out_offset) || !in_int32(int64_t{hi} - out_offset))
    return false;
  *t = {static_cast<int32_t>(x_lo), static_cast<int32_t>(x_hi), bias + half, static_cast<int32_t>(out_add),
        static_cast<int32_t>(int64_t{lo} - out_offset), static_cast<int32_t>(int64_t{hi} - out_offset)};
  return true;
}

void mul_codes(Isa isa, CodesIn a, int32_t a_zero_point, CodesIn b, int32_t b_zero_point, int64_t b_channels,
               int32_t multiplier, int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count,
               CodesOut out) {
  const EltwiseKernels* k = vector_kernels(isa);
  (k ? k->mul : mul_codes_scalar)(a, a_zero_point, b, b_zero_point, b_channels, multiplier, shift, out_zero_point, lo,
                                  hi, count, out);
}

void clamp_codes(Isa isa, CodesIn in, int64_t count, int32_t lo, int32_t hi, CodesOut out) {
  const EltwiseKernels* k = vector_kernels(isa);
  (k ? k->clamp : clamp_codes_scalar)(in, count, lo, hi, out);
}

void lookup_codes(Isa isa, CodesIn in, int64_t count, const int32_t* table, int64_t table_size, int64_t input_min,
                  CodesOut out) {
  if (table_size < 1 || table_size > 65536) throw std::invalid_argument("lookup: table size must be in [1, 65536]");
  const EltwiseKernels* k = vector_kernels(isa);
  (k ? k->lookup : lookup_codes_scalar)(in, count, table, table_size, input_min, out);
}

void affine_codes(Isa isa, CodesIn in, int64_t count, int64_t channels, int32_t in_zero_point,
                  const int32_t* multiplier, const uint8_t* shift, const int64_t* bias, int32_t out_zero_point,
                  int32_t lo, int32_t hi, CodesOut out) {
  const EltwiseKernels* k = vector_kernels(isa);
  (k ? k->affine : affine_codes_scalar)(in, count, channels, in_zero_point, multiplier, shift, bias, out_zero_point,
                                        lo, hi, out);
}

void sum_positions(Isa isa, CodesIn in, int64_t positions, int64_t channels, InputRange stored, int64_t* sums) {
  const EltwiseKernels* k = vector_kernels(isa);
  (k ? k->sum_positions : sum_positions_scalar)(in, positions, channels, stored, sums);
}

void max_positions(Isa isa, CodesIn in, int64_t positions, int64_t channels, int32_t* maxima) {
  const EltwiseKernels* k = vector_kernels(isa);
  (k ? k->max_positions : max_positions_scalar)(in, positions, channels, maxima);
}

PoolAxis pool_axis(int64_t in, int kernel, int stride, int pad, bool ceil_mode, bool count_include_pad,
                   const char* what) {
  if (kernel < 1 || stride < 1 || pad < 0)
    throw std::invalid_argument(std::string(what) + ": kernel and stride must be >= 1 and padding >= 0");
  if (2 * int64_t{pad} > kernel) throw std::invalid_argument(std::string(what) + ": padding must be at most half the kernel");
  if (in < 1 || in + 2 * int64_t{pad} < kernel)
    throw std::invalid_argument(std::string(what) + ": window " + std::to_string(kernel) + " larger than padded input " +
                                std::to_string(in + 2 * int64_t{pad}));
  const int64_t span = in + 2 * int64_t{pad} - kernel;
  int64_t out = ceil_mode ? (span + stride - 1) / stride + 1 : span / stride + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  PoolAxis axis;
  for (int64_t i = 0; i < out; ++i) {
    const int64_t start = i * stride - pad, stop = std::min<int64_t>(start + kernel, in + pad);
    const int64_t begin = std::max<int64_t>(start, 0), end = std::min<int64_t>(stop, in);
    axis.begin.push_back(begin);
    axis.end.push_back(end);
    axis.divisor.push_back(count_include_pad ? stop - start : end - begin);
  }
  return axis;
}

PoolAxis adaptive_pool_axis(int64_t in, int64_t out, const char* what) {
  if (in < 1 || out < 1 || in > (int64_t{1} << 31) || out > (int64_t{1} << 31))
    throw std::invalid_argument(std::string(what) + ": adaptive pooling from " + std::to_string(in) + " to " +
                                std::to_string(out) + " cells needs both in [1, 2^31]");
  PoolAxis axis;
  for (int64_t i = 0; i < out; ++i) {
    const int64_t begin = i * in / out, end = ((i + 1) * in + out - 1) / out;
    axis.begin.push_back(begin);
    axis.end.push_back(end);
    axis.divisor.push_back(end - begin);
  }
  return axis;
}

namespace {
// d = max(d, s) over c codes (distinct buffers). uint8 in 16- and 8-byte steps (SSE2, every x86-64): the codes of
// a pixel are often 24 or 48 long, where the compiler's loop would leave a scalar tail of 8 or 16.
template <typename T>
void max_into(T* __restrict d, const T* __restrict s, int64_t c) {
  int64_t ch = 0;
#ifdef QCNN_X86
  if constexpr (std::is_same_v<T, uint8_t>) {
    for (; ch + 16 <= c; ch += 16)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(d + ch),
                       _mm_max_epu8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(d + ch)),
                                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + ch))));
    if (ch + 8 <= c) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(d + ch),
                       _mm_max_epu8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(d + ch)),
                                    _mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + ch))));
      ch += 8;
    }
  }
#endif
  for (; ch < c; ++ch) d[ch] = std::max(d[ch], s[ch]);
}
}  // namespace

void pool_nhwc(Isa isa, CodesIn in, InputRange stored, int64_t w, int64_t c, const PoolAxis& rows,
               const PoolAxis& cols, bool max, int64_t pad_code, CodesOut out, int64_t row_begin, int64_t row_end, ThreadScratch& scratch) {
  if (in.storage != out.storage || in.offset != out.offset)
    throw std::invalid_argument("pool: input and output must share storage and offset");
  if (row_begin < 0 || row_end > rows.size() || row_begin > row_end)
    throw std::invalid_argument("pool: output rows out of range");
  const int64_t ow = cols.size();
  with_input(in, [&](auto src) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(src)>>;
    T* dst = static_cast<T*>(out.data);
    if (ow == 0) return;
    if (max) {
      // Separable: the max over a window's rows first, along whole rows (long vector runs), then over its
      // columns; each cell is read once per window row instead of once per window.
      const int64_t first = cols.begin[0] * c, span = (cols.end[ow - 1] - cols.begin[0]) * c;
      // int64 units: room for `span` values of any code type
      scratch.pool_columns.resize(static_cast<size_t>((span * int64_t{sizeof(T)} + 7) / 8));
      T* v = reinterpret_cast<T*>(scratch.pool_columns.data());  // v[x * c + ch - first] for the columns the windows cover
      for (int64_t oy = row_begin; oy < row_end; ++oy) {
        const int64_t y0 = rows.begin[oy], y1 = rows.end[oy];
        std::copy(src + y0 * w * c + first, src + y0 * w * c + first + span, v);
        for (int64_t yy = y0 + 1; yy < y1; ++yy) max_into(v, src + yy * w * c + first, span);
        for (int64_t ox = 0; ox < ow; ++ox) {
          const int64_t x0 = cols.begin[ox], x1 = cols.end[ox];
          T* d = dst + (oy * ow + ox) * c;
          std::copy(v + x0 * c - first, v + (x0 + 1) * c - first, d);
          for (int64_t xx = x0 + 1; xx < x1; ++xx) max_into(d, v + xx * c - first, c);
        }
      }
      return;
    }
    std::vector<int64_t>& sum = scratch.pool_sums;
    sum.resize(static_cast<size_t>(c));
    for (int64_t oy = row_begin; oy < row_end; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox) {
        const int64_t y0 = rows.begin[oy], y1 = rows.end[oy], x0 = cols.begin[ox], x1 = cols.end[ox];
        std::fill(sum.begin(), sum.end(), 0);
        for (int64_t yy = y0; yy < y1; ++yy)
          sum_positions(isa, {src + (yy * w + x0) * c, in.storage, in.offset}, x1 - x0, c, stored, sum.data());
        const int64_t n = rows.divisor[oy] * cols.divisor[ox];
        const int64_t padding = (n - (y1 - y0) * (x1 - x0)) * (pad_code - in.offset);
        T* d = dst + (oy * ow + ox) * c;
        for (int64_t ch = 0; ch < c; ++ch) d[ch] = static_cast<T>(rounded_mean(sum[ch] + padding, n));
      }
  });
}

void lookup_pixels_nhwc(const uint8_t* pixels, int64_t c, int64_t hw, const int32_t* lut, CodesOut out, int64_t begin,
                        int64_t end) {
  if (begin < 0 || end > hw || begin > end) throw std::invalid_argument("lookup_pixels: positions out of range");
  with_output(out, [&](auto dst) {
    for (int64_t ch = 0; ch < c; ++ch) {
      const int32_t* table = lut + ch * 256;
      const uint8_t* plane = pixels + ch * hw;
      for (int64_t i = begin; i < end; ++i) put(dst + i * c + ch, table[plane[i]], out.offset);
    }
  });
}

}  // namespace qcnn
