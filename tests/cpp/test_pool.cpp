// Max pooling of NHWC codes against a direct reference: every channel count from 1 to 70 (the vector steps of
// 16 and 8 and their tails), uint8 and int32 storage, overlapping, padded, ceil-mode and adaptive windows.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "core/requant.h"

using namespace qcnn;

namespace {
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
    std::vector<uint8_t> out8(static_cast<size_t>(rows.size() * cols.size() * c));
    pool_nhwc({x8.data(), Storage::U8, 5}, w, c, rows, cols, true, 0, {out8.data(), Storage::U8, 5}, 0, rows.size(),
              scratch);
    CHECK(out8 == max_pool_reference(x8, w, c, rows, cols));
    std::vector<int32_t> x32(x8.size());
    for (auto& v : x32) v = pick(-100000, 100000);
    std::vector<int32_t> out32(out8.size());
    pool_nhwc({x32.data(), Storage::I32, 0}, w, c, rows, cols, true, 0, {out32.data(), Storage::I32, 0}, 0,
              rows.size(), scratch);
    CHECK(out32 == max_pool_reference(x32, w, c, rows, cols));
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
    const CodesOut out = u8 ? CodesOut{out8.data(), Storage::U8, offset} : CodesOut{out32.data(), Storage::I32, 0};
    for (int64_t row = 0; row < rows.size(); ++row) pool_nhwc(in, w, c, rows, cols, false, pad_code, out, row, row + 1, scratch);
    std::vector<int64_t> got;
    for (size_t i = 0; i < want.size(); ++i) got.push_back(u8 ? int64_t{out8[i]} + offset : int64_t{out32[i]});
    INFO("trial " << trial << " c=" << c << " " << h << "x" << w << " mode " << mode << " kernel " << kernel
                  << " stride " << stride << " pad " << pad << " include_pad " << include_pad);
    CHECK(got == want);
  }
}
