// aarch64 Advanced SIMD (ARMv8.0, every aarch64 CPU) kernels of the convolutions (qgemm_kernels.h): the quad GEMM with
// widening multiplies, the int16-accumulator GEMM, depthwise on uint8 codes and the requantizing and threshold
// epilogues. Its table is the scalar one with these in place.
#include <array>
#include <cstring>
#include <type_traits>
#include <utility>

#include "core/neon.h"
#include "core/qgemm_kernels.h"

namespace qcnn {

#ifdef QCNN_ARM
namespace {

// Rows [r0, r0 + RB) x 16 channels: c = start + sum_q sum_i (a[4q + i] - 128) * w[q][lane][i]. SMULL multiplies the
// flipped quad, repeated, by 2 channels' quads into 8 int16 products (|product| <= 2^14), SADALP adds them in pairs
// into 4 int32 lanes (k0 + k1 and k2 + k3 of each channel), and a last pairwise add joins a channel's two lanes. The
// int32 adds wrap, so the sum is exact wherever the final value fits int32, which the engine proves at load.
template <int RB>
struct WideningPass {
  // Without GCC's scheduling before register allocation: with it the 24 accumulators, 4 weight and 4 product
  // registers do not fit the 32 and the inner loop spills (70 instructions instead of 63).
  __attribute__((optimize("no-schedule-insns"))) static void run(const RowSource<uint8_t, kVnniRows>& a, int r0,
                                                                 const int8_t* w, const int32_t* start, int32_t* c,
                                                                 int64_t ldc) {
    int32x4_t acc[RB][8];  // [row][2 i]: channels 4i and 4i + 1, [2 i + 1]: 4i + 2 and 4i + 3
    for (int r = 0; r < RB; ++r)
      for (int i = 0; i < 8; ++i) acc[r][i] = vdupq_n_s32(0);
    const int8_t* wq = w;
    for (int64_t s = 0; s < a.segs; ++s) {
      const uint8_t* ar[RB];
      for (int r = 0; r < RB; ++r) ar[r] = a.row[r0 + r] + s * a.seg_stride;
      for (int64_t q = 0; q < a.seg_steps; ++q, wq += 64) {
        int8x16_t wv[4];
        for (int i = 0; i < 4; ++i) wv[i] = vld1q_s8(wq + 16 * i);
        for (int r = 0; r < RB; ++r) {
          uint32_t quad;
          std::memcpy(&quad, ar[r] + 4 * q, sizeof quad);
          // flipped in a general register (an immediate EOR): the 32 vector registers hold no constant
          const int8x16_t av = vreinterpretq_s8_u32(vdupq_n_u32(quad ^ 0x80808080u));
          for (int i = 0; i < 4; ++i) {
            acc[r][2 * i] = vpadalq_s16(acc[r][2 * i], vmull_s8(vget_low_s8(wv[i]), vget_low_s8(av)));
            acc[r][2 * i + 1] = vpadalq_s16(acc[r][2 * i + 1], vmull_high_s8(wv[i], av));
          }
        }
      }
    }
    for (int r = 0; r < RB; ++r)
      for (int i = 0; i < 4; ++i)
        vst1q_s32(c + r * ldc + 4 * i,
                  vaddq_s32(vld1q_s32(start + 4 * i), vpaddq_s32(acc[r][2 * i], acc[r][2 * i + 1])));
  }
};

// a, b = the two registers at byte kOffset from p in one LDP at an immediate offset (given the loads, GCC pairs only
// some and spends an address add on others). The asm declares no memory read (a memory operand costs address adds
// again): it reads packed weights, which nothing writes while a kernel runs.
template <int kOffset>
void load_pair(const int16_t* p, int16x8_t& a, int16x8_t& b) {
  asm("ldp %q0, %q1, [%2, %3]" : "=w"(a), "=w"(b) : "r"(p), "i"(kOffset));
}

// wv[2 i], wv[2 i + 1] from byte kBase + 32 i.
template <int kBase, size_t... I>
void load_pairs(const int16_t* p, int16x8_t* wv, std::index_sequence<I...>) {
  (load_pair<kBase + 32 * static_cast<int>(I)>(p, wv[2 * I], wv[2 * I + 1]), ...);
}

// The int16-accumulator GEMM (ConvKernel::Acc16; de Bruin et al.): rows [0, R) x J 16-channel blocks (a group of
// weights16, [k][J x 16 channels]), c = sum over k of a (uint8) times w, 8 int16 lanes per MLA by element, twice the
// lanes of the int32 path. The activations are the row's next 8 bytes (4 pairs) widened once, taken by lane. pack_conv
// proved every partial sum of every channel inside int16 (max x * ||w_m||_1 <= 2^15 - 1), so the lanes never wrap;
// they are widened to int32 at the end. 3 x 48: 18 accumulators, 3 activation and 6 weight registers.
template <int R, int J>
struct Acc16Pass {
  static constexpr int kWords = 2 * J;  // weight registers per k
  static void run(const RowSource<uint8_t>& a, const int16_t* w, int32_t* c, int64_t ldc) {
    int16x8_t acc[R][kWords];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < kWords; ++i) acc[r][i] = vdupq_n_s16(0);
    const int16_t* wk = w;  // the weights of the next k
    for (int64_t s = 0; s < a.segs; ++s) {
      const uint8_t* ar[R];
      for (int r = 0; r < R; ++r) ar[r] = a.row[r] + s * a.seg_stride;
      int64_t q = 0;
      int16x8_t av[R];
      for (; q + 4 <= a.seg_steps; q += 4, wk += 8 * kWords * 8) {
        for (int r = 0; r < R; ++r) av[r] = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(ar[r] + 2 * q)));
        k_step<0>(acc, av, wk);
        k_step<1>(acc, av, wk);
        k_step<2>(acc, av, wk);
        k_step<3>(acc, av, wk);
        k_step<4>(acc, av, wk);
        k_step<5>(acc, av, wk);
        k_step<6>(acc, av, wk);
        k_step<7>(acc, av, wk);
      }
      for (; q < a.seg_steps; ++q, wk += 2 * kWords * 8) {
        for (int r = 0; r < R; ++r) av[r] = vsetq_lane_s16(ar[r][2 * q + 1], vdupq_n_s16(ar[r][2 * q]), 1);
        k_step<0>(acc, av, wk);
        k_step<1>(acc, av, wk);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < kWords; ++i) {
        vst1q_s32(c + r * ldc + 8 * i, vmovl_s16(vget_low_s16(acc[r][i])));
        vst1q_s32(c + r * ldc + 8 * i + 4, vmovl_high_s16(acc[r][i]));
      }
  }
  // The k in lane L of av (k number L from wk) against its channels' weights.
  template <int L>
  static void k_step(int16x8_t (&acc)[R][kWords], const int16x8_t (&av)[R], const int16_t* wk) {
    int16x8_t wv[kWords];
    load_pairs<L * kWords * 16>(wk, wv, std::make_index_sequence<J>());
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < kWords; ++i) acc[r][i] = vmlaq_laneq_s16(acc[r][i], wv[i], av[r], L);
  }
};

template <int R, int J>
void acc16_microkernel(const RowSource<uint8_t>& a, const int8_t* w, int64_t, int32_t* c, int64_t ldc) {
  Acc16Pass<R, J>::run(a, reinterpret_cast<const int16_t*>(w), c, ldc);
}

// Depthwise on uint8 codes (ConvKernels::depthwise_u8): per output position and 16 channels, each tap's codes widened
// to int16 and multiplied by the [taps][C] weights into int32 (SMLAL), from the start -x_sub * sum_t w[t][c]; taps in
// the padding read a row of x_sub (x - x_sub = 0). The int32 adds wrap: exact wherever the final value fits int32.
void depthwise_u8_neon(const PackedConv& pc, const uint8_t* x, int32_t x_sub, int64_t p0, int64_t rows, int32_t* acc,
                       Workspace& ws) {
  const ConvGeom& g = pc.g;
  const int64_t c = g.c, ldc = c + 8, taps = g.k();
  const int32_t* start = depthwise_u8_starts(pc, x_sub, rows, ldc, acc, ws);
  ws.taps.resize(static_cast<size_t>(taps));
  const uint8_t** src = ws.taps.data();
  const int16_t* w = pc.weights.data();
  for (int64_t r = 0; r < rows; ++r) {
    depthwise_tap_rows(g, x, ws.border.data(), p0 + r, src);
    int32_t* row = acc + r * ldc;
    int64_t c0 = 0;
    for (; c0 + 16 <= c; c0 += 16) {
      int32x4_t s[4];
      for (int i = 0; i < 4; ++i) s[i] = vld1q_s32(start + c0 + 4 * i);
      for (int64_t t = 0; t < taps; ++t) {
        const uint8x16_t xv = vld1q_u8(src[t] + c0);
        const int16x8_t lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(xv)));
        const int16x8_t hi = vreinterpretq_s16_u16(vmovl_high_u8(xv));
        const int16x8_t w0 = vld1q_s16(w + t * c + c0), w1 = vld1q_s16(w + t * c + c0 + 8);
        s[0] = vmlal_s16(s[0], vget_low_s16(lo), vget_low_s16(w0));
        s[1] = vmlal_high_s16(s[1], lo, w0);
        s[2] = vmlal_s16(s[2], vget_low_s16(hi), vget_low_s16(w1));
        s[3] = vmlal_high_s16(s[3], hi, w1);
      }
      for (int i = 0; i < 4; ++i) vst1q_s32(row + c0 + 4 * i, s[i]);
    }
    for (; c0 + 8 <= c; c0 += 8) {
      int32x4_t s0 = vld1q_s32(start + c0), s1 = vld1q_s32(start + c0 + 4);
      for (int64_t t = 0; t < taps; ++t) {
        const int16x8_t xv = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(src[t] + c0)));
        const int16x8_t wv = vld1q_s16(w + t * c + c0);
        s0 = vmlal_s16(s0, vget_low_s16(xv), vget_low_s16(wv));
        s1 = vmlal_high_s16(s1, xv, wv);
      }
      vst1q_s32(row + c0, s0);
      vst1q_s32(row + c0 + 4, s1);
    }
    for (; c0 < c; ++c0) {  // the last c % 8 channels
      int32_t sum = start[c0];
      for (int64_t t = 0; t < taps; ++t) sum += int32_t{src[t][c0]} * w[t * c + c0];
      row[c0] = sum;
    }
  }
}

// The requantizing epilogue (output_code) on 4 channels at a time in int64 lanes, exactly the scalar form:
// v = acc * multiplier + bias, RS(v, s) = (v + half + ((v >>> odd) & 1)) >> s with half = (2^s - 1) >> 1 and the
// logical shift by odd = 64 for s = 0 (USHL by -64 yields 0), then zero_point, the clamp after a saturating narrowing
// (the clamp bounds are int32) and store_offset. The float logits: FMLA is the fused fma of the scalar form.
struct Requant4 {
  int64x2_t bias[2];
  RoundingShift2 round[2];
  int32x4_t multiplier;
  Requant4(const ConvEpilogue& e, int64_t m)
      : bias{vld1q_s64(e.bias.data() + m), vld1q_s64(e.bias.data() + m + 2)},
        round{RoundingShift2(vmovl_s32(vld1_s32(e.shift.data() + m))),
              RoundingShift2(vmovl_s32(vld1_s32(e.shift.data() + m + 2)))},
        multiplier(vld1q_s32(e.multiplier.data() + m)) {}
  int64x2_t rounded(int64x2_t v, int h) const { return round[h](vaddq_s64(v, bias[h])); }
};

// N x 4 codes as Out: int32 lanes, narrowed to uint8 (the stored codes of a uint8 output lie in [0, 255]: UZP1 keeps
// each lane's low half), or floats.
template <int N>
void store_fours(int32_t* dst, const int32x4_t (&codes)[N]) {
  for (int i = 0; i < N; ++i) vst1q_s32(dst + 4 * i, codes[i]);
}
template <int N>
void store_fours(float* dst, const float32x4_t (&codes)[N]) {
  for (int i = 0; i < N; ++i) vst1q_f32(dst + 4 * i, codes[i]);
}
template <int N>
void store_fours(uint8_t* dst, const int32x4_t (&codes)[N]) {
  auto halves = [&](int i) { return vuzp1q_u16(vreinterpretq_u16_s32(codes[i]), vreinterpretq_u16_s32(codes[i + 1])); };
  if constexpr (N == 4) {
    vst1q_u8(dst, vuzp1q_u8(vreinterpretq_u8_u16(halves(0)), vreinterpretq_u8_u16(halves(2))));
  } else if constexpr (N == 2) {
    vst1_u8(dst, vmovn_u16(halves(0)));
  } else {
    static_assert(N == 1, "1, 2 or 4 fours");
    const uint8x8_t bytes = vmovn_u16(vcombine_u16(vmovn_u32(vreinterpretq_u32_s32(codes[0])), vdup_n_u16(0)));
    vst1_lane_u32(reinterpret_cast<uint32_t*>(dst), vreinterpret_u32_u8(bytes), 0);
  }
}

// N blocks of 4 channels from m: constants(m + 4 i), then for every row code(constants, accumulators) stored as Out.
template <int N, typename Out, typename Constants, typename Code, size_t... I>
void epilogue_fours(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out, int64_t m,
                    Constants& constants, Code& code, std::index_sequence<I...>) {
  const std::array<decltype(constants(m)), N> k{constants(m + 4 * static_cast<int64_t>(I))...};
  const int64_t m_all = pc.g.m;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* a = acc + r * ldc + m;
    const decltype(code(k[0], vld1q_s32(a))) codes[N] = {code(k[I], vld1q_s32(a + 4 * I))...};
    store_fours<N>(out + r * m_all + m, codes);
  }
}

// The epilogues' loop: channels [0, full) in blocks of N x 4 (N: as many as the constants leave registers for),
// then four at a time; the channels from `full` on by the scalar epilogue. The blocks take the rows' loop, the
// narrowing and the store once per 4 N codes.
template <int N, typename Out, typename Constants, typename Code>
void epilogue_by_fours(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out, int64_t full,
                       Constants&& constants, Code&& code) {
  int64_t m = 0;
  for (; m + 4 * N <= full; m += 4 * N)
    epilogue_fours<N>(pc, acc, ldc, rows, out, m, constants, code, std::make_index_sequence<N>());
  for (; m < full; m += 4) epilogue_fours<1>(pc, acc, ldc, rows, out, m, constants, code, std::index_sequence<0>());
  if (full < pc.g.m)
    for (int64_t r = 0; r < rows; ++r) epilogue_scalar(pc, acc + r * ldc, full, pc.g.m, out + r * pc.g.m);
}

template <typename Out>
void requantize_rows_neon(const PackedConv& pc, const RequantBlock*, const int32_t* acc, int64_t ldc, int64_t rows,
                          Out* out) {
  const ConvEpilogue& e = pc.epi;
  const int64_t m4 = pc.g.m / 4 * 4;
  if constexpr (std::is_same_v<Out, float>) {
    struct Affine {
      float32x4_t scale, bias;
    };
    epilogue_by_fours<4>(
        pc, acc, ldc, rows, out, m4,
        [&](int64_t m) { return Affine{vld1q_f32(e.scale.data() + m), vld1q_f32(e.float_bias.data() + m)}; },
        [](const Affine& f, int32x4_t a) { return vfmaq_f32(f.bias, vcvtq_f32_s32(a), f.scale); });
  } else {
    const int64x2_t zero_point = vdupq_n_s64(e.zero_point);
    const int32x4_t lo = vdupq_n_s32(e.lo), hi = vdupq_n_s32(e.hi), offset = vdupq_n_s32(e.store_offset);
    epilogue_by_fours<2>(pc, acc, ldc, rows, out, m4, [&](int64_t m) { return Requant4(e, m); },
                      [&](const Requant4& q, int32x4_t a) {
                        const int64x2_t product0 = vmull_s32(vget_low_s32(a), vget_low_s32(q.multiplier));
                        const int64x2_t v0 = vaddq_s64(q.rounded(product0, 0), zero_point);
                        const int64x2_t v1 = vaddq_s64(q.rounded(vmull_high_s32(a, q.multiplier), 1), zero_point);
                        return vsubq_s32(vminq_s32(vmaxq_s32(vqmovn_high_s64(vqmovn_s64(v0), v1), lo), hi), offset);
                      });
  }
}

// The requantization in double where pack_conv proved it exact (PackedConv::requant_scale, qgemm.cpp
// pack_requant_f64): the fma acc * (multiplier 2^-s) + bias 2^-s rounds to itself (at most 53 significant bits) and
// FCVTNS rounds it to an integer, half to even as rounding_shift does (|value| < 2^28). 17 instructions per 4
// channels instead of 27 in int64 lanes.
template <typename Out>
void requantize_f64_neon(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out) {
  const ConvEpilogue& e = pc.epi;
  const int32x4_t zp = vdupq_n_s32(e.zero_point - e.store_offset), lo = vdupq_n_s32(e.lo - e.store_offset),
                  hi = vdupq_n_s32(e.hi - e.store_offset);
  struct Scaled {
    float64x2_t scale[2], offset[2];
  };
  epilogue_by_fours<4>(
      pc, acc, ldc, rows, out, pc.g.m / 4 * 4,
      [&](int64_t m) {
        return Scaled{{vld1q_f64(&pc.requant_scale[m]), vld1q_f64(&pc.requant_scale[m + 2])},
                      {vld1q_f64(&pc.requant_offset[m]), vld1q_f64(&pc.requant_offset[m + 2])}};
      },
      [&](const Scaled& f, int32x4_t a) {
        const float64x2_t x0 = vcvtq_f64_s64(vmovl_s32(vget_low_s32(a))), x1 = vcvtq_f64_s64(vmovl_high_s32(a));
        const int64x2_t y0 = vcvtnq_s64_f64(vfmaq_f64(f.offset[0], x0, f.scale[0]));
        const int64x2_t y1 = vcvtnq_s64_f64(vfmaq_f64(f.offset[1], x1, f.scale[1]));
        return vminq_s32(vmaxq_s32(vaddq_s32(vmovn_high_s64(vmovn_s64(y0), y1), zp), lo), hi);
      });
}

// The threshold epilogue (PackedConv::threshold_levels, S = levels - 1 thresholds): per 4 channels
// out = lo + #{L : sign_m * acc > t_L[m]}, each compare's all-ones lanes subtracted.
template <int S, typename Out>
void threshold_epilogue_neon(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out) {
  const int32x4_t base = vdupq_n_s32(pc.epi.lo - pc.epi.store_offset);
  struct Levels {
    int32x4_t sign, thr[S + 1];  // S = 0: a layer with one output code
  };
  epilogue_by_fours<S <= 3 ? 4 : 2>(
      pc, acc, ldc, rows, out, pc.g.m / 8 * 8,
      [&](int64_t m) {
        Levels k;
        k.sign = vld1q_s32(&pc.level_signs[m]);
        const int32_t* t = pc.level_thresholds.data() + (m / 16) * S * 16 + m % 16;
        for (int l = 0; l < S; ++l) k.thr[l] = vld1q_s32(t + l * 16);
        return k;
      },
      [&](const Levels& k, int32x4_t a) {
        const int32x4_t g = vmulq_s32(a, k.sign);
        int32x4_t v = base;
        for (int l = 0; l < S; ++l) v = vsubq_s32(v, vreinterpretq_s32_u32(vcgtq_s32(g, k.thr[l])));
        return v;
      });
}

template <typename Out>
void thresholds_neon(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out) {
  with_threshold_count(pc, [&](auto s) { threshold_epilogue_neon<decltype(s)::value>(pc, acc, ldc, rows, out); });
}

// 3 rows: 24 accumulators, 4 weight registers and the quad of the 32.
template <int R, int J>
void quad_microkernel(const RowSource<uint8_t, kVnniRows>& a, const int8_t* w, int64_t wblock, const int32_t* start,
                      int32_t* c, int64_t ldc) {
  quad_microkernel_in_passes<WideningPass, 3, R, J>(a, w, wblock, start, c, ldc);
}

}  // namespace

const ConvKernels* conv_kernels_neon() {
  static const ConvKernels kernels = [] {
    ConvKernels k = conv_kernels_scalar();
    k.vnni = QCNN_KERNEL_GRID_6X4(quad_microkernel);
    k.acc16 = QCNN_KERNEL_GRID_3X3(acc16_microkernel);
    k.depthwise_u8 = depthwise_u8_neon;
    k.epilogue_u8.requantize = requantize_rows_neon<uint8_t>;
    k.epilogue_i32.requantize = requantize_rows_neon<int32_t>;
    k.epilogue_u8.thresholds = thresholds_neon<uint8_t>;
    k.epilogue_u8.requantize_f64 = requantize_f64_neon<uint8_t>;
    k.epilogue_i32.requantize_f64 = requantize_f64_neon<int32_t>;
    k.epilogue_i32.thresholds = thresholds_neon<int32_t>;
    k.epilogue_f32.requantize = requantize_rows_neon<float>;
    return k;
  }();
  return &kernels;
}
#else
const ConvKernels* conv_kernels_neon() { return nullptr; }
#endif

}  // namespace qcnn
