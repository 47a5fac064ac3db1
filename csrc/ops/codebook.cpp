// Schemas of the codebook ops. Each op takes values as [n] (one group) or [groups, n] and fits
// one codebook per row; kernels loop over the rows in C++.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(qcnn, m) {
  // Lloyd's 1-D k-means -> (centroids [.., k] ascending, weighted SSE [..] float64). init_centroids [.., k]:
  // per-row starting centroids that replace `init` (a warm start).
  m.def("kmeans_1d(Tensor x, int k, Tensor? sample_weight=None, str init='kmeans++', int max_iter=300, "
        "float tol=1e-06, int seed=0, Tensor? init_centroids=None) -> (Tensor, Tensor)");
  // Globally optimal 1-D k-means (minimum SSE) -> (centroids, SSE).
  m.def("kmeans_1d_optimal(Tensor x, int k, Tensor? sample_weight=None) -> (Tensor, Tensor)");
  // Lloyd-Max levels for densities on uniform grids [.., m] -> (levels [.., k] float64, MSE [..]).
  m.def("lloyd_max(Tensor density, Tensor grid_start, Tensor grid_step, int k, str init='optimal', "
        "int max_iter=1000, float tol=1e-09) -> (Tensor, Tensor)");
  // Sampled Gaussian KDE on a grid -> (density [.., grid_size], grid_start [..], grid_step [..], bandwidth [..]).
  m.def("kde_grid_density(Tensor x, Tensor? sample_weight=None, int sample_size=100000, str bandwidth='scott', "
        "float bandwidth_factor=1.0, int grid_size=2048, int seed=0) -> (Tensor, Tensor, Tensor, Tensor)");
  // Per row: up to k distinct values (padded with the largest) and min(#distinct, k + 1).
  m.def("distinct_values(Tensor x, int k) -> (Tensor, Tensor)");
  // Nearest codeword (ties to the lower index) -> (indices uint8 if k <= 256 else int16, dequantized w).
  m.def("quantize_to_codebook(Tensor w, Tensor codebook) -> (Tensor, Tensor)");
}
