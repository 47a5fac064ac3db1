// The C interface (qcnn.h) over runtime::Model: every call catches what the engine throws and turns it into a status
// and this thread's last error message.
#include "runtime/qcnn.h"

#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/model.h"

struct qcnn_model {
  qcnn::runtime::Model model;
};

namespace {

thread_local std::string last_error;

qcnn_status fail(qcnn_status status, std::string message) {
  last_error = std::move(message);
  return status;
}

// Runs f(), mapping the engine's exceptions to statuses.
template <typename F>
qcnn_status guarded(const char* call, F&& f) {
  try {
    f();
    return QCNN_OK;
  } catch (const qcnn::runtime::FileError& e) {
    return fail(QCNN_ERROR_IO, e.what());
  } catch (const qcnn::runtime::FormatError& e) {
    return fail(QCNN_ERROR_FORMAT, e.what());
  } catch (const std::invalid_argument& e) {
    return fail(QCNN_ERROR_ARGUMENT, std::string(call) + ": " + e.what());
  } catch (const std::bad_alloc&) {
    return fail(QCNN_ERROR_MEMORY, std::string(call) + ": out of memory");
  } catch (const std::exception& e) {
    return fail(QCNN_ERROR_INTERNAL, std::string(call) + ": " + e.what());
  } catch (...) {
    return fail(QCNN_ERROR_INTERNAL, std::string(call) + ": unknown error");
  }
}

qcnn::runtime::LoadOptions load_options(const qcnn_options* options) {
  qcnn::runtime::LoadOptions o;
  if (options) {
    o.max_macs_per_image = options->max_macs_per_image;
    o.max_ops_per_image = options->max_ops_per_image;
    o.max_activation_bytes_per_image = options->max_activation_bytes_per_image;
    o.fuse = options->fuse != 0;
  }
  return o;
}

// The limits must be positive: a zero or negative bound would refuse every model with a misleading message.
qcnn_status check_options(const char* call, const qcnn_options* options) {
  if (!options) return QCNN_OK;
  const std::pair<const char*, int64_t> limits[] = {{"max_macs_per_image", options->max_macs_per_image},
                                                     {"max_ops_per_image", options->max_ops_per_image},
                                                     {"max_activation_bytes_per_image",
                                                      options->max_activation_bytes_per_image}};
  for (const auto& [name, value] : limits)
    if (value < 1)
      return fail(QCNN_ERROR_ARGUMENT, std::string(call) + ": options->" + name + " must be positive, got " +
                                           std::to_string(value));
  return QCNN_OK;
}

// read() gives the model's file (SafetensorsFile::read or ::parse); *model the model, or null on any failure.
template <typename Read>
qcnn_status load(const char* call, const qcnn_options* options, qcnn_model** model, Read&& read) {
  if (!model) return fail(QCNN_ERROR_ARGUMENT, std::string(call) + ": model is NULL");
  *model = nullptr;
  if (const qcnn_status s = check_options(call, options); s != QCNN_OK) return s;
  return guarded(call, [&] { *model = new qcnn_model{qcnn::runtime::Model::from_file(read(), load_options(options))}; });
}

}  // namespace

extern "C" {

void qcnn_default_options(qcnn_options* options) {
  if (!options) return;
  const qcnn::runtime::LoadOptions o;
  options->max_macs_per_image = o.max_macs_per_image;
  options->max_ops_per_image = o.max_ops_per_image;
  options->max_activation_bytes_per_image = o.max_activation_bytes_per_image;
  options->fuse = o.fuse ? 1 : 0;
}

qcnn_status qcnn_load_file(const char* path, const qcnn_options* options, qcnn_model** model) {
  if (!path) {
    if (model) *model = nullptr;
    return fail(QCNN_ERROR_ARGUMENT, "qcnn_load_file: path is NULL");
  }
  return load("qcnn_load_file", options, model, [&] { return qcnn::runtime::SafetensorsFile::read(path); });
}

qcnn_status qcnn_load_buffer(const void* data, size_t size, const qcnn_options* options, qcnn_model** model) {
  if (!data && size > 0) {
    if (model) *model = nullptr;
    return fail(QCNN_ERROR_ARGUMENT, "qcnn_load_buffer: data is NULL");
  }
  return load("qcnn_load_buffer", options, model, [&] {
    const auto* bytes = static_cast<const uint8_t*>(data);
    return qcnn::runtime::SafetensorsFile::parse(std::vector<uint8_t>(bytes, bytes + size), "buffer");
  });
}

void qcnn_free(qcnn_model* model) { delete model; }

qcnn_status qcnn_run(const qcnn_model* model, const uint8_t* pixels, int64_t images, float* logits, int threads) {
  if (!model) return fail(QCNN_ERROR_ARGUMENT, "qcnn_run: model is NULL");
  if (images < 0) return fail(QCNN_ERROR_ARGUMENT, "qcnn_run: images = " + std::to_string(images) + " is negative");
  if (images > 0 && (!pixels || !logits)) return fail(QCNN_ERROR_ARGUMENT, "qcnn_run: pixels or logits is NULL");
  return guarded("qcnn_run", [&] { model->model.run(pixels, images, logits, threads); });
}

qcnn_status qcnn_input_shape(const qcnn_model* model, int64_t shape[3]) {
  if (!model || !shape) return fail(QCNN_ERROR_ARGUMENT, "qcnn_input_shape: model or shape is NULL");
  const std::vector<int64_t>& s = model->model.input_shape();
  for (int i = 0; i < 3; ++i) shape[i] = s[static_cast<size_t>(i)];
  return QCNN_OK;
}

qcnn_status qcnn_num_classes(const qcnn_model* model, int64_t* classes) {
  if (!model || !classes) return fail(QCNN_ERROR_ARGUMENT, "qcnn_num_classes: model or classes is NULL");
  *classes = model->model.num_classes();
  return QCNN_OK;
}

qcnn_status qcnn_peak_activation_bytes(const qcnn_model* model, int64_t batch, int threads, int64_t* bytes) {
  if (!model || !bytes) return fail(QCNN_ERROR_ARGUMENT, "qcnn_peak_activation_bytes: model or bytes is NULL");
  if (batch < 0) return fail(QCNN_ERROR_ARGUMENT, "qcnn_peak_activation_bytes: batch is negative");
  return guarded("qcnn_peak_activation_bytes", [&] { *bytes = model->model.peak_activation_bytes(batch, threads); });
}

const char* qcnn_isa(const qcnn_model* model) { return model ? model->model.isa() : nullptr; }

const char* qcnn_last_error(void) { return last_error.c_str(); }

}  // extern "C"
