// Integer epilogues and pooling on activation codes stored NHWC, one image or a batch at a time
// (docs/FORMAT.md). A value's code is `stored + offset`: the engine keeps codes whose range spans
// at most 256 values as uint8 and the rest as int32.
//
// Fixed-point requantization:
//   out = clamp(zp_out + rounding_shift(clamp32(in - zp_in) * multiplier, shift), lo, hi)
// rounding_shift(v, s) = v / 2^s rounded to nearest, ties to even, for s >= 1 (torch's fake quantization rounds
// the same way: fixed-point scales, powers of two, make ties common), v for s = 0.
#pragma once
#include <cstdint>
#include <vector>

#include "core/isa.h"
#include "core/qgemm.h"

namespace qcnn {

// For int64_t, and for __int128 where a sum can leave int64.
template <typename T>
inline T rounding_shift(T v, int shift) {
  static_assert(sizeof(T) >= 8, "an int64 or wider sum: a narrower one would wrap");
  // floor((v + 2^(s-1) - 1 + bit_s(v)) / 2^s): below the tie the -1 changes nothing, at the tie it rounds down
  // unless floor(v / 2^s) is odd. Arithmetic right shift of a signed value is floor division (guaranteed since
  // C++20, and what every supported compiler does in C++17).
  return shift == 0 ? v : (v + (T{1} << (shift - 1)) - 1 + ((v >> shift) & 1)) >> shift;
}

inline int64_t clamp_to_int32(int64_t v) { return v < INT32_MIN ? INT32_MIN : (v > INT32_MAX ? INT32_MAX : v); }

struct CodesIn {
  const void* data;
  Storage storage;  // U8 or I32
  int32_t offset;
};

struct CodesOut {
  void* data;
  Storage storage;  // U8 or I32
  int32_t offset;
};

// The elementwise kernels below take the engine's Isa first: Isa::Scalar runs the reference loops, the others
// (which the caller has checked with isa_supported) vector paths with bit-identical results. Any
// call may cover a sub-range of a tensor (pointers advanced by whole elements) and run concurrently with others.

// `count` elements: out = clamp(zo + RS(clamp32(x - zi) * multiplier, shift), lo, hi).
void requantize_codes(Isa isa, CodesIn in, int64_t count, int32_t in_zero_point, int32_t multiplier, int shift,
                      int32_t out_zero_point, int32_t lo, int32_t hi, CodesOut out);

// out = clamp(zo + RS(clamp32(a - za) * ma + clamp32(b - zb) * mb, shift), lo, hi), |ma|, |mb| < 2^30.
// a_range / b_range: the values clamp32(a - za) / clamp32(b - zb) lie in (the engine knows them from the
// producers; InputRange{} when unknown): where they keep every step within int32 (add_fits_int32), the vector
// paths compute in int32 lanes, twice as many per instruction as the int64 ones.
void add_codes(Isa isa, CodesIn a, int32_t a_zero_point, int32_t a_multiplier, CodesIn b, int32_t b_zero_point,
               int32_t b_multiplier, int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count,
               CodesOut out, InputRange a_range, InputRange b_range);

// Whether zo + RS(da * ma + db * mb, shift) and each step before it stays within int32 for every da in a_range
// and db in b_range.
bool add_fits_int32(InputRange a_range, int32_t a_multiplier, InputRange b_range, int32_t b_multiplier, int shift,
                    int32_t out_zero_point);

// A requantization out = clamp(zo + RS(x * multiplier + bias, shift), lo, hi) of inputs x in [x.lo, x.hi] (int32)
// that no input rounds at a tie: x beyond [x_lo, x_hi] saturates the output (so x may be clamped there first), no x
// in between makes x * multiplier + bias = 2^(shift-1) mod 2^shift, so RS is (x * multiplier + bias_half) >> shift
// with bias_half = bias + 2^(shift-1) (bias for shift 0), and that r fits int32 with r + out_add, out_lo and out_hi:
// the stored output is clamp(r + out_add, out_lo, out_hi). The vector paths then skip the parity term of
// ties-to-even and compute the clamp and the offsets in int32 lanes.
struct TieFreeRequant {
  int32_t x_lo, x_hi;
  int64_t bias_half;
  int32_t out_add, out_lo, out_hi;
};
// False where the requantization has ties in the range, or a bound leaves int32 (or a step int64).
bool tie_free_requant(InputRange x, int32_t multiplier, int64_t bias, int shift, int32_t out_zero_point, int32_t lo,
                      int32_t hi, int32_t out_offset, TieFreeRequant* t);

// out = clamp(zo + RS((a - za) * (b - zb) * multiplier, shift), lo, hi) for `count` elements of a; b has
// `count` elements too, or b_channels (> 0) of them, broadcast over the positions of NHWC a (b[i % b_channels]:
// a [C, H, W] times a [C, 1, 1] gate; a sub-range then starts at a multiple of b_channels). The caller keeps
// |a - za|, |b - zb| <= 2^15 and |multiplier| < 2^31 (the vector paths rely on it).
void mul_codes(Isa isa, CodesIn a, int32_t a_zero_point, CodesIn b, int32_t b_zero_point, int64_t b_channels,
               int32_t multiplier, int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count,
               CodesOut out);

// out = clamp(x, lo, hi) (ReLU on codes).
void clamp_codes(Isa isa, CodesIn in, int64_t count, int32_t lo, int32_t hi, CodesOut out);

// Channel concatenation of NHWC images: out[p, offset_i + c] = in_i[p, c] for `pixels` positions, every
// input's codes already in the output's quantization (only storage and offset may differ).
void concat_nhwc(const std::vector<CodesIn>& inputs, const std::vector<int64_t>& channels, int64_t pixels,
                 CodesOut out);

// Channel gather of NHWC images: out[p, c] = in[p, index[c]] for `pixels` positions (a channel shuffle, a chunk
// or split along the channels); in and out share storage and offset. The caller keeps index[c] < in_channels.
void gather_channels_nhwc(CodesIn in, int64_t pixels, int64_t in_channels, const int32_t* index, int64_t out_channels,
                          CodesOut out);

// out = table[clamp(x - input_min, 0, table_size - 1)]: any elementwise function of the codes that is constant
// below input_min and from input_min + table_size - 1 on (the engine trims a function's constant ends off its
// table, which keeps the table in L1). 1 <= table_size <= 65536.
void lookup_codes(Isa isa, CodesIn in, int64_t count, const int32_t* table, int64_t table_size, int64_t input_min,
                  CodesOut out);

// out = clamp(zo + RS(clamp32(x - zi) * multiplier[ch] + bias[ch], shift[ch]), lo, hi) with ch = i % channels: a
// per-channel affine map (a BatchNorm that folds into no conv) of NHWC [H, W, C] codes or of flat [C] ones. Exact
// for every multiplier, shift and bias (the loader keeps multiplier > INT32_MIN, shift <= 62 and |bias| <= 2^61);
// the vector paths take the scalar loop for a call with a channel whose sum could leave int64.
void affine_codes(Isa isa, CodesIn in, int64_t count, int64_t channels, int32_t in_zero_point,
                  const int32_t* multiplier, const uint8_t* shift, const int64_t* bias, int32_t out_zero_point,
                  int32_t lo, int32_t hi, CodesOut out);

// The windows of one pooling axis: output i reads the input cells [begin[i], end[i]) (never empty) and average
// pooling divides by the product of both axes' divisor[i].
struct PoolAxis {
  std::vector<int64_t> begin, end, divisor;
  int64_t size() const { return static_cast<int64_t>(begin.size()); }
};

// torch's windows of a kernel/stride/padding axis (ceil_mode rounds the output size up, the last window starting
// inside the input or its left padding). The divisor counts the window's cells inside the padded input
// (count_include_pad) or inside the input. Throws std::invalid_argument when no window fits, when padding
// exceeds half the kernel, or on a bad kernel, stride or padding.
PoolAxis pool_axis(int64_t in, int kernel, int stride, int pad, bool ceil_mode, bool count_include_pad,
                   const char* what);
// Adaptive pooling from `in` to `out` cells (out may exceed in: windows then repeat cells): window i is
// [floor(i * in / out), ceil((i + 1) * in / out)).
PoolAxis adaptive_pool_axis(int64_t in, int64_t out, const char* what);

// Per-channel reductions over the positions of NHWC codes [positions, channels], on the stored values (codes minus
// the offset: a mean or max of stored values plus the offset is that of the codes). sum_positions adds each channel's
// sum into sums[ch]; `stored` bounds the stored values (InputRange{} when unknown; a wrong bound gives wrong sums):
// the vector paths add int32 codes in int32 lanes as long as their sums cannot leave int32. The caller keeps every
// partial sum within int64 (positions * max |stored| < 2^63). max_positions sets maxima[ch] = max(maxima[ch], each
// channel's largest stored value).
void sum_positions(Isa isa, CodesIn in, int64_t positions, int64_t channels, InputRange stored, int64_t* sums);
void max_positions(Isa isa, CodesIn in, int64_t positions, int64_t channels, int32_t* maxima);

// The mean of n >= 1 values of sum `sum` rounded half up: floor((sum + n / 2) / n), floor division also for negative
// sums (what average pooling writes). |sum| < 2^62 and n < 2^62.
inline int64_t rounded_mean(int64_t sum, int64_t n) {
  const int64_t num = sum + n / 2;
  const int64_t q = num / n;
  return (num % n != 0 && num < 0) ? q - 1 : q;
}

// Max or average pooling of one NHWC image [rows.end.back() <= h, w, c] to [rows.size(), cols.size(), c], output
// rows [row_begin, row_end) (out points at the whole output); in and out share storage and offset (max and the
// rounded mean commute with the offset). Max skips padded cells; the mean is floor((sum + n / 2) / n) over its
// n = divisor cells, floor division also for negative sums, where the cells of a divisor beyond the window's input
// cells (count_include_pad) hold `pad_code`, the code of 0. `stored` bounds the stored input values (as for
// sum_positions). Its buffers are the running thread's `scratch`.
void pool_nhwc(Isa isa, CodesIn in, InputRange stored, int64_t w, int64_t c, const PoolAxis& rows,
               const PoolAxis& cols, bool max, int64_t pad_code, CodesOut out, int64_t row_begin, int64_t row_end,
               ThreadScratch& scratch);

// First codes of one image: pixels [c, hw] (NCHW, uint8) through lut[ch * 256 + p], stored NHWC (out points at the
// whole image), positions [begin, end).
void lookup_pixels_nhwc(const uint8_t* pixels, int64_t c, int64_t hw, const int32_t* lut, CodesOut out, int64_t begin,
                        int64_t end);

}  // namespace qcnn
