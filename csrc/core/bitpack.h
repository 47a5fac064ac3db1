// Bit packing of small unsigned codes (weight indices), shared by the exporter (through the
// qcnn ops) and the C++ runtime.
//
// Bit order (documented in docs/FORMAT.md): value i occupies stream bits [i*bits, (i+1)*bits),
// least significant bit first; stream bit j is bit (j % 8) of byte j / 8. Unused high bits of
// the last byte are zero.
#pragma once
#include <cstddef>
#include <cstdint>

namespace qcnn {

constexpr int kMaxPackedBits = 16;

// Bytes needed for `count` values of `bits` bits each (1 <= bits <= 16).
int64_t packed_size(int64_t count, int bits);

// Packs `count` values (each < 2^bits) into out[packed_size(count, bits)]; 8-bit values take
// bits <= 8, 16-bit values bits <= 16. Throws std::invalid_argument on a bad bit width or a value
// that does not fit.
void pack_bits(const uint8_t* values, int64_t count, int bits, uint8_t* out);
void pack_bits(const uint16_t* values, int64_t count, int bits, uint8_t* out);

// Inverse of pack_bits: reads packed_size(count, bits) bytes from `packed`.
void unpack_bits(const uint8_t* packed, int64_t count, int bits, uint8_t* out);
void unpack_bits(const uint8_t* packed, int64_t count, int bits, uint16_t* out);

}  // namespace qcnn
