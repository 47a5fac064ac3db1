// Bounds-checked reader of a safetensors container: 8-byte little-endian header length, JSON
// header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, data.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace qcnn::runtime {

// Every problem with a model file: the message names the section, tensor or node and offset.
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The file itself could not be read (missing, a directory, not a regular file, a failed read): a FormatError to
// every caller that does not ask (the C interface reports it as QCNN_ERROR_IO).
class FileError : public FormatError {
 public:
  using FormatError::FormatError;
};

// Parses JSON from an untrusted file. Nesting deeper than `max_depth` is rejected by a linear
// pre-scan before any parse, so that neither the parse nor anything later that recurses over the
// document (dump, copy, comparison) can exhaust the stack. Errors are FormatErrors that start with
// `where` and give the byte offset, never the offending text.
nlohmann::json parse_untrusted_json(const std::string& text, const std::string& where, int max_depth = 64);
nlohmann::json parse_untrusted_json(const char* begin, const char* end, const std::string& where, int max_depth = 64);

// `s` quoted for an error message: control and non-ASCII bytes escaped, cut after `max_chars`.
std::string printable(const std::string& s, size_t max_chars = 80);

// A shape or list of dimensions for an error message: "[2, 3]", cut after 16 entries.
std::string shape_str(const std::vector<int64_t>& s);

// The whole content of a regular file. FormatError naming the path when it is missing, a directory,
// not a regular file, or larger than `max_bytes` (checked before anything is allocated). `what`
// says what the file is ("model file", "IDX file").
std::vector<uint8_t> read_regular_file(const std::string& path, const char* what,
                                       uint64_t max_bytes = UINT64_MAX);

enum class DType { U8, I8, I16, I32, I64, F32, F64 };
int dtype_size(DType d);
const char* dtype_name(DType d);

struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the file buffer, `bytes` long
  int64_t bytes = 0;
  int64_t numel() const;  // checked at parse: fits int64, and numel * dtype_size == bytes
};

class SafetensorsFile {
 public:
  // Move-only: the tensor views point into the owned buffer.
  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // Reads and validates the whole file (header, every tensor's dtype/shape/offsets, no two
  // tensors sharing bytes).
  static SafetensorsFile read(const std::string& path);
  static SafetensorsFile parse(std::vector<uint8_t> bytes, const std::string& origin);

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // The tensor, checked to have `dtype` (and `shape` unless empty); FormatError otherwise.
  const TensorView& tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape = {}) const;
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::string& origin() const { return origin_; }

 private:
  SafetensorsFile() = default;
  std::vector<uint8_t> bytes_;
  std::string origin_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, TensorView> tensors_;
};

}  // namespace qcnn::runtime
