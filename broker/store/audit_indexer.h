// Internal to broker/store: keeps the derived audit index (audit_index.h)
// up to date with the store's audit log, on a thread of its own, so that
// the store's writer appends records without updating any index.
//
// The applier hands it each applied run of records' index entries
// (Committed), so it need not read them back; records it was not handed
// (those of a start, a rebuild, or a run it had no room for) it reads
// through its own read-only connection to the store. It writes only the
// index file, whose commits need no fsync
// (synchronous=NORMAL): the index can always be rebuilt from the log, and
// the watermark is committed in the same transaction as the rows it
// covers, so after a crash the index is consistent up to its watermark and
// indexing resumes there. At Open, an index that does not match the log
// (a larger watermark, another leaf hash at it, an unreadable file) is
// emptied and rebuilt in the background.
//
// Thread-safety: Committed() and indexed_through() may be called from any
// thread; the rest from the owner (the Store).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "broker/store/audit_index.h"

#include "common/status.h"

namespace liaison::broker {

class AuditIndexer {
 public:
  // Opens or creates the index of the store at store_path (which must exist
  // and have schema 6), checks it against the log, and starts indexing
  // (unless !start: tests, Store::Options::pause_audit_index).
  static Result<std::unique_ptr<AuditIndexer>> Open(const std::string& store_path, bool start = true);
  // Stops the thread. When little is left to index (at most about a second
  // of work) it finishes first, so an orderly stop leaves a complete index;
  // otherwise the rest is indexed at the next start.
  ~AuditIndexer();
  AuditIndexer(const AuditIndexer&) = delete;
  AuditIndexer& operator=(const AuditIndexer&) = delete;

  // The log now holds records 1..seq (called by the applier after a
  // transaction), with the entries of records first..seq
  // (audit_index::AddEntries, in seq order) and the leaf hash of record
  // seq, which the index then takes instead of reading those records.
  void Committed(uint64_t first, uint64_t seq, std::vector<audit_index::Entry> entries, std::string last_hash);
  // Records 1..N are in the index.
  uint64_t indexed_through() const;
  // Indexes everything committed so far, on the caller's thread (tests and
  // the thread itself).
  Status CatchUp();

  struct Impl;

 private:
  explicit AuditIndexer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace liaison::broker
