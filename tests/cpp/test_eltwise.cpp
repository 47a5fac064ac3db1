// The vector paths of the elementwise kernels (requantize, add, mul, clamp, lookup, affine) against the scalar
// loops, bit for bit: every storage combination with nonzero offsets, extreme multipliers and shifts, ties,
// clamps, counts 0..70 and 100003, broadcast gates and sub-ranges at unaligned starts. The whole output buffer,
// guard elements past the end included, must match.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <random>
#include <string>
#include <vector>

#include "core/isa.h"
#include "core/requant.h"

using namespace qcnn;

namespace {

constexpr Isa kVectorIsas[] = {Isa::Avx2, Isa::Avx512Vnni};
constexpr int64_t kGuard = 19;  // elements after the last code, which no kernel may touch

// A code buffer of `size` elements plus guards.
struct Buffer {
  Storage storage = Storage::U8;
  int32_t offset = 0;
  std::vector<uint8_t> bytes;

  Buffer(Storage s, int32_t o, int64_t size) : storage(s), offset(o), bytes(static_cast<size_t>((size + kGuard) * width())) {}
  int64_t width() const { return storage == Storage::U8 ? 1 : 4; }
  int64_t size() const { return static_cast<int64_t>(bytes.size()) / width() - kGuard; }
  void set(int64_t i, int64_t stored) {
    if (storage == Storage::U8) {
      bytes[static_cast<size_t>(i)] = static_cast<uint8_t>(stored);
    } else {
      const int32_t v = static_cast<int32_t>(stored);
      std::memcpy(&bytes[static_cast<size_t>(4 * i)], &v, 4);
    }
  }
  CodesIn in(int64_t start = 0) const { return {bytes.data() + start * width(), storage, offset}; }
  CodesOut out(int64_t start = 0) { return {bytes.data() + start * width(), storage, offset}; }
};

struct Random {
  std::mt19937_64 rng{20240611};
  int64_t between(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }
  bool chance(int percent) { return between(0, 99) < percent; }
  Storage storage() { return chance(50) ? Storage::U8 : Storage::I32; }
  // Multipliers that make ties and extremes common.
  int32_t multiplier(int64_t limit) {
    switch (between(0, 4)) {
      case 0: return static_cast<int32_t>(between(-8, 8));
      case 1: return static_cast<int32_t>((chance(50) ? -1 : 1) * (int64_t{1} << between(0, 62)) % limit);
      case 2: return static_cast<int32_t>(chance(50) ? limit - 1 : 1 - limit);
      default: return static_cast<int32_t>(between(1 - limit, limit - 1));
    }
  }
  int shift() {
    static const int common[] = {0, 1, 2, 7, 15, 16, 30, 31, 32, 33, 47, 62, 63};
    return chance(60) ? common[between(0, 12)] : static_cast<int>(between(0, 63));
  }
};

// Random stored values (every byte for U8; for I32 within [lo, hi], or anything).
void fill_random(Buffer& b, Random& r, int64_t lo = INT32_MIN, int64_t hi = INT32_MAX) {
  for (int64_t i = 0; i < b.size() + kGuard; ++i)
    b.set(i, b.storage == Storage::U8 ? r.between(0, 255) : r.between(lo, hi));
}

Buffer output_like(Storage s, int32_t offset, int64_t size, Random& r) {
  Buffer b(s, offset, size);
  fill_random(b, r);
  return b;
}

std::vector<int64_t> counts() {
  std::vector<int64_t> c;
  for (int64_t n = 0; n <= 70; ++n) c.push_back(n);
  c.push_back(100003);
  return c;
}

int32_t random_offset(Random& r) {
  if (r.chance(10)) return r.chance(50) ? INT32_MIN : INT32_MAX;
  return static_cast<int32_t>(r.chance(50) ? r.between(-300, 300) : r.between(INT32_MIN, INT32_MAX));
}

// lo <= hi, mostly a narrow band (clamping often), sometimes anything.
void random_bounds(Random& r, int32_t out_offset, Storage out, int32_t& lo, int32_t& hi) {
  if (r.chance(70)) {
    const int64_t base = out == Storage::U8 ? int64_t{out_offset} : r.between(-1000, 1000);
    lo = static_cast<int32_t>(std::clamp<int64_t>(base + r.between(-20, 40), INT32_MIN, INT32_MAX));
    hi = static_cast<int32_t>(std::clamp<int64_t>(int64_t{lo} + r.between(0, 255), INT32_MIN, INT32_MAX));
  } else {
    lo = static_cast<int32_t>(r.between(INT32_MIN, 0));
    hi = static_cast<int32_t>(r.between(0, INT32_MAX));
    if (r.chance(20)) lo = INT32_MIN, hi = INT32_MAX;
  }
}

bool skip(Isa isa) {
  if (isa_supported(isa)) return false;
  WARN("skipping the " << isa_name(isa) << " path: this CPU lacks it");
  return true;
}

std::string describe(const Buffer& in, const Buffer& out, int64_t count, int64_t start) {
  return "in " + std::string(in.storage == Storage::U8 ? "u8" : "i32") + " offset " + std::to_string(in.offset) +
         ", out " + (out.storage == Storage::U8 ? "u8" : "i32") + " offset " + std::to_string(out.offset) +
         ", count " + std::to_string(count) + ", start " + std::to_string(start);
}

}  // namespace

TEST_CASE("requantize_codes: vector paths equal the scalar loop", "[eltwise]") {
  Random r;
  for (Isa isa : kVectorIsas) {
    if (skip(isa)) continue;
    for (int64_t count : counts())
      for (int combo = 0; combo < 4; ++combo) {
        Buffer in(combo & 1 ? Storage::I32 : Storage::U8, random_offset(r), count);
        fill_random(in, r, r.chance(50) ? INT32_MIN : -5000, r.chance(50) ? INT32_MAX : 5000);
        const Storage out_storage = combo & 2 ? Storage::I32 : Storage::U8;
        const int32_t out_offset = random_offset(r);
        const int32_t zi = r.chance(50) ? static_cast<int32_t>(int64_t{in.offset} + r.between(-300, 300) / 2 * 2)
                                        : static_cast<int32_t>(r.between(INT32_MIN, INT32_MAX));
        const int32_t multiplier = r.multiplier(int64_t{1} << 31);
        const int shift = r.shift();
        const int32_t zo = static_cast<int32_t>(r.between(-500, 500));
        int32_t lo, hi;
        random_bounds(r, out_offset, out_storage, lo, hi);
        const int64_t start = count > 20 ? r.between(0, 17) : 0;
        Buffer expected = output_like(out_storage, out_offset, count, r), actual = expected;
        requantize_codes(Isa::Scalar, in.in(start), count - start, zi, multiplier, shift, zo, lo, hi,
                         expected.out(start));
        requantize_codes(isa, in.in(start), count - start, zi, multiplier, shift, zo, lo, hi, actual.out(start));
        INFO(isa_name(isa) << ": " << describe(in, expected, count, start) << ", zi " << zi << ", multiplier "
                           << multiplier << ", shift " << shift << ", zo " << zo << ", [" << lo << ", " << hi << "]");
        REQUIRE(actual.bytes == expected.bytes);
      }
  }
}

TEST_CASE("requantize_codes: uint8 to uint8 at the sizes of the byte-table path", "[eltwise]") {
  Random r;
  for (Isa isa : kVectorIsas) {
    if (skip(isa)) continue;
    for (int trial = 0; trial < 60; ++trial) {
      const int64_t count = r.between(4090, 9000);
      Buffer in(Storage::U8, random_offset(r), count);
      fill_random(in, r);
      const int32_t out_offset = random_offset(r);
      const int32_t zi = static_cast<int32_t>(r.chance(70) ? std::clamp<int64_t>(int64_t{in.offset} + r.between(-50, 300), INT32_MIN, INT32_MAX)
                                                           : r.between(INT32_MIN, INT32_MAX));
      const int32_t multiplier = r.multiplier(int64_t{1} << 31);
      const int shift = r.shift();
      const int32_t zo = static_cast<int32_t>(r.between(-500, 500));
      int32_t lo, hi;
      random_bounds(r, out_offset, Storage::U8, lo, hi);
      Buffer expected = output_like(Storage::U8, out_offset, count, r), actual = expected;
      requantize_codes(Isa::Scalar, in.in(), count, zi, multiplier, shift, zo, lo, hi, expected.out());
      requantize_codes(isa, in.in(), count, zi, multiplier, shift, zo, lo, hi, actual.out());
      INFO(isa_name(isa) << ": " << describe(in, expected, count, 0) << ", zi " << zi << ", multiplier " << multiplier
                         << ", shift " << shift);
      REQUIRE(actual.bytes == expected.bytes);
    }
  }
}

TEST_CASE("add_codes: vector paths equal the scalar loop", "[eltwise]") {
  Random r;
  for (Isa isa : kVectorIsas) {
    if (skip(isa)) continue;
    for (int64_t count : counts())
      for (int combo = 0; combo < 8; ++combo) {
        Buffer a(combo & 1 ? Storage::I32 : Storage::U8, random_offset(r), count);
        Buffer b(combo & 4 ? Storage::I32 : Storage::U8, random_offset(r), count);
        fill_random(a, r);
        fill_random(b, r, -3000, 3000);
        const Storage out_storage = combo & 2 ? Storage::I32 : Storage::U8;
        const int32_t out_offset = random_offset(r);
        const int32_t za = static_cast<int32_t>(r.chance(50) ? int64_t{a.offset} + r.between(-100, 300)
                                                              : r.between(INT32_MIN, INT32_MAX));
        const int32_t zb = static_cast<int32_t>(r.chance(50) ? int64_t{b.offset} + r.between(-100, 300)
                                                              : r.between(INT32_MIN, INT32_MAX));
        const int32_t ma = r.multiplier(int64_t{1} << 30), mb = r.multiplier(int64_t{1} << 30);
        const int shift = r.shift();
        const int32_t zo = static_cast<int32_t>(r.between(-500, 500));
        int32_t lo, hi;
        random_bounds(r, out_offset, out_storage, lo, hi);
        const int64_t start = count > 20 ? r.between(0, 17) : 0;
        Buffer expected = output_like(out_storage, out_offset, count, r), actual = expected;
        add_codes(Isa::Scalar, a.in(start), za, ma, b.in(start), zb, mb, shift, zo, lo, hi, count - start,
                  expected.out(start));
        add_codes(isa, a.in(start), za, ma, b.in(start), zb, mb, shift, zo, lo, hi, count - start, actual.out(start));
        INFO(isa_name(isa) << ": " << describe(a, expected, count, start) << ", b offset " << b.offset << ", za " << za
                           << ", zb " << zb << ", ma " << ma << ", mb " << mb << ", shift " << shift);
        REQUIRE(actual.bytes == expected.bytes);
      }
  }
}

TEST_CASE("mul_codes: vector paths equal the scalar loop, elementwise and broadcast", "[eltwise]") {
  Random r;
  // Stored values whose codes lie within 2^15 of the zero point (the caller's bound), the extremes included.
  auto factor = [&](Buffer& x, int32_t& zero_point) {
    x.offset = random_offset(r);
    const int64_t limit = 32768;
    if (x.storage == Storage::U8) {
      // Codes x.offset + [0, 255]; the zero point up to 2^15 from the farthest of them.
      int64_t z = int64_t{x.offset} + (r.chance(20) ? (r.chance(50) ? limit : 255 - limit) : r.between(-100, 300));
      z = std::clamp<int64_t>(z, INT32_MIN, INT32_MAX);
      if (z - x.offset > limit || int64_t{x.offset} + 255 - z > limit) z = std::min<int64_t>(int64_t{x.offset} + 128, INT32_MAX);
      zero_point = static_cast<int32_t>(z);
      fill_random(x, r);
    } else {
      // Codes zero_point + [-2^15, 2^15], stored without wrapping.
      zero_point = static_cast<int32_t>(std::clamp<int64_t>(int64_t{x.offset} + r.between(-100000, 100000),
                                                            INT32_MIN + limit, INT32_MAX - limit));
      for (int64_t i = 0; i < x.size() + kGuard; ++i) {
        const int64_t d = r.chance(5) ? (r.chance(50) ? limit : -limit) : r.between(-limit, limit);
        x.set(i, int64_t{zero_point} + d - x.offset);
      }
    }
  };
  for (Isa isa : kVectorIsas) {
    if (skip(isa)) continue;
    for (int64_t count : counts())
      for (int combo = 0; combo < 8; ++combo) {
        const bool broadcast = combo & 1 ? r.chance(80) : r.chance(20);
        int64_t channels = 0;
        if (broadcast) channels = count > 1000 ? (r.chance(50) ? 96 : r.between(1, 300)) : r.between(1, 40);
        Buffer a(combo & 1 ? Storage::I32 : Storage::U8, 0, count);
        Buffer b(combo & 4 ? Storage::I32 : Storage::U8, 0, broadcast ? channels : count);
        int32_t za, zb;
        factor(a, za);
        factor(b, zb);
        const Storage out_storage = combo & 2 ? Storage::I32 : Storage::U8;
        const int32_t out_offset = random_offset(r);
        const int32_t multiplier = r.multiplier(int64_t{1} << 31);
        const int shift = r.shift();
        const int32_t zo = static_cast<int32_t>(r.between(-500, 500));
        int32_t lo, hi;
        random_bounds(r, out_offset, out_storage, lo, hi);
        // Sub-ranges start at a position (broadcast) or anywhere (elementwise, b advanced alike).
        int64_t start = 0;
        if (count > 20) start = broadcast ? channels * r.between(0, std::min<int64_t>(3, count / channels)) : r.between(0, 17);
        const CodesIn b_from = broadcast ? b.in() : b.in(start);
        Buffer expected = output_like(out_storage, out_offset, count, r), actual = expected;
        mul_codes(Isa::Scalar, a.in(start), za, b_from, zb, channels, multiplier, shift, zo, lo, hi, count - start,
                  expected.out(start));
        mul_codes(isa, a.in(start), za, b_from, zb, channels, multiplier, shift, zo, lo, hi, count - start,
                  actual.out(start));
        INFO(isa_name(isa) << ": " << describe(a, expected, count, start) << ", b channels " << channels
                           << ", multiplier " << multiplier << ", shift " << shift);
        REQUIRE(actual.bytes == expected.bytes);
      }
  }
}

TEST_CASE("clamp_codes: vector paths equal the scalar loop", "[eltwise]") {
  Random r;
  for (Isa isa : kVectorIsas) {
    if (skip(isa)) continue;
    for (int64_t count : counts())
      for (int combo = 0; combo < 4; ++combo) {
        Buffer in(combo & 1 ? Storage::I32 : Storage::U8, random_offset(r), count);
        fill_random(in, r);
        const Storage out_storage = combo & 2 ? Storage::I32 : Storage::U8;
        const int32_t out_offset = r.chance(50) ? in.offset : random_offset(r);
        int32_t lo, hi;
        if (r.chance(50)) {
          lo = static_cast<int32_t>(std::clamp<int64_t>(int64_t{in.offset} + r.between(-50, 200), INT32_MIN, INT32_MAX));
          hi = static_cast<int32_t>(std::clamp<int64_t>(int64_t{lo} + r.between(0, 200), INT32_MIN, INT32_MAX));
        } else {
          random_bounds(r, out_offset, out_storage, lo, hi);
        }
        const int64_t start = count > 20 ? r.between(0, 17) : 0;
        Buffer expected = output_like(out_storage, out_offset, count, r), actual = expected;
        clamp_codes(Isa::Scalar, in.in(start), count - start, lo, hi, expected.out(start));
        clamp_codes(isa, in.in(start), count - start, lo, hi, actual.out(start));
        INFO(isa_name(isa) << ": " << describe(in, expected, count, start) << ", [" << lo << ", " << hi << "]");
        REQUIRE(actual.bytes == expected.bytes);
      }
  }
}

TEST_CASE("lookup_codes: vector paths equal the scalar loop", "[eltwise]") {
  Random r;
  for (Isa isa : kVectorIsas) {
    if (skip(isa)) continue;
    for (int64_t count : counts())
      for (int combo = 0; combo < 4; ++combo) {
        Buffer in(combo & 1 ? Storage::I32 : Storage::U8, random_offset(r), count);
        // The stored values span [first, last]: a few bytes, all 256, or up to 65536 int32 codes; the table
        // covers exactly the codes [input_min, input_min + size), so a read outside it would show under ASan.
        const int64_t span = in.storage == Storage::U8 ? (r.chance(50) ? r.between(1, 256) : 256) : r.between(1, 65536);
        const int64_t first = in.storage == Storage::U8 ? r.between(0, 256 - span) : r.between(-70000, 70000);
        const int64_t slack = r.between(0, 3);
        const int64_t input_min = int64_t{in.offset} + first - slack;
        std::vector<int32_t> table(static_cast<size_t>(span + slack));
        for (auto& t : table) t = static_cast<int32_t>(r.chance(90) ? r.between(-1000, 1000) : r.between(INT32_MIN, INT32_MAX));
        for (int64_t i = 0; i < count + kGuard; ++i) in.set(i, first + r.between(0, span - 1));
        const Storage out_storage = combo & 2 ? Storage::I32 : Storage::U8;
        const int64_t start = count > 20 ? r.between(0, 17) : 0;
        Buffer expected = output_like(out_storage, random_offset(r), count, r), actual = expected;
        lookup_codes(Isa::Scalar, in.in(start), count - start, table.data(), input_min, expected.out(start));
        lookup_codes(isa, in.in(start), count - start, table.data(), input_min, actual.out(start));
        INFO(isa_name(isa) << ": " << describe(in, expected, count, start) << ", span " << span);
        REQUIRE(actual.bytes == expected.bytes);
      }
  }
}

TEST_CASE("lookup_codes: the uint8 table grows with the bytes met in later chunks", "[eltwise]") {
  // A table covering only the codes present, whose range widens along the tensor.
  for (Isa isa : kVectorIsas) {
    if (skip(isa)) continue;
    const int64_t count = 50000;
    Buffer in(Storage::U8, 7, count), expected(Storage::U8, -3, count);
    for (int64_t i = 0; i < count + kGuard; ++i) in.set(i, 120 + (i * 7919 % 17) - std::min<int64_t>(i / 400, 100));
    std::vector<int32_t> table(117);  // input codes [27, 143]
    for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i * i % 1000) - 300;
    const int64_t input_min = 7 + 20;
    Buffer actual = expected;
    lookup_codes(Isa::Scalar, in.in(), count, table.data(), input_min, expected.out());
    lookup_codes(isa, in.in(), count, table.data(), input_min, actual.out());
    REQUIRE(actual.bytes == expected.bytes);
  }
}

TEST_CASE("affine_codes: vector paths equal the scalar loop", "[eltwise]") {
  Random r;
  for (Isa isa : kVectorIsas) {
    if (skip(isa)) continue;
    for (int64_t channels = 1; channels <= 70; ++channels)
      for (int combo = 0; combo < 4; ++combo) {
        const int64_t positions = channels == 70 ? 1431 : r.between(0, 5), count = positions * channels;
        Buffer in(combo & 1 ? Storage::I32 : Storage::U8, random_offset(r), count);
        fill_random(in, r);
        const Storage out_storage = combo & 2 ? Storage::I32 : Storage::U8;
        const int32_t out_offset = random_offset(r);
        const int32_t zi = static_cast<int32_t>(r.chance(50) ? int64_t{in.offset} + r.between(-100, 300)
                                                             : r.between(INT32_MIN, INT32_MAX));
        std::vector<int32_t> multiplier(static_cast<size_t>(channels));
        std::vector<uint8_t> shift(static_cast<size_t>(channels));
        std::vector<int64_t> bias(static_cast<size_t>(channels));
        for (int64_t ch = 0; ch < channels; ++ch) {
          multiplier[ch] = r.multiplier(int64_t{1} << 31);
          shift[ch] = static_cast<uint8_t>(r.shift());
          const int64_t limit = int64_t{1} << 61;
          bias[ch] = r.chance(20) ? (r.chance(50) ? limit : -limit) : r.between(-(int64_t{1} << r.between(0, 61)), int64_t{1} << 40);
          // Keeps v + half inside int64 for the largest shifts (the scalar loop's overflow is undefined).
          if (shift[ch] >= 61) bias[ch] = -std::abs(bias[ch] >> 20);
        }
        const int32_t zo = static_cast<int32_t>(r.between(-500, 500));
        int32_t lo, hi;
        random_bounds(r, out_offset, out_storage, lo, hi);
        const int64_t start = positions > 1 ? channels * r.between(0, 1) : 0;
        Buffer expected = output_like(out_storage, out_offset, count, r), actual = expected;
        affine_codes(Isa::Scalar, in.in(start), count - start, channels, zi, multiplier.data(), shift.data(),
                     bias.data(), zo, lo, hi, expected.out(start));
        affine_codes(isa, in.in(start), count - start, channels, zi, multiplier.data(), shift.data(), bias.data(), zo,
                     lo, hi, actual.out(start));
        INFO(isa_name(isa) << ": " << describe(in, expected, count, start) << ", channels " << channels);
        REQUIRE(actual.bytes == expected.bytes);
      }
  }
}

TEST_CASE("vector paths fall back to the scalar loop outside their cases", "[eltwise]") {
  Random r;
  for (Isa isa : kVectorIsas) {
    if (skip(isa)) continue;
    const int64_t count = 37;
    Buffer in(Storage::I32, INT32_MAX, count);
    fill_random(in, r);
    // in.offset - zi beyond int32, lo > hi: the scalar loop's results, whatever they are.
    for (int32_t zi : {INT32_MIN, 0}) {
      Buffer expected = output_like(Storage::U8, 0, count, r), actual = expected;
      requantize_codes(Isa::Scalar, in.in(), count, zi, 3, 1, 0, 0, 255, expected.out());
      requantize_codes(isa, in.in(), count, zi, 3, 1, 0, 0, 255, actual.out());
      REQUIRE(actual.bytes == expected.bytes);
    }
    Buffer expected = output_like(Storage::I32, 0, count, r), actual = expected;
    clamp_codes(Isa::Scalar, in.in(), count, INT32_MIN, INT32_MIN + 5, expected.out());
    clamp_codes(isa, in.in(), count, INT32_MIN, INT32_MIN + 5, actual.out());
    REQUIRE(actual.bytes == expected.bytes);
    CHECK_THROWS_AS(affine_codes(isa, in.in(), count, 5, 0, nullptr, nullptr, nullptr, 0, 0, 255, actual.out()),
                    std::invalid_argument);
  }
}
