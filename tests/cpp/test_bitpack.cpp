#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include "core/bitpack.h"
#include "core/huffman.h"

TEST_CASE("pack_bits/unpack_bits round trip at every bit width", "[bitpack]") {
  std::mt19937 rng(1234);
  for (int bits = 1; bits <= 8; ++bits) {
    for (int64_t count : {0, 1, 7, 8, 9, 63, 1000, 4097}) {
      std::uniform_int_distribution<int> dist(0, (1 << bits) - 1);
      std::vector<uint8_t> v(count);
      for (auto& x : v) x = static_cast<uint8_t>(dist(rng));
      std::vector<uint8_t> packed(qcnn::packed_size(count, bits), 0xAB);
      qcnn::pack_bits(v.data(), count, bits, packed.data());
      REQUIRE(static_cast<int64_t>(packed.size()) == (count * bits + 7) / 8);
      std::vector<uint8_t> back(count);
      qcnn::unpack_bits(packed.data(), count, bits, back.data());
      REQUIRE(back == v);
    }
  }
}

TEST_CASE("pack_bits bit order is LSB first", "[bitpack]") {
  // 3-bit values 5 (101), 3 (011), 7 (111): stream bits 1,0,1, 1,1,0, 1,1,1 -> byte0 = 0b11011101, byte1 = 1.
  std::vector<uint8_t> v{5, 3, 7};
  std::vector<uint8_t> packed(2);
  qcnn::pack_bits(v.data(), 3, 3, packed.data());
  CHECK(packed[0] == 0xDD);
  CHECK(packed[1] == 0x01);
  // Independent reference: bit j of the stream is bit (j % 8) of byte j / 8.
  std::mt19937 rng(7);
  for (int bits = 1; bits <= 8; ++bits) {
    std::vector<uint8_t> vals(37);
    for (auto& x : vals) x = static_cast<uint8_t>(rng() % (1u << bits));
    std::vector<uint8_t> p(qcnn::packed_size(37, bits));
    qcnn::pack_bits(vals.data(), 37, bits, p.data());
    for (int i = 0; i < 37; ++i)
      for (int b = 0; b < bits; ++b) {
        const int j = i * bits + b;
        REQUIRE(((p[j / 8] >> (j % 8)) & 1) == ((vals[i] >> b) & 1));
      }
  }
}

TEST_CASE("pack_bits rejects bad widths and values", "[bitpack]") {
  std::vector<uint8_t> v{4};
  std::vector<uint8_t> out(1);
  CHECK_THROWS_AS(qcnn::pack_bits(v.data(), 1, 2, out.data()), std::invalid_argument);
  CHECK_THROWS_AS(qcnn::packed_size(4, 0), std::invalid_argument);
  CHECK_THROWS_AS(qcnn::packed_size(4, 17), std::invalid_argument);
  CHECK_THROWS_AS(qcnn::pack_bits(v.data(), 1, 9, out.data()), std::invalid_argument);  // 8-bit values: <= 8 bits
  const std::vector<uint16_t> wide{1u << 12};
  std::vector<uint8_t> out2(2);
  CHECK_THROWS_AS(qcnn::pack_bits(wide.data(), 1, 12, out2.data()), std::invalid_argument);
}

// Wide indices (fixed-point weights of 9 to 16 bits): the same stream, a value spans up to 3 bytes.
TEST_CASE("pack_bits/unpack_bits of 16-bit values up to 16 bits", "[bitpack]") {
  std::mt19937 rng(4321);
  for (int bits = 1; bits <= 16; ++bits)
    for (int64_t count : {0, 1, 7, 9, 100, 1001}) {
      std::vector<uint16_t> v(static_cast<size_t>(count));
      for (auto& x : v) x = static_cast<uint16_t>(rng() % (1u << bits));
      std::vector<uint8_t> packed(static_cast<size_t>(qcnn::packed_size(count, bits)), 0xAB);
      qcnn::pack_bits(v.data(), count, bits, packed.data());
      for (int64_t i = 0; i < count; ++i)
        for (int b = 0; b < bits; ++b) {
          const int64_t j = i * bits + b;
          REQUIRE(((packed[j / 8] >> (j % 8)) & 1) == ((v[i] >> b) & 1));
        }
      std::vector<uint16_t> back(static_cast<size_t>(count));
      qcnn::unpack_bits(packed.data(), count, bits, back.data());
      REQUIRE(back == v);
      if (bits <= 8) {  // the two widths agree on the stream
        std::vector<uint8_t> narrow(v.begin(), v.end()), p8(packed.size());
        qcnn::pack_bits(narrow.data(), count, bits, p8.data());
        REQUIRE(p8 == packed);
      }
    }
}

TEST_CASE("huffman round trip and near-entropy size", "[huffman]") {
  std::mt19937 rng(99);
  for (int k : {1, 2, 5, 16, 256}) {
    std::geometric_distribution<int> geo(0.3);
    const int64_t n = 20000;
    std::vector<uint8_t> v(n);
    std::vector<int64_t> counts(k, 0);
    for (auto& x : v) {
      x = static_cast<uint8_t>(std::min(geo(rng), k - 1));
      counts[x]++;
    }
    auto lengths = qcnn::huffman_code_lengths(counts.data(), k, 15);
    auto enc = qcnn::huffman_encode(v.data(), n, lengths.data(), k);
    std::vector<uint8_t> dec(n);
    qcnn::huffman_decode(enc.data(), static_cast<int64_t>(enc.size()), lengths.data(), k, n, dec.data());
    REQUIRE(dec == v);
    double entropy_bits = 0;
    for (auto c : counts)
      if (c) entropy_bits -= c * std::log2(double(c) / n);
    // Huffman is within one bit per symbol of the entropy (and >= 1 bit per symbol).
    CHECK(enc.size() * 8.0 <= entropy_bits + n + 8);
    CHECK(enc.size() * 8.0 >= entropy_bits - 8);
  }
}

TEST_CASE("huffman length limit holds on skewed counts", "[huffman]") {
  std::vector<int64_t> counts(40);
  int64_t c = 1;
  for (auto& x : counts) { x = c; c = c * 2; if (c > (int64_t{1} << 50)) c = 1; }
  auto lengths = qcnn::huffman_code_lengths(counts.data(), 40, 12);
  for (auto l : lengths) CHECK((l >= 1 && l <= 12));
  CHECK_NOTHROW(qcnn::huffman_check_lengths(lengths.data(), 40));
}

TEST_CASE("huffman decode rejects truncated streams and bad tables", "[huffman]") {
  std::vector<int64_t> counts{10, 5, 1, 1};
  auto lengths = qcnn::huffman_code_lengths(counts.data(), 4, 15);
  std::vector<uint8_t> v(1000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<uint8_t>(i % 4);
  auto enc = qcnn::huffman_encode(v.data(), 1000, lengths.data(), 4);
  std::vector<uint8_t> dec(1000);
  CHECK_THROWS_WITH(qcnn::huffman_decode(enc.data(), static_cast<int64_t>(enc.size()) - 3, lengths.data(), 4, 1000, dec.data()),
                    Catch::Contains("truncated"));
  std::vector<uint8_t> bad{1, 1, 1, 1};  // Kraft sum 2 > 1
  CHECK_THROWS_WITH(qcnn::huffman_decode(enc.data(), 4, bad.data(), 4, 10, dec.data()), Catch::Contains("over-subscribed"));
  std::vector<uint8_t> incomplete{2, 0, 0, 0};  // only code 00 exists: 1x bits are invalid
  std::vector<uint8_t> ones{0xFF};
  CHECK_THROWS_WITH(qcnn::huffman_decode(ones.data(), 1, incomplete.data(), 4, 1, dec.data()), Catch::Contains("invalid code"));
}
