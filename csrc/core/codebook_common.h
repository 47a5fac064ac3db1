// Shared pieces of the 1-D codebook fitters: the sorted histogram of distinct values, prefix
// sums for O(1) cluster statistics, a seeded portable RNG, and the nearest-codeword search.
// Torch-free; errors are std::invalid_argument naming the argument.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/quantize.h"  // QCNN_HOST_DEVICE

namespace qcnn::codebook {

// Distinct values in ascending order with their total (positive) weights. Values with total
// weight 0 are dropped: they cannot change any weighted SSE.
struct WeightedValues {
  std::vector<double> value;
  std::vector<double> weight;
  int64_t size() const { return static_cast<int64_t>(value.size()); }
};

// Sorts x (LSD radix sort on the IEEE bit pattern, O(n)) and merges equal values, summing
// `weight` (nullptr: every weight is 1). Throws std::invalid_argument if x holds NaN/inf or a
// weight is negative or not finite. `what` names x in the message.
template <typename T>
WeightedValues sorted_unique(const T* x, const T* weight, int64_t n, const char* what = "x");

// Prefix sums of w, w*u and w*u^2 with u = value - shift (shift = weighted mean): centring keeps
// SSE = S2 - S1^2 / S0 free of the cancellation that raw moments suffer far from zero.
struct PrefixSums {
  double shift = 0.0;
  std::vector<double> s0, s1, s2;  // size n + 1, s[i] = sum over the first i values

  explicit PrefixSums(const WeightedValues& data);
  // Weighted SSE of values [i, j) around their own mean.
  double sse(int64_t i, int64_t j) const {
    const double w = s0[j] - s0[i];
    if (w <= 0.0) return 0.0;
    const double m1 = s1[j] - s1[i];
    const double v = (s2[j] - s2[i]) - m1 * m1 / w;
    return v > 0.0 ? v : 0.0;
  }
  // Weighted SSE of values [i, j) around the point c (in data units).
  double sse_around(int64_t i, int64_t j, double c) const {
    const double u = c - shift;
    const double v = (s2[j] - s2[i]) - 2.0 * u * (s1[j] - s1[i]) + u * u * (s0[j] - s0[i]);
    return v > 0.0 ? v : 0.0;
  }
  double mean(int64_t i, int64_t j) const { return shift + (s1[j] - s1[i]) / (s0[j] - s0[i]); }
};

// SplitMix64: tiny, seedable, identical on every platform (std distributions are not).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  uint64_t below(uint64_t bound) {  // [0, bound), Lemire's multiply-shift (bias < 2^-64 * bound)
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * bound) >> 64);
  }

 private:
  uint64_t state_;
};

// When a group has u <= k distinct values the codebook is those u values followed by k - u
// copies of the largest one (documented padding rule; its SSE is 0).
std::vector<double> pad_distinct_values(const WeightedValues& data, int64_t k);

// The distinct values of x in ascending order when there are at most k of them (returns their
// count); otherwise returns k + 1 (out then holds k + 1 of them). O(n log k).
template <typename T>
int64_t distinct_values_upto(const T* x, int64_t n, int64_t k, std::vector<double>& out);

// Exact weighted SSE of sorted data against sorted centroids (nearest centroid).
double weighted_sse(const WeightedValues& data, const std::vector<double>& centroids);

// Index of the first element of a sorted array that is >= x (branchless binary search).
QCNN_HOST_DEVICE inline int64_t lower_bound_index(const double* sorted, int64_t len, double x) {
  if (len <= 0) return 0;
  const double* base = sorted;
  int64_t n = len;
  while (n > 1) {
    const int64_t half = n / 2;
    base = (base[half] < x) ? base + half : base;
    n -= half;
  }
  return (base - sorted) + (*base < x);
}

// Nearest-codeword search over a non-decreasing codebook, ties to the lower index. The
// midpoints of two floats are exact in double, so "x <= midpoint" decides |x - c_m| <= |x - c_m+1|
// exactly; duplicate codewords map to the first of their run.
class CodebookSearch {
 public:
  CodebookSearch() = default;
  CodebookSearch(const float* codebook, int64_t k) { reset(codebook, k); }
  void reset(const float* codebook, int64_t k);
  int64_t nearest(double x) const {
    return first_of_run_[lower_bound_index(midpoints_.data(), k_ - 1, x)];
  }
  float codeword(int64_t i) const { return codebook_[i]; }
  int64_t size() const { return k_; }
  // The search tables, for device kernels that apply the same rule: k - 1 midpoints, and for
  // each index the first index holding the same codeword.
  const double* midpoints() const { return midpoints_.data(); }
  const int64_t* first_of_run() const { return first_of_run_.data(); }

 private:
  int64_t k_ = 0;
  std::vector<float> codebook_;
  std::vector<double> midpoints_;
  std::vector<int64_t> first_of_run_;
};

}  // namespace qcnn::codebook
