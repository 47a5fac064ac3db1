// AVX-512 VNNI kernels of the convolutions (qgemm_kernels.h): the u8 x s8 VNNI GEMM microkernels (vpdpbusd), the
// requantizing epilogues on 16-channel blocks (int64 lanes, or double where pack_conv proved it exact), the
// threshold epilogue and the peak loop. Their table is the AVX2 one with these in place of its kernels.
#include <cstring>
#include <type_traits>

#include "core/avx2.h"
#include "core/qgemm_kernels.h"

namespace qcnn {

#ifdef QCNN_X86
namespace {

// c[r][j*16 + lane] = start[j*16 + lane] + sum_q sum_i a[r][4q + i] * w[j][q][lane][i]. vpdpbusd multiplies a
// broadcast quad of unsigned activations with 16 channel quads of signed weights and adds the four products
// into each int32 lane, 64 MACs per instruction. Its adds wrap, so the sum is exact wherever the final
// value fits int32, which the engine's load-time bound on |acc| proves.
template <int R, int J>
QCNN_AVX512VNNI void vnni_microkernel(const RowSource<uint8_t, kVnniRows>& a, const int8_t* w, int64_t wblock,
                                      const int32_t* start, int32_t* c, int64_t ldc) {
  __m512i acc[R][J];
  for (int j = 0; j < J; ++j) {
    const __m512i s = _mm512_loadu_si512(start + j * 16);
    for (int r = 0; r < R; ++r) acc[r][j] = s;
  }
  const int8_t* wq = w;
  for (int64_t s = 0; s < a.segs; ++s) {
    const uint8_t* ar[R];
    for (int r = 0; r < R; ++r) ar[r] = a.row[r] + s * a.seg_stride;
    for (int64_t q = 0; q < a.seg_steps; ++q, wq += 64) {
      __m512i wv[J];
      for (int j = 0; j < J; ++j) wv[j] = _mm512_loadu_si512(wq + j * wblock);
      for (int r = 0; r < R; ++r) {
        int32_t quad;
        std::memcpy(&quad, ar[r] + 4 * q, sizeof quad);
        const __m512i av = _mm512_set1_epi32(quad);
        for (int j = 0; j < J; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av, wv[j]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) _mm512_storeu_si512(c + r * ldc + j * 16, acc[r][j]);
}

// Two RequantBlocks' 32-byte arrays in one zmm register: the multipliers of 16 channels, or the int64 lanes of
// channels (0, 2, 4, 6) of the first and of the second, as vpmuldq leaves the even channels of 16.
template <typename T>
QCNN_AVX512VNNI inline __m512i join_blocks(const T* first, const T* second) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_load_si256(reinterpret_cast<const __m256i*>(first))),
                            _mm256_load_si256(reinterpret_cast<const __m256i*>(second)), 1);
}

// The `lanes` of 16 output codes in int32 lanes, stored as Out as store_codes8 does: narrowed to uint8 by vpmovdb
// in registers (its memory form is slow on AMD), all 16 by a plain store.
template <typename Out>
QCNN_AVX512VNNI inline void store_codes512(Out* out, __mmask16 lanes, __m512i v) {
  if constexpr (std::is_same_v<Out, uint8_t>) {
    const __m128i codes = _mm512_cvtepi32_epi8(v);
    if (lanes == 0xFFFF)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), codes);
    else
      _mm_mask_storeu_epi8(out, lanes, codes);
  } else if (lanes == 0xFFFF) {
    _mm512_storeu_si512(out, v);
  } else {
    _mm512_mask_storeu_epi32(out, lanes, v);
  }
}

// RS(v + bias, shift) + zp clamped to [lo, hi] in 8 int64 lanes: AVX-512 has the arithmetic 64-bit shift and
// the 64-bit min / max that AVX2 builds from compares and blends.
struct Requant512 {
  __m512i bias, shift, half, tie;
};
// RS(v + bias, shift) alone (the caller adds zp where no clamp is needed).
QCNN_AVX512VNNI inline __m512i rounding_shift512(__m512i v, const Requant512& q) {
  v = _mm512_add_epi64(v, q.bias);
  v = _mm512_add_epi64(_mm512_add_epi64(v, q.half), _mm512_and_si512(_mm512_srlv_epi64(v, q.shift), q.tie));
  return _mm512_srav_epi64(v, q.shift);
}
QCNN_AVX512VNNI inline __m512i requant512(__m512i v, const Requant512& q, __m512i zp, __m512i lo, __m512i hi) {
  return _mm512_min_epi64(_mm512_max_epi64(_mm512_add_epi64(rounding_shift512(v, q), zp), lo), hi);
}

// The requantization of `rows` rows, 16 channels at a time with each block's constants in registers over the
// rows; a last block of 8 to 15 channels under a lane mask (its second half's constants repeat the first's,
// masked off past 8), and the last m % 8 channels on the scalar form. Where no accumulator of the proven range
// reaches the clamp (PackedConv::requant_unclamped: a wide residual stream), the zero point and the store offset
// are one int32 add after the join and the int64 clamp goes.
template <typename Out, bool kClamp>
QCNN_AVX512VNNI void epilogue_avx512_run(const PackedConv& pc, const RequantBlock* blocks, const int32_t* acc,
                                         int64_t ldc, int64_t rows, Out* out) {
  const ConvEpilogue& e = pc.epi;
  const int64_t m_all = pc.g.m, full = m_all / 8 * 8;
  const __m512i zp = _mm512_set1_epi64(e.zero_point), lo = _mm512_set1_epi64(e.lo), hi = _mm512_set1_epi64(e.hi),
                offset = _mm512_set1_epi32(e.store_offset),
                unclamped_add = _mm512_set1_epi32(static_cast<int32_t>(int64_t{e.zero_point} - e.store_offset));
  for (int64_t m = 0; m < full; m += 16) {
    const bool half = m + 8 == full;
    const __mmask16 lanes = half ? 0x00FF : 0xFFFF;
    const RequantBlock &b0 = blocks[m / 8], &b1 = blocks[half ? m / 8 : m / 8 + 1];
    const __m512i mult = join_blocks(b0.multiplier, b1.multiplier);
    const __m512i mult_odd = _mm512_srli_epi64(mult, 32);
    const Requant512 even_q{join_blocks(b0.bias_even, b1.bias_even), join_blocks(b0.shift_even, b1.shift_even),
                            join_blocks(b0.half_even, b1.half_even), join_blocks(b0.tie_even, b1.tie_even)};
    const Requant512 odd_q{join_blocks(b0.bias_odd, b1.bias_odd), join_blocks(b0.shift_odd, b1.shift_odd),
                           join_blocks(b0.half_odd, b1.half_odd), join_blocks(b0.tie_odd, b1.tie_odd)};
    for (int64_t r = 0; r < rows; ++r) {
      const __m512i a = _mm512_maskz_loadu_epi32(lanes, acc + r * ldc + m);
      const __m512i even = _mm512_mul_epi32(a, mult), odd = _mm512_mul_epi32(_mm512_srli_epi64(a, 32), mult_odd);
      if constexpr (kClamp) {
        const __m512i ve = requant512(even, even_q, zp, lo, hi), vo = requant512(odd, odd_q, zp, lo, hi);
        store_codes512(out + r * m_all + m, lanes,
                       _mm512_sub_epi32(_mm512_mask_blend_epi32(0xAAAA, ve, _mm512_slli_epi64(vo, 32)), offset));
      } else {
        const __m512i ve = rounding_shift512(even, even_q), vo = rounding_shift512(odd, odd_q);
        store_codes512(out + r * m_all + m, lanes,
                       _mm512_add_epi32(_mm512_mask_blend_epi32(0xAAAA, ve, _mm512_slli_epi64(vo, 32)), unclamped_add));
      }
    }
  }
  if (full < m_all)
    for (int64_t r = 0; r < rows; ++r) epilogue_scalar(pc, acc + r * ldc, full, m_all, out + r * m_all);
}

template <typename Out>
QCNN_AVX512VNNI void epilogue_avx512(const PackedConv& pc, const RequantBlock* blocks, const int32_t* acc, int64_t ldc,
                                     int64_t rows, Out* out) {
  pc.requant_unclamped ? epilogue_avx512_run<Out, false>(pc, blocks, acc, ldc, rows, out)
                       : epilogue_avx512_run<Out, true>(pc, blocks, acc, ldc, rows, out);
}

// 64 channels' codes of one row, four vectors of 16 in int32 lanes, stored as uint8 saturated to [0, 255]: a signed
// and an unsigned saturating pack and a dword permute (the packs interleave the four by 128-bit lane), instead of
// four vpmovusdb of two port-5 operations each and their clamps.
QCNN_AVX512VNNI inline void store_saturated64(uint8_t* out, __m512i c0, __m512i c1, __m512i c2, __m512i c3) {
  // 128-bit lane L: the codes 4L..4L+3 of c0, c1, c2 and c3, as int16, then as bytes
  const __m512i bytes = _mm512_packus_epi16(_mm512_packs_epi32(c0, c1), _mm512_packs_epi32(c2, c3));
  _mm512_storeu_si512(out, _mm512_permutexvar_epi32(
                               _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), bytes));
}

// The same for 32 and 16 codes (the channels of a layer past its last 64: 96 = 64 + 32, 144 = 128 + 16).
QCNN_AVX512VNNI inline void store_saturated32(uint8_t* out, __m512i c0, __m512i c1) {
  const __m512i bytes = _mm512_packus_epi16(_mm512_packs_epi32(c0, c1), _mm512_setzero_si512());
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                      _mm512_castsi512_si256(_mm512_permutexvar_epi32(
                          _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 3, 6, 7, 10, 11, 14, 15), bytes)));
}
QCNN_AVX512VNNI inline void store_saturated16(uint8_t* out, __m512i c0) {
  const __m512i bytes = _mm512_packus_epi16(_mm512_packs_epi32(c0, _mm512_setzero_si512()), _mm512_setzero_si512());
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                   _mm512_castsi512_si128(_mm512_permutexvar_epi32(
                       _mm512_setr_epi32(0, 4, 8, 12, 1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15), bytes)));
}

// The constants of 16 channels of the double epilogue, and its rounded values of one row's accumulators.
struct F64Channels {
  __m512d scale0, scale1, offset0, offset1, magic;
  __m512i low_dwords;
};
QCNN_AVX512VNNI inline __m512i f64_codes(const int32_t* acc, __mmask16 lanes, const F64Channels& q) {
  const __m256i a0 = _mm256_maskz_loadu_epi32(static_cast<__mmask8>(lanes), acc);
  const __m256i a1 = _mm256_maskz_loadu_epi32(static_cast<__mmask8>(lanes >> 8), acc + 8);
  const __m512d y0 = _mm512_fmadd_pd(_mm512_cvtepi32_pd(a0), q.scale0, q.offset0);
  const __m512d y1 = _mm512_fmadd_pd(_mm512_cvtepi32_pd(a1), q.scale1, q.offset1);
  return _mm512_permutex2var_epi32(_mm512_castpd_si512(_mm512_add_pd(y0, q.magic)), q.low_dwords,
                                   _mm512_castpd_si512(_mm512_add_pd(y1, q.magic)));
}

// The same requantization in double where pack_requant_f64 proved it exact (PackedConv::requant_scale): the fma
// acc * (multiplier 2^-s) + bias 2^-s rounds once, to itself, as |acc * multiplier + bias| < 2^51 has at most 53
// significant bits; adding 1.5 * 2^52 then rounds it to an integer, half to even as rounding_shift does, held in the
// low 32 bits of the lane (|value| < 2^28). About 15 operations per 16 channels instead of 26 in int64 lanes
// (1.4x faster measured, the larger part of a 3x3 depthwise layer's time).
//
// Where the layer is also tie-free (PackedConv::tie_free_blocks), zero_point - store_offset joins the rounding
// constant (rounding y + zp at an integer zp is rounding y, then adding zp, wherever y is no tie); where the stored
// codes are uint8 clamped to [0, 255], saturating packs are the clamp (store_saturated64).
template <typename Out, bool kFoldZeroPoint, bool kSaturate>
QCNN_AVX512VNNI void epilogue_f64_run(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out) {
  const ConvEpilogue& e = pc.epi;
  const int64_t m_all = pc.g.m;
  const __m512d magic = _mm512_set1_pd(0x1.8p52 + (kFoldZeroPoint ? e.zero_point - e.store_offset : 0));
  const __m512i low_dwords = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i zp = _mm512_set1_epi32(e.zero_point - e.store_offset), lo = _mm512_set1_epi32(e.lo - e.store_offset),
                hi = _mm512_set1_epi32(e.hi - e.store_offset);
  auto channels = [&](int64_t m) QCNN_AVX512VNNI {
    return F64Channels{_mm512_loadu_pd(&pc.requant_scale[m]), _mm512_loadu_pd(&pc.requant_scale[m + 8]),
                       _mm512_loadu_pd(&pc.requant_offset[m]), _mm512_loadu_pd(&pc.requant_offset[m + 8]), magic,
                       low_dwords};
  };
  auto codes = [&](const int32_t* a, __mmask16 lanes, const F64Channels& q) QCNN_AVX512VNNI {
    const __m512i v = f64_codes(a, lanes, q);
    return kFoldZeroPoint ? v : _mm512_add_epi32(v, zp);
  };
  int64_t m = 0;
  if constexpr (kSaturate)
    for (; m + 64 <= m_all; m += 64) {
      const F64Channels q0 = channels(m), q1 = channels(m + 16), q2 = channels(m + 32), q3 = channels(m + 48);
      for (int64_t r = 0; r < rows; ++r) {
        const int32_t* a = acc + r * ldc + m;
        store_saturated64(out + r * m_all + m, codes(a, 0xFFFF, q0), codes(a + 16, 0xFFFF, q1),
                          codes(a + 32, 0xFFFF, q2), codes(a + 48, 0xFFFF, q3));
      }
    }
  if constexpr (kSaturate) {
    if (m + 32 <= m_all) {
      const F64Channels q0 = channels(m), q1 = channels(m + 16);
      for (int64_t r = 0; r < rows; ++r) {
        const int32_t* a = acc + r * ldc + m;
        store_saturated32(out + r * m_all + m, codes(a, 0xFFFF, q0), codes(a + 16, 0xFFFF, q1));
      }
      m += 32;
    }
    if (m + 16 <= m_all) {
      const F64Channels q0 = channels(m);
      for (int64_t r = 0; r < rows; ++r) store_saturated16(out + r * m_all + m, codes(acc + r * ldc + m, 0xFFFF, q0));
      m += 16;
    }
  }
  for (; m < m_all; m += 16) {
    const __mmask16 lanes = m_all - m >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (m_all - m)) - 1);
    const F64Channels q = channels(m);
    for (int64_t r = 0; r < rows; ++r)
      store_codes512(out + r * m_all + m, lanes,
                     _mm512_min_epi32(_mm512_max_epi32(codes(acc + r * ldc + m, lanes, q), lo), hi));
  }
}

template <typename Out>
QCNN_AVX512VNNI void epilogue_f64(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out) {
  const ConvEpilogue& e = pc.epi;
  const bool fold = !pc.tie_free_blocks.empty();
  if constexpr (std::is_same_v<Out, uint8_t>) {
    if (int64_t{e.lo} - e.store_offset == 0 && int64_t{e.hi} - e.store_offset == 255)
      return fold ? epilogue_f64_run<Out, true, true>(pc, acc, ldc, rows, out)
                  : epilogue_f64_run<Out, false, true>(pc, acc, ldc, rows, out);
  }
  fold ? epilogue_f64_run<Out, true, false>(pc, acc, ldc, rows, out)
       : epilogue_f64_run<Out, false, false>(pc, acc, ldc, rows, out);
}

// The requantization where pack_conv proved it tie-free (PackedConv::tie_free_blocks): each accumulator clamped into
// its channel's unsaturated range, (acc * multiplier + bias_half) >> shift in int64 lanes without the parity term of
// ties-to-even, then the zero point, the clamp and the store offset in int32 lanes: 16 operations per 16 channels
// instead of 26.
template <typename Out>
QCNN_AVX512VNNI void epilogue_tie_free(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out) {
  const int64_t m_all = pc.g.m;
  const __m512i out_add = _mm512_set1_epi32(pc.tie_free_out_add), lo = _mm512_set1_epi32(pc.tie_free_out_lo),
                hi = _mm512_set1_epi32(pc.tie_free_out_hi);
  for (int64_t m = 0; m < m_all; m += 16) {
    const __mmask16 lanes = m_all - m >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (m_all - m)) - 1);
    const TieFreeBlock& b = pc.tie_free_blocks[static_cast<size_t>(m / 16)];
    const __m512i acc_lo = _mm512_load_si512(b.acc_lo), acc_hi = _mm512_load_si512(b.acc_hi),
                  mult = _mm512_load_si512(b.multiplier), mult_odd = _mm512_srli_epi64(mult, 32),
                  bias_even = _mm512_load_si512(b.bias_half_even), bias_odd = _mm512_load_si512(b.bias_half_odd),
                  shift_even = _mm512_load_si512(b.shift_even), shift_odd = _mm512_load_si512(b.shift_odd);
    for (int64_t r = 0; r < rows; ++r) {
      const __m512i a =
          _mm512_min_epi32(_mm512_max_epi32(_mm512_maskz_loadu_epi32(lanes, acc + r * ldc + m), acc_lo), acc_hi);
      const __m512i even = _mm512_srav_epi64(_mm512_add_epi64(_mm512_mul_epi32(a, mult), bias_even), shift_even);
      const __m512i odd =
          _mm512_srav_epi64(_mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(a, 32), mult_odd), bias_odd), shift_odd);
      const __m512i v = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
      store_codes512(out + r * m_all + m, lanes, _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(v, out_add), lo), hi));
    }
  }
}

// The same on 16-channel zmm blocks: the sign applied as (acc ^ s) - s with s = sign >> 31, a masked
// increment per threshold, the codes narrowed by vpmovdb; the channels past the last 16 on the AVX2 form.
template <int S, typename Out>
QCNN_AVX512VNNI void threshold_epilogue_avx512(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows,
                                               Out* out) {
  const int64_t m_all = pc.g.m, full = m_all / 16 * 16;
  const __m512i base = _mm512_set1_epi32(pc.epi.lo - pc.epi.store_offset), one = _mm512_set1_epi32(1);
  for (int64_t m = 0; m < full; m += 16) {
    const __m512i sign = _mm512_srai_epi32(_mm512_loadu_si512(&pc.level_signs[m]), 31);
    const int32_t* t = pc.level_thresholds.data() + (m / 16) * S * 16;
    __m512i thr[S + 1];
    for (int l = 0; l < S; ++l) thr[l] = _mm512_loadu_si512(t + l * 16);
    for (int64_t r = 0; r < rows; ++r) {
      const __m512i g = _mm512_sub_epi32(_mm512_xor_si512(_mm512_loadu_si512(acc + r * ldc + m), sign), sign);
      __m512i v = base;
      for (int l = 0; l < S; ++l) v = _mm512_mask_add_epi32(v, _mm512_cmpgt_epi32_mask(g, thr[l]), v, one);
      store_codes512(out + r * m_all + m, 0xFFFF, v);
    }
  }
  threshold_epilogue_avx2_from(pc, acc, ldc, rows, out, full);
}

// 8 independent vpdpbusd chains (64 u8 x s8 MACs each) per iteration.
QCNN_AVX512VNNI int64_t peak_loop_vnni(int64_t iterations) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  const __m512i x = _mm512_set1_epi8(3), w = _mm512_set1_epi8(-2);
  for (int64_t i = 0; i < iterations; ++i) {
    __asm__ volatile(
        "vpdpbusd %[w], %[x], %[a0]\n\t"
        "vpdpbusd %[w], %[x], %[a1]\n\t"
        "vpdpbusd %[w], %[x], %[a2]\n\t"
        "vpdpbusd %[w], %[x], %[a3]\n\t"
        "vpdpbusd %[w], %[x], %[a4]\n\t"
        "vpdpbusd %[w], %[x], %[a5]\n\t"
        "vpdpbusd %[w], %[x], %[a6]\n\t"
        "vpdpbusd %[w], %[x], %[a7]\n\t"
        : [a0] "+v"(a0), [a1] "+v"(a1), [a2] "+v"(a2), [a3] "+v"(a3), [a4] "+v"(a4), [a5] "+v"(a5), [a6] "+v"(a6),
          [a7] "+v"(a7)
        : [x] "v"(x), [w] "v"(w));
  }
  const __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                                     _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
  return _mm_cvtsi128_si32(_mm512_castsi512_si128(s));
}

template <typename Out>
void thresholds(const PackedConv& pc, const int32_t* acc, int64_t ldc, int64_t rows, Out* out) {
  with_threshold_count(pc, [&](auto s) { threshold_epilogue_avx512<decltype(s)::value>(pc, acc, ldc, rows, out); });
}

}  // namespace

const ConvKernels* conv_kernels_avx512() {
  static const ConvKernels kernels = [] {
    ConvKernels k = *conv_kernels_avx2();
    k.vnni = QCNN_KERNEL_GRID_6X4(vnni_microkernel);
    k.epilogue_u8 = {epilogue_avx512<uint8_t>, epilogue_f64<uint8_t>, thresholds<uint8_t>, epilogue_tie_free<uint8_t>};
    k.epilogue_i32 = {epilogue_avx512<int32_t>, epilogue_f64<int32_t>, thresholds<int32_t>, epilogue_tie_free<int32_t>};
    k.peak = {peak_loop_vnni, 1 << 16, 8 * 64};  // 8 vpdpbusd of 64 MACs per iteration
    return k;
  }();
  return &kernels;
}
#else
const ConvKernels* conv_kernels_avx512() { return nullptr; }
#endif

}  // namespace qcnn
