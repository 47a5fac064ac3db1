// Internal: the vector kernels of the convolutions (qgemm.h), one table of function pointers per instruction set
// (qgemm_avx2.cpp, qgemm_avx512.cpp), and what those files share with the driver and the scalar reference in
// qgemm.cpp. qgemm.cpp picks the table once per layer from PackedConv::isa. The AMX GEMM (qgemm_amx.h), the
// AVX-512 depthwise kernel (depthwise.h) and the binary kernel (bitconv.h) have files of their own.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/qgemm.h"
#include "core/requant.h"

namespace qcnn {

constexpr int kRows = 3;    // output positions per microkernel call
constexpr int kBlocks = 3;  // 8-channel blocks per microkernel call: 3 x 3 = 9 ymm accumulators, 16 registers in all
constexpr int kVnniRows = 6;    // VNNI GEMM: output positions per microkernel call
constexpr int kVnniBlocks = 4;  // and 16-channel blocks: 6 x 4 = 24 zmm accumulators, 32 registers in all

// Where a microkernel reads its rows of A: row r's k-steps (pairs, or quads for the VNNI GEMM) lie in `segs`
// segments of `seg_steps` steps, segment s at row[r] + s * seg_stride. A row panel is one segment per row;
// the padded image read in place is one segment per kernel row ky (its kw * c values are contiguous there).
template <typename A, int N = kRows>
struct RowSource {
  const A* row[N];
  int64_t seg_stride = 0, segs = 1, seg_steps = 0;
};

// The output code of channel m for accumulator `acc` (docs/FORMAT.md section 4), before store_offset.
inline int64_t output_code(const ConvEpilogue& e, int64_t m, int64_t acc) {
  const int64_t v = rounding_shift(acc * e.multiplier[m] + e.bias[m], e.shift[m]);
  return std::clamp<int64_t>(v + e.zero_point, e.lo, e.hi);
}

// Scalar epilogue of channels [m0, m1) of one row: the reference, and the vector epilogues' last channels.
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

// f(std::integral_constant<int, S>) for S = pc.threshold_levels - 1 thresholds: the threshold epilogues keep them
// in registers, so S is a template argument.
template <typename F>
void with_threshold_count(const PackedConv& pc, F&& f) {
  static_assert(kMaxThresholdLevels == 8, "the cases below");
  switch (pc.threshold_levels - 1) {
    case 0: return f(std::integral_constant<int, 0>{});
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    default: return f(std::integral_constant<int, 7>{});  // levels <= kMaxThresholdLevels
  }
}

template <typename F, int R, int J>
using KernelGrid = std::array<std::array<F, J>, R>;  // [rows - 1][blocks - 1]

// c[r][j*8 + lane] = sum over the k-pairs of a[r] times w's block j (qgemm.h), R x J of them per call.
using GemmMicrokernel = void (*)(const RowSource<int16_t>& a, const int16_t* w, int64_t wblock, int32_t* c,
                                 int64_t ldc);
// The int16-accumulator GEMM (ConvKernel::Acc16): u8 x s8 pairs, 16-channel blocks of PackedConv::weights8 (or of
// weights16 on NEON), w and wblock in bytes.
using Acc16Microkernel = void (*)(const RowSource<uint8_t>& a, const int8_t* w, int64_t wblock, int32_t* c,
                                  int64_t ldc);
// The VNNI GEMM (ConvKernel::Vnni): u8 x s8 quads, 16-channel blocks, each accumulator starting at start[channel].
using VnniMicrokernel = void (*)(const RowSource<uint8_t, kVnniRows>& a, const int8_t* w, int64_t wblock,
                                 const int32_t* start, int32_t* c, int64_t ldc);

// A grid of R x J instances of the template `fn`, for a KernelGrid.
#define QCNN_KERNEL_GRID_3X3(fn) \
  {{{fn<1, 1>, fn<1, 2>, fn<1, 3>}, {fn<2, 1>, fn<2, 2>, fn<2, 3>}, {fn<3, 1>, fn<3, 2>, fn<3, 3>}}}
#define QCNN_KERNEL_ROW_4(fn, r) {fn<r, 1>, fn<r, 2>, fn<r, 3>, fn<r, 4>}
#define QCNN_KERNEL_GRID_6X4(fn)                                                                               \
  {{QCNN_KERNEL_ROW_4(fn, 1), QCNN_KERNEL_ROW_4(fn, 2), QCNN_KERNEL_ROW_4(fn, 3), QCNN_KERNEL_ROW_4(fn, 4), \
    QCNN_KERNEL_ROW_4(fn, 5), QCNN_KERNEL_ROW_4(fn, 6)}}

// The quad GEMM's kernels that multiply signed bytes by signed bytes (NEON's SMULL and SDOT; vpdpbusd and USMMLA take
// the activations unsigned): they read u ^ 0x80 = u - 128 and pack_conv adds 128 * sum_k w[m][k] to the starts.
inline bool quad_gemm_flips_input(Isa isa) { return isa == Isa::Neon || isa == Isa::NeonDot; }
// The i8mm kernel multiplies 2 rows x 8 k by 2 channels x 8 k (USMMLA): its weights lie in k-octets,
// [M / 16 blocks][kq / 2][8 channel pairs][2][8], with every kernel row padded to an even number of quads.
inline bool quad_gemm_octets(Isa isa) { return isa == Isa::I8mm; }

// A quad-GEMM microkernel (VnniMicrokernel) from a kernel of at most RB rows x 16 channels, Pass<rows>::run(a, r0,
// w, start, c, ldc) over rows [r0, r0 + rows): the J channel blocks one after another, the R rows in passes of RB.
template <template <int> class Pass, int RB, int R, int J>
void quad_microkernel_in_passes(const RowSource<uint8_t, kVnniRows>& a, const int8_t* w, int64_t wblock,
                                const int32_t* start, int32_t* c, int64_t ldc) {
  static_assert(R <= 2 * RB, "two passes at most");
  for (int j = 0; j < J; ++j) {
    if constexpr (R <= RB) {
      Pass<R>::run(a, 0, w + j * wblock, start + j * 16, c + j * 16, ldc);
    } else {
      Pass<RB>::run(a, 0, w + j * wblock, start + j * 16, c + j * 16, ldc);
      Pass<R - RB>::run(a, RB, w + j * wblock, start + j * 16, c + RB * ldc + j * 16, ldc);
    }
  }
}

// `rows` rows of accumulators ldc apart into rows * M outputs.
template <typename Out>
struct ConvEpilogues {
  void (*requantize)(const PackedConv& pc, const RequantBlock* blocks, const int32_t* acc, int64_t ldc, int64_t rows,
                     Out* out);
  // The exact double form where pack_conv set PackedConv::requant_scale; null where the ISA has none.
  void (*requantize_f64)(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out);
  // The threshold form where pack_conv set PackedConv::threshold_levels; null where the ISA has none.
  void (*thresholds)(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out);
  // The tie-free form where pack_conv set PackedConv::tie_free_blocks; null where the ISA has none.
  void (*requantize_tie_free)(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out);
};

// A null kernel is one the ISA lacks: pack_conv never chooses its layer kind for that ISA.
struct ConvKernels {
  KernelGrid<GemmMicrokernel, kRows, kBlocks> gemm;
  KernelGrid<Acc16Microkernel, kRows, kBlocks> acc16;
  KernelGrid<VnniMicrokernel, kVnniRows, kVnniBlocks> vnni;
  ConvEpilogues<uint8_t> epilogue_u8;
  ConvEpilogues<int32_t> epilogue_i32;
  ConvEpilogues<float> epilogue_f32;
  // Depthwise on uint8 codes (PackedConv::dw_sums; AVX2 reads dw_pairs, NEON the [taps][C] weights): the accumulators of output positions [p0, p0 + rows), rows
  // ldc = C + 8 apart, with C more values after the rows for the kernel's accumulator starts.
  void (*depthwise_u8)(const PackedConv& pc, const uint8_t* x, int32_t x_sub, int64_t p0, int64_t rows,
                       int32_t* acc, Workspace& ws);
  // int8_peak_gmacs: `iterations` rounds of macs_per_iteration independent multiply-accumulates; returns a value
  // that depends on them.
  struct {
    int64_t (*run)(int64_t iterations);
    int64_t iterations, macs_per_iteration;
  } peak;

  template <typename Out>
  const ConvEpilogues<Out>& epilogues() const {
    if constexpr (std::is_same_v<Out, uint8_t>)
      return epilogue_u8;
    else if constexpr (std::is_same_v<Out, int32_t>)
      return epilogue_i32;
    else
      return epilogue_f32;
  }
};

// For the depthwise kernels on uint8 codes (ConvKernels::depthwise_u8): each channel's start, -x_sub * sum_t w[t][c],
// in the C values after the tile's `rows` rows of acc (ldc apart), and ws.border, a row of x_sub for the taps in the
// padding (x - x_sub = 0 there). Returns the starts.
inline int32_t* depthwise_u8_starts(const PackedConv& pc, int32_t x_sub, int64_t rows, int64_t ldc, int32_t* acc,
                                    Workspace& ws) {
  ws.border.assign(static_cast<size_t>(pc.g.c), static_cast<uint8_t>(x_sub));
  int32_t* start = acc + rows * ldc;
  for (int64_t ch = 0; ch < pc.g.c; ++ch) start[ch] = -x_sub * pc.dw_sums[ch];
  return start;
}

// The input pixels of output position p's taps in (ky, kx) order into src: `border` where a tap lies in the padding.
inline void depthwise_tap_rows(const ConvGeom& g, const uint8_t* x, const uint8_t* border, int64_t p,
                               const uint8_t** src) {
  const int64_t oy = p / g.ow, ox = p % g.ow;
  for (int ky = 0, t = 0; ky < g.kh; ++ky)
    for (int kx = 0; kx < g.kw; ++kx, ++t) {
      const int64_t iy = oy * g.sh - g.ph + int64_t{ky} * g.dh, ix = ox * g.sw - g.pw + int64_t{kx} * g.dw;
      src[t] = iy < 0 || iy >= g.h || ix < 0 || ix >= g.w ? border : x + (iy * g.w + ix) * g.c;
    }
}

// nullptr on builds for other architectures. The AVX-512 table (Isa::Avx512Vnni and Isa::Amx) is the AVX2 one with
// the kernels AVX-512 does better replaced; the aarch64 tables are the scalar one with their quad GEMM in place.
const ConvKernels* conv_kernels_avx2();
const ConvKernels* conv_kernels_avx512();
const ConvKernels* conv_kernels_neon();
const ConvKernels* conv_kernels_neondot();
const ConvKernels* conv_kernels_i8mm();
// The scalar reference table (qgemm.cpp).
const ConvKernels& conv_kernels_scalar();

// The AVX2 threshold epilogue of channels [m0, M) (m0 a multiple of 16): the AVX-512 one's last channels.
template <typename Out>
void threshold_epilogue_avx2_from(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out,
                                  int64_t m0);

}  // namespace qcnn
