// The broker's configuration file (YAML, docs/broker.md): where it listens,
// its TLS material, the policy file, limits and timeouts. Load validates
// everything and reports every problem with file:line:column. A loaded
// BrokerConfig is a plain value.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "common/diagnostic.h"
#include "common/tls.h"

namespace liaison::broker {

using Millis = std::chrono::milliseconds;

struct Limits {
  uint32_t max_frame_bytes = 4 * 1024 * 1024;
  uint32_t max_recipients = 100;
  // Credit window: unacknowledged deliveries per receiving session.
  uint32_t default_credit = 64;
  uint32_t max_credit = 1024;
  // Deliveries waiting in one agency's queue; beyond it, publishes to that
  // agency are refused as queue_full.
  uint32_t max_backlog = 100'000;
  // The longest a message waits for an offline recipient, whatever its own
  // expiry says; then it expires (audited, the sender told).
  Millis max_retention{Millis(30LL * 86'400'000)};
  // Publishes of one session waiting for their PublishAck.
  uint32_t max_in_flight_publishes = 1024;
  // Bytes queued for a peer that is not reading before it is disconnected.
  uint64_t max_queued_bytes = 32 * 1024 * 1024;
  uint32_t max_connections = 20000;
  // TLS handshakes in progress from one source (an IPv4 address, an IPv6
  // /64; the costliest thing an unauthenticated peer can make the broker do).
  uint32_t max_handshakes_per_source = 64;
  // TLS handshakes begun per second from one source (an IPv4 address, an
  // IPv6 /64), with bursts of up to handshake_burst_per_source; 0:
  // unlimited. Without it one address could keep the broker signing key
  // exchanges as fast as it can fail them.
  uint32_t handshake_rate_per_source = 100;
  uint32_t handshake_burst_per_source = 1000;
  // Identified connections of one agency at once.
  uint32_t max_connections_per_agency = 256;
  // Publishes per second per agency (all its sessions), with bursts of up
  // to publish_burst_per_agency; 0: unlimited.
  uint32_t publish_rate_per_agency = 1000;
  uint32_t publish_burst_per_agency = 5000;
  // Bytes of Publish frames per second per agency (all its sessions), with
  // bursts of up to publish_bytes_burst_per_agency (at least
  // max_frame_bytes); 0: unlimited. The count alone lets an agency publish
  // 1,000 frames of max_frame_bytes a second.
  uint64_t publish_bytes_per_agency = 16u << 20;
  uint64_t publish_bytes_burst_per_agency = 256u << 20;
  // Audit queries and consistency proofs of one agency (all its sessions)
  // being worked on at once; more are refused with audit_busy. A proof
  // reads the whole log, so without this one agency could keep the audit
  // reader busy for everyone else.
  uint32_t max_audit_requests_per_agency = 4;
  Millis handshake_timeout{10'000};  // TCP accept to Hello
  Millis idle_timeout{90'000};       // nothing received for this long: close
  Millis ping_interval{30'000};      // nothing received for this long: ping
  Millis write_timeout{30'000};      // one write blocked this long: close
  Millis delivery_timeout{30'000};   // Deliver without DeliveryAck this long: close, deliver again later
  Millis shutdown_grace{10'000};     // SIGTERM: time to finish in-flight work
  // Refused connections are audited as one record per source and reason
  // per interval, so a flood cannot fill the disk.
  Millis refusal_audit_interval{60'000};
  // This often the log names each agency that is not receiving while
  // messages have waited for it longer than this (0: never).
  Millis queue_report_interval{3'600'000};
};

// The audit log's retention (docs/auditing.md, section 6): records older
// than retention_days lose their fields and keep their leaf hash (pruning),
// so the Merkle tree and every checkpoint and proof stay verifiable.
struct AuditSettings {
  uint32_t retention_days = 0;  // 0: keep every record in full for ever
};

struct BrokerConfig {
  std::string path;                 // the file it was loaded from
  std::string name = "liaison";     // shown to clients in Welcome
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 7443;      // 0: any free port (tests)
  TlsFiles tls;
  std::string policy_path;
  // Pseudonym keys, one file per sharing agreement (0600, created as needed);
  // kept apart from the policy file. Default: "keys" beside the config file.
  std::string keys_dir;
  // The store (SQLite, the audit log). Default: "data" beside the config file.
  std::string data_dir;
  // Unix-domain socket for local administration (reload, status), created
  // mode 0600: only the broker's own user may use it. Empty: none.
  std::string admin_socket;
  int threads = 0;                  // 0: one per core
  std::string log_level = "info";
  Limits limits;
  AuditSettings audit;

  // Parses and validates path. Relative paths in the file are relative to
  // the file's directory. Returns nothing when there are errors (in diags).
  static std::optional<BrokerConfig> Load(const std::string& path, Diagnostics* diags);
  // The same for text already read; path names it and anchors relative paths.
  static std::optional<BrokerConfig> LoadText(const std::string& text, const std::string& path, Diagnostics* diags);
};

}  // namespace liaison::broker
