#include "core/bitpack.h"

#include <stdexcept>
#include <string>

namespace qcnn {

namespace {

void check_bits(int bits, int max_bits) {
  if (bits < 1 || bits > max_bits)
    throw std::invalid_argument("bits must be in [1, " + std::to_string(max_bits) + "], got " + std::to_string(bits));
}

template <typename T>
void pack_typed(const T* values, int64_t count, int bits, uint8_t* out) {
  check_bits(bits, 8 * static_cast<int>(sizeof(T)));
  const int64_t nbytes = packed_size(count, bits);
  for (int64_t b = 0; b < nbytes; ++b) out[b] = 0;
  const uint32_t limit = 1u << bits;
  // A 24-bit window is enough: a value of at most 16 bits starting at bit offset < 8 spans <= 3 bytes.
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t v = values[i];
    if (v >= limit) {
      throw std::invalid_argument("pack_bits: value " + std::to_string(v) + " at index " + std::to_string(i) +
                                  " does not fit in " + std::to_string(bits) + " bits");
    }
    const int64_t bit = i * bits;
    const uint32_t shifted = v << (bit & 7);
    for (int64_t byte = bit >> 3, end = (bit + bits + 7) >> 3, s = 0; byte < end; ++byte, s += 8)
      out[byte] |= static_cast<uint8_t>(shifted >> s);
  }
}

template <typename T>
void unpack_typed(const uint8_t* packed, int64_t count, int bits, T* out) {
  check_bits(bits, 8 * static_cast<int>(sizeof(T)));
  const int64_t nbytes = packed_size(count, bits);
  const uint32_t mask = (1u << bits) - 1u;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t bit = i * bits, byte = bit >> 3;
    uint32_t window = packed[byte];
    if (byte + 1 < nbytes) window |= static_cast<uint32_t>(packed[byte + 1]) << 8;
    if (byte + 2 < nbytes) window |= static_cast<uint32_t>(packed[byte + 2]) << 16;
    out[i] = static_cast<T>((window >> (bit & 7)) & mask);
  }
}

}  // namespace

int64_t packed_size(int64_t count, int bits) {
  check_bits(bits, kMaxPackedBits);
  if (count < 0) throw std::invalid_argument("count must be >= 0, got " + std::to_string(count));
  return (count * bits + 7) / 8;
}

void pack_bits(const uint8_t* values, int64_t count, int bits, uint8_t* out) { pack_typed(values, count, bits, out); }
void pack_bits(const uint16_t* values, int64_t count, int bits, uint8_t* out) { pack_typed(values, count, bits, out); }
void unpack_bits(const uint8_t* packed, int64_t count, int bits, uint8_t* out) {
  unpack_typed(packed, count, bits, out);
}
void unpack_bits(const uint8_t* packed, int64_t count, int bits, uint16_t* out) {
  unpack_typed(packed, count, bits, out);
}

}  // namespace qcnn
