// aarch64 dot-product (ARMv8.2 FEAT_DotProd) kernel of the convolutions (qgemm_kernels.h): the quad GEMM on SDOT.
// Its table is the NEON one with this GEMM in place.
#include <cstring>

#include "core/neon.h"
#include "core/qgemm_kernels.h"

namespace qcnn {

#ifdef QCNN_ARM
namespace {

// acc[r][i] += the dot products of 4 channels' weight quads (wv) with row r's quad L of av (SDOT by element), the
// quad's weights at wq. Returns the next quad's weights through an empty asm that depends on this step's last sum:
// GCC would otherwise hoist all 4 steps' 16 weight loads to the top and spill the accumulators.
template <int RB, int L>
QCNN_NEONDOT inline const int8_t* dot_step(int32x4_t (&acc)[RB][4], const int8x16_t (&av)[RB], const int8_t* wq) {
  for (int i = 0; i < 4; ++i) {
    const int8x16_t wv = vld1q_s8(wq + 16 * i);
    for (int r = 0; r < RB; ++r) acc[r][i] = vdotq_laneq_s32(acc[r][i], wv, av[r], L);
  }
  wq += 64;
  __asm__("" : "+r"(wq) : "w"(acc[RB - 1][3]));
  return wq;
}

// Rows [r0, r0 + RB) x 16 channels: c = start + sum_q sum_i (a[4q + i] - 128) * w[q][lane][i], 16 MACs per SDOT. Each
// row's next 16 bytes (4 quads) are loaded and flipped once, and SDOT picks the quad by lane; a segment's last
// quads, fewer than 4, go one by one. Its adds wrap: exact wherever the final value fits int32.
template <int RB>
struct DotPass {
  QCNN_NEONDOT static void run(const RowSource<uint8_t, kVnniRows>& a, int r0, const int8_t* w, const int32_t* start,
                               int32_t* c, int64_t ldc) {
    int32x4_t acc[RB][4];
    for (int i = 0; i < 4; ++i) {
      const int32x4_t s = vld1q_s32(start + 4 * i);
      for (int r = 0; r < RB; ++r) acc[r][i] = s;
    }
    const int8x16_t flip = vdupq_n_s8(-128);
    const int8_t* wq = w;
    for (int64_t s = 0; s < a.segs; ++s) {
      const uint8_t* ar[RB];
      for (int r = 0; r < RB; ++r) ar[r] = a.row[r0 + r] + s * a.seg_stride;
      int64_t q = 0;
      int8x16_t av[RB];
      for (; q + 4 <= a.seg_steps; q += 4) {
        for (int r = 0; r < RB; ++r) av[r] = veorq_s8(vreinterpretq_s8_u8(vld1q_u8(ar[r] + 4 * q)), flip);
        wq = dot_step<RB, 0>(acc, av, wq);
        wq = dot_step<RB, 1>(acc, av, wq);
        wq = dot_step<RB, 2>(acc, av, wq);
        wq = dot_step<RB, 3>(acc, av, wq);
      }
      for (; q < a.seg_steps; ++q) {
        for (int r = 0; r < RB; ++r) {
          uint32_t quad;
          std::memcpy(&quad, ar[r] + 4 * q, sizeof quad);
          av[r] = veorq_s8(vreinterpretq_s8_u32(vdupq_n_u32(quad)), flip);
        }
        wq = dot_step<RB, 0>(acc, av, wq);
      }
    }
    for (int r = 0; r < RB; ++r)
      for (int i = 0; i < 4; ++i) vst1q_s32(c + r * ldc + 4 * i, acc[r][i]);
  }
};

// At most 4 rows per pass (16 accumulators, 4 activation registers and the weights, with room to spare in the 32),
// 5 and 6 rows as 3 + 2 and 3 + 3: a 2-row pass loads as many weights per SDOT as it runs.
template <int R, int J>
void quad_microkernel(const RowSource<uint8_t, kVnniRows>& a, const int8_t* w, int64_t wblock, const int32_t* start,
                      int32_t* c, int64_t ldc) {
  quad_microkernel_in_passes<DotPass, R <= 4 ? 4 : (R + 1) / 2, R, J>(a, w, wblock, start, c, ldc);
}

}  // namespace

const ConvKernels* conv_kernels_neondot() {
  static const ConvKernels kernels = [] {
    ConvKernels k = *conv_kernels_neon();
    k.vnni = QCNN_KERNEL_GRID_6X4(quad_microkernel);
    return k;
  }();
  return &kernels;
}
#else
const ConvKernels* conv_kernels_neondot() { return nullptr; }
#endif

}  // namespace qcnn
