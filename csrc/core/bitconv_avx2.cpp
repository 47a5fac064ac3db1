// The binary kernel on AVX2 (core/bitconv_kernels.h): vpshufb looks up 16 channels' sums for two output pixels.
#include <algorithm>
#include <cstring>

#include "core/avx2.h"
#include "core/bitconv_kernels.h"

namespace qcnn {

#ifdef QCNN_X86
namespace {

// Bytes into the 16-bit accumulators: unpacklo/hi give channels 0-7 / 8-15 of both lanes.
template <int R, int J>
QCNN_AVX2 inline void widen_bytes(__m256i (&bytes)[R][J], __m256i (&lo16)[R][J], __m256i (&hi16)[R][J]) {
  const __m256i zero = _mm256_setzero_si256();
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) {
      lo16[r][j] = _mm256_add_epi16(lo16[r][j], _mm256_unpacklo_epi8(bytes[r][j], zero));
      hi16[r][j] = _mm256_add_epi16(hi16[r][j], _mm256_unpackhi_epi8(bytes[r][j], zero));
      bytes[r][j] = zero;
    }
}

// wide[r][lane][channel] += the 16-bit sums (unpacklo/hi hold channels 0-7 / 8-15 of both lanes).
template <int R, int J>
QCNN_AVX2 inline void widen_words(__m256i (&lo16)[R][J], __m256i (&hi16)[R][J], int32_t (*wide)[2][J * 16]) {
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) {
      for (int lane = 0; lane < 2; ++lane) {
        const __m128i lo = lane ? _mm256_extracti128_si256(lo16[r][j], 1) : _mm256_castsi256_si128(lo16[r][j]);
        const __m128i hi = lane ? _mm256_extracti128_si256(hi16[r][j], 1) : _mm256_castsi256_si128(hi16[r][j]);
        auto* w = reinterpret_cast<__m256i*>(wide[r][lane] + j * 16);
        _mm256_store_si256(w, _mm256_add_epi32(_mm256_load_si256(w), _mm256_cvtepu16_epi32(lo)));
        _mm256_store_si256(w + 1, _mm256_add_epi32(_mm256_load_si256(w + 1), _mm256_cvtepu16_epi32(hi)));
      }
      lo16[r][j] = hi16[r][j] = _mm256_setzero_si256();
    }
}

// Byte accumulators (biased table entries, at most 2 beta per step) widen into 16-bit ones every
// `flush` steps, those into int32 every `epoch` steps.
template <int R, int J, bool kContiguous>
QCNN_AVX2 void binary_kernel_avx2(const KernelArgs& a, const Slot* slots, const uint8_t* patterns, int32_t* acc,
                                  int64_t ldc) {
  __m256i bytes[R][J], lo16[R][J], hi16[R][J];
  alignas(32) int32_t wide[R][2][J * 16] = {};
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) bytes[r][j] = lo16[r][j] = hi16[r][j] = _mm256_setzero_si256();
  const uint8_t* base[R];
  for (int r = 0; r < R; ++r) base[r] = a.image + slots[r].offset;
  int64_t epoch_steps = 0;
  const int64_t steps = a.taps * a.tap_steps;
  for (int64_t s0 = 0; s0 < steps; s0 += a.flush) {
    const int64_t s1 = std::min<int64_t>(steps, s0 + a.flush);
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t offset = a.step_offsets[s];
      const uint8_t* pt = patterns + s * kPatternBytes;
      __m256i table[R];
      for (int r = 0; r < R; ++r) {
        const uint8_t* p = base[r] + offset;
        table[r] = kContiguous ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                               : _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(p + a.lane1),
                                                     reinterpret_cast<const __m128i*>(p));
      }
      for (int j = 0; j < J; ++j) {
        const __m256i pattern = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pt + j * a.group_stride));
        for (int r = 0; r < R; ++r) bytes[r][j] = _mm256_add_epi8(bytes[r][j], _mm256_shuffle_epi8(table[r], pattern));
      }
    }
    widen_bytes(bytes, lo16, hi16);
    if ((epoch_steps += a.flush) == a.epoch) {
      widen_words(lo16, hi16, wide);
      epoch_steps = 0;
    }
  }
  widen_words(lo16, hi16, wide);
  const __m256i bias = _mm256_set1_epi32(a.bias);
  for (int r = 0; r < R; ++r)
    for (int lane = 0; lane < 2; ++lane) {
      const int64_t out = slots[r].out[lane];
      if (out < 0) continue;
      for (int j = 0; j < 2 * J; ++j) {
        const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(wide[r][lane] + j * 8));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + out * ldc + j * 8), _mm256_sub_epi32(v, bias));
      }
    }
}

// 32 values at a time: (x - x_sub) wraps exactly in 8 bits before the mask, vpmaddubsw joins pairs
// (v0 + 2^B v1) and vpmaddwd pairs of pairs.
QCNN_AVX2 void quad_values_avx2(const uint8_t* src, int64_t n, int32_t x_sub, int bits, int64_t quads,
                                uint32_t* quad) {
  const __m256i sub = _mm256_set1_epi8(static_cast<char>(x_sub));
  const __m256i mask = _mm256_set1_epi8(static_cast<char>((1 << bits) - 1));
  const __m256i pair = _mm256_set1_epi16(static_cast<int16_t>(1 | (1 << (bits + 8))));
  const __m256i quadw = _mm256_set1_epi32(1 | (1 << (2 * bits + 16)));
  const __m256i iota = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                        22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int64_t c0 = 0; c0 < n; c0 += 32) {
    const int64_t len = std::min<int64_t>(32, n - c0);
    __m256i v;
    if (len == 32) {
      v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + c0));
    } else {
      alignas(32) uint8_t tail[32] = {};
      std::memcpy(tail, src + c0, static_cast<size_t>(len));
      v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
    }
    v = _mm256_and_si256(_mm256_sub_epi8(v, sub), mask);
    if (len < 32) v = _mm256_and_si256(v, _mm256_cmpgt_epi8(_mm256_set1_epi8(static_cast<char>(len)), iota));
    const __m256i packed = _mm256_madd_epi16(_mm256_maddubs_epi16(v, pair), quadw);
    if (quads - c0 / 4 >= 8) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(quad + c0 / 4), packed);
    } else {
      alignas(32) uint32_t out[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(out), packed);
      std::copy(out, out + (quads - c0 / 4), quad + c0 / 4);
    }
  }
}

}  // namespace

const BinaryKernels* binary_kernels_avx2() {
  static const BinaryKernels kernels{
      kSlots,
      2,
      {{QCNN_BINARY_ROW(binary_kernel_avx2, 1, , false), QCNN_BINARY_ROW(binary_kernel_avx2, 2, , false)},
       {QCNN_BINARY_ROW(binary_kernel_avx2, 1, , true), QCNN_BINARY_ROW(binary_kernel_avx2, 2, , true)}},
      quad_values_avx2,
      0,
      {},
      nullptr};
  return &kernels;
}
#else
const BinaryKernels* binary_kernels_avx2() { return nullptr; }
#endif

}  // namespace qcnn
