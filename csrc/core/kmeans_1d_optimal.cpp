// Globally optimal 1-D k-means: D[m][j] = min_{m <= i <= j} D[m-1][i-1] + SSE(i..j) over the
// sorted distinct values (Wang & Song 2011). SSE(i..j) is a Monge cost, so each layer's matrix
// A[j][i] = D[m-1][i-1] + SSE(i..j) (+inf for i > j) is totally monotone and SMAWK finds all its
// row minima in O(n) (Gronlund et al. 2017, "Fast exact k-means, k-medians and Bregman
// divergence clustering in 1D").
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/kmeans_1d.h"

namespace qcnn::codebook {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// SSE of local points i..j (inclusive) of the window [base, base + n) of the prefix sums, read
// left to right or, for the backward DP, right to left.
struct CostView {
  const PrefixSums* sums;
  int64_t base;
  int64_t n;
  bool reversed;
  double operator()(int64_t i, int64_t j) const {
    return reversed ? sums->sse(base + n - 1 - j, base + n - i) : sums->sse(base + i, base + j + 1);
  }
};

struct LayerMatrix {
  const CostView& cost;
  const double* prev;  // D[m-1][.]
  double operator()(int64_t j, int64_t i) const { return i > j ? kInf : prev[i - 1] + cost(i, j); }
};

// SMAWK row minima (leftmost) of a totally monotone matrix; writes value[row] and arg[row].
template <typename Arg>
void smawk(const std::vector<int64_t>& rows, const std::vector<int64_t>& cols_in, const LayerMatrix& a,
           double* value, Arg* arg) {
  if (rows.empty()) return;
  // REDUCE: keep at most |rows| columns that can still hold a row minimum.
  std::vector<int64_t> cols;
  cols.reserve(std::min(rows.size(), cols_in.size()));
  for (const int64_t c : cols_in) {
    while (!cols.empty()) {
      const int64_t r = rows[cols.size() - 1];
      if (a(r, cols.back()) > a(r, c)) cols.pop_back();
      else break;
    }
    if (cols.size() < rows.size()) cols.push_back(c);
  }
  std::vector<int64_t> odd;
  odd.reserve(rows.size() / 2);
  for (size_t r = 1; r < rows.size(); r += 2) odd.push_back(rows[r]);
  smawk(odd, cols, a, value, arg);
  // INTERPOLATE: an even row's minimum lies between its neighbours' minima.
  size_t ci = 0;
  for (size_t r = 0; r < rows.size(); r += 2) {
    const int64_t row = rows[r];
    const int64_t last = (r + 1 < rows.size()) ? static_cast<int64_t>(arg[rows[r + 1]]) : cols.back();
    int64_t best = cols[ci];
    double best_value = a(row, best);
    while (cols[ci] != last) {
      ++ci;
      const double v = a(row, cols[ci]);
      if (v < best_value) {
        best_value = v;
        best = cols[ci];
      }
    }
    value[row] = best_value;
    arg[row] = static_cast<Arg>(best);
  }
}

// Layer m for rows j in [m, jmax]: cur[j] = min_i prev[i-1] + cost(i, j), arg[j] = that i.
template <typename Arg>
void dp_layer(const CostView& cost, const double* prev, int64_t m, int64_t jmax, double* cur, Arg* arg) {
  if (m == 0) {
    for (int64_t j = 0; j <= jmax; ++j) {
      cur[j] = cost(0, j);
      arg[j] = 0;
    }
    return;
  }
  std::vector<int64_t> rows(static_cast<size_t>(jmax - m + 1));
  for (size_t r = 0; r < rows.size(); ++r) rows[r] = m + static_cast<int64_t>(r);
  LayerMatrix a{cost, prev};
  smawk(rows, rows, a, cur, arg);
}

// D[layers-1][j] for all j that leave room for `total_k - layers` clusters after j.
std::vector<double> dp_last_layer(const CostView& cost, int64_t total_k, int64_t layers) {
  const int64_t n = cost.n;
  std::vector<double> prev(n, kInf), cur(n, kInf);
  std::vector<int64_t> arg(n, 0);
  for (int64_t m = 0; m < layers; ++m) {
    dp_layer(cost, prev.data(), m, n - total_k + m, cur.data(), arg.data());
    prev.swap(cur);
  }
  return prev;
}

// Appends the global start index of each of the kk optimal clusters of window [base, base + n).
void solve(const PrefixSums& sums, int64_t base, int64_t n, int64_t kk, int64_t budget,
           std::vector<int64_t>& starts) {
  if (kk == 1) {
    starts.push_back(base);
    return;
  }
  if (n == kk) {
    for (int64_t i = 0; i < n; ++i) starts.push_back(base + i);
    return;
  }
  const CostView forward{&sums, base, n, false};
  if (static_cast<double>(kk) * static_cast<double>(n) * 4.0 <= static_cast<double>(budget)) {
    std::vector<int32_t> table(static_cast<size_t>(kk) * n, 0);
    std::vector<double> prev(n, kInf), cur(n, kInf);
    for (int64_t m = 0; m + 1 < kk; ++m) {
      dp_layer(forward, prev.data(), m, n - kk + m, cur.data(), table.data() + m * n);
      prev.swap(cur);
    }
    // Last layer: only j = n - 1 is needed, a single scan.
    int64_t best = kk - 1;
    double best_value = kInf;
    for (int64_t i = kk - 1; i < n; ++i) {
      const double v = prev[i - 1] + forward(i, n - 1);
      if (v < best_value) {
        best_value = v;
        best = i;
      }
    }
    std::vector<int64_t> local(kk);
    local[kk - 1] = best;
    for (int64_t m = kk - 2; m >= 0; --m) local[m] = table[m * n + (local[m + 1] - 1)];
    for (int64_t m = 0; m < kk; ++m) starts.push_back(base + local[m]);
    return;
  }
  // Hirschberg split: best left part of s points with h clusters + right part with kk - h.
  const int64_t h = kk / 2;
  const CostView backward{&sums, base, n, true};
  std::vector<double> left, right;
#ifdef _OPENMP
#pragma omp parallel sections num_threads(2) if (!omp_in_parallel() && n > (1 << 16))
#endif
  {
#ifdef _OPENMP
#pragma omp section
#endif
    left = dp_last_layer(forward, kk, h);
#ifdef _OPENMP
#pragma omp section
#endif
    right = dp_last_layer(backward, kk, kk - h);
  }
  int64_t split = h;
  double best_value = kInf;
  for (int64_t s = h; s <= n - (kk - h); ++s) {
    const double v = left[s - 1] + right[n - s - 1];
    if (v < best_value) {
      best_value = v;
      split = s;
    }
  }
  solve(sums, base, split, h, budget, starts);
  solve(sums, base + split, n - split, kk - h, budget, starts);
}

KMeansResult from_starts(const WeightedValues& data, const PrefixSums& sums, const std::vector<int64_t>& starts) {
  KMeansResult result;
  const int64_t k = static_cast<int64_t>(starts.size());
  result.centroids.resize(k);
  for (int64_t m = 0; m < k; ++m) {
    const int64_t end = m + 1 < k ? starts[m + 1] : data.size();
    result.centroids[m] = sums.mean(starts[m], end);
  }
  std::sort(result.centroids.begin(), result.centroids.end());
  result.sse = weighted_sse(data, result.centroids);
  return result;
}

void check_args(const WeightedValues& data, int64_t k) {
  if (k < 1) throw std::invalid_argument("k must be >= 1, got " + std::to_string(k));
  if (data.size() == 0) throw std::invalid_argument("x has no values with positive weight");
}

}  // namespace

KMeansResult kmeans_1d_optimal(const WeightedValues& data, int64_t k, int64_t table_budget_bytes) {
  check_args(data, k);
  const int64_t n = data.size();
  if (n <= k) {
    KMeansResult result;
    result.centroids = pad_distinct_values(data, k);
    return result;
  }
  if (n > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("kmeans_1d_optimal: more than 2^31 - 1 distinct values");
  const PrefixSums sums(data);
  std::vector<int64_t> starts;
  starts.reserve(k);
  solve(sums, 0, n, k, table_budget_bytes, starts);
  return from_starts(data, sums, starts);
}

KMeansResult kmeans_1d_optimal_quadratic(const WeightedValues& data, int64_t k) {
  check_args(data, k);
  const int64_t n = data.size();
  if (n <= k) {
    KMeansResult result;
    result.centroids = pad_distinct_values(data, k);
    return result;
  }
  const PrefixSums sums(data);
  std::vector<std::vector<double>> d(k, std::vector<double>(n, kInf));
  std::vector<std::vector<int64_t>> arg(k, std::vector<int64_t>(n, 0));
  for (int64_t j = 0; j < n; ++j) d[0][j] = sums.sse(0, j + 1);
  for (int64_t m = 1; m < k; ++m)
    for (int64_t j = m; j < n; ++j)
      for (int64_t i = m; i <= j; ++i) {
        const double v = d[m - 1][i - 1] + sums.sse(i, j + 1);
        if (v < d[m][j]) {
          d[m][j] = v;
          arg[m][j] = i;
        }
      }
  std::vector<int64_t> starts(k);
  int64_t j = n - 1;
  for (int64_t m = k - 1; m >= 0; --m) {
    starts[m] = m == 0 ? 0 : arg[m][j];
    j = starts[m] - 1;
  }
  return from_starts(data, sums, starts);
}

}  // namespace qcnn::codebook
