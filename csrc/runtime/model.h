// The qcnn integer inference engine, the only interpreter of .qcnn files (docs/FORMAT.md). It
// validates every field at load, builds one execution plan (weights pre-packed for the kernel of
// this CPU, activations in NHWC uint8 where their code range allows, buffers assigned by
// liveness), and runs uint8 images to float logits. qcnn-infer and qcnn.load (through qcnn._C)
// both use it: same validation, same kernels, bit-identical logits.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/safetensors.h"

namespace qcnn::runtime {

// The most threads a run takes (an OpenMP pool of far more fails to start or aborts the process).
constexpr int kMaxThreads = 4096;

struct LoadOptions {
  // Bounds on the work one image may cost, checked at load: far above real CNNs (ResNet-152 at
  // 224x224 is 11.5 G MACs, its largest activation 25 MB), low enough that a small crafted file
  // cannot make the engine run for minutes or allocate gigabytes per image.
  int64_t max_macs_per_image = int64_t{1} << 35;             // 34 G multiply-accumulates
  // Every other operation, one per element a node reads or writes, per pooling window cell, per element of a
  // convolution's padded image (Model::ops_per_image): a 2 KB file of huge pooling windows has next to no MACs.
  // ResNet-50 at 224x224 is 0.06 G, EfficientNet-B0 0.044 G; crafted files run at 1-5 ns per op.
  int64_t max_ops_per_image = int64_t{1} << 32;
  int64_t max_activation_bytes_per_image = int64_t{1} << 30;  // 1 GiB of live activations
  // Keep every convolution's weights in plain form too, for count_overflows (2 bytes per weight).
  bool count_overflows = false;
  // Fuse pointwise nodes (requantize, affine, add, mul, relu, lut) into the node that produces their input, so
  // they run on its output tile by tile while it is in cache. Bit-exact either way; false runs every node alone.
  bool fuse = true;
};

struct LayerProfile {
  std::string name, op;
  std::string kernel;  // convolutions and linear layers: the kernel chosen at load (conv_kernel_name); "fused"
                       // for a node that runs inside the node before it (its seconds are counted there)
  int64_t macs_per_image = 0;
  double seconds = 0;  // summed over the images of the profiled run
};

struct Plan;  // the execution plan (model.cpp)

class Model {
 public:
  static Model load(const std::string& path, const LoadOptions& options = {});
  static Model from_file(const SafetensorsFile& file, const LoadOptions& options = {});
  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  // pixels: n images of input_shape() as uint8, NCHW; logits: n * num_classes() floats.
  // num_threads <= 0 uses the OpenMP default, above kMaxThreads is std::invalid_argument; a run uses fewer where
  // their workspace would pass max_activation_bytes_per_image. n = 0 is valid (nothing is written). Thread-safe:
  // every call has its own workspace (the model keeps them for later calls and frees them with itself).
  void run(const uint8_t* pixels, int64_t n, float* logits, int num_threads = 0) const;
  std::vector<float> run(const uint8_t* pixels, int64_t n, int num_threads = 0) const;
  // The checked path (the model loaded with LoadOptions::count_overflows): runs the images and counts,
  // over every conv and linear node, the output values whose running sum leaves the accumulator
  // width the node declares (docs/FORMAT.md `accumulator_bits`; 32 when it declares none).
  int64_t count_overflows(const uint8_t* pixels, int64_t n) const;
  // As run, timing every node; one entry per node, in order.
  std::vector<LayerProfile> profile(const uint8_t* pixels, int64_t n, int num_threads = 0) const;

  const std::vector<int64_t>& input_shape() const;  // [C, H, W]
  int64_t num_classes() const;
  size_t num_nodes() const;
  int64_t macs_per_image() const;
  int64_t ops_per_image() const;  // as LoadOptions::max_ops_per_image counts them
  // Bytes of activation workspace a run of `batch` images on `num_threads` threads (as for run) holds at its peak:
  // per busy thread one image's arena (buffers reused by liveness) and the kernels' scratch.
  int64_t peak_activation_bytes(int64_t batch, int num_threads = 0) const;
  // The instruction set the kernels were chosen for at load ("avx2" or "scalar"; QCNN_ISA forces one).
  const char* isa() const;

 private:
  Model();
  std::unique_ptr<Plan> plan_;
};

}  // namespace qcnn::runtime
