#include "core/qgemm.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "core/bitconv.h"
#include "core/depthwise.h"
#include "core/qgemm_amx.h"
#include "core/qgemm_kernels.h"
#include "core/requant.h"
#include "core/threads.h"

namespace qcnn {

namespace {

constexpr int64_t kPanelBytes = 16 << 10;  // int16 row panel of a tile: stays in L1 while every block reads it

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// One output channel's weights summed by sign: the bounds of its accumulators for any input range
// (accumulator_range) and its L1 norm (positive - negative), from one pass over the weights.
struct WeightSums {
  int64_t positive = 0, negative = 0;
};
std::vector<WeightSums> channel_weight_sums(const int16_t* weight, int64_t channels, int64_t k) {
  std::vector<WeightSums> sums(static_cast<size_t>(channels));
  for (int64_t m = 0; m < channels; ++m)
    for (int64_t i = 0; i < k; ++i) {
      sums[static_cast<size_t>(m)].positive += std::max<int64_t>(weight[m * k + i], 0);
      sums[static_cast<size_t>(m)].negative += std::min<int64_t>(weight[m * k + i], 0);
    }
  return sums;
}

// The accumulators of a channel for inputs x - z_x in x, and 0 (the zero padding), clamped into int64 (an unknown
// input range can take them past it): with x_lo <= 0 <= x_hi each term's extremes are x_lo w and x_hi w, which end
// is which by the sign of w.
std::pair<int64_t, int64_t> accumulator_range(const WeightSums& w, InputRange x) {
  const __int128 x_lo = std::min<int64_t>(x.lo, 0), x_hi = std::max<int64_t>(x.hi, 0);
  const __int128 lo = x_lo * w.positive + x_hi * w.negative, hi = x_hi * w.positive + x_lo * w.negative;
  return {static_cast<int64_t>(std::max<__int128>(lo, INT64_MIN)), static_cast<int64_t>(std::min<__int128>(hi, INT64_MAX))};
}

// One group, dilation 1 in x: each kernel row's kw * c input values are contiguous in a zero-bordered copy
// of the image, which the GEMM kernels then read in place instead of gathering a row panel.
bool reads_padded_image(const ConvGeom& g) { return g.groups == 1 && g.dw == 1; }

// Output positions per tile: the GEMM's int16 panel fills kPanelBytes, or where the kernels read the
// padded image, the int32 accumulator tile fills 2 * kPanelBytes; depthwise has no panel.
int64_t tile_rows(const PackedConv& pc) {
  switch (pc.kernel) {
    case ConvKernel::Depthwise: return 16;
    case ConvKernel::DepthwiseVnni: return depthwise_tile_rows(pc);
    case ConvKernel::Binary: return bit_tile_rows(pc);
    case ConvKernel::Amx: return amx_tile_rows(pc);
    case ConvKernel::Vnni: {
      const int64_t rows = 2 * kPanelBytes / (4 * round_up(pc.g.m, 16));
      return std::clamp<int64_t>(rows / kVnniRows * kVnniRows, kVnniRows, 60);
    }
    case ConvKernel::Gemm:
    case ConvKernel::Acc16: break;
  }
  const int64_t rows = reads_padded_image(pc.g) ? 2 * kPanelBytes / (4 * (pc.g.m + 16)) : kPanelBytes / (2 * pc.kp);
  return std::clamp<int64_t>(rows / kRows * kRows, kRows, 64);
}

// The AMX GEMM's tiles are large (up to 256 positions): shared by threads, their count is made a multiple of the
// threads and their sizes even, in whole A tiles.
int64_t balanced_tile_rows(const PackedConv& pc, int threads) {
  const int64_t rows = tile_rows(pc);
  if (pc.kernel != ConvKernel::Amx || threads == 1) return rows;
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
// and kImageSlack elements more: a kernel row is read in pairs, quads or octets (quad_gemm_octets), the last one
// reaching up to 7 values past it (their weights are 0). Each input value is converted once instead of once per
// kernel tap.
constexpr int64_t kImageSlack = 7;
template <typename T, typename D>
void pad_image(const T* x, int32_t x_sub, const ConvGeom& g, std::vector<D>& padded, D border = 0, int64_t slack = 0) {
  const int64_t wp = g.w + 2 * g.pw, hp = g.h + 2 * g.ph, row = wp * g.c, side = g.pw * g.c;
  padded.resize(static_cast<size_t>(hp * row + kImageSlack + slack));
  D* p = padded.data();
  // Only the border is filled: the top rows, each row's left and right pad, the bottom rows and the slack.
  std::fill(p, p + g.ph * row, border);
  for (int64_t iy = 0; iy < g.h; ++iy) {
    D* dst = p + (iy + g.ph) * row;
    std::fill(dst, dst + side, border);
    convert_run(x + iy * g.w * g.c, g.w * g.c, x_sub, dst + side);
    std::fill(dst + side + g.w * g.c, dst + row, border);
  }
  std::fill(p + (g.h + g.ph) * row, p + static_cast<int64_t>(padded.size()), border);
}

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

// Every row on the scalar form.
template <typename Out>
void requantize_rows_scalar(const PackedConv& pc, const RequantBlock*, const int32_t* acc, int64_t ldc, int64_t rows,
                            Out* out) {
  for (int64_t r = 0; r < rows; ++r) epilogue_scalar(pc, acc + r * ldc, 0, pc.g.m, out + r * pc.g.m);
}

// int8_peak_gmacs without a vector unit: the scalar microkernel itself, a 3 x 24 tile over kPeakPairs k-pairs in L1.
constexpr int64_t kPeakPairs = 64;
int64_t peak_loop_scalar(int64_t calls) {
  thread_local const std::vector<int16_t> a(kRows * 2 * kPeakPairs, 3), w(kBlocks * kPeakPairs * 16, -2);
  thread_local std::vector<int32_t> c(kRows * 8 * kBlocks);
  RowSource<int16_t> rows;
  rows.seg_steps = kPeakPairs;
  for (int r = 0; r < kRows; ++r) rows.row[r] = a.data() + r * 2 * kPeakPairs;
  for (int64_t i = 0; i < calls; ++i)
    microkernel_scalar<kRows, kBlocks>(rows, w.data(), kPeakPairs * 16, c.data(), 8 * kBlocks);
  return c[0];
}

}  // namespace

const ConvKernels& conv_kernels_scalar() {
  static const ConvKernels scalar{QCNN_KERNEL_GRID_3X3(microkernel_scalar),
                                  {},
                                  {},
                                  {requantize_rows_scalar<uint8_t>, nullptr, nullptr, nullptr},
                                  {requantize_rows_scalar<int32_t>, nullptr, nullptr, nullptr},
                                  {requantize_rows_scalar<float>, nullptr, nullptr, nullptr},
                                  nullptr,
                                  {peak_loop_scalar, 64, kRows * 8 * kBlocks * 2 * kPeakPairs}};
  return scalar;
}

namespace {

// The table of `isa`: its own where this build has one, else the scalar reference.
const ConvKernels& conv_kernels(Isa isa) {
  const ConvKernels* vector = nullptr;
  switch (isa) {
    case Isa::Scalar: break;
    case Isa::Avx2: vector = conv_kernels_avx2(); break;
    case Isa::Avx512Vnni:
    case Isa::Amx: vector = conv_kernels_avx512(); break;
    case Isa::Neon: vector = conv_kernels_neon(); break;
    case Isa::NeonDot: vector = conv_kernels_neondot(); break;
    case Isa::I8mm: vector = conv_kernels_i8mm(); break;
  }
  return vector ? *vector : conv_kernels_scalar();
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

// The accumulators' `rows` rows, ldc apart, into the outputs, in the form pack_conv prepared.
template <typename Out>
void epilogue_rows(const ConvKernels& kernels, const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows,
                   Out* out) {
  const ConvEpilogues<Out>& e = kernels.epilogues<Out>();
  if (pc.threshold_levels && e.thresholds) return e.thresholds(pc, acc, ldc, rows, out);
  if (!pc.requant_scale.empty() && e.requantize_f64) return e.requantize_f64(pc, acc, ldc, rows, out);
  if (!pc.tie_free_blocks.empty() && e.requantize_tie_free) return e.requantize_tie_free(pc, acc, ldc, rows, out);
  e.requantize(pc, pc.requant_blocks.data(), acc, ldc, rows, out);
}

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
// Calls columns(b, jn) for the column steps b = 0, step, 2 step, ... below nblocks (jn = the blocks of the step):
// on the calling thread, or for a tile that is a layer's only one (a linear layer at batch 1), with its steps shared
// by `threads` (each writes its own accumulator columns, from inputs all of them only read).
template <typename F>
void for_column_steps(int64_t nblocks, int64_t step, int threads, F&& columns) {
  const int64_t steps = (nblocks + step - 1) / step;
#pragma omp parallel for schedule(static) num_threads(std::max(1, threads)) if (threads > 1 && steps > 1)
  for (int64_t i = 0; i < steps; ++i) columns(i * step, static_cast<int>(std::min<int64_t>(step, nblocks - i * step)));
}

template <typename In, typename Out>
void conv_tile(const PackedConv& pc, const ConvKernels& kernels, const In* x, int32_t x_sub, const int16_t* padded,
               int64_t p0, int64_t rows, Out* out, Workspace& ws, int threads) {
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
    for_column_steps(nblocks, kBlocks, threads, [&](int64_t b, int jn) {
      for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
        const int rn = static_cast<int>(std::min<int64_t>(kRows, rows - r0));
        const RowSource<int16_t> a = padded ? image_rows(pc, padded, ws.row_offsets.data() + r0, rn, pc.seg_pairs)
                                            : panel_rows(pc, ws.panel.data() + r0 * kp, rn);
        kernels.gemm[rn - 1][jn - 1](a, wg + b * wblock, wblock, cg + r0 * ldc + b * 8, ldc);
      }
    });
  }
  epilogue_rows(kernels, pc, ws.acc.data(), ldc, rows, out);
}

template <typename Out>
void acc16_conv_tile(const PackedConv& pc, const ConvKernels& kernels, const uint8_t* padded, int64_t p0, int64_t rows,
                     Out* out, Workspace& ws) {
  const ConvGeom& g = pc.g;
  const bool wide = !pc.weights16.empty();
  const auto* weights = wide ? reinterpret_cast<const int8_t*>(pc.weights16.data()) : pc.weights8.data();
  const int64_t wblock = pc.kp * 16 * (wide ? 2 : 1), nblocks = round_up(g.m, 16) / 16;
  const int64_t ldc = g.m + 16;  // the last block writes up to 15 padding lanes past the channels
  ws.acc.resize(static_cast<size_t>(rows * ldc));
  image_row_offsets(g, p0, rows, ws.row_offsets);
  for (int64_t b = 0; b < nblocks; b += kBlocks) {
    const int jn = static_cast<int>(std::min<int64_t>(kBlocks, nblocks - b));
    for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
      const int rn = static_cast<int>(std::min<int64_t>(kRows, rows - r0));
      kernels.acc16[rn - 1][jn - 1](image_rows(pc, padded, ws.row_offsets.data() + r0, rn, pc.seg_pairs),
                                    weights + b * wblock, wblock, ws.acc.data() + r0 * ldc + b * 16, ldc);
    }
  }
  epilogue_rows(kernels, pc, ws.acc.data(), ldc, rows, out);
}

template <typename Out>
void amx_conv_tile(const PackedConv& pc, const ConvKernels& kernels, const uint8_t* padded, int64_t p0, int64_t rows,
                   Out* out, Workspace& ws) {
  const int64_t ldc = round_up(pc.g.m, 2 * kAmxTileRows);  // whole pairs of C tiles
  ws.acc.resize(static_cast<size_t>((round_up(rows, kAmxTileRows) + kAmxTileRows) * ldc));
  image_row_offsets(pc.g, p0, rows, ws.row_offsets);
  amx_accumulate(pc, padded, ws.row_offsets.data(), p0, rows, ws.acc.data(), ldc, ws);
  epilogue_rows(kernels, pc, ws.acc.data(), ldc, rows, out);
}

template <typename Out>
void vnni_conv_tile(const PackedConv& pc, const ConvKernels& kernels, const uint8_t* padded, int64_t p0, int64_t rows,
                    Out* out, Workspace& ws, int threads) {
  const ConvGeom& g = pc.g;
  const int64_t wblock = g.kh * pc.seg_quads * 64, nblocks = round_up(g.m, 16) / 16, ldc = nblocks * 16;
  ws.acc.resize(static_cast<size_t>(rows * ldc));
  image_row_offsets(g, p0, rows, ws.row_offsets);
  for_column_steps(nblocks, kVnniBlocks, threads, [&](int64_t b, int jn) {
    for (int64_t r0 = 0; r0 < rows; r0 += kVnniRows) {
      const int rn = static_cast<int>(std::min<int64_t>(kVnniRows, rows - r0));
      kernels.vnni[rn - 1][jn - 1](
          image_rows<uint8_t, kVnniRows>(pc, padded, ws.row_offsets.data() + r0, rn, pc.seg_quads),
          pc.weights_quads.data() + b * wblock, wblock, pc.vnni_acc_start.data() + b * 16,
          ws.acc.data() + r0 * ldc + b * 16, ldc);
    }
  });
  epilogue_rows(kernels, pc, ws.acc.data(), ldc, rows, out);
}

template <typename Out>
void bit_conv_tile(const PackedConv& pc, const ConvKernels& kernels, const uint8_t* image, int64_t p0, int64_t rows,
                   Out* out, Workspace& ws) {
  const int64_t ldc = pc.g.m + 16;  // the last 16-channel group writes up to 15 padding lanes
  ws.acc.resize(static_cast<size_t>(rows * ldc));
  bit_accumulate(pc, image, p0, rows, ws.acc.data(), ldc, ws.bit_slots);
  epilogue_rows(kernels, pc, ws.acc.data(), ldc, rows, out);
}

// Depthwise (groups = in = out channels): per output pixel, a vector over the channels of each tap.
template <typename In, typename Out>
void depthwise_tile(const PackedConv& pc, const ConvKernels& kernels, const In* x, int32_t x_sub, int64_t p0,
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
    epilogue_rows(kernels, pc, acc, c + 8, 1, out + (p - p0) * g.m);
  }
}

// Depthwise on uint8 codes with the ISA's kernel (PackedConv::dw_sums).
template <typename Out>
void depthwise_u8_tile(const PackedConv& pc, const ConvKernels& kernels, const uint8_t* x, int32_t x_sub, int64_t p0,
                       int64_t rows, Out* out, Workspace& ws) {
  const int64_t ldc = pc.g.c + 8;
  ws.acc.resize(static_cast<size_t>(rows * ldc + pc.g.c));
  kernels.depthwise_u8(pc, x, x_sub, p0, rows, ws.acc.data(), ws);
  epilogue_rows(kernels, pc, ws.acc.data(), ldc, rows, out);
}

// Depthwise on AVX-512 VNNI (core/depthwise.h): uint8 codes, int8 weights.
template <typename Out>
void depthwise_vnni_tile(const PackedConv& pc, const ConvKernels& kernels, const uint8_t* x, int32_t x_sub, int64_t p0,
                         int64_t rows, Out* out, Workspace& ws) {
  const int64_t ldc = round_up(pc.g.m, 16);
  ws.acc.resize(static_cast<size_t>(rows * ldc + 16));
  // 64-byte aligned rows: the kernel stores whole zmm registers (a store across two cache lines costs twice)
  const auto base = reinterpret_cast<uintptr_t>(ws.acc.data());
  int32_t* acc = ws.acc.data() + (round_up(static_cast<int64_t>(base), 64) - static_cast<int64_t>(base)) / 4;
  depthwise_accumulate(pc, x, x_sub, p0, rows, acc, ldc, ws.quads);
  epilogue_rows(kernels, pc, acc, ldc, rows, out);
}

// Whether the VNNI and AMX GEMMs can read a uint8 image as it is instead of a padded copy: no padding, stored codes
// that are already x - z_x - x_lo, and kernel rows of whole quads (octets for quad_gemm_octets): the quad GEMMs then
// read no byte past the image.
bool reads_codes_in_place(const PackedConv& pc, int32_t x_sub) {
  const int64_t row = pc.g.kw * pc.g.c;
  const bool whole_steps = pc.kernel == ConvKernel::Amx ? row % 4 == 0 : pc.seg_quads * 4 == row;
  return pc.g.ph == 0 && pc.g.pw == 0 && int64_t{x_sub} + pc.vnni_x_lo == 0 && whole_steps;
}

template <typename In, typename Out>
void conv_image_typed(const PackedConv& pc, const In* x, int32_t x_sub, Out* out, int num_threads,
                      const ScratchTeam& scratch, TileSink* sink) {
  const ConvKernels& kernels = conv_kernels(pc.isa);
  const int threads = std::max(1, num_threads);
  const int64_t positions = pc.g.positions(), rows = balanced_tile_rows(pc, threads);
  const int64_t tiles = (positions + rows - 1) / rows;
  ThreadScratch& own = scratch[0];
  const int16_t* padded_image = nullptr;  // the threads read the caller's buffers through these
  const uint8_t* bit_tables = nullptr, *padded_image8 = nullptr;
  switch (pc.kernel) {
    case ConvKernel::Binary:
      bit_image(pc, x, std::is_same_v<In, uint8_t> ? Storage::U8 : Storage::I32, x_sub, own.bit_tables, own.bit_quads);
      bit_tables = own.bit_tables.data();
      break;
    case ConvKernel::Acc16:
      pad_image(x, x_sub, pc.g, own.padded8);
      padded_image8 = own.padded8.data();
      break;
    case ConvKernel::Vnni:
    case ConvKernel::Amx: {
      const int64_t slack = pc.kernel == ConvKernel::Amx ? amx_image_slack(pc.g) : 0;
      if (std::is_same_v<In, uint8_t> && reads_codes_in_place(pc, x_sub) && slack == 0) {
        padded_image8 = reinterpret_cast<const uint8_t*>(x);
        break;
      }
      pad_image(x, x_sub + pc.vnni_x_lo, pc.g, own.padded8, static_cast<uint8_t>(-pc.vnni_x_lo), slack);
      padded_image8 = own.padded8.data();
      break;
    }
    case ConvKernel::Gemm:
      if (reads_padded_image(pc.g)) {
        pad_image(x, x_sub, pc.g, own.padded);
        padded_image = own.padded.data();
      }
      break;
    case ConvKernel::Depthwise:
    case ConvKernel::DepthwiseVnni: break;
  }
  // The depthwise vector kernels read uint8 codes minus an x_sub inside their range.
  const bool u8_codes = std::is_same_v<In, uint8_t> && x_sub >= 0 && x_sub <= 255;
  const auto* x8 = reinterpret_cast<const uint8_t*>(x);
  // `split`: the threads sharing the column steps of the layer's only tile (GEMMs; 1 elsewhere).
  auto compute_tile = [&](int64_t p0, int64_t n, Out* tile_out, Workspace& ws, int split) {
    switch (pc.kernel) {
      case ConvKernel::Gemm: return conv_tile(pc, kernels, x, x_sub, padded_image, p0, n, tile_out, ws, split);
      case ConvKernel::Binary: return bit_conv_tile(pc, kernels, bit_tables, p0, n, tile_out, ws);
      case ConvKernel::Acc16: return acc16_conv_tile(pc, kernels, padded_image8, p0, n, tile_out, ws);
      case ConvKernel::Amx: return amx_conv_tile(pc, kernels, padded_image8, p0, n, tile_out, ws);
      case ConvKernel::Vnni: return vnni_conv_tile(pc, kernels, padded_image8, p0, n, tile_out, ws, split);
      case ConvKernel::DepthwiseVnni:
        if (u8_codes) return depthwise_vnni_tile(pc, kernels, x8, x_sub, p0, n, tile_out, ws);
        break;
      case ConvKernel::Depthwise:
        if (u8_codes && !pc.dw_sums.empty() && kernels.depthwise_u8)
          return depthwise_u8_tile(pc, kernels, x8, x_sub, p0, n, tile_out, ws);
        break;
    }
    depthwise_tile(pc, kernels, x, x_sub, p0, n, tile_out, ws);
  };
  auto tile = [&](int64_t t, Workspace& ws, int split) {
    const int64_t p0 = t * rows, n = std::min(rows, positions - p0);
    void* own = sink ? sink->buffer(p0, n) : nullptr;
    compute_tile(p0, n, own ? static_cast<Out*>(own) : out + p0 * pc.g.m, ws, split);
    if (sink) sink->done(p0, n);
  };
  if (threads == 1 || tiles == 1) {
    for (int64_t t = 0; t < tiles; ++t) tile(t, own.tile, threads);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t t = 0; t < tiles; ++t) tile(t, scratch[thread_num()].tile, 1);
}

template <typename In>
void conv_image_in(const PackedConv& pc, const In* x, int32_t x_sub, void* out, Storage out_storage,
                   int num_threads, const ScratchTeam& scratch, TileSink* sink) {
  switch (out_storage) {
    case Storage::U8: return conv_image_typed(pc, x, x_sub, static_cast<uint8_t*>(out), num_threads, scratch, sink);
    case Storage::I32: return conv_image_typed(pc, x, x_sub, static_cast<int32_t*>(out), num_threads, scratch, sink);
    case Storage::F32: return conv_image_typed(pc, x, x_sub, static_cast<float*>(out), num_threads, scratch, sink);
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
  if (!(has_avx2(isa) || has_neon(isa)) || accumulator_bits > 16 || g.groups != 1 || g.dw != 1 || x.lo < 0 ||
      x.hi > 255)
    return false;
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

// The quad GEMM's weights and accumulator starts (ConvKernel::Vnni), where the layer qualifies: a pack for a path
// with the GEMM (has_quad_gemm), one group, dilation 1 in x, int8 weights, and an input range that, widened to hold 0
// (the border), spans at most 256 values. False leaves pc as it was.
// On Isa::Amx, layers with at least this many k values, output channels and output positions run on the tile GEMM
// instead: below, the VNNI GEMM was as fast or faster (docs/BENCHMARKS.md), k padded to 64, the tile loads and
// stores weighing more than the products, or most of a 16-position A tile empty (the classifier). isa_supported
// asks Linux for the tile state once.
constexpr int64_t kMinAmxK = 128, kMinAmxChannels = 64, kMinAmxPositions = 16;

bool pack_vnni(PackedConv& pc, const int16_t* weight, InputRange x) {
  const ConvGeom& g = pc.g;
  const int64_t x_lo = std::min<int64_t>(x.lo, 0), x_hi = std::max<int64_t>(x.hi, 0);
  if (!has_quad_gemm(pc.isa) || !reads_padded_image(g) || x_hi - x_lo > 255) return false;
  const bool octets = quad_gemm_octets(pc.isa);
  const int64_t k = g.k(), seg_len = g.kw * g.c, seg_quads = round_up((seg_len + 3) / 4, octets ? 2 : 1);
  const int64_t kq = g.kh * seg_quads, flip = quad_gemm_flips_input(pc.isa) ? 128 : 0;
  if (255 * 128 * k > INT32_MAX) return false;  // bounds each |x_lo * sum_k w[m][k]| below
  std::vector<int32_t> start(static_cast<size_t>(round_up(g.m, 16)), 0);
  for (int64_t m = 0; m < g.m; ++m) {
    int64_t sum = 0;
    for (int64_t kk = 0; kk < k; ++kk) {
      const int16_t v = weight[m * k + kk];
      if (v < -128 || v > 127) return false;
      sum += v;
    }
    start[static_cast<size_t>(m)] = static_cast<int32_t>((x_lo + flip) * sum);  // |x_lo + flip| <= 255
  }
  pc.kernel = ConvKernel::Vnni;
  pc.vnni_x_lo = static_cast<int32_t>(x_lo);
  pc.vnni_acc_start = std::move(start);
  pc.vnni_start_zero = std::all_of(pc.vnni_acc_start.begin(), pc.vnni_acc_start.end(), [](int32_t v) { return v == 0; });
  if (pc.isa == Isa::Amx && isa_supported(Isa::Amx) && k >= kMinAmxK && g.m >= kMinAmxChannels &&
      g.positions() >= kMinAmxPositions) {
    pc.kernel = ConvKernel::Amx;
    pc.amx_k = round_up(k, kAmxStep);
    pc.weights_quads = pack_amx_weights(g, weight, pc.amx_k);
    return true;
  }
  pc.seg_quads = seg_quads;
  pc.weights_quads.assign(static_cast<size_t>(round_up(g.m, 16) * kq * 4), 0);
  for (int64_t m = 0; m < g.m; ++m)
    for (int64_t kk = 0; kk < k; ++kk) {
      const int64_t quad = kk / seg_len * seg_quads + kk % seg_len / 4, byte = kk % seg_len % 4;
      // quads: [block][quad][16 channels][4]; octets: [block][quad / 2][16 channels][quad % 2][4]
      const int64_t at = octets ? ((m / 16) * kq + quad / 2 * 2) * 64 + (m % 16) * 8 + quad % 2 * 4 + byte
                                : ((m / 16) * kq + quad) * 64 + (m % 16) * 4 + byte;
      pc.weights_quads[static_cast<size_t>(at)] = static_cast<int8_t>(weight[m * k + kk]);
    }
  return true;
}

// PackedConv::requant_scale and requant_offset where the input range x proves epilogue_f64 exact: for every channel,
// |acc| <= max|x| * ||w_m||_1 and |acc * multiplier + bias| below 2^51 and below 2^(shift + 28), so the rounded value
// plus zero_point - store_offset (below 2^29) stays inside int32. Bounds taken in double, with margin to spare.
void pack_requant_f64(PackedConv& pc, const std::vector<WeightSums>& sums, InputRange x) {
  const ConvEpilogue& e = pc.epi;
  const int64_t m_all = pc.g.m;
  const double x_max = std::max(std::abs(static_cast<double>(x.lo)), std::abs(static_cast<double>(x.hi)));
  auto fits = [](int64_t v, int64_t lo, int64_t hi) { return v >= lo && v <= hi; };
  if (!fits(int64_t{e.zero_point} - e.store_offset, -(int64_t{1} << 29), int64_t{1} << 29) ||
      !fits(int64_t{e.lo} - e.store_offset, INT32_MIN, INT32_MAX) ||
      !fits(int64_t{e.hi} - e.store_offset, INT32_MIN, INT32_MAX))
    return;
  std::vector<double> scale(static_cast<size_t>(round_up(m_all, 16)), 0.0), offset(scale.size(), 0.0);
  for (int64_t m = 0; m < m_all; ++m) {
    const double l1 = static_cast<double>(sums[static_cast<size_t>(m)].positive - sums[static_cast<size_t>(m)].negative);
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

// Whether every channel's codes over its proven accumulators lie inside the clamp (and their stored values in int32).
bool requant_unclamped(const PackedConv& pc, const std::vector<WeightSums>& sums, InputRange x) {
  const ConvEpilogue& e = pc.epi;
  for (int64_t m = 0; m < pc.g.m; ++m) {
    const auto [acc_lo, acc_hi] = accumulator_range(sums[static_cast<size_t>(m)], x);
    for (const int64_t acc : {acc_lo, acc_hi}) {  // the code is monotone in acc
      const __int128 code =
          rounding_shift(static_cast<__int128>(acc) * e.multiplier[m] + e.bias[m], e.shift[m]) + e.zero_point;
      if (code < e.lo || code > e.hi) return false;
    }
  }
  return true;
}

// PackedConv::tie_free_blocks where every channel's requantization is tie-free over its proven accumulators.
void pack_tie_free(PackedConv& pc, const std::vector<WeightSums>& sums, InputRange x) {
  const ConvEpilogue& e = pc.epi;
  const int64_t m_all = pc.g.m;
  std::vector<TieFreeBlock> blocks(static_cast<size_t>(round_up(m_all, 16) / 16), TieFreeBlock{});
  TieFreeRequant t{};
  for (int64_t m = 0; m < m_all; ++m) {
    const auto [acc_lo, acc_hi] = accumulator_range(sums[static_cast<size_t>(m)], x);
    if (!tie_free_requant(InputRange{acc_lo, acc_hi}, e.multiplier[m], e.bias[m], e.shift[m], e.zero_point, e.lo,
                          e.hi, e.store_offset, &t))
      return;
    TieFreeBlock& b = blocks[static_cast<size_t>(m / 16)];
    const int64_t lane = m % 16, half = lane / 2;
    b.acc_lo[lane] = t.x_lo;
    b.acc_hi[lane] = t.x_hi;
    b.multiplier[lane] = e.multiplier[m];
    (lane % 2 ? b.bias_half_odd : b.bias_half_even)[half] = t.bias_half;
    (lane % 2 ? b.shift_odd : b.shift_even)[half] = e.shift[m];
  }
  // out_add, out_lo and out_hi depend on the layer's zero point, clamp and store offset only.
  pc.tie_free_blocks = std::move(blocks);
  pc.tie_free_out_add = t.out_add;
  pc.tie_free_out_lo = t.out_lo;
  pc.tie_free_out_hi = t.out_hi;
}

// PackedConv::dw_sums for the vector depthwise kernels on uint8 codes, and on AVX2 dw_pairs, where the bound holds.
void pack_depthwise_u8(PackedConv& pc, const int16_t* weight) {
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
  if (has_avx2(pc.isa)) pc.dw_pairs = std::move(packed);
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
  // The int16-accumulator GEMM where it is exact; on ARMv8.0 NEON also before the quad GEMM, whose widening
  // multiplies give 4 MACs per 4 instructions to acc16's 8 per MLA.
  const bool acc16 = acc16_exact(g, weight, x, accumulator_bits, isa);
  if (const int act_bits = binary_act_bits(g, weight, x)) {
    pc.kernel = ConvKernel::Binary;
    pc.bits = pack_bit_weights(g, weight, act_bits, isa);
  } else if (!(isa == Isa::Neon && acc16) && pack_vnni(pc, weight, x)) {  // sets the kernel, weights_quads, starts
  } else if (acc16) {
    pc.kernel = ConvKernel::Acc16;
    const int64_t blocks16 = round_up(g.m, 16) / 16;
    if (has_neon(isa))
      pc.weights16.assign(static_cast<size_t>(blocks16 * pc.kp * 16), 0);
    else
      pc.weights8.assign(static_cast<size_t>(blocks16 * pairs * 32), 0);
    for (int64_t m = 0; m < g.m; ++m)
      for (int64_t kk = 0; kk < k; ++kk) {
        const int64_t block = m / 16, lane = m % 16;
        if (has_neon(isa)) {  // groups of kBlocks blocks (one microkernel call), [kp][blocks in the group x 16]
          const int64_t first = block / kBlocks * kBlocks, in_group = std::min<int64_t>(kBlocks, blocks16 - first);
          pc.weights16[first * pc.kp * 16 + packed_k(kk) * in_group * 16 + (block - first) * 16 + lane] =
              weight[m * k + kk];
        } else {
          const int64_t at = (block * pairs + packed_k(kk) / 2) * 32, half = packed_k(kk) % 2;
          pc.weights8[at + lane * 2 + half] = static_cast<int8_t>(weight[m * k + kk]);
        }
      }
  } else if (g.depthwise()) {  // [taps][C]
    const int64_t taps = k;
    pc.weights.resize(static_cast<size_t>(taps * g.c));
    for (int64_t ch = 0; ch < g.c; ++ch)
      for (int64_t t = 0; t < taps; ++t) pc.weights[t * g.c + ch] = weight[ch * taps + t];
    if ((has_avx2(isa) || has_neon(isa)) && !pack_depthwise_quads(pc, weight)) pack_depthwise_u8(pc, weight);
    pc.kernel = pc.dw_quads.empty() ? ConvKernel::Depthwise : ConvKernel::DepthwiseVnni;
  } else {
    pc.weights.assign(static_cast<size_t>(g.groups * pc.mg8 * pc.kp), 0);
  }
  for (int64_t group = 0; group < (pc.kernel == ConvKernel::Gemm ? g.groups : 0); ++group)
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
  if (!pc.epi.float_output && (has_avx512(isa) || has_neon(isa))) {  // the paths with a double epilogue
    const std::vector<WeightSums> sums = channel_weight_sums(weight, g.m, k);
    pack_requant_f64(pc, sums, x);
    if (has_avx512(isa)) {
      pack_tie_free(pc, sums, x);  // its own epilogue where the double one is not exact; else what that one folds
      pc.requant_unclamped = requant_unclamped(pc, sums, x);
    }
  }
  const bool few_codes = int64_t{pc.epi.hi} - pc.epi.lo < kMaxThresholdLevels;
  if (!pc.epi.float_output && (has_avx2(isa) || has_neon(isa)) && few_codes) {
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

std::pair<int64_t, int64_t> conv_output_range(const ConvEpilogue& epi, const int16_t* weight, int64_t k,
                                              InputRange x) {
  int64_t lo = INT64_MAX, hi = INT64_MIN;
  const int64_t channels = static_cast<int64_t>(epi.multiplier.size());
  const std::vector<WeightSums> sums = channel_weight_sums(weight, channels, k);
  for (int64_t m = 0; m < channels; ++m) {
    const auto [acc_lo, acc_hi] = accumulator_range(sums[static_cast<size_t>(m)], x);
    const int64_t a = output_code(epi, m, acc_lo), b = output_code(epi, m, acc_hi);  // b < a where multiplier < 0
    lo = std::min({lo, a, b});
    hi = std::max({hi, a, b});
  }
  return {lo, hi};
}

std::string conv_kernel_name(const PackedConv& pc) {
  switch (pc.kernel) {
    case ConvKernel::Binary:
      return (pc.bits.popcount ? "binary popcount a" : "binary a") + std::to_string(pc.bits.act_bits);
    case ConvKernel::Acc16: return "gemm acc16";
    case ConvKernel::Amx: return "gemm amx";
    case ConvKernel::Vnni:
      return pc.isa == Isa::Neon      ? "gemm neon"
             : pc.isa == Isa::NeonDot ? "gemm sdot"
             : pc.isa == Isa::I8mm    ? "gemm i8mm"
                                      : "gemm vnni";
    case ConvKernel::Depthwise:
    case ConvKernel::DepthwiseVnni: return "depthwise";
    case ConvKernel::Gemm: break;
  }
  return "gemm acc32";
}

int64_t conv_max_tile_positions(const PackedConv& pc) {
  const int64_t rows = pc.kernel == ConvKernel::Amx ? round_up(tile_rows(pc), kAmxTileRows) : tile_rows(pc);
  return std::min(rows, pc.g.positions());  // balanced_tile_rows rounds to whole A tiles
}

int64_t conv_scratch_bytes(const PackedConv& pc) {
  const ConvGeom& g = pc.g;
  const int64_t rows = tile_rows(pc);
  const int64_t padded_values = (g.h + 2 * g.ph) * (g.w + 2 * g.pw) * g.c + kImageSlack;
  switch (pc.kernel) {
    case ConvKernel::Binary: return bit_scratch_bytes(pc) + rows * (g.m + 16) * 4;
    case ConvKernel::DepthwiseVnni: return (rows * round_up(g.m, 16) + 16) * 4 + depthwise_scratch_bytes(pc);
    case ConvKernel::Depthwise: return (rows * (g.m + 8) + g.c) * 4 + g.c + (g.k() + 1) * 8;
    case ConvKernel::Acc16: return rows * ((g.m + 16) * 4 + 8) + padded_values;
    case ConvKernel::Amx:
      return (round_up(rows, kAmxTileRows) + kAmxTileRows) * round_up(g.m, 2 * kAmxTileRows) * 4 +
             round_up(rows, kAmxTileRows) * (8 + pc.amx_k) + padded_values + amx_image_slack(g);
    case ConvKernel::Vnni: return rows * (round_up(g.m, 16) * 4 + 8) + padded_values;
    case ConvKernel::Gemm: break;
  }
  if (reads_padded_image(g)) return rows * ((g.m + 8) * 4 + 8) + padded_values * 2;
  return rows * (pc.kp * 2 + (g.m + 8) * 4);
}

void conv_image(const PackedConv& pc, const void* x, Storage in, int32_t x_sub, void* out, Storage out_storage,
                int num_threads, const ScratchTeam& scratch, TileSink* tiles) {
  if (std::max(1, num_threads) > scratch.size)
    throw std::invalid_argument("conv_image: scratch for " + std::to_string(scratch.size) + " threads, " +
                                std::to_string(num_threads) + " asked for");
  if (in == Storage::U8)
    conv_image_in(pc, static_cast<const uint8_t*>(x), x_sub, out, out_storage, num_threads, scratch, tiles);
  else if (in == Storage::I32)
    conv_image_in(pc, static_cast<const int32_t*>(x), x_sub, out, out_storage, num_threads, scratch, tiles);
  else
    throw std::invalid_argument("conv_image: the input must be integer codes");
}

void conv_image(const PackedConv& pc, const void* x, Storage in, int32_t x_sub, void* out, Storage out_storage,
                int num_threads, TileSink* tiles) {
  std::vector<ThreadScratch> scratch(static_cast<size_t>(std::max(1, num_threads)));
  conv_image(pc, x, in, x_sub, out, out_storage, num_threads, {scratch.data(), static_cast<int>(scratch.size())}, tiles);
}

double int8_peak_gmacs(double seconds, int threads) {
  threads = std::max(1, threads);
  const Isa best = isa_supported(Isa::Avx512Vnni) ? Isa::Avx512Vnni
                   : isa_supported(Isa::Avx2)     ? Isa::Avx2
                                                  : Isa::Scalar;
  const auto& peak = conv_kernels(best).peak;
  double total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    using clock = std::chrono::steady_clock;
    int64_t done = 0;
    volatile int64_t sink = 0;
    const auto start = clock::now();
    double elapsed = 0;
    while (elapsed < seconds) {
      sink = sink + peak.run(peak.iterations);
      done += peak.iterations * peak.macs_per_iteration;
      elapsed = std::chrono::duration<double>(clock::now() - start).count();
    }
    total += done / elapsed / 1e9;
  }
  return total;
}

}  // namespace qcnn
