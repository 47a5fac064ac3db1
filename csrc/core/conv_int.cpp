#include "core/conv_int.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "core/requant.h"
#include "core/threads.h"

namespace qcnn {

namespace {
constexpr int64_t kColBlock = 256;  // output positions per block: 4 int32 accumulator rows stay in L1
}

ConvShape make_conv_shape(int64_t n, int64_t c, int64_t h, int64_t w, int64_t m, int kh, int kw, int sh, int sw,
                          int ph, int pw) {
  if (n < 0 || c < 1 || h < 1 || w < 1 || m < 1)
    throw std::invalid_argument("conv2d_int: input/output sizes must be positive (batch >= 0)");
  ConvShape s;
  s.n = n; s.c = c; s.h = h; s.w = w; s.m = m;
  s.kh = kh; s.kw = kw; s.sh = sh; s.sw = sw; s.ph = ph; s.pw = pw;
  s.oh = window_output_size(h, kh, sh, ph, "conv2d_int");
  s.ow = window_output_size(w, kw, sw, pw, "conv2d_int");
  return s;
}

void im2col_s16(const int32_t* x, int32_t zero_point, const ConvShape& s, int16_t* col) {
  const int64_t npos = s.positions();
  for (int64_t ch = 0; ch < s.c; ++ch) {
    const int32_t* plane = x + ch * s.h * s.w;
    for (int ky = 0; ky < s.kh; ++ky)
      for (int kx = 0; kx < s.kw; ++kx) {
        int16_t* dst = col + ((ch * s.kh + ky) * s.kw + kx) * npos;
        for (int64_t oy = 0; oy < s.oh; ++oy) {
          const int64_t iy = oy * s.sh - s.ph + ky;
          int16_t* row = dst + oy * s.ow;
          if (iy < 0 || iy >= s.h) {
            std::fill(row, row + s.ow, int16_t{0});
            continue;
          }
          const int32_t* src = plane + iy * s.w;
          for (int64_t ox = 0; ox < s.ow; ++ox) {
            const int64_t ix = ox * s.sw - s.pw + kx;
            int32_t v = 0;
            if (ix >= 0 && ix < s.w) v = std::min(32767, std::max(-32768, src[ix] - zero_point));
            row[ox] = static_cast<int16_t>(v);
          }
        }
      }
  }
}

void gemm_s16(const int16_t* a, const int16_t* b, int32_t* c, int64_t m0, int64_t m1, int64_t n, int64_t k) {
  alignas(64) int32_t acc[4][kColBlock];
  for (int64_t n0 = 0; n0 < n; n0 += kColBlock) {
    const int64_t nb = std::min(kColBlock, n - n0);
    int64_t m = m0;
    // Four output rows share every load of a B row (register/L1 reuse); the inner loop over
    // positions is contiguous so the compiler vectorizes the int16 x int16 -> int32 products.
    for (; m + 4 <= m1; m += 4) {
      for (int r = 0; r < 4; ++r) std::fill(acc[r], acc[r] + nb, 0);
      const int16_t* a0 = a + m * k;
      for (int64_t kk = 0; kk < k; ++kk) {
        const int16_t* br = b + kk * n + n0;
        const int32_t w0 = a0[kk], w1 = a0[k + kk], w2 = a0[2 * k + kk], w3 = a0[3 * k + kk];
        for (int64_t j = 0; j < nb; ++j) {
          const int32_t v = br[j];
          acc[0][j] += w0 * v;
          acc[1][j] += w1 * v;
          acc[2][j] += w2 * v;
          acc[3][j] += w3 * v;
        }
      }
      for (int r = 0; r < 4; ++r) std::copy(acc[r], acc[r] + nb, c + (m + r) * n + n0);
    }
    for (; m < m1; ++m) {
      std::fill(acc[0], acc[0] + nb, 0);
      const int16_t* ar = a + m * k;
      for (int64_t kk = 0; kk < k; ++kk) {
        const int16_t* br = b + kk * n + n0;
        const int32_t w0 = ar[kk];
        for (int64_t j = 0; j < nb; ++j) acc[0][j] += w0 * static_cast<int32_t>(br[j]);
      }
      std::copy(acc[0], acc[0] + nb, c + m * n + n0);
    }
  }
}

namespace {

// Runs `per_rows(image, col, m0, m1)` for every image and row range, parallel over images when
// there are enough of them, otherwise over blocks of output channels.
template <typename RowsFn>
void run_conv(const int32_t* x, int32_t zero_point, const ConvShape& s, int num_threads, RowsFn per_rows) {
  const int threads = resolve_threads(num_threads);
  const int64_t col_size = s.k() * s.positions();
  const int64_t image_size = s.c * s.h * s.w;
  if (s.n >= threads || threads == 1) {
#pragma omp parallel num_threads(threads)
    {
      std::vector<int16_t> col(static_cast<size_t>(col_size));
#pragma omp for schedule(dynamic, 1)
      for (int64_t img = 0; img < s.n; ++img) {
        im2col_s16(x + img * image_size, zero_point, s, col.data());
        per_rows(img, col.data(), int64_t{0}, s.m);
      }
    }
  } else {
    std::vector<int16_t> col(static_cast<size_t>(col_size));
    for (int64_t img = 0; img < s.n; ++img) {
      im2col_s16(x + img * image_size, zero_point, s, col.data());
      const int64_t blocks = (s.m + 3) / 4;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
      for (int64_t blk = 0; blk < blocks; ++blk)
        per_rows(img, col.data(), blk * 4, std::min(s.m, blk * 4 + 4));
    }
  }
}

}  // namespace

void conv2d_int(const int32_t* x, int32_t zero_point, const int16_t* weight, const ConvShape& s, int32_t* acc,
                int num_threads) {
  const int64_t npos = s.positions(), k = s.k();
  run_conv(x, zero_point, s, num_threads, [&](int64_t img, const int16_t* col, int64_t m0, int64_t m1) {
    gemm_s16(weight, col, acc + img * s.m * npos, m0, m1, npos, k);
  });
}

std::vector<int16_t> expand_codebook_weights(const uint8_t* indices, const int32_t* codebook, int64_t groups,
                                             int codes, int64_t m, int64_t k) {
  if (groups != 1 && groups != m)
    throw std::invalid_argument("codebook groups must be 1 or the number of output channels");
  if (codes < 1 || codes > 256) throw std::invalid_argument("codebook size must be in [1, 256]");
  for (int64_t i = 0; i < groups * codes; ++i)
    if (codebook[i] < -32768 || codebook[i] > 32767)
      throw std::invalid_argument("integer codebook entry " + std::to_string(codebook[i]) + " does not fit int16");
  std::vector<int16_t> w(static_cast<size_t>(m * k));
  for (int64_t r = 0; r < m; ++r) {
    const int32_t* cb = codebook + (groups == 1 ? 0 : r) * codes;
    for (int64_t i = 0; i < k; ++i) {
      const int idx = indices[r * k + i];
      if (idx >= codes)
        throw std::invalid_argument("weight index " + std::to_string(idx) + " at [" + std::to_string(r) + ", " +
                                    std::to_string(i) + "] exceeds codebook size " + std::to_string(codes));
      w[r * k + i] = static_cast<int16_t>(cb[idx]);
    }
  }
  return w;
}

SharedWeights make_shared_weights(const uint8_t* indices, const int32_t* codebook, int64_t groups, int codes,
                                  int64_t m, int64_t k) {
  // Validation (index range, int16 centroids) shared with the dense path.
  (void)expand_codebook_weights(indices, codebook, groups, codes, m, k);
  SharedWeights sw;
  sw.m = m; sw.k = k; sw.codes = codes;
  sw.base_coeff.resize(m);
  sw.delta.assign(static_cast<size_t>(m * codes), 0);
  sw.offsets.assign(static_cast<size_t>(m * codes + 1), 0);
  std::vector<int64_t> count(codes);
  for (int64_t r = 0; r < m; ++r) {
    const uint8_t* idx = indices + r * k;
    const int32_t* cb = codebook + (groups == 1 ? 0 : r) * codes;
    std::fill(count.begin(), count.end(), 0);
    for (int64_t i = 0; i < k; ++i) count[idx[i]]++;
    const int base = static_cast<int>(std::max_element(count.begin(), count.end()) - count.begin());
    sw.base_coeff[r] = cb[base];
    for (int j = 0; j < codes; ++j) {
      sw.delta[r * codes + j] = cb[j] - cb[base];
      sw.offsets[r * codes + j + 1] = sw.offsets[r * codes + j] + (j == base ? 0 : count[j]);
    }
    // Rows are appended group by group (j ascending) to match the offsets.
    for (int j = 0; j < codes; ++j) {
      if (j == base) continue;
      for (int64_t i = 0; i < k; ++i)
        if (idx[i] == j) sw.rows.push_back(static_cast<int32_t>(i));
    }
  }
  return sw;
}

void conv2d_int_shared(const int32_t* x, int32_t zero_point, const SharedWeights& w, const ConvShape& s,
                       int32_t* acc, int num_threads) {
  if (w.m != s.m || w.k != s.k()) throw std::invalid_argument("conv2d_int_shared: weight plan does not match the shape");
  const int64_t npos = s.positions(), k = s.k();
  run_conv(x, zero_point, s, num_threads, [&](int64_t img, const int16_t* col, int64_t m0, int64_t m1) {
    alignas(64) int32_t colsum[kColBlock];
    alignas(64) int32_t group[kColBlock];
    int32_t* out = acc + img * s.m * npos;
    for (int64_t n0 = 0; n0 < npos; n0 += kColBlock) {
      const int64_t nb = std::min(kColBlock, npos - n0);
      std::fill(colsum, colsum + nb, 0);
      for (int64_t kk = 0; kk < k; ++kk) {
        const int16_t* br = col + kk * npos + n0;
        for (int64_t j = 0; j < nb; ++j) colsum[j] += br[j];
      }
      for (int64_t m = m0; m < m1; ++m) {
        int32_t* dst = out + m * npos + n0;
        const int32_t cbase = w.base_coeff[m];
        for (int64_t j = 0; j < nb; ++j) dst[j] = cbase * colsum[j];
        for (int code = 0; code < w.codes; ++code) {
          const int64_t g = m * w.codes + code;
          const int64_t r0 = w.offsets[g], r1 = w.offsets[g + 1];
          if (r0 == r1) continue;
          std::fill(group, group + nb, 0);
          for (int64_t r = r0; r < r1; ++r) {  // additions only
            const int16_t* br = col + int64_t{w.rows[r]} * npos + n0;
            for (int64_t j = 0; j < nb; ++j) group[j] += br[j];
          }
          const int32_t d = w.delta[g];
          for (int64_t j = 0; j < nb; ++j) dst[j] += d * group[j];
        }
      }
    }
  });
}

}  // namespace qcnn
