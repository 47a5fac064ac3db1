// The implicit-GEMM convolution: every ISA path against a direct reference on random shapes.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/isa.h"
#include "core/qgemm.h"
#include "core/qgemm_amx.h"
#include "core/requant.h"
#include "tile_sinks.h"

using namespace qcnn;

namespace {

struct Case {
  ConvGeom g;
  std::vector<uint8_t> x;       // NHWC stored codes
  int32_t x_sub = 0;
  std::vector<int16_t> w;       // [M][K], (ky, kx, c) per group
  ConvEpilogue epi;
};

Case random_case(std::mt19937& rng, bool float_output) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Case t;
  const int kind = pick(0, 5);  // 0: grouped, 1: depthwise, else dense
  const int groups = kind == 0 ? pick(2, 3) : kind == 1 ? pick(2, 40) : 1;
  const int64_t cg = kind == 1 ? 1 : pick(1, 21), mg = kind == 1 ? 1 : pick(1, 29);
  const int kh = pick(1, 4), kw = pick(1, 4), sh = pick(1, 2), sw = pick(1, 2);
  const int dh = pick(0, 4) == 0 ? 2 : 1, dw = dh;
  const int ph = pick(0, kh / 2 + 1), pw = pick(0, kw / 2 + 1);
  const int64_t h = pick(dh * (kh - 1) + 1, 11), w = pick(dw * (kw - 1) + 1, 13);
  t.g = make_conv_geom(h, w, cg * groups, mg * groups, groups, kh, kw, sh, sw, ph, pw, dh, dw);
  t.x.resize(static_cast<size_t>(h * w * t.g.c));
  for (auto& v : t.x) v = static_cast<uint8_t>(pick(0, 255));
  t.x_sub = pick(0, 255);
  t.w.resize(static_cast<size_t>(t.g.m * t.g.k()));
  const int wmax = pick(0, 1) ? 127 : 3000;
  for (auto& v : t.w) v = static_cast<int16_t>(pick(-wmax, wmax));
  const int64_t m = t.g.m;
  t.epi.float_output = float_output;
  if (float_output) {
    for (int64_t i = 0; i < m; ++i) {
      t.epi.scale.push_back(std::uniform_real_distribution<float>(-1e-3f, 1e-3f)(rng));
      t.epi.float_bias.push_back(std::uniform_real_distribution<float>(-1, 1)(rng));
    }
  } else {
    for (int64_t i = 0; i < m; ++i) {
      t.epi.multiplier.push_back(pick(-(1 << 30), 1 << 30));
      t.epi.shift.push_back(pick(20, 45));
      t.epi.bias.push_back(static_cast<int64_t>(pick(-(1 << 30), 1 << 30)) << pick(0, 20));
    }
    t.epi.zero_point = pick(-20, 20);
    t.epi.lo = pick(-40, 0);
    t.epi.hi = t.epi.lo + 255;
    t.epi.store_offset = t.epi.lo;
  }
  return t;
}

// Direct convolution with int64 sums and the epilogue written from docs/FORMAT.md.
std::vector<double> reference(const Case& t) {
  const ConvGeom& g = t.g;
  std::vector<double> out(static_cast<size_t>(g.positions() * g.m));
  for (int64_t oy = 0; oy < g.oh; ++oy)
    for (int64_t ox = 0; ox < g.ow; ++ox)
      for (int64_t o = 0; o < g.m; ++o) {
        const int64_t grp = o / g.mg();
        int64_t acc = 0;
        for (int ky = 0; ky < g.kh; ++ky)
          for (int kx = 0; kx < g.kw; ++kx)
            for (int64_t c = 0; c < g.cg(); ++c) {
              const int64_t iy = oy * g.sh - g.ph + ky * g.dh, ix = ox * g.sw - g.pw + kx * g.dw;
              if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
              const int64_t xv = int64_t{t.x[(iy * g.w + ix) * g.c + grp * g.cg() + c]} - t.x_sub;
              acc += xv * t.w[o * g.k() + (ky * g.kw + kx) * g.cg() + c];
            }
        double& dst = out[(oy * g.ow + ox) * g.m + o];
        if (t.epi.float_output) {
          dst = std::fma(static_cast<float>(acc), t.epi.scale[o], t.epi.float_bias[o]);
        } else {
          const int64_t q = rounding_shift(acc * t.epi.multiplier[o] + t.epi.bias[o], t.epi.shift[o]) + t.epi.zero_point;
          dst = static_cast<double>(std::clamp<int64_t>(q, t.epi.lo, t.epi.hi) - t.epi.store_offset);
        }
      }
  return out;
}

// int32_input: the same codes stored as int32 with an offset of -1000 (the engine's wide values). tile_buffers:
// every tile into a buffer of its own (CopySink), as the engine runs a conv whose output lives only in its tiles.
template <typename Out>
std::vector<double> run(const Case& t, Isa isa, Storage storage, int threads, bool int32_input = false,
                        InputRange range = {}, int expect_act_bits = 0, bool tile_buffers = false) {
  PackedConv pc = pack_conv(t.g, t.w.data(), t.epi, isa, range);
  REQUIRE(pc.bits.act_bits == expect_act_bits);
  std::vector<Out> out(static_cast<size_t>(t.g.positions() * t.g.m));
  CopySink sink(out.data(), t.g.m * static_cast<int64_t>(sizeof(Out)), conv_max_tile_positions(pc));
  void* dst = tile_buffers ? nullptr : out.data();
  TileSink* tiles = tile_buffers ? &sink : nullptr;
  if (int32_input) {
    std::vector<int32_t> wide(t.x.begin(), t.x.end());
    for (auto& v : wide) v += 1000;
    conv_image(pc, wide.data(), Storage::I32, t.x_sub + 1000, dst, storage, threads, tiles);
  } else {
    conv_image(pc, t.x.data(), Storage::U8, t.x_sub, dst, storage, threads, tiles);
  }
  CHECK(!sink.broke);
  return std::vector<double>(out.begin(), out.end());
}

}  // namespace

TEST_CASE("implicit-GEMM conv: every ISA path equals the direct reference", "[qgemm]") {
  std::mt19937 rng(7);
  for (Isa isa : kAllIsas) {
    if (!isa_supported(isa)) {
      WARN("ISA " << isa_name(isa) << " is not supported by this CPU: not tested here");
      continue;
    }
    for (int trial = 0; trial < 200; ++trial) {
      const bool float_output = trial % 3 == 0;
      Case t = random_case(rng, float_output);
      // Some trials have few output codes and pass the input range: the AVX2 threshold epilogue.
      const bool few_codes = !float_output && trial % 4 == 1;
      InputRange range;
      if (few_codes) {
        t.epi.hi = t.epi.lo + std::uniform_int_distribution<int>(0, kMaxThresholdLevels - 1)(rng);
        t.epi.zero_point = std::uniform_int_distribution<int>(t.epi.lo, t.epi.hi)(rng);
        for (size_t i = 0; i < t.epi.shift.size(); ++i) {  // outputs that spread over the codes
          t.epi.shift[i] = std::uniform_int_distribution<int>(28, 34)(rng);
          t.epi.multiplier[i] = std::uniform_int_distribution<int>(-(1 << 16), 1 << 16)(rng);
          t.epi.bias[i] = std::uniform_int_distribution<int64_t>(-(int64_t{1} << 32), int64_t{1} << 32)(rng);
        }
        range = {-t.x_sub, 255 - t.x_sub};
      } else if (trial % 4 == 2) {  // the range uint8 codes prove: the VNNI GEMM where the weights are int8
        range = {-t.x_sub, 255 - t.x_sub};
      }
      INFO("isa " << isa_name(isa) << " trial " << trial << " h=" << t.g.h << " w=" << t.g.w << " c=" << t.g.c
                  << " m=" << t.g.m << " groups=" << t.g.groups << " k=" << t.g.kh << "x" << t.g.kw
                  << " few codes " << few_codes);
      const auto want = reference(t);
      const int threads = trial % 2 ? 2 : 1;
      if (float_output) {
        CHECK(run<float>(t, isa, Storage::F32, threads) == want);
      } else {
        CHECK(run<uint8_t>(t, isa, Storage::U8, threads, false, range) == want);
        CHECK(run<int32_t>(t, isa, Storage::I32, threads, false, range) == want);
        CHECK(run<uint8_t>(t, isa, Storage::U8, threads, true, range) == want);
        CHECK(run<int32_t>(t, isa, Storage::I32, threads, false, range, 0, true) == want);
      }
    }
  }
}

// A layer with one tile (a linear layer at batch 1): the threads share its column steps. Wide layers of few positions
// against the reference on every path, at 1 to 3 threads, uint8, int32 and float outputs.
TEST_CASE("one-tile layers share their output channels between threads", "[qgemm]") {
  std::mt19937 rng(21);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  for (Isa isa : kAllIsas) {
    if (!isa_supported(isa)) continue;
    for (int trial = 0; trial < 24; ++trial) {
      Case t = random_case(rng, trial % 3 == 0);
      const int64_t side = pick(1, 2), c = pick(1, 300), m = pick(65, 400);
      t.g = make_conv_geom(side, side, c, m, 1, 1, 1, 1, 1, 0, 0, 1, 1);
      t.x.resize(static_cast<size_t>(side * side * c));
      for (auto& v : t.x) v = static_cast<uint8_t>(pick(0, 255));
      t.w.resize(static_cast<size_t>(m * c));
      for (auto& v : t.w) v = static_cast<int16_t>(pick(-127, 127));
      t.epi.multiplier.resize(static_cast<size_t>(m), t.epi.multiplier.empty() ? 0 : t.epi.multiplier[0]);
      t.epi.shift.resize(static_cast<size_t>(m), t.epi.shift.empty() ? 30 : t.epi.shift[0]);
      t.epi.bias.resize(static_cast<size_t>(m), 0);
      t.epi.scale.resize(t.epi.float_output ? static_cast<size_t>(m) : 0, 1e-4f);
      t.epi.float_bias.resize(t.epi.float_output ? static_cast<size_t>(m) : 0, 0.5f);
      const InputRange range{-t.x_sub, 255 - t.x_sub};
      const auto want = reference(t);
      for (int threads = 1; threads <= 3; ++threads) {
        INFO("isa " << isa_name(isa) << " trial " << trial << " c=" << c << " m=" << m << " threads " << threads);
        if (t.epi.float_output) {
          CHECK(run<float>(t, isa, Storage::F32, threads, false, range) == want);
        } else {
          CHECK(run<uint8_t>(t, isa, Storage::U8, threads, false, range) == want);
          CHECK(run<int32_t>(t, isa, Storage::I32, threads, false, range, 0, true) == want);
        }
      }
    }
  }
}

// Depthwise with the channel counts of real nets (16- and 8-channel steps and a tail), every tap pattern at
// the borders, and weights large enough that the AVX2 kernel's int32 bound sends a layer to the scalar loop.
TEST_CASE("depthwise conv: every ISA path equals the direct reference", "[qgemm][depthwise]") {
  std::mt19937 rng(11);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int trial = 0; trial < 60; ++trial) {
    Case t;
    const int64_t c = trial < 4 ? 24 * (trial + 1) : pick(1, 90);
    const bool wide = trial == 5;  // 144 taps of |w| near 2^15: past the AVX2 kernel's bound
    const int kh = wide ? 12 : pick(1, 5), kw = wide ? 12 : pick(1, 5), s = pick(1, 2);
    const int dil = !wide && pick(0, 3) == 0 ? 2 : 1;
    const int64_t h = pick(dil * (kh - 1) + 1, dil * (kh - 1) + 5), w = pick(dil * (kw - 1) + 1, dil * (kw - 1) + 5);
    t.g = make_conv_geom(h, w, c, c, c, kh, kw, s, s, pick(0, kh), pick(0, kw), dil, dil);
    t.x.resize(static_cast<size_t>(h * w * c));
    for (auto& v : t.x) v = static_cast<uint8_t>(pick(0, 255));
    t.x_sub = trial % 5 == 0 ? 255 : trial % 5 == 1 ? 0 : pick(0, 255);
    const int wmax = wide || trial % 3 == 0 ? 32767 : 127;
    t.w.resize(static_cast<size_t>(c * t.g.k()));
    for (auto& v : t.w) v = static_cast<int16_t>(wide ? wmax - pick(0, 100) : pick(-wmax, wmax));
    for (int64_t i = 0; i < c; ++i) {
      t.epi.multiplier.push_back(pick(1, 1 << 20));
      t.epi.shift.push_back(pick(20, 40));
      t.epi.bias.push_back(pick(-(1 << 20), 1 << 20));
    }
    t.epi.lo = 0;
    t.epi.hi = 255;
    INFO("trial " << trial << " c=" << c << " k=" << kh << "x" << kw << " stride " << s << " dilation " << dil
                  << " x_sub " << t.x_sub << " max|w| " << wmax);
    const auto want = reference(t);
    const bool int8 = std::all_of(t.w.begin(), t.w.end(), [](int16_t v) { return v >= -128 && v <= 127; });
    for (Isa isa : kAllIsas) {
      if (!isa_supported(isa)) continue;
      const PackedConv pc = pack_conv(t.g, t.w.data(), t.epi, isa);
      CHECK(conv_kernel_name(pc) == "depthwise");
      CHECK(pc.dw_quads.empty() == !(has_avx512(isa) && int8));  // core/depthwise.h
      CHECK(pc.dw_pairs.empty() == (wide || !has_avx2(isa) || !pc.dw_quads.empty()));
      if (has_neon(isa)) CHECK(pc.dw_sums.empty() == wide);  // the NEON kernel on uint8 codes
      CHECK(run<uint8_t>(t, isa, Storage::U8, 1 + trial % 2) == want);
      CHECK(run<int32_t>(t, isa, Storage::I32, 1) == want);
    }
  }
}

// Binary weights with inputs of 1 to kMaxBinaryActBits bits: the table-lookup kernels and NEON's popcount form.
// Wide fields (up to 130 channels x 3 x 3 = 297 table steps) cross the byte flushes (tables every 10 or 31 steps,
// popcount every 31), more than 96 output channels the 6-group blocks, and two fields their 16-bit epochs:
// 1,300 channels x 3 x 3 at 2 bits (2,925 table steps, epoch 2,730; 1,467 popcount steps, epoch 1,364) and
// 3,700 channels x 3 x 3 at 1 bit (8,325 table steps, epoch 8,184; 4,167 popcount steps, epoch 4,092); odd output
// widths, strides and dilations pair pixels with padding lanes.
TEST_CASE("binary kernel: binary weights equal the direct reference on every ISA path", "[qgemm][binary]") {
  std::mt19937 rng(11);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (Isa isa : kAllIsas) {
    if (!isa_supported(isa)) continue;
    for (int trial = 0; trial < 122; ++trial) {
      const bool epoch_case = trial >= 120, one_bit = trial == 121;
      const bool float_output = epoch_case || trial % 3 == 0;  // float: the exact sum, unclamped
      Case t = random_case(rng, float_output);
      const int64_t c = one_bit ? 3700 : epoch_case ? 1300 : trial % 10 == 0 ? pick(100, 130) : pick(1, 40);
      const int64_t m = epoch_case ? 17 : trial % 7 == 0 ? pick(90, 130) : pick(1, 30);
      const int kh = epoch_case ? 3 : pick(1, 3), kw = epoch_case ? 3 : pick(1, 3);
      const int dh = epoch_case ? 1 : pick(1, 2), dw = epoch_case ? 1 : pick(1, 2);
      const int64_t h = epoch_case ? 3 : pick(dh * (kh - 1) + 1, 9), w = epoch_case ? 3 : pick(dw * (kw - 1) + 1, 9);
      t.g = make_conv_geom(h, w, c, m, 1, kh, kw, pick(1, 2), pick(1, 2), pick(0, kh / 2 + 1), pick(0, kw / 2 + 1),
                           dh, dw);
      const int bits = one_bit ? 1 : epoch_case ? 2 : pick(1, kMaxBinaryActBits);
      // needs exactly `bits` bits
      const int32_t vmax = epoch_case ? (1 << bits) - 1 : pick(1 << (bits - 1), (1 << bits) - 1);
      t.x_sub = pick(0, 255 - vmax);
      t.x.resize(static_cast<size_t>(h * w * c));
      for (auto& v : t.x) v = static_cast<uint8_t>(t.x_sub + (epoch_case ? vmax : pick(0, vmax)));
      t.w.resize(static_cast<size_t>(m * t.g.k()));
      for (auto& v : t.w) v = static_cast<int16_t>(epoch_case || pick(0, 1) ? 1 : -1);
      t.epi.multiplier.assign(static_cast<size_t>(m), 1 << 20);
      t.epi.shift.assign(static_cast<size_t>(m), 24);
      t.epi.bias.assign(static_cast<size_t>(m), 0);
      t.epi.scale.assign(static_cast<size_t>(m), 0.5f);
      t.epi.float_bias.assign(static_cast<size_t>(m), 0.25f);
      if (!float_output && trial % 3 == 1) {  // few output codes: the AVX2 threshold epilogue
        for (int64_t i = 0; i < m; ++i) {
          t.epi.multiplier[i] = i % 7 == 3 ? 0 : pick(-(1 << 22), 1 << 22);
          t.epi.bias[i] = static_cast<int64_t>(pick(-(1 << 26), 1 << 26));
        }
        t.epi.lo = pick(-8, 0);
        t.epi.hi = t.epi.lo + pick(0, kMaxThresholdLevels - 1);
        t.epi.store_offset = t.epi.lo;
        t.epi.zero_point = pick(t.epi.lo, t.epi.hi);
      }
      const InputRange range{0, vmax};
      int want_bits = 0;
      while ((1 << want_bits) <= vmax) ++want_bits;
      INFO("isa " << isa_name(isa) << " trial " << trial << " h=" << h << " w=" << w << " c=" << c << " m=" << m
                  << " k=" << kh << "x" << kw << " dilation " << dh << "x" << dw << " bits=" << want_bits);
      const auto want = reference(t);
      const int threads = trial % 2 ? 2 : 1;
      if (float_output) {
        CHECK(run<float>(t, isa, Storage::F32, threads, false, range, want_bits) == want);
      } else {
        CHECK(run<uint8_t>(t, isa, Storage::U8, threads, false, range, want_bits) == want);
        CHECK(run<int32_t>(t, isa, Storage::I32, threads, true, range, want_bits) == want);
      }
    }
  }
}

TEST_CASE("binary kernel is chosen only where it is exact", "[qgemm][binary]") {
  const ConvGeom g = make_conv_geom(4, 4, 3, 2, 1, 3, 3, 1, 1, 1, 1, 1, 1);
  std::vector<int16_t> w(static_cast<size_t>(g.m * g.k()), 1);
  ConvEpilogue epi;
  epi.float_output = true;
  epi.scale.assign(2, 1.0f);
  epi.float_bias.assign(2, 0.0f);
  CHECK(pack_conv(g, w.data(), epi, Isa::Scalar, {0, 3}).bits.act_bits == 2);
  CHECK(pack_conv(g, w.data(), epi, Isa::Scalar, {0, 1}).bits.act_bits == 1);
  CHECK(pack_conv(g, w.data(), epi, Isa::Scalar, {0, 4}).bits.act_bits == 0);    // more bits than its tables serve
  CHECK(pack_conv(g, w.data(), epi, Isa::Scalar, {-1, 3}).bits.act_bits == 0);   // signed inputs
  CHECK(pack_conv(g, w.data(), epi, Isa::Scalar, {}).bits.act_bits == 0);        // unknown range
  if (isa_supported(Isa::Avx2)) {  // few output codes: the threshold epilogue; 256 codes: the requantization
    ConvEpilogue q;
    q.multiplier.assign(2, 1 << 20);
    q.shift.assign(2, 24);
    q.bias.assign(2, 0);
    q.hi = 3;
    CHECK(pack_conv(g, w.data(), q, Isa::Avx2, {0, 3}).threshold_levels == 4);
    CHECK(pack_conv(g, w.data(), q, Isa::Neon, {0, 3}).threshold_levels == 4);
    q.hi = 255;
    CHECK(pack_conv(g, w.data(), q, Isa::Avx2, {0, 3}).threshold_levels == 0);
    q.lo = INT32_MIN;  // wide int32 codes: their span overflows int32
    q.hi = INT32_MAX;
    CHECK(pack_conv(g, w.data(), q, Isa::Avx2, {0, 3}).threshold_levels == 0);
  }
  w[5] = 0;
  CHECK(pack_conv(g, w.data(), epi, Isa::Scalar, {0, 3}).bits.act_bits == 0);    // not every weight is +-1
}

// The VNNI GEMM reads x - z_x - x_lo as uint8 and starts each sum at x_lo * sum_k w: ranges that are signed,
// that leave out 0 (the border) or that are exactly 256 values wide, int8 weights at both ends, wide and
// narrow kernel rows (kw * c not a multiple of 4), and int32-stored inputs far from uint8.
// On Isa::Amx the layers with k >= 128, at least 64 channels and 16 positions run the same on the AMX tile GEMM: images up to
// 40 x 40 give several tiles of positions and odd counts of 16-position and 16-channel tiles.
// The quad GEMMs: VNNI and AMX on x86; NEON (widening multiplies), SDOT and USMMLA (k-octets) on aarch64.
TEST_CASE("quad GEMMs (VNNI, AMX, NEON, SDOT, I8MM) equal the direct reference and are chosen only where exact",
          "[qgemm][vnni]") {
  for (Isa isa : kAllIsas) {
    if (!has_quad_gemm(isa)) continue;
    if (!isa_supported(isa)) {
      WARN("no " << isa_name(isa) << ": its GEMM is not tested here");
      continue;
    }
    std::mt19937 rng(17);
    auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    int chosen = 0, amx = 0;
    for (int trial = 0; trial < 200; ++trial) {
      const bool float_output = trial % 3 == 0;
      Case t = random_case(rng, float_output);
      const int64_t c = trial % 3 == 0 ? pick(60, 140) : pick(1, 40), m = trial % 4 == 0 ? pick(64, 140) : pick(1, 40);
      const int kh = pick(1, 4), kw = pick(1, 4), dh = pick(1, 2), size = trial % 6 == 0 ? 40 : 10;
      const int64_t h = pick(dh * (kh - 1) + 1, size), w = pick(kw, size);
      t.g = make_conv_geom(h, w, c, m, 1, kh, kw, pick(1, 2), pick(1, 2), pick(0, kh / 2 + 1), pick(0, kw / 2 + 1), dh,
                           1);
      // x - z_x in [lo, lo + span - 1]: span up to 256 values with 0 in it, or from lo in [1, 10] (0 is added
      // for the border)
      const bool positive = trial % 4 == 0;
      const int span = trial % 5 == 0 ? (positive ? 246 : 256) : pick(1, 246);
      const int lo = positive ? pick(1, 256 - span) : pick(-(span - 1), 0);
      const bool extreme = trial % 10 == 3;  // every x at one end, every weight at -128 or 127
      const int32_t base = 1000;             // stored as int32 codes around 1000
      t.x_sub = base;
      std::vector<int32_t> wide(static_cast<size_t>(h * w * c));
      for (auto& v : wide) v = base + lo + (extreme ? span - 1 : pick(0, span - 1));
      t.w.resize(static_cast<size_t>(m * t.g.k()));
      for (auto& v : t.w) v = static_cast<int16_t>(extreme ? (pick(0, 3) ? -128 : 127) : pick(-128, 127));
      t.epi.multiplier.resize(static_cast<size_t>(m), 1 << 10);
      t.epi.shift.resize(static_cast<size_t>(m), 24);
      t.epi.bias.resize(static_cast<size_t>(m), 0);
      t.epi.scale.resize(static_cast<size_t>(m), 1e-3f);
      t.epi.float_bias.resize(static_cast<size_t>(m), 0.25f);
      const InputRange range{lo, lo + span - 1};
      const PackedConv pc = pack_conv(t.g, t.w.data(), t.epi, isa, range);
      chosen += pc.kernel == ConvKernel::Vnni || pc.kernel == ConvKernel::Amx;
      amx += pc.kernel == ConvKernel::Amx;
      CHECK((pc.kernel == ConvKernel::Amx) == (isa == Isa::Amx && t.g.k() >= 128 && m >= 64 && t.g.positions() >= 16));
      INFO(isa_name(isa) << " trial " << trial << " h=" << h << " w=" << w << " c=" << c << " m=" << m << " k=" << kh
                         << "x" << kw << " range " << range.lo << ".." << range.hi << " " << conv_kernel_name(pc));
      // the reference reads uint8 codes: the same values with another zero point where they fit
      Case ref = t;
      ref.x.clear();
      const int32_t shift = std::min(0, lo);
      for (int32_t v : wide) ref.x.push_back(static_cast<uint8_t>(v - base - shift));
      ref.x_sub = -shift;
      const auto want = reference(ref);
      const int threads = trial % 2 ? 2 : 1;
      std::vector<float> outf(static_cast<size_t>(t.g.positions() * m));
      std::vector<uint8_t> outq(outf.size());
      if (float_output) {
        conv_image(pc, wide.data(), Storage::I32, base, outf.data(), Storage::F32, threads);
        CHECK(std::vector<double>(outf.begin(), outf.end()) == want);
      } else {
        conv_image(pc, wide.data(), Storage::I32, base, outq.data(), Storage::U8, threads);
        CHECK(std::vector<double>(outq.begin(), outq.end()) == want);
        conv_image(pc, ref.x.data(), Storage::U8, ref.x_sub, outq.data(), Storage::U8, threads);
        CHECK(std::vector<double>(outq.begin(), outq.end()) == want);
        std::fill(outq.begin(), outq.end(), uint8_t{0});
        CopySink sink(outq.data(), m, conv_max_tile_positions(pc));  // every tile into a buffer of its own
        conv_image(pc, ref.x.data(), Storage::U8, ref.x_sub, nullptr, Storage::U8, threads, &sink);
        CHECK(std::vector<double>(outq.begin(), outq.end()) == want);
        CHECK(!sink.broke);
      }
    }
    CHECK(chosen == 200);
    if (isa == Isa::Amx) CHECK(amx >= 20);
  }
  // not chosen: a weight past int8, a range 257 values wide, unknown range, groups, dilation in x, other ISAs
  const ConvGeom g = make_conv_geom(5, 5, 4, 8, 1, 3, 3, 1, 1, 1, 1, 1, 1);
  std::vector<int16_t> w(static_cast<size_t>(g.m * g.k()), -128);
  ConvEpilogue epi;
  epi.float_output = true;
  epi.scale.assign(8, 1.0f);
  epi.float_bias.assign(8, 0.0f);
  CHECK(conv_kernel_name(pack_conv(g, w.data(), epi, Isa::Avx512Vnni, {-5, 250})) == "gemm vnni");
  CHECK(conv_kernel_name(pack_conv(g, w.data(), epi, Isa::Neon, {-5, 250})) == "gemm neon");
  CHECK(conv_kernel_name(pack_conv(g, w.data(), epi, Isa::NeonDot, {-5, 250})) == "gemm sdot");
  CHECK(conv_kernel_name(pack_conv(g, w.data(), epi, Isa::I8mm, {-5, 250})) == "gemm i8mm");
  CHECK(conv_kernel_name(pack_conv(g, w.data(), epi, Isa::Avx512Vnni, {0, 255}, 16)) == "gemm vnni");  // over acc16
  CHECK(pack_conv(g, w.data(), epi, Isa::Avx512Vnni, {-6, 250}).kernel != ConvKernel::Vnni);
  CHECK(pack_conv(g, w.data(), epi, Isa::Avx512Vnni, {}).kernel != ConvKernel::Vnni);
  CHECK(pack_conv(g, w.data(), epi, Isa::Avx2, {0, 255}).kernel != ConvKernel::Vnni);
  CHECK(pack_conv(make_conv_geom(5, 5, 4, 8, 2, 3, 3, 1, 1, 1, 1, 1, 1), w.data(), epi, Isa::Avx512Vnni,
                  {0, 255}).kernel != ConvKernel::Vnni);
  CHECK(pack_conv(make_conv_geom(5, 5, 4, 8, 1, 3, 3, 1, 1, 2, 2, 1, 2), w.data(), epi, Isa::Avx512Vnni,
                  {0, 255}).kernel != ConvKernel::Vnni);
  w[7] = 128;
  CHECK(pack_conv(g, w.data(), epi, Isa::Avx512Vnni, {0, 255}).kernel != ConvKernel::Vnni);
}

// The AMX GEMM reads the A tiles of 1x1 stride-1 layers whose k is whole 64-byte steps straight from the image
// (its last tile from the panel where the positions end inside a 16-row group), and those of layers with whole
// 64-channel steps and output rows of 16 or more straight from the padded image, a tile per output-row piece: equal
// to the reference for kernels 1 to 3 wide, strides, padding and dilation in y, positions that are and are not multiples
// of 16, one and two threads, from uint8 codes and from int32 ones, into the output and into tile buffers.
TEST_CASE("AMX GEMM reading the image in place equals the direct reference", "[qgemm][vnni]") {
  if (!isa_supported(Isa::Amx)) {
    WARN("no AMX: its in-place paths are not tested here");
    return;
  }
  std::mt19937 rng(29);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  int direct = 0;
  for (int trial = 0; trial < 48; ++trial) {
    Case t = random_case(rng, false);
    const bool pointwise = trial % 3 == 0;  // 1x1 stride 1: contiguous positions
    const int kh = pointwise ? 1 : pick(1, 3), kw = pointwise ? 1 : pick(1, 3);
    const int s = pointwise ? 1 : pick(1, 2), dil = pointwise || pick(0, 3) ? 1 : 2;
    const int pad = pointwise ? 0 : pick(0, 1);
    const int64_t c = 64 * pick(pointwise ? 2 : 1, 3), m = pick(64, 100), h = pick(dil * (kh - 1) + 1, 7);
    const int64_t w = pointwise ? pick(8, 40) : s * pick(16, 40) + (kw - 1) - 2 * pad;
    t.g = make_conv_geom(h, w, c, m, 1, kh, kw, s, s, pad, pad, dil, 1);  // (dilation in x: the VNNI GEMM's panel)
    t.x.resize(static_cast<size_t>(h * w * c));
    for (auto& v : t.x) v = static_cast<uint8_t>(pick(0, 255));
    t.x_sub = trial % 2 ? 0 : pick(1, 255);  // 0: the codes are what the kernel reads
    t.w.resize(static_cast<size_t>(m * t.g.k()));
    for (auto& v : t.w) v = static_cast<int16_t>(pick(-128, 127));
    t.epi.multiplier.assign(static_cast<size_t>(m), 1 << 20);
    t.epi.shift.assign(static_cast<size_t>(m), 32);
    t.epi.bias.assign(static_cast<size_t>(m), 0);
    const InputRange range{-t.x_sub, 255 - t.x_sub};
    const PackedConv pc = pack_conv(t.g, t.w.data(), t.epi, Isa::Amx, range);
    INFO("trial " << trial << " " << h << "x" << w << "x" << c << " -> " << m << " kernel " << kh << "x" << kw
                  << " stride " << s << " pad " << pad << " dilation " << dil << " out " << t.g.oh << "x" << t.g.ow);
    if (t.g.k() < 128) continue;  // the VNNI GEMM's
    REQUIRE(pc.kernel == ConvKernel::Amx);
    CHECK(amx_reads_image(t.g) == !pointwise);
    direct += amx_reads_image(t.g);
    const auto want = reference(t);
    for (int threads : {1, 2}) {
      CHECK(run<uint8_t>(t, Isa::Amx, Storage::U8, threads, false, range) == want);
      CHECK(run<int32_t>(t, Isa::Amx, Storage::I32, threads, true, range, 0, true) == want);
    }
  }
  CHECK(direct >= 20);
}

// Requantizations with a proven input range, many past the double epilogue's 2^51: the AVX-512 paths take the
// tie-free epilogue where no channel can round at a tie (the double one, its zero point folded into its rounding
// constant, where that is exact), and all of them and the int64 epilogue of a layer with a tie in range (without its
// clamp where no code reaches it) equal the reference, into uint8 and int32 codes, on every GEMM and the depthwise
// kernels.
TEST_CASE("tie-free epilogue equals the direct reference and is chosen only without ties", "[qgemm]") {
  std::mt19937 rng(23);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  for (Isa isa : kAllIsas) {
    if (!isa_supported(isa)) continue;
    int tie_free = 0, tie_free_wide = 0, with_ties = 0, folded = 0, unclamped = 0;
    for (int trial = 0; trial < 160; ++trial) {
      Case t = random_case(rng, false);
      const InputRange range{-t.x_sub, 255 - t.x_sub};
      const bool wide = trial % 2 == 0;  // int32 codes (a residual stream): one shift for the layer
      const int wide_shift = static_cast<int>(pick(14, 34));
      for (size_t i = 0; i < t.epi.shift.size(); ++i) {
        t.epi.multiplier[i] = static_cast<int32_t>(pick(int64_t{1} << 29, (int64_t{1} << 31) - 1) * (pick(0, 3) ? 1 : -1));
        t.epi.shift[i] = static_cast<int32_t>(wide ? wide_shift : pick(36, 46));
        t.epi.bias[i] = pick(-(int64_t{1} << 40), int64_t{1} << 40);
      }
      if (wide) {
        t.epi.zero_point = 0;
        t.epi.lo = INT32_MIN;
        t.epi.hi = INT32_MAX;
        t.epi.store_offset = 0;
      }
      // Every fourth layer gets a tie on an accumulator of its range: channel 0's bias set so that acc = 0 (the
      // padding's, always in range) sits exactly half way, between two codes inside the clamp.
      const bool tie = trial % 4 == 1;
      if (tie) {
        t.epi.bias[0] = int64_t{1} << (t.epi.shift[0] - 1);
        t.epi.zero_point = wide ? 0 : t.epi.lo + 100;
      }
      const PackedConv pc = pack_conv(t.g, t.w.data(), t.epi, isa, range);
      INFO(isa_name(isa) << " trial " << trial << " m=" << t.g.m << " k=" << t.g.k() << " groups " << t.g.groups
                         << " wide " << wide << " tie " << tie << " tie-free " << !pc.tie_free_blocks.empty()
                         << " shift0 " << t.epi.shift[0] << " mult0 " << t.epi.multiplier[0] << " " << conv_kernel_name(pc));
      folded += !pc.requant_scale.empty() && !pc.tie_free_blocks.empty();  // the double epilogue, zero point folded
      if (has_avx512(isa) && pc.requant_scale.empty()) {
        if (tie) CHECK(pc.tie_free_blocks.empty());
        tie_free += !pc.tie_free_blocks.empty();
        tie_free_wide += wide && !pc.tie_free_blocks.empty();
        with_ties += pc.tie_free_blocks.empty();
        unclamped += pc.tie_free_blocks.empty() && pc.requant_unclamped;  // the int64 epilogue without its clamp
      }
      const auto want = reference(t);
      const int threads = trial % 3 == 0 ? 2 : 1;
      if (wide)
        CHECK(run<int32_t>(t, isa, Storage::I32, threads, trial % 5 == 0, range) == want);
      else
        CHECK(run<uint8_t>(t, isa, Storage::U8, threads, trial % 5 == 0, range) == want);
    }
    if (has_avx512(isa)) {
      CHECK(tie_free >= 20);
      CHECK(tie_free_wide >= 5);
      CHECK(with_ties >= 30);
      CHECK(folded >= 10);
      CHECK(unclamped >= 10);
    }
  }
}

// The requantizing epilogue on every path at every shift, 0 (no rounding) to 62, with multipliers that make ties
// (an odd and an even quotient at half) common, into uint8 and into int32 codes with clamps that do and do not bind.
TEST_CASE("requantizing epilogue equals the reference at every shift, ties included", "[qgemm][epilogue]") {
  std::mt19937 rng(29);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  for (int trial = 0; trial < 120; ++trial) {
    Case t;
    const int64_t c = pick(1, 9), m = pick(1, 37), side = pick(1, 4);
    t.g = make_conv_geom(side, side, c, m, 1, 1, 1, 1, 1, 0, 0, 1, 1);
    t.x.resize(static_cast<size_t>(side * side * c));
    for (auto& v : t.x) v = static_cast<uint8_t>(pick(0, 255));
    t.x_sub = static_cast<int32_t>(pick(0, 255));
    t.w.resize(static_cast<size_t>(m * c));
    for (auto& v : t.w) v = static_cast<int16_t>(pick(-127, 127));
    for (int64_t i = 0; i < m; ++i) {
      const int shift = static_cast<int>(trial < 63 ? (trial + i) % 63 : pick(0, 62));
      t.epi.shift.push_back(shift);
      t.epi.multiplier.push_back(static_cast<int32_t>(pick(0, 3) == 0 ? pick(-3, 3) : pick(INT32_MIN + 1, INT32_MAX)));
      t.epi.bias.push_back(pick(0, 2) == 0 ? 0 : pick(-(int64_t{1} << 40), int64_t{1} << 40));
    }
    const bool wide = trial % 2 == 0;  // int32 codes
    t.epi.zero_point = static_cast<int32_t>(pick(-1000, 1000));
    t.epi.lo = static_cast<int32_t>(wide ? pick(INT32_MIN, -1) : pick(-128, 0));
    t.epi.hi = wide ? static_cast<int32_t>(pick(0, INT32_MAX)) : t.epi.lo + 255;
    t.epi.store_offset = wide ? 0 : t.epi.lo;
    INFO("trial " << trial << " c=" << c << " m=" << m);
    const auto want = reference(t);
    for (Isa isa : kAllIsas) {
      if (!isa_supported(isa)) continue;
      INFO("isa " << isa_name(isa));
      for (const InputRange range : {InputRange{}, InputRange{-t.x_sub, 255 - t.x_sub}}) {
        if (wide)
          CHECK(run<int32_t>(t, isa, Storage::I32, 1, false, range) == want);
        else
          CHECK(run<uint8_t>(t, isa, Storage::U8, 1, false, range) == want);
      }
    }
  }
}

TEST_CASE("conv geometry errors name the bad field", "[qgemm]") {
  CHECK_THROWS_WITH(make_conv_geom(4, 4, 6, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1), Catch::Contains("groups = 4"));
  CHECK_THROWS_WITH(make_conv_geom(2, 2, 1, 1, 1, 5, 5, 1, 1, 0, 0, 1, 1), Catch::Contains("larger than the padded"));
  CHECK_THROWS_WITH(make_conv_geom(8, 8, 1, 1, 1, 3, 3, 0, 1, 0, 0, 1, 1), Catch::Contains("stride"));
}

TEST_CASE("QCNN_ISA forces a path and rejects unknown names", "[qgemm]") {
  setenv("QCNN_ISA", "scalar", 1);
  CHECK(select_isa() == Isa::Scalar);
  setenv("QCNN_ISA", "sse9", 1);
  CHECK_THROWS_WITH(select_isa(), Catch::Contains("unknown path"));
  setenv("QCNN_ISA", "avx2", 1);
  if (isa_supported(Isa::Avx2)) CHECK(select_isa() == Isa::Avx2);
  unsetenv("QCNN_ISA");
  CHECK(isa_supported(select_isa()));
  Isa best = Isa::Scalar;  // the best path the CPU has
  for (Isa isa : kAllIsas)
    if (isa_supported(isa)) best = isa;
  CHECK(select_isa() == best);
}

TEST_CASE("int8 peak measurement is positive and physically possible", "[qgemm]") {
  const double peak = int8_peak_gmacs(0.05, 1);
  CHECK(peak > 0);
  CHECK(peak < 1000);  // no CPU core does 1000 G int MACs/s: a folded loop would
}

// Layers declaring a 16-bit accumulator whose integers prove it exact run on the int16-accumulator
// kernel; the bound is met with equality in some trials (weights scaled up to it), where a wrong
// lane or a saturating pair would show.
// On AVX2 (vpmaddubsw pairs) and on ARMv8.0 NEON (MLA on int16 lanes), where it comes before the quad GEMM.
TEST_CASE("acc16 kernel equals the direct reference where the L1 bound holds", "[qgemm][acc16]") {
  for (Isa isa : {Isa::Avx2, Isa::Neon}) {
    if (!isa_supported(isa)) {
      WARN("no " << isa_name(isa) << ": its acc16 kernel is not tested here");
      continue;
    }
    std::mt19937 rng(13);
    auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    int chosen = 0;
    for (int trial = 0; trial < 150; ++trial) {
      const bool float_output = trial % 3 == 0;
      Case t = random_case(rng, float_output);
      const int64_t c = pick(1, 40), m = pick(1, 40);
      const int kh = pick(1, 3), kw = pick(1, 3), dh = pick(1, 2);
      const int64_t h = pick(dh * (kh - 1) + 1, 9), w = pick(kw, 9);
      t.g = make_conv_geom(h, w, c, m, 1, kh, kw, pick(1, 2), pick(1, 2), pick(0, kh / 2 + 1), pick(0, kw / 2 + 1), dh,
                           1);
      const int32_t vmax = pick(1, 255);
      t.x_sub = pick(0, 255 - vmax);
      t.x.resize(static_cast<size_t>(h * w * c));
      const bool extreme = trial % 10 == 5;  // every x at its maximum, every weight positive: |acc| at the bound
      for (auto& v : t.x) v = static_cast<uint8_t>(t.x_sub + (pick(0, 3) && !extreme ? pick(0, vmax) : vmax));
      const int64_t k = t.g.k();
      const int64_t l1_cap = 32767 / vmax;  // the largest ||w_m||_1 the bound allows
      t.w.assign(static_cast<size_t>(m * k), 0);
      for (int64_t o = 0; o < m; ++o) {
        int64_t budget = trial % 4 == 0 ? l1_cap + 1 : l1_cap;  // every 4th trial breaks the bound by one
        for (int64_t i = 0; i < k && budget > 0; ++i) {
          const int v = std::min<int64_t>({pick(0, 127), budget, 127});
          t.w[o * k + i] = static_cast<int16_t>(pick(0, 1) || extreme ? v : -v);
          budget -= v;
        }
      }
      t.epi.multiplier.resize(static_cast<size_t>(m), 1 << 20);
      t.epi.shift.resize(static_cast<size_t>(m), 30);
      t.epi.bias.resize(static_cast<size_t>(m), 0);
      t.epi.scale.resize(static_cast<size_t>(m), 1e-3f);
      t.epi.float_bias.resize(static_cast<size_t>(m), 0.25f);
      int64_t worst = 0;
      for (int64_t o = 0; o < m; ++o) {
        int64_t l1 = 0;
        for (int64_t i = 0; i < k; ++i) l1 += std::abs(t.w[o * k + i]);
        worst = std::max(worst, l1 * vmax);
      }
      const bool exact = worst <= 32767;
      PackedConv pc = pack_conv(t.g, t.w.data(), t.epi, isa, {0, vmax}, 16);
      CHECK((pc.kernel == ConvKernel::Acc16) == exact);
      CHECK(pack_conv(t.g, t.w.data(), t.epi, isa, {0, vmax}, 17).kernel != ConvKernel::Acc16);  // too wide
      // SDOT runs the quad GEMM at twice acc16's MACs per instruction
      CHECK(pack_conv(t.g, t.w.data(), t.epi, Isa::NeonDot, {0, vmax}, 16).kernel != ConvKernel::Acc16);
      CHECK(pack_conv(t.g, t.w.data(), t.epi, Isa::Scalar, {0, vmax}, 16).kernel != ConvKernel::Acc16);
      chosen += pc.kernel == ConvKernel::Acc16;
      INFO(isa_name(isa) << " trial " << trial << " h=" << h << " w=" << w << " c=" << c << " m=" << m << " k=" << kh
                         << "x" << kw << " worst " << worst);
      const auto want = reference(t);
      const int threads = trial % 2 ? 2 : 1;
      std::vector<float> outf(static_cast<size_t>(t.g.positions() * m));
      std::vector<uint8_t> outq(outf.size());
      if (float_output) {
        conv_image(pc, t.x.data(), Storage::U8, t.x_sub, outf.data(), Storage::F32, threads);
        CHECK(std::vector<double>(outf.begin(), outf.end()) == want);
      } else {
        conv_image(pc, t.x.data(), Storage::U8, t.x_sub, outq.data(), Storage::U8, threads);
        CHECK(std::vector<double>(outq.begin(), outq.end()) == want);
      }
    }
    CHECK(chosen > 80);
  }
}

// The no-overflow bound |acc| <= max|x - z| * ||w_m||_1 is reached by x = max where w > 0 and 0 where
// w < 0: at the smallest width that holds it nothing leaves the range, one bit less does.
TEST_CASE("checked path counts accumulations that leave the declared width", "[qgemm][overflow]") {
  const ConvGeom g = make_conv_geom(1, 1, 6, 2, 1, 1, 1, 1, 1, 0, 0, 1, 1);
  const std::vector<int16_t> w = {3, -5, 7, 0, 2, -1,   // channel 0: positive sum 12
                                  -2, -2, 1, 1, 1, -9};  // channel 1: positive sum 3, negative -13
  const int32_t x_sub = 10;                              // stored codes 10 .. 25: x - z in [0, 15]
  const std::vector<uint8_t> adversarial = {25, 10, 25, 10, 25, 10};  // 15 where channel 0 is positive
  // channel 0 reaches 15 * 12 = 180, which needs 9 bits (2^8 - 1 = 255 holds it, 2^7 - 1 = 127 does not)
  CHECK(count_accumulator_overflows(g, w.data(), adversarial.data(), Storage::U8, x_sub, 9) == 0);
  CHECK(count_accumulator_overflows(g, w.data(), adversarial.data(), Storage::U8, x_sub, 8) == 1);
  // channel 1 goes down to 15 * -13 = -195 where it is negative (channel 0 stays within -45 .. 45)
  const std::vector<uint8_t> low = {25, 25, 10, 10, 10, 25};
  CHECK(count_accumulator_overflows(g, w.data(), low.data(), Storage::U8, x_sub, 9) == 0);
  CHECK(count_accumulator_overflows(g, w.data(), low.data(), Storage::U8, x_sub, 8) == 1);
  const std::vector<int32_t> wide(low.begin(), low.end());
  CHECK(count_accumulator_overflows(g, w.data(), wide.data(), Storage::I32, x_sub, 8) == 1);
  // a running sum that leaves the range and comes back counts, though the final sum fits
  const std::vector<int16_t> back = {7, 7, -7, -7, 0, 0, 0, 0, 0, 0, 0, 0};  // 105, 210, 105, 0
  const std::vector<uint8_t> all = {25, 25, 25, 25, 25, 25};
  CHECK(count_accumulator_overflows(g, back.data(), all.data(), Storage::U8, x_sub, 8) == 1);
  CHECK(count_accumulator_overflows(g, back.data(), all.data(), Storage::U8, x_sub, 9) == 0);
  CHECK_THROWS_WITH(count_accumulator_overflows(g, w.data(), low.data(), Storage::U8, x_sub, 1),
                    Catch::Contains("accumulator bits"));
}
