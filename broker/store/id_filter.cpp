#include "broker/store/id_filter.h"

#include <algorithm>
#include <cstring>

namespace liaison::broker {

namespace {

constexpr size_t kBlockWords = 8;             // 512 bits: one cache line
constexpr size_t kBitsPerKey = 10;            // with 7 probes: about 1 % false positives
constexpr int kProbes = 7;                    // 7 x 9 bits of the second hash
constexpr size_t kMinCapacity = size_t{1} << 20;
constexpr uint64_t kSeed = 0x6c69616973306e31;  // any constant; the filter is never persisted

// A bijective 64-bit mixer (xor-shift and multiply rounds).
uint64_t Mix(uint64_t x) {
  x ^= x >> 32;
  x *= 0xd6e8feb86659fd93ULL;
  x ^= x >> 32;
  x *= 0xd6e8feb86659fd93ULL;
  x ^= x >> 32;
  return x;
}

size_t NextPowerOfTwo(size_t n) {
  size_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

}  // namespace

uint64_t IdFilter::Hash(std::string_view key, uint64_t seed) {
  uint64_t h = Mix(seed ^ (key.size() * 0x9e3779b97f4a7c15ULL));
  const char* p = key.data();
  size_t n = key.size();
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t chunk;
    std::memcpy(&chunk, p, 8);
    h = Mix(h ^ chunk) + 0x9e3779b97f4a7c15ULL;
  }
  if (n > 0) {
    uint64_t chunk = 0;
    std::memcpy(&chunk, p, n);
    h = Mix(h ^ chunk ^ (uint64_t{n} << 59));
  }
  return Mix(h);
}

IdFilter::IdFilter(size_t expected) { layers_.push_back(MakeLayer(std::max(expected, kMinCapacity))); }

IdFilter::Layer IdFilter::MakeLayer(size_t capacity) {
  Layer layer;
  const size_t blocks = NextPowerOfTwo((capacity * kBitsPerKey + kBlockWords * 64 - 1) / (kBlockWords * 64));
  layer.words.assign(blocks * kBlockWords, 0);
  layer.block_mask = blocks - 1;
  layer.capacity = capacity;
  return layer;
}

void IdFilter::Set(Layer& layer, uint64_t h1, uint64_t h2) {
  uint64_t* block = layer.words.data() + (h1 & layer.block_mask) * kBlockWords;
  for (int i = 0; i < kProbes; ++i, h2 >>= 9) {
    const unsigned bit = static_cast<unsigned>(h2 & 511);
    block[bit >> 6] |= uint64_t{1} << (bit & 63);
  }
}

bool IdFilter::Test(const Layer& layer, uint64_t h1, uint64_t h2) {
  const uint64_t* block = layer.words.data() + (h1 & layer.block_mask) * kBlockWords;
  for (int i = 0; i < kProbes; ++i, h2 >>= 9) {
    const unsigned bit = static_cast<unsigned>(h2 & 511);
    if ((block[bit >> 6] & (uint64_t{1} << (bit & 63))) == 0) return false;
  }
  return true;
}

void IdFilter::Add(std::string_view key) {
  if (layers_.back().keys >= layers_.back().capacity) layers_.push_back(MakeLayer(layers_.back().capacity * 2));
  const uint64_t h1 = Hash(key, kSeed);
  Layer& layer = layers_.back();
  Set(layer, h1, Mix(h1 + 0x9e3779b97f4a7c15ULL));
  layer.keys++;
  keys_++;
}

bool IdFilter::MayContain(std::string_view key) const {
  const uint64_t h1 = Hash(key, kSeed);
  const uint64_t h2 = Mix(h1 + 0x9e3779b97f4a7c15ULL);
  for (const Layer& layer : layers_) {
    if (Test(layer, h1, h2)) return true;
  }
  return false;
}

size_t IdFilter::bytes() const {
  size_t n = 0;
  for (const Layer& layer : layers_) n += layer.words.size() * sizeof(uint64_t);
  return n;
}

}  // namespace liaison::broker
