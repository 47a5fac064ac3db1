// Pooling of NHWC codes against direct references on every kernel path this CPU has: max pooling for every channel
// count from 1 to 70 (the vector steps of 16 and 8 and their tails), uint8 and int32 storage, overlapping, padded,
// ceil-mode and adaptive windows; average pooling; the per-channel reductions over positions that global pooling
// runs (sum_positions, max_positions) against their scalar loops.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "core/requant.h"

using namespace qcnn;

namespace {
// The paths this CPU runs, the scalar reference first.
std::vector<Isa> runnable_isas() {
  std::vector<Isa> isas;
  for (Isa isa : kAllIsas)
    if (isa_supported(isa)) isas.push_back(isa);
  return isas;
}

template <typename T>
std::vector<T> max_pool_reference(const std::vector<T>& x, int64_t w, int64_t c, const PoolAxis& rows,
                                  const PoolAxis& cols) {
  std::vector<T> out(static_cast<size_t>(rows.size() * cols.size() * c));
  for (int64_t oy = 0; oy < rows.size(); ++oy)
    for (int64_t ox = 0; ox < cols.size(); ++ox)
      for (int64_t ch = 0; ch < c; ++ch) {
        T best = x[static_cast<size_t>((rows.begin[oy] * w + cols.begin[ox]) * c + ch)];
        for (int64_t y = rows.begin[oy]; y < rows.end[oy]; ++y)
          for (int64_t xx = cols.begin[ox]; xx < cols.end[ox]; ++xx)
            best = std::max(best, x[static_cast<size_t>((y * w + xx) * c + ch)]);
        out[static_cast<size_t>((oy * cols.size() + ox) * c + ch)] = best;
      }
  return out;
}
}  // namespace

TEST_CASE("max pool equals the direct reference for every channel count", "[pool]") {
  ThreadScratch scratch;  // reused by every call, as a thread of the engine reuses its own
  std::mt19937 rng(3);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int64_t c = 1; c <= 70; ++c) {
    const int kernel = pick(2, 3), stride = pick(1, 2), pad = pick(0, kernel / 2);
    const int64_t h = pick(kernel, 9), w = pick(kernel, 9);
    const int mode = static_cast<int>(c % 3);  // 0: floor, 1: ceil mode, 2: adaptive (out may exceed in)
    const PoolAxis rows = mode == 2 ? adaptive_pool_axis(h, pick(1, static_cast<int>(h) + 2), "rows")
                                    : pool_axis(h, kernel, stride, pad, mode == 1, true, "rows");
    const PoolAxis cols = mode == 2 ? adaptive_pool_axis(w, pick(1, static_cast<int>(w) + 2), "cols")
                                    : pool_axis(w, kernel, stride, pad, mode == 1, true, "cols");
    INFO("c=" << c << " mode " << mode << " kernel " << kernel << " stride " << stride << " pad " << pad << " " << h
              << "x" << w);
    std::vector<uint8_t> x8(static_cast<size_t>(h * w * c));
    for (auto& v : x8) v = static_cast<uint8_t>(pick(0, 255));
    std::vector<int32_t> x32(x8.size());
    for (auto& v : x32) v = pick(-100000, 100000);
    for (Isa isa : runnable_isas()) {
      INFO("path " << isa_name(isa));
      std::vector<uint8_t> out8(static_cast<size_t>(rows.size() * cols.size() * c));
      pool_nhwc(isa, {x8.data(), Storage::U8, 5}, {0, 255}, w, c, rows, cols, true, 0, {out8.data(), Storage::U8, 5}, 0,
                rows.size(), scratch);
      CHECK(out8 == max_pool_reference(x8, w, c, rows, cols));
      std::vector<int32_t> out32(out8.size());
      pool_nhwc(isa, {x32.data(), Storage::I32, 0}, {-100000, 100000}, w, c, rows, cols, true, 0, {out32.data(), Storage::I32, 0}, 0,
                rows.size(), scratch);
      CHECK(out32 == max_pool_reference(x32, w, c, rows, cols));
    }
  }
}

// Average pooling (floor((sum + n / 2) / n) with the padding cells holding pad_code) against the formula written
// out, uint8 and int32 storage, padded windows with and without count_include_pad, adaptive and global windows,
// and one output row range at a time as the engine's threads take them.
TEST_CASE("average pool equals the direct reference, row by row", "[pool]") {
  ThreadScratch scratch;
  std::mt19937 rng(5);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t c = pick(1, 70), h = pick(3, 12), w = pick(3, 12);
    const int kernel = static_cast<int>(pick(2, 3)), stride = static_cast<int>(pick(1, 2));
    const int pad = static_cast<int>(pick(0, kernel / 2));
    const bool include_pad = pick(0, 1), u8 = pick(0, 1);
    const int mode = trial % 3;  // 0: windows, 1: adaptive, 2: global
    const PoolAxis rows = mode == 0 ? pool_axis(h, kernel, stride, pad, false, include_pad, "rows")
                                    : adaptive_pool_axis(h, mode == 1 ? pick(1, h) : 1, "rows");
    const PoolAxis cols = mode == 0 ? pool_axis(w, kernel, stride, pad, false, include_pad, "cols")
                                    : adaptive_pool_axis(w, mode == 1 ? pick(1, w) : 1, "cols");
    const int32_t offset = u8 ? static_cast<int32_t>(pick(-300, 300)) : 0;
    const int64_t pad_code = offset + pick(0, 255);
    std::vector<int64_t> codes(static_cast<size_t>(h * w * c));
    for (auto& v : codes) v = offset + (u8 ? pick(0, 255) : pick(-2000000, 2000000));
    std::vector<int64_t> want(static_cast<size_t>(rows.size() * cols.size() * c));
    for (int64_t oy = 0; oy < rows.size(); ++oy)
      for (int64_t ox = 0; ox < cols.size(); ++ox)
        for (int64_t ch = 0; ch < c; ++ch) {
          int64_t sum = 0, cells = 0;
          for (int64_t y = rows.begin[oy]; y < rows.end[oy]; ++y)
            for (int64_t x = cols.begin[ox]; x < cols.end[ox]; ++x, ++cells) sum += codes[(y * w + x) * c + ch];
          const int64_t n = rows.divisor[oy] * cols.divisor[ox];
          sum += (n - cells) * pad_code;
          const int64_t num = sum + n / 2;
          want[(oy * cols.size() + ox) * c + ch] = num / n - (num % n != 0 && num < 0);
        }
    std::vector<uint8_t> x8, out8(want.size());
    std::vector<int32_t> x32, out32(want.size());
    for (int64_t v : codes) (u8 ? x8.push_back(static_cast<uint8_t>(v - offset)) : x32.push_back(static_cast<int32_t>(v)));
    const CodesIn in = u8 ? CodesIn{x8.data(), Storage::U8, offset} : CodesIn{x32.data(), Storage::I32, 0};
    const InputRange stored = u8 ? InputRange{0, 255} : InputRange{-2000000 + offset, 2000000 + offset};
    const CodesOut out = u8 ? CodesOut{out8.data(), Storage::U8, offset} : CodesOut{out32.data(), Storage::I32, 0};
    INFO("trial " << trial << " c=" << c << " " << h << "x" << w << " mode " << mode << " kernel " << kernel
                  << " stride " << stride << " pad " << pad << " include_pad " << include_pad);
    for (Isa isa : runnable_isas()) {
      INFO("path " << isa_name(isa));
      for (int64_t row = 0; row < rows.size(); ++row)
        pool_nhwc(isa, in, stored, w, c, rows, cols, false, pad_code, out, row, row + 1, scratch);
      std::vector<int64_t> got;
      for (size_t i = 0; i < want.size(); ++i) got.push_back(u8 ? int64_t{out8[i]} + offset : int64_t{out32[i]});
      CHECK(got == want);
    }
  }
}

// The reductions over positions: every channel count up to 300 (the strips of 1 to 4 vectors of 8, 16, 32 and 64
// channels and their tails), 0 to 40 positions, added into running sums and maxima, for uint8 codes, int32 codes of
// the whole range (sums in int64 lanes) and of a narrow one (int32 lanes); runs that cross the int32 lanes' moves
// to the int64 sums.
TEST_CASE("sum_positions and max_positions equal their scalar loops", "[pool]") {
  std::mt19937 rng(9);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  auto check = [&](int64_t positions, int64_t c, int64_t narrow) {
    std::vector<uint8_t> x8(static_cast<size_t>(positions * c));
    std::vector<int32_t> wide(x8.size()), small(x8.size());
    for (auto& v : x8) v = static_cast<uint8_t>(pick(0, 255));
    for (auto& v : wide) v = static_cast<int32_t>(pick(INT32_MIN, INT32_MAX));
    for (auto& v : small) v = static_cast<int32_t>(pick(-narrow, narrow));
    std::vector<int64_t> sums0(static_cast<size_t>(c));
    std::vector<int32_t> maxima0(static_cast<size_t>(c));
    for (auto& v : sums0) v = pick(-1000000, 1000000);
    for (auto& v : maxima0) v = static_cast<int32_t>(pick(-300, 300));
    const std::pair<CodesIn, InputRange> inputs[] = {{{x8.data(), Storage::U8, 0}, {0, 255}},
                                                     {{wide.data(), Storage::I32, 0}, {}},
                                                     {{small.data(), Storage::I32, 0}, {-narrow, narrow}}};
    for (const auto& [in, stored] : inputs) {
      std::vector<int64_t> want_sums = sums0;
      std::vector<int32_t> want_maxima = maxima0;
      sum_positions(Isa::Scalar, in, positions, c, stored, want_sums.data());
      max_positions(Isa::Scalar, in, positions, c, want_maxima.data());
      for (Isa isa : runnable_isas()) {
        INFO("c=" << c << " positions " << positions << " stored [" << stored.lo << ", " << stored.hi << "] path "
                  << isa_name(isa));
        std::vector<int64_t> sums = sums0;
        std::vector<int32_t> maxima = maxima0;
        sum_positions(isa, in, positions, c, stored, sums.data());
        max_positions(isa, in, positions, c, maxima.data());
        CHECK(sums == want_sums);
        CHECK(maxima == want_maxima);
      }
    }
  };
  for (int64_t c = 1; c <= 300; ++c) check(c % 41, c, 1 << 16);
  for (int64_t c : {1, 17, 67}) check(1000, c, 1 << 24);  // int32 lanes moved every 127 positions
  const int64_t positions = (int64_t{1} << 23) + 5, c = 3;
  std::vector<uint8_t> x(static_cast<size_t>(positions * c), 255);
  for (Isa isa : runnable_isas()) {
    INFO("path " << isa_name(isa));
    std::vector<int64_t> sums(static_cast<size_t>(c), 1);
    sum_positions(isa, {x.data(), Storage::U8, 0}, positions, c, {0, 255}, sums.data());
    CHECK(sums == std::vector<int64_t>(static_cast<size_t>(c), 255 * positions + 1));
  }
}
