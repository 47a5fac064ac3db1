#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "core/quantize.h"

using namespace qcnn::core;

TEST_CASE("round_half_even rounds ties to the even neighbour", "[quantize]") {
  CHECK(round_half_even(0.5f) == 0.0f);
  CHECK(round_half_even(1.5f) == 2.0f);
  CHECK(round_half_even(2.5f) == 2.0f);
  CHECK(round_half_even(-0.5f) == 0.0f);
  CHECK(round_half_even(-1.5f) == -2.0f);
  CHECK(round_half_even(-2.5f) == -2.0f);
  CHECK(round_half_even(2.4999998f) == 2.0f);
  CHECK(round_half_even(1e30f) == 1e30f);
}

TEST_CASE("quantize_code clamps to the grid and keeps NaN", "[quantize]") {
  const float inv = 1.0f / 0.1f;
  CHECK(quantize_code(0.34f, inv, 0.0f, -8.0f, 7.0f) == 3.0f);
  CHECK(quantize_code(100.0f, inv, 0.0f, -8.0f, 7.0f) == 7.0f);
  CHECK(quantize_code(-100.0f, inv, 0.0f, -8.0f, 7.0f) == -8.0f);
  CHECK(quantize_code(std::numeric_limits<float>::infinity(), inv, 0.0f, -8.0f, 7.0f) == 7.0f);
  CHECK(quantize_code(-std::numeric_limits<float>::infinity(), inv, 0.0f, -8.0f, 7.0f) == -8.0f);
  CHECK(std::isnan(quantize_code(std::nanf(""), inv, 0.0f, -8.0f, 7.0f)));
  // zero point shifts the grid; unsigned 16-bit extremes
  CHECK(quantize_code(0.0f, 1.0f, 3.0f, 0.0f, 15.0f) == 3.0f);
  CHECK(quantize_code(1e9f, 1.0f, 0.0f, 0.0f, 65535.0f) == 65535.0f);
  CHECK(quantize_code(-1e9f, 1.0f, 0.0f, -32768.0f, 32767.0f) == -32768.0f);
}

TEST_CASE("fake_quantize round-trips grid points exactly", "[quantize]") {
  const float scale = 0.25f, inv = 1.0f / scale;
  for (int q = -8; q <= 7; ++q) {
    const float x = dequantize_code(static_cast<float>(q), scale, 0.0f);
    CHECK(fake_quantize(x, scale, inv, 0.0f, -8.0f, 7.0f) == x);
  }
  CHECK(fake_quantize(0.125f, scale, inv, 0.0f, -8.0f, 7.0f) == 0.0f);   // tie 0.5 -> 0
  CHECK(fake_quantize(0.375f, scale, inv, 0.0f, -8.0f, 7.0f) == 0.5f);   // tie 1.5 -> 2
  CHECK(fake_quantize(-0.375f, scale, inv, 0.0f, -8.0f, 7.0f) == -0.5f);
}

TEST_CASE("code_in_range marks the straight-through region", "[quantize]") {
  CHECK(code_in_range(-8.0f, -8.0f, 7.0f));
  CHECK(code_in_range(7.0f, -8.0f, 7.0f));
  CHECK_FALSE(code_in_range(8.0f, -8.0f, 7.0f));
  CHECK_FALSE(code_in_range(std::nanf(""), -8.0f, 7.0f));
}

TEST_CASE("lsq_partials follow Esser et al. eq. 3", "[quantize]") {
  const float s = 0.5f, inv = 2.0f, z = 1.0f;
  // inside: (x_fq - x) / s = (round(x/s) - x/s)
  LsqPartials d = lsq_partials(0.6f, s, inv, z, -8.0f, 7.0f);
  CHECK(d.d_scale == Approx(1.0f - 1.2f));
  CHECK(d.d_zero_point == 0.0f);
  d = lsq_partials(100.0f, s, inv, z, -8.0f, 7.0f);
  CHECK(d.d_scale == 6.0f);  // qmax - z
  CHECK(d.d_zero_point == -s);
  d = lsq_partials(-100.0f, s, inv, z, -8.0f, 7.0f);
  CHECK(d.d_scale == -9.0f);  // qmin - z
}
