// AVX2 kernels of the convolutions (qgemm_kernels.h): the int16-pair GEMM (vpmaddwd) and int16-accumulator
// (vpmaddubsw) microkernels, the requantizing and threshold epilogues on 8-channel blocks, the depthwise kernel on
// uint8 codes and the peak loop, ending with their table.
#include <cstring>
#include <type_traits>

#include "core/avx2.h"
#include "core/qgemm_kernels.h"

namespace qcnn {

#ifdef QCNN_X86
namespace {

// The lane arithmetic of the two AVX2 GEMM kernels. Each k-pair of one row is broadcast and multiplied
// against J blocks of packed weights; the tile loop is the same, only the lanes differ.
//   PairsToInt32 (vpmaddwd): i16 x i16 pairs into 8 int32 channel lanes. w: [blocks of 8][pairs][8][2] int16.
//   PairsToInt16 (the int16-accumulator kernel, FBGEMM's acc16; de Bruin et al. 2020): u8 x s8 pairs by
//     vpmaddubsw into 16 int16 channel lanes, 32 MACs per multiply instead of 16. Exact only under the bound
//     pack_conv proves: max(x - z) * ||w_m||_1 < 2^15 makes every pair sum and every partial sum fit int16,
//     so vpmaddubsw never saturates and vpaddw never wraps. w: [blocks of 16][pairs][16][2] int8.
struct PairsToInt32 {
  using A = int16_t;
  using W = int16_t;
  using Pair = int32_t;
  static constexpr int kLanes = 8;
  QCNN_AVX2 static __m256i broadcast(Pair p) { return _mm256_set1_epi32(p); }
  QCNN_AVX2 static __m256i madd(__m256i acc, __m256i a, __m256i w) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, w));
  }
  QCNN_AVX2 static void store(int32_t* dst, __m256i acc) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), acc); }
};

struct PairsToInt16 {
  using A = uint8_t;
  using W = int8_t;
  using Pair = int16_t;
  static constexpr int kLanes = 16;
  QCNN_AVX2 static __m256i broadcast(Pair p) { return _mm256_set1_epi16(p); }
  QCNN_AVX2 static __m256i madd(__m256i acc, __m256i a, __m256i w) {
    return _mm256_add_epi16(acc, _mm256_maddubs_epi16(a, w));
  }
  QCNN_AVX2 static void store(int32_t* dst, __m256i acc) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 8), _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc, 1)));
  }
};

// An R x (J * Lanes::kLanes) tile of C from the k-pairs of `a`: w's J blocks wblock elements apart
// (2 * kLanes per pair), C rows ldc apart.
template <class Lanes, int R, int J>
QCNN_AVX2 void lane_microkernel(const RowSource<typename Lanes::A>& a, const typename Lanes::W* w, int64_t wblock,
                                int32_t* c, int64_t ldc) {
  constexpr int kPairStep = 2 * Lanes::kLanes;
  __m256i acc[R][J];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) acc[r][j] = _mm256_setzero_si256();
  const typename Lanes::W* wq = w;
  for (int64_t s = 0; s < a.segs; ++s)
    for (int64_t q = 0; q < a.seg_steps; ++q, wq += kPairStep) {
      __m256i wv[J];
      for (int j = 0; j < J; ++j) wv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + j * wblock));
      for (int r = 0; r < R; ++r) {
        typename Lanes::Pair pair;
        std::memcpy(&pair, a.row[r] + s * a.seg_stride + 2 * q, sizeof pair);
        const __m256i av = Lanes::broadcast(pair);
        for (int j = 0; j < J; ++j) acc[r][j] = Lanes::madd(acc[r][j], av, wv[j]);
      }
    }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) Lanes::store(c + r * ldc + j * Lanes::kLanes, acc[r][j]);
}

template <int R, int J>
QCNN_AVX2 void microkernel_avx2(const RowSource<int16_t>& a, const int16_t* w, int64_t wblock, int32_t* c,
                                int64_t ldc) {
  lane_microkernel<PairsToInt32, R, J>(a, w, wblock, c, ldc);
}

template <int R, int J>
QCNN_AVX2 void acc16_microkernel(const RowSource<uint8_t>& a, const int8_t* w, int64_t wblock, int32_t* c,
                                 int64_t ldc) {
  lane_microkernel<PairsToInt16, R, J>(a, w, wblock, c, ldc);
}


// The full 3 x 3 tile with named accumulators: GCC keeps an array of them in registers only with
// a register copy per update, which costs issue slots the multiplies need.
template <>
QCNN_AVX2 void microkernel_avx2<3, 3>(const RowSource<int16_t>& a, const int16_t* w, int64_t wblock, int32_t* c,
                                      int64_t ldc) {
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00, c20 = c00, c21 = c00,
          c22 = c00;
  const int16_t *w0 = w, *w1 = w + wblock, *w2 = w + 2 * wblock;
  for (int64_t s = 0; s < a.segs; ++s) {
    const int16_t *a0 = a.row[0] + s * a.seg_stride, *a1 = a.row[1] + s * a.seg_stride,
                  *a2 = a.row[2] + s * a.seg_stride;
    for (int64_t q = 0; q < a.seg_steps; ++q, w0 += 16, w1 += 16, w2 += 16) {
      const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0));
      const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1));
      const __m256i v2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w2));
      int32_t p0, p1, p2;
      std::memcpy(&p0, a0 + 2 * q, 4);
      std::memcpy(&p1, a1 + 2 * q, 4);
      std::memcpy(&p2, a2 + 2 * q, 4);
      __m256i x = _mm256_set1_epi32(p0);
      c00 = _mm256_add_epi32(c00, _mm256_madd_epi16(x, v0));
      c01 = _mm256_add_epi32(c01, _mm256_madd_epi16(x, v1));
      c02 = _mm256_add_epi32(c02, _mm256_madd_epi16(x, v2));
      x = _mm256_set1_epi32(p1);
      c10 = _mm256_add_epi32(c10, _mm256_madd_epi16(x, v0));
      c11 = _mm256_add_epi32(c11, _mm256_madd_epi16(x, v1));
      c12 = _mm256_add_epi32(c12, _mm256_madd_epi16(x, v2));
      x = _mm256_set1_epi32(p2);
      c20 = _mm256_add_epi32(c20, _mm256_madd_epi16(x, v0));
      c21 = _mm256_add_epi32(c21, _mm256_madd_epi16(x, v1));
      c22 = _mm256_add_epi32(c22, _mm256_madd_epi16(x, v2));
    }
  }
  int32_t *r0 = c, *r1 = c + ldc, *r2 = c + 2 * ldc;
  PairsToInt32::store(r0, c00); PairsToInt32::store(r0 + 8, c01); PairsToInt32::store(r0 + 16, c02);
  PairsToInt32::store(r1, c10); PairsToInt32::store(r1 + 8, c11); PairsToInt32::store(r1 + 16, c12);
  PairsToInt32::store(r2, c20); PairsToInt32::store(r2 + 8, c21); PairsToInt32::store(r2 + 16, c22);
}

// 8 output codes in int32 lanes, stored as Out: narrowed to uint8 (each code is in [0, 255]), or as is.
template <typename Out>
QCNN_AVX2 inline void store_codes8(Out* out, __m256i v) {
  if constexpr (std::is_same_v<Out, uint8_t>) {
    const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(w16, w16));
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), v);
  }
}

QCNN_AVX2 inline __m256i shift_right_arith64(__m256i v, __m256i s) {
  // AVX2 has no 64-bit arithmetic shift: flip negative values, shift logically, flip back (floor).
  const __m256i sign = _mm256_cmpgt_epi64(_mm256_setzero_si256(), v);
  return _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(v, sign), s), sign);
}

// rounding_shift of 4 int64 lanes: (v + half + (bit s of v & tie)) >> s, arithmetic. Bit s of v is bit s of
// its two's complement, which the logical shift reads for negative v too.
QCNN_AVX2 inline __m256i round_shift64(__m256i v, const int64_t* shift, const int64_t* half, const int64_t* tie) {
  const __m256i s = _mm256_load_si256(reinterpret_cast<const __m256i*>(shift));
  const __m256i odd = _mm256_and_si256(_mm256_srlv_epi64(v, s), _mm256_load_si256(reinterpret_cast<const __m256i*>(tie)));
  v = _mm256_add_epi64(_mm256_add_epi64(v, _mm256_load_si256(reinterpret_cast<const __m256i*>(half))), odd);
  return shift_right_arith64(v, s);
}

QCNN_AVX2 inline __m256i clamp64(__m256i v, __m256i lo, __m256i hi) {
  v = _mm256_blendv_epi8(lo, v, _mm256_cmpgt_epi64(v, lo));
  return _mm256_blendv_epi8(hi, v, _mm256_cmpgt_epi64(hi, v));
}

// Channels [m0, m_count) of one row (m0 a multiple of 8).
template <typename Out>
QCNN_AVX2 void epilogue_avx2(const PackedConv& pc, const RequantBlock* blocks, const int32_t* acc, int64_t m_count,
                             Out* out, int64_t m0 = 0) {
  const ConvEpilogue& e = pc.epi;
  const int64_t full = m_count / 8 * 8;
  if constexpr (std::is_same_v<Out, float>) {
    for (int64_t m = m0; m < full; m += 8) {
      const __m256 a = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + m)));
      _mm256_storeu_ps(out + m, _mm256_fmadd_ps(a, _mm256_loadu_ps(&e.scale[m]), _mm256_loadu_ps(&e.float_bias[m])));
    }
  } else {
    const __m256i zp = _mm256_set1_epi64x(e.zero_point), lo = _mm256_set1_epi64x(e.lo),
                  hi = _mm256_set1_epi64x(e.hi), offset = _mm256_set1_epi32(e.store_offset);
    for (int64_t m = m0; m < full; m += 8) {
      const RequantBlock& b = blocks[m / 8];
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + m));
      const __m256i mult = _mm256_load_si256(reinterpret_cast<const __m256i*>(b.multiplier));
      __m256i even = _mm256_mul_epi32(a, mult);
      __m256i odd = _mm256_mul_epi32(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(mult, 32));
      even = _mm256_add_epi64(even, _mm256_load_si256(reinterpret_cast<const __m256i*>(b.bias_even)));
      odd = _mm256_add_epi64(odd, _mm256_load_si256(reinterpret_cast<const __m256i*>(b.bias_odd)));
      even = round_shift64(even, b.shift_even, b.half_even, b.tie_even);
      odd = round_shift64(odd, b.shift_odd, b.half_odd, b.tie_odd);
      even = clamp64(_mm256_add_epi64(even, zp), lo, hi);
      odd = clamp64(_mm256_add_epi64(odd, zp), lo, hi);
      store_codes8(out + m, _mm256_sub_epi32(_mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA), offset));
    }
  }
  epilogue_scalar(pc, acc, full, m_count, out);
}

// The threshold form of the epilogue (pack_level_thresholds; thresholds [M / 16][levels - 1][16]) for `rows` rows
// of accumulators ldc apart, channels [m0, M) (m0 a multiple of 16): per 8-channel block the sign and the S
// thresholds stay in registers over the rows, and each code is a compare and a subtract per threshold
// (cmpgt gives -1 where g > t).
template <int S, typename Out>
QCNN_AVX2 void threshold_epilogue_avx2(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out,
                                       int64_t m0) {
  const int64_t m_all = pc.g.m, full = m_all / 8 * 8;
  const __m256i base = _mm256_set1_epi32(pc.epi.lo - pc.epi.store_offset);
  for (int64_t m = m0; m < full; m += 8) {
    const __m256i sign = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&pc.level_signs[m]));
    const int32_t* t = pc.level_thresholds.data() + (m / 16) * S * 16 + m % 16;
    __m256i thr[S + 1];  // S = 0: a layer with one output code
    for (int l = 0; l < S; ++l) thr[l] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + l * 16));
    for (int64_t r = 0; r < rows; ++r) {
      const __m256i g = _mm256_sign_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + r * ldc + m)), sign);
      __m256i v = base;
      for (int l = 0; l < S; ++l) v = _mm256_sub_epi32(v, _mm256_cmpgt_epi32(g, thr[l]));
      store_codes8(out + r * m_all + m, v);
    }
  }
  if (full < m_all)
    for (int64_t r = 0; r < rows; ++r) epilogue_scalar(pc, acc + r * ldc, full, m_all, out + r * m_all);
}

// Depthwise on uint8 codes, 8 or 16 channels per step: the codes of two taps interleaved and widened to
// int16 meet their interleaved weights in vpmaddwd. Taps outside the image read `border`, a row of
// x_sub, so sum_t x_t * w_t - x_sub * sum_t w_t = sum_t (x_t - x_sub) * w_t over the taps inside.
QCNN_AVX2 void depthwise_u8_avx2(const PackedConv& pc, const uint8_t* x, int32_t x_sub, int64_t p0, int64_t rows,
                                 int32_t* acc, Workspace& ws) {
  const ConvGeom& g = pc.g;
  const int64_t c = g.c, ldc = c + 8, taps = g.k(), pairs = (taps + 1) / 2;
  const int32_t* start = depthwise_u8_starts(pc, x_sub, rows, ldc, acc, ws);
  ws.taps.resize(static_cast<size_t>(2 * pairs));
  const uint8_t** src = ws.taps.data();
  src[2 * pairs - 1] = ws.border.data();  // the odd tap's partner (its weights are 0)
  const int16_t* w = pc.dw_pairs.data();
  for (int64_t r = 0; r < rows; ++r) {
    depthwise_tap_rows(g, x, ws.border.data(), p0 + r, src);
    int32_t* row = acc + r * ldc;
    int64_t c0 = 0;
    for (; c0 + 16 <= c; c0 += 16) {
      __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(start + c0));
      __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(start + c0 + 8));
      for (int64_t j = 0; j < pairs; ++j) {
        const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src[2 * j] + c0));
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src[2 * j + 1] + c0));
        const int16_t* wj = w + (j * c + c0) * 2;
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, b)),
                                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wj))));
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpackhi_epi8(a, b)),
                                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wj + 16))));
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + c0), lo);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + c0 + 8), hi);
    }
    if (c0 + 8 <= c) {
      __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(start + c0));
      for (int64_t j = 0; j < pairs; ++j) {
        const __m128i a = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src[2 * j] + c0));
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src[2 * j + 1] + c0));
        const __m256i wj = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (j * c + c0) * 2));
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, b)), wj));
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + c0), lo);
      c0 += 8;
    }
    for (; c0 < c; ++c0) {  // the last c % 8 channels
      int32_t sum = start[c0];
      for (int64_t t = 0; t < 2 * pairs; ++t) sum += int32_t{src[t][c0]} * w[((t / 2) * c + c0) * 2 + t % 2];
      row[c0] = sum;
    }
  }
}

// 8 independent vpmaddwd + vpaddd chains per iteration, in assembly so that nothing is folded.
QCNN_AVX2 int64_t peak_loop_avx2(int64_t iterations) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  const __m256i x = _mm256_set1_epi16(3), w = _mm256_set1_epi16(-2);
  for (int64_t i = 0; i < iterations; ++i) {
    __asm__ volatile(
        "vpmaddwd %[w], %[x], %%ymm14\n\t"
        "vpaddd %%ymm14, %[a0], %[a0]\n\t"
        "vpmaddwd %[w], %[x], %%ymm15\n\t"
        "vpaddd %%ymm15, %[a1], %[a1]\n\t"
        "vpmaddwd %[w], %[x], %%ymm14\n\t"
        "vpaddd %%ymm14, %[a2], %[a2]\n\t"
        "vpmaddwd %[w], %[x], %%ymm15\n\t"
        "vpaddd %%ymm15, %[a3], %[a3]\n\t"
        "vpmaddwd %[w], %[x], %%ymm14\n\t"
        "vpaddd %%ymm14, %[a4], %[a4]\n\t"
        "vpmaddwd %[w], %[x], %%ymm15\n\t"
        "vpaddd %%ymm15, %[a5], %[a5]\n\t"
        "vpmaddwd %[w], %[x], %%ymm14\n\t"
        "vpaddd %%ymm14, %[a6], %[a6]\n\t"
        "vpmaddwd %[w], %[x], %%ymm15\n\t"
        "vpaddd %%ymm15, %[a7], %[a7]\n\t"
        : [a0] "+x"(a0), [a1] "+x"(a1), [a2] "+x"(a2), [a3] "+x"(a3), [a4] "+x"(a4), [a5] "+x"(a5), [a6] "+x"(a6),
          [a7] "+x"(a7)
        : [x] "x"(x), [w] "x"(w)
        : "xmm14", "xmm15");
  }
  __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3)),
                               _mm256_add_epi32(_mm256_add_epi32(a4, a5), _mm256_add_epi32(a6, a7)));
  return _mm256_extract_epi32(s, 0);
}

// Every row on the 8-channel form (and the float logits).
template <typename Out>
QCNN_AVX2 void requantize_rows(const PackedConv& pc, const RequantBlock* blocks, const int32_t* acc, int64_t ldc,
                               int64_t rows, Out* out) {
  for (int64_t r = 0; r < rows; ++r) epilogue_avx2(pc, blocks, acc + r * ldc, pc.g.m, out + r * pc.g.m);
}

template <typename Out>
void thresholds(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out) {
  with_threshold_count(pc, [&](auto s) { threshold_epilogue_avx2<decltype(s)::value>(pc, acc, ldc, rows, out, 0); });
}

}  // namespace

template <typename Out>
void threshold_epilogue_avx2_from(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out,
                                  int64_t m0) {
  with_threshold_count(pc, [&](auto s) { threshold_epilogue_avx2<decltype(s)::value>(pc, acc, ldc, rows, out, m0); });
}
template void threshold_epilogue_avx2_from(const PackedConv&, const int32_t*, int64_t, int64_t, uint8_t*, int64_t);
template void threshold_epilogue_avx2_from(const PackedConv&, const int32_t*, int64_t, int64_t, int32_t*, int64_t);

const ConvKernels* conv_kernels_avx2() {
  static const ConvKernels kernels{QCNN_KERNEL_GRID_3X3(microkernel_avx2),
                                   QCNN_KERNEL_GRID_3X3(acc16_microkernel),
                                   {},
                                   {requantize_rows<uint8_t>, nullptr, thresholds<uint8_t>, nullptr},
                                   {requantize_rows<int32_t>, nullptr, thresholds<int32_t>, nullptr},
                                   {requantize_rows<float>, nullptr, nullptr, nullptr},
                                   depthwise_u8_avx2,
                                   {peak_loop_avx2, 1 << 16, 8 * 16}};  // 8 vpmaddwd of 16 MACs per iteration
  return &kernels;
}
#else
const ConvKernels* conv_kernels_avx2() { return nullptr; }
#endif

}  // namespace qcnn
