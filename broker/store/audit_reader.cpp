#include "broker/store/audit_reader.h"

#include <sqlite3.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <future>
#include <limits>
#include <optional>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "broker/store/audit_chunks.h"
#include "broker/store/audit_index.h"
#include "broker/store/audit_seq.h"

namespace liaison::broker {
namespace {

// Reads through memory-mapped files rather than a read() per page: a lookup
// touches a few pages in each of many buckets of the index, and rows all over
// the log. Measured on a log of 10,000,000 records, the index probes of a case
// query took 5.3 ms with read() and 1.3 ms mapped. (Address space only; the
// pages are the OS page cache's. SQLite caps the size at 2 GB.)
constexpr const char* kMmapMain = "PRAGMA main.mmap_size = 2147418112";
constexpr const char* kMmapIndex = "PRAGMA ix.mmap_size = 2147418112";

// Jobs waiting for a worker; beyond this, requests are refused as busy.
constexpr size_t kMaxQueuedJobs = 256;

// The columns the store keeps (schema 5); every other field is in the leaf.
#define LIAISON_AUDIT_COLUMNS_AFTER_SEQ "time_ms, event, actor, message_id, case_id, sender, recipient, decision, leaf, leaf_hash"
constexpr const char* kColumns = "seq, " LIAISON_AUDIT_COLUMNS_AFTER_SEQ;
#undef LIAISON_AUDIT_COLUMNS_AFTER_SEQ

// In scope: the record names an agency of the scope as sender, recipient or
// actor, or names no agency at all. The one definition of an auditor's scope
// over records (docs/auditing.md, section 5).
constexpr const char* kInScope =
    "(sender IN (SELECT value FROM json_each(:scope)) OR recipient IN (SELECT value FROM json_each(:scope)) OR "
    "actor IN (SELECT value FROM json_each(:scope)) OR (sender = '' AND recipient = '' AND actor = ''))";

Status SqlError(sqlite3* db, const std::string& what) {
  return Status::IoError(what + ": " + (db ? sqlite3_errmsg(db) : "no database"));
}

std::string Column(sqlite3_stmt* s, int i) {
  const unsigned char* t = sqlite3_column_text(s, i);
  return t ? std::string(reinterpret_cast<const char*>(t), static_cast<size_t>(sqlite3_column_bytes(s, i)))
           : std::string();
}

std::string JsonArray(const std::vector<std::string>& items) {
  std::string out = "[";
  for (const auto& item : items) {
    if (out.size() > 1) out += ',';
    out += '"';
    for (char c : item) {
      if (c == '"' || c == '\\') out += '\\';
      if (static_cast<unsigned char>(c) >= 0x20) out += c;
    }
    out += '"';
  }
  return out + "]";
}

// A statement finalized on scope exit, with binding by parameter name
// (names absent from the SQL are skipped).
class Query {
 public:
  Query(sqlite3* db, const std::string& sql) {
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &s_, nullptr) != SQLITE_OK) s_ = nullptr;
  }
  ~Query() { sqlite3_finalize(s_); }
  bool ok() const { return s_ != nullptr; }
  sqlite3_stmt* get() { return s_; }
  void Text(const char* name, const std::string& v) {
    if (int i = sqlite3_bind_parameter_index(s_, name); i > 0) {
      sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    }
  }
  void Int(const char* name, int64_t v) {
    if (int i = sqlite3_bind_parameter_index(s_, name); i > 0) sqlite3_bind_int64(s_, i, v);
  }

 private:
  sqlite3_stmt* s_ = nullptr;
};

// One read transaction: the steps of a page (the seq range of a time
// filter, then the rows) see the same snapshot of the log.
class ReadTransaction {
 public:
  explicit ReadTransaction(sqlite3* db) : db_(db) { ok_ = sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr) == SQLITE_OK; }
  ~ReadTransaction() {
    if (ok_) sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr);
  }
  bool ok() const { return ok_; }

 private:
  sqlite3* db_;
  bool ok_ = false;
};

// The records a time filter [from_ms, to_ms) can match lie in the seq range
// (after, before): found by binary search over seq, a few dozen rowid
// lookups, so a time range costs its page and not the log before it. Exact
// when time is monotonic in seq, as the store makes it since schema 5.
// Older records may run back in time by up to time_disorder_ms (measured
// by migration 5): for any two records s < s', time(s) <= time(s') +
// disorder. So searching for from - disorder finds a seq before which no
// record can be at or after from, and searching for to + disorder one from
// which every record is at or after to. The rows are still filtered by
// time exactly; the range only saves reading the rest.
struct SeqRange {
  uint64_t after = 0;   // seq > after
  uint64_t before = 0;  // seq < before; 0: no upper bound
};

Result<SeqRange> TimeToSeqRange(sqlite3* db, const AuditFilter& f, uint64_t after) {
  SeqRange range{after, 0};
  const std::optional<int64_t> disorder = audit_seq::Info(db, "time_disorder_ms");
  if (!disorder) return range;  // a store before schema 5: no bounds, the filter alone
  const Result<uint64_t> last = audit_seq::LastSeq(db);
  if (!last.ok()) return last.status();
  const uint64_t max_seq = *last;
  auto first_at_or_after = [&](int64_t x) { return audit_seq::FirstAtOrAfter(db, max_seq, x); };
  // Saturating, so that extreme filters cannot overflow.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if (f.from_ms > 0) {
    auto first = first_at_or_after(f.from_ms - *disorder);
    if (!first.ok()) return first.status();
    range.after = std::max(range.after, *first - 1);
  }
  if (f.to_ms > 0) {
    auto end = first_at_or_after(f.to_ms > kMax - *disorder ? kMax : f.to_ms + *disorder);
    if (!end.ok()) return end.status();
    // Past the end: no bound, so records committed meanwhile are not cut off.
    if (*end <= max_seq) range.before = *end;
  }
  return range;
}

// The index's watermark (audit_index.h): records 1..N are in ix.ix2. Read
// first in a page's transaction, so the log's snapshot, taken after it,
// holds every record the index covers.
uint64_t IndexedThrough(sqlite3* db) {
  Query q(db, "SELECT value FROM ix.ix2_meta WHERE key = 'indexed_through'");
  if (!q.ok() || sqlite3_step(q.get()) != SQLITE_ROW) return 0;
  return static_cast<uint64_t>(sqlite3_column_int64(q.get(), 0));
}

// Attaches the derived audit index beside the store as "ix", once it exists
// (a store before schema 6 has none; the Store creates it at Open). Outside
// any transaction: SQLite attaches only there.
bool AttachIndex(sqlite3* db) {
  if (sqlite3_db_filename(db, "ix") != nullptr) return true;
  const char* main = sqlite3_db_filename(db, "main");
  if (main == nullptr || *main == '\0') return false;
  const std::string path = audit_index::PathFor(main);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return false;
  {
    // Opened with the connection's own flags: read-only.
    Query attach(db, "ATTACH DATABASE :path AS ix");
    if (!attach.ok()) return false;
    attach.Text(":path", path);
    if (sqlite3_step(attach.get()) != SQLITE_DONE) return false;
  }
  bool usable = false;
  {
    // Of this format only (the broker rebuilds an index of another one).
    Query rows(db, "SELECT 1 FROM ix.ix2 LIMIT 1");
    Query format(db, "SELECT value FROM ix.ix2_meta WHERE key = 'format'");
    usable = rows.ok() && format.ok() && sqlite3_step(format.get()) == SQLITE_ROW &&
             sqlite3_column_int64(format.get(), 0) == audit_index::kFormat;
  }
  if (!usable) {
    sqlite3_exec(db, "DETACH DATABASE ix", nullptr, nullptr, nullptr);
    return false;
  }
  sqlite3_exec(db, "PRAGMA ix.cache_size = -16384", nullptr, nullptr, nullptr);
  sqlite3_exec(db, kMmapIndex, nullptr, nullptr, nullptr);
  return true;
}

Result<AuditPage> RunPage(sqlite3* db, bool indexed_file, const AuditPageRequest& r) {
  const AuditFilter& f = r.filter;
  if (r.limit == 0 || r.limit > AuditReader::kMaxPageSize) {
    return Status::InvalidArgument("page size must be 1 to " + std::to_string(AuditReader::kMaxPageSize));
  }
  ReadTransaction snapshot(db);
  if (!snapshot.ok()) return SqlError(db, "audit query");
  // A filter on case, message or agency is looked up in the derived index
  // (the most selective one; the others are checked on the rows).
  std::optional<int64_t> key;
  if (!r.export_mode && indexed_file) {
    if (!f.message_id.empty()) {
      key = audit_index::Key(audit_index::Field::kMessage, f.message_id);
    } else if (!f.case_id.empty()) {
      key = audit_index::Key(audit_index::Field::kCase, f.case_id);
    } else if (!f.agency.empty()) {
      key = audit_index::Key(audit_index::Field::kAgency, f.agency);
    }
  }
  const uint64_t indexed = key ? IndexedThrough(db) : 0;
  SeqRange range{r.after_seq, 0};
  if (!r.export_mode) {
    // Pruned records (a prefix of the log) have nothing left to match.
    range.after = std::max<uint64_t>(range.after, audit_seq::Info(db, "pruned_through").value_or(0));
  }
  if (!r.export_mode && (f.from_ms > 0 || f.to_ms > 0)) {
    auto found = TimeToSeqRange(db, f, range.after);
    if (!found.ok()) return found.status();
    range = *found;
  }
  if (r.export_mode && (f.from_ms || f.to_ms || !f.agency.empty() || !f.case_id.empty() || !f.message_id.empty() ||
                        !f.event.empty() || !f.decision.empty())) {
    return Status::InvalidArgument("an export takes no filters");
  }
  // The conditions on a record's columns (unqualified: only audit_log has
  // these names).
  std::string filters;  // all but the scope (kInScope), which is added below
  if (f.from_ms) filters += " AND time_ms >= :from";
  if (f.to_ms) filters += " AND time_ms < :to";
  // The explicit "<> ''" lets SQLite use the partial indexes of a store
  // before schema 6.
  if (!f.case_id.empty()) filters += " AND case_id = :case AND case_id <> ''";
  if (!f.message_id.empty()) filters += " AND message_id = :message AND message_id <> ''";
  if (!f.event.empty()) filters += " AND event = :event";
  if (!f.decision.empty()) filters += " AND decision = :decision";
  const std::string scoped_filters = std::string(" AND ") + kInScope + filters;
  // The scope, for rows read one at a time (below): as kInScope says, in
  // C++, since SQLite would parse the scope's JSON again for every row.
  // (The same names as JsonArray passes to SQLite, control characters left out.)
  std::vector<std::string> scope_names;
  for (const auto& name : r.scope) {
    std::string clean;
    for (char c : name) {
      if (static_cast<unsigned char>(c) >= 0x20) clean += c;
    }
    scope_names.push_back(std::move(clean));
  }
  const std::unordered_set<std::string_view> scope(scope_names.begin(), scope_names.end());
  auto in_scope_of = [&](sqlite3_stmt* s) {
    auto column = [&](int i) {
      const unsigned char* t = sqlite3_column_text(s, i);
      return std::string_view(t ? reinterpret_cast<const char*>(t) : "", static_cast<size_t>(sqlite3_column_bytes(s, i)));
    };
    const std::string_view actor = column(3), sender = column(6), recipient = column(7);
    return scope.count(sender) > 0 || scope.count(recipient) > 0 || scope.count(actor) > 0 ||
           (sender.empty() && recipient.empty() && actor.empty());
  };
  bool scope_in_cpp = false;  // consume() checks the scope itself
  auto bind = [&](Query& q) {
    q.Text(":scope", JsonArray(r.scope));
    q.Int(":before", static_cast<int64_t>(range.before));
    q.Int(":until", static_cast<int64_t>(r.until_seq));
    q.Int(":from", f.from_ms);
    q.Int(":to", f.to_ms);
    q.Text(":agency", f.agency);
    q.Text(":case", f.case_id);
    q.Text(":message", f.message_id);
    q.Text(":event", f.event);
    q.Text(":decision", f.decision);
  };

  AuditPage page;
  uint64_t expected = r.after_seq + 1;
  bool full = false;  // limit rows, and whether one more matches, are known
  // Adds the rows of s (in seq order, after those already in the page).
  auto consume = [&](sqlite3_stmt* s) -> Status {
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      if (scope_in_cpp && !in_scope_of(s)) continue;  // not a row of this query
      if (page.rows.size() == r.limit) {
        page.more = true;
        full = true;
        break;
      }
      AuditRow row;
      audit::Record& rec = row.record;
      rec.seq = static_cast<uint64_t>(sqlite3_column_int64(s, 0));
      if (r.export_mode && rec.seq != expected) {
        return Status::Corruption("the audit log has no record " + std::to_string(expected));
      }
      ++expected;
      if (sqlite3_column_bytes(s, 10) != 32) {
        return Status::Corruption("audit record " + std::to_string(rec.seq) + " has a malformed leaf hash");
      }
      std::memcpy(row.leaf_hash.data(), sqlite3_column_blob(s, 10), 32);
      const bool in_scope = sqlite3_column_int(s, 11) != 0;
      if (!in_scope) {
        row.hash_only = true;  // export mode only: queries select in-scope rows alone
        page.rows.push_back(std::move(row));
        continue;
      }
      // The record is its leaf; the columns beside it only serve the query,
      // and must say the same (or the store was altered).
      const std::string_view leaf(static_cast<const char*>(sqlite3_column_blob(s, 9)),
                                  static_cast<size_t>(sqlite3_column_bytes(s, 9)));
      if (leaf.empty()) {
        // Pruned (retention): its hash in an export, never a query result.
        if (!r.export_mode) continue;
        row.hash_only = true;
        page.rows.push_back(std::move(row));
        continue;
      }
      auto decoded = audit::DecodeLeaf(leaf);
      if (!decoded.ok()) {
        return Status::Corruption("audit record " + std::to_string(rec.seq) + ": " + decoded.status().message());
      }
      bool same = decoded->seq == rec.seq && decoded->time_ms == sqlite3_column_int64(s, 1);
      int i = 2;
      for (const std::string* c : {&decoded->event, &decoded->actor, &decoded->message_id, &decoded->case_id,
                                   &decoded->sender, &decoded->recipient, &decoded->decision}) {
        same = same && Column(s, i++) == *c;
      }
      if (!same) {
        return Status::Corruption("audit record " + std::to_string(rec.seq) +
                                  ": its columns differ from its leaf bytes (the store was altered)");
      }
      rec = std::move(decoded).value();
      if (r.export_mode) row.leaf.assign(leaf);
      page.rows.push_back(std::move(row));
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(db, "audit query");
    return Status::Ok();
  };
  // Rows still wanted: the rest of the page, and one more (is there a next page?).
  auto wanted = [&] { return static_cast<int64_t>(r.limit) + 1 - static_cast<int64_t>(page.rows.size()); };

  uint64_t scan_after = range.after;  // the part of the log read by scanning, not through the index
  if (key && indexed > range.after) {
    // Records range.after+1 .. indexed (and < before): bucket by bucket, in
    // seq order, the candidates from a seek to (bucket, key, word of
    // after+1) in the index, then each candidate's row, checked against
    // every filter. (One statement joining the two cost about ten times as
    // much a bucket, most of which hold no candidate.)
    uint64_t last = indexed;
    if (range.before > 0) last = std::min<uint64_t>(last, range.before - 1);
    constexpr int64_t kProbe = 64;  // index rows (of up to 64 candidates each) per seek
    Query probe(db, "SELECT word, bits FROM ix.ix2 WHERE bucket = :bucket AND k = :key AND word >= :from AND "
                    "word <= :to ORDER BY word LIMIT :n");
    std::string agency;
    if (!f.agency.empty()) agency = " AND (sender = :agency OR recipient = :agency)";
    Query row(db, std::string("SELECT ") + kColumns + ", 1 AS in_scope FROM audit_log WHERE seq = :seq" + filters +
                      agency);
    if (!probe.ok() || !row.ok()) return SqlError(db, "audit query");
    bind(row);
    probe.Int(":key", *key);
    probe.Int(":to", audit_index::Word(last));
    probe.Int(":n", kProbe);
    std::vector<int64_t> candidates;
    scope_in_cpp = true;
    for (int64_t b = audit_index::Bucket(range.after + 1); !full && last > range.after && b <= audit_index::Bucket(last);
         ++b) {
      int64_t from = audit_index::Word(range.after + 1);
      for (;;) {
        candidates.clear();
        sqlite3_reset(probe.get());  // before binding: a finished statement takes no bindings
        probe.Int(":bucket", b);
        probe.Int(":from", from);
        int rc;
        int64_t rows = 0, word = 0;
        while ((rc = sqlite3_step(probe.get())) == SQLITE_ROW) {
          ++rows;
          word = sqlite3_column_int64(probe.get(), 0);
          auto bits = static_cast<uint64_t>(sqlite3_column_int64(probe.get(), 1));
          for (; bits != 0; bits &= bits - 1) {
            const uint64_t seq = (static_cast<uint64_t>(word) << audit_index::kWordBits) +
                                 static_cast<uint64_t>(__builtin_ctzll(bits));
            if (seq > range.after && seq <= last) candidates.push_back(static_cast<int64_t>(seq));
          }
        }
        if (rc != SQLITE_DONE) return SqlError(db, "audit index");
        for (size_t c = 0; c < candidates.size() && !full; ++c) {
          sqlite3_reset(row.get());
          row.Int(":seq", candidates[c]);
          if (Status s = consume(row.get()); !s.ok()) return s;
        }
        if (full || rows < kProbe) break;
        from = word + 1;
      }
    }
    scan_after = std::max(scan_after, indexed);
    scope_in_cpp = false;
  }
  if (!full) {
    const std::string select = std::string("SELECT ") + kColumns + ", " + kInScope + " AS in_scope FROM audit_log";
    std::string where = " WHERE seq > :after";
    if (range.before > 0) where += " AND seq < :before";
    if (r.export_mode) {
      where += " AND seq <= :until";
    } else {
      where += scoped_filters;
    }
    std::string sql = select + where;
    if (!r.export_mode && !f.agency.empty()) {
      if (indexed_file) {
        // Schema 6: the log has no index; one scan in seq order.
        sql += " AND (sender = :agency OR recipient = :agency)";
      } else {
        // As sender, or as recipient: two walks in seq order over the
        // (sender) and (recipient) indexes of a store before schema 6,
        // merged, so a page costs its rows and not every record of the agency.
        sql += " AND sender = :agency AND sender <> '' UNION ALL " + select + where +
               " AND recipient = :agency AND recipient <> '' AND sender <> :agency";
      }
    }
    sql += " ORDER BY seq LIMIT :n";
    Query q(db, sql);
    if (!q.ok()) return SqlError(db, "audit query");
    bind(q);
    q.Int(":after", static_cast<int64_t>(scan_after));
    q.Int(":n", wanted());
    if (Status s = consume(q.get()); !s.ok()) return s;
  }
  int rc;
  if (r.export_mode && !page.rows.empty()) {
    Query c(db, "SELECT text FROM checkpoints WHERE tree_size > :after AND tree_size <= :last ORDER BY tree_size");
    if (!c.ok()) return SqlError(db, "checkpoints");
    c.Int(":after", static_cast<int64_t>(r.after_seq));
    c.Int(":last", static_cast<int64_t>(page.rows.back().record.seq));
    while ((rc = sqlite3_step(c.get())) == SQLITE_ROW) page.stored_checkpoints.push_back(Column(c.get(), 0));
    if (rc != SQLITE_DONE) return SqlError(db, "checkpoints");
  }
  return page;
}

Result<std::vector<merkle::Hash>> RunProof(sqlite3* db, uint64_t m, uint64_t n) {
  if (m == 0 || m > n) {
    return Status::InvalidArgument("a consistency proof needs 0 < old size <= new size (got " + std::to_string(m) +
                                   " and " + std::to_string(n) + ")");
  }
  Query q(db, "SELECT seq, leaf_hash FROM audit_log WHERE seq <= :n ORDER BY seq");
  if (!q.ok()) return SqlError(db, "leaf hashes");
  q.Int(":n", static_cast<int64_t>(n));
  std::vector<merkle::Hash> leaves;
  leaves.reserve(n);
  int rc;
  while ((rc = sqlite3_step(q.get())) == SQLITE_ROW) {
    if (static_cast<uint64_t>(sqlite3_column_int64(q.get(), 0)) != leaves.size() + 1 ||
        sqlite3_column_bytes(q.get(), 1) != 32) {
      return Status::Corruption("the audit log is not gapless at record " + std::to_string(leaves.size() + 1));
    }
    merkle::Hash h;
    std::memcpy(h.data(), sqlite3_column_blob(q.get(), 1), 32);
    leaves.push_back(h);
  }
  if (rc != SQLITE_DONE) return SqlError(db, "leaf hashes");
  if (leaves.size() != n) {
    return Status::InvalidArgument("the audit log has " + std::to_string(leaves.size()) + " records, fewer than " +
                                   std::to_string(n));
  }
  return merkle::ConsistencyProof(leaves, m, n);
}

}  // namespace

struct AuditReader::Impl {
  using Job = std::function<void(sqlite3*)>;
  std::vector<sqlite3*> connections;
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Job> jobs;   // guarded by mu
  bool stopping = false;  // guarded by mu

  ~Impl() {
    {
      std::lock_guard lock(mu);
      stopping = true;
      jobs.clear();
    }
    cv.notify_all();
    for (auto& w : workers) w.join();
    for (sqlite3* c : connections) sqlite3_close_v2(c);
  }

  bool Submit(Job job) {
    {
      std::lock_guard lock(mu);
      if (stopping || jobs.size() >= kMaxQueuedJobs) return false;
      jobs.push_back(std::move(job));
    }
    cv.notify_one();
    return true;
  }

  void Work(sqlite3* db) {
    for (;;) {
      Job job;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stopping || !jobs.empty(); });
        if (stopping) return;
        job = std::move(jobs.front());
        jobs.pop_front();
      }
      job(db);
    }
  }
};

Result<std::unique_ptr<AuditReader>> AuditReader::Open(const std::string& path, int workers) {
  auto impl = std::make_unique<Impl>();
  for (int i = 0; i < std::max(1, workers); ++i) {
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
      Status s = SqlError(db, "cannot open " + path + " for reading");
      sqlite3_close_v2(db);
      return s;
    }
    impl->connections.push_back(db);
    if (Status s = audit_chunks::Register(db); !s.ok()) return s;
    sqlite3_busy_timeout(db, 2000);
    sqlite3_exec(db, kMmapMain, nullptr, nullptr, nullptr);
    // Fails early on a database without the audit log.
    Query probe(db, "SELECT 1 FROM audit_log LIMIT 1");
    if (!probe.ok()) return SqlError(db, path + " has no readable audit log");
  }
  Impl* raw = impl.get();
  for (sqlite3* db : impl->connections) impl->workers.emplace_back([raw, db] { raw->Work(db); });
  return std::unique_ptr<AuditReader>(new AuditReader(std::move(impl)));
}

AuditReader::AuditReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AuditReader::~AuditReader() = default;

void AuditReader::QueryPage(AuditPageRequest request, PageDone done) {
  auto shared = std::make_shared<PageDone>(std::move(done));
  const bool queued = impl_->Submit([request = std::move(request), shared](sqlite3* db) {
    (*shared)(RunPage(db, AttachIndex(db), request));
  });
  if (!queued) (*shared)(Status::Unavailable("the audit reader is busy; try again shortly"));
}

void AuditReader::ConsistencyProof(uint64_t old_size, uint64_t new_size, ProofDone done) {
  auto shared = std::make_shared<ProofDone>(std::move(done));
  const bool queued =
      impl_->Submit([old_size, new_size, shared](sqlite3* db) { (*shared)(RunProof(db, old_size, new_size)); });
  if (!queued) (*shared)(Status::Unavailable("the audit reader is busy; try again shortly"));
}

Result<AuditPage> AuditReader::QueryPageSync(const AuditPageRequest& request) {
  std::promise<Result<AuditPage>> p;
  auto f = p.get_future();
  QueryPage(request, [&p](Result<AuditPage> r) { p.set_value(std::move(r)); });
  return f.get();
}

Result<std::vector<merkle::Hash>> AuditReader::ConsistencyProofSync(uint64_t old_size, uint64_t new_size) {
  std::promise<Result<std::vector<merkle::Hash>>> p;
  auto f = p.get_future();
  ConsistencyProof(old_size, new_size, [&p](Result<std::vector<merkle::Hash>> r) { p.set_value(std::move(r)); });
  return f.get();
}

}  // namespace liaison::broker
