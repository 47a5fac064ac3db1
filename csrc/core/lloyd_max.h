// Lloyd-Max scalar quantizer (Lloyd 1957/1982, Max 1960) for a density sampled on a uniform grid.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qcnn::codebook {

// The density is p(x) on the grid x_i = start + i * step, i = 0..n-1, linearly interpolated
// between grid points and zero outside [x_0, x_{n-1}]. Its partial moments are exact closed
// forms, so thresholds are real numbers rather than grid points.
class GridDensity {
 public:
  GridDensity(const double* density, int64_t n, double start, double step);
  double start() const { return start_; }
  double end() const { return start_ + step_ * static_cast<double>(n_ - 1); }
  double mass() const { return m0_.back(); }
  // Integrals of p, (x - centre) p and (x - centre)^2 p over (-inf, y].
  void moments_below(double y, double out[3]) const;
  // The same over [lo, hi]. Cells in the upper half of the mass are differenced from suffix sums,
  // so tail cells keep their relative precision (prefix sums there are ~mass, the cell ~1e-15 of it).
  void cell_moments(double lo, double hi, double out[3]) const;
  // Smallest y with mass below y = q * mass() (0 < q < 1), by bisection on the closed form.
  double quantile(double q) const;
  double centre() const { return centre_; }
  double step() const { return step_; }
  int64_t size() const { return n_; }
  double value(int64_t i) const { return p_[i]; }

 private:
  int64_t n_;
  double start_, step_, centre_;
  std::vector<double> p_;
  std::vector<double> m0_, m1_, m2_;  // moments up to each grid point
  std::vector<double> r0_, r1_, r2_;  // moments from each grid point to the end
  void moments_above(double y, double out[3]) const;
  void segment_moments(int64_t i, double s, double out[3]) const;
};

enum class LloydMaxInit {
  Optimal,   // minimum-SSE k-means of the grid points weighted by the density (escapes the poor
             // local optima that quantile starts reach on skewed or outlier-heavy densities)
  Quantile,  // the density's (m + 1/2) / k quantiles
  Linear,    // (m + 1/2) / k of the grid span
};
LloydMaxInit parse_lloyd_max_init(const std::string& name);  // "optimal" | "quantile" | "linear"

struct LloydMaxResult {
  std::vector<double> levels;  // k reconstruction levels, ascending
  double distortion = 0.0;     // mean squared error under the normalised density
  int64_t iterations = 0;
};

// Alternates thresholds = midpoints of adjacent levels and levels = conditional means of their
// cells, until no level moves by more than tol * (grid span) or max_iter. A cell of zero mass
// keeps its level.
LloydMaxResult lloyd_max(const GridDensity& density, int64_t k, LloydMaxInit init, int64_t max_iter, double tol);

}  // namespace qcnn::codebook
