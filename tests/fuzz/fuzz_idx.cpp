// libFuzzer target: bytes -> parse_idx (raw or gzip) with a 16 MiB bound on the data. Any exception
// other than FormatError, crash, sanitizer report, slow input or large allocation is a finding.
#include <cstddef>
#include <cstdint>

#include "runtime/idx.h"
#include "runtime/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace rt = qcnn::runtime;
  try {
    const rt::IdxArray arr = rt::parse_idx(data, size, "fuzz.idx", uint64_t{16} << 20);
    uint64_t n = 1;
    for (const int64_t d : arr.dims) n *= static_cast<uint64_t>(d);
    if (n != arr.data.size()) __builtin_trap();  // the dims must describe the data exactly
  } catch (const rt::FormatError&) {
  }
  return 0;
}
