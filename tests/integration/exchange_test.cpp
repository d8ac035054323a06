// Sending and receiving between agencies through a real broker.
#include <catch2/catch.hpp>

#include <map>
#include <mutex>
#include <set>

#include "tests/integration/test_support.h"

using namespace liaison;
using namespace liaison::test;


TEST_CASE("an incident report travels from police to school", "[exchange]") {
  TestBroker broker;
  Receiver school(broker.port(), "school");
  auto police = Connect(broker.port(), "police");
  v1::Message m = IncidentReport({"school"});
  auto r = police->Publish(m);
  REQUIRE(r.status.ok());
  REQUIRE(r.outcomes.size() == 1);
  CHECK(r.outcomes[0].recipient == "school");
  CHECK(r.outcomes[0].outcome == "queued");
  CHECK(r.message_id == m.envelope().message_id());
  REQUIRE(school.WaitCount(1));
  const v1::Message& got = *school.got[0].message;
  CHECK(got.envelope().sender() == "police");
  CHECK(got.envelope().has_received_at());
  CHECK(got.incident_report().description() == m.incident_report().description());
  CHECK(got.incident_report().bias_motivations(0) == v1::BIAS_ANTISEMITIC);
  CHECK(school.got[0].attempt == 1);
}

TEST_CASE("a case referral reaches several recipients, the others are refused with reasons", "[exchange]") {
  TestBroker broker;
  Receiver school(broker.port(), "school");
  Receiver social(broker.port(), "social");
  auto police = Connect(broker.port(), "police");
  v1::Message m = IncidentReport({"school", "social", "health", "nobody", "group:network"});
  m.clear_incident_report();
  auto* ref = m.mutable_case_referral();
  ref->mutable_person()->set_full_name("Person At Risk");
  ref->mutable_person()->set_date_of_birth("2010-04-01");
  ref->set_risk_level(v1::RISK_HIGH);
  ref->set_consent_status(v1::CONSENT_NOT_SOUGHT);
  ref->set_legal_basis(v1::LEGAL_BASIS_PUBLIC_TASK);
  ref->set_requested_action(v1::ACTION_MULTI_AGENCY_MEETING);
  auto r = police->Publish(m);
  REQUIRE(r.status.ok());
  std::map<std::string, std::pair<std::string, std::string>> by;
  for (const auto& o : r.outcomes) by[o.recipient] = {o.outcome, o.reason};
  CHECK(by["school"].first == "queued");
  CHECK(by["social"].first == "queued");
  CHECK(by["health"].first == "queued");  // offline: it waits in the queue
  CHECK(by["nobody"] == std::make_pair(std::string("refused"), std::string("unknown_recipient")));
  CHECK(by["group:network"] == std::make_pair(std::string("refused"), std::string("unknown_recipient")));
  CHECK_FALSE(r.AllAccepted());
  REQUIRE(school.WaitCount(1));
  REQUIRE(social.WaitCount(1));
  CHECK(school.got[0].message->case_referral().person().date_of_birth() == "2010-04-01");
}

TEST_CASE("an invalid message is rejected as a whole with the reason", "[exchange]") {
  TestBroker broker;
  auto police = Connect(broker.port(), "police");
  v1::Message m = IncidentReport({"school"});
  m.mutable_envelope()->set_message_id("not-a-uuid");
  auto r = police->Publish(m);
  CHECK(r.error_code == "invalid_message");
  CHECK(r.status.message().find("messageId") != std::string::npos);
  // The session survives a rejected request.
  m.mutable_envelope()->set_message_id("0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1d");
  auto r2 = police->Publish(m);
  CHECK(r2.status.ok());
  CHECK(r2.outcomes.at(0).outcome == "queued");
}

TEST_CASE("many publishes are pipelined and matched to their acks", "[exchange]") {
  TestBroker broker;
  Receiver school(broker.port(), "school");
  auto police = Connect(broker.port(), "police");
  constexpr int kCount = 500;
  std::mutex mu;
  std::map<std::string, client::PublishResult> results;
  std::vector<std::string> ids;
  for (int i = 0; i < kCount; ++i) {
    v1::Message m = IncidentReport({"school"});
    ids.push_back(m.envelope().message_id());
    police->Publish(m, [&](client::PublishResult r) {
      std::lock_guard lock(mu);
      results[r.message_id] = std::move(r);
    });
  }
  REQUIRE(WaitFor([&] {
    std::lock_guard lock(mu);
    return results.size() == kCount;
  }));
  for (const auto& id : ids) CHECK(results[id].AllAccepted());
  REQUIRE(school.WaitCount(kCount));
  // Deliveries arrive in publish order from one sender.
  std::lock_guard lock(school.mu);
  for (int i = 0; i < kCount; ++i) CHECK(school.got[i].message->envelope().message_id() == ids[i]);
}

TEST_CASE("the credit window bounds unacknowledged deliveries", "[exchange]") {
  TestBroker broker;
  std::mutex mu;
  std::vector<client::Delivery> pending;
  auto o = Options(broker.port(), "school", true);
  o.credit = 3;
  auto school = client::Client::Connect(o, [&](client::Delivery d) {
    std::lock_guard lock(mu);
    pending.push_back(d);
  });
  REQUIRE(school.ok());
  CHECK((*school)->session().credit == 3);
  auto police = Connect(broker.port(), "police");
  std::atomic<int> acked{0};
  for (int i = 0; i < 10; ++i) {
    police->Publish(IncidentReport({"school"}), [&](client::PublishResult r) {
      if (r.AllAccepted()) acked++;
    });
  }
  REQUIRE(WaitFor([&] {
    std::lock_guard lock(mu);
    return pending.size() == 3;
  }));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  {
    std::lock_guard lock(mu);
    CHECK(pending.size() == 3);  // no more than the window without acks
  }
  for (int round = 0; round < 10; ++round) {
    std::vector<client::Delivery> batch;
    {
      std::lock_guard lock(mu);
      batch.swap(pending);
    }
    for (const auto& d : batch) (*school)->Acknowledge(d);
    if (acked == 10) break;
    WaitFor([&] {
      std::lock_guard lock(mu);
      return !pending.empty() || acked == 10;
    });
  }
  CHECK(WaitFor([&] { return acked == 10; }));
}

TEST_CASE("the real broker keeps within the credit the client holds it to with recall notices and reports",
          "[exchange][credit]") {
  // The client library ends a connection whose broker sends beyond the
  // credit (hostile_broker_test.cpp), counting every delivery as the broker
  // does. With credit 1, school's messages, a recall notice and the reports
  // on what it sent come one at a time, each after the one before is
  // acknowledged; acknowledging each twice gives nothing more back.
  TestBroker broker;
  Receiver school(broker.port(), "school", /*ack=*/false, /*credit=*/1);
  Receiver social(broker.port(), "social");
  auto police = Connect(broker.port(), "police");
  auto o = Options(broker.port(), "school");
  o.want_reports = true;
  auto school_sender = client::Client::Connect(o);
  REQUIRE(school_sender.ok());
  std::vector<std::string> to_school;
  for (int i = 0; i < 3; ++i) {
    v1::Message m = IncidentReport({"school"});
    to_school.push_back(m.envelope().message_id());
    REQUIRE(police->Publish(m).AllAccepted());
    REQUIRE((*school_sender)->Publish(IncidentReport({"social"})).AllAccepted());
  }
  std::set<uint64_t> acked;
  bool recalled = false;
  auto in_flight = [&] {
    std::lock_guard lock(school.mu);
    std::vector<client::Delivery> out;
    for (const auto* list : {&school.got, &school.notices}) {
      for (const auto& d : *list) {
        if (!acked.count(d.delivery_id)) out.push_back(d);
      }
    }
    return out;
  };
  // 3 messages, 3 reports (delivered to social) and 1 recall notice.
  while (acked.size() < 7) {
    REQUIRE(WaitFor([&] { return !in_flight().empty(); }));
    const auto pending = in_flight();
    CHECK(pending.size() == 1);
    for (const auto& d : pending) {
      school.client->Acknowledge(d);
      school.client->Acknowledge(d);
      acked.insert(d.delivery_id);
    }
    if (!recalled && school.count() == 3) {
      REQUIRE(police->Recall(to_school[0], "withdrawn").status.ok());
      recalled = true;
    }
  }
  CHECK(school.Reports().size() == 3);
  CHECK(school.Recalls().size() == 1);
  CHECK(school.client->connected());
}

TEST_CASE("a delivery that is never acknowledged ends the session and is delivered again on the next",
          "[exchange][queue]") {
  broker::Limits l;
  l.delivery_timeout = std::chrono::milliseconds(300);
  TestBroker broker(l);
  auto police = Connect(broker.port(), "police");
  {
    Receiver school(broker.port(), "school", /*ack=*/false);
    auto r = police->Publish(IncidentReport({"school"}));
    REQUIRE(r.status.ok());
    CHECK(r.outcomes.at(0).outcome == "queued");
    REQUIRE(school.WaitCount(1));
    CHECK(school.got[0].attempt == 1);
    // Unacknowledged past the deadline: the broker closes the session.
    CHECK(WaitFor([&] { return !school.client->connected(); }));
  }
  Receiver again(broker.port(), "school");
  REQUIRE(again.WaitCount(1));
  CHECK(again.got[0].attempt == 2);
  CHECK(again.got[0].delivery_id != 0);
}

TEST_CASE("a receiver that disconnects before acknowledging gets the message again", "[exchange][queue]") {
  TestBroker broker;
  auto school = std::make_unique<Receiver>(broker.port(), "school", false);
  auto police = Connect(broker.port(), "police");
  v1::Message m = IncidentReport({"school"});
  auto r = police->Publish(m);
  CHECK(r.AllAccepted());
  REQUIRE(school->WaitCount(1));
  const uint64_t first_id = school->got[0].delivery_id;
  school->client->Close();
  school.reset();
  Receiver again(broker.port(), "school");
  REQUIRE(again.WaitCount(1));
  CHECK(again.got[0].delivery_id == first_id);
  CHECK(again.got[0].attempt == 2);
  CHECK(again.got[0].message->envelope().message_id() == m.envelope().message_id());
  // Acknowledged now: a third session gets nothing more.
  REQUIRE(WaitFor([&] { return broker.server().counters().deliveries_acked == 1; }));
  again.client->Close();
  Receiver third(broker.port(), "school");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(third.count() == 0);
}
