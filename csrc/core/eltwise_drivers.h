// Internal (eltwise_avx2.cpp, eltwise_neon.cpp): the drivers of the elementwise kernels for the paths that run whole
// vectors from the start of their arguments and leave the last codes to the scalar loop. Each driver checks where the
// vector form equals the scalar one, picks the storage types (with_vector_codes) and hands the rest to the scalar
// loop; the ISA file gives it its runs as generic callables, each returning how many codes it did:
//   requantize: run(src, dst, count, ClampAdd sat, multiplier, Requant)
//   add:        wide(a, b, dst, count, ClampAdd sat_a, a_multiplier, ClampAdd sat_b, b_multiplier, Requant) in int64
//               lanes, narrow(a, b, dst, count, a_add, a_multiplier, b_add, b_multiplier, Requant) in int32 lanes
//               where add_fits_int32
//   mul:        run(a, b, dst, count, a_add, b_add, multiplier, Requant), on runs of b's length
//   clamp:      run(src, dst, count, ClampAdd)
//   affine:     run(src, dst, positions, channels, ClampAdd sat, multiplier, shift, bias, zo, lo, hi, out_offset) on
//               the first channels / width * width channels of every position (returns nothing)
#pragma once
#include <algorithm>
#include <cstdint>

#include "core/eltwise_kernels.h"

namespace qcnn {

template <typename Run>
void requantize_by_vectors(CodesIn in, int64_t count, int32_t in_zero_point, int32_t multiplier, int shift,
                           int32_t out_zero_point, int32_t lo, int32_t hi, CodesOut out, Run&& run) {
  const Requant r{shift, out_zero_point, lo, hi, out.offset};
  ClampAdd sat;
  int64_t done = 0;
  if (r.valid() && saturating_add(int64_t{in.offset} - in_zero_point, &sat))
    with_vector_codes(in, out, [&](auto src, auto dst) { done = run(src, dst, count, sat, multiplier, r); });
  requantize_codes_scalar(codes_from(in, done), count - done, in_zero_point, multiplier, shift, out_zero_point, lo, hi,
                          codes_from(out, done));
}

template <typename Wide, typename Narrow>
void add_by_vectors(CodesIn a, int32_t a_zero_point, int32_t a_multiplier, CodesIn b, int32_t b_zero_point,
                    int32_t b_multiplier, int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count,
                    CodesOut out, InputRange a_range, InputRange b_range, Wide&& wide, Narrow&& narrow) {
  const Requant r{shift, out_zero_point, lo, hi, out.offset};
  ClampAdd sat_a, sat_b;
  int64_t done = 0;
  if (r.valid() && add_fits_int32(a_range, a_multiplier, b_range, b_multiplier, shift, out_zero_point))
    with_vector_codes(a, b, out, [&](auto sa, auto sb, auto dst) {
      done = narrow(sa, sb, dst, count, wrap32(int64_t{a.offset} - a_zero_point), a_multiplier,
                    wrap32(int64_t{b.offset} - b_zero_point), b_multiplier, r);
    });
  else if (r.valid() && saturating_add(int64_t{a.offset} - a_zero_point, &sat_a) &&
           saturating_add(int64_t{b.offset} - b_zero_point, &sat_b))
    with_vector_codes(a, b, out, [&](auto sa, auto sb, auto dst) {
      done = wide(sa, sb, dst, count, sat_a, a_multiplier, sat_b, b_multiplier, r);
    });
  add_codes_scalar(codes_from(a, done), a_zero_point, a_multiplier, codes_from(b, done), b_zero_point, b_multiplier,
                   shift, out_zero_point, lo, hi, count - done, codes_from(out, done));
}

// (a - za) * (b - zb) wraps exactly in int32 lanes: the caller keeps both factors within 2^15. Runs of b's length:
// the whole of a, or one position of b_channels codes at a time (b stays in L1). `width`: codes per vector step.
template <typename Run>
void mul_by_vectors(CodesIn a, int32_t a_zero_point, CodesIn b, int32_t b_zero_point, int64_t b_channels,
                    int32_t multiplier, int shift, int32_t out_zero_point, int32_t lo, int32_t hi, int64_t count,
                    CodesOut out, int64_t width, Run&& run) {
  const Requant r{shift, out_zero_point, lo, hi, out.offset};
  const int32_t a_add = wrap32(int64_t{a.offset} - a_zero_point), b_add = wrap32(int64_t{b.offset} - b_zero_point);
  const int64_t span = b_channels > 0 ? b_channels : count;
  if (!r.valid() || span < width || count == 0) {
    mul_codes_scalar(a, a_zero_point, b, b_zero_point, b_channels, multiplier, shift, out_zero_point, lo, hi, count,
                     out);
    return;
  }
  for (int64_t p = 0; p < count; p += span) {
    const int64_t n = std::min(span, count - p);
    int64_t done = 0;
    const CodesIn ap = codes_from(a, p);
    const CodesOut op = codes_from(out, p);
    if (!with_vector_codes(ap, b, op, [&](auto sa, auto sb, auto dst) {
          done = run(sa, sb, dst, n, a_add, b_add, multiplier, r);
        })) {
      mul_codes_scalar(a, a_zero_point, b, b_zero_point, b_channels, multiplier, shift, out_zero_point, lo, hi, count,
                       out);
      return;
    }
    if (done < n)
      mul_codes_scalar(codes_from(ap, done), a_zero_point, codes_from(b, done), b_zero_point, 0, multiplier, shift,
                       out_zero_point, lo, hi, n - done, codes_from(op, done));
  }
}

template <typename Run>
void clamp_by_vectors(CodesIn in, int64_t count, int32_t lo, int32_t hi, CodesOut out, Run&& run) {
  ClampAdd c;
  int64_t done = 0;
  if (stored_clamp(in.offset, lo, hi, out.offset, &c))
    with_vector_codes(in, out, [&](auto src, auto dst) { done = run(src, dst, count, c); });
  clamp_codes_scalar(codes_from(in, done), count - done, lo, hi, codes_from(out, done));
}

template <typename Run>
void affine_by_vectors(CodesIn in, int64_t count, int64_t channels, int32_t in_zero_point, const int32_t* multiplier,
                       const uint8_t* shift, const int64_t* bias, int32_t out_zero_point, int32_t lo, int32_t hi,
                       CodesOut out, int64_t width, Run&& run) {
  ClampAdd sat;
  if (channels < width ||
      !affine_vector_ok(in, count, channels, in_zero_point, multiplier, shift, bias, out_zero_point, lo, hi, &sat) ||
      !with_vector_codes(in, out, [&](auto src, auto dst) {
        run(src, dst, count / channels, channels, sat, multiplier, shift, bias, out_zero_point, lo, hi, out.offset);
      })) {
    affine_codes_scalar(in, count, channels, in_zero_point, multiplier, shift, bias, out_zero_point, lo, hi, out);
    return;
  }
  const int64_t full = channels / width * width;
  if (full < channels)
    for (int64_t p = 0; p < count / channels; ++p)
      affine_codes_scalar(codes_from(in, p * channels + full), channels - full, channels - full, in_zero_point,
                          multiplier + full, shift + full, bias + full, out_zero_point, lo, hi,
                          codes_from(out, p * channels + full));
}

}  // namespace qcnn
