// Reader of IDX files (raw or gzip-compressed, as Fashion-MNIST ships them).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qcnn::runtime {

struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;  // unsigned-byte IDX only (type code 0x08)
};

// Throws FormatError naming the file and the problem (bad magic, unsupported type, truncated data).
IdxArray read_idx(const std::string& path);

}  // namespace qcnn::runtime
