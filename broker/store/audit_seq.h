// Internal to broker/store: finding records by time through their seq.
// Record time is monotonic in seq since schema 5 (the store clamps it), so
// the first record at or after a time is a binary search over seq: a few
// dozen rowid lookups, whatever the size of the log. Records written before
// schema 5 may run back in time by up to the store's time_disorder_ms, and
// pruned records (time_ms 0) are a prefix of the log; callers widen the
// time they search for accordingly (audit_reader.cpp explains how). And the
// newest seq. Used by the store's writer (pruning), the audit reader and the
// indexer, each on its own connection.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <optional>
#include <string>

#include "common/status.h"

namespace liaison::broker::audit_seq {

// A value of the audit_info table (schema 5), or of another key/value
// table of the store's (store_info, schema 8), if the store has it.
inline std::optional<int64_t> Info(sqlite3* db, const char* key, const char* table = "audit_info") {
  sqlite3_stmt* q = nullptr;
  const std::string sql = std::string("SELECT value FROM ") + table + " WHERE key = ?";
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &q, nullptr) != SQLITE_OK) {
    sqlite3_finalize(q);
    return std::nullopt;
  }
  sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
  std::optional<int64_t> out;
  if (sqlite3_step(q) == SQLITE_ROW) out = sqlite3_column_int64(q, 0);
  sqlite3_finalize(q);
  return out;
}

// The newest record's seq, 0 for an empty log. (ORDER BY ... LIMIT 1: the
// audit log's virtual table reads its last chunk only; MAX(seq) would read
// every record.)
inline Result<uint64_t> LastSeq(sqlite3* db) {
  sqlite3_stmt* q = nullptr;
  int rc = sqlite3_prepare_v2(db, "SELECT seq FROM audit_log ORDER BY seq DESC LIMIT 1", -1, &q, nullptr);
  if (rc == SQLITE_OK) rc = sqlite3_step(q);
  const uint64_t seq = rc == SQLITE_ROW ? static_cast<uint64_t>(sqlite3_column_int64(q, 0)) : 0;
  sqlite3_finalize(q);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    return Status::IoError(std::string("audit log size: ") + sqlite3_errmsg(db));
  }
  return seq;
}

// The first seq in [1, max_seq + 1] whose record's time_ms is >= time_ms
// (max_seq + 1 when there is none), assuming time is monotonic in seq.
inline Result<uint64_t> FirstAtOrAfter(sqlite3* db, uint64_t max_seq, int64_t time_ms) {
  sqlite3_stmt* q = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT time_ms FROM audit_log WHERE seq = ?", -1, &q, nullptr) != SQLITE_OK) {
    sqlite3_finalize(q);
    return Status::IoError(std::string("audit time lookup: ") + sqlite3_errmsg(db));
  }
  uint64_t lo = 0, hi = max_seq + 1;  // time(lo) < time_ms <= time(hi), with sentinels
  while (hi - lo > 1) {
    const uint64_t mid = lo + (hi - lo) / 2;
    sqlite3_reset(q);
    sqlite3_bind_int64(q, 1, static_cast<int64_t>(mid));
    if (sqlite3_step(q) != SQLITE_ROW) {
      sqlite3_finalize(q);
      return Status::Corruption("the audit log has no record " + std::to_string(mid));
    }
    if (sqlite3_column_int64(q, 0) >= time_ms) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  sqlite3_finalize(q);
  return hi;
}

}  // namespace liaison::broker::audit_seq
