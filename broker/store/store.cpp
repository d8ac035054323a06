#include "broker/store/store.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <cstring>
#include <ctime>
#include <thread>

#include "broker/store/audit_indexer.h"
#include "broker/store/commit_log.h"
#include "broker/store/id_filter.h"
#include "broker/store/log_group.h"
#include "broker/store/audit_seq.h"
#include "common/files.h"
#include "common/merkle.h"
#include "common/sha256.h"

namespace liaison::broker {
namespace {

constexpr int kSchemaVersion = 8;
constexpr size_t kMaxRecordsPerCommit = 50'000;
// Audit rows per INSERT statement (a statement's fixed cost, paid per row
// with one row each, was about a third of the inserts' time).
constexpr int kAuditRowsPerInsert = 16;
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
// The writer's page cache (SQLite's default is 2 MiB). Every record inserts
// into indexes keyed by case and message id, whose pages are spread over the
// whole file; with the default cache most of those inserts read a page back
// from the OS first. 256 MiB holds the hot index pages of a log of tens of
// millions of records; memory is only used as pages are touched.
constexpr const char* kWriterCacheSize = "PRAGMA cache_size = -262144";
// The commit log (commit_log.h; docs/broker.md, "The commit log"): a commit
// is durable once its group is in the log; the applier writes groups into
// SQLite behind it, every Options::apply_delay, or at once when this many
// records wait,
constexpr size_t kApplyNowRecords = 50'000;
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

// Migrations: index i brings the schema from version i to i + 1.
const char* const kMigrations[] = {
    R"sql(
CREATE TABLE audit_log(
  seq INTEGER PRIMARY KEY,
  time_ms INTEGER NOT NULL,
  event TEXT NOT NULL,
  actor TEXT NOT NULL,
  cert_sha256 TEXT NOT NULL,
  message_id TEXT NOT NULL,
  case_id TEXT NOT NULL,
  sender TEXT NOT NULL,
  recipient TEXT NOT NULL,
  message_type TEXT NOT NULL,
  tlp INTEGER NOT NULL,
  purpose TEXT NOT NULL,
  decision TEXT NOT NULL,
  rules TEXT NOT NULL,
  policy_version TEXT NOT NULL,
  obligations TEXT NOT NULL,
  body_hmac TEXT NOT NULL,
  detail TEXT NOT NULL,
  leaf BLOB NOT NULL,
  leaf_hash BLOB NOT NULL);
CREATE INDEX audit_case ON audit_log(case_id, seq) WHERE case_id <> '';
CREATE INDEX audit_message ON audit_log(message_id) WHERE message_id <> '';
CREATE INDEX audit_sender_time ON audit_log(sender, time_ms) WHERE sender <> '';
CREATE INDEX audit_recipient_time ON audit_log(recipient, time_ms) WHERE recipient <> '';
CREATE INDEX audit_time ON audit_log(time_ms);
CREATE TABLE checkpoints(tree_size INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, text TEXT NOT NULL);
)sql",
    // 2: the durable queue.
    R"sql(
CREATE TABLE messages(
  row INTEGER PRIMARY KEY,
  sender TEXT NOT NULL,
  message_id TEXT NOT NULL,
  case_id TEXT NOT NULL,
  message_type TEXT NOT NULL,
  tlp INTEGER NOT NULL,
  purpose TEXT NOT NULL,
  agreement TEXT NOT NULL,
  recipients TEXT NOT NULL,
  received_ms INTEGER NOT NULL,
  expires_ms INTEGER NOT NULL,
  want_reports INTEGER NOT NULL,
  publish_digest BLOB NOT NULL,
  ack BLOB NOT NULL,
  body BLOB,
  recalled_ms INTEGER NOT NULL DEFAULT 0,
  UNIQUE(sender, message_id));
CREATE TABLE deliveries(
  id INTEGER PRIMARY KEY,
  recipient TEXT NOT NULL,
  message_row INTEGER NOT NULL REFERENCES messages(row),
  kind INTEGER NOT NULL,
  state INTEGER NOT NULL,
  attempts INTEGER NOT NULL,
  named INTEGER NOT NULL,
  payload BLOB);
CREATE INDEX deliveries_pending ON deliveries(id) WHERE state = 0;
CREATE INDEX deliveries_message ON deliveries(message_row, recipient);
CREATE INDEX messages_message_id ON messages(message_id);
)sql",
    // 3: auditors' queries by agency (as sender or recipient) walk these in
    // seq order (broker/store/audit_reader.cpp), so a page costs its rows.
    R"sql(
CREATE INDEX audit_sender_seq ON audit_log(sender) WHERE sender <> '';
CREATE INDEX audit_recipient_seq ON audit_log(recipient) WHERE recipient <> '';
)sql",
    // 4: the (sender, time) and (recipient, time) indexes of schema 1 serve
    // no query that the (sender) and (recipient) seq indexes do not, and
    // every record paid for them.
    R"sql(
DROP INDEX audit_sender_time;
DROP INDEX audit_recipient_time;
)sql",
    // 5: record time is monotonic in seq from now on (InsertRecord clamps
    // it), so the reader turns a time range into a seq range by binary
    // search and the time index has no more use. Records written before
    // were stamped when made, not when committed: their time may run
    // backwards by up to time_disorder_ms (measured here, once), and the
    // reader widens its search by that much (broker/store/audit_reader.cpp).
    //
    // And every field was stored twice, as a column and in the leaf. Only
    // what queries filter on stays a column (and time_ms, which the seq
    // range search reads); the rest is read from the leaf, which is what
    // is signed anyway. Rebuilding the table (rather than DROP COLUMN)
    // leaves it without the dead space of the old rows; the leaves and
    // their hashes are copied unchanged, so the Merkle tree is the same.
    R"sql(
CREATE TABLE audit_info(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO audit_info(key, value)
  SELECT 'time_disorder_ms', COALESCE(MAX(running_max - time_ms), 0)
  FROM (SELECT time_ms, MAX(time_ms) OVER (ORDER BY seq) AS running_max FROM audit_log);
CREATE TABLE audit_log_v5(
  seq INTEGER PRIMARY KEY,
  time_ms INTEGER NOT NULL,
  event TEXT NOT NULL,
  actor TEXT NOT NULL,
  message_id TEXT NOT NULL,
  case_id TEXT NOT NULL,
  sender TEXT NOT NULL,
  recipient TEXT NOT NULL,
  decision TEXT NOT NULL,
  leaf BLOB NOT NULL,
  leaf_hash BLOB NOT NULL);
INSERT INTO audit_log_v5(seq, time_ms, event, actor, message_id, case_id, sender, recipient, decision, leaf, leaf_hash)
  SELECT seq, time_ms, event, actor, message_id, case_id, sender, recipient, decision, leaf, leaf_hash
  FROM audit_log ORDER BY seq;
DROP TABLE audit_log;
ALTER TABLE audit_log_v5 RENAME TO audit_log;
CREATE INDEX audit_case ON audit_log(case_id, seq) WHERE case_id <> '';
CREATE INDEX audit_message ON audit_log(message_id) WHERE message_id <> '';
CREATE INDEX audit_sender_seq ON audit_log(sender) WHERE sender <> '';
CREATE INDEX audit_recipient_seq ON audit_log(recipient) WHERE recipient <> '';
)sql",
    // 6: a write-optimised audit log. Every record inserted into four
    // indexes (case id, message id, sender, recipient), two of them at
    // random places in B-trees that grow with the log: at 10,000,000
    // records those inserts were most of the writer's time, and slower
    // the larger the log. The log is now appended with no index at all;
    // the indexes live in a file derived from the log, kept by a background
    // thread up to a watermark (broker/store/audit_index.h), built from the
    // log at the first start of this version.
    R"sql(
DROP INDEX IF EXISTS audit_case;
DROP INDEX IF EXISTS audit_message;
DROP INDEX IF EXISTS audit_sender_seq;
DROP INDEX IF EXISTS audit_recipient_seq;
)sql",
    // 7: one index on message ids instead of two. UNIQUE(sender,
    // message_id) and the index on message_id each took an insert per
    // message, at a place of its own in the file (a commit of a few
    // messages rewrote about six pages of each); a unique index on
    // (message_id, sender) answers both lookups, and with time-ordered
    // (UUIDv7) ids its inserts go to its last page. The table is rebuilt to
    // lose the constraint's index; rows and row ids are copied unchanged.
    // (Runs with foreign keys off, which is why Open turns them on after
    // the migrations; the deliveries refer to the table by name.)
    R"sql(
CREATE TABLE messages_v7(
  row INTEGER PRIMARY KEY,
  sender TEXT NOT NULL,
  message_id TEXT NOT NULL,
  case_id TEXT NOT NULL,
  message_type TEXT NOT NULL,
  tlp INTEGER NOT NULL,
  purpose TEXT NOT NULL,
  agreement TEXT NOT NULL,
  recipients TEXT NOT NULL,
  received_ms INTEGER NOT NULL,
  expires_ms INTEGER NOT NULL,
  want_reports INTEGER NOT NULL,
  publish_digest BLOB NOT NULL,
  ack BLOB NOT NULL,
  body BLOB,
  recalled_ms INTEGER NOT NULL DEFAULT 0);
INSERT INTO messages_v7 SELECT row, sender, message_id, case_id, message_type, tlp, purpose, agreement, recipients,
  received_ms, expires_ms, want_reports, publish_digest, ack, body, recalled_ms FROM messages ORDER BY row;
DROP TABLE messages;
ALTER TABLE messages_v7 RENAME TO messages;
CREATE UNIQUE INDEX messages_id_sender ON messages(message_id, sender);
)sql",
    // 8: the commit log's watermark (store_info 'log_applied': entries up to
    // it are in the database), committed with the rows it covers.
    R"sql(
CREATE TABLE store_info(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
)sql",
};

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Status SqlError(sqlite3* db, const std::string& what) {
  const int code = db ? sqlite3_extended_errcode(db) : SQLITE_ERROR;
  std::string m = what + ": " + (db ? sqlite3_errmsg(db) : "no database");
  if ((code & 0xFF) == SQLITE_FULL || (code & 0xFF) == SQLITE_IOERR) return Status::IoError(m);
  if ((code & 0xFF) == SQLITE_CORRUPT || (code & 0xFF) == SQLITE_NOTADB) return Status::Corruption(m);
  return Status::Internal(m);
}

Status Exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err ? err : "unknown";
    sqlite3_free(err);
    return SqlError(db, std::string("SQL failed (") + m + ")");
  }
  return Status::Ok();
}

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

Result<std::string> LoadOrCreateDigestKey(const std::string& path) {
  if (std::filesystem::exists(path)) {
    if (Status s = CheckPrivateKeyFile(path); !s.ok()) return s;
    auto text = ReadFile(path, 1024);
    if (!text.ok()) return text.status();
    std::string hex = *text;
    while (!hex.empty() && (hex.back() == '\n' || hex.back() == ' ')) hex.pop_back();
    if (hex.size() != 64) return Status::Corruption(path + ": expected 64 hex digits");
    std::string key(32, '\0');
    for (size_t i = 0; i < 32; ++i) {
      unsigned v = 0;
      if (std::sscanf(hex.c_str() + 2 * i, "%2x", &v) != 1) return Status::Corruption(path + ": not hex");
      key[i] = static_cast<char>(v);
    }
    return key;
  }
  std::string key(32, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(key.data()), 32) != 1) return Status::Internal("RAND_bytes failed");
  if (Status s = WriteFileAtomic(path, audit::Hex(key) + "\n", 0600); !s.ok()) return s;
  return key;
}


// Signs checkpoints on a thread of its own, so that a commit's signature
// (about 60 us here) is made while its log append waits for the disk
// instead of before it. One job at a time: Start, then Wait.
class SignerThread {
 public:
  SignerThread(const audit::Signer* signer, std::string origin)
      : signer_(signer), origin_(std::move(origin)), thread_([this] { Loop(); }) {}
  ~SignerThread() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Start(uint64_t tree_size, const merkle::Hash& root, int64_t time_ms) {
    {
      std::lock_guard lock(mu_);
      size_ = tree_size;
      root_ = root;
      time_ = time_ms;
      pending_ = true;
      ready_ = false;
    }
    cv_.notify_all();
  }
  audit::Checkpoint Wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return ready_; });
    ready_ = false;
    return out_;
  }

 private:
  void Loop() {
    pthread_setname_np(pthread_self(), "store-sign");
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return pending_ || stopping_; });
      if (!pending_) return;
      pending_ = false;
      const uint64_t size = size_;
      const merkle::Hash root = root_;
      const int64_t time = time_;
      lock.unlock();
      audit::Checkpoint cp = signer_->Sign(origin_, size, root, time);
      lock.lock();
      out_ = std::move(cp);
      ready_ = true;
      cv_.notify_all();
    }
  }

  const audit::Signer* signer_;
  const std::string origin_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool pending_ = false, ready_ = false, stopping_ = false;  // guarded by mu_
  uint64_t size_ = 0;
  merkle::Hash root_{};
  int64_t time_ = 0;
  audit::Checkpoint out_;
  std::thread thread_;  // last: starts once the rest is ready
};

// What a logged group counts for against kApplyNowRecords.
size_t Weight(const LogGroup& g) { return g.records.size() + g.batches.size(); }

// A busy handler that retries every 200 us for up to max_ms, where SQLite's
// own (sqlite3_busy_timeout) sleeps up to 100 ms between tries: after the
// WAL checkpointer's TRUNCATE released the lock, the writer slept on for
// tens of milliseconds more.
template <int max_ms>
int RetrySoon(void*, int attempts) {
  if (attempts * 200 >= max_ms * 1000) return 0;
  std::this_thread::sleep_for(std::chrono::microseconds(200));
  return 1;
}

}  // namespace

struct Store::Impl {
  Options options;
  sqlite3* db = nullptr;  // the applier's (and Open's): every write to the database
  std::unique_ptr<audit::Signer> signer;
  std::string digest_key;
  std::unique_ptr<crypto::HmacSha256> body_mac;  // keyed with digest_key
  Stmt insert, insert_many, insert_checkpoint, prune_rows, set_info, set_store_info;
  // Audit rows not yet inserted: they go in kAuditRowsPerInsert at a time
  // (applier only).
  std::vector<const LoggedRecord*> pending_rows;
  Stmt insert_message, insert_delivery, finish_delivery, set_attempts, drop_body, mark_recalled;
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
  std::unique_ptr<SignerThread> sign_thread;
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
  // Add an item to the queue, take one off its front (with mu held).
  void Push(Item item) {
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
  std::chrono::steady_clock::time_point oldest_to_apply;  // guarded by apply_mu
  uint64_t written_lsn = 0;            // guarded by apply_mu: the last group logged
  uint64_t applied_lsn = 0;            // guarded by apply_mu: the last group in the database
  uint64_t apply_failures = 0;         // guarded by apply_mu
  Status apply_error;                  // guarded by apply_mu: the last failure, until an apply succeeds
  bool apply_now = false;              // guarded by apply_mu: someone waits (WaitApplied, WhenApplied)
  bool apply_stopping = false;         // guarded by apply_mu
  bool applier_gone = false;           // guarded by apply_mu
  std::vector<std::pair<uint64_t, std::function<void(const Status&)>>> apply_waiters;  // guarded by apply_mu
  std::thread applier;
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
  bool TakeGroups(std::deque<LogGroup>* groups);
  bool ApplyFailed(std::deque<LogGroup>& groups, const Status& s, int failures);
  void Applied(std::deque<LogGroup>& groups, size_t dropped);
  Status Commit(Items& items, audit::Checkpoint* cp, merkle::Tree* tree_out, uint64_t* next_out, size_t* records,
                size_t* dropped);
  Status CheckDuplicate(Item& item, std::vector<std::string>* added);
  void Forget(const std::vector<std::string>& keys);
  void LogRecord(audit::Record& r, uint64_t seq, int64_t* last_time_ms, merkle::Tree* t, LogGroup* g);
  Status Apply(std::deque<LogGroup>& groups, size_t* dropped);
  Status WriteGroups(std::deque<LogGroup>& groups, size_t* dropped);
  Status WriteQueueChanges(std::deque<LogGroup>& groups, size_t* dropped);
  Status FlushRecords();
  Status PruneChunk(Item& item, uint64_t next_seq, uint64_t* pruned, LogGroup* g);
  Status PrepareStatements();
  Status OpenLog();
  void ReleaseLog(uint64_t lsn, bool rotate_current);
  Status WaitApplied();
  void WhenApplied(std::function<void(const Status&)> then);
};

Status Store::Impl::PrepareStatements() {
  struct {
    Stmt* stmt;
    const char* sql;
  } const statements[] = {
      {&insert,
       "INSERT INTO audit_log(seq, time_ms, event, actor, message_id, case_id, sender, recipient, decision, leaf, "
       "leaf_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)"},
      {&insert_checkpoint, "INSERT OR REPLACE INTO checkpoints(tree_size, time_ms, text) VALUES (?,?,?)"},
      // A pruned record keeps its seq and leaf hash, and nothing else (time
      // 0 too: the export's hash-only rows carry nothing but the hash).
      {&prune_rows,
       "UPDATE audit_log SET time_ms = 0, event = '', actor = '', message_id = '', case_id = '', sender = '', "
       "recipient = '', decision = '', leaf = X'' WHERE seq > ? AND seq <= ?"},
      {&set_info, "INSERT OR REPLACE INTO audit_info(key, value) VALUES (?, ?)"},
      {&set_store_info, "INSERT OR REPLACE INTO store_info(key, value) VALUES (?, ?)"},
      {&insert_message,
       "INSERT INTO messages(row, sender, message_id, case_id, message_type, tlp, purpose, agreement, "
       "recipients, received_ms, expires_ms, want_reports, publish_digest, ack, body, recalled_ms) "
       "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"},
      {&insert_delivery,
       "INSERT INTO deliveries(id, recipient, message_row, kind, state, attempts, named, payload) "
       "VALUES (?,?,?,?,?,?,?,?)"},
      {&finish_delivery, "UPDATE deliveries SET state = ?, payload = NULL WHERE id = ? AND state = 0"},
      {&set_attempts, "UPDATE deliveries SET attempts = ? WHERE id = ?"},
      {&drop_body, "UPDATE messages SET body = NULL WHERE row = ?"},
      {&mark_recalled, "UPDATE messages SET recalled_ms = ? WHERE row = ?"},
  };
  for (const auto& [stmt, sql] : statements) {
    if (Status s = stmt->Prepare(db, sql); !s.ok()) return s;
  }
  std::string many =
      "INSERT INTO audit_log(seq, time_ms, event, actor, message_id, case_id, sender, recipient, decision, leaf, "
      "leaf_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)";
  for (int i = 1; i < kAuditRowsPerInsert; ++i) many += ",(?,?,?,?,?,?,?,?,?,?,?)";
  pending_rows.reserve(kAuditRowsPerInsert);
  return insert_many.Prepare(db, many.c_str());
}

Status Store::Impl::Migrate() {
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, nullptr);
  int version = 0;
  if (sqlite3_step(s) == SQLITE_ROW) version = sqlite3_column_int(s, 0);
  sqlite3_finalize(s);
  const int target = static_cast<int>(std::size(kMigrations));
  if (version > target) {
    return Status::InvalidArgument("the store has schema version " + std::to_string(version) +
                                   ", newer than this broker understands (" + std::to_string(target) + ")");
  }
  for (int v = version; v < target; ++v) {
    if (Status st = Exec(db, "BEGIN IMMEDIATE"); !st.ok()) return st;
    Status st = Exec(db, kMigrations[v]);
    if (st.ok()) st = Exec(db, ("PRAGMA user_version = " + std::to_string(v + 1)).c_str());
    if (!st.ok()) {
      Exec(db, "ROLLBACK");
      return st.Annotate("migration to schema " + std::to_string(v + 1));
    }
    if (Status c = Exec(db, "COMMIT"); !c.ok()) return c;
    spdlog::info("store: schema migrated to version {}", v + 1);
  }
  static_assert(static_cast<size_t>(kSchemaVersion) == std::size(kMigrations));
  return Status::Ok();
}

// Rebuilds the in-memory tree from the stored leaf hashes (32 bytes a
// record: about a second for a few million records), after checking that the
// sequence has no gaps.
Status Store::Impl::LoadTree() {
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db, "SELECT COALESCE(MAX(seq), 0), COUNT(*) FROM audit_log", -1, &s, nullptr);
  uint64_t max_seq = 0, count = 0;
  if (sqlite3_step(s) == SQLITE_ROW) {
    max_seq = static_cast<uint64_t>(sqlite3_column_int64(s, 0));
    count = static_cast<uint64_t>(sqlite3_column_int64(s, 1));
  }
  sqlite3_finalize(s);
  if (max_seq != count) {
    return Status::Corruption("audit log has " + std::to_string(count) + " records but its highest sequence is " +
                              std::to_string(max_seq));
  }
  sqlite3_prepare_v2(db, "SELECT leaf_hash FROM audit_log ORDER BY seq", -1, &s, nullptr);
  while (sqlite3_step(s) == SQLITE_ROW) {
    merkle::Hash h;
    if (sqlite3_column_bytes(s, 0) != 32) {
      sqlite3_finalize(s);
      return Status::Corruption("audit record with a malformed leaf hash");
    }
    std::memcpy(h.data(), sqlite3_column_blob(s, 0), 32);
    tree.Append(h);
  }
  sqlite3_finalize(s);
  next_seq = max_seq + 1;
  sqlite3_prepare_v2(db, "SELECT time_ms FROM audit_log ORDER BY seq DESC LIMIT 1", -1, &s, nullptr);
  if (sqlite3_step(s) == SQLITE_ROW) last_time_ms = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  pruned_through = static_cast<uint64_t>(audit_seq::Info(db, "pruned_through").value_or(0));
  time_disorder_ms = audit_seq::Info(db, "time_disorder_ms").value_or(0);
  return Status::Ok();
}

// Gives a record its seq and time, encodes its leaf and adds it to the tree
// and the group (writer).
void Store::Impl::LogRecord(audit::Record& r, uint64_t seq, int64_t* last_time_ms, merkle::Tree* t, LogGroup* g) {
  r.seq = seq;
  // Time never runs backwards in seq order: records are made on many threads
  // and reach the writer in any order (and the clock may be stepped back),
  // but the reader finds a time range by binary search over seq.
  r.time_ms = std::max(r.time_ms, *last_time_ms);
  *last_time_ms = r.time_ms;
  LoggedRecord lr;
  lr.leaf = audit::EncodeLeaf(r);
  lr.hash = merkle::LeafHash(lr.leaf);
  t->Append(lr.hash);
  lr.record = std::move(r);
  g->records.push_back(std::move(lr));
}

// Inserts the pending audit rows: one statement for a full set, else one
// each (applier).
Status Store::Impl::FlushRecords() {
  const bool many = pending_rows.size() == static_cast<size_t>(kAuditRowsPerInsert);
  Status status;
  size_t i = 0;
  while (status.ok() && i < pending_rows.size()) {
    Stmt& stmt = many ? insert_many : insert;
    const size_t n = many ? pending_rows.size() : 1;
    for (size_t k = 0; k < n; ++k, ++i) {
      const LoggedRecord& p = *pending_rows[i];
      const audit::Record& r = p.record;
      const int base = static_cast<int>(11 * k);
      stmt.Int(base + 1, static_cast<int64_t>(r.seq));
      stmt.Int(base + 2, r.time_ms);
      int c = base + 3;
      for (const std::string* f : {&r.event, &r.actor, &r.message_id, &r.case_id, &r.sender, &r.recipient, &r.decision}) {
        stmt.Text(c++, *f);
      }
      stmt.Blob(c++, p.leaf.data(), p.leaf.size());
      stmt.Blob(c++, p.hash.data(), p.hash.size());
    }
    status = stmt.Run("insert audit record");
  }
  pending_rows.clear();
  return status;
}

namespace {

std::string Rfc3339(int64_t ms) {
  const time_t t = static_cast<time_t>(ms / 1000);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Bound SQLITE_STATIC: they must outlive the statements.
const std::string kPrunedThrough = "pruned_through";
const std::string kLogAppliedKey = kLogApplied;

}  // namespace

// One chunk of a PruneAudit: the records made before before_ms, from the
// first not yet pruned, at most kPruneChunk of them, and the audit_pruned
// record that says so (added to the item's batch, so it is logged like any
// other). The range is found in the database, so everything logged before
// this commit is applied first; records of this same commit are not
// candidates (they are being made now).
Status Store::Impl::PruneChunk(Item& item, uint64_t next, uint64_t* pruned, LogGroup* g) {
  PruneJob& job = *item.prune;
  job.more = false;
  if (Status s = WaitApplied(); !s.ok()) return s.Annotate("pruning");
  // Every record before the seq found for before_ms - disorder was made
  // before before_ms (audit_seq.h): never prunes a newer record, at worst
  // leaves a few older ones of a log written before schema 5.
  auto end = audit_seq::FirstAtOrAfter(wdb, next - 1, job.before_ms - time_disorder_ms);
  if (!end.ok()) return end.status();
  const uint64_t target = *end - 1;
  if (target <= *pruned) return Status::Ok();
  const uint64_t last = std::min(target, *pruned + kPruneChunk);
  g->prunes.push_back({*pruned, last});
  audit::Record r;
  r.time_ms = NowMs();
  r.event = "audit_pruned";
  r.detail = "records " + std::to_string(*pruned + 1) + " to " + std::to_string(last) + " pruned (made before " +
             Rfc3339(job.before_ms) + (job.why.empty() ? "" : "; " + job.why) +
             "): their fields are removed, their seq and leaf hash kept";
  item.batch.records.push_back(std::move(r));
  if (job.pruned.first == 0) job.pruned.first = *pruned + 1;
  job.pruned.last = last;
  job.more = last < target;
  *pruned = last;
  return Status::Ok();
}

// A new message whose (sender, message id) was used before marks the
// batch a duplicate (item.result): then nothing of it is logged. Looks in
// the messages logged but not applied, then in the database; a new id is
// added to the former (and to *added, to forget it if the commit fails).
Status Store::Impl::CheckDuplicate(Item& item, std::vector<std::string>* added) {
  const StoredMessage& m = *item.batch.new_message;
  std::string key = Key(m.sender, m.message_id);
  auto duplicate = [&](const Original& o) {
    item.result.duplicate = true;
    StoredMessage& out = item.result.original;
    out.row = o.row;
    out.sender = m.sender;
    out.message_id = m.message_id;
    out.publish_digest = o.publish_digest;
    out.ack = o.ack;
  };
  // A new id: remembered as unapplied until the applier's commit, and in
  // seen_ids for good (a failed commit forgets the former; the latter then
  // only answers "maybe" once too often).
  auto accept = [&]() {
    seen_ids.Add(key);
    std::lock_guard lock(unapplied_mu);
    unapplied_ids.emplace(key, Original{m.row, m.publish_digest, m.ack});
    added->push_back(std::move(key));
    return Status::Ok();
  };
  {
    std::lock_guard lock(unapplied_mu);
    if (auto it = unapplied_ids.find(key); it != unapplied_ids.end()) {
      duplicate(it->second);
      return Status::Ok();
    }
  }
  // Not among the unapplied: if it was ever logged, it went through here
  // and into seen_ids, and the applier's commit that took it out of the
  // unapplied is already visible to this read.
  if (!seen_ids.MayContain(key)) return accept();
  {
    std::lock_guard lock(mu);
    counters.duplicate_lookups++;
  }
  find_duplicate.Text(1, m.sender);
  find_duplicate.Text(2, m.message_id);
  sqlite3_stmt* q = find_duplicate.get();
  const int rc = sqlite3_step(q);
  if (rc == SQLITE_ROW) {
    Original o;
    o.row = sqlite3_column_int64(q, 0);
    o.publish_digest.assign(static_cast<const char*>(sqlite3_column_blob(q, 1)), sqlite3_column_bytes(q, 1));
    o.ack.assign(static_cast<const char*>(sqlite3_column_blob(q, 2)), sqlite3_column_bytes(q, 2));
    duplicate(o);
  }
  sqlite3_reset(q);
  sqlite3_clear_bindings(q);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(wdb, "find duplicate");
  if (rc == SQLITE_ROW) return Status::Ok();
  return accept();
}

// Fills seen_ids with every (sender, message id) in the database (at Open,
// after the commit log is applied). Reads the messages_id_sender index only.
Status Store::Impl::LoadSeenIds() {
  const auto start = std::chrono::steady_clock::now();
  int64_t rows = 0;
  {
    sqlite3_stmt* q = nullptr;
    if (sqlite3_prepare_v2(wdb, "SELECT COUNT(*) FROM messages", -1, &q, nullptr) == SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW) {
      rows = sqlite3_column_int64(q, 0);
    }
    sqlite3_finalize(q);
  }
  // Room for the rows there are and as many again before a second layer.
  seen_ids = IdFilter(static_cast<size_t>(rows) * 2);
  sqlite3_stmt* q = nullptr;
  if (sqlite3_prepare_v2(wdb, "SELECT sender, message_id FROM messages INDEXED BY messages_id_sender", -1, &q,
                         nullptr) != SQLITE_OK) {
    sqlite3_finalize(q);
    return SqlError(wdb, "reading the message ids");
  }
  int rc;
  while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
    auto text = [&](int column) {
      return std::string_view(reinterpret_cast<const char*>(sqlite3_column_text(q, column)),
                              static_cast<size_t>(sqlite3_column_bytes(q, column)));
    };
    seen_ids.Add(Key(text(0), text(1)));
  }
  sqlite3_finalize(q);
  if (rc != SQLITE_DONE) return SqlError(wdb, "reading the message ids");
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  if (ms >= 1000) spdlog::info("store: {} message ids loaded in {} ms", seen_ids.size(), ms);
  return Status::Ok();
}

void Store::Impl::Forget(const std::vector<std::string>& keys) {
  if (keys.empty()) return;
  std::lock_guard lock(unapplied_mu);
  for (const auto& k : keys) unapplied_ids.erase(k);
}

// Makes one group of the items (seqs, leaves, the tree, duplicates, the
// signed checkpoint), logs it (one append, one fdatasync) and hands it to
// the applier. If logging fails, nothing of it is kept: the in-memory tree
// and seq are the caller's to replace only on success.
Status Store::Impl::Commit(Items& items, audit::Checkpoint* cp, merkle::Tree* tree_out, uint64_t* next_out,
                           size_t* records_out, size_t* dropped_out) {
  merkle::Tree t = tree;
  uint64_t seq = next_seq;
  int64_t last_time = last_time_ms;
  uint64_t pruned = pruned_through;
  LogGroup g;
  std::vector<std::string> added;
  auto fail = [&](Status s) {
    Forget(added);
    for (auto& item : items) item.result = BatchResult{};
    return s;
  };
  {
    std::lock_guard lock(apply_mu);
    if (unapplied_bytes > kMaxUnappliedBytes) {
      return fail(Status::IoError("the store's database cannot be written (" + std::to_string(unapplied_bytes >> 20) +
                                  " MiB are in the commit log and not in the database): " + apply_error.message()));
    }
  }
  const int64_t now = NowMs();
  size_t records = 0, dropped = 0;
  {
    size_t n = 0;
    for (const auto& item : items) n += item.batch.records.size() + (item.prune ? 1 : 0);
    g.records.reserve(n);  // a record moved is fifteen strings moved
    g.batches.reserve(items.size());
  }
  for (auto& item : items) {
    if (item.prune) {
      if (Status s = PruneChunk(item, next_seq, &pruned, &g); !s.ok()) return fail(s);
    }
    if (item.batch.new_message) {
      if (Status s = CheckDuplicate(item, &added); !s.ok()) return fail(s);
      if (item.result.duplicate) continue;
    }
    for (auto& r : item.batch.records) LogRecord(r, seq++, &last_time, &t, &g);
    records += item.batch.records.size();
    dropped += item.batch.drop_bodies.size();
    if (item.batch.recalled_row != 0) g.recalls.emplace_back(item.batch.recalled_row, now);
    item.batch.records.clear();
    g.batches.push_back(std::move(item.batch));
    item.batch = Batch{};
  }
  // The signature is made while the append waits for the disk, except
  // when this commit logs a checkpoint row (once a second), which holds it.
  const bool row = now - last_checkpoint_row_ms >= kCheckpointRowEveryMs;
  if (row) {
    *cp = signer->Sign(options.origin, t.size(), t.Root(), now);
    g.checkpoint_row = LogGroup::CheckpointRow{cp->tree_size, now, audit::FormatCheckpoint(*cp)};
  } else {
    sign_thread->Start(t.size(), t.Root(), now);
  }
  log_buffer.clear();
  EncodeLogGroup(g, &log_buffer);
  auto lsn = log->Append(log_buffer);
  if (!row) *cp = sign_thread->Wait();
  if (!lsn.ok()) return fail(lsn.status());
  g.lsn = *lsn;
  if (g.checkpoint_row) last_checkpoint_row_ms = now;
  *tree_out = std::move(t);
  *next_out = seq;
  *records_out = records;
  *dropped_out = dropped;
  last_time_ms = last_time;
  pruned_through = pruned;
  {
    std::lock_guard lock(apply_mu);
    if (to_apply.empty()) oldest_to_apply = std::chrono::steady_clock::now();
    to_apply_records += Weight(g);
    unapplied_bytes += log_buffer.size();
    g.bytes = log_buffer.size();
    written_lsn = g.lsn;
    to_apply.push_back(std::move(g));
    // The applier sleeps until the oldest group is due; it needs waking
    // only for the first group, or when enough have gathered.
    if (to_apply.size() == 1 || to_apply_records >= kApplyNowRecords) apply_cv.notify_one();
  }
  return Status::Ok();
}

void Store::Impl::WriterLoop() {
  pthread_setname_np(pthread_self(), "store-writer");
  for (;;) {
    Items items;
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return !queue.empty() || stopping; });
      if (queue.empty() && stopping) return;
      // Only lazy batches: they wait a little for one that is not.
      if (queued_urgent == 0 && !stopping) {
        cv.wait_for(lock, options.lazy_linger,
                    [&] { return queued_urgent > 0 || stopping || queued_records >= kLazyFlushRecords; });
      }
      if (queued_records <= kMaxRecordsPerCommit) {
        // All of it: the items change hands without being moved one by one.
        items.swap(queue);
        queued_records = 0;
        queued_urgent = 0;
      } else {
        size_t records = 0;
        while (!queue.empty() &&
               (items.empty() || records + queue.front().batch.records.size() <= kMaxRecordsPerCommit)) {
          records += queue.front().batch.records.size() + 1;
          items.push_back(Pop());
        }
      }
    }
    audit::Checkpoint cp;
    merkle::Tree new_tree;
    uint64_t new_next = 0;
    size_t n = 0, dropped = 0;
    Status s = Commit(items, &cp, &new_tree, &new_next, &n, &dropped);
    {
      std::lock_guard lock(mu);
      if (s.ok()) {
        latest = cp;
        counters.commits++;
        counters.records += n;
        counters.bodies_dropped += dropped;
      } else {
        counters.failed_commits++;
      }
    }
    if (s.ok()) {
      tree = std::move(new_tree);
      next_seq = new_next;
    } else {
      spdlog::error("store: commit of {} change(s) failed, nothing of it is kept: {}", items.size(), s.message());
    }
    audit::Checkpoint current;
    {
      std::lock_guard lock(mu);
      current = latest;
    }
    Items again;  // prunes with more to do: their next chunk in a later commit
    for (auto& it : items) {
      if (s.ok() && it.prune && it.prune->more) {
        std::lock_guard lock(mu);
        if (!stopping) {  // when closing, the rest is left for the next prune
          it.batch = Batch{};
          again.push_back(std::move(it));
          it.done = nullptr;  // its done() runs after its last chunk
          continue;
        }
      }
    }
    if (!again.empty()) {
      std::lock_guard lock(mu);
      for (auto& it : again) Push(std::move(it));
    }
    // The callers' done() (a PublishAck to encode, deliveries to hand to the
    // router) and the freeing of their batches run on the completion
    // thread, in commit order, while this thread commits the next batch.
    // A small commit with nothing ahead of it there is finished here: the
    // work is a few microseconds, and handing it over would cost a wake-up
    // and a trip through the scheduler (at low rates, every commit).
    bool here = false;
    {
      std::lock_guard lock(done_mu);
      here = items.size() <= kDoneHereItems && completed.empty() && !done_running;
      if (!here) completed.push_back({std::move(items), s, std::move(current)});
    }
    if (here) {
      for (auto& it : items) {
        if (it.done) it.done(s, current, it.result);
      }
    } else {
      done_cv.notify_one();
    }
  }
}

// The queue changes of groups, netted (Apply): new messages and deliveries
// take the later changes to themselves before they are inserted; only
// changes to rows applied earlier are written as updates. *dropped counts
// bodies deleted from the database (not those that never reached it).
Status Store::Impl::WriteQueueChanges(std::deque<LogGroup>& groups, size_t* dropped) {
  std::unordered_map<int64_t, StoredMessage*> messages;
  struct New {
    StoredDelivery* d;
    DeliveryState state;
  };
  std::unordered_map<int64_t, New> deliveries;
  std::vector<StoredMessage*> message_order;
  std::vector<int64_t> delivery_order;
  std::vector<std::pair<int64_t, DeliveryState>> finished;
  std::vector<std::pair<int64_t, uint32_t>> attempts;
  std::vector<int64_t> drops;
  std::vector<std::pair<int64_t, int64_t>> recalls;
  for (auto& g : groups) {
    for (auto& b : g.batches) {
      if (b.new_message) {
        messages[b.new_message->row] = &*b.new_message;
        message_order.push_back(&*b.new_message);
      }
      for (auto& d : b.new_deliveries) {
        deliveries[d.id] = {&d, DeliveryState::kPending};
        delivery_order.push_back(d.id);
      }
      for (const auto& [id, state] : b.finished) {
        auto it = deliveries.find(id);
        if (it == deliveries.end()) {
          finished.emplace_back(id, state);
        } else if (it->second.state == DeliveryState::kPending) {  // the first to finish it counts, as in SQL
          it->second.state = state;
          it->second.d->payload.clear();
        }
      }
      for (const auto& [id, n] : b.attempts) {
        auto it = deliveries.find(id);
        if (it == deliveries.end()) {
          attempts.emplace_back(id, n);
        } else {
          it->second.d->attempts = n;
        }
      }
      for (int64_t row : b.drop_bodies) {
        auto it = messages.find(row);
        if (it == messages.end()) {
          drops.push_back(row);
        } else {
          it->second->body.clear();
        }
      }
    }
    for (const auto& [row, ms] : g.recalls) {
      auto it = messages.find(row);
      if (it == messages.end()) {
        recalls.emplace_back(row, ms);
      } else {
        it->second->recalled_ms = ms;
      }
    }
  }
  // A transaction that cannot fit takes all the space there is before it
  // fails (SQLite writes its WAL as it goes), and the commit log needs some
  // to go on taking commits, acknowledgements in particular: those make
  // the next try smaller (their bodies are netted out). So a transaction
  // that plainly does not fit is not started.
  uint64_t need = 64u << 10;
  for (const StoredMessage* m : message_order) need += 3 * (m->body.size() + m->ack.size() + m->recipients.size() + 256);
  for (int64_t id : delivery_order) need += 3 * (deliveries[id].d->payload.size() + 128);
  for (const auto& g : groups) {
    for (const auto& r : g.records) need += 3 * r.leaf.size();
  }
  struct statvfs fs {};
  if (::statvfs(options.path.c_str(), &fs) == 0 && static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize < need) {
    return Status::IoError("not enough space for the database: about " + std::to_string(need >> 10) + " KiB needed, " +
                           std::to_string((static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize) >> 10) + " KiB free");
  }
  for (const StoredMessage* mp : message_order) {
    const StoredMessage& m = *mp;
    insert_message.Int(1, m.row);
    int i = 2;
    for (const std::string* f : {&m.sender, &m.message_id, &m.case_id, &m.message_type}) insert_message.Text(i++, *f);
    insert_message.Int(i++, m.tlp);
    for (const std::string* f : {&m.purpose, &m.agreement, &m.recipients}) insert_message.Text(i++, *f);
    insert_message.Int(i++, m.received_ms);
    insert_message.Int(i++, m.expires_ms);
    insert_message.Int(i++, m.want_reports ? 1 : 0);
    insert_message.Blob(i++, m.publish_digest.data(), m.publish_digest.size());
    insert_message.Blob(i++, m.ack.data(), m.ack.size());
    if (m.body.empty()) {  // dropped before it was applied
      sqlite3_bind_null(insert_message.get(), i++);
    } else {
      insert_message.Blob(i++, m.body.data(), m.body.size());
    }
    insert_message.Int(i++, m.recalled_ms);
    if (Status s = insert_message.Run("insert message"); !s.ok()) return s;
  }
  for (int64_t id : delivery_order) {
    const New& n = deliveries[id];
    const StoredDelivery& d = *n.d;
    insert_delivery.Int(1, d.id);
    insert_delivery.Text(2, d.recipient);
    insert_delivery.Int(3, d.message_row);
    insert_delivery.Int(4, static_cast<int>(d.kind));
    insert_delivery.Int(5, static_cast<int>(n.state));
    insert_delivery.Int(6, d.attempts);
    insert_delivery.Int(7, d.named ? 1 : 0);
    if (d.payload.empty()) {
      sqlite3_bind_null(insert_delivery.get(), 8);
    } else {
      insert_delivery.Blob(8, d.payload.data(), d.payload.size());
    }
    if (Status s = insert_delivery.Run("insert delivery"); !s.ok()) return s;
  }
  for (const auto& [id, state] : finished) {
    if (Status s = finish_delivery.RunWith("finish delivery", static_cast<int>(state), id); !s.ok()) return s;
  }
  for (const auto& [id, n] : attempts) {
    if (Status s = set_attempts.RunWith("count attempt", n, id); !s.ok()) return s;
  }
  for (int64_t row : drops) {
    if (Status s = drop_body.RunWith("drop body", row); !s.ok()) return s;
  }
  *dropped += drops.size();
  for (const auto& [row, ms] : recalls) {
    if (Status s = mark_recalled.RunWith("mark recalled", ms, row); !s.ok()) return s;
  }
  return Status::Ok();
}

// Writes groups into the database in one transaction, with the commit
// log's watermark. What a later group undoes to an earlier one in the same
// transaction is never written (a body dropped, a delivery finished, a
// count of attempts): at a steady rate most messages are delivered and
// acknowledged before their group is applied, so their bodies never reach
// the database at all.
Status Store::Impl::Apply(std::deque<LogGroup>& groups, size_t* dropped) {
  if (groups.empty()) return Status::Ok();
  if (Status s = Exec(db, "BEGIN IMMEDIATE"); !s.ok()) return s;
  Status s = WriteGroups(groups, dropped);
  if (s.ok()) s = Exec(db, "COMMIT");
  if (!s.ok()) {
    pending_rows.clear();
    Exec(db, "ROLLBACK");
  }
  return s;
}

// Apply's transaction: the queue changes, the records, then pruning (which
// only reaches records applied before its group was logged: PruneChunk
// waits for that) and checkpoint rows, and the watermark.
Status Store::Impl::WriteGroups(std::deque<LogGroup>& groups, size_t* dropped) {
  if (Status s = WriteQueueChanges(groups, dropped); !s.ok()) return s;
  for (const auto& g : groups) {
    for (const auto& r : g.records) {
      pending_rows.push_back(&r);
      if (pending_rows.size() == static_cast<size_t>(kAuditRowsPerInsert)) {
        if (Status s = FlushRecords(); !s.ok()) return s;
      }
    }
  }
  if (Status s = FlushRecords(); !s.ok()) return s;
  for (const auto& g : groups) {
    for (const auto& p : g.prunes) {
      if (Status s = prune_rows.RunWith("prune audit records", p.after, p.through); !s.ok()) return s;
      set_info.Text(1, kPrunedThrough);
      set_info.Int(2, static_cast<int64_t>(p.through));
      if (Status s = set_info.Run("record pruning"); !s.ok()) return s;
      (*dropped)++;  // pruned fields, like dropped bodies, must leave the WAL
    }
    if (g.checkpoint_row) {
      insert_checkpoint.Int(1, static_cast<int64_t>(g.checkpoint_row->tree_size));
      insert_checkpoint.Int(2, g.checkpoint_row->time_ms);
      insert_checkpoint.Text(3, g.checkpoint_row->text);
      if (Status s = insert_checkpoint.Run("insert checkpoint"); !s.ok()) return s;
    }
  }
  set_store_info.Text(1, kLogAppliedKey);
  set_store_info.Int(2, static_cast<int64_t>(groups.back().lsn));
  return set_store_info.Run("record the commit log's watermark");
}

// The applier: writes logged groups into the database (Apply) once the
// oldest has waited Options::apply_delay, when many have gathered, or when
// someone waits for them; then lets the log release them and the audit
// indexer index their records, and keeps the WAL short (what the writer
// did after each commit before the commit log).
void Store::Impl::ApplyLoop() {
  pthread_setname_np(pthread_self(), "store-apply");
  int failures = 0;  // in a row
  std::deque<LogGroup> groups;
  while (TakeGroups(&groups)) {
    size_t dropped = 0;
    if (const Status s = Apply(groups, &dropped); !s.ok()) {
      if (!ApplyFailed(groups, s, failures++)) return;
      continue;
    }
    failures = 0;
    Applied(groups, dropped);
  }
}

// Waits until the oldest logged group is due (or someone waits for the
// database, or many have gathered) and takes them all. False once stopping
// and nothing is left: the applier then ends.
bool Store::Impl::TakeGroups(std::deque<LogGroup>* groups) {
  std::unique_lock lock(apply_mu);
  for (;;) {
    if (!to_apply.empty()) {
      const auto due = oldest_to_apply + options.apply_delay;
      if (apply_now || apply_stopping || to_apply_records >= kApplyNowRecords ||
          std::chrono::steady_clock::now() >= due) {
        break;
      }
      apply_cv.wait_until(lock, due);
      continue;
    }
    if (apply_stopping) {
      applier_gone = true;
      applied_cv.notify_all();
      const uint64_t lsn = applied_lsn;
      lock.unlock();
      if (lsn > 0) ReleaseLog(lsn, true);
      return false;
    }
    apply_now = false;
    if (log_released) {
      apply_cv.wait(lock);
      continue;
    }
    // Quiet for a moment: the log lets go of its current segment too, so
    // that nothing applied stays on disk while the broker idles. (Under
    // load segments go by size and age; starting one costs a file and a
    // directory sync, not worth paying after every apply.)
    if (!apply_cv.wait_for(lock, kQuietForRelease, [&] { return !to_apply.empty() || apply_stopping; })) {
      const uint64_t lsn = applied_lsn;
      lock.unlock();
      ReleaseLog(lsn, true);
      lock.lock();
      log_released = true;
    }
  }
  groups->clear();
  groups->swap(to_apply);
  to_apply_records = 0;
  apply_now = false;
  return true;
}

// Puts the groups back to be tried again later, tells those waiting for
// the database, and gives back the space the failed transaction took;
// failures counts those before this one in a row. False when stopping and
// it keeps failing: what is left is applied from the commit log at the
// next start.
bool Store::Impl::ApplyFailed(std::deque<LogGroup>& groups, const Status& s, int failures) {
  std::vector<std::function<void(const Status&)>> failed;
  {
    std::lock_guard lock(apply_mu);
    if (apply_error.ok()) {
      spdlog::error("store: {} commit(s) could not be written into the database (they are safe in the commit "
                    "log; retrying from {} ms on): {}",
                    groups.size(), kApplyRetry.count(), s.message());
    }
    apply_error = s;
    apply_failures++;
    for (auto it = groups.rbegin(); it != groups.rend(); ++it) {
      to_apply_records += Weight(*it);
      to_apply.push_front(std::move(*it));
    }
    groups.clear();
    for (auto& w : apply_waiters) failed.push_back(std::move(w.second));
    apply_waiters.clear();
    if (apply_stopping && ++failures_while_stopping >= 3) {
      spdlog::error("store: stopping with {} commit(s) not in the database; they are applied from the commit "
                    "log at the next start",
                    to_apply.size());
      to_apply.clear();
      applier_gone = true;
      applied_cv.notify_all();
      return false;
    }
  }
  applied_cv.notify_all();
  for (auto& f : failed) f(s);
  // A transaction that failed for want of space leaves the WAL as long as
  // it got; that space is what the commit log needs to go on taking commits
  // (acknowledgements, whose bodies then need not be written at all). So
  // the WAL is cut back to what was committed,
  sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
  wal_backfilled.store(0, std::memory_order_relaxed);
  // and the applier tries again less and less often (each try takes the
  // space again while it runs).
  const auto retry = std::min<std::chrono::milliseconds>(kApplyRetry * (1 << std::min(failures, 5)), kApplyRetryMax);
  std::unique_lock lock(apply_mu);
  apply_cv.wait_for(lock, retry, [&] { return apply_stopping; });
  return true;
}

// After a successful apply: the messages leave the unapplied set, those
// waiting for the database go on, the log releases the groups, the indexer
// learns of their records, and the WAL is kept short.
void Store::Impl::Applied(std::deque<LogGroup>& groups, size_t dropped) {
  const uint64_t lsn = groups.back().lsn;
  uint64_t last_seq = 0;
  for (const auto& g : groups) {
    if (!g.records.empty()) last_seq = g.records.back().record.seq;
  }
  {
    std::lock_guard lock(unapplied_mu);
    for (const auto& g : groups) {
      for (const auto& b : g.batches) {
        if (b.new_message) unapplied_ids.erase(Key(b.new_message->sender, b.new_message->message_id));
      }
    }
  }
  std::vector<std::function<void(const Status&)>> ready;
  {
    std::lock_guard lock(apply_mu);
    if (!apply_error.ok()) spdlog::info("store: the database can be written again; the commit log is applied");
    apply_error = Status::Ok();
    applied_lsn = lsn;
    for (const auto& g : groups) unapplied_bytes -= g.bytes;
    auto keep = apply_waiters.begin();
    for (auto& w : apply_waiters) {
      if (w.first <= lsn) {
        ready.push_back(std::move(w.second));
      } else {
        *keep++ = std::move(w);
      }
    }
    apply_waiters.erase(keep, apply_waiters.end());
  }
  applied_cv.notify_all();
  for (auto& f : ready) f(Status::Ok());
  groups.clear();  // frees the bodies
  ReleaseLog(lsn, false);
  log_released = false;
  if (last_seq != 0 && indexer) indexer->Committed(last_seq);
  // Deleted bodies and pruned fields must not stay in the WAL.
  if (dropped > 0) bodies_dropped = true;
  // What counts is how many frames the last checkpoint has not copied yet.
  // (Counting all of them woke the checkpointer after every commit once the
  // WAL had grown.)
  const int frames = wal_frames.load(std::memory_order_relaxed);
  const int uncopied = UncopiedFrames();
  if (uncopied >= kWakeCheckpointerFrames) wal_cv.notify_one();
  if (frames >= kRestartWalFrames && uncopied > 0) {
    if (uncopied <= kRestartCopyFrames) {
      // PASSIVE never waits: if the checkpointer is running, the next
      // apply tries again.
      int log_frames = 0, done = 0;
      if (sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, &log_frames, &done) == SQLITE_OK &&
          done >= 0) {
        wal_backfilled.store(done, std::memory_order_relaxed);
      }
    } else {
      wal_cv.notify_one();  // the checkpointer copies most of it first
    }
  }
  last_commit_ns.store(std::chrono::steady_clock::now().time_since_epoch().count(), std::memory_order_relaxed);
}

void Store::Impl::ReleaseLog(uint64_t lsn, bool rotate_current) {
  if (Status s = log->Release(lsn, rotate_current); !s.ok()) spdlog::warn("store: commit log: {}", s.message());
}

// Waits until every group logged so far is in the database (or applying
// fails meanwhile).
Status Store::Impl::WaitApplied() {
  std::unique_lock lock(apply_mu);
  const uint64_t target = written_lsn;
  if (applied_lsn >= target) return Status::Ok();
  const uint64_t failures = apply_failures;
  apply_now = true;
  apply_cv.notify_one();
  applied_cv.wait(lock, [&] { return applied_lsn >= target || apply_failures != failures || applier_gone; });
  if (applied_lsn >= target) return Status::Ok();
  if (!apply_error.ok()) return apply_error;
  return Status::Unavailable("the store is closing");
}

void Store::Impl::WhenApplied(std::function<void(const Status&)> then) {
  Status s;
  {
    std::lock_guard lock(apply_mu);
    if (applied_lsn < written_lsn) {
      if (!applier_gone) {
        apply_waiters.emplace_back(written_lsn, std::move(then));
        apply_now = true;
        apply_cv.notify_one();
        return;
      }
      s = Status::Unavailable("the store is closing");
    }
  }
  then(s);
}

void Store::Impl::DoneLoop() {
  pthread_setname_np(pthread_self(), "store-done");
  for (;;) {
    Completed c;
    {
      std::unique_lock lock(done_mu);
      done_running = false;
      done_cv.wait(lock, [&] { return !completed.empty() || done_stopping; });
      if (completed.empty()) return;
      c = std::move(completed.front());
      completed.pop_front();
      done_running = true;
    }
    for (auto& it : c.items) {
      if (it.done) it.done(c.status, c.checkpoint, it.result);
    }
  }
}

// Checkpoints the WAL into the database on its own connection, so the
// writer's commits never include that work.
void Store::Impl::WalLoop() {
  pthread_setname_np(pthread_self(), "store-wal");
  sqlite3* conn = nullptr;
  if (sqlite3_open_v2(options.path.c_str(), &conn, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
    spdlog::error("store: WAL checkpointer cannot open the database");
    sqlite3_close_v2(conn);
    return;
  }
  sqlite3_busy_handler(conn, RetrySoon<100>, nullptr);
  // A connection that has not read the database yet does not know it is in
  // WAL mode, and its checkpoints would do nothing.
  Exec(conn, "SELECT COUNT(*) FROM sqlite_master");
  auto last_truncate = std::chrono::steady_clock::now();
  // When bodies were first deleted since the last truncation (none: no
  // deletion waits).
  std::optional<std::chrono::steady_clock::time_point> purge_since;
  for (;;) {
    {
      std::unique_lock lock(wal_mu);
      wal_cv.wait_for(lock, std::chrono::milliseconds(100));
      if (wal_stopping) break;
    }
    const auto now = std::chrono::steady_clock::now();
    if (bodies_dropped.exchange(false) && !purge_since) purge_since = now;
    if (purge_since) {
      const auto last_commit =
          std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(last_commit_ns.load()));
      const bool quiet = now - last_commit >= kQuietForTruncate && now - last_truncate >= kTruncateWalEvery;
      if (quiet || now - *purge_since >= options.wal_purge_within) {
        // Most frames first, without holding up the writer; TRUNCATE then
        // blocks it only for the rest.
        int log = 0, done = 0;
        sqlite3_wal_checkpoint_v2(conn, nullptr, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
        const auto t0 = std::chrono::steady_clock::now();
        if (sqlite3_wal_checkpoint_v2(conn, nullptr, SQLITE_CHECKPOINT_TRUNCATE, &log, &done) == SQLITE_OK) {
          purge_since.reset();
          wal_backfilled.store(0, std::memory_order_relaxed);
        }
        last_truncate = std::chrono::steady_clock::now();
        const auto us = std::chrono::duration_cast<std::chrono::microseconds>(last_truncate - t0).count();
        if (quiet) {
          spdlog::debug("store: WAL truncated in {} us", us);
        } else {
          spdlog::info("store: WAL truncated under load in {} us (deleted bodies leave the WAL within {} s)", us,
                       std::chrono::duration_cast<std::chrono::seconds>(options.wal_purge_within).count());
        }
        continue;
      }
    }
    int log = 0, done = 0;
    sqlite3_wal_checkpoint_v2(conn, nullptr, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
    if (done >= 0) wal_backfilled.store(done, std::memory_order_relaxed);
  }
  sqlite3_wal_checkpoint_v2(conn, nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
  sqlite3_close_v2(conn);
}

// Opens the commit log and applies what it holds beyond the database's
// watermark (the commits of the last run that the applier had not written
// when the broker stopped or crashed), in one transaction; then the log
// releases everything (Open).
Status Store::Impl::OpenLog() {
  const uint64_t applied = static_cast<uint64_t>(audit_seq::Info(db, kLogApplied, "store_info").value_or(0));
  std::deque<LogGroup> replayed;
  CommitLog::Options lo;
  lo.prefix = options.path + "-log";
  // A segment goes once it is released, and is released (at the latest)
  // at the first apply after it is closed: bodies leave the log within
  // wal_purge_within, as they leave the WAL.
  lo.segment_age = std::min<std::chrono::milliseconds>(lo.segment_age, options.wal_purge_within / 2);
  auto opened = CommitLog::Open(lo, applied, [&](uint64_t lsn, std::string_view payload) -> Status {
    auto g = DecodeLogGroup(payload);
    if (!g.ok()) return g.status().Annotate(lo.prefix + ": entry " + std::to_string(lsn));
    g->lsn = lsn;
    replayed.push_back(std::move(g).value());
    return Status::Ok();
  });
  if (!opened.ok()) return opened.status().Annotate("commit log");
  log = std::move(opened).value();
  if (!replayed.empty()) {
    size_t records = 0, dropped = 0;
    for (const auto& g : replayed) records += g.records.size();
    if (Status s = Apply(replayed, &dropped); !s.ok()) return s.Annotate("applying the commit log");
    spdlog::info("store: {} commit(s) with {} audit record(s) applied from the commit log", replayed.size(), records);
  }
  applied_lsn = written_lsn = std::max(applied, log->last_lsn());
  if (applied_lsn > 0) ReleaseLog(applied_lsn, true);
  return Status::Ok();
}

Result<std::unique_ptr<Store>> Store::Open(const Options& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  const auto dir = std::filesystem::path(options.path).parent_path();
  if (!dir.empty() && !std::filesystem::exists(dir)) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) return Status::IoError("cannot create " + dir.string() + ": " + ec.message());
    std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);  // 0700
  }
  // The store, its WAL and its shared-memory file are the broker's alone.
  const mode_t old_mask = ::umask(0077);
  const int rc = sqlite3_open_v2(options.path.c_str(), &impl->db,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  ::umask(old_mask);
  if (rc != SQLITE_OK) return SqlError(impl->db, "cannot open store " + options.path);
  ::chmod(options.path.c_str(), 0600);
  sqlite3* db = impl->db;
  sqlite3_busy_handler(db, RetrySoon<5000>, nullptr);
  for (const char* pragma : {"PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL", "PRAGMA wal_autocheckpoint = 0",
                             "PRAGMA secure_delete = ON", kWriterCacheSize, kWalSizeLimit}) {
    if (Status s = Exec(db, pragma); !s.ok()) return s.Annotate(options.path);
  }
  // Migrations that rebuild a table run with foreign keys off (SQLite's
  // own procedure for altering a table); they are on from then on.
  if (Status s = impl->Migrate(); !s.ok()) return s.Annotate(options.path);
  if (Status s = Exec(db, "PRAGMA foreign_keys = ON"); !s.ok()) return s.Annotate(options.path);
  if (Status s = impl->PrepareStatements(); !s.ok()) return s;
  if (Status s = impl->OpenLog(); !s.ok()) return s.Annotate(options.path);
  if (Status s = impl->LoadTree(); !s.ok()) return s.Annotate(options.path);
  // A log with records and no signing key is a restore gone wrong: a new key
  // would make every earlier checkpoint unverifiable against it.
  if (impl->tree.size() > 0 && !std::filesystem::exists(options.signing_key)) {
    return Status::NotFound("the audit log has " + std::to_string(impl->tree.size()) +
                            " records but its signing key " + options.signing_key +
                            " is missing; restore it from the backup (a new key would not match the log)");
  }
  auto signer = audit::Signer::LoadOrCreate(options.signing_key);
  if (!signer.ok()) return signer.status().Annotate("audit signing key");
  impl->signer = std::move(signer).value();
  auto key = LoadOrCreateDigestKey(options.digest_key);
  if (!key.ok()) return key.status().Annotate("body digest key");
  impl->digest_key = std::move(key).value();
  impl->body_mac = std::make_unique<crypto::HmacSha256>(impl->digest_key);
  if (sqlite3_open_v2(options.path.c_str(), &impl->reader, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) !=
      SQLITE_OK) {
    return SqlError(impl->reader, "cannot open store " + options.path + " for reading");
  }
  sqlite3_busy_timeout(impl->reader, 5000);
  if (sqlite3_open_v2(options.path.c_str(), &impl->wdb, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) !=
      SQLITE_OK) {
    return SqlError(impl->wdb, "cannot open store " + options.path + " for reading");
  }
  sqlite3_busy_timeout(impl->wdb, 5000);
  if (Status s = impl->find_duplicate.Prepare(
          impl->wdb, "SELECT row, publish_digest, ack FROM messages WHERE sender = ? AND message_id = ?");
      !s.ok()) {
    return s;
  }
  {
    sqlite3_stmt* q = nullptr;
    sqlite3_prepare_v2(db, "SELECT (SELECT COALESCE(MAX(row), 0) FROM messages), (SELECT COALESCE(MAX(id), 0) FROM deliveries)",
                       -1, &q, nullptr);
    if (sqlite3_step(q) == SQLITE_ROW) {
      impl->next_message_row = sqlite3_column_int64(q, 0) + 1;
      impl->next_delivery_id = sqlite3_column_int64(q, 1) + 1;
    }
    sqlite3_finalize(q);
  }
  if (Status s = impl->LoadSeenIds(); !s.ok()) return s.Annotate(options.path);
  impl->latest = impl->signer->Sign(options.origin, impl->tree.size(), impl->tree.Root(), NowMs());
  impl->sign_thread = std::make_unique<SignerThread>(impl->signer.get(), options.origin);
  auto indexer = AuditIndexer::Open(options.path, !options.pause_audit_index);
  if (!indexer.ok()) return indexer.status().Annotate(options.path);
  impl->indexer = std::move(indexer).value();
  Impl* raw = impl.get();
  sqlite3_wal_hook(
      db,
      [](void* arg, sqlite3*, const char*, int frames) {
        static_cast<Impl*>(arg)->wal_frames.store(frames, std::memory_order_relaxed);
        return SQLITE_OK;
      },
      raw);
  impl->done_thread = std::thread([raw] { raw->DoneLoop(); });
  impl->applier = std::thread([raw] { raw->ApplyLoop(); });
  impl->writer = std::thread([raw] { raw->WriterLoop(); });
  impl->wal_checkpointer = std::thread([raw] { raw->WalLoop(); });
  spdlog::info("store {}: {} audit record(s), signing key {}", options.path, impl->tree.size(), impl->signer->key_id());
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Store::~Store() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  impl_->writer.join();
  {
    std::lock_guard lock(impl_->done_mu);
    impl_->done_stopping = true;
  }
  impl_->done_cv.notify_all();
  impl_->done_thread.join();  // every done() has run
  spdlog::info("store: {} commits of {} audit records since start ({} failed)", impl_->counters.commits,
               impl_->counters.records, impl_->counters.failed_commits);
  // A final checkpoint row for the whole log.
  impl_->last_checkpoint_row_ms = 0;
  if (impl_->tree.size() > 0) {
    Impl::Items none;
    audit::Checkpoint cp;
    merkle::Tree t;
    uint64_t next = 0;
    size_t records = 0, dropped = 0;
    if (impl_->Commit(none, &cp, &t, &next, &records, &dropped).ok()) impl_->latest = cp;
  }
  impl_->sign_thread.reset();
  // The applier writes what is left into the database, and the log lets
  // it go.
  {
    std::lock_guard lock(impl_->apply_mu);
    impl_->apply_stopping = true;
  }
  impl_->apply_cv.notify_all();
  impl_->applier.join();
  impl_->indexer.reset();  // finishes the index first when little is left
  {
    std::lock_guard lock(impl_->wal_mu);
    impl_->wal_stopping = true;
  }
  impl_->wal_cv.notify_all();
  impl_->wal_checkpointer.join();
}

void Store::Append(std::vector<audit::Record> records, Done done) {
  Batch b;
  b.records = std::move(records);
  BatchDone wrapped;
  if (done) {
    wrapped = [done = std::move(done)](const Status& s, const audit::Checkpoint& cp, const BatchResult&) {
      done(s, cp);
    };
  }
  Commit(std::move(b), std::move(wrapped));
}

void Store::Commit(Batch batch, BatchDone done) {
  bool closing = false;
  {
    std::lock_guard lock(impl_->mu);
    closing = impl_->stopping;
    if (!closing) impl_->Push({std::move(batch), std::move(done), {}, nullptr});
  }
  if (closing) {
    if (done) done(Status::Unavailable("the store is closing"), audit::Checkpoint{}, BatchResult{});
    return;
  }
  impl_->cv.notify_one();
}

Result<audit::Checkpoint> Store::AppendSync(std::vector<audit::Record> records) {
  std::promise<Result<audit::Checkpoint>> p;
  auto f = p.get_future();
  Append(std::move(records), [&p](const Status& s, const audit::Checkpoint& cp) {
    if (s.ok()) {
      p.set_value(cp);
    } else {
      p.set_value(s);
    }
  });
  return f.get();
}

Result<BatchResult> Store::CommitSync(Batch batch) {
  std::promise<Result<BatchResult>> p;
  auto f = p.get_future();
  Commit(std::move(batch), [&p](const Status& s, const audit::Checkpoint&, const BatchResult& r) {
    if (s.ok()) {
      p.set_value(r);
    } else {
      p.set_value(s);
    }
  });
  return f.get();
}

void Store::PruneAudit(int64_t before_ms, std::string why, PruneDone done) {
  auto job = std::make_shared<Impl::PruneJob>();
  job->before_ms = before_ms;
  job->why = std::move(why);
  BatchDone wrapped = [job, done = std::move(done)](const Status& s, const audit::Checkpoint&, const BatchResult&) {
    if (done) done(s, s.ok() ? job->pruned : Pruned{});
  };
  bool closing = false;
  {
    std::lock_guard lock(impl_->mu);
    closing = impl_->stopping;
    if (!closing) impl_->Push({Batch{}, std::move(wrapped), {}, job});
  }
  if (closing) {
    wrapped(Status::Unavailable("the store is closing"), audit::Checkpoint{}, BatchResult{});
    return;
  }
  impl_->cv.notify_one();
}

Result<Store::Pruned> Store::PruneAuditSync(int64_t before_ms, std::string why) {
  std::promise<Result<Pruned>> p;
  auto f = p.get_future();
  PruneAudit(before_ms, std::move(why), [&p](const Status& s, const Pruned& pruned) {
    if (s.ok()) {
      p.set_value(pruned);
    } else {
      p.set_value(s);
    }
  });
  return f.get();
}

int64_t Store::NextMessageRow() { return impl_->next_message_row++; }
int64_t Store::NextDeliveryId() { return impl_->next_delivery_id++; }

namespace {

std::string ColumnBlob(sqlite3_stmt* q, int i) {
  const void* p = sqlite3_column_blob(q, i);
  return p ? std::string(static_cast<const char*>(p), sqlite3_column_bytes(q, i)) : std::string();
}

std::string ColumnText(sqlite3_stmt* q, int i) {
  const unsigned char* p = sqlite3_column_text(q, i);
  return p ? std::string(reinterpret_cast<const char*>(p), sqlite3_column_bytes(q, i)) : std::string();
}

constexpr const char* kMessageColumns =
    "m.row, m.sender, m.message_id, m.case_id, m.message_type, m.tlp, m.purpose, m.agreement, m.recipients, "
    "m.received_ms, m.expires_ms, m.want_reports, m.publish_digest, m.ack, m.recalled_ms";

// Reads kMessageColumns starting at column first.
StoredMessage ReadMessage(sqlite3_stmt* q, int first) {
  StoredMessage m;
  int i = first;
  m.row = sqlite3_column_int64(q, i++);
  m.sender = ColumnText(q, i++);
  m.message_id = ColumnText(q, i++);
  m.case_id = ColumnText(q, i++);
  m.message_type = ColumnText(q, i++);
  m.tlp = sqlite3_column_int(q, i++);
  m.purpose = ColumnText(q, i++);
  m.agreement = ColumnText(q, i++);
  m.recipients = ColumnText(q, i++);
  m.received_ms = sqlite3_column_int64(q, i++);
  m.expires_ms = sqlite3_column_int64(q, i++);
  m.want_reports = sqlite3_column_int(q, i++) != 0;
  m.publish_digest = ColumnBlob(q, i++);
  m.ack = ColumnBlob(q, i++);
  m.recalled_ms = sqlite3_column_int64(q, i++);
  return m;
}

}  // namespace

Status Store::LoadPending(const std::function<void(StoredDelivery, const StoredMessage&)>& each) const {
  if (Status s = impl_->WaitApplied(); !s.ok()) return s;
  std::lock_guard lock(impl_->reader_mu);
  sqlite3* db = impl_->reader;
  const std::string sql = std::string("SELECT d.id, d.recipient, d.kind, d.attempts, d.named, d.payload, ") +
                          kMessageColumns +
                          ", m.body FROM deliveries d JOIN messages m ON m.row = d.message_row "
                          "WHERE d.state = 0 ORDER BY d.id";
  sqlite3_stmt* q = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &q, nullptr) != SQLITE_OK) return SqlError(db, "load pending");
  StoredMessage m;
  int rc;
  while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
    StoredDelivery d;
    d.id = sqlite3_column_int64(q, 0);
    d.recipient = ColumnText(q, 1);
    d.kind = static_cast<DeliveryKind>(sqlite3_column_int(q, 2));
    d.attempts = static_cast<uint32_t>(sqlite3_column_int64(q, 3));
    d.named = sqlite3_column_int(q, 4) != 0;
    d.payload = ColumnBlob(q, 5);
    if (m.row != sqlite3_column_int64(q, 6)) {
      m = ReadMessage(q, 6);
      m.body = ColumnBlob(q, 21);
    }
    each(std::move(d), m);
  }
  sqlite3_finalize(q);
  if (rc != SQLITE_DONE) return SqlError(db, "load pending");
  return Status::Ok();
}

Result<std::optional<StoredMessage>> Store::FindMessage(std::string_view sender, std::string_view message_id,
                                                        Wait wait) const {
  if (wait == Wait::kForApplier) {
    if (Status s = impl_->WaitApplied(); !s.ok()) return s;
  }
  std::lock_guard lock(impl_->reader_mu);
  sqlite3* db = impl_->reader;
  const std::string sql = std::string("SELECT ") + kMessageColumns + " FROM messages m WHERE m.sender = ? AND m.message_id = ?";
  sqlite3_stmt* q = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &q, nullptr) != SQLITE_OK) return SqlError(db, "find message");
  sqlite3_bind_text(q, 1, sender.data(), static_cast<int>(sender.size()), SQLITE_STATIC);
  sqlite3_bind_text(q, 2, message_id.data(), static_cast<int>(message_id.size()), SQLITE_STATIC);
  std::optional<StoredMessage> out;
  const int rc = sqlite3_step(q);
  if (rc == SQLITE_ROW) out = ReadMessage(q, 0);
  sqlite3_finalize(q);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(db, "find message");
  return out;
}

Result<std::optional<StoredMessage>> Store::FindDelivered(std::string_view recipient, std::string_view message_id,
                                                           Wait wait) const {
  if (wait == Wait::kForApplier) {
    if (Status s = impl_->WaitApplied(); !s.ok()) return s;
  }
  std::lock_guard lock(impl_->reader_mu);
  sqlite3* db = impl_->reader;
  const std::string sql = std::string("SELECT ") + kMessageColumns +
                          " FROM messages m JOIN deliveries d ON d.message_row = m.row "
                          "WHERE m.message_id = ? AND d.recipient = ? AND d.kind = 1 AND d.state = 1 LIMIT 1";
  sqlite3_stmt* q = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &q, nullptr) != SQLITE_OK) return SqlError(db, "find delivered");
  sqlite3_bind_text(q, 1, message_id.data(), static_cast<int>(message_id.size()), SQLITE_STATIC);
  sqlite3_bind_text(q, 2, recipient.data(), static_cast<int>(recipient.size()), SQLITE_STATIC);
  std::optional<StoredMessage> out;
  const int rc = sqlite3_step(q);
  if (rc == SQLITE_ROW) out = ReadMessage(q, 0);
  sqlite3_finalize(q);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(db, "find delivered");
  return out;
}

Result<std::vector<std::string>> Store::DeliveredRecipients(int64_t row, Wait wait) const {
  if (wait == Wait::kForApplier) {
    if (Status s = impl_->WaitApplied(); !s.ok()) return s;
  }
  std::lock_guard lock(impl_->reader_mu);
  sqlite3* db = impl_->reader;
  sqlite3_stmt* q = nullptr;
  if (sqlite3_prepare_v2(db,
                         "SELECT recipient FROM deliveries WHERE message_row = ? AND kind = 1 AND state = 1 "
                         "ORDER BY id",
                         -1, &q, nullptr) != SQLITE_OK) {
    return SqlError(db, "delivered recipients");
  }
  sqlite3_bind_int64(q, 1, row);
  std::vector<std::string> out;
  int rc;
  while ((rc = sqlite3_step(q)) == SQLITE_ROW) out.push_back(ColumnText(q, 0));
  sqlite3_finalize(q);
  if (rc != SQLITE_DONE) return SqlError(db, "delivered recipients");
  return out;
}

Status Store::Sync() { return impl_->WaitApplied(); }

void Store::WhenApplied(std::function<void(const Status&)> then) { impl_->WhenApplied(std::move(then)); }

audit::Checkpoint Store::latest() const {
  std::lock_guard lock(impl_->mu);
  return impl_->latest;
}

uint64_t Store::audit_indexed_through() const { return impl_->indexer->indexed_through(); }

Store::Counters Store::counters() const {
  std::lock_guard lock(impl_->mu);
  return impl_->counters;
}

const std::string& Store::public_key_pem() const { return impl_->signer->public_key_pem(); }

std::string Store::BodyDigest(std::string_view body) const {
  const crypto::Digest d = impl_->body_mac->Mac(body);
  return crypto::Hex(d.data(), d.size());
}

namespace {

// The export's audit_log: every field a column, in the shape exports had
// since the store's schema 4 (made with CREATE TABLE AS SELECT then), which
// `liaison audit verify` and auditors' queries read, and the leaf hash;
// integers are INTEGER and strings TEXT (the verifier insists). Each field
// is held once: the leaf bytes are not, since they are the canonical
// encoding of the columns (common/audit_record.h), and the verifier encodes
// them again. Exports up to this version also held a `leaf` column, which
// made them twice the store's size (docs/auditing.md, section 3.1).
constexpr const char* kExportSchema =
    "CREATE TABLE audit_log(seq INT,time_ms INT,event TEXT,actor TEXT,cert_sha256 TEXT,message_id TEXT,case_id TEXT,"
    "sender TEXT,recipient TEXT,message_type TEXT,tlp INT,purpose TEXT,decision TEXT,rules TEXT,policy_version TEXT,"
    "obligations TEXT,body_hmac TEXT,detail TEXT,leaf_hash";
constexpr const char* kHashOnlyColumn = ",hash_only INTEGER NOT NULL DEFAULT 0)";

// Copies the store's records into the export, in seq order. The fields
// that are columns in the store are copied from there, the others decoded
// from the leaf, so the verifier, hashing the encoding of the export's
// columns, also checks the store's columns against the leaf that was
// signed. A leaf that does not decode leaves those fields empty (its record
// then fails to verify): judging it is the verifier's job.
Status CopyRecords(sqlite3* db, bool with_hash_only) {
  sqlite3_stmt* in = nullptr;
  sqlite3_stmt* out = nullptr;
  struct Finalizer {
    sqlite3_stmt** a;
    sqlite3_stmt** b;
    ~Finalizer() {
      sqlite3_finalize(*a);
      sqlite3_finalize(*b);
    }
  } finalizer{&in, &out};
  if (sqlite3_prepare_v2(db,
                         "SELECT seq, time_ms, event, actor, message_id, case_id, sender, recipient, decision, leaf, "
                         "leaf_hash FROM store.audit_log ORDER BY seq",
                         -1, &in, nullptr) != SQLITE_OK ||
      sqlite3_prepare_v2(db,
                         with_hash_only ? "INSERT INTO main.audit_log VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                                        : "INSERT INTO main.audit_log VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         -1, &out, nullptr) != SQLITE_OK) {
    return SqlError(db, "export");
  }
  auto text = [&](int i, std::string_view v) {
    sqlite3_bind_text(out, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
  };
  int rc;
  while ((rc = sqlite3_step(in)) == SQLITE_ROW) {
    const std::string_view leaf(static_cast<const char*>(sqlite3_column_blob(in, 9)),
                                static_cast<size_t>(sqlite3_column_bytes(in, 9)));
    audit::Record r;
    if (auto decoded = audit::DecodeLeaf(leaf); decoded.ok()) r = std::move(decoded).value();
    sqlite3_bind_int64(out, 1, sqlite3_column_int64(in, 0));
    sqlite3_bind_int64(out, 2, sqlite3_column_int64(in, 1));
    // The store's columns: bound straight from the reading statement.
    auto column = [&](int to, int from) {
      const unsigned char* t = sqlite3_column_text(in, from);
      text(to, std::string_view(t ? reinterpret_cast<const char*>(t) : "",
                                static_cast<size_t>(sqlite3_column_bytes(in, from))));
    };
    column(3, 2);   // event
    column(4, 3);   // actor
    text(5, r.cert_sha256);
    column(6, 4);   // message_id
    column(7, 5);   // case_id
    column(8, 6);   // sender
    column(9, 7);   // recipient
    text(10, r.message_type);
    sqlite3_bind_int64(out, 11, r.tlp);
    text(12, r.purpose);
    column(13, 8);  // decision
    text(14, r.rules);
    text(15, r.policy_version);
    text(16, r.obligations);
    text(17, r.body_hmac);
    text(18, r.detail);
    sqlite3_bind_blob(out, 19, sqlite3_column_blob(in, 10), sqlite3_column_bytes(in, 10), SQLITE_STATIC);
    // A pruned record (no leaf): its hash alone, as in a scoped export.
    if (with_hash_only) sqlite3_bind_int(out, 20, leaf.empty() ? 1 : 0);
    const int w = sqlite3_step(out);
    sqlite3_reset(out);
    if (w != SQLITE_DONE) return SqlError(db, "export");
  }
  if (rc != SQLITE_DONE) return SqlError(db, "export: reading the store");
  return Status::Ok();
}

}  // namespace

Status Store::ExportAudit(const std::string& db_path, const std::string& out_path) {
  if (std::filesystem::exists(out_path)) return Status::InvalidArgument(out_path + " already exists");
  if (!std::filesystem::exists(db_path)) return Status::NotFound(db_path + " does not exist");
  if (db_path.find('\'') != std::string::npos || db_path.find('?') != std::string::npos) {
    return Status::InvalidArgument("the store path must not contain quotes or '?'");
  }
  // The export is the main database; the store is attached read-only, and
  // one transaction reads it from one snapshot.
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(out_path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI, nullptr) !=
      SQLITE_OK) {
    Status s = SqlError(db, "cannot create " + out_path);
    sqlite3_close_v2(db);
    return s;
  }
  sqlite3_busy_timeout(db, 5000);
  const std::string attach = "ATTACH DATABASE 'file:" + db_path + "?mode=ro' AS store";
  Status s = Exec(db, attach.c_str());
  if (s.ok()) s = Exec(db, "BEGIN");
  // A log with pruned records exports them as hash-only rows: the export then
  // has the hash_only column of an auditor's scoped export (and only then,
  // so the export of an unpruned log keeps its shape).
  bool pruned = false;
  if (s.ok()) {
    sqlite3_stmt* q = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT value FROM store.audit_info WHERE key = 'pruned_through'", -1, &q, nullptr) ==
            SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW) {
      pruned = sqlite3_column_int64(q, 0) > 0;
    }
    sqlite3_finalize(q);
  }
  if (s.ok()) s = Exec(db, (std::string(kExportSchema) + (pruned ? kHashOnlyColumn : ")")).c_str());
  if (s.ok()) s = CopyRecords(db, pruned);
  if (s.ok()) s = Exec(db, "CREATE TABLE checkpoints AS SELECT * FROM store.checkpoints ORDER BY tree_size");
  if (s.ok()) s = Exec(db, "COMMIT");
  sqlite3_close_v2(db);
  if (!s.ok()) std::filesystem::remove(out_path);
  return s;
}

}  // namespace liaison::broker
