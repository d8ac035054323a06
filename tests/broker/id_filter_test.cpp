// The store's filter of message ids (broker/store/id_filter.h): it never
// forgets a key it was given, rarely claims one it was not, and grows.
#include "broker/store/id_filter.h"

#include <catch2/catch.hpp>

#include <bit>
#include <cstdio>
#include <string>
#include <unordered_set>

using liaison::broker::IdFilter;

namespace {

// Keys shaped like the store's: sender, a zero byte, a UUIDv7-like id that
// differs from the next only in its last digits.
std::string Key(const std::string& sender, int i) {
  char id[40];
  std::snprintf(id, sizeof id, "0190a5c4-8d2e-7b3a-9c1d-%012d", i);
  std::string k = sender;
  k.push_back('\0');
  k += id;
  return k;
}

}  // namespace

TEST_CASE("id filter: every key added is reported, across layers", "[id_filter]") {
  IdFilter f;
  CHECK(f.layers() == 1);
  CHECK_FALSE(f.MayContain(Key("police", 1)));
  CHECK_FALSE(f.MayContain(""));
  const int n = (1 << 20) + (1 << 19);  // past the first layer's capacity
  for (int i = 0; i < n; ++i) f.Add(Key("police", i));
  f.Add("");
  CHECK(f.size() == static_cast<size_t>(n) + 1);
  CHECK(f.layers() == 2);
  int missing = 0;
  for (int i = 0; i < n; ++i) missing += f.MayContain(Key("police", i)) ? 0 : 1;
  CHECK(missing == 0);
  CHECK(f.MayContain(""));
  // About 1.25 bytes a key, layers rounded up to powers of two.
  CHECK(f.bytes() <= static_cast<size_t>(n) * 4);
}

TEST_CASE("id filter: keys never added are rarely claimed", "[id_filter]") {
  IdFilter f;
  const int n = 1 << 20;  // a full first layer: the worst case of one layer
  for (int i = 0; i < n; ++i) f.Add(Key("police", i));
  int claimed = 0;
  const int probes = 200000;
  // The same ids from another sender, and ids never used by anyone.
  for (int i = 0; i < probes / 2; ++i) claimed += f.MayContain(Key("school", i)) ? 1 : 0;
  for (int i = 0; i < probes / 2; ++i) claimed += f.MayContain(Key("police", n + i)) ? 1 : 0;
  const double rate = static_cast<double>(claimed) / probes;
  INFO("false positive rate " << rate);
  CHECK(rate < 0.02);
}

TEST_CASE("id filter: the hash spreads one changed bit over the whole word", "[id_filter]") {
  const std::string base = Key("police", 42);
  const uint64_t h = IdFilter::Hash(base, 1);
  CHECK(IdFilter::Hash(base, 1) == h);
  CHECK(IdFilter::Hash(base, 2) != h);
  double total = 0;
  int flips = 0;
  for (size_t byte = 0; byte < base.size(); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string k = base;
      k[byte] = static_cast<char>(k[byte] ^ (1 << bit));
      const int changed = std::popcount(IdFilter::Hash(k, 1) ^ h);
      CHECK(changed >= 10);  // never a near-collision
      total += changed;
      ++flips;
    }
  }
  const double mean = total / flips;
  INFO("mean bits changed " << mean);
  CHECK(mean > 28);
  CHECK(mean < 36);
  // Lengths matter: a key and the same key with a zero byte appended differ.
  CHECK(IdFilter::Hash(std::string("abc"), 1) != IdFilter::Hash(std::string("abc\0", 4), 1));
  // 100,000 similar keys, no 64-bit collision.
  std::unordered_set<uint64_t> seen;
  for (int i = 0; i < 100000; ++i) seen.insert(IdFilter::Hash(Key("police", i), 1));
  CHECK(seen.size() == 100000);
}
