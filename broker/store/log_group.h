// Internal to broker/store: one group commit as the store's commit log
// (commit_log.h) holds it, and as the applier writes it into SQLite.
//
// The writer makes a LogGroup of everything one commit changes: the audit
// records with their seq, time, canonical leaf and leaf hash; the queue
// changes of every batch that was not a duplicate; the recalls with their
// time; pruning; and the checkpoint row, if this commit writes one. Every
// value is decided before the group is logged, so applying it (now, or
// after a crash, from the log) writes exactly the same rows: the applier
// never decides anything.
//
// The encoding is private to the log (length-prefixed, little-endian,
// version byte first); the log's CRC guards it, and DecodeLogGroup checks
// every length anyway and refuses what does not parse. Leaves are stored
// and the record columns are decoded from them again, so a replayed record
// is the signed one.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "broker/store/store.h"
#include "common/audit_record.h"
#include "common/merkle.h"
#include "common/status.h"

namespace liaison::broker {

struct LoggedRecord {
  audit::Record record;  // seq and time_ms as committed
  std::string leaf;      // EncodeLeaf(record)
  merkle::Hash hash;     // LeafHash(leaf)
};

struct LogGroup {
  uint64_t lsn = 0;                   // the commit log's entry
  std::vector<LoggedRecord> records;  // in seq order
  // The queue changes of each batch that was not a duplicate, in commit
  // order (their records are in records; Batch::records is empty).
  std::vector<Batch> batches;
  std::vector<std::pair<int64_t, int64_t>> recalls;  // message row, recalled_ms
  struct Prune {
    uint64_t after = 0, through = 0;  // records after..through lose their fields
  };
  std::vector<Prune> prunes;
  struct CheckpointRow {
    uint64_t tree_size = 0;
    int64_t time_ms = 0;
    std::string text;
  };
  std::optional<CheckpointRow> checkpoint_row;
  size_t bytes = 0;  // its encoding's size (not encoded)
  // When the writer handed it to the applier (not encoded; a group read
  // back from the log at Open has none and is applied at once).
  std::chrono::steady_clock::time_point logged{};
};

// What groups logged after those being applied say about them (the
// applier's look-ahead, Store::Impl::TakeGroups): the deliveries they
// finish, in commit order, and the bodies they drop. Only facts already in
// the commit log, so the applier may write them early.
struct LaterChanges {
  std::vector<std::pair<int64_t, DeliveryState>> finished;
  std::vector<int64_t> drop_bodies;
  void clear() {
    finished.clear();
    drop_bodies.clear();
  }
};

// Appends the encoding of g (without its lsn: the log keeps that) to *out.
void EncodeLogGroup(const LogGroup& g, std::string* out);
// Parses an encoding; Corruption if it does not parse or a leaf is not a
// version-1 leaf.
Result<LogGroup> DecodeLogGroup(std::string_view bytes);

}  // namespace liaison::broker
