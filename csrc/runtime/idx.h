// Reader of IDX files (raw or gzip-compressed, as Fashion-MNIST ships them).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace qcnn::runtime {

struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;  // unsigned-byte IDX only (type code 0x08)
};

// Default bound on the data of one IDX file (after decompression): Fashion-MNIST's training images are 47 MB.
constexpr uint64_t kMaxIdxBytes = uint64_t{4} << 30;

// Throws FormatError naming the file, the problem and the byte offset: missing file, directory, bad
// magic, unsupported type, dimensions whose product overflows or exceeds `max_bytes`, data shorter
// or longer than the dimensions declare, a corrupt, truncated or trailing-garbage gzip stream.
// Nothing is allocated for the data before its declared size is checked against the input: a raw
// file's size, at most 1032x the compressed size of a gzip file (deflate's limit), and `max_bytes`.
IdxArray read_idx(const std::string& path, uint64_t max_bytes = kMaxIdxBytes);
// The same on bytes in memory; `origin` names them in error messages.
IdxArray parse_idx(const uint8_t* bytes, size_t size, const std::string& origin, uint64_t max_bytes = kMaxIdxBytes);

}  // namespace qcnn::runtime
