// The audit log in the store: records kept in chunks of up to kMaxRecords
// consecutive records, one row of `audit_chunks` each, and read through
// `audit_log`, a virtual table (module liaison_audit_log) that gives every
// record as a row of its own, in the shape the table had before (schema 10,
// docs/broker.md "What the store holds").
//
// Why: a row per record was a third of the applier's work at full load
// (docs/benchmarks.md, twenty-third session); a row per 16 records writes
// the same bytes with a sixteenth of SQLite's work per row. Queries,
// exports, the indexer and the time search read `audit_log` as before; only
// the applier (writing), pruning (rewriting) and the start (the tree and
// its checks, Scan) touch `audit_chunks` itself.
//
// A chunk row: first_seq (INTEGER PRIMARY KEY), n (its records: first_seq
// .. first_seq + n - 1, 1 <= n <= kMaxRecords), times (n 8-byte
// little-endian time_ms), hashes (n 32-byte leaf hashes), leaves (n times a
// 4-byte little-endian length and the leaf's bytes; a pruned record's leaf
// is empty and its time 0).
//
// Thread-safety: Register is safe on any connection; a connection with the
// module is used as any SQLite connection is.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace liaison::broker::audit_chunks {

inline constexpr int kMaxRecords = 16;

// One record of a chunk.
struct Entry {
  int64_t time_ms = 0;
  std::string_view leaf;  // empty once pruned
  std::string_view hash;  // 32 bytes
};

// A chunk's three blob columns.
struct Blobs {
  std::string times, hashes, leaves;
};

// Encodes entries (at most kMaxRecords) into *out, whose strings are
// reused.
void Encode(const std::vector<Entry>& entries, Blobs* out);

// A chunk row's blobs, checked and split into entries (views into the
// blobs, valid while they are). leaves may be null: only times and hashes
// are then read (entry leaves stay empty).
Status Decode(int64_t first_seq, int64_t n, std::string_view times, std::string_view hashes,
              const std::string_view* leaves, std::vector<Entry>* out);

// Registers the module liaison_audit_log on db, once per connection (a
// second call is harmless). Every connection that reads `audit_log` of a
// store (in main or an attached schema) needs it.
Status Register(sqlite3* db);

// The statement that inserts one chunk, and its parameters bound for the
// chunk of entries (at most kMaxRecords, consecutive from first_seq),
// encoded into *blobs, which must outlive the statement's run.
inline constexpr const char* kInsert =
    "INSERT INTO audit_chunks(first_seq, n, times, hashes, leaves) VALUES (?,?,?,?,?)";
void BindInsert(sqlite3_stmt* insert, int64_t first_seq, const std::vector<Entry>& entries, Blobs* blobs);

// Migration 10 on db (inside its transaction, the module registered): the
// rows of the table audit_log copied into chunks (consecutive seqs only:
// a gap starts a new chunk, and the start's check reports it), the table
// dropped and the virtual table created in its place.
Status MigrateRows(sqlite3* db);

// Prunes records after < seq <= through on db (the applier's connection,
// in its transaction): their leaves emptied and times set to 0, hashes
// kept.
Status Prune(sqlite3* db, uint64_t after, uint64_t through);

// The highest seq and the number of records, whether each chunk starts
// where the one before ended (the start's check that the sequence has no
// gaps or overlaps), and the last record's time; each leaf hash in chunk
// order to f.
struct Extent {
  uint64_t max_seq = 0;
  uint64_t count = 0;
  bool contiguous = true;
  int64_t last_time_ms = 0;
};
Status Scan(sqlite3* db, Extent* extent, const std::function<void(std::string_view hash)>& f);

}  // namespace liaison::broker::audit_chunks
