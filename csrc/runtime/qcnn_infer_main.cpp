// qcnn-infer MODEL.qcnn --images IDX --labels IDX [--batch N] [--threads N] [--path dense|shared] [--limit N]
//            [--predictions FILE]
// Prints one JSON line: accuracy, throughput, counts. --predictions writes the predicted class of each image,
// one per line. Exit status 1 with a message on any error.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "runtime/idx.h"
#include "runtime/model.h"

namespace {

[[noreturn]] void usage(const std::string& msg) {
  std::cerr << "qcnn-infer: " << msg << "\n"
            << "usage: qcnn-infer MODEL.qcnn --images IDX --labels IDX [--batch N] [--threads N] "
               "[--path dense|shared] [--limit N] [--predictions FILE]\n";
  std::exit(1);
}

int64_t parse_positive(const char* flag, const char* value) {
  char* end = nullptr;
  const long long v = std::strtoll(value, &end, 10);
  if (!end || *end != '\0' || v < 1 || v > (1ll << 31)) usage(std::string(flag) + " needs a positive integer, got '" + value + "'");
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, images_path, labels_path, predictions_path, path = "dense";
  int64_t batch = 256, threads = 0, limit = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--images") images_path = value();
    else if (a == "--labels") labels_path = value();
    else if (a == "--batch") batch = parse_positive("--batch", value());
    else if (a == "--threads") threads = parse_positive("--threads", value());
    else if (a == "--limit") limit = parse_positive("--limit", value());
    else if (a == "--path") path = value();
    else if (a == "--predictions") predictions_path = value();
    else if (a == "-h" || a == "--help") usage("help");
    else if (!a.empty() && a[0] == '-') usage("unknown option " + a);
    else if (model_path.empty()) model_path = a;
    else usage("unexpected argument " + a);
  }
  if (model_path.empty() || images_path.empty() || labels_path.empty()) usage("MODEL, --images and --labels are required");
  if (path != "dense" && path != "shared") usage("--path must be dense or shared");
  try {
    namespace rt = qcnn::runtime;
    rt::LoadOptions opts;
    opts.weight_path = path == "dense" ? rt::WeightPath::Dense : rt::WeightPath::Shared;
    const auto t_load = std::chrono::steady_clock::now();
    const rt::Model model = rt::Model::load(model_path, opts);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
    const rt::IdxArray images = rt::read_idx(images_path);
    const rt::IdxArray labels = rt::read_idx(labels_path);
    const auto& in = model.input_shape();
    const int64_t per_image = in[0] * in[1] * in[2];
    int64_t n = images.dims[0];
    int64_t image_values = 1;
    for (size_t d = 1; d < images.dims.size(); ++d) image_values *= images.dims[d];
    if (image_values != per_image)
      throw rt::FormatError(images_path + ": images have " + std::to_string(image_values) + " pixels, the model expects " +
                            std::to_string(per_image));
    if (labels.dims.size() != 1 || labels.dims[0] != n)
      throw rt::FormatError(labels_path + ": expected " + std::to_string(n) + " labels");
    if (limit > 0) n = std::min(n, limit);
    const int nthreads = static_cast<int>(threads);
#ifdef _OPENMP
    if (nthreads > 0) omp_set_num_threads(nthreads);
#endif
    int64_t correct = 0;
    const int64_t classes = model.num_classes();
    std::vector<int64_t> predictions(static_cast<size_t>(n));
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t start = 0; start < n; start += batch) {
      const int64_t b = std::min(batch, n - start);
      const auto logits = model.run(images.data.data() + start * per_image, b, nthreads);
      for (int64_t i = 0; i < b; ++i) {
        const float* row = logits.data() + i * classes;
        const int64_t pred = std::max_element(row, row + classes) - row;
        predictions[static_cast<size_t>(start + i)] = pred;
        correct += pred == labels.data[start + i];
      }
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!predictions_path.empty()) {
      std::ofstream file(predictions_path);
      for (const int64_t pred : predictions) file << pred << '\n';
      file.flush();
      if (!file) throw std::runtime_error("cannot write --predictions file " + predictions_path);
    }
    nlohmann::json out = {{"model", model_path},
                          {"images", n},
                          {"correct", correct},
                          {"accuracy", n ? double(correct) / n : 0.0},
                          {"seconds", secs},
                          {"images_per_second", secs > 0 ? n / secs : 0.0},
                          {"load_seconds", load_s},
                          {"batch", batch},
                          {"threads", nthreads},
                          {"path", path}};
    std::cout << out.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "qcnn-infer: error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
