#include "runtime/idx.h"

#include <zlib.h>

#include "runtime/safetensors.h"

namespace qcnn::runtime {

namespace {
struct GzFile {
  gzFile f;
  explicit GzFile(const std::string& path) : f(gzopen(path.c_str(), "rb")) {}
  ~GzFile() {
    if (f) gzclose(f);
  }
};

// Reads exactly `n` bytes; false on a short read.
bool read_exact(gzFile f, uint8_t* out, uint64_t n) {
  while (n > 0) {
    const unsigned chunk = static_cast<unsigned>(std::min<uint64_t>(n, 1u << 30));
    const int got = gzread(f, out, chunk);
    if (got <= 0) return false;
    out += got;
    n -= static_cast<uint64_t>(got);
  }
  return true;
}
}  // namespace

IdxArray read_idx(const std::string& path) {
  GzFile file(path);  // gzread reads uncompressed files transparently
  if (!file.f) throw FormatError(path + ": cannot open IDX file");
  uint8_t magic[4];
  if (!read_exact(file.f, magic, 4)) throw FormatError(path + ": IDX magic: file shorter than 4 bytes");
  if (magic[0] != 0 || magic[1] != 0) throw FormatError(path + ": IDX magic: first two bytes must be zero");
  if (magic[2] != 0x08) throw FormatError(path + ": IDX type code " + std::to_string(magic[2]) + " unsupported (only unsigned byte, 0x08)");
  const int ndim = magic[3];
  if (ndim < 1 || ndim > 4) throw FormatError(path + ": IDX has " + std::to_string(ndim) + " dimensions (1..4 supported)");
  IdxArray arr;
  uint64_t total = 1;
  for (int d = 0; d < ndim; ++d) {
    uint8_t b[4];
    if (!read_exact(file.f, b, 4)) throw FormatError(path + ": IDX dimension " + std::to_string(d) + ": truncated header");
    const uint64_t dim = (uint64_t{b[0]} << 24) | (uint64_t{b[1]} << 16) | (uint64_t{b[2]} << 8) | b[3];
    total *= dim;
    if (total > (uint64_t{1} << 34)) throw FormatError(path + ": IDX dimensions too large");
    arr.dims.push_back(static_cast<int64_t>(dim));
  }
  arr.data.resize(static_cast<size_t>(total));
  if (!read_exact(file.f, arr.data.data(), total))
    throw FormatError(path + ": IDX data truncated (expected " + std::to_string(total) + " bytes)");
  return arr;
}

}  // namespace qcnn::runtime
