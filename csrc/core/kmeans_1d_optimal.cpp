// Globally optimal 1-D k-means: D[m][j] = min_{m <= i <= j} D[m-1][i-1] + SSE(i..j) over the
// sorted distinct values (Wang & Song 2011). SSE(i..j) is a Monge cost, so each layer's matrix
// A[j][i] = D[m-1][i-1] + SSE(i..j) (+inf for i > j) is totally monotone and SMAWK finds all its
// row minima in O(n) (Gronlund et al. 2017, "Fast exact k-means, k-medians and Bregman
// divergence clustering in 1D").
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/kmeans_1d.h"

namespace qcnn::codebook {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Prefix moments interleaved so one cost evaluation touches two cache lines.
struct Moments {
  double w, s, q;  // prefix sums of w, w*u, w*u^2 (u = value - shift)
};

// Same sums as PrefixSums (centred on the weighted mean), built without its three separate arrays.
std::vector<Moments> prefix_moments(const WeightedValues& data, double& shift) {
  const int64_t n = data.size();
  double w_total = 0.0, wx_total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    w_total += data.weight[i];
    wx_total += data.weight[i] * data.value[i];
  }
  shift = wx_total / w_total;
  std::vector<Moments> out(static_cast<size_t>(n + 1));
  out[0] = {0.0, 0.0, 0.0};
  for (int64_t i = 0; i < n; ++i) {
    const double w = data.weight[i], u = data.value[i] - shift;
    out[i + 1] = {out[i].w + w, out[i].s + w * u, out[i].q + w * u * u};
  }
  return out;
}

// SSE of local points i..j (inclusive) of the window [base, base + n), read left to right or,
// for the backward DP, right to left. Every point has positive weight, so w > 0 for i <= j.
template <bool Reversed>
struct Cost {
  const Moments* p;
  int64_t base;
  int64_t n;
  double operator()(int64_t i, int64_t j) const {
    const Moments& lo = Reversed ? p[base + n - 1 - j] : p[base + i];
    const Moments& hi = Reversed ? p[base + n - i] : p[base + j + 1];
    const double w = hi.w - lo.w, s = hi.s - lo.s;
    const double v = (hi.q - lo.q) - s * s / w;
    return v > 0.0 ? v : 0.0;
  }
};

// Row minima of one DP layer, A[j][i] = prev[i - 1] + cost(i, j) for i <= j, +inf above the
// diagonal, by SMAWK. Rows of every recursion level form an arithmetic progression, so only the
// surviving columns are stored, in per-level buffers reused across layers.
template <typename CostT, typename Arg>
class LayerSolver {
 public:
  // One buffer per recursion level (rows halve per level, so 64 levels always suffice); sized
  // up front so references into them stay valid during the recursion.
  explicit LayerSolver(const CostT& cost) : cost_(cost), kept_(64), kept_value_(64) {}

  // Fills value[j], arg[j] for rows j in [row_lo, row_hi], searching columns [col_lo, col_hi].
  void solve(const double* prev, int64_t row_lo, int64_t row_hi, int64_t col_lo, int64_t col_hi, double* value,
             Arg* arg) {
    if (row_hi < row_lo) return;
    prev_ = prev;
    value_ = value;
    arg_ = arg;
    const int64_t cols = col_hi - col_lo + 1;
    columns_.resize(static_cast<size_t>(cols));
    for (int64_t c = 0; c < cols; ++c) columns_[c] = col_lo + c;
    run(row_lo, row_hi - row_lo + 1, 1, columns_.data(), cols, 0);
  }

  // Leftmost minimum of row j over columns [col_lo, min(col_hi, j)] by a plain scan.
  std::pair<int64_t, double> row_minimum(const double* prev, int64_t j, int64_t col_lo, int64_t col_hi) {
    prev_ = prev;
    int64_t best = col_lo;
    double best_value = a(j, col_lo);
    for (int64_t i = col_lo + 1; i <= std::min(col_hi, j); ++i) {
      const double v = a(j, i);
      if (v < best_value) {
        best_value = v;
        best = i;
      }
    }
    return {best, best_value};
  }

 private:
  const CostT& cost_;
  const double* prev_ = nullptr;
  double* value_ = nullptr;
  Arg* arg_ = nullptr;
  std::vector<int64_t> columns_;
  std::vector<std::vector<int64_t>> kept_;
  std::vector<std::vector<double>> kept_value_;

  double a(int64_t j, int64_t i) const { return i > j ? kInf : prev_[i - 1] + cost_(i, j); }

  void run(int64_t row0, int64_t nrows, int64_t stride, const int64_t* cols, int64_t ncols, size_t level) {
    if (nrows == 0) return;
    const int64_t last_row = row0 + (nrows - 1) * stride;
    if (nrows == 1) {
      int64_t best = cols[0];
      double best_value = a(row0, best);
      for (int64_t c = 1; c < ncols && cols[c] <= last_row; ++c) {
        const double v = a(row0, cols[c]);
        if (v < best_value) {
          best_value = v;
          best = cols[c];
        }
      }
      value_[row0] = best_value;
      arg_[row0] = static_cast<Arg>(best);
      return;
    }
    // REDUCE: keep at most nrows columns; kept_value[p] caches A[row p][kept[p]].
    std::vector<int64_t>& kept = kept_[level];
    std::vector<double>& kv = kept_value_[level];
    kept.clear();
    kv.clear();
    for (int64_t idx = 0; idx < ncols; ++idx) {
      const int64_t c = cols[idx];
      if (c > last_row) break;  // +inf in every remaining row
      double vc = 0.0;
      while (!kept.empty()) {
        const int64_t r = row0 + static_cast<int64_t>(kept.size() - 1) * stride;
        vc = a(r, c);
        if (kv.back() > vc) {
          kept.pop_back();
          kv.pop_back();
        } else {
          break;
        }
      }
      if (static_cast<int64_t>(kept.size()) < nrows) {
        const int64_t r = row0 + static_cast<int64_t>(kept.size()) * stride;
        kept.push_back(c);
        kv.push_back(a(r, c));
      }
    }
    run(row0 + stride, nrows / 2, stride * 2, kept.data(), static_cast<int64_t>(kept.size()), level + 1);
    // INTERPOLATE: an even row's minimum lies between its odd neighbours' minima.
    size_t ci = 0;
    for (int64_t t = 0; t < nrows; t += 2) {
      const int64_t row = row0 + t * stride;
      const int64_t last = t + 1 < nrows ? static_cast<int64_t>(arg_[row + stride]) : kept.back();
      int64_t best = kept[ci];
      double best_value = a(row, best);
      while (kept[ci] != last) {
        ++ci;
        const double v = a(row, kept[ci]);
        if (v < best_value) {
          best_value = v;
          best = kept[ci];
        }
      }
      value_[row] = best_value;
      arg_[row] = static_cast<Arg>(best);
    }
  }
};

// Layer m for rows j in [m, jmax]: cur[j] = min_i prev[i-1] + cost(i, j), arg[j] = that i.
// Layers of at least `split_rows` rows are cut at their middle row, whose minimum is found by a
// scan; the argmin is monotone in j, so the two halves are independent SMAWK problems over
// [m, pivot] and [pivot, jmax] columns and run on two threads (when not already in a parallel region).
template <typename CostT, typename Arg>
void dp_layer(const CostT& cost, LayerSolver<CostT, Arg>* solvers[2], const double* prev, int64_t m, int64_t jmax,
              double* cur, Arg* arg, int64_t split_rows) {
  if (m == 0) {
    for (int64_t j = 0; j <= jmax; ++j) {
      cur[j] = cost(0, j);
      arg[j] = 0;
    }
    return;
  }
  const int64_t rows = jmax - m + 1;
  if (rows < std::max<int64_t>(split_rows, 3)) {
    solvers[0]->solve(prev, m, jmax, m, jmax, cur, arg);
    return;
  }
  const int64_t mid = m + rows / 2;
  const auto [pivot, pivot_value] = solvers[0]->row_minimum(prev, mid, m, mid);
  cur[mid] = pivot_value;
  arg[mid] = static_cast<Arg>(pivot);
#ifdef _OPENMP
#pragma omp parallel sections num_threads(2) if (!omp_in_parallel() && rows >= (1 << 15))
#endif
  {
#ifdef _OPENMP
#pragma omp section
#endif
    solvers[0]->solve(prev, m, mid - 1, m, pivot, cur, arg);
#ifdef _OPENMP
#pragma omp section
#endif
    solvers[1]->solve(prev, mid + 1, jmax, pivot, jmax, cur, arg);
  }
}

// D[layers-1][j] for all j that leave room for `total_k - layers` clusters after j.
template <typename CostT>
std::vector<double> dp_last_layer(const CostT& cost, int64_t total_k, int64_t layers, int64_t split_rows) {
  const int64_t n = cost.n;
  std::vector<double> prev(n, kInf), cur(n, kInf);
  std::vector<int64_t> arg(n, 0);
  LayerSolver<CostT, int64_t> solver_a(cost), solver_b(cost);
  LayerSolver<CostT, int64_t>* solvers[2] = {&solver_a, &solver_b};
  for (int64_t m = 0; m < layers; ++m) {
    dp_layer(cost, solvers, prev.data(), m, n - total_k + m, cur.data(), arg.data(), split_rows);
    prev.swap(cur);
  }
  return prev;
}

// Appends the global start index of each of the kk optimal clusters of window [base, base + n).
void solve(const std::vector<Moments>& moments, int64_t base, int64_t n, int64_t kk, int64_t budget,
           int64_t split_rows, std::vector<int64_t>& starts) {
  if (kk == 1) {
    starts.push_back(base);
    return;
  }
  if (n == kk) {
    for (int64_t i = 0; i < n; ++i) starts.push_back(base + i);
    return;
  }
  const Cost<false> forward{moments.data(), base, n};
  if (static_cast<double>(kk) * static_cast<double>(n) * 4.0 <= static_cast<double>(budget)) {
    std::vector<int32_t> table(static_cast<size_t>(kk) * n, 0);
    std::vector<double> prev(n, kInf), cur(n, kInf);
    LayerSolver<Cost<false>, int32_t> solver_a(forward), solver_b(forward);
    LayerSolver<Cost<false>, int32_t>* solvers[2] = {&solver_a, &solver_b};
    for (int64_t m = 0; m + 1 < kk; ++m) {
      dp_layer(forward, solvers, prev.data(), m, n - kk + m, cur.data(), table.data() + m * n, split_rows);
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
  const Cost<true> backward{moments.data(), base, n};
  std::vector<double> left, right;
#ifdef _OPENMP
#pragma omp parallel sections num_threads(2) if (!omp_in_parallel() && n > (1 << 16))
#endif
  {
#ifdef _OPENMP
#pragma omp section
#endif
    left = dp_last_layer(forward, kk, h, split_rows);
#ifdef _OPENMP
#pragma omp section
#endif
    right = dp_last_layer(backward, kk, kk - h, split_rows);
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
  solve(moments, base, split, h, budget, split_rows, starts);
  solve(moments, base + split, n - split, kk - h, budget, split_rows, starts);
}

KMeansResult from_starts(const WeightedValues& data, const std::vector<Moments>& moments, double shift,
                         const std::vector<int64_t>& starts) {
  KMeansResult result;
  const int64_t k = static_cast<int64_t>(starts.size());
  result.centroids.resize(k);
  for (int64_t m = 0; m < k; ++m) {
    const Moments& lo = moments[starts[m]];
    const Moments& hi = moments[m + 1 < k ? starts[m + 1] : data.size()];
    result.centroids[m] = shift + (hi.s - lo.s) / (hi.w - lo.w);
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

KMeansResult kmeans_1d_optimal(const WeightedValues& data, int64_t k, int64_t table_budget_bytes,
                               int64_t split_rows) {
  check_args(data, k);
  const int64_t n = data.size();
  if (n <= k) {
    KMeansResult result;
    result.centroids = pad_distinct_values(data, k);
    return result;
  }
  if (n > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("kmeans_1d_optimal: more than 2^31 - 1 distinct values");
  double shift = 0.0;
  const std::vector<Moments> moments = prefix_moments(data, shift);
  std::vector<int64_t> starts;
  starts.reserve(k);
  solve(moments, 0, n, k, table_budget_bytes, split_rows, starts);
  return from_starts(data, moments, shift, starts);
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
  double shift = 0.0;
  const std::vector<Moments> moments = prefix_moments(data, shift);
  return from_starts(data, moments, shift, starts);
}

}  // namespace qcnn::codebook
