#include "core/codebook_common.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <utility>

namespace qcnn::codebook {
namespace {

template <typename T>
using KeyOf = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

// Order-preserving map from an IEEE float to an unsigned integer: flip all bits of negatives,
// only the sign bit of positives.
template <typename T>
KeyOf<T> to_key(T v) {
  using K = KeyOf<T>;
  K bits;
  std::memcpy(&bits, &v, sizeof(T));
  constexpr K sign = K(1) << (sizeof(K) * 8 - 1);
  return (bits & sign) ? ~bits : (bits | sign);
}

template <typename T>
T from_key(KeyOf<T> key) {
  using K = KeyOf<T>;
  constexpr K sign = K(1) << (sizeof(K) * 8 - 1);
  const K bits = (key & sign) ? (key ^ sign) : ~key;
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// LSD radix sort, 11-bit digits, one counting pass for all digits; digits on which every key
// agrees are skipped (the exponent bits of typical weights).
template <typename K>
void radix_sort(std::vector<K>& keys, std::vector<double>* payload) {
  constexpr int kBits = 11;
  constexpr size_t kBuckets = size_t(1) << kBits;
  constexpr K kMask = K(kBuckets - 1);
  constexpr int kPasses = (int(sizeof(K)) * 8 + kBits - 1) / kBits;
  const size_t n = keys.size();
  if (n < 2) return;
  std::vector<size_t> counts(kPasses * kBuckets, 0);
  for (const K key : keys)
    for (int p = 0; p < kPasses; ++p) ++counts[p * kBuckets + ((key >> (p * kBits)) & kMask)];
  std::vector<K> key_tmp(n);
  std::vector<double> pay_tmp(payload ? n : 0);
  for (int p = 0; p < kPasses; ++p) {
    size_t* c = &counts[p * kBuckets];
    const int shift = p * kBits;
    if (c[(keys[0] >> shift) & kMask] == n) continue;
    size_t sum = 0;
    for (size_t b = 0; b < kBuckets; ++b) {
      const size_t cnt = c[b];
      c[b] = sum;
      sum += cnt;
    }
    if (payload) {
      for (size_t i = 0; i < n; ++i) {
        const size_t dst = c[(keys[i] >> shift) & kMask]++;
        key_tmp[dst] = keys[i];
        pay_tmp[dst] = (*payload)[i];
      }
      payload->swap(pay_tmp);
    } else {
      for (size_t i = 0; i < n; ++i) key_tmp[c[(keys[i] >> shift) & kMask]++] = keys[i];
    }
    keys.swap(key_tmp);
  }
}

}  // namespace

template <typename T>
WeightedValues sorted_unique(const T* x, const T* weight, int64_t n, const char* what) {
  static_assert(std::is_floating_point_v<T>, "sorted_unique needs float or double");
  if (n <= 0) throw std::invalid_argument(std::string(what) + " is empty");
  using K = KeyOf<T>;
  std::vector<K> keys(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i]))
      throw std::invalid_argument(std::string(what) + " contains NaN or infinite values");
    keys[i] = to_key(x[i]);
  }
  std::vector<double> w;
  if (weight) {
    w.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const double wi = static_cast<double>(weight[i]);
      if (!(wi >= 0.0) || !std::isfinite(wi))
        throw std::invalid_argument("sample_weight must be finite and >= 0");
      w[i] = wi;
    }
  }
  if (n < 1024) {  // small groups (e.g. per-channel 3x3 kernels): comparison sort is cheaper
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t(0));
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[a] < keys[b]; });
    std::vector<K> sorted_keys(order.size());
    std::vector<double> sorted_w(weight ? order.size() : 0);
    for (size_t i = 0; i < order.size(); ++i) {
      sorted_keys[i] = keys[order[i]];
      if (weight) sorted_w[i] = w[order[i]];
    }
    keys.swap(sorted_keys);
    w.swap(sorted_w);
  } else {
    radix_sort(keys, weight ? &w : nullptr);
  }
  WeightedValues out;
  out.value.reserve(keys.size());
  out.weight.reserve(keys.size());
  size_t i = 0;
  while (i < keys.size()) {
    const double v = static_cast<double>(from_key<T>(keys[i]));
    double total = 0.0;
    size_t j = i;
    // Compare values, not keys: -0.0 and +0.0 are equal values with different keys.
    while (j < keys.size() && static_cast<double>(from_key<T>(keys[j])) == v) {
      total += weight ? w[j] : 1.0;
      ++j;
    }
    if (total > 0.0) {
      out.value.push_back(v == 0.0 ? 0.0 : v);
      out.weight.push_back(total);
    }
    i = j;
  }
  return out;
}

template WeightedValues sorted_unique<float>(const float*, const float*, int64_t, const char*);
template WeightedValues sorted_unique<double>(const double*, const double*, int64_t, const char*);

template <typename T>
int64_t distinct_values_upto(const T* x, int64_t n, int64_t k, std::vector<double>& out) {
  out.clear();
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(x[i]);
    const auto it = std::lower_bound(out.begin(), out.end(), v);
    if (it != out.end() && *it == v) continue;
    out.insert(it, v == 0.0 ? 0.0 : v);
    if (static_cast<int64_t>(out.size()) > k) return k + 1;
  }
  return static_cast<int64_t>(out.size());
}

template int64_t distinct_values_upto<float>(const float*, int64_t, int64_t, std::vector<double>&);
template int64_t distinct_values_upto<double>(const double*, int64_t, int64_t, std::vector<double>&);

PrefixSums::PrefixSums(const WeightedValues& data) {
  const int64_t n = data.size();
  double w_total = 0.0, wx_total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    w_total += data.weight[i];
    wx_total += data.weight[i] * data.value[i];
  }
  shift = w_total > 0.0 ? wx_total / w_total : 0.0;
  s0.assign(n + 1, 0.0);
  s1.assign(n + 1, 0.0);
  s2.assign(n + 1, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const double w = data.weight[i];
    const double u = data.value[i] - shift;
    s0[i + 1] = s0[i] + w;
    s1[i + 1] = s1[i] + w * u;
    s2[i + 1] = s2[i] + w * u * u;
  }
}

std::vector<double> pad_distinct_values(const WeightedValues& data, int64_t k) {
  std::vector<double> out(data.value.begin(), data.value.end());
  if (out.empty()) throw std::invalid_argument("no values with positive weight");
  out.resize(static_cast<size_t>(k), out.back());
  return out;
}

double weighted_sse(const WeightedValues& data, const std::vector<double>& centroids) {
  const int64_t k = static_cast<int64_t>(centroids.size());
  std::vector<double> mids(k > 0 ? k - 1 : 0);
  for (int64_t m = 0; m + 1 < k; ++m) mids[m] = 0.5 * (centroids[m] + centroids[m + 1]);
  double total = 0.0;
  int64_t m = 0;
  for (int64_t i = 0; i < data.size(); ++i) {  // data sorted: the cluster index only grows
    const double x = data.value[i];
    while (m < k - 1 && mids[m] < x) ++m;
    const double d = x - centroids[m];
    total += data.weight[i] * d * d;
  }
  return total;
}

void CodebookSearch::reset(const float* codebook, int64_t k) {
  if (k < 1) throw std::invalid_argument("codebook must have at least one entry");
  k_ = k;
  codebook_.assign(codebook, codebook + k);
  midpoints_.resize(k - 1);
  first_of_run_.resize(k);
  for (int64_t m = 0; m < k; ++m) {
    if (!std::isfinite(codebook_[m]))
      throw std::invalid_argument("codebook contains NaN or infinite values");
    if (m > 0 && codebook_[m] < codebook_[m - 1])
      throw std::invalid_argument("codebook must be sorted in non-decreasing order");
    first_of_run_[m] = (m > 0 && codebook_[m] == codebook_[m - 1]) ? first_of_run_[m - 1] : m;
    if (m + 1 < k)
      midpoints_[m] = 0.5 * (static_cast<double>(codebook_[m]) + static_cast<double>(codebook[m + 1]));
  }
}

}  // namespace qcnn::codebook
