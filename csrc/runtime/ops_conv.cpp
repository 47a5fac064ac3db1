// Convolutions and linear layers (docs/FORMAT.md sections 3 and 4): weights decoded from their packed or
// Huffman-coded indices and level tables, pre-packed for this CPU's kernel, a fused requantizing epilogue.
#include <algorithm>
#include <cmath>

#include "core/bitpack.h"
#include "core/huffman.h"
#include "runtime/plan.h"

namespace qcnn::runtime {

namespace {

class ConvStep : public Step {
 public:
  PackedConv packed;
  int32_t x_sub = 0;                     // the input zero point in stored units
  int accumulator_bits = 32;             // the width the file declares
  std::vector<int16_t> checked_weights;  // [M][K] for count_overflows, when loaded for it

  void run(const Node& node, const Exec& ex, const std::vector<const Node*>& chain) const override;
  std::string kernel() const override { return conv_kernel_name(packed); }
  int64_t scratch_bytes() const override { return conv_scratch_bytes(packed); }
  int64_t max_tile_elements(const Value&) const override { return conv_max_tile_positions(packed) * packed.g.m; }
  bool writes_tiles() const override { return true; }
};

// The fused chain on each tile of output positions, the tile itself in the tile scratch where the output lives in tiles.
class ChainSink : public TileSink {
 public:
  ChainSink(const Exec& ex, const std::vector<const Node*>& chain, int output, int64_t m)
      : ex_(ex), chain_(chain), output_(output), m_(m) {}
  void* buffer(int64_t first, int64_t) override {
    return ex_.value(output_).tile_offset < 0 ? nullptr : ex_.at_tile(first * m_).out(output_, first * m_).data;
  }
  void done(int64_t first, int64_t count) override { run_chain(chain_, ex_, first * m_, count * m_); }

 private:
  const Exec& ex_;
  const std::vector<const Node*>& chain_;
  int output_;
  int64_t m_;
};

// Few images: the threads share a layer only where it is large enough to pay for the split (measured at batch 1
// on 2 threads, 224x224 MobileNetV2 / EfficientNet-B0: 2^20 MACs beat 2^24 and 2^18). A depthwise MAC costs
// about kDepthwiseMacCost GEMM MACs (no reuse of its inputs across channels).
constexpr int64_t kMinSharedLayerMacs = int64_t{1} << 20;
constexpr int64_t kDepthwiseMacCost = 8;

bool depthwise(const PackedConv& pc) {
  return pc.kernel == ConvKernel::Depthwise || pc.kernel == ConvKernel::DepthwiseVnni;
}

void ConvStep::run(const Node& node, const Exec& ex, const std::vector<const Node*>& chain) const {
  const Value& x = ex.value(node.inputs[0]);
  const Value& out = ex.value(node.output);
  const int64_t cost = packed.g.macs() * (depthwise(packed) ? kDepthwiseMacCost : 1);
  const int threads = cost < kMinSharedLayerMacs ? 1 : ex.threads;
  const uint8_t* src = ex.arena + x.arena_offset;
  if (!out.is_float()) {
    ChainSink sink(ex, chain, node.output, packed.g.m);
    conv_image(packed, src, x.storage, x_sub, out.tile_offset < 0 ? ex.arena + out.arena_offset : nullptr,
               out.storage, threads, ex.scratch, chain.empty() ? nullptr : &sink);
    return;
  }
  const int64_t positions = packed.g.positions();
  if (positions == 1) {
    conv_image(packed, src, x.storage, x_sub, ex.logits, Storage::F32, threads, ex.scratch);
    return;
  }
  // float [M, oh, ow] logits of a conv: computed NHWC, returned CHW like torch.flatten
  std::vector<float> hwc(static_cast<size_t>(out.count));
  conv_image(packed, src, x.storage, x_sub, hwc.data(), Storage::F32, threads, ex.scratch);
  const int64_t m = packed.g.m;
  for (int64_t p = 0; p < positions; ++p)
    for (int64_t c = 0; c < m; ++c) ex.logits[c * positions + p] = hwc[p * m + c];
}

std::vector<uint16_t> weight_indices(const Loader& ld, const json& w, const std::string& prefix, int64_t count,
                                     int bits, int codes, const std::string& wwhere) {
  const std::string coding = get_string(w, "coding", wwhere);
  const std::string iname = prefix + ".indices";
  const TensorView& data = ld.file.tensor(iname, DType::U8);
  if (data.shape.size() != 1) fail(ld.tensor_where(iname), "must be 1-D");
  std::vector<uint16_t> indices;
  if (coding == "packed") {
    // Sizes are checked against the file before anything of `count` is allocated.
    if (data.bytes != packed_size(count, bits))
      fail(ld.tensor_where(iname), std::to_string(data.bytes) + " bytes, expected " +
                                       std::to_string(packed_size(count, bits)) + " for " + std::to_string(count) +
                                       " values of " + std::to_string(bits) + " bits");
    indices.resize(static_cast<size_t>(count));
    unpack_bits(data.data, count, bits, indices.data());
  } else if (coding == "huffman") {
    if (codes > 256) fail(wwhere, "huffman coding takes at most 256 codes");
    auto lengths = copy_tensor<uint8_t>(ld.file.tensor(prefix + ".code_lengths", DType::U8, {codes}));
    if (count / 8 > data.bytes)  // every code is at least one bit long
      fail(ld.tensor_where(iname), std::to_string(data.bytes) + " bytes cannot hold " + std::to_string(count) + " codes");
    std::vector<uint8_t> narrow(static_cast<size_t>(count));
    try {
      huffman_decode(data.data, data.bytes, lengths.data(), codes, count, narrow.data());
    } catch (const std::invalid_argument& e) {
      fail(ld.tensor_where(iname), e.what());
    }
    indices.assign(narrow.begin(), narrow.end());
  } else {
    fail(wwhere, "unknown coding (expected 'packed' or 'huffman')");
  }
  for (int64_t i = 0; i < count; ++i)
    if (indices[i] >= codes) fail(ld.tensor_where(iname), "index " + std::to_string(i) + " is not below codes");
  return indices;
}

Value parse_conv(Loader& ld, const json& nd, Node& node, const std::string& where) {
  const bool conv = node.op_name == "conv2d";
  const Value& x = ld.input(node);
  const auto& s = x.shape;
  const int64_t m = get_int(nd, "out_channels", where, 1, kMaxDim);
  const int64_t cin = get_int(nd, "in_channels", where, 1, kMaxDim);
  const auto kern = get_ints(nd, "kernel", where, 2, 1, 64);
  const auto stride = get_ints(nd, "stride", where, 2, 1, 64);
  const auto pad = get_ints(nd, "padding", where, 2, 0, 64);
  const auto dilation = get_pair_or(nd, "dilation", where, 1, 1, 64);
  const int64_t groups = nd.contains("groups") ? get_int(nd, "groups", where, 1, kMaxDim) : 1;
  const int32_t z_x = static_cast<int32_t>(get_int(nd, "input_zero_point", where, INT32_MIN, INT32_MAX));
  ConvGeom g;
  try {
    if (conv) {
      if (s.size() != 3 || s[0] != cin)
        fail(where, "conv2d input shape " + shape_str(s) + " does not have " + std::to_string(cin) + " channels");
      g = make_conv_geom(s[1], s[2], cin, m, groups, int(kern[0]), int(kern[1]), int(stride[0]), int(stride[1]),
                         int(pad[0]), int(pad[1]), int(dilation[0]), int(dilation[1]));
    } else {
      if (s.size() != 1 || s[0] != cin)
        fail(where, "linear input shape " + shape_str(s) + " is not [" + std::to_string(cin) + "]");
      if (kern != std::vector<int64_t>{1, 1} || stride != std::vector<int64_t>{1, 1} ||
          pad != std::vector<int64_t>{0, 0} || groups != 1 || dilation != std::vector<int64_t>{1, 1})
        fail(where, "linear needs kernel [1, 1], stride [1, 1], padding [0, 0], one group");
      g = make_conv_geom(1, 1, cin, m, 1, 1, 1, 1, 1, 0, 0, 1, 1);
    }
  } catch (const std::invalid_argument& e) {
    fail(where, e.what());
  }
  const int64_t k = g.k();
  int64_t count = 0, macs = 0;
  if (__builtin_mul_overflow(m, k, &count) || __builtin_mul_overflow(g.positions(), count, &macs))
    fail(where, "weight count overflows");
  node.macs = macs;
  // the image the kernels read, zero-bordered
  node.ops = saturating_mul(saturating_mul(g.h + 2 * g.ph, g.w + 2 * g.pw), g.c);

  // Weights: integer levels per index (docs/FORMAT.md section 3).
  const std::string wwhere = where + " weight";
  const json& w = field(nd, "weight", where);
  const int bits = static_cast<int>(get_int(w, "bits", wwhere, 1, kMaxPackedBits));
  const int codes = static_cast<int>(get_int(w, "codes", wwhere, 1, 1 << kMaxPackedBits));
  if (codes > (1 << bits)) fail(wwhere, "codes exceeds 2^bits");
  const int64_t tables = get_int(w, "groups", wwhere, 1, kMaxDim);
  if (tables != 1 && tables != m) fail(wwhere, "groups must be 1 or out_channels");
  if (get_int(w, "count", wwhere, 0, INT64_MAX) != count)
    fail(wwhere, "count must be out_channels * in_channels / groups * kh * kw = " + std::to_string(count));
  const std::string prefix = node.name + ".weight";
  const std::vector<uint16_t> indices = weight_indices(ld, w, prefix, count, bits, codes, wwhere);
  const auto levels = copy_tensor<int16_t>(ld.file.tensor(prefix + ".levels", DType::I16, {tables, codes}));
  require_finite(copy_tensor<float>(ld.file.tensor(prefix + ".scale", DType::F32, {m})), ld.tensor_where(prefix + ".scale"));
  int64_t max_level = 0;
  for (auto v : levels) {
    if (v == INT16_MIN) fail(ld.tensor_where(prefix + ".levels"), "entries must be within +-32767");
    max_level = std::max<int64_t>(max_level, std::abs(int32_t{v}));
  }
  const int64_t max_x = std::max(std::abs(x.hi - z_x), std::abs(x.lo - z_x));
  if (max_x > 32767) fail(where, "input codes minus the zero point exceed int16");
  // Every partial sum of the int32 accumulator is bounded by K * max|x - z| * max|level|.
  const __int128 acc_bound = static_cast<__int128>(k) * max_x * max_level;
  if (acc_bound >= (__int128{1} << 31)) fail(where, "K * max|x - zp| * max|level| overflows the int32 accumulator");

  // Engine weight order: [M][ky][kx][c] per group; a flattened HWC input permutes the columns.
  std::vector<int16_t> dense(static_cast<size_t>(count));
  const int64_t cg = g.cg(), taps = int64_t{g.kh} * g.kw;
  const auto& hwc = x.hwc_source;
  for (int64_t o = 0; o < m; ++o) {
    const int16_t* table = levels.data() + (tables == 1 ? 0 : o) * codes;
    for (int64_t c = 0; c < cg; ++c)
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t file_col = c * taps + t;
        int64_t col = t * cg + c;
        if (!conv && !hwc.empty()) {  // file column c*H*W + h*W + w -> engine column (h*W + w)*C + c
          const int64_t hw = hwc[1] * hwc[2];
          col = (file_col % hw) * hwc[0] + file_col / hw;
        }
        dense[o * k + col] = table[indices[o * k + file_col]];
      }
  }

  ConvEpilogue epi;
  Value out;
  out.shape = conv ? std::vector<int64_t>{m, g.oh, g.ow} : std::vector<int64_t>{m};
  const json& q = field(nd, "qparams", where);
  if (q.is_null()) {
    epi.float_output = true;
    epi.scale = copy_tensor<float>(ld.file.tensor(node.name + ".output.scale", DType::F32, {m}));
    epi.float_bias = copy_tensor<float>(ld.file.tensor(node.name + ".output.bias", DType::F32, {m}));
    require_finite(epi.scale, ld.tensor_where(node.name + ".output.scale"));
    require_finite(epi.float_bias, ld.tensor_where(node.name + ".output.bias"));
    out.storage = Storage::F32;
  } else {
    epi.zero_point = ld.out_zero_point(nd, where);
    std::tie(epi.lo, epi.hi) = ld.read_clamp(nd, where);
    epi.multiplier = copy_tensor<int32_t>(ld.file.tensor(node.name + ".requant.multiplier", DType::I32, {m}));
    const auto shift8 = copy_tensor<uint8_t>(ld.file.tensor(node.name + ".requant.shift", DType::U8, {m}));
    epi.shift.assign(shift8.begin(), shift8.end());
    epi.bias = copy_tensor<int64_t>(ld.file.tensor(node.name + ".requant.bias", DType::I64, {m}));
    for (int64_t i = 0; i < m; ++i) {
      if (epi.shift[i] > 62) fail(ld.tensor_where(node.name + ".requant.shift"), "entries must be in [0, 62]");
      if (epi.multiplier[i] == INT32_MIN)
        fail(ld.tensor_where(node.name + ".requant.multiplier"), "entries must be within +-(2^31 - 1)");
      // acc * multiplier + bias + 2^(shift-1) must not leave int64.
      const __int128 worst = acc_bound * std::abs(int64_t{epi.multiplier[i]}) +
                             (epi.bias[i] < 0 ? -static_cast<__int128>(epi.bias[i]) : epi.bias[i]) +
                             (epi.shift[i] ? (__int128{1} << (epi.shift[i] - 1)) : 0);
      if (worst >= (__int128{1} << 63))
        fail(ld.tensor_where(node.name + ".requant.bias"),
             "entry " + std::to_string(i) + ": accumulator * multiplier + bias can overflow int64");
    }
    const auto [lo, hi] = conv_output_range(epi, dense.data(), k, InputRange{x.lo - z_x, x.hi - z_x});
    out = with_range(std::move(out), lo, hi);
    epi.store_offset = out.offset;
  }
  auto step = std::make_unique<ConvStep>();
  if (nd.contains("accumulator_bits"))
    step->accumulator_bits = static_cast<int>(get_int(nd, "accumulator_bits", where, 2, 32));
  if (ld.keep_checked_weights) step->checked_weights = dense;
  step->x_sub = static_cast<int32_t>(int64_t{z_x} - x.offset);
  step->packed = pack_conv(g, dense.data(), std::move(epi), ld.plan.isa, InputRange{x.lo - z_x, x.hi - z_x},
                          step->accumulator_bits);
  node.step = std::move(step);
  return out;
}

}  // namespace

ConvLayer conv_layer(const Node& node) {
  const auto* conv = dynamic_cast<const ConvStep*>(node.step.get());
  if (!conv) return {nullptr, 0, 32, nullptr};
  return {&conv->packed, conv->x_sub, conv->accumulator_bits, &conv->checked_weights};
}

const std::vector<OpSpec>& conv_ops() {
  static const std::vector<OpSpec> ops = {{"conv2d", 1, 1, parse_conv}, {"linear", 1, 1, parse_conv}};
  return ops;
}

}  // namespace qcnn::runtime
