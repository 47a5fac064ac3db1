// The vector paths of the elementwise kernels (requantize, add, mul, clamp, lookup, affine) against the scalar
// loops, bit for bit: every storage combination with nonzero offsets, extreme multipliers and shifts, ties,
// clamps, counts 0..70 and 100003, broadcast gates and sub-ranges at unaligned starts. The whole output buffer,
// guard elements past the end included, must match. affine_codes also against an exact __int128 reference at the
// extremes of its parameters and codes.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/eltwise_kernels.h"
#include "core/isa.h"
#include "core/requant.h"

using namespace qcnn;

namespace {

constexpr Isa kVectorIsas[] = {Isa::Avx2, Isa::Avx512Vnni, Isa::Neon};  // the NEON table serves every aarch64 path
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
  int64_t stored(int64_t i) const {
    if (storage == Storage::U8) return bytes[static_cast<size_t>(i)];
    int32_t v;
    std::memcpy(&v, &bytes[static_cast<size_t>(4 * i)], 4);
    return v;
  }
  // The range of clamp32(code - zero_point) over elements [start, start + count).
  InputRange centred_range(int64_t start, int64_t count, int32_t zero_point) const {
    InputRange r{INT64_MAX, INT64_MIN};
    for (int64_t i = start; i < start + count; ++i) {
      const int64_t v = clamp_to_int32(stored(i) + offset - zero_point);
      r.lo = std::min(r.lo, v);
      r.hi = std::max(r.hi, v);
    }
    return count > 0 ? r : InputRange{0, 0};
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

// The output side of a requantizing case: its shift, output zero point and clamp bounds.
struct Requantization {
  int shift;
  int32_t zo, lo, hi;
};
Requantization random_requantization(Random& r, int32_t out_offset, Storage out) {
  Requantization q;
  q.shift = r.shift();
  q.zo = static_cast<int32_t>(r.between(-500, 500));
  random_bounds(r, out_offset, out, q.lo, q.hi);
  return q;
}

// Runs op(isa, out) on Isa::Scalar and on every vector ISA this CPU has, each into its own copy of `out` (guard
// elements included), and requires every vector copy to equal the scalar one bit for bit; `what` describes the
// case. Returns the scalar result.
template <typename Op>
Buffer require_isas_agree(const Buffer& out, const std::string& what, Op&& op) {
  Buffer expected = out;
  op(Isa::Scalar, expected);
  for (Isa isa : kVectorIsas) {
    if (!isa_supported(isa)) continue;
    Buffer actual = out;
    op(isa, actual);
    INFO(isa_name(isa) << ": " << what);
    REQUIRE(actual.bytes == expected.bytes);
  }
  return expected;
}

// The parts streamed into one string.
template <typename... Parts>
std::string text(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  return s.str();
}

std::string describe(const Buffer& in, const Buffer& out, int64_t count, int64_t start) {
  return "in " + std::string(in.storage == Storage::U8 ? "u8" : "i32") + " offset " + std::to_string(in.offset) +
         ", out " + (out.storage == Storage::U8 ? "u8" : "i32") + " offset " + std::to_string(out.offset) +
         ", count " + std::to_string(count) + ", start " + std::to_string(start);
}

}  // namespace

TEST_CASE("elementwise kernels: the vector paths under test", "[eltwise]") {
  for (Isa isa : kVectorIsas)
    if (!isa_supported(isa)) WARN("skipping the " << isa_name(isa) << " path: this CPU lacks it");
}

// Every case below runs on the scalar path and on each vector ISA (require_isas_agree).

TEST_CASE("requantize_codes: vector paths equal the scalar loop", "[eltwise]") {
  Random r;
  for (int64_t count : counts())
    for (int combo = 0; combo < 4; ++combo) {
      Buffer in(combo & 1 ? Storage::I32 : Storage::U8, random_offset(r), count);
      fill_random(in, r, r.chance(50) ? INT32_MIN : -5000, r.chance(50) ? INT32_MAX : 5000);
      const Storage out_storage = combo & 2 ? Storage::I32 : Storage::U8;
      const int32_t out_offset = random_offset(r);
      const int32_t zi = r.chance(50) ? static_cast<int32_t>(int64_t{in.offset} + r.between(-300, 300) / 2 * 2)
                                      : static_cast<int32_t>(r.between(INT32_MIN, INT32_MAX));
      const int32_t multiplier = r.multiplier(int64_t{1} << 31);
      const Requantization q = random_requantization(r, out_offset, out_storage);
      const int64_t start = count > 20 ? r.between(0, 17) : 0;
      const Buffer out = output_like(out_storage, out_offset, count, r);
      require_isas_agree(out,
                         describe(in, out, count, start) + text(", zi ", zi, ", multiplier ", multiplier, ", shift ",
                                                                q.shift, ", zo ", q.zo, ", [", q.lo, ", ", q.hi, "]"),
                         [&](Isa isa, Buffer& o) {
                           requantize_codes(isa, in.in(start), count - start, zi, multiplier, q.shift, q.zo, q.lo,
                                            q.hi, o.out(start));
                         });
    }
}

TEST_CASE("requantize_codes: uint8 to uint8 at the sizes of the byte-table path", "[eltwise]") {
  Random r;
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t count = r.between(4090, 9000);
    Buffer in(Storage::U8, random_offset(r), count);
    fill_random(in, r);
    const int32_t out_offset = random_offset(r);
    const int32_t zi = static_cast<int32_t>(r.chance(70) ? std::clamp<int64_t>(int64_t{in.offset} + r.between(-50, 300), INT32_MIN, INT32_MAX)
                                                         : r.between(INT32_MIN, INT32_MAX));
    const int32_t multiplier = r.multiplier(int64_t{1} << 31);
    const Requantization q = random_requantization(r, out_offset, Storage::U8);
    const Buffer out = output_like(Storage::U8, out_offset, count, r);
    require_isas_agree(out,
                       describe(in, out, count, 0) +
                           text(", zi ", zi, ", multiplier ", multiplier, ", shift ", q.shift),
                       [&](Isa isa, Buffer& o) {
                         requantize_codes(isa, in.in(), count, zi, multiplier, q.shift, q.zo, q.lo, q.hi, o.out());
                       });
  }
}

// tie_free_requant against brute force over small input ranges: where it claims no ties, clamping x into
// [x_lo, x_hi] leaves every output as it was and the plain rounding (x * m + half) >> shift equals RS there.
TEST_CASE("tie_free_requant: its clamp and its rounding are exact on every input of the range", "[eltwise]") {
  Random r;
  int claimed = 0, refused = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const int32_t multiplier = r.multiplier(int64_t{1} << 31);
    const int shift = static_cast<int>(r.between(0, 62));
    const int32_t zo = static_cast<int32_t>(r.between(-300, 300));
    const int32_t out_offset = static_cast<int32_t>(r.between(-300, 300));
    const int32_t lo = static_cast<int32_t>(r.between(-300, 100)), hi = static_cast<int32_t>(lo + r.between(0, 300));
    const int64_t x_lo = r.chance(20) ? INT32_MIN : r.between(INT32_MIN, INT32_MAX - 3000);
    const int64_t bias = r.chance(30) ? 0 : r.chance(50) ? r.between(-1000, 1000) : r.between(-(int64_t{1} << 61), int64_t{1} << 61);
    const InputRange x{x_lo, x_lo + r.between(0, 3000)};
    TieFreeRequant t;
    if (!tie_free_requant(x, multiplier, bias, shift, zo, lo, hi, out_offset, &t)) {
      ++refused;
      continue;
    }
    ++claimed;
    INFO("multiplier " << multiplier << ", bias " << bias << ", shift " << shift << ", x [" << x.lo << ", " << x.hi
                       << "]");
    REQUIRE(t.x_lo >= x.lo);
    REQUIRE(t.x_hi <= x.hi);
    REQUIRE(t.x_lo <= t.x_hi);
    auto code = [&](int64_t v) {
      const __int128 sum = static_cast<__int128>(v) * multiplier + bias;
      return static_cast<int64_t>(std::clamp<__int128>(zo + rounding_shift(sum, shift), lo, hi));
    };
    for (int64_t v = x.lo; v <= x.hi; ++v) {
      const int64_t c = std::clamp<int64_t>(v, t.x_lo, t.x_hi);
      const __int128 product = static_cast<__int128>(c) * multiplier;
      const __int128 plain = (product + t.bias_half) >> shift;  // the vector paths' int64 steps, checked to fit
      REQUIRE(product + t.bias_half >= INT64_MIN);
      REQUIRE(product + t.bias_half <= INT64_MAX);
      REQUIRE(plain == rounding_shift(product + bias, shift));
      REQUIRE(std::clamp<__int128>(plain + t.out_add, t.out_lo, t.out_hi) == code(v) - out_offset);
    }
  }
  REQUIRE(claimed > 100);
  REQUIRE(refused > 300);
}

// The wide-to-uint8 requantization of a residual sum (int32 codes, shifts in the 40s): the vector paths take the
// tie-free kernel there (checked above), and must still equal the scalar loop on every storage and offset.
TEST_CASE("requantize_codes: wide inputs to uint8 at large shifts", "[eltwise]") {
  Random r;
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t count = r.between(1, 5000);
    Buffer in(Storage::I32, r.chance(70) ? 0 : random_offset(r), count);
    const int shift = static_cast<int>(r.between(32, 62));
    const int32_t multiplier = static_cast<int32_t>(r.between(int64_t{1} << 29, (int64_t{1} << 31) - 1));
    // Inputs around the band that maps onto [0, 255] (x * m / 2^s up to ~300), and some anywhere.
    const int64_t band = std::min<int64_t>(INT32_MAX, (int64_t{300} << std::min(shift, 62)) / multiplier + 1);
    fill_random(in, r, -band, band);
    for (int64_t i = 0; i < count; i += 7) in.set(i, r.between(INT32_MIN, INT32_MAX));
    const int32_t zi = r.chance(70) ? 0 : static_cast<int32_t>(r.between(-1000, 1000));
    const int32_t out_offset = r.chance(70) ? 0 : static_cast<int32_t>(r.between(-128, 0));
    const Buffer out = output_like(Storage::U8, out_offset, count, r);
    require_isas_agree(out, text("count ", count, ", multiplier ", multiplier, ", shift ", shift, ", zi ", zi),
                       [&](Isa isa, Buffer& o) {
                         requantize_codes(isa, in.in(), count, zi, multiplier, shift, 0, out_offset,
                                          out_offset + 255, o.out());
                       });
  }
}

TEST_CASE("add_codes: vector paths equal the scalar loop", "[eltwise]") {
  Random r;
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
      const Requantization q = random_requantization(r, out_offset, out_storage);
      const int64_t start = count > 20 ? r.between(0, 17) : 0;
      const Buffer out = output_like(out_storage, out_offset, count, r);
      // The ranges of a - za and b - zb unknown, or those of the data (the int32 lanes where they fit).
      const bool known = r.chance(50);
      const InputRange ra = known ? a.centred_range(start, count - start, za) : InputRange{},
                       rb = known ? b.centred_range(start, count - start, zb) : InputRange{};
      require_isas_agree(out,
                         describe(a, out, count, start) + text(", b offset ", b.offset, ", za ", za, ", zb ", zb,
                                                               ", ma ", ma, ", mb ", mb, ", shift ", q.shift,
                                                               ", ranges known ", known),
                         [&](Isa isa, Buffer& o) {
                           add_codes(isa, a.in(start), za, ma, b.in(start), zb, mb, q.shift, q.zo, q.lo, q.hi,
                                     count - start, o.out(start), ra, rb);
                         });
    }
}

// Where the ranges of a - za and b - zb keep every step within int32 (a residual add of wide codes after the
// multipliers' common powers of two came off the shift), the vector paths run in int32 lanes: up to the bound of
// add_fits_int32, with the data at the ends of the ranges it declares.
TEST_CASE("add_codes: int32 lanes equal the scalar loop up to their bound", "[eltwise]") {
  Random r;
  int int32_lanes = 0;
  for (int64_t count : counts())
    for (int trial = 0; trial < 12; ++trial) {
      const int shift = static_cast<int>(r.between(0, 30));
      const int32_t ma = r.multiplier(int64_t{1} << r.between(1, 16)), mb = r.multiplier(int64_t{1} << r.between(1, 16));
      const int32_t zo = static_cast<int32_t>(r.between(-1000, 1000));
      // |da| and |db| as large as the bound allows (or twice that, past it)
      const int64_t room = ((int64_t{INT32_MAX} - (int64_t{1} << shift)) >> 1) * (r.chance(80) ? 1 : 2);
      const int64_t reach_a = room / std::max<int64_t>(1, std::abs(int64_t{ma})),
                    reach_b = room / std::max<int64_t>(1, std::abs(int64_t{mb}));
      Buffer a(r.storage(), 0, count), b(r.storage(), 0, count);
      const int32_t za = static_cast<int32_t>(r.between(-100, 100)), zb = static_cast<int32_t>(r.between(-100, 100));
      auto fill = [&](Buffer& x, int32_t z, int64_t reach) {
        const int64_t lo = x.storage == Storage::U8 ? 0 : std::max<int64_t>(INT32_MIN, z - reach);
        const int64_t hi = x.storage == Storage::U8 ? 255 : std::min<int64_t>(INT32_MAX, z + reach);
        for (int64_t i = 0; i < x.size(); ++i) x.set(i, r.chance(10) ? (r.chance(50) ? lo : hi) : r.between(lo, hi));
      };
      fill(a, za, reach_a);
      fill(b, zb, reach_b);
      const InputRange ra = a.centred_range(0, count, za), rb = b.centred_range(0, count, zb);
      int32_lanes += add_fits_int32(ra, ma, rb, mb, shift, zo);
      const Storage out_storage = r.storage();
      const int32_t lo = out_storage == Storage::U8 ? -128 : INT32_MIN, hi = out_storage == Storage::U8 ? 127 : INT32_MAX;
      const Buffer out = output_like(out_storage, out_storage == Storage::U8 ? -128 : 0, count, r);
      require_isas_agree(out, text("count ", count, ", ma ", ma, ", mb ", mb, ", shift ", shift, ", za ", za, ", zb ", zb,
                                   ", zo ", zo),
                         [&](Isa isa, Buffer& o) {
                           add_codes(isa, a.in(), za, ma, b.in(), zb, mb, shift, zo, lo, hi, count, o.out(), ra, rb);
                         });
    }
  CHECK(int32_lanes > 100);
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
      const Requantization q = random_requantization(r, out_offset, out_storage);
      // Sub-ranges start at a position (broadcast) or anywhere (elementwise, b advanced alike).
      int64_t start = 0;
      if (count > 20) start = broadcast ? channels * r.between(0, std::min<int64_t>(3, count / channels)) : r.between(0, 17);
      const CodesIn b_from = broadcast ? b.in() : b.in(start);
      const Buffer out = output_like(out_storage, out_offset, count, r);
      require_isas_agree(out,
                         describe(a, out, count, start) +
                             text(", b channels ", channels, ", multiplier ", multiplier, ", shift ", q.shift),
                         [&](Isa isa, Buffer& o) {
                           mul_codes(isa, a.in(start), za, b_from, zb, channels, multiplier, q.shift, q.zo, q.lo, q.hi,
                                     count - start, o.out(start));
                         });
    }
}

TEST_CASE("clamp_codes: vector paths equal the scalar loop", "[eltwise]") {
  Random r;
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
      const Buffer out = output_like(out_storage, out_offset, count, r);
      require_isas_agree(out, describe(in, out, count, start) + text(", [", lo, ", ", hi, "]"), [&](Isa isa, Buffer& o) {
        clamp_codes(isa, in.in(start), count - start, lo, hi, o.out(start));
      });
    }
}

TEST_CASE("lookup_codes: vector paths equal the scalar loop", "[eltwise]") {
  Random r;
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
      const Buffer out = output_like(out_storage, random_offset(r), count, r);
      require_isas_agree(out, describe(in, out, count, start) + text(", span ", span), [&](Isa isa, Buffer& o) {
        lookup_codes(isa, in.in(start), count - start, table.data(), static_cast<int64_t>(table.size()), input_min,
                     o.out(start));
      });
    }
}

TEST_CASE("lookup_codes: the uint8 table grows with the bytes met in later chunks", "[eltwise]") {
  // A table covering only the codes present, whose range widens along the tensor.
  const int64_t count = 50000;
  Buffer in(Storage::U8, 7, count);
  const Buffer out(Storage::U8, -3, count);
  for (int64_t i = 0; i < count + kGuard; ++i) in.set(i, 120 + (i * 7919 % 17) - std::min<int64_t>(i / 400, 100));
  std::vector<int32_t> table(117);  // input codes [27, 143]
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i * i % 1000) - 300;
  const int64_t input_min = 7 + 20;
  require_isas_agree(out, describe(in, out, count, 0), [&](Isa isa, Buffer& o) {
    lookup_codes(isa, in.in(), count, table.data(), static_cast<int64_t>(table.size()), input_min, o.out());
  });
}

// Codes outside the table read its first or last entry: any stored value, the int32 extremes and offsets that put
// the table's ends beyond int32 included, against the clamp written out.
TEST_CASE("lookup_codes: codes beyond the table read its ends", "[eltwise]") {
  Random r;
  for (int trial = 0; trial < 400; ++trial) {
    const int64_t count = r.between(0, 300);
    Buffer in(r.storage(), random_offset(r), count);
    fill_random(in, r);
    const int64_t size = r.chance(20) ? 1 : r.between(1, 65536);
    const int64_t input_min = r.chance(20) ? (r.chance(50) ? INT32_MIN : int64_t{INT32_MAX} - size + 1)
                                           : int64_t{in.offset} + r.between(-300, 300);
    std::vector<int32_t> table(static_cast<size_t>(size));
    for (auto& t : table) t = static_cast<int32_t>(r.between(-1000, 1000));
    const Storage out_storage = r.storage();
    const Buffer out = output_like(out_storage, out_storage == Storage::U8 ? -1000 : 0, count, r);
    Buffer want = out;
    for (int64_t i = 0; i < count; ++i) {
      const int64_t index = std::clamp<int64_t>(in.stored(i) + in.offset - input_min, 0, size - 1);
      want.set(i, table[static_cast<size_t>(index)] - want.offset);
    }
    require_isas_agree(out, describe(in, out, count, 0) + text(", size ", size, ", input_min ", input_min),
                       [&](Isa isa, Buffer& o) {
                         lookup_codes(isa, in.in(), count, table.data(), size, input_min, o.out());
                         CHECK(o.bytes == want.bytes);
                       });
  }
}

TEST_CASE("affine_codes: vector paths equal the scalar loop", "[eltwise]") {
  Random r;
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
        // Keeps v + half inside int64 for the largest shifts, so that the vector paths run rather than fall back
        // (the extremes have a test of their own below).
        if (shift[ch] >= 61) bias[ch] = -std::abs(bias[ch] >> 20);
      }
      const int32_t zo = static_cast<int32_t>(r.between(-500, 500));
      int32_t lo, hi;
      random_bounds(r, out_offset, out_storage, lo, hi);
      const int64_t start = positions > 1 ? channels * r.between(0, 1) : 0;
      const Buffer out = output_like(out_storage, out_offset, count, r);
      require_isas_agree(out, describe(in, out, count, start) + text(", channels ", channels), [&](Isa isa, Buffer& o) {
        affine_codes(isa, in.in(start), count - start, channels, zi, multiplier.data(), shift.data(), bias.data(), zo,
                     lo, hi, o.out(start));
      });
    }
}

TEST_CASE("affine_codes: exact at the extremes of the multiplier, shift, bias and codes", "[eltwise]") {
  // x * multiplier + bias reaches 2^62 + 2^61 in magnitude, and at shifts 62 and 63 the rounding term can take an
  // int64 sum past 2^63. Every path must give the exact result, computed here in __int128 by floor division and
  // the remainder, for any parameters: the vector paths run where their int64 lanes hold every step and fall
  // back elsewhere, which the calls below exercise one parameter triple at a time and all at once.
  const int64_t b61 = int64_t{1} << 61;
  const int32_t codes[] = {INT32_MIN, INT32_MIN + 1, INT32_MIN + 2, -1, 0, 1, INT32_MAX - 1, INT32_MAX};
  const int64_t positions = std::size(codes);
  // Runs one call over NHWC [positions, channels] stored int32 codes: x = clamp32(stored + offset - zi) at and near
  // both ends of int32, straight (offset = zi = 0) or saturated; every channel meets every extreme code.
  auto check = [&](const std::vector<int32_t>& multiplier, const std::vector<uint8_t>& shift,
                   const std::vector<int64_t>& bias, const std::string& what) {
    const int64_t channels = static_cast<int64_t>(multiplier.size()), count = positions * channels;
    for (const auto& [offset, zi] : {std::pair{0, 0}, std::pair{INT32_MAX, INT32_MIN}, std::pair{INT32_MIN, 7}})
      for (int32_t zo : {0, INT32_MIN, INT32_MAX}) {
        Buffer in(Storage::I32, offset, count), exact(Storage::I32, 0, count);
        for (int64_t p = 0; p < positions; ++p)
          for (int64_t ch = 0; ch < channels; ++ch) {
            const int32_t stored = codes[(p + ch) % positions];
            in.set(p * channels + ch, stored);
            const int64_t x = std::clamp<int64_t>(int64_t{stored} + offset - zi, INT32_MIN, INT32_MAX);
            const __int128 v = static_cast<__int128>(x) * multiplier[ch] + bias[ch];
            const int s = std::min<int>(shift[ch], 100);  // |v| < 2^64: every shift from 66 on rounds v to 0
            __int128 q = v >> s;                          // floor(v / 2^s)
            const __int128 rest = v - q * (__int128{1} << s);
            if (s > 0 && (rest > (__int128{1} << (s - 1)) || (rest == (__int128{1} << (s - 1)) && (q & 1)))) q += 1;
            exact.set(p * channels + ch, static_cast<int64_t>(std::clamp<__int128>(q + zo, INT32_MIN, INT32_MAX)));
          }
        const std::string where = what + text(", offset ", offset, ", zi ", zi, ", zo ", zo);
        const Buffer scalar = require_isas_agree(exact, where, [&](Isa isa, Buffer& o) {
          affine_codes(isa, in.in(), count, channels, zi, multiplier.data(), shift.data(), bias.data(), zo, INT32_MIN,
                       INT32_MAX, o.out());
        });
        INFO(where);
        REQUIRE(scalar.bytes == exact.bytes);
      }
  };
  std::vector<int32_t> all_multipliers;
  std::vector<uint8_t> all_shifts;
  std::vector<int64_t> all_biases;
  for (int32_t m : {INT32_MIN, INT32_MIN + 1, INT32_MIN + 2, -1, 1, INT32_MAX - 1, INT32_MAX})
    for (int s : {0, 1, 31, 61, 62, 63, 64, 200}) {
      // The loader's bounds, both ends of int64, and the edges of the vector lanes: v + half + 1 at INT64_MAX for
      // x * m at its largest, v at INT64_MIN for x * m at its smallest.
      const __int128 reach = (__int128{1} << 31) * (m < 0 ? -int64_t{m} : int64_t{m});
      const __int128 half = s == 0 ? 0 : s > 63 ? 0 : (__int128{1} << (s - 1)) - 1;
      const int64_t top_edge = static_cast<int64_t>(__int128{INT64_MAX} - reach - half - (s > 0));
      const int64_t bottom_edge = static_cast<int64_t>(__int128{INT64_MIN} + reach);
      for (int64_t b : {-b61, -b61 + 1, int64_t{-1}, int64_t{0}, b61 - 1, b61, INT64_MIN, INT64_MAX, top_edge,
                        top_edge + 1, bottom_edge, bottom_edge - 1}) {
        // One triple on 9 channels: the 8 of a vector step and a tail.
        check(std::vector<int32_t>(9, m), std::vector<uint8_t>(9, static_cast<uint8_t>(s)), std::vector<int64_t>(9, b),
              text("multiplier ", m, ", shift ", s, ", bias ", b));
        const bool accepted = m != INT32_MIN && s <= 62 && b >= -b61 && b <= b61;
        if (!accepted) continue;
        all_multipliers.push_back(m);
        all_shifts.push_back(static_cast<uint8_t>(s));
        all_biases.push_back(b);
      }
    }
  // Every triple the loader accepts in one call, which the vector paths take (AVX2 from 8 channels on), with a
  // tail of channels past the last 8.
  const int64_t channels = static_cast<int64_t>(all_multipliers.size());
  REQUIRE(channels % 8 != 0);
  for (int32_t zo : {INT32_MIN, INT32_MAX}) {
    ClampAdd sat;
    REQUIRE(affine_vector_ok({nullptr, Storage::I32, 0}, 0, channels, 0, all_multipliers.data(), all_shifts.data(),
                             all_biases.data(), zo, INT32_MIN, INT32_MAX, &sat));
  }
  check(all_multipliers, all_shifts, all_biases, "every accepted triple");
}

TEST_CASE("vector paths fall back to the scalar loop outside their cases", "[eltwise]") {
  Random r;
  const int64_t count = 37;
  Buffer in(Storage::I32, INT32_MAX, count);
  fill_random(in, r);
  // in.offset - zi beyond int32, lo > hi: the scalar loop's results, whatever they are.
  for (int32_t zi : {INT32_MIN, 0})
    require_isas_agree(output_like(Storage::U8, 0, count, r), text("zi ", zi), [&](Isa isa, Buffer& o) {
      requantize_codes(isa, in.in(), count, zi, 3, 1, 0, 0, 255, o.out());
    });
  require_isas_agree(output_like(Storage::I32, 0, count, r), "clamp", [&](Isa isa, Buffer& o) {
    clamp_codes(isa, in.in(), count, INT32_MIN, INT32_MIN + 5, o.out());
  });
  Buffer out(Storage::U8, 0, count);
  for (Isa isa : kVectorIsas)
    if (isa_supported(isa))
      CHECK_THROWS_AS(affine_codes(isa, in.in(), count, 5, 0, nullptr, nullptr, nullptr, 0, 0, 255, out.out()),
                      std::invalid_argument);
}
