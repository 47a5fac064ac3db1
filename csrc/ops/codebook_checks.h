// Argument checks shared by every backend of the codebook ops (kmeans_1d, kmeans_1d_optimal,
// lloyd_max, kde_grid_density, distinct_values, quantize_to_codebook).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <stdexcept>
#include <vector>

#include "core/codebook_common.h"

namespace qcnn::ops {

inline bool is_weight_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// x: [n] (one group) or [groups, n], a floating dtype, n > 0.
inline void check_grouped_values(const char* op, const at::Tensor& x, const char* name) {
  TORCH_CHECK_TYPE(is_weight_dtype(x.scalar_type()), op, ": ", name,
                   " must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 1 || x.dim() == 2, op, ": ", name, " must be 1-D [n] or 2-D [groups, n], got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(x.numel() > 0, op, ": ", name, " is empty (shape ", x.sizes(), ")");
}

inline void check_sample_weight(const char* op, const c10::optional<at::Tensor>& sample_weight, const at::Tensor& x) {
  if (!sample_weight.has_value()) return;
  const auto& w = *sample_weight;
  TORCH_CHECK_TYPE(is_weight_dtype(w.scalar_type()), op, ": sample_weight must be a floating tensor, got ",
                   w.scalar_type());
  TORCH_CHECK_VALUE(w.sizes() == x.sizes(), op, ": sample_weight must have the shape of x ", x.sizes(), ", got ",
                    w.sizes());
  TORCH_CHECK_VALUE(w.device() == x.device(), op, ": sample_weight must be on the device of x");
}

inline void check_k(const char* op, int64_t k) {
  TORCH_CHECK_VALUE(k >= 1 && k <= 32768, op, ": k must be in [1, 32768], got ", k);
}

inline void check_iterations(const char* op, int64_t max_iter, double tol) {
  TORCH_CHECK_VALUE(max_iter >= 1, op, ": max_iter must be >= 1, got ", max_iter);
  TORCH_CHECK_VALUE(tol >= 0.0 && std::isfinite(tol), op, ": tol must be finite and >= 0, got ", tol);
}

// codebook: [k] for the whole tensor or [groups, k], groups dividing w.size(0); sorted rows.
inline void check_codebook(const char* op, const at::Tensor& w, const at::Tensor& codebook) {
  TORCH_CHECK_TYPE(is_weight_dtype(w.scalar_type()), op, ": w must be float32, float64, float16 or bfloat16, got ",
                   w.scalar_type());
  TORCH_CHECK_TYPE(is_weight_dtype(codebook.scalar_type()), op, ": codebook must be a floating tensor, got ",
                   codebook.scalar_type());
  TORCH_CHECK_VALUE(w.numel() > 0, op, ": w is empty (shape ", w.sizes(), ")");
  TORCH_CHECK_VALUE(codebook.dim() == 1 || codebook.dim() == 2, op,
                    ": codebook must be [k] or [groups, k], got shape ", codebook.sizes());
  const int64_t k = codebook.size(-1);
  TORCH_CHECK_VALUE(k >= 1 && k <= 32768, op, ": codebook size k must be in [1, 32768], got ", k);
  if (codebook.dim() == 2) {
    TORCH_CHECK_VALUE(w.dim() >= 1, op, ": per-group codebooks need w with at least one dimension");
    const int64_t groups = codebook.size(0);
    TORCH_CHECK_VALUE(groups >= 1 && w.size(0) % groups == 0, op, ": codebook has ", groups,
                      " groups, which must divide w.size(0) = ", w.size(0));
  }
  TORCH_CHECK_VALUE(codebook.device() == w.device(), op, ": codebook must be on the device of w");
}

inline at::ScalarType codebook_index_dtype(int64_t k) { return k <= 256 ? at::kByte : at::kShort; }

// The nearest-codeword search of every codebook row ([k] or [groups, k], any device), built on the
// host; a row that is not finite and sorted is an error naming the row.
inline std::vector<codebook::CodebookSearch> codebook_searches(const char* op, const at::Tensor& codebook) {
  const at::Tensor rows = (codebook.dim() == 1 ? codebook.unsqueeze(0) : codebook).to(at::kCPU, at::kFloat).contiguous();
  const int64_t groups = rows.size(0), k = rows.size(1);
  std::vector<codebook::CodebookSearch> books(groups);
  for (int64_t g = 0; g < groups; ++g) {
    try {
      books[g].reset(rows.const_data_ptr<float>() + g * k, k);
    } catch (const std::invalid_argument& err) {
      TORCH_CHECK_VALUE(false, op, ": ", err.what(), " (codebook row ", g, ")");
    }
  }
  return books;
}

}  // namespace qcnn::ops
