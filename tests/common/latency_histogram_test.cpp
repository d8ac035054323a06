#include "common/latency_histogram.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

namespace liaison {
namespace {

TEST_CASE("LatencyHistogram: every duration lands in a bucket at most 25 percent wide", "[latency_histogram]") {
  for (int b = 0; b < LatencyHistogram::kBuckets; ++b) {
    const uint64_t bound = LatencyHistogram::UpperBoundUs(b);
    CHECK(LatencyHistogram::BucketOf(bound) == b);
    // Each bucket starts right after the one before it.
    if (b > 0) CHECK(LatencyHistogram::BucketOf(LatencyHistogram::UpperBoundUs(b - 1) + 1) == b);
  }
  CHECK(LatencyHistogram::UpperBoundUs(LatencyHistogram::kBuckets - 1) == (uint64_t{1} << 33) - 1);
  std::mt19937_64 rng(7);
  for (int i = 0; i < 100000; ++i) {
    const uint64_t us = i < 5000 ? static_cast<uint64_t>(i) : rng() >> (rng() % 60 + 4);
    const int b = LatencyHistogram::BucketOf(us);
    REQUIRE(b >= 0);
    REQUIRE(b < LatencyHistogram::kBuckets);
    if (us > LatencyHistogram::UpperBoundUs(LatencyHistogram::kBuckets - 1)) {
      CHECK(b == LatencyHistogram::kBuckets - 1);
      continue;
    }
    const uint64_t bound = LatencyHistogram::UpperBoundUs(b);
    CHECK(bound >= us);
    CHECK(static_cast<double>(bound) <= static_cast<double>(us) * 1.25 + 1);
  }
}

TEST_CASE("LatencyHistogram: percentiles are the bounds of the buckets that hold them", "[latency_histogram]") {
  LatencyHistogram h;
  CHECK(h.Get().PercentileUs(0.99) == 0);
  for (int i = 0; i < 990; ++i) h.Add(100);
  for (int i = 0; i < 9; ++i) h.Add(1000);
  h.Add(170000);
  const auto s = h.Get();
  CHECK(s.count == 1000);
  CHECK(s.max_us == 170000);
  CHECK(s.PercentileUs(0.5) == 111);  // 96-111 us
  CHECK(s.PercentileUs(0.99) == 111);
  CHECK(s.PercentileUs(0.995) == 1023);  // 896-1023 us
  CHECK(s.PercentileUs(0.999) == 1023);
  // The bucket of 170,000 us reaches 180,223 us; nothing counted is that long.
  CHECK(LatencyHistogram::UpperBoundUs(LatencyHistogram::BucketOf(170000)) > 170000);
  CHECK(s.PercentileUs(1.0) == 170000);
  // The rank is exact: 57 of 100 is the 57th, not the 58th.
  LatencyHistogram two;
  for (int i = 0; i < 57; ++i) two.Add(10);
  for (int i = 0; i < 43; ++i) two.Add(1000);
  CHECK(two.Get().PercentileUs(0.57) == 11);
  CHECK(two.Get().PercentileUs(0.58) == 1000);
}

TEST_CASE("LatencyHistogram: durations beyond the last bucket are told by the maximum", "[latency_histogram]") {
  LatencyHistogram h;
  const uint64_t huge = uint64_t{1} << 40;
  h.Add(huge);
  h.Add(uint64_t{1} << 62);
  h.Add(UINT64_MAX);
  const auto s = h.Get();
  CHECK(s.count == 3);
  CHECK(s.counts[LatencyHistogram::kBuckets - 1] == 3);
  CHECK(s.max_us == UINT64_MAX);
  CHECK(s.PercentileUs(0.5) == UINT64_MAX);
}

TEST_CASE("LatencyHistogram: what was counted since an earlier snapshot", "[latency_histogram]") {
  LatencyHistogram h;
  for (int i = 0; i < 100; ++i) h.Add(5000);
  const auto before = h.Get();
  for (int i = 0; i < 100; ++i) h.Add(200);
  const auto since = h.Get().Since(before);
  CHECK(since.count == 100);
  CHECK(since.PercentileUs(0.99) == LatencyHistogram::UpperBoundUs(LatencyHistogram::BucketOf(200)));
  CHECK(since.PercentileUs(0.99) < 5000);
  // The maximum is the longest ever, an upper bound for what came since.
  CHECK(since.max_us == 5000);
  CHECK(LatencyHistogram::Snapshot().Since(before).count == 0);
}

TEST_CASE("LatencyHistogram: the buckets' JSON reads back the same and bad text is refused", "[latency_histogram]") {
  LatencyHistogram h;
  for (uint64_t us : {0, 3, 4, 250, 250, 251, 99999, 5000000}) h.Add(us);
  const auto s = h.Get();
  const std::string json = s.BucketsJson();
  CHECK(json.rfind("[[0,1],[3,1],[4,1],", 0) == 0);
  LatencyHistogram::Snapshot back;
  REQUIRE(LatencyHistogram::Snapshot::ParseBucketsJson(json + ",\"next\":1", &back));
  CHECK(back.counts == s.counts);
  CHECK(back.count == 8);
  CHECK(back.PercentileUs(0.5) == s.PercentileUs(0.5));
  CHECK(LatencyHistogram::Snapshot().BucketsJson() == "[]");
  REQUIRE(LatencyHistogram::Snapshot::ParseBucketsJson("[]", &back));
  CHECK(back.count == 0);
  // A bound that is no bucket's is skipped.
  REQUIRE(LatencyHistogram::Snapshot::ParseBucketsJson("[[96,7],[250,2]]", &back));
  CHECK(back.count == 0);
  for (const char* bad : {"", "[", "[[1,2", "[[1;2]]", "{}", "[[,]]", "[[-1,2]]", "[[+5,2]]", "[[1,2][3,4]]",
                          "[[1,2],]", "[[1,2],[3]]", "[[1,99999999999999999999]]", "[[1,2]"}) {
    INFO(bad);
    CHECK_FALSE(LatencyHistogram::Snapshot::ParseBucketsJson(bad, &back));
  }
}

TEST_CASE("LatencyHistogram: threads adding at once lose no count", "[latency_histogram]") {
  LatencyHistogram h;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&h, t] {
      for (int i = 0; i < 20000; ++i) h.Add(static_cast<uint64_t>(t * 1000 + i % 700));
    });
  }
  for (auto& t : threads) t.join();
  const auto s = h.Get();
  CHECK(s.count == 80000);
  CHECK(s.max_us == 3699);
}

}  // namespace
}  // namespace liaison
