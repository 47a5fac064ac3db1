#include "runtime/model.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "core/bitpack.h"
#include "core/huffman.h"
#include "core/requant.h"

namespace qcnn::runtime {

using json = nlohmann::json;

enum class Op { Conv, Linear, Requantize, Add, Relu, MaxPool, AvgPool, GlobalMaxPool, GlobalAvgPool, Flatten };

struct Step {
  std::string name;
  Op op;
  std::vector<int> inputs;  // value ids
  int output = 0;
  std::vector<int64_t> in_shape, out_shape;
  // conv / linear
  int32_t input_zero_point = 0;
  int kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
  std::vector<int16_t> weight;       // dense path [M, K]
  SharedWeights shared;              // shared path
  bool float_output = false;
  std::vector<int32_t> multiplier, shift;
  std::vector<int64_t> bias;
  std::vector<float> out_scale, out_bias;
  // requantize / add / relu
  int32_t a_zero_point = 0, b_zero_point = 0, a_multiplier = 0, b_multiplier = 0, add_shift = 0;
  int32_t out_zero_point = 0, clamp_lo = INT32_MIN, clamp_hi = INT32_MAX;
};

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) { throw FormatError(where + ": " + what); }

const json& field(const json& obj, const char* key, const std::string& where) {
  if (!obj.is_object() || !obj.contains(key)) fail(where, std::string("missing field '") + key + "'");
  return obj[key];
}

int64_t get_int(const json& obj, const char* key, const std::string& where, int64_t lo, int64_t hi) {
  const json& v = field(obj, key, where);
  if (!v.is_number_integer()) fail(where, std::string("field '") + key + "' must be an integer, got " + v.dump());
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    fail(where, std::string("field '") + key + "' = " + std::to_string(x) + " outside [" + std::to_string(lo) + ", " +
                    std::to_string(hi) + "]");
  return x;
}

std::vector<int64_t> get_ints(const json& obj, const char* key, const std::string& where, size_t count, int64_t lo,
                              int64_t hi) {
  const json& v = field(obj, key, where);
  if (!v.is_array() || (count && v.size() != count))
    fail(where, std::string("field '") + key + "' must be an array of " + std::to_string(count) + " integers");
  std::vector<int64_t> out;
  for (const auto& e : v) {
    if (!e.is_number_integer()) fail(where, std::string("field '") + key + "' must hold integers");
    const int64_t x = e.get<int64_t>();
    if (x < lo || x > hi) fail(where, std::string("field '") + key + "' entry " + std::to_string(x) + " out of range");
    out.push_back(x);
  }
  return out;
}

std::string get_string(const json& obj, const char* key, const std::string& where) {
  const json& v = field(obj, key, where);
  if (!v.is_string()) fail(where, std::string("field '") + key + "' must be a string");
  return v.get<std::string>();
}

template <typename T>
std::vector<T> copy_tensor(const TensorView& t) {
  std::vector<T> out(static_cast<size_t>(t.numel()));
  if (t.bytes) std::memcpy(out.data(), t.data, static_cast<size_t>(t.bytes));
  return out;
}

int64_t numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

constexpr int64_t kMaxDim = int64_t{1} << 24;

// Value range [lo, hi] of the codes of each value, for the int16 / int32 overflow checks.
struct Range {
  int64_t lo, hi;
};

}  // namespace

Model::Model() = default;
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::string& path, const LoadOptions& options) {
  return from_file(SafetensorsFile::read(path), options);
}

Model Model::from_file(const SafetensorsFile& file, const LoadOptions& options) {
  const std::string& origin = file.origin();
  auto meta = file.metadata().find("qcnn");
  if (meta == file.metadata().end()) fail(origin, "__metadata__ has no 'qcnn' entry; not a .qcnn file");
  json doc;
  try {
    doc = json::parse(meta->second);
  } catch (const json::parse_error& e) {
    fail(origin, std::string("__metadata__['qcnn']: invalid JSON: ") + e.what());
  }
  const std::string mwhere = origin + ": metadata";
  if (!doc.is_object()) fail(mwhere, "must be a JSON object");
  if (get_string(doc, "format", mwhere) != "qcnn") fail(mwhere, "format must be 'qcnn'");
  if (get_int(doc, "version", mwhere, 0, INT32_MAX) != 1) fail(mwhere, "unsupported version (this reader knows 1)");

  Model model;
  std::map<std::string, int> value_ids;
  std::vector<Range> ranges;
  std::vector<bool> is_float;

  // Input: shape, LUT.
  const std::string iwhere = origin + ": input";
  const json& input = field(doc, "input", mwhere);
  model.input_shape_ = get_ints(input, "shape", iwhere, 3, 1, kMaxDim);
  if (numel(model.input_shape_) > kMaxDim) fail(iwhere, "input too large");
  const int64_t channels = model.input_shape_[0];
  const std::string lut_name = get_string(input, "lut", iwhere);
  const auto lut16 = copy_tensor<int16_t>(file.tensor(lut_name, DType::I16, {channels, 256}));
  model.lut_.assign(lut16.begin(), lut16.end());
  const json& iq = field(input, "qparams", iwhere);
  const int64_t iqmin = get_int(iq, "qmin", iwhere, INT32_MIN, INT32_MAX), iqmax = get_int(iq, "qmax", iwhere, INT32_MIN, INT32_MAX);
  for (size_t i = 0; i < model.lut_.size(); ++i)
    if (model.lut_[i] < iqmin || model.lut_[i] > iqmax)
      fail(origin + ": tensor '" + lut_name + "'", "entry " + std::to_string(i) + " outside [qmin, qmax]");
  value_ids["input"] = 0;
  model.value_shapes_.push_back(model.input_shape_);
  ranges.push_back({*std::min_element(model.lut_.begin(), model.lut_.end()),
                    *std::max_element(model.lut_.begin(), model.lut_.end())});
  is_float.push_back(false);

  const json& nodes = field(doc, "nodes", mwhere);
  if (!nodes.is_array() || nodes.empty()) fail(mwhere, "'nodes' must be a non-empty array");
  static const std::map<std::string, Op> ops = {
      {"conv2d", Op::Conv},       {"linear", Op::Linear},          {"requantize", Op::Requantize},
      {"add", Op::Add},           {"relu", Op::Relu},              {"max_pool2d", Op::MaxPool},
      {"avg_pool2d", Op::AvgPool}, {"global_max_pool", Op::GlobalMaxPool}, {"global_avg_pool", Op::GlobalAvgPool},
      {"flatten", Op::Flatten}};

  for (size_t ni = 0; ni < nodes.size(); ++ni) {
    const json& nd = nodes[ni];
    std::string where = origin + ": node " + std::to_string(ni);
    auto step = std::make_unique<Step>();
    step->name = get_string(nd, "name", where);
    where = origin + ": node '" + step->name + "'";
    if (value_ids.count(step->name)) fail(where, "duplicate node name");
    const std::string op_name = get_string(nd, "op", where);
    auto op_it = ops.find(op_name);
    if (op_it == ops.end()) fail(where, "unknown op '" + op_name + "'");
    step->op = op_it->second;
    const json& inputs = field(nd, "inputs", where);
    const size_t want_inputs = step->op == Op::Add ? 2 : 1;
    if (!inputs.is_array() || inputs.size() != want_inputs)
      fail(where, "'inputs' must list " + std::to_string(want_inputs) + " value(s)");
    for (const auto& in : inputs) {
      if (!in.is_string() || !value_ids.count(in.get<std::string>()))
        fail(where, "input " + in.dump() + " is not an earlier value");
      const int id = value_ids[in.get<std::string>()];
      if (is_float[id]) fail(where, "input " + in.dump() + " is a float output; only the last node may be float");
      step->inputs.push_back(id);
    }
    step->in_shape = model.value_shapes_[step->inputs[0]];
    const Range in_range = ranges[step->inputs[0]];
    const std::vector<int64_t> declared = get_ints(nd, "shape", where, 0, 1, kMaxDim);
    Range out_range = in_range;
    const bool quantized_out = field(nd, "qparams", where).is_object();
    if (quantized_out) {
      const json& q = nd["qparams"];
      step->out_zero_point = static_cast<int32_t>(get_int(q, "zero_point", where, INT32_MIN, INT32_MAX));
    } else if (!nd["qparams"].is_null()) {
      fail(where, "'qparams' must be an object or null");
    }
    auto read_clamp = [&]() {
      auto c = get_ints(nd, "clamp", where, 2, INT32_MIN, INT32_MAX);
      if (c[0] > c[1]) fail(where, "clamp lower bound above upper bound");
      step->clamp_lo = static_cast<int32_t>(c[0]);
      step->clamp_hi = static_cast<int32_t>(c[1]);
      out_range = {c[0], c[1]};
    };
    const auto& s = step->in_shape;
    switch (step->op) {
      case Op::Conv:
      case Op::Linear: {
        const bool conv = step->op == Op::Conv;
        const int64_t m = get_int(nd, "out_channels", where, 1, kMaxDim);
        const int64_t cin = get_int(nd, "in_channels", where, 1, kMaxDim);
        auto kern = get_ints(nd, "kernel", where, 2, 1, 64);
        auto stride = get_ints(nd, "stride", where, 2, 1, 64);
        auto pad = get_ints(nd, "padding", where, 2, 0, 64);
        step->kh = int(kern[0]); step->kw = int(kern[1]);
        step->sh = int(stride[0]); step->sw = int(stride[1]);
        step->ph = int(pad[0]); step->pw = int(pad[1]);
        step->input_zero_point = static_cast<int32_t>(get_int(nd, "input_zero_point", where, INT32_MIN, INT32_MAX));
        if (conv) {
          if (s.size() != 3 || s[0] != cin) fail(where, "conv2d input shape " + shape_str(s) + " does not have " + std::to_string(cin) + " channels");
          try {
            auto cs = make_conv_shape(1, cin, s[1], s[2], m, step->kh, step->kw, step->sh, step->sw, step->ph, step->pw);
            step->out_shape = {m, cs.oh, cs.ow};
          } catch (const std::invalid_argument& e) {
            fail(where, e.what());
          }
        } else {
          if (s.size() != 1 || s[0] != cin) fail(where, "linear input shape " + shape_str(s) + " is not [" + std::to_string(cin) + "]");
          if (kern != std::vector<int64_t>{1, 1} || stride != std::vector<int64_t>{1, 1} || pad != std::vector<int64_t>{0, 0})
            fail(where, "linear needs kernel [1, 1], stride [1, 1], padding [0, 0]");
          step->out_shape = {m};
        }
        const int64_t k = cin * step->kh * step->kw;
        // Weights.
        const std::string wwhere = where + " weight";
        const json& w = field(nd, "weight", where);
        const int bits = static_cast<int>(get_int(w, "bits", wwhere, 1, 8));
        const int codes = static_cast<int>(get_int(w, "codes", wwhere, 1, 256));
        if (codes > (1 << bits)) fail(wwhere, "codes exceeds 2^bits");
        const int64_t groups = get_int(w, "groups", wwhere, 1, kMaxDim);
        if (groups != 1 && groups != m) fail(wwhere, "groups must be 1 or out_channels");
        const int64_t count = get_int(w, "count", wwhere, 0, int64_t{1} << 40);
        if (count != m * k) fail(wwhere, "count " + std::to_string(count) + " != out_channels * K = " + std::to_string(m * k));
        const std::string coding = get_string(w, "coding", wwhere);
        const std::string prefix = step->name + ".weight";
        std::vector<uint8_t> indices(static_cast<size_t>(count));
        const TensorView& data = file.tensor(prefix + ".indices", DType::U8);
        if (data.shape.size() != 1) fail(origin + ": tensor '" + prefix + ".indices'", "must be 1-D");
        if (coding == "packed") {
          if (data.bytes != packed_size(count, bits))
            fail(origin + ": tensor '" + prefix + ".indices'", std::to_string(data.bytes) + " bytes, expected " +
                                                                  std::to_string(packed_size(count, bits)) + " for " +
                                                                  std::to_string(count) + " values of " + std::to_string(bits) + " bits");
          unpack_bits(data.data, count, bits, indices.data());
        } else if (coding == "huffman") {
          auto lengths = copy_tensor<uint8_t>(file.tensor(prefix + ".code_lengths", DType::U8, {codes}));
          try {
            huffman_decode(data.data, data.bytes, lengths.data(), codes, count, indices.data());
          } catch (const std::invalid_argument& e) {
            fail(origin + ": tensor '" + prefix + ".indices'", e.what());
          }
        } else {
          fail(wwhere, "unknown coding '" + coding + "'");
        }
        const auto levels16 = copy_tensor<int16_t>(file.tensor(prefix + ".levels", DType::I16, {groups, codes}));
        const std::vector<int32_t> levels(levels16.begin(), levels16.end());  // the kernels take int32 tables
        // Real weight = scale[m] * level: not needed for integer inference, but part of a valid file.
        file.tensor(prefix + ".scale", DType::F32, {m});
        int64_t max_level = 0;
        for (auto v : levels) max_level = std::max<int64_t>(max_level, std::llabs(v));
        const int64_t max_x = std::max(std::llabs(in_range.hi - step->input_zero_point), std::llabs(in_range.lo - step->input_zero_point));
        if (max_x > 32767) fail(where, "input codes minus zero point exceed int16");
        if (max_level > 32767) fail(origin + ": tensor '" + prefix + ".levels'", "entries must be within +-32767");
        if (static_cast<long double>(k) * max_x * max_level > 2147483647.0L)
          fail(where, "K * max|x - zp| * max|level| overflows the int32 accumulator");
        try {
          if (options.weight_path == WeightPath::Dense)
            step->weight = expand_codebook_weights(indices.data(), levels.data(), groups, codes, m, k);
          else
            step->shared = make_shared_weights(indices.data(), levels.data(), groups, codes, m, k);
        } catch (const std::invalid_argument& e) {
          fail(origin + ": tensor '" + prefix + ".indices'", e.what());
        }
        if (quantized_out) {
          step->multiplier = copy_tensor<int32_t>(file.tensor(step->name + ".requant.multiplier", DType::I32, {m}));
          const auto shift8 = copy_tensor<uint8_t>(file.tensor(step->name + ".requant.shift", DType::U8, {m}));
          step->shift.assign(shift8.begin(), shift8.end());
          step->bias = copy_tensor<int64_t>(file.tensor(step->name + ".requant.bias", DType::I64, {m}));
          for (int64_t i = 0; i < m; ++i) {
            if (step->shift[i] < 0 || step->shift[i] > 62) fail(origin + ": tensor '" + step->name + ".requant.shift'", "entries must be in [0, 62]");
            if (step->bias[i] < -(int64_t{1} << 62) || step->bias[i] > (int64_t{1} << 62))
              fail(origin + ": tensor '" + step->name + ".requant.bias'", "entries must be within +-2^62");
          }
          read_clamp();
        } else {
          step->float_output = true;
          step->out_scale = copy_tensor<float>(file.tensor(step->name + ".output.scale", DType::F32, {m}));
          step->out_bias = copy_tensor<float>(file.tensor(step->name + ".output.bias", DType::F32, {m}));
        }
        break;
      }
      case Op::Requantize: {
        step->input_zero_point = static_cast<int32_t>(get_int(nd, "input_zero_point", where, INT32_MIN, INT32_MAX));
        step->multiplier = {static_cast<int32_t>(get_int(nd, "multiplier", where, INT32_MIN + 1, INT32_MAX))};
        step->shift = {static_cast<int32_t>(get_int(nd, "shift", where, 0, 62))};
        if (!quantized_out) fail(where, "requantize needs qparams");
        step->out_shape = s;
        read_clamp();
        break;
      }
      case Op::Add: {
        const int64_t lim = (int64_t{1} << 30) - 1;
        step->a_zero_point = static_cast<int32_t>(get_int(nd, "a_zero_point", where, INT32_MIN, INT32_MAX));
        step->b_zero_point = static_cast<int32_t>(get_int(nd, "b_zero_point", where, INT32_MIN, INT32_MAX));
        step->a_multiplier = static_cast<int32_t>(get_int(nd, "a_multiplier", where, -lim, lim));
        step->b_multiplier = static_cast<int32_t>(get_int(nd, "b_multiplier", where, -lim, lim));
        step->add_shift = static_cast<int32_t>(get_int(nd, "shift", where, 0, 62));
        if (model.value_shapes_[step->inputs[1]] != s) fail(where, "add inputs have different shapes");
        if (!quantized_out) fail(where, "add needs qparams");
        step->out_shape = s;
        read_clamp();
        break;
      }
      case Op::Relu:
        step->out_shape = s;
        read_clamp();
        break;
      case Op::MaxPool:
      case Op::AvgPool: {
        auto kern = get_ints(nd, "kernel", where, 2, 1, kMaxDim);
        auto stride = get_ints(nd, "stride", where, 2, 1, kMaxDim);
        auto pad = get_ints(nd, "padding", where, 2, 0, kMaxDim);
        step->kh = int(kern[0]); step->kw = int(kern[1]);
        step->sh = int(stride[0]); step->sw = int(stride[1]);
        step->ph = int(pad[0]); step->pw = int(pad[1]);
        if (s.size() != 3) fail(where, "pooling needs a [C, H, W] input");
        if (step->op == Op::AvgPool && (step->ph || step->pw)) fail(where, "avg_pool2d padding must be 0");
        if (step->ph * 2 > step->kh || step->pw * 2 > step->kw) fail(where, "padding must be at most half the kernel");
        try {
          step->out_shape = {s[0], window_output_size(s[1], step->kh, step->sh, step->ph, "pool"),
                             window_output_size(s[2], step->kw, step->sw, step->pw, "pool")};
        } catch (const std::invalid_argument& e) {
          fail(where, e.what());
        }
        break;
      }
      case Op::GlobalMaxPool:
      case Op::GlobalAvgPool:
        if (s.size() != 3) fail(where, "global pooling needs a [C, H, W] input");
        step->out_shape = {s[0], 1, 1};
        break;
      case Op::Flatten:
        step->out_shape = {numel(s)};
        break;
    }
    if (declared != step->out_shape)
      fail(where, "declared shape " + shape_str(declared) + " differs from the computed " + shape_str(step->out_shape));
    if (numel(step->out_shape) > kMaxDim * 4) fail(where, "output too large");
    step->output = static_cast<int>(model.value_shapes_.size());
    value_ids[step->name] = step->output;
    model.value_shapes_.push_back(step->out_shape);
    ranges.push_back(out_range);
    is_float.push_back(step->float_output);
    model.steps_.push_back(std::move(step));
  }
  const std::string output = get_string(doc, "output", mwhere);
  const Step& last = *model.steps_.back();
  if (output != last.name) fail(mwhere, "'output' must name the last node ('" + last.name + "')");
  if (!last.float_output) fail(mwhere, "the last node must produce float logits (qparams null)");
  model.num_classes_ = numel(last.out_shape);
  return model;
}

std::vector<float> Model::run(const uint8_t* pixels, int64_t n, int num_threads) const {
  std::vector<std::vector<int32_t>> values(value_shapes_.size());
  const int64_t c = input_shape_[0], hw = input_shape_[1] * input_shape_[2];
  values[0].resize(static_cast<size_t>(n * c * hw));
  lookup_pixels(pixels, n, c, hw, lut_.data(), values[0].data());
  std::vector<float> logits;
  for (const auto& sp : steps_) {
    const Step& st = *sp;
    const auto& x = values[st.inputs[0]];
    auto& out = values[st.output];
    const int64_t out_numel = n * numel(st.out_shape);
    const auto& s = st.in_shape;
    switch (st.op) {
      case Op::Conv:
      case Op::Linear: {
        const bool conv = st.op == Op::Conv;
        const int64_t m = st.out_shape[0];
        auto cs = make_conv_shape(n, s[0], conv ? s[1] : 1, conv ? s[2] : 1, m, st.kh, st.kw, st.sh, st.sw, st.ph, st.pw);
        std::vector<int32_t> acc(static_cast<size_t>(out_numel));
        if (st.weight.empty() && st.shared.m == 0) throw std::logic_error("node without weights");
        if (!st.weight.empty())
          conv2d_int(x.data(), st.input_zero_point, st.weight.data(), cs, acc.data(), num_threads);
        else
          conv2d_int_shared(x.data(), st.input_zero_point, st.shared, cs, acc.data(), num_threads);
        const int64_t inner = cs.oh * cs.ow;
        if (st.float_output) {
          logits.resize(static_cast<size_t>(out_numel));
          dequantize_channels(acc.data(), n, m, inner, st.out_scale.data(), st.out_bias.data(), logits.data());
        } else {
          out.resize(static_cast<size_t>(out_numel));
          requantize(acc.data(), n, m, inner, 0, st.bias.data(), st.multiplier.data(), st.shift.data(),
                     st.out_zero_point, st.clamp_lo, st.clamp_hi, out.data(), num_threads);
        }
        break;
      }
      case Op::Requantize:
        out.resize(static_cast<size_t>(out_numel));
        requantize(x.data(), 1, 1, out_numel, st.input_zero_point, nullptr, st.multiplier.data(), st.shift.data(),
                   st.out_zero_point, st.clamp_lo, st.clamp_hi, out.data(), num_threads);
        break;
      case Op::Add:
        out.resize(static_cast<size_t>(out_numel));
        add_requant(x.data(), st.a_zero_point, st.a_multiplier, values[st.inputs[1]].data(), st.b_zero_point,
                    st.b_multiplier, st.add_shift, st.out_zero_point, st.clamp_lo, st.clamp_hi, out_numel, out.data(),
                    num_threads);
        break;
      case Op::Relu:
        out.resize(static_cast<size_t>(out_numel));
        for (int64_t i = 0; i < out_numel; ++i) out[i] = std::min(std::max(x[i], st.clamp_lo), st.clamp_hi);
        break;
      case Op::MaxPool:
        out.resize(static_cast<size_t>(out_numel));
        max_pool2d_int(x.data(), n, s[0], s[1], s[2], st.kh, st.kw, st.sh, st.sw, st.ph, st.pw, out.data(), num_threads);
        break;
      case Op::AvgPool:
        out.resize(static_cast<size_t>(out_numel));
        avg_pool2d_int(x.data(), n, s[0], s[1], s[2], st.kh, st.kw, st.sh, st.sw, out.data(), num_threads);
        break;
      case Op::GlobalMaxPool:
        out.resize(static_cast<size_t>(out_numel));
        max_pool2d_int(x.data(), n, s[0], s[1], s[2], int(s[1]), int(s[2]), 1, 1, 0, 0, out.data(), num_threads);
        break;
      case Op::GlobalAvgPool:
        out.resize(static_cast<size_t>(out_numel));
        avg_pool2d_int(x.data(), n, s[0], s[1], s[2], int(s[1]), int(s[2]), 1, 1, out.data(), num_threads);
        break;
      case Op::Flatten:
        out = x;
        break;
    }
  }
  return logits;
}

}  // namespace qcnn::runtime
