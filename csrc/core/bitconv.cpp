#include "core/bitconv.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <type_traits>

#include "core/bitconv_kernels.h"

namespace qcnn {

namespace {

constexpr int64_t kTileRows = 32;      // output positions per tile, at least: whole rows of slots (bit_tile_rows)
constexpr int64_t kMaxTileRows = 128;

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

// The scalar reference's table, or the table of `isa`.
const BinaryKernels& binary_kernels(Isa isa) {
  static_assert(kSlots == 2 && kSlots512 == 4 && kGroups == 6, "the kernel grids");
  static const BinaryKernels scalar{kSlots,
                                    2,
                                    {{QCNN_BINARY_ROW(binary_kernel_scalar, 1), QCNN_BINARY_ROW(binary_kernel_scalar, 2)},
                                     {QCNN_BINARY_ROW(binary_kernel_scalar, 1), QCNN_BINARY_ROW(binary_kernel_scalar, 2)}},
                                    nullptr};
  const BinaryKernels* vector = has_avx512(isa) ? binary_kernels_avx512()
                               : has_avx2(isa)   ? binary_kernels_avx2()
                               : has_neon(isa)   ? binary_kernels_neon()
                                                 : nullptr;
  return vector ? *vector : scalar;
}

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


// The quad values of one input row, [w][quads]: with C a multiple of 4 the row's channels are one run
// of quads.
template <typename T>
void row_quads(const PackedConv& pc, const T* row, int32_t x_sub, uint32_t* quad) {
  const ConvGeom& g = pc.g;
  const BitWeights& bw = pc.bits;
  const bool whole_row = g.c % 4 == 0;
  const int64_t runs = whole_row ? 1 : g.w, run = whole_row ? g.w * g.c : g.c, run_quads = whole_row ? g.w * bw.quads : bw.quads;
  const auto vector_quads = binary_kernels(pc.isa).quad_values_u8;
  for (int64_t i = 0; i < runs; ++i) {
    if constexpr (std::is_same_v<T, uint8_t>) {
      if (vector_quads) {
        vector_quads(row + i * run, run, x_sub, bw.act_bits, run_quads, quad + i * run_quads);
        continue;
      }
    }
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
void bit_image_typed(const PackedConv& pc, const T* x, int32_t x_sub, std::vector<uint8_t>& image,
                     std::vector<uint32_t>& quad) {
  const ConvGeom& g = pc.g;
  const BitWeights& bw = pc.bits;
  const ImageLayout layout(pc);
  const auto zero_table = static_cast<uint8_t>(beta(bw.act_bits));  // the table of v = 0
  image.resize(static_cast<size_t>(layout.total));
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
  bw.lanes = binary_kernels(isa).lanes;
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

void bit_image(const PackedConv& pc, const void* x, Storage in, int32_t x_sub, std::vector<uint8_t>& image,
               std::vector<uint32_t>& quads) {
  if (in == Storage::U8)
    bit_image_typed(pc, static_cast<const uint8_t*>(x), x_sub, image, quads);
  else
    bit_image_typed(pc, static_cast<const int32_t*>(x), x_sub, image, quads);
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
  const BinaryKernels& k = binary_kernels(pc.isa);
  for (int64_t b = 0; b < groups; b += kGroups) {
    const int jn = static_cast<int>(std::min<int64_t>(kGroups, groups - b));
    for (int64_t s = 0; s < nslots; s += k.slots) {
      const int sn = static_cast<int>(std::min<int64_t>(k.slots, nslots - s));
      k.kernel[contiguous][sn - 1][jn - 1](a, slots + s, bw.patterns.data() + b * a.group_stride, acc + b * 16, ldc);
    }
  }
}

// Whole output rows, at least kTileRows positions, and where it fits in kMaxTileRows a slot count that fills
// every microkernel call (a row's last slot is partial, and a call with fewer slots costs as much per step).
int64_t bit_tile_rows(const PackedConv& pc) {
  const int64_t ow = pc.g.ow, per_row = (ow + pc.bits.lanes - 1) / pc.bits.lanes, per_call = binary_kernels(pc.isa).slots;
  const int64_t rows = std::max<int64_t>(1, (kTileRows + ow - 1) / ow);
  for (int64_t r = rows; r * ow <= kMaxTileRows; ++r)
    if (r * per_row % per_call == 0) return r * ow;
  return rows * ow;
}

int64_t bit_scratch_bytes(const PackedConv& pc) {
  return ImageLayout(pc).total + bit_tile_rows(pc) * kSlotWords * 8;
}

}  // namespace qcnn
