// Internal: the vector paths of the elementwise integer kernels of requant.h, one table of function pointers per
// instruction set (eltwise_avx2.cpp, eltwise_avx512.cpp, eltwise_neon.cpp), and the scalar reference loops they fall
// back on for the cases and tails they do not cover. requant.cpp dispatches on the engine's Isa.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "core/requant.h"

namespace qcnn {

// Every kernel computes exactly what its scalar loop computes, for any argument (uncovered cases fall back).
struct EltwiseKernels {
  void (*requantize)(CodesIn in, int64_t count, int32_t in_zero_point, int32_t multiplier, int shift,
                     int32_t out_zero_point, int32_t lo, int32_t hi, CodesOut out);
  void (*add)(CodesIn a, int32_t a_zero_point, int32_t a_multiplier, CodesIn b, int32_t b_zero_point,
              int32_t b_multiplier, int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count,
              CodesOut out, InputRange a_range, InputRange b_range);
  void (*mul)(CodesIn a, int32_t a_zero_point, CodesIn b, int32_t b_zero_point, int64_t b_channels,
              int32_t multiplier, int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count,
              CodesOut out);
  void (*clamp)(CodesIn in, int64_t count, int32_t lo, int32_t hi, CodesOut out);
  void (*lookup)(CodesIn in, int64_t count, const int32_t* table, int64_t table_size, int64_t input_min, CodesOut out);
  void (*affine)(CodesIn in, int64_t count, int64_t channels, int32_t in_zero_point, const int32_t* multiplier,
                 const uint8_t* shift, const int64_t* bias, int32_t out_zero_point, int32_t lo, int32_t hi,
                 CodesOut out);
  void (*sum_positions)(CodesIn in, int64_t positions, int64_t channels, InputRange stored, int64_t* sums);
  void (*max_positions)(CodesIn in, int64_t positions, int64_t channels, int32_t* maxima);
};

// nullptr on builds for other architectures. The AVX-512 table needs AVX-512 F/BW/VL (Isa::Avx512Vnni and Isa::Amx).
const EltwiseKernels* eltwise_kernels_avx2();
const EltwiseKernels* eltwise_kernels_avx512();
const EltwiseKernels* eltwise_kernels_neon();  // every aarch64 path

// The scalar reference loops (requant.cpp), what Isa::Scalar runs.
void requantize_codes_scalar(CodesIn in, int64_t count, int32_t in_zero_point, int32_t multiplier, int shift,
                             int32_t out_zero_point, int32_t lo, int32_t hi, CodesOut out);
void add_codes_scalar(CodesIn a, int32_t a_zero_point, int32_t a_multiplier, CodesIn b, int32_t b_zero_point,
                      int32_t b_multiplier, int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count,
                      CodesOut out);
void mul_codes_scalar(CodesIn a, int32_t a_zero_point, CodesIn b, int32_t b_zero_point, int64_t b_channels,
                      int32_t multiplier, int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count,
                      CodesOut out);
void clamp_codes_scalar(CodesIn in, int64_t count, int32_t lo, int32_t hi, CodesOut out);
void lookup_codes_scalar(CodesIn in, int64_t count, const int32_t* table, int64_t table_size, int64_t input_min,
                         CodesOut out);

void affine_codes_scalar(CodesIn in, int64_t count, int64_t channels, int32_t in_zero_point, const int32_t* multiplier,
                         const uint8_t* shift, const int64_t* bias, int32_t out_zero_point, int32_t lo, int32_t hi,
                         CodesOut out);

void sum_positions_scalar(CodesIn in, int64_t positions, int64_t channels, InputRange stored, int64_t* sums);
void max_positions_scalar(CodesIn in, int64_t positions, int64_t channels, int32_t* maxima);

// Helpers for the vector files.

// How many positions of stored values of type T in `stored` (uint8 codes: [0, 255] whatever it says) the vector
// sums may add in int32 lanes before moving them to the int64 sums (|sum| <= run * max |stored| < 2^31); below
// kMinSumRun they add in int64 lanes instead.
template <typename T>
inline int64_t sum_run(InputRange stored) {
  if constexpr (std::is_same_v<T, uint8_t>) stored = InputRange{0, 255};
  const int64_t largest =
      std::max<int64_t>({1, stored.lo < 0 ? -stored.lo : stored.lo, stored.hi < 0 ? -stored.hi : stored.hi});
  return INT32_MAX / largest;
}
constexpr int64_t kMinSumRun = 64;

// Calls f(typed input pointer) for U8 / I32 codes; false for any other storage (the scalar loop then reports it).
template <typename F>
bool with_vector_input(const CodesIn& in, F&& f) {
  if (in.storage == Storage::U8)
    f(static_cast<const uint8_t*>(in.data));
  else if (in.storage == Storage::I32)
    f(static_cast<const int32_t*>(in.data));
  else
    return false;
  return true;
}

// Calls f(typed input pointer, typed output pointer) for U8 / I32 codes; false for any other storage (the scalar
// loop then reports it).
template <typename F>
bool with_vector_codes(const CodesIn& in, const CodesOut& out, F&& f) {
  const bool in_u8 = in.storage == Storage::U8, out_u8 = out.storage == Storage::U8;
  if ((!in_u8 && in.storage != Storage::I32) || (!out_u8 && out.storage != Storage::I32)) return false;
  if (in_u8 && out_u8) f(static_cast<const uint8_t*>(in.data), static_cast<uint8_t*>(out.data));
  if (in_u8 && !out_u8) f(static_cast<const uint8_t*>(in.data), static_cast<int32_t*>(out.data));
  if (!in_u8 && out_u8) f(static_cast<const int32_t*>(in.data), static_cast<uint8_t*>(out.data));
  if (!in_u8 && !out_u8) f(static_cast<const int32_t*>(in.data), static_cast<int32_t*>(out.data));
  return true;
}

// The same with a second input: f(a, b, out).
template <typename F>
bool with_vector_codes(const CodesIn& a, const CodesIn& b, const CodesOut& out, F&& f) {
  if (b.storage == Storage::U8)
    return with_vector_codes(a, out, [&](auto sa, auto dst) { f(sa, static_cast<const uint8_t*>(b.data), dst); });
  if (b.storage == Storage::I32)
    return with_vector_codes(a, out, [&](auto sa, auto dst) { f(sa, static_cast<const int32_t*>(b.data), dst); });
  return false;
}

// The wrapping int32 value that `a - b` (int64) narrows to.
inline int32_t wrap32(int64_t v) { return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(v))); }

// The stored values [lo, hi] (clamped into int32) whose codes fall inside a lookup table of `size` entries from
// input_min, and the base that makes a stored value clamped there its index into the table, x + base in wrapping
// int32 lanes (a table wholly beyond int32's stored values: every value clamps to one end and reads that entry).
struct TableBounds {
  int32_t lo, hi, base;
};
inline TableBounds table_bounds(int32_t offset, int64_t table_size, int64_t input_min) {
  const int64_t lo = input_min - offset, hi = lo + table_size - 1;
  const int64_t lo32 = std::clamp<int64_t>(lo, INT32_MIN, INT32_MAX), hi32 = std::clamp<int64_t>(hi, INT32_MIN, INT32_MAX);
  return {static_cast<int32_t>(lo32), static_cast<int32_t>(hi32),
          wrap32(std::clamp<int64_t>(lo32 - lo, 0, table_size - 1) - lo32)};
}

// min(max(x, lo), hi) + add of an int32 x in wrapping int32 lanes: clamp32(x + c) (saturating_add) or a clamp of
// the codes (stored_clamp).
struct ClampAdd {
  int32_t lo, hi, add;
};

// clamp32(x + c). False when c lies outside int32 (the scalar loop then runs).
inline bool saturating_add(int64_t c, ClampAdd* s) {
  if (c < INT32_MIN || c > INT32_MAX) return false;
  s->add = static_cast<int32_t>(c);
  s->lo = static_cast<int32_t>(c < 0 ? INT32_MIN - c : INT32_MIN);
  s->hi = static_cast<int32_t>(c > 0 ? INT32_MAX - c : INT32_MAX);
  return true;
}

// clamp_codes on the stored x: clamp(x + o, lo, hi) - o_out = clamp(x, lo - o, hi - o) + o - o_out, exact with the
// bounds clamped into int32 unless a bound lies beyond int32 on the wrong side (every code then maps to one) or
// lo > hi; false then (the scalar loop runs).
inline bool stored_clamp(int32_t in_offset, int32_t lo, int32_t hi, int32_t out_offset, ClampAdd* s) {
  const int64_t lo_stored = int64_t{lo} - in_offset, hi_stored = int64_t{hi} - in_offset;
  if (lo > hi || lo_stored > INT32_MAX || hi_stored < INT32_MIN) return false;
  s->lo = static_cast<int32_t>(std::max<int64_t>(lo_stored, INT32_MIN));
  s->hi = static_cast<int32_t>(std::min<int64_t>(hi_stored, INT32_MAX));
  s->add = wrap32(int64_t{in_offset} - out_offset);
  return true;
}

// The parameters every requantizing kernel shares; valid when the vector form equals the scalar one.
struct Requant {
  int shift;
  int32_t zero_point, lo, hi, out_offset;
  bool valid() const { return shift >= 0 && shift <= 63 && lo <= hi; }
};

// rounding_shift(v, s), 0 <= s <= 63, as (v + half + ((v >>> odd_shift) & 1)) >> s: a logical shift by 64 yields
// 0, so odd_shift = 64 and half = 0 make s = 0 the identity without a branch.
inline int64_t rounding_half(int s) { return s == 0 ? 0 : (int64_t{1} << (s - 1)) - 1; }
inline int64_t rounding_odd_shift(int s) { return s == 0 ? 64 : s; }
// The same in int32 lanes (add_fits_int32's sums, 0 <= s <= 30).
inline int rounding_odd_shift32(int s) { return s == 0 ? 32 : s; }

// The stored values whose input x = clamp32(stored + c) lies in [t.x_lo, t.x_hi], as bounds clamped into int32 with
// add = c: clamp_add(stored) is then x clamped into [t.x_lo, t.x_hi], exact in wrapping int32 lanes. False where
// every stored value lies beyond one end.
inline bool stored_range(const TieFreeRequant& t, int64_t c, ClampAdd* s) {
  const int64_t l = t.x_lo - c, h = t.x_hi - c;
  if (l > INT32_MAX || h < INT32_MIN) return false;
  *s = {static_cast<int32_t>(std::max<int64_t>(l, INT32_MIN)), static_cast<int32_t>(std::min<int64_t>(h, INT32_MAX)),
        wrap32(c)};
  return true;
}

// Whether the int64 lanes of a vector affine_codes hold every step of one channel for every int32 x (= clamp32(code
// - zi)): v = x * multiplier + bias, v + rounding_half(shift) + the odd bit, and RS(v, shift) + zo. True for every
// channel the loader accepts (multiplier > INT32_MIN, shift <= 62, |bias| <= 2^61); false for shift > 63.
inline bool affine_fits_int64(int32_t multiplier, int shift, int64_t bias, int32_t out_zero_point) {
  if (shift < 0 || shift > 63) return false;
  const __int128 reach = (__int128{1} << 31) * (multiplier < 0 ? -int64_t{multiplier} : int64_t{multiplier});
  const __int128 v_lo = bias - reach, v_hi = bias + reach;  // |x * multiplier| <= reach
  // For shift >= 1, |RS(v)| <= 2^62 leaves room for zo; for shift 0 (no rounding terms) RS(v) = v.
  const __int128 top = shift == 0 ? v_hi + std::max(out_zero_point, 0) : v_hi + rounding_half(shift) + 1;
  const __int128 bottom = shift == 0 ? v_lo + std::min(out_zero_point, 0) : v_lo;
  return bottom >= INT64_MIN && top <= INT64_MAX;
}

// Whether a vector affine_codes equals the scalar loop: whole positions (channels >= 1), lo <= hi, in.offset - zi
// inside int32 (sets *sat for x = clamp32(stored + in.offset - zi)) and every channel inside the int64 lanes.
inline bool affine_vector_ok(const CodesIn& in, int64_t count, int64_t channels, int32_t in_zero_point,
                             const int32_t* multiplier, const uint8_t* shift, const int64_t* bias,
                             int32_t out_zero_point, int32_t lo, int32_t hi, ClampAdd* sat) {
  if (channels < 1 || count % channels != 0 || lo > hi || !saturating_add(int64_t{in.offset} - in_zero_point, sat))
    return false;
  for (int64_t ch = 0; ch < channels; ++ch)
    if (!affine_fits_int64(multiplier[ch], shift[ch], bias[ch], out_zero_point)) return false;
  return true;
}

// The codes from element `i` on.
inline CodesIn codes_from(CodesIn c, int64_t i) {
  const int64_t bytes = c.storage == Storage::U8 ? 1 : 4;
  return {static_cast<const uint8_t*>(c.data) + i * bytes, c.storage, c.offset};
}
inline CodesOut codes_from(CodesOut c, int64_t i) {
  const int64_t bytes = c.storage == Storage::U8 ? 1 : 4;
  return {static_cast<uint8_t*>(c.data) + i * bytes, c.storage, c.offset};
}

}  // namespace qcnn
