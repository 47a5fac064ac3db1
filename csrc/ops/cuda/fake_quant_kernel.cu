// CUDA kernels of the fake-quant ops. The forward is one elementwise pass (float4 loads when a
// channel's run is 4-aligned); reductions (LSQ sums, binary alpha) are reduced per block and added
// to per-channel accumulators with one atomic per block.
//
// Differences from the CPU kernels, by design: an int32 zero_point outside [qmin, qmax] is clamped
// instead of raising (checking it would synchronise the device), and a non-positive scale is not
// detected for the same reason. Streams come from c10::cuda::getCurrentCUDAStream() (the stream
// at::cuda::getCurrentCUDAStream() returns) so that no cuBLAS/cuSPARSE header is needed to build.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include "core/quantize.h"
#include "ops/cuda/launch.cuh"
#include "ops/fake_quant_checks.h"

namespace qcnn {
namespace ops {
namespace {

using cuda::grid_for;
using cuda::kThreads;
constexpr int kItemsPerThread = 4;

template <typename ZP>
__device__ inline float rounded_zero_point(const ZP* zp, int64_t c, float qmin, float qmax) {
  return core::clamp(core::round_half_even(static_cast<float>(zp[c])), qmin, qmax);
}

template <typename T, typename ZP>
__global__ void fake_quant_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, int64_t inner,
                                  int64_t channels, const float* __restrict__ scale, const ZP* __restrict__ zp,
                                  float qmin, float qmax) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (i / inner) % channels;
    const float s = scale[c];
    const float z = rounded_zero_point(zp, c, qmin, qmax);
    y[i] = static_cast<T>(core::fake_quantize(static_cast<float>(x[i]), s, 1.0f / s, z, qmin, qmax));
  }
}

// float input whose channel runs are multiples of 4 long: 16-byte loads and stores.
template <typename ZP>
__global__ void fake_quant_float4_kernel(const float4* __restrict__ x, float4* __restrict__ y, int64_t n4,
                                         int64_t inner4, int64_t channels, const float* __restrict__ scale,
                                         const ZP* __restrict__ zp, float qmin, float qmax) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n4; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (i / inner4) % channels;
    const float s = scale[c];
    const float inv = 1.0f / s;
    const float z = rounded_zero_point(zp, c, qmin, qmax);
    const float4 v = x[i];
    y[i] = make_float4(core::fake_quantize(v.x, s, inv, z, qmin, qmax), core::fake_quantize(v.y, s, inv, z, qmin, qmax),
                       core::fake_quantize(v.z, s, inv, z, qmin, qmax), core::fake_quantize(v.w, s, inv, z, qmin, qmax));
  }
}

template <typename Fn>
void dispatch_zero_point(const at::Tensor& zero_point, const Fn& fn) {
  if (zero_point.scalar_type() == at::kInt) {
    fn(zero_point.const_data_ptr<int32_t>());
  } else {
    fn(zero_point.const_data_ptr<float>());
  }
}

at::Tensor fake_quant_cuda(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qmin,
                           int64_t qmax, c10::optional<int64_t> axis) {
  check_fake_quant_args(x, scale, zero_point, qmin, qmax);
  const ChannelLayout layout = channel_layout(x, axis, scale.numel(), "scale");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor sc = scale.contiguous();
  const at::Tensor zc = zero_point.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t n = xc.numel();
  if (n == 0) return y;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const float fmin = static_cast<float>(qmin), fmax = static_cast<float>(qmax);
  dispatch_zero_point(zc, [&](auto zp) {
    const bool aligned = reinterpret_cast<uintptr_t>(xc.const_data_ptr()) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(y.const_data_ptr()) % 16 == 0;
    if (x.scalar_type() == at::kFloat && layout.inner % 4 == 0 && aligned) {
      const int64_t n4 = n / 4;
      fake_quant_float4_kernel<<<grid_for(n4), kThreads, 0, stream>>>(
          reinterpret_cast<const float4*>(xc.const_data_ptr<float>()), reinterpret_cast<float4*>(y.mutable_data_ptr<float>()),
          n4, layout.inner / 4, layout.channels, sc.const_data_ptr<float>(), zp, fmin, fmax);
    } else {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "qcnn::fake_quant_cuda", [&] {
        fake_quant_kernel<<<grid_for(n), kThreads, 0, stream>>>(xc.const_data_ptr<scalar_t>(),
                                                               y.mutable_data_ptr<scalar_t>(), n, layout.inner,
                                                               layout.channels, sc.const_data_ptr<float>(), zp,
                                                               fmin, fmax);
      });
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

// Backward over rows of the [outer * C, inner] view: block b covers part of one row (one channel),
// so its LSQ partial sums reduce in the block and need one atomicAdd per channel accumulator.
template <typename T, typename ZP>
__global__ void fake_quant_backward_kernel(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx,
                                           int64_t inner, int64_t channels, int64_t blocks_per_row,
                                           const float* __restrict__ scale, const ZP* __restrict__ zp, float qmin,
                                           float qmax, float* __restrict__ grad_scale,
                                           float* __restrict__ grad_zero_point) {
  const int64_t row = blockIdx.x / blocks_per_row;
  const int64_t part = blockIdx.x % blocks_per_row;
  const int64_t c = row % channels;
  const float s = scale[c];
  const float inv = 1.0f / s;
  const float z = rounded_zero_point(zp, c, qmin, qmax);
  const int64_t span = int64_t(kThreads) * kItemsPerThread;
  const int64_t begin = part * span;
  const int64_t end = min(inner, begin + span);
  const T* gr = g + row * inner;
  const T* xr = x + row * inner;
  T* gxr = gx + row * inner;
  // All loads of the thread are issued before the first use, so that each warp keeps
  // 2 * kItemsPerThread requests in flight (one per iteration would leave bandwidth unused).
  float xv[kItemsPerThread], gv[kItemsPerThread];
#pragma unroll
  for (int k = 0; k < kItemsPerThread; ++k) {
    const int64_t i = begin + threadIdx.x + int64_t(k) * kThreads;
    xv[k] = i < end ? static_cast<float>(xr[i]) : 0.0f;
    gv[k] = i < end ? static_cast<float>(gr[i]) : 0.0f;
  }
  float acc_s = 0.0f, acc_z = 0.0f;
#pragma unroll
  for (int k = 0; k < kItemsPerThread; ++k) {
    const int64_t i = begin + threadIdx.x + int64_t(k) * kThreads;
    if (i >= end) break;
    const float code = core::unclamped_code(xv[k], inv, z);
    gxr[i] = static_cast<T>(core::code_in_range(code, qmin, qmax) ? gv[k] : 0.0f);
    if (grad_scale != nullptr) {
      const core::LsqPartials d = core::lsq_partials(xv[k], s, inv, z, qmin, qmax);
      acc_s += gv[k] * d.d_scale;
      acc_z += gv[k] * d.d_zero_point;
    }
  }
  if (grad_scale == nullptr) return;
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp_s, tmp_z;
  const float sum_s = Reduce(tmp_s).Sum(acc_s);
  const float sum_z = Reduce(tmp_z).Sum(acc_z);
  if (threadIdx.x == 0) {
    atomicAdd(grad_scale + c, sum_s);
    atomicAdd(grad_zero_point + c, sum_z);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quant_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qmin,
    int64_t qmax, c10::optional<int64_t> axis, double grad_factor, bool need_qparam_grads) {
  check_fake_quant_args(x, scale, zero_point, qmin, qmax);
  TORCH_CHECK(grad.sizes() == x.sizes(), "qcnn: grad has shape ", grad.sizes(), " but x has shape ", x.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "qcnn: grad dtype differs from x dtype");
  const ChannelLayout layout = channel_layout(x, axis, scale.numel(), "scale");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), gc = grad.contiguous(), sc = scale.contiguous(), zc = zero_point.contiguous();
  at::Tensor gx = at::empty_like(xc);
  at::Tensor grad_scale = at::zeros(need_qparam_grads ? scale.sizes() : at::IntArrayRef{0}, scale.options());
  at::Tensor grad_zero_point = at::zeros(need_qparam_grads ? scale.sizes() : at::IntArrayRef{0}, scale.options());
  const int64_t rows = layout.outer * layout.channels;
  const int64_t blocks_per_row = std::max<int64_t>(1, (layout.inner + kThreads * kItemsPerThread - 1) /
                                                          (kThreads * kItemsPerThread));
  if (xc.numel() > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    dispatch_zero_point(zc, [&](auto zp) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "qcnn::fake_quant_backward_cuda", [&] {
        fake_quant_backward_kernel<<<rows * blocks_per_row, kThreads, 0, stream>>>(
            gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(), layout.inner,
            layout.channels, blocks_per_row, sc.const_data_ptr<float>(), zp, static_cast<float>(qmin),
            static_cast<float>(qmax), need_qparam_grads ? grad_scale.mutable_data_ptr<float>() : nullptr,
            need_qparam_grads ? grad_zero_point.mutable_data_ptr<float>() : nullptr);
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (need_qparam_grads && grad_factor != 1.0) {
    grad_scale.mul_(grad_factor);
    grad_zero_point.mul_(grad_factor);
  }
  return {gx, grad_scale, grad_zero_point};
}

// ---- binary weights -------------------------------------------------------------------------

__device__ inline float sign_of(float v) { return v >= 0.0f ? 1.0f : -1.0f; }

// One block per channel: sums |w| (and, for the backward, g * sign(w)) over the channel.
template <typename T>
__global__ void binary_channel_sums_kernel(const T* __restrict__ w, const T* __restrict__ g, int64_t outer,
                                           int64_t channels, int64_t inner, float* __restrict__ abs_sum,
                                           float* __restrict__ signed_grad_sum) {
  const int64_t c = blockIdx.x;
  float acc_abs = 0.0f, acc_g = 0.0f;
  for (int64_t o = 0; o < outer; ++o) {
    const int64_t base = (o * channels + c) * inner;
    for (int64_t i = threadIdx.x; i < inner; i += kThreads) {
      const float wv = static_cast<float>(w[base + i]);
      acc_abs += fabsf(wv);
      if (g != nullptr) acc_g += static_cast<float>(g[base + i]) * sign_of(wv);
    }
  }
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp_a, tmp_g;
  const float total_abs = Reduce(tmp_a).Sum(acc_abs);
  const float total_g = Reduce(tmp_g).Sum(acc_g);
  if (threadIdx.x == 0) {
    abs_sum[c] = total_abs;
    if (signed_grad_sum != nullptr) signed_grad_sum[c] = total_g;
  }
}

template <typename T>
__global__ void binary_apply_kernel(const T* __restrict__ w, const T* __restrict__ g, T* __restrict__ out, int64_t n,
                                    int64_t inner, int64_t channels, float inv_count,
                                    const float* __restrict__ abs_sum, const float* __restrict__ signed_grad_sum) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (i / inner) % channels;
    const float alpha = abs_sum[c] * inv_count;
    const float wv = static_cast<float>(w[i]);
    if (g == nullptr) {
      out[i] = static_cast<T>(alpha * sign_of(wv));
    } else {  // see fake_quant_binary_backward_cpu for the formula
      const float ste = fabsf(wv) <= 1.0f ? static_cast<float>(g[i]) * alpha : 0.0f;
      out[i] = static_cast<T>(ste + sign_of(wv) * signed_grad_sum[c] * inv_count);
    }
  }
}

at::Tensor binary_cuda(const at::Tensor& w, const at::Tensor* grad, c10::optional<int64_t> axis) {
  const ChannelLayout layout = binary_layout(w, axis);
  const c10::cuda::CUDAGuard guard(w.device());
  const at::Tensor wc = w.contiguous();
  at::Tensor gc;
  if (grad != nullptr) {
    TORCH_CHECK(grad->sizes() == w.sizes(), "qcnn: grad has shape ", grad->sizes(), " but w has shape ", w.sizes());
    TORCH_CHECK(grad->scalar_type() == w.scalar_type(), "qcnn: grad dtype differs from w dtype");
    gc = grad->contiguous();
  }
  at::Tensor out = at::empty_like(wc);
  const int64_t n = wc.numel();
  if (n == 0) return out;
  const auto fopts = w.options().dtype(at::kFloat);
  at::Tensor abs_sum = at::empty({layout.channels}, fopts);
  at::Tensor signed_grad_sum = grad != nullptr ? at::empty({layout.channels}, fopts) : at::Tensor();
  const float inv_count = 1.0f / static_cast<float>(layout.outer * layout.inner);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "qcnn::fake_quant_binary_cuda", [&] {
    const scalar_t* gp = grad != nullptr ? gc.const_data_ptr<scalar_t>() : nullptr;
    float* sgs = grad != nullptr ? signed_grad_sum.mutable_data_ptr<float>() : nullptr;
    binary_channel_sums_kernel<<<layout.channels, kThreads, 0, stream>>>(
        wc.const_data_ptr<scalar_t>(), gp, layout.outer, layout.channels, layout.inner,
        abs_sum.mutable_data_ptr<float>(), sgs);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    binary_apply_kernel<<<grid_for(n), kThreads, 0, stream>>>(wc.const_data_ptr<scalar_t>(), gp,
                                                              out.mutable_data_ptr<scalar_t>(), n, layout.inner,
                                                              layout.channels, inv_count,
                                                              abs_sum.const_data_ptr<float>(), sgs);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor fake_quant_binary_cuda(const at::Tensor& w, c10::optional<int64_t> axis) {
  return binary_cuda(w, nullptr, axis);
}

at::Tensor fake_quant_binary_backward_cuda(const at::Tensor& grad, const at::Tensor& w, c10::optional<int64_t> axis) {
  return binary_cuda(w, &grad, axis);
}

}  // namespace

TORCH_LIBRARY_IMPL(qcnn, CUDA, m) {
  m.impl("fake_quant", &fake_quant_cuda);
  m.impl("fake_quant_backward", &fake_quant_backward_cuda);
  m.impl("fake_quant_binary", &fake_quant_binary_cuda);
  m.impl("fake_quant_binary_backward", &fake_quant_binary_backward_cuda);
}

}  // namespace ops
}  // namespace qcnn
