// aarch64 Advanced SIMD (ARMv8.0, every aarch64 CPU) kernel of the convolutions (qgemm_kernels.h): the quad GEMM with
// widening multiplies. Its table is the scalar one with this GEMM in place.
#include <cstring>

#include "core/neon.h"
#include "core/qgemm_kernels.h"

namespace qcnn {

#ifdef QCNN_ARM
namespace {

// Rows [r0, r0 + RB) x 16 channels: c = start + sum_q sum_i (a[4q + i] - 128) * w[q][lane][i]. SMULL multiplies the
// flipped quad, repeated, by 2 channels' quads into 8 int16 products (|product| <= 2^14), SADALP adds them in pairs
// into 4 int32 lanes (k0 + k1 and k2 + k3 of each channel), and a last pairwise add joins a channel's two lanes. The
// int32 adds wrap, so the sum is exact wherever the final value fits int32, which the engine proves at load.
template <int RB>
struct WideningPass {
  static void run(const RowSource<uint8_t, kVnniRows>& a, int r0, const int8_t* w, const int32_t* start, int32_t* c,
                  int64_t ldc) {
    int32x4_t acc[RB][8];  // [row][2 i]: channels 4i and 4i + 1, [2 i + 1]: 4i + 2 and 4i + 3
    for (int r = 0; r < RB; ++r)
      for (int i = 0; i < 8; ++i) acc[r][i] = vdupq_n_s32(0);
    const int8x16_t flip = vdupq_n_s8(-128);
    const int8_t* wq = w;
    for (int64_t s = 0; s < a.segs; ++s) {
      const uint8_t* ar[RB];
      for (int r = 0; r < RB; ++r) ar[r] = a.row[r0 + r] + s * a.seg_stride;
      for (int64_t q = 0; q < a.seg_steps; ++q, wq += 64) {
        int8x16_t wv[4];
        for (int i = 0; i < 4; ++i) wv[i] = vld1q_s8(wq + 16 * i);
        for (int r = 0; r < RB; ++r) {
          uint32_t quad;
          std::memcpy(&quad, ar[r] + 4 * q, sizeof quad);
          const int8x16_t av = veorq_s8(vreinterpretq_s8_u32(vdupq_n_u32(quad)), flip);
          for (int i = 0; i < 4; ++i) {
            acc[r][2 * i] = vpadalq_s16(acc[r][2 * i], vmull_s8(vget_low_s8(wv[i]), vget_low_s8(av)));
            acc[r][2 * i + 1] = vpadalq_s16(acc[r][2 * i + 1], vmull_high_s8(wv[i], av));
          }
        }
      }
    }
    for (int r = 0; r < RB; ++r)
      for (int i = 0; i < 4; ++i)
        vst1q_s32(c + r * ldc + 4 * i,
                  vaddq_s32(vld1q_s32(start + 4 * i), vpaddq_s32(acc[r][2 * i], acc[r][2 * i + 1])));
  }
};

// 3 rows: 24 accumulators, 4 weight registers and the quad of the 32.
template <int R, int J>
void quad_microkernel(const RowSource<uint8_t, kVnniRows>& a, const int8_t* w, int64_t wblock, const int32_t* start,
                      int32_t* c, int64_t ldc) {
  quad_microkernel_in_passes<WideningPass, 3, R, J>(a, w, wblock, start, c, ldc);
}

}  // namespace

const ConvKernels* conv_kernels_neon() {
  static const ConvKernels kernels = [] {
    ConvKernels k = conv_kernels_scalar();
    k.vnni = QCNN_KERNEL_GRID_6X4(quad_microkernel);
    return k;
  }();
  return &kernels;
}
#else
const ConvKernels* conv_kernels_neon() { return nullptr; }
#endif

}  // namespace qcnn
