#include "broker/detail/admission.h"

#include <catch2/catch.hpp>

#include <vector>

namespace liaison::broker {
namespace {

TEST_CASE("Admission counts an agency's audit requests until their last token is gone", "[admission]") {
  Limits l;
  l.max_audit_requests_per_agency = 2;
  Admission a(l);
  auto first = a.BeginAuditRequest("auditor");
  auto second = a.BeginAuditRequest("auditor");
  REQUIRE(first);
  REQUIRE(second);
  CHECK_FALSE(a.BeginAuditRequest("auditor"));  // the third waits for an answer
  CHECK(a.BeginAuditRequest("other-auditor"));    // other agencies are not affected

  // Copies (the request's callbacks) keep the request counted.
  std::vector<std::shared_ptr<void>> callbacks{first, first};
  first.reset();
  CHECK_FALSE(a.BeginAuditRequest("auditor"));
  callbacks.clear();
  auto third = a.BeginAuditRequest("auditor");
  CHECK(third);
  CHECK_FALSE(a.BeginAuditRequest("auditor"));
  second.reset();
  third.reset();
  auto again = a.BeginAuditRequest("auditor");
  auto again2 = a.BeginAuditRequest("auditor");
  CHECK(again);
  CHECK(again2);
}

TEST_CASE("Admission: an audit request released when answered is no longer counted, whoever still holds its token",
          "[admission]") {
  Limits l;
  l.max_audit_requests_per_agency = 1;
  Admission a(l);
  auto slot = a.BeginAuditRequest("auditor");
  REQUIRE(slot);
  std::vector<std::shared_ptr<Admission::AuditSlot>> callbacks{slot, slot};
  CHECK_FALSE(a.BeginAuditRequest("auditor"));
  slot->Release();  // the answer is ready; callbacks still hold the token
  auto next = a.BeginAuditRequest("auditor");
  CHECK(next);
  // Releasing again, or the last copy going, does not count it off twice.
  callbacks.front()->Release();
  slot.reset();
  callbacks.clear();
  CHECK_FALSE(a.BeginAuditRequest("auditor"));  // `next` is still in progress
  next.reset();
  CHECK(a.BeginAuditRequest("auditor"));
}

TEST_CASE("Admission: handshakes from one source are limited to a rate with bursts", "[admission]") {
  Limits l;
  l.handshake_rate_per_source = 10;
  l.handshake_burst_per_source = 3;
  Admission a(l);
  const auto t0 = Admission::Clock::now();
  for (int i = 0; i < 3; ++i) CHECK(a.TakeHandshake("10.0.0.1", t0));
  CHECK_FALSE(a.TakeHandshake("10.0.0.1", t0));  // the burst is spent
  CHECK(a.TakeHandshake("10.0.0.2", t0));        // other sources are not affected
  // 10 a second: one more after 100 ms, none before.
  CHECK_FALSE(a.TakeHandshake("10.0.0.1", t0 + std::chrono::milliseconds(50)));
  CHECK(a.TakeHandshake("10.0.0.1", t0 + std::chrono::milliseconds(150)));
  CHECK_FALSE(a.TakeHandshake("10.0.0.1", t0 + std::chrono::milliseconds(160)));
  // Refilled to the burst, no more.
  const auto later = t0 + std::chrono::seconds(60);
  for (int i = 0; i < 3; ++i) CHECK(a.TakeHandshake("10.0.0.1", later));
  CHECK_FALSE(a.TakeHandshake("10.0.0.1", later));

  l.handshake_rate_per_source = 0;  // unlimited
  Admission open(l);
  for (int i = 0; i < 100; ++i) CHECK(open.TakeHandshake("10.0.0.1", t0));
  CHECK(open.source_buckets() == 0);
}

// Handshake limits of one a second with a burst of two, for the tests of
// the table of sources.
Limits SlowHandshakes() {
  Limits l;
  l.handshake_rate_per_source = 1;
  l.handshake_burst_per_source = 2;
  return l;
}

// The i-th of many IPv4 sources: 10.x.y.z.
std::string SourceName(size_t i) {
  return "10." + std::to_string(i >> 16) + "." + std::to_string((i >> 8) & 255) + "." + std::to_string(i & 255);
}

TEST_CASE("Admission: sources whose buckets filled again are forgotten and the rest are bounded", "[admission]") {
  const Limits l = SlowHandshakes();
  Admission a(l);
  const auto t0 = Admission::Clock::now();
  auto name = SourceName;
  for (size_t i = 0; i < 5000; ++i) REQUIRE(a.TakeHandshake(name(i), t0));
  CHECK(a.source_buckets() <= 5000);
  // Two seconds on, all of them are full again: the next sweep forgets them.
  const auto t2 = t0 + std::chrono::seconds(2);
  for (size_t i = 5000; i < 10000; ++i) REQUIRE(a.TakeHandshake(name(i), t2));
  CHECK(a.source_buckets() <= 5000 + 1024);

  // Sources that stay busy are kept up to the bound; past it, new sources
  // share one bucket (two handshakes, then refused), known ones keep theirs.
  Admission busy(l);
  for (size_t i = 0; i < Admission::kMaxSourceBuckets; ++i) REQUIRE(busy.TakeHandshake(name(i), t0));
  CHECK(busy.source_buckets() == Admission::kMaxSourceBuckets);
  CHECK(busy.TakeHandshake("192.168.0.1", t0));
  CHECK(busy.TakeHandshake("192.168.0.2", t0));
  CHECK_FALSE(busy.TakeHandshake("192.168.0.3", t0));
  CHECK(busy.TakeHandshake(name(7), t0));  // its own bucket still has a token
  CHECK(busy.source_buckets() == Admission::kMaxSourceBuckets + 1);
}

TEST_CASE("Admission: at the bound on sources the buckets that filled again are still forgotten", "[admission]") {
  const Limits l = SlowHandshakes();
  Admission a(l);
  const auto t0 = Admission::Clock::now();
  auto name = SourceName;
  // A flood from as many sources as the table holds, all busy at once: the
  // next new source shares the bucket of the overflow.
  for (size_t i = 0; i < Admission::kMaxSourceBuckets; ++i) REQUIRE(a.TakeHandshake(name(i), t0));
  CHECK(a.TakeHandshake("192.168.0.1", t0));
  CHECK(a.source_buckets() == Admission::kMaxSourceBuckets + 1);
  // A minute later every bucket of the flood is full again: they are
  // forgotten, and new sources (agencies reconnecting) get buckets of their
  // own instead of sharing one for ever.
  const auto later = t0 + std::chrono::seconds(60);
  for (int i = 1; i <= 3; ++i) {
    const std::string source = "192.168.1." + std::to_string(i);
    CHECK(a.TakeHandshake(source, later));
    CHECK(a.TakeHandshake(source, later));
  }
  CHECK(a.source_buckets() <= 3);
}

// Callers read the clock before they take the lock, so a bucket may be
// asked at a time earlier than its last one.
TEST_CASE("Admission: a time earlier than a bucket's last one refills nothing and credits no time twice",
          "[admission]") {
  Limits l;
  l.publish_rate_per_agency = 10;
  l.publish_burst_per_agency = 10;
  l.publish_bytes_per_agency = 1000;
  l.publish_bytes_burst_per_agency = 1000;
  l.handshake_rate_per_source = 10;
  l.handshake_burst_per_source = 10;
  Admission a(l);
  const auto t = Admission::Clock::now();
  const auto earlier = t - std::chrono::seconds(1);
  for (int i = 0; i < 10; ++i) REQUIRE(a.TakePublish("police", t));
  REQUIRE(a.TakePublishBytes("police", 1000, t));
  for (int i = 0; i < 10; ++i) REQUIRE(a.TakeHandshake("10.0.0.1", t));
  CHECK_FALSE(a.TakePublish("police", earlier));
  CHECK_FALSE(a.TakePublishBytes("police", 1, earlier));
  CHECK_FALSE(a.TakeHandshake("10.0.0.1", earlier));
  // Still empty at t: the second before it was not counted again.
  CHECK_FALSE(a.TakePublish("police", t));
  CHECK_FALSE(a.TakePublishBytes("police", 1, t));
  CHECK_FALSE(a.TakeHandshake("10.0.0.1", t));
  // And it refills from t.
  const auto later = t + std::chrono::milliseconds(150);
  CHECK(a.TakePublish("police", later));
  CHECK_FALSE(a.TakePublish("police", later));
  CHECK(a.TakePublishBytes("police", 100, later));  // of about 150
  CHECK_FALSE(a.TakePublishBytes("police", 100, later));
}

TEST_CASE("Admission: an agency's publishes are limited in bytes a second with bursts", "[admission]") {
  Limits l;
  l.publish_bytes_per_agency = 1000;
  l.publish_bytes_burst_per_agency = 3000;
  Admission a(l);
  const auto t0 = Admission::Clock::now();
  CHECK(a.TakePublishBytes("police", 2000, t0));
  CHECK_FALSE(a.TakePublishBytes("police", 1500, t0));  // 1,000 left: taken whole or not at all
  CHECK(a.TakePublishBytes("police", 1000, t0));
  CHECK_FALSE(a.TakePublishBytes("police", 1, t0));
  CHECK(a.TakePublishBytes("social", 3000, t0));  // other agencies are not affected
  CHECK(a.TakePublishBytes("police", 500, t0 + std::chrono::milliseconds(500)));
  // A frame larger than the burst still passes once the bucket is full.
  CHECK(a.TakePublishBytes("police", 5000, t0 + std::chrono::seconds(60)));
  l.publish_bytes_per_agency = 0;  // unlimited
  Admission open(l);
  CHECK(open.TakePublishBytes("police", uint64_t{1} << 40, t0));
}

}  // namespace
}  // namespace liaison::broker
