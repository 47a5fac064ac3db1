// libFuzzer target: bytes -> SafetensorsFile::parse -> Model::from_file (small limits) -> one image
// of zeros. Any exception other than FormatError, any crash, sanitizer report, slow input or large
// allocation is a finding (tests/fuzz/run.sh sets the time and memory limits).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "runtime/model.h"
#include "runtime/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace rt = qcnn::runtime;
  try {
    const rt::SafetensorsFile file = rt::SafetensorsFile::parse(std::vector<uint8_t>(data, data + size), "fuzz.qcnn");
    rt::LoadOptions options;
    options.max_macs_per_image = int64_t{1} << 22;
    options.max_ops_per_image = int64_t{1} << 22;
    options.max_activation_bytes_per_image = int64_t{1} << 20;
    const rt::Model model = rt::Model::from_file(file, options);
    const auto& in = model.input_shape();
    std::vector<uint8_t> pixels(static_cast<size_t>(in.at(0) * in.at(1) * in.at(2)), 0);
    std::vector<float> logits(static_cast<size_t>(model.num_classes()));
    model.run(pixels.data(), 1, logits.data(), 1);
    (void)model.peak_activation_bytes(1);
  } catch (const rt::FormatError&) {
  }
  return 0;
}
