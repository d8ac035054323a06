#include "common/latency_histogram.h"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>

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
  // The maximum first, and the count with release: a Get that sees the
  // count sees a maximum at least this large (PercentileUs clamps to it).
  uint64_t max = max_us_.load(std::memory_order_relaxed);
  while (us > max && !max_us_.compare_exchange_weak(max, us, std::memory_order_relaxed)) {
  }
  counts_[static_cast<size_t>(BucketOf(us))].fetch_add(1, std::memory_order_release);
}

LatencyHistogram::Snapshot LatencyHistogram::Get() const {
  Snapshot s;
  for (size_t i = 0; i < s.counts.size(); ++i) {
    s.counts[i] = counts_[i].load(std::memory_order_acquire);
    s.count += s.counts[i];
  }
  s.max_us = max_us_.load(std::memory_order_relaxed);
  return s;
}

uint64_t LatencyHistogram::Snapshot::PercentileUs(double q) const {
  if (count == 0) return 0;
  // The smallest rank that covers q of the count (at least the first); the
  // small slack keeps 0.57 * 100 at rank 57 despite rounding.
  const double exact = q * static_cast<double>(count);
  uint64_t rank = static_cast<uint64_t>(std::ceil(exact - 1e-9));
  if (rank == 0) rank = 1;
  if (rank > count) rank = count;
  uint64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    seen += counts[static_cast<size_t>(b)];
    if (seen >= rank) return b == kBuckets - 1 ? max_us : std::min(UpperBoundUs(b), max_us);
  }
  return max_us;
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

bool LatencyHistogram::Snapshot::ParseBucketsJson(std::string_view text, Snapshot* out) {
  *out = Snapshot{};
  size_t at = 0;
  auto take = [&](char c) {
    if (at >= text.size() || text[at] != c) return false;
    ++at;
    return true;
  };
  auto number = [&](uint64_t* v) {
    const char* begin = text.data() + at;
    const auto [end, ec] = std::from_chars(begin, text.data() + text.size(), *v);
    if (ec != std::errc() || end == begin) return false;  // no digits, a sign, or too large
    at += static_cast<size_t>(end - begin);
    return true;
  };
  if (!take('[')) return false;
  if (take(']')) return true;
  do {
    uint64_t bound = 0, n = 0;
    if (!take('[') || !number(&bound) || !take(',') || !number(&n) || !take(']')) return false;
    const int b = BucketOf(bound);
    if (UpperBoundUs(b) == bound) {
      out->counts[static_cast<size_t>(b)] += n;
      out->count += n;
      if (n > 0 && bound > out->max_us) out->max_us = bound;
    }
  } while (take(','));
  return take(']');
}

}  // namespace liaison
