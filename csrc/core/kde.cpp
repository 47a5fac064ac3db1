#include "core/kde.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "core/codebook_common.h"

namespace qcnn::codebook {
namespace {

constexpr double kTruncation = 7.0;        // kernel support in bandwidths
constexpr int64_t kDirectSumLimit = 256;   // below this many samples, sum kernels directly
constexpr double kInvSqrt2Pi = 0.398942280401432677939946;

}  // namespace

BandwidthRule parse_bandwidth_rule(const std::string& name) {
  if (name == "scott") return BandwidthRule::Scott;
  if (name == "silverman") return BandwidthRule::Silverman;
  if (name == "factor") return BandwidthRule::Factor;
  if (name == "none") return BandwidthRule::None;
  throw std::invalid_argument("bandwidth must be 'scott', 'silverman', 'factor' or 'none', got '" + name + "'");
}

double bandwidth_factor(BandwidthRule rule, double factor, double n_eff) {
  switch (rule) {
    case BandwidthRule::Scott: return std::pow(n_eff, -0.2);
    case BandwidthRule::Silverman: return std::pow(n_eff * 0.75, -0.2);
    case BandwidthRule::Factor: return factor;
    case BandwidthRule::None: return 0.0;
  }
  return 0.0;
}

template <typename T>
KdeGrid kde_grid_density(const T* x, const T* weight, int64_t n, const KdeOptions& options) {
  if (n <= 0) throw std::invalid_argument("x is empty");
  if (options.grid_size < 2) throw std::invalid_argument("grid_size must be >= 2");
  if (options.rule == BandwidthRule::Factor && !(options.factor > 0.0 && std::isfinite(options.factor)))
    throw std::invalid_argument("bandwidth factor must be finite and > 0");
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(x[i]);
    if (!std::isfinite(v)) throw std::invalid_argument("x contains NaN or infinite values");
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  // Sample without replacement (Floyd): indices in a deterministic order for a given seed.
  std::vector<int64_t> sample;
  const bool all = options.sample_size <= 0 || options.sample_size >= n;
  if (all) {
    sample.resize(n);
    for (int64_t i = 0; i < n; ++i) sample[i] = i;
  } else {
    const int64_t m = options.sample_size;
    std::vector<uint8_t> taken(static_cast<size_t>(n), 0);
    SplitMix64 rng(options.seed);
    sample.reserve(m);
    for (int64_t j = n - m; j < n; ++j) {
      int64_t t = static_cast<int64_t>(rng.below(static_cast<uint64_t>(j + 1)));
      if (taken[t]) t = j;
      taken[t] = 1;
      sample.push_back(t);
    }
  }
  std::vector<double> sx(sample.size()), sw(sample.size());
  double w_sum = 0.0, w2_sum = 0.0, wx_sum = 0.0;
  for (size_t s = 0; s < sample.size(); ++s) {
    sx[s] = static_cast<double>(x[sample[s]]);
    const double w = weight ? static_cast<double>(weight[sample[s]]) : 1.0;
    if (!(w >= 0.0) || !std::isfinite(w)) throw std::invalid_argument("sample_weight must be finite and >= 0");
    sw[s] = w;
    w_sum += w;
    w2_sum += w * w;
    wx_sum += w * sx[s];
  }
  if (!(w_sum > 0.0)) throw std::invalid_argument("the sampled values have zero total sample_weight");
  KdeGrid out;
  const double n_eff = w_sum * w_sum / w2_sum;
  if (options.rule != BandwidthRule::None && n_eff > 1.0) {
    // np.cov(aweights=w, ddof=1): sum w (x - mean)^2 / (sum w - sum w^2 / sum w)
    const double mean = wx_sum / w_sum;
    double ss = 0.0;
    for (size_t s = 0; s < sx.size(); ++s) ss += sw[s] * (sx[s] - mean) * (sx[s] - mean);
    const double var = ss / (w_sum - w2_sum / w_sum);
    out.bandwidth = std::sqrt(std::max(var, 0.0)) * bandwidth_factor(options.rule, options.factor, n_eff);
  }
  const double h = out.bandwidth;
  const int64_t g = options.grid_size;
  double start = lo - 3.0 * h, end = hi + 3.0 * h;
  if (!(end > start)) {  // all values equal and no smoothing: any small grid around the value
    const double pad = 0.5 * std::max(std::abs(lo), 1.0);
    start = lo - pad;
    end = lo + pad;
  }
  out.start = start;
  out.step = (end - start) / static_cast<double>(g - 1);
  const double step = out.step;
  out.density.assign(g, 0.0);
  if (h > 0.0 && static_cast<int64_t>(sx.size()) <= kDirectSumLimit) {
    const double norm = kInvSqrt2Pi / (h * w_sum);
    for (size_t s = 0; s < sx.size(); ++s) {
      const int64_t first = std::max<int64_t>(0, static_cast<int64_t>(std::ceil((sx[s] - kTruncation * h - start) / step)));
      const int64_t last = std::min<int64_t>(g - 1, static_cast<int64_t>(std::floor((sx[s] + kTruncation * h - start) / step)));
      for (int64_t i = first; i <= last; ++i) {
        const double t = (start + step * static_cast<double>(i) - sx[s]) / h;
        out.density[i] += sw[s] * norm * std::exp(-0.5 * t * t);
      }
    }
    return out;
  }
  // Linear binning: each value splits its weight between its two neighbouring grid points.
  std::vector<double> binned(g, 0.0);
  for (size_t s = 0; s < sx.size(); ++s) {
    const double pos = std::min(std::max((sx[s] - start) / step, 0.0), static_cast<double>(g - 1));
    const int64_t i = std::min<int64_t>(static_cast<int64_t>(pos), g - 2);
    const double frac = pos - static_cast<double>(i);
    binned[i] += sw[s] * (1.0 - frac);
    binned[i + 1] += sw[s] * frac;
  }
  if (h <= 0.0) {
    for (int64_t i = 0; i < g; ++i) out.density[i] = binned[i] / (w_sum * step);
    return out;
  }
  const int64_t radius = std::min<int64_t>(g - 1, static_cast<int64_t>(std::ceil(kTruncation * h / step)));
  std::vector<double> kernel(2 * radius + 1);
  for (int64_t j = -radius; j <= radius; ++j) {
    const double t = static_cast<double>(j) * step / h;
    kernel[j + radius] = kInvSqrt2Pi / (h * w_sum) * std::exp(-0.5 * t * t);
  }
  for (int64_t i = 0; i < g; ++i) {
    const int64_t j_lo = std::max<int64_t>(0, i - radius), j_hi = std::min<int64_t>(g - 1, i + radius);
    double acc = 0.0;
    for (int64_t j = j_lo; j <= j_hi; ++j) acc += binned[j] * kernel[j - i + radius];
    out.density[i] = acc;
  }
  return out;
}

template KdeGrid kde_grid_density<float>(const float*, const float*, int64_t, const KdeOptions&);
template KdeGrid kde_grid_density<double>(const double*, const double*, int64_t, const KdeOptions&);

}  // namespace qcnn::codebook
