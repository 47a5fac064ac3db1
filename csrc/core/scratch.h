// Scratch buffers of the convolution and pooling kernels, owned by whoever runs them. A loaded model keeps one
// ThreadScratch per thread of its runs and frees them with itself: thread_local buffers would stay at the largest
// size any model ever needed until their thread ends.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace qcnn {

// One conv tile's panels and accumulators (each thread that computes tiles has its own).
struct Workspace {
  std::vector<int16_t> panel;
  std::vector<int32_t> acc;
  std::vector<int64_t> bit_slots;
  std::vector<int64_t> row_offsets;  // GEMM reading the padded image: each output position's input offset
  std::vector<uint8_t> border;       // depthwise: a row of x_sub for the taps outside the image
  std::vector<const uint8_t*> taps;  // depthwise: each tap's input pixel
  std::vector<uint8_t> quads;        // depthwise on AVX-512 VNNI: the quads of a row segment
  std::vector<uint8_t> panel8;       // the AMX GEMM's row panel
  std::vector<int64_t> amx_groups, amx_group_offsets, amx_steps;  // the AMX GEMM's A-tile tables
};

struct ThreadScratch {
  Workspace tile;
  // conv_image's whole-image buffers (the calling thread's): the padded image and the binary kernel's tables
  std::vector<int16_t> padded;
  std::vector<uint8_t> padded8, bit_tables;
  std::vector<uint32_t> bit_quads;
  // pooling: a window's per-channel sums and column maxima (int64 units, any code type fits)
  std::vector<int64_t> pool_sums, pool_columns;
  // global pooling: this thread's per-channel partial sums or maxima over the positions it has reduced
  std::vector<int64_t> reduce_partials;
};

// The scratch of the threads of one run: slot 0 is the calling thread's, slot t is OpenMP thread t's in a parallel
// region the kernel opens (never more threads than slots).
struct ScratchTeam {
  ThreadScratch* slots = nullptr;
  int size = 0;

  ThreadScratch& operator[](int t) const {
    if (t < 0 || t >= size) throw std::logic_error("ScratchTeam: no scratch for thread " + std::to_string(t));
    return slots[t];
  }
};

}  // namespace qcnn
