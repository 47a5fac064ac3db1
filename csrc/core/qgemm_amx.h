// Internal (qgemm.cpp): the AMX tile GEMM of the convolutions (Isa::Amx). tdpbusd multiplies a 16 x 64 tile of
// unsigned activations by a 64 x 16 tile of signed weights into 16 x 16 int32 accumulators, 16,384 MACs per
// instruction. It reads its A tiles from a row panel of the tile's output positions (the padded uint8 image of
// the VNNI GEMM, ConvKernel::Vnni, gathered: kernel row after kernel row, k in its natural (ky, kx, c) order,
// padded to whole 64-byte steps), so any stride, padding and kernel size runs on it; or, where amx_reads_image,
// straight from the image.
#pragma once
#include <cstdint>
#include <vector>

#include "core/qgemm.h"
#include "core/scratch.h"

namespace qcnn {

constexpr int64_t kAmxStep = 64;      // k values per tile step (one A tile row)
constexpr int64_t kAmxTileRows = 16;  // output positions per A tile, and channels per B tile

// The weights in B-tile order, [ceil(M / 16)][amx_k / 4][16 channels][4], amx_k = K rounded up to kAmxStep.
std::vector<int8_t> pack_amx_weights(const ConvGeom& g, const int16_t* weight, int64_t amx_k);

// Layers of one group whose channels fill whole 64-byte k-steps and whose output rows are at least 16 wide (1x1
// stride-1 layers without padding excepted: their positions are contiguous anyway) read their A tiles straight
// from the padded image, 16 positions of one output row per tile, each tap's channels a k-step: no row panel. Their
// image needs amx_image_slack more bytes after it (a tile's rows past its output row read on).
bool amx_reads_image(const ConvGeom& g);
int64_t amx_image_slack(const ConvGeom& g);

// Output positions per tile of the engine's tile loop (a multiple of 2 * kAmxTileRows).
int64_t amx_tile_rows(const PackedConv& pc);

// acc[r][m] = vnni_acc_start[m] + sum_k u[r][k] * w[m][k] for the `rows` output positions from p0 whose first
// input values lie at padded + row_offsets[r]; acc holds round_up(rows, 16) + 16 rows of ldc >= round_up(M, 16)
// values (those past `rows` are overwritten).
void amx_accumulate(const PackedConv& pc, const uint8_t* padded, const int64_t* row_offsets, int64_t p0, int64_t rows,
                    int32_t* acc, int64_t ldc, Workspace& ws);

}  // namespace qcnn
