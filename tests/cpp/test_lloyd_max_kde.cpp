#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "core/kde.h"
#include "core/lloyd_max.h"

using namespace qcnn::codebook;

namespace {

GridDensity standard_normal(int64_t n = 40001, double half_width = 10.0) {
  std::vector<double> p(n);
  const double step = 2.0 * half_width / static_cast<double>(n - 1);
  for (int64_t i = 0; i < n; ++i) {
    const double x = -half_width + step * static_cast<double>(i);
    p[i] = std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
  }
  return GridDensity(p.data(), n, -half_width, step);
}

// Mass, mean and variance of a KdeGrid's density (linear between grid points): trapezoid sums,
// exact for the mass of a piecewise-linear density.
struct GridMoments { double mass, mean, var; };
GridMoments grid_moments(const KdeGrid& k) {
  const int64_t n = static_cast<int64_t>(k.density.size());
  double m0 = 0, m1 = 0, m2 = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double w = k.density[i] * k.step * ((i == 0 || i == n - 1) ? 0.5 : 1.0);
    const double y = k.start + k.step * static_cast<double>(i);
    m0 += w;
    m1 += w * y;
    m2 += w * y * y;
  }
  const double mean = m1 / m0;
  return {m0, mean, m2 / m0 - mean * mean};
}

// Mass of the density over [lo, hi] for lo, hi on grid points (the trapezoid rule is exact).
double grid_mass(const KdeGrid& k, double lo, double hi) {
  double m = 0;
  for (size_t i = 0; i + 1 < k.density.size(); ++i) {
    const double y = k.start + k.step * static_cast<double>(i);
    if (y >= lo && y + k.step <= hi) m += 0.5 * (k.density[i] + k.density[i + 1]) * k.step;
  }
  return m;
}

}  // namespace

TEST_CASE("Lloyd-Max reproduces Max (1960) for the standard normal", "[codebook]") {
  const auto g = standard_normal();
  REQUIRE(g.mass() == Approx(1.0).epsilon(1e-7));
  struct Case { int k; std::vector<double> positive; double mse; };
  // Max 1960, Table I (levels) and distortion; checked against an independent quad-based solver.
  const std::vector<Case> cases = {
      {2, {0.7979}, 0.3634}, {4, {0.4528, 1.510}, 0.1175}, {8, {0.2451, 0.7560, 1.344, 2.152}, 0.03454}};
  for (const auto& c : cases) {
    for (auto init : {LloydMaxInit::Optimal, LloydMaxInit::Quantile, LloydMaxInit::Linear}) {
      const auto r = lloyd_max(g, c.k, init, 100000, 1e-13);
      for (int m = 0; m < c.k / 2; ++m) {
        REQUIRE(r.levels[c.k / 2 + m] == Approx(c.positive[m]).margin(5e-4));
        REQUIRE(r.levels[c.k / 2 - 1 - m] == Approx(-c.positive[m]).margin(5e-4));
      }
      REQUIRE(r.distortion == Approx(c.mse).epsilon(2e-3));
    }
  }
}

TEST_CASE("Lloyd-Max on a uniform density gives the uniform quantizer", "[codebook]") {
  std::vector<double> p(101, 1.0);
  GridDensity g(p.data(), 101, 0.0, 0.01);
  const auto r = lloyd_max(g, 5, LloydMaxInit::Linear, 1000, 1e-14);
  for (int m = 0; m < 5; ++m) REQUIRE(r.levels[m] == Approx((m + 0.5) / 5.0).margin(1e-9));
  REQUIRE(r.distortion == Approx(0.04 / 12.0).epsilon(1e-9));  // step^2 / 12
  REQUIRE(g.quantile(0.25) == Approx(0.25).margin(1e-12));
  const auto one = lloyd_max(g, 1, LloydMaxInit::Quantile, 10, 0.0);
  REQUIRE(one.levels[0] == Approx(0.5).margin(1e-12));
  std::vector<double> zero(10, 0.0);
  REQUIRE_THROWS_AS(GridDensity(zero.data(), 10, 0.0, 1.0), std::invalid_argument);
  REQUIRE_THROWS_AS(lloyd_max(g, 0, LloydMaxInit::Linear, 10, 0.0), std::invalid_argument);
}

TEST_CASE("KDE bandwidth factors: scipy's rules with the finite-population correction", "[codebook]") {
  REQUIRE(bandwidth_factor(BandwidthRule::Scott, 1.0, 200.0) == Approx(std::pow(200.0, -0.2)).epsilon(1e-14));
  REQUIRE(bandwidth_factor(BandwidthRule::Silverman, 1.0, 200.0) == Approx(std::pow(150.0, -0.2)).epsilon(1e-14));
  // half of the population sampled: the sampling variance of 2 * n_eff independent draws
  REQUIRE(bandwidth_factor(BandwidthRule::Scott, 1.0, 200.0, 0.5) == Approx(std::pow(400.0, -0.2)).epsilon(1e-14));
  REQUIRE(bandwidth_factor(BandwidthRule::Silverman, 1.0, 200.0, 0.5) == Approx(std::pow(300.0, -0.2)).epsilon(1e-14));
  REQUIRE(bandwidth_factor(BandwidthRule::Scott, 1.0, 200.0, 1.0) == 0.0);  // every value: nothing to smooth
  REQUIRE(bandwidth_factor(BandwidthRule::Factor, 0.3, 200.0, 1.0) == 0.3);
  REQUIRE(bandwidth_factor(BandwidthRule::None, 1.0, 200.0) == 0.0);
  REQUIRE_THROWS_AS(bandwidth_factor(BandwidthRule::Scott, 1.0, 200.0, 1.5), std::invalid_argument);
}

TEST_CASE("KDE of every value: Scott gives the exact histogram, a factor keeps the variance", "[codebook]") {
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal(0.0, 2.0);
  std::vector<double> x(200);
  for (auto& v : x) v = normal(rng);
  double mean = 0, ss = 0;
  for (double v : x) mean += v / 200.0;
  for (double v : x) ss += (v - mean) * (v - mean);
  const double sd = std::sqrt(ss / 199.0), var0 = ss / 200.0;
  KdeOptions opt;
  opt.grid_size = 4096;
  opt.rule = BandwidthRule::Scott;  // sample_size 100000 >= 200: every value, so h = 0
  const auto scott = kde_grid_density<double>(x.data(), nullptr, 200, opt);
  KdeOptions hist = opt;
  hist.rule = BandwidthRule::None;
  const auto histogram = kde_grid_density<double>(x.data(), nullptr, 200, hist);
  REQUIRE(scott.bandwidth == 0.0);
  REQUIRE(scott.density == histogram.density);
  const auto hm = grid_moments(histogram);
  REQUIRE(hm.mass == Approx(1.0).epsilon(1e-12));
  REQUIRE(hm.mean == Approx(mean).margin(1e-12));
  // binning to the two neighbours and the linear interpolation add about step^2 / 3 of variance
  REQUIRE(hm.var == Approx(var0 + histogram.step * histogram.step / 3.0).epsilon(2e-4));

  KdeOptions fopt = opt;
  fopt.rule = BandwidthRule::Factor;
  fopt.factor = 0.5;
  const auto a = kde_grid_density<double>(x.data(), nullptr, 200, fopt);  // 200 <= direct-sum limit
  // h = 0.5 sd, then rescaled by sqrt(var0 / (var0 + h^2)) with the points (Jones 1991)
  REQUIRE(a.bandwidth == Approx(0.5 * sd * std::sqrt(var0 / (var0 + 0.25 * sd * sd))).epsilon(1e-12));
  const auto am = grid_moments(a);
  REQUIRE(am.mass == Approx(1.0).epsilon(1e-4));
  REQUIRE(am.mean == Approx(mean).margin(1e-4));
  // variance-corrected: var0, not var0 + h^2 = 1.25 var0 (up to the kernel truncation at 7h)
  REQUIRE(am.var == Approx(var0).epsilon(2e-3));
  // The same 200 values repeated 3 times take the binned path: the same h (sd(ddof=1) of x3 is
  // sd(x) * sqrt(597/599)) and the same variance give the same density.
  std::vector<double> x3;
  for (int r = 0; r < 3; ++r) x3.insert(x3.end(), x.begin(), x.end());
  fopt.factor = 0.5 * std::sqrt(599.0 / 597.0);
  const auto b = kde_grid_density<double>(x3.data(), nullptr, 600, fopt);
  REQUIRE(b.bandwidth == Approx(a.bandwidth).epsilon(1e-12));
  REQUIRE(b.start == Approx(a.start));
  double peak = 0;
  for (double p : a.density) peak = std::max(peak, p);
  for (size_t i = 0; i < a.density.size(); ++i) REQUIRE(b.density[i] == Approx(a.density[i]).margin(2e-4 * peak));
}

TEST_CASE("Sampled KDE: exact tails and post-stratified mass", "[codebook]") {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> x(400000);
  for (auto& v : x) v = normal(rng);
  for (int i = 0; i < 5; ++i) x[1000 + 7919 * i] = 50.0 + i;  // 5 far outliers that a sample of 2000 misses
  const int64_t n = static_cast<int64_t>(x.size());
  KdeOptions opt;
  opt.sample_size = 2000;
  opt.rule = BandwidthRule::None;
  const auto k = kde_grid_density<double>(x.data(), nullptr, n, opt);
  REQUIRE(k.start + k.step == Approx(*std::min_element(x.begin(), x.end())));
  REQUIRE(k.start + k.step * 2046 == Approx(54.0));
  REQUIRE(grid_moments(k).mass == Approx(1.0).epsilon(1e-12));
  REQUIRE(grid_mass(k, 45.0, k.start + k.step * 2047) == Approx(5.0 / n).epsilon(1e-9));  // weight 1 each, exactly
  REQUIRE(grid_mass(k, 4.0, 45.0) == Approx(std::count_if(x.begin(), x.end(), [](double v) { return v > 4.0 && v < 45.0; }) /
                                            static_cast<double>(n)).margin(1e-5));
  // Between the tails the 64 strata carry their exact mass, so the mass of an interval is off only
  // within its two boundary strata (std ~0.0026 here), where a plain sample of 2000 has a 0.011 std.
  opt.grid_size = 16384;  // fine enough that binning moves < 1e-3 of mass across the interval's ends
  for (uint64_t seed = 0; seed < 8; ++seed) {
    opt.seed = seed;
    const auto ks = kde_grid_density<double>(x.data(), nullptr, n, opt);
    const double lo = ks.start + ks.step * std::round((-0.5 - ks.start) / ks.step);
    const double hi = ks.start + ks.step * std::round((0.5 - ks.start) / ks.step);
    const double inner = std::count_if(x.begin(), x.end(), [&](double v) { return v > lo && v < hi; }) /
                         static_cast<double>(n);
    INFO("seed " << seed);
    REQUIRE(grid_mass(ks, lo - 1e-9, hi + 1e-9) == Approx(inner).margin(0.008));
  }
}

TEST_CASE("Lloyd-Max on the default sampled KDE matches the full histogram and Max (1960)", "[codebook]") {
  std::mt19937_64 rng(8);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> x(1000000);
  for (auto& v : x) v = normal(rng);
  const int64_t n = static_cast<int64_t>(x.size());
  const auto levels = [&](const KdeOptions& opt) {
    const auto d = kde_grid_density<double>(x.data(), nullptr, n, opt);
    return lloyd_max(GridDensity(d.density.data(), opt.grid_size, d.start, d.step), 4, LloydMaxInit::Optimal, 1000,
                     1e-10).levels;
  };
  KdeOptions full;
  full.sample_size = 0;
  full.rule = BandwidthRule::None;
  const auto exact = levels(full);  // Lloyd-Max of all 1e6 values
  const double max1960[4] = {-1.510, -0.4528, 0.4528, 1.510};
  for (int m = 0; m < 4; ++m) REQUIRE(exact[m] == Approx(max1960[m]).margin(0.005));
  KdeOptions opt;  // defaults: 100000 sampled values, Scott, variance-corrected
  double worst = 0;
  for (uint64_t seed = 0; seed < 4; ++seed) {
    opt.seed = seed;
    const auto sampled = levels(opt);
    for (int m = 0; m < 4; ++m) worst = std::max(worst, std::abs(sampled[m] - exact[m]));
  }
  REQUIRE(worst < 0.005);
}

TEST_CASE("Sampled KDE: stratum masses follow sample_weight and zero weights carry nothing", "[codebook]") {
  std::mt19937_64 rng(9);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> x(50000), w(50000);
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = normal(rng);
    w[i] = x[i] < 0.0 ? 0.0 : 2.0;
  }
  KdeOptions opt;
  opt.sample_size = 5000;
  opt.rule = BandwidthRule::None;
  const auto k = kde_grid_density<double>(x.data(), w.data(), 50000, opt);
  REQUIRE(grid_moments(k).mass == Approx(1.0).epsilon(1e-12));
  REQUIRE(grid_mass(k, k.start, -2.0 * k.step) == 0.0);
  w[3] = -1.0;
  REQUIRE_THROWS_AS(kde_grid_density<double>(x.data(), w.data(), 50000, opt), std::invalid_argument);
  std::fill(w.begin(), w.end(), 0.0);
  REQUIRE_THROWS_AS(kde_grid_density<double>(x.data(), w.data(), 50000, opt), std::invalid_argument);
}

TEST_CASE("KDE sampling is deterministic per seed and histogram mode spans [min, max]", "[codebook]") {
  std::mt19937_64 rng(6);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(100000);
  for (auto& v : x) v = normal(rng);
  KdeOptions opt;
  opt.sample_size = 1000;
  opt.seed = 11;
  const auto a = kde_grid_density<float>(x.data(), nullptr, 100000, opt);
  const auto b = kde_grid_density<float>(x.data(), nullptr, 100000, opt);
  REQUIRE(a.density == b.density);
  REQUIRE(a.bandwidth > 0.0);
  opt.seed = 12;
  REQUIRE(kde_grid_density<float>(x.data(), nullptr, 100000, opt).density != a.density);
  KdeOptions hist;
  hist.rule = BandwidthRule::None;
  hist.sample_size = 0;
  const auto h = kde_grid_density<float>(x.data(), nullptr, 100000, hist);
  const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
  // one padding step beyond min and max, so the end values keep their full mass
  REQUIRE(h.start + h.step == Approx(*lo));
  REQUIRE(h.start + h.step * 2046 == Approx(*hi));
  REQUIRE(h.bandwidth == 0.0);
  REQUIRE(grid_moments(h).mass == Approx(1.0).epsilon(1e-12));
  std::vector<float> same(10, 1.0f);
  const auto s = kde_grid_density<float>(same.data(), nullptr, 10, opt);  // degenerate: still a valid grid
  REQUIRE(s.step > 0.0);
  std::vector<float> bad = {1.0f, INFINITY};
  REQUIRE_THROWS_AS(kde_grid_density<float>(bad.data(), nullptr, 2, opt), std::invalid_argument);
  std::vector<float> bad_unsampled(5000, 0.5f);
  bad_unsampled[4321] = NAN;  // not in the sample of 10: found by the pass over all values
  opt.sample_size = 10;
  REQUIRE_THROWS_AS(kde_grid_density<float>(bad_unsampled.data(), nullptr, 5000, opt), std::invalid_argument);
  opt.grid_size = kMaxGridSize + 1;  // refused before anything is allocated
  REQUIRE_THROWS_AS(kde_grid_density<float>(same.data(), nullptr, 10, opt), std::invalid_argument);
  opt.grid_size = kMaxGridSize;
  REQUIRE(kde_grid_density<float>(same.data(), nullptr, 10, opt).density.size() == static_cast<size_t>(kMaxGridSize));
}
