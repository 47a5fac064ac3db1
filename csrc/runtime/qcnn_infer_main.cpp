// qcnn-infer MODEL.qcnn --images IDX --labels IDX [--batch N] [--threads N] [--limit N]
//            [--predictions FILE] [--logits FILE.npy] [--max-macs N] [--max-ops N] [--max-activation-bytes N]
//            [--count-overflows] [--no-fuse] [--profile]
// Prints one JSON line: accuracy, throughput, counts, the kernels' ISA and the model's cost. --predictions
// writes the predicted class of each image, one per line; --logits the float32 logits as a .npy array
// [images, classes]. Any error: `qcnn-infer: error: <message>` on stderr, exit status 1.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
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
    "                  [--predictions FILE] [--logits FILE.npy] [--max-macs N] [--max-ops N] [--max-activation-bytes N]\n"
    "                  [--count-overflows] [--no-fuse] [--profile]\n"
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
    "  --profile                  also run the images once more timing every node, and print 'layers': per node\n"
    "                             its name, op, kernel, MACs per image and microseconds per image\n"
    "  --max-macs N               reject models above N multiply-accumulates per image (default 2^35)\n"
    "  --max-ops N                reject models above N other operations per image: elements read and written,\n"
    "                             pooling window cells, padded conv inputs (default 2^32)\n"
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

[[noreturn]] void write_error(const std::string& flag, const std::string& path, int err) {
  throw std::runtime_error("cannot write " + flag + " file " + path + ": " + std::strerror(err));
}

// All of `bytes` to fd; the errno of a failed write, or 0.
int write_all(int fd, const std::string& bytes) {
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) return EIO;
    p += n;
    left -= static_cast<size_t>(n);
  }
  return 0;
}

// Where writing `path` lands: the end of its chain of symbolic links (relative targets taken from the link's
// directory), or "" where a link leads into /proc (/dev/stdout, /dev/fd/N: an open descriptor, written in place).
std::string link_target(std::string path, const std::string& flag) {
  for (int hops = 0;; ++hops) {
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return path;
    if (hops == 40) write_error(flag, path, ELOOP);
    std::string target(PATH_MAX, '\0');
    const ssize_t n = ::readlink(path.c_str(), target.data(), target.size());
    if (n < 0) write_error(flag, path, errno);
    target.resize(static_cast<size_t>(n));
    if (target.rfind("/proc/", 0) == 0) return "";
    if (target[0] != '/') {
      const size_t slash = path.rfind('/');
      target = (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + target;
    }
    path = target;
  }
}

// The temporary a writer with process id `pid` writes file `name` through, as qcnn's Python writers name theirs
// (python/qcnn/atomic.py): a writer killed outright leaves it behind, and the next one removes it.
std::string temp_name(const std::string& name, long pid) { return "." + name + ".tmp" + std::to_string(pid); }

// Removes the temporaries of file `name` in `dir` whose writer is no longer running.
void remove_stale_temps(const std::string& dir, const std::string& name) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  const std::string prefix = "." + name + ".tmp";
  while (const dirent* e = ::readdir(d)) {
    const std::string entry = e->d_name;
    if (entry.size() <= prefix.size() || entry.size() > prefix.size() + 10 || entry.compare(0, prefix.size(), prefix))
      continue;
    const std::string digits = entry.substr(prefix.size());
    if (digits.find_first_not_of("0123456789") != std::string::npos) continue;
    const long pid = std::stol(digits);
    if (pid <= 0 || pid == ::getpid() || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
    struct stat st;
    const std::string full = dir + (dir.back() == '/' ? "" : "/") + entry;
    if (::lstat(full.c_str(), &st) == 0 && S_ISREG(st.st_mode)) ::unlink(full.c_str());
  }
  ::closedir(d);
}

// Writes `bytes` to the output file `path` of `flag`. A regular file (or none yet) is replaced through a temporary
// file beside it and a rename, so that readers see the old file or the complete new one; through a symbolic link
// the link's target is replaced, the link kept. Anything else there (a FIFO, /dev/stdout, a device) is written in
// place. A failed write is an error naming the file.
void write_output(const std::string& path, const std::string& flag, const std::string& bytes) {
  const std::string target = link_target(path, flag);
  struct stat st;
  const bool exists = !target.empty() && ::stat(target.c_str(), &st) == 0;
  if (target.empty() || (exists && !S_ISREG(st.st_mode))) {
    if (exists && S_ISDIR(st.st_mode)) write_error(flag, path, EISDIR);
    const int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) write_error(flag, path, errno);
    int err = write_all(fd, bytes);
    if (::close(fd) != 0 && err == 0) err = errno;
    if (err) write_error(flag, path, err);
    return;
  }
  const size_t slash = target.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : target.substr(0, slash + 1);
  const std::string name = slash == std::string::npos ? target : target.substr(slash + 1);
  remove_stale_temps(dir, name);
  const std::string tmp = (slash == std::string::npos ? "" : dir) + temp_name(name, ::getpid());
  ::unlink(tmp.c_str());  // ours: a pid is not reused while we run
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) write_error(flag, path, errno);
  int err = write_all(fd, bytes);
  // mkstemp creates 0600: keep the mode of the file replaced, or give the one open() would
  const mode_t mask = ::umask(0);
  ::umask(mask);
  if (!err && ::fchmod(fd, exists ? st.st_mode & 07777 : 0666 & ~mask) != 0) err = errno;
  if (!err && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && !err) err = errno;
  if (!err && ::rename(tmp.c_str(), target.c_str()) != 0) err = errno;
  if (err) {
    ::unlink(tmp.c_str());
    write_error(flag, path, err);
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
  bool profile = false;
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
    else if (a == "--threads") threads = parse_positive(a, value(), rt::kMaxThreads);
    else if (a == "--limit") limit = parse_positive(a, value(), kMaxInt64);
    else if (a == "--predictions") predictions_path = value();
    else if (a == "--logits") logits_path = value();
    else if (a == "--count-overflows") opts.count_overflows = true;
    else if (a == "--no-fuse") opts.fuse = false;
    else if (a == "--profile") profile = true;
    else if (a == "--max-macs") opts.max_macs_per_image = parse_positive(a, value(), kMaxInt64);
    else if (a == "--max-ops") opts.max_ops_per_image = parse_positive(a, value(), kMaxInt64);
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
    // The engine keeps a batch's workspace within --max-activation-bytes (fewer threads where it must).
    const int64_t b_used = std::max<int64_t>(1, std::min(batch, n));
    const int64_t peak_bytes = model.peak_activation_bytes(b_used, nthreads);

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
      write_output(predictions_path, "--predictions", text);
    }
    if (!logits_path.empty()) write_output(logits_path, "--logits", npy_float32(all_logits, n, classes));
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
                                {"ops_per_image", model.ops_per_image()},
                                {"peak_activation_bytes", peak_bytes}};
    if (opts.count_overflows) out["overflows"] = overflows;
    if (profile) {
      std::vector<rt::LayerProfile> layers(model.num_nodes());
      for (int64_t start = 0; start < n; start += b_used) {
        const auto part = model.profile(images.data.data() + start * per_image, std::min(b_used, n - start), nthreads);
        for (size_t i = 0; i < layers.size(); ++i) {
          if (start == 0)
            layers[i] = part[i];
          else
            layers[i].seconds += part[i].seconds;
        }
      }
      nlohmann::json rows = nlohmann::json::array();
      for (const rt::LayerProfile& l : layers)
        rows.push_back({{"name", l.name}, {"op", l.op}, {"kernel", l.kernel}, {"macs_per_image", l.macs_per_image},
                        {"us_per_image", n ? 1e6 * l.seconds / n : 0.0}});
      out["layers"] = rows;
    }
    // A path need not be UTF-8: replace what JSON cannot carry rather than fail after the run.
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
    if (!std::cout) throw std::runtime_error(std::string("cannot write the result to standard output: ") + std::strerror(errno));
  } catch (const std::exception& e) {
    std::cerr << "qcnn-infer: error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
