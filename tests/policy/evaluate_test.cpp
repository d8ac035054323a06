// Semantics of the policy language (docs/policy.md): Policy::LoadText
// validation with exact positions, and Policy::Evaluate for every feature
// and their interactions, table-driven over one policy defined here, plus
// the decisions the example policy in docs/examples/ is documented to make.
#include <catch2/catch.hpp>

#include "tests/temp_dir.h"
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "policy/policy.h"
#include "proto/detail/pb.h"

namespace {

using liaison::Diagnostic;
using liaison::Diagnostics;
using liaison::policy::Decision;
using liaison::policy::Denial;
using liaison::policy::Obligations;
using liaison::policy::OriginalMessage;
using liaison::policy::Policy;
using liaison::policy::Request;
namespace v1 = liaison::v1;

std::chrono::system_clock::time_point At(int y, unsigned m, unsigned d, int hh = 12, int mm = 0, int ss = 0) {
  using namespace std::chrono;
  return sys_days(year(y) / month(m) / day(d)) + hours(hh) + minutes(mm) + seconds(ss);
}

// "Today" for every test unless a case says otherwise.
const auto kNow = At(2026, 6, 1);


int CountErrors(const Diagnostics& d) {
  int n = 0;
  for (const auto& x : d) n += x.severity == Diagnostic::Severity::kError;
  return n;
}

using liaison::test::TempDir;

// Agencies in six sectors, nested groups, an agreement in force, a second
// overlapping one, one expired and one not yet valid; permits with and
// without obligations, forbids.
const std::string kPolicy = R"(version: 1
agencies:
  - {id: police, name: Police, sector: law_enforcement}
  - {id: police2, name: Police North, sector: law_enforcement}
  - {id: school, name: School, sector: education}
  - {id: school2, name: School Two, sector: education}
  - {id: social, name: Social Services, sector: social_work}
  - {id: health, name: Health, sector: health}
  - {id: ngo, name: Youth NGO, sector: civil_society}
  - {id: outsider, name: Outsider Ltd, sector: private_sector}
  - {id: dpo, name: DPO, sector: local_government, roles: [auditor], audit_scope: [group:statutory]}
  - {id: dpo-all, name: DPO all, sector: local_government, roles: [auditor], audit_scope: ["*"]}
groups:
  - {id: police-all, name: All police, members: [police, police2]}
  - {id: statutory, members: [group:police-all, social]}
  - {id: network, members: [group:statutory, school, school2, health, ngo]}
agreements:
  - id: main
    title: Main agreement
    parties: [group:network]
    purposes: [safeguarding, case_coordination]
    legal_basis: [public_task, consent]
    valid_from: 2026-01-01
    valid_until: 2027-12-31
    review_by: 2027-06-30
  - id: second
    title: Overlapping agreement
    parties: [police, social]
    purposes: [safeguarding, threat_assessment]
    legal_basis: [law_enforcement]
    valid_from: 2026-01-01
    valid_until: 2027-12-31
  - id: old
    title: Expired pilot
    parties: [school, ngo]
    purposes: [safeguarding]
    legal_basis: [public_task]
    valid_from: 2024-01-01
    valid_until: 2025-12-31
  - id: future
    title: Not yet valid
    parties: [health, ngo]
    purposes: [safeguarding]
    legal_basis: [public_task]
    valid_from: 2028-01-01
    valid_until: 2029-12-31
rules:
  - id: statutory-share
    effect: permit
    agreement: main
    from: [group:statutory]
    to: [group:statutory]
    tlp: CLEAR..RED
  - id: second-share
    effect: permit
    agreement: second
    from: [police]
    to: [social]
    purposes: [safeguarding]
  - id: to-schools
    effect: permit
    agreement: main
    from: [sector:law_enforcement]
    to: [sector:education]
    types: [incident_report]
    tlp: GREEN..AMBER
    purposes: [safeguarding]
    obligations:
      redact: [criminal_offence]
      pseudonymise: [identifying]
  - id: to-schools-more
    effect: permit
    agreement: main
    from: [police]
    to: [school]
    types: [incident_report]
    obligations:
      redact: [special_category, incident_report.description]
      pseudonymise: [incident_report.persons.notes]
  - id: ngo-consent
    effect: permit
    agreement: main
    from: [social]
    to: [ngo]
    types: [case_referral]
    consent: [given, not_required]
    legal_basis: [consent, public_task]
    obligations:
      redact: [identifying]
  - id: anyone-to-health
    effect: permit
    agreement: main
    from: ["*"]
    to: [health]
    types: [case_update]
  - id: old-pilot
    effect: permit
    agreement: old
    from: [school]
    to: [ngo]
  - id: future-pilot
    effect: permit
    agreement: future
    from: [health]
    to: [ngo]
  - id: outsider-sends
    effect: permit
    agreement: main
    from: [outsider]
    to: [police]
  - id: school-to-outsider
    effect: permit
    agreement: main
    from: [school]
    to: [outsider]
  - id: no-red-to-schools
    effect: forbid
    from: ["*"]
    to: [sector:education]
    tlp: RED
  - id: no-police2-to-school2
    effect: forbid
    from: [police2]
    to: [school2]
)";

std::shared_ptr<const Policy> Load(const std::string& text, Diagnostics* diags,
                                   std::chrono::system_clock::time_point now = kNow) {
  return Policy::LoadText(text, "policy.yaml", diags, now);
}

std::shared_ptr<const Policy> LoadTestPolicy() {
  Diagnostics diags;
  auto p = Load(kPolicy, &diags);
  INFO(liaison::FormatDiagnostics(diags));
  REQUIRE(p != nullptr);
  REQUIRE(CountErrors(diags) == 0);
  return p;
}

constexpr int kClear = v1::TLP_CLEAR, kGreen = v1::TLP_GREEN, kAmber = v1::TLP_AMBER,
              kAmberStrict = v1::TLP_AMBER_STRICT, kRed = v1::TLP_RED;

struct Case {
  const char* name;
  const char* from;
  const char* to;
  const char* type;
  int tlp;
  const char* purpose;
  int consent;
  int legal;
  const char* agreement;  // named in the envelope, "" when not
  Denial want;
  std::vector<std::string> rules;  // RuleIds of the decision
};

Request MakeRequest(const Case& c) {
  Request q;
  q.sender = c.from;
  q.recipient = c.to;
  q.message_type = c.type;
  q.tlp = c.tlp;
  q.purpose = c.purpose;
  q.consent_status = c.consent;
  q.legal_basis = c.legal;
  q.agreement = c.agreement;
  q.now = kNow;
  return q;
}

void CheckCase(const Policy& p, const Request& q, Denial want, const std::vector<std::string>& rules) {
  const Decision d = p.Evaluate(q);
  INFO("reasons: " << p.Reasons(d, q).front());
  CHECK(std::string(DenialName(d.denial)) == DenialName(want));
  CHECK(d.permit == (want == Denial::kNone));
  CHECK(p.RuleIds(d) == rules);
  if (!d.permit) CHECK(p.ObligationsOf(d).empty());
}

}  // namespace

TEST_CASE("Evaluate: the semantics, table-driven", "[policy][evaluate]") {
  auto p = LoadTestPolicy();
  const int kGiven = v1::CONSENT_GIVEN, kRefused = v1::CONSENT_REFUSED, kNotRequired = v1::CONSENT_NOT_REQUIRED;
  const int kConsentBasis = v1::LEGAL_BASIS_CONSENT, kPublicTask = v1::LEGAL_BASIS_PUBLIC_TASK,
            kLawEnf = v1::LEGAL_BASIS_LAW_ENFORCEMENT;
  const Denial kOk = Denial::kNone;
  const std::vector<Case> cases = {
      // Default deny.
      {"no rule names the pair", "ngo", "police", "incident_report", kGreen, "safeguarding", 0, 0, "",
       Denial::kNoPermit, {}},
      {"unknown sender", "nobody", "police", "incident_report", kGreen, "safeguarding", 0, 0, "",
       Denial::kUnknownSender, {}},
      {"unknown recipient", "police", "nobody", "incident_report", kGreen, "safeguarding", 0, 0, "",
       Denial::kUnknownRecipient, {}},
      {"unknown message type matches no rule", "police2", "social", "memo", kGreen, "safeguarding", 0, 0, "",
       Denial::kNoPermit, {}},
      // Nested groups: police2 is in statutory through police-all.
      {"nested group in from", "police2", "social", "case_update", kAmber, "safeguarding", 0, 0, "", kOk,
       {"statutory-share"}},
      {"nested group in to", "social", "police2", "case_update", kRed, "case_coordination", 0, 0, "", kOk,
       {"statutory-share"}},
      // sector: on from and to.
      {"sector: in from and to", "police2", "school", "incident_report", kGreen, "safeguarding", 0, 0, "", kOk,
       {"to-schools"}},
      // "*" in from; purposes default to the agreement's.
      {"'*' in from", "school2", "health", "case_update", kGreen, "safeguarding", 0, 0, "", kOk,
       {"anyone-to-health"}},
      {"agreement purposes when the rule has none (2nd)", "ngo", "health", "case_update", kGreen,
       "case_coordination", 0, 0, "", kOk, {"anyone-to-health"}},
      {"purpose outside the agreement's", "ngo", "health", "case_update", kGreen, "threat_assessment", 0, 0, "",
       Denial::kNoPermit, {}},
      {"empty purpose", "ngo", "health", "case_update", kGreen, "", 0, 0, "", Denial::kNoPermit, {}},
      {"'*' includes a non-party: no permit", "outsider", "health", "case_update", kGreen, "safeguarding", 0, 0, "",
       Denial::kNoPermit, {}},
      // Types filter.
      {"type not in 'types'", "school2", "health", "incident_report", kGreen, "safeguarding", 0, 0, "",
       Denial::kNoPermit, {}},
      {"type not in 'types' (schools)", "police", "school2", "case_referral", kGreen, "safeguarding", 0, 0, "",
       Denial::kNoPermit, {}},
      // TLP range GREEN..AMBER, inclusive at both ends; RED forbidden.
      {"TLP below range", "police", "school2", "incident_report", kClear, "safeguarding", 0, 0, "",
       Denial::kNoPermit, {}},
      {"TLP lower end", "police", "school2", "incident_report", kGreen, "safeguarding", 0, 0, "", kOk,
       {"to-schools"}},
      {"TLP upper end", "police", "school2", "incident_report", kAmber, "safeguarding", 0, 0, "", kOk,
       {"to-schools"}},
      {"TLP above range", "police", "school2", "incident_report", kAmberStrict, "safeguarding", 0, 0, "",
       Denial::kNoPermit, {}},
      // Forbid overrides permit (to-schools-more permits RED to school).
      {"forbid overrides permit", "police", "school", "incident_report", kRed, "safeguarding", 0, 0, "",
       Denial::kForbidden, {"no-red-to-schools"}},
      {"forbid without any permit", "police2", "school2", "incident_report", kGreen, "safeguarding", 0, 0, "",
       Denial::kForbidden, {"no-police2-to-school2"}},
      {"two forbids", "police2", "school2", "incident_report", kRed, "safeguarding", 0, 0, "", Denial::kForbidden,
       {"no-red-to-schools", "no-police2-to-school2"}},
      // Rule purposes narrow the agreement's.
      {"rule purposes: other purpose skips to-schools", "police", "school", "incident_report", kAmber,
       "case_coordination", 0, 0, "", kOk, {"to-schools-more"}},
      {"both permits to school", "police", "school", "incident_report", kAmber, "safeguarding", 0, 0, "", kOk,
       {"to-schools", "to-schools-more"}},
      // Consent and legal basis.
      {"consent given, legal consent", "social", "ngo", "case_referral", kAmber, "safeguarding", kGiven,
       kConsentBasis, "", kOk, {"ngo-consent"}},
      {"consent not_required, public_task", "social", "ngo", "case_referral", kAmber, "case_coordination",
       kNotRequired, kPublicTask, "", kOk, {"ngo-consent"}},
      {"consent refused", "social", "ngo", "case_referral", kAmber, "safeguarding", kRefused, kConsentBasis, "",
       Denial::kNoPermit, {}},
      {"no consent status", "social", "ngo", "case_referral", kAmber, "safeguarding", 0, kConsentBasis, "",
       Denial::kNoPermit, {}},
      {"legal basis not listed", "social", "ngo", "case_referral", kAmber, "safeguarding", kGiven, kLawEnf, "",
       Denial::kNoPermit, {}},
      {"no legal basis", "social", "ngo", "case_referral", kAmber, "safeguarding", kGiven, 0, "",
       Denial::kNoPermit, {}},
      // Parties.
      {"sender not a party", "outsider", "police", "incident_report", kGreen, "safeguarding", 0, 0, "",
       Denial::kNoPermit, {}},
      {"recipient not a party", "school", "outsider", "incident_report", kGreen, "safeguarding", 0, 0, "",
       Denial::kNoPermit, {}},
      // Agreements not in force.
      {"expired agreement", "school", "ngo", "incident_report", kGreen, "safeguarding", 0, 0, "",
       Denial::kAgreementNotInForce, {}},
      {"agreement not yet valid", "health", "ngo", "case_update", kGreen, "safeguarding", 0, 0, "",
       Denial::kAgreementNotInForce, {}},
      // Two agreements permit: ambiguous unless the envelope names one.
      {"ambiguous", "police", "social", "incident_report", kAmber, "safeguarding", 0, 0, "",
       Denial::kAmbiguousAgreement, {"statutory-share", "second-share"}},
      {"ambiguity resolved: main", "police", "social", "incident_report", kAmber, "safeguarding", 0, 0, "main", kOk,
       {"statutory-share"}},
      {"ambiguity resolved: second", "police", "social", "incident_report", kAmber, "safeguarding", 0, 0, "second",
       kOk, {"second-share"}},
      {"named agreement whose rules do not match", "police", "social", "incident_report", kAmber, "safeguarding", 0,
       0, "old", Denial::kNoPermit, {}},
      {"named agreement that does not exist", "police", "social", "incident_report", kAmber, "safeguarding", 0, 0,
       "nope", Denial::kNoPermit, {}},
      {"only one agreement for this purpose", "police", "social", "incident_report", kAmber, "case_coordination", 0,
       0, "", kOk, {"statutory-share"}},
      {"purpose of neither rule", "police", "social", "incident_report", kAmber, "threat_assessment", 0, 0, "",
       Denial::kNoPermit, {}},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    CheckCase(*p, MakeRequest(c), c.want, c.rules);
  }
}

TEST_CASE("Evaluate: permitted decisions name their agreement", "[policy][evaluate]") {
  auto p = LoadTestPolicy();
  Request q = MakeRequest({"", "police", "social", "incident_report", kAmber, "safeguarding", 0, 0, "second",
                           Denial::kNone, {}});
  const Decision d = p->Evaluate(q);
  REQUIRE(d.permit);
  REQUIRE(d.agreement >= 0);
  CHECK(p->agreements()[d.agreement].id == "second");
  CHECK_THAT(p->Reasons(d, q).front(), Catch::Contains("second-share") && Catch::Contains("'second'"));
}

TEST_CASE("Evaluate: forbid names its rule in RuleIds and Reasons", "[policy][evaluate]") {
  auto p = LoadTestPolicy();
  Request q = MakeRequest({"", "police", "school", "incident_report", kRed, "safeguarding", 0, 0, "",
                           Denial::kNone, {}});
  const Decision d = p->Evaluate(q);
  CHECK_FALSE(d.permit);
  CHECK(d.denial == Denial::kForbidden);
  CHECK(p->RuleIds(d) == std::vector<std::string>{"no-red-to-schools"});
  CHECK_THAT(p->Reasons(d, q).front(), Catch::Contains("forbidden by no-red-to-schools"));
  CHECK(p->ObligationsOf(d).empty());
}

TEST_CASE("Evaluate: agreement validity is inclusive, in UTC days, via Request.now", "[policy][evaluate]") {
  auto p = LoadTestPolicy();
  struct When {
    const char* name;
    const char* from;
    const char* to;
    std::chrono::system_clock::time_point now;
    Denial want;
    const char* agreement;  // named in Reasons when not in force
  };
  const std::vector<When> cases = {
      {"old: first day", "school", "ngo", At(2024, 1, 1, 0, 0, 0), Denial::kNone, ""},
      {"old: last second of the last day", "school", "ngo", At(2025, 12, 31, 23, 59, 59), Denial::kNone, ""},
      {"old: the day after", "school", "ngo", At(2026, 1, 1, 0, 0, 0), Denial::kAgreementNotInForce, "old"},
      {"old: the second before", "school", "ngo", At(2023, 12, 31, 23, 59, 59), Denial::kAgreementNotInForce, "old"},
      {"future: before", "health", "ngo", At(2027, 12, 31, 23, 59, 59), Denial::kAgreementNotInForce, "future"},
      {"future: first second", "health", "ngo", At(2028, 1, 1, 0, 0, 0), Denial::kNone, ""},
      {"future: last day", "health", "ngo", At(2029, 12, 31, 18), Denial::kNone, ""},
      {"future: after", "health", "ngo", At(2030, 1, 1, 0, 0, 0), Denial::kAgreementNotInForce, "future"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    Request q;
    q.sender = c.from;
    q.recipient = c.to;
    q.message_type = "case_update";
    q.tlp = kGreen;
    q.purpose = "safeguarding";
    q.now = c.now;
    const Decision d = p->Evaluate(q);
    const auto reasons = p->Reasons(d, q);
    INFO(reasons.front());
    CHECK(std::string(DenialName(d.denial)) == DenialName(c.want));
    if (c.want == Denial::kAgreementNotInForce) {
      REQUIRE(d.not_in_force.size() == 1);
      CHECK(p->agreements()[d.not_in_force[0]].id == c.agreement);
      CHECK_THAT(reasons.front(), Catch::Contains(std::string("agreement '") + c.agreement + "' is not in force"));
    }
  }
}

TEST_CASE("Evaluate: a permit in force wins over one not in force", "[policy][evaluate]") {
  // school -> ngo: only the expired pilot; after 'main' gains a rule it is
  // permitted under main, whatever the pilot's state.
  std::string text = kPolicy + "  - {id: school-ngo-main, effect: permit, agreement: main, from: [school], to: [ngo]}\n";
  Diagnostics diags;
  auto p = Load(text, &diags);
  INFO(liaison::FormatDiagnostics(diags));
  REQUIRE(p != nullptr);
  Request q = MakeRequest({"", "school", "ngo", "incident_report", kGreen, "safeguarding", 0, 0, "",
                           Denial::kNone, {}});
  const Decision d = p->Evaluate(q);
  CHECK(d.permit);
  CHECK(p->RuleIds(d) == std::vector<std::string>{"school-ngo-main"});
}

TEST_CASE("Evaluate: TLP:RED only to individually named recipients", "[policy][evaluate]") {
  auto p = LoadTestPolicy();
  Request q = MakeRequest({"", "police", "social", "case_referral", kRed, "case_coordination", 0, 0, "",
                           Denial::kNone, {}});
  q.named_individually = false;
  Decision d = p->Evaluate(q);
  CHECK(d.denial == Denial::kRedNeedsNamedRecipient);
  CHECK_FALSE(d.permit);
  CHECK(p->ObligationsOf(d).empty());
  CHECK_THAT(p->Reasons(d, q).front(), Catch::Contains("TLP:RED"));
  q.named_individually = true;
  d = p->Evaluate(q);
  CHECK(d.permit);
  // Below RED a group fan-out is fine.
  q.named_individually = false;
  q.tlp = kAmberStrict;
  CHECK(p->Evaluate(q).permit);
}

TEST_CASE("Evaluate: forwards and TLP", "[policy][evaluate]") {
  auto p = LoadTestPolicy();
  // police forwards to social, AMBER, an earlier message's content.
  Request q = MakeRequest({"", "police", "social", "incident_report", kAmber, "case_coordination", 0, 0, "",
                           Denial::kNone, {}});
  q.is_forward = true;

  SECTION("original unknown") {
    q.original = nullptr;
    const Decision d = p->Evaluate(q);
    CHECK(d.denial == Denial::kForwardOriginUnknown);
    CHECK_FALSE(d.permit);
  }
  SECTION("original AMBER, recipient not in its audience") {
    OriginalMessage o{"school", {"police"}, kAmber, "main"};
    q.original = &o;
    const Decision d = p->Evaluate(q);
    CHECK(d.denial == Denial::kForwardRestricted);
    CHECK_FALSE(d.permit);
  }
  SECTION("original AMBER+STRICT, recipient not in its audience") {
    OriginalMessage o{"school", {"police"}, kAmberStrict, "main"};
    q.original = &o;
    q.tlp = kAmberStrict;
    CHECK(p->Evaluate(q).denial == Denial::kForwardRestricted);
  }
  SECTION("original GREEN: may go to another agency") {
    OriginalMessage o{"school", {"police"}, kGreen, "main"};
    q.original = &o;
    q.tlp = kGreen;
    CHECK(p->Evaluate(q).permit);
    q.tlp = kAmber;  // raising the TLP is fine
    CHECK(p->Evaluate(q).permit);
  }
  SECTION("original CLEAR") {
    OriginalMessage o{"school", {"police"}, kClear, "main"};
    q.original = &o;
    q.tlp = kClear;
    CHECK(p->Evaluate(q).permit);
  }
  SECTION("original AMBER, recipient was one of its recipients") {
    OriginalMessage o{"school", {"police", "social"}, kAmber, "main"};
    q.original = &o;
    CHECK(p->Evaluate(q).permit);
  }
  SECTION("original AMBER, recipient was its sender") {
    OriginalMessage o{"social", {"police"}, kAmber, "main"};
    q.original = &o;
    CHECK(p->Evaluate(q).permit);
  }
  SECTION("a forward that lowers the TLP") {
    OriginalMessage o{"school", {"police"}, kGreen, "main"};
    q.original = &o;
    q.tlp = kClear;
    const Decision d = p->Evaluate(q);
    CHECK(d.denial == Denial::kForwardRestricted);
    OriginalMessage in_audience{"school", {"police", "social"}, kAmber, "main"};
    q.original = &in_audience;
    q.tlp = kGreen;
    CHECK(p->Evaluate(q).denial == Denial::kForwardRestricted);
  }
  SECTION("the policy still decides first: a forward nobody permits") {
    OriginalMessage o{"school", {"police"}, kGreen, "main"};
    q.original = &o;
    q.recipient = "ngo";
    q.tlp = kGreen;
    CHECK(p->Evaluate(q).denial == Denial::kNoPermit);
  }
}

TEST_CASE("ObligationsOf: the union of every matching permit", "[policy][evaluate]") {
  auto p = LoadTestPolicy();
  Request q = MakeRequest({"", "police", "school", "incident_report", kAmber, "safeguarding", 0, 0, "",
                           Denial::kNone, {}});
  Decision d = p->Evaluate(q);
  REQUIRE(d.permit);
  REQUIRE(p->RuleIds(d) == std::vector<std::string>{"to-schools", "to-schools-more"});
  Obligations o = p->ObligationsOf(d);
  CHECK(o.redact_categories == std::set<int>{v1::CAT_SPECIAL_CATEGORY, v1::CAT_CRIMINAL_OFFENCE});
  CHECK(o.redact_paths == std::set<std::string>{"incident_report.description"});
  CHECK(o.pseudonymise_categories == std::set<int>{v1::CAT_IDENTIFYING});
  CHECK(o.pseudonymise_paths == std::set<std::string>{"incident_report.persons.notes"});

  // Only one of the two permits matches: only its obligations.
  q.sender = "police2";
  d = p->Evaluate(q);
  REQUIRE(d.permit);
  o = p->ObligationsOf(d);
  CHECK(o.redact_categories == std::set<int>{v1::CAT_CRIMINAL_OFFENCE});
  CHECK(o.redact_paths.empty());
  CHECK(o.pseudonymise_categories == std::set<int>{v1::CAT_IDENTIFYING});
  CHECK(o.pseudonymise_paths.empty());

  // A permit without obligations.
  q.sender = "police";
  q.recipient = "social";
  q.purpose = "case_coordination";
  d = p->Evaluate(q);
  REQUIRE(d.permit);
  CHECK(p->ObligationsOf(d).empty());
}

TEST_CASE("Evaluate: trace lists every rule considered", "[policy][evaluate]") {
  auto p = LoadTestPolicy();
  Request q = MakeRequest({"", "police", "school", "incident_report", kRed, "safeguarding", 0, 0, "",
                           Denial::kNone, {}});
  std::vector<liaison::policy::TraceStep> trace;
  p->Evaluate(q, &trace);
  std::vector<std::string> ids;
  for (const auto& s : trace) ids.push_back(s.rule);
  // Rules naming school as a recipient, in file order.
  CHECK(ids == std::vector<std::string>{"to-schools", "to-schools-more", "no-red-to-schools"});
  CHECK(trace[0].outcome == "skipped: TLP outside 'tlp'");
  CHECK(trace[1].outcome == "matched");
  CHECK(trace[2].outcome == "matched");
}

TEST_CASE("ExpandRecipient: nested groups and unknown references", "[policy][evaluate]") {
  auto p = LoadTestPolicy();
  auto network = p->ExpandRecipient("group:network");
  REQUIRE(network.ok());
  CHECK(*network == std::vector<std::string>{"police", "police2", "school", "school2", "social", "health", "ngo"});
  auto statutory = p->ExpandRecipient("group:statutory");
  REQUIRE(statutory.ok());
  CHECK(*statutory == std::vector<std::string>{"police", "police2", "social"});
  auto one = p->ExpandRecipient("ngo");
  REQUIRE(one.ok());
  CHECK(*one == std::vector<std::string>{"ngo"});
  CHECK_FALSE(p->ExpandRecipient("group:nope").ok());
  CHECK_FALSE(p->ExpandRecipient("nobody").ok());
  CHECK_FALSE(p->ExpandRecipient("sector:education").ok());
  CHECK_FALSE(p->ExpandRecipient("*").ok());
}

TEST_CASE("MayAudit: audit_scope by group and '*'", "[policy][evaluate]") {
  auto p = LoadTestPolicy();
  CHECK(p->MayAudit("dpo", "police"));
  CHECK(p->MayAudit("dpo", "police2"));  // nested group
  CHECK(p->MayAudit("dpo", "social"));
  CHECK_FALSE(p->MayAudit("dpo", "school"));
  CHECK_FALSE(p->MayAudit("dpo", "dpo-all"));
  for (const char* a : {"police", "school", "ngo", "outsider", "dpo", "dpo-all"}) {
    CAPTURE(a);
    CHECK(p->MayAudit("dpo-all", a));
  }
  CHECK_FALSE(p->MayAudit("police", "police"));  // not an auditor
  CHECK_FALSE(p->MayAudit("dpo-all", "nobody"));
  CHECK_FALSE(p->MayAudit("nobody", "police"));
}

TEST_CASE("version: stable under key order and comments, changed by content", "[policy][evaluate]") {
  auto base = LoadTestPolicy();
  auto replace = [](std::string s, const std::string& from, const std::string& to) {
    const auto at = s.find(from);
    REQUIRE(at != std::string::npos);
    return s.replace(at, from.size(), to);
  };
  // Comments, and keys of a rule and of an agreement in another order.
  std::string same = "# The test network\n" + kPolicy;
  same = replace(same, "  - id: second-share\n    effect: permit\n    agreement: second\n",
                 "  - agreement: second   # the overlapping one\n    effect: permit\n    id: second-share\n");
  same = replace(same, "    valid_from: 2026-01-01\n    valid_until: 2027-12-31\n    review_by: 2027-06-30\n",
                 "    review_by: 2027-06-30\n    valid_until: 2027-12-31\n    valid_from: 2026-01-01\n");
  same = replace(same, "      redact: [criminal_offence]\n      pseudonymise: [identifying]\n",
                 "      pseudonymise: [identifying]\n      redact: [criminal_offence]\n");
  // The order of items within a list.
  same = replace(same, "members: [group:statutory, school, school2, health, ngo]",
                 "members: [ngo, health, school2, school, group:statutory]");
  Diagnostics diags;
  auto b = Load(same, &diags);
  INFO(liaison::FormatDiagnostics(diags));
  REQUIRE(b != nullptr);
  CHECK(b->version() == base->version());
  CHECK(base->version().size() == 64);

  for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
           {"    tlp: GREEN..AMBER\n", "    tlp: GREEN..AMBER+STRICT\n"},
           {"consent: [given, not_required]", "consent: [given]"},
           {"    valid_until: 2025-12-31\n", "    valid_until: 2025-12-30\n"},
           {"redact: [criminal_offence]", "redact: [criminal_offence, free_text]"},
           {"effect: forbid\n    from: [police2]", "effect: forbid\n    from: [police]"},
       }) {
    CAPTURE(from, to);
    Diagnostics d2;
    auto c = Load(replace(kPolicy, from, to), &d2);
    INFO(liaison::FormatDiagnostics(d2));
    REQUIRE(c != nullptr);
    CHECK(c->version() != base->version());
  }
}

// Regression: fields used to be joined with '|' without escaping, so two
// policies binding an agency to different certificates (subject "CN=a|x"
// with issuer "CN=b", or subject "CN=a" with issuer "x|CN=b") shared a version.
TEST_CASE("version: free-text fields cannot be shifted into each other", "[policy][evaluate]") {
  const std::string head = "version: 1\nagencies:\n  - id: social\n    name: S\n    sector: social_work\n";
  Diagnostics diags;
  auto a = Load(head + "    certificate: {subject: 'CN=a|x', issuer: 'CN=b'}\n", &diags);
  auto b = Load(head + "    certificate: {subject: 'CN=a', issuer: 'x|CN=b'}\n", &diags);
  INFO(liaison::FormatDiagnostics(diags));
  REQUIRE(a != nullptr);
  REQUIRE(b != nullptr);
  REQUIRE(a->agencies()[0].certificate.issuer != b->agencies()[0].certificate.issuer);
  CHECK(a->version() != b->version());
}

// Regression: an empty 'purposes: []' used to be accepted and to mean "any
// purpose", so a permit could exceed its agreement. It is now an error.
TEST_CASE("an empty purposes list does not permit every purpose", "[policy][evaluate]") {
  const std::string rule_empty = kPolicy +
                                 "  - {id: empty-purposes, effect: permit, agreement: main, from: [ngo], to: [school],"
                                 " purposes: []}\n";
  const std::string agreement_empty =
      "version: 1\nagencies:\n  - {id: ngo, name: N, sector: civil_society}\n"
      "  - {id: school, name: S, sector: education}\n"
      "agreements:\n  - {id: ag, title: A, parties: [ngo, school], purposes: [], legal_basis: [public_task],"
      " valid_from: 2026-01-01, valid_until: 2027-12-31}\n"
      "rules:\n  - {id: r, effect: permit, agreement: ag, from: [ngo], to: [school]}\n";
  for (const std::string& text : {rule_empty, agreement_empty}) {
    Diagnostics diags;
    auto p = Load(text, &diags);
    if (p == nullptr) continue;  // refused: fine
    Request q = MakeRequest({"", "ngo", "school", "incident_report", kGreen, "marketing", 0, 0, "",
                             Denial::kNone, {}});
    CHECK_FALSE(p->Evaluate(q).permit);
  }
}

TEST_CASE("LoadText: each validation error with its exact position", "[policy][evaluate]") {
  // Lines 1-4.
  const std::string agencies =
      "version: 1\nagencies:\n  - {id: police, name: P, sector: law_enforcement}\n"
      "  - {id: school, name: S, sector: education}\n";
  // Lines 5-6.
  const std::string groups = "groups:\n  - {id: g, members: [police]}\n";
  // Lines 7-14: the agreement.
  auto agreement = [](const std::string& from, const std::string& until) {
    return "agreements:\n  - id: ag\n    title: A\n    parties: [police, school]\n    purposes: [safeguarding]\n"
           "    legal_basis: [public_task]\n    valid_from: " +
           from + "\n    valid_until: " + until + "\n";
  };
  const std::string good_agreement = agreement("2026-01-01", "2027-12-31");
  const std::string head = agencies + groups + good_agreement + "rules:\n";  // rules from line 16
  // A permit at lines 16-20, extra keys from line 21.
  auto permit = [](const std::string& from, const std::string& to, const std::string& extra = "",
                   const std::string& agreement_line = "    agreement: ag\n") {
    return "  - id: r1\n    effect: permit\n" + agreement_line + "    from: " + from + "\n    to: " + to + "\n" + extra;
  };
  struct Case {
    const char* name;
    std::string yaml;
    int line, column;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"unknown agency in from", head + permit("[police, nobody]", "[school]"), 19, 11,
       "unknown agency 'nobody' in 'from'"},
      {"unknown group", head + permit("[group:nope]", "[school]"), 19, 11, "unknown group 'nope' in 'from'"},
      {"unknown sector", head + permit("[police]", "[sector:schools]"), 20, 9, "unknown sector 'schools' in 'to'"},
      {"unknown message type", head + permit("[police]", "[school]", "    types: [incident]\n"), 21, 12,
       "unknown message type 'incident'"},
      {"unknown data category",
       head + permit("[police]", "[school]", "    obligations:\n      redact: [secret]\n"), 22, 15,
       "unknown data category 'secret'"},
      {"unknown field path",
       head + permit("[police]", "[school]", "    obligations:\n      pseudonymise: [incident_report.nope]\n"), 22,
       21, "unknown field path 'incident_report.nope'"},
      {"forbid with obligations",
       head + "  - id: r1\n    effect: forbid\n    from: [police]\n    to: [school]\n    obligations:\n"
              "      redact: [identifying]\n",
       21, 7, "a forbid rule has no obligations"},
      {"permit without agreement", head + permit("[police]", "[school]", "", ""), 16, 5,
       "missing required key 'agreement'"},
      {"unknown agreement", head + permit("[police]", "[school]", "", "    agreement: nope\n"), 18, 16,
       "unknown agreement 'nope'"},
      {"purpose outside its agreement", head + permit("[police]", "[school]", "    purposes: [threat_assessment]\n"),
       21, 15, "purpose 'threat_assessment' is not among the purposes of agreement 'ag'"},
      {"bad tlp range", head + permit("[police]", "[school]", "    tlp: RED..CLEAR\n"), 21, 10,
       "'tlp' range RED..CLEAR is empty"},
      {"unknown tlp label", head + permit("[police]", "[school]", "    tlp: PURPLE\n"), 21, 10,
       "'tlp' must be a label or a range"},
      {"unknown consent value", head + permit("[police]", "[school]", "    consent: [yes_please]\n"), 21, 14,
       "unknown consent status 'yes_please'"},
      {"duplicate rule id", head + permit("[police]", "[school]") + permit("[school]", "[police]"), 21, 9,
       "duplicate rule id 'r1' (first defined on line 16)"},
      {"group cycle",
       agencies + "groups:\n  - {id: a, members: [group:b]}\n  - {id: b, members: [police, group:a]}\n", 6, 5,
       "group cycle: a -> b -> a"},
      {"group member unknown group", agencies + "groups:\n  - {id: a, members: [group:nope]}\n", 6, 22,
       "unknown group 'nope' in members of group 'a'"},
      {"valid_until before valid_from", agencies + groups + agreement("2026-01-01", "2025-12-31"), 14, 18,
       "'valid_until' is before 'valid_from'"},
      {"bad date", agencies + groups + agreement("2026-02-30", "2027-12-31"), 13, 17,
       "'valid_from' must be a date YYYY-MM-DD, not '2026-02-30'"},
      {"bad date format", agencies + groups + agreement("2026-01-01", "31.12.2027"), 14, 18,
       "'valid_until' must be a date YYYY-MM-DD, not '31.12.2027'"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name, c.yaml);
    Diagnostics diags;
    auto p = Load(c.yaml, &diags);
    INFO("diagnostics:\n" << liaison::FormatDiagnostics(diags));
    CHECK(p == nullptr);
    CHECK(CountErrors(diags) == 1);
    bool found = false;
    for (const auto& d : diags) {
      found = found || (d.severity == Diagnostic::Severity::kError && d.file == "policy.yaml" && d.line == c.line &&
                        d.column == c.column && d.message.find(c.message) != std::string::npos);
    }
    INFO("expected " << c.line << ":" << c.column << ": " << c.message);
    CHECK(found);
  }
}

TEST_CASE("LoadText: every error of a bad policy is reported in one run", "[policy][evaluate]") {
  const std::string text =
      "version: 1\n"
      "agencies:\n"
      "  - {id: police, name: P, sector: law_enforcement}\n"
      "  - {id: school, name: S, sector: education}\n"
      "groups:\n"
      "  - {id: a, members: [group:b]}\n"          // 6: cycle
      "  - {id: b, members: [group:a]}\n"
      "agreements:\n"
      "  - id: ag\n"
      "    title: A\n"
      "    parties: [police, school]\n"
      "    purposes: [safeguarding]\n"
      "    legal_basis: [public_task]\n"
      "    valid_from: 2026-13-01\n"                // 14: bad date
      "    valid_until: 2027-12-31\n"
      "rules:\n"
      "  - id: r1\n"
      "    effect: permit\n"
      "    agreement: ag\n"
      "    from: [nobody]\n"                        // 20: unknown agency
      "    to: [sector:schools]\n"                  // 21: unknown sector
      "    types: [memo]\n"                         // 22: unknown type
      "    tlp: RED..CLEAR\n"                       // 23: empty range
      "    purposes: [threat_assessment]\n"         // 24: outside the agreement
      "    consent: [maybe]\n"                      // 25: unknown consent
      "    obligations:\n"
      "      redact: [secret]\n"                    // 27: unknown category
      "      pseudonymise: [incident_report.nope]\n"  // 28: unknown path
      "  - id: r1\n"                                // 29: duplicate id
      "    effect: forbid\n"
      "    from: [police]\n"
      "    to: [school]\n"
      "    obligations: {redact: [identifying]}\n"  // 33: forbid with obligations
      "  - id: r3\n"                                // 34: permit without agreement
      "    effect: permit\n"
      "    from: [police]\n"
      "    to: [group:nope]\n"                      // 37: unknown group
      "  - id: r4\n"
      "    effect: permit\n"
      "    agreement: nope\n"                       // 40: unknown agreement
      "    from: [police]\n"
      "    to: [school]\n";
  Diagnostics diags;
  auto p = Load(text, &diags);
  const std::string all = liaison::FormatDiagnostics(diags);
  INFO(all);
  CHECK(p == nullptr);
  const std::vector<std::string> expected = {
      "policy.yaml:6:5: error: group cycle: a -> b -> a",
      "policy.yaml:14:17: error: 'valid_from' must be a date",
      "policy.yaml:20:11: error: unknown agency 'nobody'",
      "policy.yaml:21:9: error: unknown sector 'schools'",
      "policy.yaml:22:12: error: unknown message type 'memo'",
      "policy.yaml:23:10: error: 'tlp' range RED..CLEAR is empty",
      "policy.yaml:24:15: error: purpose 'threat_assessment' is not among",
      "policy.yaml:25:14: error: unknown consent status 'maybe'",
      "policy.yaml:27:15: error: unknown data category 'secret'",
      "policy.yaml:28:21: error: unknown field path 'incident_report.nope'",
      "policy.yaml:29:9: error: duplicate rule id 'r1'",
      "policy.yaml:33:18: error: a forbid rule has no obligations",
      "policy.yaml:34:5: error: missing required key 'agreement'",
      "policy.yaml:37:9: error: unknown group 'nope'",
      "policy.yaml:40:16: error: unknown agreement 'nope'",
  };
  for (const auto& e : expected) CHECK_THAT(all, Catch::Contains(e));
  CHECK(CountErrors(diags) == static_cast<int>(expected.size()));
}

TEST_CASE("LoadText: an overdue review is a warning, and the policy loads", "[policy][evaluate]") {
  auto p = LoadTestPolicy();  // warns that 'old' has expired; loads
  Diagnostics diags;
  // main's review_by 2027-06-30 is overdue on 2027-07-01.
  auto q = Load(kPolicy, &diags, At(2027, 7, 1));
  INFO(liaison::FormatDiagnostics(diags));
  REQUIRE(q != nullptr);
  CHECK(CountErrors(diags) == 0);
  bool review = false, expired = false;
  for (const auto& d : diags) {
    CHECK(d.severity == Diagnostic::Severity::kWarning);
    if (d.message.find("was due for review on 2027-06-30") != std::string::npos) {
      review = true;
      CHECK(d.line == 25);
      CHECK(d.column == 16);
    }
    expired = expired || d.message.find("agreement 'old' expired on 2025-12-31") != std::string::npos;
  }
  CHECK(review);
  CHECK(expired);
  // The same policy on a day before the review date: no review warning.
  Diagnostics before;
  REQUIRE(Load(kPolicy, &before, At(2027, 6, 30)) != nullptr);
  for (const auto& d : before) CHECK(d.message.find("due for review") == std::string::npos);
}

// Regression: the review warning used to read "agreement '' was due ...".
TEST_CASE("LoadText: the overdue-review warning names its agreement", "[policy][evaluate]") {
  Diagnostics diags;
  REQUIRE(Load(kPolicy, &diags, At(2027, 7, 1)) != nullptr);
  bool named = false;
  for (const auto& d : diags) {
    named = named || d.message.find("agreement 'main' was due for review on 2027-06-30") != std::string::npos;
  }
  INFO(liaison::FormatDiagnostics(diags));
  CHECK(named);
}

TEST_CASE("LoadText: malformed YAML is an error", "[policy][evaluate]") {
  for (const std::string text : {"version: 1\nagencies: [\n", "version: 1\nagencies:\n  - {id: a\n",
                                 "version: 1\n  agencies: x\n bad", "\t- tab\n", "version: 1\nagencies: *nope\n"}) {
    CAPTURE(text);
    Diagnostics diags;
    CHECK(Load(text, &diags) == nullptr);
    CHECK(CountErrors(diags) >= 1);
  }
}

TEST_CASE("LoadFile: 10 MB of nested lists is an error, not a crash", "[policy][evaluate]") {
  TempDir dir;
  const size_t depth = 5 * 1024 * 1024;
  std::string text(depth, '[');
  text.append(depth, ']');
  const std::string path = dir.Write("deep.yaml", text);
  Diagnostics diags;
  auto p = Policy::LoadFile(path, &diags);
  INFO(liaison::FormatDiagnostics(diags));
  CHECK(p == nullptr);
  CHECK(CountErrors(diags) >= 1);
}

TEST_CASE("LoadFile: a flat file of 20,000 agencies loads", "[policy][evaluate]") {
  TempDir dir;
  std::string text = "version: 1\nagencies:\n";
  for (int i = 0; i < 20000; ++i) {
    text += "  - {id: a" + std::to_string(i) + ", name: Agency " + std::to_string(i) + ", sector: " +
            (i % 2 ? "education" : "health") + "}\n";
  }
  text += "groups:\n  - {id: even, members: [a0, a2, a4]}\n";
  text +=
      "agreements:\n  - {id: all, title: All, parties: ['*'], purposes: [safeguarding], legal_basis: [public_task],"
      " valid_from: 2026-01-01, valid_until: 2027-12-31}\n";
  text +=
      "rules:\n  - {id: r, effect: permit, agreement: all, from: [sector:health], to: ['*']}\n"
      "  - {id: f, effect: forbid, from: [group:even], to: [a19999]}\n";
  const std::string path = dir.Write("flat.yaml", text);
  Diagnostics diags;
  auto p = Policy::LoadFile(path, &diags, kNow);
  INFO(liaison::FormatDiagnostics(diags).substr(0, 2000));
  REQUIRE(p != nullptr);
  CHECK(p->agencies().size() == 20000);
  REQUIRE(p->FindAgency("a19998") != nullptr);
  Request q;
  q.sender = "a19998";
  q.recipient = "a7";
  q.message_type = "incident_report";
  q.tlp = kAmber;
  q.purpose = "safeguarding";
  q.now = kNow;
  CHECK(p->Evaluate(q).permit);
  q.recipient = "a19999";
  CHECK(p->Evaluate(q).permit);
  q.sender = "a2";
  CHECK(p->Evaluate(q).denial == Denial::kForbidden);
  q.sender = "a19999";  // education
  CHECK(p->Evaluate(q).denial == Denial::kNoPermit);
}

// The decisions docs/policy.md describes for the example policy.
TEST_CASE("the example policy decides as documented", "[policy][evaluate]") {
  const std::string path = std::string(LIAISON_UNIT_SOURCE_DIR) + "/docs/examples/policy.yaml";
  Diagnostics diags;
  auto p = Policy::LoadFile(path, &diags, kNow);
  INFO(liaison::FormatDiagnostics(diags));
  REQUIRE(p != nullptr);
  CHECK(CountErrors(diags) == 0);

  auto ask = [&](const char* from, const char* to, const char* type, int tlp, const char* purpose, int consent = 0) {
    Request q;
    q.sender = from;
    q.recipient = to;
    q.message_type = type;
    q.tlp = tlp;
    q.purpose = purpose;
    q.consent_status = consent;
    q.now = kNow;
    return p->Evaluate(q);
  };

  Decision d = ask("police", "social", "incident_report", kAmber, "safeguarding");
  CHECK(d.permit);
  CHECK(p->RuleIds(d) == std::vector<std::string>{"core-partners-share"});
  CHECK(p->ObligationsOf(d).empty());

  d = ask("police", "school", "incident_report", kAmber, "safeguarding");
  REQUIRE(d.permit);
  CHECK(p->RuleIds(d) == std::vector<std::string>{"incidents-to-schools"});
  Obligations o = p->ObligationsOf(d);
  CHECK(o.redact_categories == std::set<int>{v1::CAT_CRIMINAL_OFFENCE, v1::CAT_SPECIAL_CATEGORY});
  CHECK(o.pseudonymise_categories == std::set<int>{v1::CAT_IDENTIFYING});
  CHECK(o.redact_paths == std::set<std::string>{"incident_report.persons.notes"});
  CHECK(o.pseudonymise_paths.empty());

  d = ask("police", "youth-ngo", "incident_report", kAmber, "safeguarding");
  CHECK(d.denial == Denial::kNoPermit);

  d = ask("social", "youth-ngo", "case_referral", kAmber, "safeguarding", v1::CONSENT_GIVEN);
  REQUIRE(d.permit);
  CHECK(p->RuleIds(d) == std::vector<std::string>{"referrals-to-youth-work"});
  o = p->ObligationsOf(d);
  CHECK(o.redact_categories == std::set<int>{v1::CAT_IDENTIFYING, v1::CAT_SPECIAL_CATEGORY,
                                             v1::CAT_CRIMINAL_OFFENCE, v1::CAT_FREE_TEXT});
  CHECK(o.pseudonymise_categories.empty());

  d = ask("social", "youth-ngo", "case_referral", kAmber, "safeguarding", v1::CONSENT_REFUSED);
  CHECK(d.denial == Denial::kNoPermit);

  // A case_update carries no consent status (0), so a rule with 'consent'
  // never matches one: referrals-to-youth-work lists case_update in vain.
  d = ask("social", "youth-ngo", "case_update", kAmber, "safeguarding", 0);
  CHECK(d.denial == Denial::kNoPermit);

  for (const char* type : {"incident_report", "case_referral", "case_update"}) {
    for (int tlp : {kClear, kGreen, kAmber, kAmberStrict, kRed}) {
      for (const char* purpose : {"safeguarding", "threat_assessment", "anything"}) {
        CAPTURE(type, tlp, purpose);
        d = ask("health", "national-centre", type, tlp, purpose);
        CHECK(d.denial == Denial::kForbidden);
        CHECK(p->RuleIds(d) == std::vector<std::string>{"no-health-to-national"});
      }
    }
  }

  d = ask("school", "youth-ngo", "incident_report", kAmber, "safeguarding");
  CHECK(d.denial == Denial::kAgreementNotInForce);
  Request q;
  q.sender = "school";
  q.recipient = "youth-ngo";
  q.message_type = "incident_report";
  q.purpose = "safeguarding";
  q.tlp = kAmber;
  CHECK_THAT(p->Reasons(d, q).front(), Catch::Contains("school-pilot-2025"));

  d = ask("police", "national-centre", "incident_report", kAmber, "threat_assessment");
  CHECK(d.permit);
  CHECK(p->RuleIds(d) == std::vector<std::string>{"police-escalate"});
  CHECK(p->agreements()[d.agreement].id == "national-escalation");
  CHECK(p->ObligationsOf(d).empty());

  // RED never reaches civil society, even between partners that may share.
  d = ask("social", "youth-ngo", "case_referral", kRed, "safeguarding", v1::CONSENT_GIVEN);
  CHECK(d.denial == Denial::kForbidden);
}

// A policy's compiled index grows with agencies x rules: 2.6 MB of policy
// (20,000 agencies, 20,000 rules) took 2.5 GB and 17 s to load, and a
// policy file within the 16 MiB limit could ask for tens of gigabytes, so
// that the broker reloading it was killed. Too long a list is an error at
// that list, found before anything is compiled.
TEST_CASE("LoadText: a policy too large to compile is refused at the list that is too long", "[policy][evaluate]") {
  auto make = [](size_t agencies, size_t groups, size_t rules) {
    std::string y = "version: 1\nagencies:\n";  // agencies from line 3
    for (size_t i = 0; i < agencies; ++i) y += "  - {id: a" + std::to_string(i) + ", name: A, sector: social_work}\n";
    if (groups > 0) y += "groups:\n";  // groups from line agencies + 4
    for (size_t i = 0; i < groups; ++i) y += "  - {id: g" + std::to_string(i) + ", members: [a0]}\n";
    y += "agreements:\n  - {id: n, title: N, parties: [\"*\"], purposes: [safeguarding], legal_basis: [public_task], "
         "valid_from: 2020-01-01, valid_until: 2099-12-31}\nrules:\n";
    for (size_t i = 0; i < rules; ++i) {
      y += "  - {id: r" + std::to_string(i) + ", effect: permit, agreement: n, from: [\"*\"], to: [\"*\"]}\n";
    }
    return y;
  };
  struct Case {
    size_t agencies, groups, rules;
    int line;  // of the list reported
    std::string message;
  };
  const std::vector<Case> cases = {
      {4'100, 0, 4'100, 4'106, "4100 agencies and 4100 rules: agencies x rules may be at most 16777216"},
      {20'000, 0, 839, 20'006, "20000 agencies and 839 rules: agencies x rules may be at most 16777216"},
      {20'000, 53'688, 1, 20'004, "20000 agencies and 53688 groups: agencies x groups may be at most 1073741824"},
  };
  for (const auto& c : cases) {
    INFO(c.agencies << " agencies, " << c.groups << " groups, " << c.rules << " rules");
    Diagnostics diags;
    CHECK(Load(make(c.agencies, c.groups, c.rules), &diags) == nullptr);
    REQUIRE(diags.size() == 1);
    CHECK(diags[0].severity == Diagnostic::Severity::kError);
    CHECK(diags[0].line == c.line);
    CHECK(diags[0].message.find(c.message) == 0);
  }
  // At the bounds it loads.
  Diagnostics diags;
  CHECK(Load(make(4'096, 0, 4'096), &diags) != nullptr);
  CHECK(Load(make(20'000, 0, 838), &diags) != nullptr);
}
