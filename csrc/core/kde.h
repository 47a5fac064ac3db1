// Sampled Gaussian kernel density estimate on a uniform grid (Seo & Kim 2019, KDE-KM / KDE-LM).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qcnn::codebook {

enum class BandwidthRule {
  Scott,      // factor = m_eff^(-1/5)            (scipy.stats.gaussian_kde "scott")
  Silverman,  // factor = (3 m_eff / 4)^(-1/5)    (scipy.stats.gaussian_kde "silverman")
  Factor,     // factor given; like a scalar bw_method of gaussian_kde
  None,       // no smoothing: the linearly binned histogram of the (sampled) values
};
BandwidthRule parse_bandwidth_rule(const std::string& name);  // "scott" | "silverman" | "factor" | "none"

// The most grid points a density may have (grid_size float64 values per group).
constexpr int64_t kMaxGridSize = int64_t(1) << 20;

struct KdeOptions {
  int64_t sample_size = 100000;  // <= 0 or >= n: use every value
  BandwidthRule rule = BandwidthRule::Scott;
  double factor = 1.0;           // used by BandwidthRule::Factor
  int64_t grid_size = 2048;
  uint64_t seed = 0;
};

struct KdeGrid {
  double start = 0.0, step = 0.0;  // grid point i is start + i * step
  double bandwidth = 0.0;          // kernel standard deviation (after the variance correction)
  std::vector<double> density;     // grid_size values, integrates to ~1
};

// Estimates the density of all n values from a sample, on grid_size points that span
// [min - 3h, max + 3h] of all n values plus one grid step on each side (so that the values at
// min and max keep their full mass under the linearly interpolated density).
//
// Sample (n > sample_size = m): one value drawn uniformly from each of m equal blocks of indices
// (seeded); one pass over all n values then
//  - takes exactly every value below the sample's 9th smallest or above its 9th largest (the tails,
//    each with its own weight), and
//  - sums the weight of the values in each of 64 equal-width strata between those two, so that the
//    sampled values of a stratum are reweighted to carry exactly its mass (post-stratification;
//    a stratum with mass and no sampled value spreads its mass uniformly over its width).
// Without sampling (sample_size <= 0 or >= n) every value enters with its own weight.
//
// Kernel: the sampled values (every value without sampling) x_i contribute w_i N(y; c + a (x_i - c),
// (a h)^2), the exact tail values w_i delta(y - x_i) (linearly binned), all over sum_i w_i.
// h = factor * std (the weighted std of all points, scipy's ddof = 1 rule); c and s^2 are the
// weighted mean and variance of the smoothed points and a = sqrt(s^2 / (s^2 + h^2)): their plain KDE
// rescaled about c, so it keeps their variance s^2 instead of inflating it to s^2 + h^2
// (variance-corrected KDE, Jones 1991), while the tails stay where they are; KdeGrid::bandwidth is
// the kernel std a h actually used. Scott's and Silverman's factors use the effective sample size
// m_eff = n_eff / (1 - f), f = m / n the sampled fraction (finite-population correction): without
// sampling h = 0 and the estimate is the exact linearly binned histogram. Evaluation: the kernel is
// truncated at 7h; small point sets are summed directly, larger ones are linearly binned onto the
// grid and convolved with the sampled, renormalised kernel (Wand 1994), O(grid_size * kernel width).
template <typename T>
KdeGrid kde_grid_density(const T* x, const T* weight, int64_t n, const KdeOptions& options);

// Bandwidth factor (h / std) for n_eff = (sum w)^2 / sum w^2 effective samples drawn as the fraction
// sampled_fraction in [0, 1] of the values: scipy's rule for n_eff / (1 - sampled_fraction)
// (0 when sampled_fraction is 1); the Factor rule returns factor unchanged, None returns 0.
double bandwidth_factor(BandwidthRule rule, double factor, double n_eff, double sampled_fraction = 0.0);

}  // namespace qcnn::codebook
