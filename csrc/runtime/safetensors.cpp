#include "runtime/safetensors.h"

#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

namespace qcnn::runtime {

namespace {
constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // as the reference implementation: 100 MB

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

bool parse_dtype(const std::string& s, DType* out) {
  static const std::map<std::string, DType> table = {{"U8", DType::U8},   {"I8", DType::I8},   {"I16", DType::I16},
                                                     {"I32", DType::I32}, {"I64", DType::I64}, {"F32", DType::F32},
                                                     {"F64", DType::F64}};
  auto it = table.find(s);
  if (it == table.end()) return false;
  *out = it->second;
  return true;
}
}  // namespace

int dtype_size(DType d) {
  switch (d) {
    case DType::U8: case DType::I8: return 1;
    case DType::I16: return 2;
    case DType::I32: case DType::F32: return 4;
    case DType::I64: case DType::F64: return 8;
  }
  return 0;
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::U8: return "U8";
    case DType::I8: return "I8";
    case DType::I16: return "I16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::F32: return "F32";
    case DType::F64: return "F64";
  }
  return "?";
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

SafetensorsFile SafetensorsFile::read(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw FormatError(path + ": cannot open file");
  const std::streamoff size = in.tellg();
  if (size < 0) throw FormatError(path + ": cannot determine file size");
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.seekg(0);
  if (size > 0 && !in.read(reinterpret_cast<char*>(bytes.data()), size)) throw FormatError(path + ": read failed");
  return parse(std::move(bytes), path);
}

SafetensorsFile SafetensorsFile::parse(std::vector<uint8_t> bytes, const std::string& origin) {
  SafetensorsFile f;
  f.origin_ = origin;
  f.bytes_ = std::move(bytes);
  const uint64_t file_size = f.bytes_.size();
  if (file_size < 8)
    throw FormatError(origin + ": header length: file has " + std::to_string(file_size) + " bytes, needs at least 8");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | f.bytes_[i];
  if (header_len > kMaxHeaderBytes)
    throw FormatError(origin + ": header length " + std::to_string(header_len) + " exceeds the 100 MB limit");
  if (header_len > file_size - 8)
    throw FormatError(origin + ": header length " + std::to_string(header_len) + " runs beyond the end of the file (" +
                      std::to_string(file_size) + " bytes)");
  const char* hbegin = reinterpret_cast<const char*>(f.bytes_.data() + 8);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(hbegin, hbegin + header_len);
  } catch (const nlohmann::json::parse_error& e) {
    throw FormatError(origin + ": header (bytes 8.." + std::to_string(8 + header_len) + "): invalid JSON: " + e.what());
  }
  if (!header.is_object()) throw FormatError(origin + ": header: top level must be a JSON object");
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_size - data_start;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw FormatError(origin + ": __metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) throw FormatError(origin + ": __metadata__[" + m.key() + "] must be a string");
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = origin + ": tensor '" + name + "'";
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      throw FormatError(where + ": entry needs dtype, shape and data_offsets");
    TensorView t;
    t.name = name;
    if (!v["dtype"].is_string() || !parse_dtype(v["dtype"].get<std::string>(), &t.dtype))
      throw FormatError(where + ": unsupported dtype " + v["dtype"].dump());
    if (!v["shape"].is_array()) throw FormatError(where + ": shape must be an array");
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) throw FormatError(where + ": shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > 0 && numel > (uint64_t{1} << 62) / dim) throw FormatError(where + ": shape " + v["shape"].dump() + " overflows");
      numel *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw FormatError(where + ": data_offsets must be [begin, end] non-negative integers");
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size)
      throw FormatError(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                        "] outside the data section of " + std::to_string(data_size) + " bytes (file offset " +
                        std::to_string(data_start) + ")");
    if (numel > (uint64_t{1} << 60) || end - begin != numel * dtype_size(t.dtype))
      throw FormatError(where + ": " + std::to_string(end - begin) + " bytes do not hold shape " +
                        shape_str(t.shape) + " of " + dtype_name(t.dtype));
    t.data = f.bytes_.data() + data_start + begin;
    t.bytes = static_cast<int64_t>(end - begin);
    f.tensors_[name] = std::move(t);
  }
  return f;
}

const TensorView& SafetensorsFile::tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw FormatError(origin_ + ": tensor '" + name + "' is missing");
  const TensorView& t = it->second;
  if (t.dtype != dtype)
    throw FormatError(origin_ + ": tensor '" + name + "' has dtype " + dtype_name(t.dtype) + ", expected " +
                      dtype_name(dtype));
  if (!shape.empty() && t.shape != shape)
    throw FormatError(origin_ + ": tensor '" + name + "' has shape " + shape_str(t.shape) + ", expected " +
                      shape_str(shape));
  return t;
}

}  // namespace qcnn::runtime
