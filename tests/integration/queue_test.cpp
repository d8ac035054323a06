// The durable queue (DESIGN.md, Delivery guarantees): offline recipients,
// idempotent publish, order, the policy re-checked at delivery, recall,
// expiry and delivery reports, through a real broker.
#include <catch2/catch.hpp>

#include <google/protobuf/util/time_util.h>
#include <sqlite3.h>

#include <set>

#include "common/files.h"
#include "common/uuid.h"
#include "tests/integration/test_support.h"

using namespace liaison;
using namespace liaison::test;

namespace {

// Events of the broker's audit log, as "event:decision", in order.
std::vector<std::string> AuditEvents(const std::string& dir, const std::string& message_id) {
  std::vector<std::string> out;
  sqlite3* db = nullptr;
  sqlite3_open_v2((dir + "/data/liaison.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "SELECT event || ':' || decision || ':' || recipient FROM audit_log WHERE message_id = ? ORDER BY seq",
                     -1, &st, nullptr);
  sqlite3_bind_text(st, 1, message_id.c_str(), -1, SQLITE_TRANSIENT);
  while (sqlite3_step(st) == SQLITE_ROW) out.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)));
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

bool Has(const std::vector<std::string>& events, const std::string& e) {
  return std::find(events.begin(), events.end(), e) != events.end();
}

client::ClientOptions Reporting(uint16_t port, const std::string& agency) {
  auto o = Options(port, agency);
  o.want_reports = true;
  return o;
}

}  // namespace

TEST_CASE("a message for an offline agency waits and arrives, in order, when it connects", "[queue]") {
  TestBroker broker;
  auto police = Connect(broker.port(), "police");
  std::vector<std::string> ids;
  for (int i = 0; i < 50; ++i) {
    v1::Message m = IncidentReport({"school"});
    ids.push_back(m.envelope().message_id());
    auto r = police->Publish(m);
    REQUIRE(r.AllAccepted());
    CHECK(r.outcomes.at(0).outcome == "queued");
  }
  Receiver school(broker.port(), "school", true, /*credit=*/7);
  REQUIRE(school.WaitCount(50));
  std::lock_guard lock(school.mu);
  for (int i = 0; i < 50; ++i) {
    CHECK(school.got[i].message->envelope().message_id() == ids[i]);
    CHECK(school.got[i].attempt == 1);
  }
}

TEST_CASE("publishing is idempotent on sender and message id", "[queue]") {
  TestBroker broker;
  auto police = Connect(broker.port(), "police");
  v1::Message m = IncidentReport({"school", "nobody"});
  auto first = police->Publish(m);
  REQUIRE(first.status.ok());
  CHECK_FALSE(first.duplicate);
  // The same message again (a retry after a lost ack): the original outcome.
  auto again = police->Publish(m);
  REQUIRE(again.status.ok());
  CHECK(again.duplicate);
  REQUIRE(again.outcomes.size() == first.outcomes.size());
  for (size_t i = 0; i < first.outcomes.size(); ++i) {
    CHECK(again.outcomes[i].recipient == first.outcomes[i].recipient);
    CHECK(again.outcomes[i].outcome == first.outcomes[i].outcome);
    CHECK(again.outcomes[i].reason == first.outcomes[i].reason);
  }
  // The same id with other content: an error, nothing queued.
  v1::Message other = m;
  other.mutable_incident_report()->set_description("something else entirely");
  auto conflict = police->Publish(other);
  CHECK_FALSE(conflict.status.ok());
  CHECK(conflict.error_code == "duplicate_message_id");
  // Another agency may use the same id: ids are per sender.
  auto social = Connect(broker.port(), "social");
  auto theirs = social->Publish(other);
  CHECK(theirs.AllAccepted() == false);  // "nobody" is refused
  CHECK_FALSE(theirs.duplicate);
  Receiver school(broker.port(), "school");
  REQUIRE(school.WaitCount(2));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(school.count() == 2);  // police's once, social's once
}

TEST_CASE("a DeliveryAck must name the attempt in flight", "[queue]") {
  TestBroker broker;
  auto police = Connect(broker.port(), "police");
  REQUIRE(police->Publish(IncidentReport({"school"})).AllAccepted());
  std::vector<client::Delivery> got;
  std::mutex mu;
  std::atomic<bool> closed{false};
  auto school = Connect(
      broker.port(), "school", true,
      [&](client::Delivery d) {
        std::lock_guard lock(mu);
        got.push_back(d);
      },
      [&](const Status&) { closed = true; });
  REQUIRE(WaitFor([&] {
    std::lock_guard lock(mu);
    return got.size() == 1;
  }));
  client::Delivery d = got[0];
  school->Acknowledge(d.delivery_id, d.attempt + 1);  // not the attempt in flight: refused, not settled
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(broker.server().counters().deliveries_acked == 0);
  CHECK(broker.server().counters().protocol_errors == 1);
  school->Acknowledge(d);
  CHECK(WaitFor([&] { return broker.server().counters().deliveries_acked == 1; }));
}

TEST_CASE("the policy decides again at delivery: a share no longer permitted is not delivered", "[queue][policy]") {
  TestBroker broker;
  Receiver police_inbox(broker.port(), "police");  // the sender's reports arrive here
  auto police = client::Client::Connect(Reporting(broker.port(), "police"));
  REQUIRE(police.ok());
  v1::Message m = IncidentReport({"school"});
  REQUIRE((*police)->Publish(m).AllAccepted());
  // While school is offline, the network forbids sharing with it.
  std::string policy = *ReadFile(broker.dir() + "/policy.yaml", 1 << 20);
  policy += "  - id: school-paused\n    effect: forbid\n    from: [\"*\"]\n    to: [school]\n";
  REQUIRE(WriteFileAtomic(broker.dir() + "/policy.yaml", policy).ok());
  auto reload = broker.server().Reload();
  INFO(reload.status().ToString());
  REQUIRE(reload.ok());
  Receiver school(broker.port(), "school");
  // The sender is told.
  REQUIRE(WaitFor([&] { return !police_inbox.Reports().empty(); }));
  const auto report = police_inbox.Reports().at(0);
  CHECK(report.message_id == m.envelope().message_id());
  CHECK(report.recipient == "school");
  CHECK(report.outcome == "refused");
  CHECK(report.reason == "not_permitted");
  CHECK(school.count() == 0);
  const auto events = AuditEvents(broker.dir(), m.envelope().message_id());
  CHECK(Has(events, "queued:permit:school"));
  CHECK(Has(events, "not_delivered:deny:school"));
}

TEST_CASE("recall withdraws waiting copies and sends a notice to recipients who have it", "[queue][recall]") {
  TestBroker broker;
  Receiver police_inbox(broker.port(), "police");
  auto police = client::Client::Connect(Reporting(broker.port(), "police"));
  REQUIRE(police.ok());
  Receiver school(broker.port(), "school");
  v1::Message m = IncidentReport({"school", "health"});  // health is offline
  REQUIRE((*police)->Publish(m).AllAccepted());
  REQUIRE(school.WaitCount(1));
  // school's acknowledgement is recorded once police has its report.
  REQUIRE(WaitFor([&] { return police_inbox.Reports().size() == 1; }));

  auto r = (*police)->Recall(m.envelope().message_id(), "sent to the wrong agencies");
  REQUIRE(r.status.ok());
  CHECK(r.withdrawn == std::vector<std::string>{"health"});
  CHECK(r.notified == std::vector<std::string>{"school"});
  // school gets a notice; health, connecting later, gets nothing.
  REQUIRE(WaitFor([&] { return school.Recalls().size() == 1; }));
  const auto notice = school.Recalls().at(0);
  CHECK(notice.message_id == m.envelope().message_id());
  CHECK(notice.sender == "police");
  CHECK(notice.reason == "sent to the wrong agencies");
  Receiver health(broker.port(), "health");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(health.count() == 0);
  // The sender's reports: delivered to school, recalled for health.
  REQUIRE(WaitFor([&] { return police_inbox.Reports().size() == 2; }));
  std::set<std::string> outcomes;
  for (const auto& rep : police_inbox.Reports()) outcomes.insert(rep.recipient + ":" + rep.outcome);
  CHECK(outcomes == std::set<std::string>{"school:delivered", "health:recalled"});

  // A second recall changes nothing; a message never sent is unknown.
  auto twice = (*police)->Recall(m.envelope().message_id(), "again");
  REQUIRE(twice.status.ok());
  CHECK(twice.withdrawn.empty());
  CHECK(twice.notified.empty());
  auto unknown = (*police)->Recall(NewUuid(), "");
  CHECK(unknown.error_code == "unknown_message");
  // Another agency cannot recall police's message.
  auto social = Connect(broker.port(), "social");
  CHECK(social->Recall(m.envelope().message_id(), "").error_code == "unknown_message");
  const auto events = AuditEvents(broker.dir(), m.envelope().message_id());
  CHECK(Has(events, "recalled:recalled:health"));
  CHECK(Has(events, "recalled:recall_notice:school"));
  CHECK(Has(events, "recall_notice_delivered:delivered:school"));
}

TEST_CASE("a message that expires before its recipient connects is not delivered, and the sender is told",
          "[queue][expiry]") {
  TestBroker broker;
  Receiver police_inbox(broker.port(), "police");
  auto police = Connect(broker.port(), "police");  // no reports asked: expiry is reported anyway
  v1::Message m = IncidentReport({"school"});
  *m.mutable_envelope()->mutable_expires_at() = google::protobuf::util::TimeUtil::MillisecondsToTimestamp(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count() +
      1500);
  REQUIRE(police->Publish(m).AllAccepted());
  REQUIRE(WaitFor([&] { return !police_inbox.Reports().empty(); }, std::chrono::seconds(10)));
  const auto report = police_inbox.Reports().at(0);
  CHECK(report.outcome == "expired");
  CHECK(report.reason == "expired");
  CHECK(report.recipient == "school");
  Receiver school(broker.port(), "school");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(school.count() == 0);
  CHECK(Has(AuditEvents(broker.dir(), m.envelope().message_id()), "expired:expired:school"));
}

TEST_CASE("a sender that asks for reports learns of every delivery", "[queue][reports]") {
  TestBroker broker;
  Receiver police_inbox(broker.port(), "police");
  auto police = client::Client::Connect(Reporting(broker.port(), "police"));
  REQUIRE(police.ok());
  Receiver school(broker.port(), "school");
  Receiver social(broker.port(), "social");
  v1::Message m = IncidentReport({"school", "social"});
  REQUIRE((*police)->Publish(m).AllAccepted());
  REQUIRE(WaitFor([&] { return police_inbox.Reports().size() == 2; }));
  for (const auto& rep : police_inbox.Reports()) {
    CHECK(rep.message_id == m.envelope().message_id());
    CHECK(rep.outcome == "delivered");
    CHECK(rep.time_ms > 0);
  }
}
