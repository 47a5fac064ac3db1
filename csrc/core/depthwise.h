// Depthwise convolution (groups = in = out channels) on AVX-512 VNNI: uint8 codes, int8 weights.
//
// vpdpbusd multiplies four unsigned bytes by four signed bytes and adds the four products into an int32 lane,
// so a channel's lane takes four taps per instruction once the input is interleaved into quads. The quads run
// down the kernel's columns: for an output row oy and a padded input column cx,
//
//   V[cx][j][c] = (x[iy(4j)][cx][c], x[iy(4j + 1)][cx][c], x[iy(4j + 2)][cx][c], x[iy(4j + 3)][cx][c]),
//   iy(t) = oy sh - ph + t dh,
//
// built once per output row segment and 64-channel block, each column just before the first pixel that reads it
// (j < ceil(kh / 4); a 3x3 kernel's fourth row and a 5x5's rows 5 to 7 carry weight 0), and output pixel ox takes
// kw * ceil(kh / 4) quads of it, at columns ox sw + kx dw. Input outside the image reads x_sub and every accumulator
// starts at -x_sub * sum_t w[t][c], so the border cancels exactly:
// acc = sum_t x_t w_t - x_sub sum_t w_t = sum over the taps inside the image of (x_t - x_sub) w_t.
//
// Interleaving bytes of 4 rows with unpacklo/hi_epi8 and _epi16 stays within 128-bit lanes; each row's 64 channels
// are first permuted by one vpermd (a 4 x 4 transpose of 4-channel dwords), after which the four quad registers
// hold channels 0-15, 16-31, 32-47, 48-63 in natural order, as the epilogue reads them. A channel count that is not
// a multiple of 64 reads its last block under a byte mask. 3x3 kernels at stride 1 or 2 (dilation 1 in x) run a loop
// of their own with all 12 weight registers of a block live; 5x5 kernels keep a half block's 20; any other geometry
// reads its weights from L1.
#pragma once
#include <cstdint>
#include <vector>

#include "core/qgemm.h"

namespace qcnn {

// Sets pc.dw_quads and pc.dw_sums where this kernel runs the layer: a depthwise geometry, has_avx512(pc.isa), every weight
// in int8 and 510 * sum_t |w[t][c]| within int32 (the partial sums). weight: [C][kh * kw]. False leaves pc as it was.
bool pack_depthwise_quads(PackedConv& pc, const int16_t* weight);

// acc[r * ldc + c] = the int32 accumulators of output positions p0 .. p0 + rows - 1 (any range, rows may be partial),
// ldc >= C rounded up to 16 (the lanes past C hold arbitrary values; 64-byte aligned rows store fastest). x: NHWC
// uint8 codes, x_sub in [0, 255]. scratch holds the row segments and the quads of one segment and block.
void depthwise_accumulate(const PackedConv& pc, const uint8_t* x, int32_t x_sub, int64_t p0, int64_t rows,
                          int32_t* acc, int64_t ldc, std::vector<uint8_t>& scratch);

// Output positions per tile (core/depthwise.cpp kAccTileBytes) and the bytes of depthwise_accumulate's scratch.
int64_t depthwise_tile_rows(const PackedConv& pc);
int64_t depthwise_scratch_bytes(const PackedConv& pc);

}  // namespace qcnn
