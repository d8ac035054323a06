// Durations in microseconds, counted in log-linear buckets: one for each of
// 0-3 us, then four to each power of two. A percentile read from them is a
// bucket's upper bound, at most 25 % above the true value. Add and Get need
// no lock and may run on different threads at once (Get then sees some
// counts of a concurrent Add and not others, which statistics allow).
//
// The broker's commit log counts its fdatasyncs in one
// (broker/store/commit_log.h); the admin socket's status reports it, and
// liaison-bench reads it before and after a phase (Snapshot::Since).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

namespace liaison {

class LatencyHistogram {
 public:
  // 4 exact buckets, then 4 to each power of two from 2^2 up to 2^33 us
  // (about 143 minutes); anything longer counts in the last.
  static constexpr int kBuckets = 4 + 4 * 31;

  static int BucketOf(uint64_t us);
  static uint64_t UpperBoundUs(int bucket);  // the largest duration in it

  struct Snapshot {
    std::array<uint64_t, kBuckets> counts{};
    uint64_t count = 0;
    uint64_t max_us = 0;  // the longest ever (not only since an earlier snapshot)

    // The upper bound of the bucket holding the q-quantile (0 < q <= 1), or
    // max_us when that is less (a bound can exceed every duration counted;
    // the last bucket's is below what it holds); 0 when nothing was counted.
    uint64_t PercentileUs(double q) const;
    // What was counted after earlier (a snapshot of the same histogram).
    Snapshot Since(const Snapshot& earlier) const;
    // [[upper_bound_us,count],...] for the buckets that counted anything.
    std::string BucketsJson() const;
    // Reads BucketsJson's form back (bounds that are no bucket's are
    // skipped; max_us becomes the largest bound read); false when text does
    // not start with it, or a number is missing, signed or too large.
    static bool ParseBucketsJson(std::string_view text, Snapshot* out);
  };

  void Add(uint64_t us);
  Snapshot Get() const;

 private:
  std::array<std::atomic<uint64_t>, kBuckets> counts_{};
  std::atomic<uint64_t> max_us_{0};
};

}  // namespace liaison
