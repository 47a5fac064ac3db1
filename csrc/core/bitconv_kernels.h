// Internal (bitconv.cpp): the binary kernel's microkernels, one table per instruction set (bitconv_avx2.cpp,
// bitconv_avx512.cpp; the scalar reference in bitconv.cpp), and the types they share. bitconv.cpp picks the table
// once from the layer's Isa.
#pragma once
#include <cstdint>

#include "core/bitconv.h"

namespace qcnn {

constexpr int kSlots = 2;    // pixel slots (1, 2 or 4 pixels, BitWeights::lanes) per microkernel call
constexpr int kSlots512 = 4;
constexpr int kMaxLanes = 4;
constexpr int kGroups = 6;   // 16-channel groups per call: 2 x 6 byte accumulators + 2 tables + 1 pattern register
constexpr int kTableBytes = 16;
constexpr int kPatternBytes = 32;  // 16 channels' patterns, once per lane
constexpr int kPlanePatternBytes = 16;  // the popcount form: 16 channels' weight bits over one octet
constexpr int kPopcountFlush = 255 / 8;  // popcount steps (at most 8 per byte and plane) before a byte could wrap

// A slot of a tile, `lanes` neighbouring output pixels of a row: the image offset of its lane-0 pixel at tap
// (0, 0), step 0, and the tile rows of its outputs (out[l] < 0: lane l is padding, its result dropped); in the
// popcount form, the sum of v over each lane's receptive field.
struct Slot {
  int64_t offset, out[kMaxLanes], value_sum[kMaxLanes];
};
constexpr int64_t kSlotWords = sizeof(Slot) / sizeof(int64_t);

struct KernelArgs {
  const uint8_t* image;
  const int64_t* step_offsets;  // [taps * tap_steps] bytes
  int64_t taps, tap_steps, lane1, group_stride;  // lane1: bytes from one lane's pixel to the next
  int flush;         // steps (one table per lane) before the byte accumulators could wrap
  int64_t epoch;     // steps before the 16-bit accumulators could wrap, a multiple of flush
  int32_t bias;      // beta * taps * quads (tables)
};

// Byte offset, within a 16-channel group, of the patterns of tap t, quad q.
inline int64_t pattern_index(const KernelArgs& a, int64_t t, int64_t q) {
  return (t * a.tap_steps + q) * kPatternBytes;
}

// Accumulators of R slots x J 16-channel groups of output channels (bitconv.cpp bit_accumulate).
using BinaryKernel = void (*)(const KernelArgs& a, const Slot* slots, const uint8_t* patterns, int32_t* acc,
                              int64_t ldc);

struct BinaryKernels {
  int slots;  // slots per call (kSlots or kSlots512), the grid's first index
  int lanes;  // output pixels per register: BitWeights::lanes
  BinaryKernel kernel[2][kSlots512][kGroups];  // [contiguous lanes][slots - 1][groups - 1]
  // quad[q] = sum_i v_{4q+i} << (B i) over n uint8 codes (bitconv.cpp quad_values); null: the scalar loop.
  void (*quad_values_u8)(const uint8_t* src, int64_t n, int32_t x_sub, int bits, int64_t quads, uint32_t* quad);
  // The popcount form's slots per call and kernels, [B - 1][slots - 1][groups - 1]: null where the ISA serves B with
  // the tables.
  int popcount_slots;
  BinaryKernel popcount[kMaxBinaryActBits][kSlots512][kGroups];
  // The bit planes and value sums of w pixels of c uint8 codes each (bitconv.cpp pixel_planes); null: the scalar loop.
  void (*planes_u8)(const uint8_t* src, int64_t w, int64_t c, int32_t x_sub, int bits, uint8_t* planes,
                    int64_t pixel_bytes, int32_t* sums);
};

// nullptr on builds for other architectures. The AVX-512 table needs AVX-512 BW (Isa::Avx512Vnni and Isa::Amx); the
// NEON one serves every aarch64 path.
const BinaryKernels* binary_kernels_avx2();
const BinaryKernels* binary_kernels_avx512();
const BinaryKernels* binary_kernels_neon();

#define QCNN_BINARY_ROW(fn, r, ...) \
  {fn<r, 1 __VA_ARGS__>, fn<r, 2 __VA_ARGS__>, fn<r, 3 __VA_ARGS__>, fn<r, 4 __VA_ARGS__>, fn<r, 5 __VA_ARGS__>, \
   fn<r, 6 __VA_ARGS__>}

}  // namespace qcnn
