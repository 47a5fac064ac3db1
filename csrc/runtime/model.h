// The qcnn integer inference engine: loads a .qcnn file (docs/FORMAT.md), validates every field,
// and runs uint8 images to float logits on the csrc/core integer kernels.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/conv_int.h"
#include "runtime/safetensors.h"

namespace qcnn::runtime {

enum class WeightPath { Dense, Shared };

struct LoadOptions {
  WeightPath weight_path = WeightPath::Dense;
};

struct Step;  // one executable node (model.cpp)

class Model {
 public:
  static Model load(const std::string& path, const LoadOptions& options = {});
  static Model from_file(const SafetensorsFile& file, const LoadOptions& options = {});
  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  // pixels: n images of input_shape() as uint8, NCHW. Returns logits [n, num_classes()].
  std::vector<float> run(const uint8_t* pixels, int64_t n, int num_threads = 0) const;

  const std::vector<int64_t>& input_shape() const { return input_shape_; }
  int64_t num_classes() const { return num_classes_; }
  size_t num_nodes() const { return steps_.size(); }

 private:
  Model();
  std::vector<int64_t> input_shape_;
  int64_t num_classes_ = 0;
  std::vector<int32_t> lut_;  // [C, 256]
  std::vector<std::unique_ptr<Step>> steps_;
  std::vector<std::vector<int64_t>> value_shapes_;  // per value (0 = input), without batch
};

}  // namespace qcnn::runtime
