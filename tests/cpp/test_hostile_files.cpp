// Crafted .qcnn containers and IDX files: every one must give a FormatError naming the problem,
// quickly and without large allocations (tests/fuzz/ explores the same readers at random).
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/idx.h"
#include "runtime/model.h"
#include "runtime/safetensors.h"

using Catch::Matchers::Contains;
using nlohmann::json;
using qcnn::runtime::FormatError;
using qcnn::runtime::parse_idx;
using qcnn::runtime::parse_untrusted_json;
using qcnn::runtime::read_idx;
using qcnn::runtime::SafetensorsFile;

namespace {

std::string nested(int depth, const std::string& inner = "0") {
  return std::string(static_cast<size_t>(depth), '[') + inner + std::string(static_cast<size_t>(depth), ']');
}

std::vector<uint8_t> container(const std::string& header, const std::vector<uint8_t>& data = {}) {
  std::vector<uint8_t> out(8 + header.size() + data.size());
  const uint64_t len = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(len >> (8 * i));
  std::copy(header.begin(), header.end(), out.begin() + 8);
  std::copy(data.begin(), data.end(), out.begin() + 8 + static_cast<std::ptrdiff_t>(header.size()));
  return out;
}

json entry(const std::string& dtype, const json& shape, uint64_t begin, uint64_t end) {
  return {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, end}}};
}

SafetensorsFile parse(const std::vector<uint8_t>& bytes) { return SafetensorsFile::parse(bytes, "crafted.qcnn"); }

// A unique temporary directory, removed with its files.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/qcnn-hostile-XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string write(const std::string& name, const std::vector<uint8_t>& bytes) const {
    const std::string p = path + "/" + name;
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return p;
  }
};

std::vector<uint8_t> idx_bytes(const std::vector<uint32_t>& dims, size_t data_bytes, uint8_t fill = 7) {
  std::vector<uint8_t> out{0, 0, 0x08, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims)
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(d >> s));
  out.insert(out.end(), data_bytes, fill);
  return out;
}

std::vector<uint8_t> gzip(const std::vector<uint8_t>& in) {
  z_stream s{};
  REQUIRE(deflateInit2(&s, 9, Z_DEFLATED, 16 + MAX_WBITS, 9, Z_DEFAULT_STRATEGY) == Z_OK);
  std::vector<uint8_t> out(deflateBound(&s, in.size()) + 64);
  s.next_in = const_cast<Bytef*>(in.data());
  s.avail_in = static_cast<unsigned>(in.size());
  s.next_out = out.data();
  s.avail_out = static_cast<unsigned>(out.size());
  REQUIRE(deflate(&s, Z_FINISH) == Z_STREAM_END);
  out.resize(s.total_out);
  deflateEnd(&s);
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void* handle_max_depth_document(void* ok) {
  // Everything that may recurse over a document: parse, copy, dump, compare, destroy.
  std::string text;  // 64 levels, arrays and objects alternating
  for (int i = 0; i < 64; ++i) text += i % 2 ? "{\"k\": " : "[";
  text += "1";
  for (int i = 63; i >= 0; --i) text += i % 2 ? "}" : "]";
  json doc = parse_untrusted_json(text, "deep");
  json copy = doc;
  const std::string dumped = copy.dump();
  *static_cast<bool*>(ok) = copy == doc && json::parse(dumped) == doc;
  return nullptr;
}

}  // namespace

TEST_CASE("parse_untrusted_json bounds nesting before parsing", "[hostile]") {
  CHECK(parse_untrusted_json(nested(64), "t") == json::parse(nested(64)));
  REQUIRE_THROWS_AS(parse_untrusted_json(nested(65), "t"), FormatError);
  REQUIRE_THROWS_WITH(parse_untrusted_json(nested(65), "doc.json: header"),
                      Contains("doc.json: header") && Contains("nesting deeper than 64 levels at byte 64"));
  REQUIRE_THROWS_WITH(parse_untrusted_json(R"({"a": {"b": [1]}})", "t", 2), Contains("nesting"));
  CHECK_NOTHROW(parse_untrusted_json(R"({"a": {"b": 1}})", "t", 2));
  // Brackets inside strings do not count, escaped quotes do not end a string.
  CHECK(parse_untrusted_json(R"(["[[[[{{{{", "\"[[[[[[", "\\", "]]]]"])", "t", 1).size() == 4);
  CHECK_THROWS_WITH(parse_untrusted_json(R"(["\"", [[0]]])", "t", 2), Contains("nesting"));
  // Closing brackets first cannot buy depth for later opening ones.
  CHECK_THROWS_WITH(parse_untrusted_json("]]]" + nested(66), "t"), Contains("byte 0 of the text): unbalanced"));
  CHECK_THROWS_WITH(parse_untrusted_json("[0]]" + nested(66), "t"), Contains("byte 3 of the text): unbalanced"));
  SECTION("a deep document is rejected in linear time") {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string huge = nested(5'000'000);
    REQUIRE_THROWS_WITH(parse_untrusted_json(huge, "t"), Contains("nesting"));
    const std::string objects = [] {
      std::string s;
      for (int i = 0; i < 1'000'000; ++i) s += "{\"a\":";
      return s;
    }();
    REQUIRE_THROWS_WITH(parse_untrusted_json(objects, "t"), Contains("nesting"));
    CHECK(seconds_since(t0) < 5.0);
  }
}

TEST_CASE("a maximal-depth document is handled on a small stack", "[hostile]") {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  REQUIRE(pthread_attr_setstacksize(&attr, 256 * 1024) == 0);  // 1/32 of the default main-thread stack
  bool ok = false;
  pthread_t thread;
  REQUIRE(pthread_create(&thread, &attr, handle_max_depth_document, &ok) == 0);
  pthread_join(thread, nullptr);
  pthread_attr_destroy(&attr);
  CHECK(ok);
}

TEST_CASE("parse errors name the place, never the untrusted text", "[hostile]") {
  const std::string secret(5000, 'Q');
  for (const std::string& text : {"tru" + secret, "[1, 2, " + secret + "]", "{\"" + secret + "\" 1}",
                                  "\"" + secret + "\x01\"", "1e99999" + std::string(3000, '9'), std::string("")}) {
    try {
      parse_untrusted_json(text, "file.qcnn: header");
      FAIL("no error for " << text.substr(0, 20));
    } catch (const FormatError& e) {
      const std::string msg = e.what();
      INFO(msg);
      CHECK_THAT(msg, Contains("file.qcnn: header: invalid JSON"));
      CHECK(msg.find("QQQQ") == std::string::npos);
      CHECK(msg.find("99999") == std::string::npos);
      CHECK(msg.size() < 400);
    }
  }
  CHECK_THROWS_WITH(parse_untrusted_json("[1, 2,, 3]", "w"), Contains("invalid JSON (byte 6 of the text)"));
}

TEST_CASE("safetensors header: nesting, sizes and offsets are checked", "[hostile]") {
  SECTION("deeply nested header") {
    const auto bytes = container(R"({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": )" +
                                 nested(100000) + "}}", {1});
    REQUIRE_THROWS_WITH(parse(bytes), Contains("crafted.qcnn: header") && Contains("nesting"));
    // The same at the limit parses (the unknown field is ignored).
    CHECK_NOTHROW(parse(container(R"({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": )" +
                                  nested(62) + "}}", {1})));
  }
  SECTION("shape products that wrap") {
    json h;
    h["t"] = entry("U8", {uint64_t{1} << 32, uint64_t{1} << 32, 1}, 0, 0);  // 2^64 wraps to 0
    REQUIRE_THROWS_WITH(parse(container(h.dump())), Contains("tensor 't'") && Contains("overflows"));
    h["t"] = entry("I64", {uint64_t{1} << 61}, 0, 0);  // bytes = 2^64 wraps to 0
    REQUIRE_THROWS_WITH(parse(container(h.dump())), Contains("tensor 't'") && Contains("overflows"));
    h["t"] = entry("U8", {uint64_t{1} << 40, uint64_t{1} << 40, 0}, 0, 0);  // wraps, then 0
    REQUIRE_THROWS_WITH(parse(container(h.dump())), Contains("overflows"));
    h["t"] = entry("U8", {uint64_t{1} << 62, 3, 0}, 0, 0);  // no uint64 wrap, but beyond int64
    REQUIRE_THROWS_WITH(parse(container(h.dump())), Contains("overflows"));
    h["t"] = entry("U8", {~uint64_t{0}}, 0, 0);
    REQUIRE_THROWS_WITH(parse(container(h.dump())), Contains("exceeds int64"));
    h["t"] = entry("F32", {3, -1}, 0, 0);
    REQUIRE_THROWS_WITH(parse(container(h.dump())), Contains("non-negative integers"));
    h["t"] = entry("F32", {0, 5}, 0, 0);
    CHECK(parse(container(h.dump())).tensor("t", qcnn::runtime::DType::F32).numel() == 0);
  }
  SECTION("data offsets") {
    const std::vector<uint8_t> data(16, 0);
    json h;
    h["t"] = entry("I32", {2}, 8, 4);
    REQUIRE_THROWS_WITH(parse(container(h.dump(), data)), Contains("tensor 't'") && Contains("begin after end"));
    h["t"] = entry("I32", {2}, 12, 20);
    REQUIRE_THROWS_WITH(parse(container(h.dump(), data)),
                        Contains("[12, 20] outside the data section of 16 bytes"));
    h["t"] = entry("I32", {2}, ~uint64_t{0} - 3, ~uint64_t{0});  // end - begin is right, but far outside
    REQUIRE_THROWS_WITH(parse(container(h.dump(), data)), Contains("outside the data section"));
    h["t"] = entry("I32", {2}, 0, 12);
    REQUIRE_THROWS_WITH(parse(container(h.dump(), data)), Contains("hold 12 bytes, shape [2] of I32 needs 8"));
    h["t"]["data_offsets"] = {0, 1.5};
    REQUIRE_THROWS_WITH(parse(container(h.dump(), data)), Contains("non-negative integers"));
  }
  SECTION("tensors sharing bytes") {
    const std::vector<uint8_t> data(16, 0);
    json h;
    h["a"] = entry("I32", {2}, 0, 8);
    h["b"] = entry("I32", {2}, 8, 16);
    CHECK_NOTHROW(parse(container(h.dump(), data)));  // adjacent
    h["b"] = entry("I32", {2}, 4, 12);
    REQUIRE_THROWS_WITH(parse(container(h.dump(), data)),
                        Contains("'a' (data_offsets [0, 8]) and 'b' (data_offsets [4, 12]) overlap"));
    h["b"] = entry("U8", {8}, 0, 8);  // an alias of the same bytes
    REQUIRE_THROWS_WITH(parse(container(h.dump(), data)), Contains("overlap"));
    h["b"] = entry("U8", {16}, 0, 16);  // contains a
    REQUIRE_THROWS_WITH(parse(container(h.dump(), data)), Contains("overlap"));
    h["b"] = entry("I16", {2}, 10, 14);
    h["c"] = entry("U8", {16}, 0, 16);  // overlaps both, sorted first
    REQUIRE_THROWS_WITH(parse(container(h.dump(), data)), Contains("overlap"));
    h.erase("c");
    h["b"] = entry("I16", {0}, 4, 4);  // empty: shares no byte
    CHECK_NOTHROW(parse(container(h.dump(), data)));
  }
  SECTION("other malformed entries") {
    json h;
    h["t"] = {{"dtype", json::array({"U8"})}, {"shape", {1}}, {"data_offsets", {0, 1}}};
    REQUIRE_THROWS_WITH(parse(container(h.dump(), {0})), Contains("dtype must be a string"));
    h["t"]["dtype"] = std::string(10000, 'X');
    REQUIRE_THROWS_WITH(parse(container(h.dump(), {0})), Contains("unsupported dtype"));
    CHECK_THROWS_WITH(parse(container(h.dump(), {0})), !Contains(std::string(100, 'X')));
    h["t"] = entry("U8", {1}, 0, 1);
    h["__metadata__"] = {{"qcnn", 3}};
    REQUIRE_THROWS_WITH(parse(container(h.dump(), {0})), Contains("__metadata__['qcnn'] must be a string"));
    // A long, binary tensor name is cut and escaped in messages.
    json h2;
    h2[std::string(1000, 'n') + "\n"] = entry("U8", {2}, 0, 1);
    try {
      parse(container(h2.dump(), {0}));
      FAIL("no error");
    } catch (const FormatError& e) {
      CHECK(std::string(e.what()).size() < 400);
      CHECK_THAT(e.what(), Contains("nnn..."));
    }
  }
}

TEST_CASE("model and IDX paths: missing, directory, not a regular file", "[hostile]") {
  TempDir dir;
  REQUIRE_THROWS_WITH(SafetensorsFile::read(dir.path), Contains(dir.path + ": is a directory"));
  REQUIRE_THROWS_WITH(SafetensorsFile::read(dir.path + "/nope.qcnn"),
                      Contains(dir.path + "/nope.qcnn") && Contains("No such file or directory"));
  REQUIRE_THROWS_WITH(read_idx(dir.path), Contains(dir.path + ": is a directory"));
  REQUIRE_THROWS_WITH(read_idx(dir.path + "/nope.idx"), Contains("nope.idx") && Contains("No such file"));
  const std::string fifo = dir.path + "/fifo";
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);  // must not block waiting for a writer
  REQUIRE_THROWS_WITH(SafetensorsFile::read(fifo), Contains("not a regular file"));
  REQUIRE_THROWS_WITH(read_idx(fifo), Contains("not a regular file"));
  REQUIRE_THROWS_WITH(SafetensorsFile::read(dir.write("empty.qcnn", {})), Contains("needs at least 8"));
}

TEST_CASE("IDX: raw files are checked against their size before allocating", "[hostile]") {
  const auto good = idx_bytes({3, 2, 2}, 12);
  auto arr = parse_idx(good.data(), good.size(), "good.idx");
  CHECK(arr.dims == std::vector<int64_t>{3, 2, 2});
  CHECK(arr.data == std::vector<uint8_t>(12, 7));
  TempDir dir;
  CHECK(read_idx(dir.write("good.idx", good)).data == arr.data);

  auto bad = [](const std::vector<uint8_t>& b, uint64_t max = qcnn::runtime::kMaxIdxBytes) {
    parse_idx(b.data(), b.size(), "bad.idx", max);
  };
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE_THROWS_WITH(bad(idx_bytes({0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, 0)),
                      Contains("bad.idx") && Contains("more than the limit"));
  REQUIRE_THROWS_WITH(bad(idx_bytes({65536, 65536}, 10)),  // exactly the 4 GiB limit, 10 bytes present
                      Contains("IDX data truncated") && Contains("need 4294967296 bytes from byte 12, the file has 10"));
  REQUIRE_THROWS_WITH(bad(idx_bytes({65536, 65537}, 10)), Contains("more than the limit of 4294967296"));
  REQUIRE_THROWS_WITH(bad(idx_bytes({10, 10}, 100), 99), Contains("more than the limit of 99"));
  CHECK(seconds_since(t0) < 1.0);
  REQUIRE_THROWS_WITH(bad(idx_bytes({3, 2, 2}, 13)), Contains("1 trailing bytes") && Contains("at byte 28"));
  REQUIRE_THROWS_WITH(bad(idx_bytes({3, 2, 2}, 11)), Contains("truncated"));
  REQUIRE_THROWS_WITH(bad({0, 0, 8}), Contains("shorter than 4 bytes"));
  REQUIRE_THROWS_WITH(bad({0, 0, 8, 3, 0, 0, 0, 1}), Contains("dimension 1 (byte 8): truncated header"));
  REQUIRE_THROWS_WITH(bad({0, 0, 8, 0}), Contains("0 dimensions"));
  REQUIRE_THROWS_WITH(bad({0, 0, 8, 9}), Contains("9 dimensions"));
  REQUIRE_THROWS_WITH(bad({0, 0, 0x0D, 1, 0, 0, 0, 0}), Contains("type code 13"));
  REQUIRE_THROWS_WITH(bad({'P', 'K', 3, 4}), Contains("IDX magic"));
  const auto empty = idx_bytes({0, 28, 28}, 0);
  CHECK(parse_idx(empty.data(), empty.size(), "e").data.empty());
}

TEST_CASE("IDX: gzip output is bounded by the header", "[hostile]") {
  const auto raw = idx_bytes({4, 5}, 20);
  const auto gz = gzip(raw);
  auto arr = parse_idx(gz.data(), gz.size(), "a.gz");
  CHECK(arr.dims == std::vector<int64_t>{4, 5});
  CHECK(arr.data == std::vector<uint8_t>(20, 7));
  TempDir dir;
  CHECK(read_idx(dir.write("a.gz", gz)).data == arr.data);
  auto bad = [](const std::vector<uint8_t>& b, uint64_t max = qcnn::runtime::kMaxIdxBytes) {
    parse_idx(b.data(), b.size(), "bad.gz", max);
  };
  SECTION("members may be concatenated") {
    auto two = gzip(std::vector<uint8_t>(raw.begin(), raw.begin() + 10));
    const auto rest = gzip(std::vector<uint8_t>(raw.begin() + 10, raw.end()));
    two.insert(two.end(), rest.begin(), rest.end());
    CHECK(parse_idx(two.data(), two.size(), "two.gz").data == arr.data);
  }
  SECTION("truncated stream, trailing garbage, corrupt data") {
    for (size_t len = 2; len < gz.size(); ++len)
      CHECK_THROWS_AS(bad(std::vector<uint8_t>(gz.begin(), gz.begin() + static_cast<std::ptrdiff_t>(len))), FormatError);
    REQUIRE_THROWS_WITH(bad(std::vector<uint8_t>(gz.begin(), gz.end() - 4)), Contains("bad.gz") && Contains("truncated"));
    auto garbage = gz;
    garbage.push_back(0);
    REQUIRE_THROWS_WITH(bad(garbage), Contains("1 bytes of trailing garbage after the gzip stream"));
    garbage.insert(garbage.end(), {0x1f, 0x8b, 0x08});  // a member that is cut short
    REQUIRE_THROWS_WITH(bad(garbage), Contains("trailing garbage"));
    auto crc = gz;
    crc[crc.size() - 8] ^= 0xff;  // CRC-32 of the trailer
    REQUIRE_THROWS_WITH(bad(crc), Contains("corrupt gzip data") && Contains("incorrect data check"));
  }
  SECTION("decompressed data shorter or longer than declared") {
    REQUIRE_THROWS_WITH(bad(gzip(idx_bytes({4, 5}, 19))), Contains("bad.gz (decompressed): IDX data truncated"));
    REQUIRE_THROWS_WITH(bad(gzip(idx_bytes({4, 5}, 21))), Contains("trailing data after the 20 data bytes"));
    REQUIRE_THROWS_WITH(bad(gzip(idx_bytes({4}, 0))), Contains("truncated"));
    REQUIRE_THROWS_WITH(bad(gzip({0, 0, 8})), Contains("shorter than 4 bytes"));
    REQUIRE_THROWS_WITH(bad(gzip({1, 2, 3, 4})), Contains("IDX magic"));
  }
  SECTION("a header declaring gigabytes in a small stream is rejected before allocating") {
    REQUIRE_THROWS_WITH(bad(gzip(idx_bytes({65536, 65536}, 100))),
                        Contains("declare 4294967296 data bytes, more than the") && Contains("compressed bytes can hold"));
    REQUIRE_THROWS_WITH(bad(gzip(idx_bytes({65536, 65537}, 100))), Contains("more than the limit"));
    REQUIRE_THROWS_WITH(bad(gzip(idx_bytes({100, 100}, 10000)), 9999), Contains("more than the limit of 9999"));
    // A bomb: 64 MiB of zeros (~64 KiB compressed) behind a header declaring 16 bytes, rejected after inflating little
    // more than those: the read alone is timed (compressing the bomb here takes seconds under emulation).
    const std::vector<uint8_t> bomb = gzip(idx_bytes({16}, 64u << 20, 0));
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE_THROWS_WITH(bad(bomb), Contains("trailing data"));
    CHECK(seconds_since(t0) < 5.0);
  }
}

TEST_CASE("deeply nested metadata is rejected by the model reader", "[hostile][model]") {
  json h;
  h["__metadata__"] = {{"qcnn", R"({"format": "qcnn", "version": 1, "input": )" + nested(200000) + "}"}};
  REQUIRE_THROWS_WITH(qcnn::runtime::Model::from_file(parse(container(h.dump()))),
                      Contains("crafted.qcnn") && Contains("nesting"));
}
