// OpenMP helpers for the integer kernels. num_threads <= 0 means the OpenMP default.
#pragma once
#ifdef _OPENMP
#include <omp.h>
#endif

namespace qcnn {

inline int resolve_threads(int num_threads) {
#ifdef _OPENMP
  return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  (void)num_threads;
  return 1;
#endif
}

}  // namespace qcnn

#define QCNN_PRAGMA(x) _Pragma(#x)
// Parallel for over the loop that follows, only when `cond` (work is large enough).
#define QCNN_PARALLEL_FOR(nthreads, cond) \
  QCNN_PRAGMA(omp parallel for schedule(static) num_threads(::qcnn::resolve_threads(nthreads)) if (cond))
