#include "broker/store/store.h"

#include <openssl/rand.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include "broker/store/audit_chunks.h"
#include "broker/store/audit_indexer.h"
#include "broker/store/audit_seq.h"
#include "broker/store/commit_log.h"
#include "broker/store/log_group.h"
#include "broker/store/store_impl.h"
#include "common/files.h"
#include "common/merkle.h"
#include "common/sha256.h"

namespace liaison::broker {

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

namespace {

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

// Rebuilds the in-memory tree from the stored leaf hashes (32 bytes a
// record: about a second for a few million records), after checking that the
// sequence has no gaps.
Status Store::Impl::LoadTree() {
  audit_chunks::Extent extent;
  merkle::Tree t;
  if (Status s = audit_chunks::Scan(db, &extent,
                                    [&t](std::string_view hash) {
                                      merkle::Hash h;
                                      std::memcpy(h.data(), hash.data(), h.size());
                                      t.Append(h);
                                    });
      !s.ok()) {
    return s;
  }
  if (extent.max_seq != extent.count || !extent.contiguous) {
    return Status::Corruption("audit log has " + std::to_string(extent.count) +
                              " records but its highest sequence is " + std::to_string(extent.max_seq) +
                              (extent.contiguous ? "" : " and its chunks leave gaps or overlap"));
  }
  tree = std::move(t);
  next_seq = extent.max_seq + 1;
  last_time_ms = extent.last_time_ms;
  pruned_through = static_cast<uint64_t>(audit_seq::Info(db, "pruned_through").value_or(0));
  time_disorder_ms = audit_seq::Info(db, "time_disorder_ms").value_or(0);
  return Status::Ok();
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
    if (Status s = Apply(replayed, nullptr, &dropped); !s.ok()) return s.Annotate("applying the commit log");
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
  if (Status s = audit_chunks::Register(db); !s.ok()) return s;
  sqlite3_busy_handler(db, RetrySoon<5000>, nullptr);
  for (const char* pragma : {"PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL", "PRAGMA wal_autocheckpoint = 0",
                             "PRAGMA secure_delete = ON", kApplierCacheSize, kWalSizeLimit}) {
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
  if (Status s = audit_chunks::Register(impl->reader); !s.ok()) return s;
  sqlite3_busy_timeout(impl->reader, 5000);
  if (sqlite3_open_v2(options.path.c_str(), &impl->wdb, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) !=
      SQLITE_OK) {
    return SqlError(impl->wdb, "cannot open store " + options.path + " for reading");
  }
  if (Status s = audit_chunks::Register(impl->wdb); !s.ok()) return s;
  sqlite3_busy_timeout(impl->wdb, 5000);
  if (Status s = impl->find_duplicate.Prepare(
          impl->wdb, "SELECT row, publish_digest, ack FROM messages WHERE sender = ? AND message_id = ?");
      !s.ok()) {
    return s;
  }
  {
    sqlite3_stmt* q = nullptr;
    // Delivery ids: those with rows, and those only in a message's
    // delivered column (store_info; schema 9).
    sqlite3_prepare_v2(db,
                       "SELECT (SELECT COALESCE(MAX(row), 0) FROM messages), (SELECT COALESCE(MAX(id), 0) FROM deliveries), "
                       "(SELECT COALESCE(MAX(value), 0) FROM store_info WHERE key = ?)",
                       -1, &q, nullptr);
    sqlite3_bind_text(q, 1, kLastDeliveryId, -1, SQLITE_STATIC);
    if (sqlite3_step(q) == SQLITE_ROW) {
      impl->next_message_row = sqlite3_column_int64(q, 0) + 1;
      impl->next_delivery_id = std::max(sqlite3_column_int64(q, 1), sqlite3_column_int64(q, 2)) + 1;
    }
    sqlite3_finalize(q);
  }
  if (Status s = impl->LoadSeenIds(); !s.ok()) return s.Annotate(options.path);
  impl->latest = impl->signer->Sign(options.origin, impl->tree.size(), impl->tree.Root(), NowMs());
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
  bool wake = true;
  {
    std::lock_guard lock(impl_->mu);
    closing = impl_->stopping;
    if (!closing) {
      const bool lazy = batch.lazy;
      impl_->Push({std::move(batch), std::move(done), {}, nullptr});
      // A lingering writer commits a lazy batch when its wait ends, soon
      // enough (Impl::writer_lingering).
      wake = !lazy || !impl_->writer_lingering || impl_->WriterHasUrgent();
    }
  }
  if (closing) {
    if (done) done(Status::Unavailable("the store is closing"), audit::Checkpoint{}, BatchResult{});
    return;
  }
  if (wake) impl_->cv.notify_one();
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
  if (Status s = impl_->WaitApplied(wait); !s.ok()) return s;
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
  if (Status s = impl_->WaitApplied(wait); !s.ok()) return s;
  std::lock_guard lock(impl_->reader_mu);
  sqlite3* db = impl_->reader;
  // Delivered: a finished row, or (acknowledged before the message was
  // applied) a name in the message's delivered column.
  const std::string sql = std::string("SELECT ") + kMessageColumns +
                          " FROM messages m WHERE m.message_id = ?1 AND "
                          "(instr(',' || m.delivered || ',', ',' || ?2 || ',') > 0 OR EXISTS (SELECT 1 FROM deliveries d "
                          "WHERE d.message_row = m.row AND d.recipient = ?2 AND d.kind = 1 AND d.state = 1)) LIMIT 1";
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

const std::string& SharedBytes::str() const {
  static const std::string kEmpty;
  return p_ ? *p_ : kEmpty;
}

std::vector<std::string> SplitAgencies(const std::string& list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = list.find(',', start);
    const size_t end = comma == std::string::npos ? list.size() : comma;
    if (end > start) out.push_back(list.substr(start, end - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

Result<std::vector<std::string>> Store::DeliveredRecipients(int64_t row, Wait wait) const {
  if (Status s = impl_->WaitApplied(wait); !s.ok()) return s;
  std::lock_guard lock(impl_->reader_mu);
  sqlite3* db = impl_->reader;
  sqlite3_stmt* q = nullptr;
  // Those acknowledged before the message was applied (its delivered
  // column, in delivery id order), then the finished rows in id order.
  std::vector<std::string> out;
  if (sqlite3_prepare_v2(db, "SELECT delivered FROM messages WHERE row = ?", -1, &q, nullptr) != SQLITE_OK) {
    return SqlError(db, "delivered recipients");
  }
  sqlite3_bind_int64(q, 1, row);
  int rc = sqlite3_step(q);
  if (rc == SQLITE_ROW) out = SplitAgencies(ColumnText(q, 0));
  sqlite3_finalize(q);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(db, "delivered recipients");
  if (sqlite3_prepare_v2(db,
                         "SELECT recipient FROM deliveries WHERE message_row = ? AND kind = 1 AND state = 1 "
                         "ORDER BY id",
                         -1, &q, nullptr) != SQLITE_OK) {
    return SqlError(db, "delivered recipients");
  }
  sqlite3_bind_int64(q, 1, row);
  while ((rc = sqlite3_step(q)) == SQLITE_ROW) out.push_back(ColumnText(q, 0));
  sqlite3_finalize(q);
  if (rc != SQLITE_DONE) return SqlError(db, "delivered recipients");
  return out;
}

Status Store::Sync() {
  // WhenApplied, waited for.
  std::promise<Status> applied;
  auto f = applied.get_future();
  WhenApplied([&applied](const Status& s) { applied.set_value(s); });
  return f.get();
}

void Store::WhenApplied(std::function<void(const Status&)> then) { impl_->WhenLoggedApplied(std::move(then)); }

audit::Checkpoint Store::latest() const {
  std::lock_guard lock(impl_->mu);
  return impl_->latest;
}

uint64_t Store::audit_indexed_through() const { return impl_->indexer->indexed_through(); }

Store::Counters Store::counters() const {
  std::lock_guard lock(impl_->mu);
  return impl_->counters;
}

LatencyHistogram::Snapshot Store::log_syncs() const {
  return impl_->log->syncs();
}

const std::string& Store::public_key_pem() const { return impl_->signer->public_key_pem(); }

std::string Store::BodyDigest(std::string_view body) const {
  const crypto::Digest d = impl_->body_mac->Mac(body);
  return crypto::Hex(d.data(), d.size());
}

}  // namespace liaison::broker
