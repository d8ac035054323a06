// Store::ExportAudit: the audit log and its checkpoints copied out of a
// store's file into a new SQLite file, for auditors and `liaison audit
// verify`. It reads the file, not a running store's state.
#include <sqlite3.h>

#include <filesystem>
#include <string>
#include <string_view>
#include <utility>

#include "broker/store/audit_chunks.h"
#include "broker/store/store.h"
#include "broker/store/store_impl.h"
#include "common/audit_record.h"

namespace liaison::broker {

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
  if (Status r = audit_chunks::Register(db); !r.ok()) {
    sqlite3_close_v2(db);
    return r;
  }
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
