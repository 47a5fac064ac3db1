#include "runtime/model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <variant>

#include "core/bitpack.h"
#include "core/huffman.h"
#include "core/isa.h"
#include "core/qgemm.h"
#include "core/requant.h"
#include "core/threads.h"

namespace qcnn::runtime {

using json = nlohmann::json;

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) { throw FormatError(where + ": " + what); }

constexpr int64_t kMaxDim = int64_t{1} << 24;
constexpr int64_t kAlign = 64;

// Product of positive dimensions, each <= kMaxDim; FormatError past `limit`.
int64_t checked_numel(const std::vector<int64_t>& s, const std::string& where, int64_t limit = int64_t{1} << 40) {
  int64_t n = 1;
  for (auto d : s)
    if (__builtin_mul_overflow(n, d, &n) || n > limit) fail(where, "shape " + shape_str(s) + " is too large");
  return n;
}

// ------------------------------------------------------------------------------ JSON field access
// Error messages name the field and never echo untrusted JSON.
const json& field(const json& obj, const char* key, const std::string& where) {
  if (!obj.is_object() || !obj.contains(key)) fail(where, std::string("missing field '") + key + "'");
  return obj[key];
}

// `v` as an integer in [lo, hi]; `what` names it in the errors ("field 'k'", "field 'k' entry").
int64_t json_int(const json& v, const std::string& what, const std::string& where, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) fail(where, what + " must be an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) fail(where, what + " is out of range");
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    fail(where, what + " = " + std::to_string(x) + " outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return x;
}

int64_t get_int(const json& obj, const char* key, const std::string& where, int64_t lo, int64_t hi) {
  return json_int(field(obj, key, where), std::string("field '") + key + "'", where, lo, hi);
}

std::vector<int64_t> get_ints(const json& obj, const char* key, const std::string& where, size_t count, int64_t lo,
                              int64_t hi) {
  const json& v = field(obj, key, where);
  if (!v.is_array() || (count && v.size() != count) || v.size() > 8)
    fail(where, std::string("field '") + key + "' must be an array of " + (count ? std::to_string(count) : "a few") +
                    " integers");
  std::vector<int64_t> out;
  for (const json& e : v) out.push_back(json_int(e, std::string("field '") + key + "' entry", where, lo, hi));
  return out;
}

// An optional pair field (e.g. dilation), `fallback` when absent.
std::vector<int64_t> get_pair_or(const json& obj, const char* key, const std::string& where, int64_t fallback,
                                 int64_t lo, int64_t hi) {
  if (!obj.contains(key)) return {fallback, fallback};
  return get_ints(obj, key, where, 2, lo, hi);
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

template <typename T>
void require_finite(const std::vector<T>& v, const std::string& what) {
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i])) fail(what, "entry " + std::to_string(i) + " is not finite");
}

}  // namespace

// ---------------------------------------------------------------------------------- the plan
enum class Op { Conv, Linear, Requantize, Affine, Add, Mul, Relu, Lut, Concat, GatherChannels, Pool, Flatten,
                Dequantize };

// One value of the program, as the engine stores it for one image.
struct Value {
  std::vector<int64_t> shape;  // as declared, without the batch dimension ([C, H, W] or [F])
  int64_t lo = 0, hi = 0;      // range of its codes
  Storage storage = Storage::I32;  // F32 only for the logits of the last node
  int32_t offset = 0;          // code = stored + offset
  // A [F] value made by flatten of [C, H, W] with H * W > 1 keeps the NHWC element order (h, w, c):
  // the linear layer reading it permutes its weight columns once at load instead.
  std::vector<int64_t> hwc_source;
  int64_t count = 0;            // elements per image
  int64_t bytes = 0;            // per image
  int64_t arena_offset = 0;
  size_t last_use = 0;

  bool is_float() const { return storage == Storage::F32; }
};

struct ConvStep {
  PackedConv packed;
  int32_t x_sub = 0;  // the input zero point in stored units
  int accumulator_bits = 32;            // the width the file declares
  std::vector<int16_t> checked_weights;  // [M][K] for count_overflows, when loaded for it
};
struct RequantStep {
  int32_t in_zero_point, multiplier, shift, out_zero_point, lo, hi;
};
struct AddStep {
  int32_t a_zero_point, a_multiplier, b_zero_point, b_multiplier, shift, out_zero_point, lo, hi;
};
struct MulStep {
  int32_t a_zero_point, b_zero_point, multiplier, shift, out_zero_point, lo, hi;
  int64_t b_channels;  // 0: b has a's shape; C: b is [C, 1, 1], broadcast over a's positions
};
struct ClampStep {
  int32_t lo, hi;
};
struct LutStep {
  int64_t input_min = 0;
  std::vector<int32_t> table;  // output code of input code input_min + i
};
struct AffineStep {
  int32_t in_zero_point, out_zero_point, lo, hi;
  std::vector<int32_t> multiplier;
  std::vector<uint8_t> shift;
  std::vector<int64_t> bias;
};
struct PoolStep {
  PoolAxis rows, cols;
  bool max = false;
  int64_t pad_code = 0;  // the code of 0, in the divisor's cells beyond the input (average pooling)
};
struct GatherStep {
  std::vector<int32_t> index;  // input channel of each output channel
};
struct DequantizeStep {
  int32_t zero_point;
  float scale;
};

struct Node {
  std::string name, op_name;
  Op op = Op::Flatten;
  std::vector<int> inputs;
  int output = 0;
  int64_t macs = 0;
  std::variant<std::monostate, ConvStep, RequantStep, AffineStep, AddStep, MulStep, ClampStep, LutStep, GatherStep,
               PoolStep, DequantizeStep>
      step;
};

struct Plan {
  Isa isa = Isa::Scalar;
  bool checked = false;  // loaded for count_overflows
  std::vector<int64_t> input_shape;
  std::vector<int32_t> lut;  // [C, 256] codes
  std::vector<Value> values;  // 0 = the input codes
  std::vector<Node> nodes;
  int64_t num_classes = 0, macs = 0, arena_bytes = 0;
  int64_t scratch_bytes = 0;  // per thread: the largest convolution's panel, accumulators and padded image

  void run_image(const uint8_t* pixels, uint8_t* arena, float* logits, int threads,
                 std::vector<double>* node_seconds, int64_t* overflows = nullptr) const;
  void run_node(const Node& node, uint8_t* arena, float* logits, int threads) const;
};

namespace {

int storage_bytes(Storage s) { return s == Storage::U8 ? 1 : 4; }

// The storage of a value whose codes lie in [lo, hi]: uint8 when 256 values cover the range.
void choose_storage(Value& v) {
  if (v.hi - v.lo <= 255) {
    v.storage = Storage::U8;
    v.offset = static_cast<int32_t>(v.lo);
  } else {
    v.storage = Storage::I32;
    v.offset = 0;
  }
}

// `v` with its codes in [lo, hi], stored accordingly.
Value with_range(Value v, int64_t lo, int64_t hi) {
  v.lo = lo;
  v.hi = hi;
  choose_storage(v);
  return v;
}

CodesIn codes_in(const Value& v, const uint8_t* arena) { return {arena + v.arena_offset, v.storage, v.offset}; }
CodesOut codes_out(const Value& v, uint8_t* arena) { return {arena + v.arena_offset, v.storage, v.offset}; }

// Everything the parsers of the nodes share.
struct Loader {
  const SafetensorsFile& file;
  Plan& plan;
  std::map<std::string, int> value_ids;
  std::string origin;
  bool keep_checked_weights = false;

  std::string tensor_where(const std::string& name) const { return origin + ": tensor '" + printable(name) + "'"; }

  const Value& input(const Node& n, size_t i = 0) const { return plan.values[n.inputs[i]]; }

  std::pair<int32_t, int32_t> read_clamp(const json& nd, const std::string& where) const {
    auto c = get_ints(nd, "clamp", where, 2, INT32_MIN, INT32_MAX);
    if (c[0] > c[1]) fail(where, "clamp lower bound above upper bound");
    return {static_cast<int32_t>(c[0]), static_cast<int32_t>(c[1])};
  }

  // A code table (the input's pixel table, a lut node's) read from tensor `name` as int32, every entry
  // inside the [qmin, qmax] of the quantizer `q` it claims to produce.
  std::vector<int32_t> code_table(const std::string& name, const std::vector<int64_t>& shape, const json& q,
                                  const std::string& where) const {
    const TensorView& t = file.tensor(name, DType::I16, shape);
    const auto entries = copy_tensor<int16_t>(t);
    if (!q.is_object()) fail(where, "needs 'qparams' (an object)");
    const int64_t qmin = get_int(q, "qmin", where, INT32_MIN, INT32_MAX);
    const int64_t qmax = get_int(q, "qmax", where, INT32_MIN, INT32_MAX);
    for (size_t i = 0; i < entries.size(); ++i)
      if (entries[i] < qmin || entries[i] > qmax)
        fail(tensor_where(name), "entry " + std::to_string(i) + " outside [qmin, qmax]");
    return {entries.begin(), entries.end()};
  }

  int32_t out_zero_point(const json& nd, const std::string& where) const {
    const json& q = field(nd, "qparams", where);
    if (!q.is_object()) fail(where, "this op needs 'qparams' (an object)");
    return static_cast<int32_t>(get_int(q, "zero_point", where, INT32_MIN, INT32_MAX));
  }

  Value parse_conv(const json& nd, Node& node, const std::string& where);
  Value parse_requantize(const json& nd, Node& node, const std::string& where);
  Value parse_affine(const json& nd, Node& node, const std::string& where);
  Value parse_adaptive_pool(const json& nd, Node& node, const std::string& where);
  Value parse_dequantize(const json& nd, Node& node, const std::string& where);
  Value parse_gather_channels(const json& nd, Node& node, const std::string& where);
  Value pooled(const Value& x, PoolStep st, Node& node, const std::string& where) const;
  Value parse_add(const json& nd, Node& node, const std::string& where);
  Value parse_relu(const json& nd, Node& node, const std::string& where);
  Value parse_lut(const json& nd, Node& node, const std::string& where);
  Value parse_mul(const json& nd, Node& node, const std::string& where);
  Value parse_concat(const json& nd, Node& node, const std::string& where);
  Value parse_pool(const json& nd, Node& node, const std::string& where);
  Value parse_global_pool(const json& nd, Node& node, const std::string& where);
  Value parse_flatten(const json& nd, Node& node, const std::string& where);

  std::vector<uint16_t> weight_indices(const json& w, const std::string& prefix, int64_t count, int bits, int codes,
                                       const std::string& wwhere) const;
};

std::vector<uint16_t> Loader::weight_indices(const json& w, const std::string& prefix, int64_t count, int bits,
                                             int codes, const std::string& wwhere) const {
  const std::string coding = get_string(w, "coding", wwhere);
  const std::string iname = prefix + ".indices";
  const TensorView& data = file.tensor(iname, DType::U8);
  if (data.shape.size() != 1) fail(tensor_where(iname), "must be 1-D");
  std::vector<uint16_t> indices;
  if (coding == "packed") {
    // Sizes are checked against the file before anything of `count` is allocated.
    if (data.bytes != packed_size(count, bits))
      fail(tensor_where(iname), std::to_string(data.bytes) + " bytes, expected " +
                                    std::to_string(packed_size(count, bits)) + " for " + std::to_string(count) +
                                    " values of " + std::to_string(bits) + " bits");
    indices.resize(static_cast<size_t>(count));
    unpack_bits(data.data, count, bits, indices.data());
  } else if (coding == "huffman") {
    if (codes > 256) fail(wwhere, "huffman coding takes at most 256 codes");
    auto lengths = copy_tensor<uint8_t>(file.tensor(prefix + ".code_lengths", DType::U8, {codes}));
    if (count / 8 > data.bytes)  // every code is at least one bit long
      fail(tensor_where(iname), std::to_string(data.bytes) + " bytes cannot hold " + std::to_string(count) + " codes");
    std::vector<uint8_t> narrow(static_cast<size_t>(count));
    try {
      huffman_decode(data.data, data.bytes, lengths.data(), codes, count, narrow.data());
    } catch (const std::invalid_argument& e) {
      fail(tensor_where(iname), e.what());
    }
    indices.assign(narrow.begin(), narrow.end());
  } else {
    fail(wwhere, "unknown coding (expected 'packed' or 'huffman')");
  }
  for (int64_t i = 0; i < count; ++i)
    if (indices[i] >= codes) fail(tensor_where(iname), "index " + std::to_string(i) + " is not below codes");
  return indices;
}

Value Loader::parse_conv(const json& nd, Node& node, const std::string& where) {
  const bool conv = node.op == Op::Conv;
  const Value& x = input(node);
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
  const std::vector<uint16_t> indices = weight_indices(w, prefix, count, bits, codes, wwhere);
  const auto levels = copy_tensor<int16_t>(file.tensor(prefix + ".levels", DType::I16, {tables, codes}));
  require_finite(copy_tensor<float>(file.tensor(prefix + ".scale", DType::F32, {m})), tensor_where(prefix + ".scale"));
  int64_t max_level = 0;
  for (auto v : levels) {
    if (v == INT16_MIN) fail(tensor_where(prefix + ".levels"), "entries must be within +-32767");
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
    epi.scale = copy_tensor<float>(file.tensor(node.name + ".output.scale", DType::F32, {m}));
    epi.float_bias = copy_tensor<float>(file.tensor(node.name + ".output.bias", DType::F32, {m}));
    require_finite(epi.scale, tensor_where(node.name + ".output.scale"));
    require_finite(epi.float_bias, tensor_where(node.name + ".output.bias"));
    out.storage = Storage::F32;
  } else {
    epi.zero_point = out_zero_point(nd, where);
    std::tie(epi.lo, epi.hi) = read_clamp(nd, where);
    epi.multiplier = copy_tensor<int32_t>(file.tensor(node.name + ".requant.multiplier", DType::I32, {m}));
    const auto shift8 = copy_tensor<uint8_t>(file.tensor(node.name + ".requant.shift", DType::U8, {m}));
    epi.shift.assign(shift8.begin(), shift8.end());
    epi.bias = copy_tensor<int64_t>(file.tensor(node.name + ".requant.bias", DType::I64, {m}));
    for (int64_t i = 0; i < m; ++i) {
      if (epi.shift[i] > 62) fail(tensor_where(node.name + ".requant.shift"), "entries must be in [0, 62]");
      if (epi.multiplier[i] == INT32_MIN)
        fail(tensor_where(node.name + ".requant.multiplier"), "entries must be within +-(2^31 - 1)");
      // acc * multiplier + bias + 2^(shift-1) must not leave int64.
      const __int128 worst = acc_bound * std::abs(int64_t{epi.multiplier[i]}) +
                             (epi.bias[i] < 0 ? -static_cast<__int128>(epi.bias[i]) : epi.bias[i]) +
                             (epi.shift[i] ? (__int128{1} << (epi.shift[i] - 1)) : 0);
      if (worst >= (__int128{1} << 63))
        fail(tensor_where(node.name + ".requant.bias"),
             "entry " + std::to_string(i) + ": accumulator * multiplier + bias can overflow int64");
    }
    out = with_range(std::move(out), epi.lo, epi.hi);
    epi.store_offset = out.offset;
  }
  ConvStep step;
  if (nd.contains("accumulator_bits"))
    step.accumulator_bits = static_cast<int>(get_int(nd, "accumulator_bits", where, 2, 32));
  if (keep_checked_weights) step.checked_weights = dense;
  step.x_sub = static_cast<int32_t>(int64_t{z_x} - x.offset);
  step.packed = pack_conv(g, dense.data(), std::move(epi), plan.isa, InputRange{x.lo - z_x, x.hi - z_x},
                          step.accumulator_bits);
  node.step = std::move(step);
  return out;
}

Value Loader::parse_requantize(const json& nd, Node& node, const std::string& where) {
  RequantStep st;
  st.in_zero_point = static_cast<int32_t>(get_int(nd, "input_zero_point", where, INT32_MIN, INT32_MAX));
  st.multiplier = static_cast<int32_t>(get_int(nd, "multiplier", where, INT32_MIN + 1, INT32_MAX));
  st.shift = static_cast<int32_t>(get_int(nd, "shift", where, 0, 62));
  st.out_zero_point = out_zero_point(nd, where);
  std::tie(st.lo, st.hi) = read_clamp(nd, where);
  node.step = st;
  return with_range(input(node), st.lo, st.hi);
}

Value Loader::parse_add(const json& nd, Node& node, const std::string& where) {
  const int64_t lim = (int64_t{1} << 30) - 1;
  AddStep st;
  st.a_zero_point = static_cast<int32_t>(get_int(nd, "a_zero_point", where, INT32_MIN, INT32_MAX));
  st.b_zero_point = static_cast<int32_t>(get_int(nd, "b_zero_point", where, INT32_MIN, INT32_MAX));
  st.a_multiplier = static_cast<int32_t>(get_int(nd, "a_multiplier", where, -lim, lim));
  st.b_multiplier = static_cast<int32_t>(get_int(nd, "b_multiplier", where, -lim, lim));
  st.shift = static_cast<int32_t>(get_int(nd, "shift", where, 0, 62));
  st.out_zero_point = out_zero_point(nd, where);
  std::tie(st.lo, st.hi) = read_clamp(nd, where);
  const Value &a = input(node, 0), &b = input(node, 1);
  if (a.shape != b.shape) fail(where, "add inputs have different shapes " + shape_str(a.shape) + " and " + shape_str(b.shape));
  if (a.hwc_source != b.hwc_source) fail(where, "add of a flattened and a non-flattened value is not supported");
  node.step = st;
  return with_range(a, st.lo, st.hi);
}

Value Loader::parse_relu(const json& nd, Node& node, const std::string& where) {
  ClampStep st;
  std::tie(st.lo, st.hi) = read_clamp(nd, where);
  node.step = st;
  const Value& x = input(node);
  return with_range(x, std::clamp<int64_t>(x.lo, st.lo, st.hi), std::clamp<int64_t>(x.hi, st.lo, st.hi));
}

Value Loader::parse_lut(const json& nd, Node& node, const std::string& where) {
  const Value& x = input(node);
  LutStep st;
  st.input_min = get_int(nd, "input_min", where, INT32_MIN, INT32_MAX);
  const std::string name = get_string(nd, "table", where);
  const TensorView& t = file.tensor(name, DType::I16);
  if (t.shape.size() != 1 || t.shape[0] < 1 || t.shape[0] > 65536)
    fail(tensor_where(name), "must be 1-D with 1 to 65536 entries, got " + shape_str(t.shape));
  const int64_t last = st.input_min + t.shape[0] - 1;
  if (x.lo < st.input_min || x.hi > last)
    fail(where, "table covers input codes [" + std::to_string(st.input_min) + ", " + std::to_string(last) +
                    "] but the input ranges over [" + std::to_string(x.lo) + ", " + std::to_string(x.hi) + "]");
  st.table = code_table(name, t.shape, field(nd, "qparams", where), where);
  int64_t lo = INT64_MAX, hi = INT64_MIN;
  for (size_t i = 0; i < st.table.size(); ++i) {
    const int64_t code = st.input_min + static_cast<int64_t>(i);
    if (code >= x.lo && code <= x.hi) {
      lo = std::min<int64_t>(lo, st.table[i]);
      hi = std::max<int64_t>(hi, st.table[i]);
    }
  }
  node.step = std::move(st);
  return with_range(x, lo, hi);
}

Value Loader::parse_mul(const json& nd, Node& node, const std::string& where) {
  MulStep st;
  st.a_zero_point = static_cast<int32_t>(get_int(nd, "a_zero_point", where, INT32_MIN, INT32_MAX));
  st.b_zero_point = static_cast<int32_t>(get_int(nd, "b_zero_point", where, INT32_MIN, INT32_MAX));
  st.multiplier = static_cast<int32_t>(get_int(nd, "multiplier", where, INT32_MIN + 1, INT32_MAX));
  st.shift = static_cast<int32_t>(get_int(nd, "shift", where, 0, 62));
  st.out_zero_point = out_zero_point(nd, where);
  std::tie(st.lo, st.hi) = read_clamp(nd, where);
  const Value &a = input(node, 0), &b = input(node, 1);
  for (const auto& [v, z, name] : {std::tuple{&a, st.a_zero_point, "a"}, std::tuple{&b, st.b_zero_point, "b"}})
    if (v->lo - z < -32768 || v->hi - z > 32768)
      fail(where, std::string("mul input ") + name + " codes range over more than 16 bits around its zero point");
  if (a.hwc_source != b.hwc_source) fail(where, "mul of a flattened and a non-flattened value is not supported");
  if (a.shape == b.shape) {
    st.b_channels = 0;
  } else if (a.shape.size() == 3 && b.shape == std::vector<int64_t>{a.shape[0], 1, 1}) {
    st.b_channels = a.shape[0];
  } else {
    fail(where, "mul inputs must have the same shape, or the second be [C, 1, 1] for a [C, H, W] first; got " +
                    shape_str(a.shape) + " and " + shape_str(b.shape));
  }
  node.step = st;
  return with_range(a, st.lo, st.hi);
}

Value Loader::parse_concat(const json& nd, Node& node, const std::string& where) {
  const Value& first = input(node, 0);
  if (first.shape.size() != 3) fail(where, "concat needs [C, H, W] inputs, got " + shape_str(first.shape));
  Value out = first;
  int64_t channels = 0;
  out.lo = INT64_MAX;
  out.hi = INT64_MIN;
  for (size_t i = 0; i < node.inputs.size(); ++i) {
    const Value& x = input(node, static_cast<int>(i));
    if (x.shape.size() != 3 || x.shape[1] != first.shape[1] || x.shape[2] != first.shape[2])
      fail(where, "concat inputs must share H and W: " + shape_str(first.shape) + " and " + shape_str(x.shape));
    if (__builtin_add_overflow(channels, x.shape[0], &channels) || channels > kMaxDim)
      fail(where, "concatenated channel count too large");
    out.lo = std::min(out.lo, x.lo);
    out.hi = std::max(out.hi, x.hi);
  }
  out.shape[0] = channels;
  out_zero_point(nd, where);  // the inputs are already in the output's quantization; qparams must be there
  return with_range(std::move(out), out.lo, out.hi);
}

// The output of pooling x over the windows of `st`; the average's padding cells hold the input's zero point.
Value Loader::pooled(const Value& x, PoolStep st, Node& node, const std::string& where) const {
  Value out = x;
  out.shape = {x.shape[0], st.rows.size(), st.cols.size()};
  bool padded = false;
  for (int64_t i = 0; i < st.rows.size(); ++i) padded |= st.rows.divisor[i] != st.rows.end[i] - st.rows.begin[i];
  for (int64_t i = 0; i < st.cols.size(); ++i) padded |= st.cols.divisor[i] != st.cols.end[i] - st.cols.begin[i];
  if (!st.max && padded && (st.pad_code < x.lo || st.pad_code > x.hi)) {
    // The mean of codes and zero-point padding lies in the hull of both: widen the range, keeping the storage.
    out.lo = std::min(x.lo, st.pad_code);
    out.hi = std::max(x.hi, st.pad_code);
    if (x.storage == Storage::U8 && (out.lo < x.offset || out.hi > int64_t{x.offset} + 255))
      fail(where, "the zero point of the padding lies outside the uint8 range of the input's codes");
  }
  node.step = std::move(st);
  return out;
}

Value Loader::parse_pool(const json& nd, Node& node, const std::string& where) {
  const Value& x = input(node);
  if (x.shape.size() != 3) fail(where, "pooling needs a [C, H, W] input, got " + shape_str(x.shape));
  auto kern = get_ints(nd, "kernel", where, 2, 1, kMaxDim);
  auto stride = get_ints(nd, "stride", where, 2, 1, kMaxDim);
  auto pad = get_ints(nd, "padding", where, 2, 0, kMaxDim);
  auto flag = [&](const char* key, bool fallback) {
    if (!nd.contains(key)) return fallback;
    if (!nd[key].is_boolean()) fail(where, std::string("'") + key + "' must be true or false");
    return nd[key].get<bool>();
  };
  const bool ceil_mode = flag("ceil_mode", false), count_include_pad = flag("count_include_pad", true);
  PoolStep st;
  st.max = node.op_name == "max_pool2d";
  if (!st.max) st.pad_code = out_zero_point(nd, where);
  try {
    st.rows = pool_axis(x.shape[1], int(kern[0]), int(stride[0]), int(pad[0]), ceil_mode, count_include_pad, "pool");
    st.cols = pool_axis(x.shape[2], int(kern[1]), int(stride[1]), int(pad[1]), ceil_mode, count_include_pad, "pool");
  } catch (const std::invalid_argument& e) {
    fail(where, e.what());
  }
  return pooled(x, std::move(st), node, where);
}

Value Loader::parse_adaptive_pool(const json& nd, Node& node, const std::string& where) {
  const Value& x = input(node);
  if (x.shape.size() != 3) fail(where, "adaptive pooling needs a [C, H, W] input, got " + shape_str(x.shape));
  auto size = get_ints(nd, "output_size", where, 2, 1, kMaxDim);
  PoolStep st;
  st.max = node.op_name == "adaptive_max_pool2d";
  try {
    st.rows = adaptive_pool_axis(x.shape[1], size[0], "adaptive pool");
    st.cols = adaptive_pool_axis(x.shape[2], size[1], "adaptive pool");
  } catch (const std::invalid_argument& e) {
    fail(where, e.what());
  }
  return pooled(x, std::move(st), node, where);
}

Value Loader::parse_global_pool(const json&, Node& node, const std::string& where) {
  const Value& x = input(node);
  if (x.shape.size() != 3) fail(where, "global pooling needs a [C, H, W] input, got " + shape_str(x.shape));
  PoolStep st;
  st.max = node.op_name == "global_max_pool";
  st.rows = adaptive_pool_axis(x.shape[1], 1, "global pool");
  st.cols = adaptive_pool_axis(x.shape[2], 1, "global pool");
  return pooled(x, std::move(st), node, where);
}

Value Loader::parse_affine(const json& nd, Node& node, const std::string& where) {
  const Value& x = input(node);
  if (!x.hwc_source.empty())
    fail(where, "affine of a flattened [C, H, W] value with H * W > 1 is not supported (its order is NHWC)");
  const int64_t channels = x.shape[0];
  if (x.shape.size() != 1 && x.shape.size() != 3) fail(where, "affine needs a [C, H, W] or [C] input");
  AffineStep st;
  st.in_zero_point = static_cast<int32_t>(get_int(nd, "input_zero_point", where, INT32_MIN, INT32_MAX));
  st.out_zero_point = out_zero_point(nd, where);
  std::tie(st.lo, st.hi) = read_clamp(nd, where);
  st.multiplier = copy_tensor<int32_t>(file.tensor(node.name + ".multiplier", DType::I32, {channels}));
  st.shift = copy_tensor<uint8_t>(file.tensor(node.name + ".shift", DType::U8, {channels}));
  st.bias = copy_tensor<int64_t>(file.tensor(node.name + ".bias", DType::I64, {channels}));
  for (int64_t c = 0; c < channels; ++c) {
    if (st.multiplier[c] == INT32_MIN) fail(tensor_where(node.name + ".multiplier"), "entry is INT32_MIN");
    if (st.shift[c] > 62) fail(tensor_where(node.name + ".shift"), "entry above 62");
    if (st.bias[c] < -(int64_t{1} << 61) || st.bias[c] > (int64_t{1} << 61))
      fail(tensor_where(node.name + ".bias"), "entry outside [-2^61, 2^61]");
  }
  node.step = std::move(st);
  const auto& a = std::get<AffineStep>(node.step);
  return with_range(x, a.lo, a.hi);
}

Value Loader::parse_gather_channels(const json& nd, Node& node, const std::string& where) {
  const Value& x = input(node);
  if (x.shape.size() != 3) fail(where, "gather_channels needs a [C, H, W] input, got " + shape_str(x.shape));
  const std::string name = get_string(nd, "index", where);
  const TensorView& t = file.tensor(name, DType::I32);
  if (t.shape.size() != 1 || t.shape[0] < 1 || t.shape[0] > kMaxDim)
    fail(tensor_where(name), "must be 1-D with 1 to 2^24 entries, got " + shape_str(t.shape));
  GatherStep st;
  st.index = copy_tensor<int32_t>(t);
  for (size_t i = 0; i < st.index.size(); ++i)
    if (st.index[i] < 0 || st.index[i] >= x.shape[0])
      fail(tensor_where(name), "entry " + std::to_string(i) + " is not a channel of the " + std::to_string(x.shape[0]) +
                                   "-channel input");
  Value out = x;
  out.shape[0] = static_cast<int64_t>(st.index.size());
  node.step = std::move(st);
  return out;
}

// The float output of the model: scale * (code - zero_point), in torch's (C, H, W) order.
Value Loader::parse_dequantize(const json& nd, Node& node, const std::string& where) {
  const Value& x = input(node);
  DequantizeStep st;
  const json& q = field(nd, "input_qparams", where);
  if (!q.is_object()) fail(where, "needs 'input_qparams' (an object)");
  st.zero_point = static_cast<int32_t>(get_int(q, "zero_point", where, INT32_MIN, INT32_MAX));
  const json& scale = field(q, "scale", where);
  if (!scale.is_number() || !std::isfinite(scale.get<double>()) || !(scale.get<double>() > 0) ||
      !std::isfinite(static_cast<float>(scale.get<double>())))
    fail(where, "input_qparams.scale must be a positive finite float32");
  st.scale = static_cast<float>(scale.get<double>());
  if (!field(nd, "qparams", where).is_null()) fail(where, "dequantize produces the float output: qparams must be null");
  node.step = st;
  Value out = x;
  out.storage = Storage::F32;
  out.offset = 0;
  return out;
}

Value Loader::parse_flatten(const json&, Node& node, const std::string& where) {
  const Value& x = input(node);
  Value out = x;
  out.shape = {checked_numel(x.shape, where)};
  if (x.shape.size() == 3 && x.shape[1] * x.shape[2] > 1) out.hwc_source = x.shape;
  return out;
}

// Offsets of every value in a per-image arena: a value lives from the node that writes it to its
// last reader; first fit over the free gaps (64-byte aligned).
int64_t assign_arena(std::vector<Value>& values, const std::vector<Node>& nodes) {
  struct Block {
    int64_t begin, end;
  };
  std::vector<Block> live;  // sorted by begin
  std::vector<int> live_ids;
  int64_t peak = 0;
  auto place = [&](int id) {
    Value& v = values[id];
    const int64_t size = (v.bytes + kAlign - 1) / kAlign * kAlign;
    int64_t at = 0;
    size_t pos = 0;
    for (; pos < live.size(); ++pos) {
      if (live[pos].begin - at >= size) break;
      at = std::max(at, live[pos].end);
    }
    v.arena_offset = at;
    live.insert(live.begin() + pos, {at, at + size});
    live_ids.insert(live_ids.begin() + pos, id);
    peak = std::max(peak, at + size);
  };
  auto release = [&](size_t step) {
    for (size_t i = 0; i < live.size();) {
      if (values[live_ids[i]].last_use == step) {
        live.erase(live.begin() + i);
        live_ids.erase(live_ids.begin() + i);
      } else {
        ++i;
      }
    }
  };
  place(0);
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (!values[nodes[i].output].is_float()) place(nodes[i].output);
    release(i);
  }
  return peak;
}

}  // namespace

// ------------------------------------------------------------------------------------ loading
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
  const std::string mwhere = origin + ": metadata";
  const json doc = parse_untrusted_json(meta->second, mwhere);
  if (!doc.is_object()) fail(mwhere, "must be a JSON object");
  if (get_string(doc, "format", mwhere) != "qcnn") fail(mwhere, "format must be 'qcnn'");
  if (get_int(doc, "version", mwhere, 0, INT32_MAX) != 1) fail(mwhere, "unsupported version (this reader knows 1)");

  Model model;
  model.plan_ = std::make_unique<Plan>();
  Plan& plan = *model.plan_;
  try {
    plan.isa = select_isa();
  } catch (const std::invalid_argument& e) {
    throw FormatError(e.what());
  }
  Loader ld{file, plan, {}, origin, options.count_overflows};
  plan.checked = options.count_overflows;

  // Input: shape and the pixel -> code table.
  const std::string iwhere = origin + ": input";
  const json& input = field(doc, "input", mwhere);
  plan.input_shape = get_ints(input, "shape", iwhere, 3, 1, kMaxDim);
  const int64_t pixels = checked_numel(plan.input_shape, iwhere, kMaxDim);
  const int64_t channels = plan.input_shape[0];
  const std::string lut_name = get_string(input, "lut", iwhere);
  plan.lut = ld.code_table(lut_name, {channels, 256}, field(input, "qparams", iwhere), iwhere);
  Value in;
  in.shape = plan.input_shape;
  in = with_range(std::move(in), *std::min_element(plan.lut.begin(), plan.lut.end()),
                  *std::max_element(plan.lut.begin(), plan.lut.end()));
  in.count = pixels;
  in.bytes = pixels * storage_bytes(in.storage);
  plan.values.push_back(in);
  ld.value_ids["input"] = 0;

  using Parser = Value (Loader::*)(const json&, Node&, const std::string&);
  static const std::map<std::string, std::pair<Op, Parser>> parsers = {
      {"conv2d", {Op::Conv, &Loader::parse_conv}},
      {"linear", {Op::Linear, &Loader::parse_conv}},
      {"requantize", {Op::Requantize, &Loader::parse_requantize}},
      {"affine", {Op::Affine, &Loader::parse_affine}},
      {"add", {Op::Add, &Loader::parse_add}},
      {"mul", {Op::Mul, &Loader::parse_mul}},
      {"relu", {Op::Relu, &Loader::parse_relu}},
      {"lut", {Op::Lut, &Loader::parse_lut}},
      {"concat", {Op::Concat, &Loader::parse_concat}},
      {"gather_channels", {Op::GatherChannels, &Loader::parse_gather_channels}},
      {"max_pool2d", {Op::Pool, &Loader::parse_pool}},
      {"avg_pool2d", {Op::Pool, &Loader::parse_pool}},
      {"adaptive_max_pool2d", {Op::Pool, &Loader::parse_adaptive_pool}},
      {"adaptive_avg_pool2d", {Op::Pool, &Loader::parse_adaptive_pool}},
      {"global_max_pool", {Op::Pool, &Loader::parse_global_pool}},
      {"global_avg_pool", {Op::Pool, &Loader::parse_global_pool}},
      {"flatten", {Op::Flatten, &Loader::parse_flatten}},
      {"dequantize", {Op::Dequantize, &Loader::parse_dequantize}}};

  const json& nodes = field(doc, "nodes", mwhere);
  if (!nodes.is_array() || nodes.empty()) fail(mwhere, "'nodes' must be a non-empty array");
  for (size_t ni = 0; ni < nodes.size(); ++ni) {
    const json& nd = nodes[ni];
    std::string where = origin + ": node " + std::to_string(ni);
    Node node;
    node.name = get_string(nd, "name", where);
    if (node.name.size() > 256) fail(where, "name longer than 256 bytes");
    where = origin + ": node " + std::to_string(ni) + " '" + printable(node.name, 64) + "'";
    if (ld.value_ids.count(node.name)) fail(where, "duplicate node name");
    node.op_name = get_string(nd, "op", where);
    auto parser = parsers.find(node.op_name);
    if (parser == parsers.end()) fail(where, "unknown op '" + printable(node.op_name, 64) + "'");
    node.op = parser->second.first;
    const json& inputs = field(nd, "inputs", where);
    const size_t want_inputs = node.op == Op::Add || node.op == Op::Mul ? 2 : 1;
    if (node.op == Op::Concat) {
      if (!inputs.is_array() || inputs.size() < 2 || inputs.size() > 256)
        fail(where, "'inputs' of concat must list 2 to 256 values");
    } else if (!inputs.is_array() || inputs.size() != want_inputs) {
      fail(where, "'inputs' must list " + std::to_string(want_inputs) + " value(s)");
    }
    for (const auto& name : inputs) {
      if (!name.is_string()) fail(where, "'inputs' must hold value names");
      auto id = ld.value_ids.find(name.get<std::string>());
      if (id == ld.value_ids.end()) fail(where, "input '" + printable(name.get<std::string>(), 64) + "' is not an earlier value");
      if (plan.values[id->second].is_float()) fail(where, "an input is the float output; only the last node may be float");
      node.inputs.push_back(id->second);
    }
    Value out = (ld.*(parser->second.second))(nd, node, where);
    if (out.is_float() && ni + 1 != nodes.size())
      fail(where, "produces the float output (qparams null), but only the last node may be float");
    const auto declared = get_ints(nd, "shape", where, 0, 1, kMaxDim);
    if (declared != out.shape)
      fail(where, "declared shape " + shape_str(declared) + " differs from the computed " + shape_str(out.shape));
    out.count = checked_numel(out.shape, where);
    int64_t bytes = 0;
    if (__builtin_mul_overflow(out.count, int64_t{storage_bytes(out.storage)}, &bytes) ||
        bytes > options.max_activation_bytes_per_image)
      fail(where, "output of " + shape_str(out.shape) + " exceeds the activation limit of " +
                      std::to_string(options.max_activation_bytes_per_image) + " bytes per image");
    out.bytes = bytes;
    if (__builtin_add_overflow(plan.macs, node.macs, &plan.macs) || plan.macs > options.max_macs_per_image)
      fail(where, "the model exceeds the limit of " + std::to_string(options.max_macs_per_image) +
                      " multiply-accumulates per image (raise it with max_macs_per_image / --max-macs)");
    for (int id : node.inputs) plan.values[id].last_use = ni;
    node.output = static_cast<int>(plan.values.size());
    out.last_use = ni;
    ld.value_ids[node.name] = node.output;
    plan.values.push_back(std::move(out));
    plan.nodes.push_back(std::move(node));
  }
  const std::string output = get_string(doc, "output", mwhere);
  const Node& last = plan.nodes.back();
  if (output != last.name) fail(mwhere, "'output' must name the last node");
  const Value& logits = plan.values[last.output];
  if (!logits.is_float()) fail(mwhere, "the last node must produce float logits (qparams null)");
  plan.num_classes = checked_numel(logits.shape, mwhere);
  plan.arena_bytes = assign_arena(plan.values, plan.nodes);
  for (const Node& node : plan.nodes)
    if (const auto* conv = std::get_if<ConvStep>(&node.step))
      plan.scratch_bytes = std::max(plan.scratch_bytes, conv_scratch_bytes(conv->packed));
  if (plan.arena_bytes + plan.scratch_bytes > options.max_activation_bytes_per_image)
    fail(origin, "live activations and scratch of " + std::to_string(plan.arena_bytes + plan.scratch_bytes) +
                     " bytes per image exceed the limit of " + std::to_string(options.max_activation_bytes_per_image));
  return model;
}

// ------------------------------------------------------------------------------------ running
namespace {
// Calls f(typed pointer, offset) for a value's stored codes.
template <typename F>
void with_stored(const CodesIn& in, F&& f) {
  if (in.storage == Storage::U8)
    f(static_cast<const uint8_t*>(in.data), in.offset);
  else
    f(static_cast<const int32_t*>(in.data), in.offset);
}
}  // namespace

namespace {
constexpr int64_t kMinSharedLayerMacs = int64_t{1} << 24;
}  // namespace

void Plan::run_node(const Node& node, uint8_t* arena, float* logits, int threads) const {
  const Value& out = values[node.output];
  const Value& x = values[node.inputs[0]];
  const int64_t count = out.count;
  switch (node.op) {
    case Op::Conv:
    case Op::Linear: {
      const ConvStep& st = std::get<ConvStep>(node.step);
      const int64_t positions = st.packed.g.positions();
      // Few images: the threads share a layer only where it is large enough to pay for the split (measured at
      // batch 1 on 2 threads: splitting the demo net's 4M-MAC layers, 10-12 us each, made it slower than 1 thread).
      if (st.packed.g.macs() < kMinSharedLayerMacs) threads = 1;
      if (!out.is_float()) {
        conv_image(st.packed, arena + x.arena_offset, x.storage, st.x_sub, arena + out.arena_offset, out.storage,
                   threads);
      } else if (positions == 1) {
        conv_image(st.packed, arena + x.arena_offset, x.storage, st.x_sub, logits, Storage::F32, threads);
      } else {  // float [M, oh, ow] logits of a conv: computed NHWC, returned CHW like torch.flatten
        std::vector<float> hwc(static_cast<size_t>(count));
        conv_image(st.packed, arena + x.arena_offset, x.storage, st.x_sub, hwc.data(), Storage::F32, threads);
        const int64_t m = st.packed.g.m;
        for (int64_t p = 0; p < positions; ++p)
          for (int64_t c = 0; c < m; ++c) logits[c * positions + p] = hwc[p * m + c];
      }
      break;
    }
    case Op::Requantize: {
      const RequantStep& st = std::get<RequantStep>(node.step);
      requantize_codes(codes_in(x, arena), count, st.in_zero_point, st.multiplier, st.shift, st.out_zero_point, st.lo,
                       st.hi, codes_out(out, arena));
      break;
    }
    case Op::Add: {
      const AddStep& st = std::get<AddStep>(node.step);
      add_codes(codes_in(x, arena), st.a_zero_point, st.a_multiplier, codes_in(values[node.inputs[1]], arena),
                st.b_zero_point, st.b_multiplier, st.shift, st.out_zero_point, st.lo, st.hi, count,
                codes_out(out, arena));
      break;
    }
    case Op::Relu: {
      const ClampStep& st = std::get<ClampStep>(node.step);
      clamp_codes(codes_in(x, arena), count, st.lo, st.hi, codes_out(out, arena));
      break;
    }
    case Op::Mul: {
      const MulStep& st = std::get<MulStep>(node.step);
      mul_codes(codes_in(x, arena), st.a_zero_point, codes_in(values[node.inputs[1]], arena), st.b_zero_point,
                st.b_channels, st.multiplier, st.shift, st.out_zero_point, st.lo, st.hi, count, codes_out(out, arena));
      break;
    }
    case Op::Concat: {
      std::vector<CodesIn> ins;
      std::vector<int64_t> channels;
      for (int id : node.inputs) {
        ins.push_back(codes_in(values[id], arena));
        channels.push_back(values[id].shape[0]);
      }
      concat_nhwc(ins, channels, out.shape[1] * out.shape[2], codes_out(out, arena));
      break;
    }
    case Op::GatherChannels: {
      const GatherStep& st = std::get<GatherStep>(node.step);
      gather_channels_nhwc(codes_in(x, arena), out.shape[1] * out.shape[2], x.shape[0], st.index.data(),
                           out.shape[0], codes_out(out, arena));
      break;
    }
    case Op::Lut: {
      const LutStep& st = std::get<LutStep>(node.step);
      lookup_codes(codes_in(x, arena), count, st.table.data(), st.input_min, codes_out(out, arena));
      break;
    }
    case Op::Pool: {
      const PoolStep& st = std::get<PoolStep>(node.step);
      pool_nhwc(codes_in(x, arena), x.shape[2], x.shape[0], st.rows, st.cols, st.max, st.pad_code,
                codes_out(out, arena));
      break;
    }
    case Op::Affine: {
      const AffineStep& st = std::get<AffineStep>(node.step);
      affine_codes(codes_in(x, arena), count, x.shape[0], st.in_zero_point, st.multiplier.data(), st.shift.data(),
                   st.bias.data(), st.out_zero_point, st.lo, st.hi, codes_out(out, arena));
      break;
    }
    case Op::Dequantize: {
      const DequantizeStep& st = std::get<DequantizeStep>(node.step);
      // NHWC codes of a [C, H, W] value (or of one flattened from it), returned in torch's CHW order
      const int64_t channels = x.hwc_source.empty() ? x.shape[0] : x.hwc_source[0];
      const int64_t positions = count / channels;
      with_stored(codes_in(x, arena), [&](auto src, int32_t offset) {
        for (int64_t p = 0; p < positions; ++p)
          for (int64_t c = 0; c < channels; ++c)
            logits[c * positions + p] = st.scale * static_cast<float>(int64_t{src[p * channels + c]} + offset - st.zero_point);
      });
      break;
    }
    case Op::Flatten:
      std::memcpy(arena + out.arena_offset, arena + x.arena_offset, static_cast<size_t>(out.bytes));
      break;
  }
}

void Plan::run_image(const uint8_t* pixels, uint8_t* arena, float* logits, int threads,
                     std::vector<double>* node_seconds, int64_t* overflows) const {
  const Value& in = values[0];
  lookup_pixels_nhwc(pixels, input_shape[0], input_shape[1] * input_shape[2], lut.data(), codes_out(in, arena));
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (overflows)
      if (const auto* conv = std::get_if<ConvStep>(&nodes[i].step)) {
        const Value& x = values[nodes[i].inputs[0]];
        *overflows += count_accumulator_overflows(conv->packed.g, conv->checked_weights.data(), arena + x.arena_offset,
                                                  x.storage, conv->x_sub, conv->accumulator_bits);
      }
    if (!node_seconds) {
      run_node(nodes[i], arena, logits, threads);
      continue;
    }
    const auto t0 = std::chrono::steady_clock::now();
    run_node(nodes[i], arena, logits, threads);
    (*node_seconds)[i] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
}

namespace {
// A per-thread arena that grows to the largest plan it has served.
uint8_t* thread_arena(int64_t bytes) {
  thread_local std::vector<uint8_t> arena;
  if (static_cast<int64_t>(arena.size()) < bytes) arena.resize(static_cast<size_t>(bytes));
  return arena.data();
}
}  // namespace

void Model::run(const uint8_t* pixels, int64_t n, float* logits, int num_threads) const {
  if (n < 0) throw std::invalid_argument("Model::run: negative batch size");
  if (n == 0) return;
  const Plan& p = *plan_;
  const int threads = resolve_threads(num_threads);
  const int64_t image = p.values[0].count;  // pixels per image
  if (n >= threads && threads > 1) {
    // Whole images per thread: each image's activations stay in its core's cache.
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t i = 0; i < n; ++i)
      p.run_image(pixels + i * image, thread_arena(p.arena_bytes), logits + i * p.num_classes, 1, nullptr);
  } else {
    for (int64_t i = 0; i < n; ++i)  // few images: the threads share each convolution
      p.run_image(pixels + i * image, thread_arena(p.arena_bytes), logits + i * p.num_classes, threads, nullptr);
  }
}

std::vector<float> Model::run(const uint8_t* pixels, int64_t n, int num_threads) const {
  std::vector<float> logits(static_cast<size_t>(std::max<int64_t>(n, 0) * plan_->num_classes));
  run(pixels, n, logits.data(), num_threads);
  return logits;
}

int64_t Model::count_overflows(const uint8_t* pixels, int64_t n) const {
  const Plan& p = *plan_;
  if (!p.checked) throw std::invalid_argument("count_overflows: load the model with count_overflows set");
  if (n < 0) throw std::invalid_argument("count_overflows: negative batch size");
  std::vector<float> logits(static_cast<size_t>(p.num_classes));
  int64_t overflows = 0;
  for (int64_t i = 0; i < n; ++i)
    p.run_image(pixels + i * p.values[0].count, thread_arena(p.arena_bytes), logits.data(), 1, nullptr, &overflows);
  return overflows;
}

std::vector<LayerProfile> Model::profile(const uint8_t* pixels, int64_t n, int num_threads) const {
  const Plan& p = *plan_;
  std::vector<double> seconds(p.nodes.size(), 0.0);
  std::vector<float> logits(static_cast<size_t>(std::max<int64_t>(n, 0) * p.num_classes));
  const int64_t image = p.values[0].count;
  const int threads = resolve_threads(num_threads);
  for (int64_t i = 0; i < n; ++i)
    p.run_image(pixels + i * image, thread_arena(p.arena_bytes), logits.data() + i * p.num_classes, threads, &seconds);
  std::vector<LayerProfile> out;
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    const auto* conv = std::get_if<ConvStep>(&p.nodes[i].step);
    out.push_back({p.nodes[i].name, p.nodes[i].op_name, conv ? conv_kernel_name(conv->packed) : "", p.nodes[i].macs,
                   seconds[i]});
  }
  return out;
}

const std::vector<int64_t>& Model::input_shape() const { return plan_->input_shape; }
int64_t Model::num_classes() const { return plan_->num_classes; }
size_t Model::num_nodes() const { return plan_->nodes.size(); }
int64_t Model::macs_per_image() const { return plan_->macs; }
int64_t Model::peak_activation_bytes(int64_t batch) const {
  // Each thread holds one image's arena and its scratch (at batch < threads, one image shares them).
  const int64_t threads = resolve_threads(0);
  if (batch >= threads) return (plan_->arena_bytes + plan_->scratch_bytes) * threads;
  return plan_->arena_bytes + plan_->scratch_bytes * threads;
}
const char* Model::isa() const { return isa_name(plan_->isa); }

}  // namespace qcnn::runtime
