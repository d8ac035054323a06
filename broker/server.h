// The Liaison broker: accepts mutual-TLS connections, identifies each
// agency by its certificate and routes messages between them
// (DESIGN.md). Create() validates everything and binds the listening socket;
// Run() serves until RequestStop() or SIGTERM/SIGINT, then finishes
// in-flight work within the shutdown grace period and closes every session.
//
// Thread-safety: RequestStop() and port() may be called from any thread;
// Run() once, from one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "broker/config.h"
#include "common/latency_histogram.h"
#include "common/status.h"

namespace liaison::broker {

// A duration for people: "45s", "14m 3s", "5h 2m", "3d 4h" (the log, and
// the admin command's table).
std::string HumanDuration(int64_t seconds);

class Server {
 public:
  static Result<std::unique_ptr<Server>> Create(BrokerConfig config);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound port (useful with listen port 0).
  uint16_t port() const;
  // Serves until stopped, on the caller's thread and up to config.threads - 1
  // more that join only while it is busy (broker/detail/io_pool.h).
  // With handle_signals, SIGTERM and SIGINT request a graceful stop.
  Status Run(bool handle_signals);
  void RequestStop();

  // Re-reads the policy, the CA bundle, the CRLs and the broker's
  // certificate and key from the paths in the configuration, and swaps them
  // in without dropping sessions; then closes the sessions whose agency was
  // removed or whose certificate is no longer accepted. If anything fails
  // validation, nothing changes and the error says why. Thread-safe;
  // SIGHUP and the admin socket's "reload" call it. Returns a summary.
  Result<std::string> Reload();

  // Audit retention (audit.retention_days): prunes the audit records older
  // than that (Store::PruneAudit; each chunk is itself recorded). The broker
  // does this once an hour by itself; the admin socket's "prune-audit" runs
  // it now. Blocks until done; InvalidArgument when no retention is
  // configured. Returns a summary.
  Result<std::string> PruneAudit();

  // Writes every commit so far into the store's database, which trails its
  // commit log (Store::Sync), for tools and tests that read the file.
  Status SyncStore();

  struct Counters {
    uint64_t connections_accepted, handshakes_failed, identities_refused, publishes, deliveries_acked,
        protocol_errors;
    size_t sessions;
    LatencyHistogram::Snapshot log_syncs;  // the store's commit log (Store::log_syncs)
  };
  Counters counters() const;

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  void WaitForSignal();
  std::unique_ptr<Impl> impl_;
};

// Loads the policy and TLS material a config names, as Create() would,
// adding every problem to diags. Used by --check-config.
void CheckConfigFiles(const BrokerConfig& config, Diagnostics* diags);

}  // namespace liaison::broker
