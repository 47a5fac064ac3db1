// Integer convolution on NHWC activations as an implicit GEMM (docs/FORMAT.md section 4).
//
//   acc[p, m] = sum_k (x[p, k] - z_x) * w_int[m, k]      k = (ky, kx, c) within m's group
//
// The kernels read the input as x - z_x in int16 from a zero-bordered copy of the image, in place
// (one group, dilation 1 in x: each kernel row is kw * c contiguous values), or per tile of output
// positions from a gathered row panel (no full im2col buffer either way), multiplied against weights
// pre-packed once at load into blocks of 8 output channels x pairs of k (the layout vpmaddwd
// reads: a broadcast pair of activations times 8 channel pairs gives 8 int32 partial sums), and
// the int32 accumulators of the tile go through a fused epilogue: bias, fixed-point
// requantization, clamp (ReLU) and narrowing to uint8 codes, or the float logits.
//
// int16 x int16 pair sums are exact: the load-time bound K * max|x - z| * max|w| < 2^31 covers
// every partial sum. Every ISA path computes the same integers; the scalar path is the reference.
#pragma once
#include <cstdint>
#include <climits>
#include <string>
#include <utility>
#include <vector>

#include "core/isa.h"
#include "core/scratch.h"

namespace qcnn {

struct ConvGeom {
  int64_t h = 1, w = 1, c = 1;  // input plane and channels (the NHWC row length)
  int64_t m = 1;                // output channels
  int64_t groups = 1;
  int kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  int64_t oh = 1, ow = 1;
  int64_t cg() const { return c / groups; }
  int64_t mg() const { return m / groups; }
  int64_t k() const { return cg() * kh * kw; }
  int64_t positions() const { return oh * ow; }
  int64_t macs() const { return positions() * m * k(); }
  bool depthwise() const { return groups > 1 && groups == c && groups == m; }  // its own kernels
};

// Validates the geometry (std::invalid_argument naming the bad field) and computes oh, ow.
ConvGeom make_conv_geom(int64_t h, int64_t w, int64_t c, int64_t m, int64_t groups, int kh, int kw, int sh, int sw,
                        int ph, int pw, int dh, int dw);

// How the int32 accumulators become the output of the node.
struct ConvEpilogue {
  bool float_output = false;
  // quantized: out = clamp(zero_point + RS(acc * multiplier + bias, shift), lo, hi) - store_offset
  std::vector<int32_t> multiplier, shift;  // [M], shift in [0, 62]
  std::vector<int64_t> bias;               // [M]
  int32_t zero_point = 0, lo = 0, hi = 0, store_offset = 0;
  // float (the logits): out = fma(float(acc), scale, bias)
  std::vector<float> scale, float_bias;  // [M]
};

enum class Storage { U8, I32, F32 };

// Requantization constants of 8 output channels as the AVX2 epilogue reads them: int64 lanes
// split into even and odd channels (vpmuldq multiplies the even int32 lanes). Rounding is to nearest,
// ties to even (core/requant.h rounding_shift): half = 2^(s-1) - 1 and tie = 1 where s > 0, 0 where s = 0.
struct alignas(32) RequantBlock {
  int32_t multiplier[8];
  int64_t bias_even[4], bias_odd[4], shift_even[4], shift_odd[4], half_even[4], half_odd[4], tie_even[4], tie_odd[4];
};

// 16 channels of a tie-free requantization as the AVX-512 epilogue reads them: each accumulator clamped into its
// channel's [acc_lo, acc_hi], then r = (acc * multiplier + bias_half) >> shift in int64 lanes split into even and
// odd channels (vpmuldq order).
struct alignas(64) TieFreeBlock {
  int32_t acc_lo[16], acc_hi[16], multiplier[16];
  int64_t bias_half_even[8], bias_half_odd[8], shift_even[8], shift_odd[8];
};

// The range of x - z_x a convolution will see (the engine knows it from the producer's clamp). The
// default, unknown, rules out kernels that depend on it.
struct InputRange {
  int64_t lo = INT32_MIN, hi = INT32_MAX;
};

// Activations of at most this many bits run binary layers on the table-lookup kernel (core/bitconv.h);
// its tables of 2^(4B) quad values grow past L1 beyond 2 bits.
constexpr int kMaxBinaryActBits = 2;
constexpr int kMaxThresholdLevels = 8;  // above, the 64-bit requantization is as fast (4-bit outputs measured slower)

// Weights of the binary kernel (core/bitconv.h).
struct BitWeights {
  int act_bits = 0;     // B; 0: the layer runs on a GEMM
  int lanes = 2;        // output pixels per register: 2 (AVX2, scalar), 4 (AVX-512) or 1 (NEON)
  bool popcount = false;  // the bit-plane form (bitconv.h) instead of the tables
  int64_t tap_steps = 0;  // kernel steps per input pixel and tap: ceil(C / 4) quads, or ceil(C / 8) octets (popcount)
  // Tables: [ceil(M / 16)][kh * kw][quads][2 lanes][16 channels] 4-bit sign patterns; popcount:
  // [ceil(M / 16)][kh * kw][octets][16 channels] bytes of weight bits (bit i: channel 8 o + i has w = +1).
  std::vector<uint8_t> patterns;
  std::vector<uint8_t> tables;    // [2^(4B) quad values][16 patterns]: the biased sums T (not in the popcount form)
  std::vector<int64_t> step_offsets;  // [kh * kw][tap_steps]: bytes from a pixel's data to that of each tap and step
};

// The kernel pack_conv chose for a layer, once: conv_image, conv_kernel_name and conv_scratch_bytes follow it.
//   Gemm: the int16-pair GEMM with int32 accumulators (scalar or AVX2); Acc16, Vnni, Amx: the GEMMs below;
//   Depthwise: the per-pixel loop, or the AVX2 / NEON kernel on uint8 codes where dw_sums is set; DepthwiseVnni:
//   dw_quads;
//   Binary: the table-lookup kernel (bits). The depthwise kernels run the per-pixel loop on inputs they cannot read.
enum class ConvKernel { Gemm, Acc16, Vnni, Amx, Depthwise, DepthwiseVnni, Binary };

struct PackedConv {
  ConvGeom g;
  Isa isa = Isa::Scalar;
  ConvKernel kernel = ConvKernel::Gemm;
  int64_t kp = 0;                  // packed k: segments of seg_pairs k-pairs (qgemm.cpp pack_conv)
  int64_t seg_pairs = 0;
  int64_t mg8 = 0;                 // channels per group rounded up to 8
  std::vector<int16_t> weights;    // [groups][mg8 / 8][kp / 2][8][2]; depthwise: [kh * kw][C]
  // Depthwise on AVX2 and NEON (uint8 inputs): sum_t w[t][c] for the zero-point correction, and on AVX2 the taps in
  // pairs, [ceil(taps / 2)][C][2] (an odd last tap paired with 0); empty where 510 * sum_t |w[t][c]| could leave int32
  // (the kernels' partial sums), which keeps such a layer on the scalar loop.
  std::vector<int16_t> dw_pairs;
  std::vector<int32_t> dw_sums;
  // Depthwise on AVX-512 VNNI (core/depthwise.h; has_avx512(isa), int8 weights, the same bound): the weights as
  // quads of 4 kernel rows, [ceil(C / 16)][kw][ceil(kh / 4)][16][4] (rows past kh 0), with dw_sums; no dw_pairs then.
  std::vector<int8_t> dw_quads;
  ConvEpilogue epi;
  std::vector<RequantBlock> requant_blocks;  // [M / 8]
  BitWeights bits;                            // binary weights with few-bit inputs: the table-lookup kernel
  // Layers with at most kMaxThresholdLevels output codes and a proven input range (AVX2, NEON): the requantization
  // as thresholds on the accumulator, out = lo + #{L : sign_m * acc > level_thresholds[L][m]},
  // [M / 16][levels - 1][16], sign_m = +-1 as the multiplier's sign (exact: the requantization is monotone in acc).
  int threshold_levels = 0;
  std::vector<int32_t> level_thresholds;
  std::vector<int32_t> level_signs;  // [M / 8 * 8]
  // AVX-512 and NEON, where the proven input range bounds every |acc * multiplier + bias| below 2^51 and its shifted
  // value below 2^28: the requantization in double, exact (qgemm.cpp epilogue_f64), with these constants per channel,
  // multiplier * 2^-shift and bias * 2^-shift, [M rounded up to 16].
  std::vector<double> requant_scale, requant_offset;
  // AVX-512, where no channel rounds at a tie for an accumulator of its proven range (tie_free_requant in
  // core/requant.h): the requantization without the parity term of ties-to-even, [M rounded up to 16 / 16] blocks,
  // and the int32 lanes' output constants (stored code = clamp(r + out_add, out_lo, out_hi)). Where the double
  // epilogue is exact too, it runs instead, with the zero point in its rounding constant.
  std::vector<TieFreeBlock> tie_free_blocks;
  // Every accumulator of the proven range gives a code inside [lo, hi] (a wide residual stream): the clamp is a no-op.
  bool requant_unclamped = false;
  int32_t tie_free_out_add = 0, tie_free_out_lo = 0, tie_free_out_hi = 0;
  std::vector<int8_t> weights8;               // acc16: [M / 16 blocks][kp / 2][16][2]
  // acc16 on NEON (MLA multiplies int16 lanes): groups of kBlocks 16-channel blocks, [kp][the group's blocks x 16]
  std::vector<int16_t> weights16;
  // The u8 x s8 VNNI GEMM (avx512vnni: one group, dilation 1 in x, int8 weights, a proven input range
  // at most 256 values wide): it reads u = x - z_x - x_lo in [0, 255] from a padded uint8 image (border
  // -x_lo, where x - z_x = 0) and starts each accumulator at x_lo * sum_k w[m][k], which undoes the shift.
  int32_t vnni_x_lo = 0;
  int64_t seg_quads = 0;                      // k-quads per kernel row (each row padded to whole quads)
  std::vector<int8_t> weights_quads;          // [M / 16 blocks][kq][16][4]: kq = kh * seg_quads, or amx_k / 4
  std::vector<int32_t> vnni_acc_start;        // [M rounded up to 16]: x_lo * sum_k w[m][k]
  bool vnni_start_zero = false;               // every start 0 (x_lo = 0): the AMX GEMM zeroes its tiles instead
  // The same input and accumulator starts on the AMX tile GEMM (core/qgemm_amx.h; Isa::Amx, layers with k >= 128,
  // 64 output channels and 16 output positions): k in its natural order, padded to amx_k, a multiple of 64.
  int64_t amx_k = 0;
};

// weight: [M][K] int16 in (ky, kx, c) order per group. The caller has checked that
// |rounded bias| + max|acc| * |multiplier| < 2^63 (the engine does at load). Binary weights (all -1
// or +1) whose input range `x` has at most kMaxBinaryActBits bits run on the table-lookup binary kernel. A layer
// that declares accumulator_bits <= 16 runs on the int16-accumulator kernel (AVX2 or NEON, one group, dilation
// 1 in x) when its integers prove it exact: x - z_x in [0, 255], int8 weights and
// max(x - z_x) * ||w_m||_1 <= 2^15 - 1 for every channel m; otherwise on the int32 GEMM. With
// Isa::Avx512Vnni, Isa::Amx, Isa::NeonDot or Isa::I8mm, a layer the quad GEMM can run (see ConvKernel::Vnni) runs
// there instead of on either int16 GEMM, declared accumulator width or not: it accumulates in int32 at twice (or on
// I8mm four times) acc16's MACs per instruction (docs/BENCHMARKS.md); with Isa::Amx the large ones run on the tile
// GEMM (ConvKernel::Amx). On Isa::Neon the quad GEMM (widening multiplies) takes the layers acc16 does not.
// Binary layers keep the binary kernel (tables, or on NEON at 1 bit the popcount form).
PackedConv pack_conv(const ConvGeom& g, const int16_t* weight, ConvEpilogue epi, Isa isa, InputRange x = {},
                     int accumulator_bits = 32);

// Tiles of output positions handed to the caller as they are computed (the engine runs its fused pointwise nodes
// on each while it is in cache). Both calls come on the thread that computes the tile: buffer right before, done
// right after its codes are stored.
class TileSink {
 public:
  virtual ~TileSink() = default;
  // Where the codes of positions [first, first + count) go (count * m values of the output storage, position
  // by position), or null: into `out` at position `first`. At most conv_max_tile_positions positions.
  virtual void* buffer(int64_t /*first*/, int64_t /*count*/) { return nullptr; }
  virtual void done(int64_t first, int64_t count) = 0;
};

// One image. x: NHWC [h, w, c] in `in` storage (U8 or I32), x_sub = z_x in stored units (the
// stored value minus x_sub is x - z_x); out: NHWC [oh, ow, m] in `out` storage (U8, I32 or F32), null where the
// sink gives a buffer for every tile. num_threads > 1 splits the output positions between threads (the batch-1 path);
// `scratch` has a slot for each of them (std::invalid_argument otherwise).
void conv_image(const PackedConv& pc, const void* x, Storage in, int32_t x_sub, void* out, Storage out_storage,
                int num_threads, const ScratchTeam& scratch, TileSink* tiles = nullptr);
// The same with scratch of its own for this call.
void conv_image(const PackedConv& pc, const void* x, Storage in, int32_t x_sub, void* out, Storage out_storage,
                int num_threads, TileSink* tiles = nullptr);

// The most output positions one tile of conv_image holds, at any thread count.
int64_t conv_max_tile_positions(const PackedConv& pc);

// The checked path of `qcnn-infer --count-overflows`: for one image, the number of output values
// whose running sum over k, in the engine's (ky, kx, c) order, leaves the range of a signed
// `acc_bits`-bit accumulator at some step. weight as for pack_conv; x and x_sub as for conv_image.
int64_t count_accumulator_overflows(const ConvGeom& g, const int16_t* weight, const void* x, Storage in,
                                    int32_t x_sub, int acc_bits);

// The codes a quantized epilogue can write for inputs x - z_x in `x`: per channel the accumulator lies in
// [sum_k min(w x.lo, w x.hi), sum_k max(...)] with the range widened to hold 0 (the zero padding), and the
// requantization is monotone in it. Tighter than the clamp [epi.lo, epi.hi]. weight as for pack_conv, k per group.
std::pair<int64_t, int64_t> conv_output_range(const ConvEpilogue& epi, const int16_t* weight, int64_t k,
                                              InputRange x);

// The kernel pack_conv chose: "binary a1" / "a2" (activation bits; "binary popcount a1" in the popcount form),
// "gemm acc16", "gemm acc32", "gemm vnni", "gemm amx" or "depthwise".
std::string conv_kernel_name(const PackedConv& pc);

// Bytes of per-thread scratch conv_image uses for `pc` (row panel, accumulator tile, padded image).
int64_t conv_scratch_bytes(const PackedConv& pc);

// Measured peak integer multiply-accumulate throughput of the best kernel instruction of this CPU
// (vpdpbusd on zmm with AVX-512 VNNI, vpmaddwd + vpaddd on AVX2, from registers, no memory traffic; without
// AVX2 the scalar microkernel on L1-resident operands) over about `seconds`, in G MACs/s summed over
// `threads` threads: what a layer's MACs/s is compared with. On AVX2 this is also the int8 peak: u8 x s8
// (vpmaddubsw + vpmaddwd) needs two multiplies per 32 MACs, as vpmaddwd does.
double int8_peak_gmacs(double seconds, int threads);

}  // namespace qcnn
