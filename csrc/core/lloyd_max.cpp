#include "core/lloyd_max.h"

#include "core/kmeans_1d.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace qcnn::codebook {

GridDensity::GridDensity(const double* density, int64_t n, double start, double step)
    : n_(n), start_(start), step_(step) {
  if (n < 2) throw std::invalid_argument("density needs at least 2 grid points");
  if (!(step > 0.0) || !std::isfinite(step)) throw std::invalid_argument("grid_step must be finite and > 0");
  if (!std::isfinite(start)) throw std::invalid_argument("grid_start must be finite");
  p_.assign(density, density + n);
  for (const double v : p_)
    if (!(v >= 0.0) || !std::isfinite(v)) throw std::invalid_argument("density must be finite and >= 0");
  centre_ = 0.5 * (start_ + end());
  m0_.assign(n, 0.0);
  m1_.assign(n, 0.0);
  m2_.assign(n, 0.0);
  for (int64_t i = 0; i + 1 < n; ++i) {
    double seg[3];
    segment_moments(i, step_, seg);
    m0_[i + 1] = m0_[i] + seg[0];
    m1_[i + 1] = m1_[i] + seg[1];
    m2_[i + 1] = m2_[i] + seg[2];
  }
  r0_.assign(n, 0.0);
  r1_.assign(n, 0.0);
  r2_.assign(n, 0.0);
  for (int64_t i = n - 2; i >= 0; --i) {
    double seg[3];
    segment_moments(i, step_, seg);
    r0_[i] = r0_[i + 1] + seg[0];
    r1_[i] = r1_[i + 1] + seg[1];
    r2_[i] = r2_[i + 1] + seg[2];
  }
  if (!(mass() > 0.0)) throw std::invalid_argument("density has zero total mass");
}

// Integrals over [x_i, x_i + s] of u^r p(x), r = 0, 1, 2, u = x - centre, p linear on the segment:
// p = p_i + b t with t = x - x_i, a = x_i - centre.
void GridDensity::segment_moments(int64_t i, double s, double out[3]) const {
  const double a = start_ + step_ * static_cast<double>(i) - centre_;
  const double p = p_[i];
  const double b = (p_[i + 1] - p_[i]) / step_;
  const double s2 = s * s, s3 = s2 * s, s4 = s3 * s;
  out[0] = p * s + b * s2 / 2.0;
  out[1] = a * p * s + (a * b + p) * s2 / 2.0 + b * s3 / 3.0;
  out[2] = a * a * p * s + (a * a * b + 2.0 * a * p) * s2 / 2.0 + (2.0 * a * b + p) * s3 / 3.0 + b * s4 / 4.0;
}

void GridDensity::moments_below(double y, double out[3]) const {
  if (y <= start_) {
    out[0] = out[1] = out[2] = 0.0;
    return;
  }
  if (y >= end()) {
    out[0] = m0_.back();
    out[1] = m1_.back();
    out[2] = m2_.back();
    return;
  }
  const int64_t i = std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>((y - start_) / step_), 0), n_ - 2);
  const double s = std::min(std::max(y - (start_ + step_ * static_cast<double>(i)), 0.0), step_);
  segment_moments(i, s, out);
  out[0] += m0_[i];
  out[1] += m1_[i];
  out[2] += m2_[i];
}

void GridDensity::moments_above(double y, double out[3]) const {
  if (y >= end()) {
    out[0] = out[1] = out[2] = 0.0;
    return;
  }
  if (y <= start_) {
    out[0] = r0_[0];
    out[1] = r1_[0];
    out[2] = r2_[0];
    return;
  }
  const int64_t i = std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>((y - start_) / step_), 0), n_ - 2);
  const double s = std::min(std::max(y - (start_ + step_ * static_cast<double>(i)), 0.0), step_);
  double full[3], part[3];
  segment_moments(i, step_, full);
  segment_moments(i, s, part);
  for (int r = 0; r < 3; ++r) out[r] = (r == 0 ? r0_ : r == 1 ? r1_ : r2_)[i + 1] + (full[r] - part[r]);
}

void GridDensity::cell_moments(double lo, double hi, double out[3]) const {
  double a[3], b[3];
  moments_below(lo, a);
  if (a[0] <= 0.5 * mass()) {
    moments_below(hi, b);
    for (int r = 0; r < 3; ++r) out[r] = b[r] - a[r];
  } else {
    moments_above(lo, a);
    moments_above(hi, b);
    for (int r = 0; r < 3; ++r) out[r] = a[r] - b[r];
  }
}

double GridDensity::quantile(double q) const {
  const double target = q * mass();
  int64_t i = std::upper_bound(m0_.begin(), m0_.end(), target) - m0_.begin() - 1;
  i = std::min<int64_t>(std::max<int64_t>(i, 0), n_ - 2);
  double lo = 0.0, hi = step_, seg[3];
  for (int it = 0; it < 80; ++it) {
    const double mid = 0.5 * (lo + hi);
    segment_moments(i, mid, seg);
    if (m0_[i] + seg[0] < target) lo = mid;
    else hi = mid;
  }
  return start_ + step_ * static_cast<double>(i) + 0.5 * (lo + hi);
}

LloydMaxInit parse_lloyd_max_init(const std::string& name) {
  if (name == "optimal") return LloydMaxInit::Optimal;
  if (name == "quantile") return LloydMaxInit::Quantile;
  if (name == "linear") return LloydMaxInit::Linear;
  throw std::invalid_argument("init must be 'optimal', 'quantile' or 'linear' for Lloyd-Max, got '" + name + "'");
}

LloydMaxResult lloyd_max(const GridDensity& density, int64_t k, LloydMaxInit init, int64_t max_iter, double tol) {
  if (k < 1) throw std::invalid_argument("k must be >= 1, got " + std::to_string(k));
  if (max_iter < 1) throw std::invalid_argument("max_iter must be >= 1");
  if (!(tol >= 0.0)) throw std::invalid_argument("tol must be >= 0");
  const double span = density.end() - density.start();
  const double c = density.centre();
  std::vector<double> levels(k), next(k);
  if (init == LloydMaxInit::Optimal) {
    WeightedValues grid;
    for (int64_t i = 0; i < density.size(); ++i) {
      if (density.value(i) <= 0.0) continue;
      grid.value.push_back(density.start() + density.step() * static_cast<double>(i));
      grid.weight.push_back(density.value(i));
    }
    levels = kmeans_1d_optimal(grid, k).centroids;
  } else {
    for (int64_t m = 0; m < k; ++m) {
      const double q = (static_cast<double>(m) + 0.5) / static_cast<double>(k);
      levels[m] = init == LloydMaxInit::Quantile ? density.quantile(q) : density.start() + span * q;
    }
  }
  // cells[m] = moments of cell m = (t_{m-1}, t_m], t_{-1} = -inf, t_{k-1} = +inf.
  std::vector<double> cells(3 * k, 0.0);
  const double below_all = density.start() - 1.0, above_all = density.end() + 1.0;
  auto update_cells = [&](const std::vector<double>& lv) {
    for (int64_t m = 0; m < k; ++m) {
      const double lo = m == 0 ? below_all : 0.5 * (lv[m - 1] + lv[m]);
      const double hi = m + 1 == k ? above_all : 0.5 * (lv[m] + lv[m + 1]);
      density.cell_moments(lo, hi, &cells[3 * m]);
    }
  };
  LloydMaxResult result;
  for (int64_t iter = 1; iter <= max_iter; ++iter) {
    result.iterations = iter;
    update_cells(levels);
    double moved = 0.0;
    for (int64_t m = 0; m < k; ++m) {
      const double mass = cells[3 * m];
      next[m] = mass > 0.0 ? c + cells[3 * m + 1] / mass : levels[m];
    }
    std::sort(next.begin(), next.end());
    for (int64_t m = 0; m < k; ++m) moved = std::max(moved, std::abs(next[m] - levels[m]));
    levels.swap(next);
    if (moved <= tol * span) break;
  }
  update_cells(levels);
  double distortion = 0.0;
  for (int64_t m = 0; m < k; ++m) {
    const double* cell = &cells[3 * m];
    const double u = levels[m] - c;
    distortion += std::max(cell[2] - 2.0 * u * cell[1] + u * u * cell[0], 0.0);
  }
  result.levels = levels;
  result.distortion = distortion / density.mass();
  return result;
}

}  // namespace qcnn::codebook
