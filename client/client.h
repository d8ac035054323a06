// The Liaison client library: one mutual-TLS connection to the broker,
// used by the `liaison` CLI, the agency daemon and the benchmarks.
//
// Asynchronous: many publishes may be in flight at once, matched to their
// PublishAck by request id; deliveries arrive through a handler and are
// acknowledged with Acknowledge() once the application has stored them.
// The broker may send at most `credit` unacknowledged deliveries, and the
// library holds it to that: a delivery beyond the credit is not handed to
// the application, and the connection ends with ProtocolError (so a broker
// that ignores the credit cannot grow the application's queue without
// bound).
//
// Threading: each Client runs its own I/O thread. Handlers are called on
// that thread, one at a time; they must not block for long and must not call
// Close(). All public methods are thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/audit_record.h"
#include "common/checkpoint.h"
#include "common/merkle.h"
#include "common/status.h"
#include "common/tls.h"

namespace liaison::v1 {
class Message;
}

namespace liaison::client {

struct ClientOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 7443;
  // Name the broker's certificate must carry (DNS name or IP address);
  // defaults to host.
  std::string server_name;
  // certificate, private_key, ca_bundle, and crls: CRLs of the CA, so a
  // revoked broker certificate is refused (optional).
  TlsFiles tls;
  // Receive this agency's deliveries on this connection.
  bool receive = false;
  // With receive: replace the agency's current receiving session.
  bool take_over = false;
  // With receive: most unacknowledged deliveries (0: the broker's default,
  // which its Welcome announces; a broker announcing more than asked is
  // held to what was asked).
  uint32_t credit = 0;
  std::string client_name = "liaison-client/0.1";
  std::chrono::milliseconds connect_timeout{10'000};
  // Witness file: the newest audit checkpoint this agency has seen, kept
  // across runs. Every checkpoint the broker sends is compared with it: a
  // log that shrank, or a different root for the same size, is an alarm
  // (witness_status()); for a larger log the client asks the broker for an
  // RFC 6962 consistency proof from the witnessed checkpoint and raises the
  // alarm when it does not verify. The file is only advanced to a
  // checkpoint whose proof verified. Empty: no witness.
  std::string checkpoint_file;
  // A broker can keep the witness from checking by never proving: it
  // answers audit_busy or audit_unavailable, or drops the connection,
  // whenever asked. The time of the first request left unproven since the
  // witness last advanced is kept beside the witness file (its name +
  // ".unproven", across connections and runs); once a request is left
  // unproven this long after it, that is an alarm too. 0: never.
  std::chrono::milliseconds witness_max_unproven{std::chrono::hours(24)};
  // Ask for a delivery report on every recipient's copy of every message
  // published on this connection (reports arrive as deliveries on the
  // agency's receiving session).
  bool want_reports = false;
};

// What the broker did for one recipient.
struct RecipientOutcome {
  std::string recipient;
  std::string outcome;  // "queued" or "refused"
  std::string reason;   // for refusals: "not_permitted", "unknown_recipient", ...
  std::string detail;   // human-readable
};

struct PublishResult {
  // Not OK when the broker rejected the publish as a whole (then
  // error_code names its reason, e.g. "invalid_message") or the connection
  // failed before the answer (the outcome is then unknown).
  Status status;
  std::string error_code;
  std::string message_id;
  std::vector<RecipientOutcome> outcomes;
  // The broker's signed audit checkpoint covering this publish's records.
  audit::Checkpoint checkpoint;
  // The broker had this message already (same id and content): these are
  // the original outcomes.
  bool duplicate = false;

  // The broker answered and every recipient was delivered or queued.
  bool AllAccepted() const;
};

// An auditor's query of the broker's audit log (docs/auditing.md, section
// 5). Filters left at their default do not filter.
struct AuditQuery {
  int64_t from_ms = 0;     // time_ms >= from_ms (0: none)
  int64_t to_ms = 0;       // time_ms < to_ms (0: none)
  std::string agency;      // as sender or recipient
  std::string case_id;
  std::string message_id;
  std::string event;
  std::string decision;
  uint32_t page_size = 0;  // 0: the broker's default (100); at most 1000
  uint64_t page_token = 0; // next_page_token of the previous page; 0: from the start
  // Export mode: every record up to until_tree_size (0 on the first page:
  // the broker's newest checkpoint, returned in AuditPage::checkpoint),
  // those outside the auditor's scope as leaf hash only. No filters.
  bool export_mode = false;
  uint64_t until_tree_size = 0;
};

struct AuditRow {
  audit::Record record;  // only seq is set when hash_only
  merkle::Hash leaf_hash{};
  std::string leaf;      // canonical leaf bytes (export mode, in scope)
  bool hash_only = false;
};

struct AuditPage {
  // Not OK when the broker refused the query (error_code names its reason,
  // e.g. "not_auditor") or the connection failed.
  Status status;
  std::string error_code;
  std::vector<AuditRow> rows;
  uint64_t next_page_token = 0;  // 0: no further page
  audit::Checkpoint checkpoint;  // the broker's newest when the query ran
  std::vector<std::string> stored_checkpoints;  // export mode: text form
};


// The sender withdrew a message this agency received earlier.
struct RecallNotice {
  std::string message_id;
  std::string sender;
  std::string reason;
  int64_t recalled_at_ms = 0;
};

// What became of one recipient's copy of a message this agency sent.
struct DeliveryReport {
  std::string message_id;
  std::string recipient;
  std::string outcome;  // "delivered", "expired", "refused", "recalled"
  std::string reason;   // for refusals and expiry: "not_permitted", "expired", ...
  std::string detail;
  int64_t time_ms = 0;
};

// One delivery: a message, a recall notice or a delivery report. Each is
// acknowledged with Acknowledge(delivery) once stored.
struct Delivery {
  enum class Kind { kMessage, kRecallNotice, kReport };
  uint64_t delivery_id = 0;
  uint32_t attempt = 0;  // 1, then one more for each redelivery
  Kind kind = Kind::kMessage;
  std::shared_ptr<const v1::Message> message;  // kMessage
  RecallNotice recall;                         // kRecallNotice
  DeliveryReport report;                       // kReport
};

struct RecallResult {
  Status status;
  std::string error_code;
  std::string message_id;              // as the broker knows it (canonical form)
  std::vector<std::string> withdrawn;  // copies removed before delivery
  std::vector<std::string> notified;   // recipients who had it and get a recall notice
};

// What the broker said in its Welcome.
struct SessionInfo {
  std::string agency_id;
  std::string session_id;
  std::string broker_name;
  bool receiving = false;
  uint32_t credit = 0;
  uint32_t max_frame_bytes = 0;
  uint32_t max_recipients = 0;
  audit::Checkpoint checkpoint;  // the audit log's newest, when the session began
};

// The checkpoint a witness file (ClientOptions::checkpoint_file) keeps:
// none if there is no file yet. A file that exists but cannot be read is
// its read error; one that holds no checkpoint is Corruption. Either way
// it must not be written over: what was witnessed would be lost.
Result<std::optional<audit::Checkpoint>> LoadWitness(const std::string& path);

class Client {
 public:
  using DeliveryHandler = std::function<void(Delivery)>;
  using PublishHandler = std::function<void(PublishResult)>;
  using RecallHandler = std::function<void(RecallResult)>;
  using ClosedHandler = std::function<void(const Status&)>;

  // Connects, completes the TLS handshake (verifying the broker's
  // certificate and name), sends Hello and waits for Welcome. Errors:
  // Unavailable (cannot connect), PermissionDenied (the broker refused this
  // certificate or the receiving session), Timeout, InvalidArgument (bad
  // TLS files).
  static Result<std::unique_ptr<Client>> Connect(const ClientOptions& options, DeliveryHandler on_delivery = nullptr,
                                                 ClosedHandler on_closed = nullptr);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const SessionInfo& session() const;

  // Sends message; done is called exactly once with the outcome.
  void Publish(const v1::Message& message, PublishHandler done);
  // Blocking form of Publish.
  PublishResult Publish(const v1::Message& message);

  // Tells the broker that the delivery is safely stored, which gives its
  // unit of credit back (once: a repeated acknowledgement, or one naming
  // another attempt, gives back nothing, as the broker counts).
  void Acknowledge(const Delivery& delivery) { Acknowledge(delivery.delivery_id, delivery.attempt); }
  void Acknowledge(uint64_t delivery_id, uint32_t attempt);

  // Withdraws a message this agency published; done is called once.
  void Recall(const std::string& message_id, const std::string& reason, RecallHandler done);
  RecallResult Recall(const std::string& message_id, const std::string& reason);

  // One page of an audit query (agencies with the auditor role only).
  // Blocking; thread-safe.
  AuditPage QueryAudit(const AuditQuery& query);

  // The broker's RFC 6962 consistency proof between two sizes of its audit
  // log (0 < old_size <= new_size <= its size). Blocking. Errors:
  // InvalidArgument (sizes the broker refused), Unavailable.
  Result<std::vector<merkle::Hash>> ConsistencyProof(uint64_t old_size, uint64_t new_size);

  // Waits (up to a few seconds) for a witness consistency check in
  // progress, flushes what is queued, closes TLS cleanly and stops the I/O
  // thread. Idempotent; blocks for at most a few seconds more.
  void Close();
  // Blocks until the connection has ended; returns why (OK after Close()).
  Status Wait();
  bool connected() const;
  // Not OK once a checkpoint from the broker contradicted the witness file
  // (the audit log was rewritten or truncated) or a consistency proof from
  // the witnessed checkpoint to a newer one did not verify, or the broker
  // left it unproven for longer than ClientOptions::witness_max_unproven.
  // Thread-safe.
  Status witness_status() const;

 private:
  struct Impl;
  explicit Client(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace liaison::client
