// Integer convolution / fully connected kernels on int32 activation codes (NCHW), producing
// int32 accumulators acc[n, m, oy, ox] = sum_k (q_x - zp_x) * w_int[m, k] (no float anywhere).
//
// Two weight paths:
//  * dense: integer weights w_int[M, K] (int16 storage; codebook centroids quantized to
//    integers, uniform / fixed-point / binary codes), im2col to int16 + a blocked int16 GEMM.
//  * shared (weight sharing, Deep Compression style): per output channel the inputs are first
//    summed per codebook index (additions only), then multiplied by the k integer centroids.
//    The channel's most frequent index is the base: acc = c_base * sum_k x_k
//    + sum_{j != base} (c_j - c_base) * sum_{k: idx=j} x_k, so the base positions cost nothing.
// A linear layer is a 1x1 convolution on an [N, C, 1, 1] input.
#pragma once
#include <cstdint>
#include <vector>

namespace qcnn {

struct ConvShape {
  int64_t n = 0, c = 0, h = 0, w = 0, m = 0;
  int kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
  int64_t oh = 0, ow = 0;
  int64_t k() const { return c * kh * kw; }
  int64_t positions() const { return oh * ow; }
};

// Validates the arguments (std::invalid_argument naming the bad one) and computes oh, ow.
ConvShape make_conv_shape(int64_t n, int64_t c, int64_t h, int64_t w, int64_t m, int kh, int kw, int sh, int sw,
                          int ph, int pw);

// col[K, oh*ow] = q - zp for one image x[C, H, W] (padding gives 0, i.e. real value 0);
// values are saturated to int16.
void im2col_s16(const int32_t* x, int32_t zero_point, const ConvShape& s, int16_t* col);

// c[m0:m1, 0:n] = a[m0:m1, 0:k] * b[0:k, 0:n] (int16 x int16 -> int32), serial.
void gemm_s16(const int16_t* a, const int16_t* b, int32_t* c, int64_t m0, int64_t m1, int64_t n, int64_t k);

// Dense path. weight[M, K] int16 with K = C*kh*kw in (c, ky, kx) order; acc[N, M, oh, ow].
void conv2d_int(const int32_t* x, int32_t zero_point, const int16_t* weight, const ConvShape& s, int32_t* acc,
                int num_threads);

// Weight-sharing plan built once from indices[M, K] and integer codebook[G, k] (G = 1: one
// codebook for all channels, G = M: one per channel).
struct SharedWeights {
  int64_t m = 0, k = 0;
  int codes = 0;
  std::vector<int32_t> base_coeff;   // [M] c_base
  std::vector<int32_t> delta;        // [M, codes] c_j - c_base (unused for j = base)
  std::vector<int64_t> offsets;      // [M*codes + 1] CSR offsets into rows, group (m, j), base group empty
  std::vector<int32_t> rows;         // input rows (k) of each group
};

SharedWeights make_shared_weights(const uint8_t* indices, const int32_t* codebook, int64_t groups, int codes,
                                  int64_t m, int64_t k);

// Dense integer weights w[m, k] = codebook[g(m), indices[m, k]] as int16 (throws if a centroid
// does not fit int16).
std::vector<int16_t> expand_codebook_weights(const uint8_t* indices, const int32_t* codebook, int64_t groups,
                                             int codes, int64_t m, int64_t k);

// Shared path, same output as conv2d_int with the expanded weights.
void conv2d_int_shared(const int32_t* x, int32_t zero_point, const SharedWeights& w, const ConvShape& s,
                       int32_t* acc, int num_threads);

}  // namespace qcnn
