// torch.classes.qcnn.Engine: qcnn.load's handle on the C++ inference engine (runtime/model.h), the
// only interpreter of .qcnn files. A thin adapter: every check of the file, and every kernel, is the
// engine's own; this file checks tensors and turns the engine's errors into Python ValueErrors.
#include <ATen/ATen.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <climits>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "core/qgemm.h"
#include "runtime/model.h"

namespace qcnn {
namespace {

// FormatError and std::invalid_argument name the file and the problem: they become ValueError
// (c10::ValueError) with that message.
template <typename Fn>
auto value_errors(Fn fn) {
  try {
    return fn();
  } catch (const runtime::FormatError& e) {
    TORCH_CHECK_VALUE(false, e.what());
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

int as_threads(int64_t num_threads) {
  TORCH_CHECK_VALUE(num_threads >= 0 && num_threads <= runtime::kMaxThreads, "threads must be in [0, ",
                    runtime::kMaxThreads, "] (0 = the default), got ", num_threads);
  return static_cast<int>(num_threads);
}

runtime::LoadOptions load_options(std::optional<int64_t> max_macs_per_image, std::optional<int64_t> max_ops_per_image,
                                  std::optional<int64_t> max_activation_bytes_per_image, bool count_overflows,
                                  bool fuse) {
  runtime::LoadOptions options;
  options.count_overflows = count_overflows;
  options.fuse = fuse;
  auto set = [](int64_t& option, std::optional<int64_t> value, const char* name) {
    if (!value) return;
    TORCH_CHECK_VALUE(*value >= 1, name, " must be >= 1, got ", *value);
    option = *value;
  };
  set(options.max_macs_per_image, max_macs_per_image, "max_macs_per_image");
  set(options.max_ops_per_image, max_ops_per_image, "max_ops_per_image");
  set(options.max_activation_bytes_per_image, max_activation_bytes_per_image, "max_activation_bytes_per_image");
  return options;
}

class Engine : public torch::CustomClassHolder {
 public:
  Engine(const std::string& path, std::optional<int64_t> max_macs_per_image, std::optional<int64_t> max_ops_per_image,
         std::optional<int64_t> max_activation_bytes_per_image, bool count_overflows, bool fuse)
      : model_(value_errors([&] {
          return runtime::Model::load(path, load_options(max_macs_per_image, max_ops_per_image,
                                                         max_activation_bytes_per_image, count_overflows, fuse));
        })) {}

  // The checked path: conv/linear outputs whose running sum left the declared accumulator width.
  int64_t count_overflows(const at::Tensor& pixels) const {
    const at::Tensor px = checked_pixels(pixels);
    return value_errors([&] { return model_.count_overflows(px.data_ptr<uint8_t>(), px.size(0)); });
  }

  // uint8 pixels [N, C, H, W] -> float32 logits [N, classes].
  at::Tensor run(const at::Tensor& pixels, int64_t num_threads) const {
    const at::Tensor px = checked_pixels(pixels);
    const int threads = as_threads(num_threads);
    at::Tensor logits = at::empty({px.size(0), model_.num_classes()}, px.options().dtype(at::kFloat));
    value_errors([&] {
      model_.run(px.data_ptr<uint8_t>(), px.size(0), logits.data_ptr<float>(), threads);
      return 0;
    });
    return logits;
  }

  // One entry per node, in order: (names, ops, kernels, MACs per image, seconds summed over the batch).
  std::tuple<std::vector<std::string>, std::vector<std::string>, std::vector<std::string>, std::vector<int64_t>,
             std::vector<double>>
  profile(
      const at::Tensor& pixels, int64_t num_threads) const {
    const at::Tensor px = checked_pixels(pixels);
    const int threads = as_threads(num_threads);
    const auto layers = value_errors([&] { return model_.profile(px.data_ptr<uint8_t>(), px.size(0), threads); });
    std::vector<std::string> names, ops, kernels;
    std::vector<int64_t> macs;
    std::vector<double> seconds;
    for (const auto& layer : layers) {
      names.push_back(layer.name);
      ops.push_back(layer.op);
      kernels.push_back(layer.kernel);
      macs.push_back(layer.macs_per_image);
      seconds.push_back(layer.seconds);
    }
    return {names, ops, kernels, macs, seconds};
  }

  std::vector<int64_t> input_shape() const { return model_.input_shape(); }
  int64_t num_classes() const { return model_.num_classes(); }
  int64_t macs_per_image() const { return model_.macs_per_image(); }
  int64_t ops_per_image() const { return model_.ops_per_image(); }
  int64_t peak_activation_bytes(int64_t batch, int64_t num_threads) const {
    TORCH_CHECK_VALUE(batch >= 0, "batch must be >= 0, got ", batch);
    const int threads = as_threads(num_threads);
    return value_errors([&] { return model_.peak_activation_bytes(batch, threads); });
  }
  std::string isa() const { return model_.isa(); }

 private:
  at::Tensor checked_pixels(const at::Tensor& pixels) const {
    const auto& shape = model_.input_shape();
    TORCH_CHECK_VALUE(pixels.scalar_type() == at::kByte, "pixels must be uint8 [N, ", shape[0], ", ", shape[1], ", ",
                      shape[2], "], got dtype ", pixels.scalar_type());
    TORCH_CHECK_VALUE(pixels.device().is_cpu(), "pixels must be a CPU tensor, got device ", pixels.device());
    TORCH_CHECK_VALUE(pixels.dim() == 4 && pixels.size(1) == shape[0] && pixels.size(2) == shape[1] &&
                          pixels.size(3) == shape[2],
                      "pixels must have shape [N, ", shape[0], ", ", shape[1], ", ", shape[2], "], got ",
                      pixels.sizes());
    return pixels.contiguous();
  }

  runtime::Model model_;
};

double int8_peak_gmacs_op(double seconds, int64_t threads) {
  TORCH_CHECK_VALUE(seconds > 0 && seconds <= 60, "seconds must be in (0, 60], got ", seconds);
  TORCH_CHECK_VALUE(threads >= 1 && threads <= 1024, "threads must be in [1, 1024], got ", threads);
  return int8_peak_gmacs(seconds, static_cast<int>(threads));
}

// Every kernel path QCNN_ISA can name, best last, and those this CPU runs.
std::tuple<std::vector<std::string>, std::vector<std::string>> engine_isas_op() {
  std::vector<std::string> names, supported;
  for (Isa isa : kAllIsas) {
    names.emplace_back(isa_name(isa));
    if (isa_supported(isa)) supported.emplace_back(isa_name(isa));
  }
  return {names, supported};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qcnn, m) {
  m.class_<Engine>("Engine")
      .def(torch::init<std::string, std::optional<int64_t>, std::optional<int64_t>, std::optional<int64_t>, bool,
                       bool>())
      .def("run", &Engine::run)
      .def("count_overflows", &Engine::count_overflows)
      .def("profile", &Engine::profile)
      .def("input_shape", &Engine::input_shape)
      .def("num_classes", &Engine::num_classes)
      .def("macs_per_image", &Engine::macs_per_image)
      .def("ops_per_image", &Engine::ops_per_image)
      .def("peak_activation_bytes", &Engine::peak_activation_bytes)
      .def("isa", &Engine::isa);
  // The measured peak integer multiply-accumulate rate of the engine's best kernel instruction on
  // this CPU, in G MACs/s summed over `threads` threads: what a layer's MACs/s is compared with.
  m.def("int8_peak_gmacs(float seconds, int threads) -> float", &int8_peak_gmacs_op);
  m.def("engine_isas() -> (str[], str[])", &engine_isas_op);
}

}  // namespace qcnn
