// Read-only access to the audit log for auditors' queries and exports and
// for consistency proofs (DESIGN.md: "AuditQuery -> read-only audit
// reader"). It never goes through the store's single writer: it opens
// read-only SQLite connections of its own (WAL lets them read while the
// writer commits), one per worker thread, so a long query never blocks a
// session strand or the writer. Lookups by case, message and agency go
// through the derived audit index beside the store (audit_index.h), which
// each connection attaches once it exists; the records above its watermark
// are scanned, so no answer depends on how far the index has got.
//
// Thread-safety: all public methods may be called from any thread. The
// asynchronous forms run on the reader's workers and call done there; done
// must not block. The destructor waits for running jobs and drops queued
// ones without calling them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/audit_record.h"
#include "common/merkle.h"
#include "common/status.h"

namespace liaison::broker {

// Filters of an auditor's query; defaults do not filter.
struct AuditFilter {
  int64_t from_ms = 0;  // time_ms >= from_ms, when > 0
  int64_t to_ms = 0;    // time_ms < to_ms, when > 0
  std::string agency;   // sender or recipient
  std::string case_id;
  std::string message_id;
  std::string event;
  std::string decision;
};

struct AuditPageRequest {
  AuditFilter filter;
  // The agencies whose records the auditor may see (Policy::MayAudit).
  // Records naming none of them as sender, recipient or actor are out of
  // scope, except records that name no agency at all (broker_start, ...).
  std::vector<std::string> scope;
  uint32_t limit = 100;     // 1..kMaxPageSize
  uint64_t after_seq = 0;   // the page token: the last seq seen
  // Export mode: every record in (after_seq, until_seq], out-of-scope ones
  // as hash only; filter must be empty.
  bool export_mode = false;
  uint64_t until_seq = 0;
};

struct AuditRow {
  audit::Record record;     // empty but for seq when hash_only
  merkle::Hash leaf_hash{};
  std::string leaf;         // export mode, in scope only
  bool hash_only = false;
};

struct AuditPage {
  std::vector<AuditRow> rows;
  bool more = false;  // rows beyond the last one match
  // Export mode: stored checkpoints (text form) with tree size in
  // (after_seq, last row's seq].
  std::vector<std::string> stored_checkpoints;
};

class AuditReader {
 public:
  static constexpr uint32_t kMaxPageSize = 1000;

  // Opens `workers` read-only connections to the store at path (which the
  // Store must have created).
  static Result<std::unique_ptr<AuditReader>> Open(const std::string& path, int workers = 2);
  ~AuditReader();
  AuditReader(const AuditReader&) = delete;
  AuditReader& operator=(const AuditReader&) = delete;

  using PageDone = std::function<void(Result<AuditPage>)>;
  using ProofDone = std::function<void(Result<std::vector<merkle::Hash>>)>;

  // Runs one page of a query on a worker. Errors: InvalidArgument (bad
  // request), IoError (SQLite), Corruption (a gap in the log), and
  // Unavailable at once (done called on the caller's thread) when too many
  // requests are queued.
  void QueryPage(AuditPageRequest request, PageDone done);
  // The RFC 6962 consistency proof between the trees of old_size and
  // new_size records, from the stored leaf hashes (reads new_size hashes:
  // O(n)).
  void ConsistencyProof(uint64_t old_size, uint64_t new_size, ProofDone done);

  // Blocking forms (tests and tools).
  Result<AuditPage> QueryPageSync(const AuditPageRequest& request);
  Result<std::vector<merkle::Hash>> ConsistencyProofSync(uint64_t old_size, uint64_t new_size);

  struct Impl;

 private:
  explicit AuditReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace liaison::broker
