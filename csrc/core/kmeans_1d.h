// 1-D k-means on a sorted weighted histogram: Lloyd's algorithm in O(k log n) per iteration and
// the globally optimal partition by dynamic programming (Wang & Song 2011; Gronlund et al. 2017).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/codebook_common.h"

namespace qcnn::codebook {

enum class KMeansInit {
  KMeansPlusPlus,  // greedy D^2 sampling (Arthur & Vassilvitskii 2007), seeded, deterministic
  Quantile,        // weighted quantiles (m + 1/2) / k: centroids follow the density
  Linear,          // evenly spaced over [min, max] (Deep Compression's choice for retraining)
  Optimal,         // the minimum-SSE partition's means (kmeans_1d_optimal): for small inputs such
                   // as KDE grids, where the O(k n) DP is cheap; Lloyd then confirms the fixed point
};

// "kmeans++" | "quantile" | "linear" | "optimal"; throws std::invalid_argument naming `init` otherwise.
KMeansInit parse_kmeans_init(const std::string& name);

struct KMeansOptions {
  KMeansInit init = KMeansInit::KMeansPlusPlus;
  int64_t max_iter = 300;
  // Stop when no centroid moves by more than tol * (max - min), or when the partition is stable.
  double tol = 1e-6;
  uint64_t seed = 0;
  // When not empty: the k starting centroids (any order), used instead of `init`, e.g. the previous
  // codebook when refitting weights that moved a little (a warm start keeps the clusters' identity).
  std::vector<double> start;
};

struct KMeansResult {
  std::vector<double> centroids;  // k values, non-decreasing
  double sse = 0.0;               // weighted SSE of the data against `centroids`
  int64_t iterations = 0;
};

// Initial centroids (sorted) for Lloyd's algorithm; exposed for tests and references.
std::vector<double> kmeans_1d_init(const WeightedValues& data, const PrefixSums& sums, int64_t k,
                                   KMeansInit init, uint64_t seed);

// Lloyd's algorithm. Each iteration: boundaries = midpoints of adjacent sorted centroids (a value
// exactly on a midpoint goes to the lower cluster), found by binary search; centroids = cluster
// means from prefix sums. Empty-cluster rule: an empty cluster's centroid is moved to the data
// value farthest from its own centroid (ties: the lowest value), then centroids are re-sorted.
// With u <= k distinct values the result is pad_distinct_values (SSE 0).
KMeansResult kmeans_1d(const WeightedValues& data, int64_t k, const KMeansOptions& options);

// Minimum-SSE partition of the sorted values into k contiguous clusters. Each DP layer is a
// row-minima problem over a totally monotone matrix, solved by SMAWK in O(n); the partition is
// recovered from a k x n int32 argmin table when it fits in `table_budget_bytes` (default 1 GiB),
// otherwise by Hirschberg-style splitting (forward and backward DP meet at the middle cluster
// boundary, the two halves run on two threads), which needs O(n) memory and 1.5-2x the work.
// Total O(k n) time; memory 24 n bytes of prefix moments plus the table or O(n) rows. Layers of
// at least split_rows rows are cut in two independent halves at a scanned middle row (two threads).
KMeansResult kmeans_1d_optimal(const WeightedValues& data, int64_t k,
                               int64_t table_budget_bytes = int64_t(1) << 30, int64_t split_rows = 1 << 15);

// Reference O(k n^2) DP used by the tests.
KMeansResult kmeans_1d_optimal_quadratic(const WeightedValues& data, int64_t k);

}  // namespace qcnn::codebook
