// aarch64 NEON paths of the elementwise integer kernels (eltwise_kernels.h): 8 codes per step in two int32x4 vectors,
// the products and the rounding shift in int64 lanes (SMULL, and SSHL / USHL by negative counts for the arithmetic
// and the logical right shifts), the last count % 8 codes on the scalar loop. NEON has no gather: lookup_codes runs
// uint8 to uint8 on TBL / TBX over a 256-byte table, and other storages on the scalar loop.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/eltwise_drivers.h"
#include "core/neon.h"

namespace qcnn {

#ifdef QCNN_ARM
namespace {

struct Lanes8 {
  int32x4_t lo, hi;
};

inline Lanes8 load8(const uint8_t* p) {
  const uint16x8_t w = vmovl_u8(vld1_u8(p));
  return {vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(w))), vreinterpretq_s32_u32(vmovl_high_u16(w))};
}
inline Lanes8 load8(const int32_t* p) { return {vld1q_s32(p), vld1q_s32(p + 4)}; }

// Stores 8 int32 lanes as the scalar cast does: the low byte of each, or all of it.
inline void store8(uint8_t* p, Lanes8 v) {
  const uint16x8_t w = vcombine_u16(vmovn_u32(vreinterpretq_u32_s32(v.lo)), vmovn_u32(vreinterpretq_u32_s32(v.hi)));
  vst1_u8(p, vmovn_u16(w));
}
inline void store8(int32_t* p, Lanes8 v) {
  vst1q_s32(p, v.lo);
  vst1q_s32(p + 4, v.hi);
}

// min(max(x, lo), hi) + add (ClampAdd).
struct ClampAdd128 {
  int32x4_t lo, hi, add;
  explicit ClampAdd128(const ClampAdd& s) : lo(vdupq_n_s32(s.lo)), hi(vdupq_n_s32(s.hi)), add(vdupq_n_s32(s.add)) {}
  int32x4_t operator()(int32x4_t x) const { return vaddq_s32(vminq_s32(vmaxq_s32(x, lo), hi), add); }
  Lanes8 operator()(Lanes8 x) const { return {(*this)(x.lo), (*this)(x.hi)}; }
};

inline int64x2_t clamp64(int64x2_t v, int64x2_t lo, int64x2_t hi) {
  v = vbslq_s64(vcgtq_s64(lo, v), lo, v);
  return vbslq_s64(vcgtq_s64(v, hi), hi, v);
}

// clamp(RS(v, s) + zo, lo, hi) of 2 int64 lanes (RoundingShift2).
inline int64x2_t round_clamp(int64x2_t v, const RoundingShift2& round, int64x2_t zero_point, int64x2_t lo,
                             int64x2_t hi) {
  return clamp64(vaddq_s64(round(v), zero_point), lo, hi);
}

// round_clamp with one shift for every lane.
struct Requant2 {
  RoundingShift2 round;
  int64x2_t zero_point, lo, hi;
  explicit Requant2(const Requant& r)
      : round(vdupq_n_s64(r.shift)),
        zero_point(vdupq_n_s64(r.zero_point)),
        lo(vdupq_n_s64(r.lo)),
        hi(vdupq_n_s64(r.hi)) {}
  int64x2_t operator()(int64x2_t v) const { return round_clamp(v, round, zero_point, lo, hi); }
};

// The runs' loop: 8 codes per step, each 4 int32 lanes through code4(x) (one input) or code4(a, b) (two); returns
// the codes done.
template <typename In, typename Out, typename Code4>
int64_t map8(const In* src, Out* dst, int64_t count, Code4&& code4) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const Lanes8 x = load8(src + i);
    store8(dst + i, {code4(x.lo), code4(x.hi)});
  }
  return i;
}
template <typename A, typename B, typename Out, typename Code4>
int64_t map8(const A* a, const B* b, Out* dst, int64_t count, Code4&& code4) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const Lanes8 xa = load8(a + i), xb = load8(b + i);
    store8(dst + i, {code4(xa.lo, xb.lo), code4(xa.hi, xb.hi)});
  }
  return i;
}

// The requantized codes of 4 lanes from their int64 values (low and high pairs), less the output offset.
inline int32x4_t codes4(int64x2_t v_lo, int64x2_t v_hi, const Requant2& q, int32x4_t out_offset) {
  return vsubq_s32(vcombine_s32(vmovn_s64(q(v_lo)), vmovn_s64(q(v_hi))), out_offset);
}

// requant of x * m for 4 int32 lanes x and a multiplier m in every lane.
inline int32x4_t requant_product4(int32x4_t x, int32x4_t m, const Requant2& q, int32x4_t out_offset) {
  return codes4(vmull_s32(vget_low_s32(x), vget_low_s32(m)), vmull_high_s32(x, m), q, out_offset);
}

template <typename In, typename Out>
int64_t requantize_run(const In* src, Out* dst, int64_t count, ClampAdd sat, int32_t multiplier, Requant r) {
  const ClampAdd128 s(sat);
  const Requant2 q(r);
  const int32x4_t m = vdupq_n_s32(multiplier), offset = vdupq_n_s32(r.out_offset);
  return map8(src, dst, count, [&](int32x4_t x) { return requant_product4(s(x), m, q, offset); });
}

void requantize(CodesIn in, int64_t count, int32_t in_zero_point, int32_t multiplier, int shift,
                int32_t out_zero_point, int32_t lo, int32_t hi, CodesOut out) {
  requantize_by_vectors(in, count, in_zero_point, multiplier, shift, out_zero_point, lo, hi, out,
                        [](auto... args) { return requantize_run(args...); });
}

template <typename A, typename B, typename Out>
int64_t add_run(const A* a, const B* b, Out* dst, int64_t count, ClampAdd sat_a, int32_t a_multiplier, ClampAdd sat_b,
                int32_t b_multiplier, Requant r) {
  const ClampAdd128 sa(sat_a), sb(sat_b);
  const Requant2 q(r);
  const int32x4_t ma = vdupq_n_s32(a_multiplier), mb = vdupq_n_s32(b_multiplier), offset = vdupq_n_s32(r.out_offset);
  return map8(a, b, dst, count, [&](int32x4_t xa, int32x4_t xb) {
    xa = sa(xa);
    xb = sb(xb);
    return codes4(vmlal_s32(vmull_s32(vget_low_s32(xa), vget_low_s32(ma)), vget_low_s32(xb), vget_low_s32(mb)),
                  vmlal_high_s32(vmull_high_s32(xa, ma), xb, mb), q, offset);
  });
}

// The same in int32 lanes where the ranges of a - za and b - zb keep every step within int32 (add_fits_int32):
// a - za is then the stored value plus (offset - za) in wrapping lanes, and no clamp32 is needed. USHL by -32 yields
// 0 for s = 0.
template <typename A, typename B, typename Out>
int64_t add32_run(const A* a, const B* b, Out* dst, int64_t count, int32_t a_add, int32_t a_multiplier, int32_t b_add,
                  int32_t b_multiplier, Requant r) {
  const int32x4_t ca = vdupq_n_s32(a_add), cb = vdupq_n_s32(b_add), ma = vdupq_n_s32(a_multiplier),
                  mb = vdupq_n_s32(b_multiplier), half = vdupq_n_s32(static_cast<int32_t>(rounding_half(r.shift))),
                  zp = vdupq_n_s32(r.zero_point), lo = vdupq_n_s32(r.lo), hi = vdupq_n_s32(r.hi),
                  offset = vdupq_n_s32(r.out_offset), right = vdupq_n_s32(-r.shift),
                  odd_right = vdupq_n_s32(-rounding_odd_shift32(r.shift));
  return map8(a, b, dst, count, [&](int32x4_t xa, int32x4_t xb) {
    const int32x4_t v = vmlaq_s32(vmulq_s32(vaddq_s32(xa, ca), ma), vaddq_s32(xb, cb), mb);
    const int32x4_t odd =
        vreinterpretq_s32_u32(vandq_u32(vshlq_u32(vreinterpretq_u32_s32(v), odd_right), vdupq_n_u32(1)));
    const int32x4_t y = vaddq_s32(vshlq_s32(vaddq_s32(vaddq_s32(v, half), odd), right), zp);
    return vsubq_s32(vminq_s32(vmaxq_s32(y, lo), hi), offset);
  });
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
int64_t mul_run(const A* a, const B* b, Out* dst, int64_t count, int32_t a_add, int32_t b_add, int32_t multiplier,
                Requant r) {
  const Requant2 q(r);
  const int32x4_t ca = vdupq_n_s32(a_add), cb = vdupq_n_s32(b_add), m = vdupq_n_s32(multiplier),
                  offset = vdupq_n_s32(r.out_offset);
  return map8(a, b, dst, count, [&](int32x4_t xa, int32x4_t xb) {
    return requant_product4(vmulq_s32(vaddq_s32(xa, ca), vaddq_s32(xb, cb)), m, q, offset);
  });
}

void mul(CodesIn a, int32_t a_zero_point, CodesIn b, int32_t b_zero_point, int64_t b_channels, int32_t multiplier,
         int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count, CodesOut out) {
  mul_by_vectors(a, a_zero_point, b, b_zero_point, b_channels, multiplier, shift, out_zero_point, lo, hi, count, out, 8,
                 [](auto... args) { return mul_run(args...); });
}

template <typename In, typename Out>
int64_t clamp_run(const In* src, Out* dst, int64_t count, ClampAdd bounds) {
  return map8(src, dst, count, ClampAdd128(bounds));
}

void clamp(CodesIn in, int64_t count, int32_t lo, int32_t hi, CodesOut out) {
  clamp_by_vectors(in, count, lo, hi, out, [](auto... args) { return clamp_run(args...); });
}

// uint8 -> uint8 lookup through a 256-byte table in 16 registers: TBL on its first 64 bytes, TBX on the next three
// (an index past a TBX table's 64 bytes leaves the lane as it was). The caller's table covers only the codes that
// occur, so, as on AVX-512 VBMI, the bytes' table is filled for the range of stored bytes met so far: each 4 KiB
// chunk is scanned for its min and max (in L1) before its lookup.
void lookup_bytes(const uint8_t* src, uint8_t* dst, int64_t count, const int32_t* table, int64_t table_size,
                  int64_t base, int32_t out_offset) {
  alignas(16) uint8_t bytes[256] = {};
  int filled_lo = 256, filled_hi = -1;  // bytes[b] = table[b + base] - out_offset for b in [filled_lo, filled_hi]
  uint8x16x4_t quarters[4] = {};
  constexpr int64_t kChunk = 4096;
  for (int64_t c = 0; c < count; c += kChunk) {
    const uint8_t* s = src + c;
    uint8_t* d = dst + c;
    const int64_t n = std::min(kChunk, count - c), whole = n / 16 * 16;
    uint8x16_t lo = vdupq_n_u8(255), hi = vdupq_n_u8(0);
    for (int64_t i = 0; i < whole; i += 16) {
      const uint8x16_t v = vld1q_u8(s + i);
      lo = vminq_u8(lo, v);
      hi = vmaxq_u8(hi, v);
    }
    int b_lo = vminvq_u8(lo), b_hi = vmaxvq_u8(hi);
    for (int64_t i = whole; i < n; ++i) {
      b_lo = std::min<int>(b_lo, s[i]);
      b_hi = std::max<int>(b_hi, s[i]);
    }
    if (b_lo < filled_lo || b_hi > filled_hi) {
      filled_lo = std::min(filled_lo, b_lo);
      filled_hi = std::max(filled_hi, b_hi);
      for (int b = filled_lo; b <= filled_hi; ++b)
        bytes[b] = static_cast<uint8_t>(int64_t{table[std::clamp<int64_t>(b + base, 0, table_size - 1)]} - out_offset);
      for (int q = 0; q < 4; ++q)
        for (int r = 0; r < 4; ++r) quarters[q].val[r] = vld1q_u8(bytes + 64 * q + 16 * r);
    }
    for (int64_t i = 0; i < whole; i += 16) {
      const uint8x16_t v = vld1q_u8(s + i);
      uint8x16_t out = vqtbl4q_u8(quarters[0], v);
      out = vqtbx4q_u8(out, quarters[1], vsubq_u8(v, vdupq_n_u8(64)));
      out = vqtbx4q_u8(out, quarters[2], vsubq_u8(v, vdupq_n_u8(128)));
      out = vqtbx4q_u8(out, quarters[3], vsubq_u8(v, vdupq_n_u8(192)));
      vst1q_u8(d + i, out);
    }
    for (int64_t i = whole; i < n; ++i) d[i] = bytes[s[i]];
  }
}

void lookup(CodesIn in, int64_t count, const int32_t* table, int64_t table_size, int64_t input_min, CodesOut out) {
  if (in.storage == Storage::U8 && out.storage == Storage::U8 && table_size > 0)
    lookup_bytes(static_cast<const uint8_t*>(in.data), static_cast<uint8_t*>(out.data), count, table, table_size,
                 int64_t{in.offset} - input_min, out.offset);
  else
    lookup_codes_scalar(in, count, table, table_size, input_min, out);
}

template <typename In, typename Out>
void affine_run(const In* src, Out* dst, int64_t positions, int64_t channels, ClampAdd sat, const int32_t* multiplier,
                const uint8_t* shift, const int64_t* bias, int32_t out_zero_point, int32_t lo, int32_t hi,
                int32_t out_offset) {
  const int64_t full = channels / 8 * 8;
  std::vector<RoundingShift2> rounds;  // channels [c, c + 2): rounds[c / 2], once per call
  rounds.reserve(static_cast<size_t>(full / 2));
  for (int64_t c = 0; c < full; c += 2) rounds.emplace_back(int64x2_t{shift[c], shift[c + 1]});
  const ClampAdd128 s(sat);
  const int32x4_t offset = vdupq_n_s32(out_offset);
  const int64x2_t zp = vdupq_n_s64(out_zero_point), vlo = vdupq_n_s64(lo), vhi = vdupq_n_s64(hi);
  // channels [c, c + 2): x * multiplier + bias, rounded and clamped with the channels' shifts
  auto pair = [&](int64x2_t product, int64_t c) {
    return vmovn_s64(round_clamp(vaddq_s64(product, vld1q_s64(bias + c)), rounds[static_cast<size_t>(c / 2)], zp, vlo,
                                 vhi));
  };
  auto four = [&](int32x4_t x, int64_t c) {
    const int32x4_t m = vld1q_s32(multiplier + c);
    const int32x2_t low = pair(vmull_s32(vget_low_s32(x), vget_low_s32(m)), c);
    return vsubq_s32(vcombine_s32(low, pair(vmull_high_s32(x, m), c + 2)), offset);
  };
  for (int64_t p = 0; p < positions; ++p)
    for (int64_t ch = 0; ch < full; ch += 8) {
      const Lanes8 x = s(load8(src + p * channels + ch));
      store8(dst + p * channels + ch, {four(x.lo, ch), four(x.hi, ch + 4)});
    }
}

void affine(CodesIn in, int64_t count, int64_t channels, int32_t in_zero_point, const int32_t* multiplier,
            const uint8_t* shift, const int64_t* bias, int32_t out_zero_point, int32_t lo, int32_t hi, CodesOut out) {
  affine_by_vectors(in, count, channels, in_zero_point, multiplier, shift, bias, out_zero_point, lo, hi, out, 8,
                    [](auto... args) { affine_run(args...); });
}

// The reductions over positions run down the positions one vector of channels at a time (16 uint8 or 4 int32
// channels), the channels past the last whole vector on the scalar loop. uint8 sums in uint16 lanes for 257
// positions at a time (257 * 255 < 2^16), int32 sums in int32 lanes for `run` positions (sum_run) or, for codes of
// too wide a range, in int64 lanes; each run then added to the int64 sums. Maxima in byte or int32 lanes.
void add_to_sums(int64_t* sums, int32x4_t v) {
  vst1q_s64(sums, vaddw_s32(vld1q_s64(sums), vget_low_s32(v)));
  vst1q_s64(sums + 2, vaddw_high_s32(vld1q_s64(sums + 2), v));
}

void sum_typed(const uint8_t* src, int64_t positions, int64_t channels, InputRange, int64_t* sums) {
  constexpr int64_t kRun = 257;
  const int64_t full = channels / 16 * 16;
  for (int64_t ch = 0; ch < full; ch += 16)
    for (int64_t p0 = 0; p0 < positions; p0 += kRun) {
      uint16x8_t lo = vdupq_n_u16(0), hi = lo;
      for (int64_t p = p0; p < std::min(positions, p0 + kRun); ++p) {
        const uint8x16_t v = vld1q_u8(src + p * channels + ch);
        lo = vaddw_u8(lo, vget_low_u8(v));
        hi = vaddw_high_u8(hi, v);
      }
      const uint16x8_t halves[2] = {lo, hi};
      for (int i = 0; i < 4; ++i) {
        const uint16x8_t h = halves[i / 2];
        add_to_sums(sums + ch + 4 * i,
                    vreinterpretq_s32_u32(i % 2 ? vmovl_high_u16(h) : vmovl_u16(vget_low_u16(h))));
      }
    }
  for (int64_t p = 0; p < positions; ++p)
    for (int64_t ch = full; ch < channels; ++ch) sums[ch] += src[p * channels + ch];
}

void sum_typed(const int32_t* src, int64_t positions, int64_t channels, InputRange stored, int64_t* sums) {
  const int64_t full = channels / 4 * 4, run = sum_run<int32_t>(stored);
  for (int64_t ch = 0; ch < full; ch += 4) {
    if (run < kMinSumRun) {
      int64x2_t lo = vld1q_s64(sums + ch), hi = vld1q_s64(sums + ch + 2);
      for (int64_t p = 0; p < positions; ++p) {
        const int32x4_t v = vld1q_s32(src + p * channels + ch);
        lo = vaddw_s32(lo, vget_low_s32(v));
        hi = vaddw_high_s32(hi, v);
      }
      vst1q_s64(sums + ch, lo);
      vst1q_s64(sums + ch + 2, hi);
      continue;
    }
    for (int64_t p0 = 0; p0 < positions; p0 += run) {
      int32x4_t acc = vdupq_n_s32(0);
      for (int64_t p = p0; p < std::min(positions, p0 + run); ++p)
        acc = vaddq_s32(acc, vld1q_s32(src + p * channels + ch));
      add_to_sums(sums + ch, acc);
    }
  }
  for (int64_t p = 0; p < positions; ++p)
    for (int64_t ch = full; ch < channels; ++ch) sums[ch] += src[p * channels + ch];
}

void sum_positions(CodesIn in, int64_t positions, int64_t channels, InputRange stored, int64_t* sums) {
  if (!with_vector_input(in, [&](auto src) { sum_typed(src, positions, channels, stored, sums); }))
    sum_positions_scalar(in, positions, channels, stored, sums);
}

void max_typed(const uint8_t* src, int64_t positions, int64_t channels, int32_t* maxima) {
  const int64_t full = channels / 16 * 16;
  for (int64_t ch = 0; ch < full; ch += 16) {
    uint8x16_t m = vdupq_n_u8(0);
    for (int64_t p = 0; p < positions; ++p) m = vmaxq_u8(m, vld1q_u8(src + p * channels + ch));
    const uint16x8_t w[2] = {vmovl_u8(vget_low_u8(m)), vmovl_high_u8(m)};
    for (int i = 0; i < 4; ++i) {
      const int32x4_t v = vreinterpretq_s32_u32(i % 2 ? vmovl_high_u16(w[i / 2]) : vmovl_u16(vget_low_u16(w[i / 2])));
      vst1q_s32(maxima + ch + 4 * i, vmaxq_s32(vld1q_s32(maxima + ch + 4 * i), v));
    }
  }
  for (int64_t p = 0; p < positions; ++p)
    for (int64_t ch = full; ch < channels; ++ch) maxima[ch] = std::max<int32_t>(maxima[ch], src[p * channels + ch]);
}

void max_typed(const int32_t* src, int64_t positions, int64_t channels, int32_t* maxima) {
  const int64_t full = channels / 4 * 4;
  for (int64_t ch = 0; ch < full; ch += 4) {
    int32x4_t m = vld1q_s32(maxima + ch);
    for (int64_t p = 0; p < positions; ++p) m = vmaxq_s32(m, vld1q_s32(src + p * channels + ch));
    vst1q_s32(maxima + ch, m);
  }
  for (int64_t p = 0; p < positions; ++p)
    for (int64_t ch = full; ch < channels; ++ch) maxima[ch] = std::max(maxima[ch], src[p * channels + ch]);
}

void max_positions(CodesIn in, int64_t positions, int64_t channels, int32_t* maxima) {
  if (positions < 1) return;  // the uint8 vectors start from 0
  if (!with_vector_input(in, [&](auto src) { max_typed(src, positions, channels, maxima); }))
    max_positions_scalar(in, positions, channels, maxima);
}

}  // namespace

const EltwiseKernels* eltwise_kernels_neon() {
  static constexpr EltwiseKernels kernels{requantize, add, mul, clamp, lookup, affine, sum_positions, max_positions};
  return &kernels;
}
#else
const EltwiseKernels* eltwise_kernels_neon() { return nullptr; }
#endif

}  // namespace qcnn
