// The broker's SQLite store, and its single writer (DESIGN.md: one module
// owns the store). It keeps the tamper-evident audit log: every record is
// appended through Append(), many callers' records share one transaction
// and one fsync (group commit, WAL, synchronous=FULL), and after each commit
// the RFC 6962 tree over all records is signed as a checkpoint. A caller's
// done() runs only after its records are durable; if a commit fails, none
// of it is kept (the in-memory tree included) and done() gets the error.
// WAL checkpoints run on a background thread so the writer never waits
// for them.
//
// Thread-safety: all public methods may be called from any thread. done()
// runs on the writer thread and must not block.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/audit_record.h"
#include "common/checkpoint.h"
#include "common/status.h"

namespace liaison::broker {

class Store {
 public:
  struct Options {
    std::string path;          // the SQLite database
    std::string origin;        // names this log in checkpoints, e.g. "liaison/city-prevention-network"
    std::string signing_key;   // Ed25519 PEM (created 0600 if absent; public half at <path>.pub)
    std::string digest_key;    // 32-byte HMAC key for body digests (created 0600 if absent)
  };
  using Done = std::function<void(const Status&, const audit::Checkpoint&)>;

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

  // The newest signed checkpoint (tree size 0 before the first record).
  audit::Checkpoint latest() const;
  // HMAC-SHA256 (hex) of a body under the body-digest key.
  std::string BodyDigest(std::string_view body) const;
  const std::string& public_key_pem() const;

  struct Counters {
    uint64_t commits, records, failed_commits;
  };
  Counters counters() const;

  // Copies the audit log and its checkpoints, and nothing else of the
  // store, into a new SQLite file (for auditors and `liaison audit verify`).
  static Status ExportAudit(const std::string& db_path, const std::string& out_path);

  struct Impl;

 private:
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace liaison::broker
