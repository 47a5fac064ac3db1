// aarch64 int8 matrix-multiply (FEAT_I8MM) kernel of the convolutions (qgemm_kernels.h): the quad GEMM on USMMLA, on
// weights in k-octets (quad_gemm_octets). Its table is the dot-product one with this GEMM in place.
#include "core/neon.h"
#include "core/qgemm_kernels.h"

namespace qcnn {

#ifdef QCNN_ARM
namespace {

// Rows [r0, r0 + RB) x 16 channels: c = start + sum_k a[k] * w[k], 32 MACs per USMMLA, which multiplies 2 rows x 8
// unsigned activations by 2 channels x 8 signed weights into the 2 x 2 int32 sums (row 0 ch 0, row 0 ch 1, row 1
// ch 0, row 1 ch 1). Rows go in pairs; an odd last row is paired with a copy of itself (RowSource repeats its last row)
// whose sums are dropped. Each segment holds an even number of quads. Its adds wrap: exact wherever the final value
// fits int32.
template <int RB>
struct MatmulPass {
  static constexpr int kPairs = (RB + 1) / 2;
  QCNN_I8MM static void run(const RowSource<uint8_t, kVnniRows>& a, int r0, const int8_t* w, const int32_t* start,
                            int32_t* c, int64_t ldc) {
    int32x4_t acc[kPairs][8];  // [row pair][channel pair]
    for (int p = 0; p < kPairs; ++p)
      for (int i = 0; i < 8; ++i) acc[p][i] = vdupq_n_s32(0);
    const int8_t* wo = w;
    for (int64_t s = 0; s < a.segs; ++s) {
      const uint8_t* ar[2 * kPairs];
      for (int r = 0; r < 2 * kPairs; ++r) ar[r] = a.row[r0 + r] + s * a.seg_stride;
      for (int64_t o = 0; o < a.seg_steps / 2; ++o, wo += 128) {
        uint8x16_t av[kPairs];
        for (int p = 0; p < kPairs; ++p)
          av[p] = vcombine_u8(vld1_u8(ar[2 * p] + 8 * o), vld1_u8(ar[2 * p + 1] + 8 * o));
        const int8_t* wi = wo;
        for (int i = 0; i < 8; ++i) {
          const int8x16_t wv = vld1q_s8(wi);
          for (int p = 0; p < kPairs; ++p) acc[p][i] = vusmmlaq_s32(acc[p][i], av[p], wv);
          // 3 row pairs: the next channel pair's weights through an empty asm that depends on these sums (GCC would
          // otherwise load all 8 first, and with the 24 accumulators they do not fit the 32 registers)
          wi += 16;
          if constexpr (kPairs == 3) __asm__("" : "+r"(wi) : "w"(acc[kPairs - 1][i]));
        }
      }
    }
    for (int p = 0; p < kPairs; ++p)
      for (int i = 0; i < 8; i += 2) {
        const int64x2_t x = vreinterpretq_s64_s32(acc[p][i]), y = vreinterpretq_s64_s32(acc[p][i + 1]);
        const int32x4_t s = vld1q_s32(start + 2 * i);
        vst1q_s32(c + 2 * p * ldc + 2 * i, vaddq_s32(s, vreinterpretq_s32_s64(vzip1q_s64(x, y))));
        if (2 * p + 1 < RB)
          vst1q_s32(c + (2 * p + 1) * ldc + 2 * i, vaddq_s32(s, vreinterpretq_s32_s64(vzip2q_s64(x, y))));
      }
  }
};

// 6 rows (3 pairs): 24 accumulators, 3 activation registers and the weights of one channel pair at a time.
template <int R, int J>
void quad_microkernel(const RowSource<uint8_t, kVnniRows>& a, const int8_t* w, int64_t wblock, const int32_t* start,
                      int32_t* c, int64_t ldc) {
  quad_microkernel_in_passes<MatmulPass, 6, R, J>(a, w, wblock, start, c, ldc);
}

}  // namespace

const ConvKernels* conv_kernels_i8mm() {
  static const ConvKernels kernels = [] {
    ConvKernels k = *conv_kernels_neondot();
    k.vnni = QCNN_KERNEL_GRID_6X4(quad_microkernel);
    return k;
  }();
  return &kernels;
}
#else
const ConvKernels* conv_kernels_i8mm() { return nullptr; }
#endif

}  // namespace qcnn
