// The store's audit log in chunks (broker/store/audit_chunks.h): the
// virtual table audit_log reads every record of a real store's chunks as a
// row of its own, under every kind of seq constraint and in both orders, and
// a malformed chunk is an error that names it, never a crash or a read past
// its bytes.
#include "broker/store/audit_chunks.h"

#include <sqlite3.h>

#include <catch2/catch.hpp>
#include <random>
#include <string>
#include <vector>

#include "broker/store/store.h"
#include "common/audit_record.h"
#include "common/merkle.h"
#include "tests/integration/test_support.h"
#include "tests/temp_dir.h"

using namespace liaison;
using liaison::test::QueryInt;
using liaison::test::StoreOptions;
using liaison::test::TempDir;

namespace {

audit::Record Numbered(int i) {
  audit::Record r;
  r.time_ms = 1764400000000 + i;
  r.event = i % 2 ? "queued" : "delivered";
  r.actor = "police";
  r.sender = "police";
  r.recipient = i % 3 ? "school" : "health";
  r.message_id = "0190a5c4-8d2e-7b3a-9c1d-" + std::to_string(100000000000 + i);
  r.case_id = "CASE-" + std::to_string(i % 7);
  r.decision = "permit";
  r.detail = std::string(static_cast<size_t>(i % 50), 'd');  // leaves of many sizes
  return r;
}

// A store of n records, appended in batches of 1, 2, 3, ... records (so
// that chunks end at many places), then closed.
std::string StoreWith(const TempDir& dir, int n) {
  auto store = broker::Store::Open(StoreOptions(dir));
  REQUIRE(store.ok());
  int next = 1;
  for (int batch = 1; next <= n; ++batch) {
    std::vector<audit::Record> records;
    for (int k = 0; k < batch && next <= n; ++k) records.push_back(Numbered(next++));
    REQUIRE((*store)->AppendSync(std::move(records)).ok());
  }
  return StoreOptions(dir).path;
}

// The rows a query returns, as text joined by ','; or "error: ..." .
std::string Rows(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  std::string out;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr) != SQLITE_OK) {
    out = std::string("error: ") + sqlite3_errmsg(db);
  } else {
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      const unsigned char* t = sqlite3_column_text(s, 0);
      out += (out.empty() ? "" : ",") + std::string(t ? reinterpret_cast<const char*>(t) : "NULL");
    }
    if (rc != SQLITE_DONE) out = std::string("error: ") + sqlite3_errmsg(db);
  }
  sqlite3_finalize(s);
  sqlite3_close(db);
  return out;
}

std::string Range(int from, int to, int step = 1) {
  std::string out;
  for (int i = from; step > 0 ? i <= to : i >= to; i += step) out += (out.empty() ? "" : ",") + std::to_string(i);
  return out;
}

void Exec(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  INFO(sql);
  CHECK(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(db);
}

}  // namespace

TEST_CASE("the store's audit_log reads each record of its chunks by seq in ranges and in both orders",
          "[audit][chunks]") {
  TempDir dir;
  const std::string path = StoreWith(dir, 100);
  // Stored in chunks, none larger than 16, and fewer rows than records.
  CHECK(QueryInt(path, "SELECT SUM(n) FROM audit_chunks") == 100);
  CHECK(QueryInt(path, "SELECT MAX(n) FROM audit_chunks") <= broker::audit_chunks::kMaxRecords);
  CHECK(QueryInt(path, "SELECT COUNT(*) FROM audit_chunks") < 100);

  CHECK(Rows(path, "SELECT COUNT(*) FROM audit_log") == "100");
  CHECK(Rows(path, "SELECT seq FROM audit_log") == Range(1, 100));
  CHECK(Rows(path, "SELECT seq FROM audit_log ORDER BY seq DESC") == Range(100, 1, -1));
  CHECK(Rows(path, "SELECT seq FROM audit_log ORDER BY seq DESC LIMIT 3") == "100,99,98");
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq > 14 AND seq <= 33") == Range(15, 33));
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq >= 16 AND seq < 18 ORDER BY seq DESC") == "17,16");
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq BETWEEN 1 AND 1") == "1");
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq = 100") == "100");
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE rowid = 5") == "5");
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq = 101 OR seq = 0 OR seq = -5").empty());
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq > 100").empty());
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq > 9223372036854775807").empty());
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq < -9223372036854775807").empty());
  // Values that are not whole numbers bound nothing wrongly: SQLite checks
  // the constraint again.
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq < 2.5") == "1,2");
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq > 98.5") == "99,100");
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq = 7.0") == "7");
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq = 7.5").empty());
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq = '7'") == "7");
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq > NULL").empty());
  CHECK(Rows(path, "SELECT seq FROM audit_log WHERE seq > 1e300").empty());
  CHECK(Rows(path, "SELECT COUNT(*) FROM audit_log WHERE seq < 1e300") == "100");
  // Nested cursors on one table.
  CHECK(Rows(path, "SELECT COUNT(*) FROM audit_log a JOIN audit_log b ON b.seq = a.seq + 1") == "99");

  // Every record's columns are its leaf's fields, its hash the leaf's.
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  REQUIRE(sqlite3_prepare_v2(db,
                             "SELECT seq, time_ms, event, actor, message_id, case_id, sender, recipient, decision, "
                             "leaf, leaf_hash FROM audit_log ORDER BY seq",
                             -1, &s, nullptr) == SQLITE_OK);
  int seen = 0;
  while (sqlite3_step(s) == SQLITE_ROW) {
    ++seen;
    const audit::Record want = Numbered(seen);
    auto text = [&](int i) { return std::string(reinterpret_cast<const char*>(sqlite3_column_text(s, i))); };
    CHECK(sqlite3_column_int64(s, 0) == seen);
    CHECK(sqlite3_column_int64(s, 1) == want.time_ms);
    CHECK(text(2) == want.event);
    CHECK(text(3) == want.actor);
    CHECK(text(4) == want.message_id);
    CHECK(text(5) == want.case_id);
    CHECK(text(6) == want.sender);
    CHECK(text(7) == want.recipient);
    CHECK(text(8) == want.decision);
    const std::string leaf(static_cast<const char*>(sqlite3_column_blob(s, 9)), sqlite3_column_bytes(s, 9));
    auto decoded = audit::DecodeLeaf(leaf);
    REQUIRE(decoded.ok());
    CHECK(decoded->detail == want.detail);
    const merkle::Hash h = merkle::LeafHash(leaf);
    REQUIRE(sqlite3_column_bytes(s, 10) == 32);
    CHECK(std::string(static_cast<const char*>(sqlite3_column_blob(s, 10)), 32) ==
          std::string(reinterpret_cast<const char*>(h.data()), 32));
  }
  sqlite3_finalize(s);
  sqlite3_close(db);
  CHECK(seen == 100);
  // Read only.
  CHECK(Rows(path, "SELECT 1 FROM audit_log WHERE seq = 1") == "1");
  {
    sqlite3* w = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &w) == SQLITE_OK);
    CHECK(sqlite3_exec(w, "DELETE FROM audit_log WHERE seq = 3", nullptr, nullptr, nullptr) != SQLITE_OK);
    CHECK(sqlite3_exec(w, "UPDATE audit_log SET sender = 'x' WHERE seq = 3", nullptr, nullptr, nullptr) != SQLITE_OK);
    sqlite3_close(w);
  }
  CHECK(Rows(path, "SELECT COUNT(*) FROM audit_log") == "100");
  // And the store opens again on it, with the same tree.
  auto store = broker::Store::Open(StoreOptions(dir));
  REQUIRE(store.ok());
  CHECK((*store)->latest().tree_size == 100);
}

TEST_CASE("a malformed audit chunk is an error naming its seq: queries fail and the store refuses to start",
          "[audit][chunks][tamper]") {
  struct Defect {
    const char* name;
    const char* sql;          // on the store's second chunk of two or more records
    bool store_refuses;       // at start (times and hashes are read there; leaves are not)
    const char* store_error;  // in the store's refusal
  };
  const Defect defect = GENERATE(
      Defect{"times cut short", "UPDATE audit_chunks SET times = substr(times, 1, 8) WHERE first_seq = %", true,
             "audit chunk at seq"},
      Defect{"a hash missing", "UPDATE audit_chunks SET hashes = substr(hashes, 33) WHERE first_seq = %", true,
             "audit chunk at seq"},
      Defect{"no records", "UPDATE audit_chunks SET n = 0 WHERE first_seq = %", true, "audit chunk at seq"},
      Defect{"too many records", "UPDATE audit_chunks SET n = 17 WHERE first_seq = %", true, "audit chunk at seq"},
      Defect{"leaves cut short", "UPDATE audit_chunks SET leaves = substr(leaves, 1, 10) WHERE first_seq = %", false,
             ""},
      Defect{"a leaf length past the end", "UPDATE audit_chunks SET leaves = X'FFFFFF7F' || leaves WHERE first_seq = %",
             false, ""},
      Defect{"bytes after the last leaf", "UPDATE audit_chunks SET leaves = leaves || X'00' WHERE first_seq = %", false,
             ""},
      Defect{"a chunk missing", "DELETE FROM audit_chunks WHERE first_seq = %", true, "gaps or overlap"},
      Defect{"a chunk moved", "UPDATE audit_chunks SET first_seq = first_seq + 1 WHERE first_seq = %", true,
             "gaps or overlap"});
  INFO(defect.name);
  TempDir dir;
  const std::string path = StoreWith(dir, 40);
  const int64_t second =
      QueryInt(path, "SELECT first_seq FROM audit_chunks WHERE first_seq > 1 AND n >= 2 ORDER BY first_seq LIMIT 1");
  REQUIRE(second > 1);
  std::string sql = defect.sql;
  sql.replace(sql.find('%'), 1, std::to_string(second));
  Exec(path, sql);

  const std::string rows = Rows(path, "SELECT seq, leaf, sender FROM audit_log");
  if (std::string(defect.name) == "a chunk missing" || std::string(defect.name) == "a chunk moved") {
    // Well-formed chunks: the table reads them; the start's check finds the hole.
    CHECK(rows.find("error") == std::string::npos);
  } else {
    CHECK(rows.find("error: audit chunk at seq " + std::to_string(second) + " is malformed") == 0);
  }
  auto store = broker::Store::Open(StoreOptions(dir));
  if (defect.store_refuses) {
    REQUIRE_FALSE(store.ok());
    CHECK(store.status().IsCorruption());
    CHECK(store.status().message().find(defect.store_error) != std::string::npos);
  } else {
    // The leaves are read by queries and exports, which report it.
    REQUIRE(store.ok());
    store->reset();
    CHECK_FALSE(broker::Store::ExportAudit(path, dir.File("export.db")).ok());
  }
}

TEST_CASE("pruning rewrites the chunks it reaches: pruned records' bytes leave the store and the rest stay",
          "[audit][chunks][retention]") {
  TempDir dir;
  const std::string path = StoreWith(dir, 0);
  {
    auto store = broker::Store::Open(StoreOptions(dir));
    REQUIRE(store.ok());
    for (int i = 1; i <= 100; i += 10) {  // ten commits of ten records: chunks end mid-way
      std::vector<audit::Record> records;
      for (int k = i; k < i + 10; ++k) {
        audit::Record r = Numbered(k);
        r.detail = "marker-" + std::to_string(1000 + k);
        records.push_back(std::move(r));
      }
      REQUIRE((*store)->AppendSync(std::move(records)).ok());
    }
    auto pruned = (*store)->PruneAuditSync(Numbered(38).time_ms, "chunk test");
    REQUIRE(pruned.ok());
    REQUIRE((*store)->Sync().ok());
  }
  // Records 1 to 37 are pruned (made before the cut-off), 38 on kept; the
  // audit_pruned record is 101.
  CHECK(Rows(path, "SELECT COUNT(*) FROM audit_log WHERE length(leaf) = 0 AND time_ms = 0 AND sender = ''") == "37");
  CHECK(Rows(path, "SELECT MIN(seq) FROM audit_log WHERE length(leaf) > 0") == "38");
  CHECK(Rows(path, "SELECT COUNT(*) FROM audit_log WHERE length(leaf_hash) = 32") == "101");
  const std::string bytes = liaison::test::StoreFileBytes(path);
  for (int k = 1; k <= 100; ++k) {
    INFO(k);
    CHECK((bytes.find("marker-" + std::to_string(1000 + k)) == std::string::npos) == (k < 38));
  }
  // The tree is the same: the store opens on it and goes on.
  auto store = broker::Store::Open(StoreOptions(dir));
  REQUIRE(store.ok());
  CHECK((*store)->latest().tree_size == 101);
}
