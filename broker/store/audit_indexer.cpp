#include "broker/store/audit_indexer.h"

#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <mutex>
#include <thread>
#include <tuple>
#include <vector>

#include "broker/store/audit_chunks.h"
#include "broker/store/audit_index.h"
#include "broker/store/audit_seq.h"
#include "broker/store/many_rows.h"

namespace liaison::broker {
namespace {

// Records indexed in one transaction of the index.
constexpr uint64_t kChunk = 50'000;
// The thread indexes once this many records wait, or once the oldest of them
// has waited kIndexDelay: one index transaction per commit of the store
// cost more than the inserts themselves when commits are small. Queries scan
// what waits (a few milliseconds' worth at most).
constexpr uint64_t kIndexAtRecords = 4096;
constexpr auto kIndexDelay = std::chrono::milliseconds(250);
// At a stop, what is left is indexed first when it is at most this much
// (about a second of work); more is left for the next start.
constexpr uint64_t kCatchUpOnStop = 300'000;
// The index connection's page cache: the newest bucket and the upper levels
// of the B-tree (64 MiB at most; used only as pages are touched).
constexpr const char* kIndexCacheSize = "PRAGMA cache_size = -65536";
// The index's WAL is copied into its file (an automatic checkpoint: two
// fdatasyncs) once it holds this many pages, 512 KiB. SQLite's default, 1,000
// pages, made a 4 MiB checkpoint every two seconds at 2,000 msgs/s; while its
// data went to the disk, the commit log's fdatasync that publishes wait for
// took 3-7 ms instead of 0.2, and each time some thirty messages were late
// (docs/benchmarks.md, "The twenty-fourth session"). Smaller checkpoints,
// more often, delay the log's syncs much less.
constexpr const char* kIndexWalCheckpoint = "PRAGMA wal_autocheckpoint = 128";
// Entries handed over by the applier and not yet indexed, at most (about
// 24 MiB; 4 a record). Runs past it are left out, and read from the log.
constexpr size_t kMaxHandedEntries = size_t{1} << 20;
// Rows per INSERT statement (many_rows.h).
constexpr int kRowsPerInsert = 64;

Status SqlError(sqlite3* db, const std::string& what) {
  return Status::IoError("audit index: " + what + ": " + (db ? sqlite3_errmsg(db) : "no database"));
}

Status Exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err ? err : "unknown";
    sqlite3_free(err);
    return Status::IoError("audit index: " + m);
  }
  return Status::Ok();
}

void RemoveIndexFiles(const std::string& path) {
  std::error_code ec;
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) std::filesystem::remove(path + suffix, ec);
}

}  // namespace

struct AuditIndexer::Impl {
  std::string store_path, index_path;
  sqlite3* log = nullptr;  // the store, read-only
  sqlite3* ix = nullptr;   // the index
  sqlite3_stmt* read_records = nullptr;
  sqlite3_stmt* insert = nullptr;       // one row
  sqlite3_stmt* insert_many = nullptr;  // kRowsPerInsert rows
  sqlite3_stmt* set_meta = nullptr;
  std::mutex work_mu;  // one indexing pass at a time
  std::atomic<uint64_t> committed{0};
  std::atomic<uint64_t> indexed{0};
  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;  // guarded by mu
  // Runs of records' entries from the applier (Committed), in seq order;
  // guarded by mu.
  struct Handed {
    uint64_t first = 0, last = 0;
    std::vector<audit_index::Entry> entries;
    std::string last_hash;
  };
  std::deque<Handed> handed;
  size_t handed_entries = 0;
  bool keep_handed = false;  // the thread runs (set before it starts)
  std::thread thread;

  ~Impl() {
    sqlite3_finalize(read_records);
    sqlite3_finalize(insert);
    sqlite3_finalize(insert_many);
    sqlite3_finalize(set_meta);
    if (ix) sqlite3_close_v2(ix);
    if (log) sqlite3_close_v2(log);
  }

  Status OpenIndex();
  Status CheckAgainstLog();
  bool TakeHanded(uint64_t from, uint64_t* to, std::vector<audit_index::Entry>* entries, std::string* last_hash);
  Status ReadEntries(uint64_t from, uint64_t to, std::vector<audit_index::Entry>* entries, std::string* last_hash);
  Status IndexChunk(uint64_t to);
  Status CatchUp();
  void Loop();
};

Status AuditIndexer::Impl::OpenIndex() {
  const mode_t old_mask = ::umask(0077);
  const int rc = sqlite3_open_v2(index_path.c_str(), &ix,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  ::umask(old_mask);
  if (rc != SQLITE_OK) return SqlError(ix, "cannot open " + index_path);
  sqlite3_busy_timeout(ix, 5000);
  // NORMAL: no fsync at commit; WAL still keeps every commit atomic, and a
  // commit lost to a power cut is indexed again from the log.
  for (const char* sql : {"PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", kIndexWalCheckpoint,
                          kIndexCacheSize, audit_index::kSchema}) {
    if (Status s = Exec(ix, sql); !s.ok()) return s;
  }
  // Format: a file of another one (format 1 had the tables ix_meta and ix,
  // which a broker of format 1 also adds to a file of this one) is removed
  // and rebuilt (Open); a new file is given this one.
  {
    sqlite3_stmt* q = nullptr;
    if (sqlite3_prepare_v2(ix,
                           "SELECT (SELECT value FROM ix2_meta WHERE key = 'format'), "
                           "(SELECT COUNT(*) FROM sqlite_master WHERE name IN ('ix', 'ix_meta'))",
                           -1, &q, nullptr) != SQLITE_OK ||
        sqlite3_step(q) != SQLITE_ROW) {
      sqlite3_finalize(q);
      return SqlError(ix, "format");
    }
    const bool has_format = sqlite3_column_type(q, 0) == SQLITE_INTEGER;
    const int64_t format = sqlite3_column_int64(q, 0);
    const int64_t old_tables = sqlite3_column_int64(q, 1);
    sqlite3_finalize(q);
    if (old_tables > 0 || (has_format && format != audit_index::kFormat)) {
      return Status::InvalidArgument("audit index: it is of format " + std::to_string(has_format ? format : 1) +
                                     ", this broker's is " + std::to_string(audit_index::kFormat));
    }
    if (!has_format) {
      const std::string sql =
          "INSERT INTO ix2_meta(key, value) VALUES ('format', " + std::to_string(audit_index::kFormat) + ")";
      if (Status s = Exec(ix, sql.c_str()); !s.ok()) return s;
    }
  }
  // Rows of a word already in the index (a word the previous chunk began)
  // gain their new bits.
  constexpr const char* kInsert =
      "INSERT INTO ix2(bucket, k, word, bits) VALUES (?,?,?,?) "
      "ON CONFLICT(bucket, k, word) DO UPDATE SET bits = bits | excluded.bits";
  const std::string many = ManyRows(kInsert, kRowsPerInsert);
  if (sqlite3_prepare_v3(ix, kInsert, -1, SQLITE_PREPARE_PERSISTENT, &insert, nullptr) != SQLITE_OK ||
      sqlite3_prepare_v3(ix, many.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &insert_many, nullptr) != SQLITE_OK ||
      sqlite3_prepare_v3(ix, "INSERT OR REPLACE INTO ix2_meta(key, value) VALUES (?,?)", -1, SQLITE_PREPARE_PERSISTENT,
                         &set_meta, nullptr) != SQLITE_OK) {
    return SqlError(ix, "prepare");
  }
  return Status::Ok();
}

// The watermark must name a record of this log, with the leaf hash it had
// when it was indexed; otherwise the index is of another log (a restored or
// truncated store) and is emptied, to be rebuilt.
Status AuditIndexer::Impl::CheckAgainstLog() {
  const Result<uint64_t> last = audit_seq::LastSeq(log);
  if (!last.ok()) return last.status();
  const uint64_t max_seq = *last;
  uint64_t through = 0;
  std::string through_hash;
  {
    sqlite3_stmt* q = nullptr;
    if (sqlite3_prepare_v2(ix, "SELECT key, value FROM ix2_meta", -1, &q, nullptr) != SQLITE_OK) {
      sqlite3_finalize(q);
      return SqlError(ix, "watermark");
    }
    while (sqlite3_step(q) == SQLITE_ROW) {
      const std::string key = reinterpret_cast<const char*>(sqlite3_column_text(q, 0));
      if (key == "indexed_through") through = static_cast<uint64_t>(sqlite3_column_int64(q, 1));
      if (key == "through_hash" && sqlite3_column_type(q, 1) == SQLITE_BLOB) {
        through_hash.assign(static_cast<const char*>(sqlite3_column_blob(q, 1)), sqlite3_column_bytes(q, 1));
      }
    }
    sqlite3_finalize(q);
  }
  bool matches = through <= max_seq;
  if (matches && through > 0) {
    sqlite3_stmt* q = nullptr;
    sqlite3_prepare_v2(log, "SELECT leaf_hash FROM audit_log WHERE seq = ?", -1, &q, nullptr);
    sqlite3_bind_int64(q, 1, static_cast<int64_t>(through));
    matches = sqlite3_step(q) == SQLITE_ROW && sqlite3_column_bytes(q, 0) == static_cast<int>(through_hash.size()) &&
              std::memcmp(sqlite3_column_blob(q, 0), through_hash.data(), through_hash.size()) == 0;
    sqlite3_finalize(q);
  }
  if (!matches) {
    spdlog::warn(
        "store: the audit index {} does not match the audit log (indexed through {}, the log has {}); "
        "rebuilding it",
        index_path, through, max_seq);
    if (Status s = Exec(ix, "BEGIN IMMEDIATE; DELETE FROM ix2; DELETE FROM ix2_meta WHERE key <> 'format'; COMMIT");
        !s.ok()) {
      Exec(ix, "ROLLBACK");
      return s;
    }
    through = 0;
  }
  indexed = through;
  committed = max_seq;
  return Status::Ok();
}

// The entries of records from+1.. as the applier handed them over, a whole
// run at a time: *to becomes the last record taken (it may pass the *to
// asked for, by part of one run). False if they do not begin at from+1.
bool AuditIndexer::Impl::TakeHanded(uint64_t from, uint64_t* to, std::vector<audit_index::Entry>* entries,
                                    std::string* last_hash) {
  std::lock_guard lock(mu);
  while (!handed.empty() && handed.front().last <= from) {
    handed_entries -= handed.front().entries.size();
    handed.pop_front();
  }
  if (handed.empty() || handed.front().first != from + 1) return false;
  uint64_t next = from + 1;
  while (!handed.empty() && handed.front().first == next && (next == from + 1 || handed.front().last <= *to)) {
    Handed& h = handed.front();
    handed_entries -= h.entries.size();
    if (entries->empty()) {
      entries->swap(h.entries);
    } else {
      entries->insert(entries->end(), h.entries.begin(), h.entries.end());
    }
    next = h.last + 1;
    last_hash->swap(h.last_hash);
    handed.pop_front();
  }
  *to = next - 1;
  return true;
}

// The entries of records (from, to], read from the log.
Status AuditIndexer::Impl::ReadEntries(uint64_t from, uint64_t to, std::vector<audit_index::Entry>* entries,
                                       std::string* last_hash) {
  entries->reserve(static_cast<size_t>(to - from) * 4);
  uint64_t expected = from + 1;
  sqlite3_bind_int64(read_records, 1, static_cast<int64_t>(from));
  sqlite3_bind_int64(read_records, 2, static_cast<int64_t>(to));
  auto text = [&](int column) {
    const char* p = reinterpret_cast<const char*>(sqlite3_column_text(read_records, column));
    return std::string_view(p ? p : "", static_cast<size_t>(sqlite3_column_bytes(read_records, column)));
  };
  int rc;
  while ((rc = sqlite3_step(read_records)) == SQLITE_ROW) {
    const auto seq = static_cast<uint64_t>(sqlite3_column_int64(read_records, 0));
    if (seq != expected) break;
    ++expected;
    audit_index::AddEntries(entries, seq, text(1), text(2), text(3), text(4));
    if (seq == to) {
      last_hash->assign(static_cast<const char*>(sqlite3_column_blob(read_records, 5)),
                        sqlite3_column_bytes(read_records, 5));
    }
  }
  sqlite3_reset(read_records);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(log, "reading the log");
  if (expected != to + 1) {
    return Status::Corruption("audit index: the audit log has no record " + std::to_string(expected));
  }
  return Status::Ok();
}

// Indexes records (indexed, to] in one transaction of the index (or up to
// the end of a run the applier handed over).
Status AuditIndexer::Impl::IndexChunk(uint64_t to) {
  const uint64_t from = indexed.load();
  if (to <= from) return Status::Ok();
  // (bucket, key, seq) for each value of each record, then one row per
  // (bucket, key, word) with the bits of its records.
  std::vector<audit_index::Entry> entries;
  std::string last_hash;
  if (!TakeHanded(from, &to, &entries, &last_hash)) {
    if (Status s = ReadEntries(from, to, &entries, &last_hash); !s.ok()) return s;
  }
  // In key order, the inserts walk the newest bucket once, front to back.
  std::sort(entries.begin(), entries.end());
  struct Row {
    int64_t bucket, key, word, bits;
  };
  std::vector<Row> rows;
  for (const auto& [bucket, key, seq] : entries) {
    const auto s = static_cast<uint64_t>(seq);
    if (!rows.empty() && rows.back().key == key && rows.back().bucket == bucket &&
        rows.back().word == audit_index::Word(s)) {
      rows.back().bits |= audit_index::Bit(s);  // (sender = recipient sets the same bit twice)
    } else {
      rows.push_back({bucket, key, audit_index::Word(s), audit_index::Bit(s)});
    }
  }
  if (Status s = Exec(ix, "BEGIN IMMEDIATE"); !s.ok()) return s;
  auto fail = [&](Status s) {
    Exec(ix, "ROLLBACK");
    return s;
  };
  const int per_row = sqlite3_bind_parameter_count(insert);
  size_t i = 0;
  while (i < rows.size()) {
    const bool many = rows.size() - i >= static_cast<size_t>(kRowsPerInsert);
    sqlite3_stmt* q = many ? insert_many : insert;
    const int n = many ? kRowsPerInsert : 1;
    for (int r = 0; r < n; ++r, ++i) {
      int p = per_row * r;
      for (int64_t v : {rows[i].bucket, rows[i].key, rows[i].word, rows[i].bits}) sqlite3_bind_int64(q, ++p, v);
    }
    const int w = sqlite3_step(q);
    sqlite3_reset(q);
    if (w != SQLITE_DONE) return fail(SqlError(ix, "insert"));
  }
  sqlite3_bind_text(set_meta, 1, "indexed_through", -1, SQLITE_STATIC);
  sqlite3_bind_int64(set_meta, 2, static_cast<int64_t>(to));
  int w = sqlite3_step(set_meta);
  sqlite3_reset(set_meta);
  if (w != SQLITE_DONE) return fail(SqlError(ix, "watermark"));
  sqlite3_bind_text(set_meta, 1, "through_hash", -1, SQLITE_STATIC);
  sqlite3_bind_blob(set_meta, 2, last_hash.data(), static_cast<int>(last_hash.size()), SQLITE_STATIC);
  w = sqlite3_step(set_meta);
  sqlite3_reset(set_meta);
  if (w != SQLITE_DONE) return fail(SqlError(ix, "watermark"));
  if (Status s = Exec(ix, "COMMIT"); !s.ok()) return fail(s);
  indexed = to;
  return Status::Ok();
}

Status AuditIndexer::Impl::CatchUp() {
  std::lock_guard lock(work_mu);
  for (;;) {
    const uint64_t target = committed.load();
    const uint64_t from = indexed.load();
    if (from >= target) return Status::Ok();
    if (Status s = IndexChunk(std::min(target, from + kChunk)); !s.ok()) return s;
  }
}

void AuditIndexer::Impl::Loop() {
  pthread_setname_np(pthread_self(), "store-indexer");
  bool failing = false;
  for (;;) {
    {
      std::unique_lock lock(mu);
      auto pending = [&] { return committed.load() - indexed.load(); };
      cv.wait_for(lock, std::chrono::milliseconds(failing ? 1000 : 500),
                  [&] { return stopping || (!failing && pending() > 0); });
      if (stopping) break;
      if (failing || pending() == 0) {
        failing = false;  // retry after the pause
      } else if (pending() < kIndexAtRecords) {
        // Let a few commits gather.
        cv.wait_for(lock, kIndexDelay, [&] { return stopping || pending() >= kIndexAtRecords; });
        if (stopping) break;
      }
    }
    // One chunk at a time, so that a stop is noticed between chunks.
    Status s;
    {
      std::lock_guard lock(work_mu);
      const uint64_t from = indexed.load();
      s = IndexChunk(std::min(committed.load(), from + kChunk));
    }
    if (!s.ok() && !failing) spdlog::error("store: {} (queries scan the records not yet indexed)", s.message());
    failing = !s.ok();
  }
  if (committed.load() - indexed.load() <= kCatchUpOnStop) {
    if (Status s = CatchUp(); !s.ok()) spdlog::error("store: {}", s.message());
  }
}

Result<std::unique_ptr<AuditIndexer>> AuditIndexer::Open(const std::string& store_path, bool start) {
  auto impl = std::make_unique<Impl>();
  impl->store_path = store_path;
  impl->index_path = audit_index::PathFor(store_path);
  if (sqlite3_open_v2(store_path.c_str(), &impl->log, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) !=
      SQLITE_OK) {
    return SqlError(impl->log, "cannot open " + store_path);
  }
  if (Status s = audit_chunks::Register(impl->log); !s.ok()) return s;
  sqlite3_busy_timeout(impl->log, 5000);
  if (sqlite3_prepare_v3(impl->log,
                         "SELECT seq, message_id, case_id, sender, recipient, leaf_hash FROM audit_log "
                         "WHERE seq > ? AND seq <= ? ORDER BY seq",
                         -1, SQLITE_PREPARE_PERSISTENT, &impl->read_records, nullptr) != SQLITE_OK) {
    return SqlError(impl->log, "prepare");
  }
  Status s = impl->OpenIndex();
  if (s.ok()) s = impl->CheckAgainstLog();
  if (!s.ok()) {
    // An index that cannot be read is only a cache: start a new one.
    spdlog::warn("store: the audit index {} cannot be used ({}); rebuilding it", impl->index_path, s.message());
    sqlite3_finalize(impl->insert);
    sqlite3_finalize(impl->insert_many);
    sqlite3_finalize(impl->set_meta);
    impl->insert = impl->insert_many = impl->set_meta = nullptr;
    sqlite3_close_v2(impl->ix);
    impl->ix = nullptr;
    RemoveIndexFiles(impl->index_path);
    s = impl->OpenIndex();
    if (s.ok()) s = impl->CheckAgainstLog();
    if (!s.ok()) return s;
  }
  Impl* raw = impl.get();
  if (start) {
    impl->keep_handed = true;
    impl->thread = std::thread([raw] { raw->Loop(); });
  }
  return std::unique_ptr<AuditIndexer>(new AuditIndexer(std::move(impl)));
}

AuditIndexer::AuditIndexer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

AuditIndexer::~AuditIndexer() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

void AuditIndexer::Committed(uint64_t first, uint64_t seq, std::vector<audit_index::Entry> entries,
                             std::string last_hash) {
  uint64_t before = 0;
  {
    std::lock_guard lock(impl_->mu);  // so the thread cannot miss the wake-up
    before = impl_->committed.exchange(seq);
    // Past the bound the new run is left out (read from the log when its
    // turn comes); the runs kept are the ones the indexer takes next.
    if (impl_->keep_handed && first <= seq && impl_->handed_entries + entries.size() <= kMaxHandedEntries) {
      impl_->handed_entries += entries.size();
      impl_->handed.push_back({first, seq, std::move(entries), std::move(last_hash)});
    }
  }
  // The thread waits for the first record to index, then for
  // kIndexAtRecords of them (or kIndexDelay): only those two moments need a
  // wake-up. Waking it on every commit (to find the predicate still false)
  // cost a futex call here and two context switches there, per commit. Its
  // waits check `committed` under the lock, so none is missed.
  const uint64_t indexed = impl_->indexed.load();
  const bool first_pending = before <= indexed;
  const bool enough = seq - indexed >= kIndexAtRecords && before - std::min(before, indexed) < kIndexAtRecords;
  if (first_pending || enough) impl_->cv.notify_one();
}

uint64_t AuditIndexer::indexed_through() const {
  return impl_->indexed.load();
}

Status AuditIndexer::CatchUp() {
  return impl_->CatchUp();
}

}  // namespace liaison::broker
