#include "core/qgemm.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "core/avx2.h"
#include "core/bitconv.h"
#include "core/depthwise.h"
#include "core/qgemm_amx.h"
#include "core/requant.h"
#include "core/threads.h"


namespace qcnn {

namespace {

constexpr int kRows = 3;    // output positions per microkernel call
constexpr int kBlocks = 3;  // 8-channel blocks per microkernel call: 3 x 3 = 9 ymm accumulators, 16 registers in all
constexpr int64_t kPanelBytes = 16 << 10;  // int16 row panel of a tile: stays in L1 while every block reads it
constexpr int kVnniRows = 6;    // VNNI GEMM: output positions per microkernel call
constexpr int kVnniBlocks = 4;  // and 16-channel blocks: 6 x 4 = 24 zmm accumulators, 32 registers in all

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// One group, dilation 1 in x: each kernel row's kw * c input values are contiguous in a zero-bordered copy
// of the image, which the GEMM kernels then read in place instead of gathering a row panel.
bool reads_padded_image(const ConvGeom& g) { return g.groups == 1 && g.dw == 1; }

// Output positions per tile: the GEMM's int16 panel fills kPanelBytes, or where the kernels read the
// padded image, the int32 accumulator tile fills 2 * kPanelBytes; depthwise has no panel.
int64_t tile_rows(const PackedConv& pc) {
  if (pc.depthwise) return pc.dw_quads.empty() ? 16 : depthwise_tile_rows(pc);
  if (pc.bits.act_bits) return bit_tile_rows(pc);
  if (pc.amx) return amx_tile_rows(pc);
  if (pc.vnni) {
    const int64_t rows = 2 * kPanelBytes / (4 * round_up(pc.g.m, 16));
    return std::clamp<int64_t>(rows / kVnniRows * kVnniRows, kVnniRows, 60);
  }
  const int64_t rows = reads_padded_image(pc.g) ? 2 * kPanelBytes / (4 * (pc.g.m + 16)) : kPanelBytes / (2 * pc.kp);
  return std::clamp<int64_t>(rows / kRows * kRows, kRows, 64);
}

// The AMX GEMM's tiles are large (up to 256 positions): shared by threads, their count is made a multiple of the
// threads and their sizes even, in whole A tiles.
int64_t balanced_tile_rows(const PackedConv& pc, int threads) {
  const int64_t rows = tile_rows(pc);
  if (!pc.amx || threads == 1) return rows;
  const int64_t positions = pc.g.positions(), tiles = round_up((positions + rows - 1) / rows, threads);
  return round_up((positions + tiles - 1) / tiles, kAmxTileRows);
}

// d[i] = s[i] - sub in the narrow type D (int16, or uint8 for the acc16 path): the true difference
// fits D (checked at load), so the wrap-around of the narrow subtraction gives it exactly, and the
// loop vectorizes.
template <typename T, typename D>
inline void convert_run(const T* s, int64_t n, int32_t sub, D* d) {
  const D sub_d = static_cast<D>(sub);
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<D>(static_cast<D>(s[i]) - sub_d);
}

// Row panel of one tile and one group: panel[r][k] = x[pixel(p0 + r, k)] - z_x, 0 outside the image.
// For the convolutions that do not use the padded image (groups > 1, dilation in x).
template <typename T>
void gather_panel(const T* x, int32_t x_sub, const ConvGeom& g, int64_t group, int64_t p0, int64_t rows, int64_t kp,
                  int16_t* panel) {
  const int64_t cg = g.cg();
  const T* xg = x + group * cg;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t p = p0 + r, oy = p / g.ow, ox = p % g.ow;
    int16_t* dst = panel + r * kp;
    const int64_t ix0 = ox * g.sw - g.pw;
    for (int ky = 0; ky < g.kh; ++ky) {
      const int64_t iy = oy * g.sh - g.ph + int64_t{ky} * g.dh;
      int16_t* drow = dst + int64_t{ky} * g.kw * cg;
      if (iy < 0 || iy >= g.h) {
        std::fill(drow, drow + g.kw * cg, int16_t{0});
        continue;
      }
      for (int kx = 0; kx < g.kw; ++kx) {
        const int64_t ix = ix0 + int64_t{kx} * g.dw;
        int16_t* d = drow + int64_t{kx} * cg;
        if (ix < 0 || ix >= g.w)
          std::fill(d, d + cg, int16_t{0});
        else
          convert_run(xg + (iy * g.w + ix) * g.c, cg, x_sub, d);
      }
    }
    if (kp > g.k()) dst[g.k()] = 0;
  }
}

// The image minus x_sub once in a copy [h + 2ph][w + 2pw][c] with a border of `border` (reads_padded_image(g)),
// and kImageSlack elements more: a kernel row is read in pairs or quads, the last one reaching up to 3 values
// past it (their weights are 0). Each input value is converted once instead of once per kernel tap.
constexpr int64_t kImageSlack = 3;
template <typename T, typename D>
void pad_image(const T* x, int32_t x_sub, const ConvGeom& g, std::vector<D>& padded, D border = 0) {
  const int64_t wp = g.w + 2 * g.pw, hp = g.h + 2 * g.ph;
  padded.assign(static_cast<size_t>(hp * wp * g.c + kImageSlack), border);
  for (int64_t iy = 0; iy < g.h; ++iy)
    convert_run(x + iy * g.w * g.c, g.w * g.c, x_sub, padded.data() + ((iy + g.ph) * wp + g.pw) * g.c);
}

// Where a microkernel reads its rows of A: row r's k-steps (pairs, or quads for the VNNI GEMM) lie in `segs`
// segments of `seg_steps` steps, segment s at row[r] + s * seg_stride. A row panel is one segment per row;
// the padded image read in place is one segment per kernel row ky (its kw * c values are contiguous there).
template <typename A, int N = kRows>
struct RowSource {
  const A* row[N];
  int64_t seg_stride = 0, segs = 1, seg_steps = 0;
};

// c[r][j*8 + lane] = sum_q a[r][2q] * w[j][q][lane][0] + a[r][2q+1] * w[j][q][lane][1]
template <int R, int J>
void microkernel_scalar(const RowSource<int16_t>& a, const int16_t* w, int64_t wblock, int32_t* c, int64_t ldc) {
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) {
      int32_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const int16_t* wq = w + j * wblock;
      for (int64_t s = 0; s < a.segs; ++s) {
        const int16_t* ar = a.row[r] + s * a.seg_stride;
        for (int64_t q = 0; q < a.seg_steps; ++q, wq += 16)
          for (int l = 0; l < 8; ++l)
            acc[l] += int32_t{ar[2 * q]} * wq[2 * l] + int32_t{ar[2 * q + 1]} * wq[2 * l + 1];
      }
      std::memcpy(c + r * ldc + j * 8, acc, sizeof acc);
    }
}

#ifdef QCNN_X86
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
#endif

#ifdef QCNN_X86
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
  auto store = [&](int r, int j, __m256i v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc + j * 8), v);
  };
  store(0, 0, c00); store(0, 1, c01); store(0, 2, c02);
  store(1, 0, c10); store(1, 1, c11); store(1, 2, c12);
  store(2, 0, c20); store(2, 1, c21); store(2, 2, c22);
}
#endif

#ifdef QCNN_X86
using Acc16Kernel = void (*)(const RowSource<uint8_t>&, const int8_t*, int64_t, int32_t*, int64_t);

Acc16Kernel acc16_kernel(int rows, int blocks) {
  static const Acc16Kernel table[kRows][kBlocks] = {
      {lane_microkernel<PairsToInt16, 1, 1>, lane_microkernel<PairsToInt16, 1, 2>, lane_microkernel<PairsToInt16, 1, 3>},
      {lane_microkernel<PairsToInt16, 2, 1>, lane_microkernel<PairsToInt16, 2, 2>, lane_microkernel<PairsToInt16, 2, 3>},
      {lane_microkernel<PairsToInt16, 3, 1>, lane_microkernel<PairsToInt16, 3, 2>, lane_microkernel<PairsToInt16, 3, 3>}};
  return table[rows - 1][blocks - 1];
}

// c[r][j*16 + lane] = start[j*16 + lane] + sum_q sum_i a[r][4q + i] * w[j][q][lane][i]. vpdpbusd multiplies a
// broadcast quad of unsigned activations with 16 channel quads of signed weights and adds the four products
// into each int32 lane, 64 MACs per instruction. Its adds wrap, so the sum is exact wherever the final
// value fits int32, which the engine's load-time bound on |acc| proves.
template <int R, int J>
QCNN_AVX512VNNI void vnni_microkernel(const RowSource<uint8_t, kVnniRows>& a, const int8_t* w, int64_t wblock,
                                      const int32_t* start, int32_t* c, int64_t ldc) {
  __m512i acc[R][J];
  for (int j = 0; j < J; ++j) {
    const __m512i s = _mm512_loadu_si512(start + j * 16);
    for (int r = 0; r < R; ++r) acc[r][j] = s;
  }
  const int8_t* wq = w;
  for (int64_t s = 0; s < a.segs; ++s) {
    const uint8_t* ar[R];
    for (int r = 0; r < R; ++r) ar[r] = a.row[r] + s * a.seg_stride;
    for (int64_t q = 0; q < a.seg_steps; ++q, wq += 64) {
      __m512i wv[J];
      for (int j = 0; j < J; ++j) wv[j] = _mm512_loadu_si512(wq + j * wblock);
      for (int r = 0; r < R; ++r) {
        int32_t quad;
        std::memcpy(&quad, ar[r] + 4 * q, sizeof quad);
        const __m512i av = _mm512_set1_epi32(quad);
        for (int j = 0; j < J; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av, wv[j]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) _mm512_storeu_si512(c + r * ldc + j * 16, acc[r][j]);
}

using VnniKernel = void (*)(const RowSource<uint8_t, kVnniRows>&, const int8_t*, int64_t, const int32_t*, int32_t*,
                            int64_t);

#define QCNN_VNNI_ROW(r) {vnni_microkernel<r, 1>, vnni_microkernel<r, 2>, vnni_microkernel<r, 3>, vnni_microkernel<r, 4>}
VnniKernel vnni_kernel(int rows, int blocks) {
  static const VnniKernel table[kVnniRows][kVnniBlocks] = {QCNN_VNNI_ROW(1), QCNN_VNNI_ROW(2), QCNN_VNNI_ROW(3),
                                                           QCNN_VNNI_ROW(4), QCNN_VNNI_ROW(5), QCNN_VNNI_ROW(6)};
  return table[rows - 1][blocks - 1];
}
#undef QCNN_VNNI_ROW
#endif

using Microkernel = void (*)(const RowSource<int16_t>&, const int16_t*, int64_t, int32_t*, int64_t);

#define QCNN_MK_TABLE(fn) \
  {{fn<1, 1>, fn<1, 2>, fn<1, 3>}, {fn<2, 1>, fn<2, 2>, fn<2, 3>}, {fn<3, 1>, fn<3, 2>, fn<3, 3>}}

Microkernel microkernel(Isa isa, int rows, int blocks) {
  static const Microkernel scalar[kRows][kBlocks] = QCNN_MK_TABLE(microkernel_scalar);
#ifdef QCNN_X86
  static const Microkernel avx2[kRows][kBlocks] = QCNN_MK_TABLE(microkernel_avx2);
  if (has_avx2(isa)) return avx2[rows - 1][blocks - 1];
#endif
  (void)isa;
  return scalar[rows - 1][blocks - 1];
}
#undef QCNN_MK_TABLE

// The output code of channel m for accumulator `acc` (docs/FORMAT.md section 4), before store_offset.
inline int64_t output_code(const ConvEpilogue& e, int64_t m, int64_t acc) {
  const int64_t v = rounding_shift(acc * e.multiplier[m] + e.bias[m], e.shift[m]);
  return std::clamp<int64_t>(v + e.zero_point, e.lo, e.hi);
}

// Scalar epilogue of channels [m0, m1) of one row.
template <typename Out>
void epilogue_scalar(const PackedConv& pc, const int32_t* acc, int64_t m0, int64_t m1, Out* out) {
  const ConvEpilogue& e = pc.epi;
  for (int64_t m = m0; m < m1; ++m) {
    if constexpr (std::is_same_v<Out, float>)
      out[m] = std::fma(static_cast<float>(acc[m]), e.scale[m], e.float_bias[m]);
    else
      out[m] = static_cast<Out>(output_code(e, m, acc[m]) - e.store_offset);
  }
}

// Thresholds of the requantization for accumulators within +-acc_bound (layers with few output codes):
// g = sign_m * acc makes output_code non-decreasing in g, so code L is reached exactly where g >= t_L,
// found by bisection; stored as t_L - 1 (never reached: INT32_MAX, always: INT32_MIN). Layers whose
// acc * multiplier + bias could come near the int64 range over +-acc_bound keep the multiply-shift.
void pack_level_thresholds(PackedConv& pc, int64_t acc_bound) {
  const ConvEpilogue& e = pc.epi;
  const int64_t m_full = pc.g.m / 8 * 8, steps = int64_t{e.hi} - e.lo;  // int32 codes span up to 2^32
  for (int64_t m = 0; m < m_full; ++m)
    if (e.bias[m] <= -(int64_t{1} << 61) || e.bias[m] >= (int64_t{1} << 61)) return;  // |acc * mult| < 2^61 already
  pc.threshold_levels = static_cast<int>(steps + 1);
  pc.level_thresholds.resize(static_cast<size_t>(round_up(m_full, 16) * steps));
  pc.level_signs.resize(static_cast<size_t>(m_full));
  for (int64_t m = 0; m < m_full; ++m) {
    const int64_t sign = e.multiplier[m] < 0 ? -1 : 1;
    pc.level_signs[m] = static_cast<int32_t>(sign);
    auto code = [&](int64_t g) { return output_code(e, m, sign * g); };
    for (int64_t l = 0; l < steps; ++l) {
      const int64_t level = e.lo + 1 + l;
      int32_t thr;
      if (code(acc_bound) < level) {
        thr = INT32_MAX;
      } else if (code(-acc_bound) >= level) {
        thr = INT32_MIN;
      } else {  // code(lo) < level <= code(hi)
        int64_t lo = -acc_bound, hi = acc_bound;
        while (hi - lo > 1) {
          const int64_t mid = lo + (hi - lo) / 2;
          (code(mid) >= level ? hi : lo) = mid;
        }
        thr = static_cast<int32_t>(hi - 1);
      }
      pc.level_thresholds[static_cast<size_t>(((m / 16) * steps + l) * 16 + m % 16)] = thr;
    }
  }
}

#ifdef QCNN_X86
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

// Two RequantBlocks' 32-byte arrays in one zmm register: the multipliers of 16 channels, or the int64 lanes of
// channels (0, 2, 4, 6) of the first and of the second, as vpmuldq leaves the even channels of 16.
template <typename T>
QCNN_AVX512VNNI inline __m512i join_blocks(const T* first, const T* second) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_load_si256(reinterpret_cast<const __m256i*>(first))),
                            _mm256_load_si256(reinterpret_cast<const __m256i*>(second)), 1);
}

// The `lanes` of 16 output codes in int32 lanes, stored as Out as store_codes8 does: narrowed to uint8 by vpmovdb
// in registers (its memory form is slow on AMD), all 16 by a plain store.
template <typename Out>
QCNN_AVX512VNNI inline void store_codes512(Out* out, __mmask16 lanes, __m512i v) {
  if constexpr (std::is_same_v<Out, uint8_t>) {
    const __m128i codes = _mm512_cvtepi32_epi8(v);
    if (lanes == 0xFFFF)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), codes);
    else
      _mm_mask_storeu_epi8(out, lanes, codes);
  } else if (lanes == 0xFFFF) {
    _mm512_storeu_si512(out, v);
  } else {
    _mm512_mask_storeu_epi32(out, lanes, v);
  }
}

// RS(v + bias, shift) + zp clamped to [lo, hi] in 8 int64 lanes: AVX-512 has the arithmetic 64-bit shift and
// the 64-bit min / max that AVX2 builds from compares and blends.
struct Requant512 {
  __m512i bias, shift, half, tie;
};
QCNN_AVX512VNNI inline __m512i requant512(__m512i v, const Requant512& q, __m512i zp, __m512i lo, __m512i hi) {
  v = _mm512_add_epi64(v, q.bias);
  v = _mm512_add_epi64(_mm512_add_epi64(v, q.half), _mm512_and_si512(_mm512_srlv_epi64(v, q.shift), q.tie));
  v = _mm512_add_epi64(_mm512_srav_epi64(v, q.shift), zp);
  return _mm512_min_epi64(_mm512_max_epi64(v, lo), hi);
}

// The requantization of `rows` rows, 16 channels at a time with each block's constants in registers over the
// rows; a last block of 8 to 15 channels under a lane mask (its second half's constants repeat the first's,
// masked off past 8), and the last m % 8 channels on the scalar form.
template <typename Out>
QCNN_AVX512VNNI void epilogue_avx512(const PackedConv& pc, const RequantBlock* blocks, const int32_t* acc, int64_t ldc,
                                     int64_t rows, Out* out) {
  const ConvEpilogue& e = pc.epi;
  const int64_t m_all = pc.g.m, full = m_all / 8 * 8;
  const __m512i zp = _mm512_set1_epi64(e.zero_point), lo = _mm512_set1_epi64(e.lo), hi = _mm512_set1_epi64(e.hi),
                offset = _mm512_set1_epi32(e.store_offset);
  for (int64_t m = 0; m < full; m += 16) {
    const bool half = m + 8 == full;
    const __mmask16 lanes = half ? 0x00FF : 0xFFFF;
    const RequantBlock &b0 = blocks[m / 8], &b1 = blocks[half ? m / 8 : m / 8 + 1];
    const __m512i mult = join_blocks(b0.multiplier, b1.multiplier);
    const __m512i mult_odd = _mm512_srli_epi64(mult, 32);
    const Requant512 even{join_blocks(b0.bias_even, b1.bias_even), join_blocks(b0.shift_even, b1.shift_even),
                          join_blocks(b0.half_even, b1.half_even), join_blocks(b0.tie_even, b1.tie_even)};
    const Requant512 odd{join_blocks(b0.bias_odd, b1.bias_odd), join_blocks(b0.shift_odd, b1.shift_odd),
                         join_blocks(b0.half_odd, b1.half_odd), join_blocks(b0.tie_odd, b1.tie_odd)};
    for (int64_t r = 0; r < rows; ++r) {
      const __m512i a = _mm512_maskz_loadu_epi32(lanes, acc + r * ldc + m);
      const __m512i ve = requant512(_mm512_mul_epi32(a, mult), even, zp, lo, hi);
      const __m512i vo = requant512(_mm512_mul_epi32(_mm512_srli_epi64(a, 32), mult_odd), odd, zp, lo, hi);
      store_codes512(out + r * m_all + m, lanes,
                     _mm512_sub_epi32(_mm512_mask_blend_epi32(0xAAAA, ve, _mm512_slli_epi64(vo, 32)), offset));
    }
  }
  if (full < m_all)
    for (int64_t r = 0; r < rows; ++r) epilogue_scalar(pc, acc + r * ldc, full, m_all, out + r * m_all);
}

// The same requantization in double where pack_requant_f64 proved it exact (PackedConv::requant_scale): the fma
// acc * (multiplier 2^-s) + bias 2^-s rounds once, to itself, as |acc * multiplier + bias| < 2^51 has at most 53
// significant bits; adding 1.5 * 2^52 then rounds it to an integer, half to even as rounding_shift does, held in the
// low 32 bits of the lane (|value| < 2^28). About 15 operations per 16 channels instead of 26 in int64 lanes
// (1.4x faster measured, the larger part of a 3x3 depthwise layer's time).
template <typename Out>
QCNN_AVX512VNNI void epilogue_f64(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out) {
  const ConvEpilogue& e = pc.epi;
  const int64_t m_all = pc.g.m;
  const __m512d magic = _mm512_set1_pd(0x1.8p52);
  const __m512i low_dwords = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i zp = _mm512_set1_epi32(e.zero_point - e.store_offset), lo = _mm512_set1_epi32(e.lo - e.store_offset),
                hi = _mm512_set1_epi32(e.hi - e.store_offset);
  for (int64_t m = 0; m < m_all; m += 16) {
    const __mmask16 lanes = m_all - m >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (m_all - m)) - 1);
    const __m512d s0 = _mm512_loadu_pd(&pc.requant_scale[m]), s1 = _mm512_loadu_pd(&pc.requant_scale[m + 8]);
    const __m512d b0 = _mm512_loadu_pd(&pc.requant_offset[m]), b1 = _mm512_loadu_pd(&pc.requant_offset[m + 8]);
    for (int64_t r = 0; r < rows; ++r) {
      const __m256i a0 = _mm256_maskz_loadu_epi32(static_cast<__mmask8>(lanes), acc + r * ldc + m);
      const __m256i a1 = _mm256_maskz_loadu_epi32(static_cast<__mmask8>(lanes >> 8), acc + r * ldc + m + 8);
      const __m512d y0 = _mm512_fmadd_pd(_mm512_cvtepi32_pd(a0), s0, b0);
      const __m512d y1 = _mm512_fmadd_pd(_mm512_cvtepi32_pd(a1), s1, b1);
      const __m512i v = _mm512_permutex2var_epi32(_mm512_castpd_si512(_mm512_add_pd(y0, magic)), low_dwords,
                                                  _mm512_castpd_si512(_mm512_add_pd(y1, magic)));
      store_codes512(out + r * m_all + m, lanes, _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(v, zp), lo), hi));
    }
  }
}
#endif

#ifdef QCNN_X86
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

// The same on 16-channel zmm blocks: the sign applied as (acc ^ s) - s with s = sign >> 31, a masked
// increment per threshold, the codes narrowed by vpmovdb; the channels past the last 16 on the AVX2 form.
template <int S, typename Out>
QCNN_AVX512VNNI void threshold_epilogue_avx512(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows,
                                               Out* out) {
  const int64_t m_all = pc.g.m, full = m_all / 16 * 16;
  const __m512i base = _mm512_set1_epi32(pc.epi.lo - pc.epi.store_offset), one = _mm512_set1_epi32(1);
  for (int64_t m = 0; m < full; m += 16) {
    const __m512i sign = _mm512_srai_epi32(_mm512_loadu_si512(&pc.level_signs[m]), 31);
    const int32_t* t = pc.level_thresholds.data() + (m / 16) * S * 16;
    __m512i thr[S + 1];
    for (int l = 0; l < S; ++l) thr[l] = _mm512_loadu_si512(t + l * 16);
    for (int64_t r = 0; r < rows; ++r) {
      const __m512i g = _mm512_sub_epi32(_mm512_xor_si512(_mm512_loadu_si512(acc + r * ldc + m), sign), sign);
      __m512i v = base;
      for (int l = 0; l < S; ++l) v = _mm512_mask_add_epi32(v, _mm512_cmpgt_epi32_mask(g, thr[l]), v, one);
      store_codes512(out + r * m_all + m, 0xFFFF, v);
    }
  }
  threshold_epilogue_avx2<S>(pc, acc, ldc, rows, out, full);
}

template <int S, typename Out>
void threshold_epilogue_s(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out) {
  if (has_avx512(pc.isa))
    threshold_epilogue_avx512<S>(pc, acc, ldc, rows, out);
  else
    threshold_epilogue_avx2<S>(pc, acc, ldc, rows, out, 0);
}

template <typename Out>
void threshold_epilogue(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out) {
  static_assert(kMaxThresholdLevels == 8, "the cases below");
  switch (pc.threshold_levels - 1) {
    case 0: return threshold_epilogue_s<0>(pc, acc, ldc, rows, out);
    case 1: return threshold_epilogue_s<1>(pc, acc, ldc, rows, out);
    case 2: return threshold_epilogue_s<2>(pc, acc, ldc, rows, out);
    case 3: return threshold_epilogue_s<3>(pc, acc, ldc, rows, out);
    case 4: return threshold_epilogue_s<4>(pc, acc, ldc, rows, out);
    case 5: return threshold_epilogue_s<5>(pc, acc, ldc, rows, out);
    case 6: return threshold_epilogue_s<6>(pc, acc, ldc, rows, out);
    default: return threshold_epilogue_s<7>(pc, acc, ldc, rows, out);  // levels <= kMaxThresholdLevels
  }
}
#endif

template <typename Out>
void epilogue_rows(const PackedConv& pc, const RequantBlock* blocks, const int32_t* acc, int64_t ldc, int64_t rows,
                   Out* out) {
  const int64_t m = pc.g.m;
#ifdef QCNN_X86
  if constexpr (!std::is_same_v<Out, float>) {
    if (pc.threshold_levels) return threshold_epilogue(pc, acc, ldc, rows, out);
    if (has_avx512(pc.isa) && !pc.requant_scale.empty()) return epilogue_f64(pc, acc, ldc, rows, out);
    if (has_avx512(pc.isa)) return epilogue_avx512(pc, blocks, acc, ldc, rows, out);
  }
#endif
  for (int64_t r = 0; r < rows; ++r) {
#ifdef QCNN_X86
    if (has_avx2(pc.isa)) {
      epilogue_avx2(pc, blocks, acc + r * ldc, m, out + r * m);
      continue;
    }
#endif
    (void)blocks;
    epilogue_scalar(pc, acc + r * ldc, 0, m, out + r * m);
  }
}

struct Workspace {
  std::vector<int16_t> panel;
  std::vector<int32_t> acc;
  std::vector<int64_t> bit_slots;
  std::vector<int64_t> row_offsets;  // GEMM reading the padded image: each output position's input offset
  std::vector<uint8_t> border;       // depthwise: a row of x_sub for the taps outside the image
  std::vector<const uint8_t*> taps;  // depthwise: each tap's input pixel
  std::vector<uint8_t> quads;        // depthwise on AVX-512 VNNI: the quads of a row segment
  std::vector<uint8_t> panel8;       // the AMX GEMM's row panel
};

// Rows [p, p + rn) of a tile as the microkernels read them: from the row panel (one segment of kp values
// per row) or, where the layer reads the padded image in place, one segment per kernel row.
template <typename D>
RowSource<D> panel_rows(const PackedConv& pc, const D* panel, int rn) {
  RowSource<D> a;
  a.seg_steps = pc.kp / 2;
  for (int r = 0; r < kRows; ++r) a.row[r] = panel + std::min(r, rn - 1) * pc.kp;
  return a;
}

// Offsets in the padded image of the first input value of output positions [p0, p0 + rows), once per tile.
void image_row_offsets(const ConvGeom& g, int64_t p0, int64_t rows, std::vector<int64_t>& offsets) {
  const int64_t wp = g.w + 2 * g.pw;
  offsets.resize(static_cast<size_t>(rows));
  int64_t oy = p0 / g.ow, ox = p0 % g.ow;
  for (int64_t r = 0; r < rows; ++r) {
    offsets[static_cast<size_t>(r)] = (oy * g.sh * wp + ox * g.sw) * g.c;
    if (++ox == g.ow) {
      ox = 0;
      ++oy;
    }
  }
}

template <typename D, int N = kRows>
RowSource<D, N> image_rows(const PackedConv& pc, const D* padded, const int64_t* offsets, int rn,
                           int64_t seg_steps) {
  const ConvGeom& g = pc.g;
  RowSource<D, N> a;
  a.segs = g.kh;
  a.seg_stride = int64_t{g.dh} * (g.w + 2 * g.pw) * g.c;
  a.seg_steps = seg_steps;
  for (int r = 0; r < N; ++r) a.row[r] = padded + offsets[std::min(r, rn - 1)];
  return a;
}

// padded: the image from pad_image when reads_padded_image(g), else null.
template <typename In, typename Out>
void conv_tile(const PackedConv& pc, const RequantBlock* blocks, const In* x, int32_t x_sub, const int16_t* padded,
               int64_t p0, int64_t rows, Out* out, Workspace& ws) {
  const ConvGeom& g = pc.g;
  const int64_t kp = pc.kp, wblock = kp / 2 * 16, nblocks = pc.mg8 / 8;
  const int64_t ldc = g.m + 8;  // a group's last block writes up to 7 padding lanes past its channels
  ws.acc.resize(static_cast<size_t>(rows * ldc));
  if (padded)
    image_row_offsets(g, p0, rows, ws.row_offsets);
  else
    ws.panel.resize(static_cast<size_t>(rows * kp));
  for (int64_t group = 0; group < g.groups; ++group) {
    if (!padded) gather_panel(x, x_sub, g, group, p0, rows, kp, ws.panel.data());
    const int16_t* wg = pc.weights.data() + group * nblocks * wblock;
    int32_t* cg = ws.acc.data() + group * g.mg();
    for (int64_t b = 0; b < nblocks; b += kBlocks) {
      const int jn = static_cast<int>(std::min<int64_t>(kBlocks, nblocks - b));
      for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
        const int rn = static_cast<int>(std::min<int64_t>(kRows, rows - r0));
        const RowSource<int16_t> a = padded ? image_rows(pc, padded, ws.row_offsets.data() + r0, rn, pc.seg_pairs)
                                            : panel_rows(pc, ws.panel.data() + r0 * kp, rn);
        microkernel(pc.isa, rn, jn)(a, wg + b * wblock, wblock, cg + r0 * ldc + b * 8, ldc);
      }
    }
  }
  epilogue_rows(pc, blocks, ws.acc.data(), ldc, rows, out + p0 * g.m);
}

#ifdef QCNN_X86
template <typename Out>
void acc16_conv_tile(const PackedConv& pc, const RequantBlock* blocks, const uint8_t* padded, int64_t p0, int64_t rows,
                     Out* out, Workspace& ws) {
  const ConvGeom& g = pc.g;
  const int64_t wblock = pc.kp / 2 * 32, nblocks = round_up(g.m, 16) / 16;
  const int64_t ldc = g.m + 16;  // the last block writes up to 15 padding lanes past the channels
  ws.acc.resize(static_cast<size_t>(rows * ldc));
  image_row_offsets(g, p0, rows, ws.row_offsets);
  for (int64_t b = 0; b < nblocks; b += kBlocks) {
    const int jn = static_cast<int>(std::min<int64_t>(kBlocks, nblocks - b));
    for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
      const int rn = static_cast<int>(std::min<int64_t>(kRows, rows - r0));
      acc16_kernel(rn, jn)(image_rows(pc, padded, ws.row_offsets.data() + r0, rn, pc.seg_pairs),
                           pc.weights8.data() + b * wblock, wblock, ws.acc.data() + r0 * ldc + b * 16, ldc);
    }
  }
  epilogue_rows(pc, blocks, ws.acc.data(), ldc, rows, out + p0 * g.m);
}

template <typename Out>
void amx_conv_tile(const PackedConv& pc, const RequantBlock* blocks, const uint8_t* padded, int64_t p0, int64_t rows,
                   Out* out, Workspace& ws) {
  const int64_t ldc = round_up(pc.g.m, 2 * kAmxTileRows);  // whole pairs of C tiles
  ws.acc.resize(static_cast<size_t>(round_up(rows, kAmxTileRows) * ldc));
  image_row_offsets(pc.g, p0, rows, ws.row_offsets);
  amx_accumulate(pc, padded, ws.row_offsets.data(), rows, ws.acc.data(), ldc, ws.panel8);
  epilogue_rows(pc, blocks, ws.acc.data(), ldc, rows, out + p0 * pc.g.m);
}

template <typename Out>
void vnni_conv_tile(const PackedConv& pc, const RequantBlock* blocks, const uint8_t* padded, int64_t p0, int64_t rows,
                    Out* out, Workspace& ws) {
  const ConvGeom& g = pc.g;
  const int64_t wblock = g.kh * pc.seg_quads * 64, nblocks = round_up(g.m, 16) / 16, ldc = nblocks * 16;
  ws.acc.resize(static_cast<size_t>(rows * ldc));
  image_row_offsets(g, p0, rows, ws.row_offsets);
  for (int64_t b = 0; b < nblocks; b += kVnniBlocks) {
    const int jn = static_cast<int>(std::min<int64_t>(kVnniBlocks, nblocks - b));
    for (int64_t r0 = 0; r0 < rows; r0 += kVnniRows) {
      const int rn = static_cast<int>(std::min<int64_t>(kVnniRows, rows - r0));
      vnni_kernel(rn, jn)(image_rows<uint8_t, kVnniRows>(pc, padded, ws.row_offsets.data() + r0, rn, pc.seg_quads),
                          pc.weights_quads.data() + b * wblock, wblock, pc.vnni_acc_start.data() + b * 16,
                          ws.acc.data() + r0 * ldc + b * 16, ldc);
    }
  }
  epilogue_rows(pc, blocks, ws.acc.data(), ldc, rows, out + p0 * g.m);
}
#endif

template <typename Out>
void bit_conv_tile(const PackedConv& pc, const RequantBlock* blocks, const uint8_t* image, int64_t p0, int64_t rows,
                   Out* out, Workspace& ws) {
  const int64_t ldc = pc.g.m + 16;  // the last 16-channel group writes up to 15 padding lanes
  ws.acc.resize(static_cast<size_t>(rows * ldc));
  bit_accumulate(pc, image, p0, rows, ws.acc.data(), ldc, ws.bit_slots);
  epilogue_rows(pc, blocks, ws.acc.data(), ldc, rows, out + p0 * pc.g.m);
}

// Depthwise (groups = in = out channels): per output pixel, a vector over the channels of each tap.
template <typename In, typename Out>
void depthwise_tile(const PackedConv& pc, const RequantBlock* blocks, const In* x, int32_t x_sub, int64_t p0,
                    int64_t rows, Out* out, Workspace& ws) {
  const ConvGeom& g = pc.g;
  const int64_t c = g.c;
  ws.acc.resize(static_cast<size_t>(c + 8));
  int32_t* acc = ws.acc.data();
  for (int64_t p = p0; p < p0 + rows; ++p) {
    const int64_t oy = p / g.ow, ox = p % g.ow;
    std::fill(acc, acc + c, 0);
    for (int ky = 0; ky < g.kh; ++ky) {
      const int64_t iy = oy * g.sh - g.ph + int64_t{ky} * g.dh;
      if (iy < 0 || iy >= g.h) continue;
      for (int kx = 0; kx < g.kw; ++kx) {
        const int64_t ix = ox * g.sw - g.pw + int64_t{kx} * g.dw;
        if (ix < 0 || ix >= g.w) continue;
        const In* src = x + (iy * g.w + ix) * c;
        const int16_t* wt = pc.weights.data() + (int64_t{ky} * g.kw + kx) * c;
        for (int64_t ch = 0; ch < c; ++ch) acc[ch] += (static_cast<int32_t>(src[ch]) - x_sub) * int32_t{wt[ch]};
      }
    }
    epilogue_rows(pc, blocks, acc, c + 8, 1, out + p * g.m);
  }
}

#ifdef QCNN_X86
// Depthwise on uint8 codes, 8 or 16 channels per step: the codes of two taps interleaved and widened to
// int16 meet their interleaved weights in vpmaddwd. Taps outside the image read `border`, a row of
// x_sub, so sum_t x_t * w_t - x_sub * sum_t w_t = sum_t (x_t - x_sub) * w_t over the taps inside.
template <typename Out>
QCNN_AVX2 void depthwise_tile_avx2(const PackedConv& pc, const RequantBlock* blocks, const uint8_t* x, int32_t x_sub,
                                   int64_t p0, int64_t rows, Out* out, Workspace& ws) {
  const ConvGeom& g = pc.g;
  const int64_t c = g.c, ldc = c + 8, taps = g.k(), pairs = (taps + 1) / 2;
  ws.acc.resize(static_cast<size_t>(rows * ldc + c));
  ws.border.assign(static_cast<size_t>(c), static_cast<uint8_t>(x_sub));
  ws.taps.resize(static_cast<size_t>(2 * pairs));
  int32_t* acc = ws.acc.data();
  int32_t* start = acc + rows * ldc;  // -x_sub * sum_t w[t][c]
  for (int64_t ch = 0; ch < c; ++ch) start[ch] = -x_sub * pc.dw_sums[ch];
  const uint8_t** src = ws.taps.data();
  src[2 * pairs - 1] = ws.border.data();  // the odd tap's partner (its weights are 0)
  const int16_t* w = pc.dw_pairs.data();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t p = p0 + r, oy = p / g.ow, ox = p % g.ow;
    for (int ky = 0, t = 0; ky < g.kh; ++ky)
      for (int kx = 0; kx < g.kw; ++kx, ++t) {
        const int64_t iy = oy * g.sh - g.ph + int64_t{ky} * g.dh, ix = ox * g.sw - g.pw + int64_t{kx} * g.dw;
        src[t] = iy < 0 || iy >= g.h || ix < 0 || ix >= g.w ? ws.border.data() : x + (iy * g.w + ix) * c;
      }
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
  epilogue_rows(pc, blocks, acc, ldc, rows, out + p0 * g.m);
}

// Depthwise on AVX-512 VNNI (core/depthwise.h): uint8 codes, int8 weights.
template <typename Out>
void depthwise_vnni_tile(const PackedConv& pc, const RequantBlock* blocks, const uint8_t* x, int32_t x_sub, int64_t p0,
                         int64_t rows, Out* out, Workspace& ws) {
  const int64_t ldc = round_up(pc.g.m, 16);
  ws.acc.resize(static_cast<size_t>(rows * ldc + 16));
  // 64-byte aligned rows: the kernel stores whole zmm registers (a store across two cache lines costs twice)
  const auto base = reinterpret_cast<uintptr_t>(ws.acc.data());
  int32_t* acc = ws.acc.data() + (round_up(static_cast<int64_t>(base), 64) - static_cast<int64_t>(base)) / 4;
  depthwise_accumulate(pc, x, x_sub, p0, rows, acc, ldc, ws.quads);
  epilogue_rows(pc, blocks, acc, ldc, rows, out + p0 * pc.g.m);
}
#endif

template <typename In, typename Out>
void conv_image_typed(const PackedConv& pc, const In* x, int32_t x_sub, Out* out, int num_threads,
                      const TileHook* after_tile) {
  const RequantBlock* blocks = pc.requant_blocks.data();
  const int threads = std::max(1, num_threads);
  const int64_t positions = pc.g.positions(), rows = balanced_tile_rows(pc, threads);
  const int64_t tiles = (positions + rows - 1) / rows;
  thread_local std::vector<int16_t> padded;
  thread_local std::vector<uint8_t> tables, padded8;
  const int16_t* padded_image = nullptr;  // the threads read the caller's thread_local buffers through these
  const uint8_t* bit_tables = nullptr, *padded_image8 = nullptr;
  if (pc.bits.act_bits) {
    bit_image(pc, x, std::is_same_v<In, uint8_t> ? Storage::U8 : Storage::I32, x_sub, tables);
    bit_tables = tables.data();
  } else if (pc.acc16) {
    pad_image(x, x_sub, pc.g, padded8);
    padded_image8 = padded8.data();
  } else if (pc.vnni) {
    pad_image(x, x_sub + pc.vnni_x_lo, pc.g, padded8, static_cast<uint8_t>(-pc.vnni_x_lo));
    padded_image8 = padded8.data();
  } else if (reads_padded_image(pc.g)) {  // never depthwise (groups > 1)
    pad_image(x, x_sub, pc.g, padded);
    padded_image = padded.data();
  }
  auto compute_tile = [&](int64_t t, Workspace& ws) {
    if (pc.bits.act_bits)
      bit_conv_tile(pc, blocks, bit_tables, t * rows, std::min(rows, positions - t * rows), out, ws);
#ifdef QCNN_X86
    else if (pc.acc16)
      acc16_conv_tile(pc, blocks, padded_image8, t * rows, std::min(rows, positions - t * rows), out, ws);
    else if (pc.amx)
      amx_conv_tile(pc, blocks, padded_image8, t * rows, std::min(rows, positions - t * rows), out, ws);
    else if (pc.vnni)
      vnni_conv_tile(pc, blocks, padded_image8, t * rows, std::min(rows, positions - t * rows), out, ws);
    else if (pc.depthwise && std::is_same_v<In, uint8_t> && !pc.dw_quads.empty() && x_sub >= 0 && x_sub <= 255)
      depthwise_vnni_tile(pc, blocks, reinterpret_cast<const uint8_t*>(x), x_sub, t * rows,
                          std::min(rows, positions - t * rows), out, ws);
    else if (pc.depthwise && std::is_same_v<In, uint8_t> && !pc.dw_pairs.empty() && x_sub >= 0 && x_sub <= 255)
      depthwise_tile_avx2(pc, blocks, reinterpret_cast<const uint8_t*>(x), x_sub, t * rows,
                          std::min(rows, positions - t * rows), out, ws);
#endif
    else if (pc.depthwise)
      depthwise_tile(pc, blocks, x, x_sub, t * rows, std::min(rows, positions - t * rows), out, ws);
    else
      conv_tile(pc, blocks, x, x_sub, padded_image, t * rows, std::min(rows, positions - t * rows), out, ws);
  };
  auto tile = [&](int64_t t, Workspace& ws) {
    compute_tile(t, ws);
    if (after_tile) (*after_tile)(t * rows, std::min(rows, positions - t * rows));
  };
  if (threads == 1 || tiles == 1) {
    thread_local Workspace ws;
    for (int64_t t = 0; t < tiles; ++t) tile(t, ws);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t t = 0; t < tiles; ++t) {
    thread_local Workspace ws;
    tile(t, ws);
  }
}

template <typename In>
void conv_image_in(const PackedConv& pc, const In* x, int32_t x_sub, void* out, Storage out_storage,
                   int num_threads, const TileHook* after_tile) {
  switch (out_storage) {
    case Storage::U8: return conv_image_typed(pc, x, x_sub, static_cast<uint8_t*>(out), num_threads, after_tile);
    case Storage::I32: return conv_image_typed(pc, x, x_sub, static_cast<int32_t*>(out), num_threads, after_tile);
    case Storage::F32: return conv_image_typed(pc, x, x_sub, static_cast<float*>(out), num_threads, after_tile);
  }
}

}  // namespace

ConvGeom make_conv_geom(int64_t h, int64_t w, int64_t c, int64_t m, int64_t groups, int kh, int kw, int sh, int sw,
                        int ph, int pw, int dh, int dw) {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("conv2d: " + what);
  };
  need(h >= 1 && w >= 1, "input height and width must be positive");
  need(c >= 1 && m >= 1, "in_channels and out_channels must be positive");
  need(groups >= 1 && c % groups == 0 && m % groups == 0,
       "groups = " + std::to_string(groups) + " must divide in_channels (" + std::to_string(c) +
           ") and out_channels (" + std::to_string(m) + ")");
  need(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1,
       "kernel, stride and dilation must be positive");
  need(ph >= 0 && pw >= 0, "padding must be non-negative");
  ConvGeom g;
  g.h = h; g.w = w; g.c = c; g.m = m; g.groups = groups;
  g.kh = kh; g.kw = kw; g.sh = sh; g.sw = sw; g.ph = ph; g.pw = pw; g.dh = dh; g.dw = dw;
  const int64_t span_h = int64_t{dh} * (kh - 1) + 1, span_w = int64_t{dw} * (kw - 1) + 1;
  need(h + 2 * int64_t{ph} >= span_h && w + 2 * int64_t{pw} >= span_w,
       "the (dilated) kernel is larger than the padded input");
  g.oh = (h + 2 * int64_t{ph} - span_h) / sh + 1;
  g.ow = (w + 2 * int64_t{pw} - span_w) / sw + 1;
  return g;
}

namespace {
bool acc16_exact(const ConvGeom& g, const int16_t* weight, InputRange x, int accumulator_bits, Isa isa) {
  if (!has_avx2(isa) || accumulator_bits > 16 || g.groups != 1 || g.dw != 1 || x.lo < 0 || x.hi > 255) return false;
  const int64_t k = g.k();
  for (int64_t m = 0; m < g.m; ++m) {
    int64_t l1 = 0;
    for (int64_t i = 0; i < k; ++i) {
      const int16_t v = weight[m * k + i];
      if (v < -128 || v > 127) return false;
      l1 += std::abs(int32_t{v});
    }
    if (x.hi * l1 > 32767) return false;
  }
  return true;
}

// The VNNI GEMM's weights and accumulator starts (PackedConv::vnni), where the layer qualifies: an Isa::Avx512Vnni
// pack, one group, dilation 1 in x, int8 weights, and an input range that, widened to hold 0 (the border), spans
// at most 256 values. False leaves pc as it was.
// On Isa::Amx, layers with at least this many k values, output channels and output positions run on the tile GEMM
// instead: below, the VNNI GEMM was as fast or faster (docs/BENCHMARKS.md), k padded to 64, the tile loads and
// stores weighing more than the products, or most of a 16-position A tile empty (the classifier). isa_supported
// asks Linux for the tile state once.
constexpr int64_t kMinAmxK = 128, kMinAmxChannels = 64, kMinAmxPositions = 16;

bool pack_vnni(PackedConv& pc, const int16_t* weight, InputRange x) {
  const ConvGeom& g = pc.g;
  const int64_t x_lo = std::min<int64_t>(x.lo, 0), x_hi = std::max<int64_t>(x.hi, 0);
  if (!has_avx512(pc.isa) || !reads_padded_image(g) || x_hi - x_lo > 255) return false;
  const int64_t k = g.k(), seg_len = g.kw * g.c, seg_quads = (seg_len + 3) / 4, kq = g.kh * seg_quads;
  if (255 * 128 * k > INT32_MAX) return false;  // bounds each |x_lo * sum_k w[m][k]| below
  std::vector<int32_t> start(static_cast<size_t>(round_up(g.m, 16)), 0);
  for (int64_t m = 0; m < g.m; ++m) {
    int64_t sum = 0;
    for (int64_t kk = 0; kk < k; ++kk) {
      const int16_t v = weight[m * k + kk];
      if (v < -128 || v > 127) return false;
      sum += v;
    }
    start[static_cast<size_t>(m)] = static_cast<int32_t>(x_lo * sum);
  }
  pc.vnni = true;
  pc.vnni_x_lo = static_cast<int32_t>(x_lo);
  pc.vnni_acc_start = std::move(start);
  if (pc.isa == Isa::Amx && isa_supported(Isa::Amx) && k >= kMinAmxK && g.m >= kMinAmxChannels &&
      g.positions() >= kMinAmxPositions) {
    pc.amx = true;
    pc.amx_k = round_up(k, kAmxStep);
    pc.weights_quads = pack_amx_weights(g, weight, pc.amx_k);
    return true;
  }
  pc.seg_quads = seg_quads;
  pc.weights_quads.assign(static_cast<size_t>(round_up(g.m, 16) * kq * 4), 0);
  for (int64_t m = 0; m < g.m; ++m)
    for (int64_t kk = 0; kk < k; ++kk) {
      const int64_t quad = kk / seg_len * seg_quads + kk % seg_len / 4;
      pc.weights_quads[static_cast<size_t>(((m / 16) * kq + quad) * 64 + (m % 16) * 4 + kk % seg_len % 4)] =
          static_cast<int8_t>(weight[m * k + kk]);
    }
  return true;
}

// PackedConv::requant_scale and requant_offset where the input range x proves epilogue_f64 exact: for every channel,
// |acc| <= max|x| * ||w_m||_1 and |acc * multiplier + bias| below 2^51 and below 2^(shift + 28), so the rounded value
// plus zero_point - store_offset (below 2^29) stays inside int32. Bounds taken in double, with margin to spare.
void pack_requant_f64(PackedConv& pc, const int16_t* weight, InputRange x) {
  const ConvEpilogue& e = pc.epi;
  const int64_t k = pc.g.k(), m_all = pc.g.m;
  const double x_max = std::max(std::abs(static_cast<double>(x.lo)), std::abs(static_cast<double>(x.hi)));
  auto fits = [](int64_t v, int64_t lo, int64_t hi) { return v >= lo && v <= hi; };
  if (!fits(int64_t{e.zero_point} - e.store_offset, -(int64_t{1} << 29), int64_t{1} << 29) ||
      !fits(int64_t{e.lo} - e.store_offset, INT32_MIN, INT32_MAX) ||
      !fits(int64_t{e.hi} - e.store_offset, INT32_MIN, INT32_MAX))
    return;
  std::vector<double> scale(static_cast<size_t>(round_up(m_all, 16)), 0.0), offset(scale.size(), 0.0);
  for (int64_t m = 0; m < m_all; ++m) {
    double l1 = 0;
    for (int64_t i = 0; i < k; ++i) l1 += std::abs(static_cast<double>(weight[m * k + i]));
    const int shift = e.shift[static_cast<size_t>(m)];
    const double bias = static_cast<double>(e.bias[static_cast<size_t>(m)]);
    const double multiplier = static_cast<double>(e.multiplier[static_cast<size_t>(m)]);
    const double bound = x_max * l1 * std::abs(multiplier) + std::abs(bias);
    if (!(bound < 0x1p51) || !(bound < std::ldexp(1.0, shift + 28))) return;
    scale[static_cast<size_t>(m)] = std::ldexp(multiplier, -shift);
    offset[static_cast<size_t>(m)] = std::ldexp(bias, -shift);  // |bias| < 2^51: exact
  }
  pc.requant_scale = std::move(scale);
  pc.requant_offset = std::move(offset);
}

void pack_depthwise_pairs(PackedConv& pc, const int16_t* weight) {
  const int64_t c = pc.g.c, taps = pc.g.k(), pairs = (taps + 1) / 2;
  std::vector<int16_t> packed(static_cast<size_t>(pairs * c * 2), 0);
  std::vector<int32_t> sums(static_cast<size_t>(c), 0);
  for (int64_t ch = 0; ch < c; ++ch) {
    int64_t abs_sum = 0;
    for (int64_t t = 0; t < taps; ++t) {
      const int16_t v = weight[ch * taps + t];
      packed[((t / 2) * c + ch) * 2 + t % 2] = v;
      sums[ch] += v;
      abs_sum += v < 0 ? -int64_t{v} : int64_t{v};
    }
    if (510 * abs_sum > INT32_MAX) return;
  }
  pc.dw_pairs = std::move(packed);
  pc.dw_sums = std::move(sums);
}
}  // namespace

PackedConv pack_conv(const ConvGeom& g, const int16_t* weight, ConvEpilogue epi, Isa isa, InputRange x,
                     int accumulator_bits) {
  PackedConv pc;
  pc.g = g;
  pc.isa = isa;
  const int64_t k = g.k(), mg = g.mg();
  // k in segments of seg_len values, each padded to whole pairs: the kh kernel rows where the kernels read
  // the padded image, else all of k (the row panel).
  const int64_t seg_len = reads_padded_image(g) ? g.kw * g.cg() : k;
  pc.seg_pairs = (seg_len + 1) / 2;
  pc.kp = k / seg_len * 2 * pc.seg_pairs;
  pc.mg8 = round_up(mg, 8);
  const int64_t nblocks = pc.mg8 / 8, pairs = pc.kp / 2;
  auto packed_k = [&](int64_t kk) { return kk / seg_len * 2 * pc.seg_pairs + kk % seg_len; };
  pc.depthwise = g.groups > 1 && g.groups == g.c && g.groups == g.m;
  if (const int act_bits = binary_act_bits(g, weight, x)) {
    pc.bits = pack_bit_weights(g, weight, act_bits, isa);
  } else if (pack_vnni(pc, weight, x)) {  // pc.weights_quads and pc.vnni_acc_start are set
  } else if (acc16_exact(g, weight, x, accumulator_bits, isa)) {
    pc.acc16 = true;
    const int64_t blocks16 = round_up(g.m, 16) / 16;
    pc.weights8.assign(static_cast<size_t>(blocks16 * pairs * 32), 0);
    for (int64_t m = 0; m < g.m; ++m)
      for (int64_t kk = 0; kk < k; ++kk)
        pc.weights8[((m / 16) * pairs + packed_k(kk) / 2) * 32 + (m % 16) * 2 + packed_k(kk) % 2] =
            static_cast<int8_t>(weight[m * k + kk]);
  } else if (pc.depthwise) {  // [taps][C]
    const int64_t taps = k;
    pc.weights.resize(static_cast<size_t>(taps * g.c));
    for (int64_t ch = 0; ch < g.c; ++ch)
      for (int64_t t = 0; t < taps; ++t) pc.weights[t * g.c + ch] = weight[ch * taps + t];
    if (has_avx2(isa) && !pack_depthwise_quads(pc, weight)) pack_depthwise_pairs(pc, weight);
  } else {
    pc.weights.assign(static_cast<size_t>(g.groups * pc.mg8 * pc.kp), 0);
  }
  for (int64_t group = 0; group < (pc.depthwise || pc.bits.act_bits || pc.acc16 || pc.vnni ? 0 : g.groups); ++group)
    for (int64_t j = 0; j < mg; ++j) {
      const int16_t* src = weight + (group * mg + j) * k;
      int16_t* dst = pc.weights.data() + ((group * nblocks + j / 8) * pairs) * 16 + (j % 8) * 2;
      for (int64_t kk = 0; kk < k; ++kk) dst[(packed_k(kk) / 2) * 16 + packed_k(kk) % 2] = src[kk];
    }
  if (!epi.float_output) {
    pc.requant_blocks.resize(static_cast<size_t>(g.m / 8));
    RequantBlock* blocks = pc.requant_blocks.data();
    for (int64_t b = 0; b < g.m / 8; ++b)
      for (int l = 0; l < 8; ++l) {
        const int64_t m = b * 8 + l, lane = l / 2;
        const int shift = epi.shift[m];
        const bool odd = l % 2;
        blocks[b].multiplier[l] = epi.multiplier[m];
        (odd ? blocks[b].bias_odd : blocks[b].bias_even)[lane] = epi.bias[m];
        (odd ? blocks[b].shift_odd : blocks[b].shift_even)[lane] = shift;
        (odd ? blocks[b].half_odd : blocks[b].half_even)[lane] = shift > 0 ? (int64_t{1} << (shift - 1)) - 1 : 0;
        (odd ? blocks[b].tie_odd : blocks[b].tie_even)[lane] = shift > 0 ? 1 : 0;
      }
  }
  pc.epi = std::move(epi);
  if (!pc.epi.float_output && has_avx512(isa)) pack_requant_f64(pc, weight, x);
  if (!pc.epi.float_output && has_avx2(isa) && int64_t{pc.epi.hi} - pc.epi.lo < kMaxThresholdLevels) {
    // The thresholds need a bound on |acc|: K * max|x - z_x| * max|w| from the proven input range.
    int64_t w_max = 0;
    for (int64_t i = 0; i < g.m * k; ++i) w_max = std::max<int64_t>(w_max, std::abs(int64_t{weight[i]}));
    const int64_t x_max = std::max(std::abs(x.lo), std::abs(x.hi));
    if (x_max <= 65535 && k * x_max * w_max < (int64_t{1} << 30)) pack_level_thresholds(pc, k * x_max * w_max);
  }
  return pc;
}

namespace {
template <typename T>
int64_t count_overflows_typed(const ConvGeom& g, const int16_t* weight, const T* x, int32_t x_sub, int acc_bits) {
  const int64_t hi = (int64_t{1} << (acc_bits - 1)) - 1, lo = -hi - 1, cg = g.cg(), mg = g.mg();
  int64_t overflows = 0;
  for (int64_t oy = 0; oy < g.oh; ++oy)
    for (int64_t ox = 0; ox < g.ow; ++ox)
      for (int64_t m = 0; m < g.m; ++m) {
        const int16_t* w = weight + m * g.k();
        const T* xg = x + (m / mg) * cg;
        int64_t sum = 0;
        bool left = false;
        for (int ky = 0; ky < g.kh; ++ky) {
          const int64_t iy = oy * g.sh - g.ph + int64_t{ky} * g.dh;
          for (int kx = 0; kx < g.kw; ++kx) {
            const int64_t ix = ox * g.sw - g.pw + int64_t{kx} * g.dw;
            if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;  // zero padding adds nothing
            const T* px = xg + (iy * g.w + ix) * g.c;
            const int16_t* wt = w + (int64_t{ky} * g.kw + kx) * cg;
            for (int64_t c = 0; c < cg; ++c) {
              sum += (static_cast<int64_t>(px[c]) - x_sub) * wt[c];
              left = left || sum < lo || sum > hi;
            }
          }
        }
        overflows += left;
      }
  return overflows;
}
}  // namespace

int64_t count_accumulator_overflows(const ConvGeom& g, const int16_t* weight, const void* x, Storage in,
                                    int32_t x_sub, int acc_bits) {
  if (acc_bits < 2 || acc_bits > 63) throw std::invalid_argument("accumulator bits must be in [2, 63]");
  if (in == Storage::U8) return count_overflows_typed(g, weight, static_cast<const uint8_t*>(x), x_sub, acc_bits);
  if (in == Storage::I32) return count_overflows_typed(g, weight, static_cast<const int32_t*>(x), x_sub, acc_bits);
  throw std::invalid_argument("count_accumulator_overflows: the input must be integer codes");
}

std::string conv_kernel_name(const PackedConv& pc) {
  if (pc.bits.act_bits) return "binary a" + std::to_string(pc.bits.act_bits);
  if (pc.acc16) return "gemm acc16";
  if (pc.amx) return "gemm amx";
  if (pc.vnni) return "gemm vnni";
  return pc.depthwise ? "depthwise" : "gemm acc32";
}

int64_t conv_scratch_bytes(const PackedConv& pc) {
  const ConvGeom& g = pc.g;
  const int64_t rows = tile_rows(pc);
  if (pc.bits.act_bits) return bit_scratch_bytes(pc) + rows * (g.m + 16) * 4;
  if (pc.depthwise && !pc.dw_quads.empty()) return (rows * round_up(g.m, 16) + 16) * 4 + depthwise_scratch_bytes(pc);
  if (pc.depthwise) return (rows * (g.m + 8) + g.c) * 4 + g.c + (g.k() + 1) * 8;
  const int64_t padded_values = (g.h + 2 * g.ph) * (g.w + 2 * g.pw) * g.c + kImageSlack;
  if (pc.acc16) return rows * ((g.m + 16) * 4 + 8) + padded_values;
  if (pc.amx) return round_up(rows, kAmxTileRows) * (round_up(g.m, 2 * kAmxTileRows) * 4 + 8 + pc.amx_k) + padded_values;
  if (pc.vnni) return rows * (round_up(g.m, 16) * 4 + 8) + padded_values;
  if (reads_padded_image(g)) return rows * ((g.m + 8) * 4 + 8) + padded_values * 2;
  return rows * (pc.kp * 2 + (g.m + 8) * 4);
}

void conv_image(const PackedConv& pc, const void* x, Storage in, int32_t x_sub, void* out, Storage out_storage,
                int num_threads, const TileHook* after_tile) {
  if (in == Storage::U8)
    conv_image_in(pc, static_cast<const uint8_t*>(x), x_sub, out, out_storage, num_threads, after_tile);
  else if (in == Storage::I32)
    conv_image_in(pc, static_cast<const int32_t*>(x), x_sub, out, out_storage, num_threads, after_tile);
  else
    throw std::invalid_argument("conv_image: the input must be integer codes");
}

#ifdef QCNN_X86
namespace {
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

// 8 independent vpdpbusd chains (64 u8 x s8 MACs each) per iteration.
QCNN_AVX512VNNI int64_t peak_loop_vnni(int64_t iterations) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  const __m512i x = _mm512_set1_epi8(3), w = _mm512_set1_epi8(-2);
  for (int64_t i = 0; i < iterations; ++i) {
    __asm__ volatile(
        "vpdpbusd %[w], %[x], %[a0]\n\t"
        "vpdpbusd %[w], %[x], %[a1]\n\t"
        "vpdpbusd %[w], %[x], %[a2]\n\t"
        "vpdpbusd %[w], %[x], %[a3]\n\t"
        "vpdpbusd %[w], %[x], %[a4]\n\t"
        "vpdpbusd %[w], %[x], %[a5]\n\t"
        "vpdpbusd %[w], %[x], %[a6]\n\t"
        "vpdpbusd %[w], %[x], %[a7]\n\t"
        : [a0] "+v"(a0), [a1] "+v"(a1), [a2] "+v"(a2), [a3] "+v"(a3), [a4] "+v"(a4), [a5] "+v"(a5), [a6] "+v"(a6),
          [a7] "+v"(a7)
        : [x] "v"(x), [w] "v"(w));
  }
  const __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                                     _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
  return _mm_cvtsi128_si32(_mm512_castsi512_si128(s));
}
}  // namespace
#endif

double int8_peak_gmacs(double seconds, int threads) {
  threads = std::max(1, threads);
  double total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    using clock = std::chrono::steady_clock;
    const int64_t iterations = 1 << 16;
    int64_t done = 0;
    volatile int64_t sink = 0;
    // Without a vector unit: the scalar microkernel itself, a 3 x 24 tile over 64 k-pairs in L1.
    constexpr int64_t kPairs = 64, kCalls = 64;
    const std::vector<int16_t> a(3 * 2 * kPairs, 3), w(kBlocks * kPairs * 16, -2);
    std::vector<int32_t> c(3 * 8 * kBlocks);
    RowSource<int16_t> rows;
    rows.seg_steps = kPairs;
    for (int r = 0; r < kRows; ++r) rows.row[r] = a.data() + r * 2 * kPairs;
    const auto start = clock::now();
    double elapsed = 0;
    while (elapsed < seconds) {
#ifdef QCNN_X86
      if (isa_supported(Isa::Avx512Vnni)) {
        sink = sink + peak_loop_vnni(iterations);
        done += iterations * 8 * 64;  // 8 vpdpbusd of 64 MACs per iteration
      } else if (isa_supported(Isa::Avx2)) {
        sink = sink + peak_loop_avx2(iterations);
        done += iterations * 8 * 16;  // 8 vpmaddwd of 16 MACs per iteration
      } else
#endif
      {
        for (int64_t i = 0; i < kCalls; ++i)
          microkernel_scalar<kRows, kBlocks>(rows, w.data(), kPairs * 16, c.data(), 8 * kBlocks);
        sink = sink + c[0];
        done += kCalls * kRows * 8 * kBlocks * 2 * kPairs;
      }
      elapsed = std::chrono::duration<double>(clock::now() - start).count();
    }
    total += done / elapsed / 1e9;
  }
  return total;
}

}  // namespace qcnn
