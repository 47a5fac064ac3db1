// The engine's execution plan and its op table (internal to csrc/runtime).
//
// Every op of the file format is one OpSpec: its name, how many inputs it takes, and a parser that checks
// the node's fields against its inputs, pre-computes what the node needs (packed weights, tables) into a
// Step, and returns the output value. A Step runs the node. The specs live with their op family, one file
// each (ops_conv.cpp, ops_eltwise.cpp, ops_pool.cpp, ops_layout.cpp); model.cpp reads the file, plans
// fusion and memory, and runs. Adding an op: a Step subclass, a parser and one line in its family's list.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/isa.h"
#include "core/qgemm.h"
#include "core/requant.h"
#include "core/threads.h"
#include "runtime/fields.h"
#include "runtime/model.h"

namespace qcnn::runtime {

// One value of the program, as the engine stores it for one image.
struct Value {
  std::vector<int64_t> shape;      // as declared, without the batch dimension ([C, H, W] or [F])
  int64_t lo = 0, hi = 0;          // range of its codes
  Storage storage = Storage::I32;  // F32 only for the logits of the last node
  int32_t offset = 0;              // code = stored + offset
  // A [F] value made by flatten of [C, H, W] with H * W > 1 keeps the NHWC element order (h, w, c):
  // the linear layer reading it permutes its weight columns once at load instead.
  std::vector<int64_t> hwc_source;
  int64_t count = 0;  // elements per image
  int64_t bytes = 0;  // per image
  int64_t arena_offset = 0;
  // A value that only the nodes fused into the step that writes it read lives in tiles, never whole: at this
  // offset of the running thread's tile scratch (Exec::at_tile); -1 for a value in the arena.
  int64_t tile_offset = -1;

  bool is_float() const { return storage == Storage::F32; }
  int element_bytes() const { return storage == Storage::U8 ? 1 : 4; }
  // Elements per position: the channels of an NHWC [C, H, W] value, all of a [F] one. Pointwise steps run
  // on whole positions, so per-channel parameters line up with the element index.
  int64_t period() const { return shape.empty() ? 1 : (shape.size() == 3 ? shape[0] : count); }
};

// `v` with its codes in [lo, hi]: stored as uint8 when 256 values cover the range, else int32.
Value with_range(Value v, int64_t lo, int64_t hi);

struct Plan;
struct Node;

// What running one node of one image needs.
struct Exec {
  const Plan& plan;
  uint8_t* arena;
  float* logits;
  int threads;
  // The kernels' scratch and the fused chains' tile buffers of the threads sharing the image, a slot each (slot 0 the
  // thread that runs the image, at parallel_level() == base_level).
  ScratchTeam scratch;
  std::vector<uint8_t>* tile_buffers;
  int base_level;
  // Inside a step's tile (at_tile): the running thread's tile scratch and the tile's first element.
  uint8_t* tile = nullptr;
  int64_t tile_first = 0;

  // The running thread's kernel scratch.
  ThreadScratch& thread_scratch() const { return scratch[team_slot(base_level)]; }
  const Value& value(int id) const;
  // The codes of value `id` from element `first` on (a tile value: `first` inside the current tile).
  CodesIn in(int id, int64_t first = 0) const;
  CodesOut out(int id, int64_t first = 0) const;
  // This Exec inside the tile that starts at element `first`.
  Exec at_tile(int64_t first) const;
};

class Step {
 public:
  virtual ~Step() = default;
  // The whole node for one image; `chain` are the pointwise nodes fused after it (run on each tile it produces).
  virtual void run(const Node& node, const Exec& ex, const std::vector<const Node*>& chain) const = 0;
  // Pointwise steps: output element i depends on element i of the inputs only (a [C, 1, 1] operand broadcast
  // over the positions and per-channel parameters aside), so they run on any range of whole positions and
  // fuse after the node that produces their input.
  virtual bool pointwise() const { return false; }
  // Elements [first, first + count) of the output, first and count multiples of the output's period().
  virtual void run_elements(const Node&, const Exec&, int64_t /*first*/, int64_t /*count*/) const {}
  // Reductions over the positions (global pooling): they fuse after the step that writes their input, reading each
  // of its tiles while it is in cache. reduce_begin() before that step runs, reduce_add() on each tile (input
  // elements [first, first + count), whole positions, on whichever thread wrote the tile) into the running thread's
  // partials (ThreadScratch::reduce_partials from Node::partials_offset), reduce_end() after it: the output.
  virtual bool reduces() const { return false; }
  virtual void reduce_begin(const Node&, const Exec&) const {}
  virtual void reduce_add(const Node&, const Exec&, int64_t /*first*/, int64_t /*count*/) const {}
  virtual void reduce_end(const Node&, const Exec&) const {}
  // Convolutions: the kernel chosen at load, their per-thread scratch.
  virtual std::string kernel() const { return {}; }
  virtual int64_t scratch_bytes() const { return 0; }
  // The most elements of `out`, the step's output, one tile of its fused chain covers; whether the step writes its
  // output tile by tile into a buffer it is given (so that it can live in tiles). Pointwise steps and convolutions
  // do; the others write their output whole and run the chain after it in blocks.
  virtual int64_t max_tile_elements(const Value& out) const;
  virtual bool writes_tiles() const { return pointwise(); }
};

// Runs `chain` on elements [first, first + count), one tile of its step (each node reads what the one before wrote).
void run_chain(const std::vector<const Node*>& chain, const Exec& ex, int64_t first, int64_t count);
// Calls fn(first, count) over the elements of `v` in blocks of whole positions that stay in L1, the blocks
// shared by the threads where `v` is large enough to pay for it.
void for_each_block(const Value& v, int threads, const std::function<void(int64_t, int64_t)>& fn);
// The elements of one such block at most.
int64_t block_elements(const Value& v);
// Below this many bytes of output the threads do not share a node that is not a convolution.
constexpr int64_t kMinSharedPointwiseBytes = int64_t{1} << 16;
// `chain` over the whole of value `value` (just written by a step that does not tile), block by block.
void run_chain_after(const std::vector<const Node*>& chain, const Exec& ex, int value);

// A pointwise step's run: itself and its chain in blocks of positions, the blocks shared by the threads
// where the tensor is large enough.
class PointwiseStep : public Step {
 public:
  void run(const Node& node, const Exec& ex, const std::vector<const Node*>& chain) const override;
  bool pointwise() const override { return true; }
};

struct Node {
  std::string name, op_name;
  std::vector<int> inputs;
  int output = 0;
  int64_t macs = 0;
  // Element operations per image beyond reading the inputs and writing the output, set by the parser: the cells of
  // pooling windows, a convolution's padded image (the loader adds the inputs' and the output's elements).
  int64_t ops = 0;
  std::unique_ptr<const Step> step;
  // Fusion (model.cpp plan_fusion): the pointwise nodes that run inside this node's tiles, and for those the
  // index of the node they run in (-1: runs itself).
  std::vector<const Node*> chain;
  int fused_into = -1;
  // A reduction: where its partials start in each thread's ThreadScratch::reduce_partials (int64 units; several
  // reductions fused into one step sit side by side).
  int64_t partials_offset = 0;
};

// The workspace of one run: per thread an arena (one image's activations), the kernels' scratch and the fused
// chains' tile buffers.
struct RunSpace {
  std::vector<std::vector<uint8_t>> arenas, tile_buffers;
  std::vector<ThreadScratch> scratch;
};

struct Plan {
  Isa isa = Isa::Scalar;
  bool checked = false;  // loaded for count_overflows
  bool fused = true;
  std::vector<int64_t> input_shape;
  std::vector<int32_t> lut;   // [C, 256] codes
  std::vector<Value> values;  // 0 = the input codes
  std::vector<Node> nodes;
  int64_t num_classes = 0, macs = 0, ops = 0, arena_bytes = 0;
  int64_t scratch_bytes = 0;  // per thread: the largest convolution's panel, accumulators and padded image
  int64_t tile_scratch_bytes = 0;  // per thread: the tile values of the largest step (Value::tile_offset)
  int64_t partials_bytes = 0;      // per thread: the partials of the reductions of the largest step

  int64_t memory_budget = 0;  // bytes of workspace a run may hold (LoadOptions::max_activation_bytes_per_image)

  // How a run of n images on `requested` threads (<= 0: the OpenMP default) goes: a whole image per thread where n
  // fills the threads and their workspaces fit the memory budget, else image after image, shared by as many
  // threads as the budget holds scratch for.
  struct RunShape {
    int threads;
    bool image_per_thread;
  };
  RunShape run_shape(int64_t n, int requested) const;
  // One image (arena: its activations) shared by the threads of `scratch`, a slot each (tile_buffers: as many).
  void run_image(const uint8_t* pixels, uint8_t* arena, float* logits, const ScratchTeam& scratch,
                 std::vector<uint8_t>* tile_buffers, std::vector<double>* node_seconds,
                 int64_t* overflows = nullptr) const;

  // The workspaces of finished runs, kept for the next ones and freed with the plan (RunSpace, model.cpp).
  mutable std::mutex spare_mutex;
  mutable std::vector<std::unique_ptr<RunSpace>> spare_spaces;
};

// Everything the parsers of the nodes share.
struct Loader {
  const SafetensorsFile& file;
  Plan& plan;
  std::map<std::string, int> value_ids;
  std::string origin;
  bool keep_checked_weights = false;

  std::string tensor_where(const std::string& name) const { return origin + ": tensor '" + printable(name) + "'"; }
  const Value& input(const Node& n, size_t i = 0) const { return plan.values[n.inputs[i]]; }
  std::pair<int32_t, int32_t> read_clamp(const json& nd, const std::string& where) const;
  // A code table (the input's pixel table, a lut node's) read from tensor `name` as int32, every entry
  // inside the [qmin, qmax] of the quantizer `q` it claims to produce.
  std::vector<int32_t> code_table(const std::string& name, const std::vector<int64_t>& shape, const json& q,
                                  const std::string& where) const;
  int32_t out_zero_point(const json& nd, const std::string& where) const;
};

// One op of the file format (docs/FORMAT.md section 5).
struct OpSpec {
  const char* name;
  size_t min_inputs, max_inputs;
  // Checks the node against its inputs, sets node.step (and node.macs), returns the output value.
  Value (*parse)(Loader& ld, const json& nd, Node& node, const std::string& where);
};

// The op families.
const std::vector<OpSpec>& conv_ops();      // conv2d, linear
const std::vector<OpSpec>& eltwise_ops();   // requantize, affine, add, mul, relu, lut
const std::vector<OpSpec>& pool_ops();      // max / average, adaptive, global pooling
const std::vector<OpSpec>& layout_ops();    // concat, gather_channels, flatten, dequantize

// Convolutions and linear layers: what the checked path (count_overflows) reads of them.
struct ConvLayer {
  const PackedConv* packed;
  int32_t x_sub;
  int accumulator_bits;
  const std::vector<int16_t>* checked_weights;
};
// The node's convolution, or nullopt-like {nullptr} for another op.
ConvLayer conv_layer(const Node& node);

}  // namespace qcnn::runtime
