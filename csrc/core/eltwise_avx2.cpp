// AVX2 paths of the elementwise integer kernels (eltwise_kernels.h): 8 codes per step in int32 lanes, the
// products and the rounding shift in int64 lanes (vpmuldq on the even and the odd lanes), the last count % 8
// codes on the scalar loop.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/avx2.h"
#include "core/eltwise_drivers.h"

namespace qcnn {

#ifdef QCNN_X86
namespace {

QCNN_AVX2 inline __m256i load8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
QCNN_AVX2 inline __m256i load8(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// Stores 8 int32 lanes as the scalar cast does: the low byte of each, or all of it.
QCNN_AVX2 inline void store8(uint8_t* p, __m256i v) {
  const __m256i low_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                             0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i b = _mm256_shuffle_epi8(v, low_bytes);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p),
                   _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
}
QCNN_AVX2 inline void store8(int32_t* p, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }

// min(max(x, lo), hi) + add (ClampAdd).
struct ClampAdd256 {
  __m256i lo, hi, add;
};
QCNN_AVX2 inline ClampAdd256 clamp_add256(const ClampAdd& s) {
  return {_mm256_set1_epi32(s.lo), _mm256_set1_epi32(s.hi), _mm256_set1_epi32(s.add)};
}
QCNN_AVX2 inline __m256i clamp_add(__m256i x, const ClampAdd256& s) {
  return _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(x, s.lo), s.hi), s.add);
}

// clamp(RS(v, s) + zo, lo, hi) of 4 int64 lanes for one shift. AVX2 has no 64-bit arithmetic shift: v + 2^63 (mod
// 2^64) read as unsigned is v + 2^63, whose logical shift is floor(v / 2^s) + 2^(63 - s); half_biased and unbias
// fold in the 2^63 and the -2^(63 - s), both mod 2^64.
struct Requant256 {
  __m128i shift, odd_shift;
  __m256i half_biased, unbias, lo, hi;
};
inline int64_t half_biased(int shift) {
  return static_cast<int64_t>(static_cast<uint64_t>(rounding_half(shift)) + (uint64_t{1} << 63));
}
inline int64_t unbias(int shift, int32_t zero_point) {
  return static_cast<int64_t>(static_cast<uint64_t>(int64_t{zero_point}) - ((uint64_t{1} << 63) >> shift));
}
QCNN_AVX2 inline Requant256 requant256(int shift, int32_t zero_point, int32_t lo, int32_t hi) {
  return {_mm_cvtsi64_si128(shift),
          _mm_cvtsi64_si128(rounding_odd_shift(shift)),
          _mm256_set1_epi64x(half_biased(shift)),
          _mm256_set1_epi64x(unbias(shift, zero_point)),
          _mm256_set1_epi64x(lo),
          _mm256_set1_epi64x(hi)};
}
QCNN_AVX2 inline __m256i clamp64(__m256i v, __m256i lo, __m256i hi) {
  v = _mm256_blendv_epi8(lo, v, _mm256_cmpgt_epi64(v, lo));
  return _mm256_blendv_epi8(hi, v, _mm256_cmpgt_epi64(hi, v));
}
QCNN_AVX2 inline __m256i requant4(__m256i v, const Requant256& q) {
  const __m256i odd = _mm256_and_si256(_mm256_srl_epi64(v, q.odd_shift), _mm256_set1_epi64x(1));
  v = _mm256_add_epi64(_mm256_add_epi64(v, q.half_biased), odd);
  v = _mm256_add_epi64(_mm256_srl_epi64(v, q.shift), q.unbias);
  return clamp64(v, q.lo, q.hi);
}

// The codes of the even and the odd int64 lanes (vpmuldq order) as 8 int32 lanes, minus the output offset.
QCNN_AVX2 inline __m256i join_codes(__m256i even, __m256i odd, __m256i out_offset) {
  return _mm256_sub_epi32(_mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA), out_offset);
}

// requant of x * m for 8 int32 lanes x and a multiplier m in every int32 lane.
QCNN_AVX2 inline __m256i requant_product8(__m256i x, __m256i m, const Requant256& q, __m256i out_offset) {
  const __m256i even = _mm256_mul_epi32(x, m);
  const __m256i odd = _mm256_mul_epi32(_mm256_srli_epi64(x, 32), m);
  return join_codes(requant4(even, q), requant4(odd, q), out_offset);
}

template <typename In, typename Out>
QCNN_AVX2 int64_t requantize_run(const In* src, Out* dst, int64_t count, ClampAdd sat, int32_t multiplier,
                                 Requant r) {
  const ClampAdd256 s = clamp_add256(sat);
  const Requant256 q = requant256(r.shift, r.zero_point, r.lo, r.hi);
  const __m256i m = _mm256_set1_epi32(multiplier), offset = _mm256_set1_epi32(r.out_offset);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) store8(dst + i, requant_product8(clamp_add(load8(src + i), s), m, q, offset));
  return i;
}

void requantize(CodesIn in, int64_t count, int32_t in_zero_point, int32_t multiplier, int shift,
                int32_t out_zero_point, int32_t lo, int32_t hi, CodesOut out) {
  requantize_by_vectors(in, count, in_zero_point, multiplier, shift, out_zero_point, lo, hi, out,
                        [](auto... args) { return requantize_run(args...); });
}

template <typename A, typename B, typename Out>
QCNN_AVX2 int64_t add_run(const A* a, const B* b, Out* dst, int64_t count, ClampAdd sat_a, int32_t a_multiplier,
                          ClampAdd sat_b, int32_t b_multiplier, Requant r) {
  const ClampAdd256 sa = clamp_add256(sat_a), sb = clamp_add256(sat_b);
  const Requant256 q = requant256(r.shift, r.zero_point, r.lo, r.hi);
  const __m256i ma = _mm256_set1_epi32(a_multiplier), mb = _mm256_set1_epi32(b_multiplier),
                offset = _mm256_set1_epi32(r.out_offset);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256i xa = clamp_add(load8(a + i), sa), xb = clamp_add(load8(b + i), sb);
    const __m256i even = _mm256_add_epi64(_mm256_mul_epi32(xa, ma), _mm256_mul_epi32(xb, mb));
    const __m256i odd = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(xa, 32), ma),
                                         _mm256_mul_epi32(_mm256_srli_epi64(xb, 32), mb));
    store8(dst + i, join_codes(requant4(even, q), requant4(odd, q), offset));
  }
  return i;
}

// The same in int32 lanes where the ranges of a - za and b - zb keep every step within int32 (add_fits_int32):
// a - za is then the stored value plus (offset - za) in wrapping lanes, and no clamp32 is needed.
template <typename A, typename B, typename Out>
QCNN_AVX2 int64_t add32_run(const A* a, const B* b, Out* dst, int64_t count, int32_t a_add, int32_t a_multiplier,
                            int32_t b_add, int32_t b_multiplier, Requant r) {
  const __m256i ca = _mm256_set1_epi32(a_add), cb = _mm256_set1_epi32(b_add), ma = _mm256_set1_epi32(a_multiplier),
                mb = _mm256_set1_epi32(b_multiplier), half = _mm256_set1_epi32(static_cast<int32_t>(rounding_half(r.shift))),
                one = _mm256_set1_epi32(1), zp = _mm256_set1_epi32(r.zero_point), lo = _mm256_set1_epi32(r.lo),
                hi = _mm256_set1_epi32(r.hi), offset = _mm256_set1_epi32(r.out_offset);
  const __m128i shift = _mm_cvtsi64_si128(r.shift), odd_shift = _mm_cvtsi64_si128(rounding_odd_shift32(r.shift));
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256i xa = _mm256_add_epi32(load8(a + i), ca), xb = _mm256_add_epi32(load8(b + i), cb);
    __m256i v = _mm256_add_epi32(_mm256_mullo_epi32(xa, ma), _mm256_mullo_epi32(xb, mb));
    const __m256i odd = _mm256_and_si256(_mm256_srl_epi32(v, odd_shift), one);
    v = _mm256_add_epi32(_mm256_sra_epi32(_mm256_add_epi32(_mm256_add_epi32(v, half), odd), shift), zp);
    store8(dst + i, _mm256_sub_epi32(_mm256_min_epi32(_mm256_max_epi32(v, lo), hi), offset));
  }
  return i;
}

void add(CodesIn a, int32_t a_zero_point, int32_t a_multiplier, CodesIn b, int32_t b_zero_point, int32_t b_multiplier,
         int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count, CodesOut out, InputRange a_range,
         InputRange b_range) {
  add_by_vectors(a, a_zero_point, a_multiplier, b, b_zero_point, b_multiplier, shift, out_zero_point, lo, hi, count,
                 out, a_range, b_range, [](auto... args) { return add_run(args...); },
                 [](auto... args) { return add32_run(args...); });
}

// (a - za) * (b - zb) in wrapping int32 lanes: exact, as the caller keeps both factors within 2^15.
template <typename A, typename B, typename Out>
QCNN_AVX2 int64_t mul_run(const A* a, const B* b, Out* dst, int64_t count, int32_t a_add, int32_t b_add,
                          int32_t multiplier, Requant r) {
  const Requant256 q = requant256(r.shift, r.zero_point, r.lo, r.hi);
  const __m256i ca = _mm256_set1_epi32(a_add), cb = _mm256_set1_epi32(b_add), m = _mm256_set1_epi32(multiplier),
                offset = _mm256_set1_epi32(r.out_offset);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256i product =
        _mm256_mullo_epi32(_mm256_add_epi32(load8(a + i), ca), _mm256_add_epi32(load8(b + i), cb));
    store8(dst + i, requant_product8(product, m, q, offset));
  }
  return i;
}

void mul(CodesIn a, int32_t a_zero_point, CodesIn b, int32_t b_zero_point, int64_t b_channels, int32_t multiplier,
         int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count, CodesOut out) {
  mul_by_vectors(a, a_zero_point, b, b_zero_point, b_channels, multiplier, shift, out_zero_point, lo, hi, count, out, 8,
                 [](auto... args) { return mul_run(args...); });
}

template <typename In, typename Out>
QCNN_AVX2 int64_t clamp_run(const In* src, Out* dst, int64_t count, ClampAdd bounds) {
  const ClampAdd256 c = clamp_add256(bounds);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) store8(dst + i, clamp_add(load8(src + i), c));
  return i;
}

void clamp(CodesIn in, int64_t count, int32_t lo, int32_t hi, CodesOut out) {
  clamp_by_vectors(in, count, lo, hi, out, [](auto... args) { return clamp_run(args...); });
}

// table[clamp(x) + base] by vpgatherdd (table_bounds).
template <typename In, typename Out>
QCNN_AVX2 int64_t lookup_run(const In* src, Out* dst, int64_t count, const int32_t* table, TableBounds b,
                             int32_t out_offset) {
  const __m256i lo = _mm256_set1_epi32(b.lo), hi = _mm256_set1_epi32(b.hi), base = _mm256_set1_epi32(b.base),
                offset = _mm256_set1_epi32(out_offset);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256i index = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(load8(src + i), lo), hi), base);
    store8(dst + i, _mm256_sub_epi32(_mm256_i32gather_epi32(reinterpret_cast<const int*>(table), index, 4), offset));
  }
  return i;
}

void lookup(CodesIn in, int64_t count, const int32_t* table, int64_t table_size, int64_t input_min, CodesOut out) {
  const TableBounds b = table_bounds(in.offset, table_size, input_min);
  int64_t done = 0;
  with_vector_codes(in, out, [&](auto src, auto dst) { done = lookup_run(src, dst, count, table, b, out.offset); });
  lookup_codes_scalar(codes_from(in, done), count - done, table, table_size, input_min, codes_from(out, done));
}

// Per-channel rounding constants of affine_codes, int64 [4][channels]: the shift, the odd-bit shift, half + 2^63
// and zo - 2^(63 - s) (Requant256's forms).
std::vector<int64_t> affine_constants(int64_t channels, const uint8_t* shift, int32_t out_zero_point) {
  std::vector<int64_t> c(static_cast<size_t>(4 * channels));
  for (int64_t ch = 0; ch < channels; ++ch) {
    c[ch] = shift[ch];
    c[channels + ch] = rounding_odd_shift(shift[ch]);
    c[2 * channels + ch] = half_biased(shift[ch]);
    c[3 * channels + ch] = unbias(shift[ch], out_zero_point);
  }
  return c;
}

QCNN_AVX2 inline __m256i at(const int64_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// Channels [ch, ch + 4) in natural order, 4 int64 lanes.
QCNN_AVX2 inline __m256i affine4(__m128i x, const int32_t* multiplier, const int64_t* bias, const int64_t* c,
                                 int64_t channels, __m256i lo, __m256i hi) {
  const __m256i m = _mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(multiplier)));
  __m256i v = _mm256_add_epi64(_mm256_mul_epi32(_mm256_cvtepi32_epi64(x), m), at(bias));
  const __m256i odd = _mm256_and_si256(_mm256_srlv_epi64(v, at(c + channels)), _mm256_set1_epi64x(1));
  v = _mm256_add_epi64(_mm256_add_epi64(v, at(c + 2 * channels)), odd);
  v = _mm256_add_epi64(_mm256_srlv_epi64(v, at(c)), at(c + 3 * channels));
  return clamp64(v, lo, hi);
}

template <typename In, typename Out>
QCNN_AVX2 void affine_run(const In* src, Out* dst, int64_t positions, int64_t channels, ClampAdd sat,
                          const int32_t* multiplier, const uint8_t* shift, const int64_t* bias, int32_t out_zero_point,
                          int32_t lo, int32_t hi, int32_t out_offset) {
  const std::vector<int64_t> per_channel = affine_constants(channels, shift, out_zero_point);
  const int64_t* constants = per_channel.data();
  const ClampAdd256 s = clamp_add256(sat);
  const __m256i vlo = _mm256_set1_epi64x(lo), vhi = _mm256_set1_epi64x(hi), offset = _mm256_set1_epi32(out_offset);
  const __m256i low_dwords = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  const int64_t full = channels / 8 * 8;
  for (int64_t p = 0; p < positions; ++p)
    for (int64_t ch = 0; ch < full; ch += 8) {
      const __m256i x = clamp_add(load8(src + p * channels + ch), s);
      const __m256i r0 = affine4(_mm256_castsi256_si128(x), multiplier + ch, bias + ch, constants + ch, channels, vlo, vhi);
      const __m256i r1 =
          affine4(_mm256_extracti128_si256(x, 1), multiplier + ch + 4, bias + ch + 4, constants + ch + 4, channels, vlo, vhi);
      const __m256i codes = _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(r0, low_dwords),
                                                      _mm256_permutevar8x32_epi32(r1, low_dwords), 0x20);
      store8(dst + p * channels + ch, _mm256_sub_epi32(codes, offset));
    }
}

void affine(CodesIn in, int64_t count, int64_t channels, int32_t in_zero_point, const int32_t* multiplier,
            const uint8_t* shift, const int64_t* bias, int32_t out_zero_point, int32_t lo, int32_t hi, CodesOut out) {
  affine_by_vectors(in, count, channels, in_zero_point, multiplier, shift, bias, out_zero_point, lo, hi, out, 8,
                    [](auto... args) { affine_run(args...); });
}

// The reductions over positions run down the positions four vectors of channels at a time, one accumulator per
// vector; the channels past the last whole vector on the scalar loop. Sums in int32 lanes, moved to the int64 sums
// every `run` positions (whose sum cannot leave int32), or for int32 codes of too wide a range in int64 lanes.
// Maxima: uint8 in byte lanes, int32 in int32 lanes.
template <int kAcc, typename T>
QCNN_AVX2 void sum_strip32(const T* src, int64_t positions, int64_t channels, int64_t ch, int64_t run,
                           int64_t* sums) {
  for (int64_t p0 = 0; p0 < positions; p0 += run) {
    const int64_t p1 = std::min(positions, p0 + run);
    __m256i a[kAcc];
    for (int j = 0; j < kAcc; ++j) a[j] = _mm256_setzero_si256();
    const T* s = src + p0 * channels + ch;
    for (int64_t p = p0; p < p1; ++p, s += channels)
      for (int j = 0; j < kAcc; ++j) a[j] = _mm256_add_epi32(a[j], load8(s + 8 * j));
    for (int j = 0; j < kAcc; ++j) {
      auto* d = reinterpret_cast<__m256i*>(sums + ch + 8 * j);
      _mm256_storeu_si256(d, _mm256_add_epi64(_mm256_loadu_si256(d), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(a[j]))));
      _mm256_storeu_si256(d + 1, _mm256_add_epi64(_mm256_loadu_si256(d + 1),
                                                  _mm256_cvtepi32_epi64(_mm256_extracti128_si256(a[j], 1))));
    }
  }
}

template <int kAcc>
QCNN_AVX2 void sum_strip64(const int32_t* src, int64_t positions, int64_t channels, int64_t ch, int64_t /*run*/,
                           int64_t* sums) {
  __m256i a[kAcc];
  for (int j = 0; j < kAcc; ++j) a[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sums + ch + 4 * j));
  const int32_t* s = src + ch;
  for (int64_t p = 0; p < positions; ++p, s += channels)
    for (int j = 0; j < kAcc; ++j)
      a[j] = _mm256_add_epi64(a[j], _mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 4 * j))));
  for (int j = 0; j < kAcc; ++j) _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums + ch + 4 * j), a[j]);
}

template <int kAcc>
QCNN_AVX2 void max_strip(const uint8_t* src, int64_t positions, int64_t channels, int64_t ch, int64_t /*run*/,
                         int32_t* maxima) {
  __m256i a[kAcc];
  for (int j = 0; j < kAcc; ++j) a[j] = _mm256_setzero_si256();
  const uint8_t* s = src + ch;
  for (int64_t p = 0; p < positions; ++p, s += channels)
    for (int j = 0; j < kAcc; ++j)
      a[j] = _mm256_max_epu8(a[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 32 * j)));
  for (int j = 0; j < kAcc; ++j)
    for (int q = 0; q < 4; ++q) {
      auto* d = reinterpret_cast<__m256i*>(maxima + ch + 32 * j + 8 * q);
      const __m128i half = q < 2 ? _mm256_castsi256_si128(a[j]) : _mm256_extracti128_si256(a[j], 1);
      const __m256i wide = _mm256_cvtepu8_epi32(q % 2 == 0 ? half : _mm_srli_si128(half, 8));
      _mm256_storeu_si256(d, _mm256_max_epi32(_mm256_loadu_si256(d), wide));
    }
}

template <int kAcc>
QCNN_AVX2 void max_strip(const int32_t* src, int64_t positions, int64_t channels, int64_t ch, int64_t /*run*/,
                         int32_t* maxima) {
  __m256i a[kAcc];
  for (int j = 0; j < kAcc; ++j) a[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(maxima + ch + 8 * j));
  const int32_t* s = src + ch;
  for (int64_t p = 0; p < positions; ++p, s += channels)
    for (int j = 0; j < kAcc; ++j)
      a[j] = _mm256_max_epi32(a[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 8 * j)));
  for (int j = 0; j < kAcc; ++j) _mm256_storeu_si256(reinterpret_cast<__m256i*>(maxima + ch + 8 * j), a[j]);
}

// A strip of kAcc vectors of channels: strips[kAcc - 1](src, positions, channels, first channel, run, partials).
template <typename T, typename Acc>
using Strip = void (*)(const T*, int64_t, int64_t, int64_t, int64_t, Acc*);

// The channels in strips of four vectors of `width` channels, the last strip as narrow as the whole vectors left,
// the channels past them on the scalar loop (`reduce`).
template <typename T, typename Acc, typename F>
void by_strips(const T* src, int64_t positions, int64_t channels, int64_t width, int64_t run,
               const Strip<T, Acc> (&strips)[4], Acc* acc, F&& reduce) {
  int64_t ch = 0;
  for (; ch + 4 * width <= channels; ch += 4 * width) strips[3](src, positions, channels, ch, run, acc);
  const int64_t vectors = (channels - ch) / width;
  if (vectors > 0) strips[vectors - 1](src, positions, channels, ch, run, acc);
  for (int64_t p = 0; p < positions; ++p)
    for (int64_t c = ch + vectors * width; c < channels; ++c) acc[c] = reduce(acc[c], src[p * channels + c]);
}

template <typename T>
void sum_typed(const T* src, int64_t positions, int64_t channels, InputRange stored, int64_t* sums) {
  const int64_t run = sum_run<T>(stored);
  const auto add = [](int64_t a, int64_t b) { return a + b; };
  static constexpr Strip<T, int64_t> narrow[4] = {sum_strip32<1, T>, sum_strip32<2, T>, sum_strip32<3, T>,
                                                  sum_strip32<4, T>};
  if constexpr (std::is_same_v<T, int32_t>) {
    static constexpr Strip<T, int64_t> wide[4] = {sum_strip64<1>, sum_strip64<2>, sum_strip64<3>, sum_strip64<4>};
    if (run < kMinSumRun) return by_strips(src, positions, channels, 4, run, wide, sums, add);
  }
  by_strips(src, positions, channels, 8, run, narrow, sums, add);
}

template <typename T>
void max_typed(const T* src, int64_t positions, int64_t channels, int32_t* maxima) {
  static constexpr Strip<T, int32_t> strips[4] = {max_strip<1>, max_strip<2>, max_strip<3>, max_strip<4>};
  by_strips(src, positions, channels, sizeof(T) == 1 ? 32 : 8, 0, strips, maxima,
            [](int32_t a, int32_t b) { return std::max(a, b); });
}

void sum_positions(CodesIn in, int64_t positions, int64_t channels, InputRange stored, int64_t* sums) {
  if (!with_vector_input(in, [&](auto src) { sum_typed(src, positions, channels, stored, sums); }))
    sum_positions_scalar(in, positions, channels, stored, sums);
}

void max_positions(CodesIn in, int64_t positions, int64_t channels, int32_t* maxima) {
  if (positions < 1) return;  // the uint8 strips start from 0
  if (!with_vector_input(in, [&](auto src) { max_typed(src, positions, channels, maxima); }))
    max_positions_scalar(in, positions, channels, maxima);
}

}  // namespace

const EltwiseKernels* eltwise_kernels_avx2() {
  static constexpr EltwiseKernels kernels{requantize, add, mul, clamp, lookup, affine, sum_positions, max_positions};
  return &kernels;
}
#else
const EltwiseKernels* eltwise_kernels_avx2() { return nullptr; }
#endif

}  // namespace qcnn
