// Bounds-checked reader of a safetensors container: 8-byte little-endian header length, JSON
// header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, data.
#pragma once
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace qcnn::runtime {

// Every problem with a model file: the message names the section, tensor or node and offset.
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class DType { U8, I8, I16, I32, I64, F32, F64 };
int dtype_size(DType d);
const char* dtype_name(DType d);

struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the file buffer, `bytes` long
  int64_t bytes = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Reads and validates the whole file (header, every tensor's dtype/shape/offsets).
  static SafetensorsFile read(const std::string& path);
  static SafetensorsFile parse(std::vector<uint8_t> bytes, const std::string& origin);

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // The tensor, checked to have `dtype` (and `shape` unless empty); FormatError otherwise.
  const TensorView& tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape = {}) const;
  const std::string& origin() const { return origin_; }

 private:
  std::vector<uint8_t> bytes_;
  std::string origin_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, TensorView> tensors_;
};

}  // namespace qcnn::runtime
