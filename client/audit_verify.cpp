#include "client/audit_verify.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
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
    // In a URI '?' and '#' end the file name and '%' escapes: a name that
    // holds them must not open another file than the one named. An absolute
    // path goes after an empty authority, so that one starting "//" is no host.
    std::string uri = path.starts_with('/') ? "file://" : "file:";
    for (const char c : path) {
      if (c == '%') {
        uri += "%25";
      } else if (c == '?') {
        uri += "%3f";
      } else if (c == '#') {
        uri += "%23";
      } else {
        uri += c;
      }
    }
    uri += "?mode=ro";
    // NOMUTEX: one thread uses the connection at a time (the verifier's
    // reader, once started, has it to itself), and in SQLite's default
    // serialized mode every column access takes the connection's mutex.
    if (sqlite3_open_v2(uri.c_str(), &db_, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX, nullptr) !=
        SQLITE_OK) {
      return Status::IoError("cannot open " + path + ": " + sqlite3_errmsg(db_));
    }
    // What is read must be stored rows: a hostile file's view (a recursive
    // one has no end, and sorting it spills to temporary files for ever) or
    // virtual table (no pages of its own: rootpage 0) in place of a table is
    // refused. A file that is no database fails here too, and is reported
    // where it is read.
    sqlite3_stmt* s = nullptr;
    int64_t others = 0;
    if (sqlite3_prepare_v2(db_,
                           "SELECT count(*) FROM sqlite_schema WHERE name IN ('audit_log', 'checkpoints') AND "
                           "(type <> 'table' OR rootpage = 0)",
                           -1, &s, nullptr) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW) {
      others = sqlite3_column_int64(s, 0);
    }
    sqlite3_finalize(s);
    if (others != 0) {
      return Status::Corruption(path + ": audit_log or checkpoints is not a table (a view or virtual table): refused");
    }
    return Status::Ok();
  }
  sqlite3* get() const { return db_; }
  void Close() {
    sqlite3_close_v2(db_);
    db_ = nullptr;
  }

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

// Verification (docs/auditing.md, section 3.2) cuts the log into chunks of
// consecutive rowids. Two threads, the caller's and one more, each with its
// own read-only connection, take chunks in turn and check every row of a
// chunk where SQLite holds it (no copy of our own): its sequence within the
// chunk, the types of its columns, and the hash of the canonical leaf
// encoded from them against the stored leaf hash (and, in an export of an
// earlier version, the stored leaf bytes against that encoding). A chunk keeps
// its leaves as the perfect subtrees of the log's tree that they form
// (Pieces), so no thread holds the log leaf by leaf. The calling thread then
// joins the chunks in log order: each must start where the one before ended,
// the root is checked at every checkpoint's size, and the first problem in
// log order is the one reported, whichever thread found it and whatever was
// found after it. A chunk stops at its first problem; the chunks after it
// are skipped.
//
// The SELECT: seq, time_ms, tlp, the 15 strings in leaf order
// (RecordView::strings), so that string i is column kFirstString + i, then
// leaf (in an export of an earlier version; NULL otherwise), leaf_hash and
// hash_only (0 when the export has no such column).
constexpr const char* kFieldColumns[] = {"seq",          "time_ms",    "tlp",      "event",  "actor",
                                         "cert_sha256",  "message_id", "case_id",  "sender", "recipient",
                                         "message_type", "purpose",    "decision", "rules",  "policy_version",
                                         "obligations",  "body_hmac",  "detail"};
constexpr int kFirstString = 3;
constexpr int kLeafColumn = kFirstString + RecordView::kStrings;
constexpr int kLeafHashColumn = kLeafColumn + 1;
constexpr int kHashOnlyColumn = kLeafHashColumn + 1;
static_assert(sizeof(kFieldColumns) / sizeof(kFieldColumns[0]) == kLeafColumn);

// What an export's audit_log holds besides the fields: a leaf column
// (exports of earlier versions) and a hash_only column (an auditor's scoped
// export, or a local export of a pruned log).
struct ExportShape {
  bool has_leaf = false;
  bool has_hash_only = false;
};

ExportShape ShapeOf(sqlite3* db) {
  ExportShape shape;
  sqlite3_stmt* s = nullptr;
  shape.has_leaf = sqlite3_prepare_v2(db, "SELECT leaf FROM audit_log LIMIT 0", -1, &s, nullptr) == SQLITE_OK;
  sqlite3_finalize(s);
  s = nullptr;
  shape.has_hash_only = sqlite3_prepare_v2(db, "SELECT hash_only FROM audit_log LIMIT 0", -1, &s, nullptr) == SQLITE_OK;
  sqlite3_finalize(s);
  return shape;
}

// The SELECT of a row's columns (see kFieldColumns), up to FROM.
std::string RowSelect(const ExportShape& shape) {
  std::string sql = "SELECT ";
  for (const char* c : kFieldColumns) sql += std::string(c) + ", ";
  sql += shape.has_leaf ? "leaf, " : "NULL, ";
  sql += "leaf_hash, ";
  sql += shape.has_hash_only ? "hash_only" : "0";
  return sql + " FROM audit_log";
}

// Rows per chunk: small enough that the two threads end within a few
// milliseconds of each other (a chunk takes about 8 ms), large enough that
// starting a chunk (a b-tree descent, a few small vectors) costs nothing per
// row. A power of two: in an export, whose rowids are its seqs, a chunk is
// then one perfect subtree.
constexpr int64_t kChunkRows = int64_t{1} << 12;
// Rowids far beyond the rows (only in a doctored file) widen the chunks
// instead of multiplying them.
constexpr int64_t kMaxChunks = int64_t{1} << 16;
// How often (in rows) a thread publishes its progress and looks whether an
// earlier chunk has failed.
constexpr uint64_t kTickRows = 1024;

// A perfect subtree of the log's tree: the leaves [pos, pos + 2^height).
struct Piece {
  uint64_t pos;
  int height;
  merkle::Hash hash;
};

// Leaves at consecutive positions from `start` on, as the fewest perfect
// subtrees of the log's tree that cover them. RFC 6962 splits at powers of
// two, so a subtree of 2^h leaves starts at a multiple of 2^h: two
// neighbours of 2^h leaves merge only when the left one starts at a multiple
// of 2^(h+1). From position 0 this is merkle::Tree's frontier; a chunk
// starts anywhere, and its pieces then extend a frontier that ends where it
// starts.
class Pieces {
 public:
  explicit Pieces(uint64_t start = 0) : end_(start) {}
  uint64_t end() const { return end_; }
  const std::vector<Piece>& all() const { return pieces_; }
  void Append(const merkle::Hash& leaf) { Push(Piece{end_, 0, leaf}); }
  // p.pos is end(), and a multiple of 2^p.height.
  void Push(const Piece& p) {
    pieces_.push_back(p);
    end_ = p.pos + (uint64_t{1} << p.height);
    while (pieces_.size() >= 2) {
      Piece& left = pieces_[pieces_.size() - 2];
      const Piece& right = pieces_.back();
      if (left.height != right.height || (left.pos & ((uint64_t{2} << left.height) - 1)) != 0) break;
      left.hash = merkle::NodeHash(left.hash, right.hash);
      left.height++;
      pieces_.pop_back();
    }
  }
  // RFC 6962 MTH of the leaves [0, end()): for pieces that start at 0.
  merkle::Hash Root() const {
    if (pieces_.empty()) return merkle::EmptyRoot();
    merkle::Hash root = pieces_.back().hash;
    for (size_t i = pieces_.size() - 1; i-- > 0;) root = merkle::NodeHash(pieces_[i].hash, root);
    return root;
  }

 private:
  std::vector<Piece> pieces_;
  uint64_t end_;
};

// The message for a row at position `expected` that holds record `seq`.
std::string OutOfOrder(uint64_t expected, uint64_t seq) {
  return seq > expected ? "record " + std::to_string(expected) + ": missing or out of order (record " +
                              std::to_string(seq) + " stands in its place)"
                        : "record " + std::to_string(expected) + ": record " + std::to_string(seq) +
                              " stands in its place (records reordered or duplicated)";
}

// One chunk: the rows with rowid in [first_rowid, last_rowid], and, once a
// thread has checked it, what it found. Positions in a chunk are taken from
// its first row's seq; the join checks that this is where the chunk starts.
struct Chunk {
  int64_t first_rowid = 0;
  int64_t last_rowid = 0;

  bool checked = false;   // false: skipped or abandoned (a chunk before it failed)
  bool has_rows = false;  // first_seq is the seq of its first row
  uint64_t first_seq = 0;
  uint64_t rows = 0;          // the rows that passed, from the first one on
  uint64_t hash_only = 0;     // of them
  std::vector<Piece> pieces;  // their leaf hashes
  struct AtCheckpoint {       // the state after the row that ends a checkpoint's tree
    uint64_t size;
    uint64_t hash_only;
    std::vector<Piece> pieces;
  };
  std::vector<AtCheckpoint> at_checkpoints;
  enum class Problem { kNone, kRecord, kUnreadable } problem = Problem::kNone;
  uint64_t bad_seq = 0;  // kRecord: the record named
  std::string why;       // kRecord: the whole message; kUnreadable: SQLite's
};

// What the threads share while they check chunks.
struct Shared {
  std::vector<Chunk> chunks;
  std::vector<uint64_t> sizes;                 // tree sizes with a checkpoint, ascending
  std::atomic<size_t> next{0};                 // the next chunk to take
  std::atomic<size_t> first_failed{SIZE_MAX};  // the first chunk known to have a problem
  std::atomic<uint64_t> rows_checked{0};       // for progress only
  std::atomic<bool> stop{false};               // the caller gave up (a bad signature, an exception)
  // Read-ahead (Prefetch): the file, its size, and the chunks' span of rowids.
  int fd = -1;
  uint64_t file_bytes = 0;
  int64_t max_rowid = 0;
};

// Chunks ahead of the one a thread takes whose pages are asked for. The
// two threads read every other chunk of about 2.4 MB in 4 KB pages, which
// the kernel's read-ahead does not recognise as one sequential read: a cold
// export read at about 260 MB/s, against 550-830 MB/s for the file read
// front to back (measured).
constexpr size_t kPrefetchChunks = 16;

// Asks the kernel to start reading the pages of chunk i (it does not wait
// for them). The export's rows are inserted in rowid order, so a chunk's
// pages lie about where its share of the rowids puts them; a few chunks'
// worth of slack on each side covers the b-tree's interior pages and any
// unevenness. A hint only: wrong guesses cost reads, never correctness.
void Prefetch(const Shared& shared, size_t i) {
  if (shared.fd < 0 || i >= shared.chunks.size() || shared.max_rowid <= 0) return;
  const double per_rowid = static_cast<double>(shared.file_bytes) / static_cast<double>(shared.max_rowid);
  const Chunk& c = shared.chunks[i];
  const int64_t first = std::max<int64_t>(c.first_rowid, 1);
  const int64_t last = std::min<int64_t>(c.last_rowid, shared.max_rowid);
  if (last < first) return;
  const double slack = static_cast<double>(last - first + 1) * per_rowid;
  const double from = std::max(0.0, static_cast<double>(first - 1) * per_rowid - slack);
  const double to = std::min(static_cast<double>(shared.file_bytes), static_cast<double>(last) * per_rowid + slack);
  if (to <= from) return;
  ::posix_fadvise(shared.fd, static_cast<off_t>(from), static_cast<off_t>(to - from), POSIX_FADV_WILLNEED);
}

// The bytes of a column as SQLite holds them: blob access hands out the
// stored bytes of a TEXT value as they are (no conversion, no terminator),
// valid until the next step; through the value, the connection's error
// state is not touched twice per column.
std::string_view ValueBytes(sqlite3_value* v) {
  const void* p = sqlite3_value_blob(v);
  const int n = sqlite3_value_bytes(v);
  return n > 0 ? std::string_view(static_cast<const char*>(p), static_cast<size_t>(n)) : std::string_view();
}
std::string_view ColumnBytes(sqlite3_stmt* s, int i) { return ValueBytes(sqlite3_column_value(s, i)); }

// Whether a and b hold the same bytes. Inline: most fields are a few dozen
// bytes, and a call to memcmp for each of a record's 15 fields cost more
// than comparing them.
inline bool SameBytes(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  const char* p = a.data();
  const char* q = b.data();
  size_t n = a.size();
  for (; n >= 8; n -= 8, p += 8, q += 8) {
    uint64_t x, y;
    std::memcpy(&x, p, 8);
    std::memcpy(&y, q, 8);
    if (x != y) return false;
  }
  unsigned diff = 0;
  for (; n > 0; --n) diff |= static_cast<unsigned char>(*p++ ^ *q++);
  return diff == 0;
}

const char* TypeName(int type) {
  switch (type) {
    case SQLITE_INTEGER: return "an INTEGER";
    case SQLITE_FLOAT: return "a REAL";
    case SQLITE_TEXT: return "TEXT";
    case SQLITE_BLOB: return "a BLOB";
    default: return "NULL";
  }
}

// A problem with one row, as the verifier reports it after "record N: ".
struct RowProblem {
  const char* why = nullptr;  // a fixed message, or
  int column = -1;            // a column of the wrong type (kFieldColumns index)
  int type = 0;               // ... and the type it has
  std::string Message() const {
    if (column < 0) return why;
    return std::string("its column ") + kFieldColumns[column] + " holds " + TypeName(type) + ", not " +
           (column < kFirstString ? "an INTEGER" : "TEXT") + " as an export writes it (the record was altered)";
  }
};

// The canonical leaf of a row's columns (a row of RowSelect), written into
// *buffer and returned in *leaf. The columns must have exactly the types an
// export writes, integers as INTEGER and strings as TEXT: a value of another
// type can have the same bytes (the text '3' and the integer 3, a BLOB and
// the TEXT of its bytes), and a record that hashes right must be exactly
// what an auditor reads from the export, nothing that merely converts to it.
// The leaf holds a string's bytes as SQLite stores them, so the file must
// store text as UTF-8 (checked once per file, ExportTextIsUtf8). seq is
// the row's, read by the caller, who checks its type before reading it
// (SQLite leaves a column's type undefined once it has converted the value).
bool RowLeaf(sqlite3_stmt* s, uint64_t seq, std::string* buffer, std::string_view* leaf, RowProblem* problem) {
  RecordView v;
  for (int i = 1; i < kFirstString; ++i) {
    const int type = sqlite3_column_type(s, i);
    if (type != SQLITE_INTEGER) {
      *problem = RowProblem{nullptr, i, type};
      return false;
    }
  }
  v.seq = seq;
  v.time_ms = sqlite3_column_int64(s, 1);
  v.tlp = sqlite3_column_int64(s, 2);
  for (int i = 0; i < RecordView::kStrings; ++i) {
    sqlite3_value* value = sqlite3_column_value(s, kFirstString + i);
    const int type = sqlite3_value_type(value);
    if (type != SQLITE_TEXT) {
      *problem = RowProblem{nullptr, kFirstString + i, type};
      return false;
    }
    v.strings[i] = ValueBytes(value);
  }
  const char* why = nullptr;
  if (!EncodeLeafView(v, buffer, leaf, &why)) {
    *problem = RowProblem{why};
    return false;
  }
  return true;
}

// Whether the file stores text as UTF-8, as exports are written (the
// leaf's strings are UTF-8 bytes; in a UTF-16 file, SQLite would hand out
// other bytes than an auditor's queries read).
Status ExportTextIsUtf8(sqlite3* db) {
  sqlite3_stmt* s = nullptr;
  std::string encoding;
  if (sqlite3_prepare_v2(db, "PRAGMA encoding", -1, &s, nullptr) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW) {
    encoding = Column(s, 0);
  }
  sqlite3_finalize(s);
  if (encoding != "UTF-8") {
    return Status::Corruption("the export stores its text as " + (encoding.empty() ? "unknown" : encoding) +
                              ", not UTF-8 as exports are written");
  }
  return Status::Ok();
}

// What CheckRow found in a row.
struct RowCheck {
  std::optional<std::string> problem;  // after "record N: "
  bool hash_only = false;              // only its hash is known (outside an auditor's scope)
};

// Checks the row s is on (record seq, whose stored leaf hash is leaf_hash):
// that its columns are signed. buffer is the encoding's, reused.
RowCheck CheckRow(sqlite3_stmt* s, uint64_t seq, bool has_leaf, const merkle::Hash& leaf_hash, std::string* buffer) {
  if (sqlite3_column_int64(s, kHashOnlyColumn) != 0) {
    // Outside the auditor's scope: only its hash is known, and nothing
    // else may be claimed for it (it could not be checked).
    bool empty =
        ColumnBytes(s, kLeafColumn).empty() && sqlite3_column_int64(s, 1) == 0 && sqlite3_column_int64(s, 2) == 0;
    for (int i = 0; i < RecordView::kStrings && empty; ++i) empty = ColumnBytes(s, kFirstString + i).empty();
    if (!empty) return {"marked hash-only but carries other columns (they cannot be verified)"};
    return {std::nullopt, true};
  }
  std::string_view leaf;
  RowProblem problem;
  if (has_leaf) {
    // An export of an earlier version: the leaf bytes it stored must be
    // signed (their hash) and be exactly the encoding of the columns.
    // (Stored bytes that equal an encoding are a canonical leaf; they are
    // decoded only to say what is wrong with them when they do not.)
    const std::string_view stored_leaf = ColumnBytes(s, kLeafColumn);
    if (merkle::LeafHash(stored_leaf) != leaf_hash) return {"leaf bytes do not match their hash (the record was altered)"};
    const bool encoded = RowLeaf(s, seq, buffer, &leaf, &problem);
    if (encoded && SameBytes(leaf, stored_leaf)) return {};
    RecordView v;
    const char* why = nullptr;
    if (!DecodeLeafView(stored_leaf, &v, &why)) return {why};
    return {encoded ? "its columns differ from its signed leaf bytes (the record was altered)" : problem.Message()};
  }
  if (!RowLeaf(s, seq, buffer, &leaf, &problem)) return {problem.Message()};
  if (merkle::LeafHash(leaf) != leaf_hash) return {"its columns do not match its leaf hash (the record was altered)"};
  return {};
}

// Checks one chunk's rows with s (the SELECT over a rowid range); stops at
// the first problem, or when a chunk before this one has failed. `tick` is
// called every kTickRows rows.
void CheckChunk(sqlite3* db, sqlite3_stmt* s, bool has_leaf, Shared* shared, size_t index,
                const std::function<void()>& tick) {
  Chunk& c = shared->chunks[index];
  // The leaf encoded from a row's columns; reused, so no allocation per row.
  std::string buffer;
  sqlite3_reset(s);
  sqlite3_bind_int64(s, 1, c.first_rowid);
  sqlite3_bind_int64(s, 2, c.last_rowid);
  // Counted here and stored at the end: the chunks lie side by side, and the
  // other thread writes to the next one.
  uint64_t rows = 0, hash_only = 0;
  Pieces pieces;
  uint64_t expected = 0;
  auto next_size = shared->sizes.cend();
  auto bad = [&](uint64_t seq, const std::string& why) {
    c.problem = Chunk::Problem::kRecord;
    c.bad_seq = seq;
    c.why = "record " + std::to_string(seq) + ": " + why;
  };
  for (;;) {
    const int rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
      if (rc != SQLITE_DONE) {
        c.problem = Chunk::Problem::kUnreadable;
        c.why = sqlite3_errmsg(db);
      }
      break;
    }
    const int seq_type = sqlite3_column_type(s, 0);
    const uint64_t seq = static_cast<uint64_t>(sqlite3_column_int64(s, 0));
    if (!c.has_rows) {
      c.has_rows = true;
      c.first_seq = seq;
      expected = seq;
      pieces = Pieces(seq - 1);
      next_size = std::lower_bound(shared->sizes.cbegin(), shared->sizes.cend(), seq);
    } else if (seq != expected) {
      c.problem = Chunk::Problem::kRecord;
      c.bad_seq = expected;
      c.why = OutOfOrder(expected, seq);
      break;
    }
    if (seq_type != SQLITE_INTEGER) {
      bad(seq, RowProblem{nullptr, 0, seq_type}.Message());
      break;
    }
    const std::string_view stored = ColumnBytes(s, kLeafHashColumn);
    if (stored.size() != 32) {
      bad(seq, "malformed leaf hash");
      break;
    }
    merkle::Hash leaf_hash;
    std::memcpy(leaf_hash.data(), stored.data(), 32);
    const RowCheck check = CheckRow(s, seq, has_leaf, leaf_hash, &buffer);
    if (check.problem) {
      bad(seq, *check.problem);
      break;
    }
    if (check.hash_only) hash_only++;
    pieces.Append(leaf_hash);
    ++expected;
    ++rows;
    if (next_size != shared->sizes.cend() && *next_size == seq) {
      c.at_checkpoints.push_back({seq, hash_only, pieces.all()});
      ++next_size;
    }
    if (rows % kTickRows == 0) {
      shared->rows_checked.fetch_add(kTickRows, std::memory_order_relaxed);
      tick();
      if (shared->first_failed.load(std::memory_order_relaxed) < index ||
          shared->stop.load(std::memory_order_relaxed)) {
        return;  // abandoned: its result is never looked at
      }
    }
  }
  shared->rows_checked.fetch_add(rows % kTickRows, std::memory_order_relaxed);
  c.rows = rows;
  c.hash_only = hash_only;
  c.pieces = pieces.all();
  c.checked = true;
}

// Takes chunks until none are left (or an earlier one failed).
void CheckChunks(sqlite3* db, sqlite3_stmt* s, bool has_leaf, Shared* shared, const std::function<void()>& tick) {
  for (;;) {
    if (shared->stop.load(std::memory_order_relaxed)) return;
    const size_t i = shared->next.fetch_add(1);
    if (i >= shared->chunks.size() || i > shared->first_failed.load()) return;
    Prefetch(*shared, i + kPrefetchChunks);
    CheckChunk(db, s, has_leaf, shared, i, tick);
    if (shared->chunks[i].checked && shared->chunks[i].problem != Chunk::Problem::kNone) {
      size_t failed = shared->first_failed.load();
      while (i < failed && !shared->first_failed.compare_exchange_weak(failed, i)) {
      }
    }
  }
}

// The second thread's own connection and statement, in the same state of
// the file as the caller's (see the caller).
struct Helper {
  ReadOnlyDb db;
  sqlite3_stmt* s = nullptr;
  ~Helper() { sqlite3_finalize(s); }
};

}  // namespace

Status VerifyAuditLog(const VerifyOptions& o, VerifyReport* report) {
  *report = VerifyReport{};
  ReadOnlyDb rodb;
  if (Status st = rodb.Open(o.db_path); !st.ok()) return st;
  sqlite3* db = rodb.get();
  // One read transaction for everything this connection reads: the
  // checkpoints and the records are of one state of the file.
  sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);

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
    // Through a memory map (up to SQLite's limit, 2 GB by default): a
    // quarter of the time of reading every page with a system call.
    sqlite3_exec(db, "PRAGMA mmap_size = 1099511627776", nullptr, nullptr, nullptr);
    if (sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &s, nullptr) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW) {
      const std::string r = Column(s, 0);
      sqlite3_finalize(s);
      if (r != "ok") return Status::Corruption("the database file fails its integrity check: " + r);
    } else {
      sqlite3_finalize(s);
      return Status::Corruption(std::string("the database file fails its integrity check: ") + sqlite3_errmsg(db));
    }
    sqlite3_exec(db, "PRAGMA mmap_size = 0", nullptr, nullptr, nullptr);
  }
  // The records are read page by page (pread) into SQLite's small page
  // cache, not through a memory map: as fast per record here, and a map of
  // the file costs its unmapping when the connection closes (about 60 ms
  // per connection for an export of 1.4 GB), at the very end of the run.

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
  Shared shared;
  // The tree sizes at which a root is to be checked, ascending.
  for (const auto& [size, c] : checkpoints) {
    if (shared.sizes.empty() || shared.sizes.back() != size) shared.sizes.push_back(size);
  }

  // The largest rowid (one descent of the b-tree; a count would be a full
  // scan) bounds the chunks, and is the progress total (a tampered export
  // may have fewer rows).
  int64_t max_rowid = 0;
  if (sqlite3_prepare_v2(db, "SELECT max(rowid) FROM audit_log", -1, &s, nullptr) == SQLITE_OK &&
      sqlite3_step(s) == SQLITE_ROW) {
    max_rowid = sqlite3_column_int64(s, 0);
  }
  sqlite3_finalize(s);
  const uint64_t total = static_cast<uint64_t>(std::max<int64_t>(max_rowid, 0));

  // An auditor's scoped export (client/audit_export.h) marks the records
  // outside its scope hash_only; a full export has no such column unless the
  // log was pruned. Exports of earlier versions also hold each record's leaf
  // bytes.
  const ExportShape shape = ShapeOf(db);
  if (Status st = ExportTextIsUtf8(db); !st.ok()) return st;
  const std::string select = RowSelect(shape) + " WHERE rowid BETWEEN ?1 AND ?2 ORDER BY rowid";
  if (sqlite3_prepare_v2(db, select.c_str(), -1, &s, nullptr) != SQLITE_OK) {
    return Status::Corruption("the export has no audit_log table");
  }
  struct Finalizer {
    sqlite3_stmt* s;
    ~Finalizer() { sqlite3_finalize(s); }
  } finalizer{s};
  sqlite3_stmt* const rows = s;

  // Chunks of per_chunk rowids; the first and the last are open-ended, so
  // that together they hold every row whatever its rowid.
  const int64_t rows_per_chunk = o.rows_per_chunk > 0 && o.rows_per_chunk < uint64_t{1} << 62
                                     ? static_cast<int64_t>(o.rows_per_chunk)
                                     : kChunkRows;
  const int64_t per_chunk = std::max(rows_per_chunk, max_rowid / kMaxChunks + (max_rowid % kMaxChunks != 0 ? 1 : 0));
  const int64_t n_chunks = std::max<int64_t>(1, max_rowid / per_chunk + (max_rowid % per_chunk != 0 ? 1 : 0));
  shared.chunks.resize(static_cast<size_t>(n_chunks));
  for (int64_t i = 0; i < n_chunks; ++i) {
    Chunk& c = shared.chunks[static_cast<size_t>(i)];
    c.first_rowid = i == 0 ? INT64_MIN : i * per_chunk + 1;
    c.last_rowid = i == n_chunks - 1 ? INT64_MAX : (i + 1) * per_chunk;
  }
  // Read-ahead on a descriptor of our own (hints about the file's pages,
  // which SQLite's reads then find in the page cache).
  struct Fd {
    int fd;
    ~Fd() {
      if (fd >= 0) ::close(fd);
    }
  } prefetch_fd{::open(o.db_path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (struct stat st; prefetch_fd.fd >= 0 && ::fstat(prefetch_fd.fd, &st) == 0 && st.st_size > 0) {
    shared.fd = prefetch_fd.fd;
    shared.file_bytes = static_cast<uint64_t>(st.st_size);
    shared.max_rowid = max_rowid;
    for (size_t i = 0; i < kPrefetchChunks; ++i) Prefetch(shared, i);
  }

  // The second thread reads with a connection of its own. It must see the
  // same file as this one: with a rollback journal, this connection's read
  // transaction (begun above) keeps every writer out until it ends, so once
  // the helper has read too, both read the same state. In WAL mode each
  // connection reads its own snapshot, which could differ: then this
  // thread checks every chunk itself.
  std::unique_ptr<Helper> helper;
  if (n_chunks > 1) {
    std::string mode;
    sqlite3_stmt* m = nullptr;
    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &m, nullptr) == SQLITE_OK && sqlite3_step(m) == SQLITE_ROW) {
      mode = Column(m, 0);
    }
    sqlite3_finalize(m);
    if (mode != "wal") {
      helper = std::make_unique<Helper>();
      sqlite3_stmt* h = nullptr;
      bool ok =
          helper->db.Open(o.db_path).ok() &&
          sqlite3_exec(helper->db.get(), "BEGIN", nullptr, nullptr, nullptr) == SQLITE_OK &&
          sqlite3_prepare_v2(helper->db.get(), "SELECT max(rowid) FROM audit_log", -1, &h, nullptr) == SQLITE_OK &&
          sqlite3_step(h) == SQLITE_ROW && sqlite3_column_int64(h, 0) == max_rowid;
      sqlite3_finalize(h);
      ok = ok && sqlite3_prepare_v2(helper->db.get(), select.c_str(), -1, &helper->s, nullptr) == SQLITE_OK;
      if (!ok) helper.reset();  // one thread then: slower, not weaker
    }
  }

  // The helper starts at once, so that it is checking records while this
  // thread checks the checkpoint signatures.
  std::mutex helper_mu;
  std::condition_variable helper_cv;
  bool helper_done = false;
  std::exception_ptr helper_error;
  std::thread helper_thread;
  if (helper) {
    helper_thread = std::thread([&] {
      try {
        CheckChunks(helper->db.get(), helper->s, shape.has_leaf, &shared, [] {});
      } catch (...) {  // out of memory: truly unexpected; rethrown on the caller's thread
        helper_error = std::current_exception();
        shared.stop = true;
      }
      // Closed here, while the caller may still be on its last chunk.
      sqlite3_finalize(helper->s);
      helper->s = nullptr;
      helper->db.Close();
      std::lock_guard lock(helper_mu);
      helper_done = true;
      helper_cv.notify_all();
    });
  }
  struct Joiner {
    Shared& shared;
    std::thread& t;
    ~Joiner() {
      if (!t.joinable()) return;
      shared.stop = true;
      t.join();
    }
  } joiner{shared, helper_thread};

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

  // Progress, reported on this thread: rows checked by both threads so far.
  uint64_t next_progress = o.progress_every;
  auto progress = [&] {
    if (!o.progress || o.progress_every == 0) return;
    const uint64_t checked = shared.rows_checked.load(std::memory_order_relaxed);
    for (; next_progress <= checked; next_progress += o.progress_every) o.progress(next_progress, total);
  };
  CheckChunks(db, rows, shape.has_leaf, &shared, progress);
  if (helper) {
    std::unique_lock lock(helper_mu);
    while (!helper_cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return helper_done; })) {
      lock.unlock();
      progress();
      lock.lock();
    }
  }
  if (helper_thread.joinable()) helper_thread.join();
  if (helper_error) std::rethrow_exception(helper_error);

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
  if (!shared.sizes.empty() && shared.sizes[0] == 0) {
    if (Status st = check_root(0, merkle::EmptyRoot()); !st.ok()) return st;
  }

  // Join the chunks in log order.
  Pieces tree;  // the log's tree so far
  uint64_t hash_only = 0;
  auto fail = [&](uint64_t first_bad_seq, const Pieces& at, uint64_t at_hash_only, Status st) {
    report->first_bad_seq = first_bad_seq;
    report->records = at.end();
    report->root = at.Root();
    report->hash_only = at_hash_only;
    return st;
  };
  for (const Chunk& c : shared.chunks) {
    // Chunks are left unchecked only after one with a problem, where the
    // join stops.
    if (!c.checked) return Status::Corruption("the verifier skipped records it had to check (a bug)");
    if (c.has_rows && c.first_seq != tree.end() + 1) {
      return fail(tree.end() + 1, tree, hash_only, Status::Corruption(OutOfOrder(tree.end() + 1, c.first_seq)));
    }
    for (const auto& at : c.at_checkpoints) {
      Pieces t = tree;
      for (const Piece& p : at.pieces) t.Push(p);
      if (Status st = check_root(at.size, t.Root()); !st.ok()) return fail(at.size, t, hash_only + at.hash_only, st);
    }
    for (const Piece& p : c.pieces) tree.Push(p);
    hash_only += c.hash_only;
    if (c.problem == Chunk::Problem::kRecord) return fail(c.bad_seq, tree, hash_only, Status::Corruption(c.why));
    if (c.problem == Chunk::Problem::kUnreadable) {
      // SQLite could not read the row after the last good one: the file is damaged there.
      return fail(tree.end() + 1, tree, hash_only,
                  Status::Corruption("record " + std::to_string(tree.end() + 1) + ": cannot be read (" + c.why +
                                     "; the database file is damaged)"));
    }
  }
  report->records = tree.end();
  report->root = tree.Root();
  report->hash_only = hash_only;
  // A checkpoint beyond the end means the log was truncated.
  auto last = checkpoints.upper_bound(tree.end());
  if (last != checkpoints.end()) {
    return Status::Corruption("the log ends at record " + std::to_string(tree.end()) + " but " + last->second.second +
                              " covers " + std::to_string(last->first) + " records (the log was truncated)");
  }
  return Status::Ok();
}

namespace {

// The canonical leaf of the record at rowid (record seq) of an export,
// encoded from its columns with verify's checks, and checked against its
// leaf hash. A broker's store (its audit_log keeps most fields in the leaf
// only) gives its stored leaf bytes.
Result<std::string> LeafOfRow(sqlite3* db, int64_t rowid, uint64_t seq, const merkle::Hash& leaf_hash) {
  const std::string record = "record " + std::to_string(seq);
  sqlite3_stmt* s = nullptr;
  const ExportShape shape = ShapeOf(db);
  const bool export_columns =
      sqlite3_prepare_v2(db, "SELECT cert_sha256 FROM audit_log LIMIT 0", -1, &s, nullptr) == SQLITE_OK;
  sqlite3_finalize(s);
  s = nullptr;
  if (export_columns) {
    if (Status st = ExportTextIsUtf8(db); !st.ok()) return st;
  }
  if (!export_columns && !shape.has_leaf)
    return Status::Corruption("the export's audit_log has neither its columns nor leaves");
  const std::string sql = (export_columns ? RowSelect(shape) : "SELECT leaf FROM audit_log") + " WHERE rowid = ?";
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr) != SQLITE_OK) {
    return Status::Corruption(std::string("the export's audit_log cannot be read: ") + sqlite3_errmsg(db));
  }
  struct Finalizer {
    sqlite3_stmt* s;
    ~Finalizer() { sqlite3_finalize(s); }
  } finalizer{s};
  sqlite3_bind_int64(s, 1, rowid);
  if (sqlite3_step(s) != SQLITE_ROW) {
    return Status::Corruption(record + ": cannot be read (" + sqlite3_errmsg(db) + ")");
  }
  std::string leaf;
  if (!export_columns) {
    leaf = std::string(ColumnBytes(s, 0));
  } else if (sqlite3_column_int64(s, kHashOnlyColumn) != 0) {
    return Status::InvalidArgument(record +
                                   " is held by its leaf hash only in this export (outside the audit scope, "
                                   "or pruned): it cannot be proved from it");
  } else {
    if (const int type = sqlite3_column_type(s, 0); type != SQLITE_INTEGER) {
      return Status::Corruption(record + ": " + RowProblem{nullptr, 0, type}.Message());
    }
    std::string buffer;
    std::string_view encoded;
    RowProblem problem;
    if (!RowLeaf(s, seq, &buffer, &encoded, &problem)) return Status::Corruption(record + ": " + problem.Message());
    if (shape.has_leaf && !SameBytes(encoded, ColumnBytes(s, kLeafColumn))) {
      return Status::Corruption(record + ": its columns differ from its signed leaf bytes (the record was altered)");
    }
    leaf = std::string(encoded);
  }
  if (merkle::LeafHash(leaf) != leaf_hash) {
    return Status::Corruption(record + ": " +
                              (export_columns ? "its columns do not match its leaf hash (the record was altered)"
                                              : "leaf bytes do not match their hash (the record was altered)"));
  }
  return leaf;
}

}  // namespace

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
  int64_t rowid = 0;
  bool found = false;  // the row of record seq, at position seq - 1
  sqlite3_prepare_v2(db, "SELECT seq, leaf_hash, rowid FROM audit_log WHERE seq <= ? ORDER BY seq", -1, &s, nullptr);
  sqlite3_bind_int64(s, 1, static_cast<int64_t>(p.checkpoint.tree_size));
  while (sqlite3_step(s) == SQLITE_ROW) {
    merkle::Hash h;
    if (sqlite3_column_bytes(s, 1) != 32) break;
    std::memcpy(h.data(), sqlite3_column_blob(s, 1), 32);
    leaves.push_back(h);
    if (static_cast<uint64_t>(sqlite3_column_int64(s, 0)) == seq && leaves.size() == seq) {
      rowid = sqlite3_column_int64(s, 2);
      found = true;
    }
  }
  sqlite3_finalize(s);
  if (leaves.size() != p.checkpoint.tree_size) {
    return Status::Corruption("the export holds " + std::to_string(leaves.size()) + " records, the checkpoint " +
                              std::to_string(p.checkpoint.tree_size));
  }
  if (merkle::RootOf(leaves) != p.checkpoint.root) return Status::Corruption("the export does not match the checkpoint");
  if (!found) {
    return Status::Corruption("record " + std::to_string(seq) +
                              " is not in its place in the export (run 'liaison "
                              "audit verify')");
  }
  // The record's leaf, encoded from its columns (as verify does).
  auto leaf = LeafOfRow(db, rowid, seq, leaves[seq - 1]);
  if (!leaf.ok()) return leaf.status();
  p.leaf = std::move(leaf).value();
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
