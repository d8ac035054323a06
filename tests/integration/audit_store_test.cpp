// The audit log in the store and its reader: record time monotonic in seq,
// time ranges found by binary search (also over logs written before that,
// whose time may run backwards a little), and the schema migration of a
// store written by an older broker.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <thread>

#include "broker/store/audit_index.h"
#include "broker/store/audit_indexer.h"
#include "broker/store/audit_reader.h"
#include "broker/store/store.h"
#include "client/audit_verify.h"
#include "common/files.h"
#include "common/merkle.h"
#include "tests/integration/test_support.h"
#include "tests/temp_dir.h"

using namespace liaison;
using liaison::test::AlterStoredRecord;
using liaison::test::QueryInt;
using liaison::test::StoreFileBytes;
using liaison::test::StoreOptions;
using liaison::test::TempDir;
using liaison::test::TruncateStoredAuditLog;

namespace {

const std::vector<std::string> kAgencies = {"police", "school", "social", "health"};

// Exports the store at db_path to out (which must succeed) and verifies the
// export with the store's public key against the saved checkpoints.
Status ExportAndVerify(const std::string& db_path, const std::string& out, const std::string& pem,
                       std::vector<audit::Checkpoint> saved, audit::VerifyReport* report) {
  REQUIRE(broker::Store::ExportAudit(db_path, out).ok());
  audit::VerifyOptions vo;
  vo.db_path = out;
  vo.public_key_pem = pem;
  vo.saved = std::move(saved);
  return audit::VerifyAuditLog(vo, report);
}

audit::Record Event(std::mt19937_64& rng, int64_t time_ms) {
  audit::Record r;
  r.time_ms = time_ms;
  r.event = rng() % 3 ? "queued" : "delivered";
  r.sender = kAgencies[rng() % kAgencies.size()];
  r.recipient = kAgencies[rng() % kAgencies.size()];
  r.actor = r.sender;
  r.cert_sha256 = std::string(64, 'c');
  r.message_id = "0190a5c4-8d2e-7b3a-9c1d-" + std::to_string(100000000000 + rng() % 1000);
  r.case_id = "CASE-" + std::to_string(rng() % 20);
  r.message_type = "incident_report";
  r.tlp = 3;
  r.purpose = "safeguarding";
  r.decision = r.event == "queued" ? "permit" : "delivered";
  r.rules = "rule-" + std::to_string(rng() % 5);
  r.policy_version = std::string(64, 'a');
  r.obligations = "redacted:incident_report.persons";
  r.body_hmac = std::string(64, 'b');
  r.detail = "agreement=core";
  return r;
}

// Every row of a query, page after page.
std::vector<broker::AuditRow> All(broker::AuditReader& reader, broker::AuditPageRequest q) {
  q.scope = kAgencies;
  std::vector<broker::AuditRow> rows;
  for (;;) {
    auto page = reader.QueryPageSync(q);
    INFO(page.status().ToString());
    REQUIRE(page.ok());
    rows.insert(rows.end(), page->rows.begin(), page->rows.end());
    if (!page->more) break;
    q.after_seq = page->rows.back().record.seq;
  }
  return rows;
}

// Random time ranges (and agencies), each answered by the reader exactly as
// a filter over every record says.
void CheckTimeQueries(broker::AuditReader& reader, const std::vector<audit::Record>& log, uint32_t page_size) {
  REQUIRE(!log.empty());
  std::mt19937_64 rng(11);
  const int64_t first = log.front().time_ms - 50, span = log.back().time_ms - first + 100;
  for (int i = 0; i < 60; ++i) {
    broker::AuditPageRequest q;
    q.limit = page_size;
    const int64_t a = first + static_cast<int64_t>(rng() % static_cast<uint64_t>(span));
    const int64_t b = a + 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(span / 4));
    if (i % 4 != 1) q.filter.from_ms = a;
    if (i % 4 != 2) q.filter.to_ms = b;
    if (i % 3 == 0) q.filter.agency = kAgencies[rng() % kAgencies.size()];
    std::vector<uint64_t> expected, got;
    for (const auto& r : log) {
      if (q.filter.from_ms && r.time_ms < q.filter.from_ms) continue;
      if (q.filter.to_ms && r.time_ms >= q.filter.to_ms) continue;
      if (!q.filter.agency.empty() && r.sender != q.filter.agency && r.recipient != q.filter.agency) continue;
      expected.push_back(r.seq);
    }
    for (const auto& row : All(reader, q)) got.push_back(row.record.seq);
    INFO("from " << q.filter.from_ms << " to " << q.filter.to_ms << " agency " << q.filter.agency);
    CHECK(got == expected);
  }
}

// The schema of a store as brokers before schema 5 left it (migrations 1 to
// 4, as shipped): every field a column, and again in the leaf.
constexpr const char* kSchema4 = R"sql(
CREATE TABLE audit_log(
  seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, event TEXT NOT NULL, actor TEXT NOT NULL,
  cert_sha256 TEXT NOT NULL, message_id TEXT NOT NULL, case_id TEXT NOT NULL, sender TEXT NOT NULL,
  recipient TEXT NOT NULL, message_type TEXT NOT NULL, tlp INTEGER NOT NULL, purpose TEXT NOT NULL,
  decision TEXT NOT NULL, rules TEXT NOT NULL, policy_version TEXT NOT NULL, obligations TEXT NOT NULL,
  body_hmac TEXT NOT NULL, detail TEXT NOT NULL, leaf BLOB NOT NULL, leaf_hash BLOB NOT NULL);
CREATE INDEX audit_case ON audit_log(case_id, seq) WHERE case_id <> '';
CREATE INDEX audit_message ON audit_log(message_id) WHERE message_id <> '';
CREATE INDEX audit_time ON audit_log(time_ms);
CREATE TABLE checkpoints(tree_size INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, text TEXT NOT NULL);
CREATE TABLE messages(
  row INTEGER PRIMARY KEY, sender TEXT NOT NULL, message_id TEXT NOT NULL, case_id TEXT NOT NULL,
  message_type TEXT NOT NULL, tlp INTEGER NOT NULL, purpose TEXT NOT NULL, agreement TEXT NOT NULL,
  recipients TEXT NOT NULL, received_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
  want_reports INTEGER NOT NULL, publish_digest BLOB NOT NULL, ack BLOB NOT NULL, body BLOB,
  recalled_ms INTEGER NOT NULL DEFAULT 0, UNIQUE(sender, message_id));
CREATE TABLE deliveries(
  id INTEGER PRIMARY KEY, recipient TEXT NOT NULL, message_row INTEGER NOT NULL REFERENCES messages(row),
  kind INTEGER NOT NULL, state INTEGER NOT NULL, attempts INTEGER NOT NULL, named INTEGER NOT NULL, payload BLOB);
CREATE INDEX deliveries_pending ON deliveries(id) WHERE state = 0;
CREATE INDEX deliveries_message ON deliveries(message_row, recipient);
CREATE INDEX messages_message_id ON messages(message_id);
CREATE INDEX audit_sender_seq ON audit_log(sender) WHERE sender <> '';
CREATE INDEX audit_recipient_seq ON audit_log(recipient) WHERE recipient <> '';
PRAGMA user_version = 4;
)sql";

// Writes records into a new schema-4 store at path, as an older broker
// would have (its signing key made beside it); returns them with their seq.
std::vector<audit::Record> WriteSchema4Store(const TempDir& dir, std::vector<audit::Record> records) {
  const auto o = StoreOptions(dir);
  std::filesystem::create_directories(dir.File("data"));
  REQUIRE(audit::Signer::LoadOrCreate(o.signing_key).ok());
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(o.path.c_str(), &db) == SQLITE_OK);
  REQUIRE(sqlite3_exec(db, "PRAGMA journal_mode = WAL", nullptr, nullptr, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_exec(db, kSchema4, nullptr, nullptr, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "INSERT INTO audit_log VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", -1, &s,
                             nullptr) == SQLITE_OK);
  uint64_t seq = 0;
  for (auto& r : records) {
    r.seq = ++seq;
    const std::string leaf = audit::EncodeLeaf(r);
    const merkle::Hash h = merkle::LeafHash(leaf);
    sqlite3_bind_int64(s, 1, static_cast<int64_t>(r.seq));
    sqlite3_bind_int64(s, 2, r.time_ms);
    int i = 3;
    for (const std::string* f : {&r.event, &r.actor, &r.cert_sha256, &r.message_id, &r.case_id, &r.sender,
                                 &r.recipient, &r.message_type}) {
      sqlite3_bind_text(s, i++, f->c_str(), -1, SQLITE_TRANSIENT);
    }
    sqlite3_bind_int(s, i++, r.tlp);
    for (const std::string* f : {&r.purpose, &r.decision, &r.rules, &r.policy_version, &r.obligations, &r.body_hmac,
                                 &r.detail}) {
      sqlite3_bind_text(s, i++, f->c_str(), -1, SQLITE_TRANSIENT);
    }
    sqlite3_bind_blob(s, i++, leaf.data(), static_cast<int>(leaf.size()), SQLITE_TRANSIENT);
    sqlite3_bind_blob(s, i++, h.data(), 32, SQLITE_TRANSIENT);
    REQUIRE(sqlite3_step(s) == SQLITE_DONE);
    sqlite3_reset(s);
  }
  sqlite3_finalize(s);
  REQUIRE(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(db);
  return records;
}

merkle::Hash RootOf(const std::vector<audit::Record>& log) {
  std::vector<merkle::Hash> leaves;
  for (const auto& r : log) leaves.push_back(merkle::LeafHash(audit::EncodeLeaf(r)));
  return merkle::RootOf(leaves);
}

}  // namespace

TEST_CASE("record time never runs backwards in seq order, also across a restart", "[audit][time]") {
  TempDir dir;
  std::mt19937_64 rng(3);
  std::vector<int64_t> given;
  {
    auto store = broker::Store::Open(StoreOptions(dir));
    REQUIRE(store.ok());
    for (int i = 0; i < 300; ++i) {
      // Mostly forward, sometimes a second back (records made on other
      // threads, a clock stepped back).
      const int64_t t = 1764400000000 + i * 10 - (i % 7 == 3 ? 1000 : 0);
      given.push_back(t);
      REQUIRE((*store)->AppendSync({Event(rng, t)}).ok());
    }
  }
  {
    auto store = broker::Store::Open(StoreOptions(dir));
    REQUIRE(store.ok());
    given.push_back(1);  // a clock far behind, after a restart
    REQUIRE((*store)->AppendSync({Event(rng, 1)}).ok());
  }
  auto reader = broker::AuditReader::Open(StoreOptions(dir).path, 1);
  REQUIRE(reader.ok());
  const auto rows = All(**reader, broker::AuditPageRequest{});
  REQUIRE(rows.size() == given.size());
  int64_t running = 0;
  std::vector<audit::Record> log;
  for (size_t i = 0; i < rows.size(); ++i) {
    running = std::max(running, given[i]);
    CHECK(rows[i].record.time_ms == running);
    log.push_back(rows[i].record);
  }
  CheckTimeQueries(**reader, log, 7);
  CheckTimeQueries(**reader, log, 1000);
}

TEST_CASE("time ranges are exact on a log written before schema 5, whose time runs back a little", "[audit][time]") {
  TempDir dir;
  std::mt19937_64 rng(5);
  std::vector<audit::Record> records;
  for (int i = 0; i < 2000; ++i) {
    // Stamped when made, committed in another order: up to 3 s back.
    records.push_back(Event(rng, 1764400000000 + i * 100 - static_cast<int64_t>(rng() % 3000)));
  }
  records = WriteSchema4Store(dir, std::move(records));
  {
    auto store = broker::Store::Open(StoreOptions(dir));
    INFO(store.status().ToString());
    REQUIRE(store.ok());
    CHECK((*store)->latest().tree_size == records.size());
    CHECK((*store)->latest().root == RootOf(records));
  }
  auto reader = broker::AuditReader::Open(StoreOptions(dir).path, 1);
  REQUIRE(reader.ok());
  CheckTimeQueries(**reader, records, 13);
  CheckTimeQueries(**reader, records, 1000);
}

TEST_CASE("migration 5 narrows a store written by an older broker: same tree, same export, every query", "[audit][migration]") {
  TempDir dir;
  std::mt19937_64 rng(9);
  std::vector<audit::Record> records;
  for (int i = 0; i < 500; ++i) records.push_back(Event(rng, 1764400000000 + i * 1000));
  records = WriteSchema4Store(dir, std::move(records));
  const std::string db_path = StoreOptions(dir).path;
  std::string pem;
  audit::Checkpoint migrated;
  {
    auto store = broker::Store::Open(StoreOptions(dir));
    INFO(store.status().ToString());
    REQUIRE(store.ok());
    migrated = (*store)->latest();
    pem = (*store)->public_key_pem();
  }
  CHECK(migrated.tree_size == records.size());
  CHECK(migrated.root == RootOf(records));

  // The fields that are not filtered on are no longer columns.
  std::vector<std::string> columns;
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(db, "SELECT name FROM pragma_table_info('audit_log') ORDER BY cid", -1, &s, nullptr);
    while (sqlite3_step(s) == SQLITE_ROW) columns.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(s, 0)));
    sqlite3_finalize(s);
    sqlite3_close(db);
  }
  CHECK(columns == std::vector<std::string>{"seq", "time_ms", "event", "actor", "message_id", "case_id", "sender",
                                            "recipient", "decision", "leaf", "leaf_hash"});

  // The export has every field as a column, as before (and no leaf bytes), and verifies.
  const std::string out = dir.File("export.db");
  audit::VerifyReport report;
  Status v = ExportAndVerify(db_path, out, pem, {migrated}, &report);
  INFO(v.ToString());
  CHECK(v.ok());
  CHECK(report.records == records.size());
  CHECK(report.hash_only == 0);
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open_v2(out.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(db, "SELECT sql FROM sqlite_master WHERE name = 'audit_log'", -1, &s, nullptr);
    REQUIRE(sqlite3_step(s) == SQLITE_ROW);
    // The shape exports always had (CREATE TABLE AS SELECT of the old
    // table), without the leaf bytes: every field once.
    CHECK(std::string(reinterpret_cast<const char*>(sqlite3_column_text(s, 0))) ==
          "CREATE TABLE audit_log(seq INT,time_ms INT,event TEXT,actor TEXT,cert_sha256 TEXT,message_id TEXT,"
          "case_id TEXT,sender TEXT,recipient TEXT,message_type TEXT,tlp INT,purpose TEXT,decision TEXT,rules TEXT,"
          "policy_version TEXT,obligations TEXT,body_hmac TEXT,detail TEXT,leaf_hash)");
    sqlite3_finalize(s);
    sqlite3_prepare_v2(db, "SELECT seq, cert_sha256, message_type, tlp, purpose, rules, policy_version, obligations, "
                           "body_hmac, detail FROM audit_log ORDER BY seq", -1, &s, nullptr);
    size_t n = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
      const audit::Record& r = records.at(n++);
      auto text = [&](int i) { return std::string(reinterpret_cast<const char*>(sqlite3_column_text(s, i))); };
      CHECK(static_cast<uint64_t>(sqlite3_column_int64(s, 0)) == r.seq);
      CHECK(text(1) == r.cert_sha256);
      CHECK(text(2) == r.message_type);
      CHECK(sqlite3_column_int(s, 3) == r.tlp);
      CHECK(text(4) == r.purpose);
      CHECK(text(5) == r.rules);
      CHECK(text(6) == r.policy_version);
      CHECK(text(7) == r.obligations);
      CHECK(text(8) == r.body_hmac);
      CHECK(text(9) == r.detail);
    }
    CHECK(n == records.size());
    sqlite3_finalize(s);
    sqlite3_close(db);
  }

  // Every filter of the auditors' query still filters, and rows carry
  // every field (decoded from the leaf).
  auto reader = broker::AuditReader::Open(db_path, 1);
  REQUIRE(reader.ok());
  const auto all = All(**reader, broker::AuditPageRequest{});
  REQUIRE(all.size() == records.size());
  for (size_t i = 0; i < all.size(); ++i) {
    CHECK(all[i].record == records[i]);
    CHECK(all[i].leaf_hash == merkle::LeafHash(audit::EncodeLeaf(records[i])));
  }
  struct Filter {
    const char* name;
    std::function<void(broker::AuditFilter&)> set;
    std::function<bool(const audit::Record&)> match;
  };
  const audit::Record& some = records[123];
  const std::vector<Filter> filters = {
      {"case", [&](auto& f) { f.case_id = some.case_id; }, [&](auto& r) { return r.case_id == some.case_id; }},
      {"message", [&](auto& f) { f.message_id = some.message_id; }, [&](auto& r) { return r.message_id == some.message_id; }},
      {"event", [](auto& f) { f.event = "delivered"; }, [](auto& r) { return r.event == "delivered"; }},
      {"decision", [](auto& f) { f.decision = "permit"; }, [](auto& r) { return r.decision == "permit"; }},
      {"agency", [](auto& f) { f.agency = "health"; }, [](auto& r) { return r.sender == "health" || r.recipient == "health"; }},
      {"agency and time", [&](auto& f) { f.agency = "school"; f.from_ms = records[100].time_ms; f.to_ms = records[300].time_ms; },
       [&](auto& r) { return (r.sender == "school" || r.recipient == "school") && r.time_ms >= records[100].time_ms &&
                             r.time_ms < records[300].time_ms; }},
  };
  for (const auto& f : filters) {
    INFO(f.name);
    broker::AuditPageRequest q;
    q.limit = 17;
    f.set(q.filter);
    std::vector<uint64_t> got, expected;
    for (const auto& row : All(**reader, q)) got.push_back(row.record.seq);
    for (const auto& r : records) {
      if (f.match(r)) expected.push_back(r.seq);
    }
    CHECK(!expected.empty());
    CHECK(got == expected);
  }
  // Scope: an auditor of police alone sees nothing of health -> school.
  broker::AuditPageRequest scoped;
  scoped.scope = {"police"};
  auto page = (*reader)->QueryPageSync(scoped);
  REQUIRE(page.ok());
  for (const auto& row : page->rows) {
    CHECK((row.record.sender == "police" || row.record.recipient == "police" || row.record.actor == "police"));
  }
}

TEST_CASE("a record's time altered in the store is found: the reader refuses the row, the export fails to verify",
          "[audit][tamper]") {
  TempDir dir;
  std::mt19937_64 rng(2);
  std::string pem;
  {
    auto store = broker::Store::Open(StoreOptions(dir));
    REQUIRE(store.ok());
    for (int i = 0; i < 20; ++i) REQUIRE((*store)->AppendSync({Event(rng, 1764400000000 + i)}).ok());
    pem = (*store)->public_key_pem();
  }
  const std::string db_path = StoreOptions(dir).path;
  // The time is kept beside the leaf (the reader's time ranges search it):
  // it must say what the leaf says.
  REQUIRE(AlterStoredRecord(db_path, 7, [](int64_t* time_ms, std::string*, std::string*) { *time_ms += 1; }));
  auto reader = broker::AuditReader::Open(db_path, 1);
  REQUIRE(reader.ok());
  broker::AuditPageRequest q;
  q.scope = kAgencies;
  auto page = (*reader)->QueryPageSync(q);
  REQUIRE_FALSE(page.ok());
  CHECK(page.status().message().find("record 7") != std::string::npos);
  audit::VerifyReport report;
  Status v = ExportAndVerify(db_path, dir.File("export.db"), pem, {}, &report);
  CHECK_FALSE(v.ok());
  CHECK(report.first_bad_seq == 7);
}

TEST_CASE("pruning keeps seq and leaf hash: exports verify, earlier proofs verify, queries skip pruned records",
          "[audit][retention]") {
  TempDir dir;
  std::mt19937_64 rng(4);
  const int64_t day = 86'400'000, base = 1764400000000;
  std::vector<audit::Record> old_records;
  audit::Checkpoint before;
  std::string pem;
  const std::string db_path = StoreOptions(dir).path;
  const std::string export_before = dir.File("before.db");
  {
    auto store = broker::Store::Open(StoreOptions(dir));
    REQUIRE(store.ok());
    for (int i = 0; i < 500; i += 10) {
      std::vector<audit::Record> batch;
      // 300 records of ten days ago, then 200 of today.
      for (int k = i; k < i + 10; ++k) batch.push_back(Event(rng, k < 300 ? base + k : base + 10 * day + k));
      if (i < 300) old_records.insert(old_records.end(), batch.begin(), batch.end());
      REQUIRE((*store)->AppendSync(std::move(batch)).ok());
    }
    before = (*store)->latest();
    pem = (*store)->public_key_pem();
  }
  REQUIRE(broker::Store::ExportAudit(db_path, export_before).ok());
  auto proof = audit::ProveInclusion(export_before, 42, before);  // a record about to be pruned
  REQUIRE(proof.ok());
  const std::string proof_text = audit::FormatInclusionProof(*proof);

  audit::Checkpoint after;
  {
    auto store = broker::Store::Open(StoreOptions(dir));
    REQUIRE(store.ok());
    auto pruned = (*store)->PruneAuditSync(base + 5 * day, "retention test");
    INFO(pruned.status().ToString());
    REQUIRE(pruned.ok());
    CHECK(pruned->first == 1);
    CHECK(pruned->last == 300);
    auto again = (*store)->PruneAuditSync(base + 5 * day, "retention test");
    REQUIRE(again.ok());
    CHECK(again->last == 0);  // nothing more, and no record of nothing
    after = (*store)->latest();
  }
  CHECK(after.tree_size == 501);  // the pruning was recorded

  // The pruned rows keep seq and leaf hash, and nothing else.
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(db,
                       "SELECT COUNT(*), SUM(length(leaf) > 0 OR time_ms <> 0 OR event <> '' OR actor <> '' OR "
                       "case_id <> '' OR message_id <> '' OR sender <> '' OR recipient <> '' OR decision <> ''), "
                       "SUM(length(leaf_hash) = 32) FROM audit_log WHERE seq <= 300",
                       -1, &s, nullptr);
    REQUIRE(sqlite3_step(s) == SQLITE_ROW);
    CHECK(sqlite3_column_int(s, 0) == 300);
    CHECK(sqlite3_column_int(s, 1) == 0);
    CHECK(sqlite3_column_int(s, 2) == 300);
    sqlite3_finalize(s);
    sqlite3_close(db);
  }

  // Queries never return a pruned record, whatever the filter.
  auto reader = broker::AuditReader::Open(db_path, 1);
  REQUIRE(reader.ok());
  const auto all = All(**reader, broker::AuditPageRequest{});
  REQUIRE(all.size() == 201);
  CHECK(all.front().record.seq == 301);
  CHECK(all.back().record.event == "audit_pruned");
  CHECK(all.back().record.detail.find("records 1 to 300 pruned") != std::string::npos);
  for (const auto& set : std::vector<std::function<void(broker::AuditFilter&)>>{
           [&](auto& f) { f.from_ms = base; f.to_ms = base + day; },
           [&](auto& f) { f.case_id = old_records[41].case_id; },
           [&](auto& f) { f.message_id = old_records[41].message_id; },
           [&](auto& f) { f.agency = old_records[41].sender; },
           [&](auto& f) { f.event = old_records[41].event; },
       }) {
    broker::AuditPageRequest q;
    set(q.filter);
    for (const auto& row : All(**reader, q)) CHECK(row.record.seq > 300);
  }
  // Over the wire (an auditor's export): pruned records are hashes only.
  broker::AuditPageRequest e;
  e.export_mode = true;
  e.until_seq = 501;
  e.limit = 1000;
  e.scope = kAgencies;
  auto page = (*reader)->QueryPageSync(e);
  REQUIRE(page.ok());
  REQUIRE(page->rows.size() == 501);
  for (const auto& row : page->rows) CHECK(row.hash_only == (row.record.seq <= 300));
  // The log still proves that it extends the one of before.
  auto consistency = (*reader)->ConsistencyProofSync(before.tree_size, after.tree_size);
  REQUIRE(consistency.ok());
  CHECK(merkle::VerifyConsistency(before.tree_size, after.tree_size, before.root, after.root, *consistency));

  // An export after pruning verifies, against checkpoints from before and after.
  const std::string export_after = dir.File("after.db");
  audit::VerifyReport report;
  Status v = ExportAndVerify(db_path, export_after, pem, {before, after}, &report);
  INFO(v.ToString());
  CHECK(v.ok());
  CHECK(report.records == 501);
  CHECK(report.hash_only == 300);
  CHECK(report.root == after.root);
  // Nothing of a pruned record is left in it.
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open_v2(export_after.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
    sqlite3_stmt* s = nullptr;
    // (An export holds no leaf bytes at all: every field is a column.)
    REQUIRE(sqlite3_prepare_v2(db, "SELECT leaf FROM audit_log", -1, &s, nullptr) != SQLITE_OK);
    sqlite3_prepare_v2(db,
                       "SELECT COUNT(*) FROM audit_log WHERE hash_only = 1 AND seq <= 300 AND time_ms = 0 AND tlp = 0 "
                       "AND (event || actor || cert_sha256 || message_id || case_id || sender || recipient || "
                       "message_type || purpose || decision || rules || policy_version || obligations || body_hmac || "
                       "detail) = ''",
                       -1, &s, nullptr);
    REQUIRE(sqlite3_step(s) == SQLITE_ROW);
    CHECK(sqlite3_column_int(s, 0) == 300);
    sqlite3_finalize(s);
    sqlite3_close(db);
  }

  // The inclusion proof made before pruning still verifies; and a record
  // kept in full can still be proved from the new export.
  auto parsed = audit::ParseInclusionProof(proof_text);
  REQUIRE(parsed.ok());
  auto proved = audit::VerifyInclusionProof(*parsed, pem);
  REQUIRE(proved.ok());
  CHECK(proved->seq == 42);
  CHECK(proved->case_id == old_records[41].case_id);
  CHECK(proved->message_id == old_records[41].message_id);
  auto kept = audit::ProveInclusion(export_after, 400, after);
  REQUIRE(kept.ok());
  CHECK(audit::VerifyInclusionProof(*kept, pem).ok());
  // A pruned record cannot be proved any more: nothing of it is left.
  auto gone = audit::ProveInclusion(export_after, 42, after);
  CHECK(gone.status().IsInvalidArgument());
  CHECK(gone.status().message().find("record 42 is held by its leaf hash only") != std::string::npos);
}

TEST_CASE("a large prune goes in chunks, each one recorded", "[audit][retention]") {
  TempDir dir;
  std::mt19937_64 rng(8);
  const int64_t base = 1764400000000;
  auto store = broker::Store::Open(StoreOptions(dir));
  REQUIRE(store.ok());
  for (int i = 0; i < 45'000; i += 1000) {
    std::vector<audit::Record> batch;
    for (int k = i; k < i + 1000; ++k) batch.push_back(Event(rng, base + k));
    REQUIRE((*store)->AppendSync(std::move(batch)).ok());
  }
  auto pruned = (*store)->PruneAuditSync(base + 44'000, "");
  REQUIRE(pruned.ok());
  CHECK(pruned->first == 1);
  CHECK(pruned->last == 44'000);
  CHECK((*store)->latest().tree_size == 45'003);  // three chunks of at most 20,000
  REQUIRE((*store)->Sync().ok());  // the database the reader reads trails the commit log
  auto reader = broker::AuditReader::Open(StoreOptions(dir).path, 1);
  REQUIRE(reader.ok());
  broker::AuditPageRequest q;
  q.filter.event = "audit_pruned";
  const auto records = All(**reader, q);
  REQUIRE(records.size() == 3);
  CHECK(records[0].record.detail.find("records 1 to 20000 pruned") != std::string::npos);
  CHECK(records[1].record.detail.find("records 20001 to 40000 pruned") != std::string::npos);
  CHECK(records[2].record.detail.find("records 40001 to 44000 pruned") != std::string::npos);
}

// ---------------------------------------------------------------------------
// Schema 6: the audit log has no index; queries by case, message and agency
// go through the derived index (broker/store/audit_index.h) up to its
// watermark and scan the records above it.

namespace {

bool Matches(const audit::Record& r, const broker::AuditFilter& f) {
  if (f.from_ms && r.time_ms < f.from_ms) return false;
  if (f.to_ms && r.time_ms >= f.to_ms) return false;
  if (!f.agency.empty() && r.sender != f.agency && r.recipient != f.agency) return false;
  if (!f.case_id.empty() && r.case_id != f.case_id) return false;
  if (!f.message_id.empty() && r.message_id != f.message_id) return false;
  if (!f.event.empty() && r.event != f.event) return false;
  if (!f.decision.empty() && r.decision != f.decision) return false;
  return true;
}

// Records with a few rare values (a case every 9,973 records, one around
// the first bucket boundary at 65,536), so that lookups cross buckets with
// few matches.
std::vector<audit::Record> IndexTestRecords(std::mt19937_64& rng, uint64_t first_seq, size_t n) {
  std::vector<audit::Record> out;
  for (size_t i = 0; i < n; ++i) {
    const uint64_t seq = first_seq + i;
    audit::Record r = Event(rng, 1764400000000 + static_cast<int64_t>(seq) * 10);
    if (seq % 9973 == 0) r.case_id = "RARE";
    if (seq > 65530 && seq < 65545) r.case_id = "EDGE";
    if (seq % 5000 == 17) r.recipient = "rare-agency";
    if (seq % 11 == 0) r.case_id.clear();
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<audit::Record> AppendAll(broker::Store& store, std::vector<audit::Record> records) {
  std::vector<audit::Record> out;
  for (size_t i = 0; i < records.size(); i += 1000) {
    std::vector<audit::Record> batch(records.begin() + static_cast<long>(i),
                                     records.begin() + static_cast<long>(std::min(records.size(), i + 1000)));
    const uint64_t first = store.latest().tree_size + 1;
    REQUIRE(store.AppendSync(batch).ok());
    for (size_t k = 0; k < batch.size(); ++k) {
      batch[k].seq = first + k;
      out.push_back(std::move(batch[k]));
    }
  }
  return out;
}

// Every filter that the index serves (and combinations with the ones it
// does not), at several page sizes, against a filter over every record.
void CheckIndexedQueries(broker::AuditReader& reader, const std::vector<audit::Record>& log) {
  REQUIRE(!log.empty());
  const int64_t t_mid = log[log.size() / 2].time_ms, t_end = log.back().time_ms;
  std::vector<broker::AuditFilter> filters;
  auto add = [&](std::function<void(broker::AuditFilter&)> set) {
    broker::AuditFilter f;
    set(f);
    filters.push_back(f);
  };
  add([](auto& f) { f.case_id = "RARE"; });
  add([](auto& f) { f.case_id = "EDGE"; });
  add([](auto& f) { f.case_id = "CASE-3"; });
  add([](auto& f) { f.case_id = "no-such-case"; });
  add([&](auto& f) { f.case_id = "CASE-7"; f.event = "delivered"; f.from_ms = t_mid; });
  add([&](auto& f) { f.message_id = log[5].message_id; });
  add([&](auto& f) { f.message_id = log.back().message_id; f.case_id = log.back().case_id; });
  add([](auto& f) { f.agency = "rare-agency"; });
  add([](auto& f) { f.agency = "health"; });
  add([&](auto& f) { f.agency = "school"; f.from_ms = t_mid - 30'000; f.to_ms = t_mid + 20'000; });
  add([&](auto& f) { f.agency = "police"; f.decision = "permit"; f.to_ms = t_end - 1000; });
  add([&](auto& f) { f.agency = "social"; f.case_id = "CASE-1"; });
  for (const auto& f : filters) {
    std::vector<uint64_t> expected;
    for (const auto& r : log) {
      if (Matches(r, f)) expected.push_back(r.seq);
    }
    for (uint32_t page : {1u, 7u, 100u, 1000u}) {
      // Small pages through large results would repeat the same scans of the
      // unindexed tail thousands of times (minutes under the sanitizers):
      // the small result sets page across the watermark and the buckets.
      if ((page == 1 && expected.size() > 200) || (page == 7 && expected.size() > 400)) continue;
      broker::AuditPageRequest q;
      q.filter = f;
      q.limit = page;
      const auto rows = All(reader, q);
      std::vector<uint64_t> got;
      for (const auto& row : rows) {
        got.push_back(row.record.seq);
        CHECK(row.record == log.at(row.record.seq - 1));
      }
      INFO("case " << f.case_id << " message " << f.message_id << " agency " << f.agency << " event " << f.event
                   << " from " << f.from_ms << " to " << f.to_ms << " page " << page);
      CHECK(got == expected);
    }
  }
  // Scope still applies to rows found through the index, and paging with
  // it stays gapless (records out of scope neither show nor count).
  for (const auto& f : filters) {
    std::vector<uint64_t> expected;
    for (const auto& r : log) {
      const bool in_scope = r.sender == "police" || r.recipient == "police" || r.actor == "police";
      if (in_scope && Matches(r, f)) expected.push_back(r.seq);
    }
    for (uint32_t page_size : {1u, 7u, 1000u}) {
      if ((page_size == 1 && expected.size() > 200) || (page_size == 7 && expected.size() > 400)) continue;
      broker::AuditPageRequest q;
      q.filter = f;
      q.limit = page_size;
      q.scope = {"police"};
      std::vector<uint64_t> got;
      for (bool promised = false;;) {
        auto page = reader.QueryPageSync(q);
        REQUIRE(page.ok());
        CHECK((!promised || !page->rows.empty()));  // "more" was true: there were more
        for (const auto& row : page->rows) got.push_back(row.record.seq);
        promised = page->more;
        if (!page->more) break;
        REQUIRE(!page->rows.empty());
        q.after_seq = page->rows.back().record.seq;
      }
      INFO("scoped: case " << f.case_id << " message " << f.message_id << " agency " << f.agency << " page "
                           << page_size);
      CHECK(got == expected);
    }
  }
  broker::AuditPageRequest q;
  q.filter.agency = "rare-agency";
  q.scope = {"police"};
  q.limit = 1000;
  auto page = reader.QueryPageSync(q);
  REQUIRE(page.ok());
  for (const auto& row : page->rows) {
    CHECK((row.record.sender == "police" || row.record.recipient == "police" || row.record.actor == "police"));
  }
}

bool WaitForIndex(broker::Store& store, uint64_t through) {
  for (int i = 0; i < 600 && store.audit_indexed_through() < through; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return store.audit_indexed_through() == through;
}

uint64_t UserVersion(const std::string& path) { return static_cast<uint64_t>(QueryInt(path, "PRAGMA user_version")); }

// word -> bits of records of log that has(): what the audit index should
// hold for a value.
std::map<int64_t, uint64_t> WordsOf(const std::vector<audit::Record>& log,
                                    const std::function<bool(const audit::Record&)>& has) {
  std::map<int64_t, uint64_t> words;
  for (const auto& r : log) {
    if (has(r)) words[static_cast<int64_t>(r.seq >> 6)] |= 1ull << (r.seq & 63);
  }
  return words;
}

// word -> bits of the audit index's rows for key, read from the index file.
std::map<int64_t, uint64_t> IndexRows(const std::string& index_path, int64_t key) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(index_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "SELECT word, bits FROM ix2 WHERE k = ?", -1, &s, nullptr) == SQLITE_OK);
  sqlite3_bind_int64(s, 1, key);
  std::map<int64_t, uint64_t> rows;
  while (sqlite3_step(s) == SQLITE_ROW) {
    CHECK(rows.count(sqlite3_column_int64(s, 0)) == 0);
    rows[sqlite3_column_int64(s, 0)] = static_cast<uint64_t>(sqlite3_column_int64(s, 1));
  }
  sqlite3_finalize(s);
  sqlite3_close(db);
  return rows;
}

}  // namespace

TEST_CASE("queries are exact across the audit index's watermark and its buckets", "[audit][index]") {
  TempDir dir;
  std::mt19937_64 rng(21);
  std::vector<audit::Record> log;
  {
    auto store = broker::Store::Open(StoreOptions(dir));
    REQUIRE(store.ok());
    log = AppendAll(**store, IndexTestRecords(rng, 1, 40'000));
  }  // an orderly stop leaves the index complete
  auto o = StoreOptions(dir);
  o.pause_audit_index = true;
  {
    auto store = broker::Store::Open(o);
    REQUIRE(store.ok());
    CHECK((*store)->audit_indexed_through() == 40'000);
    // Across the first bucket boundary (65,536), none of it indexed.
    auto more = AppendAll(**store, IndexTestRecords(rng, 40'001, 30'000));
    log.insert(log.end(), more.begin(), more.end());
    CHECK((*store)->audit_indexed_through() == 40'000);
    REQUIRE((*store)->Sync().ok());  // the database the reader reads trails the commit log
    auto reader = broker::AuditReader::Open(o.path, 1);
    REQUIRE(reader.ok());
    CheckIndexedQueries(**reader, log);  // 40,000 through the index, 30,000 scanned
  }
  // The index catches up at the next start; the same reader (attached to
  // it) sees the watermark move.
  auto reader = broker::AuditReader::Open(o.path, 1);
  REQUIRE(reader.ok());
  {
    auto store = broker::Store::Open(StoreOptions(dir));
    REQUIRE(store.ok());
    REQUIRE(WaitForIndex(**store, 70'000));
    CheckIndexedQueries(**reader, log);
    // New records go through the index as they are committed.
    auto more = AppendAll(**store, IndexTestRecords(rng, 70'001, 2'000));
    log.insert(log.end(), more.begin(), more.end());
    REQUIRE((*store)->Sync().ok());  // the database the reader reads trails the commit log
    CheckIndexedQueries(**reader, log);
    REQUIRE(WaitForIndex(**store, 72'000));
    CheckIndexedQueries(**reader, log);
  }
}

TEST_CASE("an audit index that does not match the log is rebuilt: damaged, or of a truncated log", "[audit][index]") {
  TempDir dir;
  std::mt19937_64 rng(22);
  const auto o = StoreOptions(dir);
  std::vector<audit::Record> log;
  {
    auto store = broker::Store::Open(o);
    REQUIRE(store.ok());
    log = AppendAll(**store, IndexTestRecords(rng, 1, 3'000));
  }
  // Garbage in place of the index file.
  const std::string index_path = o.path + "-audit-index";
  REQUIRE(std::filesystem::exists(index_path));
  dir.Write("data/liaison.db-audit-index", std::string(10000, 'x'));
  {
    auto store = broker::Store::Open(o);
    INFO(store.status().ToString());
    REQUIRE(store.ok());
    REQUIRE(WaitForIndex(**store, 3'000));
  }
  {
    auto reader = broker::AuditReader::Open(o.path, 1);
    REQUIRE(reader.ok());
    CheckIndexedQueries(**reader, log);
  }
  // The log loses its newest records (a restore from an older backup) and
  // grows again with other ones: the index of the old records must not
  // answer for the new ones.
  REQUIRE(TruncateStoredAuditLog(o.path, 2000));
  log.resize(2000);
  std::mt19937_64 other(99);
  {
    auto store = broker::Store::Open(o);
    REQUIRE(store.ok());
    auto more = AppendAll(**store, IndexTestRecords(other, 2'001, 1'500));
    log.insert(log.end(), more.begin(), more.end());
    REQUIRE(WaitForIndex(**store, 3'500));
  }
  // The rebuild kept the file's format: the next start keeps the index.
  CHECK(QueryInt(index_path, "SELECT value FROM ix2_meta WHERE key = 'format'") == broker::audit_index::kFormat);
  CHECK(QueryInt(index_path, "SELECT value FROM ix2_meta WHERE key = 'indexed_through'") == 3'500);
  auto reader = broker::AuditReader::Open(o.path, 1);
  REQUIRE(reader.ok());
  CheckIndexedQueries(**reader, log);
}

TEST_CASE("the audit index holds one row per 64 records and value and rebuilds an index of format 1", "[audit][index]") {
  TempDir dir;
  std::mt19937_64 rng(23);
  const auto o = StoreOptions(dir);
  const std::string index_path = broker::audit_index::PathFor(o.path);
  std::vector<audit::Record> log;
  {
    auto store = broker::Store::Open(o);
    REQUIRE(store.ok());
    // Indexed in (at least) two chunks, the first ending inside a word
    // (1,000 = 15 * 64 + 40): that word's rows must gain the second
    // chunk's bits, not lose the first's.
    log = AppendAll(**store, IndexTestRecords(rng, 1, 1'000));
    REQUIRE(WaitForIndex(**store, 1'000));
    auto more = AppendAll(**store, IndexTestRecords(rng, 1'001, 4'000));
    log.insert(log.end(), more.begin(), more.end());
    REQUIRE(WaitForIndex(**store, 5'000));
  }
  // Each value's rows are exactly the words of its records, with their bits.
  using broker::audit_index::Field;
  auto check_rows = [&](Field field, const std::string& value, std::function<bool(const audit::Record&)> has) {
    const auto expected = WordsOf(log, has);
    INFO(value);
    CHECK(!expected.empty());
    CHECK(IndexRows(index_path, broker::audit_index::Key(field, value)) == expected);
  };
  for (const std::string agency : {"police", "health", "rare-agency"}) {
    check_rows(Field::kAgency, agency, [&](const auto& r) { return r.sender == agency || r.recipient == agency; });
  }
  const std::string message = log[1'010].message_id;
  check_rows(Field::kMessage, message, [&](const auto& r) { return r.message_id == message; });
  for (const std::string case_id : {"CASE-3", "CASE-7"}) {
    check_rows(Field::kCase, case_id, [&](const auto& r) { return r.case_id == case_id; });
  }
  // An agency in most records costs a row per 64 of them.
  const auto police = IndexRows(index_path, broker::audit_index::Key(Field::kAgency, "police"));
  CHECK(police.size() <= 5'000 / 64 + 1);
  // Queries find the records through these rows: with police's bits cleared
  // (and every record indexed), a query by police finds none.
  {
    broker::AuditPageRequest q;
    q.filter.agency = "police";
    q.limit = 1000;
    auto reader = broker::AuditReader::Open(o.path, 1);
    REQUIRE(reader.ok());
    CHECK(All(**reader, q).size() > 1000);
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(index_path.c_str(), &db) == SQLITE_OK);
    const std::string clear =
        "UPDATE ix2 SET bits = 0 WHERE k = " + std::to_string(broker::audit_index::Key(Field::kAgency, "police"));
    REQUIRE(sqlite3_exec(db, clear.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
    CHECK(All(**reader, q).empty());
  }

  // An index of format 1 (a row per record and value, in table ix), as the
  // brokers before this one left it: a reader does not use it (it scans),
  // and the store rebuilds it in this format.
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(index_path + suffix);
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(index_path.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db,
                         "CREATE TABLE ix_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
                         "CREATE TABLE ix(bucket INTEGER NOT NULL, k INTEGER NOT NULL, seq INTEGER NOT NULL,"
                         " PRIMARY KEY(bucket, k, seq)) WITHOUT ROWID;"
                         "INSERT INTO ix_meta VALUES ('indexed_through', 5000);"
                         "INSERT INTO ix VALUES (0, 1, 1);",
                         nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  {
    auto reader = broker::AuditReader::Open(o.path, 1);
    REQUIRE(reader.ok());
    CheckIndexedQueries(**reader, log);
  }
  {
    auto store = broker::Store::Open(o);
    REQUIRE(store.ok());
    REQUIRE(WaitForIndex(**store, 5'000));
  }
  CHECK(IndexRows(index_path, broker::audit_index::Key(Field::kAgency, "police")) == police);
  CHECK(QueryInt(index_path, "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('ix', 'ix_meta')") == 0);
  CHECK(QueryInt(index_path, "SELECT value FROM ix2_meta WHERE key = 'format'") == broker::audit_index::kFormat);
  auto reader = broker::AuditReader::Open(o.path, 1);
  REQUIRE(reader.ok());
  CheckIndexedQueries(**reader, log);
}

TEST_CASE("the audit indexer takes handed runs only from its watermark on and reads the others from the log",
          "[audit][index]") {
  TempDir dir;
  std::mt19937_64 rng(24);
  auto o = StoreOptions(dir);
  o.pause_audit_index = true;
  std::vector<audit::Record> log;
  {
    auto store = broker::Store::Open(o);
    REQUIRE(store.ok());
    log = AppendAll(**store, IndexTestRecords(rng, 1, 3'000));
  }  // in the database, not indexed
  const std::string index_path = broker::audit_index::PathFor(o.path);
  REQUIRE(QueryInt(index_path, "SELECT COUNT(*) FROM ix2") == 0);
  auto leaf_hash = [&](uint64_t seq) {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open_v2(o.path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
    sqlite3_stmt* q = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, "SELECT leaf_hash FROM audit_log WHERE seq = ?", -1, &q, nullptr) == SQLITE_OK);
    sqlite3_bind_int64(q, 1, static_cast<int64_t>(seq));
    REQUIRE(sqlite3_step(q) == SQLITE_ROW);
    std::string h(static_cast<const char*>(sqlite3_column_blob(q, 0)), sqlite3_column_bytes(q, 0));
    sqlite3_finalize(q);
    sqlite3_close(db);
    return h;
  };
  using broker::audit_index::Field;
  // The entries of records first..last as the applier makes them, and one
  // more for marked (a value no record has), to tell a run that was used.
  auto run = [&](uint64_t first, uint64_t last, const std::string& marker, uint64_t marked) {
    std::vector<broker::audit_index::Entry> entries;
    for (uint64_t seq = first; seq <= last; ++seq) {
      const audit::Record& r = log.at(seq - 1);
      broker::audit_index::AddEntries(&entries, seq, r.message_id, r.case_id, r.sender, r.recipient);
      if (seq == marked) broker::audit_index::AddEntries(&entries, seq, "", "", marker, "");
    }
    return entries;
  };
  auto indexer = broker::AuditIndexer::Open(o.path, true);
  REQUIRE(indexer.ok());
  auto wait_for = [&](uint64_t through) {
    for (int i = 0; i < 600 && (*indexer)->indexed_through() < through; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return (*indexer)->indexed_through() == through;
  };
  // 1..1000 handed; 1001..1400 not; 1401..2000 handed, but the indexer's
  // watermark is then 1000: read from the log, the run (marked) left out.
  (*indexer)->Committed(1, 1'000, run(1, 1'000, "marker-a", 500), leaf_hash(1'000));
  (*indexer)->Committed(1'401, 2'000, run(1'401, 2'000, "marker-b", 1'500), leaf_hash(2'000));
  REQUIRE(wait_for(2'000));
  // From the watermark on again: taken.
  (*indexer)->Committed(2'001, 3'000, run(2'001, 3'000, "marker-c", 2'500), leaf_hash(3'000));
  REQUIRE(wait_for(3'000));
  indexer->reset();
  auto bit = [](uint64_t seq) { return std::map<int64_t, uint64_t>{{static_cast<int64_t>(seq >> 6), 1ull << (seq & 63)}}; };
  CHECK(IndexRows(index_path, broker::audit_index::Key(Field::kAgency, "marker-a")) == bit(500));
  CHECK(IndexRows(index_path, broker::audit_index::Key(Field::kAgency, "marker-b")).empty());
  CHECK(IndexRows(index_path, broker::audit_index::Key(Field::kAgency, "marker-c")) == bit(2'500));
  // And every record is in the index exactly once, whichever way it came.
  for (const std::string agency : {"police", "health", "school"}) {
    INFO(agency);
    CHECK(IndexRows(index_path, broker::audit_index::Key(Field::kAgency, agency)) ==
          WordsOf(log, [&](const audit::Record& r) { return r.sender == agency || r.recipient == agency; }));
  }
  CHECK(QueryInt(index_path, "SELECT value FROM ix2_meta WHERE key = 'indexed_through'") == 3'000);
  // The watermark's hash is the log's: the store takes the index as it is.
  {
    auto store = broker::Store::Open(StoreOptions(dir));
    REQUIRE(store.ok());
    CHECK((*store)->audit_indexed_through() == 3'000);
  }
  auto reader = broker::AuditReader::Open(o.path, 1);
  REQUIRE(reader.ok());
  CheckIndexedQueries(**reader, log);
}

TEST_CASE("the audit index catches up after the broker's process is killed with kill -9", "[audit][index][crash]") {
  TempDir dir;
  const auto o = StoreOptions(dir);
  int progress[2];
  REQUIRE(pipe(progress) == 0);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // The child appends until it is killed; it reports each durable batch.
    close(progress[0]);
    auto store = broker::Store::Open(o);
    if (!store.ok()) _exit(1);
    std::mt19937_64 rng(static_cast<uint64_t>(getpid()));
    for (uint64_t seq = 1;; seq += 500) {
      if (!(*store)->AppendSync(IndexTestRecords(rng, seq, 500)).ok()) _exit(2);
      const char c = 'x';
      if (write(progress[1], &c, 1) != 1) _exit(3);
    }
  }
  close(progress[1]);
  char c;
  for (int batches = 0; batches < 60; ++batches) REQUIRE(read(progress[0], &c, 1) == 1);
  REQUIRE(kill(child, SIGKILL) == 0);
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));
  close(progress[0]);

  auto store = broker::Store::Open(o);
  REQUIRE(store.ok());
  const uint64_t size = (*store)->latest().tree_size;
  CHECK(size >= 30'000);
  REQUIRE(WaitForIndex(**store, size));
  auto reader = broker::AuditReader::Open(o.path, 1);
  REQUIRE(reader.ok());
  const auto all = All(**reader, broker::AuditPageRequest{});
  REQUIRE(all.size() == size);
  std::vector<audit::Record> log;
  for (const auto& row : all) log.push_back(row.record);
  CheckIndexedQueries(**reader, log);
}

// The schema of a store as brokers of schema 5 left it.
constexpr const char* kSchema5 = R"sql(
CREATE TABLE checkpoints(tree_size INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, text TEXT NOT NULL);
CREATE TABLE messages(
  row INTEGER PRIMARY KEY, sender TEXT NOT NULL, message_id TEXT NOT NULL, case_id TEXT NOT NULL,
  message_type TEXT NOT NULL, tlp INTEGER NOT NULL, purpose TEXT NOT NULL, agreement TEXT NOT NULL,
  recipients TEXT NOT NULL, received_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
  want_reports INTEGER NOT NULL, publish_digest BLOB NOT NULL, ack BLOB NOT NULL, body BLOB,
  recalled_ms INTEGER NOT NULL DEFAULT 0, UNIQUE(sender, message_id));
CREATE TABLE deliveries(
  id INTEGER PRIMARY KEY, recipient TEXT NOT NULL, message_row INTEGER NOT NULL REFERENCES messages(row),
  kind INTEGER NOT NULL, state INTEGER NOT NULL, attempts INTEGER NOT NULL, named INTEGER NOT NULL, payload BLOB);
CREATE INDEX deliveries_pending ON deliveries(id) WHERE state = 0;
CREATE INDEX deliveries_message ON deliveries(message_row, recipient);
CREATE INDEX messages_message_id ON messages(message_id);
CREATE TABLE audit_info(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO audit_info(key, value) VALUES ('time_disorder_ms', 0);
CREATE TABLE audit_log(
  seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, event TEXT NOT NULL, actor TEXT NOT NULL,
  message_id TEXT NOT NULL, case_id TEXT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,
  decision TEXT NOT NULL, leaf BLOB NOT NULL, leaf_hash BLOB NOT NULL);
CREATE INDEX audit_case ON audit_log(case_id, seq) WHERE case_id <> '';
CREATE INDEX audit_message ON audit_log(message_id) WHERE message_id <> '';
CREATE INDEX audit_sender_seq ON audit_log(sender) WHERE sender <> '';
CREATE INDEX audit_recipient_seq ON audit_log(recipient) WHERE recipient <> '';
PRAGMA user_version = 5;
)sql";

// Inserts log into a schema-5 audit_log as that broker wrote it (seqs from
// 1, each field a column as well as in the leaf); the tree of their leaves.
static merkle::Tree InsertSchema5Records(sqlite3* db, std::vector<audit::Record>* log) {
  sqlite3_stmt* s = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "INSERT INTO audit_log VALUES (?,?,?,?,?,?,?,?,?,?,?)", -1, &s, nullptr) == SQLITE_OK);
  merkle::Tree tree;
  uint64_t seq = 0;
  for (auto& r : *log) {
    r.seq = ++seq;
    const std::string leaf = audit::EncodeLeaf(r);
    const merkle::Hash h = merkle::LeafHash(leaf);
    tree.Append(h);
    sqlite3_bind_int64(s, 1, static_cast<int64_t>(r.seq));
    sqlite3_bind_int64(s, 2, r.time_ms);
    int i = 3;
    for (const std::string* f : {&r.event, &r.actor, &r.message_id, &r.case_id, &r.sender, &r.recipient, &r.decision}) {
      sqlite3_bind_text(s, i++, f->c_str(), -1, SQLITE_TRANSIENT);
    }
    sqlite3_bind_blob(s, i++, leaf.data(), static_cast<int>(leaf.size()), SQLITE_TRANSIENT);
    sqlite3_bind_blob(s, i++, h.data(), 32, SQLITE_TRANSIENT);
    REQUIRE(sqlite3_step(s) == SQLITE_DONE);
    sqlite3_reset(s);
  }
  sqlite3_finalize(s);
  return tree;
}

TEST_CASE("migrations 6 and 7 upgrade a schema-5 store: no index on the log, the derived index built, same tree, it "
          "verifies, with one index on message ids and the queue intact",
          "[audit][migration]") {
  TempDir dir;
  const auto o = StoreOptions(dir);
  std::filesystem::create_directories(dir.File("data"));
  auto signer = audit::Signer::LoadOrCreate(o.signing_key);
  REQUIRE(signer.ok());
  std::mt19937_64 rng(23);
  std::vector<audit::Record> log = IndexTestRecords(rng, 1, 5'000);
  audit::Checkpoint old_checkpoint;
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(o.path.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "PRAGMA journal_mode = WAL", nullptr, nullptr, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, kSchema5, nullptr, nullptr, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr) == SQLITE_OK);
    const merkle::Tree tree = InsertSchema5Records(db, &log);
    sqlite3_stmt* s = nullptr;
    old_checkpoint = (*signer)->Sign(o.origin, tree.size(), tree.Root(), 1764400000000);
    const std::string text = audit::FormatCheckpoint(old_checkpoint);
    REQUIRE(sqlite3_prepare_v2(db, "INSERT INTO checkpoints VALUES (?, 1764400000000, ?)", -1, &s, nullptr) == SQLITE_OK);
    sqlite3_bind_int64(s, 1, static_cast<int64_t>(tree.size()));
    sqlite3_bind_text(s, 2, text.c_str(), -1, SQLITE_TRANSIENT);
    REQUIRE(sqlite3_step(s) == SQLITE_DONE);
    sqlite3_finalize(s);
    // A message waiting for one of its two recipients, with its body.
    REQUIRE(sqlite3_exec(db,
                         "INSERT INTO messages VALUES (1, 'police', '0190a5c4-8d2e-7b3a-9c1d-000000000001', 'CASE-1', "
                         "'incident_report', 3, 'safeguarding', 'core', 'school,social', 1764400000000, "
                         "1764500000000, 1, X'0102', X'0304', X'B0D1B0D1', 0);"
                         "INSERT INTO deliveries VALUES (1, 'school', 1, 1, 1, 1, 1, NULL);"
                         "INSERT INTO deliveries VALUES (2, 'social', 1, 1, 0, 0, 1, NULL);"
                         "COMMIT",
                         nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  REQUIRE(UserVersion(o.path) == 5);
  std::string pem;
  {
    auto store = broker::Store::Open(o);
    INFO(store.status().ToString());
    REQUIRE(store.ok());
    CHECK((*store)->latest().tree_size == log.size());
    CHECK((*store)->latest().root == old_checkpoint.root);
    REQUIRE(WaitForIndex(**store, log.size()));
    std::vector<std::pair<int64_t, std::string>> pending;
    REQUIRE((*store)->LoadPending([&](broker::StoredDelivery d, const broker::StoredMessage& m) {
      pending.emplace_back(d.id, m.body.str());
    }).ok());
    CHECK(pending == std::vector<std::pair<int64_t, std::string>>{{2, "\xB0\xD1\xB0\xD1"}});
    // Migration 7 rebuilt the messages table: its rows and lookups are intact.
    auto found = (*store)->FindMessage("police", "0190a5c4-8d2e-7b3a-9c1d-000000000001");
    REQUIRE(found.ok());
    REQUIRE(found->has_value());
    CHECK((*found)->row == 1);
    CHECK((*found)->recipients == "school,social");
    CHECK((*found)->publish_digest == "\x01\x02");
    auto delivered = (*store)->FindDelivered("school", "0190a5c4-8d2e-7b3a-9c1d-000000000001");
    REQUIRE(delivered.ok());
    CHECK(delivered->has_value());
    auto other_sender = (*store)->FindMessage("social", "0190a5c4-8d2e-7b3a-9c1d-000000000001");
    REQUIRE(other_sender.ok());
    CHECK_FALSE(other_sender->has_value());
    // Still appends after the old records, in the same tree.
    auto more = AppendAll(**store, IndexTestRecords(rng, log.size() + 1, 100));
    log.insert(log.end(), more.begin(), more.end());
    pem = (*store)->public_key_pem();
  }
  // And 8: the commit log's watermark (store_info); 9: the messages'
  // delivered column, empty for the rows before it (their copies have rows);
  // 10: the records in chunks of at most 16, audit_log a virtual table over
  // them.
  CHECK(UserVersion(o.path) == 10);
  CHECK(liaison::test::QueryInt(o.path, "SELECT SUM(n) FROM audit_chunks") == static_cast<int64_t>(log.size()));
  CHECK(liaison::test::QueryInt(o.path, "SELECT MAX(n) FROM audit_chunks") == 16);
  CHECK(liaison::test::QueryInt(o.path, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'audit_log' AND "
                                        "sql LIKE 'CREATE VIRTUAL TABLE audit_log USING liaison_audit_log%'") == 1);
  CHECK(liaison::test::QueryInt(o.path, "SELECT COUNT(*) FROM messages WHERE delivered = ''") ==
        liaison::test::QueryInt(o.path, "SELECT COUNT(*) FROM messages"));
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open_v2(o.path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK);
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_log'", -1, &s,
                       nullptr);
    REQUIRE(sqlite3_step(s) == SQLITE_ROW);
    CHECK(sqlite3_column_int(s, 0) == 0);
    sqlite3_finalize(s);
    sqlite3_prepare_v2(db, "SELECT group_concat(name) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'",
                       -1, &s, nullptr);
    REQUIRE(sqlite3_step(s) == SQLITE_ROW);
    CHECK(std::string(reinterpret_cast<const char*>(sqlite3_column_text(s, 0))) == "messages_id_sender");
    sqlite3_finalize(s);
    // The deliveries still refer to the rebuilt table, and the index is unique.
    REQUIRE(sqlite3_exec(db, "PRAGMA foreign_keys = ON", nullptr, nullptr, nullptr) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "INSERT INTO deliveries VALUES (3, 'school', 99, 1, 0, 0, 1, NULL)", nullptr, nullptr,
                       nullptr) != SQLITE_OK);
    CHECK(sqlite3_exec(db,
                       "INSERT INTO messages(row, sender, message_id, case_id, message_type, tlp, purpose, agreement, "
                       "recipients, received_ms, expires_ms, want_reports, publish_digest, ack) SELECT 2, sender, "
                       "message_id, case_id, message_type, tlp, purpose, agreement, recipients, received_ms, "
                       "expires_ms, want_reports, publish_digest, ack FROM messages WHERE row = 1",
                       nullptr, nullptr, nullptr) != SQLITE_OK);
    sqlite3_close(db);
  }
  audit::VerifyReport report;
  Status v = ExportAndVerify(o.path, dir.File("export.db"), pem, {old_checkpoint}, &report);
  INFO(v.ToString());
  CHECK(v.ok());
  CHECK(report.records == log.size());
  auto reader = broker::AuditReader::Open(o.path, 1);
  REQUIRE(reader.ok());
  CheckIndexedQueries(**reader, log);
}

TEST_CASE("migration 10 keeps pruned records pruned: hash only in their chunks, the same tree, an export that verifies",
          "[audit][migration][retention]") {
  TempDir dir;
  const auto o = StoreOptions(dir);
  std::filesystem::create_directories(dir.File("data"));
  auto signer = audit::Signer::LoadOrCreate(o.signing_key);
  REQUIRE(signer.ok());
  std::mt19937_64 rng(31);
  std::vector<audit::Record> log = IndexTestRecords(rng, 1, 40);
  merkle::Tree tree;
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(o.path.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, kSchema5, nullptr, nullptr, nullptr) == SQLITE_OK);
    tree = InsertSchema5Records(db, &log);
    // Records 1 to 25 pruned as the broker of schema 5 to 9 pruned them.
    REQUIRE(sqlite3_exec(db,
                         "UPDATE audit_log SET time_ms = 0, event = '', actor = '', message_id = '', case_id = '', "
                         "sender = '', recipient = '', decision = '', leaf = X'' WHERE seq <= 25;"
                         "INSERT INTO audit_info(key, value) VALUES ('pruned_through', 25)",
                         nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  std::string pem;
  audit::Checkpoint migrated;
  {
    auto store = broker::Store::Open(o);
    INFO(store.status().ToString());
    REQUIRE(store.ok());
    migrated = (*store)->latest();
    pem = (*store)->public_key_pem();
  }
  CHECK(migrated.tree_size == 40);
  CHECK(migrated.root == tree.Root());
  CHECK(liaison::test::QueryInt(o.path, "SELECT SUM(n) FROM audit_chunks") == 40);
  CHECK(liaison::test::QueryInt(o.path, "SELECT COUNT(*) FROM audit_log WHERE length(leaf) = 0 AND time_ms = 0 AND "
                                        "sender = '' AND event = '' AND length(leaf_hash) = 32") == 25);
  CHECK(liaison::test::QueryInt(o.path, "SELECT MIN(seq) FROM audit_log WHERE length(leaf) > 0") == 26);
  CHECK(liaison::test::QueryInt(o.path, "SELECT COUNT(*) FROM audit_log WHERE sender <> ''") == 15);
  // Queries skip them; an export carries them by hash and verifies.
  {
    auto reader = broker::AuditReader::Open(o.path, 1);
    REQUIRE(reader.ok());
    broker::AuditPageRequest q;
    q.scope = kAgencies;
    q.limit = 100;
    auto page = (*reader)->QueryPageSync(q);
    REQUIRE(page.ok());
    CHECK(page->rows.size() == 15);
    for (const auto& row : page->rows) CHECK(row.record.seq > 25);
  }
  audit::VerifyReport report;
  Status v = ExportAndVerify(o.path, dir.File("export.db"), pem, {migrated}, &report);
  INFO(v.ToString());
  CHECK(v.ok());
  CHECK(report.records == 40);
  CHECK(report.hash_only == 25);
}

TEST_CASE("a lazy batch alone is committed after lazy_linger, pushed right after a commit or to an idle writer",
          "[store][commit]") {
  TempDir dir;
  auto o = StoreOptions(dir);
  o.lazy_linger = std::chrono::milliseconds(50);
  std::mt19937_64 rng(11);
  auto store = broker::Store::Open(o);
  REQUIRE(store.ok());
  auto commit_lazy = [&](int64_t time_ms) {
    auto done = std::make_shared<std::promise<Status>>();
    auto f = done->get_future();
    broker::Batch lazy;
    lazy.records.push_back(Event(rng, time_ms));
    lazy.lazy = true;
    (*store)->Commit(std::move(lazy), [done](const Status& s, const audit::Checkpoint&, const broker::BatchResult&) {
      done->set_value(s);
    });
    return f;
  };
  for (int round = 0; round < 20; ++round) {
    // Right after a commit: the writer lingers, and the lazy batch does not
    // wake it; it must still be committed when the linger ends.
    REQUIRE((*store)->AppendSync({Event(rng, 1'800'000'000'000 + 3 * round)}).ok());
    auto after_commit = commit_lazy(1'800'000'000'001 + 3 * round);
    REQUIRE(after_commit.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
    CHECK(after_commit.get().ok());
    // To an idle writer (its linger long over): it wakes and lingers.
    std::this_thread::sleep_for(std::chrono::milliseconds(120));
    auto idle = commit_lazy(1'800'000'000'002 + 3 * round);
    REQUIRE(idle.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
    CHECK(idle.get().ok());
  }
  CHECK((*store)->latest().tree_size == 60);
}

TEST_CASE("a lazy batch waits for the next commit that someone waits for, and shares it", "[store][commit]") {
  TempDir dir;
  auto o = StoreOptions(dir);
  o.lazy_linger = std::chrono::seconds(30);  // long enough that only company or closing commits it
  std::mt19937_64 rng(7);
  std::atomic<int> lazy_done{0};
  {
    auto store = broker::Store::Open(o);
    REQUIRE(store.ok());
    REQUIRE((*store)->AppendSync({Event(rng, 1'800'000'000'000)}).ok());
    const auto before = (*store)->counters();

    broker::Batch lazy;
    lazy.records.push_back(Event(rng, 1'800'000'000'001));
    lazy.lazy = true;
    (*store)->Commit(std::move(lazy), [&](const Status& s, const audit::Checkpoint& cp, const broker::BatchResult&) {
      CHECK(s.ok());
      CHECK(cp.tree_size == 3);  // signed with the batch it rode with
      lazy_done++;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(lazy_done == 0);
    CHECK((*store)->counters().commits == before.commits);

    auto cp = (*store)->AppendSync({Event(rng, 1'800'000'000'002)});
    REQUIRE(cp.ok());
    CHECK(cp->tree_size == 3);
    // done() runs on the completion thread in commit order: the lazy one first.
    CHECK(lazy_done == 1);
    CHECK((*store)->counters().commits == before.commits + 1);
    CHECK((*store)->counters().records == before.records + 2);

    // Closing commits a lazy batch that is still waiting.
    broker::Batch last;
    last.records.push_back(Event(rng, 1'800'000'000'003));
    last.lazy = true;
    (*store)->Commit(std::move(last), [&](const Status& s, const audit::Checkpoint&, const broker::BatchResult&) {
      CHECK(s.ok());
      lazy_done++;
    });
  }
  CHECK(lazy_done == 2);
  auto store = broker::Store::Open(o);
  REQUIRE(store.ok());
  CHECK((*store)->latest().tree_size == 4);
}

TEST_CASE("under load that never pauses, the WAL is reused at a bounded size and a deleted body leaves it in time",
          "[store][wal]") {
  TempDir dir;
  auto o = StoreOptions(dir);
  o.wal_purge_within = std::chrono::seconds(2);
  auto store = broker::Store::Open(o);
  REQUIRE(store.ok());
  const std::string marker = "Unique-wal-body-5c1e9b0d that must leave the WAL";
  broker::Batch publish;
  broker::StoredMessage m;
  m.row = (*store)->NextMessageRow();
  m.sender = "police";
  m.message_id = "0190a5c4-8d2e-7b3a-9c1d-00000000abcd";
  m.recipients = "school";
  m.publish_digest = std::string(32, 'd');
  m.ack = "ack";
  m.body = marker + std::string(2000, 'x');
  publish.new_message = m;
  broker::StoredDelivery d;
  d.id = (*store)->NextDeliveryId();
  d.recipient = "school";
  d.message_row = m.row;
  publish.new_deliveries.push_back(d);
  std::mt19937_64 rng(11);
  publish.records.push_back(Event(rng, 1'800'000'000'000));
  REQUIRE((*store)->CommitSync(std::move(publish)).ok());

  // A writer that never pauses for long: a small commit every few hundred
  // microseconds, from another thread.
  std::atomic<bool> stop{false};
  std::thread load([&] {
    std::mt19937_64 r(12);
    int64_t t = 1'800'000'000'001;
    while (!stop) {
      (*store)->Append({Event(r, t++)}, nullptr);
      std::this_thread::sleep_for(std::chrono::microseconds(300));
    }
  });
  auto file_bytes = [&](const std::string& path) {
    auto b = ReadFile(path, 1 << 30);
    return b.ok() ? *b : std::string();
  };
  const std::string wal = o.path + "-wal";
  // The recipient is slow: the message is applied to the database before
  // its delivery is finished, so its body is written there (in the WAL, or
  // already copied into the database), not only into the commit log.
  REQUIRE((*store)->Sync().ok());
  CHECK((file_bytes(o.path) + file_bytes(wal)).find(marker) != std::string::npos);
  broker::Batch done;
  done.finished.emplace_back(d.id, broker::DeliveryState::kDelivered);
  done.drop_bodies.push_back(m.row);
  done.records.push_back(Event(rng, 1'800'000'000'000));
  REQUIRE((*store)->CommitSync(std::move(done)).ok());
  const auto dropped = std::chrono::steady_clock::now();

  uintmax_t largest_wal = 0;
  bool gone = false;
  while (std::chrono::steady_clock::now() - dropped < std::chrono::seconds(10)) {
    std::error_code ec;
    largest_wal = std::max<uintmax_t>(largest_wal, std::filesystem::file_size(wal, ec));
    if (StoreFileBytes(o.path).find(marker) == std::string::npos) {
      gone = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const double gone_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - dropped).count();
  // Keep loading a little longer, and until 2,000 commits (a loaded machine
  // takes longer to get there): the WAL must stay bounded (it starts over
  // instead of growing) while commits never pause.
  const auto loading = std::chrono::steady_clock::now();
  for (int i = 0; i < 40 || ((*store)->counters().commits <= 2000 &&
                             std::chrono::steady_clock::now() - loading < std::chrono::seconds(60));
       ++i) {
    std::error_code ec;
    largest_wal = std::max<uintmax_t>(largest_wal, std::filesystem::file_size(wal, ec));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  stop = true;
  load.join();
  const auto commits = (*store)->counters().commits;
  INFO("body gone after " << gone_s << " s; largest WAL " << largest_wal << " bytes; " << commits << " commits");
  CHECK(gone);
  CHECK(gone_s < 2.0 + 3.0);  // wal_purge_within, and a few rounds of the checkpointer
  CHECK(commits > 2000);      // the load really did not pause
  CHECK(largest_wal < 24u << 20);  // journal_size_limit (16 MiB) plus a few commits
}
