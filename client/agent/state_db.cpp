#include "client/agent/state_db.h"

#include <sqlite3.h>

#include <chrono>

namespace liaison::agent {
namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS outbox(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL,
  message_id TEXT NOT NULL,
  body BLOB NOT NULL,
  state INTEGER NOT NULL,
  dir TEXT NOT NULL DEFAULT '',
  dest TEXT NOT NULL,
  result TEXT NOT NULL DEFAULT '',
  claimed_ms INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_active_name ON outbox(name) WHERE state != 2;
CREATE INDEX IF NOT EXISTS outbox_message ON outbox(message_id);
CREATE TABLE IF NOT EXISTS inbox(
  sender TEXT NOT NULL,
  message_id TEXT NOT NULL,
  name TEXT NOT NULL,
  state INTEGER NOT NULL,
  received_ms INTEGER NOT NULL,
  PRIMARY KEY(sender, message_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hooks(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  path TEXT NOT NULL,
  sender TEXT NOT NULL,
  message_id TEXT NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  next_ms INTEGER NOT NULL,
  last_error TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS hooks_due ON hooks(next_ms) WHERE state = 'pending';
)sql";

// Columns added since the first schema, for databases made before them.
struct AddedColumn {
  const char* table;
  const char* column;
  const char* definition;
};
constexpr AddedColumn kAddedColumns[] = {{"outbox", "file_id", "TEXT NOT NULL DEFAULT ''"}};

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A prepared statement, finalized on scope exit.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) { rc_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr); }
  ~Stmt() { sqlite3_finalize(s_); }
  bool ok() const { return rc_ == SQLITE_OK; }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Stmt& Bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, const std::string& v) {
    sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  int Step() { return sqlite3_step(s_); }
  void Reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  int64_t Int(int col) { return sqlite3_column_int64(s_, col); }
  std::string Text(int col) {
    const void* p = sqlite3_column_blob(s_, col);
    const int n = sqlite3_column_bytes(s_, col);
    return p ? std::string(static_cast<const char*>(p), static_cast<size_t>(n)) : std::string();
  }

 private:
  sqlite3_stmt* s_ = nullptr;
  int rc_ = SQLITE_ERROR;
};

}  // namespace

Result<std::unique_ptr<StateDb>> StateDb::Open(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr) !=
      SQLITE_OK) {
    Status s =
        Status::IoError("cannot open state database " + path + ": " + (db ? sqlite3_errmsg(db) : "out of memory"));
    sqlite3_close(db);
    return s;
  }
  std::unique_ptr<StateDb> out(new StateDb(db));
  sqlite3_busy_timeout(db, 5000);
  // FULL: a commit is on disk (WAL fsynced) when it returns, which every
  // guarantee in docs/agent.md relies on. secure_delete: bodies of sent
  // messages are overwritten when dropped, not left in free pages.
  for (const char* sql :
       {"PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL", "PRAGMA secure_delete = ON", kSchema}) {
    if (Status s = out->Exec(sql); !s.ok()) return s.Annotate("state database " + path);
  }
  if (Status s = out->AddColumns(); !s.ok()) return s.Annotate("state database " + path);
  return out;
}

Status StateDb::AddColumns() {
  for (const AddedColumn& c : kAddedColumns) {
    Stmt st(db_, ("SELECT 1 FROM pragma_table_info('" + std::string(c.table) + "') WHERE name = ?").c_str());
    if (!st.ok()) return Error("reading the schema");
    st.Bind(1, std::string(c.column));
    const int rc = st.Step();
    if (rc == SQLITE_ROW) continue;
    if (rc != SQLITE_DONE) return Error("reading the schema");
    const std::string sql = std::string("ALTER TABLE ") + c.table + " ADD COLUMN " + c.column + " " + c.definition;
    if (Status s = Exec(sql.c_str()); !s.ok()) return s;
  }
  return Status::Ok();
}

StateDb::~StateDb() {
  sqlite3_close(db_);
}

Status StateDb::Error(const char* what) {
  return Status::IoError(std::string(what) + ": " + sqlite3_errmsg(db_));
}

Status StateDb::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    Status s = Status::IoError(std::string("state database: ") + (err ? err : sqlite3_errmsg(db_)));
    sqlite3_free(err);
    return s;
  }
  return Status::Ok();
}

// Runs body inside BEGIN IMMEDIATE ... COMMIT; rolls back when it fails.
Status StateDb::InTransaction(const std::function<Status()>& body) {
  if (Status b = Exec("BEGIN IMMEDIATE"); !b.ok()) return b;
  Status s = body();
  if (s.ok()) s = Exec("COMMIT");
  if (!s.ok()) (void)Exec("ROLLBACK");
  return s;
}

Status StateDb::Claim(std::vector<OutboxRow>* rows) {
  std::lock_guard lock(mu_);
  return InTransaction([&]() -> Status {
    Stmt st(db_, "INSERT INTO outbox(name, message_id, body, state, dest, claimed_ms, file_id) VALUES(?,?,?,0,?,?,?)");
    if (!st.ok()) return Error("preparing claim");
    const int64_t now = NowMs();
    for (auto& r : *rows) {
      st.Bind(1, r.name).Bind(2, r.message_id).BindBlob(3, r.body).Bind(4, r.dest).Bind(5, now).Bind(6, r.file_id);
      if (st.Step() != SQLITE_DONE) return Error(("recording outbox file " + r.name).c_str());
      st.Reset();
      r.id = sqlite3_last_insert_rowid(db_);
      r.state = OutboxRow::State::kPending;
    }
    return Status::Ok();
  });
}

Result<std::vector<OutboxRow>> StateDb::ActiveOutbox() {
  std::lock_guard lock(mu_);
  Stmt st(db_, "SELECT id, name, message_id, body, state, dir, dest, result, file_id FROM outbox WHERE state != 2 "
               "ORDER BY id");
  if (!st.ok()) return Error("reading the outbox state");
  std::vector<OutboxRow> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    OutboxRow r;
    r.id = st.Int(0);
    r.name = st.Text(1);
    r.message_id = st.Text(2);
    r.body = st.Text(3);
    r.state = st.Int(4) == 0 ? OutboxRow::State::kPending : OutboxRow::State::kSettled;
    r.dir = st.Text(5);
    r.dest = st.Text(6);
    r.result = st.Text(7);
    r.file_id = st.Text(8);
    out.push_back(std::move(r));
  }
  if (rc != SQLITE_DONE) return Error("reading the outbox state");
  return out;
}

Status StateDb::Settle(const std::vector<Settlement>& settled) {
  std::lock_guard lock(mu_);
  return InTransaction([&]() -> Status {
    Stmt st(db_, "UPDATE outbox SET state = 1, dir = ?, result = ? WHERE id = ? AND state = 0");
    if (!st.ok()) return Error("preparing settle");
    for (const auto& s : settled) {
      st.Bind(1, s.dir).Bind(2, s.result).Bind(3, s.id);
      if (st.Step() != SQLITE_DONE) return Error("recording a publish outcome");
      st.Reset();
    }
    return Status::Ok();
  });
}

Status StateDb::Finish(const std::vector<int64_t>& ids) {
  std::lock_guard lock(mu_);
  return InTransaction([&]() -> Status {
    Stmt st(db_, "UPDATE outbox SET state = 2, body = x'', result = '' WHERE id = ?");
    if (!st.ok()) return Error("preparing finish");
    for (int64_t id : ids) {
      st.Bind(1, id);
      if (st.Step() != SQLITE_DONE) return Error("recording a moved outbox file");
      st.Reset();
    }
    return Status::Ok();
  });
}

Result<std::optional<std::pair<std::string, std::string>>> StateDb::FindSent(const std::string& message_id) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "SELECT dir, dest FROM outbox WHERE message_id = ? ORDER BY id DESC LIMIT 1");
  if (!st.ok()) return Error("looking up a sent message");
  st.Bind(1, message_id);
  const int rc = st.Step();
  if (rc == SQLITE_DONE) return std::optional<std::pair<std::string, std::string>>();
  if (rc != SQLITE_ROW) return Error("looking up a sent message");
  std::string dir = st.Text(0);
  return std::optional<std::pair<std::string, std::string>>({dir.empty() ? "sent" : dir, st.Text(1)});
}

Result<StateDb::InboxState> StateDb::Inbox(const std::string& sender, const std::string& message_id) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "SELECT state FROM inbox WHERE sender = ? AND message_id = ?");
  if (!st.ok()) return Error("looking up a received message");
  st.Bind(1, sender).Bind(2, message_id);
  const int rc = st.Step();
  if (rc == SQLITE_DONE) return InboxState::kNone;
  if (rc != SQLITE_ROW) return Error("looking up a received message");
  return st.Int(0) == 0 ? InboxState::kStaged : InboxState::kDone;
}

Status StateDb::Stage(const std::vector<InboxKey>& keys) {
  std::lock_guard lock(mu_);
  return InTransaction([&]() -> Status {
    Stmt st(db_, "INSERT OR IGNORE INTO inbox(sender, message_id, name, state, received_ms) VALUES(?,?,?,0,?)");
    if (!st.ok()) return Error("preparing stage");
    const int64_t now = NowMs();
    for (const auto& k : keys) {
      st.Bind(1, k.sender).Bind(2, k.message_id).Bind(3, k.name).Bind(4, now);
      if (st.Step() != SQLITE_DONE) return Error("recording a received message");
      st.Reset();
    }
    return Status::Ok();
  });
}

Status StateDb::FinishInbox(const std::vector<InboxKey>& keys, bool hooks, const std::string& inbox_dir,
                            int64_t now_ms) {
  std::lock_guard lock(mu_);
  return InTransaction([&]() -> Status {
    Stmt up(db_, "UPDATE inbox SET state = 1 WHERE sender = ? AND message_id = ? AND state = 0");
    Stmt hook(db_, "INSERT INTO hooks(path, sender, message_id, state, attempts, next_ms) VALUES(?,?,?,'pending',0,?)");
    if (!up.ok() || !hook.ok()) return Error("preparing inbox finish");
    for (const auto& k : keys) {
      up.Bind(1, k.sender).Bind(2, k.message_id);
      if (up.Step() != SQLITE_DONE) return Error("recording a received message");
      up.Reset();
      if (hooks && sqlite3_changes(db_) == 1) {
        hook.Bind(1, inbox_dir + "/" + k.name).Bind(2, k.sender).Bind(3, k.message_id).Bind(4, now_ms);
        if (hook.Step() != SQLITE_DONE) return Error("queueing a hook run");
        hook.Reset();
      }
    }
    return Status::Ok();
  });
}

Result<std::vector<StateDb::InboxKey>> StateDb::StagedInbox() {
  std::lock_guard lock(mu_);
  Stmt st(db_, "SELECT sender, message_id, name FROM inbox WHERE state = 0");
  if (!st.ok()) return Error("reading staged messages");
  std::vector<InboxKey> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) out.push_back({st.Text(0), st.Text(1), st.Text(2)});
  if (rc != SQLITE_DONE) return Error("reading staged messages");
  return out;
}

Result<std::optional<HookRow>> StateDb::NextHook() {
  std::lock_guard lock(mu_);
  Stmt st(db_,
          "SELECT id, path, sender, message_id, attempts, next_ms FROM hooks WHERE state = 'pending' "
          "ORDER BY next_ms, id LIMIT 1");
  if (!st.ok()) return Error("reading hook runs");
  const int rc = st.Step();
  if (rc == SQLITE_DONE) return std::optional<HookRow>();
  if (rc != SQLITE_ROW) return Error("reading hook runs");
  HookRow h;
  h.id = st.Int(0);
  h.path = st.Text(1);
  h.sender = st.Text(2);
  h.message_id = st.Text(3);
  h.attempts = static_cast<int>(st.Int(4));
  h.next_ms = st.Int(5);
  return std::optional<HookRow>(std::move(h));
}

Status StateDb::HookDone(int64_t id, const std::string& state, int attempts, const std::string& last_error) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "UPDATE hooks SET state = ?, attempts = ?, last_error = ? WHERE id = ?");
  if (!st.ok()) return Error("recording a hook run");
  st.Bind(1, state).Bind(2, attempts).Bind(3, last_error).Bind(4, id);
  if (st.Step() != SQLITE_DONE) return Error("recording a hook run");
  return Status::Ok();
}

Status StateDb::HookRetry(int64_t id, int attempts, int64_t next_ms, const std::string& last_error) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "UPDATE hooks SET attempts = ?, next_ms = ?, last_error = ? WHERE id = ?");
  if (!st.ok()) return Error("recording a hook run");
  st.Bind(1, attempts).Bind(2, next_ms).Bind(3, last_error).Bind(4, id);
  if (st.Step() != SQLITE_DONE) return Error("recording a hook run");
  return Status::Ok();
}

Result<int64_t> StateDb::PendingHooks() {
  std::lock_guard lock(mu_);
  Stmt st(db_, "SELECT count(*) FROM hooks WHERE state = 'pending'");
  if (!st.ok() || st.Step() != SQLITE_ROW) return Error("counting hook runs");
  return st.Int(0);
}

}  // namespace liaison::agent
