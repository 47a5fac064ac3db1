// Internal: the vector paths of the elementwise integer kernels of requant.h, one table of function pointers per
// instruction set (eltwise_avx2.cpp, eltwise_avx512.cpp), and the scalar reference loops they fall back on for
// the cases and tails they do not cover. requant.cpp dispatches on the engine's Isa.
#pragma once
#include <cstdint>

#include "core/requant.h"

namespace qcnn {

// Every kernel computes exactly what its scalar loop computes, for any argument (uncovered cases fall back).
struct EltwiseKernels {
  void (*requantize)(CodesIn in, int64_t count, int32_t in_zero_point, int32_t multiplier, int shift,
                     int32_t out_zero_point, int32_t lo, int32_t hi, CodesOut out);
  void (*add)(CodesIn a, int32_t a_zero_point, int32_t a_multiplier, CodesIn b, int32_t b_zero_point,
              int32_t b_multiplier, int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count,
              CodesOut out);
  void (*mul)(CodesIn a, int32_t a_zero_point, CodesIn b, int32_t b_zero_point, int64_t b_channels,
              int32_t multiplier, int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count,
              CodesOut out);
  void (*clamp)(CodesIn in, int64_t count, int32_t lo, int32_t hi, CodesOut out);
  void (*lookup)(CodesIn in, int64_t count, const int32_t* table, int64_t input_min, CodesOut out);
  void (*affine)(CodesIn in, int64_t count, int64_t channels, int32_t in_zero_point, const int32_t* multiplier,
                 const uint8_t* shift, const int64_t* bias, int32_t out_zero_point, int32_t lo, int32_t hi,
                 CodesOut out);
};

// nullptr on builds for other architectures. The AVX-512 table needs AVX-512 F/BW/VL (Isa::Avx512Vnni).
const EltwiseKernels* eltwise_kernels_avx2();
const EltwiseKernels* eltwise_kernels_avx512();

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
void lookup_codes_scalar(CodesIn in, int64_t count, const int32_t* table, int64_t input_min, CodesOut out);
void affine_codes_scalar(CodesIn in, int64_t count, int64_t channels, int32_t in_zero_point, const int32_t* multiplier,
                         const uint8_t* shift, const int64_t* bias, int32_t out_zero_point, int32_t lo, int32_t hi,
                         CodesOut out);

// Helpers for the vector files.

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

// clamp32(x + c) of an int32 x, computed in wrapping int32 lanes as min(max(x, lo), hi) + add. False when c lies
// outside int32 (the scalar loop then runs).
struct SaturatingAdd {
  int32_t lo, hi, add;
};
inline bool saturating_add(int64_t c, SaturatingAdd* s) {
  if (c < INT32_MIN || c > INT32_MAX) return false;
  s->add = static_cast<int32_t>(c);
  s->lo = static_cast<int32_t>(c < 0 ? INT32_MIN - c : INT32_MIN);
  s->hi = static_cast<int32_t>(c > 0 ? INT32_MAX - c : INT32_MAX);
  return true;
}

// rounding_shift(v, s), 0 <= s <= 63, as (v + half + ((v >>> odd_shift) & 1)) >> s: a logical shift by 64 yields
// 0, so odd_shift = 64 and half = 0 make s = 0 the identity without a branch.
inline int64_t rounding_half(int s) { return s == 0 ? 0 : (int64_t{1} << (s - 1)) - 1; }
inline int64_t rounding_odd_shift(int s) { return s == 0 ? 64 : s; }

// The wrapping int32 value that `a - b` (int64) narrows to.
inline int32_t wrap32(int64_t v) { return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(v))); }

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
