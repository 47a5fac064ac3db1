// Sampled Gaussian kernel density estimate on a uniform grid (Seo & Kim 2019, KDE-KM / KDE-LM).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qcnn::codebook {

enum class BandwidthRule {
  Scott,      // factor = n_eff^(-1/5)            (scipy.stats.gaussian_kde "scott")
  Silverman,  // factor = (3 n_eff / 4)^(-1/5)    (scipy.stats.gaussian_kde "silverman")
  Factor,     // factor given; like a scalar bw_method of gaussian_kde
  None,       // no smoothing: the linearly binned histogram of the (sampled) values
};
BandwidthRule parse_bandwidth_rule(const std::string& name);  // "scott" | "silverman" | "factor" | "none"

struct KdeOptions {
  int64_t sample_size = 10000;  // <= 0 or >= n: use every value
  BandwidthRule rule = BandwidthRule::Scott;
  double factor = 1.0;          // used by BandwidthRule::Factor
  int64_t grid_size = 2048;
  uint64_t seed = 0;
};

struct KdeGrid {
  double start = 0.0, step = 0.0;  // grid point i is start + i * step
  double bandwidth = 0.0;          // kernel standard deviation h = factor * weighted sample std
  std::vector<double> density;     // grid_size values, integrates to ~1
};

// Draws sample_size values without replacement (Floyd's algorithm, seeded), estimates
// p(y) = sum_i w_i N(y; x_i, h^2) / sum_i w_i with h from the rule, and evaluates it on
// grid_size points spanning [min - 3h, max + 3h] of all n values. Evaluation: the kernel is
// truncated at 7h; small samples are summed directly, larger ones are linearly binned onto the
// grid and convolved with the sampled kernel (Wand 1994), O(grid_size * kernel width).
template <typename T>
KdeGrid kde_grid_density(const T* x, const T* weight, int64_t n, const KdeOptions& options);

// scipy-compatible bandwidth factor for n_eff = (sum w)^2 / sum w^2 effective samples.
double bandwidth_factor(BandwidthRule rule, double factor, double n_eff);

}  // namespace qcnn::codebook
