// TileSinks for the conv tests: one that calls a function per finished tile, one that gives every tile its own
// buffer (as the engine does for values that live only inside a fused step) and copies it into place.
#pragma once
#include <atomic>
#include <cstring>
#include <utility>
#include <vector>

#include "core/qgemm.h"

template <typename F>
struct DoneSink : qcnn::TileSink {
  F fn;
  explicit DoneSink(F f) : fn(std::move(f)) {}
  void done(int64_t first, int64_t count) override { fn(first, count); }
};
template <typename F>
DoneSink<F> done_sink(F f) {
  return DoneSink<F>(std::move(f));
}

// Tiles go to a buffer of the computing thread, filled with 0x5A first, then into out[first * row_bytes...]. `broke`
// records a tile larger than conv_max_tile_positions or a kernel that wrote past its tile (the sentinel row after it).
struct CopySink : qcnn::TileSink {
  uint8_t* out;
  int64_t row_bytes, max_positions;
  std::atomic<bool> broke{false};  // tiles run on several threads
  CopySink(void* o, int64_t rb, int64_t maxp) : out(static_cast<uint8_t*>(o)), row_bytes(rb), max_positions(maxp) {}
  static std::vector<uint8_t>& buf() {
    thread_local std::vector<uint8_t> b;
    return b;
  }
  void* buffer(int64_t, int64_t count) override {
    if (count > max_positions) broke = true;
    buf().assign(static_cast<size_t>((count + 1) * row_bytes), 0x5A);
    return buf().data();
  }
  void done(int64_t first, int64_t count) override {
    std::memcpy(out + first * row_bytes, buf().data(), static_cast<size_t>(count * row_bytes));
    for (int64_t i = count * row_bytes; i < (count + 1) * row_bytes; ++i)
      if (buf()[static_cast<size_t>(i)] != 0x5A) broke = true;
  }
};
