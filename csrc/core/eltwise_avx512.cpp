// AVX-512 (F/BW/VL) paths of the elementwise integer kernels (eltwise_kernels.h): 16 codes per step in int32
// lanes, the products and the rounding shift in int64 lanes (vpmuldq on the even and the odd lanes, with the
// native 64-bit arithmetic shift, min and max), tails under lane masks. lookup_codes from uint8 to uint8 has a
// VBMI kernel (vpermi2b over a 256-byte table), chosen when the CPU has VBMI.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/avx2.h"
#include "core/eltwise_kernels.h"

#ifdef QCNN_X86
#define QCNN_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl")))
#define QCNN_AVX512VBMI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vbmi")))
#endif

namespace qcnn {

#ifdef QCNN_X86
namespace {

bool cpu_has_vbmi() {
  static const bool has = __builtin_cpu_supports("avx512vbmi");
  return has;
}

QCNN_AVX512VBMI void map_bytes_vbmi(const uint8_t* src, uint8_t* dst, int64_t count, const uint8_t* bytes);

// The first `n` (<= 16) lanes.
inline __mmask16 lanes16(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }
inline __mmask8 lanes8(int64_t n) { return n >= 8 ? __mmask8(0xFF) : __mmask8((1u << n) - 1); }

QCNN_AVX512 inline __m512i load16(const uint8_t* p, __mmask16 k) {
  return _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, p));
}
QCNN_AVX512 inline __m512i load16(const int32_t* p, __mmask16 k) { return _mm512_maskz_loadu_epi32(k, p); }

// Stores the lanes of k as the scalar cast does: the low byte of each (vpmovdb truncates), or all of it.
QCNN_AVX512 inline void store16(uint8_t* p, __mmask16 k, __m512i v) {
  _mm_mask_storeu_epi8(p, k, _mm512_cvtepi32_epi8(v));
}
QCNN_AVX512 inline void store16(int32_t* p, __mmask16 k, __m512i v) { _mm512_mask_storeu_epi32(p, k, v); }

// min(max(x, lo), hi) + add (ClampAdd).
struct ClampAdd512 {
  __m512i lo, hi, add;
};
QCNN_AVX512 inline ClampAdd512 clamp_add512(const ClampAdd& s) {
  return {_mm512_set1_epi32(s.lo), _mm512_set1_epi32(s.hi), _mm512_set1_epi32(s.add)};
}
QCNN_AVX512 inline __m512i clamp_add(__m512i x, const ClampAdd512& s) {
  return _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(x, s.lo), s.hi), s.add);
}

// clamp(RS(v, s) + zo, lo, hi) of 8 int64 lanes for one shift.
struct Requant512 {
  __m128i shift, odd_shift;
  __m512i half, zero_point, lo, hi;
};
QCNN_AVX512 inline Requant512 requant512(int shift, int32_t zero_point, int32_t lo, int32_t hi) {
  return {_mm_cvtsi64_si128(shift),         _mm_cvtsi64_si128(rounding_odd_shift(shift)),
          _mm512_set1_epi64(rounding_half(shift)), _mm512_set1_epi64(zero_point),
          _mm512_set1_epi64(lo),            _mm512_set1_epi64(hi)};
}
QCNN_AVX512 inline __m512i requant8(__m512i v, const Requant512& q) {
  const __m512i odd = _mm512_and_si512(_mm512_srl_epi64(v, q.odd_shift), _mm512_set1_epi64(1));
  v = _mm512_add_epi64(_mm512_add_epi64(v, q.half), odd);
  v = _mm512_add_epi64(_mm512_sra_epi64(v, q.shift), q.zero_point);
  return _mm512_min_epi64(_mm512_max_epi64(v, q.lo), q.hi);
}

// The codes of the even and the odd int64 lanes (vpmuldq order) as 16 int32 lanes, minus the output offset.
QCNN_AVX512 inline __m512i join_codes(__m512i even, __m512i odd, __m512i out_offset) {
  return _mm512_sub_epi32(_mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32)), out_offset);
}

// requant of x * m for 16 int32 lanes x and a multiplier m in every int32 lane.
QCNN_AVX512 inline __m512i requant_product16(__m512i x, __m512i m, const Requant512& q, __m512i out_offset) {
  const __m512i even = _mm512_mul_epi32(x, m);
  const __m512i odd = _mm512_mul_epi32(_mm512_srli_epi64(x, 32), m);
  return join_codes(requant8(even, q), requant8(odd, q), out_offset);
}

// Requantization without ties (TieFreeRequant) of 16 inputs already clamped into [x_lo, x_hi]: the rounding needs
// no parity term and the clamp and offsets run in int32 lanes.
struct TieFree512 {
  __m512i m, half, out_add, out_lo, out_hi;
  __m128i shift;
};
QCNN_AVX512 inline TieFree512 tie_free512(const TieFreeRequant& t, int32_t multiplier, int shift) {
  return {_mm512_set1_epi32(multiplier), _mm512_set1_epi64(t.bias_half),   _mm512_set1_epi32(t.out_add),
          _mm512_set1_epi32(t.out_lo),   _mm512_set1_epi32(t.out_hi), _mm_cvtsi64_si128(shift)};
}
QCNN_AVX512 inline __m512i requant_tie_free16(__m512i x, const TieFree512& q) {
  const __m512i even = _mm512_sra_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, q.m), q.half), q.shift);
  const __m512i odd = _mm512_sra_epi64(_mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(x, 32), q.m), q.half), q.shift);
  const __m512i r = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  return _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(r, q.out_add), q.out_lo), q.out_hi);
}

// The codes of 16 inputs x times one multiplier, in the int64 form (requant_product16) or, kTieFree, in the tie-free
// one (the caller has clamped x into [t.x_lo, t.x_hi]).
struct Products512 {
  Requant512 q;
  __m512i m, offset;
  TieFree512 tie_free;
};
QCNN_AVX512 inline Products512 products512(int32_t multiplier, const Requant& r, const TieFreeRequant& t) {
  return {requant512(r.shift, r.zero_point, r.lo, r.hi), _mm512_set1_epi32(multiplier),
          _mm512_set1_epi32(r.out_offset), tie_free512(t, multiplier, r.shift)};
}
template <bool kTieFree>
QCNN_AVX512 inline __m512i requant_products16(__m512i x, const Products512& p) {
  if constexpr (kTieFree)
    return requant_tie_free16(x, p.tie_free);
  else
    return requant_product16(x, p.m, p.q, p.offset);
}

// The input is clamp_add(stored, sat): clamp32(stored + in.offset - zi), or (kTieFree) the stored value clamped into
// stored_range's bounds plus that offset.
template <bool kTieFree, typename In, typename Out>
QCNN_AVX512 void requantize_run(const In* src, Out* dst, int64_t count, ClampAdd sat, int32_t multiplier, Requant r,
                                const TieFreeRequant& t) {
  const ClampAdd512 s = clamp_add512(sat);
  const Products512 p = products512(multiplier, r, t);
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 k = lanes16(count - i);
    store16(dst + i, k, requant_products16<kTieFree>(clamp_add(load16(src + i, k), s), p));
  }
}

void requantize(CodesIn in, int64_t count, int32_t in_zero_point, int32_t multiplier, int shift,
                int32_t out_zero_point, int32_t lo, int32_t hi, CodesOut out) {
  if (in.storage == Storage::U8 && out.storage == Storage::U8 && count >= 4096 && cpu_has_vbmi()) {
    // Each output byte is a function of its input byte alone, so the scalar loop's own output on the 256 possible
    // bytes is the whole map: identical results by construction, for every shift. It costs 256 scalar steps.
    alignas(64) uint8_t every_byte[256], image[256];
    for (int b = 0; b < 256; ++b) every_byte[b] = static_cast<uint8_t>(b);
    requantize_codes_scalar({every_byte, Storage::U8, in.offset}, 256, in_zero_point, multiplier, shift, out_zero_point,
                            lo, hi, {image, Storage::U8, out.offset});
    map_bytes_vbmi(static_cast<const uint8_t*>(in.data), static_cast<uint8_t*>(out.data), count, image);
    return;
  }
  const Requant r{shift, out_zero_point, lo, hi, out.offset};
  // x = clamp32(stored + c); clamped into [x_lo, x_hi] it is clamp(stored, x_lo - c, x_hi - c) + c, exact in int32.
  const int64_t c = int64_t{in.offset} - in_zero_point;
  const InputRange x = in.storage == Storage::U8 ? InputRange{clamp_to_int32(c), clamp_to_int32(c + 255)} : InputRange{};
  TieFreeRequant t{};
  ClampAdd sat;
  if (tie_free_requant(x, multiplier, 0, shift, out_zero_point, lo, hi, out.offset, &t) && stored_range(t, c, &sat) &&
      with_vector_codes(in, out, [&](auto src, auto dst) {
        requantize_run<true>(src, dst, count, sat, multiplier, r, t);
      }))
    return;
  if (!r.valid() || !saturating_add(c, &sat) || !with_vector_codes(in, out, [&](auto src, auto dst) {
        requantize_run<false>(src, dst, count, sat, multiplier, r, t);
      }))
    requantize_codes_scalar(in, count, in_zero_point, multiplier, shift, out_zero_point, lo, hi, out);
}

template <typename A, typename B, typename Out>
QCNN_AVX512 void add_run(const A* a, const B* b, Out* dst, int64_t count, ClampAdd sat_a, int32_t a_multiplier,
                         ClampAdd sat_b, int32_t b_multiplier, Requant r) {
  const ClampAdd512 sa = clamp_add512(sat_a), sb = clamp_add512(sat_b);
  const Requant512 q = requant512(r.shift, r.zero_point, r.lo, r.hi);
  const __m512i ma = _mm512_set1_epi32(a_multiplier), mb = _mm512_set1_epi32(b_multiplier),
                offset = _mm512_set1_epi32(r.out_offset);
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 k = lanes16(count - i);
    const __m512i xa = clamp_add(load16(a + i, k), sa), xb = clamp_add(load16(b + i, k), sb);
    const __m512i even = _mm512_add_epi64(_mm512_mul_epi32(xa, ma), _mm512_mul_epi32(xb, mb));
    const __m512i odd = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(xa, 32), ma),
                                         _mm512_mul_epi32(_mm512_srli_epi64(xb, 32), mb));
    store16(dst + i, k, join_codes(requant8(even, q), requant8(odd, q), offset));
  }
}

// The same in int32 lanes where the ranges of a - za and b - zb keep every step within int32 (add_fits_int32):
// a - za is then the stored value plus (offset - za) in wrapping lanes, and no clamp32 is needed.
template <typename A, typename B, typename Out>
QCNN_AVX512 void add32_run(const A* a, const B* b, Out* dst, int64_t count, int32_t a_add, int32_t a_multiplier,
                           int32_t b_add, int32_t b_multiplier, Requant r) {
  const __m512i ca = _mm512_set1_epi32(a_add), cb = _mm512_set1_epi32(b_add), ma = _mm512_set1_epi32(a_multiplier),
                mb = _mm512_set1_epi32(b_multiplier), half = _mm512_set1_epi32(static_cast<int32_t>(rounding_half(r.shift))),
                one = _mm512_set1_epi32(1), zp = _mm512_set1_epi32(r.zero_point), lo = _mm512_set1_epi32(r.lo),
                hi = _mm512_set1_epi32(r.hi), offset = _mm512_set1_epi32(r.out_offset);
  const __m128i shift = _mm_cvtsi64_si128(r.shift), odd_shift = _mm_cvtsi64_si128(rounding_odd_shift32(r.shift));
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 k = lanes16(count - i);
    const __m512i xa = _mm512_add_epi32(load16(a + i, k), ca), xb = _mm512_add_epi32(load16(b + i, k), cb);
    __m512i v = _mm512_add_epi32(_mm512_mullo_epi32(xa, ma), _mm512_mullo_epi32(xb, mb));
    const __m512i odd = _mm512_and_si512(_mm512_srl_epi32(v, odd_shift), one);
    v = _mm512_add_epi32(_mm512_sra_epi32(_mm512_add_epi32(_mm512_add_epi32(v, half), odd), shift), zp);
    store16(dst + i, k, _mm512_sub_epi32(_mm512_min_epi32(_mm512_max_epi32(v, lo), hi), offset));
  }
}

void add(CodesIn a, int32_t a_zero_point, int32_t a_multiplier, CodesIn b, int32_t b_zero_point, int32_t b_multiplier,
         int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count, CodesOut out, InputRange a_range,
         InputRange b_range) {
  const Requant r{shift, out_zero_point, lo, hi, out.offset};
  if (r.valid() && add_fits_int32(a_range, a_multiplier, b_range, b_multiplier, shift, out_zero_point) &&
      with_vector_codes(a, b, out, [&](auto sa, auto sb, auto dst) {
        add32_run(sa, sb, dst, count, wrap32(int64_t{a.offset} - a_zero_point), a_multiplier,
                  wrap32(int64_t{b.offset} - b_zero_point), b_multiplier, r);
      }))
    return;
  ClampAdd sat_a, sat_b;
  if (!r.valid() || !saturating_add(int64_t{a.offset} - a_zero_point, &sat_a) ||
      !saturating_add(int64_t{b.offset} - b_zero_point, &sat_b) ||
      !with_vector_codes(a, b, out, [&](auto sa, auto sb, auto dst) {
        add_run(sa, sb, dst, count, sat_a, a_multiplier, sat_b, b_multiplier, r);
      }))
    add_codes_scalar(a, a_zero_point, a_multiplier, b, b_zero_point, b_multiplier, shift, out_zero_point, lo, hi,
                     count, out);
}

// (a - za) * (b - zb) in wrapping int32 lanes: exact, as the caller keeps both factors within 2^15. b has `run`
// codes, repeated over the `count` codes of a (one position of an NHWC tensor at a time, b staying in L1). kTieFree:
// the product clamped into [t.x_lo, t.x_hi] first.
template <bool kTieFree, typename A, typename B, typename Out>
QCNN_AVX512 void mul_run(const A* a, const B* b, Out* dst, int64_t count, int64_t run, int32_t a_add, int32_t b_add,
                         int32_t multiplier, Requant r, const TieFreeRequant& t) {
  const Products512 p = products512(multiplier, r, t);
  const __m512i ca = _mm512_set1_epi32(a_add), cb = _mm512_set1_epi32(b_add), lo = _mm512_set1_epi32(t.x_lo),
                hi = _mm512_set1_epi32(t.x_hi);
  for (int64_t q = 0; q < count; q += run) {
    const int64_t n = std::min(run, count - q);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 k = lanes16(n - i);
      __m512i product =
          _mm512_mullo_epi32(_mm512_add_epi32(load16(a + q + i, k), ca), _mm512_add_epi32(load16(b + i, k), cb));
      if constexpr (kTieFree) product = _mm512_min_epi32(_mm512_max_epi32(product, lo), hi);
      store16(dst + q + i, k, requant_products16<kTieFree>(product, p));
    }
  }
}

void mul(CodesIn a, int32_t a_zero_point, CodesIn b, int32_t b_zero_point, int64_t b_channels, int32_t multiplier,
         int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count, CodesOut out) {
  const Requant r{shift, out_zero_point, lo, hi, out.offset};
  const int32_t a_add = wrap32(int64_t{a.offset} - a_zero_point), b_add = wrap32(int64_t{b.offset} - b_zero_point);
  const int64_t run = b_channels > 0 ? b_channels : std::max<int64_t>(count, 1);
  // The caller keeps both factors within 2^15: every product lies in [-2^30, 2^30].
  TieFreeRequant t{};
  if (tie_free_requant(InputRange{-(int64_t{1} << 30), int64_t{1} << 30}, multiplier, 0, shift, out_zero_point, lo,
                       hi, out.offset, &t) &&
      with_vector_codes(a, b, out, [&](auto sa, auto sb, auto dst) {
        mul_run<true>(sa, sb, dst, count, run, a_add, b_add, multiplier, r, t);
      }))
    return;
  if (!r.valid() || !with_vector_codes(a, b, out, [&](auto sa, auto sb, auto dst) {
        mul_run<false>(sa, sb, dst, count, run, a_add, b_add, multiplier, r, t);
      }))
    mul_codes_scalar(a, a_zero_point, b, b_zero_point, b_channels, multiplier, shift, out_zero_point, lo, hi, count,
                     out);
}

template <typename In, typename Out>
QCNN_AVX512 void clamp_run(const In* src, Out* dst, int64_t count, ClampAdd bounds) {
  const ClampAdd512 c = clamp_add512(bounds);
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 k = lanes16(count - i);
    store16(dst + i, k, clamp_add(load16(src + i, k), c));
  }
}

void clamp(CodesIn in, int64_t count, int32_t lo, int32_t hi, CodesOut out) {
  ClampAdd c;
  if (!stored_clamp(in.offset, lo, hi, out.offset, &c) ||
      !with_vector_codes(in, out, [&](auto src, auto dst) { clamp_run(src, dst, count, c); }))
    clamp_codes_scalar(in, count, lo, hi, out);
}

// table[clamp(x) + base] by vpgatherdd (table_bounds).
template <typename In, typename Out>
QCNN_AVX512 void lookup_run(const In* src, Out* dst, int64_t count, const int32_t* table, TableBounds b,
                            int32_t out_offset) {
  const __m512i lo = _mm512_set1_epi32(b.lo), hi = _mm512_set1_epi32(b.hi), base = _mm512_set1_epi32(b.base),
                offset = _mm512_set1_epi32(out_offset);
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 k = lanes16(count - i);
    const __m512i index = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(load16(src + i, k), lo), hi), base);
    const __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), k, index, table, 4);
    store16(dst + i, k, _mm512_sub_epi32(v, offset));
  }
}

QCNN_AVX512VBMI inline int min_byte(__m512i v) {
  __m256i h = _mm256_min_epu8(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  __m128i q = _mm_min_epu8(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  q = _mm_min_epu8(q, _mm_srli_si128(q, 8));
  q = _mm_min_epu8(q, _mm_srli_si128(q, 4));
  q = _mm_min_epu8(q, _mm_srli_si128(q, 2));
  q = _mm_min_epu8(q, _mm_srli_si128(q, 1));
  return _mm_cvtsi128_si32(q) & 0xFF;
}

// dst[i] = table[src[i]] for the 256-byte table t0..t3: two vpermi2b (bytes 0-127, 128-255) and a blend on bit 7.
QCNN_AVX512VBMI inline void map_bytes(const uint8_t* src, uint8_t* dst, int64_t n, __m512i t0, __m512i t1, __m512i t2,
                                      __m512i t3) {
  for (int64_t i = 0; i < n; i += 64) {
    const __mmask64 k = n - i >= 64 ? ~__mmask64{0} : (__mmask64{1} << (n - i)) - 1;
    const __m512i v = _mm512_maskz_loadu_epi8(k, src + i);
    const __m512i low_half = _mm512_permutex2var_epi8(t0, v, t1), high_half = _mm512_permutex2var_epi8(t2, v, t3);
    _mm512_mask_storeu_epi8(dst + i, k, _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), low_half, high_half));
  }
}

// uint8 -> uint8 lookup through a 256-byte table in four zmm registers (two vpermi2b and a blend on bit 7 per 64
// codes). The caller's table covers only the codes that occur, so the bytes' table is filled for the range of
// stored bytes met so far: each 4 KiB chunk is scanned for its min and max (in L1) before its lookup.
QCNN_AVX512VBMI void lookup_bytes_vbmi(const uint8_t* src, uint8_t* dst, int64_t count, const int32_t* table,
                                       int64_t table_size, int64_t base, int32_t out_offset) {
  alignas(64) uint8_t bytes[256] = {};
  int filled_lo = 256, filled_hi = -1;  // bytes[b] = table[b + base] - out_offset for b in [filled_lo, filled_hi]
  __m512i t0 = _mm512_setzero_si512(), t1 = t0, t2 = t0, t3 = t0;
  const __m512i ones = _mm512_set1_epi8(-1);
  constexpr int64_t kChunk = 4096;
  for (int64_t c = 0; c < count; c += kChunk) {
    const int64_t n = std::min(kChunk, count - c);
    __m512i lo = ones, not_hi = ones;  // min of the bytes and min of their complements
    for (int64_t i = 0; i < n; i += 64) {
      const __mmask64 k = n - i >= 64 ? ~__mmask64{0} : (__mmask64{1} << (n - i)) - 1;
      const __m512i v = _mm512_maskz_loadu_epi8(k, src + c + i);
      lo = _mm512_mask_min_epu8(lo, k, lo, v);
      not_hi = _mm512_mask_min_epu8(not_hi, k, not_hi, _mm512_xor_si512(v, ones));
    }
    const int b_lo = min_byte(lo), b_hi = 255 - min_byte(not_hi);
    if (b_lo < filled_lo || b_hi > filled_hi) {
      filled_lo = std::min(filled_lo, b_lo);
      filled_hi = std::max(filled_hi, b_hi);
      for (int b = filled_lo; b <= filled_hi; ++b)
        bytes[b] = static_cast<uint8_t>(table[std::clamp<int64_t>(b + base, 0, table_size - 1)] - out_offset);
      t0 = _mm512_load_si512(bytes);
      t1 = _mm512_load_si512(bytes + 64);
      t2 = _mm512_load_si512(bytes + 128);
      t3 = _mm512_load_si512(bytes + 192);
    }
    map_bytes(src + c, dst + c, n, t0, t1, t2, t3);
  }
}

// dst[i] = bytes[src[i]] for a whole 256-byte table.
QCNN_AVX512VBMI void map_bytes_vbmi(const uint8_t* src, uint8_t* dst, int64_t count, const uint8_t* bytes) {
  map_bytes(src, dst, count, _mm512_loadu_si512(bytes), _mm512_loadu_si512(bytes + 64),
            _mm512_loadu_si512(bytes + 128), _mm512_loadu_si512(bytes + 192));
}

void lookup(CodesIn in, int64_t count, const int32_t* table, int64_t table_size, int64_t input_min, CodesOut out) {
  if (in.storage == Storage::U8 && out.storage == Storage::U8 && cpu_has_vbmi()) {
    lookup_bytes_vbmi(static_cast<const uint8_t*>(in.data), static_cast<uint8_t*>(out.data), count, table, table_size,
                      int64_t{in.offset} - input_min, out.offset);
    return;
  }
  const TableBounds b = table_bounds(in.offset, table_size, input_min);
  if (!with_vector_codes(in, out, [&](auto src, auto dst) { lookup_run(src, dst, count, table, b, out.offset); }))
    lookup_codes_scalar(in, count, table, table_size, input_min, out);
}

// Per-channel rounding constants of affine_codes, int64 [3][channels]: the shift, the odd-bit shift and half.
std::vector<int64_t> affine_constants(int64_t channels, const uint8_t* shift) {
  std::vector<int64_t> c(static_cast<size_t>(3 * channels));
  for (int64_t ch = 0; ch < channels; ++ch) {
    c[ch] = shift[ch];
    c[channels + ch] = rounding_odd_shift(shift[ch]);
    c[2 * channels + ch] = rounding_half(shift[ch]);
  }
  return c;
}

QCNN_AVX512 inline __m256i load8(const uint8_t* p, __mmask8 k) {
  return _mm256_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, p));
}
QCNN_AVX512 inline __m256i load8(const int32_t* p, __mmask8 k) { return _mm256_maskz_loadu_epi32(k, p); }
QCNN_AVX512 inline void store8(uint8_t* p, __mmask8 k, __m256i v) { _mm_mask_storeu_epi8(p, k, _mm256_cvtepi32_epi8(v)); }
QCNN_AVX512 inline void store8(int32_t* p, __mmask8 k, __m256i v) { _mm256_mask_storeu_epi32(p, k, v); }

// 8 channels per step in natural order, int64 lanes with per-lane shifts.
template <typename In, typename Out>
QCNN_AVX512 void affine_run(const In* src, Out* dst, int64_t positions, int64_t channels, ClampAdd sat,
                            const int32_t* multiplier, const int64_t* bias, const int64_t* constants,
                            int32_t out_zero_point, int32_t lo, int32_t hi, int32_t out_offset) {
  const __m256i sat_lo = _mm256_set1_epi32(sat.lo), sat_hi = _mm256_set1_epi32(sat.hi),
                sat_add = _mm256_set1_epi32(sat.add), offset = _mm256_set1_epi32(out_offset);
  const __m512i zp = _mm512_set1_epi64(out_zero_point), vlo = _mm512_set1_epi64(lo), vhi = _mm512_set1_epi64(hi),
                one = _mm512_set1_epi64(1);
  const int64_t* shift = constants;
  const int64_t* odd_shift = constants + channels;
  const int64_t* half = constants + 2 * channels;
  for (int64_t p = 0; p < positions; ++p)
    for (int64_t ch = 0; ch < channels; ch += 8) {
      const __mmask8 k = lanes8(channels - ch);
      const int64_t at = p * channels + ch;
      const __m256i x =
          _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(load8(src + at, k), sat_lo), sat_hi), sat_add);
      const __m512i m = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(k, multiplier + ch));
      __m512i v = _mm512_add_epi64(_mm512_mul_epi32(_mm512_cvtepi32_epi64(x), m), _mm512_maskz_loadu_epi64(k, bias + ch));
      const __m512i odd = _mm512_and_si512(_mm512_srlv_epi64(v, _mm512_maskz_loadu_epi64(k, odd_shift + ch)), one);
      v = _mm512_add_epi64(_mm512_add_epi64(v, _mm512_maskz_loadu_epi64(k, half + ch)), odd);
      v = _mm512_add_epi64(_mm512_srav_epi64(v, _mm512_maskz_loadu_epi64(k, shift + ch)), zp);
      v = _mm512_min_epi64(_mm512_max_epi64(v, vlo), vhi);
      store8(dst + at, k, _mm256_sub_epi32(_mm512_cvtepi64_epi32(v), offset));
    }
}

void affine(CodesIn in, int64_t count, int64_t channels, int32_t in_zero_point, const int32_t* multiplier,
            const uint8_t* shift, const int64_t* bias, int32_t out_zero_point, int32_t lo, int32_t hi, CodesOut out) {
  ClampAdd sat;
  if (affine_vector_ok(in, count, channels, in_zero_point, multiplier, shift, bias, out_zero_point, lo, hi, &sat)) {
    const std::vector<int64_t> constants = affine_constants(channels, shift);
    if (with_vector_codes(in, out, [&](auto src, auto dst) {
          affine_run(src, dst, count / channels, channels, sat, multiplier, bias, constants.data(), out_zero_point, lo,
                     hi, out.offset);
        }))
      return;
  }
  affine_codes_scalar(in, count, channels, in_zero_point, multiplier, shift, bias, out_zero_point, lo, hi, out);
}

// The reductions over positions run down the positions kAcc vectors of channels at a time (a strip), one
// accumulator per vector. Sums in int32 lanes, moved to the int64 sums every `run` positions (whose sum cannot
// leave int32), or for int32 codes of too wide a range in int64 lanes. Maxima: uint8 in byte lanes from 0, int32
// in int32 lanes from the maxima so far.
template <int kAcc, typename T>
QCNN_AVX512 void sum_strip32(const T* src, int64_t positions, int64_t channels, int64_t ch, int64_t run,
                             int64_t* sums) {
  __mmask16 k[kAcc];
  for (int j = 0; j < kAcc; ++j) k[j] = lanes16(channels - ch - 16 * j);
  for (int64_t p0 = 0; p0 < positions; p0 += run) {
    const int64_t p1 = std::min(positions, p0 + run);
    __m512i a[kAcc];
    for (int j = 0; j < kAcc; ++j) a[j] = _mm512_setzero_si512();
    const T* s = src + p0 * channels + ch;
    for (int64_t p = p0; p < p1; ++p, s += channels)
      for (int j = 0; j < kAcc; ++j) a[j] = _mm512_add_epi32(a[j], load16(s + 16 * j, k[j]));
    for (int j = 0; j < kAcc; ++j) {
      int64_t* d = sums + ch + 16 * j;
      const __mmask8 lo = __mmask8(k[j]), hi = __mmask8(k[j] >> 8);
      const __m512i low = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(a[j]));
      const __m512i high = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(a[j], 1));
      _mm512_mask_storeu_epi64(d, lo, _mm512_add_epi64(_mm512_maskz_loadu_epi64(lo, d), low));
      _mm512_mask_storeu_epi64(d + 8, hi, _mm512_add_epi64(_mm512_maskz_loadu_epi64(hi, d + 8), high));
    }
  }
}

template <int kAcc>
QCNN_AVX512 void sum_strip64(const int32_t* src, int64_t positions, int64_t channels, int64_t ch, int64_t /*run*/,
                             int64_t* sums) {
  __mmask8 k[kAcc];
  __m512i a[kAcc];
  for (int j = 0; j < kAcc; ++j) {
    k[j] = lanes8(channels - ch - 8 * j);
    a[j] = _mm512_maskz_loadu_epi64(k[j], sums + ch + 8 * j);
  }
  const int32_t* s = src + ch;
  for (int64_t p = 0; p < positions; ++p, s += channels)
    for (int j = 0; j < kAcc; ++j)
      a[j] = _mm512_add_epi64(a[j], _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(k[j], s + 8 * j)));
  for (int j = 0; j < kAcc; ++j) _mm512_mask_storeu_epi64(sums + ch + 8 * j, k[j], a[j]);
}

template <int kAcc>
QCNN_AVX512 void max_strip(const uint8_t* src, int64_t positions, int64_t channels, int64_t ch, int64_t /*run*/,
                           int32_t* maxima) {
  __mmask64 k[kAcc];
  __m512i a[kAcc];
  for (int j = 0; j < kAcc; ++j) {
    const int64_t n = channels - ch - 64 * j;
    k[j] = n >= 64 ? ~__mmask64{0} : (__mmask64{1} << n) - 1;
    a[j] = _mm512_setzero_si512();
  }
  const uint8_t* s = src + ch;
  for (int64_t p = 0; p < positions; ++p, s += channels)
    for (int j = 0; j < kAcc; ++j) a[j] = _mm512_max_epu8(a[j], _mm512_maskz_loadu_epi8(k[j], s + 64 * j));
  for (int j = 0; j < kAcc; ++j)
    for (int q = 0; q < 4; ++q) {
      int32_t* d = maxima + ch + 64 * j + 16 * q;
      const __mmask16 kq = __mmask16(k[j] >> (16 * q));
      __m128i quarter;  // the 16 byte lanes of channels ch + 64 j + 16 q on
      switch (q) {
        case 0: quarter = _mm512_extracti32x4_epi32(a[j], 0); break;
        case 1: quarter = _mm512_extracti32x4_epi32(a[j], 1); break;
        case 2: quarter = _mm512_extracti32x4_epi32(a[j], 2); break;
        default: quarter = _mm512_extracti32x4_epi32(a[j], 3); break;
      }
      _mm512_mask_storeu_epi32(d, kq, _mm512_max_epi32(_mm512_maskz_loadu_epi32(kq, d), _mm512_cvtepu8_epi32(quarter)));
    }
}

template <int kAcc>
QCNN_AVX512 void max_strip(const int32_t* src, int64_t positions, int64_t channels, int64_t ch, int64_t /*run*/,
                           int32_t* maxima) {
  __mmask16 k[kAcc];
  __m512i a[kAcc];
  for (int j = 0; j < kAcc; ++j) {
    k[j] = lanes16(channels - ch - 16 * j);
    a[j] = _mm512_maskz_loadu_epi32(k[j], maxima + ch + 16 * j);
  }
  const int32_t* s = src + ch;
  for (int64_t p = 0; p < positions; ++p, s += channels)
    for (int j = 0; j < kAcc; ++j) a[j] = _mm512_mask_max_epi32(a[j], k[j], a[j], _mm512_maskz_loadu_epi32(k[j], s + 16 * j));
  for (int j = 0; j < kAcc; ++j) _mm512_mask_storeu_epi32(maxima + ch + 16 * j, k[j], a[j]);
}

// A strip of kAcc vectors of channels: strips[kAcc - 1](src, positions, channels, first channel, run, partials).
template <typename T, typename Acc>
using Strip = void (*)(const T*, int64_t, int64_t, int64_t, int64_t, Acc*);

// The channels in strips of four vectors of `width` channels, the last strip as narrow as the channels left need
// (its last vector under a lane mask).
template <typename T, typename Acc>
void by_strips(const T* src, int64_t positions, int64_t channels, int64_t width, int64_t run,
               const Strip<T, Acc> (&strips)[4], Acc* acc) {
  int64_t ch = 0;
  for (; ch + 4 * width <= channels; ch += 4 * width) strips[3](src, positions, channels, ch, run, acc);
  if (ch < channels) strips[(channels - ch + width - 1) / width - 1](src, positions, channels, ch, run, acc);
}

template <typename T>
void sum_typed(const T* src, int64_t positions, int64_t channels, InputRange stored, int64_t* sums) {
  const int64_t run = sum_run<T>(stored);
  static constexpr Strip<T, int64_t> narrow[4] = {sum_strip32<1, T>, sum_strip32<2, T>, sum_strip32<3, T>,
                                                  sum_strip32<4, T>};
  if constexpr (std::is_same_v<T, int32_t>) {
    static constexpr Strip<T, int64_t> wide[4] = {sum_strip64<1>, sum_strip64<2>, sum_strip64<3>, sum_strip64<4>};
    if (run < kMinSumRun) return by_strips(src, positions, channels, 8, run, wide, sums);
  }
  by_strips(src, positions, channels, 16, run, narrow, sums);
}

template <typename T>
void max_typed(const T* src, int64_t positions, int64_t channels, int32_t* maxima) {
  static constexpr Strip<T, int32_t> strips[4] = {max_strip<1>, max_strip<2>, max_strip<3>, max_strip<4>};
  by_strips(src, positions, channels, sizeof(T) == 1 ? 64 : 16, 0, strips, maxima);
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

const EltwiseKernels* eltwise_kernels_avx512() {
  static constexpr EltwiseKernels kernels{requantize, add, mul, clamp, lookup, affine, sum_positions, max_positions};
  return &kernels;
}
#else
const EltwiseKernels* eltwise_kernels_avx512() { return nullptr; }
#endif

}  // namespace qcnn
