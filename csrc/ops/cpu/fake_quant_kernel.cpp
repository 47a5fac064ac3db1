// CPU kernels of the fake-quant ops: one pass over memory, at::vec vectorized, at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/quantize.h"
#include "ops/fake_quant_checks.h"

namespace qcnn {
namespace ops {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kGrain = 32768;
// Vector accumulators are flushed into double every kFlush elements to keep the LSQ sums accurate.
constexpr int64_t kFlush = 4096;

struct ChannelParams {
  std::vector<float> scale, inv_scale, zero_point;
};

// Validates the quantization parameters (CPU reads them directly) and returns them as float.
ChannelParams channel_params(const at::Tensor& scale, const at::Tensor& zero_point, int64_t qmin, int64_t qmax) {
  const int64_t n = scale.numel();
  ChannelParams p;
  p.scale.resize(n);
  p.inv_scale.resize(n);
  p.zero_point.resize(n);
  const auto s = scale.contiguous();
  const auto z = zero_point.to(at::kFloat).contiguous();
  const float* sp = s.data_ptr<float>();
  const float* zp = z.data_ptr<float>();
  const bool integer_zero_point = zero_point.scalar_type() == at::kInt;
  for (int64_t c = 0; c < n; ++c) {
    TORCH_CHECK(std::isfinite(sp[c]) && sp[c] > 0.0f, "qcnn: scale[", c, "] = ", sp[c],
                " must be positive and finite");
    TORCH_CHECK(std::isfinite(zp[c]), "qcnn: zero_point[", c, "] = ", zp[c], " is not finite");
    float zc = core::round_half_even(zp[c]);
    if (integer_zero_point) {
      TORCH_CHECK(zc >= qmin && zc <= qmax, "qcnn: zero_point[", c, "] = ", zc, " is outside [qmin, qmax] = [",
                  qmin, ", ", qmax, "]");
    } else {
      // A learned (float) zero point is rounded and clamped, as torch's learnable fake quant does.
      zc = core::clamp(zc, static_cast<float>(qmin), static_cast<float>(qmax));
    }
    p.scale[c] = sp[c];
    p.inv_scale[c] = 1.0f / sp[c];
    p.zero_point[c] = zc;
  }
  return p;
}

// Calls fn(start, stop, channel) for the runs of equal channel inside the flat range [begin, end).
template <typename Fn>
void for_each_channel_run(const ChannelLayout& layout, int64_t begin, int64_t end, const Fn& fn) {
  int64_t i = begin;
  while (i < end) {
    const int64_t row = i / layout.inner;
    const int64_t stop = std::min(end, (row + 1) * layout.inner);
    fn(i, stop, row % layout.channels);
    i = stop;
  }
}

template <typename T>
void fake_quant_run(const T* x, T* y, int64_t n, float s, float inv, float z, float qmin, float qmax) {
  int64_t i = 0;
  if constexpr (std::is_same_v<T, float>) {
    const Vec vs(s), vinv(inv), vz(z), vmin(qmin), vmax(qmax);
    for (; i + Vec::size() <= n; i += Vec::size()) {
      // maximum/minimum propagate NaN, matching core::quantize_code.
      const Vec q = at::vec::minimum(at::vec::maximum((Vec::loadu(x + i) * vinv).round() + vz, vmin), vmax);
      ((q - vz) * vs).store(y + i);
    }
  }
  for (; i < n; ++i) y[i] = static_cast<T>(core::fake_quantize(static_cast<float>(x[i]), s, inv, z, qmin, qmax));
}

at::Tensor fake_quant_cpu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qmin,
                          int64_t qmax, c10::optional<int64_t> axis) {
  check_fake_quant_args(x, scale, zero_point, qmin, qmax);
  const ChannelLayout layout = channel_layout(x, axis, scale.numel(), "scale");
  const ChannelParams p = channel_params(scale, zero_point, qmin, qmax);
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  const float fmin = static_cast<float>(qmin), fmax = static_cast<float>(qmax);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "qcnn::fake_quant", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, xc.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for_each_channel_run(layout, begin, end, [&](int64_t a, int64_t b, int64_t c) {
        fake_quant_run<scalar_t>(xp + a, yp + a, b - a, p.scale[c], p.inv_scale[c], p.zero_point[c], fmin, fmax);
      });
    });
  });
  return y;
}

// One run of the backward pass: writes the straight-through grad_x and, when sums != nullptr,
// adds sum(grad * d fq/d scale) and sum(grad * d fq/d zero_point) to sums[0], sums[1].
template <typename T>
void fake_quant_backward_run(const T* g, const T* x, T* gx, int64_t n, float s, float inv, float z, float qmin,
                             float qmax, double* sums) {
  int64_t i = 0;
  if constexpr (std::is_same_v<T, float>) {
    const Vec vs(s), vinv(inv), vz(z), vmin(qmin), vmax(qmax), vzero(0.0f);
    const Vec low_ds(qmin - z), high_ds(qmax - z), clipped_dz(-s);
    while (i + Vec::size() <= n) {
      Vec acc_s(0.0f), acc_z(0.0f);
      const int64_t block_end = std::min(n, i + kFlush);
      for (; i + Vec::size() <= block_end; i += Vec::size()) {
        const Vec xv = Vec::loadu(x + i);
        const Vec gv = Vec::loadu(g + i);
        const Vec q = (xv * vinv).round() + vz;
        const Vec below = q < vmin;
        const Vec above = q > vmax;
        const Vec inside = (q >= vmin) & (q <= vmax);
        (gv & inside).store(gx + i);
        if (sums != nullptr) {
          Vec ds = ((q - vz) * vs - xv) * vinv;
          ds = Vec::blendv(ds, low_ds, below);
          ds = Vec::blendv(ds, high_ds, above);
          acc_s = acc_s + gv * ds;
          acc_z = acc_z + gv * Vec::blendv(vzero, clipped_dz, below | above);
        }
      }
      if (sums != nullptr) {
        float ls[Vec::size()], lz[Vec::size()];
        acc_s.store(ls);
        acc_z.store(lz);
        for (int64_t k = 0; k < Vec::size(); ++k) {
          sums[0] += ls[k];
          sums[1] += lz[k];
        }
      }
    }
  }
  for (; i < n; ++i) {
    const float xv = static_cast<float>(x[i]);
    const float gv = static_cast<float>(g[i]);
    const float code = core::unclamped_code(xv, inv, z);
    gx[i] = static_cast<T>(core::code_in_range(code, qmin, qmax) ? gv : 0.0f);
    if (sums != nullptr) {
      const core::LsqPartials d = core::lsq_partials(xv, s, inv, z, qmin, qmax);
      sums[0] += static_cast<double>(gv) * d.d_scale;
      sums[1] += static_cast<double>(gv) * d.d_zero_point;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quant_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qmin,
    int64_t qmax, c10::optional<int64_t> axis, double grad_factor, bool need_qparam_grads) {
  check_fake_quant_args(x, scale, zero_point, qmin, qmax);
  TORCH_CHECK(grad.sizes() == x.sizes(), "qcnn: grad has shape ", grad.sizes(), " but x has shape ", x.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "qcnn: grad dtype ", grad.scalar_type(), " differs from x dtype ",
              x.scalar_type());
  const ChannelLayout layout = channel_layout(x, axis, scale.numel(), "scale");
  const ChannelParams p = channel_params(scale, zero_point, qmin, qmax);
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = grad.contiguous();
  at::Tensor gx = at::empty_like(xc);
  const int64_t numel = xc.numel();
  const int64_t channels = layout.channels;
  // Fixed chunks, each with its own partial sums: deterministic and free of atomics.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (numel + kGrain - 1) / kGrain));
  const int64_t chunk_len = (numel + chunks - 1) / chunks;
  std::vector<double> partial(need_qparam_grads ? chunks * channels * 2 : 0, 0.0);
  const float fmin = static_cast<float>(qmin), fmax = static_cast<float>(qmax);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "qcnn::fake_quant_backward", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t chunk = cb; chunk < ce; ++chunk) {
        const int64_t begin = chunk * chunk_len, end = std::min(numel, begin + chunk_len);
        for_each_channel_run(layout, begin, end, [&](int64_t a, int64_t b, int64_t c) {
          double* sums = need_qparam_grads ? &partial[(chunk * channels + c) * 2] : nullptr;
          fake_quant_backward_run<scalar_t>(gp + a, xp + a, gxp + a, b - a, p.scale[c], p.inv_scale[c],
                                            p.zero_point[c], fmin, fmax, sums);
        });
      }
    });
  });
  if (!need_qparam_grads) {
    const auto opts = scale.options();
    return {gx, at::empty({0}, opts), at::empty({0}, opts)};
  }
  at::Tensor grad_scale = at::zeros(scale.sizes(), scale.options());
  at::Tensor grad_zero_point = at::zeros(scale.sizes(), scale.options());
  float* gs = grad_scale.data_ptr<float>();
  float* gz = grad_zero_point.data_ptr<float>();
  for (int64_t c = 0; c < channels; ++c) {
    double s = 0.0, z = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      s += partial[(chunk * channels + c) * 2];
      z += partial[(chunk * channels + c) * 2 + 1];
    }
    gs[c] = static_cast<float>(s * grad_factor);
    gz[c] = static_cast<float>(z * grad_factor);
  }
  return {gx, grad_scale, grad_zero_point};
}

// ---- binary weights -------------------------------------------------------------------------

// Per-channel sums over the [outer, C, inner] layout: out[c] = sum over that channel of f(index).
template <typename Fn>
std::vector<double> per_channel_sum(const ChannelLayout& l, const Fn& f) {
  std::vector<double> out(l.channels, 0.0);
  at::parallel_for(0, l.channels, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double acc = 0.0;
      for (int64_t o = 0; o < l.outer; ++o) {
        const int64_t base = (o * l.channels + c) * l.inner;
        for (int64_t i = 0; i < l.inner; ++i) acc += f(base + i);
      }
      out[c] = acc;
    }
  });
  return out;
}

template <typename T>
inline float sign_of(T v) {
  return static_cast<float>(v) >= 0.0f ? 1.0f : -1.0f;  // sign(0) = +1
}

at::Tensor fake_quant_binary_cpu(const at::Tensor& w, c10::optional<int64_t> axis) {
  const ChannelLayout layout = binary_layout(w, axis);
  const at::Tensor wc = w.contiguous();
  at::Tensor y = at::empty_like(wc);
  const double count = static_cast<double>(layout.outer * layout.inner);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "qcnn::fake_quant_binary", [&] {
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const std::vector<double> abs_sum =
        per_channel_sum(layout, [&](int64_t i) { return std::abs(static_cast<double>(wp[i])); });
    at::parallel_for(0, wc.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for_each_channel_run(layout, begin, end, [&](int64_t a, int64_t b, int64_t c) {
        const float alpha = static_cast<float>(abs_sum[c] / count);
        for (int64_t i = a; i < b; ++i) yp[i] = static_cast<scalar_t>(alpha * sign_of(wp[i]));
      });
    });
  });
  return y;
}

// Exact gradient of alpha(w) * sign(w) with alpha = mean|w| (XNOR-Net, Rastegari et al. 2016, eq. 7)
// with the straight-through sign'(w) = 1{|w| <= 1}:
//   dL/dw_k = g_k * alpha * 1{|w_k| <= 1} + sign(w_k) / n * sum_i g_i * sign(w_i)
at::Tensor fake_quant_binary_backward_cpu(const at::Tensor& grad, const at::Tensor& w, c10::optional<int64_t> axis) {
  const ChannelLayout layout = binary_layout(w, axis);
  TORCH_CHECK(grad.sizes() == w.sizes(), "qcnn: grad has shape ", grad.sizes(), " but w has shape ", w.sizes());
  TORCH_CHECK(grad.scalar_type() == w.scalar_type(), "qcnn: grad dtype differs from w dtype");
  const at::Tensor wc = w.contiguous();
  const at::Tensor gc = grad.contiguous();
  at::Tensor gw = at::empty_like(wc);
  const double count = static_cast<double>(layout.outer * layout.inner);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "qcnn::fake_quant_binary_backward", [&] {
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
    const std::vector<double> abs_sum =
        per_channel_sum(layout, [&](int64_t i) { return std::abs(static_cast<double>(wp[i])); });
    const std::vector<double> signed_grad_sum =
        per_channel_sum(layout, [&](int64_t i) { return static_cast<double>(gp[i]) * sign_of(wp[i]); });
    at::parallel_for(0, wc.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for_each_channel_run(layout, begin, end, [&](int64_t a, int64_t b, int64_t c) {
        const float alpha = static_cast<float>(abs_sum[c] / count);
        const float mean_term = static_cast<float>(signed_grad_sum[c] / count);
        for (int64_t i = a; i < b; ++i) {
          const float wv = static_cast<float>(wp[i]);
          const float ste = std::abs(wv) <= 1.0f ? static_cast<float>(gp[i]) * alpha : 0.0f;
          gwp[i] = static_cast<scalar_t>(ste + sign_of(wp[i]) * mean_term);
        }
      });
    });
  });
  return gw;
}

}  // namespace

TORCH_LIBRARY_IMPL(qcnn, CPU, m) {
  m.impl("fake_quant", &fake_quant_cpu);
  m.impl("fake_quant_backward", &fake_quant_backward_cpu);
  m.impl("fake_quant_binary", &fake_quant_binary_cpu);
  m.impl("fake_quant_binary_backward", &fake_quant_binary_backward_cpu);
}

}  // namespace ops
}  // namespace qcnn
