#include "core/bitconv.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <type_traits>

#include "core/avx2.h"

namespace qcnn {

namespace {

constexpr int kSlots = 2;    // pixel slots (2 or 4 pixels, BitWeights::lanes) per microkernel call
constexpr int kSlots512 = 4;
constexpr int kMaxLanes = 4;
constexpr int kGroups = 6;   // 16-channel groups per call: 2 x 6 byte accumulators + 2 tables + 1 pattern register
constexpr int64_t kTileRows = 32;      // output positions per tile, at least: whole rows of slots (bit_tile_rows)
constexpr int64_t kMaxTileRows = 128;
constexpr int kTableBytes = 16;
constexpr int kPatternBytes = 32;  // 16 channels' patterns, once per lane

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
int beta(int bits) { return 4 * ((1 << bits) - 1); }

struct ImageLayout {
  int64_t wq, quad_stride, row_stride, total;  // strides in bytes
  ImageLayout(const ConvGeom& g, int64_t quads, int lanes) {
    wq = g.w + 2 * g.pw + (lanes - 1) * g.sw;
    quad_stride = wq * kTableBytes;
    row_stride = quads * quad_stride;
    total = (g.h + 2 * g.ph) * row_stride;
  }
  explicit ImageLayout(const PackedConv& pc) : ImageLayout(pc.g, pc.bits.quads, pc.bits.lanes) {}
};

// A slot of a tile, `lanes` neighbouring output pixels of a row: the table offset of its lane-0 pixel at tap
// (0, 0), quad 0, and the tile rows of its outputs (out[l] < 0: lane l is padding, its result dropped).
struct Slot {
  int64_t offset, out[kMaxLanes];
};
constexpr int64_t kSlotWords = sizeof(Slot) / sizeof(int64_t);

struct KernelArgs {
  const uint8_t* image;
  const int64_t* step_offsets;  // [taps * quads] bytes
  int64_t taps, quads, lane1, group_stride;  // lane1: bytes from one lane's pixel to the next
  int flush;         // steps (one table per lane) before the byte accumulators could wrap
  int64_t epoch;     // steps before the 16-bit accumulators could wrap, a multiple of flush
  int32_t bias;      // beta * taps * quads
};

// Byte offset, within a 16-channel group, of the patterns of tap t, quad q.
inline int64_t pattern_index(const KernelArgs& a, int64_t t, int64_t q) { return (t * a.quads + q) * kPatternBytes; }

template <int R, int J>
void binary_kernel_scalar(const KernelArgs& a, const Slot* slots, const uint8_t* patterns, int32_t* acc, int64_t ldc) {
  for (int r = 0; r < R; ++r)
    for (int lane = 0; lane < kMaxLanes; ++lane) {
      const int64_t out = slots[r].out[lane];
      if (out < 0) continue;
      const uint8_t* base = a.image + slots[r].offset + lane * a.lane1;
      for (int j = 0; j < J; ++j)
        for (int i = 0; i < 16; ++i) {
          int32_t sum = 0;
          for (int64_t t = 0; t < a.taps; ++t)
            for (int64_t q = 0; q < a.quads; ++q) {
              const uint8_t pattern = patterns[j * a.group_stride + pattern_index(a, t, q) + i];
              sum += base[a.step_offsets[t * a.quads + q] + pattern];
            }
          acc[out * ldc + j * 16 + i] = sum - a.bias;
        }
    }
}

#ifdef QCNN_X86
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
  const int64_t steps = a.taps * a.quads;
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
  const int64_t steps = a.taps * a.quads;
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
#endif

using BinaryKernel = void (*)(const KernelArgs&, const Slot*, const uint8_t*, int32_t*, int64_t);

#define QCNN_BINARY_ROW(fn, r, ...) \
  {fn<r, 1 __VA_ARGS__>, fn<r, 2 __VA_ARGS__>, fn<r, 3 __VA_ARGS__>, fn<r, 4 __VA_ARGS__>, fn<r, 5 __VA_ARGS__>, \
   fn<r, 6 __VA_ARGS__>}
#define QCNN_BINARY_KERNELS(fn, ...) {QCNN_BINARY_ROW(fn, 1, __VA_ARGS__), QCNN_BINARY_ROW(fn, 2, __VA_ARGS__)}
#define QCNN_BINARY_KERNELS4(fn, ...)                                                                       \
  {QCNN_BINARY_ROW(fn, 1, __VA_ARGS__), QCNN_BINARY_ROW(fn, 2, __VA_ARGS__), QCNN_BINARY_ROW(fn, 3, __VA_ARGS__), \
   QCNN_BINARY_ROW(fn, 4, __VA_ARGS__)}

// Slots per call: kSlots, or kSlots512 on AVX-512 (4 x 6 byte accumulators + 4 tables + 1 pattern of 32 zmm).
int slots_per_call(Isa isa) { return has_avx512(isa) ? kSlots512 : kSlots; }

BinaryKernel binary_kernel(Isa isa, bool contiguous, int slots, int groups) {
  static_assert(kSlots == 2 && kSlots512 == 4 && kGroups == 6, "the kernel tables below");
  static const BinaryKernel scalar[kSlots][kGroups] = QCNN_BINARY_KERNELS(binary_kernel_scalar);
#ifdef QCNN_X86
  static const BinaryKernel avx2[2][kSlots][kGroups] = {QCNN_BINARY_KERNELS(binary_kernel_avx2, , false),
                                                        QCNN_BINARY_KERNELS(binary_kernel_avx2, , true)};
  static const BinaryKernel avx512[2][kSlots512][kGroups] = {QCNN_BINARY_KERNELS4(binary_kernel_avx512, , false),
                                                             QCNN_BINARY_KERNELS4(binary_kernel_avx512, , true)};
  if (has_avx512(isa)) return avx512[contiguous][slots - 1][groups - 1];
  if (has_avx2(isa)) return avx2[contiguous][slots - 1][groups - 1];
#endif
  (void)isa;
  (void)contiguous;
  return scalar[slots - 1][groups - 1];
}
#undef QCNN_BINARY_KERNELS4
#undef QCNN_BINARY_KERNELS
#undef QCNN_BINARY_ROW

// quad[q] = sum_i v_{4q+i} << (B i) for q < quads, over the n channels at src (n < 4 quads zero-fills
// the last one), v = (x - x_sub) masked to B bits (the engine proves the range; the mask keeps a table
// index in bounds regardless).
template <typename T>
void quad_values(const T* src, int64_t n, int32_t x_sub, int bits, int64_t quads, uint32_t* quad) {
  const uint32_t mask = (1u << bits) - 1;
  std::fill(quad, quad + quads, 0u);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t v = static_cast<uint32_t>(static_cast<int64_t>(src[i]) - x_sub) & mask;
    quad[i / 4] |= v << (bits * (i % 4));
  }
}

#ifdef QCNN_X86
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
#endif

// The quad values of one input row, [w][quads]: with C a multiple of 4 the row's channels are one run
// of quads.
template <typename T>
void row_quads(const PackedConv& pc, const T* row, int32_t x_sub, uint32_t* quad) {
  const ConvGeom& g = pc.g;
  const BitWeights& bw = pc.bits;
  const bool whole_row = g.c % 4 == 0;
  const int64_t runs = whole_row ? 1 : g.w, run = whole_row ? g.w * g.c : g.c, run_quads = whole_row ? g.w * bw.quads : bw.quads;
  for (int64_t i = 0; i < runs; ++i) {
#ifdef QCNN_X86
    if constexpr (std::is_same_v<T, uint8_t>) {
      if (has_avx2(pc.isa)) {
        quad_values_avx2(row + i * run, run, x_sub, bw.act_bits, run_quads, quad + i * run_quads);
        continue;
      }
    }
#endif
    quad_values(row + i * run, run, x_sub, bw.act_bits, run_quads, quad + i * run_quads);
  }
}

// `count` tables of v = 0 (every entry beta) at dst: short runs, stored inline rather than by memset calls.
inline void zero_tables(uint8_t* dst, int64_t count, uint8_t zero_table) {
  uint8_t table[kTableBytes];
  std::memset(table, zero_table, kTableBytes);
  for (int64_t i = 0; i < count; ++i) std::memcpy(dst + i * kTableBytes, table, kTableBytes);
}

template <typename T>
void bit_image_typed(const PackedConv& pc, const T* x, int32_t x_sub, std::vector<uint8_t>& image) {
  const ConvGeom& g = pc.g;
  const BitWeights& bw = pc.bits;
  const ImageLayout layout(pc);
  const auto zero_table = static_cast<uint8_t>(beta(bw.act_bits));  // the table of v = 0
  image.resize(static_cast<size_t>(layout.total));
  thread_local std::vector<uint32_t> quad;
  quad.resize(static_cast<size_t>(g.w * bw.quads));
  const int64_t left = g.pw, right = layout.wq - g.pw - g.w;  // border and spare tables of a row
  for (int64_t py = 0; py < g.h + 2 * g.ph; ++py) {
    uint8_t* row = image.data() + py * layout.row_stride;
    const int64_t iy = py - g.ph;
    if (iy < 0 || iy >= g.h) {
      std::memset(row, zero_table, static_cast<size_t>(layout.row_stride));
      continue;
    }
    row_quads(pc, x + iy * g.w * g.c, x_sub, quad.data());
    // locals: the byte stores below may alias anything, which would reload every member per table
    const uint8_t* tables = bw.tables.data();
    const uint32_t* values = quad.data();
    const int64_t quads = bw.quads, w = g.w, quad_stride = layout.quad_stride;
    for (int64_t q = 0; q < quads; ++q) {
      uint8_t* dst = row + q * quad_stride;
      zero_tables(dst, left, zero_table);
      for (int64_t ix = 0; ix < w; ++ix)
        std::memcpy(dst + (left + ix) * kTableBytes, tables + values[ix * quads + q] * kTableBytes, kTableBytes);
      zero_tables(dst + (left + w) * kTableBytes, right, zero_table);
    }
  }
}

}  // namespace

int binary_act_bits(const ConvGeom& g, const int16_t* weight, InputRange x) {
  if (g.groups != 1 || x.lo < 0 || x.hi < 1 || x.hi >= (int64_t{1} << kMaxBinaryActBits)) return 0;
  const int64_t count = g.m * g.k();
  for (int64_t i = 0; i < count; ++i)
    if (weight[i] != 1 && weight[i] != -1) return 0;
  int bits = 0;
  while ((int64_t{1} << bits) <= x.hi) ++bits;
  // the int32 sums of biased entries: at most 2 beta per tap and quad
  if (int64_t{2} * beta(bits) * g.kh * g.kw * ((g.c + 3) / 4) > INT32_MAX) return 0;
  return bits;
}

BitWeights pack_bit_weights(const ConvGeom& g, const int16_t* weight, int act_bits, Isa isa) {
  BitWeights bw;
  bw.act_bits = act_bits;
  bw.lanes = has_avx512(isa) ? 4 : 2;
  bw.quads = (g.c + 3) / 4;
  const int64_t groups = round_up(g.m, 16) / 16, taps = int64_t{g.kh} * g.kw;
  bw.patterns.assign(static_cast<size_t>(groups * taps * bw.quads * kPatternBytes), 0);
  for (int64_t m = 0; m < g.m; ++m)
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t c = 0; c < g.c; ++c)
        if (weight[m * g.k() + t * g.c + c] == 1) {
          uint8_t* p = bw.patterns.data() + (((m / 16) * taps + t) * bw.quads + c / 4) * kPatternBytes + m % 16;
          p[0] |= static_cast<uint8_t>(1u << (c % 4));
          p[16] = p[0];
        }
  const ImageLayout layout(g, bw.quads, bw.lanes);
  for (int ky = 0; ky < g.kh; ++ky)
    for (int kx = 0; kx < g.kw; ++kx)
      for (int64_t q = 0; q < bw.quads; ++q)
        bw.step_offsets.push_back(int64_t{ky} * g.dh * layout.row_stride + int64_t{kx} * g.dw * kTableBytes +
                                  q * layout.quad_stride);
  const int b = beta(act_bits), values = 1 << (4 * act_bits);
  const uint32_t mask = (1u << act_bits) - 1;
  bw.tables.resize(static_cast<size_t>(values * kTableBytes));
  for (int u = 0; u < values; ++u)
    for (int n = 0; n < 16; ++n) {
      int entry = b;
      for (int i = 0; i < 4; ++i) {
        const int v = static_cast<int>((static_cast<uint32_t>(u) >> (act_bits * i)) & mask);
        entry += (n >> i) & 1 ? v : -v;
      }
      bw.tables[static_cast<size_t>(u * kTableBytes + n)] = static_cast<uint8_t>(entry);
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
                    std::vector<int64_t>& scratch) {
  const ConvGeom& g = pc.g;
  const BitWeights& bw = pc.bits;
  const ImageLayout layout(pc);
  const int64_t taps = int64_t{g.kh} * g.kw, groups = round_up(g.m, 16) / 16;
  // Slots: `lanes` neighbours in a row; a row's (or the tile's) last outputs share one with padding lanes.
  scratch.resize(static_cast<size_t>(rows * kSlotWords));
  auto* slots = reinterpret_cast<Slot*>(scratch.data());
  int64_t nslots = 0;
  for (int64_t r = 0; r < rows;) {
    const int64_t p = p0 + r, oy = p / g.ow, ox = p % g.ow;
    const int64_t n = std::min<int64_t>({bw.lanes, rows - r, g.ow - ox});
    Slot& slot = slots[nslots++];
    slot.offset = oy * g.sh * layout.row_stride + ox * g.sw * kTableBytes;
    for (int lane = 0; lane < kMaxLanes; ++lane) slot.out[lane] = lane < n ? r + lane : -1;
    r += n;
  }
  KernelArgs a{};
  a.image = image;
  a.step_offsets = bw.step_offsets.data();
  a.taps = taps;
  a.quads = bw.quads;
  a.lane1 = int64_t{g.sw} * kTableBytes;
  a.group_stride = taps * bw.quads * kPatternBytes;
  const int step_max = 2 * beta(bw.act_bits);
  a.flush = 255 / step_max;
  a.epoch = int64_t{65535 / step_max} / a.flush * a.flush;
  a.bias = static_cast<int32_t>(beta(bw.act_bits) * taps * bw.quads);
  const bool contiguous = g.sw == 1;
  for (int64_t b = 0; b < groups; b += kGroups) {
    const int jn = static_cast<int>(std::min<int64_t>(kGroups, groups - b));
    for (int64_t s = 0; s < nslots; s += slots_per_call(pc.isa)) {
      const int sn = static_cast<int>(std::min<int64_t>(slots_per_call(pc.isa), nslots - s));
      binary_kernel(pc.isa, contiguous, sn, jn)(a, slots + s, bw.patterns.data() + b * a.group_stride,
                                                acc + b * 16, ldc);
    }
  }
}

// Whole output rows, at least kTileRows positions, and where it fits in kMaxTileRows a slot count that fills
// every microkernel call (a row's last slot is partial, and a call with fewer slots costs as much per step).
int64_t bit_tile_rows(const PackedConv& pc) {
  const int64_t ow = pc.g.ow, per_row = (ow + pc.bits.lanes - 1) / pc.bits.lanes, per_call = slots_per_call(pc.isa);
  const int64_t rows = std::max<int64_t>(1, (kTileRows + ow - 1) / ow);
  for (int64_t r = rows; r * ow <= kMaxTileRows; ++r)
    if (r * per_row % per_call == 0) return r * ow;
  return rows * ow;
}

int64_t bit_scratch_bytes(const PackedConv& pc) {
  return ImageLayout(pc).total + bit_tile_rows(pc) * kSlotWords * 8;
}

}  // namespace qcnn
