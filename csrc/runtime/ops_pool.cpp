// Pooling of NHWC codes (docs/FORMAT.md section 5): max and average over kernel/stride/padding windows,
// adaptive and global; the windows are computed once at load.
#include <algorithm>
#include <cstdlib>

#include "core/threads.h"
#include "runtime/plan.h"

namespace qcnn::runtime {

namespace {

// The stored values of `v`: its codes' range less the offset.
InputRange stored_range(const Value& v) { return {v.lo - v.offset, v.hi - v.offset}; }

class PoolStep : public Step {
 public:
  PoolAxis rows, cols;
  bool max = false;
  bool global = false;   // one window, the whole input, no padding: a reduction over the positions
  int64_t pad_code = 0;  // the code of 0, in the divisor's cells beyond the input (average pooling)
  // Row by row of the output, the threads sharing the rows of a large one, each row's fused chain right after it;
  // a global pool as a reduction over blocks of positions that the threads share.
  void run(const Node& n, const Exec& ex, const std::vector<const Node*>& chain) const override {
    const Value &x = ex.value(n.inputs[0]), &y = ex.value(n.output);
    if (global) {
      reduce_begin(n, ex);
      for_each_block(x, ex.threads, [&](int64_t first, int64_t count) { reduce_add(n, ex, first, count); });
      reduce_end(n, ex);
      run_chain(chain, ex, 0, y.count);
      return;
    }
    const int64_t row_values = cols.size() * x.shape[0];
    QCNN_PARALLEL_FOR(ex.threads, ex.threads > 1 && rows.size() > 1 && y.bytes >= kMinSharedPointwiseBytes)
    for (int64_t oy = 0; oy < rows.size(); ++oy) {
      pool_nhwc(ex.plan.isa, ex.in(n.inputs[0]), stored_range(x), x.shape[2], x.shape[0], rows, cols, max, pad_code,
                ex.out(n.output), oy, oy + 1, ex.thread_scratch());
      run_chain(chain, ex, oy * row_values, row_values);
    }
  }

  bool reduces() const override { return global; }
  // Partials: int64 sums, or int32 maxima of the stored values in the first half of the int64 units.
  void reduce_begin(const Node& n, const Exec& ex) const override {
    const int64_t c = ex.value(n.inputs[0]).shape[0];
    for (int slot = 0; slot < ex.scratch.size; ++slot) {
      std::vector<int64_t>& partials = ex.scratch[slot].reduce_partials;
      if (static_cast<int64_t>(partials.size()) < n.partials_offset + c)
        partials.resize(static_cast<size_t>(n.partials_offset + c));
      int64_t* p = partials.data() + n.partials_offset;
      if (max)
        std::fill_n(reinterpret_cast<int32_t*>(p), c, INT32_MIN);
      else
        std::fill_n(p, c, 0);
    }
  }
  void reduce_add(const Node& n, const Exec& ex, int64_t first, int64_t count) const override {
    const int64_t c = ex.value(n.inputs[0]).shape[0];
    int64_t* p = ex.thread_scratch().reduce_partials.data() + n.partials_offset;
    if (max)
      max_positions(ex.plan.isa, ex.in(n.inputs[0], first), count / c, c, reinterpret_cast<int32_t*>(p));
    else
      sum_positions(ex.plan.isa, ex.in(n.inputs[0], first), count / c, c, stored_range(ex.value(n.inputs[0])), p);
  }
  void reduce_end(const Node& n, const Exec& ex) const override {
    const Value& x = ex.value(n.inputs[0]);
    const int64_t c = x.shape[0], cells = x.shape[1] * x.shape[2];
    int64_t* total = ex.scratch[0].reduce_partials.data() + n.partials_offset;
    auto* total_max = reinterpret_cast<int32_t*>(total);
    for (int slot = 1; slot < ex.scratch.size; ++slot) {
      const int64_t* p = ex.scratch[slot].reduce_partials.data() + n.partials_offset;
      for (int64_t ch = 0; ch < c; ++ch)
        if (max)
          total_max[ch] = std::max(total_max[ch], reinterpret_cast<const int32_t*>(p)[ch]);
        else
          total[ch] += p[ch];
    }
    const CodesOut out = ex.out(n.output);
    for (int64_t ch = 0; ch < c; ++ch) {
      const int64_t stored = max ? total_max[ch] : rounded_mean(total[ch], cells);
      if (out.storage == Storage::U8)
        static_cast<uint8_t*>(out.data)[ch] = static_cast<uint8_t>(stored);
      else
        static_cast<int32_t*>(out.data)[ch] = static_cast<int32_t>(stored);
    }
  }
};

// The output of pooling x over the windows of `st`; the average's padding cells hold the input's zero point.
Value pooled(const Value& x, std::unique_ptr<PoolStep> st, Node& node, const std::string& where) {
  Value out = x;
  out.shape = {x.shape[0], st->rows.size(), st->cols.size()};
  bool padded = false;
  for (int64_t i = 0; i < st->rows.size(); ++i) padded |= st->rows.divisor[i] != st->rows.end[i] - st->rows.begin[i];
  for (int64_t i = 0; i < st->cols.size(); ++i) padded |= st->cols.divisor[i] != st->cols.end[i] - st->cols.begin[i];
  if (!st->max && padded && (st->pad_code < x.lo || st->pad_code > x.hi)) {
    // The mean of codes and zero-point padding lies in the hull of both: widen the range, keeping the storage.
    out.lo = std::min(x.lo, st->pad_code);
    out.hi = std::max(x.hi, st->pad_code);
    if (x.storage == Storage::U8 && (out.lo < x.offset || out.hi > int64_t{x.offset} + 255))
      fail(where, "the zero point of the padding lies outside the uint8 range of the input's codes");
  }
  auto max_cells = [](const PoolAxis& a) {
    int64_t n = 0;
    for (int64_t i = 0; i < a.size(); ++i) n = std::max({n, a.end[i] - a.begin[i], a.divisor[i]});
    return n;
  };
  // Every window's cells: the sum of the row windows' heights times that of the column windows' widths, per channel.
  auto cells = [](const PoolAxis& a) {
    int64_t n = 0;
    for (int64_t i = 0; i < a.size(); ++i) n = saturating_add(n, a.end[i] - a.begin[i]);
    return n;
  };
  node.ops = saturating_mul(saturating_mul(cells(st->rows), cells(st->cols)), x.shape[0]);
  // A window's sum of stored values stays within int64 (and the rounded mean's, within 2^62).
  const int64_t largest_window = saturating_mul(max_cells(st->rows), max_cells(st->cols));
  const int64_t largest_stored =
      std::max({std::abs(x.lo - x.offset), std::abs(x.hi - x.offset), std::abs(st->pad_code - x.offset)}) + 1;
  if (!st->max && saturating_mul(saturating_mul(largest_window, largest_stored), 4) >= (int64_t{1} << 62))
    fail(where, "the sum of a pooling window's codes could overflow int64");
  auto whole = [](const PoolAxis& a, int64_t in) {
    return a.size() == 1 && a.begin[0] == 0 && a.end[0] == in && a.divisor[0] == in;
  };
  st->global = whole(st->rows, x.shape[1]) && whole(st->cols, x.shape[2]);
  node.step = std::move(st);
  return out;
}

Value parse_pool(Loader& ld, const json& nd, Node& node, const std::string& where) {
  const Value& x = ld.input(node);
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
  auto st = std::make_unique<PoolStep>();
  st->max = node.op_name == "max_pool2d";
  if (!st->max) st->pad_code = ld.out_zero_point(nd, where);
  try {
    st->rows = pool_axis(x.shape[1], int(kern[0]), int(stride[0]), int(pad[0]), ceil_mode, count_include_pad, "pool");
    st->cols = pool_axis(x.shape[2], int(kern[1]), int(stride[1]), int(pad[1]), ceil_mode, count_include_pad, "pool");
  } catch (const std::invalid_argument& e) {
    fail(where, e.what());
  }
  return pooled(x, std::move(st), node, where);
}

Value parse_adaptive_pool(Loader& ld, const json& nd, Node& node, const std::string& where) {
  const Value& x = ld.input(node);
  if (x.shape.size() != 3) fail(where, "adaptive pooling needs a [C, H, W] input, got " + shape_str(x.shape));
  auto size = get_ints(nd, "output_size", where, 2, 1, kMaxDim);
  auto st = std::make_unique<PoolStep>();
  st->max = node.op_name == "adaptive_max_pool2d";
  try {
    st->rows = adaptive_pool_axis(x.shape[1], size[0], "adaptive pool");
    st->cols = adaptive_pool_axis(x.shape[2], size[1], "adaptive pool");
  } catch (const std::invalid_argument& e) {
    fail(where, e.what());
  }
  return pooled(x, std::move(st), node, where);
}

Value parse_global_pool(Loader& ld, const json&, Node& node, const std::string& where) {
  const Value& x = ld.input(node);
  if (x.shape.size() != 3) fail(where, "global pooling needs a [C, H, W] input, got " + shape_str(x.shape));
  auto st = std::make_unique<PoolStep>();
  st->max = node.op_name == "global_max_pool";
  st->rows = adaptive_pool_axis(x.shape[1], 1, "global pool");
  st->cols = adaptive_pool_axis(x.shape[2], 1, "global pool");
  return pooled(x, std::move(st), node, where);
}

}  // namespace

const std::vector<OpSpec>& pool_ops() {
  static const std::vector<OpSpec> ops = {
      {"max_pool2d", 1, 1, parse_pool},          {"avg_pool2d", 1, 1, parse_pool},
      {"adaptive_max_pool2d", 1, 1, parse_adaptive_pool}, {"adaptive_avg_pool2d", 1, 1, parse_adaptive_pool},
      {"global_max_pool", 1, 1, parse_global_pool},       {"global_avg_pool", 1, 1, parse_global_pool}};
  return ops;
}

}  // namespace qcnn::runtime
