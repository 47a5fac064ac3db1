// The AVX-512 VNNI depthwise kernel (core/depthwise.h) and the double-precision requantization (qgemm.cpp
// epilogue_f64) against the scalar path, bit for bit, on random geometries; the raw accumulators against their
// definition; the tile hook's contract.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "core/depthwise.h"
#include "core/isa.h"
#include "core/qgemm.h"
#include "tile_sinks.h"

using namespace qcnn;

namespace {

struct DepthwiseCase {
  ConvGeom g;
  std::vector<uint8_t> x;  // NHWC codes
  int32_t x_sub = 0;
  std::vector<int16_t> w;  // [C][kh * kw]
  ConvEpilogue epi;
};

// Channels 2 to 200 (and now and then 960), kernels 1x1 to 7x7, strides 1 to 3, dilation 1 or 2, padding 0 to 3,
// weights drawn from the int8 extremes as often as from the range between. Two trials in five take the 3x3 kernel's
// own loop (dilation 1 in x, stride 1 or 2 in x), one in five the 5x5 kernel's.
DepthwiseCase random_depthwise(std::mt19937& rng) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  DepthwiseCase t;
  const int64_t c = pick(0, 9) == 0 ? 960 : pick(0, 3) == 0 ? 16 * pick(1, 8) : pick(2, 200);  // 1: a dense conv
  const int kind = pick(0, 4);  // 0, 1: 3x3; 2: 5x5; else any
  const int kh = kind < 2 ? 3 : kind == 2 ? 5 : pick(1, 7), kw = kind < 2 ? 3 : kind == 2 ? 5 : pick(1, 7);
  const int dh = pick(1, 2), dw = kind < 2 ? 1 : pick(1, 2), sw = kind < 2 ? pick(1, 2) : pick(1, 3);
  const int64_t h = pick(dh * (kh - 1) + 1, dh * (kh - 1) + (c > 200 ? 4 : 12));
  const int64_t w = pick(dw * (kw - 1) + 1, dw * (kw - 1) + (c > 200 ? 4 : 12));
  t.g = make_conv_geom(h, w, c, c, c, kh, kw, pick(1, 3), sw, pick(0, std::min(3, kh)), pick(0, std::min(3, kw)), dh,
                       dw);
  t.x.resize(static_cast<size_t>(h * w * c));
  const int x_spread = pick(0, 2) == 0 ? 0 : 255;  // constant images as well
  const int x_base = pick(0, 255 - x_spread);
  for (auto& v : t.x) v = static_cast<uint8_t>(x_base + pick(0, x_spread));
  const int sub_kind = pick(0, 3);
  t.x_sub = sub_kind == 0 ? 0 : sub_kind == 1 ? 255 : pick(0, 255);
  t.w.resize(static_cast<size_t>(c * t.g.k()));
  for (auto& v : t.w) {
    const int kind = pick(0, 3);
    v = static_cast<int16_t>(kind == 0 ? -128 : kind == 1 ? 127 : pick(-128, 127));
  }
  for (int64_t i = 0; i < c; ++i) {
    t.epi.multiplier.push_back(pick(-(1 << 30), 1 << 30));
    t.epi.shift.push_back(pick(22, 45));
    t.epi.bias.push_back(static_cast<int64_t>(pick(-(1 << 30), 1 << 30)) * (int64_t{1} << pick(0, 16)));
  }
  t.epi.zero_point = pick(-20, 20);
  t.epi.lo = pick(-40, 0);
  t.epi.hi = t.epi.lo + 255;
  t.epi.store_offset = t.epi.lo;
  return t;
}

template <typename Out>
std::vector<Out> run_conv(const DepthwiseCase& t, Isa isa, Storage storage, int threads, InputRange range) {
  const PackedConv pc = pack_conv(t.g, t.w.data(), t.epi, isa, range);
  std::vector<Out> out(static_cast<size_t>(t.g.positions() * t.g.m));
  conv_image(pc, t.x.data(), Storage::U8, t.x_sub, out.data(), storage, threads);
  return out;
}

// acc[p][c] by its definition: the taps inside the image, (x - x_sub) * w.
std::vector<int32_t> direct_accumulators(const DepthwiseCase& t) {
  const ConvGeom& g = t.g;
  std::vector<int32_t> acc(static_cast<size_t>(g.positions() * g.c), 0);
  for (int64_t oy = 0; oy < g.oh; ++oy)
    for (int64_t ox = 0; ox < g.ow; ++ox)
      for (int ky = 0; ky < g.kh; ++ky)
        for (int kx = 0; kx < g.kw; ++kx) {
          const int64_t iy = oy * g.sh - g.ph + int64_t{ky} * g.dh, ix = ox * g.sw - g.pw + int64_t{kx} * g.dw;
          if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
          for (int64_t c = 0; c < g.c; ++c)
            acc[static_cast<size_t>((oy * g.ow + ox) * g.c + c)] +=
                (int32_t{t.x[static_cast<size_t>((iy * g.w + ix) * g.c + c)]} - t.x_sub) *
                t.w[static_cast<size_t>(c * g.k() + ky * g.kw + kx)];
        }
  return acc;
}

std::vector<Isa> avx512_isas() {
  std::vector<Isa> isas;
  for (Isa isa : kAllIsas)
    if (has_avx512(isa) && isa_supported(isa)) isas.push_back(isa);
  if (isas.empty()) WARN("no AVX-512 VNNI on this CPU: the depthwise VNNI kernel is not tested here");
  return isas;
}

}  // namespace

TEST_CASE("depthwise VNNI kernel equals the scalar path bit for bit", "[qgemm][depthwise]") {
  std::mt19937 rng(23);
  for (Isa isa : avx512_isas()) {
    int f64_trials = 0;
    for (int trial = 0; trial < 300; ++trial) {
      DepthwiseCase t = random_depthwise(rng);
      const bool ranged = trial % 2 == 0;  // the proven range: the double-precision requantization where it is exact
      const InputRange range = ranged ? InputRange{-t.x_sub, 255 - t.x_sub} : InputRange{};
      const int threads = 1 + trial % 2;
      const PackedConv pc = pack_conv(t.g, t.w.data(), t.epi, isa, range);
      INFO("isa " << isa_name(isa) << " trial " << trial << " h=" << t.g.h << " w=" << t.g.w << " c=" << t.g.c
                  << " k=" << t.g.kh << "x" << t.g.kw << " stride " << t.g.sh << "x" << t.g.sw << " dilation "
                  << t.g.dh << "x" << t.g.dw << " pad " << t.g.ph << "x" << t.g.pw << " x_sub " << t.x_sub
                  << " ranged " << ranged << " f64 " << !pc.requant_scale.empty());
      REQUIRE(conv_kernel_name(pc) == "depthwise");
      REQUIRE(!pc.dw_quads.empty());
      CHECK(pc.dw_pairs.empty());
      if (!ranged) CHECK(pc.requant_scale.empty());
      f64_trials += !pc.requant_scale.empty();
      CHECK(run_conv<uint8_t>(t, isa, Storage::U8, threads, range) ==
            run_conv<uint8_t>(t, Isa::Scalar, Storage::U8, 1, range));
      CHECK(run_conv<int32_t>(t, isa, Storage::I32, threads, range) ==
            run_conv<int32_t>(t, Isa::Scalar, Storage::I32, 1, range));
      if (trial % 5 == 0) {  // the float logits read the same accumulators
        DepthwiseCase f = t;
        f.epi.float_output = true;
        for (int64_t i = 0; i < t.g.c; ++i) {
          f.epi.scale.push_back(std::uniform_real_distribution<float>(-1e-3f, 1e-3f)(rng));
          f.epi.float_bias.push_back(std::uniform_real_distribution<float>(-1, 1)(rng));
        }
        CHECK(run_conv<float>(f, isa, Storage::F32, threads, range) ==
              run_conv<float>(f, Isa::Scalar, Storage::F32, 1, range));
      }
    }
    CHECK(f64_trials >= 30);  // the double-precision requantization was exercised
  }
}

// Multiplier 1, shift 0, bias 0 and an int32 output: the stored codes are the accumulators themselves (through
// the double-precision requantization, exact at shift 0 too), and depthwise_accumulate over arbitrary position
// ranges, partial rows included, writes the same values.
TEST_CASE("depthwise VNNI accumulators equal their definition", "[qgemm][depthwise]") {
  std::mt19937 rng(29);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  for (Isa isa : avx512_isas())
    for (int trial = 0; trial < 100; ++trial) {
      DepthwiseCase t = random_depthwise(rng);
      const int64_t c = t.g.c;
      t.epi.multiplier.assign(static_cast<size_t>(c), 1);
      t.epi.shift.assign(static_cast<size_t>(c), 0);
      t.epi.bias.assign(static_cast<size_t>(c), 0);
      t.epi.zero_point = 0;
      t.epi.lo = INT32_MIN;
      t.epi.hi = INT32_MAX;
      t.epi.store_offset = 0;
      const InputRange range{-t.x_sub, 255 - t.x_sub};
      const PackedConv pc = pack_conv(t.g, t.w.data(), t.epi, isa, range);
      INFO("isa " << isa_name(isa) << " trial " << trial << " c=" << c << " k=" << t.g.kh << "x" << t.g.kw
                  << " stride " << t.g.sh << "x" << t.g.sw << " dilation " << t.g.dh << "x" << t.g.dw);
      const std::vector<int32_t> want = direct_accumulators(t);
      CHECK(!pc.requant_scale.empty());
      CHECK(run_conv<int32_t>(t, isa, Storage::I32, 1 + trial % 2, range) == want);
      const int64_t positions = t.g.positions(), ldc = (c + 15) / 16 * 16;
      std::vector<uint8_t> scratch;
      for (int range_trial = 0; range_trial < 4; ++range_trial) {
        const int64_t p0 = pick(0, positions - 1), rows = pick(1, positions - p0);
        std::vector<int32_t> acc(static_cast<size_t>(rows * ldc), -7);
        depthwise_accumulate(pc, t.x.data(), t.x_sub, p0, rows, acc.data(), ldc, scratch);
        bool same = true;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t ch = 0; ch < c; ++ch)
            same = same && acc[static_cast<size_t>(r * ldc + ch)] == want[static_cast<size_t>((p0 + r) * c + ch)];
        INFO("positions [" << p0 << ", " << p0 + rows << ")");
        CHECK(same);
      }
    }
}

TEST_CASE("depthwise VNNI kernel is chosen only where it runs", "[qgemm][depthwise]") {
  const ConvGeom g = make_conv_geom(9, 9, 40, 40, 40, 3, 3, 1, 1, 1, 1, 1, 1);
  std::vector<int16_t> w(static_cast<size_t>(40 * 9), 5);
  ConvEpilogue epi;
  epi.multiplier.assign(40, 1 << 20);
  epi.shift.assign(40, 30);
  epi.bias.assign(40, 0);
  epi.lo = 0;
  epi.hi = 255;
#if defined(__x86_64__) || defined(_M_X64)
  constexpr bool kX86 = true;
#else
  constexpr bool kX86 = false;  // no VNNI kernel compiled
#endif
  for (Isa isa : kAllIsas) {
    INFO("isa " << isa_name(isa));
    CHECK(pack_conv(g, w.data(), epi, isa).dw_quads.empty() == !(kX86 && has_avx512(isa)));
    w[17] = 128;  // past int8: the AVX2 kernel on every x86 vector path
    const PackedConv wide = pack_conv(g, w.data(), epi, isa);
    CHECK(wide.dw_quads.empty());
    CHECK(wide.dw_pairs.empty() == !has_avx2(isa));
    w[17] = 5;
  }
  const ConvGeom dense = make_conv_geom(9, 9, 40, 40, 1, 3, 3, 1, 1, 1, 1, 1, 1);
  std::vector<int16_t> dense_w(static_cast<size_t>(40 * 40 * 9), 1);
  CHECK(pack_conv(dense, dense_w.data(), epi, Isa::Avx512Vnni).dw_quads.empty());  // not depthwise
  // The double-precision requantization needs the proven range and its bound.
  CHECK(pack_conv(g, w.data(), epi, Isa::Avx512Vnni).requant_scale.empty());
  if (kX86) CHECK(!pack_conv(g, w.data(), epi, Isa::Avx512Vnni, {-128, 127}).requant_scale.empty());
  CHECK(pack_conv(g, w.data(), epi, Isa::Avx2, {-128, 127}).requant_scale.empty());
  epi.bias[3] = int64_t{1} << 52;
  CHECK(pack_conv(g, w.data(), epi, Isa::Avx512Vnni, {-128, 127}).requant_scale.empty());
}

// The engine's TileSink: tiles of output positions in order on each thread, covering every position once, each
// called after its outputs are final.
TEST_CASE("depthwise VNNI tiles keep the TileSink contract", "[qgemm][depthwise]") {
  std::mt19937 rng(31);
  for (Isa isa : avx512_isas())
    for (int trial = 0; trial < 20; ++trial) {
      DepthwiseCase t = random_depthwise(rng);
      const PackedConv pc = pack_conv(t.g, t.w.data(), t.epi, isa);
      const std::vector<uint8_t> want = run_conv<uint8_t>(t, Isa::Scalar, Storage::U8, 1, {});
      std::vector<uint8_t> out(want.size(), 0);
      // per position (tiles are disjoint): how often a hook covered it, and whether its outputs were final then
      std::vector<int> seen(static_cast<size_t>(t.g.positions()), 0), final_at_hook(seen.size(), 0);
      const int64_t m = t.g.m;
      auto check = done_sink([&](int64_t first, int64_t count) {
        for (int64_t p = first; p < first + count; ++p) {
          ++seen[static_cast<size_t>(p)];
          final_at_hook[static_cast<size_t>(p)] = std::equal(out.begin() + p * m, out.begin() + (p + 1) * m,
                                                             want.begin() + p * m);
        }
      });
      conv_image(pc, t.x.data(), Storage::U8, t.x_sub, out.data(), Storage::U8, 1 + trial % 2, &check);
      INFO("trial " << trial << " positions " << t.g.positions() << " tile " << depthwise_tile_rows(pc));
      CHECK(std::all_of(final_at_hook.begin(), final_at_hook.end(), [](int ok) { return ok == 1; }));
      CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
      CHECK(out == want);
      std::fill(out.begin(), out.end(), uint8_t{0});
      CopySink sink(out.data(), t.g.m, conv_max_tile_positions(pc));  // every tile into a buffer of its own
      conv_image(pc, t.x.data(), Storage::U8, t.x_sub, nullptr, Storage::U8, 1 + trial % 2, &sink);
      CHECK(out == want);
      CHECK(!sink.broke);
    }
}
