#include "core/bitpack.h"

#include <stdexcept>
#include <string>

namespace qcnn {

static void check_bits(int bits) {
  if (bits < 1 || bits > 8) {
    throw std::invalid_argument("bits must be in [1, 8], got " + std::to_string(bits));
  }
}

int64_t packed_size(int64_t count, int bits) {
  check_bits(bits);
  if (count < 0) throw std::invalid_argument("count must be >= 0, got " + std::to_string(count));
  return (count * bits + 7) / 8;
}

void pack_bits(const uint8_t* values, int64_t count, int bits, uint8_t* out) {
  const int64_t nbytes = packed_size(count, bits);
  for (int64_t b = 0; b < nbytes; ++b) out[b] = 0;
  const unsigned limit = 1u << bits;
  // A 16-bit window is enough: a value of at most 8 bits starting at bit offset < 8 spans <= 2 bytes.
  for (int64_t i = 0; i < count; ++i) {
    const unsigned v = values[i];
    if (v >= limit) {
      throw std::invalid_argument("pack_bits: value " + std::to_string(v) + " at index " +
                                  std::to_string(i) + " does not fit in " + std::to_string(bits) + " bits");
    }
    const int64_t bit = i * bits;
    const int64_t byte = bit >> 3;
    const unsigned shifted = v << (bit & 7);
    out[byte] |= static_cast<uint8_t>(shifted & 0xFF);
    if ((bit & 7) + bits > 8) out[byte + 1] |= static_cast<uint8_t>(shifted >> 8);
  }
}

void unpack_bits(const uint8_t* packed, int64_t count, int bits, uint8_t* out) {
  const int64_t nbytes = packed_size(count, bits);
  const unsigned mask = (1u << bits) - 1u;
  if (bits == 8) {
    for (int64_t i = 0; i < count; ++i) out[i] = packed[i];
    return;
  }
  for (int64_t i = 0; i < count; ++i) {
    const int64_t bit = i * bits;
    const int64_t byte = bit >> 3;
    unsigned window = packed[byte];
    if (byte + 1 < nbytes) window |= static_cast<unsigned>(packed[byte + 1]) << 8;
    out[i] = static_cast<uint8_t>((window >> (bit & 7)) & mask);
  }
}

}  // namespace qcnn
