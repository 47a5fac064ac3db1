// For the files with AVX2 kernels: the intrinsics and the attribute that compiles one function for
// AVX2+FMA, so those files need no -mavx2 of their own. isa.h decides at run time which path runs.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define QCNN_X86 1
#define QCNN_AVX2 __attribute__((target("avx2,fma")))
#endif
