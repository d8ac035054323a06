// A filter of the (sender, message id) keys the store has ever accepted, so
// that the writer looks a new publish up in SQLite only when the key may have
// been used before.
//
// Why: every publish must be checked for a duplicate (publishing is
// idempotent on sender and message id, longer than any retention). Nearly
// every publish is new, and proving that in SQLite is a B-tree probe on the
// writer's thread, inside every group commit. A Bloom filter answers "never
// seen" for almost all of them from memory; "maybe" (a key seen, or a false
// positive, about 1 in 100) falls through to SQLite. A false positive costs a
// probe, never a wrong answer: the filter never says "never seen" for a key
// that was added.
//
// Layout: blocked Bloom filters (every probe of a key lands in one 64-byte
// block, so a lookup touches one cache line), about 10 bits and 7 probes per
// key. The filter grows without rehashing: when the newest layer holds its
// capacity, a layer of twice the capacity is added, and a lookup asks every
// layer. With about 1 % false positives per layer and few layers (the first
// holds at least 2^20 keys), the rate stays at a few percent at most.
// Memory: about 1.25 bytes per key.
//
// Keys are not removed (a message row is kept longer than any retention).
// Not thread-safe: the store's writer owns it (Open fills it first).
#ifndef LIAISON_BROKER_STORE_ID_FILTER_H_
#define LIAISON_BROKER_STORE_ID_FILTER_H_

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace liaison::broker {

class IdFilter {
 public:
  // Sizes the first layer for at least expected keys (and at least 2^20).
  explicit IdFilter(size_t expected = 0);

  void Add(std::string_view key);
  // False: key was never added. True: it may have been.
  bool MayContain(std::string_view key) const;

  size_t size() const { return keys_; }
  size_t layers() const { return layers_.size(); }
  size_t bytes() const;

  // The 64-bit hash the probes come from (exposed for tests).
  static uint64_t Hash(std::string_view key, uint64_t seed);

 private:
  struct Layer {
    std::vector<uint64_t> words;  // blocks of kBlockWords
    uint64_t block_mask = 0;      // blocks - 1 (a power of two)
    size_t capacity = 0, keys = 0;
  };
  static Layer MakeLayer(size_t capacity);
  static void Set(Layer& layer, uint64_t h1, uint64_t h2);
  static bool Test(const Layer& layer, uint64_t h1, uint64_t h2);

  std::vector<Layer> layers_;
  size_t keys_ = 0;
};

}  // namespace liaison::broker

#endif  // LIAISON_BROKER_STORE_ID_FILTER_H_
