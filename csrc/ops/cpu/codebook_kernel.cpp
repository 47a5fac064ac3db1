// CPU kernels of the codebook ops: adapt tensors onto csrc/core and run the groups (rows) in
// parallel with at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "core/codebook_common.h"
#include "core/kde.h"
#include "core/kmeans_1d.h"
#include "core/lloyd_max.h"
#include "ops/codebook_checks.h"

namespace qcnn::ops {
namespace {

namespace cb = qcnn::codebook;

// float64 stays float64; float32/float16/bfloat16 values are all exact in float32.
at::ScalarType working_dtype(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor as_rows(const at::Tensor& x, at::ScalarType dtype) {
  return (x.dim() == 1 ? x.unsqueeze(0) : x).to(dtype).contiguous();
}

at::Tensor drop_group_dim(const at::Tensor& t, bool one_group_input) { return one_group_input ? t.squeeze(0) : t; }

// Runs fn(g) for every group in parallel; core errors become ValueErrors naming the op.
template <typename F>
void for_each_group(const char* op, int64_t groups, const F& fn) {
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      try {
        fn(g);
      } catch (const std::invalid_argument& err) {
        TORCH_CHECK_VALUE(false, op, ": ", err.what(), " (group ", g, ")");
      }
    }
  });
}

template <typename T>
T parse_or_value_error(const char* op, T (*parse)(const std::string&), const std::string& s) {
  try {
    return parse(s);
  } catch (const std::invalid_argument& err) {
    TORCH_CHECK_VALUE(false, op, ": ", err.what());
  }
}

uint64_t group_seed(int64_t seed, int64_t g) {
  return static_cast<uint64_t>(seed) + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(g);
}

template <typename Fit>
std::tuple<at::Tensor, at::Tensor> fit_groups(const char* op, const at::Tensor& x,
                                              const c10::optional<at::Tensor>& sample_weight, int64_t k,
                                              const Fit& fit) {
  check_grouped_values(op, x, "x");
  check_sample_weight(op, sample_weight, x);
  check_k(op, k);
  const auto dtype = working_dtype(x);
  const at::Tensor rows = as_rows(x, dtype);
  const at::Tensor weights = sample_weight.has_value() ? as_rows(*sample_weight, dtype) : at::Tensor();
  const int64_t groups = rows.size(0), n = rows.size(1);
  at::Tensor centroids = at::empty({groups, k}, rows.options().dtype(at::kDouble));
  at::Tensor sse = at::empty({groups}, rows.options().dtype(at::kDouble));
  double* c_out = centroids.data_ptr<double>();
  double* sse_out = sse.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(dtype, "qcnn_codebook", [&] {
    const scalar_t* xs = rows.data_ptr<scalar_t>();
    const scalar_t* ws = weights.defined() ? weights.data_ptr<scalar_t>() : nullptr;
    for_each_group(op, groups, [&](int64_t g) {
      const cb::WeightedValues data = cb::sorted_unique<scalar_t>(xs + g * n, ws ? ws + g * n : nullptr, n, "x");
      const cb::KMeansResult r = fit(data, g);
      std::copy(r.centroids.begin(), r.centroids.end(), c_out + g * k);
      sse_out[g] = r.sse;
    });
  });
  const bool one = x.dim() == 1;
  return {drop_group_dim(centroids.to(dtype), one), drop_group_dim(sse, one)};
}

// init_centroids as float64 rows [groups, k], checked against x's leading shape and k.
at::Tensor start_rows(const char* op, const at::Tensor& start, const at::Tensor& x, int64_t k) {
  TORCH_CHECK_TYPE(is_weight_dtype(start.scalar_type()), op, ": init_centroids must be a floating tensor, got ",
                   start.scalar_type());
  std::vector<int64_t> want(x.sizes().begin(), x.sizes().end() - 1);
  want.push_back(k);
  TORCH_CHECK_VALUE(start.sizes() == at::IntArrayRef(want), op, ": init_centroids must have shape ", at::IntArrayRef(want),
                    " (one row of k centroids per row of x), got ", start.sizes());
  at::Tensor rows = as_rows(start, at::kDouble);
  TORCH_CHECK_VALUE(at::isfinite(rows).all().item<bool>(), op, ": init_centroids must be finite");
  return rows;
}

std::tuple<at::Tensor, at::Tensor> kmeans_1d_cpu(const at::Tensor& x, int64_t k,
                                                 const c10::optional<at::Tensor>& sample_weight,
                                                 c10::string_view init, int64_t max_iter, double tol, int64_t seed,
                                                 const c10::optional<at::Tensor>& init_centroids) {
  constexpr const char* op = "kmeans_1d";
  check_iterations(op, max_iter, tol);
  check_grouped_values(op, x, "x");
  check_k(op, k);
  cb::KMeansOptions options;
  options.init = parse_or_value_error(op, cb::parse_kmeans_init, std::string(init));
  options.max_iter = max_iter;
  options.tol = tol;
  const at::Tensor starts = init_centroids.has_value() ? start_rows(op, *init_centroids, x, k) : at::Tensor();
  const double* start = starts.defined() ? starts.data_ptr<double>() : nullptr;
  return fit_groups(op, x, sample_weight, k, [&](const cb::WeightedValues& data, int64_t g) {
    cb::KMeansOptions group_options = options;
    group_options.seed = group_seed(seed, g);
    if (start != nullptr) group_options.start.assign(start + g * k, start + (g + 1) * k);
    return cb::kmeans_1d(data, k, group_options);
  });
}

std::tuple<at::Tensor, at::Tensor> kmeans_1d_optimal_cpu(const at::Tensor& x, int64_t k,
                                                         const c10::optional<at::Tensor>& sample_weight) {
  return fit_groups("kmeans_1d_optimal", x, sample_weight, k,
                    [&](const cb::WeightedValues& data, int64_t) { return cb::kmeans_1d_optimal(data, k); });
}

std::tuple<at::Tensor, at::Tensor> lloyd_max_cpu(const at::Tensor& density, const at::Tensor& grid_start,
                                                 const at::Tensor& grid_step, int64_t k, c10::string_view init,
                                                 int64_t max_iter, double tol) {
  constexpr const char* op = "lloyd_max";
  check_grouped_values(op, density, "density");
  check_k(op, k);
  check_iterations(op, max_iter, tol);
  const auto lm_init = parse_or_value_error(op, cb::parse_lloyd_max_init, std::string(init));
  const at::Tensor rows = as_rows(density, at::kDouble);
  const int64_t groups = rows.size(0), m = rows.size(1);
  TORCH_CHECK_VALUE(m >= 2, op, ": density needs at least 2 grid points, got ", m);
  for (const auto& [t, name] : {std::pair{grid_start, "grid_start"}, std::pair{grid_step, "grid_step"}}) {
    TORCH_CHECK_TYPE(is_weight_dtype(t.scalar_type()), op, ": ", name, " must be a floating tensor");
    TORCH_CHECK_VALUE(t.numel() == groups && t.dim() == density.dim() - 1, op, ": ", name,
                      " must have one value per density row (shape ", density.sizes().slice(0, density.dim() - 1),
                      "), got ", t.sizes());
  }
  const at::Tensor starts = grid_start.to(at::kDouble).contiguous().reshape({groups});
  const at::Tensor steps = grid_step.to(at::kDouble).contiguous().reshape({groups});
  at::Tensor levels = at::empty({groups, k}, rows.options());
  at::Tensor distortion = at::empty({groups}, rows.options());
  const double* p = rows.data_ptr<double>();
  const double* s0 = starts.data_ptr<double>();
  const double* ds = steps.data_ptr<double>();
  double* l_out = levels.data_ptr<double>();
  double* d_out = distortion.data_ptr<double>();
  for_each_group(op, groups, [&](int64_t g) {
    const cb::GridDensity grid(p + g * m, m, s0[g], ds[g]);
    const cb::LloydMaxResult r = cb::lloyd_max(grid, k, lm_init, max_iter, tol);
    std::copy(r.levels.begin(), r.levels.end(), l_out + g * k);
    d_out[g] = r.distortion;
  });
  const bool one = density.dim() == 1;
  return {drop_group_dim(levels, one), drop_group_dim(distortion, one)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kde_grid_density_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& sample_weight, int64_t sample_size,
    c10::string_view bandwidth, double bandwidth_factor, int64_t grid_size, int64_t seed) {
  constexpr const char* op = "kde_grid_density";
  check_grouped_values(op, x, "x");
  check_sample_weight(op, sample_weight, x);
  TORCH_CHECK_VALUE(grid_size >= 2 && grid_size <= cb::kMaxGridSize, op, ": grid_size must be in [2, ",
                    cb::kMaxGridSize, "], got ", grid_size);
  TORCH_CHECK_VALUE(sample_size >= 0, op, ": sample_size must be >= 0 (0: every value), got ", sample_size);
  cb::KdeOptions options;
  options.rule = parse_or_value_error(op, cb::parse_bandwidth_rule, std::string(bandwidth));
  TORCH_CHECK_VALUE(options.rule != cb::BandwidthRule::Factor || (bandwidth_factor > 0.0 && std::isfinite(bandwidth_factor)),
                    op, ": bandwidth_factor must be finite and > 0, got ", bandwidth_factor);
  options.factor = bandwidth_factor;
  options.sample_size = sample_size;
  options.grid_size = grid_size;
  const auto dtype = working_dtype(x);
  const at::Tensor rows = as_rows(x, dtype);
  const at::Tensor weights = sample_weight.has_value() ? as_rows(*sample_weight, dtype) : at::Tensor();
  const int64_t groups = rows.size(0), n = rows.size(1);
  const auto f64 = rows.options().dtype(at::kDouble);
  at::Tensor density = at::empty({groups, grid_size}, f64);
  at::Tensor start = at::empty({groups}, f64), step = at::empty({groups}, f64), bw = at::empty({groups}, f64);
  AT_DISPATCH_FLOATING_TYPES(dtype, "qcnn_codebook", [&] {
    const scalar_t* xs = rows.data_ptr<scalar_t>();
    const scalar_t* ws = weights.defined() ? weights.data_ptr<scalar_t>() : nullptr;
    for_each_group(op, groups, [&](int64_t g) {
      cb::KdeOptions group_options = options;
      group_options.seed = group_seed(seed, g);
      const cb::KdeGrid r = cb::kde_grid_density<scalar_t>(xs + g * n, ws ? ws + g * n : nullptr, n, group_options);
      std::copy(r.density.begin(), r.density.end(), density.data_ptr<double>() + g * grid_size);
      start.data_ptr<double>()[g] = r.start;
      step.data_ptr<double>()[g] = r.step;
      bw.data_ptr<double>()[g] = r.bandwidth;
    });
  });
  const bool one = x.dim() == 1;
  return {drop_group_dim(density, one), drop_group_dim(start, one), drop_group_dim(step, one), drop_group_dim(bw, one)};
}

std::tuple<at::Tensor, at::Tensor> distinct_values_cpu(const at::Tensor& x, int64_t k) {
  constexpr const char* op = "distinct_values";
  check_grouped_values(op, x, "x");
  check_k(op, k);
  const auto dtype = working_dtype(x);
  const at::Tensor rows = as_rows(x, dtype);
  const at::Tensor finite = at::isfinite(rows).all(1);
  if (!finite.all().item<bool>())
    TORCH_CHECK_VALUE(false, op, ": x contains NaN or infinite values (group ",
                      (~finite).nonzero()[0][0].item<int64_t>(), ")");
  const int64_t groups = rows.size(0), n = rows.size(1);
  at::Tensor values = at::empty({groups, k}, rows.options().dtype(at::kDouble));
  at::Tensor count = at::empty({groups}, rows.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(dtype, "qcnn_codebook", [&] {
    const scalar_t* xs = rows.data_ptr<scalar_t>();
    for_each_group(op, groups, [&](int64_t g) {
      std::vector<double> found;
      const int64_t c = cb::distinct_values_upto<scalar_t>(xs + g * n, n, k, found);
      found.resize(static_cast<size_t>(k), found[std::min<int64_t>(c, k) - 1]);
      std::copy(found.begin(), found.end(), values.data_ptr<double>() + g * k);
      count.data_ptr<int64_t>()[g] = c;
    });
  });
  const bool one = x.dim() == 1;
  return {drop_group_dim(values, one), drop_group_dim(count, one)};
}

template <typename scalar_t, typename index_t>
void quantize_rows(const scalar_t* x, int64_t numel, int64_t per_group, const std::vector<cb::CodebookSearch>& books,
                   index_t* indices, scalar_t* dequantized, std::atomic<bool>& non_finite) {
  at::parallel_for(0, numel, 1 << 14, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t g = i / per_group;
      const int64_t stop = std::min(end, (g + 1) * per_group);
      const cb::CodebookSearch& book = books[g];
      bool bad = false;
      for (; i < stop; ++i) {
        const double v = static_cast<double>(x[i]);
        bad |= !std::isfinite(v);
        const int64_t j = book.nearest(v);
        indices[i] = static_cast<index_t>(j);
        dequantized[i] = static_cast<scalar_t>(book.codeword(j));
      }
      if (bad) non_finite = true;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_to_codebook_cpu(const at::Tensor& w, const at::Tensor& codebook) {
  constexpr const char* op = "quantize_to_codebook";
  check_codebook(op, w, codebook);
  const std::vector<cb::CodebookSearch> books = codebook_searches(op, codebook);
  const int64_t groups = static_cast<int64_t>(books.size()), k = codebook.size(-1);
  const at::Tensor x = w.contiguous();
  at::Tensor indices = at::empty(w.sizes(), w.options().dtype(codebook_index_dtype(k)));
  at::Tensor dequantized = at::empty(w.sizes(), w.options());
  const int64_t numel = x.numel();
  std::atomic<bool> non_finite{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantize_to_codebook", [&] {
    if (k <= 256)
      quantize_rows(x.data_ptr<scalar_t>(), numel, numel / groups, books, indices.data_ptr<uint8_t>(),
                    dequantized.data_ptr<scalar_t>(), non_finite);
    else
      quantize_rows(x.data_ptr<scalar_t>(), numel, numel / groups, books, indices.data_ptr<int16_t>(),
                    dequantized.data_ptr<scalar_t>(), non_finite);
  });
  TORCH_CHECK_VALUE(!non_finite.load(), op, ": w contains NaN or infinite values");
  return {indices, dequantized};
}

}  // namespace

TORCH_LIBRARY_IMPL(qcnn, CPU, m) {
  m.impl("kmeans_1d", &kmeans_1d_cpu);
  m.impl("kmeans_1d_optimal", &kmeans_1d_optimal_cpu);
  m.impl("lloyd_max", &lloyd_max_cpu);
  m.impl("kde_grid_density", &kde_grid_density_cpu);
  m.impl("distinct_values", &distinct_values_cpu);
  m.impl("quantize_to_codebook", &quantize_to_codebook_cpu);
}

}  // namespace qcnn::ops
