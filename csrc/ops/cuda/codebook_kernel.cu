// CUDA kernel of quantize_to_codebook, so that codebook-quantized layers train on the GPU without a
// round trip through host memory. The search tables (float64 midpoints, first index of each run
// of equal codewords) are built on the host by the same codebook_searches() as the CPU kernel, so
// both devices assign every value to the same index.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "core/codebook_common.h"
#include "ops/codebook_checks.h"
#include "ops/cuda/launch.cuh"

namespace qcnn::ops {
namespace {

template <typename T, typename I>
__global__ void quantize_to_codebook_kernel(const T* __restrict__ x, int64_t numel, int64_t per_group, int64_t k,
                                            const double* __restrict__ midpoints,
                                            const int32_t* __restrict__ first_of_run,
                                            const float* __restrict__ books, I* __restrict__ indices,
                                            T* __restrict__ dequantized, int* __restrict__ non_finite) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t g = i / per_group;
    const double v = static_cast<double>(x[i]);
    if (!isfinite(v)) *non_finite = 1;
    const int64_t m = codebook::lower_bound_index(midpoints + g * (k - 1), k - 1, v);
    const int64_t j = first_of_run[g * k + m];
    indices[i] = static_cast<I>(j);
    dequantized[i] = static_cast<T>(books[g * k + j]);
  }
}

std::tuple<at::Tensor, at::Tensor> quantize_to_codebook_cuda(const at::Tensor& w, const at::Tensor& codebook) {
  constexpr const char* op = "quantize_to_codebook";
  check_codebook(op, w, codebook);
  const c10::cuda::CUDAGuard guard(w.device());
  const std::vector<codebook::CodebookSearch> books = codebook_searches(op, codebook);
  const int64_t groups = static_cast<int64_t>(books.size()), k = codebook.size(-1);
  at::Tensor midpoints = at::empty({std::max<int64_t>(groups * (k - 1), 1)}, at::kDouble);
  at::Tensor first_of_run = at::empty({groups * k}, at::kInt);
  for (int64_t g = 0; g < groups; ++g) {
    const codebook::CodebookSearch& book = books[g];
    std::copy(book.midpoints(), book.midpoints() + (k - 1), midpoints.mutable_data_ptr<double>() + g * (k - 1));
    std::copy(book.first_of_run(), book.first_of_run() + k, first_of_run.mutable_data_ptr<int32_t>() + g * k);
  }
  const auto device = w.device();
  const at::Tensor midpoints_d = midpoints.to(device), first_d = first_of_run.to(device);
  const at::Tensor books_d = codebook.to(at::kFloat).contiguous();  // already on the device; [k] or [groups, k]
  const at::Tensor x = w.contiguous();
  at::Tensor indices = at::empty(w.sizes(), w.options().dtype(codebook_index_dtype(k)));
  at::Tensor dequantized = at::empty(w.sizes(), w.options());
  at::Tensor non_finite = at::zeros({1}, w.options().dtype(at::kInt));
  const int64_t numel = x.numel();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantize_to_codebook_cuda", [&] {
    auto launch = [&](auto* index_ptr) {
      quantize_to_codebook_kernel<<<cuda::grid_for(numel), cuda::kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), numel, numel / groups, k, midpoints_d.const_data_ptr<double>(),
          first_d.const_data_ptr<int32_t>(), books_d.const_data_ptr<float>(), index_ptr,
          dequantized.mutable_data_ptr<scalar_t>(), non_finite.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (k <= 256)
      launch(indices.mutable_data_ptr<uint8_t>());
    else
      launch(indices.mutable_data_ptr<int16_t>());
  });
  TORCH_CHECK_VALUE(non_finite.item<int>() == 0, op, ": w contains NaN or infinite values");
  return {indices, dequantized};
}

}  // namespace

TORCH_LIBRARY_IMPL(qcnn, CUDA, m) { m.impl("quantize_to_codebook", &quantize_to_codebook_cuda); }

}  // namespace qcnn::ops
