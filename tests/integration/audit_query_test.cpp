// The audit log over the wire: auditors' queries within their scope (and
// recorded), paging and filters, the auditor's scoped export that still
// verifies, and consistency proofs that let agencies witness the log.
#include <catch2/catch.hpp>

#include <sqlite3.h>

#include <filesystem>
#include <set>

#include "client/audit_export.h"
#include "client/audit_verify.h"
#include "common/files.h"
#include "tests/integration/test_support.h"

using namespace liaison;
using namespace liaison::test;

namespace {

// The default test policy, with a01 an auditor of police and school only,
// and a02 an auditor of everyone.
std::string AuditorPolicy() {
  std::string y = PolicyYaml(DefaultAgencies());
  auto make_auditor = [&](const std::string& id, const std::string& scope) {
    const std::string entry = "  - id: " + id + "\n    name: Agency " + id + "\n    sector: social_work\n";
    const auto at = y.find(entry);
    REQUIRE(at != std::string::npos);
    y.insert(at + entry.size(), "    roles: [auditor]\n    audit_scope: " + scope + "\n");
  };
  make_auditor("a01", "[police, school]");
  make_auditor("a02", "[\"*\"]");
  return y;
}

// Every page of a query, with its page tokens.
std::vector<client::AuditRow> All(client::Client& c, client::AuditQuery q, size_t* pages = nullptr) {
  std::vector<client::AuditRow> rows;
  for (size_t n = 1;; ++n) {
    client::AuditPage page = c.QueryAudit(q);
    INFO(page.status.ToString());
    REQUIRE(page.status.ok());
    rows.insert(rows.end(), page.rows.begin(), page.rows.end());
    if (pages) *pages = n;
    if (page.next_page_token == 0) break;
    REQUIRE(page.next_page_token == page.rows.back().record.seq);
    q.page_token = page.next_page_token;
  }
  return rows;
}

bool InScope(const audit::Record& r, const std::set<std::string>& scope) {
  if (r.sender.empty() && r.recipient.empty() && r.actor.empty()) return true;
  return scope.count(r.sender) || scope.count(r.recipient) || scope.count(r.actor);
}

// police -> school and social (case A), social -> health (case B),
// youth-ngo -> nobody (an unknown recipient, case B).
struct Network {
  Network() : broker(broker::Limits{}, 2, AuditorPolicy()) {
    school = std::make_unique<Receiver>(broker.port(), "school");
    health = std::make_unique<Receiver>(broker.port(), "health");
    auto police = Connect(broker.port(), "police");
    auto social = Connect(broker.port(), "social");
    auto ngo = Connect(broker.port(), "youth-ngo");
    v1::Message a = IncidentReport({"school", "social"});
    a.mutable_envelope()->set_case_id("CASE-A");
    a.mutable_incident_report()->set_description(kSecret);
    auto ra = police->Publish(a);
    REQUIRE(ra.status.ok());
    message_a = ra.message_id;
    v1::Message b = IncidentReport({"health"});
    b.mutable_envelope()->set_case_id("CASE-B");
    REQUIRE(social->Publish(b).status.ok());
    v1::Message c = IncidentReport({"nobody"});
    c.mutable_envelope()->set_case_id("CASE-B");
    REQUIRE(ngo->Publish(c).status.ok());
    REQUIRE(WaitFor([&] { return school->count() == 1 && health->count() == 1; }));
    REQUIRE(WaitFor([&] { return broker.server().counters().deliveries_acked == 2; }));  // recorded
    pem = *ReadFile(broker.dir() + "/keys/audit-signing.key.pub", 1 << 16);
  }
  static constexpr const char* kSecret = "Body-text-4c1e9b known only to the message";
  TestBroker broker;
  std::unique_ptr<Receiver> school, health;
  std::string message_a;
  std::string pem;
};

}  // namespace

TEST_CASE("a non-auditor cannot query the audit log, and the attempt is recorded", "[audit][query]") {
  Network net;
  auto police = Connect(net.broker.port(), "police");
  client::AuditQuery q;
  client::AuditPage page = police->QueryAudit(q);
  CHECK(page.status.IsPermissionDenied());
  CHECK(page.error_code == "not_auditor");
  CHECK(page.rows.empty());
  q.export_mode = true;
  CHECK(police->QueryAudit(q).error_code == "not_auditor");
  TempDir dir;
  client::RemoteExportReport report;
  CHECK(client::ExportRemote(*police, dir.File("x.db"), &report).IsPermissionDenied());
  CHECK_FALSE(std::filesystem::exists(dir.File("x.db")));

  auto auditor = Connect(net.broker.port(), "a02");
  client::AuditQuery refused;
  refused.event = "audit_query";
  refused.decision = "refused:not_auditor";
  const auto rows = All(*auditor, refused);
  REQUIRE(rows.size() >= 3);
  for (const auto& r : rows) {
    CHECK(r.record.actor == "police");
    CHECK(r.record.cert_sha256.size() == 64);
  }
}

TEST_CASE("an auditor sees only the agencies in its scope", "[audit][query]") {
  Network net;
  auto narrow = Connect(net.broker.port(), "a01");
  auto wide = Connect(net.broker.port(), "a02");
  const std::set<std::string> scope = {"police", "school"};
  const auto seen = All(*narrow, {});
  const auto everything = All(*wide, {});
  REQUIRE_FALSE(seen.empty());
  CHECK(everything.size() > seen.size());
  bool start = false;
  for (const auto& row : seen) {
    INFO(row.record.seq << " " << row.record.event << " " << row.record.sender << " -> " << row.record.recipient);
    CHECK(InScope(row.record, scope));
    start = start || row.record.event == "broker_start";  // no agency: every auditor sees it
  }
  CHECK(start);
  // Out of scope: social -> health, youth-ngo's publish, their connections.
  size_t hidden = 0;
  for (const auto& row : everything) hidden += InScope(row.record, scope) ? 0 : 1;
  CHECK(hidden >= 4);
  CHECK(everything.size() - hidden >= seen.size());  // a02's own later queries aside
  // Asking for an agency outside the scope finds nothing.
  client::AuditQuery q;
  q.agency = "health";
  CHECK(All(*narrow, q).empty());
  q.case_id = "CASE-B";
  q.agency.clear();
  CHECK(All(*narrow, q).empty());
  CHECK(All(*wide, q).size() >= 3);  // social -> health, youth-ngo -> nobody
}

TEST_CASE("every auditor query is recorded before it is answered", "[audit][query]") {
  Network net;
  auto a01 = Connect(net.broker.port(), "a01");
  client::AuditQuery q;
  q.case_id = "CASE-A";
  q.page_size = 5;
  REQUIRE(a01->QueryAudit(q).status.ok());

  // a02 (scope "*") asks for audit queries: its own record is in its own
  // answer, so it was committed before the query ran.
  auto a02 = Connect(net.broker.port(), "a02");
  client::AuditQuery mine;
  mine.event = "audit_query";
  const auto rows = All(*a02, mine);
  bool found_a01 = false, found_self = false;
  for (const auto& r : rows) {
    if (r.record.actor == "a01" && r.record.decision == "permit") {
      found_a01 = true;
      CHECK(r.record.case_id == "CASE-A");
      CHECK(r.record.detail.find("case_id=CASE-A") != std::string::npos);
      CHECK(r.record.detail.find("page_size=5") != std::string::npos);
    }
    if (r.record.actor == "a02" && r.record.detail.find("event=audit_query") != std::string::npos) found_self = true;
  }
  CHECK(found_a01);
  CHECK(found_self);
}

TEST_CASE("paging is gapless and every filter filters", "[audit][query]") {
  Network net;
  auto a02 = Connect(net.broker.port(), "a02");
  client::AuditQuery decisions;
  decisions.event = "queued";  // a permitted share, stored for its recipient
  decisions.page_size = 1000;
  size_t pages = 0;
  const auto once = All(*a02, decisions, &pages);
  CHECK(pages == 1);
  REQUIRE(once.size() >= 3);  // school, social, health
  decisions.page_size = 1;
  const auto paged = All(*a02, decisions, &pages);
  CHECK(pages == once.size());
  REQUIRE(paged.size() == once.size());
  for (size_t i = 0; i < once.size(); ++i) {
    CHECK(paged[i].record == once[i].record);
    CHECK(paged[i].leaf_hash == once[i].leaf_hash);
    if (i) CHECK(once[i].record.seq > once[i - 1].record.seq);
    CHECK(once[i].record.event == "queued");
  }

  // Every record, page by page, is the whole log without gaps (a02's own
  // audit_query records among them).
  client::AuditQuery all;
  all.page_size = 3;
  const auto log = All(*a02, all);
  for (size_t i = 0; i < log.size(); ++i) CHECK(log[i].record.seq == i + 1);

  auto only = [&](auto set) {
    client::AuditQuery q;
    set(q);
    return All(*a02, q);
  };
  for (const auto& r : only([](auto& q) { q.case_id = "CASE-A"; })) CHECK(r.record.case_id == "CASE-A");
  const auto by_message = only([&](auto& q) { q.message_id = net.message_a; });
  CHECK(by_message.size() >= 3);  // queued for school and social, delivered to school
  for (const auto& r : by_message) CHECK(r.record.message_id == net.message_a);
  const auto by_agency = only([](auto& q) { q.agency = "health"; });
  CHECK(by_agency.size() >= 2);
  for (const auto& r : by_agency) CHECK((r.record.sender == "health" || r.record.recipient == "health"));
  const auto unknown = only([](auto& q) { q.decision = "refused:unknown_recipient"; });
  REQUIRE(unknown.size() == 1);
  CHECK(unknown[0].record.sender == "youth-ngo");
  CHECK(unknown[0].record.recipient == "nobody");
  CHECK(only([](auto& q) { q.event = "no_such_event"; }).empty());

  // Time range: [from, to) splits the log exactly.
  const int64_t mid = log[log.size() / 2].record.time_ms;
  const auto before = only([&](auto& q) { q.to_ms = mid; });
  const auto after = only([&](auto& q) { q.from_ms = mid; });
  for (const auto& r : before) CHECK(r.record.time_ms < mid);
  for (const auto& r : after) CHECK(r.record.time_ms >= mid);
  size_t expected = 0;
  for (const auto& r : log) expected += r.record.time_ms < mid ? 1 : 0;
  CHECK(before.size() == expected);

  // Bad requests are refused with a reason, not answered.
  for (auto bad : std::vector<std::function<void(client::AuditQuery&)>>{
           [](auto& q) { q.page_size = 1001; },
           [](auto& q) { q.from_ms = 10; q.to_ms = 5; },
           [](auto& q) { q.from_ms = -1; },
           [](auto& q) { q.case_id = std::string(200, 'x'); },
           [](auto& q) { q.agency = "police\nforged"; },
           [](auto& q) { q.export_mode = true; q.agency = "police"; },
           [](auto& q) { q.export_mode = true; q.until_tree_size = 1'000'000; },
           [](auto& q) { q.until_tree_size = 3; },
       }) {
    client::AuditQuery q;
    bad(q);
    auto page = a02->QueryAudit(q);
    CHECK(page.error_code == "invalid_audit_request");
    CHECK(page.status.IsInvalidArgument());
  }
}

TEST_CASE("an auditor's export holds its scope in full and the rest as hashes, and verifies", "[audit][export]") {
  Network net;
  auto a01 = Connect(net.broker.port(), "a01");
  TempDir dir;
  const std::string out = dir.File("scoped.db");
  client::RemoteExportReport report;
  Status s = client::ExportRemote(*a01, out, &report);
  INFO(s.ToString());
  REQUIRE(s.ok());
  CHECK(report.records > 10);
  CHECK(report.hash_only >= 4);
  CHECK(report.hash_only < report.records);
  CHECK(report.pages == 1);
  client::RemoteExportReport again;
  CHECK(client::ExportRemote(*a01, out, &again).IsInvalidArgument());  // never overwrites

  audit::VerifyOptions vo;
  vo.db_path = out;
  vo.public_key_pem = net.pem;
  audit::VerifyReport vr;
  Status v = audit::VerifyAuditLog(vo, &vr);
  INFO(v.ToString());
  REQUIRE(v.ok());
  CHECK(vr.hash_only >= 4);
  CHECK(vr.checkpoints_verified >= 2);

  auto count = [&](const std::string& sql) {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(out.c_str(), &db) == SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    const int64_t n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
  };
  // Nothing of social -> health or of youth-ngo in the clear.
  CHECK(count("SELECT COUNT(*) FROM audit_log WHERE sender IN ('social', 'youth-ngo') OR recipient = 'health'") == 0);
  // Hash-only rows carry nothing else; no row carries leaf bytes (every field is a column).
  CHECK(count("SELECT COUNT(*) FROM audit_log WHERE hash_only = 1 AND (time_ms <> 0 OR tlp <> 0 OR "
              "(event || actor || cert_sha256 || message_id || case_id || sender || recipient || message_type || "
              "purpose || decision || rules || policy_version || obligations || body_hmac || detail) <> '')") == 0);
  CHECK(count("SELECT COUNT(*) FROM pragma_table_info('audit_log') WHERE name = 'leaf'") == 0);
  CHECK(count("SELECT COUNT(*) FROM pragma_table_info('audit_log')") == 20);  // 18 fields, leaf_hash, hash_only
  CHECK(count("SELECT COUNT(*) FROM audit_log WHERE hash_only = 0 AND sender = 'police' AND event = 'queued'") == 2);
  CHECK(count("SELECT MAX(seq) FROM audit_log") == static_cast<int64_t>(report.records));
  // No body bytes, ever.
  CHECK(ReadFile(out, 1 << 30)->find("Body-text-4c1e9b") == std::string::npos);

  // A hash-only row that claims content, or whose hash was changed, fails.
  auto tampered = [&](const std::string& sql) {
    const std::string copy = dir.File("copy-" + std::to_string(std::hash<std::string>{}(sql)) + ".db");
    std::filesystem::copy_file(out, copy);
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(copy.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
    audit::VerifyOptions t = vo;
    t.db_path = copy;
    audit::VerifyReport r;
    return audit::VerifyAuditLog(t, &r);
  };
  Status claims = tampered(
      "UPDATE audit_log SET sender = 'police' WHERE seq = (SELECT MIN(seq) FROM audit_log WHERE hash_only = 1)");
  CHECK(claims.message().find("marked hash-only") != std::string::npos);
  Status rehashed = tampered(
      "UPDATE audit_log SET leaf_hash = zeroblob(32) WHERE seq = (SELECT MIN(seq) FROM audit_log WHERE hash_only = 1)");
  CHECK(rehashed.IsCorruption());
  Status hidden = tampered("UPDATE audit_log SET hash_only = 1, event = '', actor = '', sender = '' WHERE seq = 1");
  CHECK_FALSE(hidden.ok());  // only a row with every column empty may be hash-only
}

TEST_CASE("consistency proofs from the broker verify, and fail when altered", "[audit][witness]") {
  Network net;
  auto police = Connect(net.broker.port(), "police");
  const audit::Checkpoint early = police->session().checkpoint;
  REQUIRE(police->Publish(IncidentReport({"school"})).status.ok());
  auto r = police->Publish(IncidentReport({"school"}));
  REQUIRE(r.status.ok());
  const audit::Checkpoint late = r.checkpoint;
  REQUIRE(late.tree_size > early.tree_size);
  for (uint64_t m : {uint64_t{1}, uint64_t{2}, early.tree_size}) {
    INFO(m);
    auto proof = police->ConsistencyProof(m, late.tree_size);
    REQUIRE(proof.ok());
    if (m == early.tree_size) {
      CHECK(merkle::VerifyConsistency(m, late.tree_size, early.root, late.root, *proof));
      for (size_t i = 0; i < proof->size(); ++i) {
        auto bad = *proof;
        bad[i][7] ^= 0x20;
        CHECK_FALSE(merkle::VerifyConsistency(m, late.tree_size, early.root, late.root, bad));
      }
      auto forked = early;
      forked.root[0] ^= 1;
      CHECK_FALSE(merkle::VerifyConsistency(m, late.tree_size, forked.root, late.root, *proof));
    }
  }
  for (auto [m, n] : std::vector<std::pair<uint64_t, uint64_t>>{{0, 5}, {6, 5}, {1, late.tree_size + 1000}}) {
    auto proof = police->ConsistencyProof(m, n);
    CHECK(proof.status().IsInvalidArgument());
  }
}

TEST_CASE("a witness checks each newer checkpoint with a consistency proof, and a forked log raises the alarm",
          "[audit][witness]") {
  Network net;
  TempDir dir;
  auto o = Options(net.broker.port(), "police");
  o.checkpoint_file = dir.File("police.checkpoint");
  uint64_t witnessed = 0;
  {
    auto c = client::Client::Connect(o);
    REQUIRE(c.ok());
    REQUIRE((*c)->Publish(IncidentReport({"school"})).status.ok());
    auto r = (*c)->Publish(IncidentReport({"school"}));
    REQUIRE(r.status.ok());
    (*c)->Close();
    CHECK((*c)->witness_status().ok());
    auto saved = audit::ParseCheckpoint(*ReadFile(o.checkpoint_file, 1 << 16));
    REQUIRE(saved.ok());
    CHECK(saved->tree_size == r.checkpoint.tree_size);  // advanced through verified proofs
    witnessed = saved->tree_size;
  }
  {
    // The log grows; the next session proves it extends what was witnessed.
    REQUIRE(Connect(net.broker.port(), "social")->Publish(IncidentReport({"health"})).status.ok());
    auto c = client::Client::Connect(o);
    REQUIRE(c.ok());
    (*c)->Close();
    CHECK((*c)->witness_status().ok());
    CHECK(audit::ParseCheckpoint(*ReadFile(o.checkpoint_file, 1 << 16))->tree_size > witnessed);
  }
  // This agency witnessed another history than the broker now shows (a
  // fork, or records rewritten before the witnessed size): same log, same
  // key, a smaller tree with another root.
  auto saved = *audit::ParseCheckpoint(*ReadFile(o.checkpoint_file, 1 << 16));
  saved.root[5] ^= 0x40;
  REQUIRE(WriteFileAtomic(o.checkpoint_file, audit::FormatCheckpoint(saved)).ok());
  // The log grows past the witnessed size first, so that the Welcome's
  // checkpoint is larger and the witness asks for a consistency proof (at
  // the same size it would compare the roots directly: another alarm).
  REQUIRE(Connect(net.broker.port(), "social")->Publish(IncidentReport({"health"})).status.ok());
  auto c = client::Client::Connect(o);
  REQUIRE(c.ok());
  (*c)->Close();
  INFO((*c)->witness_status().ToString());
  CHECK((*c)->witness_status().message().find("does not extend") != std::string::npos);
  // The witness file keeps what was witnessed, not the contradicting checkpoint.
  CHECK(audit::ParseCheckpoint(*ReadFile(o.checkpoint_file, 1 << 16))->root == saved.root);
}
