#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "core/codebook_common.h"
#include "core/kmeans_1d.h"

using namespace qcnn::codebook;

namespace {

WeightedValues make(const std::vector<double>& x, const std::vector<double>* w = nullptr) {
  return sorted_unique<double>(x.data(), w ? w->data() : nullptr, static_cast<int64_t>(x.size()));
}

// Minimum SSE over every split of the sorted values into k non-empty contiguous runs.
double brute_force_sse(const WeightedValues& d, int64_t k) {
  const int64_t n = d.size();
  double best = std::numeric_limits<double>::infinity();
  std::vector<int64_t> cuts;
  std::function<void(int64_t, int64_t)> rec = [&](int64_t start, int64_t left) {
    if (left == 1) {
      cuts.push_back(start);
      double total = 0.0;
      for (size_t c = 0; c < cuts.size(); ++c) {
        const int64_t lo = cuts[c], hi = c + 1 < cuts.size() ? cuts[c + 1] : n;
        double w = 0, wx = 0;
        for (int64_t i = lo; i < hi; ++i) { w += d.weight[i]; wx += d.weight[i] * d.value[i]; }
        const double mean = wx / w;
        for (int64_t i = lo; i < hi; ++i) total += d.weight[i] * (d.value[i] - mean) * (d.value[i] - mean);
      }
      best = std::min(best, total);
      cuts.pop_back();
      return;
    }
    cuts.push_back(start);
    for (int64_t next = start + 1; next <= n - (left - 1); ++next) rec(next, left - 1);
    cuts.pop_back();
  };
  rec(0, k);
  return best;
}

std::vector<double> random_values(std::mt19937_64& rng, int64_t n, bool integers) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_int_distribution<int> small(-6, 6);
  std::vector<double> x(n);
  for (auto& v : x) v = integers ? small(rng) : normal(rng);
  return x;
}

}  // namespace

TEST_CASE("sorted_unique merges duplicates, signed zeros and zero weights", "[codebook]") {
  std::vector<double> x = {3.0, -0.0, 1.0, 0.0, 3.0, 2.0};
  std::vector<double> w = {1.0, 2.0, 0.0, 0.5, 1.5, 0.0};
  const auto d = make(x, &w);
  REQUIRE(d.value == std::vector<double>{0.0, 3.0});
  REQUIRE(d.weight == std::vector<double>{2.5, 2.5});
  std::vector<double> bad = {1.0, std::nan("")};
  REQUIRE_THROWS_AS(make(bad), std::invalid_argument);
  std::vector<double> neg_w = {1.0, -1.0};
  std::vector<double> two = {1.0, 2.0};
  REQUIRE_THROWS_AS(make(two, &neg_w), std::invalid_argument);
}

TEST_CASE("radix-sorted histogram equals std::sort for float and double", "[codebook]") {
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> xf(50000);
  for (auto& v : xf) v = std::round(normal(rng) * 1000.0f) / 1000.0f * (rng() % 2 ? 1.0f : -1.0f);
  xf[5] = -0.0f;
  xf[9] = 0.0f;
  const auto d = sorted_unique<float>(xf.data(), nullptr, static_cast<int64_t>(xf.size()));
  std::vector<double> ref(xf.begin(), xf.end());
  std::sort(ref.begin(), ref.end());
  ref.erase(std::unique(ref.begin(), ref.end()), ref.end());
  REQUIRE(d.value == ref);
  double total = 0;
  for (double w : d.weight) total += w;
  REQUIRE(total == Approx(50000.0));
  std::vector<double> xd(ref.rbegin(), ref.rend());
  const auto dd = sorted_unique<double>(xd.data(), nullptr, static_cast<int64_t>(xd.size()));
  REQUIRE(dd.value == ref);
}

TEST_CASE("optimal DP equals brute force over all partitions", "[codebook]") {
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t n = 2 + trial % 9;
    auto x = random_values(rng, n, trial % 3 == 0);
    std::vector<double> w(n);
    std::uniform_real_distribution<double> uw(0.1, 3.0);
    for (auto& v : w) v = uw(rng);
    const auto d = make(x, trial % 2 ? &w : nullptr);
    for (int64_t k = 1; k <= d.size(); ++k) {
      const double expected = brute_force_sse(d, k);
      const auto fast = kmeans_1d_optimal(d, k);
      const auto split = kmeans_1d_optimal(d, k, /*table_budget_bytes=*/0);
      const auto halves = kmeans_1d_optimal(d, k, int64_t(1) << 30, /*split_rows=*/3);
      REQUIRE(halves.sse == Approx(expected).margin(1e-12));
      REQUIRE(fast.sse == Approx(expected).margin(1e-12));
      REQUIRE(split.sse == Approx(expected).margin(1e-12));
      REQUIRE(std::is_sorted(fast.centroids.begin(), fast.centroids.end()));
    }
  }
}

TEST_CASE("SMAWK DP and Hirschberg split equal the quadratic DP", "[codebook]") {
  std::mt19937_64 rng(2);
  for (int trial = 0; trial < 24; ++trial) {
    const int64_t n = 50 + 37 * trial;
    auto x = random_values(rng, n, trial % 4 == 0);
    if (trial % 5 == 1)  // heavy ties in the costs: a lattice with equal weights
      for (int64_t i = 0; i < n; ++i) x[i] = static_cast<double>(i % 40);
    const auto d = make(x);
    for (int64_t k : {2, 3, 7, 16}) {
      if (k >= d.size()) continue;
      const auto ref = kmeans_1d_optimal_quadratic(d, k);
      const auto table = kmeans_1d_optimal(d, k);
      const auto split = kmeans_1d_optimal(d, k, 64);
      const auto halves = kmeans_1d_optimal(d, k, int64_t(1) << 30, /*split_rows=*/3);
      const auto both = kmeans_1d_optimal(d, k, 64, /*split_rows=*/3);
      REQUIRE(table.sse == Approx(ref.sse).epsilon(1e-12).margin(1e-12));
      REQUIRE(split.sse == Approx(ref.sse).epsilon(1e-12).margin(1e-12));
      REQUIRE(halves.sse == Approx(ref.sse).epsilon(1e-12).margin(1e-12));
      REQUIRE(both.sse == Approx(ref.sse).epsilon(1e-12).margin(1e-12));
    }
  }
}

TEST_CASE("k-means edge cases: all equal, k = 1, k = n, k > distinct", "[codebook]") {
  std::vector<double> same(100, 2.5);
  const auto d_same = make(same);
  for (auto init : {KMeansInit::KMeansPlusPlus, KMeansInit::Quantile, KMeansInit::Linear}) {
    KMeansOptions opt;
    opt.init = init;
    const auto r = kmeans_1d(d_same, 4, opt);
    REQUIRE(r.centroids == std::vector<double>(4, 2.5));
    REQUIRE(r.sse == 0.0);
  }
  REQUIRE(kmeans_1d_optimal(d_same, 3).centroids == std::vector<double>(3, 2.5));

  std::vector<double> x = {4.0, 1.0, 2.0, 2.0, 8.0};
  const auto d = make(x);
  const auto one = kmeans_1d(d, 1, KMeansOptions{});
  REQUIRE(one.centroids[0] == Approx(17.0 / 5.0));
  REQUIRE(kmeans_1d_optimal(d, 1).centroids[0] == Approx(17.0 / 5.0));
  const auto all = kmeans_1d(d, 4, KMeansOptions{});
  REQUIRE(all.centroids == std::vector<double>{1.0, 2.0, 4.0, 8.0});
  REQUIRE(all.sse == 0.0);
  const auto more = kmeans_1d_optimal(d, 6);  // padding rule: distinct values, then the largest
  REQUIRE(more.centroids == std::vector<double>{1.0, 2.0, 4.0, 8.0, 8.0, 8.0});
  REQUIRE_THROWS_AS(kmeans_1d(d, 0, KMeansOptions{}), std::invalid_argument);
  REQUIRE_THROWS_AS(kmeans_1d_optimal(d, 0), std::invalid_argument);
}

TEST_CASE("zero weights do not influence the fit", "[codebook]") {
  std::vector<double> x = {0.0, 0.1, 0.2, 5.0, 5.1, 100.0};
  std::vector<double> w = {1, 1, 1, 1, 1, 0};
  const auto d = make(x, &w);
  REQUIRE(d.size() == 5);
  const auto r = kmeans_1d_optimal(d, 2);
  REQUIRE(r.centroids[0] == Approx(0.1));
  REQUIRE(r.centroids[1] == Approx(5.05));
  KMeansOptions opt;
  opt.init = KMeansInit::Linear;
  const auto l = kmeans_1d(d, 2, opt);
  REQUIRE(l.centroids[1] == Approx(5.05));
}

TEST_CASE("empty clusters are re-seeded deterministically", "[codebook]") {
  // Linear init over [0, 100] leaves the middle centroids without data.
  std::vector<double> x;
  for (int i = 0; i < 50; ++i) x.push_back(0.01 * i);
  for (int i = 0; i < 50; ++i) x.push_back(100.0 - 0.01 * i);
  const auto d = make(x);
  KMeansOptions opt;
  opt.init = KMeansInit::Linear;
  const auto a = kmeans_1d(d, 6, opt);
  const auto b = kmeans_1d(d, 6, opt);
  REQUIRE(a.centroids == b.centroids);
  std::vector<double> sorted = a.centroids;
  REQUIRE(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());  // all distinct
  for (double c : a.centroids) REQUIRE((c < 0.5 || c > 99.5));
  REQUIRE(a.sse < weighted_sse(d, {0.245, 0.245, 0.245, 99.755, 99.755, 99.755}));
}

TEST_CASE("Lloyd never beats the optimum; inits are deterministic", "[codebook]") {
  std::mt19937_64 rng(3);
  for (int trial = 0; trial < 10; ++trial) {
    auto x = random_values(rng, 3000, false);
    const auto d = make(x);
    for (int64_t k : {2, 5, 16}) {
      const double best = kmeans_1d_optimal(d, k).sse;
      for (auto init : {KMeansInit::KMeansPlusPlus, KMeansInit::Quantile, KMeansInit::Linear}) {
        KMeansOptions opt;
        opt.init = init;
        opt.seed = trial;
        opt.max_iter = 1000;
        const auto r = kmeans_1d(d, k, opt);
        REQUIRE(r.sse >= best * (1 - 1e-12));
        if (k <= 5) REQUIRE(r.sse <= best * 1.01);  // few clusters: Lloyd reaches the optimum's basin
        REQUIRE(kmeans_1d(d, k, opt).centroids == r.centroids);
        REQUIRE(std::is_sorted(r.centroids.begin(), r.centroids.end()));
      }
      KMeansOptions from_optimum;
      from_optimum.init = KMeansInit::Optimal;
      REQUIRE(kmeans_1d(d, k, from_optimum).sse <= best * (1 + 1e-9));
    }
  }
}

TEST_CASE("codebook search: nearest codeword, ties and duplicates to the lower index", "[codebook]") {
  std::mt19937_64 rng(4);
  std::uniform_int_distribution<int> u(-8, 8);
  for (int trial = 0; trial < 50; ++trial) {
    const int k = 1 + trial % 9;
    std::vector<float> cb(k);
    for (auto& c : cb) c = static_cast<float>(u(rng)) * 0.5f;
    std::sort(cb.begin(), cb.end());
    CodebookSearch search(cb.data(), k);
    for (int i = 0; i < 200; ++i) {
      const double x = static_cast<double>(u(rng)) * 0.25;  // hits midpoints exactly
      int64_t best = 0;
      for (int m = 1; m < k; ++m)
        if (std::abs(x - cb[m]) < std::abs(x - cb[best])) best = m;
      REQUIRE(search.nearest(x) == best);
    }
  }
  std::vector<float> unsorted = {1.0f, 0.0f};
  REQUIRE_THROWS_AS(CodebookSearch(unsorted.data(), 2), std::invalid_argument);
}

TEST_CASE("distinct_values_upto counts up to k + 1", "[codebook]") {
  std::vector<double> x = {3, 1, 3, 2, 1, -0.0, 0.0};
  std::vector<double> out;
  REQUIRE(distinct_values_upto<double>(x.data(), 7, 8, out) == 4);
  REQUIRE(out == std::vector<double>{0.0, 1.0, 2.0, 3.0});
  REQUIRE(distinct_values_upto<double>(x.data(), 7, 3, out) == 4);
  REQUIRE(distinct_values_upto<double>(x.data(), 7, 2, out) == 3);
}

TEST_CASE("a warm start begins at the given centroids and stays at a fixed point", "[codebook]") {
  std::mt19937_64 rng(11);
  auto x = random_values(rng, 4000, false);
  const auto d = make(x);
  const int64_t k = 8;
  KMeansOptions cold;
  cold.max_iter = 1000;
  const auto fitted = kmeans_1d(d, k, cold);
  // From a converged codebook (given unsorted), Lloyd stops at once with the same centroids.
  KMeansOptions warm = cold;
  warm.start = fitted.centroids;
  std::reverse(warm.start.begin(), warm.start.end());
  const auto again = kmeans_1d(d, k, warm);
  REQUIRE(again.iterations == 1);
  for (int64_t m = 0; m < k; ++m) REQUIRE(again.centroids[m] == Approx(fitted.centroids[m]).margin(1e-12));
  // A single iteration from a given start is one Lloyd step from it: the means of its clusters.
  KMeansOptions one = cold;
  one.max_iter = 1;
  one.start = {-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0};
  const auto step = kmeans_1d(d, k, one);
  std::vector<double> sorted_x = x;
  std::sort(sorted_x.begin(), sorted_x.end());
  const double mids[] = {-2.5, -1.5, -0.75, -0.25, 0.25, 0.75, 1.5};
  double lo = -std::numeric_limits<double>::infinity();
  for (int64_t m = 0; m < k; ++m) {
    const double hi = m + 1 < k ? mids[m] : std::numeric_limits<double>::infinity();
    double sum = 0.0;
    int count = 0;
    for (double v : sorted_x)
      if (v > lo && v <= hi) { sum += v; ++count; }
    REQUIRE(count > 0);
    REQUIRE(step.centroids[m] == Approx(sum / count).epsilon(1e-12));
    lo = hi;
  }
  KMeansOptions wrong = cold;
  wrong.start = {0.0, 1.0};
  REQUIRE_THROWS_WITH(kmeans_1d(d, k, wrong), Catch::Contains("start needs k = 8 centroids, got 2"));
  wrong.start.assign(k, 0.0);
  wrong.start[3] = std::numeric_limits<double>::quiet_NaN();
  REQUIRE_THROWS_WITH(kmeans_1d(d, k, wrong), Catch::Contains("start centroids must be finite"));
}
