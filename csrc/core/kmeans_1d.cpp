#include "core/kmeans_1d.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace qcnn::codebook {
namespace {

void check_k(int64_t k) {
  if (k < 1) throw std::invalid_argument("k must be >= 1, got " + std::to_string(k));
}

// Index of the first value > t, searching [lo, n).
int64_t first_above(const std::vector<double>& value, int64_t lo, double t) {
  return std::upper_bound(value.begin() + lo, value.end(), t) - value.begin();
}

// bounds[m]..bounds[m+1] is cluster m for sorted centroids c (ties to the lower cluster).
void cluster_bounds(const std::vector<double>& value, const std::vector<double>& c,
                    std::vector<int64_t>& bounds) {
  const int64_t k = static_cast<int64_t>(c.size());
  bounds[0] = 0;
  for (int64_t m = 0; m + 1 < k; ++m) bounds[m + 1] = first_above(value, bounds[m], 0.5 * (c[m] + c[m + 1]));
  bounds[k] = static_cast<int64_t>(value.size());
}

// Potential sum w * min_c (x - c)^2 of the data against sorted centres, in O(k log n).
double potential(const WeightedValues& data, const PrefixSums& sums, const std::vector<double>& centres,
                 std::vector<int64_t>& bounds, std::vector<double>& cost) {
  const int64_t k = static_cast<int64_t>(centres.size());
  bounds.resize(k + 1);
  cost.resize(k);
  cluster_bounds(data.value, centres, bounds);
  double total = 0.0;
  for (int64_t m = 0; m < k; ++m) {
    cost[m] = sums.sse_around(bounds[m], bounds[m + 1], centres[m]);
    total += cost[m];
  }
  return total;
}

// One D^2 draw of k-means++ in O(k + log n): the data nearest each current centre form a
// contiguous run whose cost sum w (x - c)^2 comes from prefix sums, and so does any prefix of it.
double sample_d2(const WeightedValues& data, const PrefixSums& sums, const std::vector<double>& centres,
                 const std::vector<int64_t>& bounds, const std::vector<double>& cost, double total,
                 SplitMix64& rng) {
  const int64_t k = static_cast<int64_t>(centres.size());
  double target = rng.uniform() * total;
  int64_t m = 0;
  while (m + 1 < k && (target >= cost[m] || cost[m] <= 0.0)) {
    target -= cost[m];
    ++m;
  }
  const int64_t lo = bounds[m], hi = bounds[m + 1];
  // Smallest j in (lo, hi] whose prefix cost exceeds target; the chosen value is j - 1.
  int64_t a = lo + 1, b = hi;
  while (a < b) {
    const int64_t mid = a + (b - a) / 2;
    if (sums.sse_around(lo, mid, centres[m]) > target) b = mid;
    else a = mid + 1;
  }
  int64_t pick = std::min(std::max(a - 1, lo), hi - 1);
  if (data.value[pick] == centres[m]) {  // rounding landed on a zero-cost point: take the far end
    pick = (centres[m] - data.value[lo] >= data.value[hi - 1] - centres[m]) ? lo : hi - 1;
  }
  return data.value[pick];
}

// Greedy k-means++ (as scikit-learn): each step draws 2 + floor(ln k) candidates by D^2 sampling
// and keeps the one that lowers the potential most (first drawn wins ties).
std::vector<double> kmeans_plus_plus(const WeightedValues& data, const PrefixSums& sums, int64_t k, uint64_t seed) {
  const int64_t n = data.size();
  SplitMix64 rng(seed);
  std::vector<double> centres;
  centres.reserve(k + 1);
  const double target = rng.uniform() * sums.s0[n];
  const int64_t first = std::upper_bound(sums.s0.begin() + 1, sums.s0.end(), target) - sums.s0.begin() - 1;
  centres.push_back(data.value[std::min(std::max<int64_t>(first, 0), n - 1)]);
  const int64_t trials = 2 + static_cast<int64_t>(std::log(static_cast<double>(k)));
  std::vector<int64_t> bounds, trial_bounds;
  std::vector<double> cost, trial_cost, candidate;
  double total = potential(data, sums, centres, bounds, cost);
  while (static_cast<int64_t>(centres.size()) < std::min(k, n) && total > 0.0) {
    double best_value = 0.0, best_total = std::numeric_limits<double>::infinity();
    for (int64_t t = 0; t < trials; ++t) {
      const double v = sample_d2(data, sums, centres, bounds, cost, total, rng);
      candidate = centres;
      candidate.insert(std::upper_bound(candidate.begin(), candidate.end(), v), v);
      const double after = potential(data, sums, candidate, trial_bounds, trial_cost);
      if (after < best_total) {
        best_total = after;
        best_value = v;
      }
    }
    centres.insert(std::upper_bound(centres.begin(), centres.end(), best_value), best_value);
    total = potential(data, sums, centres, bounds, cost);
  }
  centres.resize(k, centres.back());
  return centres;
}

}  // namespace

KMeansInit parse_kmeans_init(const std::string& name) {
  if (name == "kmeans++" || name == "k-means++") return KMeansInit::KMeansPlusPlus;
  if (name == "quantile") return KMeansInit::Quantile;
  if (name == "linear") return KMeansInit::Linear;
  if (name == "optimal") return KMeansInit::Optimal;
  throw std::invalid_argument("init must be 'kmeans++', 'quantile', 'linear' or 'optimal', got '" + name + "'");
}

std::vector<double> kmeans_1d_init(const WeightedValues& data, const PrefixSums& sums, int64_t k,
                                   KMeansInit init, uint64_t seed) {
  check_k(k);
  const int64_t n = data.size();
  if (n == 0) throw std::invalid_argument("x has no values with positive weight");
  std::vector<double> c(static_cast<size_t>(k));
  const double total = sums.s0[n];
  if (k == 1) {
    c[0] = sums.mean(0, n);
    return c;
  }
  switch (init) {
    case KMeansInit::Linear: {
      const double lo = data.value.front(), hi = data.value.back();
      for (int64_t m = 0; m < k; ++m) c[m] = lo + (hi - lo) * static_cast<double>(m) / static_cast<double>(k - 1);
      c[k - 1] = hi;
      break;
    }
    case KMeansInit::Quantile: {
      for (int64_t m = 0; m < k; ++m) {
        const double target = (static_cast<double>(m) + 0.5) / static_cast<double>(k) * total;
        // first value whose cumulative weight reaches the target
        int64_t j = std::lower_bound(sums.s0.begin() + 1, sums.s0.end(), target) - sums.s0.begin() - 1;
        c[m] = data.value[std::min(std::max<int64_t>(j, 0), n - 1)];
      }
      break;
    }
    case KMeansInit::KMeansPlusPlus:
      c = kmeans_plus_plus(data, sums, k, seed);
      break;
    case KMeansInit::Optimal:
      c = kmeans_1d_optimal(data, k).centroids;
      break;
  }
  std::sort(c.begin(), c.end());
  return c;
}

KMeansResult kmeans_1d(const WeightedValues& data, int64_t k, const KMeansOptions& options) {
  check_k(k);
  if (options.max_iter < 1) throw std::invalid_argument("max_iter must be >= 1");
  if (!(options.tol >= 0.0)) throw std::invalid_argument("tol must be >= 0");
  const int64_t n = data.size();
  if (n == 0) throw std::invalid_argument("x has no values with positive weight");
  KMeansResult result;
  if (n <= k) {
    result.centroids = pad_distinct_values(data, k);
    return result;
  }
  if (!options.start.empty()) {
    if (static_cast<int64_t>(options.start.size()) != k)
      throw std::invalid_argument("start needs k = " + std::to_string(k) + " centroids, got " +
                                  std::to_string(options.start.size()));
    for (double v : options.start)
      if (!std::isfinite(v)) throw std::invalid_argument("start centroids must be finite");
  }
  const PrefixSums sums(data);
  std::vector<double> c = options.start;
  if (c.empty()) c = kmeans_1d_init(data, sums, k, options.init, options.seed);
  else std::sort(c.begin(), c.end());
  const double move_tol = options.tol * (data.value.back() - data.value.front());
  std::vector<int64_t> bounds(k + 1), previous(k + 1, -1);
  std::vector<double> next(k);
  std::vector<std::pair<double, double>> far;  // (distance, value) of cluster end points
  for (int64_t iter = 1; iter <= options.max_iter; ++iter) {
    result.iterations = iter;
    cluster_bounds(data.value, c, bounds);
    if (bounds == previous) break;  // same partition: the means are the current centroids
    int64_t empty = 0;
    for (int64_t m = 0; m < k; ++m) {
      if (bounds[m + 1] > bounds[m]) next[m] = sums.mean(bounds[m], bounds[m + 1]);
      else ++empty;
    }
    if (empty > 0) {
      // Empty-cluster rule: candidates are the two end points of every non-empty cluster, ranked
      // by distance to their cluster's new centroid (ties: lower value); empties take them in order.
      far.clear();
      for (int64_t m = 0; m < k; ++m) {
        if (bounds[m + 1] == bounds[m]) continue;
        const double lo = data.value[bounds[m]], hi = data.value[bounds[m + 1] - 1];
        if (next[m] - lo > 0.0) far.emplace_back(next[m] - lo, lo);
        if (hi - next[m] > 0.0 && hi != lo) far.emplace_back(hi - next[m], hi);
      }
      std::sort(far.begin(), far.end(), [](const auto& a, const auto& b) {
        return a.first != b.first ? a.first > b.first : a.second < b.second;
      });
      size_t used = 0;
      for (int64_t m = 0; m < k; ++m) {
        if (bounds[m + 1] > bounds[m]) continue;
        next[m] = used < far.size() ? far[used++].second : c[m];  // none left: keep the centroid
      }
      std::sort(next.begin(), next.end());
    }
    double moved = 0.0;
    for (int64_t m = 0; m < k; ++m) moved = std::max(moved, std::abs(next[m] - c[m]));
    c.swap(next);
    previous = bounds;
    if (empty == 0 && moved <= move_tol) break;
  }
  result.centroids = c;
  result.sse = weighted_sse(data, c);
  return result;
}

}  // namespace qcnn::codebook
