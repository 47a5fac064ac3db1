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

// The running thread's number in the innermost parallel region (0 outside one).
inline int thread_num() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// How many parallel regions, active or not, enclose the running thread.
inline int parallel_level() {
#ifdef _OPENMP
  return omp_get_level();
#else
  return 0;
#endif
}

// The running thread's slot in a ScratchTeam whose owner ran at parallel_level() == base_level: its number in a
// region opened below the owner, 0 at the owner's own level.
inline int team_slot(int base_level) { return parallel_level() > base_level ? thread_num() : 0; }

}  // namespace qcnn

#define QCNN_PRAGMA(x) _Pragma(#x)
// Parallel for over the loop that follows, only when `cond` (work is large enough).
#define QCNN_PARALLEL_FOR(nthreads, cond) \
  QCNN_PRAGMA(omp parallel for schedule(static) num_threads(::qcnn::resolve_threads(nthreads)) if (cond))
