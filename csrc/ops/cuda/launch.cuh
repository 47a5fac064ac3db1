// Launch geometry shared by the CUDA kernels of qcnn.
#pragma once

#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>

namespace qcnn::ops::cuda {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items: enough to fill every multiprocessor, no more.
inline int64_t grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return std::max<int64_t>(1, std::min(blocks, int64_t(sms) * 32));
}

}  // namespace qcnn::ops::cuda
