// Unit tests for common/uuid.h: the RFC 9562 text form and UUIDv7 ids.
#include "common/uuid.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace {

// The 48-bit millisecond timestamp at the front of a UUIDv7.
uint64_t V7Millis(const std::string& id) {
  const std::string hex = id.substr(0, 8) + id.substr(9, 4);
  return std::stoull(hex, nullptr, 16);
}

}  // namespace

TEST_CASE("NormalizeUuid accepts RFC 9562 UUIDs and returns lower case", "[common][uuid]") {
  struct Row {
    std::string in;
    std::string out;  // "" means refused; then error holds a substring
    std::string error;
  };
  const std::vector<Row> rows = {
      {"0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1d", "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1d", ""},
      {"0190A5C4-8D2E-7B3A-9C1D-2F4E6A8B0C1D", "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1d", ""},
      {"0190a5C4-8d2E-7b3A-Ac1d-2F4e6a8B0c1D", "0190a5c4-8d2e-7b3a-ac1d-2f4e6a8b0c1d", ""},
      // Versions 1 to 8 with each RFC variant nibble (8, 9, a, b).
      {"123e4567-e89b-12d3-a456-426614174000", "123e4567-e89b-12d3-a456-426614174000", ""},  // v1
      {"00000000-0000-4000-8000-000000000000", "00000000-0000-4000-8000-000000000000", ""},  // v4
      {"f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "f81d4fae-7dec-11d0-a765-00a0c91e6bf6", ""},
      {"550e8400-e29b-41d4-a716-446655440000", "550e8400-e29b-41d4-a716-446655440000", ""},
      {"0190a5c4-8d2e-8b3a-bc1d-2f4e6a8b0c1d", "0190a5c4-8d2e-8b3a-bc1d-2f4e6a8b0c1d", ""},  // v8
      {"0190a5c4-8d2e-6b3a-8c1d-2f4e6a8b0c1d", "0190a5c4-8d2e-6b3a-8c1d-2f4e6a8b0c1d", ""},  // v6
      // Refused.
      {"", "", "expected 36 characters"},
      {"0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1", "", "expected 36 characters"},
      {"0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1d0", "", "expected 36 characters"},
      {" 0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1", "", "non-hex"},
      {"0190a5c48d2e-7b3a-9c1d-2f4e6a8b0c1d-", "", "hyphens misplaced"},
      {"0190a5c4_8d2e_7b3a_9c1d_2f4e6a8b0c1d", "", "hyphens misplaced"},
      {"{190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1}", "", "non-hex"},
      {"0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1g", "", "non-hex"},
      {"0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1\xc3", "", "non-hex"},
      {"00000000-0000-0000-0000-000000000000", "", "nil and max"},
      {"ffffffff-ffff-ffff-ffff-ffffffffffff", "", "nil and max"},
      {"FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "", "nil and max"},
      {"0190a5c4-8d2e-0b3a-9c1d-2f4e6a8b0c1d", "", "unknown version"},
      {"0190a5c4-8d2e-9b3a-9c1d-2f4e6a8b0c1d", "", "unknown version"},
      {"0190a5c4-8d2e-fb3a-9c1d-2f4e6a8b0c1d", "", "unknown version"},
      {"0190a5c4-8d2e-7b3a-7c1d-2f4e6a8b0c1d", "", "variant"},  // NCS
      {"0190a5c4-8d2e-7b3a-cc1d-2f4e6a8b0c1d", "", "variant"},  // Microsoft
      {"0190a5c4-8d2e-7b3a-ec1d-2f4e6a8b0c1d", "", "variant"},  // reserved
      {"0190a5c4-8d2e-7b3a-0c1d-2f4e6a8b0c1d", "", "variant"},
  };
  for (const auto& r : rows) {
    CAPTURE(r.in);
    auto got = liaison::NormalizeUuid(r.in);
    if (r.out.empty()) {
      REQUIRE_FALSE(got.ok());
      CHECK(got.status().IsInvalidArgument());
      CHECK_THAT(got.status().message(), Catch::Contains(r.error));
    } else {
      INFO(got.status().ToString());
      REQUIRE(got.ok());
      CHECK(*got == r.out);
    }
  }
}

TEST_CASE("NewUuid makes unique, valid, time-ordered version 7 ids", "[common][uuid]") {
  using namespace std::chrono;
  const uint64_t start_ms =
      static_cast<uint64_t>(duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count());
  std::vector<std::string> ids;
  for (int i = 0; i < 1000; ++i) ids.push_back(liaison::NewUuid());
  const uint64_t end_ms =
      static_cast<uint64_t>(duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count());

  std::set<std::string> unique(ids.begin(), ids.end());
  CHECK(unique.size() == ids.size());

  uint64_t previous = 0;
  int bad = 0;
  for (const auto& id : ids) {
    auto norm = liaison::NormalizeUuid(id);
    const bool ok = norm.ok() && *norm == id  // valid and already canonical (lower case)
                    && id[14] == '7'          // version 7
                    && std::string("89ab").find(id[19]) != std::string::npos  // RFC variant
                    && V7Millis(id) >= previous && V7Millis(id) >= start_ms && V7Millis(id) <= end_ms;
    if (!ok) {
      ++bad;
      UNSCOPED_INFO("bad id " << id << " (previous timestamp " << previous << ", window " << start_ms << ".." << end_ms
                              << ")");
    }
    previous = V7Millis(id);
  }
  CHECK(bad == 0);
  // 74 random bits: the random part differs between ids of the same millisecond.
  std::set<std::string> tails;
  for (const auto& id : ids) tails.insert(id.substr(15));
  CHECK(tails.size() == ids.size());
}
