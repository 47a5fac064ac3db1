#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>

namespace qcnn::runtime {

namespace {
constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // as the reference implementation: 100 MB

bool parse_dtype(const std::string& s, DType* out) {
  static const std::map<std::string, DType> table = {{"U8", DType::U8},   {"I8", DType::I8},   {"I16", DType::I16},
                                                     {"I32", DType::I32}, {"I64", DType::I64}, {"F32", DType::F32},
                                                     {"F64", DType::F64}};
  auto it = table.find(s);
  if (it == table.end()) return false;
  *out = it->second;
  return true;
}

// nlohmann's messages end with "; last read: '<token>'" (and maybe "; expected ...") or
// "parsing '<number>'": the token is untrusted text of any length, so only the part before it is kept.
std::string describe_parse_error(const nlohmann::json::exception& e) {
  std::string msg = e.what();
  const size_t bracket = msg.find("] ");
  if (bracket != std::string::npos) msg = msg.substr(bracket + 2);
  for (const char* quote : {"; last read:", " parsing '"})  // the second: out_of_range.406, number overflow
    if (const size_t token = msg.find(quote); token != std::string::npos) msg.resize(token);
  return printable(msg, 200);
}

}  // namespace

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size() && i < 16; ++i) o << (i ? ", " : "") << s[i];
  if (s.size() > 16) o << ", ... (" << s.size() << " entries)";
  o << "]";
  return o.str();
}

std::string printable(const std::string& s, size_t max_chars) {
  std::string out;
  size_t shown = 0;
  for (unsigned char c : s) {
    if (shown == max_chars) {
      out += "...";
      break;
    }
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
    ++shown;
  }
  return out;
}

nlohmann::json parse_untrusted_json(const char* begin, const char* end, const std::string& where, int max_depth) {
  // Depth of [ and { outside strings; a backslash in a string escapes the next byte.
  int depth = 0;
  bool in_string = false;
  for (const char* p = begin; p < end; ++p) {
    const char c = *p;
    if (in_string) {
      if (c == '\\') {
        ++p;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth)
        throw FormatError(where + ": JSON nesting deeper than " + std::to_string(max_depth) + " levels at byte " +
                          std::to_string(p - begin));
    } else if ((c == ']' || c == '}') && --depth < 0) {
      // Not JSON; caught here so that no later bracket can escape the count.
      throw FormatError(where + ": invalid JSON (byte " + std::to_string(p - begin) +
                        " of the text): unbalanced closing bracket");
    }
  }
  try {
    return nlohmann::json::parse(begin, end);
  } catch (const nlohmann::json::parse_error& e) {
    throw FormatError(where + ": invalid JSON (byte " + std::to_string(e.byte > 0 ? e.byte - 1 : 0) +
                      " of the text): " + describe_parse_error(e));
  } catch (const nlohmann::json::exception& e) {  // e.g. out_of_range.406, a number literal beyond double
    throw FormatError(where + ": invalid JSON: " + describe_parse_error(e));
  }
}

nlohmann::json parse_untrusted_json(const std::string& text, const std::string& where, int max_depth) {
  return parse_untrusted_json(text.data(), text.data() + text.size(), where, max_depth);
}

std::vector<uint8_t> read_regular_file(const std::string& path, const char* what, uint64_t max_bytes) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw FileError(path + ": cannot open " + what + ": " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw FileError(path + ": is a directory, not a " + what);
  if (!S_ISREG(st.st_mode)) throw FileError(path + ": is not a regular file (a " + what + " must be one)");
  // O_NONBLOCK: should the path have become a FIFO since the stat, open must not wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw FileError(path + ": cannot open " + what + ": " + std::strerror(errno));
  std::vector<uint8_t> bytes;
  try {
    if (::fstat(fd, &st) != 0) throw FileError(path + ": cannot stat " + what + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) throw FileError(path + ": is not a regular file (a " + what + " must be one)");
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size > max_bytes || size > std::numeric_limits<size_t>::max() / 2)
      throw FormatError(path + ": " + what + " of " + std::to_string(size) + " bytes exceeds the limit of " +
                        std::to_string(max_bytes) + " bytes");
    bytes.resize(static_cast<size_t>(size));
    uint64_t done = 0;
    while (done < size) {
      const ssize_t got = ::read(fd, bytes.data() + done, static_cast<size_t>(std::min<uint64_t>(size - done, 1u << 30)));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) throw FileError(path + ": read failed at byte " + std::to_string(done) + ": " + std::strerror(errno));
      if (got == 0)
        throw FileError(path + ": file shrank while reading: " + std::to_string(done) + " of " + std::to_string(size) +
                          " bytes");
      done += static_cast<uint64_t>(got);
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return bytes;
}

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
  return parse(read_regular_file(path, "model file"), path);
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
  const nlohmann::json header = parse_untrusted_json(
      hbegin, hbegin + header_len, origin + ": header (bytes 8.." + std::to_string(8 + header_len) + ")");
  if (!header.is_object()) throw FormatError(origin + ": header: top level must be a JSON object");
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_size - data_start;
  struct Extent {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Extent> extents;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw FormatError(origin + ": __metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw FormatError(origin + ": __metadata__['" + printable(m.key()) + "'] must be a string");
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = origin + ": tensor '" + printable(name) + "'";
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      throw FormatError(where + ": entry needs dtype, shape and data_offsets");
    TensorView t;
    t.name = name;
    const auto& dtype = v["dtype"];
    if (!dtype.is_string()) throw FormatError(where + ": dtype must be a string");
    if (!parse_dtype(dtype.get<std::string>(), &t.dtype))
      throw FormatError(where + ": unsupported dtype '" + printable(dtype.get<std::string>(), 16) + "'");
    if (!v["shape"].is_array()) throw FormatError(where + ": shape must be an array");
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) throw FormatError(where + ": shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        throw FormatError(where + ": shape entry " + std::to_string(dim) + " exceeds int64");
      overflow |= __builtin_mul_overflow(numel, dim, &numel) || numel > uint64_t(std::numeric_limits<int64_t>::max());
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t nbytes = 0;
    overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(t.dtype)), &nbytes);
    // Every partial product must fit int64, even when a later 0 makes the product 0: numel()
    // multiplies in order.
    if (overflow || nbytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw FormatError(where + ": shape " + shape_str(t.shape) + " of " + dtype_name(t.dtype) +
                        " overflows a 64-bit byte count");
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw FormatError(where + ": data_offsets must be [begin, end] non-negative integers");
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    const std::string range = "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "]";
    if (begin > end)
      throw FormatError(where + ": " + range + " outside the data section: begin after end");
    if (end > data_size)
      throw FormatError(where + ": " + range + " outside the data section of " + std::to_string(data_size) +
                        " bytes (file offset " + std::to_string(data_start) + ")");
    if (end - begin != nbytes)
      throw FormatError(where + ": " + range + " hold " + std::to_string(end - begin) + " bytes, shape " +
                        shape_str(t.shape) + " of " + dtype_name(t.dtype) + " needs " + std::to_string(nbytes));
    t.data = f.bytes_.data() + data_start + begin;
    t.bytes = static_cast<int64_t>(nbytes);
    auto inserted = f.tensors_.emplace(name, std::move(t));
    if (begin != end) extents.push_back({begin, end, &inserted.first->first});
  }
  // No two tensors may share a byte: sorted by begin, each must start at or after the furthest end so far.
  std::sort(extents.begin(), extents.end(), [](const Extent& a, const Extent& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const Extent* furthest = nullptr;
  for (const Extent& e : extents) {
    if (furthest && e.begin < furthest->end)
      throw FormatError(origin + ": tensors '" + printable(*furthest->name) + "' (data_offsets [" +
                        std::to_string(furthest->begin) + ", " + std::to_string(furthest->end) + "]) and '" +
                        printable(*e.name) + "' (data_offsets [" + std::to_string(e.begin) + ", " +
                        std::to_string(e.end) + "]) overlap in the data section");
    if (!furthest || e.end > furthest->end) furthest = &e;
  }
  return f;
}

const TensorView& SafetensorsFile::tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw FormatError(origin_ + ": tensor '" + printable(name) + "' is missing");
  const TensorView& t = it->second;
  if (t.dtype != dtype)
    throw FormatError(origin_ + ": tensor '" + printable(name) + "' has dtype " + dtype_name(t.dtype) + ", expected " +
                      dtype_name(dtype));
  if (!shape.empty() && t.shape != shape)
    throw FormatError(origin_ + ": tensor '" + printable(name) + "' has shape " + shape_str(t.shape) + ", expected " +
                      shape_str(shape));
  return t;
}

}  // namespace qcnn::runtime
