// The broker's SQLite store, and its single writer (DESIGN.md: one module
// owns the store). It keeps the tamper-evident audit log: every record is
// appended through Append(), many callers' records share one transaction
// and one fsync (group commit), and after each commit
// the RFC 6962 tree over all records is signed as a checkpoint. A caller's
// done() runs only after its records are durable; if a commit fails, none
// of it is kept (the in-memory tree included) and done() gets the error.
// WAL checkpoints run on a background thread so the writer never waits
// for them. The audit log has no secondary index: the indexes that queries
// use are kept by another background thread, in a file of their own that
// is derived from the log (broker/store/audit_index.h).
//
// It also keeps the durable message queue (DESIGN.md, Delivery guarantees):
// messages (routing metadata kept for ever, for idempotency, recalls and
// forwarding checks; the body only until its last copy is finished) and
// deliveries (one per recipient copy, recall notice or delivery report).
// Queue changes ride in the same transaction as the audit records that
// describe them (Commit with a Batch).
//
// Commits go to a commit log of the store's own first (commit_log.h): a
// commit is durable, and done() runs, once its group is in the log (one
// append, one fdatasync); an applier thread writes groups into SQLite
// behind it (Options::apply_delay), netting out what later commits undo,
// and after a crash the next Open applies what the log holds beyond the
// database's watermark. The reads below wait for the applier first. The
// log and the database together are always a whole number of commits; the
// database alone, between two applies, may already hold the finished
// deliveries and dropped bodies of commits still to come, whose audit
// records follow with the next apply (store_impl.h, kApplyHoldDivisor).
//
// Thread-safety: all public methods may be called from any thread. done()
// runs in commit order on the store's completion thread (while the writer
// commits the next batch) or, for a small commit when that thread is idle,
// on the writer itself; it must not block, and must not wait for the store
// (CommitSync, AppendSync, Sync, the reads) or the writer would wait for
// itself. Reads (FindMessage, ...) use their own connection; they wait for
// the applier, never for the writer.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/audit_record.h"
#include "common/checkpoint.h"
#include "common/latency_histogram.h"
#include "common/status.h"

namespace liaison::broker {

enum class DeliveryKind : int { kMessage = 1, kRecallNotice = 2, kReport = 3 };
enum class DeliveryState : int { kPending = 0, kDelivered = 1, kExpired = 2, kRecalled = 3, kRefused = 4 };

// Immutable bytes held by reference: a message body that the store's batch
// and the delivery queue share instead of each keeping a copy. Empty when
// it holds none.
class SharedBytes {
 public:
  SharedBytes() = default;
  SharedBytes(std::string bytes) : p_(std::make_shared<const std::string>(std::move(bytes))) {}  // NOLINT
  SharedBytes(std::shared_ptr<const std::string> bytes) : p_(std::move(bytes)) {}              // NOLINT

  const std::string& str() const;
  const std::shared_ptr<const std::string>& shared() const { return p_; }
  bool empty() const { return str().empty(); }
  size_t size() const { return str().size(); }
  const char* data() const { return str().data(); }
  void clear() { p_.reset(); }
  friend bool operator==(const SharedBytes& a, const SharedBytes& b) { return a.str() == b.str(); }

 private:
  std::shared_ptr<const std::string> p_;
};

// A row of the messages table.
struct StoredMessage {
  int64_t row = 0;  // from NextMessageRow()
  std::string sender, message_id, case_id, message_type, purpose, agreement;
  int tlp = 0;
  std::string recipients;      // the recipients it was queued for, comma-separated
  int64_t received_ms = 0;
  int64_t expires_ms = 0;      // the earlier of its expiry and the broker's retention
  bool want_reports = false;
  std::string publish_digest;  // SHA-256 of the message as published (idempotency)
  std::string ack;             // the serialized PublishAck it was answered with
  SharedBytes body;            // the stamped message; empty once dropped
  int64_t recalled_ms = 0;     // 0 unless recalled
};

// The agencies of a comma-separated column (messages.recipients,
// messages.delivered), in order; empty names are skipped.
std::vector<std::string> SplitAgencies(const std::string& list);

// A row of the deliveries table: one recipient's copy of a message, or a
// recall notice or delivery report (payload) about it.
struct StoredDelivery {
  int64_t id = 0;  // from NextDeliveryId(); the wire's delivery id; delivery order
  std::string recipient;
  int64_t message_row = 0;
  DeliveryKind kind = DeliveryKind::kMessage;
  uint32_t attempts = 0;
  bool named = true;    // the recipient was named in the envelope (not reached through a group)
  std::string payload;  // notices and reports: the serialized RecallNotice / DeliveryReport
};

// One transaction's worth of changes. If new_message names a (sender,
// message_id) already stored, nothing of the batch is written and done
// learns the original (BatchResult::duplicate).
struct Batch {
  std::vector<audit::Record> records;
  std::optional<StoredMessage> new_message;
  // False: new_message is only looked up (a duplicate as above), never
  // stored, and its id is not remembered; the rest of the batch (the audit
  // records) is written. For a publish queued for nobody and refused as
  // queue_full for some recipient: its repeat is decided afresh, not
  // answered with a refusal that has passed (docs/protocol.md, section 7).
  bool keep_message = true;
  std::vector<StoredDelivery> new_deliveries;
  std::vector<std::pair<int64_t, DeliveryState>> finished;  // deliveries leaving the pending state
  std::vector<std::pair<int64_t, uint32_t>> attempts;       // delivery id, attempts so far
  std::vector<int64_t> drop_bodies;                         // message rows whose body is no longer needed
  int64_t recalled_row = 0;                                 // mark this message recalled
  // Nobody is waiting for this batch to be durable (a DeliveryAck: the
  // recipient has its copy, and a crash before the commit only means the
  // copy is delivered again). The writer lets it wait up to a couple of
  // milliseconds for a batch that someone does wait for, so that the two
  // share one commit, one fsync and one signature.
  bool lazy = false;
};

struct BatchResult {
  bool duplicate = false;
  StoredMessage original;  // when duplicate: the stored row (without body)
};

// Wall-clock milliseconds since the Unix epoch, as records are stamped.
int64_t NowMs();

class Store {
 public:
  struct Options {
    std::string path;          // the SQLite database
    std::string origin;        // names this log in checkpoints, e.g. "liaison/city-prevention-network"
    std::string signing_key;   // Ed25519 PEM (created 0600 if absent; public half at <path>.pub)
    std::string digest_key;    // 32-byte HMAC key for body digests (created 0600 if absent)
    // Tests: leave the derived audit index (audit_index.h) where it is, so
    // that queries find the newer records by scanning them.
    bool pause_audit_index = false;
    // How long a lazy batch (Batch::lazy) waits for one that is not.
    std::chrono::microseconds lazy_linger{2000};
    // Deleted bodies leave the WAL file when the writer is next quiet for a
    // moment, and within this time in any case (DESIGN.md allows 60 s); the
    // commit log's segments are closed within half of it.
    std::chrono::milliseconds wal_purge_within{30000};
    // A commit is durable once it is in the commit log; the applier writes
    // it into the database between half this and one and a half times this
    // later (store_impl.h, kApplyHoldDivisor; or sooner: Sync, the reads
    // below), so that what a later commit undoes (a body acknowledged, a
    // delivery finished) is mostly never written there at all;
    std::chrono::milliseconds apply_delay{200};
    // but while little waits (kApplyEarlyWeight), already this much later:
    // at low rates a recipient's acknowledgement comes within milliseconds,
    // so nothing more is netted by waiting, and the database work comes in
    // small pieces instead of a burst every apply_delay, which the commits
    // behind it feel (docs/benchmarks.md, fourteenth session).
    std::chrono::milliseconds apply_early{20};
  };
  using Done = std::function<void(const Status&, const audit::Checkpoint&)>;
  using BatchDone = std::function<void(const Status&, const audit::Checkpoint&, const BatchResult&)>;

  static Result<std::unique_ptr<Store>> Open(const Options& options);
  // Commits what is queued, stops the writer, checkpoints the WAL.
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Queues records (their seq is assigned here, in order) to be committed
  // together; done is called once, after the commit or its failure.
  void Append(std::vector<audit::Record> records, Done done);
  // Appends and waits (for tests and tools).
  Result<audit::Checkpoint> AppendSync(std::vector<audit::Record> records);
  // Queues a batch of queue changes and their audit records, committed
  // with whatever else is queued; done runs after the commit or failure.
  void Commit(Batch batch, BatchDone done);
  Result<BatchResult> CommitSync(Batch batch);

  // The database (what the reads below, the audit reader and the audit
  // index see) trails the commit log by up to 1.5 Options::apply_delay. Sync
  // waits until what was queued before it (Append, Commit) is committed,
  // then writes every commit into the database and waits; WhenApplied runs
  // then() once what was queued before it (a lazy batch too) is committed
  // and in the database (on the writer's or the applier's thread, or at
  // once on the caller's), without waiting. Both report a failure to write
  // it.
  Status Sync();
  void WhenApplied(std::function<void(const Status&)> then);

  // Ids for new rows, unique for the life of the store (gaps are fine).
  int64_t NextMessageRow();
  int64_t NextDeliveryId();

  // Every pending delivery, in delivery order, with its message (body
  // included), for rebuilding the in-memory queue at start.
  Status LoadPending(const std::function<void(StoredDelivery, const StoredMessage&)>& each) const;
  // How the reads below see the commits not yet applied: kForApplier waits
  // (blocking) until the applier has written everything committed so far;
  // kNo reads the database as it is, for a caller that has just waited with
  // WhenApplied for what it needs. The broker's sessions do the latter, so
  // that an I/O thread never blocks on the applier.
  enum class Wait { kForApplier, kNo };
  // The message sender published as message_id (without body), if any.
  Result<std::optional<StoredMessage>> FindMessage(std::string_view sender, std::string_view message_id,
                                                   Wait wait = Wait::kForApplier) const;
  // The message sent to recipient as message_id, whatever its sender.
  Result<std::optional<StoredMessage>> FindDelivered(std::string_view recipient, std::string_view message_id,
                                                     Wait wait = Wait::kForApplier) const;
  // Recipients whose copy of message row was delivered (acknowledged).
  Result<std::vector<std::string>> DeliveredRecipients(int64_t row, Wait wait = Wait::kForApplier) const;

  // The newest signed checkpoint (tree size 0 before the first record).
  audit::Checkpoint latest() const;
  // HMAC-SHA256 (hex) of a body under the body-digest key.
  std::string BodyDigest(std::string_view body) const;
  const std::string& public_key_pem() const;

  // Records 1..N are in the derived audit index that queries by case,
  // message and agency use (the rest is scanned).
  uint64_t audit_indexed_through() const;

  struct Counters {
    uint64_t commits, records, failed_commits, bodies_dropped;
    // New messages whose (sender, message id) had to be looked up in the
    // database: the in-memory filter of ids (id_filter.h) said "maybe".
    uint64_t duplicate_lookups;
  };
  Counters counters() const;
  // How long the commit log's fdatasyncs took, since Open (any thread).
  LatencyHistogram::Snapshot log_syncs() const;

  // Audit retention (docs/auditing.md, section 6): records made before
  // before_ms lose every field (the leaf and the columns) but keep their seq
  // and leaf hash, so the Merkle tree, every checkpoint and every proof made
  // earlier stay verifiable. Goes through the writer like any commit, in
  // chunks of a bounded number of records (so other commits are not held up
  // for long); each chunk is one transaction with an audit_pruned record
  // saying which records it pruned (why goes into its detail). done gets
  // the records pruned by this call (first = last = 0: none).
  struct Pruned {
    uint64_t first = 0, last = 0;
  };
  using PruneDone = std::function<void(const Status&, const Pruned&)>;
  void PruneAudit(int64_t before_ms, std::string why, PruneDone done);
  Result<Pruned> PruneAuditSync(int64_t before_ms, std::string why);

  // Copies the audit log and its checkpoints, and nothing else of the
  // store, into a new SQLite file (for auditors and `liaison audit verify`).
  // Every field is a column there (decoded from the leaves); pruned records
  // are hash-only rows, in the shape of an auditor's scoped export.
  static Status ExportAudit(const std::string& db_path, const std::string& out_path);

  struct Impl;

 private:
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace liaison::broker
