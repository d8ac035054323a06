#include "broker/detail/audit_events.h"

#include <catch2/catch.hpp>

#include <map>

namespace liaison::broker {
namespace {

// count by "source|reason" from the records of one Drain.
std::map<std::string, uint64_t> Counts(const std::vector<audit::Record>& records) {
  std::map<std::string, uint64_t> out;
  for (const auto& r : records) {
    REQUIRE(r.event == "connection_refused");
    const auto at = r.detail.find(" count=");
    REQUIRE(r.detail.rfind("source=", 0) == 0);
    REQUIRE(at != std::string::npos);
    out[r.detail.substr(7, at - 7) + "|" + r.decision] += std::stoull(r.detail.substr(at + 7));
  }
  return out;
}

TEST_CASE("RefusalTally: one record per source and reason an interval", "[tally]") {
  RefusalTally t;
  t.Count("192.0.2.1", "tls_handshake: no certificate");
  t.Count("192.0.2.1", "tls_handshake: no certificate");
  t.Count("192.0.2.1", "handshake_rate");
  t.Count("2001:db8:1:2::/64", "handshake_rate");
  auto c = Counts(t.Drain());
  CHECK(c == std::map<std::string, uint64_t>{{"192.0.2.1|tls_handshake: no certificate", 2},
                                             {"192.0.2.1|handshake_rate", 1},
                                             {"2001:db8:1:2::/64|handshake_rate", 1}});
  CHECK(t.Drain().empty());  // drained
}

TEST_CASE("RefusalTally: many sources in one interval are bounded and every refusal is counted", "[tally]") {
  RefusalTally t;
  const size_t sources = RefusalTally::kMaxKeys + 5000;
  for (size_t i = 0; i < sources; ++i) {
    const std::string source = "10." + std::to_string(i >> 16) + "." + std::to_string((i >> 8) & 255) + "." +
                               std::to_string(i & 255);
    t.Count(source, "handshake_rate");
    t.Count(source, "handshake_rate");
  }
  // Sources seen before the bound keep their own count.
  t.Count("10.0.0.0", "handshake_rate");
  // Past the bound, more reasons than kMaxOtherReasons share one key.
  for (size_t i = 0; i < RefusalTally::kMaxOtherReasons + 50; ++i) {
    t.Count("198.51.100.7", "no_agency: certificate " + std::to_string(i));
  }
  const auto records = t.Drain();
  CHECK(records.size() <= RefusalTally::kMaxKeys + RefusalTally::kMaxOtherReasons + 1);
  const auto c = Counts(records);
  uint64_t total = 0;
  for (const auto& [key, n] : c) total += n;
  CHECK(total == 2 * sources + 1 + RefusalTally::kMaxOtherReasons + 50);
  CHECK(c.at("10.0.0.0|handshake_rate") == 3);
  CHECK(c.at(std::string(RefusalTally::kOtherSources) + "|handshake_rate") == 2 * 5000);
  CHECK(c.count(std::string(RefusalTally::kOtherSources) + "|" + RefusalTally::kOtherReasons) == 1);
}

}  // namespace
}  // namespace liaison::broker
