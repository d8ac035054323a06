// The store's schema: the migrations that bring a database of any earlier
// version up to this one (Migrate, at Open), and the statements the applier
// writes it with.
#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include <iterator>
#include <string>

#include "broker/store/audit_chunks.h"
#include "broker/store/many_rows.h"
#include "broker/store/store_impl.h"

namespace liaison::broker {
namespace {

constexpr int kSchemaVersion = 10;

// One row; insert_messages is this for many rows (ManyRows).
constexpr const char* kInsertMessage =
    "INSERT INTO messages(row, sender, message_id, case_id, message_type, tlp, purpose, agreement, "
    "recipients, received_ms, expires_ms, want_reports, publish_digest, ack, body, recalled_ms, delivered) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";

// Migrations: index i brings the schema from version i to i + 1.
// A migration: its SQL, then (if any) a step in C++ for what SQL cannot
// do, in the same transaction.
struct Migration {
  const char* sql;
  Status (*then)(sqlite3* db) = nullptr;
};

const Migration kMigrations[] = {
    {R"sql(
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
)sql"},
    // 2: the durable queue.
    {R"sql(
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
)sql"},
    // 3: auditors' queries by agency (as sender or recipient) walk these in
    // seq order (broker/store/audit_reader.cpp), so a page costs its rows.
    {R"sql(
CREATE INDEX audit_sender_seq ON audit_log(sender) WHERE sender <> '';
CREATE INDEX audit_recipient_seq ON audit_log(recipient) WHERE recipient <> '';
)sql"},
    // 4: the (sender, time) and (recipient, time) indexes of schema 1 serve
    // no query that the (sender) and (recipient) seq indexes do not, and
    // every record paid for them.
    {R"sql(
DROP INDEX audit_sender_time;
DROP INDEX audit_recipient_time;
)sql"},
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
    {R"sql(
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
)sql"},
    // 6: a write-optimised audit log. Every record inserted into four
    // indexes (case id, message id, sender, recipient), two of them at
    // random places in B-trees that grow with the log: at 10,000,000
    // records those inserts were most of the writer's time, and slower
    // the larger the log. The log is now appended with no index at all;
    // the indexes live in a file derived from the log, kept by a background
    // thread up to a watermark (broker/store/audit_index.h), built from the
    // log at the first start of this version.
    {R"sql(
DROP INDEX IF EXISTS audit_case;
DROP INDEX IF EXISTS audit_message;
DROP INDEX IF EXISTS audit_sender_seq;
DROP INDEX IF EXISTS audit_recipient_seq;
)sql"},
    // 7: one index on message ids instead of two. UNIQUE(sender,
    // message_id) and the index on message_id each took an insert per
    // message, at a place of its own in the file (a commit of a few
    // messages rewrote about six pages of each); a unique index on
    // (message_id, sender) answers both lookups, and with time-ordered
    // (UUIDv7) ids its inserts go to its last page. The table is rebuilt to
    // lose the constraint's index; rows and row ids are copied unchanged.
    // (Runs with foreign keys off, which is why Open turns them on after
    // the migrations; the deliveries refer to the table by name.)
    {R"sql(
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
)sql"},
    // 8: the commit log's watermark (store_info 'log_applied': entries up to
    // it are in the database), committed with the rows it covers.
    {R"sql(
CREATE TABLE store_info(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
)sql"},
    // 9: a copy of a message acknowledged before its message reached the
    // database (most of them: the applier runs behind the commit log) is
    // no deliveries row, only its recipient in the message's `delivered`
    // (comma-separated agency ids). A row and an index entry per copy were
    // a third of the applier's work. Delivery ids stay unique without their
    // rows: store_info 'last_delivery_id'.
    {R"sql(
ALTER TABLE messages ADD COLUMN delivered TEXT NOT NULL DEFAULT '';
)sql"},
    // 10: the audit log in chunks of up to 16 records, a row each
    // (broker/store/audit_chunks.h): a row per record was a third of the
    // applier's work. `audit_log` becomes a virtual table over the chunks
    // that reads as the table did; the rows are copied into chunks by
    // audit_chunks::MigrateRows, leaves and hashes unchanged, so the
    // Merkle tree is the same.
    {"", audit_chunks::MigrateRows},
};

}  // namespace

Status Store::Impl::PrepareStatements() {
  struct {
    Stmt* stmt;
    const char* sql;
  } const statements[] = {
      {&insert_chunk, audit_chunks::kInsert},
      {&insert_checkpoint, "INSERT OR REPLACE INTO checkpoints(tree_size, time_ms, text) VALUES (?,?,?)"},
      {&set_info, "INSERT OR REPLACE INTO audit_info(key, value) VALUES (?, ?)"},
      {&set_store_info, "INSERT OR REPLACE INTO store_info(key, value) VALUES (?, ?)"},
      {&insert_message, kInsertMessage},
      {&insert_delivery,
       "INSERT INTO deliveries(id, recipient, message_row, kind, state, attempts, named, payload) "
       "VALUES (?,?,?,?,?,?,?,?)"},
      {&finish_delivery, "UPDATE deliveries SET state = ?, payload = NULL WHERE id = ? AND state = 0"},
      {&set_attempts, "UPDATE deliveries SET attempts = ? WHERE id = ?"},
      {&drop_body, "UPDATE messages SET body = NULL WHERE row = ? AND body IS NOT NULL"},
      {&mark_recalled, "UPDATE messages SET recalled_ms = ? WHERE row = ?"},
  };
  for (const auto& [stmt, sql] : statements) {
    if (Status s = stmt->Prepare(db, sql); !s.ok()) return s;
  }
  pending_records.reserve(audit_chunks::kMaxRecords);
  return insert_messages.Prepare(db, ManyRows(kInsertMessage, kMessageRowsPerInsert).c_str());
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
    const Migration& m = kMigrations[v];
    Status st = Exec(db, m.sql);
    if (st.ok() && m.then != nullptr) st = m.then(db);
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

}  // namespace liaison::broker
