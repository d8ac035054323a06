// The policy enforced end to end: a broker running the example city policy
// (docs/examples/policy.yaml), real agencies over mutual TLS.
#include <catch2/catch.hpp>

#include <filesystem>
#include <map>
#include <mutex>

#include "common/audit_record.h"
#include "common/files.h"
#include "common/sha256.h"
#include "tests/integration/test_support.h"

using namespace liaison;
using namespace liaison::test;

namespace {

std::string ExamplePolicy() {
  return *ReadFile(LIAISON_SOURCE_DIR "/docs/examples/policy.yaml", 1 << 20);
}

std::map<std::string, std::string> Outcomes(const client::PublishResult& r) {
  std::map<std::string, std::string> out;
  for (const auto& o : r.outcomes) out[o.recipient] = o.outcome == "refused" ? o.reason : o.outcome;
  return out;
}

v1::Message Referral(const std::vector<std::string>& to, v1::ConsentStatus consent) {
  v1::Message m = IncidentReport(to);
  m.clear_incident_report();
  auto* r = m.mutable_case_referral();
  r->mutable_person()->set_full_name("Sam Example");
  r->mutable_person()->set_date_of_birth("2009-05-17");
  r->mutable_person()->set_organisation("Northside Secondary School");
  auto* c = r->add_concerns();
  c->set_type(v1::CONCERN_ONLINE_RADICALISATION);
  c->set_details("Shares extremist videos in class chat.");
  r->set_risk_level(v1::RISK_MODERATE);
  r->set_consent_status(consent);
  r->set_legal_basis(v1::LEGAL_BASIS_CONSENT);
  r->set_requested_action(v1::ACTION_MENTORING);
  r->set_summary("Pupil withdrawn, spends evenings on fringe forums.");
  r->mutable_referrer()->set_name("A. Social Worker");
  r->mutable_referrer()->set_organisation("Municipal Social Services");
  return m;
}

}  // namespace

TEST_CASE("an unauthorised recipient gets nothing and the sender is told", "[policy-e2e]") {
  TestBroker broker({}, 2, ExamplePolicy());
  Receiver ngo(broker.port(), "youth-ngo");
  Receiver social(broker.port(), "social");
  auto police = Connect(broker.port(), "police");
  // No rule lets incident reports reach civil society.
  auto r = police->Publish(IncidentReport({"youth-ngo", "social"}));
  REQUIRE(r.status.ok());
  auto o = Outcomes(r);
  CHECK(o["youth-ngo"] == "not_permitted");
  CHECK(o["social"] == "queued");
  CHECK(ngo.count() == 0);
  REQUIRE(social.WaitCount(1));
  // The refusal names no rule: that goes to the broker's log.
  for (const auto& oc : r.outcomes) CHECK(oc.detail.find("rule") == std::string::npos);
}

TEST_CASE("a civil-society recipient gets the redacted form", "[policy-e2e]") {
  TestBroker broker({}, 2, ExamplePolicy());
  Receiver ngo(broker.port(), "youth-ngo");
  Receiver health(broker.port(), "health");
  auto social = Connect(broker.port(), "social");
  auto r = social->Publish(Referral({"youth-ngo", "health"}, v1::CONSENT_GIVEN));
  REQUIRE(r.status.ok());
  CHECK(Outcomes(r)["youth-ngo"] == "queued");
  CHECK(Outcomes(r)["health"] == "queued");
  REQUIRE(ngo.WaitCount(1));
  const v1::Message& got = *ngo.got[0].message;
  const auto& ref = got.case_referral();
  CHECK(ref.person().full_name().empty());               // identifying
  CHECK(ref.concerns_size() == 1);
  CHECK(ref.concerns(0).type() == v1::CONCERN_UNSPECIFIED);  // special category
  CHECK(ref.concerns(0).details().empty());              // free text
  CHECK(ref.summary().empty());
  CHECK(ref.person().date_of_birth() == "2009-05-17");   // personal, not redacted by this rule
  CHECK(ref.requested_action() == v1::ACTION_MENTORING);
  CHECK_FALSE(got.envelope().redacted_paths().empty());
  // Health services (a core partner) get the full referral.
  REQUIRE(health.WaitCount(1));
  CHECK(health.got[0].message->case_referral().person().full_name() == "Sam Example");
  CHECK(health.got[0].message->envelope().redacted_paths().empty());
  // Without consent, youth work gets nothing.
  auto r2 = social->Publish(Referral({"youth-ngo"}, v1::CONSENT_REFUSED));
  CHECK(Outcomes(r2)["youth-ngo"] == "not_permitted");
}

TEST_CASE("a school gets incident reports with names pseudonymised and criminal details removed", "[policy-e2e]") {
  TestBroker broker({}, 2, ExamplePolicy());
  Receiver school(broker.port(), "school");
  auto police = Connect(broker.port(), "police");
  v1::Message m = IncidentReport({"school"});
  m.mutable_incident_report()->set_police_reference("2026-NS-1");
  auto r1 = police->Publish(m);
  m.mutable_envelope()->set_message_id("0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1e");
  m.mutable_incident_report()->mutable_persons(0)->set_full_name("  j.  WITNESS ");
  auto r2 = police->Publish(m);
  REQUIRE(r1.AllAccepted());
  REQUIRE(r2.AllAccepted());
  REQUIRE(school.WaitCount(2));
  const auto& a = school.got[0].message->incident_report();
  const auto& b = school.got[1].message->incident_report();
  CHECK(a.bias_motivations_size() == 0);        // special category
  CHECK(a.police_reference().empty());           // criminal offence
  CHECK(a.persons(0).role() == v1::ROLE_UNSPECIFIED);  // victim/suspect is criminal-offence data
  CHECK(a.persons(0).full_name().rfind("ps:v1:", 0) == 0);
  // Same person, written differently: the same pseudonym within the agreement.
  CHECK(a.persons(0).full_name() == b.persons(0).full_name());
  const auto& paths = school.got[0].message->envelope().pseudonymised_paths();
  CHECK(std::find(paths.begin(), paths.end(), "incident_report.persons.full_name") != paths.end());
}

TEST_CASE("a copy whose pseudonyms cannot be made waits without stalling its recipient's session", "[policy-e2e]") {
  TestBroker broker({}, 2, ExamplePolicy());
  // police -> school incident reports are pseudonymised under
  // local-prevention-2026, whose key is made at its first delivery: a
  // directory where its file goes makes that fail.
  const std::string key_path = broker.dir() + "/keys/pseudonym/local-prevention-2026.key";
  REQUIRE(std::filesystem::create_directory(key_path));
  RawClient school;
  REQUIRE(ConnectReceiving(school, broker.port(), "school", 4));
  auto police = Connect(broker.port(), "police");
  v1::Message m = IncidentReport({"school"});
  REQUIRE(police->Publish(m).AllAccepted());
  // The copy cannot be made, so it waits; the session goes on answering.
  std::vector<v1::Deliver> early;
  CHECK(PingPong(school, 1, &early));
  CHECK(PingPong(school, 2, &early));
  CHECK(early.empty());  // never the original in place of the pseudonymised copy
  // Once the key can be made the copy goes out, pseudonymised.
  std::filesystem::remove(key_path);
  auto d = ReadDeliver(school, std::chrono::seconds(10));
  REQUIRE(d);
  CHECK(d->message().envelope().message_id() == m.envelope().message_id());
  CHECK(d->message().incident_report().persons(0).full_name().rfind("ps:v1:", 0) == 0);
}

TEST_CASE("a copy its pseudonyms make too large for a frame is refused for that recipient and audited", "[policy-e2e]") {
  broker::Limits l;
  l.max_frame_bytes = 16 * 1024;
  TestBroker broker(l, 2, ExamplePolicy());
  RawClient school;
  REQUIRE(ConnectReceiving(school, broker.port(), "school", 4));
  Receiver health(broker.port(), "health");  // gets it as it is
  auto police = Connect(broker.port(), "police");
  v1::Message m = IncidentReport({"school", "health"});
  // 450 names of one letter: the school's copy has a 38-byte pseudonym for
  // each (police -> school pseudonymises identifying fields), 16 KiB more.
  for (int i = 0; i < 450; ++i) m.mutable_incident_report()->add_persons()->set_full_name("X");
  REQUIRE(m.ByteSizeLong() < 8 * 1024);
  auto r = police->Publish(m);
  REQUIRE(r.status.ok());
  REQUIRE(Outcomes(r)["school"] == "queued");
  REQUIRE(health.WaitCount(1));  // the message itself fits
  std::string detail;
  REQUIRE(WaitFor([&] {
    for (const auto& leaf : AuditColumn(broker, m.envelope().message_id(), "leaf")) {
      auto rec = audit::DecodeLeaf(leaf);
      if (rec.ok() && rec->event == "not_delivered" && rec->recipient == "school" &&
          rec->decision == "refused:too_large") {
        detail = rec->detail;
        return true;
      }
    }
    return false;
  }));
  CHECK(detail.find("over the limit of 16384 bytes a frame") != std::string::npos);
  // Refused, not waiting: nothing reaches the school, now or later.
  std::vector<v1::Deliver> early;
  CHECK(PingPong(school, 1, &early));
  CHECK(PingPong(school, 2, &early));
  CHECK(early.empty());
}

TEST_CASE("an agreement that has expired stops sharing", "[policy-e2e]") {
  TestBroker broker({}, 2, ExamplePolicy());
  Receiver ngo(broker.port(), "youth-ngo");
  auto school = Connect(broker.port(), "school");
  // Only the 2025 school pilot ever permitted school -> youth-ngo incident reports.
  auto r = school->Publish(IncidentReport({"youth-ngo"}));
  CHECK(Outcomes(r)["youth-ngo"] == "not_permitted");
  CHECK(ngo.count() == 0);
}

TEST_CASE("groups fan out to their members, never back to the sender, and never at TLP:RED", "[policy-e2e]") {
  TestBroker broker({}, 2, ExamplePolicy());
  Receiver social(broker.port(), "social");
  Receiver health(broker.port(), "health");
  auto police = Connect(broker.port(), "police");
  auto r = police->Publish(IncidentReport({"group:core-partners"}));
  auto o = Outcomes(r);
  CHECK(o.size() == 2);  // social, health; not police itself
  CHECK(o["social"] == "queued");
  CHECK(o["health"] == "queued");

  v1::Message red = IncidentReport({"group:core-partners"});
  red.mutable_envelope()->set_tlp(v1::TLP_RED);
  auto r2 = police->Publish(red);
  CHECK(Outcomes(r2)["social"] == "not_permitted");
  red.mutable_envelope()->set_message_id("0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1f");
  red.mutable_envelope()->clear_recipients();
  red.mutable_envelope()->add_recipients("social");
  auto r3 = police->Publish(red);
  CHECK(Outcomes(r3)["social"] == "queued");
}

TEST_CASE("each delivery's record holds the keyed digest of the bytes its recipient got, redacted or not",
          "[policy-e2e]") {
  TestBroker broker({}, 2, ExamplePolicy());
  Receiver ngo(broker.port(), "youth-ngo");  // gets the redacted form
  Receiver health(broker.port(), "health");
  Receiver police(broker.port(), "police");
  auto social = Connect(broker.port(), "social");
  const v1::Message m = Referral({"youth-ngo", "health", "police"}, v1::CONSENT_GIVEN);
  auto r = social->Publish(m);
  REQUIRE(r.status.ok());
  std::map<std::string, Receiver*> receivers = {{"youth-ngo", &ngo}, {"health", &health}, {"police", &police}};
  std::map<std::string, std::string> got;  // recipient -> the message as delivered, serialized
  for (auto& [agency, rx] : receivers) {
    if (Outcomes(r)[agency] != "queued") continue;
    REQUIRE(rx->WaitCount(1));
    got[agency] = rx->got[0].message->SerializeAsString();
  }
  REQUIRE(got.size() >= 2);
  REQUIRE(got.count("youth-ngo") == 1);
  // The digest key is the broker's own (keys/body-digest.key, hex).
  auto hex = ReadFile(broker.dir() + "/keys/body-digest.key", 1024);
  REQUIRE(hex.ok());
  std::string key(32, '\0');
  for (size_t i = 0; i < 32; ++i) key[i] = static_cast<char>(std::stoi(hex->substr(2 * i, 2), nullptr, 16));
  const crypto::HmacSha256 mac(key);
  // The delivered records, once applied.
  std::map<std::string, std::string> recorded;  // recipient -> body_hmac
  REQUIRE(WaitFor([&] {
    recorded.clear();
    for (const auto& leaf : AuditColumn(broker, m.envelope().message_id(), "leaf")) {
      auto rec = audit::DecodeLeaf(leaf);
      if (rec.ok() && rec->event == "delivered") recorded[rec->recipient] = rec->body_hmac;
    }
    return recorded.size() == got.size();
  }));
  for (const auto& [agency, bytes] : got) {
    CAPTURE(agency);
    const crypto::Digest d = mac.Mac(bytes);
    CHECK(recorded[agency] == crypto::Hex(d.data(), d.size()));
  }
  CHECK(recorded["youth-ngo"] != recorded["health"]);  // the redacted form is other bytes
}
