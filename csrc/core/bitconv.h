// Binary-weight convolution by table lookup (XNOR-Net / BWN weights against few-bit activations: the
// popcount layers of O'Keeffe & Villing 2017, with the popcount done by vpshufb).
//
// Weights w in {-1, +1}, inputs v = x - z_x in [0, 2^B), B <= kMaxBinaryActBits. A pixel's channels are
// taken four at a time (a quad; channels past C count as v = 0). For a quad with values v_0 .. v_3
// the pixel has a 16-entry table over the sign patterns n of four weights (bit i set: w_i = +1):
//
//   T[n] = beta + sum_i (bit_i(n) ? v_i : -v_i),   beta = 4 (2^B - 1), so 0 <= T[n] <= 2 beta,
//
// and an output is the sum, over the taps and quads of its receptive field, of T[its weights' pattern],
// minus beta * taps * quads: the exact integer the int16 GEMM would compute. The tables are built once
// per image (a quad's value selects one of 2^(4B) tables computed at pack time); the weights become
// 4-bit patterns. The AVX2 kernel holds the tables of two output pixels in the two 128-bit lanes of a
// register and the patterns of 16 channels in each lane, so one vpshufb does 16 channels x 2 pixels x 4
// input channels: 128 MACs for any B (an AND + nibble popcount over bit planes does 256 / B per lookup,
// and an AND besides).
//
// On AVX-512 BW (Isa::Avx512Vnni, Isa::Amx) a zmm register holds the tables of four output pixels: 256 MACs per vpshufb.
//
// The popcount form (BitWeights::popcount; NEON at B = 1, where it takes fewer instructions than the tables): each
// pixel holds B bit planes of its v in bytes of 8 channels, each weight row its +1 positions as bits, and with
// S_p = popcount(bits & plane_p) summed over the receptive field an output is 2 sum_p 2^p S_p - sum v. An AND, a
// CNT and an ADD do 16 channels x 8 input channels per plane; the sum of v of each output position is taken once
// per image.
//
// Table image: [h + 2ph][quads][w + 2pw + (lanes - 1) sw][16] bytes, border and spare columns holding the
// tables of v = 0 (every entry beta). The spare columns are the padding lanes of a row's last slot.
#pragma once
#include <cstdint>
#include <vector>

#include "core/qgemm.h"

namespace qcnn {

// Activation bits B for a conv the binary kernel serves, 0 otherwise: one group, every weight -1 or
// +1, and x - z_x within [0, 2^B) with 1 <= B <= kMaxBinaryActBits.
int binary_act_bits(const ConvGeom& g, const int16_t* weight, InputRange x);

// isa: the kernel's pixels per register (BitWeights::lanes) set the table image's spare columns.
BitWeights pack_bit_weights(const ConvGeom& g, const int16_t* weight, int act_bits, Isa isa);

// One image's table image or bit planes (layouts above and in bitconv.cpp); `quads` is scratch for a row's quads.
void bit_image(const PackedConv& pc, const void* x, Storage in, int32_t x_sub, std::vector<uint8_t>& image,
               std::vector<uint32_t>& quads);

// acc[r * ldc + m] = sum_k w[m, k] * (x - z_x) for the output positions p0 .. p0 + rows - 1 (and
// arbitrary values in the channel padding up to a multiple of 16: ldc >= m + 16); scratch holds the
// tile's pixel pairs.
void bit_accumulate(const PackedConv& pc, const uint8_t* image, int64_t p0, int64_t rows, int32_t* acc, int64_t ldc,
                    std::vector<int64_t>& scratch);

// Output positions per tile and the bytes of per-thread scratch (table image + pixel pairs).
int64_t bit_tile_rows(const PackedConv& pc);
int64_t bit_scratch_bytes(const PackedConv& pc);

}  // namespace qcnn
