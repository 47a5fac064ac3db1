// qcnn-infer MODEL.qcnn --images IDX --labels IDX [--batch N] [--threads N] [--limit N]
//            [--predictions FILE] [--logits FILE.npy] [--max-macs N] [--max-activation-bytes N]
//            [--count-overflows] [--no-fuse]
// Prints one JSON line: accuracy, throughput, counts, the kernels' ISA and the model's cost. --predictions
// writes the predicted class of each image, one per line; --logits the float32 logits as a .npy array
// [images, classes]. Any error: `qcnn-infer: error: <message>` on stderr, exit status 1.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
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

namespace rt = qcnn::runtime;

const char* const kUsage =
    "usage: qcnn-infer MODEL.qcnn --images IDX --labels IDX [--batch N] [--threads N] [--limit N]\n"
    "                  [--predictions FILE] [--logits FILE.npy] [--max-macs N] [--max-activation-bytes N]\n"
    "                  [--count-overflows] [--no-fuse]\n"
    "  --images IDX               uint8 images [N, C, H, W] (or [N, H, W] when C = 1), raw or gzip\n"
    "  --labels IDX               uint8 labels [N]\n"
    "  --batch N                  images per run (default 256; reduced so that a batch's activations\n"
    "                             fit in --max-activation-bytes)\n"
    "  --threads N                OpenMP threads (default: all)\n"
    "  --limit N                  use the first N images only\n"
    "  --predictions FILE         write the predicted class of each image, one per line\n"
    "  --logits FILE.npy          write the float32 logits [images, classes] as a NumPy .npy file\n"
    "  --count-overflows          also run every image through the checked path and print 'overflows': the\n"
    "                             conv/linear outputs whose running sum left the node's declared accumulator\n"
    "                             width (accumulator_bits; 32 when undeclared) at some step\n"
    "  --no-fuse                  run every node on its own (the same logits: fusion is bit-exact)\n"
    "  --max-macs N               reject models above N multiply-accumulates per image (default 2^35)\n"
    "  --max-activation-bytes N   reject models above N bytes of live activations per image (default 2^30)\n";

[[noreturn]] void usage_error(const std::string& msg) {
  std::cerr << "qcnn-infer: error: " << msg << "\n" << kUsage;
  std::exit(1);
}

// A decimal integer in [1, hi]: digits only, no sign, no spaces, no overflow.
int64_t parse_positive(const std::string& flag, const char* value, int64_t hi) {
  const std::string v = value;
  bool digits = !v.empty() && v.size() <= 19;
  for (char c : v) digits = digits && c >= '0' && c <= '9';
  errno = 0;
  const long long x = digits ? std::strtoll(v.c_str(), nullptr, 10) : 0;
  if (!digits || errno == ERANGE || x < 1 || x > hi)
    usage_error(flag + " needs an integer in [1, " + std::to_string(hi) + "], got '" + rt::printable(v, 40) + "'");
  return x;
}

// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so that
// readers see either the old file or the complete new one.
void write_atomically(const std::string& path, const std::string& flag, const std::string& bytes) {
  std::string tmp = path + ".tmp-XXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) throw std::runtime_error("cannot write " + flag + " file " + path + ": " + std::strerror(errno));
  const char* p = bytes.data();
  size_t left = bytes.size();
  bool ok = true;
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ok = false;
      break;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  int err = ok ? 0 : errno;
  const mode_t mask = ::umask(0);  // mkstemp creates 0600: give the file the mode open() would
  ::umask(mask);
  if (ok && ::fchmod(fd, 0666 & ~mask) != 0) ok = false, err = errno;
  if (::close(fd) != 0 && ok) ok = false, err = errno;
  if (ok && ::rename(tmp.c_str(), path.c_str()) != 0) ok = false, err = errno;
  if (!ok) {
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot write " + flag + " file " + path + ": " + std::strerror(err));
  }
}

// A NumPy .npy file, format version 1.0: float32 little endian, C order, shape [rows, cols].
std::string npy_float32(const std::vector<float>& values, int64_t rows, int64_t cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(cols) + "), }";
  const size_t prefix = 10;  // magic (6), version (2), header length (2)
  header.append(63 - (prefix + header.size()) % 64, ' ');  // the data starts 64-byte aligned
  header += '\n';
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  out += header;
  const size_t data_at = out.size();
  out.resize(data_at + values.size() * sizeof(float));
  for (size_t i = 0; i < values.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &values[i], 4);
    for (int b = 0; b < 4; ++b) out[data_at + 4 * i + b] = static_cast<char>(bits >> (8 * b));
  }
  return out;
}

int64_t checked_mul(int64_t a, int64_t b, const std::string& what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) throw std::runtime_error(what + " overflows int64");
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, images_path, labels_path, predictions_path, logits_path;
  int64_t batch = 256, threads = 0, limit = -1;
  rt::LoadOptions opts;
  constexpr int64_t kMaxInt64 = std::numeric_limits<int64_t>::max();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--images") images_path = value();
    else if (a == "--labels") labels_path = value();
    else if (a == "--batch") batch = parse_positive(a, value(), int64_t{1} << 31);
    else if (a == "--threads") threads = parse_positive(a, value(), 4096);
    else if (a == "--limit") limit = parse_positive(a, value(), kMaxInt64);
    else if (a == "--predictions") predictions_path = value();
    else if (a == "--logits") logits_path = value();
    else if (a == "--count-overflows") opts.count_overflows = true;
    else if (a == "--no-fuse") opts.fuse = false;
    else if (a == "--max-macs") opts.max_macs_per_image = parse_positive(a, value(), kMaxInt64);
    else if (a == "--max-activation-bytes") opts.max_activation_bytes_per_image = parse_positive(a, value(), kMaxInt64);
    else if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      return 0;
    } else if (!a.empty() && a[0] == '-') usage_error("unknown option " + rt::printable(a, 40));
    else if (model_path.empty()) model_path = a;
    else usage_error("unexpected argument " + rt::printable(a, 40));
  }
  if (model_path.empty() || images_path.empty() || labels_path.empty())
    usage_error("MODEL, --images and --labels are required");
  try {
    const auto t_load = std::chrono::steady_clock::now();
    const rt::Model model = rt::Model::load(model_path, opts);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
    const rt::IdxArray labels = rt::read_idx(labels_path);  // the small file first: its errors come fast
    const rt::IdxArray images = rt::read_idx(images_path);
    const std::vector<int64_t>& in = model.input_shape();
    const int64_t per_image = checked_mul(checked_mul(in[0], in[1], "input size"), in[2], "input size");
    int64_t n = images.dims[0];
    std::vector<int64_t> nchw{n};
    nchw.insert(nchw.end(), in.begin(), in.end());
    const bool fits = images.dims == nchw || (in[0] == 1 && images.dims == std::vector<int64_t>{n, in[1], in[2]});
    if (!fits)
      throw rt::FormatError(images_path + ": images of shape " + rt::shape_str(images.dims) +
                            " do not fit the model input " + rt::shape_str(in) + ": expected " + rt::shape_str(nchw) +
                            (in[0] == 1 ? " or " + rt::shape_str({n, in[1], in[2]}) : std::string()) +
                            " (uint8 pixels, channels first)");
    if (labels.dims.size() != 1 || labels.dims[0] != n)
      throw rt::FormatError(labels_path + ": labels of shape " + rt::shape_str(labels.dims) + " do not match the " +
                            std::to_string(n) + " images: expected [" + std::to_string(n) + "]");
    const int64_t classes = model.num_classes();
    for (size_t i = 0; i < labels.data.size(); ++i)
      if (labels.data[i] >= classes)
        throw rt::FormatError(labels_path + ": label " + std::to_string(labels.data[i]) + " of image " +
                              std::to_string(i) + " is not one of the model's " + std::to_string(classes) +
                              " classes");
    if (limit > 0) n = std::min(n, limit);
    const int nthreads = static_cast<int>(threads);
#ifdef _OPENMP
    if (nthreads > 0) omp_set_num_threads(nthreads);
#endif
    // --max-activation-bytes also bounds the workspace of a whole batch: the batch shrinks to fit
    // (one image always runs: the model was checked against the bound at load).
    const int64_t per_image_bytes = std::max<int64_t>(1, model.peak_activation_bytes(1));
    const int64_t budget = std::max(opts.max_activation_bytes_per_image, per_image_bytes);
    int64_t b_used = std::max<int64_t>(1, std::min({batch, n, budget / per_image_bytes}));
    while (b_used > 1 && model.peak_activation_bytes(b_used) > budget) b_used = std::max<int64_t>(1, b_used / 2);
    const int64_t peak_bytes = model.peak_activation_bytes(b_used);

    std::vector<float> all_logits;
    if (!logits_path.empty()) all_logits.resize(static_cast<size_t>(checked_mul(n, classes, "logits size")));
    std::vector<float> batch_logits(logits_path.empty() ? static_cast<size_t>(checked_mul(b_used, classes, "logits")) : 0);
    std::vector<int64_t> predictions(predictions_path.empty() ? 0 : static_cast<size_t>(n));
    int64_t correct = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t start = 0; start < n; start += b_used) {
      const int64_t b = std::min(b_used, n - start);
      float* out = logits_path.empty() ? batch_logits.data() : all_logits.data() + start * classes;
      model.run(images.data.data() + start * per_image, b, out, nthreads);
      for (int64_t i = 0; i < b; ++i) {
        const float* row = out + i * classes;
        const int64_t pred = std::max_element(row, row + classes) - row;
        if (!predictions.empty()) predictions[static_cast<size_t>(start + i)] = pred;
        correct += pred == labels.data[static_cast<size_t>(start + i)];
      }
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t overflows = opts.count_overflows ? model.count_overflows(images.data.data(), n) : 0;
    if (!predictions_path.empty()) {
      std::string text;
      for (const int64_t pred : predictions) text += std::to_string(pred) + '\n';
      write_atomically(predictions_path, "--predictions", text);
    }
    if (!logits_path.empty()) write_atomically(logits_path, "--logits", npy_float32(all_logits, n, classes));
    nlohmann::json out = {{"model", model_path},
                                {"images", n},
                                {"correct", correct},
                                {"accuracy", n ? double(correct) / n : 0.0},
                                {"seconds", secs},
                                {"images_per_second", secs > 0 ? n / secs : 0.0},
                                {"load_seconds", load_s},
                                {"batch", b_used},
                                {"threads", nthreads},
                                {"isa", model.isa()},
                                {"macs_per_image", model.macs_per_image()},
                                {"peak_activation_bytes", peak_bytes}};
    if (opts.count_overflows) out["overflows"] = overflows;
    // A path need not be UTF-8: replace what JSON cannot carry rather than fail after the run.
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "qcnn-infer: error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
