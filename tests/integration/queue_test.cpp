// The durable queue (DESIGN.md, Delivery guarantees): offline recipients,
// idempotent publish, order, the policy re-checked at delivery, recall,
// expiry and delivery reports, through a real broker.
#include <catch2/catch.hpp>
#include <google/protobuf/util/time_util.h>

#include <sqlite3.h>

#include <atomic>
#include <future>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "common/audit_record.h"
#include "common/files.h"
#include "common/uuid.h"
#include "proto/frame_codec.h"
#include "tests/integration/test_support.h"
#include "tests/proto/wire_by_hand.h"

using namespace liaison;
using namespace liaison::test;

namespace {

// Events of the broker's audit log, as "event:decision:recipient", in order.
std::vector<std::string> AuditEvents(TestBroker& broker, const std::string& message_id) {
  return AuditColumn(broker, message_id, "event || ':' || decision || ':' || recipient");
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

TEST_CASE("a message encoded another way is the same message: a repeat in any encoding is a duplicate",
          "[queue]") {
  // The broker keeps and delivers a message's bytes as they arrived when
  // they are what serializing the message gives, and serializes it again
  // otherwise. Either way the recipient gets the serializer's bytes, and the
  // publish is known by them: a retry encoded differently (another client
  // library, a field written with its default value, a field this broker
  // does not know) is the same publish.
  TestBroker broker;
  RawClient police;
  RawClient::Options o;
  o.tls = AgencyTls("police");
  REQUIRE(police.Connect(broker.port(), o).ok());
  REQUIRE(police.SendHello());
  const int kReport = v1::Message::kIncidentReportFieldNumber;
  auto publish = [&](uint64_t rid, const std::string& message) {
    const std::string body = Field(v1::Frame::kPublishFieldNumber, 2,
                                   Field(v1::Publish::kRequestIdFieldNumber, 0, Varint(rid)) +
                                       Field(v1::Publish::kMessageFieldNumber, 2, message));
    REQUIRE(police.SendBytes(FrameHeader(static_cast<uint32_t>(body.size())) + body));
    for (;;) {
      auto f = police.ReadFrame();
      REQUIRE(f);
      if (f->has_error()) FAIL(f->error().message());
      if (f->has_publish_ack()) {
        CHECK(f->publish_ack().request_id() == rid);
        REQUIRE(f->publish_ack().outcomes_size() == 1);
        CHECK(f->publish_ack().outcomes(0).outcome() == v1::OUTCOME_QUEUED);
        return f->publish_ack().duplicate();
      }
    }
  };
  std::vector<std::string> serialized_bodies;
  uint64_t rid = 0;
  for (int first_as_serialized = 0; first_as_serialized < 2; ++first_as_serialized) {
    const v1::Message m = IncidentReport({"school"});
    const std::string body = m.incident_report().SerializeAsString();
    const std::string envelope = Field(v1::Message::kEnvelopeFieldNumber, 2, m.envelope().SerializeAsString());
    const std::string as_serialized = envelope + Field(kReport, 2, body);
    REQUIRE(as_serialized == m.SerializeAsString());
    // An empty string written out (the serializer leaves it out), and a
    // field number the schema does not have (the parser keeps it aside).
    const std::string empty_reference =
        envelope + Field(kReport, 2, body + Field(v1::IncidentReport::kPoliceReferenceFieldNumber, 2, ""));
    const std::string unknown_field = envelope + Field(kReport, 2, body + Field(999, 0, Varint(1)));
    if (first_as_serialized) {
      CHECK_FALSE(publish(++rid, as_serialized));
      CHECK(publish(++rid, empty_reference));
      CHECK(publish(++rid, unknown_field));
    } else {
      CHECK_FALSE(publish(++rid, empty_reference));
      CHECK(publish(++rid, as_serialized));
      CHECK(publish(++rid, unknown_field));
    }
    serialized_bodies.push_back(Field(kReport, 2, body));
  }
  // Each once, with the body as the serializer writes it.
  RawClient school;
  REQUIRE(ConnectReceiving(school, broker.port(), "school", 16));
  std::vector<std::string> delivered;
  while (auto f = school.ReadFrameBody(std::chrono::milliseconds(delivered.size() < 2 ? 5000 : 500))) {
    v1::Frame frame;
    REQUIRE(frame.ParseFromString(*f));  // unknown fields kept, if any came
    if (!frame.has_deliver()) continue;
    delivered.push_back(*f);
    const auto& report = frame.deliver().message().incident_report();
    CHECK(report.GetReflection()->GetUnknownFields(report).empty());
    REQUIRE(SendAck(school, frame.deliver()));
  }
  REQUIRE(delivered.size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(delivered[i].find(serialized_bodies[i]) != std::string::npos);
  }
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
  const auto events = AuditEvents(broker, m.envelope().message_id());
  CHECK(Has(events, "queued:permit:school"));
  CHECK(Has(events, "not_delivered:deny:school"));
}

// A copy sent, never acknowledged and given back (the session ended), then
// refused at its next delivery because the policy changed meanwhile: the
// recipient may have it (an agent stores a message before acknowledging
// it). The sender's report said only "no longer permits sharing" and the
// record "not_delivered", so the sender believed it was never shared.
TEST_CASE("a copy sent before a policy change and never acknowledged is refused as one the recipient may have",
          "[queue][policy][reload]") {
  TestBroker broker;
  Receiver police_inbox(broker.port(), "police");
  auto police = Connect(broker.port(), "police");
  v1::Message m = IncidentReport({"school"});
  REQUIRE(police->Publish(m).AllAccepted());
  RawClient first;
  REQUIRE(ConnectReceiving(first, broker.port(), "school", 4));
  REQUIRE(ReadDeliver(first));
  // While the copy is unacknowledged, the network forbids sharing with school.
  std::string policy = *ReadFile(broker.dir() + "/policy.yaml", 1 << 20);
  policy += "  - id: school-paused\n    effect: forbid\n    from: [\"*\"]\n    to: [school]\n";
  REQUIRE(WriteFileAtomic(broker.dir() + "/policy.yaml", policy).ok());
  REQUIRE(broker.server().Reload().ok());
  // school's next session gets the copy back first; it is refused instead.
  RawClient second;
  REQUIRE(ConnectReceiving(second, broker.port(), "school", 4, /*take_over=*/true));
  REQUIRE(first.WaitClosed());
  std::vector<v1::Deliver> got;
  REQUIRE(PingPong(second, 1, &got));
  CHECK(got.empty());
  REQUIRE(WaitFor([&] { return !police_inbox.Reports().empty(); }));
  const auto report = police_inbox.Reports().at(0);
  CHECK(report.outcome == "refused");
  CHECK(report.reason == "not_permitted");
  CHECK(report.detail ==
        "the network's policy no longer permits sharing this message with 'school'; it was sent 1 "
        "time and never acknowledged before, so the recipient may have it");
  std::vector<std::string> details;
  for (const auto& leaf : AuditColumn(broker, m.envelope().message_id(), "leaf")) {
    auto r = audit::DecodeLeaf(leaf);
    REQUIRE(r.ok());
    if (r->event == "not_delivered") details.push_back(r->detail);
  }
  REQUIRE(details.size() == 1);
  CHECK(details[0].find("re-checked at delivery: ") == 0);
  CHECK(details[0].find("; attempts=1; sent but never acknowledged: the recipient may have it") != std::string::npos);
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
  const auto events = AuditEvents(broker, m.envelope().message_id());
  CHECK(Has(events, "recalled:recalled:health"));
  CHECK(Has(events, "recalled:recall_notice:school"));
  CHECK(Has(events, "recall_notice_delivered:delivered:school"));
}

TEST_CASE("a copy acknowledged after its recall gets a notice with the sender's reason and its own record",
          "[queue][recall]") {
  TestBroker broker;
  auto police = Connect(broker.port(), "police");
  v1::Message m = IncidentReport({"school"});
  const std::string id = m.envelope().message_id();
  REQUIRE(police->Publish(m).AllAccepted());
  RawClient school;
  REQUIRE(ConnectReceiving(school, broker.port(), "school", 4));
  auto d = ReadDeliver(school);
  REQUIRE(d);
  // Recalled while school holds it unacknowledged: neither withdrawn nor
  // notified yet; it is settled when school acknowledges.
  auto r = police->Recall(id, "sent to the wrong agency");
  REQUIRE(r.status.ok());
  CHECK(r.withdrawn.empty());
  CHECK(r.notified.empty());
  REQUIRE(SendAck(school, *d));
  auto notice = ReadDeliver(school);
  REQUIRE(notice);
  REQUIRE(notice->has_recall());
  CHECK(notice->recall().message_id() == id);
  CHECK(notice->recall().reason() == "sent to the wrong agency");
  REQUIRE(SendAck(school, *notice));
  REQUIRE(WaitFor([&] { return Has(AuditEvents(broker, id), "recall_notice_delivered:delivered:school"); }));
  // The recall is on record for school, by police, as for a recipient that
  // had the message before the recall.
  const auto rows = AuditColumn(broker, id, "event || ':' || decision || ':' || recipient || ':' || actor");
  CHECK(Has(rows, "delivered:delivered:school:school"));
  CHECK(Has(rows, "recalled:recall_notice:school:police"));
}

// A copy sent but never acknowledged may be with its recipient all the same:
// the agent stores a message before it acknowledges it, and the connection
// can drop in between. Before, such a copy recalled was only withdrawn
// ("never delivered"), and the recipient, holding the message, never got a
// recall notice.
TEST_CASE("a recalled copy that was sent but not acknowledged is withdrawn and its recipient still gets a notice",
          "[queue][recall]") {
  TestBroker broker;
  Receiver police_inbox(broker.port(), "police");
  auto police = client::Client::Connect(Reporting(broker.port(), "police"));
  REQUIRE(police.ok());
  const size_t sessions = broker.server().counters().sessions;
  // Recalled once the copy is back in the queue (its session ended without
  // an acknowledgement): withdrawn there.
  v1::Message waiting = IncidentReport({"school"});
  const std::string waiting_id = waiting.envelope().message_id();
  REQUIRE((*police)->Publish(waiting).AllAccepted());
  {
    RawClient school;
    REQUIRE(ConnectReceiving(school, broker.port(), "school", 4));
    auto d = ReadDeliver(school);
    REQUIRE(d);
    REQUIRE(d->message().envelope().message_id() == waiting_id);
    school.Close();
  }
  REQUIRE(WaitFor([&] { return broker.server().counters().sessions == sessions; }));
  auto r = (*police)->Recall(waiting_id, "sent to the wrong agency");
  REQUIRE(r.status.ok());
  CHECK(r.withdrawn == std::vector<std::string>{"school"});
  CHECK(r.notified == std::vector<std::string>{"school"});
  // Recalled while in flight; the session then ends without an
  // acknowledgement, and the copy is settled at its next send.
  v1::Message in_flight = IncidentReport({"school"});
  const std::string in_flight_id = in_flight.envelope().message_id();
  REQUIRE((*police)->Publish(in_flight).AllAccepted());
  {
    RawClient school;
    REQUIRE(ConnectReceiving(school, broker.port(), "school", 4));
    auto d = ReadDeliver(school);
    if (d && d->has_recall()) d = ReadDeliver(school);  // the first message's notice, left unacknowledged
    REQUIRE(d);
    REQUIRE(d->message().envelope().message_id() == in_flight_id);
    auto again = (*police)->Recall(in_flight_id, "also the wrong agency");
    REQUIRE(again.status.ok());
    CHECK(again.withdrawn.empty());
    CHECK(again.notified.empty());
    school.Close();
  }
  REQUIRE(WaitFor([&] { return broker.server().counters().sessions == sessions; }));
  // school, back, gets neither message again, and a notice for each.
  Receiver school(broker.port(), "school");
  REQUIRE(WaitFor([&] { return school.Recalls().size() == 2; }));
  std::map<std::string, std::string> reasons;
  for (const auto& n : school.Recalls()) reasons[n.message_id] = n.reason;
  CHECK(reasons == std::map<std::string, std::string>{{waiting_id, "sent to the wrong agency"},
                                                      {in_flight_id, "also the wrong agency"}});
  REQUIRE(WaitFor([&] { return police_inbox.Reports().size() == 2; }));
  for (const auto& rep : police_inbox.Reports()) CHECK(rep.outcome == "recalled");
  CHECK(school.count() == 0);
  for (const auto& id : {waiting_id, in_flight_id}) {
    INFO(id);
    std::vector<std::string> events;
    REQUIRE(WaitFor([&] {
      events = AuditEvents(broker, id);
      return Has(events, "recall_notice_delivered:delivered:school");
    }));
    CHECK(std::count(events.begin(), events.end(), "recalled:recalled:school") == 1);
    CHECK(std::count(events.begin(), events.end(), "recalled:recall_notice:school") == 1);
    CHECK_FALSE(Has(events, "delivered:delivered:school"));
  }
}

TEST_CASE("a recall that meets the acknowledgement of the copy it concerns still reaches the recipient",
          "[queue][recall]") {
  // The sender recalls each message just as the recipient acknowledges it:
  // the recall either finds the acknowledgement (and queues a notice) or
  // comes first (and the acknowledgement queues the notice), never neither.
  TestBroker broker;
  constexpr int kMessages = 100;
  auto police = Connect(broker.port(), "police");
  std::set<std::string> ids;
  for (int i = 0; i < kMessages; ++i) {
    v1::Message m = IncidentReport({"school"});
    ids.insert(m.envelope().message_id());
    REQUIRE(police->Publish(m).AllAccepted());
  }
  RawClient recaller;
  RawClient::Options o;
  o.tls = AgencyTls("police");
  REQUIRE(recaller.Connect(broker.port(), o).ok());
  REQUIRE(recaller.SendHello());
  RawClient school;
  REQUIRE(ConnectReceiving(school, broker.port(), "school", 1));
  std::set<std::string> delivered, noticed;
  uint64_t rid = 0;
  while (noticed.size() < ids.size()) {
    auto d = ReadDeliver(school, std::chrono::seconds(10));
    if (!d) break;
    if (d->has_recall()) {
      noticed.insert(d->recall().message_id());
    } else {
      const std::string id = d->message().envelope().message_id();
      delivered.insert(id);
      v1::Frame recall;
      recall.mutable_recall()->set_request_id(++rid);
      recall.mutable_recall()->set_message_id(id);
      recall.mutable_recall()->set_reason("crossed with the acknowledgement");
      REQUIRE(recaller.SendFrame(recall));
    }
    REQUIRE(SendAck(school, *d));
  }
  CHECK(delivered == ids);
  CHECK(noticed.size() == ids.size());
  // One notice each, on record once, whichever way the race went.
  int recorded_once = 0;
  for (const auto& id : ids) {
    const auto events = AuditEvents(broker, id);
    recorded_once += std::count(events.begin(), events.end(), "recalled:recall_notice:school") == 1;
  }
  CHECK(recorded_once == kMessages);
}

TEST_CASE("the recall of a message every recipient has is recorded with the message's case", "[queue][recall]") {
  TestBroker broker;
  auto police = Connect(broker.port(), "police");
  Receiver school(broker.port(), "school");
  v1::Message m = IncidentReport({"school"});
  m.mutable_envelope()->set_case_id("CASE-RECALL-7");
  const std::string id = m.envelope().message_id();
  REQUIRE(police->Publish(m).AllAccepted());
  REQUIRE(school.WaitCount(1));
  // Acknowledged and applied: the message has left the queue, and the
  // recall finds it only in the store.
  REQUIRE(WaitFor([&] { return Has(AuditEvents(broker, id), "delivered:delivered:school"); }));
  auto r = police->Recall(id, "the wrong case");
  REQUIRE(r.status.ok());
  CHECK(r.notified == std::vector<std::string>{"school"});
  REQUIRE(WaitFor([&] { return Has(AuditEvents(broker, id), "recalled:recall_notice:school"); }));
  const auto rows = AuditColumn(broker, id, "event || ':' || recipient || ':' || case_id");
  CHECK(Has(rows, "queued:school:CASE-RECALL-7"));
  CHECK(Has(rows, "recalled:school:CASE-RECALL-7"));
}

// Publish stores a message id in canonical form whatever form it came in
// (upper case too); a recall took the id as it came and so found no message
// for an id in upper case (unknown_message).
TEST_CASE("a recall accepts the message id in any form publish accepts and audits the canonical id",
          "[queue][recall]") {
  TestBroker broker;
  auto police = Connect(broker.port(), "police");
  Receiver school(broker.port(), "school");
  const std::string id = "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1d";
  const std::string upper = "0190A5C4-8D2E-7B3A-9C1D-2F4E6A8B0C1D";
  const std::string mixed = "0190a5C4-8d2E-7b3A-9c1D-2f4E6a8B0c1D";
  v1::Message m = IncidentReport({"school", "health"});  // health is offline
  m.mutable_envelope()->set_message_id(upper);
  auto published = police->Publish(m);
  REQUIRE(published.AllAccepted());
  CHECK(published.message_id == id);
  REQUIRE(school.WaitCount(1));
  {
    std::lock_guard lock(school.mu);
    CHECK(school.got.at(0).message->envelope().message_id() == id);
  }
  REQUIRE(WaitFor([&] { return Has(AuditEvents(broker, id), "delivered:delivered:school"); }));

  // health's copy waits (the recall finds it in the queue); school has it.
  auto r = police->Recall(upper, "sent to the wrong agencies");
  INFO(r.status.message());
  REQUIRE(r.status.ok());
  CHECK(r.message_id == id);
  CHECK(r.withdrawn == std::vector<std::string>{"health"});
  CHECK(r.notified == std::vector<std::string>{"school"});
  REQUIRE(WaitFor([&] { return school.Recalls().size() == 1; }));
  CHECK(school.Recalls().at(0).message_id == id);
  // The same message in another form: recalled before, nothing changes.
  auto again = police->Recall(mixed, "again");
  REQUIRE(again.status.ok());
  CHECK(again.message_id == id);
  CHECK(again.withdrawn.empty());
  CHECK(again.notified.empty());
  // What publish would refuse as a message id is a malformed recall.
  for (const std::string& bad : {std::string("not-a-message-id"), id + "0", "{" + id.substr(1) + "}"}) {
    auto refused = police->Recall(bad, "");
    CHECK(refused.error_code == "invalid_message");
  }
  CHECK(police->Recall(NewUuid(), "").error_code == "unknown_message");

  REQUIRE(WaitFor([&] { return Has(AuditEvents(broker, id), "recall_notice_delivered:delivered:school"); }));
  const auto events = AuditEvents(broker, id);
  CHECK(Has(events, "recalled:recalled:health"));
  CHECK(Has(events, "recalled:recall_notice:school"));
  // Every record of it carries the canonical id, none the forms it was
  // published or recalled under.
  CHECK(AuditColumn(broker, upper, "event").empty());
  CHECK(AuditColumn(broker, mixed, "event").empty());
}

// Publishing is idempotent, but a full queue passes: a publish that reached
// nobody because a queue was full was remembered, and its retry after the
// queue drained got queue_full again, for ever.
TEST_CASE("a publish refused only because a queue was full is not remembered: its retry is decided afresh",
          "[queue][backlog]") {
  broker::Limits limits;
  limits.max_backlog = 1;
  TestBroker broker(limits);
  auto police = Connect(broker.port(), "police");
  // school is offline: one message fills its queue.
  v1::Message first = IncidentReport({"school"});
  REQUIRE(police->Publish(first).AllAccepted());
  v1::Message m = IncidentReport({"school", "nobody"});
  const std::string id = m.envelope().message_id();
  auto refused = police->Publish(m);
  REQUIRE(refused.status.ok());
  REQUIRE(refused.outcomes.size() == 2);
  CHECK(refused.outcomes[0].reason == "queue_full");
  CHECK(refused.outcomes[1].reason == "unknown_recipient");
  CHECK_FALSE(refused.duplicate);
  // Nothing of it is kept but the records of the refusal.
  REQUIRE(broker.server().SyncStore().ok());
  const std::string db = broker.dir() + "/data/liaison.db";
  CHECK(QueryInt(db, "SELECT count(*) FROM messages WHERE message_id = '" + id + "'") == 0);
  // A repeat while the queue is still full is decided again, not answered
  // from memory; a repeat of the message the broker has still gets its
  // original outcome, full queue or not.
  auto still = police->Publish(m);
  REQUIRE(still.status.ok());
  CHECK_FALSE(still.duplicate);
  CHECK(still.outcomes.at(0).reason == "queue_full");
  auto first_again = police->Publish(first);
  REQUIRE(first_again.status.ok());
  CHECK(first_again.duplicate);
  CHECK(first_again.AllAccepted());

  // school drains its queue: the retry is queued and delivered, once.
  Receiver school(broker.port(), "school");
  REQUIRE(school.WaitCount(1));
  auto retry = police->Publish(m);
  REQUIRE(retry.status.ok());
  CHECK_FALSE(retry.duplicate);
  REQUIRE(retry.outcomes.size() == 2);
  CHECK(retry.outcomes[0].outcome == "queued");
  CHECK(retry.outcomes[1].reason == "unknown_recipient");
  REQUIRE(school.WaitCount(2));
  // Now it is remembered: a further repeat gets that outcome.
  auto repeat = police->Publish(m);
  REQUIRE(repeat.status.ok());
  CHECK(repeat.duplicate);
  CHECK(repeat.outcomes.at(0).outcome == "queued");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(school.count() == 2);
  {
    std::lock_guard lock(school.mu);
    CHECK(school.got.at(1).message->envelope().message_id() == id);
  }
  // Each decision is on record: two refusals, then the one that queued it.
  const auto events = AuditEvents(broker, id);
  CHECK(std::count(events.begin(), events.end(), "decision:refused:queue_full:school") == 2);
  CHECK(std::count(events.begin(), events.end(), "queued:permit:school") == 1);
}

TEST_CASE("a publish queued for some recipients and refused as queue_full for others keeps that outcome",
          "[queue][backlog]") {
  broker::Limits limits;
  limits.max_backlog = 1;
  TestBroker broker(limits);
  auto police = Connect(broker.port(), "police");
  REQUIRE(police->Publish(IncidentReport({"school"})).AllAccepted());  // school's queue is full
  v1::Message m = IncidentReport({"school", "health"});
  auto mixed = police->Publish(m);
  REQUIRE(mixed.status.ok());
  REQUIRE(mixed.outcomes.size() == 2);
  CHECK(mixed.outcomes[0].outcome == "refused");
  CHECK(mixed.outcomes[0].reason == "queue_full");
  CHECK(mixed.outcomes[1].outcome == "queued");
  // school drains its queue; a repeat still gets the original outcome and
  // queues nothing: health does not get it twice, school not at all.
  Receiver school(broker.port(), "school");
  REQUIRE(school.WaitCount(1));
  auto repeat = police->Publish(m);
  REQUIRE(repeat.status.ok());
  CHECK(repeat.duplicate);
  REQUIRE(repeat.outcomes.size() == 2);
  CHECK(repeat.outcomes[0].reason == "queue_full");
  CHECK(repeat.outcomes[1].outcome == "queued");
  Receiver health(broker.port(), "health");
  REQUIRE(health.WaitCount(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(health.count() == 1);
  CHECK(school.count() == 1);
  const auto events = AuditEvents(broker, m.envelope().message_id());
  CHECK(std::count(events.begin(), events.end(), "decision:refused:queue_full:school") == 1);
  CHECK(std::count(events.begin(), events.end(), "queued:permit:health") == 1);
}

TEST_CASE("a message that expires before its recipient connects is not delivered, and the sender is told",
          "[queue][expiry]") {
  TestBroker broker;
  Receiver police_inbox(broker.port(), "police");
  auto police = Connect(broker.port(), "police");  // no reports asked: expiry is reported anyway
  v1::Message m = IncidentReport({"school"});
  ExpireIn(&m, 1500);
  REQUIRE(police->Publish(m).AllAccepted());
  REQUIRE(WaitFor([&] { return !police_inbox.Reports().empty(); }, std::chrono::seconds(10)));
  const auto report = police_inbox.Reports().at(0);
  CHECK(report.outcome == "expired");
  CHECK(report.reason == "expired");
  CHECK(report.recipient == "school");
  CHECK(report.detail == "not delivered before the message expired");
  Receiver school(broker.port(), "school");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(school.count() == 0);
  CHECK(Has(AuditEvents(broker, m.envelope().message_id()), "expired:expired:school"));
}

TEST_CASE("a copy given back after its message expired is not sent again", "[queue][expiry]") {
  TestBroker broker;
  Receiver police_inbox(broker.port(), "police");
  auto police = Connect(broker.port(), "police");
  v1::Message m = IncidentReport({"school"});
  const int64_t expires_ms = ExpireIn(&m, 1000);
  REQUIRE(police->Publish(m).AllAccepted());
  // school has it in flight, unacknowledged, while it expires.
  RawClient first;
  REQUIRE(ConnectReceiving(first, broker.port(), "school", 4));
  REQUIRE(ReadDeliver(first));
  while (WallMs() <= expires_ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // A new session takes over: the copy comes back to the queue and the new
  // session's pump finds it there at once, before the next expiry pass.
  RawClient second;
  REQUIRE(ConnectReceiving(second, broker.port(), "school", 4, /*take_over=*/true));
  REQUIRE(first.WaitClosed());
  std::vector<v1::Deliver> got;
  REQUIRE(PingPong(second, 1, &got));
  CHECK(got.empty());
  // It expired instead: audited, and the sender is told, not that it was
  // not delivered: school was sent it once and may have it.
  REQUIRE(WaitFor([&] { return !police_inbox.Reports().empty(); }));
  const auto report = police_inbox.Reports().at(0);
  CHECK(report.outcome == "expired");
  CHECK(report.detail == "expired before the recipient acknowledged it: sent 1 time and never acknowledged, so the "
                         "recipient may have it");
  CHECK(Has(AuditEvents(broker, m.envelope().message_id()), "expired:expired:school"));
  std::vector<std::string> details;
  for (const auto& leaf : AuditColumn(broker, m.envelope().message_id(), "leaf")) {
    auto r = audit::DecodeLeaf(leaf);
    REQUIRE(r.ok());
    if (r->event == "expired") details.push_back(r->detail);
  }
  CHECK(details == std::vector<std::string>{"attempts=1; sent but never acknowledged: the recipient may have it"});
}

// The agent sends again, under the same id, what the broker accepted but
// whose PublishAck it never saw (a crash, a lost connection); by then the
// message may have expired. Before, such a repeat was refused as
// invalid_message ("expiresAt is in the past"), and the agent filed as
// failed a message that had been queued, and perhaps delivered.
TEST_CASE("a repeat of an accepted message after its expiry gets the original outcome", "[queue][expiry]") {
  TestBroker broker;
  auto police_inbox = std::make_unique<Receiver>(broker.port(), "police");
  auto police = Connect(broker.port(), "police");
  v1::Message m = IncidentReport({"school", "nobody"});  // school is offline; nobody is refused
  ExpireIn(&m, 1500);
  const auto first = police->Publish(m);
  REQUIRE(first.status.ok());
  REQUIRE(first.outcomes.size() == 2);
  CHECK(first.outcomes.at(0).outcome == "queued");
  CHECK(first.outcomes.at(1).outcome == "refused");
  // It expires (school's copy with it, and the body is deleted).
  REQUIRE(WaitFor([&] { return !police_inbox->Reports().empty(); }));
  CHECK(police_inbox->Reports().at(0).outcome == "expired");
  auto same_as_first = [&](const client::PublishResult& r) {
    INFO(r.status.message());
    REQUIRE(r.status.ok());
    CHECK(r.duplicate);
    CHECK(r.message_id == first.message_id);
    REQUIRE(r.outcomes.size() == first.outcomes.size());
    for (size_t i = 0; i < first.outcomes.size(); ++i) {
      CHECK(r.outcomes[i].recipient == first.outcomes[i].recipient);
      CHECK(r.outcomes[i].outcome == first.outcomes[i].outcome);
      CHECK(r.outcomes[i].reason == first.outcomes[i].reason);
    }
    CHECK(r.checkpoint.tree_size > 0);
  };
  same_as_first(police->Publish(m));
  // Other content under the same id, or an expired message never published,
  // is still refused.
  v1::Message other = m;
  other.mutable_incident_report()->set_description("something else entirely");
  CHECK_FALSE(police->Publish(other).status.ok());
  v1::Message fresh = m;
  fresh.mutable_envelope()->set_message_id(NewUuid());
  const auto never = police->Publish(fresh);
  CHECK(never.error_code == "invalid_message");
  // Another agency's message under this id is not police's to repeat.
  auto social = Connect(broker.port(), "social");
  CHECK(social->Publish(m).error_code == "invalid_message");
  // After a restart as before.
  police.reset();
  social.reset();
  police_inbox.reset();
  broker.Restart();
  police = Connect(broker.port(), "police");
  same_as_first(police->Publish(m));
  // Nothing was queued again.
  const auto events = AuditEvents(broker, m.envelope().message_id());
  CHECK(Has(events, "expired:expired:school"));
  CHECK(std::count(events.begin(), events.end(), "queued:permit:school") == 1);
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

TEST_CASE("an agency's own delivery reports never fill its queue against messages for it", "[queue][backlog][reports]") {
  broker::Limits limits;
  limits.max_backlog = 2;
  TestBroker broker(limits);
  // police asks for reports but does not receive (a CLI that only sends):
  // its reports wait for it, more of them than max_backlog.
  auto police = client::Client::Connect(Reporting(broker.port(), "police"));
  REQUIRE(police.ok());
  {
    Receiver school(broker.port(), "school");
    for (int i = 0; i < 4; ++i) REQUIRE((*police)->Publish(IncidentReport({"school"})).AllAccepted());
    REQUIRE(school.WaitCount(4));
  }
  REQUIRE(broker.server().SyncStore().ok());
  const std::string db = broker.dir() + "/data/liaison.db";
  REQUIRE(WaitFor([&] { return QueryInt(db, "SELECT count(*) FROM deliveries WHERE kind = 3 AND state = 0") == 4; }));
  // Messages for police are still taken, up to max_backlog of them.
  auto school = Connect(broker.port(), "school");
  const v1::Message first = IncidentReport({"police"}), second = IncidentReport({"police"});
  CHECK(school->Publish(first).AllAccepted());
  CHECK(school->Publish(second).AllAccepted());
  auto third = school->Publish(IncidentReport({"police"}));
  REQUIRE(third.status.ok());
  REQUIRE(third.outcomes.size() == 1);
  CHECK(third.outcomes[0].reason == "queue_full");
  // police connects: its reports and both messages arrive.
  Receiver police_inbox(broker.port(), "police");
  REQUIRE(police_inbox.WaitCount(2));
  REQUIRE(WaitFor([&] { return police_inbox.Reports().size() == 4; }));
}

TEST_CASE("a delivery report not fetched within the maximum retention expires and is recorded but a recall notice waits",
          "[queue][reports][expiry]") {
  broker::Limits limits;
  limits.max_retention = std::chrono::milliseconds(5000);  // room for slow (sanitizer) builds to deliver first
  TestBroker broker(limits);
  auto police = client::Client::Connect(Reporting(broker.port(), "police"));
  REQUIRE(police.ok());
  v1::Message m = IncidentReport({"school"});
  {
    Receiver school(broker.port(), "school");
    REQUIRE((*police)->Publish(m).AllAccepted());
    REQUIRE(school.WaitCount(1));
  }
  const std::string id = m.envelope().message_id();
  REQUIRE(WaitFor([&] { return Has(AuditEvents(broker, id), "delivered:delivered:school"); }));
  // school, offline now, has the message: police recalls it, and school's
  // notice waits. The delivery report waits for police, which does not
  // receive, across a restart.
  auto recall = (*police)->Recall(id, "sent in error");
  REQUIRE(recall.status.ok());
  CHECK(recall.notified == std::vector<std::string>{"school"});
  (*police).reset();
  const int64_t restarted_ms = WallMs();
  broker.Restart();
  // After the retention, the report goes, with a record that says when it
  // was made (before the restart: its own time, not the start's).
  REQUIRE(WaitFor([&] { return Has(AuditEvents(broker, id), "report_expired:expired:police"); },
                  std::chrono::seconds(15)));
  std::vector<std::string> details;
  for (const std::string& leaf : AuditColumn(broker, id, "leaf")) {
    auto r = audit::DecodeLeaf(leaf);
    REQUIRE(r.ok());
    if (r->event == "report_expired") details.push_back(r->detail);
  }
  REQUIRE(details.size() == 1);
  const auto it = details.begin();
  CHECK(it->find("a delivery report (delivered") == 0);
  CHECK(it->find("for 'school'), made ") != std::string::npos);
  CHECK(it->find("was not fetched by the sender within limits.max_retention_s") != std::string::npos);
  const size_t at = it->find("made ") + 5;
  google::protobuf::Timestamp made;
  REQUIRE(google::protobuf::util::TimeUtil::FromString(it->substr(at, it->find(',', at) - at), &made));
  CHECK(google::protobuf::util::TimeUtil::TimestampToMilliseconds(made) < restarted_ms);
  // police connecting now gets no report; school, later still, its notice.
  Receiver police_inbox(broker.port(), "police");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  CHECK(police_inbox.Reports().empty());
  Receiver school(broker.port(), "school");
  REQUIRE(WaitFor([&] { return school.Recalls().size() == 1; }));
  CHECK(school.Recalls().at(0).message_id == id);
  const std::string db = broker.dir() + "/data/liaison.db";
  REQUIRE(broker.server().SyncStore().ok());
  CHECK(QueryInt(db, "SELECT count(*) FROM deliveries WHERE kind = 3 AND state = 0") == 0);
}

namespace {

// How many `delivered` records the audit log holds per message id.
std::map<std::string, int> DeliveredCounts(const std::string& dir) {
  std::map<std::string, int> out;
  sqlite3* db = nullptr;
  sqlite3_open_v2((dir + "/data/liaison.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "SELECT message_id, COUNT(*) FROM audit_log WHERE event = 'delivered' GROUP BY message_id",
                     -1, &st, nullptr);
  while (sqlite3_step(st) == SQLITE_ROW) {
    out[reinterpret_cast<const char*>(sqlite3_column_text(st, 0))] = sqlite3_column_int(st, 1);
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

}  // namespace

TEST_CASE("a reconnect storm loses nothing, records each delivery once and leaks no connection slot",
          "[queue][storm]") {
  broker::Limits l;
  l.max_connections_per_agency = 4;
  // Over a thousand connections in 3 s, all from 127.0.0.1: a storm of
  // many agencies' programs, which the handshake rate per source would
  // otherwise cut short.
  l.handshake_rate_per_source = 0;
  TestBroker broker(l);
  std::mutex mu;
  std::set<std::string> published;                 // the sender saw `queued`
  std::map<std::string, uint32_t> highest_attempt;  // message id -> highest attempt delivered so far
  int attempt_not_increasing = 0;                   // a redelivery must carry a higher attempt
  auto saw = [&](const std::string& id, uint32_t attempt) {
    std::lock_guard lock(mu);
    auto [it, fresh] = highest_attempt.emplace(id, attempt);
    if (!fresh) {
      if (attempt <= it->second) attempt_not_increasing++;
      it->second = std::max(it->second, attempt);
    }
  };
  std::atomic<bool> stop{false};
  std::atomic<int> receiver_sessions{0}, refused_connects{0};
  std::vector<std::thread> threads;
  // Two publishers connect, publish a few messages and hang up, over and over.
  for (int p = 0; p < 2; ++p) {
    threads.emplace_back([&] {
      while (!stop) {
        auto c = client::Client::Connect(Options(broker.port(), "police"));
        if (!c.ok()) {  // e.g. too_many_connections while the storm rages
          refused_connects++;
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
          continue;
        }
        for (int i = 0; i < 5; ++i) {
          v1::Message m = IncidentReport({"school"});
          auto r = (*c)->Publish(m);
          if (r.status.ok() && r.AllAccepted()) {
            std::lock_guard lock(mu);
            published.insert(m.envelope().message_id());
          }
        }
        (*c)->Close();
      }
    });
  }
  // Four receivers for the same agency take each other's receiving session
  // over, read a few deliveries, acknowledge some, and drop the connection
  // without a TLS close.
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1234 + t);
      while (!stop) {
        RawClient raw;
        if (!ConnectReceiving(raw, broker.port(), "school", 16)) {
          refused_connects++;
          continue;
        }
        receiver_sessions++;
        const int reads = static_cast<int>(rng() % 24);
        for (int i = 0; i < reads; ++i) {
          auto f = raw.ReadFrame(std::chrono::milliseconds(30));
          if (!f) break;
          if (!f->has_deliver() || !f->deliver().has_message()) continue;
          saw(f->deliver().message().envelope().message_id(), f->deliver().attempt());
          if (rng() % 2 == 0) {
            v1::Frame ack;
            ack.mutable_delivery_ack()->set_delivery_id(f->deliver().delivery_id());
            ack.mutable_delivery_ack()->set_attempt(f->deliver().attempt());
            raw.SendFrame(ack);
          }
        }
        raw.Close();  // abrupt: no close_notify, unacknowledged deliveries in flight
      }
    });
  }
  // At least 3 s of storm, and as long as it takes (up to a minute: a
  // sanitizer build on a loaded machine is slow) for it to reach the size
  // required below.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  WaitFor(
      [&] {
        std::lock_guard lock(mu);
        return published.size() >= 50 && receiver_sessions >= 20;
      },
      std::chrono::seconds(57));
  stop = true;
  for (auto& th : threads) th.join();
  INFO(published.size() << " published, " << receiver_sessions << " receiving sessions, " << refused_connects
                        << " refused connects");
  REQUIRE(published.size() >= 50);
  REQUIRE(receiver_sessions >= 20);

  // A calm receiver collects what the storm left; nothing acknowledged to the
  // publishers is missing.
  Receiver school(broker.port(), "school", true, 64);
  auto all_arrived = [&] {
    std::set<std::string> have;
    {
      std::lock_guard lock(mu);
      for (const auto& [id, a] : highest_attempt) have.insert(id);
    }
    std::lock_guard lock(school.mu);
    for (const auto& d : school.got) have.insert(d.message->envelope().message_id());
    return std::includes(have.begin(), have.end(), published.begin(), published.end());
  };
  CHECK(WaitFor(all_arrived, std::chrono::seconds(20)));
  {
    std::lock_guard lock(school.mu);
    for (const auto& d : school.got) saw(d.message->envelope().message_id(), d.attempt);
  }
  CHECK(attempt_not_increasing == 0);
  // Exactly one `delivered` record per message: an acknowledgement that was
  // committed settles the copy for good, one lost with its connection is
  // redelivered.
  std::map<std::string, int> delivered;
  CHECK(WaitFor(
      [&] {
        delivered = DeliveredCounts(broker.dir());
        size_t n = 0;
        for (const auto& id : published) n += delivered.count(id);
        return n == published.size();
      },
      std::chrono::seconds(20)));
  int twice = 0;
  for (const auto& [id, n] : delivered) twice += n > 1;
  CHECK(twice == 0);
  // Every connection slot came back: an agency can again hold its maximum.
  std::vector<std::unique_ptr<client::Client>> held;
  CHECK(WaitFor(
      [&] {
        auto c = client::Client::Connect(Options(broker.port(), "police"));
        if (c.ok()) held.push_back(std::move(c).value());
        return held.size() == l.max_connections_per_agency;
      },
      std::chrono::seconds(10)));
}

TEST_CASE("credit bounds the deliveries a recipient has not acknowledged, and each acknowledgement frees one",
          "[queue][credit]") {
  TestBroker broker;
  auto police = Connect(broker.port(), "police");
  for (int i = 0; i < 10; ++i) REQUIRE(police->Publish(IncidentReport({"school"})).AllAccepted());
  RawClient raw;
  REQUIRE(ConnectReceiving(raw, broker.port(), "school", 3));
  std::vector<v1::Deliver> got;
  // Reads frames for `wait`; keeps the deliveries.
  auto read_for = [&](std::chrono::milliseconds wait) {
    const auto until = std::chrono::steady_clock::now() + wait;
    while (std::chrono::steady_clock::now() < until) {
      auto f = raw.ReadFrame(std::chrono::milliseconds(50));
      if (f && f->has_deliver()) got.push_back(f->deliver());
    }
  };
  read_for(std::chrono::milliseconds(500));
  REQUIRE(got.size() == 3);  // no more than the credit, however long it waits
  auto ack = [&](const v1::Deliver& d) {
    v1::Frame a;
    a.mutable_delivery_ack()->set_delivery_id(d.delivery_id());
    a.mutable_delivery_ack()->set_attempt(d.attempt());
    REQUIRE(raw.SendFrame(a));
  };
  ack(got[0]);
  read_for(std::chrono::milliseconds(500));
  CHECK(got.size() == 4);  // one acknowledged: one more, and only one
  ack(got[1]);
  ack(got[2]);
  ack(got[3]);
  read_for(std::chrono::milliseconds(500));
  CHECK(got.size() == 7);
  for (size_t i = 4; i < got.size(); ++i) ack(got[i]);
  read_for(std::chrono::milliseconds(500));
  REQUIRE(got.size() == 10);
  for (size_t i = 7; i < got.size(); ++i) ack(got[i]);
  std::set<uint64_t> ids;
  for (const auto& d : got) ids.insert(d.delivery_id());
  CHECK(ids.size() == 10);
  raw.Close();
}

TEST_CASE("a recall and a forward wait for the database without holding up other agencies",
          "[queue][recall][forward]") {
  // One I/O thread: a handler that blocked it would stall every session.
  TestBroker broker({}, 1);
  Receiver school_inbox(broker.port(), "school");
  auto police = Connect(broker.port(), "police");
  auto school = Connect(broker.port(), "school");
  auto social = Connect(broker.port(), "social");
  v1::Message original = IncidentReport({"school"});
  original.mutable_envelope()->set_tlp(v1::TLP_GREEN);  // shareable onwards
  REQUIRE(police->Publish(original).AllAccepted());
  REQUIRE(school_inbox.WaitCount(1));
  // school has it once its acknowledgement is committed.
  REQUIRE(WaitFor([&] { return Has(AuditEvents(broker, original.envelope().message_id()), "delivered:delivered:school"); }));
  v1::Message waiting = IncidentReport({"health"});  // health is offline
  REQUIRE(police->Publish(waiting).AllAccepted());

  // Another process holds SQLite's write lock (as a backup tool or a stuck
  // disk might): the broker's applier cannot write what is committed next.
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2((broker.dir() + "/data/liaison.db").c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) ==
          SQLITE_OK);
  REQUIRE(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
  REQUIRE(police->Publish(IncidentReport({"school"})).AllAccepted());  // in the commit log only

  // police recalls, school forwards the original to social: both read the
  // database, so both wait for the applier.
  std::promise<client::RecallResult> recalled;
  police->Recall(waiting.envelope().message_id(), "sent to the wrong agency",
                 [&](client::RecallResult r) { recalled.set_value(std::move(r)); });
  v1::Message forward = IncidentReport({"social"});
  forward.mutable_envelope()->set_tlp(v1::TLP_GREEN);
  forward.mutable_envelope()->set_forwarded_from(original.envelope().message_id());
  std::promise<client::PublishResult> forwarded;
  school->Publish(forward, [&](client::PublishResult r) { forwarded.set_value(std::move(r)); });
  auto recall_result = recalled.get_future();
  auto forward_result = forwarded.get_future();

  // Meanwhile social, on the same I/O thread, is answered.
  CHECK(social->Publish(IncidentReport({"school"})).AllAccepted());
  CHECK(recall_result.wait_for(std::chrono::milliseconds(300)) == std::future_status::timeout);
  CHECK(forward_result.wait_for(std::chrono::milliseconds(0)) == std::future_status::timeout);

  // The lock goes: the applier writes, and both are answered in full.
  REQUIRE(sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(db);
  REQUIRE(recall_result.wait_for(std::chrono::seconds(20)) == std::future_status::ready);
  const auto r = recall_result.get();
  REQUIRE(r.status.ok());
  CHECK(r.withdrawn == std::vector<std::string>{"health"});
  REQUIRE(forward_result.wait_for(std::chrono::seconds(20)) == std::future_status::ready);
  const auto f = forward_result.get();
  INFO(f.status.ToString() << " " << (f.outcomes.empty() ? "" : f.outcomes[0].reason));
  CHECK(f.AllAccepted());
}

TEST_CASE("a forward is checked against its original at publish and again at delivery", "[queue][forward]") {
  TestBroker broker;
  Receiver school_inbox(broker.port(), "school");
  auto police = Connect(broker.port(), "police");
  auto school = Connect(broker.port(), "school");
  v1::Message original = IncidentReport({"school"});  // AMBER: only its audience may have it
  REQUIRE(police->Publish(original).AllAccepted());
  REQUIRE(school_inbox.WaitCount(1));
  // school has it once its acknowledgement is committed.
  REQUIRE(WaitFor([&] { return Has(AuditEvents(broker, original.envelope().message_id()), "delivered:delivered:school"); }));

  // To an agency outside the original's audience: refused.
  v1::Message wider = IncidentReport({"social"});
  wider.mutable_envelope()->set_forwarded_from(original.envelope().message_id());
  auto refused = school->Publish(wider);
  REQUIRE(refused.status.ok());
  REQUIRE(refused.outcomes.size() == 1);
  CHECK(refused.outcomes[0].outcome == "refused");
  CHECK(refused.outcomes[0].reason == "not_permitted");
  // The audit record says why (its leaf holds the policy's reason).
  auto audited = AuditColumn(broker, wider.envelope().message_id(), "leaf");
  REQUIRE(audited.size() == 1);
  CHECK(audited[0].find("wider audience than its original's TLP allows") != std::string::npos);
  // A forward of a message this broker never saw: refused.
  v1::Message unknown = IncidentReport({"school"});
  unknown.mutable_envelope()->set_forwarded_from(NewUuid());
  auto u = police->Publish(unknown);
  REQUIRE(u.outcomes.size() == 1);
  CHECK(u.outcomes[0].reason == "not_permitted");
  audited = AuditColumn(broker, unknown.envelope().message_id(), "leaf");
  REQUIRE(audited.size() == 1);
  CHECK(audited[0].find("original is unknown to this broker") != std::string::npos);
  // Back to the original's sender (in its audience): queued for police,
  // offline, and delivered when it connects (checked again at delivery).
  v1::Message back = IncidentReport({"police"});
  back.mutable_envelope()->set_forwarded_from(original.envelope().message_id());
  REQUIRE(school->Publish(back).AllAccepted());
  auto police_inbox = std::make_unique<Receiver>(broker.port(), "police");
  REQUIRE(police_inbox->WaitCount(1));
  // Queued before a restart: the check at delivery looks the original up.
  police_inbox.reset();
  v1::Message again = IncidentReport({"police"});
  again.mutable_envelope()->set_forwarded_from(original.envelope().message_id());
  REQUIRE(school->Publish(again).AllAccepted());
  school.reset();
  police.reset();
  broker.Restart();
  Receiver after(broker.port(), "police");
  REQUIRE(after.WaitCount(1));
}

TEST_CASE("acknowledgements read together are each recorded, and a forward right behind them finds its original",
          "[queue][forward][credit]") {
  // The broker commits the DeliveryAcks it reads in one go together (256
  // at most: more than that are two commits); a frame of another kind
  // behind them must still find them committed.
  TestBroker broker;
  auto police = Connect(broker.port(), "police");
  constexpr int kMessages = 300;
  std::vector<std::string> ids;
  for (int i = 0; i < kMessages; ++i) {
    v1::Message m = IncidentReport({"school"});
    m.mutable_envelope()->set_tlp(v1::TLP_GREEN);  // shareable onwards
    ids.push_back(m.envelope().message_id());
    REQUIRE(police->Publish(m).AllAccepted());
  }
  RawClient raw;
  REQUIRE(ConnectReceiving(raw, broker.port(), "school", 512));
  std::vector<v1::Deliver> got;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (got.size() < kMessages && std::chrono::steady_clock::now() < until) {
    auto f = raw.ReadFrame(std::chrono::milliseconds(100));
    if (f && f->has_deliver()) got.push_back(f->deliver());
  }
  REQUIRE(got.size() == kMessages);

  // Every acknowledgement and then the forward, in one TLS record.
  std::string burst;
  for (const auto& d : got) {
    v1::Frame a;
    a.mutable_delivery_ack()->set_delivery_id(d.delivery_id());
    a.mutable_delivery_ack()->set_attempt(d.attempt());
    burst += proto::EncodeFrame(a).value();
  }
  v1::Message forward = IncidentReport({"social"});
  forward.mutable_envelope()->set_tlp(v1::TLP_GREEN);
  forward.mutable_envelope()->set_forwarded_from(got.back().message().envelope().message_id());
  v1::Frame p;
  p.mutable_publish()->set_request_id(7);
  *p.mutable_publish()->mutable_message() = forward;
  burst += proto::EncodeFrame(p).value();
  REQUIRE(raw.SendBytes(burst));

  std::optional<v1::PublishAck> answer;
  const auto answered_by = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!answer && std::chrono::steady_clock::now() < answered_by) {
    auto f = raw.ReadFrame(std::chrono::milliseconds(100));
    if (f && f->has_publish_ack()) answer = f->publish_ack();
    if (f && f->has_error()) FAIL(f->error().message());
  }
  REQUIRE(answer);
  CHECK(answer->request_id() == 7);
  REQUIRE(answer->outcomes_size() == 1);
  INFO(answer->outcomes(0).detail());
  {
    const auto leaf = AuditColumn(broker, forward.envelope().message_id(), "leaf");
    auto decoded = leaf.empty() ? Result<audit::Record>(Status::NotFound("no record")) : audit::DecodeLeaf(leaf[0]);
    INFO((decoded.ok() ? decoded->detail : decoded.status().ToString()));
    CHECK(answer->outcomes(0).outcome() == v1::OUTCOME_QUEUED);
  }

  // Each acknowledgement has its own record, once; none is sent again.
  for (const auto& id : ids) {
    const auto events = AuditEvents(broker, id);
    CHECK(std::count(events.begin(), events.end(), "delivered:delivered:school") == 1);
  }
  CHECK_FALSE(raw.ReadFrame(std::chrono::milliseconds(300)).has_value());
  raw.Close();
}
