// The audit log's chunks and the virtual table `audit_log` over them
// (audit_chunks.h).
#include "broker/store/audit_chunks.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/audit_record.h"

namespace liaison::broker::audit_chunks {
namespace {

constexpr size_t kHashBytes = 32;
constexpr const char* kCreateTable =
    "CREATE TABLE audit_chunks(first_seq INTEGER PRIMARY KEY, n INTEGER NOT NULL, times BLOB NOT NULL, "
    "hashes BLOB NOT NULL, leaves BLOB NOT NULL)";
constexpr const char* kCreateVirtualTable = "CREATE VIRTUAL TABLE audit_log USING liaison_audit_log";

void PutFixed64(std::string* out, uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>(v >> (8 * i));
  out->append(b, 8);
}
void PutFixed32(std::string* out, uint32_t v) {
  char b[4];
  for (int i = 0; i < 4; ++i) b[i] = static_cast<char>(v >> (8 * i));
  out->append(b, 4);
}
uint64_t GetFixed(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

void BindBlob(sqlite3_stmt* s, int i, const std::string& blob) {
  sqlite3_bind_blob(s, i, blob.data(), static_cast<int>(blob.size()), SQLITE_STATIC);
}

std::string_view ColumnBytes(sqlite3_stmt* s, int i) {
  const void* p = sqlite3_column_blob(s, i);
  const int n = sqlite3_column_bytes(s, i);
  return p == nullptr ? std::string_view() : std::string_view(static_cast<const char*>(p), static_cast<size_t>(n));
}

Status SqlFailure(sqlite3* db, const std::string& what) {
  return Status::IoError("audit log: " + what + ": " + sqlite3_errmsg(db));
}

struct Finalizer {
  sqlite3_stmt* s = nullptr;
  ~Finalizer() { sqlite3_finalize(s); }
};

// ---- The virtual table ----------------------------------------------------

enum Column { kSeq, kTimeMs, kEvent, kActor, kMessageId, kCaseId, kSender, kRecipient, kDecision, kLeaf, kLeafHash };
// The leaf's string (RecordView::strings) each text column is.
int LeafString(int column) {
  switch (column) {
    case kEvent: return 0;
    case kActor: return 1;
    case kMessageId: return 3;
    case kCaseId: return 4;
    case kSender: return 5;
    case kRecipient: return 6;
    case kDecision: return 9;
    default: return -1;
  }
}

// idxNum bits: which bounds xFilter receives (in this order), the order,
// and whether the query reads a column that needs the leaves (which are
// then read with the chunk, not by a second statement).
constexpr int kEq = 1, kLower = 2, kUpper = 4, kDesc = 8, kLeaves = 16;

struct Table : sqlite3_vtab {
  sqlite3* db = nullptr;
  std::string chunks;  // "schema".audit_chunks, quoted
  // Statements of closed cursors, for the next ones (a lookup per record
  // must not prepare a statement each time), by order and leaves read.
  std::vector<sqlite3_stmt*> free_chunks[4];
  std::vector<sqlite3_stmt*>* Free(bool desc, bool leaves) { return &free_chunks[(desc ? 2 : 0) + (leaves ? 1 : 0)]; }
  ~Table() {
    for (auto& list : free_chunks) {
      for (sqlite3_stmt* s : list) sqlite3_finalize(s);
    }
  }
  sqlite3_stmt* Take(std::vector<sqlite3_stmt*>* list, const std::string& sql) {
    if (!list->empty()) {
      sqlite3_stmt* s = list->back();
      list->pop_back();
      return s;
    }
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v3(db, sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr) != SQLITE_OK) {
      sqlite3_finalize(s);
      return nullptr;
    }
    return s;
  }
  void Give(std::vector<sqlite3_stmt*>* list, sqlite3_stmt* s) {
    if (s == nullptr) return;
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    list->push_back(s);
  }
};

struct Cursor : sqlite3_vtab_cursor {
  Table* table() { return static_cast<Table*>(pVtab); }
  sqlite3_stmt* chunks = nullptr;  // first_seq, n, times, hashes[, leaves] of the chunks in range
  std::vector<sqlite3_stmt*>* chunks_list = nullptr;
  // with_leaves: the query reads a column that needs the leaves (colUsed),
  // so they are read with each chunk.
  bool desc = false, with_leaves = false, eof = true;
  int64_t lo = 0, hi = 0;  // seqs wanted, inclusive
  int64_t first_seq = 0;
  std::vector<Entry> entries;  // of the current chunk
  int index = 0;               // into entries
  // The current record's leaf decoded, when a text column needs it.
  bool decoded = false, decodable = false;
  audit::RecordView view;

  ~Cursor() { table()->Give(chunks_list, chunks); }
  int Fail(const std::string& message) {
    sqlite3_free(pVtab->zErrMsg);
    pVtab->zErrMsg = sqlite3_mprintf("%s", message.c_str());
    return SQLITE_CORRUPT;
  }
  // Steps to the next chunk that holds a wanted seq; eof when none.
  int NextChunk() {
    while (true) {
      const int rc = sqlite3_step(chunks);
      if (rc == SQLITE_DONE) {
        eof = true;
        return SQLITE_OK;
      }
      if (rc != SQLITE_ROW) return rc;
      first_seq = sqlite3_column_int64(chunks, 0);
      const int64_t n = sqlite3_column_int64(chunks, 1);
      const std::string_view times = ColumnBytes(chunks, 2), hashes = ColumnBytes(chunks, 3);
      const std::string_view leaves = with_leaves ? ColumnBytes(chunks, 4) : std::string_view();
      if (Status s = Decode(first_seq, n, times, hashes, with_leaves ? &leaves : nullptr, &entries); !s.ok()) {
        return Fail(s.message());
      }
      const int64_t from = std::max(lo, first_seq), to = std::min(hi, first_seq + n - 1);
      if (from > to) continue;
      index = static_cast<int>(desc ? to - first_seq : from - first_seq);
      decoded = false;
      return SQLITE_OK;
    }
  }
  int64_t seq() const { return first_seq + index; }
};

int Connect(sqlite3* db, void*, int argc, const char* const* argv, sqlite3_vtab** out, char** err) {
  if (argc != 3) {
    *err = sqlite3_mprintf("liaison_audit_log takes no arguments");
    return SQLITE_ERROR;
  }
  int rc = sqlite3_declare_vtab(db,
                                "CREATE TABLE x(seq INTEGER, time_ms INTEGER, event TEXT, actor TEXT, message_id TEXT, "
                                "case_id TEXT, sender TEXT, recipient TEXT, decision TEXT, leaf BLOB, leaf_hash BLOB)");
  if (rc != SQLITE_OK) return rc;
  auto t = std::make_unique<Table>();
  t->db = db;
  char* quoted = sqlite3_mprintf("\"%w\".audit_chunks", argv[1]);
  t->chunks = quoted;
  sqlite3_free(quoted);
  *out = t.release();
  return SQLITE_OK;
}

int Disconnect(sqlite3_vtab* vtab) {
  delete static_cast<Table*>(vtab);
  return SQLITE_OK;
}

int BestIndex(sqlite3_vtab*, sqlite3_index_info* info) {
  int eq = -1, lower = -1, upper = -1;
  for (int i = 0; i < info->nConstraint; ++i) {
    const auto& c = info->aConstraint[i];
    if (!c.usable || (c.iColumn != kSeq && c.iColumn != -1)) continue;
    switch (c.op) {
      case SQLITE_INDEX_CONSTRAINT_EQ:
        if (eq < 0) eq = i;
        break;
      case SQLITE_INDEX_CONSTRAINT_GT:
      case SQLITE_INDEX_CONSTRAINT_GE:
        if (lower < 0) lower = i;
        break;
      case SQLITE_INDEX_CONSTRAINT_LT:
      case SQLITE_INDEX_CONSTRAINT_LE:
        if (upper < 0) upper = i;
        break;
      default: break;
    }
  }
  // The bounds only narrow the chunks read; SQLite checks every constraint
  // again (omit stays 0), so a loose bound is never wrong.
  int arg = 0, idx = 0;
  double rows = 1e7;
  if (eq >= 0) {
    info->aConstraintUsage[eq].argvIndex = ++arg;
    idx |= kEq;
    rows = 1;
    info->idxFlags |= SQLITE_INDEX_SCAN_UNIQUE;
  } else {
    if (lower >= 0) {
      info->aConstraintUsage[lower].argvIndex = ++arg;
      idx |= kLower;
      rows /= 4;
    }
    if (upper >= 0) {
      info->aConstraintUsage[upper].argvIndex = ++arg;
      idx |= kUpper;
      rows /= 4;
    }
  }
  // colUsed: bit i for column i (the last bit for every column past 62).
  for (int column = kEvent; column <= kLeaf; ++column) {
    if (info->colUsed & (sqlite3_uint64{1} << column)) idx |= kLeaves;
  }
  if (info->nOrderBy == 1 && (info->aOrderBy[0].iColumn == kSeq || info->aOrderBy[0].iColumn == -1)) {
    if (info->aOrderBy[0].desc) idx |= kDesc;
    info->orderByConsumed = 1;
  }
  info->idxNum = idx;
  info->estimatedRows = static_cast<sqlite3_int64>(rows);
  info->estimatedCost = rows;
  return SQLITE_OK;
}

int Open(sqlite3_vtab*, sqlite3_vtab_cursor** out) {
  *out = new Cursor();
  return SQLITE_OK;
}

int Close(sqlite3_vtab_cursor* cur) {
  delete static_cast<Cursor*>(cur);
  return SQLITE_OK;
}

// A bound on seq from a constraint's value, widened to whole numbers
// (SQLite checks the constraint itself again); nullopt for a value that
// bounds nothing this way (text, NULL): then all seqs are read.
std::optional<int64_t> Bound(sqlite3_value* v, bool lower) {
  switch (sqlite3_value_numeric_type(v)) {
    case SQLITE_INTEGER: return sqlite3_value_int64(v);
    case SQLITE_FLOAT: {
      const double d = lower ? std::floor(sqlite3_value_double(v)) : std::ceil(sqlite3_value_double(v));
      if (!(d > -9e18 && d < 9e18)) {
        return d > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
      }
      return static_cast<int64_t>(d);
    }
    default: return std::nullopt;
  }
}

int Filter(sqlite3_vtab_cursor* c, int idx, const char*, int argc, sqlite3_value** argv) {
  auto* cur = static_cast<Cursor*>(c);
  Table* t = cur->table();
  cur->lo = std::numeric_limits<int64_t>::min();
  cur->hi = std::numeric_limits<int64_t>::max();
  int arg = 0;
  auto next = [&]() -> sqlite3_value* { return arg < argc ? argv[arg++] : nullptr; };
  if (idx & kEq) {
    if (sqlite3_value* v = next(); v != nullptr) {
      if (auto b = Bound(v, true)) cur->lo = *b;
      if (auto b = Bound(v, false)) cur->hi = *b;
    }
  }
  if (idx & kLower) {
    if (sqlite3_value* v = next(); v != nullptr) {
      if (auto b = Bound(v, true)) cur->lo = std::max(cur->lo, *b);
    }
  }
  if (idx & kUpper) {
    if (sqlite3_value* v = next(); v != nullptr) {
      if (auto b = Bound(v, false)) cur->hi = std::min(cur->hi, *b);
    }
  }
  cur->desc = (idx & kDesc) != 0;
  cur->with_leaves = (idx & kLeaves) != 0;
  std::vector<sqlite3_stmt*>* list = t->Free(cur->desc, cur->with_leaves);
  if (cur->chunks_list != list) {
    t->Give(cur->chunks_list, cur->chunks);
    cur->chunks = nullptr;
    cur->chunks_list = list;
  }
  if (cur->chunks == nullptr) {
    // A chunk holding lo starts at most kMaxRecords - 1 before it; chunks
    // are read in seq order either way.
    cur->chunks =
        t->Take(list, std::string("SELECT first_seq, n, times, hashes") + (cur->with_leaves ? ", leaves" : "") +
                          " FROM " + t->chunks + " WHERE first_seq <= ?2 AND first_seq > ?1 ORDER BY first_seq" +
                          (cur->desc ? " DESC" : ""));
    if (cur->chunks == nullptr) {
      sqlite3_free(t->zErrMsg);
      t->zErrMsg = sqlite3_mprintf("%s", sqlite3_errmsg(t->db));
      return SQLITE_ERROR;
    }
  }
  sqlite3_reset(cur->chunks);
  const int64_t from = cur->lo < std::numeric_limits<int64_t>::min() + kMaxRecords ? std::numeric_limits<int64_t>::min()
                                                                                   : cur->lo - kMaxRecords;
  sqlite3_bind_int64(cur->chunks, 1, from);
  sqlite3_bind_int64(cur->chunks, 2, cur->hi);
  cur->eof = cur->lo > cur->hi;
  return cur->eof ? SQLITE_OK : cur->NextChunk();
}

int Next(sqlite3_vtab_cursor* c) {
  auto* cur = static_cast<Cursor*>(c);
  cur->decoded = false;
  if (cur->desc) {
    if (cur->index > 0 && cur->seq() - 1 >= cur->lo) {
      --cur->index;
      return SQLITE_OK;
    }
  } else if (cur->index + 1 < static_cast<int>(cur->entries.size()) && cur->seq() + 1 <= cur->hi) {
    ++cur->index;
    return SQLITE_OK;
  }
  return cur->NextChunk();
}

int Eof(sqlite3_vtab_cursor* c) {
  return static_cast<Cursor*>(c)->eof ? 1 : 0;
}

int ColumnValue(sqlite3_vtab_cursor* c, sqlite3_context* ctx, int column) {
  auto* cur = static_cast<Cursor*>(c);
  switch (column) {
    case kSeq: sqlite3_result_int64(ctx, cur->seq()); return SQLITE_OK;
    case kTimeMs: sqlite3_result_int64(ctx, cur->entries[cur->index].time_ms); return SQLITE_OK;
    case kLeafHash: {
      const std::string_view h = cur->entries[cur->index].hash;
      sqlite3_result_blob(ctx, h.data(), static_cast<int>(h.size()), SQLITE_TRANSIENT);
      return SQLITE_OK;
    }
    default: break;
  }
  // SQLite names every column a query may read in colUsed (BestIndex).
  if (!cur->with_leaves) return cur->Fail("the audit log's table was asked for a column it did not plan to read");
  const std::string_view leaf = cur->entries[cur->index].leaf;
  if (column == kLeaf) {
    sqlite3_result_blob(ctx, leaf.data(), static_cast<int>(leaf.size()), SQLITE_TRANSIENT);
    return SQLITE_OK;
  }
  if (!cur->decoded) {
    const char* why = nullptr;
    cur->decodable = !leaf.empty() && audit::DecodeLeafView(leaf, &cur->view, &why);
    cur->decoded = true;
  }
  // A pruned record (empty leaf) has empty fields; so has a leaf that does
  // not decode, which the readers then report by its hash.
  const int i = LeafString(column);
  if (i < 0 || !cur->decodable) {
    sqlite3_result_text(ctx, "", 0, SQLITE_STATIC);
  } else {
    const std::string_view v = cur->view.strings[i];
    sqlite3_result_text(ctx, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  return SQLITE_OK;
}

int Rowid(sqlite3_vtab_cursor* c, sqlite3_int64* rowid) {
  *rowid = static_cast<Cursor*>(c)->seq();
  return SQLITE_OK;
}

const sqlite3_module kModule = {
    /* iVersion */ 0,
    /* xCreate */ Connect,
    /* xConnect */ Connect,
    /* xBestIndex */ BestIndex,
    /* xDisconnect */ Disconnect,
    /* xDestroy */ Disconnect,
    /* xOpen */ Open,
    /* xClose */ Close,
    /* xFilter */ Filter,
    /* xNext */ Next,
    /* xEof */ Eof,
    /* xColumn */ ColumnValue,
    /* xRowid */ Rowid,
    /* xUpdate: read only */ nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

}  // namespace

void Encode(const std::vector<Entry>& entries, Blobs* out) {
  out->times.clear();
  out->hashes.clear();
  out->leaves.clear();
  for (const Entry& e : entries) {
    PutFixed64(&out->times, static_cast<uint64_t>(e.time_ms));
    out->hashes.append(e.hash);
    PutFixed32(&out->leaves, static_cast<uint32_t>(e.leaf.size()));
    out->leaves.append(e.leaf);
  }
}

void BindInsert(sqlite3_stmt* insert, int64_t first_seq, const std::vector<Entry>& entries, Blobs* blobs) {
  Encode(entries, blobs);
  sqlite3_bind_int64(insert, 1, first_seq);
  sqlite3_bind_int64(insert, 2, static_cast<int64_t>(entries.size()));
  BindBlob(insert, 3, blobs->times);
  BindBlob(insert, 4, blobs->hashes);
  BindBlob(insert, 5, blobs->leaves);
}

Status Decode(int64_t first_seq, int64_t n, std::string_view times, std::string_view hashes,
              const std::string_view* leaves, std::vector<Entry>* out) {
  auto bad = [&](const std::string& why) {
    return Status::Corruption("audit chunk at seq " + std::to_string(first_seq) + " is malformed: " + why);
  };
  if (first_seq < 1) return bad("its first seq is below 1");
  if (n < 1 || n > kMaxRecords) return bad("it holds " + std::to_string(n) + " records");
  const size_t count = static_cast<size_t>(n);
  if (times.size() != 8 * count) return bad("its times are " + std::to_string(times.size()) + " bytes");
  if (hashes.size() != kHashBytes * count) return bad("its hashes are " + std::to_string(hashes.size()) + " bytes");
  out->resize(count);
  for (size_t i = 0; i < count; ++i) {
    Entry& e = (*out)[i];
    e.time_ms = static_cast<int64_t>(GetFixed(times.data() + 8 * i, 8));
    e.hash = hashes.substr(kHashBytes * i, kHashBytes);
    e.leaf = {};
  }
  if (leaves == nullptr) return Status::Ok();
  std::string_view rest = *leaves;
  for (size_t i = 0; i < count; ++i) {
    if (rest.size() < 4) return bad("its leaves end early");
    const uint64_t len = GetFixed(rest.data(), 4);
    rest.remove_prefix(4);
    if (len > rest.size()) return bad("its leaves end early");
    (*out)[i].leaf = rest.substr(0, len);
    rest.remove_prefix(len);
  }
  if (!rest.empty()) return bad("bytes after its last leaf");
  return Status::Ok();
}

Status Register(sqlite3* db) {
  // sqlite3_create_module replaces an earlier registration of the name.
  if (sqlite3_create_module_v2(db, "liaison_audit_log", &kModule, nullptr, nullptr) != SQLITE_OK) {
    return SqlFailure(db, "register the audit log's table");
  }
  return Status::Ok();
}

Status MigrateRows(sqlite3* db) {
  if (sqlite3_exec(db, kCreateTable, nullptr, nullptr, nullptr) != SQLITE_OK) return SqlFailure(db, "create chunks");
  Finalizer read, write;
  if (sqlite3_prepare_v2(db, "SELECT seq, time_ms, leaf, leaf_hash FROM audit_log ORDER BY seq", -1, &read.s,
                         nullptr) != SQLITE_OK ||
      sqlite3_prepare_v2(db, kInsert, -1, &write.s, nullptr) != SQLITE_OK) {
    return SqlFailure(db, "prepare the copy into chunks");
  }
  // The rows' bytes for the chunk being gathered.
  struct Row {
    int64_t seq, time_ms;
    std::string leaf, hash;
  };
  std::vector<Row> rows;
  std::vector<Entry> entries;
  Blobs blobs;
  auto flush = [&]() -> Status {
    if (rows.empty()) return Status::Ok();
    entries.clear();
    for (const Row& r : rows) entries.push_back({r.time_ms, r.leaf, r.hash});
    BindInsert(write.s, rows.front().seq, entries, &blobs);
    const int rc = sqlite3_step(write.s);
    sqlite3_reset(write.s);
    rows.clear();
    return rc == SQLITE_DONE ? Status::Ok() : SqlFailure(db, "write a chunk");
  };
  int rc;
  while ((rc = sqlite3_step(read.s)) == SQLITE_ROW) {
    Row r{sqlite3_column_int64(read.s, 0), sqlite3_column_int64(read.s, 1), std::string(ColumnBytes(read.s, 2)),
          std::string(ColumnBytes(read.s, 3))};
    if (r.hash.size() != kHashBytes) {
      return Status::Corruption("audit record " + std::to_string(r.seq) + " has a malformed leaf hash");
    }
    if (!rows.empty() && (r.seq != rows.back().seq + 1 || rows.size() == static_cast<size_t>(kMaxRecords))) {
      if (Status s = flush(); !s.ok()) return s;
    }
    rows.push_back(std::move(r));
  }
  if (rc != SQLITE_DONE) return SqlFailure(db, "read the audit log");
  if (Status s = flush(); !s.ok()) return s;
  sqlite3_finalize(read.s);  // before the table it reads is dropped
  read.s = nullptr;
  if (sqlite3_exec(db, "DROP TABLE audit_log", nullptr, nullptr, nullptr) != SQLITE_OK ||
      sqlite3_exec(db, kCreateVirtualTable, nullptr, nullptr, nullptr) != SQLITE_OK) {
    return SqlFailure(db, "replace the audit log's table");
  }
  return Status::Ok();
}

Status Prune(sqlite3* db, uint64_t after, uint64_t through) {
  Finalizer read, write;
  if (sqlite3_prepare_v2(db,
                         "SELECT first_seq, n, times, hashes, leaves FROM audit_chunks WHERE first_seq <= ?2 AND "
                         "first_seq > ?1 - ?3 ORDER BY first_seq",
                         -1, &read.s, nullptr) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "UPDATE audit_chunks SET times = ?2, leaves = ?3 WHERE first_seq = ?1", -1, &write.s,
                         nullptr) != SQLITE_OK) {
    return SqlFailure(db, "prepare pruning");
  }
  sqlite3_bind_int64(read.s, 1, static_cast<int64_t>(after));
  sqlite3_bind_int64(read.s, 2, static_cast<int64_t>(through));
  sqlite3_bind_int64(read.s, 3, kMaxRecords);
  std::vector<Entry> entries;
  Blobs blobs;
  int rc;
  while ((rc = sqlite3_step(read.s)) == SQLITE_ROW) {
    const int64_t first = sqlite3_column_int64(read.s, 0);
    const std::string_view leaves = ColumnBytes(read.s, 4);
    if (Status s = Decode(first, sqlite3_column_int64(read.s, 1), ColumnBytes(read.s, 2), ColumnBytes(read.s, 3),
                          &leaves, &entries);
        !s.ok()) {
      return s;
    }
    bool changed = false;
    for (size_t i = 0; i < entries.size(); ++i) {
      const uint64_t seq = static_cast<uint64_t>(first) + i;
      if (seq <= after || seq > through) continue;
      changed = changed || !entries[i].leaf.empty() || entries[i].time_ms != 0;
      entries[i].leaf = {};
      entries[i].time_ms = 0;
    }
    if (!changed) continue;
    Encode(entries, &blobs);  // copies the bytes out of the row before it is rewritten
    sqlite3_bind_int64(write.s, 1, first);
    BindBlob(write.s, 2, blobs.times);
    BindBlob(write.s, 3, blobs.leaves);
    const int w = sqlite3_step(write.s);
    sqlite3_reset(write.s);
    if (w != SQLITE_DONE) return SqlFailure(db, "prune audit records");
  }
  if (rc != SQLITE_DONE) return SqlFailure(db, "read audit records to prune");
  return Status::Ok();
}

Status Scan(sqlite3* db, Extent* extent, const std::function<void(std::string_view hash)>& f) {
  Finalizer s;
  if (sqlite3_prepare_v2(db, "SELECT first_seq, n, times, hashes FROM audit_chunks ORDER BY first_seq", -1, &s.s,
                         nullptr) != SQLITE_OK) {
    return SqlFailure(db, "read the audit log");
  }
  *extent = {};
  std::vector<Entry> entries;
  uint64_t expected = 1;
  int rc;
  while ((rc = sqlite3_step(s.s)) == SQLITE_ROW) {
    const int64_t first = sqlite3_column_int64(s.s, 0);
    if (Status st =
            Decode(first, sqlite3_column_int64(s.s, 1), ColumnBytes(s.s, 2), ColumnBytes(s.s, 3), nullptr, &entries);
        !st.ok()) {
      return st;
    }
    if (static_cast<uint64_t>(first) != expected) extent->contiguous = false;
    extent->count += entries.size();
    extent->max_seq = static_cast<uint64_t>(first) + entries.size() - 1;
    expected = extent->max_seq + 1;
    extent->last_time_ms = entries.back().time_ms;
    for (const Entry& e : entries) f(e.hash);
  }
  if (rc != SQLITE_DONE) return SqlFailure(db, "read the audit log");
  return Status::Ok();
}

}  // namespace liaison::broker::audit_chunks
