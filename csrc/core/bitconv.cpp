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

// Tables: [h + 2ph][quads][wq][16] bytes (bitconv.h). Popcount: [h + 2ph][wq][octets][B] bytes of bit planes, then
// int32 sums of v: each pixel's [h + 2ph][wq], their kw-wide row windows [h + 2ph][ow] and each output position's
// receptive field [oh][ow].
struct ImageLayout {
  int64_t wq, pixel_bytes, quad_stride, row_stride, sums_offset, windows_offset, fields_offset, total;  // in bytes
  ImageLayout(const ConvGeom& g, const BitWeights& bw) {
    const int64_t rows = g.h + 2 * g.ph, word = sizeof(int32_t);
    wq = g.w + 2 * g.pw + (bw.lanes - 1) * g.sw;
    pixel_bytes = bw.popcount ? bw.tap_steps * bw.act_bits : kTableBytes;
    quad_stride = bw.popcount ? 0 : wq * kTableBytes;
    row_stride = bw.popcount ? wq * pixel_bytes : bw.tap_steps * quad_stride;
    sums_offset = round_up(rows * row_stride, word);
    windows_offset = sums_offset + rows * wq * word;
    fields_offset = windows_offset + rows * g.ow * word;
    total = bw.popcount ? fields_offset + g.oh * g.ow * word : rows * row_stride;
  }
  explicit ImageLayout(const PackedConv& pc) : ImageLayout(pc.g, pc.bits) {}
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
            for (int64_t q = 0; q < a.tap_steps; ++q) {
              const uint8_t pattern = patterns[j * a.group_stride + pattern_index(a, t, q) + i];
              sum += base[a.step_offsets[t * a.tap_steps + q] + pattern];
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
                                    nullptr,
                                    0,
                                    {},
                                    nullptr};
  const BinaryKernels* vector = has_avx512(isa) ? binary_kernels_avx512()
                               : has_avx2(isa)   ? binary_kernels_avx2()
                               : has_neon(isa)   ? binary_kernels_neon()
                                                 : nullptr;
  return vector ? *vector : scalar;
}

int64_t slots_per_call(const PackedConv& pc) {
  const BinaryKernels& k = binary_kernels(pc.isa);
  return pc.bits.popcount ? k.popcount_slots : k.slots;
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
  const int64_t runs = whole_row ? 1 : g.w, run = whole_row ? g.w * g.c : g.c;
  const int64_t run_quads = whole_row ? g.w * bw.tap_steps : bw.tap_steps;
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
  quad.resize(static_cast<size_t>(g.w * bw.tap_steps));
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
    const int64_t quads = bw.tap_steps, w = g.w, quad_stride = layout.quad_stride;
    for (int64_t q = 0; q < quads; ++q) {
      uint8_t* dst = row + q * quad_stride;
      zero_tables(dst, left, zero_table);
      for (int64_t ix = 0; ix < w; ++ix)
        std::memcpy(dst + (left + ix) * kTableBytes, tables + values[ix * quads + q] * kTableBytes, kTableBytes);
      zero_tables(dst + (left + w) * kTableBytes, right, zero_table);
    }
  }
}

// The popcount form's planes and value sums of w pixels of c codes each (ImageLayout), v = (x - x_sub) masked to B
// bits: bit i of byte (o, p) is bit p of channel 8 o + i's v (channels past c: 0).
template <typename T>
void pixel_planes(const T* src, int64_t w, int64_t c, int32_t x_sub, int bits, uint8_t* planes, int64_t pixel_bytes,
                  int32_t* sums) {
  const uint32_t mask = (1u << bits) - 1;
  for (int64_t ix = 0; ix < w; ++ix) {
    uint8_t* dst = planes + ix * pixel_bytes;
    std::memset(dst, 0, static_cast<size_t>(pixel_bytes));
    int32_t sum = 0;
    for (int64_t i = 0; i < c; ++i) {
      const uint32_t v = static_cast<uint32_t>(static_cast<int64_t>(src[ix * c + i]) - x_sub) & mask;
      sum += static_cast<int32_t>(v);
      for (int b = 0; b < bits; ++b) dst[(i / 8) * bits + b] |= static_cast<uint8_t>(((v >> b) & 1) << (i % 8));
    }
    sums[ix] = sum;
  }
}

template <typename T>
void plane_image_typed(const PackedConv& pc, const T* x, int32_t x_sub, std::vector<uint8_t>& image) {
  const ConvGeom& g = pc.g;
  const BitWeights& bw = pc.bits;
  const ImageLayout layout(pc);
  image.resize(static_cast<size_t>(layout.total));
  const auto vector_planes = binary_kernels(pc.isa).planes_u8;
  for (int64_t py = 0; py < g.h + 2 * g.ph; ++py) {
    uint8_t* row = image.data() + py * layout.row_stride;
    auto* sums = reinterpret_cast<int32_t*>(image.data() + layout.sums_offset) + py * layout.wq;
    const int64_t iy = py - g.ph;
    if (iy < 0 || iy >= g.h) {  // the border: v = 0
      std::memset(row, 0, static_cast<size_t>(layout.row_stride));
      std::fill(sums, sums + layout.wq, 0);
      continue;
    }
    const int64_t left = g.pw, right = layout.wq - g.pw - g.w;
    std::memset(row, 0, static_cast<size_t>(left * layout.pixel_bytes));
    std::fill(sums, sums + left, 0);
    const T* src = x + iy * g.w * g.c;
    uint8_t* planes = row + left * layout.pixel_bytes;
    bool done = false;
    if constexpr (std::is_same_v<T, uint8_t>) {
      if (vector_planes) {
        vector_planes(src, g.w, g.c, x_sub, bw.act_bits, planes, layout.pixel_bytes, sums + left);
        done = true;
      }
    }
    if (!done) pixel_planes(src, g.w, g.c, x_sub, bw.act_bits, planes, layout.pixel_bytes, sums + left);
    std::memset(row + (left + g.w) * layout.pixel_bytes, 0, static_cast<size_t>(right * layout.pixel_bytes));
    std::fill(sums + left + g.w, sums + layout.wq, 0);
  }
  // each output position's sum of v, in two separable passes over the pixel sums
  const auto* sums = reinterpret_cast<const int32_t*>(image.data() + layout.sums_offset);
  auto* windows = reinterpret_cast<int32_t*>(image.data() + layout.windows_offset);
  auto* fields = reinterpret_cast<int32_t*>(image.data() + layout.fields_offset);
  const int64_t ow = g.ow, sw = g.sw;
  std::fill(windows, windows + (g.h + 2 * g.ph) * ow, 0);
  for (int64_t py = 0; py < g.h + 2 * g.ph; ++py)
    for (int kx = 0; kx < g.kw; ++kx) {
      const int32_t* src = sums + py * layout.wq + int64_t{kx} * g.dw;
      int32_t* dst = windows + py * ow;
      for (int64_t ox = 0; ox < ow; ++ox) dst[ox] += src[ox * sw];
    }
  std::fill(fields, fields + g.oh * ow, 0);
  for (int64_t oy = 0; oy < g.oh; ++oy)
    for (int ky = 0; ky < g.kh; ++ky) {
      const int32_t* src = windows + (oy * g.sh + int64_t{ky} * g.dh) * ow;
      int32_t* dst = fields + oy * ow;
      for (int64_t ox = 0; ox < ow; ++ox) dst[ox] += src[ox];
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
  const BinaryKernels& kernels = binary_kernels(isa);
  bw.lanes = kernels.lanes;
  const int64_t groups = round_up(g.m, 16) / 16, taps = int64_t{g.kh} * g.kw;
  if (kernels.popcount[act_bits - 1][0][0]) {
    bw.popcount = true;
    bw.tap_steps = (g.c + 7) / 8;
    bw.patterns.assign(static_cast<size_t>(groups * taps * bw.tap_steps * kPlanePatternBytes), 0);
    for (int64_t m = 0; m < g.m; ++m)
      for (int64_t t = 0; t < taps; ++t)
        for (int64_t c = 0; c < g.c; ++c)
          if (weight[m * g.k() + t * g.c + c] == 1)
            bw.patterns[static_cast<size_t>((((m / 16) * taps + t) * bw.tap_steps + c / 8) * kPlanePatternBytes +
                                            m % 16)] |= static_cast<uint8_t>(1u << (c % 8));
    const ImageLayout layout(g, bw);
    for (int ky = 0; ky < g.kh; ++ky)
      for (int kx = 0; kx < g.kw; ++kx)
        for (int64_t o = 0; o < bw.tap_steps; ++o)
          bw.step_offsets.push_back(int64_t{ky} * g.dh * layout.row_stride +
                                    int64_t{kx} * g.dw * layout.pixel_bytes + o * act_bits);
    return bw;
  }
  bw.tap_steps = (g.c + 3) / 4;
  bw.patterns.assign(static_cast<size_t>(groups * taps * bw.tap_steps * kPatternBytes), 0);
  for (int64_t m = 0; m < g.m; ++m)
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t c = 0; c < g.c; ++c)
        if (weight[m * g.k() + t * g.c + c] == 1) {
          uint8_t* p = bw.patterns.data() + (((m / 16) * taps + t) * bw.tap_steps + c / 4) * kPatternBytes + m % 16;
          p[0] |= static_cast<uint8_t>(1u << (c % 4));
          p[16] = p[0];
        }
  const ImageLayout layout(g, bw);
  for (int ky = 0; ky < g.kh; ++ky)
    for (int kx = 0; kx < g.kw; ++kx)
      for (int64_t q = 0; q < bw.tap_steps; ++q)
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
  if (pc.bits.popcount && in == Storage::U8)
    plane_image_typed(pc, static_cast<const uint8_t*>(x), x_sub, image);
  else if (pc.bits.popcount)
    plane_image_typed(pc, static_cast<const int32_t*>(x), x_sub, image);
  else if (in == Storage::U8)
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
  const auto* fields = bw.popcount ? reinterpret_cast<const int32_t*>(image + layout.fields_offset) : nullptr;
  // Slots: `lanes` neighbours in a row; a row's (or the tile's) last outputs share one with padding lanes.
  scratch.resize(static_cast<size_t>(rows * kSlotWords));
  auto* slots = reinterpret_cast<Slot*>(scratch.data());
  int64_t nslots = 0;
  for (int64_t r = 0; r < rows;) {
    const int64_t p = p0 + r, oy = p / g.ow, ox = p % g.ow;
    const int64_t n = std::min<int64_t>({bw.lanes, rows - r, g.ow - ox});
    Slot& slot = slots[nslots++];
    slot.offset = oy * g.sh * layout.row_stride + ox * g.sw * layout.pixel_bytes;
    for (int lane = 0; lane < kMaxLanes; ++lane) {
      slot.out[lane] = lane < n ? r + lane : -1;
      slot.value_sum[lane] = bw.popcount && lane < n ? fields[p + lane] : 0;
    }
    r += n;
  }
  KernelArgs a{};
  a.image = image;
  a.step_offsets = bw.step_offsets.data();
  a.taps = taps;
  a.tap_steps = bw.tap_steps;
  a.lane1 = int64_t{g.sw} * layout.pixel_bytes;
  a.group_stride = taps * bw.tap_steps * (bw.popcount ? kPlanePatternBytes : kPatternBytes);
  // the 16-bit sums: each step adds at most 2 beta (tables) or 2 (2^B - 1) bytes of at most 8 (popcount, planes
  // weighted 2^(p + 1))
  const int step_max = bw.popcount ? 16 * ((1 << bw.act_bits) - 1) : 2 * beta(bw.act_bits);
  a.flush = bw.popcount ? kPopcountFlush : 255 / step_max;
  a.epoch = int64_t{65535 / step_max} / a.flush * a.flush;
  a.bias = static_cast<int32_t>(beta(bw.act_bits) * taps * bw.tap_steps);
  const bool contiguous = g.sw == 1;
  const BinaryKernels& k = binary_kernels(pc.isa);
  const int64_t per_call = slots_per_call(pc);
  for (int64_t b = 0; b < groups; b += kGroups) {
    const int jn = static_cast<int>(std::min<int64_t>(kGroups, groups - b));
    for (int64_t s = 0; s < nslots; s += per_call) {
      const int sn = static_cast<int>(std::min<int64_t>(per_call, nslots - s));
      const BinaryKernel kernel =
          bw.popcount ? k.popcount[bw.act_bits - 1][sn - 1][jn - 1] : k.kernel[contiguous][sn - 1][jn - 1];
      kernel(a, slots + s, bw.patterns.data() + b * a.group_stride, acc + b * 16, ldc);
    }
  }
}

// Whole output rows, at least kTileRows positions, and where it fits in kMaxTileRows a slot count that fills
// every microkernel call (a row's last slot is partial, and a call with fewer slots costs as much per step).
int64_t bit_tile_rows(const PackedConv& pc) {
  const int64_t ow = pc.g.ow, per_row = (ow + pc.bits.lanes - 1) / pc.bits.lanes, per_call = slots_per_call(pc);
  const int64_t rows = std::max<int64_t>(1, (kTileRows + ow - 1) / ow);
  for (int64_t r = rows; r * ow <= kMaxTileRows; ++r)
    if (r * per_row % per_call == 0) return r * ow;
  return rows * ow;
}

int64_t bit_scratch_bytes(const PackedConv& pc) {
  return ImageLayout(pc).total + bit_tile_rows(pc) * kSlotWords * 8;
}

}  // namespace qcnn
