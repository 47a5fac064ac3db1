// For the files with aarch64 kernels: the NEON intrinsics and the attributes that compile one function for the
// dot product (ARMv8.2 FEAT_DotProd) or the int8 matrix multiply (FEAT_I8MM), so those files need no -march of their
// own and the build runs on every aarch64 CPU. isa.h decides at run time which path runs.
#pragma once

#if defined(__aarch64__)
#include <arm_neon.h>
#define QCNN_ARM 1
#define QCNN_NEONDOT __attribute__((target("arch=armv8.2-a+dotprod")))
#define QCNN_I8MM __attribute__((target("arch=armv8.2-a+i8mm")))
#endif
