#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "core/conv_int.h"
#include "core/requant.h"

namespace {

// Naive direct convolution reference: acc[n,m,oy,ox] = sum (x - zp) * w, zero padding in real values.
std::vector<int32_t> naive_conv(const std::vector<int32_t>& x, int32_t zp, const std::vector<int16_t>& w,
                                const qcnn::ConvShape& s) {
  std::vector<int32_t> out(s.n * s.m * s.oh * s.ow, 0);
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t m = 0; m < s.m; ++m)
      for (int64_t oy = 0; oy < s.oh; ++oy)
        for (int64_t ox = 0; ox < s.ow; ++ox) {
          int64_t acc = 0;
          for (int64_t c = 0; c < s.c; ++c)
            for (int ky = 0; ky < s.kh; ++ky)
              for (int kx = 0; kx < s.kw; ++kx) {
                const int64_t iy = oy * s.sh - s.ph + ky, ix = ox * s.sw - s.pw + kx;
                if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
                acc += int64_t(x[((n * s.c + c) * s.h + iy) * s.w + ix] - zp) *
                       w[((m * s.c + c) * s.kh + ky) * s.kw + kx];
              }
          out[((n * s.m + m) * s.oh + oy) * s.ow + ox] = static_cast<int32_t>(acc);
        }
  return out;
}

struct ConvCase {
  int n, c, h, w, m, k, stride, pad;
};

}  // namespace

TEST_CASE("conv2d_int and conv2d_int_shared match a naive reference", "[int_kernels]") {
  std::mt19937 rng(42);
  const ConvCase cases[] = {{2, 3, 9, 7, 5, 3, 1, 1}, {1, 4, 8, 8, 9, 3, 2, 0}, {5, 2, 6, 6, 6, 5, 1, 2},
                            {3, 16, 1, 1, 10, 1, 1, 0}, {1, 8, 12, 12, 17, 3, 1, 1}, {4, 1, 28, 28, 4, 5, 1, 0}};
  for (const auto& cc : cases) {
    for (int codes : {2, 5, 16, 256}) {
      for (int threads : {1, 2}) {
        auto s = qcnn::make_conv_shape(cc.n, cc.c, cc.h, cc.w, cc.m, cc.k, cc.k, cc.stride, cc.stride, cc.pad, cc.pad);
        const int32_t zp = static_cast<int32_t>(rng() % 256);
        std::vector<int32_t> x(s.n * s.c * s.h * s.w);
        for (auto& v : x) v = static_cast<int32_t>(rng() % 256);  // uint8 codes
        const int64_t groups = (codes % 2 == 0) ? 1 : s.m;
        std::vector<int32_t> codebook(groups * codes);
        for (auto& v : codebook) v = static_cast<int32_t>(rng() % 4001) - 2000;
        std::vector<uint8_t> idx(s.m * s.k());
        for (auto& v : idx) v = static_cast<uint8_t>(rng() % codes);
        auto w = qcnn::expand_codebook_weights(idx.data(), codebook.data(), groups, codes, s.m, s.k());
        auto ref = naive_conv(x, zp, w, s);
        std::vector<int32_t> acc(ref.size(), -7);
        qcnn::conv2d_int(x.data(), zp, w.data(), s, acc.data(), threads);
        REQUIRE(acc == ref);
        auto plan = qcnn::make_shared_weights(idx.data(), codebook.data(), groups, codes, s.m, s.k());
        std::vector<int32_t> acc2(ref.size(), -7);
        qcnn::conv2d_int_shared(x.data(), zp, plan, s, acc2.data(), threads);
        REQUIRE(acc2 == ref);
      }
    }
  }
}

TEST_CASE("conv shape and codebook validation", "[int_kernels]") {
  CHECK_THROWS_WITH(qcnn::make_conv_shape(1, 1, 2, 2, 1, 3, 3, 1, 1, 0, 0), Catch::Contains("larger than padded input"));
  CHECK_THROWS_AS(qcnn::make_conv_shape(1, 0, 2, 2, 1, 1, 1, 1, 1, 0, 0), std::invalid_argument);
  std::vector<uint8_t> idx{0, 3};
  std::vector<int32_t> cb{1, 2};
  CHECK_THROWS_WITH(qcnn::expand_codebook_weights(idx.data(), cb.data(), 1, 2, 1, 2), Catch::Contains("exceeds codebook size"));
  std::vector<int32_t> big{1, 40000};
  std::vector<uint8_t> idx2{0, 1};
  CHECK_THROWS_WITH(qcnn::expand_codebook_weights(idx2.data(), big.data(), 1, 2, 1, 2), Catch::Contains("int16"));
}

TEST_CASE("rounding_shift rounds half toward +infinity", "[requant]") {
  CHECK(qcnn::rounding_shift(5, 1) == 3);    // 2.5 -> 3
  CHECK(qcnn::rounding_shift(-5, 1) == -2);  // -2.5 -> -2
  CHECK(qcnn::rounding_shift(-6, 2) == -1);  // -1.5 -> -1
  CHECK(qcnn::rounding_shift(-7, 2) == -2);  // -1.75 -> -2
  CHECK(qcnn::rounding_shift(7, 0) == 7);
  CHECK(qcnn::rounding_shift(int64_t{1} << 61, 62) == 1);  // 0.5 -> 1
  CHECK(qcnn::rounding_shift((int64_t{1} << 61) - 1, 62) == 0);
  CHECK(qcnn::rounding_shift(-(int64_t{1} << 61), 62) == 0);  // -0.5 -> 0
  // Against floor(v / 2^s + 1/2) in long double on random values.
  std::mt19937_64 rng(3);
  for (int i = 0; i < 10000; ++i) {
    const int64_t v = static_cast<int64_t>(rng() >> 2) - (int64_t{1} << 61);
    const int s = static_cast<int>(rng() % 40) + 1;
    const long double ref = std::floor(static_cast<long double>(v) / std::ldexp(1.0L, s) + 0.5L);
    REQUIRE(qcnn::rounding_shift(v, s) == static_cast<int64_t>(ref));
  }
}

TEST_CASE("requantize: per-channel multipliers, bias, zero points and saturation", "[requant]") {
  std::mt19937 rng(5);
  const int64_t outer = 3, channels = 4, inner = 50;
  std::vector<int32_t> in(outer * channels * inner);
  for (auto& v : in) v = static_cast<int32_t>(rng() % 200001) - 100000;
  std::vector<int32_t> mult{1 << 30, -(3 << 28), 1234567890, 0};
  std::vector<int32_t> shift{40, 38, 45, 31};
  std::vector<int64_t> bias{int64_t{5} << 39, -(int64_t{1} << 37), 12345, int64_t{3} << 31};
  const int32_t zp_in = 17, zp_out = 3, qmin = -8, qmax = 100;
  std::vector<int32_t> out(in.size());
  qcnn::requantize(in.data(), outer, channels, inner, zp_in, bias.data(), mult.data(), shift.data(), zp_out, qmin, qmax,
                   out.data(), 2);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t i = 0; i < inner; ++i) {
        const int64_t idx = (o * channels + c) * inner + i;
        const long double real = (static_cast<long double>(in[idx] - zp_in) * mult[c] + bias[c]) / std::ldexp(1.0L, shift[c]);
        long double q = std::floor(real + 0.5L) + zp_out;
        q = std::min<long double>(std::max<long double>(q, qmin), qmax);
        REQUIRE(out[idx] == static_cast<int32_t>(q));
      }
  // Channel 3 has multiplier 0: output is the bias alone, 3 + zp_out = 6.
  CHECK(out[3 * inner] == 6);
}

TEST_CASE("add_requant matches a long double reference", "[requant]") {
  std::mt19937 rng(8);
  const int64_t n = 1000;
  std::vector<int32_t> a(n), b(n), out(n);
  for (auto& v : a) v = static_cast<int32_t>(rng() % 256);
  for (auto& v : b) v = static_cast<int32_t>(rng() % 65536) - 32768;
  const int32_t ma = 700000000, mb = -300000000;
  const int shift = 36;
  qcnn::add_requant(a.data(), 128, ma, b.data(), 0, mb, shift, 10, 0, 255, n, out.data(), 1);
  for (int64_t i = 0; i < n; ++i) {
    const long double real = ((long double)(a[i] - 128) * ma + (long double)b[i] * mb) / std::ldexp(1.0L, shift);
    long double q = std::floor(real + 0.5L) + 10;
    q = std::min<long double>(std::max<long double>(q, 0), 255);
    REQUIRE(out[i] == static_cast<int32_t>(q));
  }
}

TEST_CASE("integer pooling matches brute force", "[requant]") {
  std::mt19937 rng(11);
  const int64_t n = 2, c = 3, h = 7, w = 6;
  std::vector<int32_t> x(n * c * h * w);
  for (auto& v : x) v = static_cast<int32_t>(rng() % 301) - 150;
  // max pool 3x3 stride 2 pad 1
  const int64_t oh = 4, ow = 3;
  std::vector<int32_t> mp(n * c * oh * ow);
  qcnn::max_pool2d_int(x.data(), n, c, h, w, 3, 3, 2, 2, 1, 1, mp.data(), 2);
  for (int64_t p = 0; p < n * c; ++p)
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox) {
        int32_t best = INT32_MIN;
        for (int ky = 0; ky < 3; ++ky)
          for (int kx = 0; kx < 3; ++kx) {
            const int64_t iy = oy * 2 - 1 + ky, ix = ox * 2 - 1 + kx;
            if (iy >= 0 && iy < h && ix >= 0 && ix < w) best = std::max(best, x[(p * h + iy) * w + ix]);
          }
        REQUIRE(mp[(p * oh + oy) * ow + ox] == best);
      }
  // global average pool: rounded mean, half toward +infinity
  std::vector<int32_t> gp(n * c);
  qcnn::avg_pool2d_int(x.data(), n, c, h, w, h, w, 1, 1, gp.data(), 1);
  for (int64_t p = 0; p < n * c; ++p) {
    long double sum = 0;
    for (int64_t i = 0; i < h * w; ++i) sum += x[p * h * w + i];
    REQUIRE(gp[p] == static_cast<int32_t>(std::floor(sum / (h * w) + 0.5L)));
  }
  // exact ties: mean -2.5 -> -2, 2.5 -> 3
  std::vector<int32_t> t{-2, -3, 2, 3};
  std::vector<int32_t> to(2);
  qcnn::avg_pool2d_int(t.data(), 1, 2, 1, 2, 1, 2, 1, 1, to.data(), 1);
  CHECK(to[0] == -2);
  CHECK(to[1] == 3);
}
