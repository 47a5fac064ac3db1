// Layout ops (docs/FORMAT.md section 5): channel concatenation and gathers, flatten, and the dequantized
// float output.
#include <cmath>
#include <cstring>

#include "runtime/plan.h"

namespace qcnn::runtime {

namespace {

class ConcatStep : public Step {
 public:
  void run(const Node& n, const Exec& ex, const std::vector<const Node*>& chain) const override {
    std::vector<CodesIn> ins;
    std::vector<int64_t> channels;
    for (int id : n.inputs) {
      ins.push_back(ex.in(id));
      channels.push_back(ex.value(id).shape[0]);
    }
    const Value& out = ex.value(n.output);
    concat_nhwc(ins, channels, out.shape[1] * out.shape[2], ex.out(n.output));
    run_chain_after(chain, ex, n.output);
  }
};

class GatherStep : public Step {
 public:
  std::vector<int32_t> index;  // input channel of each output channel
  void run(const Node& n, const Exec& ex, const std::vector<const Node*>& chain) const override {
    const Value &x = ex.value(n.inputs[0]), &out = ex.value(n.output);
    gather_channels_nhwc(ex.in(n.inputs[0]), out.shape[1] * out.shape[2], x.shape[0], index.data(), out.shape[0],
                         ex.out(n.output));
    run_chain_after(chain, ex, n.output);
  }
};

class FlattenStep : public Step {
 public:
  void run(const Node& n, const Exec& ex, const std::vector<const Node*>& chain) const override {
    const Value& out = ex.value(n.output);
    std::memcpy(ex.arena + out.arena_offset, ex.arena + ex.value(n.inputs[0]).arena_offset,
                static_cast<size_t>(out.bytes));
    run_chain_after(chain, ex, n.output);
  }
};

// Calls f(typed pointer, offset) for a value's stored codes.
template <typename F>
void with_stored(const CodesIn& in, F&& f) {
  if (in.storage == Storage::U8)
    f(static_cast<const uint8_t*>(in.data), in.offset);
  else
    f(static_cast<const int32_t*>(in.data), in.offset);
}

class DequantizeStep : public Step {
 public:
  int32_t zero_point;
  float scale;
  void run(const Node& n, const Exec& ex, const std::vector<const Node*>&) const override {
    // NHWC codes of a [C, H, W] value (or of one flattened from it), returned in torch's CHW order
    const Value& x = ex.value(n.inputs[0]);
    const int64_t channels = x.hwc_source.empty() ? x.shape[0] : x.hwc_source[0];
    const int64_t positions = x.count / channels;
    with_stored(ex.in(n.inputs[0]), [&](auto src, int32_t offset) {
      for (int64_t p = 0; p < positions; ++p)
        for (int64_t c = 0; c < channels; ++c)
          ex.logits[c * positions + p] =
              scale * static_cast<float>(int64_t{src[p * channels + c]} + offset - zero_point);
    });
  }
};

Value parse_concat(Loader& ld, const json& nd, Node& node, const std::string& where) {
  const Value& first = ld.input(node, 0);
  if (first.shape.size() != 3) fail(where, "concat needs [C, H, W] inputs, got " + shape_str(first.shape));
  Value out = first;
  int64_t channels = 0;
  out.lo = INT64_MAX;
  out.hi = INT64_MIN;
  for (size_t i = 0; i < node.inputs.size(); ++i) {
    const Value& x = ld.input(node, static_cast<int>(i));
    if (x.shape.size() != 3 || x.shape[1] != first.shape[1] || x.shape[2] != first.shape[2])
      fail(where, "concat inputs must share H and W: " + shape_str(first.shape) + " and " + shape_str(x.shape));
    if (__builtin_add_overflow(channels, x.shape[0], &channels) || channels > kMaxDim)
      fail(where, "concatenated channel count too large");
    out.lo = std::min(out.lo, x.lo);
    out.hi = std::max(out.hi, x.hi);
  }
  out.shape[0] = channels;
  node.step = std::make_unique<ConcatStep>();
  ld.out_zero_point(nd, where);  // the inputs are already in the output's quantization; qparams must be there
  return with_range(std::move(out), out.lo, out.hi);
}

Value parse_gather_channels(Loader& ld, const json& nd, Node& node, const std::string& where) {
  const Value& x = ld.input(node);
  if (x.shape.size() != 3) fail(where, "gather_channels needs a [C, H, W] input, got " + shape_str(x.shape));
  const std::string name = get_string(nd, "index", where);
  const TensorView& t = ld.file.tensor(name, DType::I32);
  if (t.shape.size() != 1 || t.shape[0] < 1 || t.shape[0] > kMaxDim)
    fail(ld.tensor_where(name), "must be 1-D with 1 to 2^24 entries, got " + shape_str(t.shape));
  auto st = std::make_unique<GatherStep>();
  st->index = copy_tensor<int32_t>(t);
  for (size_t i = 0; i < st->index.size(); ++i)
    if (st->index[i] < 0 || st->index[i] >= x.shape[0])
      fail(ld.tensor_where(name), "entry " + std::to_string(i) + " is not a channel of the " + std::to_string(x.shape[0]) +
                                   "-channel input");
  Value out = x;
  out.shape[0] = static_cast<int64_t>(st->index.size());
  node.step = std::move(st);
  return out;
}

// The float output of the model: scale * (code - zero_point), in torch's (C, H, W) order.
Value parse_dequantize(Loader& ld, const json& nd, Node& node, const std::string& where) {
  const Value& x = ld.input(node);
  auto st = std::make_unique<DequantizeStep>();
  const json& q = field(nd, "input_qparams", where);
  if (!q.is_object()) fail(where, "needs 'input_qparams' (an object)");
  st->zero_point = static_cast<int32_t>(get_int(q, "zero_point", where, INT32_MIN, INT32_MAX));
  const json& scale = field(q, "scale", where);
  if (!scale.is_number() || !std::isfinite(scale.get<double>()) || !(scale.get<double>() > 0) ||
      !std::isfinite(static_cast<float>(scale.get<double>())))
    fail(where, "input_qparams.scale must be a positive finite float32");
  st->scale = static_cast<float>(scale.get<double>());
  if (!field(nd, "qparams", where).is_null()) fail(where, "dequantize produces the float output: qparams must be null");
  node.step = std::move(st);
  Value out = x;
  out.storage = Storage::F32;
  out.offset = 0;
  return out;
}

Value parse_flatten(Loader& ld, const json&, Node& node, const std::string& where) {
  const Value& x = ld.input(node);
  node.step = std::make_unique<FlattenStep>();
  Value out = x;
  out.shape = {checked_numel(x.shape, where)};
  if (x.shape.size() == 3 && x.shape[1] * x.shape[2] > 1) out.hwc_source = x.shape;
  return out;
}

}  // namespace

const std::vector<OpSpec>& layout_ops() {
  static const std::vector<OpSpec> ops = {{"concat", 2, 256, parse_concat},
                                          {"gather_channels", 1, 1, parse_gather_channels},
                                          {"flatten", 1, 1, parse_flatten},
                                          {"dequantize", 1, 1, parse_dequantize}};
  return ops;
}

}  // namespace qcnn::runtime
