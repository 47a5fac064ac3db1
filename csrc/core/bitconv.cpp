#include "core/bitconv.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "core/avx2.h"

namespace qcnn {

namespace {

constexpr uint32_t kLowNibbles = 0x0F0F0F0Fu;
constexpr int kBitRows = 2;    // output positions per microkernel call
constexpr int kBitBlocks = 3;  // 8-channel blocks per microkernel call
constexpr int64_t kBitPanelBytes = 16 << 10;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Words per tile row: [planes][2: the word, its high nibbles shifted down][kwords], then S.
int64_t row_words(const BitWeights& bw) { return int64_t{bw.planes} * 2 * bw.kwords + 1; }

// The per-image bit image: [planes][2: bytes, their high nibbles shifted down][hp][wp][cbytes], then
// the int32 sum of v over each pixel's channels [hp][wp] (zero on the border).
struct ImageLayout {
  int64_t wp, pixels, plane_bytes, sums_offset, total;
  explicit ImageLayout(const PackedConv& pc) {
    const ConvGeom& g = pc.g;
    wp = g.w + 2 * g.pw;
    pixels = (g.h + 2 * g.ph) * wp;
    plane_bytes = pixels * pc.bits.cbytes;
    sums_offset = (int64_t{pc.bits.planes} * 2 * plane_bytes + 3) / 4 * 4;
    total = sums_offset + pixels * 4;
  }
};

// dst[0, n) = src[0, n) for the short runs of a receptive field (a few to a few dozen bytes), without
// a library call per run: overlapping 8- or 4-byte moves, never past either end.
inline void copy_run(uint8_t* dst, const uint8_t* src, int64_t n) {
  uint64_t a;
  if (n >= 8) {
    int64_t i = 0;
    for (; i + 8 < n; i += 8) {
      std::memcpy(&a, src + i, 8);
      std::memcpy(dst + i, &a, 8);
    }
    std::memcpy(&a, src + n - 8, 8);
    std::memcpy(dst + n - 8, &a, 8);
  } else if (n >= 4) {
    uint32_t c, d;
    std::memcpy(&c, src, 4);
    std::memcpy(&d, src + n - 4, 4);
    std::memcpy(dst, &c, 4);
    std::memcpy(dst + n - 4, &d, 4);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
  }
}

// Tile rows of input words: the receptive field's bytes of each plane and of its shifted high nibbles,
// copied from the bit image (the weights' low nibbles are masked at load, so the words themselves
// serve the low half), and S summed from the per-pixel sums.
void build_panel(const PackedConv& pc, const uint8_t* image, int64_t p0, int64_t rows, uint32_t* panel) {
  const BitWeights& bw = pc.bits;
  const ConvGeom& g = pc.g;
  const ImageLayout layout(pc);
  const int64_t cbytes = bw.cbytes, wp = layout.wp, run = g.kw * cbytes, ystep = int64_t{g.dh} * wp * cbytes;
  const int64_t stride = row_words(bw);
  const auto* sums = reinterpret_cast<const int32_t*>(image + layout.sums_offset);
  int64_t oy = p0 / g.ow, ox = p0 % g.ow;
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* row = panel + r * stride;
    const int64_t pixel = oy * g.sh * wp + ox * g.sw;
    for (int64_t half = 0; half < 2 * bw.planes; ++half) {
      uint32_t* words = row + half * bw.kwords;
      words[bw.kwords - 1] = 0;  // the padding bytes of the last word
      auto* dst = reinterpret_cast<uint8_t*>(words);
      const uint8_t* src = image + half * layout.plane_bytes + pixel * cbytes;
      for (int ky = 0; ky < g.kh; ++ky) copy_run(dst + ky * run, src + ky * ystep, run);
    }
    int64_t sum = 0;
    for (int ky = 0; ky < g.kh; ++ky)
      for (int kx = 0; kx < g.kw; ++kx) sum += sums[pixel + int64_t{ky} * g.dh * wp + kx];
    row[stride - 1] = static_cast<uint32_t>(sum);  // S < 2^31: K * max v is bounded at load
    if (++ox == g.ow) {
      ox = 0;
      ++oy;
    }
  }
}

template <int R, int J>
void bit_kernel_scalar(const BitWeights& bw, const uint32_t* panel, const uint32_t* w, int32_t* c, int64_t ldc) {
  const int64_t stride = row_words(bw), wblock = bw.kwords * 16;
  for (int r = 0; r < R; ++r) {
    const uint32_t* row = panel + r * stride;
    const int32_t s = static_cast<int32_t>(row[stride - 1]);
    for (int j = 0; j < J; ++j)
      for (int l = 0; l < 8; ++l) {
        int64_t p = 0;
        for (int b = 0; b < bw.planes; ++b) {
          const uint32_t* lo = row + int64_t{b} * 2 * bw.kwords;
          const uint32_t* hi = lo + bw.kwords;
          int64_t count = 0;
          for (int64_t q = 0; q < bw.kwords; ++q) {
            const uint32_t* wq = w + j * wblock + q * 16;
            count += __builtin_popcount(wq[l] & lo[q]) + __builtin_popcount(wq[8 + l] & hi[q]);
          }
          p += count << b;
        }
        c[r * ldc + j * 8 + l] = static_cast<int32_t>(2 * p - s);
      }
  }
}

#ifdef QCNN_X86
QCNN_AVX2 inline __m256i nibble_count(__m256i table, __m256i a, __m256i b) {
  return _mm256_add_epi8(_mm256_shuffle_epi8(table, a), _mm256_shuffle_epi8(table, b));
}

// acc8 collects weighted byte counts: a word adds at most 8 * (2^B - 1) to a byte, so they are
// widened to int32 lanes (two multiplies by one) every 255 / (8 * (2^B - 1)) words.
template <int R, int J, int B>
QCNN_AVX2 void bit_kernel_avx2(const BitWeights& bw, const uint32_t* panel, const uint32_t* w, int32_t* c,
                               int64_t ldc) {
  const int64_t stride = row_words(bw), kwords = bw.kwords, wblock = kwords * 16;
  constexpr int kFlush = 255 / (8 * ((1 << B) - 1));
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                         2, 2, 3, 2, 3, 3, 4);
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  __m256i acc8[R][J], acc32[R][J];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) acc8[r][j] = acc32[r][j] = _mm256_setzero_si256();
  int pending = 0;
  for (int64_t q = 0; q < kwords; ++q) {
    for (int r = 0; r < R; ++r) {
      const uint32_t* row = panel + r * stride + q;
      __m256i lo[B], hi[B];
      for (int b = 0; b < B; ++b) {
        lo[b] = _mm256_set1_epi32(static_cast<int32_t>(row[b * 2 * kwords]));
        hi[b] = _mm256_set1_epi32(static_cast<int32_t>(row[b * 2 * kwords + kwords]));
      }
      for (int j = 0; j < J; ++j) {
        const __m256i wl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * wblock + q * 16));
        const __m256i wh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * wblock + q * 16 + 8));
        // Horner over the planes: t = sum_b 2^b count_b
        __m256i t = nibble_count(table, _mm256_and_si256(wl, lo[B - 1]), _mm256_and_si256(wh, hi[B - 1]));
        for (int b = B - 2; b >= 0; --b)
          t = _mm256_add_epi8(_mm256_add_epi8(t, t),
                              nibble_count(table, _mm256_and_si256(wl, lo[b]), _mm256_and_si256(wh, hi[b])));
        acc8[r][j] = _mm256_add_epi8(acc8[r][j], t);
      }
    }
    if (++pending == kFlush || q + 1 == kwords) {
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < J; ++j) {
          const __m256i wide = _mm256_madd_epi16(_mm256_maddubs_epi16(acc8[r][j], ones8), ones16);
          acc32[r][j] = _mm256_add_epi32(acc32[r][j], wide);
          acc8[r][j] = _mm256_setzero_si256();
        }
      pending = 0;
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m256i s = _mm256_set1_epi32(static_cast<int32_t>(panel[r * stride + stride - 1]));
    for (int j = 0; j < J; ++j)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc + j * 8),
                          _mm256_sub_epi32(_mm256_add_epi32(acc32[r][j], acc32[r][j]), s));
  }
}
#endif

using BitKernel = void (*)(const BitWeights&, const uint32_t*, const uint32_t*, int32_t*, int64_t);

#define QCNN_BIT_ROWS(fn, ...) \
  {{fn<1, 1 __VA_ARGS__>, fn<1, 2 __VA_ARGS__>, fn<1, 3 __VA_ARGS__>}, \
   {fn<2, 1 __VA_ARGS__>, fn<2, 2 __VA_ARGS__>, fn<2, 3 __VA_ARGS__>}}

BitKernel bit_kernel(Isa isa, int planes, int rows, int blocks) {
  static const BitKernel scalar[kBitRows][kBitBlocks] = QCNN_BIT_ROWS(bit_kernel_scalar);
#ifdef QCNN_X86
  static_assert(kMaxBitPlanes == 2, "one row of kernels per plane count");
  static const BitKernel avx2[kMaxBitPlanes][kBitRows][kBitBlocks] = {QCNN_BIT_ROWS(bit_kernel_avx2, , 1),
                                                                        QCNN_BIT_ROWS(bit_kernel_avx2, , 2)};
  if (isa == Isa::Avx2) return avx2[planes - 1][rows - 1][blocks - 1];
#endif
  (void)isa;
  (void)planes;
  return scalar[rows - 1][blocks - 1];
}
#undef QCNN_BIT_ROWS

// Bits of one pixel: plane j, byte c / 8, bit c % 8 = bit j of v = x[c] - x_sub (planes 2 plane_bytes
// apart: the high-nibble copies sit between them). Returns the sum of v.
template <typename T>
int64_t pixel_bits(const T* src, int64_t c, int32_t x_sub, int planes, int64_t plane_bytes, uint8_t* dst) {
  int64_t sum = 0;
  for (int64_t i = 0; i < c; ++i) {
    const uint32_t v = static_cast<uint32_t>(static_cast<int64_t>(src[i]) - x_sub);
    sum += v;
    for (int j = 0; j < planes; ++j)
      dst[2 * j * plane_bytes + i / 8] |= static_cast<uint8_t>(((v >> j) & 1u) << (i % 8));
  }
  return sum;
}

#ifdef QCNN_X86
// 32 channels at a time: v - x_sub wraps exactly in 8 bits (v < 16), and shifting bit j to bit 7 of
// each byte lets vpmovmskb collect plane j (a 16-bit lane shift moves no bit across the byte's top).
QCNN_AVX2 int64_t pixel_bits_avx2(const uint8_t* src, int64_t c, int32_t x_sub, int planes, int64_t plane_bytes,
                                  uint8_t* dst) {
  const __m256i sub = _mm256_set1_epi8(static_cast<char>(x_sub));
  int64_t sum = 0;
  for (int64_t c0 = 0; c0 < c; c0 += 32) {
    const int64_t n = std::min<int64_t>(32, c - c0);
    __m256i v;
    if (n == 32) {
      v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + c0));
    } else {  // the last channels: their bits only (the lanes past them are masked off below)
      alignas(32) uint8_t tail[32] = {};
      copy_run(tail, src + c0, n);
      v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
    }
    v = _mm256_sub_epi8(v, sub);
    const uint32_t keep = n == 32 ? ~0u : (1u << n) - 1;
    for (int j = 0; j < planes; ++j) {
      const uint32_t bits =
          keep & static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_sll_epi16(v, _mm_cvtsi32_si128(7 - j))));
      sum += int64_t{__builtin_popcount(bits)} << j;
      uint8_t* d = dst + 2 * j * plane_bytes + c0 / 8;
      for (int64_t b = 0; b < (n + 7) / 8; ++b) d[b] = static_cast<uint8_t>(bits >> (8 * b));
    }
  }
  return sum;
}
#endif

template <typename T>
void bit_image_typed(const PackedConv& pc, const T* x, int32_t x_sub, std::vector<uint8_t>& image) {
  const ConvGeom& g = pc.g;
  const BitWeights& bw = pc.bits;
  const ImageLayout layout(pc);
  image.assign(static_cast<size_t>(layout.total), 0);
  auto* sums = reinterpret_cast<int32_t*>(image.data() + layout.sums_offset);
  for (int64_t iy = 0; iy < g.h; ++iy)
    for (int64_t ix = 0; ix < g.w; ++ix) {
      const T* src = x + (iy * g.w + ix) * g.c;
      const int64_t pixel = (iy + g.ph) * layout.wp + ix + g.pw;
      uint8_t* dst = image.data() + pixel * bw.cbytes;
      int64_t sum;
#ifdef QCNN_X86
      if constexpr (std::is_same_v<T, uint8_t>) {
        if (pc.isa == Isa::Avx2) {
          sums[pixel] = static_cast<int32_t>(pixel_bits_avx2(src, g.c, x_sub, bw.planes, layout.plane_bytes, dst));
          continue;
        }
      }
#endif
      sum = pixel_bits(src, g.c, x_sub, bw.planes, layout.plane_bytes, dst);
      sums[pixel] = static_cast<int32_t>(sum);
    }
  for (int j = 0; j < bw.planes; ++j) {  // the high nibbles, shifted down
    const uint8_t* lo = image.data() + 2 * j * layout.plane_bytes;
    uint8_t* hi = image.data() + (2 * j + 1) * layout.plane_bytes;
    for (int64_t i = 0; i < layout.plane_bytes; ++i) hi[i] = static_cast<uint8_t>(lo[i] >> 4);
  }
}

}  // namespace

int binary_planes(const ConvGeom& g, const int16_t* weight, InputRange x) {
  if (g.groups != 1 || g.dw != 1 || x.lo < 0 || x.hi < 1 || x.hi >= (int64_t{1} << kMaxBitPlanes)) return 0;
  const int64_t count = g.m * g.k();
  for (int64_t i = 0; i < count; ++i)
    if (weight[i] != 1 && weight[i] != -1) return 0;
  int planes = 0;
  while ((int64_t{1} << planes) <= x.hi) ++planes;
  return planes;
}

BitWeights pack_bit_weights(const ConvGeom& g, const int16_t* weight, int planes) {
  BitWeights bw;
  bw.planes = planes;
  bw.cbytes = (g.c + 7) / 8;
  bw.kwords = (g.kh * g.kw * bw.cbytes + 3) / 4;
  const int64_t blocks = round_up(g.m, 8) / 8, taps = int64_t{g.kh} * g.kw;
  std::vector<uint8_t> field(static_cast<size_t>(bw.kwords * 4));
  bw.words.assign(static_cast<size_t>(blocks * bw.kwords * 16), 0);
  for (int64_t m = 0; m < g.m; ++m) {
    std::fill(field.begin(), field.end(), uint8_t{0});
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t c = 0; c < g.c; ++c)
        if (weight[m * g.k() + t * g.c + c] == 1) field[t * bw.cbytes + c / 8] |= static_cast<uint8_t>(1u << (c % 8));
    for (int64_t q = 0; q < bw.kwords; ++q) {
      uint32_t word;
      std::memcpy(&word, field.data() + 4 * q, 4);
      uint32_t* dst = bw.words.data() + ((m / 8) * bw.kwords + q) * 16 + m % 8;
      dst[0] = word & kLowNibbles;
      dst[8] = (word >> 4) & kLowNibbles;
    }
  }
  return bw;
}

void bit_image(const PackedConv& pc, const void* x, Storage in, int32_t x_sub, std::vector<uint8_t>& image) {
  if (in == Storage::U8)
    bit_image_typed(pc, static_cast<const uint8_t*>(x), x_sub, image);
  else
    bit_image_typed(pc, static_cast<const int32_t*>(x), x_sub, image);
}

void bit_accumulate(const PackedConv& pc, const uint8_t* image, int64_t p0, int64_t rows, int32_t* acc, int64_t ldc,
                    std::vector<uint32_t>& scratch) {
  const BitWeights& bw = pc.bits;
  const int64_t stride = row_words(bw), blocks = round_up(pc.g.m, 8) / 8, wblock = bw.kwords * 16;
  scratch.resize(static_cast<size_t>(rows * stride));
  build_panel(pc, image, p0, rows, scratch.data());
  for (int64_t b = 0; b < blocks; b += kBitBlocks) {
    const int jn = static_cast<int>(std::min<int64_t>(kBitBlocks, blocks - b));
    for (int64_t r0 = 0; r0 < rows; r0 += kBitRows) {
      const int rn = static_cast<int>(std::min<int64_t>(kBitRows, rows - r0));
      bit_kernel(pc.isa, bw.planes, rn, jn)(bw, scratch.data() + r0 * stride, bw.words.data() + b * wblock,
                                            acc + r0 * ldc + b * 8, ldc);
    }
  }
}

int64_t bit_tile_rows(const PackedConv& pc) {
  return std::clamp<int64_t>(kBitPanelBytes / (4 * row_words(pc.bits)) / kBitRows * kBitRows, kBitRows, 64);
}

int64_t bit_scratch_bytes(const PackedConv& pc) {
  return ImageLayout(pc).total + bit_tile_rows(pc) * row_words(pc.bits) * 4;
}

}  // namespace qcnn
