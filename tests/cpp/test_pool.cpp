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
    pool_nhwc({x8.data(), Storage::U8, 5}, w, c, rows, cols, true, 0, {out8.data(), Storage::U8, 5}, 0, rows.size());
    CHECK(out8 == max_pool_reference(x8, w, c, rows, cols));
    std::vector<int32_t> x32(x8.size());
    for (auto& v : x32) v = pick(-100000, 100000);
    std::vector<int32_t> out32(out8.size());
    pool_nhwc({x32.data(), Storage::I32, 0}, w, c, rows, cols, true, 0, {out32.data(), Storage::I32, 0}, 0,
              rows.size());
    CHECK(out32 == max_pool_reference(x32, w, c, rows, cols));
  }
}
