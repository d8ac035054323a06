// What one source address or one agency may take of the broker (internal):
// TLS handshakes in progress per source address, identified connections per
// agency, and publishes per second per agency (a token bucket shared by the
// agency's sessions). A flooding agency is refused with rate_limited; the
// others' messages still flow. Thread-safe (one mutex, held briefly).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "broker/config.h"

namespace liaison::broker {

class Admission {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Admission(const Limits& limits) : limits_(limits) {}

  // A TLS handshake from address begins: false (nothing counted) when the
  // address already has max_handshakes_per_source in progress.
  bool BeginHandshake(const std::string& address);
  void EndHandshake(const std::string& address);

  // An identified session of agency: false (nothing counted) when the
  // agency already has max_connections_per_agency.
  bool AddSession(const std::string& agency);
  void RemoveSession(const std::string& agency);

  // One publish by agency at now: false when its bucket is empty.
  bool TakePublish(const std::string& agency, Clock::time_point now = Clock::now());

 private:
  struct Bucket {
    double tokens = 0;
    Clock::time_point last{};
  };
  const Limits& limits_;
  std::mutex mu_;
  std::map<std::string, uint32_t> handshakes_;  // guarded by mu_
  std::map<std::string, uint32_t> sessions_;    // guarded by mu_
  std::map<std::string, Bucket> buckets_;       // guarded by mu_
};

}  // namespace liaison::broker
