#include "runtime/model.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <set>

#include "core/isa.h"
#include "core/threads.h"
#include "runtime/plan.h"

namespace qcnn::runtime {

namespace {
constexpr int64_t kAlign = 64;

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
}  // namespace

Value with_range(Value v, int64_t lo, int64_t hi) {
  v.lo = lo;
  v.hi = hi;
  choose_storage(v);
  return v;
}

// ------------------------------------------------------------------------------------ the loader
std::pair<int32_t, int32_t> Loader::read_clamp(const json& nd, const std::string& where) const {
  auto c = get_ints(nd, "clamp", where, 2, INT32_MIN, INT32_MAX);
  if (c[0] > c[1]) fail(where, "clamp lower bound above upper bound");
  return {static_cast<int32_t>(c[0]), static_cast<int32_t>(c[1])};
}

std::vector<int32_t> Loader::code_table(const std::string& name, const std::vector<int64_t>& shape, const json& q,
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

int32_t Loader::out_zero_point(const json& nd, const std::string& where) const {
  const json& q = field(nd, "qparams", where);
  if (!q.is_object()) fail(where, "this op needs 'qparams' (an object)");
  return static_cast<int32_t>(get_int(q, "zero_point", where, INT32_MIN, INT32_MAX));
}

// ------------------------------------------------------------------------------------ running a node
const Value& Exec::value(int id) const { return plan.values[static_cast<size_t>(id)]; }

namespace {
uint8_t* value_data(const Exec& ex, const Value& v, int64_t first) {
  if (v.tile_offset < 0) return ex.arena + v.arena_offset + first * v.element_bytes();
  return ex.tile + v.tile_offset + (first - ex.tile_first) * v.element_bytes();
}

// `buffer` grown to hold `bytes`.
uint8_t* grown(std::vector<uint8_t>& buffer, int64_t bytes) {
  if (static_cast<int64_t>(buffer.size()) < bytes) buffer.resize(static_cast<size_t>(bytes));
  return buffer.data();
}
}  // namespace

CodesIn Exec::in(int id, int64_t first) const {
  const Value& v = value(id);
  return {value_data(*this, v, first), v.storage, v.offset};
}

CodesOut Exec::out(int id, int64_t first) const {
  const Value& v = value(id);
  return {value_data(*this, v, first), v.storage, v.offset};
}

Exec Exec::at_tile(int64_t first) const {
  Exec tiled = *this;
  tiled.tile = grown(tile_buffers[team_slot(base_level)], plan.tile_scratch_bytes);
  tiled.tile_first = first;
  return tiled;
}

void run_chain(const std::vector<const Node*>& chain, const Exec& ex, int64_t first, int64_t count) {
  const Exec tiled = ex.at_tile(first);
  for (const Node* n : chain) {
    if (n->step->reduces())
      n->step->reduce_add(*n, tiled, first, count);
    else
      n->step->run_elements(*n, tiled, first, count);
  }
}

namespace {
// Pointwise nodes run in blocks of about this many elements: a fused chain passes each block from node to
// node while it is in L1.
constexpr int64_t kPointwiseBlock = 8192;
}  // namespace

int64_t block_elements(const Value& v) {
  const int64_t period = v.period();
  return std::max<int64_t>(1, kPointwiseBlock / period) * period;
}

int64_t Step::max_tile_elements(const Value& out) const { return std::min(block_elements(out), out.count); }

void for_each_block(const Value& v, int threads, const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t period = v.period(), positions = v.count / period;
  const int64_t block = block_elements(v) / period, blocks = (positions + block - 1) / block;
  QCNN_PARALLEL_FOR(threads, threads > 1 && blocks > 1 && v.bytes >= kMinSharedPointwiseBytes)
  for (int64_t b = 0; b < blocks; ++b) fn(b * block * period, std::min(block, positions - b * block) * period);
}

void run_chain_after(const std::vector<const Node*>& chain, const Exec& ex, int value) {
  if (!chain.empty())
    for_each_block(ex.value(value), ex.threads, [&](int64_t first, int64_t count) { run_chain(chain, ex, first, count); });
}

void PointwiseStep::run(const Node& node, const Exec& ex, const std::vector<const Node*>& chain) const {
  for_each_block(ex.value(node.output), ex.threads, [&](int64_t first, int64_t count) {
    run_elements(node, ex.at_tile(first), first, count);
    run_chain(chain, ex, first, count);
  });
}

namespace {
// ------------------------------------------------------------------------------------ planning
const std::map<std::string, const OpSpec*>& op_table() {
  static const std::map<std::string, const OpSpec*> table = [] {
    std::map<std::string, const OpSpec*> t;
    for (const auto* family : {&conv_ops(), &eltwise_ops(), &pool_ops(), &layout_ops()})
      for (const OpSpec& op : *family) t[op.name] = &op;
    return t;
  }();
  return table;
}

// Fusion: a node's step also runs the pointwise nodes that read what the step writes (its output, or what a
// node fused before wrote), when they produce a value of the same shape and their other inputs exist before
// the step: they then run on each tile or block the step writes, while it is in cache. Every value is still
// computed by the same kernels in the same order, so the fused plan is bit-exact (those that live only inside the
// step are written to the tile scratch instead of the arena: plan_tile_values).
void plan_fusion(Plan& plan) {
  const size_t n = plan.nodes.size();
  std::vector<int> producer(plan.values.size(), -1);
  std::vector<std::vector<int>> readers(plan.values.size());
  for (size_t i = 0; i < n; ++i) {
    producer[static_cast<size_t>(plan.nodes[i].output)] = static_cast<int>(i);
    for (int id : plan.nodes[i].inputs) readers[static_cast<size_t>(id)].push_back(static_cast<int>(i));
  }
  std::vector<char> in_step(plan.values.size(), 0);
  for (size_t head = 0; head < n; ++head) {
    Node& h = plan.nodes[head];
    const Value& shape = plan.values[static_cast<size_t>(h.output)];
    if (h.fused_into >= 0 || shape.is_float()) continue;
    std::set<int> candidates(readers[static_cast<size_t>(h.output)].begin(), readers[static_cast<size_t>(h.output)].end());
    std::vector<int> step_values{h.output};
    in_step[static_cast<size_t>(h.output)] = 1;
    // Partials of the reductions fused so far, after the head's own where it is one (a global pool whose output
    // another global pool reads).
    int64_t partials = h.step->reduces() ? plan.values[static_cast<size_t>(h.inputs[0])].shape[0] : 0;
    while (!candidates.empty()) {  // in file order, so a fused node runs after those whose output it reads
      Node& next = plan.nodes[static_cast<size_t>(*candidates.begin())];
      candidates.erase(candidates.begin());
      const Value& out = plan.values[static_cast<size_t>(next.output)];
      if (next.fused_into >= 0 || out.is_float()) continue;
      if (next.step->reduces()) {  // reads one value of the step, tile by tile; its output is not the step's shape
        if (!in_step[static_cast<size_t>(next.inputs[0])]) continue;
        next.fused_into = static_cast<int>(head);
        next.partials_offset = partials;
        partials += plan.values[static_cast<size_t>(next.inputs[0])].shape[0];
        h.chain.push_back(&next);
        continue;
      }
      if (!next.step->pointwise() || out.shape != shape.shape) continue;
      const bool ready = std::all_of(next.inputs.begin(), next.inputs.end(), [&](int id) {
        return in_step[static_cast<size_t>(id)] || producer[static_cast<size_t>(id)] < static_cast<int>(head);
      });
      if (!ready) continue;
      next.fused_into = static_cast<int>(head);
      h.chain.push_back(&next);
      in_step[static_cast<size_t>(next.output)] = 1;
      step_values.push_back(next.output);
      candidates.insert(readers[static_cast<size_t>(next.output)].begin(), readers[static_cast<size_t>(next.output)].end());
    }
    for (int id : step_values) in_step[static_cast<size_t>(id)] = 0;
  }
}

// Values that only the nodes of their own step read (and that the step writes tile by tile) live in tiles: each gets
// its place in the thread's tile scratch, sized by the step's largest tile (Plan::tile_scratch_bytes).
void plan_tile_values(Plan& plan) {
  std::vector<std::vector<int>> readers(plan.values.size());
  for (size_t i = 0; i < plan.nodes.size(); ++i)
    for (int id : plan.nodes[i].inputs) readers[static_cast<size_t>(id)].push_back(static_cast<int>(i));
  for (size_t head = 0; head < plan.nodes.size(); ++head) {
    const Node& h = plan.nodes[head];
    if (h.chain.empty()) continue;
    const int64_t elements = h.step->max_tile_elements(plan.values[static_cast<size_t>(h.output)]);
    std::vector<int> step_values;
    if (h.step->writes_tiles()) step_values.push_back(h.output);
    for (const Node* n : h.chain) step_values.push_back(n->output);
    int64_t bytes = 0;
    for (int id : step_values) {
      const auto& r = readers[static_cast<size_t>(id)];
      const bool inside = std::all_of(r.begin(), r.end(), [&](int reader) {
        return plan.nodes[static_cast<size_t>(reader)].fused_into == static_cast<int>(head);
      });
      Value& v = plan.values[static_cast<size_t>(id)];
      if (!inside || r.empty() || v.is_float()) continue;
      v.tile_offset = bytes;
      bytes += (elements * v.element_bytes() + kAlign - 1) / kAlign * kAlign;
    }
    plan.tile_scratch_bytes = std::max(plan.tile_scratch_bytes, bytes);
  }
}

// Offsets of every value in a per-image arena. A value lives from the step that writes it to the step of
// its last reader (a step: a node with the chain fused into it); first fit over the free gaps (64-byte aligned).
int64_t assign_arena(Plan& plan) {
  std::vector<Value>& values = plan.values;
  const auto step_of = [&](size_t node) {
    return plan.nodes[node].fused_into >= 0 ? static_cast<size_t>(plan.nodes[node].fused_into) : node;
  };
  std::vector<size_t> last_step(values.size(), 0);
  for (size_t i = 0; i < plan.nodes.size(); ++i) {
    last_step[static_cast<size_t>(plan.nodes[i].output)] = step_of(i);
    for (int id : plan.nodes[i].inputs)
      last_step[static_cast<size_t>(id)] = std::max(last_step[static_cast<size_t>(id)], step_of(i));
  }
  struct Block {
    int64_t begin, end;
    size_t value;
  };
  std::vector<Block> live;  // sorted by begin
  int64_t peak = 0;
  auto place = [&](size_t id) {
    Value& v = values[id];
    if (v.is_float() || v.tile_offset >= 0) return;
    const int64_t size = (v.bytes + kAlign - 1) / kAlign * kAlign;
    int64_t at = 0;
    size_t pos = 0;
    for (; pos < live.size(); ++pos) {
      if (live[pos].begin - at >= size) break;
      at = std::max(at, live[pos].end);
    }
    v.arena_offset = at;
    live.insert(live.begin() + static_cast<std::ptrdiff_t>(pos), {at, at + size, id});
    peak = std::max(peak, at + size);
  };
  // A pointwise node fused into a step writes its output over an input of the same layout that dies in that step
  // and that no other node of the step reads (a residual add over the stream it adds to): element i of its output
  // depends on element i of its inputs alone, read before it is written, and the write finds its lines in cache.
  std::vector<int> readers_in_last_step(values.size(), 0);
  for (size_t j = 0; j < plan.nodes.size(); ++j)
    for (int id : plan.nodes[j].inputs)
      readers_in_last_step[static_cast<size_t>(id)] += step_of(j) == last_step[static_cast<size_t>(id)];
  auto write_over_input = [&](const Node& fused, size_t step) {
    Value& out = values[static_cast<size_t>(fused.output)];
    if (out.is_float() || out.tile_offset >= 0 || fused.step->reduces()) return false;
    for (int id : fused.inputs) {
      const Value& in = values[static_cast<size_t>(id)];
      if (id == 0 || in.is_float() || in.tile_offset >= 0 || last_step[static_cast<size_t>(id)] != step ||
          readers_in_last_step[static_cast<size_t>(id)] != 1 || in.count != out.count ||
          in.element_bytes() != out.element_bytes())
        continue;
      out.arena_offset = in.arena_offset;
      for (Block& b : live)
        if (b.value == static_cast<size_t>(id)) b.value = static_cast<size_t>(fused.output);
      return true;
    }
    return false;
  };
  place(0);
  for (size_t i = 0; i < plan.nodes.size(); ++i) {
    const Node& node = plan.nodes[i];
    if (node.fused_into >= 0) continue;
    place(static_cast<size_t>(node.output));
    for (const Node* fused : node.chain)
      if (!write_over_input(*fused, i)) place(static_cast<size_t>(fused->output));
    live.erase(std::remove_if(live.begin(), live.end(), [&](const Block& b) { return last_step[b.value] == i; }),
               live.end());
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
  in.bytes = pixels * in.element_bytes();
  plan.values.push_back(in);
  ld.value_ids["input"] = 0;

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
    const auto spec = op_table().find(node.op_name);
    if (spec == op_table().end()) fail(where, "unknown op '" + printable(node.op_name, 64) + "'");
    const OpSpec& op = *spec->second;
    const json& inputs = field(nd, "inputs", where);
    if (!inputs.is_array() || inputs.size() < op.min_inputs || inputs.size() > op.max_inputs)
      fail(where, op.min_inputs == op.max_inputs
                      ? "'inputs' must list " + std::to_string(op.min_inputs) + " value(s)"
                      : "'inputs' of " + node.op_name + " must list " + std::to_string(op.min_inputs) + " to " +
                            std::to_string(op.max_inputs) + " values");
    for (const auto& name : inputs) {
      if (!name.is_string()) fail(where, "'inputs' must hold value names");
      auto id = ld.value_ids.find(name.get<std::string>());
      if (id == ld.value_ids.end()) fail(where, "input '" + printable(name.get<std::string>(), 64) + "' is not an earlier value");
      if (plan.values[id->second].is_float()) fail(where, "an input is the float output; only the last node may be float");
      node.inputs.push_back(id->second);
    }
    Value out = op.parse(ld, nd, node, where);
    if (out.is_float() && ni + 1 != nodes.size())
      fail(where, "produces the float output (qparams null), but only the last node may be float");
    const auto declared = get_ints(nd, "shape", where, 0, 1, kMaxDim);
    if (declared != out.shape)
      fail(where, "declared shape " + shape_str(declared) + " differs from the computed " + shape_str(out.shape));
    out.count = checked_numel(out.shape, where);
    int64_t bytes = 0;
    if (__builtin_mul_overflow(out.count, int64_t{out.element_bytes()}, &bytes) ||
        bytes > options.max_activation_bytes_per_image)
      fail(where, "output of " + shape_str(out.shape) + " exceeds the activation limit of " +
                      std::to_string(options.max_activation_bytes_per_image) + " bytes per image");
    out.bytes = bytes;
    if (__builtin_add_overflow(plan.macs, node.macs, &plan.macs) || plan.macs > options.max_macs_per_image)
      fail(where, "the model exceeds the limit of " + std::to_string(options.max_macs_per_image) +
                      " multiply-accumulates per image (raise it with max_macs_per_image / --max-macs)");
    node.ops = saturating_add(node.ops, out.count);
    for (int id : node.inputs) node.ops = saturating_add(node.ops, plan.values[static_cast<size_t>(id)].count);
    plan.ops = saturating_add(plan.ops, node.ops);
    if (plan.ops > options.max_ops_per_image)
      fail(where, "the model exceeds the limit of " + std::to_string(options.max_ops_per_image) +
                      " element operations per image (elements each node reads and writes, pooling window cells, "
                      "padded images; raise it with max_ops_per_image / --max-ops)");
    node.output = static_cast<int>(plan.values.size());
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
  plan.fused = options.fuse;
  plan.memory_budget = options.max_activation_bytes_per_image;
  if (plan.fused) {
    plan_fusion(plan);
    plan_tile_values(plan);
  }
  plan.arena_bytes = assign_arena(plan);
  for (const Node& node : plan.nodes) {
    plan.scratch_bytes = std::max(plan.scratch_bytes, node.step->scratch_bytes());
    if (node.step->reduces()) {  // its partials (Node::partials_offset), in their own buffer
      const int64_t channels = plan.values[static_cast<size_t>(node.inputs[0])].shape[0];
      plan.partials_bytes = std::max(plan.partials_bytes, (node.partials_offset + channels) * 8);
    }
  }
  plan.scratch_bytes += plan.partials_bytes;
  plan.scratch_bytes += plan.tile_scratch_bytes;
  if (plan.arena_bytes + plan.scratch_bytes > options.max_activation_bytes_per_image)
    fail(origin, "live activations and scratch of " + std::to_string(plan.arena_bytes + plan.scratch_bytes) +
                     " bytes per image exceed the limit of " + std::to_string(options.max_activation_bytes_per_image));
  return model;
}

// ------------------------------------------------------------------------------------ running
void Plan::run_image(const uint8_t* pixels, uint8_t* arena, float* logits, const ScratchTeam& scratch,
                     std::vector<uint8_t>* tile_buffers, std::vector<double>* node_seconds, int64_t* overflows) const {
  const Exec ex{*this, arena, logits, scratch.size, scratch, tile_buffers, parallel_level()};
  const int64_t positions = input_shape[1] * input_shape[2];
  for_each_block(values[0], ex.threads, [&](int64_t first, int64_t count) {
    lookup_pixels_nhwc(pixels, input_shape[0], positions, lut.data(), ex.out(0), first / input_shape[0],
                       (first + count) / input_shape[0]);
  });
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& node = nodes[i];
    if (node.fused_into >= 0) continue;  // ran inside its step's node
    if (overflows) {
      const ConvLayer conv = conv_layer(node);
      if (conv.packed) {
        const Value& x = values[node.inputs[0]];
        *overflows += count_accumulator_overflows(conv.packed->g, conv.checked_weights->data(),
                                                  arena + x.arena_offset, x.storage, conv.x_sub, conv.accumulator_bits);
      }
    }
    const auto t0 = node_seconds ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    for (const Node* fused : node.chain)
      if (fused->step->reduces()) fused->step->reduce_begin(*fused, ex);
    node.step->run(node, ex, node.chain);
    for (const Node* fused : node.chain)
      if (fused->step->reduces()) fused->step->reduce_end(*fused, ex);
    if (node_seconds)
      (*node_seconds)[i] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
}

Plan::RunShape Plan::run_shape(int64_t n, int requested) const {
  if (requested > kMaxThreads)
    throw std::invalid_argument("threads = " + std::to_string(requested) + " is above the limit of " +
                                std::to_string(kMaxThreads));
  const int threads = std::min(resolve_threads(requested), kMaxThreads);
  const int64_t per_thread = arena_bytes + scratch_bytes;  // at most memory_budget (checked at load)
  if (n >= threads && threads > 1 && per_thread * threads <= memory_budget) return {threads, true};
  const int64_t fit = scratch_bytes > 0 ? (memory_budget - arena_bytes) / scratch_bytes : threads;
  return {static_cast<int>(std::clamp<int64_t>(fit, 1, threads)), false};
}

namespace {
// A run's workspace, taken from the plan's spare ones (or new) and given back to them when the run ends.
class SpaceLease {
 public:
  SpaceLease(const Plan& plan, int threads) : plan_(plan) {
    {
      const std::lock_guard<std::mutex> lock(plan.spare_mutex);
      if (!plan.spare_spaces.empty()) {
        space_ = std::move(plan.spare_spaces.back());
        plan.spare_spaces.pop_back();
      }
    }
    if (!space_) space_ = std::make_unique<RunSpace>();
    const auto slots = static_cast<size_t>(threads);
    if (space_->scratch.size() < slots) {
      space_->arenas.resize(slots);
      space_->tile_buffers.resize(slots);
      space_->scratch.resize(slots);
    }
  }
  ~SpaceLease() {
    const std::lock_guard<std::mutex> lock(plan_.spare_mutex);
    plan_.spare_spaces.push_back(std::move(space_));
  }
  SpaceLease(const SpaceLease&) = delete;
  SpaceLease& operator=(const SpaceLease&) = delete;

  // Thread `slot`'s arena, and the scratch of a team of `threads` threads from that slot on.
  uint8_t* arena(int slot) const { return grown(space_->arenas[static_cast<size_t>(slot)], plan_.arena_bytes); }
  ScratchTeam team(int slot, int threads) const { return {space_->scratch.data() + slot, threads}; }
  std::vector<uint8_t>* tile_buffers(int slot) const { return space_->tile_buffers.data() + slot; }

 private:
  const Plan& plan_;
  std::unique_ptr<RunSpace> space_;
};

// Image i of n through plan p on `threads` threads sharing it, with thread `slot`'s workspace.
void run_one(const Plan& p, const SpaceLease& space, int slot, int threads, const uint8_t* pixels, int64_t i,
             float* logits, std::vector<double>* node_seconds = nullptr, int64_t* overflows = nullptr) {
  p.run_image(pixels + i * p.values[0].count, space.arena(slot), logits, space.team(slot, threads),
              space.tile_buffers(slot), node_seconds, overflows);
}
}  // namespace

void Model::run(const uint8_t* pixels, int64_t n, float* logits, int num_threads) const {
  if (n < 0) throw std::invalid_argument("Model::run: negative batch size");
  if (n == 0) return;
  const Plan& p = *plan_;
  const Plan::RunShape shape = p.run_shape(n, num_threads);
  const SpaceLease space(p, shape.threads);
  if (shape.image_per_thread) {
    // Whole images per thread: each image's activations stay in its core's cache.
#pragma omp parallel for schedule(dynamic, 1) num_threads(shape.threads)
    for (int64_t i = 0; i < n; ++i) run_one(p, space, thread_num(), 1, pixels, i, logits + i * p.num_classes);
  } else {
    for (int64_t i = 0; i < n; ++i)  // few images: the threads share each convolution
      run_one(p, space, 0, shape.threads, pixels, i, logits + i * p.num_classes);
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
  const SpaceLease space(p, 1);
  int64_t overflows = 0;
  for (int64_t i = 0; i < n; ++i) run_one(p, space, 0, 1, pixels, i, logits.data(), nullptr, &overflows);
  return overflows;
}

std::vector<LayerProfile> Model::profile(const uint8_t* pixels, int64_t n, int num_threads) const {
  const Plan& p = *plan_;
  if (n < 0) throw std::invalid_argument("profile: negative batch size");
  std::vector<double> seconds(p.nodes.size(), 0.0);
  std::vector<float> logits(static_cast<size_t>(n * p.num_classes));
  const int threads = p.run_shape(1, num_threads).threads;
  const SpaceLease space(p, threads);
  for (int64_t i = 0; i < n; ++i) run_one(p, space, 0, threads, pixels, i, logits.data() + i * p.num_classes, &seconds);
  std::vector<LayerProfile> out;
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    const Node& node = p.nodes[i];
    // A fused node's time is its step's: it reports 0 s and the kernel "fused".
    out.push_back({node.name, node.op_name, node.fused_into >= 0 ? "fused" : node.step->kernel(), node.macs,
                   seconds[i]});
  }
  return out;
}

const std::vector<int64_t>& Model::input_shape() const { return plan_->input_shape; }
int64_t Model::num_classes() const { return plan_->num_classes; }
size_t Model::num_nodes() const { return plan_->nodes.size(); }
int64_t Model::macs_per_image() const { return plan_->macs; }
int64_t Model::ops_per_image() const { return plan_->ops; }
int64_t Model::peak_activation_bytes(int64_t batch, int num_threads) const {
  // Each thread holds one image's arena and its scratch (image after image, the threads share one arena).
  const Plan& p = *plan_;
  const Plan::RunShape shape = p.run_shape(batch, num_threads);
  if (shape.image_per_thread) return (p.arena_bytes + p.scratch_bytes) * shape.threads;
  return p.arena_bytes + p.scratch_bytes * shape.threads;
}
const char* Model::isa() const { return isa_name(plan_->isa); }

}  // namespace qcnn::runtime
