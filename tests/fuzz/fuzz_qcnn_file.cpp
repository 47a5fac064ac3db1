// libFuzzer target: bytes -> the C interface's qcnn_load_buffer (SafetensorsFile::parse, Model::from_file; small
// limits) -> one image of zeros. A status other than QCNN_OK or QCNN_ERROR_FORMAT (an exception other than
// FormatError inside), any crash, sanitizer report, slow input or large allocation is a finding (tests/fuzz/run.sh
// sets the time and memory limits).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "runtime/qcnn.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  qcnn_options options;
  qcnn_default_options(&options);
  options.max_macs_per_image = int64_t{1} << 22;
  options.max_ops_per_image = int64_t{1} << 22;
  options.max_activation_bytes_per_image = int64_t{1} << 20;
  qcnn_model* model = nullptr;
  const qcnn_status loaded = qcnn_load_buffer(data, size, &options, &model);
  if (loaded == QCNN_ERROR_FORMAT) return 0;
  if (loaded != QCNN_OK) __builtin_trap();
  int64_t shape[3], classes = 0, peak = 0;
  if (qcnn_input_shape(model, shape) != QCNN_OK || qcnn_num_classes(model, &classes) != QCNN_OK) __builtin_trap();
  std::vector<uint8_t> pixels(static_cast<size_t>(shape[0] * shape[1] * shape[2]), 0);
  std::vector<float> logits(static_cast<size_t>(classes));
  if (qcnn_run(model, pixels.data(), 1, logits.data(), 1) != QCNN_OK) __builtin_trap();
  if (qcnn_peak_activation_bytes(model, 1, 1, &peak) != QCNN_OK) __builtin_trap();
  qcnn_free(model);
  return 0;
}
