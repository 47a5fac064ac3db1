#include "core/qgemm_amx.h"

#include <algorithm>
#include <cstring>

#include "core/avx2.h"

namespace qcnn {

namespace {
int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
constexpr int64_t kPanelBytes = 96 << 10;  // the tile's A panel: stays in L2 while every weight block reads it
}  // namespace

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

// A TM x TN block of 16 x 16 C tiles: TM A tiles of 16 positions (a, kAmxTileRows * a_stride apart) against
// TN B tiles of 16 channels (w, w_stride apart), over `steps` k-steps. The C tiles start from the 16
// accumulator starts of their channels, read with a row stride of 0.
template <int TM, int TN>
QCNN_AMX void amx_block(const uint8_t* a, int64_t a_stride, const int8_t* w, int64_t w_stride, int64_t steps,
                        const int32_t* start, int32_t* c, int64_t ldc) {
  _tile_loadd(0, start, 0);
  if (TN == 2) _tile_loadd(1, start + 16, 0);
  if (TM == 2) _tile_loadd(2, start, 0);
  if (TM == 2 && TN == 2) _tile_loadd(3, start + 16, 0);
  const uint8_t* a1 = a + kAmxTileRows * a_stride;
  for (int64_t s = 0; s < steps; ++s) {
    _tile_loadd(4, a + s * kAmxStep, a_stride);
    _tile_loadd(6, w + s * kAmxStep * 16, 64);
    if (TN == 2) _tile_loadd(7, w + w_stride + s * kAmxStep * 16, 64);
    _tile_dpbusd(0, 4, 6);
    if (TN == 2) _tile_dpbusd(1, 4, 7);
    if (TM == 2) {
      _tile_loadd(5, a1 + s * kAmxStep, a_stride);
      _tile_dpbusd(2, 5, 6);
      if (TN == 2) _tile_dpbusd(3, 5, 7);
    }
  }
  const int64_t stride = ldc * 4;
  _tile_stored(0, c, stride);
  if (TN == 2) _tile_stored(1, c + 16, stride);
  if (TM == 2) _tile_stored(2, c + 16 * ldc, stride);
  if (TM == 2 && TN == 2) _tile_stored(3, c + 16 * ldc + 16, stride);
}
}  // namespace

QCNN_AMX void amx_accumulate(const PackedConv& pc, const uint8_t* padded, const int64_t* row_offsets, int64_t rows,
                             int32_t* acc, int64_t ldc, std::vector<uint8_t>& panel) {
  const ConvGeom& g = pc.g;
  const int64_t k = g.k(), amx_k = pc.amx_k, seg = g.kw * g.c, seg_stride = int64_t{g.dh} * (g.w + 2 * g.pw) * g.c;
  const int64_t rows16 = round_up(rows, kAmxTileRows);
  // A 1x1 stride-1 layer without padding whose k fills its quads exactly reads its A tiles straight from the image
  // (rows k apart), where the tile's whole 16-row groups lie inside it (the rows past `rows` are computed and unused).
  const bool in_place = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && k == amx_k &&
                        row_offsets[0] + rows16 * k <= g.positions() * k;
  const uint8_t* a_rows = padded + row_offsets[0];
  if (!in_place) {
    panel.resize(static_cast<size_t>(rows16 * amx_k));
    for (int64_t r = 0; r < rows16; ++r) {
      uint8_t* dst = panel.data() + r * amx_k;
      if (r >= rows) {
        std::memset(dst, 0, static_cast<size_t>(amx_k));
        continue;
      }
      for (int ky = 0; ky < g.kh; ++ky) std::memcpy(dst + ky * seg, padded + row_offsets[r] + ky * seg_stride, seg);
      std::memset(dst + k, 0, static_cast<size_t>(amx_k - k));
    }
    a_rows = panel.data();
  }
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
  const int64_t blocks = round_up(g.m, 16) / 16, tiles = rows16 / kAmxTileRows, steps = amx_k / kAmxStep;
  const int64_t w_stride = amx_k * 16;
  const int8_t* w = pc.weights_quads.data();
  const int32_t* start = pc.vnni_acc_start.data();
  for (int64_t b = 0; b < blocks; b += 2) {
    const bool two_n = b + 1 < blocks;
    for (int64_t t = 0; t < tiles; t += 2) {
      const uint8_t* a = a_rows + t * kAmxTileRows * amx_k;
      int32_t* c = acc + t * kAmxTileRows * ldc + b * 16;
      const int8_t* wb = w + b * w_stride;
      if (t + 1 < tiles)
        (two_n ? amx_block<2, 2> : amx_block<2, 1>)(a, amx_k, wb, w_stride, steps, start + b * 16, c, ldc);
      else
        (two_n ? amx_block<1, 2> : amx_block<1, 1>)(a, amx_k, wb, w_stride, steps, start + b * 16, c, ldc);
    }
  }
  _tile_release();
}
#else
void amx_accumulate(const PackedConv& pc, const uint8_t* padded, const int64_t* row_offsets, int64_t rows,
                    int32_t* acc, int64_t ldc, std::vector<uint8_t>& panel) {
  (void)pc, (void)padded, (void)row_offsets, (void)rows, (void)acc, (void)ldc, (void)panel;
}
#endif

}  // namespace qcnn
