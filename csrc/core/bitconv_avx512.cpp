// The binary kernel on AVX-512 BW (core/bitconv_kernels.h): one zmm holds the tables of four output pixels.
#include <algorithm>

#include "core/avx2.h"
#include "core/bitconv_kernels.h"

namespace qcnn {

#ifdef QCNN_X86
namespace {

// The 16-bit sums of binary_kernel_avx512 (per 128-bit lane: channels 0-7 in lo16, 8-15 in hi16) into the
// int32 outputs of each slot's lanes: lane l's two halves joined by one qword permute and widened, stored less
// the bias at the first epoch, added after it.
template <int R, int J>
QCNN_AVX512VNNI void widen_words512(__m512i (&lo16)[R][J], __m512i (&hi16)[R][J], const Slot* slots, int32_t* acc,
                                    int64_t ldc, bool first, int32_t bias) {
  const __m512i start = _mm512_set1_epi32(-bias);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) {
      for (int lane = 0; lane < 4; ++lane) {
        if (slots[r].out[lane] < 0) continue;
        const __m512i pick = _mm512_setr_epi64(2 * lane, 2 * lane + 1, 8 + 2 * lane, 9 + 2 * lane, 0, 0, 0, 0);
        const __m512i sums = _mm512_cvtepu16_epi32(
            _mm512_castsi512_si256(_mm512_permutex2var_epi64(lo16[r][j], pick, hi16[r][j])));
        int32_t* dst = acc + slots[r].out[lane] * ldc + j * 16;
        _mm512_storeu_si512(dst, _mm512_add_epi32(first ? start : _mm512_loadu_si512(dst), sums));
      }
      lo16[r][j] = hi16[r][j] = _mm512_setzero_si512();
    }
}

// The AVX-512 BW form of binary_kernel_avx2: the tables of four output pixels in the four 128-bit lanes of a
// zmm register, so one vpshufb does 16 channels x 4 pixels x 4 input channels, 256 MACs.
template <int R, int J, bool kContiguous>
QCNN_AVX512VNNI void binary_kernel_avx512(const KernelArgs& a, const Slot* slots, const uint8_t* patterns,
                                          int32_t* acc, int64_t ldc) {
  const __m512i zero = _mm512_setzero_si512();
  __m512i bytes[R][J], lo16[R][J], hi16[R][J];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) bytes[r][j] = lo16[r][j] = hi16[r][j] = zero;
  const uint8_t* base[R];
  for (int r = 0; r < R; ++r) base[r] = a.image + slots[r].offset;
  int64_t epoch_steps = 0;
  bool first = true;
  const int64_t steps = a.taps * a.tap_steps;
  for (int64_t s0 = 0; s0 < steps; s0 += a.flush) {
    const int64_t s1 = std::min<int64_t>(steps, s0 + a.flush);
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t offset = a.step_offsets[s];
      const uint8_t* pt = patterns + s * kPatternBytes;
      __m512i table[R];
      for (int r = 0; r < R; ++r) {
        const uint8_t* p = base[r] + offset;
        if (kContiguous) {
          table[r] = _mm512_loadu_si512(p);
        } else {
          __m512i v = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
          v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + a.lane1)), 1);
          v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * a.lane1)), 2);
          table[r] = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 3 * a.lane1)), 3);
        }
      }
      for (int j = 0; j < J; ++j) {
        const __m512i pattern =
            _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pt + j * a.group_stride)));
        for (int r = 0; r < R; ++r) bytes[r][j] = _mm512_add_epi8(bytes[r][j], _mm512_shuffle_epi8(table[r], pattern));
      }
    }
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < J; ++j) {
        lo16[r][j] = _mm512_add_epi16(lo16[r][j], _mm512_unpacklo_epi8(bytes[r][j], zero));
        hi16[r][j] = _mm512_add_epi16(hi16[r][j], _mm512_unpackhi_epi8(bytes[r][j], zero));
        bytes[r][j] = zero;
      }
    if ((epoch_steps += a.flush) == a.epoch) {
      widen_words512(lo16, hi16, slots, acc, ldc, first, a.bias);
      first = false;
      epoch_steps = 0;
    }
  }
  if (epoch_steps || first) widen_words512(lo16, hi16, slots, acc, ldc, first, a.bias);
}

}  // namespace

const BinaryKernels* binary_kernels_avx512() {
  static const BinaryKernels kernels{
      kSlots512,
      4,
      {{QCNN_BINARY_ROW(binary_kernel_avx512, 1, , false), QCNN_BINARY_ROW(binary_kernel_avx512, 2, , false),
        QCNN_BINARY_ROW(binary_kernel_avx512, 3, , false), QCNN_BINARY_ROW(binary_kernel_avx512, 4, , false)},
       {QCNN_BINARY_ROW(binary_kernel_avx512, 1, , true), QCNN_BINARY_ROW(binary_kernel_avx512, 2, , true),
        QCNN_BINARY_ROW(binary_kernel_avx512, 3, , true), QCNN_BINARY_ROW(binary_kernel_avx512, 4, , true)}},
      binary_kernels_avx2()->quad_values_u8,  // the AVX2 packing of the codes
      0,
      {},
      nullptr};
  return &kernels;
}
#else
const BinaryKernels* binary_kernels_avx512() { return nullptr; }
#endif

}  // namespace qcnn
