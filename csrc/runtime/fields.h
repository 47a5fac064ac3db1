// Checked access to the untrusted JSON metadata and tensors of a .qcnn file, shared by the op parsers.
// Every error is a FormatError that names where it happened and the field, and never echoes untrusted JSON.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/safetensors.h"

namespace qcnn::runtime {

using json = nlohmann::json;

constexpr int64_t kMaxDim = int64_t{1} << 24;

[[noreturn]] inline void fail(const std::string& where, const std::string& what) {
  throw FormatError(where + ": " + what);
}

// a * b and a + b for non-negative a and b, INT64_MAX where they overflow (a count that can only pass a limit).
inline int64_t saturating_mul(int64_t a, int64_t b) {
  int64_t r = 0;
  return __builtin_mul_overflow(a, b, &r) ? INT64_MAX : r;
}
inline int64_t saturating_add(int64_t a, int64_t b) {
  int64_t r = 0;
  return __builtin_add_overflow(a, b, &r) ? INT64_MAX : r;
}

// Product of positive dimensions, each <= kMaxDim; FormatError past `limit`.
inline int64_t checked_numel(const std::vector<int64_t>& s, const std::string& where, int64_t limit = int64_t{1} << 40) {
  int64_t n = 1;
  for (auto d : s)
    if (__builtin_mul_overflow(n, d, &n) || n > limit) fail(where, "shape " + shape_str(s) + " is too large");
  return n;
}

inline const json& field(const json& obj, const char* key, const std::string& where) {
  if (!obj.is_object() || !obj.contains(key)) fail(where, std::string("missing field '") + key + "'");
  return obj[key];
}

// `v` as an integer in [lo, hi]; `what` names it in the errors ("field 'k'", "field 'k' entry").
inline int64_t json_int(const json& v, const std::string& what, const std::string& where, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) fail(where, what + " must be an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) fail(where, what + " is out of range");
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    fail(where, what + " = " + std::to_string(x) + " outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return x;
}

inline int64_t get_int(const json& obj, const char* key, const std::string& where, int64_t lo, int64_t hi) {
  return json_int(field(obj, key, where), std::string("field '") + key + "'", where, lo, hi);
}

inline int32_t get_int32(const json& obj, const char* key, const std::string& where, int64_t lo = INT32_MIN,
                         int64_t hi = INT32_MAX) {
  return static_cast<int32_t>(get_int(obj, key, where, lo, hi));
}

inline std::vector<int64_t> get_ints(const json& obj, const char* key, const std::string& where, size_t count,
                                     int64_t lo, int64_t hi) {
  const json& v = field(obj, key, where);
  if (!v.is_array() || (count && v.size() != count) || v.size() > 8)
    fail(where, std::string("field '") + key + "' must be an array of " + (count ? std::to_string(count) : "a few") +
                    " integers");
  std::vector<int64_t> out;
  for (const json& e : v) out.push_back(json_int(e, std::string("field '") + key + "' entry", where, lo, hi));
  return out;
}

// An optional pair field (e.g. dilation), `fallback` when absent.
inline std::vector<int64_t> get_pair_or(const json& obj, const char* key, const std::string& where, int64_t fallback,
                                        int64_t lo, int64_t hi) {
  if (!obj.contains(key)) return {fallback, fallback};
  return get_ints(obj, key, where, 2, lo, hi);
}

inline std::string get_string(const json& obj, const char* key, const std::string& where) {
  const json& v = field(obj, key, where);
  if (!v.is_string()) fail(where, std::string("field '") + key + "' must be a string");
  return v.get<std::string>();
}

template <typename T>
std::vector<T> copy_tensor(const TensorView& t) {
  std::vector<T> out(static_cast<size_t>(t.numel()));
  if (t.bytes) std::memcpy(out.data(), t.data, static_cast<size_t>(t.bytes));
  return out;
}

template <typename T>
void require_finite(const std::vector<T>& v, const std::string& what) {
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i])) fail(what, "entry " + std::to_string(i) + " is not finite");
}

}  // namespace qcnn::runtime
