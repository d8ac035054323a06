// Internal to the store: Store::Impl, the state that the store's threads
// share, and the helpers and constants that more than one of the store's
// files needs. Only broker/store/store*.cpp include it. The files:
//   store.cpp         Open and closing, the public methods, the reads, the
//                     WAL checkpointer (WalLoop)
//   store_schema.cpp  the schema's migrations, the applier's statements
//   store_writer.cpp  the writer: makes groups of the queued batches, signs
//                     and logs them (WriterLoop, Commit); done()s (DoneLoop)
//   store_apply.cpp   the applier: writes logged groups into the database
//                     (ApplyLoop, Apply); waiting for it (WaitApplied)
//   store_export.cpp  Store::ExportAudit (a file of its own, no Impl)
// The constants stay together below: their comments are one account of how
// the writer, the applier and the WAL checkpointer share the work.
//
// Thread-safety: each member of Impl says which thread owns it or which
// mutex guards it. A Stmt belongs to one connection, used by one thread at
// a time.
#pragma once

#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "broker/store/audit_chunks.h"
#include "broker/store/audit_indexer.h"
#include "broker/store/commit_log.h"
#include "broker/store/id_filter.h"
#include "broker/store/log_group.h"
#include "broker/store/store.h"
#include "common/checkpoint.h"
#include "common/merkle.h"
#include "common/sha256.h"
#include "common/status.h"

namespace liaison::broker {

constexpr size_t kMaxRecordsPerCommit = 50'000;
// Rows per INSERT statement (broker/store/many_rows.h) of messages.
constexpr int kMessageRowsPerInsert = 16;
constexpr int64_t kCheckpointRowEveryMs = 1000;
// Records pruned in one transaction: pruning a year of a busy log must not
// hold up publishes for long.
constexpr uint64_t kPruneChunk = 20'000;
// The WAL (docs/broker.md, "What the store holds"). SQLite starts the WAL
// over (writes from its beginning again) only when a transaction begins
// with every frame already copied into the database and no reader in the
// WAL. A checkpointer on another thread never sees that under steady load:
// the writer always commits while it copies, so the WAL grew without end
// (200 MB in 5 s at 2,000 messages/s), and the TRUNCATE that removes
// deleted bodies from it then held the writer for 80-120 ms.
//
// So: the checkpointer copies frames soon after they are written (woken
// once this many are uncopied), in small steps that never keep the disk
// busy for long;
constexpr int kWakeCheckpointerFrames = 256;
// once the WAL holds this many frames (8 MiB), the writer, between two
// commits, copies what is left itself (a few frames, nothing else can
// commit meanwhile), so its next transaction starts the WAL over; and the
// WAL file is cut back to this size when it starts over (SQLite's
// journal_size_limit), so it is reused rather than grown and truncated.
constexpr int kRestartWalFrames = 2048;
// The writer's own copy holds up commits while it runs (and syncs the
// database file), so it waits until the checkpointer has left at most this
// many frames. Commits of thousands of frames each (an audit log appended
// as fast as it goes) never leave so few: there the WAL grows as before,
// until the writer pauses or the 30-second TRUNCATE (copying thousands of
// frames on the writer after every commit halved the append rate).
constexpr int kRestartCopyFrames = 64;
constexpr const char* kWalSizeLimit = "PRAGMA journal_size_limit = 16777216";
// Deleted bodies must leave the WAL file too (DESIGN.md). A frame written
// before the WAL started over lies beyond the new frames until they
// overwrite it, so the checkpointer truncates the WAL (TRUNCATE: copies the
// rest, empties the file; it holds up the writer while it runs) when
// bodies were deleted and the writer has been quiet this long,
constexpr auto kQuietForTruncate = std::chrono::milliseconds(50);
// but not more often than this, and in any case within
// Options::wal_purge_within of the first deletion it has not purged (30 s:
// under load that never pauses, the stall is paid then).
constexpr auto kTruncateWalEvery = std::chrono::seconds(1);
// A lazy batch (Batch::lazy) waits up to Options::lazy_linger (2 ms) for
// company. At a steady 2,000 messages/s a publish arrives every half
// millisecond, so the recipients' acknowledgements ride with the publishes'
// commits instead of paying a commit each; on an idle broker an
// acknowledgement is durable within that time. This many lazy records are
// committed without waiting any longer.
constexpr size_t kLazyFlushRecords = 512;
// Commits of at most this many batches run their done()s on the writer
// when the completion thread has nothing to do (Store::Impl::WriterLoop).
constexpr size_t kDoneHereItems = 16;
// The applier's page cache (SQLite's default is 2 MiB). The audit log has
// no index since schema 6, and the messages' index takes time-ordered
// (UUIDv7) ids at its end, so a commit touches the last pages of a few
// B-trees, and the rows it updates were mostly applied moments before.
// 16 MiB holds those. The 256 MiB this once was (for index pages spread over
// the file) only filled up with pages never read again, each a fresh page
// the kernel had to fault in: 7 % of the applier's time in a flood.
constexpr const char* kApplierCacheSize = "PRAGMA cache_size = -16384";
// The commit log (commit_log.h; docs/broker.md, "The commit log"): a commit
// is durable once its group is in the log; the applier writes groups into
// SQLite behind it, every Options::apply_delay (Options::apply_early while
// the groups waiting weigh less than this: at 2,000 messages/s, 20 ms of
// them weigh about 150),
constexpr size_t kApplyEarlyWeight = 1024;
// The applier runs once the oldest group has waited that long plus a hold
// of 1/kApplyHoldDivisor of it, and writes the groups that have waited at
// least the hold, netting out what the groups logged since say about them
// (LaterChanges): so a message's body stays out of the database whenever
// its acknowledgement came within the hold, and the applier still runs
// about every apply_early or apply_delay under a steady load. A group is
// written between 0.5 and 1.5 times that after it was logged. Writing
// every group at once, a message logged just before the applier ran got
// its body written, then dropped by the next transaction: 23 % of them at
// 24,000 messages a second (docs/benchmarks.md, twenty-eighth session).
// Between two applies the database may so hold a later commit's finished
// deliveries and dropped bodies before its audit records; the log holds
// both, and a restart applies the rest.
constexpr int kApplyHoldDivisor = 2;
// or at once when this many records wait,
constexpr size_t kApplyNowRecords = 50'000;
// Keys Forget takes out of the unapplied per hold of its lock.
constexpr size_t kForgetChunk = 256;
// and the writer refuses commits while this much is logged but not applied
// (the database cannot be written: a full disk, an I/O error), rather than
// hold ever more of it in memory.
constexpr size_t kMaxUnappliedBytes = 256u << 20;
// The applier lets the log release its current segment (commit_log.h)
// once no group has come for this long.
constexpr auto kQuietForRelease = std::chrono::milliseconds(100);
// After a failed apply, the applier tries again this much later, doubling
// up to kApplyRetryMax while it keeps failing.
constexpr auto kApplyRetry = std::chrono::milliseconds(100);
constexpr auto kApplyRetryMax = std::chrono::milliseconds(3200);
constexpr const char* kLogApplied = "log_applied";  // store_info: the last commit log entry in the database
// store_info: the highest delivery id applied, with a row or without (schema 9).
constexpr const char* kLastDeliveryId = "last_delivery_id";

// Defined in store.cpp.
// The connection's last error: IoError for a full disk or an I/O error,
// Corruption for a damaged file, Internal otherwise.
Status SqlError(sqlite3* db, const std::string& what);
Status Exec(sqlite3* db, const char* sql);

// A statement prepared once, reset after each use.
class Stmt {
 public:
  Stmt() = default;
  Status Prepare(sqlite3* db, const char* sql) {
    db_ = db;
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s_, nullptr) != SQLITE_OK) {
      return SqlError(db, "prepare");
    }
    return Status::Ok();
  }
  ~Stmt() { sqlite3_finalize(s_); }
  sqlite3_stmt* get() { return s_; }
  int parameters() const { return sqlite3_bind_parameter_count(s_); }
  void Text(int i, const std::string& v) { sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC); }
  void Blob(int i, const void* p, size_t n) { sqlite3_bind_blob(s_, i, p, static_cast<int>(n), SQLITE_STATIC); }
  void Int(int i, int64_t v) { sqlite3_bind_int64(s_, i, v); }
  // Binds integers to the parameters in order, and runs.
  template <typename... V>
  Status RunWith(const char* what, V... values) {
    int i = 1;
    (Int(i++, static_cast<int64_t>(values)), ...);
    return Run(what);
  }
  Status Run(const char* what) {
    const int rc = sqlite3_step(s_);
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) return SqlError(db_, what);
    return Status::Ok();
  }

 private:
  sqlite3* db_ = nullptr;
  sqlite3_stmt* s_ = nullptr;
};

// What a logged group counts for against kApplyNowRecords.
inline size_t Weight(const LogGroup& g) { return g.records.size() + g.batches.size(); }

struct Store::Impl {
  Options options;
  sqlite3* db = nullptr;  // the applier's (and Open's): every write to the database
  std::unique_ptr<audit::Signer> signer;
  std::string digest_key;
  std::unique_ptr<crypto::HmacSha256> body_mac;  // keyed with digest_key
  Stmt insert_chunk, insert_checkpoint, set_info, set_store_info;
  // Audit records not yet inserted (views into the groups being applied),
  // seqs from pending_first_seq: they go in chunks of up to
  // audit_chunks::kMaxRecords, encoded in chunk_blobs (applier only).
  std::vector<audit_chunks::Entry> pending_records;
  uint64_t pending_first_seq = 0;
  audit_chunks::Blobs chunk_blobs;
  Stmt insert_message, insert_messages /* kMessageRowsPerInsert rows */, insert_delivery, finish_delivery,
      set_attempts, drop_body, mark_recalled;
  // The writer's reads (duplicates, pruning) on a connection of its own.
  sqlite3* wdb = nullptr;
  Stmt find_duplicate;
  // Reads (FindMessage, ...) on their own connection.
  sqlite3* reader = nullptr;
  mutable std::mutex reader_mu;
  std::atomic<int64_t> next_message_row{1};
  std::atomic<int64_t> next_delivery_id{1};
  std::atomic<bool> bodies_dropped{false};  // since the last WAL truncation
  std::atomic<int> wal_frames{0};           // frames in the WAL after the last commit (sqlite3_wal_hook)
  std::atomic<int> wal_backfilled{0};       // of them, copied into the database by the last checkpoint
  // Frames the last checkpoint has not copied. (The WAL's frame count only
  // falls when SQLite starts the WAL over, so it says nothing by itself.)
  int UncopiedFrames() const {
    const int frames = wal_frames.load(std::memory_order_relaxed);
    const int backfilled = wal_backfilled.load(std::memory_order_relaxed);
    return frames >= backfilled ? frames - backfilled : frames;  // less: the WAL started over
  }
  std::atomic<int64_t> last_commit_ns{0};   // steady clock: the applier's last commit to the database

  // Writer state (writer thread only, after Open).
  std::unique_ptr<CommitLog> log;
  std::string log_buffer;  // a group's encoding (reused)
  merkle::Tree tree;
  uint64_t next_seq = 1;
  int64_t last_time_ms = 0;  // of the newest record: times never go back (LogRecord)
  uint64_t pruned_through = 0;    // records 1..pruned_through are pruned (audit_info)
  int64_t time_disorder_ms = 0;   // audit_info: how far records before schema 5 run back in time

  struct PruneJob {
    int64_t before_ms = 0;
    std::string why;
    Pruned pruned;
    bool more = false;  // the last chunk left records to prune
  };
  int64_t last_checkpoint_row_ms = 0;

  struct Item {
    Batch batch;
    BatchDone done;
    BatchResult result;
    std::shared_ptr<PruneJob> prune;  // a PruneAudit (its batch is empty)
  };
  mutable std::mutex mu;
  std::condition_variable cv;
  using Items = std::deque<Item>;
  Items queue;                 // guarded by mu; changed only by Push and Pop
  size_t queued_records = 0;   // guarded by mu: records in queue, plus one an item
  size_t queued_urgent = 0;    // guarded by mu: items in queue that are not lazy
  // Items ever pushed, and of them committed (or failed) by the writer:
  // WhenApplied (and so Sync) waits for the count pushed before it.
  uint64_t pushed_items = 0;     // guarded by mu
  uint64_t finished_items = 0;   // guarded by mu
  bool writer_gone = false;      // guarded by mu
  // The writer is in a timed wait that ends within Options::lazy_linger and
  // then commits what is queued: a lazy batch pushed meanwhile need not
  // wake it (Store::Commit). At a steady low rate the acknowledgements come
  // between two publishes, and each such wake-up cost a context switch.
  bool writer_lingering = false;  // guarded by mu
  // WhenApplied's callers waiting for the items pushed before them to be
  // committed (then for the applier): the count of items, and then().
  // While any waits, lazy batches do not linger.
  std::vector<std::pair<uint64_t, std::function<void(const Status&)>>> written_waiters;  // guarded by mu
  // What the writer must not keep waiting (with mu held).
  bool WriterHasUrgent() const {
    return queued_urgent > 0 || stopping || queued_records >= kLazyFlushRecords || !written_waiters.empty();
  }
  // Add an item to the queue, take one off its front (with mu held).
  void Push(Item item) {
    pushed_items++;
    queued_records += item.batch.records.size() + 1;
    if (!item.batch.lazy) queued_urgent++;
    queue.push_back(std::move(item));
  }
  Item Pop() {
    Item item = std::move(queue.front());
    queue.pop_front();
    queued_records -= item.batch.records.size() + 1;
    if (!item.batch.lazy) queued_urgent--;
    return item;
  }
  bool stopping = false;       // guarded by mu
  audit::Checkpoint latest;    // guarded by mu
  Counters counters{0, 0, 0, 0, 0};  // guarded by mu
  std::thread writer;
  std::thread wal_checkpointer;
  // Committed items waiting for their done() (DoneLoop).
  struct Completed {
    Items items;
    Status status;
    audit::Checkpoint checkpoint;
  };
  std::mutex done_mu;
  std::condition_variable done_cv;
  std::deque<Completed> completed;  // guarded by done_mu
  bool done_stopping = false;       // guarded by done_mu
  bool done_running = false;        // guarded by done_mu: the thread is running a completion's done()s
  std::thread done_thread;
  std::unique_ptr<AuditIndexer> indexer;
  std::mutex wal_mu;
  std::condition_variable wal_cv;
  bool wal_stopping = false;  // guarded by wal_mu

  // Messages logged but not yet in the database, by sender and message id
  // (Key): the writer finds duplicates here first, then in the database.
  // The applier removes them only after its commit, so a message is always
  // in one or the other.
  struct Original {
    int64_t row = 0;
    std::string publish_digest, ack;
  };
  static std::string Key(std::string_view sender, std::string_view message_id) {
    std::string k;
    k.reserve(sender.size() + 1 + message_id.size());
    k.append(sender).push_back('\0');
    k.append(message_id);
    return k;
  }
  std::mutex unapplied_mu;
  std::unordered_map<std::string, Original> unapplied_ids;  // guarded by unapplied_mu
  // Every key ever accepted (Open loads the database's): a key it has never
  // seen needs no database lookup. The writer's only, after Open.
  IdFilter seen_ids;
  Status LoadSeenIds();

  // Groups logged and waiting for the applier.
  std::mutex apply_mu;
  std::condition_variable apply_cv;    // wakes the applier
  std::condition_variable applied_cv;  // wakes WaitApplied
  std::deque<LogGroup> to_apply;       // guarded by apply_mu
  size_t to_apply_records = 0;         // guarded by apply_mu
  size_t unapplied_bytes = 0;          // guarded by apply_mu: logged, not yet applied (to_apply and the applier's hands)
  uint64_t written_lsn = 0;            // guarded by apply_mu: the last group logged
  uint64_t applied_lsn = 0;            // guarded by apply_mu: the last group in the database
  uint64_t apply_failures = 0;         // guarded by apply_mu
  Status apply_error;                  // guarded by apply_mu: the last failure, until an apply succeeds
  bool apply_now = false;              // guarded by apply_mu: someone waits (WaitApplied, WhenApplied)
  bool apply_heavy = false;            // guarded by apply_mu: the last take found kApplyEarlyWeight or more
  bool apply_stopping = false;         // guarded by apply_mu
  bool applier_gone = false;           // guarded by apply_mu
  std::vector<std::pair<uint64_t, std::function<void(const Status&)>>> apply_waiters;  // guarded by apply_mu
  std::thread applier;
  // Deliveries finished and bodies dropped ahead of their own group (by
  // the look-ahead, LaterChanges): when that group is applied, they need no
  // update (it would change nothing). Kept once the transaction that netted
  // them has committed; the group's apply takes them out (applier only).
  std::unordered_set<int64_t> finished_ahead, dropped_ahead;
  std::vector<int64_t> finishing_ahead, dropping_ahead;  // the current transaction's
  bool log_released = true;  // applier only: the log let go of everything applied, its current segment too
  int failures_while_stopping = 0;  // applier only

  ~Impl() {
    if (reader) sqlite3_close_v2(reader);
    if (wdb) sqlite3_close_v2(wdb);
    if (db) sqlite3_close_v2(db);
  }

  Status Migrate();
  Status LoadTree();
  void WriterLoop();
  void DoneLoop();
  void WalLoop();
  void ApplyLoop();
  bool TakeGroups(std::deque<LogGroup>* groups, LaterChanges* later);
  bool ApplyFailed(std::deque<LogGroup>& groups, const Status& s, int failures);
  void Applied(std::deque<LogGroup>& groups, size_t dropped);
  Status Commit(Items& items, audit::Checkpoint* cp, merkle::Tree* tree_out, uint64_t* next_out, size_t* records,
                size_t* dropped);
  Status CheckDuplicate(Item& item, std::vector<std::string>* added);
  // Takes keys out of unapplied_ids (a failed commit's, or the applied).
  void Forget(const std::vector<std::string>& keys);
  void LogRecord(audit::Record& r, uint64_t seq, int64_t* last_time_ms, merkle::Tree* t, LogGroup* g);
  // later: what groups not applied yet say about these (may be null).
  Status Apply(std::deque<LogGroup>& groups, const LaterChanges* later, size_t* dropped);
  Status WriteGroups(std::deque<LogGroup>& groups, const LaterChanges* later, size_t* dropped);
  Status WriteQueueChanges(std::deque<LogGroup>& groups, const LaterChanges* later, size_t* dropped);
  Status FlushRecords();
  Status PruneChunk(Item& item, uint64_t next_seq, uint64_t* pruned, LogGroup* g);
  Status PrepareStatements();
  Status OpenLog();
  void ReleaseLog(uint64_t lsn, bool rotate_current);
  Status WaitApplied();
  // The reads' Store::Wait: kNo does not wait.
  Status WaitApplied(Store::Wait wait) { return wait == Store::Wait::kForApplier ? WaitApplied() : Status::Ok(); }
  void WhenApplied(std::function<void(const Status&)> then);
  // WhenApplied once what was pushed before it is committed.
  void WhenLoggedApplied(std::function<void(const Status&)> then);
};

// Removes from waiters (a count to reach, and what to call then) those
// whose count is reached, and returns what to call, in order.
inline std::vector<std::function<void(const Status&)>> TakeDue(
    std::vector<std::pair<uint64_t, std::function<void(const Status&)>>>& waiters, uint64_t reached) {
  std::vector<std::function<void(const Status&)>> due;
  auto keep = waiters.begin();
  for (auto& w : waiters) {
    if (w.first <= reached) {
      due.push_back(std::move(w.second));
    } else {
      *keep++ = std::move(w);
    }
  }
  waiters.erase(keep, waiters.end());
  return due;
}

}  // namespace liaison::broker
