// For the files with vector kernels: the intrinsics and the attributes that compile one function for
// AVX2+FMA, AVX-512 VNNI or AMX, so those files need no -mavx2 of their own. isa.h decides at run time
// which path runs.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define QCNN_X86 1
#define QCNN_AVX2 __attribute__((target("avx2,fma")))
#define QCNN_AVX512VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))
#define QCNN_AMX __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni,amx-tile,amx-int8")))
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
// GCC 12's AVX-512 intrinsics start from a deliberately undefined register, which (un)initialized-use
// warnings report at every inlined call (GCC bug 105593, fixed in GCC 13): silenced in the kernel files.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif
