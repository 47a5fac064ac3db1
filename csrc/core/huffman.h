// Canonical, length-limited Huffman coding of weight indices (Deep Compression, Han et al. 2016,
// codes the quantized weights this way). Symbols are 0..k-1 (k <= 256).
//
// A code is fully described by its per-symbol code lengths (0 = symbol absent). Codes are the
// canonical ones (RFC 1951 section 3.2.2): symbols ordered by (length, symbol value) receive
// consecutive codes. Bits are written most significant code bit first; stream bit j is bit
// (7 - j % 8) of byte j / 8; the last byte is zero-padded.
#pragma once
#include <cstdint>
#include <vector>

namespace qcnn {

constexpr int kHuffmanMaxLength = 24;

// Code lengths (each <= max_length) of an optimal Huffman code for `counts[k]`; a symbol with
// count 0 gets length 0. If only one symbol occurs it gets length 1.
std::vector<uint8_t> huffman_code_lengths(const int64_t* counts, int k, int max_length);

// Throws std::invalid_argument unless the lengths form a prefix code (Kraft sum <= 1) with
// every length <= kHuffmanMaxLength.
void huffman_check_lengths(const uint8_t* lengths, int k);

// Encodes values[count] (each < k with nonzero length) into a byte stream.
std::vector<uint8_t> huffman_encode(const uint8_t* values, int64_t count, const uint8_t* lengths, int k);

// Decodes exactly `count` symbols from data[nbytes] into out[count]. Throws
// std::invalid_argument (naming the symbol index) on a truncated stream or an unused code.
void huffman_decode(const uint8_t* data, int64_t nbytes, const uint8_t* lengths, int k, int64_t count,
                    uint8_t* out);

}  // namespace qcnn
