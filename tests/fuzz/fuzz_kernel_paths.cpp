// libFuzzer target, differential: bytes -> SafetensorsFile::parse -> the model loaded once for every kernel path
// this CPU runs (QCNN_ISA), fused and unfused -> the same two images through each. Logits that differ in any bit
// between two loads, or a file that one load refuses and another accepts, are findings (__builtin_trap); so is,
// as in fuzz_qcnn_file, any exception other than FormatError, any crash or sanitizer report.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "core/isa.h"
#include "runtime/model.h"
#include "runtime/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace rt = qcnn::runtime;
  std::optional<rt::SafetensorsFile> file;
  try {
    file.emplace(rt::SafetensorsFile::parse(std::vector<uint8_t>(data, data + size), "fuzz.qcnn"));
  } catch (const rt::FormatError&) {
    return 0;
  }
  rt::LoadOptions options;
  options.max_macs_per_image = int64_t{1} << 22;
  options.max_ops_per_image = int64_t{1} << 22;
  options.max_activation_bytes_per_image = int64_t{1} << 20;
  std::vector<float> reference;
  bool refused = false, accepted = false;
  for (const qcnn::Isa isa : qcnn::kAllIsas) {
    if (!qcnn::isa_supported(isa)) continue;
    setenv("QCNN_ISA", qcnn::isa_name(isa), 1);
    for (const bool fuse : {true, false}) {
      options.fuse = fuse;
      try {
        const rt::Model model = rt::Model::from_file(*file, options);
        accepted = true;
        const auto& in = model.input_shape();
        // two images: pixels from the file's bytes, so that the fuzzer steers them too
        std::vector<uint8_t> pixels(static_cast<size_t>(2 * in.at(0) * in.at(1) * in.at(2)));
        for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(data[i % size] ^ (i * 131));
        const std::vector<float> logits = model.run(pixels.data(), 2, 1);
        if (reference.empty()) reference = logits;
        else if (logits.size() != reference.size() ||
                 std::memcmp(logits.data(), reference.data(), logits.size() * sizeof(float)) != 0)
          __builtin_trap();  // two kernel paths (or fused and unfused) disagree
      } catch (const rt::FormatError&) {
        refused = true;
      }
      if (refused && accepted) __builtin_trap();  // validation must not depend on the kernel path
    }
  }
  unsetenv("QCNN_ISA");
  return 0;
}
