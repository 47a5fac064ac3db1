#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/bitpack.h"
#include "runtime/model.h"
#include "runtime/qcnn.h"
#include "runtime/safetensors.h"

using nlohmann::json;
using qcnn::runtime::FormatError;
using qcnn::runtime::kMaxThreads;
using qcnn::runtime::LoadOptions;
using qcnn::runtime::Model;
using qcnn::runtime::SafetensorsFile;

namespace {

struct RawTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

template <typename T>
RawTensor raw(const std::string& dtype, std::vector<int64_t> shape, const std::vector<T>& v) {
  RawTensor t{dtype, std::move(shape), std::vector<uint8_t>(v.size() * sizeof(T))};
  if (!v.empty()) std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

std::vector<uint8_t> build_raw(const std::string& metadata, const std::map<std::string, RawTensor>& tensors) {
  json header;
  header["__metadata__"] = {{"qcnn", metadata}};
  std::vector<uint8_t> data;
  for (const auto& [name, t] : tensors) {
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data.insert(data.end(), t.bytes.begin(), t.bytes.end());
  }
  const std::string h = header.dump();
  std::vector<uint8_t> out(8 + h.size() + data.size());
  uint64_t len = h.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(len >> (8 * i));
  std::memcpy(out.data() + 8, h.data(), h.size());
  if (!data.empty()) std::memcpy(out.data() + 8 + h.size(), data.data(), data.size());
  return out;
}

std::vector<uint8_t> build(const json& doc, const std::map<std::string, RawTensor>& tensors) {
  return build_raw(doc.dump(), tensors);
}

// A 2x2 single-channel input, flatten, linear 4 -> 3 with 2-bit codebook levels {-2, -1, 1, 2}.
struct TinyModel {
  json doc;
  std::map<std::string, RawTensor> tensors;
  std::vector<uint8_t> indices{0, 1, 2, 3, 3, 2, 1, 0, 1, 1, 2, 2};
  std::vector<int16_t> levels{-2, -1, 1, 2};
  std::vector<float> weight_scale{0.1f, 0.1f, 0.1f};
  std::vector<float> scale{0.5f, 0.25f, 2.0f}, bias{1.0f, -1.0f, 0.0f};

  TinyModel() {
    std::vector<int16_t> lut(256);
    for (int i = 0; i < 256; ++i) lut[i] = static_cast<int16_t>(i);
    std::vector<uint8_t> packed(qcnn::packed_size(12, 2));
    qcnn::pack_bits(indices.data(), 12, 2, packed.data());
    tensors["input.lut"] = raw("I16", {1, 256}, lut);
    tensors["fc.weight.indices"] = raw("U8", {static_cast<int64_t>(packed.size())}, packed);
    tensors["fc.weight.levels"] = raw("I16", {1, 4}, levels);
    tensors["fc.weight.scale"] = raw("F32", {3}, weight_scale);
    tensors["fc.output.scale"] = raw("F32", {3}, scale);
    tensors["fc.output.bias"] = raw("F32", {3}, bias);
    json q = {{"scale", 1.0}, {"zero_point", 0}, {"qmin", 0}, {"qmax", 255}};
    doc = {{"format", "qcnn"},
           {"version", 1},
           {"input", {{"shape", {1, 2, 2}}, {"mean", {0.0}}, {"std", {1.0}}, {"qparams", q}, {"lut", "input.lut"}}},
           {"nodes",
            {{{"name", "flat"}, {"op", "flatten"}, {"inputs", {"input"}}, {"shape", {4}}, {"qparams", q}},
             {{"name", "fc"}, {"op", "linear"}, {"inputs", {"flat"}}, {"shape", {3}}, {"qparams", nullptr},
              {"input_zero_point", 0}, {"relu", false}, {"kernel", {1, 1}}, {"stride", {1, 1}}, {"padding", {0, 0}},
              {"in_channels", 4}, {"out_channels", 3},
              {"weight", {{"kind", "codebook"}, {"bits", 2}, {"codes", 4}, {"groups", 1}, {"count", 12}, {"coding", "packed"}}}}}},
           {"output", "fc"}};
  }
  std::vector<uint8_t> bytes() const { return build(doc, tensors); }
};

Model load_bytes(std::vector<uint8_t> bytes) {
  return Model::from_file(SafetensorsFile::parse(std::move(bytes), "test.qcnn"));
}

// Loading must fail with a FormatError whose message contains `needle`.
void require_format_error(const std::vector<uint8_t>& bytes, const std::string& needle) {
  try {
    load_bytes(bytes);
    FAIL("expected a FormatError containing '" << needle << "'");
  } catch (const FormatError& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("runtime runs a hand-built model exactly", "[runtime]") {
  TinyModel tm;
  {
    Model m = Model::from_file(SafetensorsFile::parse(tm.bytes(), "tiny"));
    REQUIRE(m.num_classes() == 3);
    std::vector<uint8_t> px{3, 200, 17, 255, 0, 0, 0, 1};
    auto logits = m.run(px.data(), 2, 1);
    for (int n = 0; n < 2; ++n)
      for (int c = 0; c < 3; ++c) {
        int64_t acc = 0;
        for (int k = 0; k < 4; ++k) acc += int64_t{px[n * 4 + k]} * tm.levels[tm.indices[c * 4 + k]];
        CHECK(logits[n * 3 + c] == std::fma(static_cast<float>(acc), tm.scale[c], tm.bias[c]));
      }
  }
}

// Work other than MACs is bounded at load; threads past kMaxThreads are refused; a batch's workspace stays within
// max_activation_bytes_per_image at any thread count, fewer threads running where more would not fit.
TEST_CASE("runtime bounds element operations, threads and a batch's workspace", "[runtime]") {
  TinyModel tm;
  const auto file = SafetensorsFile::parse(tm.bytes(), "tiny");
  // flatten reads 4 and writes 4; linear reads 4, writes 3 and pads an image of 4
  REQUIRE(Model::from_file(file).ops_per_image() == 19);
  LoadOptions options;
  options.max_ops_per_image = 19;
  CHECK_NOTHROW(Model::from_file(file, options));
  options.max_ops_per_image = 18;
  try {
    Model::from_file(file, options);
    FAIL("expected the ops limit to refuse the model");
  } catch (const FormatError& e) {
    CHECK(std::string(e.what()).find("18 element operations per image") != std::string::npos);
  }

  const Model free = Model::from_file(file);
  std::vector<uint8_t> px(4 * 64);
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(i * 37);
  CHECK_THROWS_AS(free.run(px.data(), 2, kMaxThreads + 1), std::invalid_argument);
  CHECK_THROWS_AS(free.peak_activation_bytes(2, kMaxThreads + 1), std::invalid_argument);
  const auto want = free.run(px.data(), 64, 1);

  options = LoadOptions{};
  options.max_activation_bytes_per_image = free.peak_activation_bytes(1, 1);
  const Model bounded = Model::from_file(file, options);
  for (int threads : {2, 3, 8}) {
    INFO("threads " << threads);
    CHECK(free.peak_activation_bytes(64, threads) == free.peak_activation_bytes(1, 1) * threads);
    CHECK(bounded.peak_activation_bytes(64, threads) <= options.max_activation_bytes_per_image);
    CHECK(bounded.run(px.data(), 64, threads) == want);
    CHECK(free.run(px.data(), 64, threads) == want);
  }
}

TEST_CASE("reader rejects the file truncated at every byte", "[runtime]") {
  const auto bytes = TinyModel().bytes();
  for (size_t len = 0; len < bytes.size(); ++len) {
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(len));
    CHECK_THROWS_AS(load_bytes(cut), FormatError);
  }
}

TEST_CASE("reader rejects malformed headers with a message naming the problem", "[runtime]") {
  TinyModel tm;
  auto bytes = tm.bytes();
  SECTION("header length beyond the file") {
    bytes[0] = 0xFF; bytes[1] = 0xFF; bytes[2] = 0x0F;
    require_format_error(bytes, "beyond the end of the file");
  }
  SECTION("oversized header length") {
    bytes[7] = 0x01;
    require_format_error(bytes, "exceeds the 100 MB limit");
  }
  SECTION("invalid JSON header") {
    bytes[8] = '[';
    bytes[9] = '!';
    require_format_error(bytes, "invalid JSON");
  }
  SECTION("wrong dtype") {
    tm.tensors["fc.weight.levels"] = raw("F32", {1, 4}, std::vector<float>{-2, -1, 1, 2});
    require_format_error(tm.bytes(), "'fc.weight.levels' has dtype F32, expected I16");
  }
  SECTION("levels stored as I32 (the old layout)") {
    tm.tensors["fc.weight.levels"] = raw("I32", {1, 4}, std::vector<int32_t>{-2, -1, 1, 2});
    require_format_error(tm.bytes(), "'fc.weight.levels' has dtype I32, expected I16");
  }
  SECTION("levels with the wrong shape") {
    tm.tensors["fc.weight.levels"] = raw("I16", {4, 1}, tm.levels);
    require_format_error(tm.bytes(), "'fc.weight.levels' has shape [4, 1], expected [1, 4]");
  }
  SECTION("weight scale missing, of the wrong dtype or shape") {
    tm.tensors.erase("fc.weight.scale");
    require_format_error(tm.bytes(), "'fc.weight.scale' is missing");
    tm.tensors["fc.weight.scale"] = raw("I32", {3}, std::vector<int32_t>{1, 1, 1});
    require_format_error(tm.bytes(), "'fc.weight.scale' has dtype I32, expected F32");
    tm.tensors["fc.weight.scale"] = raw("F32", {1}, std::vector<float>{0.1f});
    require_format_error(tm.bytes(), "'fc.weight.scale' has shape [1], expected [3]");
  }
  SECTION("unknown dtype") {
    tm.tensors["fc.weight.levels"].dtype = "Q7";
    require_format_error(tm.bytes(), "unsupported dtype");
  }
  SECTION("shape disagrees with byte length") {
    tm.tensors["fc.output.scale"].shape = {4};
    require_format_error(tm.bytes(), "tensor 'fc.output.scale'");
  }
  SECTION("oversized shape") {
    tm.tensors["fc.output.scale"].shape = {int64_t{1} << 40, int64_t{1} << 40};
    require_format_error(tm.bytes(), "fc.output.scale");
  }
  SECTION("missing tensor") {
    tm.tensors.erase("fc.output.bias");
    require_format_error(tm.bytes(), "'fc.output.bias' is missing");
  }
  SECTION("invalid metadata JSON") {
    std::string meta = tm.doc.dump();
    meta.resize(meta.size() / 2);
    require_format_error(build_raw(meta, tm.tensors), "metadata: invalid JSON");
  }
  SECTION("wrong format name") {
    tm.doc["format"] = "onnx";
    require_format_error(tm.bytes(), "format must be 'qcnn'");
  }
  SECTION("unknown op") {
    tm.doc["nodes"][0]["op"] = "softmax";
    require_format_error(tm.bytes(), "'flat': unknown op 'softmax'");
  }
  SECTION("undefined input") {
    tm.doc["nodes"][1]["inputs"] = {"nowhere"};
    require_format_error(tm.bytes(), "'fc': input 'nowhere' is not an earlier value");
  }
  SECTION("declared shape differs") {
    tm.doc["nodes"][1]["shape"] = {4};
    require_format_error(tm.bytes(), "declared shape");
  }
  SECTION("bad bit width") {
    tm.doc["nodes"][1]["weight"]["bits"] = 17;
    require_format_error(tm.bytes(), "field 'bits' = 17 outside");
  }
  SECTION("wider indices than the tensor holds") {
    tm.doc["nodes"][1]["weight"]["bits"] = 9;  // valid up to 16 bits, but 12 values of 9 bits need 14 bytes
    require_format_error(tm.bytes(), "expected 14 for 12 values of 9 bits");
  }
  SECTION("index count mismatch") {
    tm.doc["nodes"][1]["weight"]["count"] = 11;
    require_format_error(tm.bytes(), "count must be out_channels * in_channels / groups * kh * kw = 12");
  }
  SECTION("indices byte length") {
    tm.tensors["fc.weight.indices"] = raw("U8", {2}, std::vector<uint8_t>{0, 0});
    require_format_error(tm.bytes(), "'fc.weight.indices'");
  }
  SECTION("index beyond the codebook") {
    tm.doc["nodes"][1]["weight"]["codes"] = 3;
    tm.tensors["fc.weight.levels"] = raw("I16", {1, 3}, std::vector<int16_t>{1, 2, 3});
    require_format_error(tm.bytes(), "index 3 is not below codes");
  }
  SECTION("accumulator overflow") {
    tm.tensors["fc.weight.levels"] = raw("I16", {1, 4}, std::vector<int16_t>{-32767, 1, 1, 32767});
    tm.doc["input"]["qparams"]["qmax"] = 255;
    CHECK_NOTHROW(load_bytes(tm.bytes()));  // 4 * 255 * 32767 fits
    tm.doc["nodes"][1]["input_zero_point"] = -30000;  // 4 * 30255 * 32767 >= 2^31
    require_format_error(tm.bytes(), "overflows the int32 accumulator");
    tm.doc["nodes"][1]["input_zero_point"] = -40000;  // |x - zp| beyond int16
    require_format_error(tm.bytes(), "exceed int16");
  }
  SECTION("level -32768") {
    tm.tensors["fc.weight.levels"] = raw("I16", {1, 4}, std::vector<int16_t>{-32768, 1, 1, 2});
    require_format_error(tm.bytes(), "'fc.weight.levels': entries must be within +-32767");
  }
  SECTION("lut outside qparams") {
    tm.doc["input"]["qparams"]["qmax"] = 100;
    require_format_error(tm.bytes(), "'input.lut'");
  }
  SECTION("data offsets out of range") {
    json h;
    std::string s(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(bytes[0] | (bytes[1] << 8)));
    h = json::parse(s);
    h["fc.output.bias"]["data_offsets"] = {0, 1 << 20};
    const std::string hs = h.dump();
    std::vector<uint8_t> b(8);
    for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(uint64_t(hs.size()) >> (8 * i));
    b.insert(b.end(), hs.begin(), hs.end());
    b.insert(b.end(), bytes.begin() + 8 + static_cast<std::ptrdiff_t>(s.size()), bytes.end());
    require_format_error(b, "outside the data section");
    h["fc.output.bias"]["data_offsets"] = {8, 4};
    const std::string hs2 = h.dump();
    std::vector<uint8_t> b2(8);
    for (int i = 0; i < 8; ++i) b2[i] = static_cast<uint8_t>(uint64_t(hs2.size()) >> (8 * i));
    b2.insert(b2.end(), hs2.begin(), hs2.end());
    b2.insert(b2.end(), bytes.begin() + 8 + static_cast<std::ptrdiff_t>(s.size()), bytes.end());
    require_format_error(b2, "outside the data section");
  }
}

TEST_CASE("reader survives random corruption", "[runtime]") {
  const auto bytes = TinyModel().bytes();
  std::mt19937 rng(2024);
  int loaded = 0, rejected = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    auto b = bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) b[rng() % b.size()] = static_cast<uint8_t>(rng());
    try {
      Model m = load_bytes(b);
      std::vector<uint8_t> px{1, 2, 3, 4};
      auto out = m.run(px.data(), 1, 1);
      CHECK(static_cast<int64_t>(out.size()) == m.num_classes());
      ++loaded;
    } catch (const FormatError&) {
      ++rejected;
    }
  }
  CHECK(loaded + rejected == 3000);
  CHECK(rejected > 0);
}

// ------------------------------------------------------------------------------------ the C interface (qcnn.h)

TEST_CASE("C API: a model from memory and from a file runs as the C++ one", "[runtime][c_api]") {
  const TinyModel tm;
  const std::vector<uint8_t> bytes = tm.bytes();
  const std::vector<uint8_t> px{3, 200, 17, 255, 0, 0, 0, 1};
  const std::vector<float> want = load_bytes(bytes).run(px.data(), 2, 1);

  qcnn_model* model = nullptr;
  REQUIRE(qcnn_load_buffer(bytes.data(), bytes.size(), nullptr, &model) == QCNN_OK);
  int64_t shape[3] = {0, 0, 0}, classes = 0, peak = 0;
  REQUIRE(qcnn_input_shape(model, shape) == QCNN_OK);
  CHECK((shape[0] == 1 && shape[1] == 2 && shape[2] == 2));
  REQUIRE(qcnn_num_classes(model, &classes) == QCNN_OK);
  CHECK(classes == 3);
  REQUIRE(qcnn_peak_activation_bytes(model, 2, 1, &peak) == QCNN_OK);
  CHECK(peak > 0);
  CHECK(std::string(qcnn_isa(model)).size() > 0);
  std::vector<float> logits(6, -1.0f);
  REQUIRE(qcnn_run(model, px.data(), 2, logits.data(), 2) == QCNN_OK);
  CHECK(logits == want);
  CHECK(qcnn_run(model, nullptr, 0, nullptr, 1) == QCNN_OK);  // no images: nothing read or written
  qcnn_free(model);
  qcnn_free(nullptr);

  const std::string path = "c_api_model.qcnn";
  {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  qcnn_options options;
  qcnn_default_options(&options);
  options.fuse = 0;
  REQUIRE(qcnn_load_file(path.c_str(), &options, &model) == QCNN_OK);
  std::fill(logits.begin(), logits.end(), -1.0f);
  REQUIRE(qcnn_run(model, px.data(), 2, logits.data(), 1) == QCNN_OK);
  CHECK(logits == want);
  qcnn_free(model);
  std::remove(path.c_str());
}

TEST_CASE("C API: every failure is a status and a message naming the problem", "[runtime][c_api]") {
  const std::vector<uint8_t> bytes = TinyModel().bytes();
  qcnn_model* model = reinterpret_cast<qcnn_model*>(&model);  // set to NULL by a failed load
  auto message = [] { return std::string(qcnn_last_error()); };

  CHECK(qcnn_load_file("no/such/model.qcnn", nullptr, &model) == QCNN_ERROR_IO);
  CHECK(model == nullptr);
  CHECK_THAT(message(), Catch::Contains("no/such/model.qcnn: cannot open model"));
  CHECK(qcnn_load_file(".", nullptr, &model) == QCNN_ERROR_IO);
  CHECK(qcnn_load_file(nullptr, nullptr, &model) == QCNN_ERROR_ARGUMENT);
  CHECK(qcnn_load_buffer(bytes.data(), bytes.size(), nullptr, nullptr) == QCNN_ERROR_ARGUMENT);
  CHECK(qcnn_load_buffer(nullptr, 10, nullptr, &model) == QCNN_ERROR_ARGUMENT);
  CHECK(qcnn_load_buffer(nullptr, 0, nullptr, &model) == QCNN_ERROR_FORMAT);  // an empty buffer
  qcnn_options options;
  qcnn_default_options(&options);
  options.max_ops_per_image = 0;
  CHECK(qcnn_load_buffer(bytes.data(), bytes.size(), &options, &model) == QCNN_ERROR_ARGUMENT);
  CHECK_THAT(message(), Catch::Contains("max_ops_per_image must be positive"));
  qcnn_default_options(&options);
  options.max_macs_per_image = 5;  // the tiny model has 12
  CHECK(qcnn_load_buffer(bytes.data(), bytes.size(), &options, &model) == QCNN_ERROR_FORMAT);
  CHECK_THAT(message(), Catch::Contains("limit of 5 multiply-accumulates"));

  // A buffer is as hostile as a file: cut at every byte, then with bytes flipped.
  for (size_t len = 0; len < bytes.size(); ++len) {
    CHECK(qcnn_load_buffer(bytes.data(), len, nullptr, &model) == QCNN_ERROR_FORMAT);
    CHECK(model == nullptr);
    CHECK_THAT(message(), Catch::StartsWith("buffer"));
  }
  std::mt19937 rng(5);
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<uint8_t> bad = bytes;
    for (int k = 0; k < 3; ++k) bad[rng() % bad.size()] = static_cast<uint8_t>(rng());
    const qcnn_status s = qcnn_load_buffer(bad.data(), bad.size(), nullptr, &model);
    CHECK((s == QCNN_OK || s == QCNN_ERROR_FORMAT));
    if (s == QCNN_OK) {
      std::vector<float> logits(3);
      const std::vector<uint8_t> px{1, 2, 3, 4};
      CHECK(qcnn_run(model, px.data(), 1, logits.data(), 1) == QCNN_OK);
      qcnn_free(model);
    }
  }

  REQUIRE(qcnn_load_buffer(bytes.data(), bytes.size(), nullptr, &model) == QCNN_OK);
  std::vector<float> logits(3);
  const std::vector<uint8_t> px{1, 2, 3, 4};
  CHECK(qcnn_run(model, px.data(), -1, logits.data(), 1) == QCNN_ERROR_ARGUMENT);
  CHECK_THAT(message(), Catch::Contains("images = -1"));
  CHECK(qcnn_run(model, nullptr, 1, logits.data(), 1) == QCNN_ERROR_ARGUMENT);
  CHECK(qcnn_run(model, px.data(), 1, logits.data(), kMaxThreads + 1) == QCNN_ERROR_ARGUMENT);
  CHECK_THAT(message(), Catch::Contains("threads = 4097"));
  CHECK(qcnn_run(nullptr, px.data(), 1, logits.data(), 1) == QCNN_ERROR_ARGUMENT);
  int64_t value = 0;
  CHECK(qcnn_peak_activation_bytes(model, -1, 1, &value) == QCNN_ERROR_ARGUMENT);
  CHECK(qcnn_input_shape(model, nullptr) == QCNN_ERROR_ARGUMENT);
  CHECK(qcnn_num_classes(nullptr, &value) == QCNN_ERROR_ARGUMENT);
  CHECK(qcnn_isa(nullptr) == nullptr);
  qcnn_free(model);
}
