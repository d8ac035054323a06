#include "client/audit_export.h"

#include <sqlite3.h>

#include <filesystem>

namespace liaison::client {
namespace {

constexpr uint32_t kExportPageSize = 1000;

// The shape of a local export (broker::Store::ExportAudit), plus hash_only:
// every field once, as a column; no leaf bytes (the verifier encodes them
// from the columns).
constexpr const char* kSchema = R"sql(
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
  leaf_hash BLOB NOT NULL,
  hash_only INTEGER NOT NULL DEFAULT 0);
CREATE TABLE checkpoints(tree_size INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, text TEXT NOT NULL);
)sql";

Status SqlError(sqlite3* db, const std::string& what) {
  return Status::IoError(what + ": " + (db ? sqlite3_errmsg(db) : "no database"));
}

class Writer {
 public:
  ~Writer() {
    sqlite3_finalize(row_);
    sqlite3_finalize(cp_);
    sqlite3_close_v2(db_);
  }

  Status Open(const std::string& path) {
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) != SQLITE_OK) {
      return SqlError(db_, "cannot create " + path);
    }
    if (sqlite3_exec(db_, kSchema, nullptr, nullptr, nullptr) != SQLITE_OK ||
        sqlite3_exec(db_, "BEGIN", nullptr, nullptr, nullptr) != SQLITE_OK) {
      return SqlError(db_, path);
    }
    if (sqlite3_prepare_v2(db_,
                           "INSERT INTO audit_log(seq, time_ms, event, actor, cert_sha256, message_id, case_id, sender, "
                           "recipient, message_type, tlp, purpose, decision, rules, policy_version, obligations, "
                           "body_hmac, detail, leaf_hash, hash_only) VALUES "
                           "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           -1, &row_, nullptr) != SQLITE_OK ||
        sqlite3_prepare_v2(db_, "INSERT OR IGNORE INTO checkpoints(tree_size, time_ms, text) VALUES (?,?,?)", -1, &cp_,
                           nullptr) != SQLITE_OK) {
      return SqlError(db_, path);
    }
    return Status::Ok();
  }

  Status Row(const AuditRow& row) {
    const audit::Record& r = row.record;
    sqlite3_bind_int64(row_, 1, static_cast<int64_t>(r.seq));
    sqlite3_bind_int64(row_, 2, r.time_ms);
    int i = 3;
    for (const std::string* f : {&r.event, &r.actor, &r.cert_sha256, &r.message_id, &r.case_id, &r.sender,
                                 &r.recipient, &r.message_type}) {
      sqlite3_bind_text(row_, i++, f->data(), static_cast<int>(f->size()), SQLITE_STATIC);
    }
    sqlite3_bind_int64(row_, i++, r.tlp);
    for (const std::string* f : {&r.purpose, &r.decision, &r.rules, &r.policy_version, &r.obligations, &r.body_hmac,
                                 &r.detail}) {
      sqlite3_bind_text(row_, i++, f->data(), static_cast<int>(f->size()), SQLITE_STATIC);
    }
    sqlite3_bind_blob(row_, i++, row.leaf_hash.data(), static_cast<int>(row.leaf_hash.size()), SQLITE_STATIC);
    sqlite3_bind_int(row_, i++, row.hash_only ? 1 : 0);
    const int rc = sqlite3_step(row_);
    sqlite3_reset(row_);
    if (rc != SQLITE_DONE) return SqlError(db_, "writing record " + std::to_string(r.seq));
    return Status::Ok();
  }

  Status Checkpoint(const audit::Checkpoint& c) {
    const std::string text = audit::FormatCheckpoint(c);
    sqlite3_bind_int64(cp_, 1, static_cast<int64_t>(c.tree_size));
    sqlite3_bind_int64(cp_, 2, c.time_ms);
    sqlite3_bind_text(cp_, 3, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
    const int rc = sqlite3_step(cp_);
    sqlite3_reset(cp_);
    if (rc != SQLITE_DONE) return SqlError(db_, "writing a checkpoint");
    return Status::Ok();
  }

  Status Commit() {
    if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) return SqlError(db_, "commit");
    return Status::Ok();
  }

 private:
  sqlite3* db_ = nullptr;
  sqlite3_stmt* row_ = nullptr;
  sqlite3_stmt* cp_ = nullptr;
};

Status Fetch(Client& client, Writer& w, RemoteExportReport* report,
             const std::function<void(uint64_t, uint64_t)>& progress) {
  AuditQuery q;
  q.export_mode = true;
  q.page_size = kExportPageSize;
  uint64_t size = 0;
  for (;;) {
    AuditPage page = client.QueryAudit(q);
    report->pages++;
    if (!page.status.ok()) return page.status;
    if (q.until_tree_size == 0) {
      // The first page: the export ends at the broker's newest checkpoint.
      size = page.checkpoint.tree_size;
      if (size == 0) return Status::NotFound("the broker's audit log is empty");
      q.until_tree_size = size;
      if (Status s = w.Checkpoint(page.checkpoint); !s.ok()) return s;
      report->checkpoints++;
    }
    for (const auto& row : page.rows) {
      if (row.record.seq != report->records + 1) {
        return Status::Corruption("the broker sent record " + std::to_string(row.record.seq) + " where record " +
                                  std::to_string(report->records + 1) + " belongs");
      }
      if (Status s = w.Row(row); !s.ok()) return s;
      report->records++;
      if (row.hash_only) report->hash_only++;
    }
    for (const auto& text : page.stored_checkpoints) {
      auto cp = audit::ParseCheckpoint(text);
      if (!cp.ok()) return cp.status().Annotate("a checkpoint from the broker");
      if (Status s = w.Checkpoint(*cp); !s.ok()) return s;
      report->checkpoints++;
    }
    if (progress) progress(report->records, size);
    if (page.next_page_token == 0) break;
    if (page.next_page_token != report->records) {
      return Status::Corruption("the broker's page token " + std::to_string(page.next_page_token) +
                                " does not follow record " + std::to_string(report->records));
    }
    q.page_token = page.next_page_token;
  }
  if (report->records != size) {
    return Status::Corruption("the broker's export ended at record " + std::to_string(report->records) + " of " +
                              std::to_string(size));
  }
  return w.Commit();
}

}  // namespace

Status ExportRemote(Client& client, const std::string& out_path, RemoteExportReport* report,
                    const std::function<void(uint64_t, uint64_t)>& progress) {
  *report = RemoteExportReport{};
  if (std::filesystem::exists(out_path)) return Status::InvalidArgument(out_path + " already exists");
  Status s;
  {
    Writer w;
    s = w.Open(out_path);
    if (s.ok()) s = Fetch(client, w, report, progress);
  }
  if (!s.ok()) std::filesystem::remove(out_path);
  return s;
}

}  // namespace liaison::client
