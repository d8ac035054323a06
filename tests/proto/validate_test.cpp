// Unit tests for proto/validate.h (ValidateForPublish), proto/message_json.h
// and proto/names.h. Validation is table-driven: each case mutates a valid
// message and names the error it must produce ("" when it stays valid).
#include "proto/validate.h"

#include <google/protobuf/util/message_differencer.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "proto/detail/pb.h"
#include "proto/frame_codec.h"
#include "proto/message_json.h"
#include "proto/names.h"
#include "tests/proto/wire_by_hand.h"

namespace {

using liaison::proto::MessageLimits;
using liaison::proto::ValidateForPublish;
namespace v1 = liaison::v1;
using Clock = std::chrono::system_clock;

// 2025-06-01T12:00:00Z: a fixed "now", so expiry cases do not depend on the clock.
constexpr int64_t kNowSeconds = 1748779200;
const Clock::time_point kNow = Clock::time_point(std::chrono::seconds(kNowSeconds));

constexpr const char* kMessageId = "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1d";

void FillEnvelope(v1::Message* m) {
  auto* env = m->mutable_envelope();
  env->set_message_id(kMessageId);
  env->add_recipients("school");
  env->add_recipients("social");
  env->set_tlp(v1::TLP_AMBER);
  env->set_purpose("safeguarding");
  env->set_case_id("case-2025-0042");
  env->mutable_created_at()->set_seconds(kNowSeconds - 60);
}

v1::Message ValidIncidentReport() {
  v1::Message m;
  FillEnvelope(&m);
  auto* r = m.mutable_incident_report();
  r->set_incident_type(v1::INCIDENT_HATE_CRIME);
  r->mutable_occurred_at()->set_seconds(kNowSeconds - 86400);
  r->mutable_reported_at()->set_seconds(kNowSeconds - 3600);
  auto* loc = r->mutable_location();
  loc->set_type(v1::LOCATION_PUBLIC_TRANSPORT);
  loc->set_municipality("Northside");
  loc->set_latitude(52.37);
  loc->set_longitude(4.89);
  r->add_bias_motivations(v1::BIAS_ANTI_MUSLIM);
  r->add_bias_motivations(v1::BIAS_GENDER_BASED);
  auto* victim = r->add_persons();
  victim->set_role(v1::ROLE_VICTIM);
  victim->set_full_name("A. Person");
  victim->set_date_of_birth("2001-05-17");
  victim->set_gender(v1::GENDER_FEMALE);
  r->set_description("Verbal abuse on a tram, headscarf pulled.");
  r->set_severity(v1::SEVERITY_HIGH);
  r->set_title("Assault on line 4");
  r->set_police_reference("PR-2025-118");
  return m;
}

v1::Message ValidCaseReferral() {
  v1::Message m;
  FillEnvelope(&m);
  auto* c = m.mutable_case_referral();
  auto* p = c->mutable_person();
  p->set_full_name("B. Young");
  p->set_date_of_birth("2009-11-30");
  p->set_gender(v1::GENDER_MALE);
  p->add_languages("nl");
  p->add_languages("ar");
  auto* concern = c->add_concerns();
  concern->set_type(v1::CONCERN_ONLINE_RADICALISATION);
  concern->set_details("Shares extremist videos in class chats.");
  concern->mutable_observed_at()->set_seconds(kNowSeconds - 7 * 86400);
  c->set_risk_level(v1::RISK_MODERATE);
  c->set_consent_status(v1::CONSENT_NOT_SOUGHT);
  c->set_legal_basis(v1::LEGAL_BASIS_PUBLIC_TASK);
  c->set_requested_action(v1::ACTION_MULTI_AGENCY_MEETING);
  c->set_summary("Referral for a multi-agency assessment.");
  c->mutable_referrer()->set_name("C. Teacher");
  c->mutable_referred_at()->set_seconds(kNowSeconds - 100);
  return m;
}

v1::Message ValidCaseUpdate() {
  v1::Message m;
  FillEnvelope(&m);
  m.mutable_envelope()->set_in_reply_to("0190a5c4-8d2e-7b3a-8c1d-2f4e6a8b0c1e");
  auto* u = m.mutable_case_update();
  u->set_status(v1::CASE_INTERVENTION);
  u->set_risk_level(v1::RISK_LOW);
  u->set_summary("Mentoring started.");
  u->add_actions_taken("mentor assigned");
  u->mutable_next_review_at()->set_seconds(kNowSeconds + 30 * 86400);
  u->mutable_contact()->set_email("caseworker@example.org");
  return m;
}

struct Case {
  const char* name;
  std::function<void(v1::Message&)> mutate;
  std::string error;  // substring of the expected error; "" means valid
};

v1::IncidentReport& Report(v1::Message& m) {
  return *m.mutable_incident_report();
}
v1::Envelope& Env(v1::Message& m) {
  return *m.mutable_envelope();
}

void RunCases(const std::vector<Case>& cases, const std::function<v1::Message()>& make,
              const MessageLimits& limits = {}) {
  for (const auto& c : cases) {
    CAPTURE(c.name);
    v1::Message m = make();
    c.mutate(m);
    // The same message as the broker meets it: parsed from its bytes, which
    // ValidateForPublish then checks the body on.
    const std::string wire = m.SerializeAsString();
    v1::Message parsed;
    REQUIRE(parsed.ParseFromString(wire));
    const liaison::Status s = ValidateForPublish(&m, limits, kNow);
    CHECK(ValidateForPublish(&parsed, limits, kNow, wire).ToString() == s.ToString());
    if (c.error.empty()) {
      INFO(s.ToString());
      CHECK(s.ok());
    } else {
      REQUIRE_FALSE(s.ok());
      CHECK(s.IsInvalidArgument());
      CHECK_THAT(s.message(), Catch::Contains(c.error));
    }
  }
}

}  // namespace

TEST_CASE("ValidateForPublish accepts every well-formed message type", "[proto][validate]") {
  for (auto make : {ValidIncidentReport, ValidCaseReferral, ValidCaseUpdate}) {
    v1::Message m = make();
    const v1::Message before = m;
    const liaison::Status s = ValidateForPublish(&m, MessageLimits{}, kNow);
    INFO(liaison::proto::MessageTypeName(m) << ": " << s.ToString());
    CHECK(s.ok());
    // Already canonical: nothing to normalise.
    CHECK(google::protobuf::util::MessageDifferencer::Equals(m, before));
  }
}

TEST_CASE("ValidateForPublish: envelope errors", "[proto][validate]") {
  const std::vector<Case> cases = {
      {"valid as built", [](v1::Message&) {}, ""},
      {"missing envelope", [](v1::Message& m) { m.clear_envelope(); }, "no envelope"},
      {"missing message id", [](v1::Message& m) { Env(m).clear_message_id(); }, "envelope.messageId is missing"},
      {"non-hex message id", [](v1::Message& m) { Env(m).set_message_id("0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0cXd"); },
       "envelope.messageId: not a UUID (non-hex"},
      {"message id too short", [](v1::Message& m) { Env(m).set_message_id("0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1"); },
       "envelope.messageId: not a UUID"},
      {"message id too long", [](v1::Message& m) { Env(m).set_message_id(std::string(kMessageId) + "0"); },
       "envelope.messageId: not a UUID"},
      {"message id without hyphens", [](v1::Message& m) { Env(m).set_message_id("0190a5c48d2e7b3a9c1d2f4e6a8b0c1d"); },
       "envelope.messageId: not a UUID"},
      {"message id with braces", [](v1::Message& m) { Env(m).set_message_id("{0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c}"); },
       "envelope.messageId: not a UUID"},
      {"nil uuid", [](v1::Message& m) { Env(m).set_message_id("00000000-0000-0000-0000-000000000000"); },
       "nil and max"},
      {"max uuid", [](v1::Message& m) { Env(m).set_message_id("ffffffff-ffff-ffff-ffff-ffffffffffff"); },
       "nil and max"},
      {"wrong variant (0xc, Microsoft)",
       [](v1::Message& m) { Env(m).set_message_id("0190a5c4-8d2e-7b3a-cc1d-2f4e6a8b0c1d"); }, "variant"},
      {"wrong variant (0x1, NCS)",
       [](v1::Message& m) { Env(m).set_message_id("0190a5c4-8d2e-7b3a-1c1d-2f4e6a8b0c1d"); }, "variant"},
      {"version 0", [](v1::Message& m) { Env(m).set_message_id("0190a5c4-8d2e-0b3a-9c1d-2f4e6a8b0c1d"); }, "version"},
      {"version 9", [](v1::Message& m) { Env(m).set_message_id("0190a5c4-8d2e-9b3a-9c1d-2f4e6a8b0c1d"); }, "version"},
      {"uppercase uuid is fine", [](v1::Message& m) { Env(m).set_message_id("0190A5C4-8D2E-7B3A-9C1D-2F4E6A8B0C1D"); },
       ""},
      {"no body", [](v1::Message& m) { m.clear_body(); }, "no body"},
      {"tlp unspecified", [](v1::Message& m) { Env(m).set_tlp(v1::TLP_UNSPECIFIED); }, "envelope.tlp is missing"},
      {"tlp out of range", [](v1::Message& m) { Env(m).set_tlp(static_cast<v1::Tlp>(6)); }, "envelope.tlp"},
      {"tlp red is fine", [](v1::Message& m) { Env(m).set_tlp(v1::TLP_RED); }, ""},
      {"missing purpose", [](v1::Message& m) { Env(m).clear_purpose(); }, "envelope.purpose is missing"},
      {"purpose with upper case", [](v1::Message& m) { Env(m).set_purpose("Safeguarding"); }, "is not a purpose id"},
      {"purpose with space", [](v1::Message& m) { Env(m).set_purpose("threat assessment"); }, "is not a purpose id"},
      {"purpose of 64 characters", [](v1::Message& m) { Env(m).set_purpose(std::string(64, 'p')); },
       "is not a purpose id"},
      {"purpose with dots is fine", [](v1::Message& m) { Env(m).set_purpose("safeguarding.minors"); }, ""},
      {"purpose of 63 characters is fine", [](v1::Message& m) { Env(m).set_purpose(std::string(63, 'p')); }, ""},
      {"no recipients", [](v1::Message& m) { Env(m).clear_recipients(); }, "envelope.recipients is empty"},
      {"too many recipients",
       [](v1::Message& m) {
         Env(m).clear_recipients();
         for (int i = 0; i < 101; ++i) Env(m).add_recipients("agency-" + std::to_string(i));
       },
       "envelope.recipients has 101 entries (maximum 100)"},
      {"100 recipients is fine",
       [](v1::Message& m) {
         Env(m).clear_recipients();
         for (int i = 0; i < 100; ++i) Env(m).add_recipients("agency-" + std::to_string(i));
       },
       ""},
      {"recipient with upper case", [](v1::Message& m) { Env(m).add_recipients("Police"); },
       "'Police' is not an agency id"},
      {"recipient with punctuation", [](v1::Message& m) { Env(m).add_recipients("police!"); },
       "'police!' is not an agency id"},
      {"empty recipient", [](v1::Message& m) { Env(m).add_recipients(""); }, "'' is not an agency id"},
      {"recipient with a dot", [](v1::Message& m) { Env(m).add_recipients("city.police"); }, "is not an agency id"},
      {"recipient starting with '-'", [](v1::Message& m) { Env(m).add_recipients("-police"); }, "is not an agency id"},
      {"empty group", [](v1::Message& m) { Env(m).add_recipients("group:"); }, "'group:' is not an agency id"},
      {"group of a bad id", [](v1::Message& m) { Env(m).add_recipients("group:Schools"); }, "is not an agency id"},
      {"group is fine", [](v1::Message& m) { Env(m).add_recipients("group:schools"); }, ""},
      {"case id of 129 bytes", [](v1::Message& m) { Env(m).set_case_id(std::string(129, 'c')); },
       "envelope.caseId is longer than 128 bytes"},
      {"case id of 128 bytes is fine", [](v1::Message& m) { Env(m).set_case_id(std::string(128, 'c')); }, ""},
      {"case id with newline", [](v1::Message& m) { Env(m).set_case_id("case\n42"); }, "control characters"},
      {"case id with NUL",
       [](v1::Message& m) {
         Env(m).set_case_id(
             std::string("case\0"
                         "42",
                         7));
       },
       "control characters"},
      {"case id with DEL", [](v1::Message& m) { Env(m).set_case_id("case\x7f"); }, "control characters"},
      {"case id with UTF-8 is fine", [](v1::Message& m) { Env(m).set_case_id("zaak-\xc3\xa9\xc3\xa9n"); }, ""},
      {"bad in_reply_to", [](v1::Message& m) { Env(m).set_in_reply_to("not-a-uuid"); },
       "envelope.inReplyTo: not a UUID"},
      {"bad forwarded_from", [](v1::Message& m) { Env(m).set_forwarded_from("00000000-0000-0000-0000-000000000000"); },
       "envelope.forwardedFrom"},
      {"bad sharing agreement", [](v1::Message& m) { Env(m).set_sharing_agreement("Agreement 1"); },
       "envelope.sharingAgreement 'Agreement 1' is not an id"},
      {"sharing agreement is fine", [](v1::Message& m) { Env(m).set_sharing_agreement("dpa-2025.v2"); }, ""},
      {"receivedAt set by the client", [](v1::Message& m) { Env(m).mutable_received_at()->set_seconds(kNowSeconds); },
       "set by the broker"},
      {"receivedAt set to the epoch", [](v1::Message& m) { Env(m).mutable_received_at(); }, "set by the broker"},
      {"redactedPaths set by the client", [](v1::Message& m) { Env(m).add_redacted_paths("incident_report.persons"); },
       "set by the broker"},
      {"pseudonymisedPaths set by the client", [](v1::Message& m) { Env(m).add_pseudonymised_paths("x"); },
       "set by the broker"},
      {"createdAt out of range", [](v1::Message& m) { Env(m).mutable_created_at()->set_seconds(253402300800LL); },
       "envelope.createdAt is not a valid time"},
      {"createdAt with negative nanos", [](v1::Message& m) { Env(m).mutable_created_at()->set_nanos(-1); },
       "envelope.createdAt is not a valid time"},
      {"expiresAt in the past", [](v1::Message& m) { Env(m).mutable_expires_at()->set_seconds(kNowSeconds - 1); },
       "envelope.expiresAt is in the past"},
      {"expiresAt now", [](v1::Message& m) { Env(m).mutable_expires_at()->set_seconds(kNowSeconds); },
       "envelope.expiresAt is in the past"},
      {"expiresAt in the future is fine",
       [](v1::Message& m) { Env(m).mutable_expires_at()->set_seconds(kNowSeconds + 1); }, ""},
      {"expiresAt with bad nanos", [](v1::Message& m) { Env(m).mutable_expires_at()->set_nanos(1000000000); },
       "envelope.expiresAt is not a valid time"},
  };
  RunCases(cases, ValidIncidentReport);
}

TEST_CASE("ValidateForPublish: body errors", "[proto][validate]") {
  const std::vector<Case> cases = {
      {"date of birth 2026-02-30",
       [](v1::Message& m) { Report(m).mutable_persons(0)->set_date_of_birth("2026-02-30"); },
       "incident_report.persons[0].date_of_birth is not a date YYYY-MM-DD: '2026-02-30'"},
      {"date of birth 2025-13-01",
       [](v1::Message& m) { Report(m).mutable_persons(0)->set_date_of_birth("2025-13-01"); }, "is not a date"},
      {"date of birth 2025-00-10",
       [](v1::Message& m) { Report(m).mutable_persons(0)->set_date_of_birth("2025-00-10"); }, "is not a date"},
      {"date of birth 2025-04-31",
       [](v1::Message& m) { Report(m).mutable_persons(0)->set_date_of_birth("2025-04-31"); }, "is not a date"},
      {"date of birth 2025-01-00",
       [](v1::Message& m) { Report(m).mutable_persons(0)->set_date_of_birth("2025-01-00"); }, "is not a date"},
      {"date of birth 'yesterday'",
       [](v1::Message& m) { Report(m).mutable_persons(0)->set_date_of_birth("yesterday"); }, "is not a date"},
      {"date of birth 2001-5-17", [](v1::Message& m) { Report(m).mutable_persons(0)->set_date_of_birth("2001-5-17"); },
       "is not a date"},
      {"date of birth 17-05-2001",
       [](v1::Message& m) { Report(m).mutable_persons(0)->set_date_of_birth("17-05-2001"); }, "is not a date"},
      {"date of birth with time",
       [](v1::Message& m) { Report(m).mutable_persons(0)->set_date_of_birth("2001-05-17T00:00"); }, "is not a date"},
      {"date of birth 2023-02-29 (not a leap year)",
       [](v1::Message& m) { Report(m).mutable_persons(0)->set_date_of_birth("2023-02-29"); }, "is not a date"},
      {"date of birth 1900-02-29 (century, not a leap year)",
       [](v1::Message& m) { Report(m).mutable_persons(0)->set_date_of_birth("1900-02-29"); }, "is not a date"},
      {"leap day 2024-02-29 is fine",
       [](v1::Message& m) { Report(m).mutable_persons(0)->set_date_of_birth("2024-02-29"); }, ""},
      {"leap day 2000-02-29 is fine",
       [](v1::Message& m) { Report(m).mutable_persons(0)->set_date_of_birth("2000-02-29"); }, ""},
      {"2025-12-31 is fine", [](v1::Message& m) { Report(m).mutable_persons(0)->set_date_of_birth("2025-12-31"); }, ""},
      {"empty date of birth is fine", [](v1::Message& m) { Report(m).mutable_persons(0)->clear_date_of_birth(); }, ""},
      {"bad date in the second person",
       [](v1::Message& m) { Report(m).add_persons()->set_date_of_birth("2025-02-30"); },
       "incident_report.persons[1].date_of_birth"},
      {"unknown bias motivation",
       [](v1::Message& m) { Report(m).add_bias_motivations(static_cast<v1::BiasMotivation>(99)); },
       "incident_report.bias_motivations[2] has unknown value 99"},
      {"BIAS_UNSPECIFIED in the list", [](v1::Message& m) { Report(m).add_bias_motivations(v1::BIAS_UNSPECIFIED); },
       "incident_report.bias_motivations[2] is BIAS_UNSPECIFIED"},
      {"unknown incident type", [](v1::Message& m) { Report(m).set_incident_type(static_cast<v1::IncidentType>(42)); },
       "incident_report.incident_type has unknown value 42"},
      {"negative enum value", [](v1::Message& m) { Report(m).set_severity(static_cast<v1::Severity>(-1)); },
       "incident_report.severity has unknown value -1"},
      {"description over the limit", [](v1::Message& m) { Report(m).set_description(std::string(64 * 1024 + 1, 'd')); },
       "incident_report.description is longer than 65536 bytes"},
      {"description at the limit is fine",
       [](v1::Message& m) { Report(m).set_description(std::string(64 * 1024, 'd')); }, ""},
      {"nested string over the limit",
       [](v1::Message& m) { Report(m).mutable_persons(0)->set_notes(std::string(64 * 1024 + 1, 'n')); },
       "incident_report.persons[0].notes is longer than"},
      {"latitude 91", [](v1::Message& m) { Report(m).mutable_location()->set_latitude(91); },
       "incident_report.location.latitude is out of range"},
      {"latitude -90.5", [](v1::Message& m) { Report(m).mutable_location()->set_latitude(-90.5); }, "out of range"},
      {"latitude 90 is fine", [](v1::Message& m) { Report(m).mutable_location()->set_latitude(90); }, ""},
      {"longitude 180.1", [](v1::Message& m) { Report(m).mutable_location()->set_longitude(180.1); },
       "incident_report.location.longitude is out of range"},
      {"longitude -180 is fine", [](v1::Message& m) { Report(m).mutable_location()->set_longitude(-180); }, ""},
      {"latitude NaN",
       [](v1::Message& m) { Report(m).mutable_location()->set_latitude(std::numeric_limits<double>::quiet_NaN()); },
       "incident_report.location.latitude is not a finite number"},
      {"longitude infinite",
       [](v1::Message& m) { Report(m).mutable_location()->set_longitude(std::numeric_limits<double>::infinity()); },
       "is not a finite number"},
      {"timestamp with bad nanos in the body", [](v1::Message& m) { Report(m).mutable_occurred_at()->set_nanos(-5); },
       "incident_report.occurred_at is not a valid time"},
      {"timestamp before year 1", [](v1::Message& m) { Report(m).mutable_reported_at()->set_seconds(-62135596801LL); },
       "incident_report.reported_at is not a valid time"},
  };
  RunCases(cases, ValidIncidentReport);
}

TEST_CASE("ValidateForPublish: errors in the other message types", "[proto][validate]") {
  RunCases(
      {{"referral: bad date of birth",
        [](v1::Message& m) { m.mutable_case_referral()->mutable_person()->set_date_of_birth("2010-02-29"); },
        "case_referral.person.date_of_birth is not a date"},
       {"referral: bad concern time",
        [](v1::Message& m) { m.mutable_case_referral()->mutable_concerns(0)->mutable_observed_at()->set_nanos(-1); },
        "case_referral.concerns[0].observed_at is not a valid time"},
       {"referral: unknown risk level",
        [](v1::Message& m) { m.mutable_case_referral()->set_risk_level(static_cast<v1::RiskLevel>(17)); },
        "case_referral.risk_level has unknown value 17"},
       {"referral: language too long",
        [](v1::Message& m) { m.mutable_case_referral()->mutable_person()->add_languages(std::string(70000, 'l')); },
        "case_referral.person.languages[2] is longer than"}},
      ValidCaseReferral);
  RunCases({{"update: unknown status",
             [](v1::Message& m) { m.mutable_case_update()->set_status(static_cast<v1::CaseStatus>(7)); },
             "case_update.status has unknown value 7"},
            {"update: contact email too long",
             [](v1::Message& m) { m.mutable_case_update()->mutable_contact()->set_email(std::string(70000, 'e')); },
             "case_update.contact.email is longer than"}},
           ValidCaseUpdate);
}

TEST_CASE("ValidateForPublish honours the limits it is given", "[proto][validate]") {
  MessageLimits tight;
  tight.max_recipients = 2;
  tight.max_string_bytes = 10;
  tight.max_repeated = 2;
  RunCases(
      {{"two recipients fit", [](v1::Message&) {}, ""},
       {"three recipients do not", [](v1::Message& m) { Env(m).add_recipients("police"); }, "(maximum 2)"},
       {"string of 11 bytes", [](v1::Message& m) { Report(m).set_title("12345678901"); },
        "incident_report.title is longer than 10 bytes"},
       {"three bias motivations", [](v1::Message& m) { Report(m).add_bias_motivations(v1::BIAS_ANTI_ROMA); },
        "incident_report.bias_motivations has 3 elements (maximum 2)"}},
      [] {
        v1::Message m = ValidIncidentReport();
        auto* r = m.mutable_incident_report();
        r->clear_description();
        r->clear_title();
        r->clear_persons();
        r->clear_police_reference();
        return m;
      },
      tight);
}

namespace {

using liaison::test::Varint;
std::string Field(int number, const std::string& value) { return liaison::test::Field(number, 2, value); }
std::string VarintField(int number, uint64_t v) { return liaison::test::Field(number, 0, Varint(v)); }

// How often BodySurelyValid vouched for a body, in BothWays; how often
// ValidateForPublish found the bytes as the serializer writes them.
int vouched = 0;
int as_serialized_count = 0;

// How often ParseVouchedPublish took a publish without parsing its body,
// in CheckVouched.
int vouched_frames = 0;

// A Publish frame holding a message's bytes, as a client sends it.
std::string PublishFrame(const std::string& wire) {
  return Field(v1::Frame::kPublishFieldNumber, VarintField(v1::Publish::kRequestIdFieldNumber, 7) +
                                                   Field(v1::Publish::kMessageFieldNumber, wire) +
                                                   VarintField(v1::Publish::kWantReportsFieldNumber, 1));
}

// The message in a Publish frame, as the broker's session reads it: where
// ParseVouchedPublish takes the frame without parsing the body, ParseFrame
// must parse it, to the same frame but for the body; the body's facts must
// be the parsed body's; ValidateVouchedPublish must reach ValidateForPublish's
// verdict; and the bytes the broker stores must be the same. True when it
// took the frame.
bool CheckVouched(const std::string& wire, const MessageLimits& limits) {
  const std::string frame_bytes = PublishFrame(wire);
  v1::Frame shallow, full;
  liaison::proto::VouchedBody body;
  const bool took = liaison::proto::ParseVouchedPublish(frame_bytes, limits, &shallow, &body);
  const bool parses = liaison::proto::ParseFrame(frame_bytes, &full).ok();
  if (!took) {
    CHECK(body.type.empty());
    return false;
  }
  ++vouched_frames;
  REQUIRE(parses);
  v1::Frame stripped = full;
  stripped.mutable_publish()->mutable_message()->clear_body();
  CHECK(shallow.SerializeAsString() == stripped.SerializeAsString());
  CHECK_FALSE(shallow.publish().message().has_case_referral());
  const v1::Message& whole = full.publish().message();
  CHECK(body.type == liaison::proto::MessageTypeName(whole));
  CHECK(body.consent_status == whole.case_referral().consent_status());
  CHECK(body.legal_basis == whole.case_referral().legal_basis());
  bool as_serialized = false;
  const liaison::Status on_parsed = ValidateForPublish(full.mutable_publish()->mutable_message(), limits, kNow,
                                                       liaison::proto::PublishedMessage(frame_bytes), &as_serialized);
  const liaison::Status on_vouched =
      liaison::proto::ValidateVouchedPublish(shallow.mutable_publish()->mutable_message(), limits, kNow);
  CHECK(on_vouched.ToString() == on_parsed.ToString());
  if (on_parsed.ok()) {
    CHECK(as_serialized);
    auto stored = liaison::proto::WithEnvelope(wire, shallow.publish().message().envelope());
    REQUIRE(stored.ok());
    CHECK(*stored == full.publish().message().SerializeAsString());
  }
  return true;
}

// ValidateForPublish's verdict on a message's bytes, both ways: from the
// parsed message alone (reflection), and with the bytes it was parsed from.
// They must agree, in the same words; "unparsable" when the bytes do not
// parse (the broker refuses those before validating). And where the walk
// over the bytes vouches for the body, reflection finds nothing wrong with
// it either.
std::string BothWays(const std::string& wire, const MessageLimits& limits) {
  CheckVouched(wire, limits);
  v1::Message a, b;
  if (!a.ParseFromString(wire) || !b.ParseFromString(wire)) return "unparsable";
  const liaison::Status by_reflection = ValidateForPublish(&a, limits, kNow);
  bool as_serialized = false;
  const liaison::Status on_bytes = ValidateForPublish(&b, limits, kNow, wire, &as_serialized);
  CHECK(on_bytes.ToString() == by_reflection.ToString());
  // The bytes stand for the message re-serialized only when they are the
  // same bytes; and they are found so whenever they are.
  if (as_serialized) {
    ++as_serialized_count;
    CHECK(on_bytes.ok());
    auto rebuilt = liaison::proto::WithEnvelope(wire, b.envelope());
    REQUIRE(rebuilt.ok());
    CHECK(*rebuilt == b.SerializeAsString());
  } else if (on_bytes.ok()) {
    v1::Message parsed;  // as the broker parses it: unknown fields dropped
    REQUIRE(parsed.ParseFromString(wire));
    parsed.DiscardUnknownFields();
    CHECK(parsed.SerializeAsString() != wire);
  }
  if (liaison::proto::BodySurelyValid(wire, limits)) {
    ++vouched;
    v1::Message body_only;  // the envelope's own checks are not the walk's
    REQUIRE(body_only.MergeFromString(wire));
    *body_only.mutable_envelope() = ValidIncidentReport().envelope();
    const liaison::Status s = ValidateForPublish(&body_only, limits, kNow);
    INFO(s.ToString());
    CHECK(s.ok());
  }
  return by_reflection.ToString();
}

}  // namespace

TEST_CASE("The body is checked on its bytes with reflection's verdict, whatever the encoding",
          "[proto][validate]") {
  MessageLimits tight;
  tight.max_string_bytes = 10;
  tight.max_repeated = 2;
  const std::string envelope = Field(v1::Message::kEnvelopeFieldNumber, ValidIncidentReport().envelope().SerializeAsString());
  const int kReferral = v1::Message::kCaseReferralFieldNumber;
  const int kReport = v1::Message::kIncidentReportFieldNumber;
  auto person = [](const std::vector<std::string>& languages) {
    std::string p;
    for (const auto& l : languages) p += Field(v1::PersonAtRisk::kLanguagesFieldNumber, l);
    return Field(v1::CaseReferral::kPersonFieldNumber, p);
  };
  auto bias = [](uint64_t v) { return VarintField(v1::IncidentReport::kBiasMotivationsFieldNumber, v); };
  const std::string packed_two =
      Field(v1::IncidentReport::kBiasMotivationsFieldNumber, Varint(v1::BIAS_ANTI_ROMA) + Varint(v1::BIAS_ANTI_MUSLIM));

  // A singular sub-message sent twice is merged: its repeated field then has
  // four elements, over the limit, though each part has two.
  CHECK_THAT(BothWays(envelope + Field(kReferral, person({"nl", "en"}) + person({"fr", "de"})), tight),
             Catch::Contains("case_referral.person.languages has 4 elements (maximum 2)"));
  CHECK(BothWays(envelope + Field(kReferral, person({"nl", "en"})), tight) == "ok");
  // The body itself sent twice is merged too.
  CHECK_THAT(BothWays(envelope + Field(kReferral, person({"nl", "en"})) + Field(kReferral, person({"fr"})), tight),
             Catch::Contains("has 3 elements"));
  // A member sent twice after another: the merged two are the body.
  CHECK_THAT(BothWays(envelope + Field(kReferral, person({"nl"})) + Field(kReport, packed_two) +
                          Field(kReport, bias(v1::BIAS_GENDER_BASED)),
                      tight),
             Catch::Contains("has 3 elements"));
  // Two members of the oneof: the last one is the body.
  CHECK(BothWays(envelope + Field(kReport, bias(99)) + Field(kReferral, person({"nl"})), tight) == "ok");
  CHECK_THAT(BothWays(envelope + Field(kReferral, person({"nl"})) + Field(kReport, bias(99)), tight),
             Catch::Contains("has unknown value 99"));
  // Repeated enums packed, unpacked and both; counted across all of them.
  CHECK(BothWays(envelope + Field(kReport, packed_two), tight) == "ok");
  CHECK(BothWays(envelope + Field(kReport, bias(v1::BIAS_ANTI_ROMA) + bias(v1::BIAS_ANTI_MUSLIM)), tight) == "ok");
  CHECK_THAT(BothWays(envelope + Field(kReport, packed_two + bias(v1::BIAS_GENDER_BASED)), tight),
             Catch::Contains("has 3 elements"));
  CHECK_THAT(BothWays(envelope + Field(kReport, Field(v1::IncidentReport::kBiasMotivationsFieldNumber,
                                                      Varint(v1::BIAS_ANTI_ROMA) + Varint(0))),
                      tight),
             Catch::Contains("is BIAS_UNSPECIFIED"));
  // A singular scalar sent twice: the parser keeps the last.
  const int kSeverity = v1::IncidentReport::kSeverityFieldNumber;
  CHECK(BothWays(envelope + Field(kReport, VarintField(kSeverity, 77) + VarintField(kSeverity, 1)), tight) == "ok");
  CHECK_THAT(BothWays(envelope + Field(kReport, VarintField(kSeverity, 1) + VarintField(kSeverity, 77)), tight),
             Catch::Contains("severity has unknown value 77"));
  // Strings at and over the limit, and a string sent twice.
  const int kTitle = v1::IncidentReport::kTitleFieldNumber;
  CHECK(BothWays(envelope + Field(kReport, Field(kTitle, "1234567890")), tight) == "ok");
  CHECK_THAT(BothWays(envelope + Field(kReport, Field(kTitle, "12345678901")), tight), Catch::Contains("longer than"));
  CHECK(BothWays(envelope + Field(kReport, Field(kTitle, "12345678901") + Field(kTitle, "short")), tight) == "ok");
  // A timestamp sent twice is merged field by field; negative nanos.
  const int kOccurred = v1::IncidentReport::kOccurredAtFieldNumber;
  CHECK(BothWays(envelope + Field(kReport, Field(kOccurred, VarintField(1, 100)) + Field(kOccurred, VarintField(2, 5))),
                 tight) == "ok");
  CHECK_THAT(BothWays(envelope + Field(kReport, Field(kOccurred, VarintField(2, static_cast<uint64_t>(-5)))), tight),
             Catch::Contains("occurred_at is not a valid time"));
  // Fields the schema does not have, and a known one under another wire type.
  // (The parser keeps both as unknown fields, which the broker drops.)
  CHECK(BothWays(envelope + Field(kReport, VarintField(999, 1) + Field(kTitle, "ok")), tight) == "ok");
  CHECK(BothWays(envelope + Field(kReport, Field(kSeverity, "x")), tight) == "ok");
}

TEST_CASE("The body checked on its bytes agrees with reflection on mutated messages", "[proto][validate]") {
  // Bytes of valid messages with bytes changed, cut, repeated and inserted:
  // wherever they still parse, the two ways must reach the same verdict.
  MessageLimits tight;
  tight.max_string_bytes = 12;
  tight.max_repeated = 2;
  std::mt19937 rng(20261130);
  // Mutated strings are often invalid UTF-8, which protobuf logs.
  google::protobuf::LogHandler* const log_handler = google::protobuf::SetLogHandler(nullptr);
  int parsed = 0, valid = 0;
  for (auto make : {ValidIncidentReport, ValidCaseReferral, ValidCaseUpdate}) {
    const std::string base = make().SerializeAsString();
    for (int i = 0; i < 4000; ++i) {
      std::string w = base;
      const int edits = 1 + static_cast<int>(rng() % 3);
      for (int e = 0; e < edits && !w.empty(); ++e) {
        const size_t at = rng() % w.size();
        switch (rng() % 4) {
          case 0: w[at] = static_cast<char>(rng()); break;
          case 1: w.erase(at, 1 + rng() % 8); break;
          case 2: w.insert(at, w.substr(at, 1 + rng() % 16)); break;
          default: w.insert(at, 1, static_cast<char>(rng())); break;
        }
      }
      for (const MessageLimits& limits : {MessageLimits{}, tight}) {
        const std::string verdict = BothWays(w, limits);
        if (verdict != "unparsable") ++parsed;
        if (verdict == "ok") ++valid;
      }
    }
  }
  // The mutations reach both verdicts, and the walk vouches for most valid
  // bodies (the comparisons above are not vacuous).
  CHECK(parsed > 1000);
  CHECK(valid > 100);
  CHECK(parsed - valid > 100);
  CHECK(vouched > valid / 2);
  CHECK(as_serialized_count > 0);
  CHECK(vouched_frames > 100);
  google::protobuf::SetLogHandler(log_handler);
}

TEST_CASE("ParseVouchedPublish leaves only bodies it can vouch for unparsed", "[proto][validate]") {
  const MessageLimits limits;
  auto took = [&](const std::string& frame_bytes) {
    v1::Frame f;
    liaison::proto::VouchedBody body;
    return liaison::proto::ParseVouchedPublish(frame_bytes, limits, &f, &body);
  };
  // Every message type as the serializer writes it: taken, and read as
  // ParseFrame reads it (CheckVouched compares the two).
  for (auto make : {ValidIncidentReport, ValidCaseReferral, ValidCaseUpdate}) {
    CAPTURE(make().body_case());
    CHECK(CheckVouched(make().SerializeAsString(), limits));
  }
  // The facts a policy reads of a referral come from its bytes.
  {
    v1::Message m = ValidCaseReferral();
    m.mutable_case_referral()->set_consent_status(v1::CONSENT_GIVEN);
    m.mutable_case_referral()->set_legal_basis(v1::LEGAL_BASIS_VITAL_INTERESTS);
    v1::Frame f;
    liaison::proto::VouchedBody body;
    REQUIRE(liaison::proto::ParseVouchedPublish(PublishFrame(m.SerializeAsString()), limits, &f, &body));
    CHECK(body.type == "case_referral");
    CHECK(body.consent_status == v1::CONSENT_GIVEN);
    CHECK(body.legal_basis == v1::LEGAL_BASIS_VITAL_INTERESTS);
    CHECK(f.publish().request_id() == 7);
    CHECK(f.publish().want_reports());
    CHECK(f.publish().message().envelope().message_id() == kMessageId);
    CHECK(f.publish().message().body_case() == v1::Message::BODY_NOT_SET);
  }
  const std::string good = ValidIncidentReport().SerializeAsString();
  const std::string envelope =
      Field(v1::Message::kEnvelopeFieldNumber, ValidIncidentReport().envelope().SerializeAsString());
  const int kReport = v1::Message::kIncidentReportFieldNumber;
  const int kTitle = v1::IncidentReport::kTitleFieldNumber;
  // A string that is not UTF-8: the parser refuses the frame, so the scan,
  // which stands in for it, must not vouch for it.
  {
    google::protobuf::LogHandler* const log_handler = google::protobuf::SetLogHandler(nullptr);
    const std::string bad = envelope + Field(kReport, Field(kTitle, std::string("caf\xc3", 4)));
    CHECK_FALSE(took(PublishFrame(bad)));
    v1::Frame f;
    CHECK_FALSE(liaison::proto::ParseFrame(PublishFrame(bad), &f).ok());
    CHECK(CheckVouched(envelope + Field(kReport, Field(kTitle, "caf\xc3\xa9")), limits));
    google::protobuf::SetLogHandler(log_handler);
  }
  // Bodies the scan does not vouch for as the serializer's: parsed whole.
  CHECK_FALSE(took(PublishFrame(envelope + Field(kReport, VarintField(999, 1)))));  // an unknown field
  CHECK_FALSE(took(PublishFrame(envelope + Field(kReport, Field(kTitle, "b") + Field(kTitle, "a")))));  // twice
  CHECK_FALSE(took(PublishFrame(Field(kReport, Field(kTitle, "a")) + envelope)));  // the body first
  CHECK_FALSE(took(PublishFrame(envelope + Field(kReport, "") + Field(kReport, ""))));
  CHECK_FALSE(took(PublishFrame(Field(kReport, Field(kTitle, "a")))));  // no envelope
  CHECK_FALSE(took(PublishFrame(envelope)));                            // no body
  // An envelope with a field it does not know: ParseFrame drops it.
  CHECK_FALSE(took(PublishFrame(Field(v1::Message::kEnvelopeFieldNumber,
                                      ValidIncidentReport().envelope().SerializeAsString() + VarintField(900, 1)) +
                                good.substr(envelope.size()))));
  // The publish's and the frame's own fields: each once, none unknown.
  const std::string message = Field(v1::Publish::kMessageFieldNumber, good);
  const int kPublish = v1::Frame::kPublishFieldNumber;
  CHECK(took(Field(kPublish, message)));
  CHECK(took(Field(kPublish, VarintField(v1::Publish::kWantReportsFieldNumber, 0) + message +
                                 VarintField(v1::Publish::kRequestIdFieldNumber, 1))));
  CHECK_FALSE(took(Field(kPublish, message + message)));
  CHECK_FALSE(took(Field(kPublish, VarintField(v1::Publish::kRequestIdFieldNumber, 1) + message +
                                       VarintField(v1::Publish::kRequestIdFieldNumber, 2))));
  CHECK_FALSE(took(Field(kPublish, message + VarintField(40, 1))));
  CHECK_FALSE(took(Field(kPublish, message + Field(v1::Publish::kRequestIdFieldNumber, "x"))));
  CHECK_FALSE(took(Field(kPublish, VarintField(v1::Publish::kRequestIdFieldNumber, 1))));
  CHECK_FALSE(took(Field(kPublish, message) + Field(kPublish, message)));
  CHECK_FALSE(took(Field(kPublish, message) + VarintField(900, 1)));
  CHECK_FALSE(took(Field(kPublish, message).substr(1)));
  CHECK_FALSE(took(""));
  // Other frames are ParseFrame's.
  v1::Frame ping;
  ping.mutable_ping()->set_nonce(3);
  CHECK_FALSE(took(ping.SerializeAsString()));
}

TEST_CASE("ValidateForPublish tells bytes as the serializer writes them from other encodings",
          "[proto][validate]") {
  using liaison::test::Field;
  using liaison::test::Varint;
  const MessageLimits limits;
  // The verdict and whether the bytes are the serializer's; the message's
  // own serialization with any envelope must give wire for true.
  auto as_serialized = [&](const std::string& wire) {
    v1::Message m;
    REQUIRE(m.ParseFromString(wire));
    bool flag = false;
    const liaison::Status s = ValidateForPublish(&m, limits, kNow, wire, &flag);
    INFO(s.ToString());
    REQUIRE(s.ok());
    if (flag) CHECK(*liaison::proto::WithEnvelope(wire, m.envelope()) == m.SerializeAsString());
    return flag;
  };
  for (auto make : {ValidIncidentReport, ValidCaseReferral, ValidCaseUpdate}) {
    CHECK(as_serialized(make().SerializeAsString()));
  }
  const v1::Message m = ValidIncidentReport();
  const std::string envelope = Field(v1::Message::kEnvelopeFieldNumber, 2, m.envelope().SerializeAsString());
  const int kReport = v1::Message::kIncidentReportFieldNumber;
  const std::string body = m.incident_report().SerializeAsString();
  CHECK(as_serialized(envelope + Field(kReport, 2, body)));
  // The envelope is replaced, so its own encoding does not matter.
  v1::Envelope reordered = m.envelope();
  CHECK(as_serialized(Field(1, 2, Field(v1::Envelope::kPurposeFieldNumber, 2, "safeguarding") +
                                     reordered.SerializeAsString()) +
                      Field(kReport, 2, body)));

  // The message's own layout: body first, the envelope twice, the body's
  // length written long.
  CHECK_FALSE(as_serialized(Field(kReport, 2, body) + envelope));
  CHECK_FALSE(as_serialized(envelope + envelope + Field(kReport, 2, body)));
  const std::string long_length = Varint(static_cast<uint64_t>(kReport) << 3 | 2) + "\x80" +
                                  std::string(1, '\0');  // a 2-byte 0, then an empty body
  CHECK_FALSE(as_serialized(envelope + long_length));
  CHECK(as_serialized(envelope + Field(kReport, 2, "")));

  // In the body: fields out of order, a field holding its default written
  // out, a repeated enum unpacked, an empty packed list, a long varint, a
  // negative enum value not sign-extended, a timestamp's 0 written out.
  v1::IncidentReport r;
  r.set_severity(v1::SEVERITY_HIGH);
  r.set_title("T");
  const std::string severity = Field(v1::IncidentReport::kSeverityFieldNumber, 0, Varint(v1::SEVERITY_HIGH));
  const std::string title = Field(v1::IncidentReport::kTitleFieldNumber, 2, "T");
  REQUIRE(r.SerializeAsString() == severity + title);
  CHECK(as_serialized(envelope + Field(kReport, 2, severity + title)));
  CHECK_FALSE(as_serialized(envelope + Field(kReport, 2, title + severity)));
  CHECK_FALSE(as_serialized(envelope + Field(kReport, 2, severity + title + title)));
  CHECK_FALSE(as_serialized(envelope + Field(kReport, 2, severity + title +
                                                           Field(v1::IncidentReport::kPoliceReferenceFieldNumber, 2, ""))));
  CHECK_FALSE(as_serialized(envelope + Field(kReport, 2, Field(v1::IncidentReport::kIncidentTypeFieldNumber, 0,
                                                               Varint(0)) + severity + title)));
  const int kBias = v1::IncidentReport::kBiasMotivationsFieldNumber;
  const std::string packed = Field(kBias, 2, Varint(v1::BIAS_ANTI_MUSLIM) + Varint(v1::BIAS_GENDER_BASED));
  const std::string unpacked = Field(kBias, 0, Varint(v1::BIAS_ANTI_MUSLIM)) + Field(kBias, 0, Varint(v1::BIAS_GENDER_BASED));
  CHECK(as_serialized(envelope + Field(kReport, 2, packed + severity + title)));
  CHECK_FALSE(as_serialized(envelope + Field(kReport, 2, unpacked + severity + title)));
  CHECK_FALSE(as_serialized(envelope + Field(kReport, 2, Field(kBias, 2, "") + severity + title)));
  CHECK_FALSE(as_serialized(envelope + Field(kReport, 2, packed + packed + severity + title)));
  const std::string long_severity = Field(v1::IncidentReport::kSeverityFieldNumber, 0,
                                          std::string{static_cast<char>(0x80 | v1::SEVERITY_HIGH), '\0'});
  CHECK_FALSE(as_serialized(envelope + Field(kReport, 2, long_severity + title)));
  const int kOccurred = v1::IncidentReport::kOccurredAtFieldNumber;
  CHECK(as_serialized(envelope + Field(kReport, 2, Field(kOccurred, 2, Field(1, 0, Varint(100)) + Field(2, 0, Varint(5))))));
  CHECK_FALSE(as_serialized(envelope + Field(kReport, 2, Field(kOccurred, 2, Field(2, 0, Varint(5)) +
                                                                               Field(1, 0, Varint(100))))));
  CHECK_FALSE(as_serialized(envelope + Field(kReport, 2, Field(kOccurred, 2, Field(1, 0, Varint(0)) +
                                                                               Field(2, 0, Varint(5))))));
  CHECK(as_serialized(envelope + Field(kReport, 2, Field(kOccurred, 2, ""))));  // set, all zero
  // An unknown field: not even vouched for (reflection checks the body).
  CHECK_FALSE(as_serialized(envelope + Field(kReport, 2, severity + title + Field(999, 0, Varint(1)))));
  // A uint32 written with more than 32 bits: the parser keeps the low 32.
  const int kPersons = v1::IncidentReport::kPersonsFieldNumber;
  const int kAge = v1::PersonInvolved::kAgeFieldNumber;
  CHECK(as_serialized(envelope + Field(kReport, 2, Field(kPersons, 2, Field(kAge, 0, Varint(15))))));
  CHECK_FALSE(as_serialized(envelope + Field(kReport, 2, Field(kPersons, 2, Field(kAge, 0, Varint((1ull << 32) + 15))))));
  // A repeated message's elements one after another, or split by another field.
  const std::string person = Field(kPersons, 2, Field(kAge, 0, Varint(15)));
  CHECK(as_serialized(envelope + Field(kReport, 2, person + person + severity)));
  CHECK_FALSE(as_serialized(envelope + Field(kReport, 2, person + severity + person)));
}

TEST_CASE("ValidateForPublish normalises the message id and recipients", "[proto][validate]") {
  v1::Message m = ValidIncidentReport();
  m.mutable_envelope()->set_message_id("0190A5C4-8D2E-7B3A-9C1D-2F4E6A8B0C1D");
  m.mutable_envelope()->set_in_reply_to("0190A5C4-8D2E-7B3A-AC1D-2F4E6A8B0C1E");
  m.mutable_envelope()->clear_recipients();
  for (const char* r : {"social", "school", "social", "group:schools", "school", "group:schools", "police"}) {
    m.mutable_envelope()->add_recipients(r);
  }
  REQUIRE(ValidateForPublish(&m, MessageLimits{}, kNow).ok());
  CHECK(m.envelope().message_id() == kMessageId);
  CHECK(m.envelope().in_reply_to() == "0190a5c4-8d2e-7b3a-ac1d-2f4e6a8b0c1e");
  const std::vector<std::string> recipients(m.envelope().recipients().begin(), m.envelope().recipients().end());
  CHECK(recipients == std::vector<std::string>{"social", "school", "group:schools", "police"});
}

TEST_CASE("IsValidAgencyId and IsValidToken", "[proto][validate]") {
  using liaison::proto::IsValidAgencyId;
  using liaison::proto::IsValidToken;
  struct Row {
    std::string id;
    bool agency;
    bool token;
  };
  const std::vector<Row> rows = {
      {"police", true, true},
      {"youth-ngo", true, true},
      {"a_1", true, true},
      {"9lives", true, true},
      {"x", true, true},
      {std::string(63, 'a'), true, true},
      {std::string(64, 'a'), false, false},
      {"", false, false},
      {"Police", false, false},
      {"-police", false, false},
      {"_police", false, false},
      {".police", false, false},
      {"city.police", false, true},
      {"pol ice", false, false},
      {"police\n", false, false},
      {"pol/ice", false, false},
      {"gr\xc3\xa9", false, false},
  };
  for (const auto& r : rows) {
    CAPTURE(r.id);
    CHECK(IsValidAgencyId(r.id) == r.agency);
    CHECK(IsValidToken(r.id) == r.token);
  }
}

// ---------------------------------------------------------------- message_json

TEST_CASE("ToJson and FromJson round-trip every message type", "[proto][json]") {
  for (auto make : {ValidIncidentReport, ValidCaseReferral, ValidCaseUpdate}) {
    const v1::Message m = make();
    for (bool pretty : {false, true}) {
      CAPTURE(liaison::proto::MessageTypeName(m), pretty);
      auto json = liaison::proto::ToJson(m, pretty);
      REQUIRE(json.ok());
      CHECK(json->find("\"messageId\"") != std::string::npos);  // lowerCamelCase names
      CHECK(json->find("message_id") == std::string::npos);
      CHECK((json->find('\n') != std::string::npos) == pretty);
      CHECK(json->back() == '}');
      v1::Message back;
      const liaison::Status s = liaison::proto::FromJson(*json, &back);
      INFO(s.ToString());
      REQUIRE(s.ok());
      CHECK(google::protobuf::util::MessageDifferencer::Equals(back, m));
    }
  }
}

TEST_CASE("FromJson is strict", "[proto][json]") {
  struct Row {
    const char* name;
    std::string json;
    const char* error;  // nullptr: parses
  };
  const std::vector<Row> rows = {
      {"minimal", R"({"envelope":{"messageId":"x","tlp":"TLP_RED"},"caseUpdate":{}})", nullptr},
      {"proto field names are accepted too", R"({"envelope":{"message_id":"x"}})", nullptr},
      {"unknown top-level field", R"({"envelope":{},"bogus":1})", "not a valid liaison.v1.Message in JSON"},
      {"unknown nested field", R"({"envelope":{"senderName":"x"}})", "not a valid liaison.v1.Message in JSON"},
      {"unknown enum name", R"({"envelope":{"tlp":"TLP_PURPLE"}})", "not a valid liaison.v1.Message in JSON"},
      {"object where a string belongs", R"({"envelope":{"messageId":{"a":1}}})", "not a valid"},
      {"string where an object belongs", R"({"envelope":"police"})", "not a valid"},
      // proto3 enums are open: an unknown number parses, and ValidateForPublish refuses it.
      {"unknown enum number", R"({"envelope":{"tlp":7}})", nullptr},
      {"two bodies", R"({"caseUpdate":{},"caseReferral":{}})", "not a valid"},
      {"not JSON", "envelope: {}", "not a valid"},
      {"truncated", R"({"envelope":{)", "not a valid"},
      {"bad timestamp", R"({"envelope":{"createdAt":"yesterday"}})", "not a valid"},
  };
  for (const auto& r : rows) {
    CAPTURE(r.name, r.json);
    v1::Message m;
    const liaison::Status s = liaison::proto::FromJson(r.json, &m);
    if (r.error == nullptr) {
      INFO(s.ToString());
      CHECK(s.ok());
    } else {
      REQUIRE_FALSE(s.ok());
      CHECK(s.IsInvalidArgument());
      CHECK_THAT(s.message(), Catch::Contains(r.error));
    }
  }
}

TEST_CASE("FromJson refuses input over max_bytes and clears the target", "[proto][json]") {
  const std::string json = R"({"envelope":{"purpose":"safeguarding"}})";
  v1::Message m;
  CHECK(liaison::proto::FromJson(json, &m, json.size()).ok());
  CHECK(m.envelope().purpose() == "safeguarding");
  const liaison::Status s = liaison::proto::FromJson(json, &m, json.size() - 1);
  REQUIRE_FALSE(s.ok());
  CHECK_THAT(s.message(), Catch::Contains("exceeds the maximum"));

  v1::Message target = ValidIncidentReport();
  REQUIRE(liaison::proto::FromJson(R"({"caseUpdate":{"summary":"s"}})", &target).ok());
  CHECK_FALSE(target.has_envelope());  // replaced, not merged
  CHECK(target.case_update().summary() == "s");
}

TEST_CASE("FromBinary parses the wire form and refuses garbage", "[proto][json]") {
  const v1::Message m = ValidCaseReferral();
  v1::Message back;
  REQUIRE(liaison::proto::FromBinary(m.SerializeAsString(), &back).ok());
  CHECK(google::protobuf::util::MessageDifferencer::Equals(back, m));

  for (const std::string& garbage :
       {std::string("\xff\xff\xff\xff", 4), std::string("\x0a\x7f", 2), std::string("\x0f", 1),
        // Balanced groups of unknown field 15, nested far deeper than the limit.
        std::string(1000, '\x7b') + std::string(1000, '\x7c')}) {
    CAPTURE(garbage.size());
    v1::Message out;
    const liaison::Status s = liaison::proto::FromBinary(garbage, &out);
    REQUIRE_FALSE(s.ok());
    CHECK_THAT(s.message(), Catch::Contains("not a valid binary liaison.v1.Message"));
  }

  // Unknown fields are dropped.
  std::string with_unknown = m.SerializeAsString() + std::string("\xf8\x07\x01", 3);  // field 127 varint
  REQUIRE(liaison::proto::FromBinary(with_unknown, &back).ok());
  CHECK(back.GetReflection()->GetUnknownFields(back).empty());
  CHECK(back.SerializeAsString() == m.SerializeAsString());
}

// ---------------------------------------------------------------- names

TEST_CASE("ParseTlp accepts the spellings people use", "[proto][names]") {
  struct Row {
    const char* text;
    int tlp;  // 0: refused
  };
  const std::vector<Row> rows = {
      {"clear", v1::TLP_CLEAR},
      {"CLEAR", v1::TLP_CLEAR},
      {"TLP:CLEAR", v1::TLP_CLEAR},
      {"white", v1::TLP_CLEAR},  // TLP 1.0's name for CLEAR
      {"green", v1::TLP_GREEN},
      {"Green", v1::TLP_GREEN},
      {"amber", v1::TLP_AMBER},
      {"amber+strict", v1::TLP_AMBER_STRICT},
      {"AMBER+STRICT", v1::TLP_AMBER_STRICT},
      {"TLP:AMBER+STRICT", v1::TLP_AMBER_STRICT},
      {"amber_strict", v1::TLP_AMBER_STRICT},
      {"TLP_AMBER_STRICT", v1::TLP_AMBER_STRICT},
      {"red", v1::TLP_RED},
      {"TLP:RED", v1::TLP_RED},
      {"tlp:red", v1::TLP_RED},
      {"TLP_RED", v1::TLP_RED},
      {"purple", 0},
      {"", 0},
      {"TLP:", 0},
      {"unspecified", 0},
      {"amber strict", 0},
      {"amberstrict", 0},
      {"red ", 0},
      {"TLP:TLP:RED", 0},
  };
  for (const auto& r : rows) {
    CAPTURE(r.text);
    auto got = liaison::proto::ParseTlp(r.text);
    if (r.tlp == 0) {
      REQUIRE_FALSE(got.ok());
      CHECK_THAT(got.status().message(), Catch::Contains("unknown TLP label"));
    } else {
      REQUIRE(got.ok());
      CHECK(*got == r.tlp);
    }
  }
}

TEST_CASE("TlpName and ParseTlp agree", "[proto][names]") {
  const std::vector<std::pair<int, std::string>> names = {
      {v1::TLP_CLEAR, "CLEAR"}, {v1::TLP_GREEN, "GREEN"},
      {v1::TLP_AMBER, "AMBER"}, {v1::TLP_AMBER_STRICT, "AMBER+STRICT"},
      {v1::TLP_RED, "RED"},     {v1::TLP_UNSPECIFIED, "UNSPECIFIED"},
      {99, "UNSPECIFIED"}};
  for (const auto& [tlp, name] : names) {
    CAPTURE(tlp);
    CHECK(liaison::proto::TlpName(tlp) == name);
    if (tlp != v1::TLP_UNSPECIFIED && tlp != 99) {
      auto back = liaison::proto::ParseTlp(name);
      REQUIRE(back.ok());
      CHECK(*back == tlp);
    }
  }
}

TEST_CASE("ReasonName, OutcomeName and DataCategoryName", "[proto][names]") {
  using namespace liaison::proto;
  CHECK(ReasonName(v1::REASON_RECIPIENT_OFFLINE) == "recipient_offline");
  CHECK(ReasonName(v1::REASON_FRAME_TOO_LARGE) == "frame_too_large");
  CHECK(ReasonName(v1::REASON_PERMISSION_DENIED) == "permission_denied");
  CHECK(ReasonName(v1::REASON_UNSPECIFIED) == "unspecified");
  CHECK(ReasonName(999) == "reason_999");
  CHECK(OutcomeName(v1::OUTCOME_DELIVERED) == "delivered");
  CHECK(OutcomeName(v1::OUTCOME_QUEUED) == "queued");
  CHECK(OutcomeName(v1::OUTCOME_REFUSED) == "refused");
  CHECK(OutcomeName(7) == "outcome_7");
  CHECK(DataCategoryName(v1::CAT_SPECIAL_CATEGORY) == "special_category");
  CHECK(DataCategoryName(v1::CAT_CRIMINAL_OFFENCE) == "criminal_offence");
  CHECK(DataCategoryName(v1::CAT_NOT_PERSONAL) == "not_personal");
  CHECK(DataCategoryName(50) == "category_50");
  // Every reason has a distinct name (the wire codes map one to one).
  std::set<std::string> seen;
  const auto* reasons = v1::Reason_descriptor();
  for (int i = 0; i < reasons->value_count(); ++i) {
    CHECK(seen.insert(ReasonName(reasons->value(i)->number())).second);
  }
}

TEST_CASE("MessageTypeName and MessageTypeNames", "[proto][names]") {
  using liaison::proto::MessageTypeName;
  CHECK(liaison::proto::MessageTypeNames() ==
        std::vector<std::string>{"incident_report", "case_referral", "case_update"});
  CHECK(MessageTypeName(ValidIncidentReport()) == "incident_report");
  CHECK(MessageTypeName(ValidCaseReferral()) == "case_referral");
  CHECK(MessageTypeName(ValidCaseUpdate()) == "case_update");
  v1::Message empty;
  CHECK(MessageTypeName(empty) == "");
  empty.mutable_case_update();  // an empty body is still a body
  CHECK(MessageTypeName(empty) == "case_update");
}

TEST_CASE("ValidateForPublish drops repeated recipients and keeps the first of each in order", "[proto][validate]") {
  v1::Message m = ValidIncidentReport();
  auto* env = m.mutable_envelope();
  env->clear_recipients();
  for (const char* r : {"school", "social", "school", "group:youth-team", "social", "police", "group:youth-team",
                        "school"}) {
    env->add_recipients(r);
  }
  REQUIRE(liaison::proto::ValidateForPublish(&m, {}, kNow).ok());
  const std::vector<std::string> got(m.envelope().recipients().begin(), m.envelope().recipients().end());
  CHECK(got == std::vector<std::string>{"school", "social", "group:youth-team", "police"});
  // No duplicates: the list is left as it was.
  env->clear_recipients();
  for (const char* r : {"social", "school"}) env->add_recipients(r);
  REQUIRE(liaison::proto::ValidateForPublish(&m, {}, kNow).ok());
  CHECK(m.envelope().recipients_size() == 2);
  CHECK(m.envelope().recipients(0) == "social");
  CHECK(m.envelope().recipients(1) == "school");
}

TEST_CASE("IsFileSafeKey takes only an agency id and a canonical message id", "[validate]") {
  const std::string id = "0190a000-0000-7000-8000-0000000000b1";
  CHECK(liaison::proto::IsFileSafeKey("police", id));
  CHECK(liaison::proto::IsFileSafeKey("youth-ngo", id));
  CHECK_FALSE(liaison::proto::IsFileSafeKey("", id));
  CHECK_FALSE(liaison::proto::IsFileSafeKey("..", id));
  CHECK_FALSE(liaison::proto::IsFileSafeKey("../escaped", id));
  CHECK_FALSE(liaison::proto::IsFileSafeKey("a/b", id));
  CHECK_FALSE(liaison::proto::IsFileSafeKey("police\n", id));
  CHECK_FALSE(liaison::proto::IsFileSafeKey("police", ""));
  CHECK_FALSE(liaison::proto::IsFileSafeKey("police", "/../../x"));
  CHECK_FALSE(liaison::proto::IsFileSafeKey("police", "0190A000-0000-7000-8000-0000000000B1"));  // not canonical
  CHECK_FALSE(liaison::proto::IsFileSafeKey("police", "{" + id + "}"));
  CHECK_FALSE(liaison::proto::IsFileSafeKey("police", id + "\n"));
}
