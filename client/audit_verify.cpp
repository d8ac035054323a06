#include "client/audit_verify.h"

#include <sqlite3.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "common/audit_record.h"
#include "common/merkle.h"

namespace liaison::audit {
namespace {

std::string Column(sqlite3_stmt* s, int i) {
  const unsigned char* t = sqlite3_column_text(s, i);
  return t ? std::string(reinterpret_cast<const char*>(t), static_cast<size_t>(sqlite3_column_bytes(s, i)))
           : std::string();
}

std::string HashHex(const merkle::Hash& h) { return Hex(std::string_view(reinterpret_cast<const char*>(h.data()), 32)); }

constexpr std::string_view kInclusionHeader = "liaison-inclusion-proof v1";
constexpr std::string_view kConsistencyHeader = "liaison-consistency-proof v1";

// An export (or a store), opened read-only; closed with the object.
class ReadOnlyDb {
 public:
  ~ReadOnlyDb() { sqlite3_close_v2(db_); }
  Status Open(const std::string& path) {
    const std::string uri = "file:" + path + "?mode=ro";
    // NOMUTEX: one thread uses the connection at a time (the verifier's
    // reader, once started, has it to itself), and in SQLite's default
    // serialized mode every column access takes the connection's mutex.
    if (sqlite3_open_v2(uri.c_str(), &db_, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX, nullptr) !=
        SQLITE_OK) {
      return Status::IoError("cannot open " + path + ": " + sqlite3_errmsg(db_));
    }
    return Status::Ok();
  }
  sqlite3* get() const { return db_; }

 private:
  sqlite3* db_ = nullptr;
};

Result<Checkpoint> StoredCheckpointIn(sqlite3* db, uint64_t size) {
  sqlite3_stmt* s = nullptr;
  const char* sql = size ? "SELECT text FROM checkpoints WHERE tree_size = ?"
                         : "SELECT text FROM checkpoints ORDER BY tree_size DESC LIMIT 1";
  if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK) {
    return Status::Corruption(std::string("the export has no checkpoints table: ") + sqlite3_errmsg(db));
  }
  if (size) sqlite3_bind_int64(s, 1, static_cast<int64_t>(size));
  if (sqlite3_step(s) != SQLITE_ROW) {
    sqlite3_finalize(s);
    return size ? Status::NotFound("the export has no checkpoint of tree size " + std::to_string(size))
                : Status::NotFound("the export has no checkpoint");
  }
  auto cp = ParseCheckpoint(Column(s, 0));
  sqlite3_finalize(s);
  if (!cp.ok()) return cp.status().Annotate("a checkpoint in the export");
  return cp;
}

void AppendPath(std::string* out, const std::vector<merkle::Hash>& path) {
  for (const auto& h : path) {
    *out += "path " + Base64(std::string_view(reinterpret_cast<const char*>(h.data()), h.size())) + "\n";
  }
}

// Takes the next line (without its newline) off the front of text.
bool NextLine(std::string_view* text, std::string_view* line) {
  const size_t nl = text->find('\n');
  if (nl == std::string_view::npos) return false;
  *line = text->substr(0, nl);
  text->remove_prefix(nl + 1);
  return true;
}

// Reads the "path BASE64" lines that AppendPath wrote; line is left at the
// first line after them.
Status ReadPath(std::string_view* text, std::string_view* line, std::vector<merkle::Hash>* path) {
  while (NextLine(text, line) && line->substr(0, 5) == "path ") {
    auto h = FromBase64(line->substr(5));
    if (!h.ok() || h->size() != 32) return Status::InvalidArgument("proof: bad path hash");
    merkle::Hash hash;
    std::copy(h->begin(), h->end(), hash.begin());
    path->push_back(hash);
  }
  return Status::Ok();
}

// Verification is split over two threads (docs/auditing.md, section 3.2): a
// reader steps SQLite through audit_log and copies each row's bytes into a
// batch; the calling thread checks the batches in log order (hashes, leaf
// decoding, columns, the tree). All judgement is on the calling thread, in
// order, so the first bad record is the one reported, whichever thread saw
// it first; the reader only reports where SQLite itself failed to read.
//
// The reader's SELECT: the 15 strings in leaf order (RecordView::strings),
// so that string i is column kFirstString + i, then leaf and leaf_hash.
constexpr const char* kRowColumns =
    "SELECT seq, time_ms, tlp, event, actor, cert_sha256, message_id, case_id, sender, recipient, message_type, "
    "purpose, decision, rules, policy_version, obligations, body_hmac, detail, leaf, leaf_hash, ";
constexpr int kFirstString = 3;
constexpr int kHashOnlyColumn = kFirstString + RecordView::kStrings + 2;
constexpr int kLeaf = RecordView::kStrings;  // spans: the strings, the leaf, the leaf hash
constexpr int kLeafHash = kLeaf + 1;
constexpr int kSpans = kLeafHash + 1;

// Batches small enough to stay in cache between the two threads, large
// enough that handing one over (a mutex and a wake-up) costs nothing per row.
constexpr size_t kBatchRows = 512;
constexpr size_t kBatches = 8;

struct Row {
  int64_t seq, time_ms, tlp, hash_only;
  size_t offset;          // of its spans, one after the other, in the batch's bytes
  uint32_t len[kSpans];
};

struct Batch {
  std::vector<Row> rows;
  std::string bytes;
  bool end = false;       // the last batch: the scan ended after these rows
  std::string read_error; // with end: why SQLite could not read on (empty: the table ended)
};

// A fixed pool of batches going round between the reader and the checker:
// nothing is allocated per row once the pool is warm.
class Pipeline {
 public:
  Pipeline() : pool_(kBatches) {
    for (auto& b : pool_) {
      b.rows.reserve(kBatchRows);
      b.bytes.reserve(kBatchRows * 1024);
      free_.push_back(&b);
    }
  }
  // Reader side. nullptr once the checker has stopped.
  Batch* TakeFree() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return stop_ || !free_.empty(); });
    if (stop_) return nullptr;
    Batch* b = free_.front();
    free_.pop_front();
    return b;
  }
  void PutFull(Batch* b) {
    {
      std::lock_guard lock(mu_);
      full_.push_back(b);
    }
    cv_.notify_all();
  }
  // Checker side.
  Batch* TakeFull() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !full_.empty(); });
    Batch* b = full_.front();
    full_.pop_front();
    return b;
  }
  void PutFree(Batch* b) {
    {
      std::lock_guard lock(mu_);
      free_.push_back(b);
    }
    cv_.notify_all();
  }
  // The checker found a problem (or is done): the reader stops at its next batch.
  void Stop() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::vector<Batch> pool_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Batch*> free_, full_;
  bool stop_ = false;
};

void ReadRows(sqlite3* db, sqlite3_stmt* s, Pipeline* pipe) {
  for (;;) {
    Batch* b = pipe->TakeFree();
    if (!b) return;
    b->rows.clear();
    b->bytes.clear();
    b->end = false;
    b->read_error.clear();
    try {
      while (b->rows.size() < kBatchRows) {
        const int rc = sqlite3_step(s);
        if (rc != SQLITE_ROW) {
          b->end = true;
          if (rc != SQLITE_DONE) b->read_error = sqlite3_errmsg(db);
          break;
        }
        Row r;
        r.seq = sqlite3_column_int64(s, 0);
        r.time_ms = sqlite3_column_int64(s, 1);
        r.tlp = sqlite3_column_int64(s, 2);
        r.hash_only = sqlite3_column_int64(s, kHashOnlyColumn);
        r.offset = b->bytes.size();
        for (int i = 0; i < kSpans; ++i) {
          // Blob access hands out the stored bytes of a TEXT value as they
          // are (no conversion, no terminator), valid until the next step;
          // through the value, the connection's error state is not touched
          // twice per column.
          sqlite3_value* v = sqlite3_column_value(s, kFirstString + i);
          const void* p = sqlite3_value_blob(v);
          const int n = sqlite3_value_bytes(v);
          r.len[i] = static_cast<uint32_t>(n);
          if (n > 0) b->bytes.append(static_cast<const char*>(p), static_cast<size_t>(n));
        }
        b->rows.push_back(r);  // complete rows only (an append above may throw)
      }
    } catch (const std::exception& e) {  // out of memory: truly unexpected, but must not escape the thread
      b->end = true;
      b->read_error = e.what();
    }
    const bool end = b->end;
    pipe->PutFull(b);
    if (end) return;
  }
}

}  // namespace

Status VerifyAuditLog(const VerifyOptions& o, VerifyReport* report) {
  *report = VerifyReport{};
  ReadOnlyDb rodb;
  if (Status st = rodb.Open(o.db_path); !st.ok()) return st;
  sqlite3* db = rodb.get();

  // Reading the schema is where SQLite notices a file that is no database.
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_schema", -1, &s, nullptr) != SQLITE_OK ||
      sqlite3_step(s) != SQLITE_ROW) {
    sqlite3_finalize(s);
    return Status::Corruption(std::string("not a readable SQLite database: ") + sqlite3_errmsg(db));
  }
  sqlite3_finalize(s);
  // The full structural check of the file is optional: every page that
  // holds audit data is read below, SQLite reports a damaged one
  // (SQLITE_CORRUPT) as it reads it, and every byte of every record is
  // checked against its hash and the signed roots. What quick_check adds is
  // the rest of the file (free pages, other tables, indexes of a store), at
  // the cost of reading the whole file once more.
  if (o.quick_check) {
    if (sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &s, nullptr) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW) {
      const std::string r = Column(s, 0);
      sqlite3_finalize(s);
      if (r != "ok") return Status::Corruption("the database file fails its integrity check: " + r);
    } else {
      sqlite3_finalize(s);
      return Status::Corruption(std::string("the database file fails its integrity check: ") + sqlite3_errmsg(db));
    }
  }
  // Map the file instead of copying every page into SQLite's cache (capped
  // by SQLite's own limit, 2 GB by default; the rest is read as usual).
  sqlite3_exec(db, "PRAGMA mmap_size = 1099511627776", nullptr, nullptr, nullptr);

  // Every checkpoint to check, by tree size: the export's own and the saved ones.
  std::multimap<uint64_t, std::pair<Checkpoint, std::string>> checkpoints;  // size -> (checkpoint, where)
  if (sqlite3_prepare_v2(db, "SELECT tree_size, text FROM checkpoints ORDER BY tree_size", -1, &s, nullptr) !=
      SQLITE_OK) {
    return Status::Corruption("the export has no checkpoints table");
  }
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    const uint64_t size = static_cast<uint64_t>(sqlite3_column_int64(s, 0));
    auto cp = ParseCheckpoint(Column(s, 1));
    if (!cp.ok() || cp->tree_size != size) {
      sqlite3_finalize(s);
      return Status::Corruption("checkpoint row for tree size " + std::to_string(size) + " is malformed");
    }
    checkpoints.emplace(size, std::make_pair(*cp, "checkpoint in the export at tree size " + std::to_string(size)));
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_DONE) {
    return Status::Corruption(std::string("the checkpoints table cannot be read: ") + sqlite3_errmsg(db));
  }
  for (size_t i = 0; i < o.saved.size(); ++i) {
    checkpoints.emplace(o.saved[i].tree_size,
                        std::make_pair(o.saved[i], "saved checkpoint #" + std::to_string(i + 1) + " (tree size " +
                                                       std::to_string(o.saved[i].tree_size) + ")"));
  }
  // The tree sizes at which a root is to be checked, ascending.
  std::vector<uint64_t> sizes;
  for (const auto& [size, c] : checkpoints) {
    if (sizes.empty() || sizes.back() != size) sizes.push_back(size);
  }

  // The progress total only (a tampered export may have fewer rows): the
  // largest rowid costs one descent of the b-tree, a count a full scan.
  uint64_t total = 0;
  if (sqlite3_prepare_v2(db, "SELECT max(rowid) FROM audit_log", -1, &s, nullptr) == SQLITE_OK &&
      sqlite3_step(s) == SQLITE_ROW) {
    total = static_cast<uint64_t>(sqlite3_column_int64(s, 0));
  }
  sqlite3_finalize(s);

  // An auditor's scoped export (client/audit_export.h) marks the records
  // outside its scope hash_only; a full export has no such column.
  bool has_hash_only = false;
  if (sqlite3_prepare_v2(db, "SELECT hash_only FROM audit_log LIMIT 0", -1, &s, nullptr) == SQLITE_OK) {
    has_hash_only = true;
  }
  sqlite3_finalize(s);
  const std::string select =
      std::string(kRowColumns) + (has_hash_only ? "hash_only" : "0") + " FROM audit_log ORDER BY rowid";
  if (sqlite3_prepare_v2(db, select.c_str(), -1, &s, nullptr) != SQLITE_OK) {
    return Status::Corruption("the export has no audit_log table");
  }
  struct Finalizer {
    sqlite3_stmt* s;
    ~Finalizer() { sqlite3_finalize(s); }
  } finalizer{s};

  // The reader starts at once, so that its first batches are ready while
  // the checkpoint signatures are checked. It owns the connection until it
  // is joined.
  Pipeline pipe;
  std::thread reader(ReadRows, db, s, &pipe);
  struct Joiner {
    Pipeline& pipe;
    std::thread& t;
    ~Joiner() {
      pipe.Stop();
      t.join();
    }
  } joiner{pipe, reader};

  const Checkpoint* previous = nullptr;
  for (const auto& [size, c] : checkpoints) {
    if (Status st = VerifyCheckpoint(c.first, o.public_key_pem); !st.ok()) return st.Annotate(c.second);
    // A larger tree is never older: anything else is an old checkpoint
    // presented as a newer one.
    if (previous && previous->tree_size < size && previous->time_ms > c.first.time_ms) {
      return Status::Corruption(c.second + " is dated before a checkpoint of a smaller tree (an older checkpoint "
                                           "presented as newer)");
    }
    previous = &c.first;
    report->checkpoints_verified++;
  }

  auto check_root = [&](uint64_t size, const merkle::Hash& root) -> Status {
    auto [lo, hi] = checkpoints.equal_range(size);
    for (auto it = lo; it != hi; ++it) {
      if (it->second.first.root != root) {
        return Status::Corruption(it->second.second + ": its root " + HashHex(it->second.first.root) +
                                  " differs from the log's " + HashHex(root) +
                                  " (records were altered, removed, inserted or reordered)");
      }
    }
    return Status::Ok();
  };

  merkle::Tree tree;
  size_t next_size = 0;  // sizes[next_size]: the next tree size with a checkpoint
  if (!sizes.empty() && sizes[0] == 0) {
    if (Status st = check_root(0, tree.Root()); !st.ok()) return st;
    ++next_size;
  }
  uint64_t expected = 1;
  Status result;
  // Checks one row; false (with result set) at the first problem.
  auto check = [&](const Row& r, const char* bytes) -> bool {
    const uint64_t seq = static_cast<uint64_t>(r.seq);
    auto bad = [&](const std::string& why) {
      report->first_bad_seq = seq;
      result = Status::Corruption("record " + std::to_string(seq) + ": " + why);
      return false;
    };
    if (seq != expected) {
      report->first_bad_seq = expected;
      result = Status::Corruption(
          seq > expected ? "record " + std::to_string(expected) + ": missing or out of order (record " +
                               std::to_string(seq) + " stands in its place)"
                         : "record " + std::to_string(expected) + ": record " + std::to_string(seq) +
                               " stands in its place (records reordered or duplicated)");
      return false;
    }
    std::string_view span[kSpans];
    for (int i = 0; i < kSpans; ++i) {
      span[i] = std::string_view(bytes, r.len[i]);
      bytes += r.len[i];
    }
    if (span[kLeafHash].size() != 32) return bad("malformed leaf hash");
    merkle::Hash stored;
    std::memcpy(stored.data(), span[kLeafHash].data(), 32);
    if (r.hash_only != 0) {
      // Outside the auditor's scope: only its hash is known, and nothing
      // else may be claimed for it (it could not be checked).
      bool empty = span[kLeaf].empty() && r.time_ms == 0 && r.tlp == 0;
      for (int i = 0; i < RecordView::kStrings && empty; ++i) empty = span[i].empty();
      if (!empty) return bad("marked hash-only but carries other columns (they cannot be verified)");
      report->hash_only++;
    } else {
      if (merkle::LeafHash(span[kLeaf]) != stored) return bad("leaf bytes do not match their hash (the record was altered)");
      RecordView v;
      const char* why = nullptr;
      if (!DecodeLeafView(span[kLeaf], &v, &why)) return bad(why);
      bool same = v.seq == seq && v.time_ms == r.time_ms && v.tlp == r.tlp;
      for (int i = 0; i < RecordView::kStrings && same; ++i) same = v.strings[i] == span[i];
      if (!same) return bad("its columns differ from its signed leaf bytes (the record was altered)");
    }
    tree.Append(stored);
    ++expected;
    if (next_size < sizes.size() && sizes[next_size] == tree.size()) {
      ++next_size;
      if (Status st = check_root(tree.size(), tree.Root()); !st.ok()) {
        report->first_bad_seq = seq;
        result = st;
        return false;
      }
    }
    if (o.progress && tree.size() % o.progress_every == 0) o.progress(tree.size(), total);
    return true;
  };
  for (bool more = true; more && result.ok();) {
    Batch* b = pipe.TakeFull();
    for (const Row& r : b->rows) {
      if (!check(r, b->bytes.data() + r.offset)) break;
    }
    if (b->end) {
      more = false;
      if (result.ok() && !b->read_error.empty()) {
        // SQLite could not read the row after the last good one: the file is damaged there.
        report->first_bad_seq = expected;
        result = Status::Corruption("record " + std::to_string(expected) + ": cannot be read (" + b->read_error +
                                    "; the database file is damaged)");
      }
    }
    pipe.PutFree(b);
  }
  report->records = tree.size();
  report->root = tree.Root();
  if (!result.ok()) return result;
  // A checkpoint beyond the end means the log was truncated.
  auto last = checkpoints.upper_bound(tree.size());
  if (last != checkpoints.end()) {
    return Status::Corruption("the log ends at record " + std::to_string(tree.size()) + " but " + last->second.second +
                              " covers " + std::to_string(last->first) + " records (the log was truncated)");
  }
  return Status::Ok();
}

Result<InclusionProof> ProveInclusion(const std::string& db_path, uint64_t seq, const Checkpoint& against) {
  ReadOnlyDb rodb;
  if (Status st = rodb.Open(db_path); !st.ok()) return st;
  sqlite3* db = rodb.get();
  InclusionProof p;
  p.seq = seq;
  p.checkpoint = against;
  sqlite3_stmt* s = nullptr;
  if (p.checkpoint.origin.empty()) {
    auto cp = StoredCheckpointIn(db, 0);
    if (!cp.ok()) return cp.status();
    p.checkpoint = *cp;
  }
  if (seq == 0 || seq > p.checkpoint.tree_size) {
    return Status::InvalidArgument("record " + std::to_string(seq) + " is not covered by the checkpoint (tree size " +
                                   std::to_string(p.checkpoint.tree_size) + ")");
  }
  std::vector<merkle::Hash> leaves;
  sqlite3_prepare_v2(db, "SELECT seq, leaf, leaf_hash FROM audit_log WHERE seq <= ? ORDER BY seq", -1, &s, nullptr);
  sqlite3_bind_int64(s, 1, static_cast<int64_t>(p.checkpoint.tree_size));
  while (sqlite3_step(s) == SQLITE_ROW) {
    merkle::Hash h;
    if (sqlite3_column_bytes(s, 2) != 32) break;
    std::memcpy(h.data(), sqlite3_column_blob(s, 2), 32);
    leaves.push_back(h);
    if (static_cast<uint64_t>(sqlite3_column_int64(s, 0)) == seq) {
      p.leaf.assign(static_cast<const char*>(sqlite3_column_blob(s, 1)), static_cast<size_t>(sqlite3_column_bytes(s, 1)));
    }
  }
  sqlite3_finalize(s);
  if (leaves.size() != p.checkpoint.tree_size) {
    return Status::Corruption("the export holds " + std::to_string(leaves.size()) + " records, the checkpoint " +
                              std::to_string(p.checkpoint.tree_size));
  }
  if (merkle::RootOf(leaves) != p.checkpoint.root) return Status::Corruption("the export does not match the checkpoint");
  p.path = merkle::InclusionProof(leaves, seq - 1, p.checkpoint.tree_size);
  return p;
}

std::string FormatInclusionProof(const InclusionProof& p) {
  std::string out =
      std::string(kInclusionHeader) + "\nseq " + std::to_string(p.seq) + "\nleaf " + Base64(p.leaf) + "\n";
  AppendPath(&out, p.path);
  return out + "checkpoint\n" + FormatCheckpoint(p.checkpoint);
}

Result<InclusionProof> ParseInclusionProof(std::string_view text) {
  InclusionProof p;
  std::string_view line;
  if (!NextLine(&text, &line) || line != kInclusionHeader) return Status::InvalidArgument("not an inclusion proof");
  if (!NextLine(&text, &line) || line.substr(0, 4) != "seq ") return Status::InvalidArgument("proof: no seq line");
  p.seq = std::strtoull(std::string(line.substr(4)).c_str(), nullptr, 10);
  if (!NextLine(&text, &line) || line.substr(0, 5) != "leaf ") return Status::InvalidArgument("proof: no leaf line");
  auto leaf = FromBase64(line.substr(5));
  if (!leaf.ok()) return Status::InvalidArgument("proof: bad leaf");
  p.leaf = *leaf;
  if (Status st = ReadPath(&text, &line, &p.path); !st.ok()) return st;
  if (line != "checkpoint") return Status::InvalidArgument("proof: no checkpoint");
  auto cp = ParseCheckpoint(text);
  if (!cp.ok()) return cp.status();
  p.checkpoint = *cp;
  return p;
}

Result<Record> VerifyInclusionProof(const InclusionProof& p, const std::string& public_key_pem) {
  if (Status s = VerifyCheckpoint(p.checkpoint, public_key_pem); !s.ok()) return s;
  auto r = DecodeLeaf(p.leaf);
  if (!r.ok()) return r.status();
  if (r->seq != p.seq) return Status::Corruption("the leaf is record " + std::to_string(r->seq) + ", not " + std::to_string(p.seq));
  if (!merkle::VerifyInclusion(merkle::LeafHash(p.leaf), p.seq - 1, p.checkpoint.tree_size, p.path, p.checkpoint.root)) {
    return Status::Corruption("the record is not in the log this checkpoint commits to (the proof does not verify)");
  }
  return r;
}

Result<Checkpoint> StoredCheckpoint(const std::string& db_path, uint64_t size) {
  ReadOnlyDb db;
  if (Status st = db.Open(db_path); !st.ok()) return st;
  return StoredCheckpointIn(db.get(), size);
}

Result<ConsistencyProof> ProveConsistency(const std::string& db_path, const Checkpoint& old_checkpoint,
                                          const Checkpoint& new_checkpoint) {
  const uint64_t m = old_checkpoint.tree_size, n = new_checkpoint.tree_size;
  if (m == 0 || m > n) {
    return Status::InvalidArgument("a consistency proof goes from a smaller log to a larger (or the same) one; the old "
                                   "checkpoint covers " + std::to_string(m) + " records, the new one " +
                                   std::to_string(n));
  }
  if (old_checkpoint.origin != new_checkpoint.origin) {
    return Status::InvalidArgument("the checkpoints are of different logs ('" + old_checkpoint.origin + "' and '" +
                                   new_checkpoint.origin + "')");
  }
  ReadOnlyDb rodb;
  if (Status st = rodb.Open(db_path); !st.ok()) return st;
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(rodb.get(), "SELECT seq, leaf_hash FROM audit_log WHERE seq <= ? ORDER BY seq", -1, &s,
                         nullptr) != SQLITE_OK) {
    return Status::Corruption(std::string("the export has no audit_log table: ") + sqlite3_errmsg(rodb.get()));
  }
  sqlite3_bind_int64(s, 1, static_cast<int64_t>(n));
  std::vector<merkle::Hash> leaves;
  leaves.reserve(n);
  merkle::Tree tree;
  merkle::Hash root_m{};
  Status problem;
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    const uint64_t seq = static_cast<uint64_t>(sqlite3_column_int64(s, 0));
    if (seq != leaves.size() + 1 || sqlite3_column_bytes(s, 1) != 32) {
      problem = Status::Corruption("record " + std::to_string(leaves.size() + 1) +
                                   " is missing, duplicated or has a malformed leaf hash (run 'liaison audit verify')");
      break;
    }
    merkle::Hash h;
    std::memcpy(h.data(), sqlite3_column_blob(s, 1), 32);
    leaves.push_back(h);
    tree.Append(h);
    if (tree.size() == m) root_m = tree.Root();
  }
  if (problem.ok() && rc != SQLITE_DONE && rc != SQLITE_ROW) {
    problem = Status::Corruption(std::string("the audit log cannot be read: ") + sqlite3_errmsg(rodb.get()));
  }
  sqlite3_finalize(s);
  if (!problem.ok()) return problem;
  if (leaves.size() < n) {
    return Status::InvalidArgument("the export holds " + std::to_string(leaves.size()) +
                                   " records, the new checkpoint covers " + std::to_string(n) +
                                   " (take a newer export)");
  }
  if (root_m != old_checkpoint.root) {
    return Status::Corruption("the export's first " + std::to_string(m) + " records do not have the old checkpoint's "
                              "root (the log this checkpoint signed was rewritten, or is another log)");
  }
  if (tree.Root() != new_checkpoint.root) {
    return Status::Corruption("the export's first " + std::to_string(n) + " records do not have the new checkpoint's "
                              "root (the log this checkpoint signed was rewritten, or is another log)");
  }
  ConsistencyProof p;
  p.old_checkpoint = old_checkpoint;
  p.new_checkpoint = new_checkpoint;
  p.path = merkle::ConsistencyProof(leaves, m, n);
  return p;
}

std::string FormatConsistencyProof(const ConsistencyProof& p) {
  std::string out = std::string(kConsistencyHeader) + "\n";
  AppendPath(&out, p.path);
  return out + "old checkpoint\n" + FormatCheckpoint(p.old_checkpoint) + "new checkpoint\n" +
         FormatCheckpoint(p.new_checkpoint);
}

Result<ConsistencyProof> ParseConsistencyProof(std::string_view text) {
  ConsistencyProof p;
  std::string_view line;
  if (!NextLine(&text, &line) || line != kConsistencyHeader) return Status::InvalidArgument("not a consistency proof");
  if (Status st = ReadPath(&text, &line, &p.path); !st.ok()) return st;
  if (line != "old checkpoint") return Status::InvalidArgument("proof: no old checkpoint");
  // A checkpoint is exactly six lines (common/checkpoint.h).
  size_t end = 0;
  for (int i = 0; i < 6 && end != std::string_view::npos; ++i) {
    end = text.find('\n', end);
    if (end != std::string_view::npos) ++end;
  }
  if (end == std::string_view::npos) return Status::InvalidArgument("proof: the old checkpoint is cut short");
  auto old_cp = ParseCheckpoint(text.substr(0, end));
  if (!old_cp.ok()) return old_cp.status().Annotate("proof: the old checkpoint");
  p.old_checkpoint = *old_cp;
  text.remove_prefix(end);
  if (!NextLine(&text, &line) || line != "new checkpoint") return Status::InvalidArgument("proof: no new checkpoint");
  auto new_cp = ParseCheckpoint(text);
  if (!new_cp.ok()) return new_cp.status().Annotate("proof: the new checkpoint");
  p.new_checkpoint = *new_cp;
  return p;
}

Status VerifyConsistencyProof(const ConsistencyProof& p, const std::string& public_key_pem) {
  const Checkpoint& o = p.old_checkpoint;
  const Checkpoint& n = p.new_checkpoint;
  const std::string old_name = "the old checkpoint (tree size " + std::to_string(o.tree_size) + ")";
  const std::string new_name = "the new checkpoint (tree size " + std::to_string(n.tree_size) + ")";
  if (Status st = VerifyCheckpoint(o, public_key_pem); !st.ok()) return st.Annotate(old_name);
  if (Status st = VerifyCheckpoint(n, public_key_pem); !st.ok()) return st.Annotate(new_name);
  if (o.origin != n.origin) {
    return Status::Corruption("the checkpoints are of different logs ('" + o.origin + "' and '" + n.origin + "')");
  }
  if (o.tree_size > n.tree_size) {
    return Status::Corruption(old_name + " covers more records than " + new_name +
                              " (old and new are swapped: a log never shrinks)");
  }
  if (o.tree_size == n.tree_size && o.root != n.root) {
    return Status::Corruption("both checkpoints cover " + std::to_string(o.tree_size) +
                              " records but their roots differ (the log was rewritten or forked)");
  }
  if (o.tree_size < n.tree_size && o.time_ms > n.time_ms) {
    return Status::Corruption(new_name + " is dated before " + old_name + " (an older checkpoint presented as newer)");
  }
  if (!merkle::VerifyConsistency(o.tree_size, n.tree_size, o.root, n.root, p.path)) {
    return Status::Corruption("the log of " + std::to_string(n.tree_size) + " records does not extend the log of " +
                              std::to_string(o.tree_size) +
                              " records (the consistency proof does not verify: records were altered, removed, "
                              "inserted or reordered, or the proof was)");
  }
  return Status::Ok();
}

ProofKind KindOfProof(std::string_view text) {
  const std::string_view first = text.substr(0, text.find('\n'));
  if (first == kInclusionHeader) return ProofKind::kInclusion;
  if (first == kConsistencyHeader) return ProofKind::kConsistency;
  return ProofKind::kUnknown;
}

}  // namespace liaison::audit
