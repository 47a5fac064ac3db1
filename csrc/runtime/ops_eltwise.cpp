// Pointwise ops on integer codes (docs/FORMAT.md section 5): requantize, affine, add, mul, relu, lut. Each
// runs on any range of whole positions, so the planner fuses them after the node that produces their input.
#include <algorithm>
#include <tuple>

#include "runtime/plan.h"

namespace qcnn::runtime {

namespace {

class RequantizeStep : public PointwiseStep {
 public:
  int32_t in_zero_point, multiplier, shift, out_zero_point, lo, hi;
  void run_elements(const Node& n, const Exec& ex, int64_t first, int64_t count) const override {
    requantize_codes(ex.plan.isa, ex.in(n.inputs[0], first), count, in_zero_point, multiplier, shift, out_zero_point,
                     lo, hi, ex.out(n.output, first));
  }
};

class AddStep : public PointwiseStep {
 public:
  int32_t a_zero_point, a_multiplier, b_zero_point, b_multiplier, shift, out_zero_point, lo, hi;
  InputRange a_range, b_range;  // of clamp32(a - za) and clamp32(b - zb)
  void run_elements(const Node& n, const Exec& ex, int64_t first, int64_t count) const override {
    add_codes(ex.plan.isa, ex.in(n.inputs[0], first), a_zero_point, a_multiplier, ex.in(n.inputs[1], first),
              b_zero_point, b_multiplier, shift, out_zero_point, lo, hi, count, ex.out(n.output, first), a_range,
              b_range);
  }
};

class MulStep : public PointwiseStep {
 public:
  int32_t a_zero_point, b_zero_point, multiplier, shift, out_zero_point, lo, hi;
  int64_t b_channels;  // 0: b has a's shape; C: b is [C, 1, 1], broadcast over a's positions
  void run_elements(const Node& n, const Exec& ex, int64_t first, int64_t count) const override {
    mul_codes(ex.plan.isa, ex.in(n.inputs[0], first), a_zero_point, ex.in(n.inputs[1], b_channels ? 0 : first),
              b_zero_point, b_channels, multiplier, shift, out_zero_point, lo, hi, count, ex.out(n.output, first));
  }
};

class ClampStep : public PointwiseStep {
 public:
  int32_t lo, hi;
  void run_elements(const Node& n, const Exec& ex, int64_t first, int64_t count) const override {
    clamp_codes(ex.plan.isa, ex.in(n.inputs[0], first), count, lo, hi, ex.out(n.output, first));
  }
};

class LutStep : public PointwiseStep {
 public:
  int64_t input_min = 0;
  std::vector<int32_t> table;  // output code of input code input_min + i
  void run_elements(const Node& n, const Exec& ex, int64_t first, int64_t count) const override {
    lookup_codes(ex.plan.isa, ex.in(n.inputs[0], first), count, table.data(), static_cast<int64_t>(table.size()),
                 input_min, ex.out(n.output, first));
  }
};

class AffineStep : public PointwiseStep {
 public:
  int32_t in_zero_point, out_zero_point, lo, hi;
  std::vector<int32_t> multiplier;
  std::vector<uint8_t> shift;
  std::vector<int64_t> bias;
  void run_elements(const Node& n, const Exec& ex, int64_t first, int64_t count) const override {
    affine_codes(ex.plan.isa, ex.in(n.inputs[0], first), count, static_cast<int64_t>(multiplier.size()),
                 in_zero_point, multiplier.data(), shift.data(), bias.data(), out_zero_point, lo, hi,
                 ex.out(n.output, first));
  }
};

Value parse_requantize(Loader& ld, const json& nd, Node& node, const std::string& where) {
  auto st = std::make_unique<RequantizeStep>();
  st->in_zero_point = get_int32(nd, "input_zero_point", where);
  st->multiplier = get_int32(nd, "multiplier", where, INT32_MIN + 1, INT32_MAX);
  st->shift = get_int32(nd, "shift", where, 0, 62);
  st->out_zero_point = ld.out_zero_point(nd, where);
  std::tie(st->lo, st->hi) = ld.read_clamp(nd, where);
  const int64_t lo = st->lo, hi = st->hi;
  node.step = std::move(st);
  return with_range(ld.input(node), lo, hi);
}

Value parse_add(Loader& ld, const json& nd, Node& node, const std::string& where) {
  const int64_t lim = (int64_t{1} << 30) - 1;
  auto st = std::make_unique<AddStep>();
  st->a_zero_point = get_int32(nd, "a_zero_point", where);
  st->b_zero_point = get_int32(nd, "b_zero_point", where);
  st->a_multiplier = get_int32(nd, "a_multiplier", where, -lim, lim);
  st->b_multiplier = get_int32(nd, "b_multiplier", where, -lim, lim);
  st->shift = get_int32(nd, "shift", where, 0, 62);
  st->out_zero_point = ld.out_zero_point(nd, where);
  std::tie(st->lo, st->hi) = ld.read_clamp(nd, where);
  const Value &a = ld.input(node, 0), &b = ld.input(node, 1);
  if (a.shape != b.shape)
    fail(where, "add inputs have different shapes " + shape_str(a.shape) + " and " + shape_str(b.shape));
  if (a.hwc_source != b.hwc_source) fail(where, "add of a flattened and a non-flattened value is not supported");
  // RS(2^t v, s) = RS(v, s - t): the multipliers' common factors of 2 come off the shift (the same integers, and
  // the int32 lanes of add_fits_int32 more often).
  while (st->shift > 0 && st->a_multiplier % 2 == 0 && st->b_multiplier % 2 == 0) {
    st->a_multiplier /= 2;
    st->b_multiplier /= 2;
    --st->shift;
  }
  auto centred = [](const Value& v, int32_t zero_point) {
    return InputRange{clamp_to_int32(v.lo - zero_point), clamp_to_int32(v.hi - zero_point)};
  };
  st->a_range = centred(a, st->a_zero_point);
  st->b_range = centred(b, st->b_zero_point);
  // The sum is monotone in each term: its codes lie between those of the extreme terms.
  auto term = [](InputRange r, int64_t m, bool high) { return high ? std::max(r.lo * m, r.hi * m) : std::min(r.lo * m, r.hi * m); };
  auto code = [&](bool high) {
    const int64_t v = term(st->a_range, st->a_multiplier, high) + term(st->b_range, st->b_multiplier, high);
    return std::clamp<int64_t>(st->out_zero_point + rounding_shift(v, st->shift), st->lo, st->hi);
  };
  const int64_t lo = code(false), hi = code(true);
  node.step = std::move(st);
  return with_range(a, lo, hi);
}

Value parse_relu(Loader& ld, const json& nd, Node& node, const std::string& where) {
  auto st = std::make_unique<ClampStep>();
  std::tie(st->lo, st->hi) = ld.read_clamp(nd, where);
  const Value& x = ld.input(node);
  const int64_t lo = st->lo, hi = st->hi;
  node.step = std::move(st);
  return with_range(x, std::clamp<int64_t>(x.lo, lo, hi), std::clamp<int64_t>(x.hi, lo, hi));
}

Value parse_lut(Loader& ld, const json& nd, Node& node, const std::string& where) {
  const Value& x = ld.input(node);
  auto st = std::make_unique<LutStep>();
  st->input_min = get_int(nd, "input_min", where, INT32_MIN, INT32_MAX);
  const std::string name = get_string(nd, "table", where);
  const TensorView& t = ld.file.tensor(name, DType::I16);
  if (t.shape.size() != 1 || t.shape[0] < 1 || t.shape[0] > 65536)
    fail(ld.tensor_where(name), "must be 1-D with 1 to 65536 entries, got " + shape_str(t.shape));
  const int64_t last = st->input_min + t.shape[0] - 1;
  if (x.lo < st->input_min || x.hi > last)
    fail(where, "table covers input codes [" + std::to_string(st->input_min) + ", " + std::to_string(last) +
                    "] but the input ranges over [" + std::to_string(x.lo) + ", " + std::to_string(x.hi) + "]");
  st->table = ld.code_table(name, t.shape, field(nd, "qparams", where), where);
  // Only the entries of the codes the input can take, without the function's constant ends (lookup_codes clamps
  // to the table): a SiLU on 16-bit codes is constant below about -9 and above its output's saturation.
  auto& table = st->table;
  int64_t begin = x.lo - st->input_min, end = x.hi - st->input_min;  // the entries kept, [begin, end]
  while (begin < end && table[begin + 1] == table[begin]) ++begin;
  while (end > begin && table[end - 1] == table[end]) --end;
  table = std::vector<int32_t>(table.begin() + begin, table.begin() + end + 1);
  st->input_min += begin;
  const int64_t lo = *std::min_element(table.begin(), table.end()), hi = *std::max_element(table.begin(), table.end());
  node.step = std::move(st);
  return with_range(x, lo, hi);
}

Value parse_mul(Loader& ld, const json& nd, Node& node, const std::string& where) {
  auto st = std::make_unique<MulStep>();
  st->a_zero_point = get_int32(nd, "a_zero_point", where);
  st->b_zero_point = get_int32(nd, "b_zero_point", where);
  st->multiplier = get_int32(nd, "multiplier", where, INT32_MIN + 1, INT32_MAX);
  st->shift = get_int32(nd, "shift", where, 0, 62);
  st->out_zero_point = ld.out_zero_point(nd, where);
  std::tie(st->lo, st->hi) = ld.read_clamp(nd, where);
  const Value &a = ld.input(node, 0), &b = ld.input(node, 1);
  for (const auto& [v, z, name] : {std::tuple{&a, st->a_zero_point, "a"}, std::tuple{&b, st->b_zero_point, "b"}})
    if (v->lo - z < -32768 || v->hi - z > 32768)
      fail(where, std::string("mul input ") + name + " codes range over more than 16 bits around its zero point");
  if (a.hwc_source != b.hwc_source) fail(where, "mul of a flattened and a non-flattened value is not supported");
  if (a.shape == b.shape) {
    st->b_channels = 0;
  } else if (a.shape.size() == 3 && b.shape == std::vector<int64_t>{a.shape[0], 1, 1}) {
    st->b_channels = a.shape[0];
  } else {
    fail(where, "mul inputs must have the same shape, or the second be [C, 1, 1] for a [C, H, W] first; got " +
                    shape_str(a.shape) + " and " + shape_str(b.shape));
  }
  const int64_t lo = st->lo, hi = st->hi;
  node.step = std::move(st);
  return with_range(a, lo, hi);
}

Value parse_affine(Loader& ld, const json& nd, Node& node, const std::string& where) {
  const Value& x = ld.input(node);
  if (!x.hwc_source.empty())
    fail(where, "affine of a flattened [C, H, W] value with H * W > 1 is not supported (its order is NHWC)");
  const int64_t channels = x.shape[0];
  if (x.shape.size() != 1 && x.shape.size() != 3) fail(where, "affine needs a [C, H, W] or [C] input");
  auto st = std::make_unique<AffineStep>();
  st->in_zero_point = get_int32(nd, "input_zero_point", where);
  st->out_zero_point = ld.out_zero_point(nd, where);
  std::tie(st->lo, st->hi) = ld.read_clamp(nd, where);
  st->multiplier = copy_tensor<int32_t>(ld.file.tensor(node.name + ".multiplier", DType::I32, {channels}));
  st->shift = copy_tensor<uint8_t>(ld.file.tensor(node.name + ".shift", DType::U8, {channels}));
  st->bias = copy_tensor<int64_t>(ld.file.tensor(node.name + ".bias", DType::I64, {channels}));
  for (int64_t c = 0; c < channels; ++c) {
    if (st->multiplier[c] == INT32_MIN) fail(ld.tensor_where(node.name + ".multiplier"), "entry is INT32_MIN");
    if (st->shift[c] > 62) fail(ld.tensor_where(node.name + ".shift"), "entry above 62");
    if (st->bias[c] < -(int64_t{1} << 61) || st->bias[c] > (int64_t{1} << 61))
      fail(ld.tensor_where(node.name + ".bias"), "entry outside [-2^61, 2^61]");
  }
  const int64_t lo = st->lo, hi = st->hi;
  node.step = std::move(st);
  return with_range(x, lo, hi);
}

}  // namespace

const std::vector<OpSpec>& eltwise_ops() {
  static const std::vector<OpSpec> ops = {{"requantize", 1, 1, parse_requantize}, {"affine", 1, 1, parse_affine},
                                          {"add", 2, 2, parse_add},               {"mul", 2, 2, parse_mul},
                                          {"relu", 1, 1, parse_relu},             {"lut", 1, 1, parse_lut}};
  return ops;
}

}  // namespace qcnn::runtime
