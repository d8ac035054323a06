// What one source address or one agency may take of the broker (internal):
// TLS handshakes begun per second and in progress per source address (the
// rate as a token bucket per source), identified connections per
// agency, publishes per second per agency (a token bucket shared by the
// agency's sessions), and audit requests (queries, consistency proofs) in
// progress per agency. A flooding agency is refused with rate_limited or
// audit_busy; the others' messages and audit requests still flow.
// Thread-safe (one mutex, held briefly).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "broker/config.h"

namespace liaison::broker {

class Admission {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Admission(const Limits& limits) : limits_(limits) {}

  // A TLS handshake from source (SourceOf) begins: false (nothing counted)
  // when the source already has max_handshakes_per_source in progress.
  bool BeginHandshake(const std::string& source);
  void EndHandshake(const std::string& source);
  // A handshake from source (SourceOf) at now, against the rate: false
  // when its bucket is empty. Buckets that have filled up again are
  // forgotten (at the bound, by a sweep at most once a second); past
  // kMaxSourceBuckets sources, new ones share one bucket.
  bool TakeHandshake(const std::string& source, Clock::time_point now = Clock::now());
  static constexpr size_t kMaxSourceBuckets = 100'000;
  size_t source_buckets();  // for tests

  // An identified session of agency: false (nothing counted) when the
  // agency already has max_connections_per_agency.
  bool AddSession(const std::string& agency);
  void RemoveSession(const std::string& agency);

  // One publish by agency at now: false when its bucket is empty.
  bool TakePublish(const std::string& agency, Clock::time_point now = Clock::now());
  // A Publish frame of bytes by agency at now, against the byte rate: false
  // when its bucket holds fewer.
  bool TakePublishBytes(const std::string& agency, uint64_t bytes, Clock::time_point now = Clock::now());

  // An audit request of agency begins: null (nothing counted) when the
  // agency already has max_audit_requests_per_agency in progress. The
  // request ends when its answer is ready (AuditSlot::Release, before the
  // answer is sent, so that the agency may ask again as soon as it has it)
  // or, however else it finishes, when the last copy of the returned token
  // is destroyed, even after its session has gone (its work still occupies
  // the reader).
  class AuditSlot {
   public:
    AuditSlot(Admission* admission, std::string agency) : admission_(admission), agency_(std::move(agency)) {}
    ~AuditSlot() { Release(); }
    AuditSlot(const AuditSlot&) = delete;
    AuditSlot& operator=(const AuditSlot&) = delete;
    void Release();

   private:
    Admission* admission_;
    std::string agency_;
    std::atomic<bool> released_{false};
  };
  std::shared_ptr<AuditSlot> BeginAuditRequest(const std::string& agency);

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
  std::map<std::string, Bucket> byte_buckets_;  // guarded by mu_
  std::map<std::string, Bucket> sources_;       // guarded by mu_
  size_t sweep_at_ = 1024;                      // sources_ size that triggers a sweep; guarded by mu_
  Clock::time_point swept_{};                   // the last sweep; guarded by mu_
  std::map<std::string, uint32_t> audit_requests_;  // guarded by mu_
};

}  // namespace liaison::broker
