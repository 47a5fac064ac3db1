#include "core/huffman.h"

#include <algorithm>
#include <queue>
#include <stdexcept>
#include <string>

namespace qcnn {

namespace {

void check_alphabet(int k) {
  if (k < 1 || k > 256) throw std::invalid_argument("huffman: alphabet size k must be in [1, 256], got " + std::to_string(k));
}

// Plain Huffman code lengths (unbounded) over the symbols with positive weight.
std::vector<int> unbounded_lengths(const std::vector<int64_t>& weight) {
  const int k = static_cast<int>(weight.size());
  std::vector<int> parent(2 * k, -1);
  using Item = std::pair<int64_t, int>;  // (weight, node); ties broken by node id -> deterministic
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap;
  for (int s = 0; s < k; ++s)
    if (weight[s] > 0) heap.push({weight[s], s});
  std::vector<int> len(k, 0);
  if (heap.empty()) return len;
  if (heap.size() == 1) {
    len[heap.top().second] = 1;
    return len;
  }
  int next = k;
  while (heap.size() > 1) {
    auto a = heap.top(); heap.pop();
    auto b = heap.top(); heap.pop();
    parent[a.second] = next;
    parent[b.second] = next;
    heap.push({a.first + b.first, next});
    ++next;
  }
  for (int s = 0; s < k; ++s) {
    if (weight[s] <= 0) continue;
    int depth = 0;
    for (int n = s; parent[n] != -1; n = parent[n]) ++depth;
    len[s] = depth;
  }
  return len;
}

struct CanonicalTable {
  std::vector<int> count;    // count[len] = number of symbols with that length
  std::vector<int> symbols;  // symbols ordered by (length, value)
  std::vector<uint32_t> code;  // code[s]
};

CanonicalTable canonical(const uint8_t* lengths, int k) {
  CanonicalTable t;
  t.count.assign(kHuffmanMaxLength + 1, 0);
  t.code.assign(k, 0);
  for (int s = 0; s < k; ++s) t.count[lengths[s]]++;
  t.count[0] = 0;
  for (int len = 1; len <= kHuffmanMaxLength; ++len)
    for (int s = 0; s < k; ++s)
      if (lengths[s] == len) t.symbols.push_back(s);
  uint32_t code = 0;
  int idx = 0;
  for (int len = 1; len <= kHuffmanMaxLength; ++len) {
    for (int i = 0; i < t.count[len]; ++i) t.code[t.symbols[idx++]] = code++;
    code <<= 1;
  }
  return t;
}

}  // namespace

void huffman_check_lengths(const uint8_t* lengths, int k) {
  check_alphabet(k);
  // Kraft sum in units of 2^-kHuffmanMaxLength.
  uint64_t kraft = 0;
  for (int s = 0; s < k; ++s) {
    if (lengths[s] > kHuffmanMaxLength)
      throw std::invalid_argument("huffman: code length " + std::to_string(lengths[s]) + " of symbol " +
                                  std::to_string(s) + " exceeds " + std::to_string(kHuffmanMaxLength));
    if (lengths[s] > 0) kraft += uint64_t{1} << (kHuffmanMaxLength - lengths[s]);
  }
  if (kraft > (uint64_t{1} << kHuffmanMaxLength))
    throw std::invalid_argument("huffman: code lengths are over-subscribed (not a prefix code)");
}

std::vector<uint8_t> huffman_code_lengths(const int64_t* counts, int k, int max_length) {
  check_alphabet(k);
  if (max_length < 8 || max_length > kHuffmanMaxLength)
    throw std::invalid_argument("huffman: max_length must be in [8, " + std::to_string(kHuffmanMaxLength) + "]");
  std::vector<int64_t> weight(counts, counts + k);
  for (int s = 0; s < k; ++s)
    if (weight[s] < 0) throw std::invalid_argument("huffman: negative count for symbol " + std::to_string(s));
  // Length limiting: flatten the distribution (halve counts, keeping them positive) until the
  // deepest code fits. With k <= 256 and max_length >= 8 this terminates: equal weights give depth 8.
  for (;;) {
    std::vector<int> len = unbounded_lengths(weight);
    if (*std::max_element(len.begin(), len.end()) <= max_length) {
      return std::vector<uint8_t>(len.begin(), len.end());
    }
    for (auto& w : weight)
      if (w > 0) w = std::max<int64_t>(1, w / 2);
  }
}

std::vector<uint8_t> huffman_encode(const uint8_t* values, int64_t count, const uint8_t* lengths, int k) {
  huffman_check_lengths(lengths, k);
  const CanonicalTable t = canonical(lengths, k);
  std::vector<uint8_t> out;
  out.reserve(static_cast<size_t>(count / 2 + 8));
  uint64_t acc = 0;  // pending bits, right-aligned
  int nacc = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int s = values[i];
    if (s >= k || lengths[s] == 0)
      throw std::invalid_argument("huffman_encode: symbol " + std::to_string(s) + " at index " + std::to_string(i) +
                                  " has no code");
    acc = (acc << lengths[s]) | t.code[s];
    nacc += lengths[s];
    while (nacc >= 8) {
      out.push_back(static_cast<uint8_t>(acc >> (nacc - 8)));
      nacc -= 8;
    }
    acc &= (uint64_t{1} << nacc) - 1;
  }
  if (nacc > 0) out.push_back(static_cast<uint8_t>(acc << (8 - nacc)));
  return out;
}

void huffman_decode(const uint8_t* data, int64_t nbytes, const uint8_t* lengths, int k, int64_t count,
                    uint8_t* out) {
  huffman_check_lengths(lengths, k);
  const CanonicalTable t = canonical(lengths, k);
  int max_len = 0;
  for (int s = 0; s < k; ++s) max_len = std::max<int>(max_len, lengths[s]);
  if (count > 0 && max_len == 0) throw std::invalid_argument("huffman_decode: no symbol has a code");
  const int64_t total_bits = nbytes * 8;
  int64_t bit = 0;
  for (int64_t i = 0; i < count; ++i) {
    // Canonical decoding one bit at a time: `first` is the first code of the current length.
    int64_t code = 0, first = 0, index = 0;
    bool found = false;
    for (int len = 1; len <= max_len; ++len) {
      if (bit >= total_bits)
        throw std::invalid_argument("huffman_decode: stream truncated while decoding symbol " + std::to_string(i) +
                                    " of " + std::to_string(count));
      code |= (data[bit >> 3] >> (7 - (bit & 7))) & 1;
      ++bit;
      const int n = t.count[len];
      if (code - first < n) {
        out[i] = static_cast<uint8_t>(t.symbols[index + (code - first)]);
        found = true;
        break;
      }
      index += n;
      first = (first + n) << 1;
      code <<= 1;
    }
    if (!found)
      throw std::invalid_argument("huffman_decode: invalid code at symbol " + std::to_string(i));
  }
}

}  // namespace qcnn
