// What all sessions of one broker share (internal). Fields are set before
// the first session starts; the policy and TLS context pointers are swapped
// whole under mu_, never mutated in place.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "broker/config.h"
#include "broker/detail/admission.h"
#include "broker/detail/audit_events.h"
#include "broker/detail/mailbox.h"
#include "broker/store/audit_reader.h"
#include "broker/store/store.h"
#include "broker/detail/router.h"
#include "common/detail/tls.h"
#include "policy/policy.h"
#include "policy/pseudonym_keys.h"

namespace liaison::broker {

struct BrokerStats {
  std::atomic<uint64_t> connections_accepted{0};
  std::atomic<uint64_t> handshakes_failed{0};
  std::atomic<uint64_t> identities_refused{0};
  std::atomic<uint64_t> publishes{0};
  std::atomic<uint64_t> deliveries_acked{0};
  std::atomic<uint64_t> protocol_errors{0};
};

class BrokerState {
 public:
  explicit BrokerState(BrokerConfig config) : config(std::move(config)) {}

  const BrokerConfig config;
  Router router;
  Mailboxes mailboxes{router};  // the durable queue, in memory; loaded once the store is open
  Admission admission{config.limits};  // per source and per agency limits
  BrokerStats stats;
  // Publishes accepted and not yet answered, across all sessions; graceful
  // shutdown waits for it to reach zero.
  std::atomic<int64_t> in_flight_publishes{0};
  std::atomic<uint64_t> next_session_id{1};
  std::atomic<bool> draining{false};
  std::unique_ptr<policy::PseudonymKeyStore> keys;  // thread-safe
  std::unique_ptr<Store> store;                     // thread-safe; the audit log
  std::unique_ptr<AuditReader> audit_reader;        // thread-safe; read-only, for audit requests
  RefusalTally refusals;

  std::shared_ptr<const policy::Policy> policy() const {
    std::lock_guard lock(mu_);
    return policy_;
  }
  void set_policy(std::shared_ptr<const policy::Policy> p) {
    std::lock_guard lock(mu_);
    policy_ = std::move(p);
  }
  std::shared_ptr<tls::Context> tls_context() const {
    std::lock_guard lock(mu_);
    return tls_;
  }
  void set_tls_context(std::shared_ptr<tls::Context> c) {
    std::lock_guard lock(mu_);
    tls_ = std::move(c);
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const policy::Policy> policy_;
  std::shared_ptr<tls::Context> tls_;
};

}  // namespace liaison::broker
