// For the files with aarch64 kernels: the NEON intrinsics, the attributes that compile one function for the dot
// product (ARMv8.2 FEAT_DotProd) or the int8 matrix multiply (FEAT_I8MM), so those files need no -march of their own
// and the build runs on every aarch64 CPU (isa.h decides at run time which path runs), and the rounding shift the
// epilogues and the elementwise kernels share.
#pragma once

#if defined(__aarch64__)
#include <arm_neon.h>
#define QCNN_ARM 1
#define QCNN_NEONDOT __attribute__((target("arch=armv8.2-a+dotprod")))
#define QCNN_I8MM __attribute__((target("arch=armv8.2-a+i8mm")))

namespace qcnn {

// rounding_shift (core/requant.h) in two int64 lanes with per-lane shifts s in [0, 63]:
// (v + half + ((v >>> odd) & 1)) >> s, half = (2^s - 1) >> 1, the shifts as negative counts (SSHL / USHL by a negative
// count shift right): right = -s, odd_right = -s, or -64 for s = 0 (USHL by -64 yields 0, so s = 0 leaves v as is).
struct RoundingShift2 {
  int64x2_t right, odd_right, half;
  explicit RoundingShift2(int64x2_t s)
      : right(vnegq_s64(s)),
        odd_right(vbslq_s64(vceqzq_s64(s), vdupq_n_s64(-64), vnegq_s64(s))),
        half(vshrq_n_s64(vsubq_s64(vshlq_s64(vdupq_n_s64(1), s), vdupq_n_s64(1)), 1)) {}
  int64x2_t operator()(int64x2_t v) const {
    const uint64x2_t bit = vandq_u64(vshlq_u64(vreinterpretq_u64_s64(v), odd_right), vdupq_n_u64(1));
    return vshlq_s64(vaddq_s64(vaddq_s64(v, half), vreinterpretq_s64_u64(bit)), right);
  }
};

}  // namespace qcnn
#endif
