// The binary kernels on aarch64 NEON (core/bitconv_kernels.h), one output pixel per slot (BitWeights::lanes = 1): TBL
// looks up 16 channels' sums in the pixel's table, 64 MACs per lookup; the popcount form takes 16 channels' weight
// bits over 8 input channels AND one bit plane of the pixel's, and CNT counts them, 128 MACs per plane.
#include <algorithm>
#include <cstring>

#include "core/bitconv_kernels.h"
#include "core/neon.h"

namespace qcnn {

#ifdef QCNN_ARM
namespace {

// The 16-bit sums of R slots x J groups (channels 0-7, 8-15) into the int32 outputs, stored less slot r's bias at
// the first epoch, added after it; then zeroed.
template <int R, int J>
void widen_words(uint16x8_t (&words)[R][J][2], const Slot* slots, int32_t* acc, int64_t ldc, bool first,
                 const int64_t (&bias)[R]) {
  for (int r = 0; r < R; ++r) {
    const int32x4_t start = vdupq_n_s32(static_cast<int32_t>(-bias[r]));
    for (int j = 0; j < J; ++j) {
      if (slots[r].out[0] >= 0) {
        int32_t* dst = acc + slots[r].out[0] * ldc + j * 16;
        for (int i = 0; i < 4; ++i) {
          const uint16x8_t h = words[r][j][i / 2];
          const int32x4_t sums = vreinterpretq_s32_u32(i % 2 ? vmovl_high_u16(h) : vmovl_u16(vget_low_u16(h)));
          vst1q_s32(dst + 4 * i, vaddq_s32(first ? start : vld1q_s32(dst + 4 * i), sums));
        }
      }
      words[r][j][0] = words[r][j][1] = vdupq_n_u16(0);
    }
  }
}

// The steps of both binary kernels: R slots x J groups of byte accumulators, step(s, bytes) adding step s into them,
// added into 16-bit sums every `flush` steps (each byte times 2^kShift: UADDW, or USHLL and ADD), those widened into
// the int32 outputs less each slot's bias every `epoch` steps.
template <int R, int J, int kShift, typename Step>
void accumulate_steps(const KernelArgs& a, const Slot* slots, const int64_t (&bias)[R], int32_t* acc, int64_t ldc,
                      Step&& step) {
  uint8x16_t bytes[R][J];
  uint16x8_t words[R][J][2];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) {
      bytes[r][j] = vdupq_n_u8(0);
      words[r][j][0] = words[r][j][1] = vdupq_n_u16(0);
    }
  int64_t epoch_steps = 0;
  bool first = true;
  const int64_t steps = a.taps * a.tap_steps;
  for (int64_t s0 = 0; s0 < steps; s0 += a.flush) {
    const int64_t s1 = std::min<int64_t>(steps, s0 + a.flush);
    for (int64_t s = s0; s < s1; ++s) step(s, bytes);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < J; ++j) {
        if constexpr (kShift == 0) {
          words[r][j][0] = vaddw_u8(words[r][j][0], vget_low_u8(bytes[r][j]));
          words[r][j][1] = vaddw_high_u8(words[r][j][1], bytes[r][j]);
        } else {
          words[r][j][0] = vaddq_u16(words[r][j][0], vshll_n_u8(vget_low_u8(bytes[r][j]), kShift));
          words[r][j][1] = vaddq_u16(words[r][j][1], vshll_high_n_u8(bytes[r][j], kShift));
        }
        bytes[r][j] = vdupq_n_u8(0);
      }
    if ((epoch_steps += a.flush) == a.epoch) {
      widen_words(words, slots, acc, ldc, first, bias);
      first = false;
      epoch_steps = 0;
    }
  }
  widen_words(words, slots, acc, ldc, first, bias);
}

// The tables, R slots x J groups (a group's patterns group_stride bytes apart): byte accumulators of biased table
// entries (at most 2 beta per step). 2 x 6: 12 byte accumulators, 2 tables and a pattern in registers.
template <int R, int J, bool kContiguous>
void binary_kernel_neon(const KernelArgs& a, const Slot* slots, const uint8_t* patterns, int32_t* acc, int64_t ldc) {
  const uint8_t* base[R];
  int64_t bias[R];
  for (int r = 0; r < R; ++r) {
    base[r] = a.image + slots[r].offset;
    bias[r] = a.bias;
  }
  accumulate_steps<R, J, 0>(a, slots, bias, acc, ldc, [&](int64_t s, uint8x16_t (&bytes)[R][J]) {
    const int64_t offset = a.step_offsets[s];
    const uint8_t* pt = patterns + s * kPatternBytes;
    uint8x16_t table[R];
    for (int r = 0; r < R; ++r) table[r] = vld1q_u8(base[r] + offset);
    for (int j = 0; j < J; ++j) {
      const uint8x16_t pattern = vld1q_u8(pt + j * a.group_stride);
      for (int r = 0; r < R; ++r) bytes[r][j] = vaddq_u8(bytes[r][j], vqtbl1q_u8(table[r], pattern));
    }
  });
}

// The popcount form at 1 bit (at 2 bits the tables take fewer instructions: docs/BENCHMARKS.md), R slots x J groups:
// with w = +1 on the set weight bits, sum_k w v = 2 popcount(bits & plane) - sum_k v. Per step (8 input channels of
// one tap) LD1R replicates a pixel's plane byte, each group's 16 weight bytes AND it, CNT counts and ADD accumulates
// into byte counters (at most 8 per step: kPopcountFlush steps), 2 count into the 16-bit sums, the slot's sum of v
// its bias. 3 x 6: 18 byte counters, 3 planes and a weight register.
template <int R, int J>
void binary_popcount_neon(const KernelArgs& a, const Slot* slots, const uint8_t* patterns, int32_t* acc, int64_t ldc) {
  const uint8_t* base[R];
  int64_t bias[R];
  for (int r = 0; r < R; ++r) {
    base[r] = a.image + slots[r].offset;
    bias[r] = slots[r].value_sum[0];
  }
  accumulate_steps<R, J, 1>(a, slots, bias, acc, ldc, [&](int64_t s, uint8x16_t (&counts)[R][J]) {
    const int64_t offset = a.step_offsets[s];
    const uint8_t* pt = patterns + s * kPlanePatternBytes;
    uint8x16_t planes[R];
    for (int r = 0; r < R; ++r) planes[r] = vld1q_dup_u8(base[r] + offset);
    for (int j = 0; j < J; ++j) {
      const uint8x16_t bits = vld1q_u8(pt + j * a.group_stride);
      for (int r = 0; r < R; ++r) counts[r][j] = vaddq_u8(counts[r][j], vcntq_u8(vandq_u8(bits, planes[r])));
    }
  });
}

// quad[q] = sum_i v_{4q+i} << (B i) over n uint8 codes, 16 codes (4 quads) per step: v = (x - x_sub) & mask wraps
// exactly in bytes, a uint16 lane b0 + 256 b1 becomes b0 + (b1 << B), a uint32 lane of two of those
// p0 + 65536 p1 becomes p0 + (p1 << 2B). A last partial step reads a copy filled with x_sub past its codes, so the
// channels past n count as 0.
void quad_values_neon(const uint8_t* src, int64_t n, int32_t x_sub, int bits, int64_t quads, uint32_t* quad) {
  const uint8x16_t sub = vdupq_n_u8(static_cast<uint8_t>(x_sub));
  const uint8x16_t mask = vdupq_n_u8(static_cast<uint8_t>((1 << bits) - 1));
  const int16x8_t pair_shift = vdupq_n_s16(static_cast<int16_t>(bits));
  const int32x4_t quad_shift = vdupq_n_s32(2 * bits);
  for (int64_t c0 = 0; c0 < n; c0 += 16) {
    const int64_t len = std::min<int64_t>(16, n - c0);
    uint8x16_t v;
    if (len == 16) {
      v = vld1q_u8(src + c0);
    } else {
      uint8_t tail[16];
      std::memset(tail, static_cast<uint8_t>(x_sub), sizeof tail);
      std::memcpy(tail, src + c0, static_cast<size_t>(len));
      v = vld1q_u8(tail);
    }
    v = vandq_u8(vsubq_u8(v, sub), mask);
    const uint16x8_t w = vreinterpretq_u16_u8(v);
    const uint16x8_t pairs = vorrq_u16(vandq_u16(w, vdupq_n_u16(0xFF)), vshlq_u16(vshrq_n_u16(w, 8), pair_shift));
    const uint32x4_t d = vreinterpretq_u32_u16(pairs);
    const uint32x4_t packed = vorrq_u32(vandq_u32(d, vdupq_n_u32(0xFFFF)), vshlq_u32(vshrq_n_u32(d, 16), quad_shift));
    const int64_t out = std::min<int64_t>(4, quads - c0 / 4);
    if (out == 4) {
      vst1q_u32(quad + c0 / 4, packed);
    } else {
      uint32_t lanes[4];
      vst1q_u32(lanes, packed);
      std::memcpy(quad + c0 / 4, lanes, static_cast<size_t>(out) * sizeof(uint32_t));
    }
  }
}

// The popcount form's planes and value sums of w pixels of c uint8 codes (bitconv.cpp pixel_planes): CMTST selects
// the codes with bit p set, AND weighs lane i by 2^(i % 8), and three pairwise adds (16 codes) or one ADDV (8) gather
// each 8 lanes into a plane byte. A last partial octet reads a copy filled with x_sub past its codes (v = 0).
void binary_planes_neon(const uint8_t* src, int64_t w, int64_t c, int32_t x_sub, int bits, uint8_t* planes,
                        int64_t pixel_bytes, int32_t* sums) {
  static const uint8_t kLaneBits[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
  const uint8x16_t lane_bits = vld1q_u8(kLaneBits);
  const uint8x16_t sub = vdupq_n_u8(static_cast<uint8_t>(x_sub));
  const uint8x16_t mask = vdupq_n_u8(static_cast<uint8_t>((1 << bits) - 1));
  auto octet = [&](uint8x8_t x, uint8_t* dst, uint32_t& sum) {
    const uint8x8_t v = vand_u8(vsub_u8(x, vget_low_u8(sub)), vget_low_u8(mask));
    sum += vaddlv_u8(v);
    for (int p = 0; p < bits; ++p)
      dst[p] = vaddv_u8(vand_u8(vtst_u8(v, vdup_n_u8(static_cast<uint8_t>(1 << p))), vget_low_u8(lane_bits)));
  };
  for (int64_t ix = 0; ix < w; ++ix) {
    const uint8_t* px = src + ix * c;
    uint8_t* dst = planes + ix * pixel_bytes;
    uint32_t sum = 0;
    int64_t c0 = 0;
    for (; c0 + 16 <= c; c0 += 16, dst += 2 * bits) {
      const uint8x16_t v = vandq_u8(vsubq_u8(vld1q_u8(px + c0), sub), mask);
      sum += vaddlvq_u8(v);
      for (int p = 0; p < bits; ++p) {
        uint8x16_t m = vandq_u8(vtstq_u8(v, vdupq_n_u8(static_cast<uint8_t>(1 << p))), lane_bits);
        m = vpaddq_u8(m, m);
        m = vpaddq_u8(m, m);
        m = vpaddq_u8(m, m);
        dst[p] = vgetq_lane_u8(m, 0);
        dst[bits + p] = vgetq_lane_u8(m, 1);
      }
    }
    if (c0 + 8 <= c) {
      octet(vld1_u8(px + c0), dst, sum);
      c0 += 8;
      dst += bits;
    }
    if (c0 < c) {
      uint8_t tail[8];
      std::memset(tail, static_cast<uint8_t>(x_sub), sizeof tail);
      std::memcpy(tail, px + c0, static_cast<size_t>(c - c0));
      octet(vld1_u8(tail), dst, sum);
    }
    sums[ix] = static_cast<int32_t>(sum);
  }
}

}  // namespace

const BinaryKernels* binary_kernels_neon() {
  static const BinaryKernels kernels{
      kSlots,
      1,  // one pixel per slot: kContiguous (the second lane's place) does not matter
      {{QCNN_BINARY_ROW(binary_kernel_neon, 1, , false), QCNN_BINARY_ROW(binary_kernel_neon, 2, , false)},
       {QCNN_BINARY_ROW(binary_kernel_neon, 1, , true), QCNN_BINARY_ROW(binary_kernel_neon, 2, , true)}},
      quad_values_neon,
      3,
      {{QCNN_BINARY_ROW(binary_popcount_neon, 1), QCNN_BINARY_ROW(binary_popcount_neon, 2),
        QCNN_BINARY_ROW(binary_popcount_neon, 3)}},  // 1 bit only
      binary_planes_neon};
  return &kernels;
}
#else
const BinaryKernels* binary_kernels_neon() { return nullptr; }
#endif

}  // namespace qcnn
