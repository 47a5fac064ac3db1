#include "core/qgemm_amx.h"

#include <algorithm>

#include "core/avx2.h"

namespace qcnn {

namespace {
int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
constexpr int64_t kPanelBytes = 96 << 10;  // the tile's A panel: stays in L2 while every weight block reads it
// A 1x1 stride-1 layer without padding: its output positions read consecutive input positions.
bool contiguous_1x1(const ConvGeom& g) {
  return g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
}
}  // namespace

bool amx_reads_image(const ConvGeom& g) {
  return g.groups == 1 && g.c % kAmxStep == 0 && g.ow >= kAmxTileRows && !contiguous_1x1(g);
}

int64_t amx_image_slack(const ConvGeom& g) { return amx_reads_image(g) ? kAmxTileRows * g.sw * g.c : 0; }

std::vector<int8_t> pack_amx_weights(const ConvGeom& g, const int16_t* weight, int64_t amx_k) {
  const int64_t k = g.k();
  std::vector<int8_t> packed(static_cast<size_t>(round_up(g.m, kAmxTileRows) * amx_k), 0);
  for (int64_t m = 0; m < g.m; ++m)
    for (int64_t kk = 0; kk < k; ++kk)
      packed[static_cast<size_t>(((m / 16) * (amx_k / 4) + kk / 4) * 64 + (m % 16) * 4 + kk % 4)] =
          static_cast<int8_t>(weight[m * k + kk]);
  return packed;
}

int64_t amx_tile_rows(const PackedConv& pc) {
  const int64_t pair = 2 * kAmxTileRows;
  const int64_t rows = std::clamp<int64_t>(kPanelBytes / pc.amx_k / pair * pair, pair, 256);
  return std::min(rows, round_up(pc.g.positions(), pair));
}

#ifdef QCNN_X86
namespace {
// Palette 1, every tile 16 rows of 64 bytes: C tiles 0-3 (int32 16 x 16), A tiles 4-5, B tiles 6-7.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// memcpy and memset(0) for the pieces of a row panel, without a call per piece: a stem's kernel rows are 21 bytes
// (7 taps of 3 channels), its k tail 45.
QCNN_AMX inline void copy_bytes(uint8_t* dst, const uint8_t* src, int64_t n) {
  for (; n >= 64; n -= 64, src += 64, dst += 64) _mm512_storeu_si512(dst, _mm512_loadu_si512(src));
  if (n > 0) {
    const __mmask64 lanes = (~uint64_t{0}) >> (64 - n);
    _mm512_mask_storeu_epi8(dst, lanes, _mm512_maskz_loadu_epi8(lanes, src));
  }
}
QCNN_AMX inline void zero_bytes(uint8_t* dst, int64_t n) {
  for (; n >= 64; n -= 64, dst += 64) _mm512_storeu_si512(dst, _mm512_setzero_si512());
  if (n > 0) _mm512_mask_storeu_epi8(dst, (~uint64_t{0}) >> (64 - n), _mm512_setzero_si512());
}

// A TM x TN block of 16 x 16 C tiles: TM A tiles of 16 positions (rows a_stride apart, from a0 and a1, the k-step s
// at a_steps[s] from them) against TN B tiles of 16 channels (w, w_stride apart), over `steps` k-steps, into the C
// rows at c0 and c1 (stored in that order: c1's rows may overwrite c0's unused ones). The C tiles start from the
// 16 accumulator starts of their channels, read with a row stride of 0, or from 0 where start is null.
template <int TM, int TN>
QCNN_AMX void amx_block(const uint8_t* a0, const uint8_t* a1, int64_t a_stride, const int64_t* a_steps, const int8_t* w,
                        int64_t w_stride, int64_t steps, const int32_t* start, int32_t* c0, int32_t* c1, int64_t ldc) {
  if (start) {
    _tile_loadd(0, start, 0);
    if (TN == 2) _tile_loadd(1, start + 16, 0);
    if (TM == 2) _tile_loadd(2, start, 0);
    if (TM == 2 && TN == 2) _tile_loadd(3, start + 16, 0);
  } else {  // every start 0 (inputs from 0 up): zeroed tiles, no loads
    _tile_zero(0);
    if (TN == 2) _tile_zero(1);
    if (TM == 2) _tile_zero(2);
    if (TM == 2 && TN == 2) _tile_zero(3);
  }
  for (int64_t s = 0; s < steps; ++s) {
    _tile_loadd(4, a0 + a_steps[s], a_stride);
    _tile_loadd(6, w + s * kAmxStep * 16, 64);
    if (TN == 2) _tile_loadd(7, w + w_stride + s * kAmxStep * 16, 64);
    _tile_dpbusd(0, 4, 6);
    if (TN == 2) _tile_dpbusd(1, 4, 7);
    if (TM == 2) {
      _tile_loadd(5, a1 + a_steps[s], a_stride);
      _tile_dpbusd(2, 5, 6);
      if (TN == 2) _tile_dpbusd(3, 5, 7);
    }
  }
  const int64_t stride = ldc * 4;
  _tile_stored(0, c0, stride);
  if (TN == 2) _tile_stored(1, c0 + 16, stride);
  if (TM == 2) _tile_stored(2, c1, stride);
  if (TM == 2 && TN == 2) _tile_stored(3, c1 + 16, stride);
}
}  // namespace

QCNN_AMX void amx_accumulate(const PackedConv& pc, const uint8_t* padded, const int64_t* row_offsets, int64_t p0,
                             int64_t rows, int32_t* acc, int64_t ldc, Workspace& ws) {
  const ConvGeom& g = pc.g;
  const int64_t k = g.k(), amx_k = pc.amx_k, seg = g.kw * g.c, wp = g.w + 2 * g.pw, seg_stride = int64_t{g.dh} * wp * g.c;
  const int64_t rows16 = round_up(rows, kAmxTileRows), steps = amx_k / kAmxStep;
  // Where each group of up to 16 positions (one A tile) starts among the rows and in a_rows, how far apart its rows
  // are, and where its k-step s lies from its first row (reused per thread: no allocation per tile).
  std::vector<int64_t>&groups = ws.amx_groups, &group_offsets = ws.amx_group_offsets, &a_steps = ws.amx_steps;
  std::vector<uint8_t>& panel = ws.panel8;
  groups.clear();
  group_offsets.clear();
  a_steps.resize(static_cast<size_t>(steps));
  const uint8_t* a_rows = padded;
  int64_t a_stride = amx_k;
  if (amx_reads_image(g)) {
    // Direct: each group within one output row, its rows sw * c apart in the image, step s of tap (ky, kx) and
    // channel quad-block cs at that tap's offset. A group's rows past the output row read on into the image's slack.
    a_stride = int64_t{g.sw} * g.c;
    const int64_t blocks_per_tap = g.c / kAmxStep;
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t tap = s / blocks_per_tap, ky = tap / g.kw, kx = tap % g.kw;
      a_steps[static_cast<size_t>(s)] = (ky * g.dh * wp + kx * g.dw) * g.c + s % blocks_per_tap * kAmxStep;
    }
    for (int64_t r = 0; r < rows;) {
      groups.push_back(r);
      group_offsets.push_back(row_offsets[r]);
      r += std::min({kAmxTileRows, g.ow - (p0 + r) % g.ow, rows - r});
    }
  } else {
    for (int64_t s = 0; s < steps; ++s) a_steps[static_cast<size_t>(s)] = s * kAmxStep;
    // A 1x1 stride-1 layer without padding whose k fills its steps exactly reads its rows straight from the image
    // (k apart), where the tile's whole 16-row groups lie inside it (the rows past `rows` are computed and unused).
    const bool in_place = contiguous_1x1(g) && k == amx_k && row_offsets[0] + rows16 * k <= g.positions() * k;
    if (in_place) {
      a_rows = padded + row_offsets[0];
    } else {
      panel.resize(static_cast<size_t>(rows16 * amx_k));
      for (int64_t r = 0; r < rows16; ++r) {
        uint8_t* dst = panel.data() + r * amx_k;
        if (r >= rows) {
          zero_bytes(dst, amx_k);
          continue;
        }
        for (int ky = 0; ky < g.kh; ++ky) copy_bytes(dst + ky * seg, padded + row_offsets[r] + ky * seg_stride, seg);
        zero_bytes(dst + k, amx_k - k);
      }
      a_rows = panel.data();
    }
    for (int64_t r = 0; r < rows; r += kAmxTileRows) {
      groups.push_back(r);
      group_offsets.push_back(r * amx_k);
    }
  }
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
  const int64_t blocks = round_up(g.m, 16) / 16, count = static_cast<int64_t>(groups.size());
  const int64_t w_stride = amx_k * 16;
  const int8_t* w = pc.weights_quads.data();
  const int32_t* start = pc.vnni_start_zero ? nullptr : pc.vnni_acc_start.data();
  for (int64_t b = 0; b < blocks; b += 2) {
    const bool two_n = b + 1 < blocks;
    const int8_t* wb = w + b * w_stride;
    for (int64_t i = 0; i < count; i += 2) {
      const uint8_t* a0 = a_rows + group_offsets[static_cast<size_t>(i)];
      int32_t* c0 = acc + groups[static_cast<size_t>(i)] * ldc + b * 16;
      if (i + 1 < count) {
        const uint8_t* a1 = a_rows + group_offsets[static_cast<size_t>(i + 1)];
        int32_t* c1 = acc + groups[static_cast<size_t>(i + 1)] * ldc + b * 16;
        (two_n ? amx_block<2, 2> : amx_block<2, 1>)(a0, a1, a_stride, a_steps.data(), wb, w_stride, steps,
                                                    start ? start + b * 16 : nullptr, c0, c1, ldc);
      } else {
        (two_n ? amx_block<1, 2> : amx_block<1, 1>)(a0, a0, a_stride, a_steps.data(), wb, w_stride, steps,
                                                    start ? start + b * 16 : nullptr, c0, c0, ldc);
      }
    }
  }
  _tile_release();
}
#else
void amx_accumulate(const PackedConv& pc, const uint8_t* padded, const int64_t* row_offsets, int64_t p0, int64_t rows,
                    int32_t* acc, int64_t ldc, Workspace& ws) {
  (void)pc, (void)padded, (void)row_offsets, (void)p0, (void)rows, (void)acc, (void)ldc, (void)ws;
}
#endif

}  // namespace qcnn
