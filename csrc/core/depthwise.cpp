#include "core/depthwise.h"

#include <algorithm>
#include <climits>
#include <cstdint>

#include "core/avx2.h"

namespace qcnn {

namespace {

// A tile's int32 accumulators stay in L1 while the kernel stores them and the epilogue reads them back (larger tiles
// measured up to 1.5x slower on 3x3 layers), but hold at least 8 (span - 1) pixels: each row segment builds span - 1
// columns of quads more than its pixels need. At batch 1, at least kMinTiles tiles to share between the threads.
constexpr int64_t kAccTileBytes = 12 << 10;
constexpr int64_t kMinTiles = 4;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
int quads_per_column(const ConvGeom& g) { return (g.kh + 3) / 4; }
int64_t span(const ConvGeom& g) { return int64_t{g.kw - 1} * g.dw + 1; }  // padded columns one output pixel reads

// One output row segment of a tile.
struct Segment {
  int64_t n;                   // output pixels
  int64_t first, last;         // its padded columns [first, last) inside the image
  int64_t offset;              // input offset of its padded column 0, channel 0
  int64_t acc;                 // accumulator row of its first pixel
  const uint8_t* const* rows;  // [4 J]: input row of kernel row 4j + i, null outside the image or past kh
};

#ifdef QCNN_X86
// Scratch of one call, 64-byte aligned: the accumulator starts [C16 * 16] int32, the segments, their row pointers,
// then the quads of one segment and 64-channel block, [cols][J][4 groups of 16][64] bytes.
struct Scratch {
  int32_t* start;
  Segment* segs;
  const uint8_t** rows;
  uint8_t* quads;
};

Scratch carve(std::vector<uint8_t>& scratch, int64_t c16, int j_count, int64_t segs, int64_t cols) {
  const int64_t start_bytes = c16 * 64, seg_bytes = round_up(segs * int64_t{sizeof(Segment)}, 64),
                row_bytes = round_up(segs * 4 * j_count * int64_t{sizeof(void*)}, 64);
  scratch.resize(static_cast<size_t>(64 + start_bytes + seg_bytes + row_bytes + cols * j_count * 256));
  const auto base = reinterpret_cast<uintptr_t>(scratch.data());
  auto* p = reinterpret_cast<uint8_t*>(round_up(static_cast<int64_t>(base), 64));
  return {reinterpret_cast<int32_t*>(p), reinterpret_cast<Segment*>(p + start_bytes),
          reinterpret_cast<const uint8_t**>(p + start_bytes + seg_bytes), p + start_bytes + seg_bytes + row_bytes};
}

// One 64-channel block: its 16-channel groups, channel mask and where its quads go, group k of column col and
// quad j at ((col * J + j) * 4 + k) * 64.
struct Block {
  int nb, j_count;   // 16-channel groups (1 to 4), quads per column
  int64_t c, c0;     // channels of a pixel, the block's first
  __mmask64 mask;    // the block's channels
  uint8_t border;    // x_sub
  uint8_t* quads;
};

// One input row's 64 channels of the block at `offset`, permuted by `transpose` (a 4 x 4 transpose of 4-channel
// dwords) for quad_groups; `border` (x_sub) for a row outside the image.
QCNN_AVX512VNNI inline __m512i load_row(const Block& bk, const uint8_t* row, int64_t offset, __m512i transpose,
                                        __m512i border) {
  return row ? _mm512_permutexvar_epi32(transpose, _mm512_maskz_loadu_epi8(bk.mask, row + offset)) : border;
}

// The quads of four loaded rows (a, b, c, d) for the block's `nb` 16-channel groups at dst, 64 bytes apart: the
// bytes interleaved by unpacklo/hi_epi8 and _epi16 within 128-bit lanes (lane L of group k: channels 16k + 4L to
// 16k + 4L + 3).
QCNN_AVX512VNNI inline void store_quads(uint8_t* dst, int nb, __m512i a, __m512i b, __m512i c, __m512i d) {
  const __m512i ab = _mm512_unpacklo_epi8(a, b), cd = _mm512_unpacklo_epi8(c, d);
  _mm512_store_si512(dst, _mm512_unpacklo_epi16(ab, cd));
  if (nb > 1) _mm512_store_si512(dst + 64, _mm512_unpackhi_epi16(ab, cd));
  if (nb > 2) {
    const __m512i ab2 = _mm512_unpackhi_epi8(a, b), cd2 = _mm512_unpackhi_epi8(c, d);
    _mm512_store_si512(dst + 128, _mm512_unpacklo_epi16(ab2, cd2));
    if (nb > 3) _mm512_store_si512(dst + 192, _mm512_unpackhi_epi16(ab2, cd2));
  }
}

// The quads of padded column `col` of a segment, quad j from kernel rows 4j to 4j + 3. Rows and columns outside the
// image read `border`.
QCNN_AVX512VNNI inline void build_column(const Block& bk, const Segment& sg, int64_t col, __m512i transpose,
                                         __m512i border) {
  uint8_t* dst = bk.quads + col * bk.j_count * 256;
  if (col < sg.first || col >= sg.last) {
    for (int q = 0; q < bk.j_count * 4; ++q) _mm512_store_si512(dst + q * 64, border);
    return;
  }
  const int64_t offset = sg.offset + col * bk.c + bk.c0;
  auto row = [&](int t) QCNN_AVX512VNNI { return load_row(bk, sg.rows[t], offset, transpose, border); };
  for (int j = 0; j < bk.j_count; ++j, dst += 256)
    store_quads(dst, bk.nb, row(4 * j), row(4 * j + 1), row(4 * j + 2), row(4 * j + 3));
}

// Any other kernel, stride and dilation, one 16-channel group k of the block over one segment:
// acc[(sg.acc + i) * ldc + 16 k + lane] = start + the sum over kx, j of vpdpbusd(quads of column i sw + kx dw,
// w[k][kx][j]), the weights read from L1. `build`: the group's pass builds the block's quads, each column just before
// the first pixel that reads it.
QCNN_AVX512VNNI void segment_group(const Block& block, const ConvGeom& g, const Segment& segment, const int8_t* w,
                                   const int32_t* start, int k, bool build, int32_t* acc, int64_t ldc) {
  const Block bk = block;  // locals: every vector store may alias what members would otherwise be reloaded from
  const Segment sg = segment;
  const int64_t col_bytes = int64_t{bk.j_count} * 256, step = g.sw * col_bytes, tap = g.dw * col_bytes;
  const __m512i transpose = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m512i border = _mm512_set1_epi8(static_cast<char>(bk.border));
  const __m512i s = _mm512_load_si512(start + k * 16);
  const int8_t* wk = w + int64_t{k} * g.kw * bk.j_count * 64;
  int64_t built = build ? 0 : INT64_MAX;
  const uint8_t* v = bk.quads + k * 64;
  int32_t* out = acc + sg.acc * ldc + k * 16;
  for (int64_t i = 0; i < sg.n; ++i, v += step, out += ldc) {
    for (const int64_t need = i * g.sw + span(g); built < need; ++built) build_column(bk, sg, built, transpose, border);
    __m512i a = s;
    const int8_t* wt = wk;
    for (int kx = 0; kx < g.kw; ++kx)
      for (int j = 0; j < bk.j_count; ++j, wt += 64)
        a = _mm512_dpbusd_epi32(a, _mm512_load_si512(v + kx * tap + j * 256), _mm512_loadu_si512(wt));
    _mm512_storeu_si512(out, a);
  }
}

// The common 3x3 kernel at stride SW (1 or 2) and dilation 1 over one segment, all NB groups of the block in one
// pass: the 3 NB weight registers stay live, each pixel first builds the SW columns it is the first to read (a vpermd
// per input row, up to eight unpacks, the fourth kernel row the border constant), then takes its 3 NB quads. A
// function of its own: inlined, GCC spilled registers at every pixel.
template <int NB, int SW>
QCNN_AVX512VNNI __attribute__((noinline)) void segment_3x3(const Block& block, const Segment& segment, const int8_t* w,
                                                           const int32_t* start, int32_t* acc, int64_t ldc) {
  const Block bk = block;
  const Segment sg = segment;
  const uint8_t *row0 = sg.rows[0], *row1 = sg.rows[1], *row2 = sg.rows[2];
  const __m512i transpose = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m512i border = _mm512_set1_epi8(static_cast<char>(bk.border));
  __m512i wr[NB * 3];
  for (int t = 0; t < NB * 3; ++t) wr[t] = _mm512_loadu_si512(w + t * 64);
  auto build = [&](int64_t col) QCNN_AVX512VNNI {
    uint8_t* dst = bk.quads + col * 256;
    if (col < sg.first || col >= sg.last) {
      for (int q = 0; q < NB; ++q) _mm512_store_si512(dst + q * 64, border);
      return;
    }
    const int64_t offset = sg.offset + col * bk.c + bk.c0;
    store_quads(dst, NB, load_row(bk, row0, offset, transpose, border), load_row(bk, row1, offset, transpose, border),
                load_row(bk, row2, offset, transpose, border), border);
  };
  for (int64_t col = 0; col < 3 - SW; ++col) build(col);
  const uint8_t* v = bk.quads;
  int32_t* out = acc + sg.acc * ldc;
  for (int64_t i = 0; i < sg.n; ++i, v += SW * 256, out += ldc) {
    for (int64_t col = i * SW + 3 - SW; col < i * SW + 3; ++col) build(col);
    for (int q = 0; q < NB; ++q) {
      __m512i a = _mm512_load_si512(start + q * 16);
      for (int kx = 0; kx < 3; ++kx)
        a = _mm512_dpbusd_epi32(a, _mm512_load_si512(v + kx * 256 + q * 64), wr[q * 3 + kx]);
      _mm512_storeu_si512(out + q * 16, a);
    }
  }
}

template <int SW>
QCNN_AVX512VNNI void segments_3x3(const Block& bk, const Segment* segs, int64_t count, const int8_t* w,
                                  const int32_t* start, int32_t* acc, int64_t ldc) {
  for (int64_t si = 0; si < count; ++si) switch (bk.nb) {
      case 1: segment_3x3<1, SW>(bk, segs[si], w, start, acc, ldc); break;
      case 2: segment_3x3<2, SW>(bk, segs[si], w, start, acc, ldc); break;
      case 3: segment_3x3<3, SW>(bk, segs[si], w, start, acc, ldc); break;
      default: segment_3x3<4, SW>(bk, segs[si], w, start, acc, ldc); break;
    }
}

// The 5x5 kernel at stride SW (1 or 2) and dilation 1 over one segment: two quads per column (kernel
// rows 0-3 and row 4 over three border rows), and the block's NB groups in passes of two, each with its 2 x 10 weight
// registers live; the first pass builds the columns as its pixels reach them, the second reads them back.
template <int NB, int SW>
QCNN_AVX512VNNI __attribute__((noinline)) void segment_5x5(const Block& block, const Segment& segment, const int8_t* w,
                                                           const int32_t* start, int32_t* acc, int64_t ldc) {
  const Block bk = block;
  const Segment sg = segment;
  const uint8_t *row0 = sg.rows[0], *row1 = sg.rows[1], *row2 = sg.rows[2], *row3 = sg.rows[3], *row4 = sg.rows[4];
  const __m512i transpose = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m512i border = _mm512_set1_epi8(static_cast<char>(bk.border));
  auto build = [&](int64_t col) QCNN_AVX512VNNI {
    uint8_t* dst = bk.quads + col * 512;
    if (col < sg.first || col >= sg.last) {
      for (int q = 0; q < 8; ++q) _mm512_store_si512(dst + q * 64, border);
      return;
    }
    const int64_t offset = sg.offset + col * bk.c + bk.c0;
    auto row = [&](const uint8_t* r) QCNN_AVX512VNNI { return load_row(bk, r, offset, transpose, border); };
    store_quads(dst, NB, row(row0), row(row1), row(row2), row(row3));
    store_quads(dst + 256, NB, row(row4), border, border, border);
  };
  for (int k0 = 0; k0 < NB; k0 += 2) {
    constexpr int kPair = NB > 1 ? 2 : 1;
    const int groups = std::min(kPair, NB - k0);
    __m512i wr[kPair * 10];
    for (int t = 0; t < kPair * 10; ++t) wr[t] = _mm512_loadu_si512(w + (k0 * 10 + std::min(t, groups * 10 - 1)) * 64);
    if (k0 == 0)
      for (int64_t col = 0; col < 5 - SW; ++col) build(col);
    const uint8_t* v = bk.quads + k0 * 64;
    int32_t* out = acc + sg.acc * ldc + k0 * 16;
    for (int64_t i = 0; i < sg.n; ++i, v += SW * 512, out += ldc) {
      if (k0 == 0)
        for (int64_t col = i * SW + 5 - SW; col < i * SW + 5; ++col) build(col);
      for (int q = 0; q < groups; ++q) {
        __m512i a = _mm512_load_si512(start + (k0 + q) * 16);
        for (int kx = 0; kx < 5; ++kx)
          for (int j = 0; j < 2; ++j)
            a = _mm512_dpbusd_epi32(a, _mm512_load_si512(v + kx * 512 + j * 256 + q * 64), wr[q * 10 + kx * 2 + j]);
        _mm512_storeu_si512(out + q * 16, a);
      }
    }
  }
}

template <int SW>
QCNN_AVX512VNNI void segments_5x5(const Block& bk, const Segment* segs, int64_t count, const int8_t* w,
                                  const int32_t* start, int32_t* acc, int64_t ldc) {
  for (int64_t si = 0; si < count; ++si) switch (bk.nb) {
      case 1: segment_5x5<1, SW>(bk, segs[si], w, start, acc, ldc); break;
      case 2: segment_5x5<2, SW>(bk, segs[si], w, start, acc, ldc); break;
      case 3: segment_5x5<3, SW>(bk, segs[si], w, start, acc, ldc); break;
      default: segment_5x5<4, SW>(bk, segs[si], w, start, acc, ldc); break;
    }
}

QCNN_AVX512VNNI void accumulate_avx512(const PackedConv& pc, const uint8_t* x, int32_t x_sub, int64_t p0,
                                       int64_t rows, int32_t* acc, int64_t ldc, std::vector<uint8_t>& scratch) {
  const ConvGeom& g = pc.g;
  const int j_count = quads_per_column(g);
  const int64_t c16 = round_up(g.c, 16) / 16, group_w = int64_t{g.kw} * j_count * 64;
  const int64_t max_segs = (rows + g.ow - 1) / g.ow + 1, max_cols = (std::min(g.ow, rows) - 1) * g.sw + span(g);
  const Scratch s = carve(scratch, c16, j_count, max_segs, max_cols);
  for (int64_t c = 0; c < c16 * 16; ++c) s.start[c] = c < g.c ? -x_sub * pc.dw_sums[static_cast<size_t>(c)] : 0;
  int64_t count = 0;
  for (int64_t p = p0, end = p0 + rows; p < end; ++count) {
    const int64_t oy = p / g.ow, ox = p % g.ow, cx0 = ox * g.sw;  // cx0: the segment's first padded column
    Segment& sg = s.segs[count];
    sg.n = std::min(g.ow - ox, end - p);
    sg.first = g.pw - cx0;
    sg.last = g.pw + g.w - cx0;
    sg.offset = (cx0 - g.pw) * g.c;
    sg.acc = p - p0;
    const uint8_t** seg_rows = s.rows + count * 4 * j_count;
    for (int t = 0; t < 4 * j_count; ++t) {
      const int64_t iy = oy * g.sh - g.ph + int64_t{t} * g.dh;
      seg_rows[t] = t < g.kh && iy >= 0 && iy < g.h ? x + iy * g.w * g.c : nullptr;
    }
    sg.rows = seg_rows;
    p += sg.n;
  }
  Block bk;
  bk.j_count = j_count;
  bk.c = g.c;
  bk.border = static_cast<uint8_t>(x_sub);
  bk.quads = s.quads;
  const bool k3 = g.kh <= 3 && g.kw == 3 && g.dw == 1 && (g.sw == 1 || g.sw == 2);
  const bool k5 = g.kh == 5 && g.kw == 5 && g.dw == 1 && (g.sw == 1 || g.sw == 2);
  for (int64_t b = 0; b < c16; b += 4) {
    bk.nb = static_cast<int>(std::min<int64_t>(4, c16 - b));
    bk.c0 = b * 16;
    bk.mask = g.c - bk.c0 >= 64 ? ~__mmask64{0} : (__mmask64{1} << (g.c - bk.c0)) - 1;
    const int8_t* w = pc.dw_quads.data() + b * group_w;
    const int32_t* start = s.start + b * 16;
    int32_t* out = acc + b * 16;
    if (k3) {
      if (g.sw == 1)
        segments_3x3<1>(bk, s.segs, count, w, start, out, ldc);
      else
        segments_3x3<2>(bk, s.segs, count, w, start, out, ldc);
      continue;
    }
    if (k5) {
      if (g.sw == 1)
        segments_5x5<1>(bk, s.segs, count, w, start, out, ldc);
      else
        segments_5x5<2>(bk, s.segs, count, w, start, out, ldc);
      continue;
    }
    for (int64_t si = 0; si < count; ++si)  // any other kernel: one group at a time, the first building the quads
      for (int k = 0; k < bk.nb; ++k) segment_group(bk, g, s.segs[si], w, start, k, k == 0, out, ldc);
  }
}
#endif

}  // namespace

bool pack_depthwise_quads(PackedConv& pc, const int16_t* weight) {
#ifdef QCNN_X86
  const ConvGeom& g = pc.g;
  if (!pc.g.depthwise() || !has_avx512(pc.isa)) return false;
  const int j_count = quads_per_column(g);
  const int64_t c = g.c, taps = g.k();
  std::vector<int8_t> packed(static_cast<size_t>(round_up(c, 16) * g.kw * j_count * 4), 0);
  std::vector<int32_t> sums(static_cast<size_t>(c), 0);
  for (int64_t ch = 0; ch < c; ++ch) {
    int64_t abs_sum = 0;
    for (int64_t t = 0; t < taps; ++t) {
      const int16_t v = weight[ch * taps + t];
      if (v < -128 || v > 127) return false;
      const int ky = static_cast<int>(t / g.kw), kx = static_cast<int>(t % g.kw);
      packed[static_cast<size_t>((((ch / 16) * g.kw + kx) * j_count + ky / 4) * 64 + (ch % 16) * 4 + ky % 4)] =
          static_cast<int8_t>(v);
      sums[static_cast<size_t>(ch)] += v;
      abs_sum += v < 0 ? -int64_t{v} : int64_t{v};
    }
    if (510 * abs_sum > INT32_MAX) return false;
  }
  pc.dw_quads = std::move(packed);
  pc.dw_sums = std::move(sums);
  return true;
#else
  (void)pc;
  (void)weight;
  return false;
#endif
}

void depthwise_accumulate(const PackedConv& pc, const uint8_t* x, int32_t x_sub, int64_t p0, int64_t rows,
                          int32_t* acc, int64_t ldc, std::vector<uint8_t>& scratch) {
#ifdef QCNN_X86
  accumulate_avx512(pc, x, x_sub, p0, rows, acc, ldc, scratch);
#else
  (void)pc, (void)x, (void)x_sub, (void)p0, (void)rows, (void)acc, (void)ldc, (void)scratch;
#endif
}

// About kAccTileBytes of accumulators (see there), whole output rows where one fits, else a part of a row.
int64_t depthwise_tile_rows(const PackedConv& pc) {
  const ConvGeom& g = pc.g;
  int64_t rows = std::max<int64_t>(kAccTileBytes / (4 * round_up(g.c, 16)), 8 * std::max<int64_t>(span(g) - 1, 1));
  rows = std::max<int64_t>(1, std::min(rows, (g.positions() + kMinTiles - 1) / kMinTiles));
  return rows >= g.ow ? rows / g.ow * g.ow : rows;
}

int64_t depthwise_scratch_bytes(const PackedConv& pc) {
  const ConvGeom& g = pc.g;
  const int64_t rows = depthwise_tile_rows(pc), j_count = quads_per_column(g);
  const int64_t segs = (rows + g.ow - 1) / g.ow + 1, cols = (std::min(g.ow, rows) - 1) * g.sw + span(g);
  return 64 + round_up(g.c, 16) * 4 + round_up(segs * int64_t{sizeof(Segment)}, 64) +
         round_up(segs * 4 * j_count * int64_t{sizeof(void*)}, 64) + cols * j_count * 256;
}

}  // namespace qcnn
