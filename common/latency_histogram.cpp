#include "common/latency_histogram.h"

#include <bit>
#include <cstdlib>

namespace liaison {

int LatencyHistogram::BucketOf(uint64_t us) {
  if (us < 4) return static_cast<int>(us);
  const int e = std::bit_width(us) - 1;  // 2^e <= us < 2^(e+1), e >= 2
  const int sub = static_cast<int>((us >> (e - 2)) & 3);
  const int b = 4 * (e - 1) + sub;
  return b < kBuckets ? b : kBuckets - 1;
}

uint64_t LatencyHistogram::UpperBoundUs(int bucket) {
  if (bucket < 4) return static_cast<uint64_t>(bucket);
  const int e = bucket / 4 + 1;
  const uint64_t sub = static_cast<uint64_t>(bucket % 4);
  const uint64_t step = uint64_t{1} << (e - 2);
  return (4 + sub) * step + step - 1;
}

void LatencyHistogram::Add(uint64_t us) {
  counts_[static_cast<size_t>(BucketOf(us))].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  uint64_t max = max_us_.load(std::memory_order_relaxed);
  while (us > max && !max_us_.compare_exchange_weak(max, us, std::memory_order_relaxed)) {
  }
}

LatencyHistogram::Snapshot LatencyHistogram::Get() const {
  Snapshot s;
  for (size_t i = 0; i < s.counts.size(); ++i) {
    s.counts[i] = counts_[i].load(std::memory_order_relaxed);
    s.count += s.counts[i];  // consistent with the buckets, unlike count_ alone
  }
  s.max_us = max_us_.load(std::memory_order_relaxed);
  return s;
}

uint64_t LatencyHistogram::Snapshot::PercentileUs(double q) const {
  if (count == 0) return 0;
  // The smallest rank that covers q of the count (at least the first).
  uint64_t rank = static_cast<uint64_t>(q * static_cast<double>(count));
  if (static_cast<double>(rank) < q * static_cast<double>(count)) ++rank;
  if (rank == 0) rank = 1;
  uint64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    seen += counts[static_cast<size_t>(b)];
    if (seen >= rank) return UpperBoundUs(b);
  }
  return UpperBoundUs(kBuckets - 1);
}

LatencyHistogram::Snapshot LatencyHistogram::Snapshot::Since(const Snapshot& earlier) const {
  Snapshot d;
  for (size_t i = 0; i < counts.size(); ++i) {
    d.counts[i] = counts[i] >= earlier.counts[i] ? counts[i] - earlier.counts[i] : 0;
    d.count += d.counts[i];
  }
  d.max_us = max_us;
  return d;
}

std::string LatencyHistogram::Snapshot::BucketsJson() const {
  std::string out = "[";
  for (int b = 0; b < kBuckets; ++b) {
    const uint64_t n = counts[static_cast<size_t>(b)];
    if (n == 0) continue;
    if (out.size() > 1) out += ',';
    out += '[' + std::to_string(UpperBoundUs(b)) + ',' + std::to_string(n) + ']';
  }
  return out + ']';
}

bool LatencyHistogram::Snapshot::ParseBucketsJson(const std::string& text, Snapshot* out) {
  *out = Snapshot{};
  if (text.empty() || text[0] != '[') return false;
  const char* p = text.c_str() + 1;
  while (*p == '[') {
    char* end = nullptr;
    const uint64_t bound = std::strtoull(p + 1, &end, 10);
    if (*end != ',') return false;
    const uint64_t n = std::strtoull(end + 1, &end, 10);
    if (*end != ']') return false;
    const int b = BucketOf(bound);
    if (UpperBoundUs(b) == bound) {
      out->counts[static_cast<size_t>(b)] += n;
      out->count += n;
      if (n > 0 && bound > out->max_us) out->max_us = bound;
    }
    p = end + 1;
    if (*p == ',') ++p;
  }
  return *p == ']';
}

}  // namespace liaison
