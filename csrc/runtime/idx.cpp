#include "runtime/idx.h"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "runtime/safetensors.h"

namespace qcnn::runtime {

namespace {

constexpr uint64_t kMaxDeflateRatio = 1032;  // zlib's documented maximum compression factor

// Streams the decompressed bytes of one or more concatenated gzip members held in memory.
class GzipReader {
 public:
  GzipReader(const uint8_t* in, size_t size, const std::string& origin) : in_(in), size_(size), origin_(origin) {
    std::memset(&strm_, 0, sizeof strm_);
    if (inflateInit2(&strm_, 16 + MAX_WBITS) != Z_OK) throw FormatError(origin + ": cannot initialise zlib");
  }
  ~GzipReader() { inflateEnd(&strm_); }
  GzipReader(const GzipReader&) = delete;
  GzipReader& operator=(const GzipReader&) = delete;

  // Fills out[0, n); returns fewer bytes only where the last member ends.
  size_t read(uint8_t* out, size_t n) {
    size_t produced = 0;
    while (produced < n && !done_) {
      if (strm_.avail_in == 0 && fed_ < size_) feed();
      if (member_ended_) {
        if (strm_.avail_in == 0) {
          done_ = true;
          break;
        }
        if (strm_.avail_in < 2 && fed_ < size_) feed();
        if (strm_.avail_in < 2 || strm_.next_in[0] != 0x1f || strm_.next_in[1] != 0x8b)
          throw FormatError(origin_ + ": " + std::to_string(size_ - consumed()) +
                            " bytes of trailing garbage after the gzip stream (at byte " + std::to_string(consumed()) +
                            ")");
        inflateReset(&strm_);
        member_ended_ = false;
      }
      const size_t want = std::min<size_t>(n - produced, UINT_MAX);
      strm_.next_out = out + produced;
      strm_.avail_out = static_cast<unsigned>(want);
      const int ret = inflate(&strm_, Z_NO_FLUSH);
      produced += want - strm_.avail_out;
      if (ret == Z_STREAM_END) {
        member_ended_ = true;
      } else if (ret == Z_BUF_ERROR) {  // no progress: zlib needs input (output space was given)
        if (fed_ == size_)
          throw FormatError(origin_ + ": gzip stream truncated (input ends at byte " + std::to_string(size_) +
                            " inside a compressed member)");
      } else if (ret != Z_OK) {
        throw FormatError(origin_ + ": corrupt gzip data near byte " + std::to_string(consumed()) + ": " +
                          (strm_.msg ? strm_.msg : "zlib error " + std::to_string(ret)));
      }
    }
    return produced;
  }

  size_t remaining_input() const { return size_ - consumed(); }

 private:
  size_t consumed() const { return fed_ - strm_.avail_in; }
  // Hands zlib the next part of the input (avail_in is 32-bit).
  void feed() {
    const size_t keep = strm_.avail_in;
    const size_t start = fed_ - keep;
    const size_t len = std::min<size_t>(size_ - start, 1u << 30);
    strm_.next_in = const_cast<Bytef*>(in_ + start);
    strm_.avail_in = static_cast<unsigned>(len);
    fed_ = start + len;
  }

  const uint8_t* in_;
  size_t size_;
  size_t fed_ = 0;
  const std::string& origin_;
  z_stream strm_;
  bool member_ended_ = false, done_ = false;
};

struct Header {
  int ndim = 0;
  std::vector<int64_t> dims;
  uint64_t total = 0;
};

// Magic and dims from the first bytes (4 + 4 * ndim of them, as `get` supplies them).
template <typename Get>
Header parse_header(Get&& get, const std::string& origin, uint64_t max_bytes) {
  uint8_t magic[4];
  if (!get(magic, 4)) throw FormatError(origin + ": IDX magic: file shorter than 4 bytes");
  if (magic[0] != 0 || magic[1] != 0)
    throw FormatError(origin + ": IDX magic at byte 0: first two bytes must be zero (or a gzip header)");
  if (magic[2] != 0x08)
    throw FormatError(origin + ": IDX type code " + std::to_string(magic[2]) +
                      " at byte 2 unsupported (only unsigned byte, 0x08)");
  Header h;
  h.ndim = magic[3];
  if (h.ndim < 1 || h.ndim > 4)
    throw FormatError(origin + ": IDX has " + std::to_string(h.ndim) + " dimensions at byte 3 (1..4 supported)");
  h.total = 1;
  bool overflow = false;
  for (int d = 0; d < h.ndim; ++d) {
    uint8_t b[4];
    if (!get(b, 4))
      throw FormatError(origin + ": IDX dimension " + std::to_string(d) + " (byte " + std::to_string(4 + 4 * d) +
                        "): truncated header");
    const uint64_t dim = (uint64_t{b[0]} << 24) | (uint64_t{b[1]} << 16) | (uint64_t{b[2]} << 8) | b[3];
    overflow |= __builtin_mul_overflow(h.total, dim, &h.total);
    h.dims.push_back(static_cast<int64_t>(dim));
  }
  if (overflow || h.total > max_bytes)
    throw FormatError(origin + ": IDX dimensions " + shape_str(h.dims) + " declare more than the limit of " +
                      std::to_string(max_bytes) + " data bytes");
  return h;
}

// Checks a raw IDX buffer completely; returns the header, `pos` the offset of the data.
Header check_raw(const uint8_t* bytes, size_t size, const std::string& origin, uint64_t max_bytes, size_t* data_pos) {
  size_t pos = 0;
  auto get = [&](uint8_t* out, size_t n) {
    if (size - pos < n) return false;
    std::memcpy(out, bytes + pos, n);
    pos += n;
    return true;
  };
  Header h = parse_header(get, origin, max_bytes);
  const uint64_t have = size - pos;
  if (have < h.total)
    throw FormatError(origin + ": IDX data truncated: dimensions " + shape_str(h.dims) + " need " +
                      std::to_string(h.total) + " bytes from byte " + std::to_string(pos) + ", the file has " +
                      std::to_string(have));
  if (have > h.total)
    throw FormatError(origin + ": " + std::to_string(have - h.total) + " trailing bytes after the " +
                      std::to_string(h.total) + " data bytes of dimensions " + shape_str(h.dims) + " (at byte " +
                      std::to_string(pos + h.total) + ")");
  *data_pos = pos;
  return h;
}

bool is_gzip(const uint8_t* bytes, size_t size) { return size >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b; }

IdxArray parse_gzip(const uint8_t* bytes, size_t size, const std::string& origin, uint64_t max_bytes) {
  GzipReader gz(bytes, size, origin);
  uint64_t out_pos = 0;
  auto get = [&](uint8_t* out, size_t n) {
    const size_t got = gz.read(out, n);
    out_pos += got;
    return got == n;
  };
  const std::string where = origin + " (decompressed)";
  Header h = parse_header(get, where, max_bytes);
  // Deflate cannot expand the remaining input by more than its ratio: a larger claim is truncated.
  uint64_t bound = 0;
  if (!__builtin_mul_overflow(static_cast<uint64_t>(gz.remaining_input()), kMaxDeflateRatio, &bound) &&
      h.total > bound + 1024)
    throw FormatError(where + ": IDX dimensions " + shape_str(h.dims) + " declare " + std::to_string(h.total) +
                      " data bytes, more than the " + std::to_string(gz.remaining_input()) +
                      " remaining compressed bytes can hold");
  IdxArray arr;
  arr.dims = std::move(h.dims);
  // Grown as data arrives, never beyond what the header declares.
  size_t filled = 0;
  const size_t total = static_cast<size_t>(h.total);
  while (filled < total) {
    const size_t chunk = std::min(total - filled, std::max<size_t>(size_t{1} << 20, filled));
    if (filled + chunk > arr.data.capacity()) arr.data.reserve(std::min(total, std::max(filled + chunk, 2 * arr.data.capacity())));
    arr.data.resize(filled + chunk);
    const size_t got = gz.read(arr.data.data() + filled, chunk);
    filled += got;
    if (got < chunk)
      throw FormatError(where + ": IDX data truncated: dimensions " + shape_str(arr.dims) + " need " +
                        std::to_string(total) + " bytes from byte " + std::to_string(out_pos) +
                        ", the stream holds " + std::to_string(filled));
  }
  uint8_t extra[256];
  const size_t more = gz.read(extra, sizeof extra);  // also checks the CRC and what follows the last member
  if (more > 0)
    throw FormatError(where + ": trailing data after the " + std::to_string(total) + " data bytes of dimensions " +
                      shape_str(arr.dims) + " (at decompressed byte " + std::to_string(out_pos + total) + ")");
  return arr;
}

}  // namespace

IdxArray parse_idx(const uint8_t* bytes, size_t size, const std::string& origin, uint64_t max_bytes) {
  if (is_gzip(bytes, size)) return parse_gzip(bytes, size, origin, max_bytes);
  size_t pos = 0;
  Header h = check_raw(bytes, size, origin, max_bytes, &pos);
  IdxArray arr;
  arr.dims = std::move(h.dims);
  arr.data.assign(bytes + pos, bytes + size);
  return arr;
}

IdxArray read_idx(const std::string& path, uint64_t max_bytes) {
  // A raw file holds 4 + 4 * 4 header bytes and at most max_bytes of data; a gzip file is no larger
  // than its content plus a little (stored blocks: 5 bytes per 64 KiB) and its headers.
  uint64_t max_file = max_bytes;
  if (__builtin_add_overflow(max_bytes, max_bytes / 1024 + 4096, &max_file)) max_file = UINT64_MAX;
  std::vector<uint8_t> bytes = read_regular_file(path, "IDX file", max_file);
  if (is_gzip(bytes.data(), bytes.size())) return parse_gzip(bytes.data(), bytes.size(), path, max_bytes);
  size_t pos = 0;
  Header h = check_raw(bytes.data(), bytes.size(), path, max_bytes, &pos);
  IdxArray arr;
  arr.dims = std::move(h.dims);
  bytes.erase(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(pos));  // no second copy of the data
  arr.data = std::move(bytes);
  return arr;
}

}  // namespace qcnn::runtime
