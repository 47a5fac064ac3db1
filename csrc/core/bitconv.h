// Binary-weight convolution over bit planes (XNOR-Net / BWN weights; the popcount cost of O'Keeffe &
// Villing 2017: a binary-weight layer with B-bit activations costs B popcount passes).
//
// Weights w in {-1, +1} and inputs v = x - z_x in [0, 2^B). With v = sum_j 2^j v_j (bit planes V_j),
// Wpos = the set of k with w_k = +1 and S = sum_k v_k:
//
//   sum_k w_k v_k = 2 * sum_{k in Wpos} v_k - S = 2 * sum_j 2^j popcount(Wpos & V_j) - S
//
// so each output costs B AND-popcount passes over the K bits of its receptive field, and S is paid
// once per position for all channels. Every path computes the exact integer the int16 GEMM would.
//
// Bit layout: bit c % 8 of byte c / 8 of a pixel's `cbytes` bytes is channel c (channels padded with
// zero bits to a multiple of 8); a receptive field is the kh * kw pixels' bytes in (ky, kx) order,
// padded with zero bytes to `kwords` 32-bit words. The AVX2 kernel puts 8 output channels in the 8
// lanes of a register and counts bits with a nibble table (vpshufb); it keeps the low and high
// nibbles of every word apart (pre-split at load for the weights, per tile for the inputs), so an
// AND yields nibbles the table can index directly.
#pragma once
#include <cstdint>
#include <vector>

#include "core/qgemm.h"

namespace qcnn {

// Planes B for a conv the bit-plane kernel serves, 0 otherwise: one group, dilation 1 in x, every
// weight -1 or +1, and x - z_x within [0, 2^B) with 1 <= B <= kMaxBitPlanes.
int binary_planes(const ConvGeom& g, const int16_t* weight, InputRange x);

BitWeights pack_bit_weights(const ConvGeom& g, const int16_t* weight, int planes);

// One image's bit planes, zero-bordered: [planes][h + 2ph][w + 2pw][cbytes].
void bit_image(const PackedConv& pc, const void* x, Storage in, int32_t x_sub, std::vector<uint8_t>& image);

// acc[r * ldc + m] = sum_k w[m, k] * (x - z_x) for the output positions p0 .. p0 + rows - 1 (and
// arbitrary values in the channel padding up to ldc); scratch holds the tile's input words.
void bit_accumulate(const PackedConv& pc, const uint8_t* image, int64_t p0, int64_t rows, int32_t* acc, int64_t ldc,
                    std::vector<uint32_t>& scratch);

// Output positions per tile and the bytes of per-thread scratch (image + tile words).
int64_t bit_tile_rows(const PackedConv& pc);
int64_t bit_scratch_bytes(const PackedConv& pc);

}  // namespace qcnn
