// Unit tests for policy/policy.h: parsing the agencies section with
// positioned errors, and binding verified certificates to agencies.
#include "policy/policy.h"

#include <catch2/catch.hpp>

#include "tests/temp_dir.h"
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

using liaison::Diagnostic;
using liaison::Diagnostics;
using liaison::PeerIdentity;
using liaison::policy::CertificateMatch;
using liaison::policy::Policy;

using liaison::test::TempDir;

// The two pins of kPolicy's health agency, and one nobody has.
const std::string kPinA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const std::string kPinB = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const std::string kPinC(64, 'c');

// Five agencies: one for each way a certificate can be bound, and an auditor.
const std::string kPolicy =
    "version: 1\n"
    "agencies:\n"
    "  - id: police\n"  // 3: default SAN URI urn:liaison:agency:police
    "    name: City Police, Prevention Unit\n"
    "    sector: law_enforcement\n"
    "  - id: school\n"  // 6: an explicit SAN URI
    "    name: Northside Secondary School\n"
    "    sector: education\n"
    "    certificate:\n"
    "      san_uri: urn:example:school:northside\n"
    "  - id: social\n"  // 11: subject and issuer
    "    name: Municipal Social Services\n"
    "    sector: social_work\n"
    "    certificate:\n"
    "      subject: 'CN=social,O=City of Northside'\n"
    "      issuer: 'CN=Liaison Dev CA'\n"
    "  - id: health\n"  // 17: SPKI pins, two during a key rotation
    "    name: Community Mental Health Service\n"
    "    sector: health\n"
    "    certificate:\n"
    "      spki_sha256:\n"
    "        - aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
    "        - 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n"
    "  - id: dpo\n"  // 24
    "    name: Data Protection Officer\n"
    "    sector: local_government\n"
    "    roles: [auditor]\n"
    "    audit_scope: ['*']\n";

std::string Errors(const Diagnostics& d) {
  return liaison::FormatDiagnostics(d);
}

int CountErrors(const Diagnostics& d) {
  int n = 0;
  for (const auto& x : d) n += x.severity == Diagnostic::Severity::kError;
  return n;
}

std::shared_ptr<const Policy> LoadValid(const TempDir& dir) {
  const std::string path = dir.Write("policy.yaml", kPolicy);
  Diagnostics diags;
  auto p = Policy::LoadFile(path, &diags);
  INFO(Errors(diags));
  REQUIRE(p != nullptr);
  REQUIRE(diags.empty());
  return p;
}

}  // namespace

TEST_CASE("Policy::LoadFile reads a valid policy", "[policy]") {
  TempDir dir;
  auto p = LoadValid(dir);
  REQUIRE(p->agencies().size() == 5);

  const auto* police = p->FindAgency("police");
  REQUIRE(police != nullptr);
  CHECK(police->name == "City Police, Prevention Unit");
  CHECK(police->sector == "law_enforcement");
  CHECK(police->line == 3);
  CHECK(police->certificate.kind == CertificateMatch::Kind::kSanUri);
  CHECK(police->certificate.san_uri == "urn:liaison:agency:police");
  CHECK(police->roles.empty());

  const auto* school = p->FindAgency("school");
  REQUIRE(school != nullptr);
  CHECK(school->certificate.kind == CertificateMatch::Kind::kSanUri);
  CHECK(school->certificate.san_uri == "urn:example:school:northside");

  const auto* social = p->FindAgency("social");
  REQUIRE(social != nullptr);
  CHECK(social->certificate.kind == CertificateMatch::Kind::kSubject);
  CHECK(social->certificate.subject == "CN=social,O=City of Northside");
  CHECK(social->certificate.issuer == "CN=Liaison Dev CA");
  CHECK(social->certificate.san_uri.empty());

  const auto* health = p->FindAgency("health");
  REQUIRE(health != nullptr);
  CHECK(health->certificate.kind == CertificateMatch::Kind::kSpki);
  CHECK(health->certificate.spki_sha256 == std::vector<std::string>{kPinA, kPinB});
  CHECK(health->line == 17);

  const auto* dpo = p->FindAgency("dpo");
  REQUIRE(dpo != nullptr);
  CHECK(dpo->roles == std::vector<std::string>{"auditor"});

  CHECK(p->FindAgency("nobody") == nullptr);
  CHECK(p->FindAgency("") == nullptr);
  CHECK(p->FindAgency("Police") == nullptr);

  CHECK(p->path() == dir.Write("policy.yaml", kPolicy));
}

TEST_CASE("Policy::version identifies the policy's content", "[policy]") {
  TempDir dir;
  Diagnostics diags;
  auto a = Policy::LoadFile(dir.Write("a.yaml", kPolicy), &diags);
  auto same = Policy::LoadFile(dir.Write("same.yaml", kPolicy), &diags);
  std::string renamed = kPolicy;
  renamed.replace(renamed.find("City Police"), 4, "Town");
  auto changed = Policy::LoadFile(dir.Write("changed.yaml", renamed), &diags);
  INFO(Errors(diags));
  REQUIRE(a != nullptr);
  REQUIRE(same != nullptr);
  REQUIRE(changed != nullptr);
  CHECK(a->version().size() == 64);  // SHA-256 in hex
  CHECK(a->version().find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(a->version() == same->version());
  CHECK(a->version() != changed->version());
}

TEST_CASE("Policy::version ignores comments and the order of keys", "[policy]") {
  // policy.h: the version is a hash of the canonical form, so the same
  // policy written differently has the same version.
  TempDir dir;
  const std::string base = "version: 1\nagencies:\n  - id: police\n    name: Police\n    sector: law_enforcement\n";
  const std::string commented =
      "# The city's policy\nversion: 1  # the format\nagencies:\n  - id: police\n    name: Police\n"
      "    sector: law_enforcement  # the sector\n";
  const std::string reordered =
      "agencies:\n  - sector: law_enforcement\n    name: Police\n    id: police\nversion: 1\n";
  const std::string renamed = "version: 1\nagencies:\n  - id: police\n    name: Polis\n    sector: law_enforcement\n";
  Diagnostics diags;
  auto a = Policy::LoadFile(dir.Write("a.yaml", base), &diags);
  auto b = Policy::LoadFile(dir.Write("b.yaml", commented), &diags);
  auto c = Policy::LoadFile(dir.Write("c.yaml", reordered), &diags);
  auto d = Policy::LoadFile(dir.Write("d.yaml", renamed), &diags);
  INFO(Errors(diags));
  REQUIRE(a != nullptr);
  REQUIRE(b != nullptr);
  REQUIRE(c != nullptr);
  REQUIRE(d != nullptr);
  CHECK(a->version() == b->version());
  CHECK(a->version() == c->version());
  CHECK(a->version() != d->version());
}

TEST_CASE("Policy::LoadFile reports each error with its position", "[policy]") {
  struct Case {
    const char* name;
    std::string yaml;
    int line;
    int column;
    std::string message;
    int errors;  // expected number of errors; 0: not checked
  };
  const std::string head = "version: 1\nagencies:\n";
  const std::string police = "  - id: police\n    name: Police\n    sector: law_enforcement\n";  // lines 3-5
  // A valid agency after a broken one, so the list is never empty.
  const std::string valid = "  - id: zeta\n    name: Z\n    sector: education\n";
  const std::vector<Case> cases = {
      {"duplicate agency id", head + police + "  - id: police\n    name: Police 2\n    sector: law_enforcement\n", 6, 9,
       "duplicate agency id 'police' (first defined on line 3)", 0},
      {"bad id", head + "  - id: Police!\n    name: Police\n    sector: law_enforcement\n" + valid, 3, 9,
       "agency id 'Police!' must be 1-63 lower-case letters", 1},
      {"id with a dot", head + "  - id: city.police\n    name: Police\n    sector: law_enforcement\n" + valid, 3, 9,
       "agency id 'city.police' must be", 1},
      {"missing id", head + "  - name: Police\n    sector: law_enforcement\n" + valid, 3, 5,
       "missing required key 'id'", 1},
      {"missing name", head + "  - id: police\n    sector: law_enforcement\n", 3, 5, "missing required key 'name'", 1},
      {"missing sector", head + "  - id: police\n    name: Police\n", 3, 5, "missing required key 'sector'", 1},
      {"unknown sector", head + "  - id: police\n    name: Police\n    sector: police\n", 5, 13,
       "unknown sector 'police'", 1},
      {"unknown role", head + police + "    roles: [admin]\n", 6, 12, "unknown role 'admin'", 1},
      {"unknown key in an agency", head + police + "    email: ops@police.example\n", 6, 5,
       "unknown key 'email' in an agency", 1},
      {"agency not a map", head + "  - police\n" + valid, 3, 5, "an agency must be a map", 1},
      {"certificate with san_uri and spki",
       head + police + "    certificate:\n      san_uri: urn:liaison:agency:police\n      spki_sha256: " + kPinA + "\n",
       7, 7, "'certificate' must use exactly one of: san_uri; subject with issuer; spki_sha256", 1},
      {"certificate with subject and spki",
       head + police + "    certificate:\n      subject: CN=police\n      issuer: CN=ca\n      spki_sha256: " + kPinA +
           "\n",
       7, 7, "'certificate' must use exactly one of", 1},
      {"subject without issuer", head + police + "    certificate:\n      subject: CN=police\n", 7, 7,
       "missing required key 'issuer'", 1},
      {"issuer without subject", head + police + "    certificate:\n      issuer: CN=ca\n", 7, 7,
       "missing required key 'subject'", 1},
      {"unknown key in certificate", head + police + "    certificate:\n      cn: police\n", 7, 7,
       "unknown key 'cn' in 'certificate'", 0},
      {"bad spki pin (short)", head + police + "    certificate:\n      spki_sha256: [abc]\n", 7, 20,
       "pin 'abc' must be 64 lower-case hex digits (SHA-256)", 1},
      {"bad spki pin (upper case)",
       head + police + "    certificate:\n      spki_sha256: " + std::string(64, 'A') + "\n", 7, 20,
       "must be 64 lower-case hex digits", 1},
      {"bad spki pin (non-hex)", head + police + "    certificate:\n      spki_sha256: " + std::string(63, 'a') + "g\n",
       7, 20, "must be 64 lower-case hex digits", 1},
      {"san_uri not a URI", head + police + "    certificate:\n      san_uri: police\n", 7, 16,
       "san_uri 'police' is not a URI", 1},
      {"two agencies with the same SAN URI",
       head + police +
           "  - id: police2\n    name: P2\n    sector: law_enforcement\n    certificate:\n"
           "      san_uri: urn:liaison:agency:police\n",
       10, 7, "SAN URI 'urn:liaison:agency:police' is already bound to agency 'police'", 1},
      {"an explicit SAN URI taking another agency's default",
       head +
           "  - id: school\n    name: S\n    sector: education\n    certificate:\n"
           "      san_uri: urn:liaison:agency:police\n" +
           police,
       8, 5, "SAN URI 'urn:liaison:agency:police' is already bound to agency 'school'", 1},
      {"two agencies with the same SPKI pin",
       head + "  - id: a\n    name: A\n    sector: health\n    certificate:\n      spki_sha256: " + kPinA + "\n" +
           "  - id: b\n    name: B\n    sector: health\n    certificate:\n      spki_sha256: [" + kPinC + ", " + kPinA +
           "]\n",
       12, 7, "SPKI pin " + kPinA + " is already bound to agency 'a'", 1},
      {"two agencies with the same subject and issuer",
       head +
           "  - id: a\n    name: A\n    sector: health\n    certificate:\n      subject: CN=x\n      issuer: CN=ca\n" +
           "  - id: b\n    name: B\n    sector: health\n    certificate:\n      subject: CN=x\n      issuer: CN=ca\n",
       13, 7, "subject 'CN=x' is already bound to agency 'a'", 1},
      {"empty agencies", "version: 1\nagencies: []\n", 2, 11, "'agencies' is empty", 1},
      {"agencies missing", "version: 1\n", 1, 1, "missing required key 'agencies'", 1},
      {"agencies not a list", "version: 1\nagencies:\n  police: {}\n", 3, 3, "'agencies' must be a list", 1},
      {"unknown top-level key", head + police + "colours: []\n", 6, 1, "unknown key 'colours' in the policy", 1},
      {"version 2", "version: 2\nagencies:\n" + police, 1, 10, "'version' must be between 1 and 1, not 2", 1},
      {"version missing", "agencies:\n" + police.substr(0), 1, 1, "missing required key 'version'", 1},
      {"version not a number", "version: one\nagencies:\n" + police, 1, 10, "'version' must be a whole number", 1},
      {"YAML syntax error", head + police + "   bad: [\n", 6, 0, "YAML syntax", 1},
      {"empty file", "", 0, 0, "the file is empty", 1},
      {"a list instead of a map", "- police\n", 1, 1, "the policy must be a map", 1},
  };
  TempDir dir;
  for (const auto& c : cases) {
    CAPTURE(c.name, c.yaml);
    const std::string path = dir.Write("policy.yaml", c.yaml);
    Diagnostics diags;
    auto p = Policy::LoadFile(path, &diags);
    INFO("diagnostics:\n" << Errors(diags));
    CHECK(p == nullptr);
    if (c.errors != 0) CHECK(CountErrors(diags) == c.errors);
    bool found = false;
    for (const auto& d : diags) {
      found = found || (d.severity == Diagnostic::Severity::kError && d.file == path && d.line == c.line &&
                        (c.column == 0 || d.column == c.column) && d.message.find(c.message) != std::string::npos);
    }
    INFO("expected " << c.line << ":" << c.column << ": " << c.message);
    CHECK(found);
  }
}

TEST_CASE("Policy::LoadFile reports every error of a file in one run", "[policy]") {
  TempDir dir;
  const std::string path = dir.Write("policy.yaml",
                                     "version: 1\n"
                                     "agencies:\n"
                                     "  - id: Police!\n"  // 3
                                     "    name: Police\n"
                                     "    sector: law_enforcement\n"
                                     "  - id: school\n"
                                     "    sector: schools\n"  // 7: unknown sector; name missing (at 6)
                                     "    roles: [admin]\n"   // 8
                                     "teams: []\n");          // 9
  Diagnostics diags;
  CHECK(Policy::LoadFile(path, &diags) == nullptr);
  INFO(Errors(diags));
  CHECK(CountErrors(diags) == 5);
  const std::string all = Errors(diags);
  for (const char* part : {":3:9: error: agency id 'Police!'", ":6:5: error: missing required key 'name'",
                           ":7:13: error: unknown sector 'schools'", ":8:12: error: unknown role 'admin'",
                           ":9:1: error: unknown key 'teams'"}) {
    CHECK_THAT(all, Catch::Contains(part));
  }
}

TEST_CASE("Policy::Identify binds a certificate to exactly one agency", "[policy]") {
  TempDir dir;
  auto p = LoadValid(dir);
  struct Case {
    const char* name;
    PeerIdentity peer;
    const char* agency;  // nullptr: refused
    const char* error;
  };
  auto san = [](std::vector<std::string> uris) {
    PeerIdentity id;
    id.san_uris = std::move(uris);
    id.subject = "CN=someone,O=Somewhere";
    id.issuer = "CN=Liaison Dev CA";
    id.spki_sha256 = std::string(64, 'e');
    return id;
  };
  auto subject = [](std::string s, std::string i) {
    PeerIdentity id;
    id.subject = std::move(s);
    id.issuer = std::move(i);
    id.spki_sha256 = std::string(64, 'e');
    return id;
  };
  auto spki = [](std::string pin) {
    PeerIdentity id;
    id.subject = "CN=health";
    id.issuer = "CN=Liaison Dev CA";
    id.spki_sha256 = std::move(pin);
    return id;
  };
  const std::vector<Case> cases = {
      {"default SAN URI", san({"urn:liaison:agency:police"}), "police", nullptr},
      {"SAN URI among others", san({"https://police.example", "urn:liaison:agency:police"}), "police", nullptr},
      {"the same SAN URI twice", san({"urn:liaison:agency:police", "urn:liaison:agency:police"}), "police", nullptr},
      {"explicit SAN URI", san({"urn:example:school:northside"}), "school", nullptr},
      {"default SAN URI of an agency bound otherwise", san({"urn:liaison:agency:school"}), nullptr,
       "matches no agency"},
      {"SAN URI of an unknown agency", san({"urn:liaison:agency:mallory"}), nullptr, "matches no agency"},
      {"SAN URI differing in case", san({"URN:LIAISON:AGENCY:POLICE"}), nullptr, "matches no agency"},
      {"CN alone never identifies", subject("CN=police", "CN=Liaison Dev CA"), nullptr, "matches no agency"},
      {"CN alone, even an agency's id", subject("CN=police", ""), nullptr, "matches no agency"},
      {"subject and issuer", subject("CN=social,O=City of Northside", "CN=Liaison Dev CA"), "social", nullptr},
      {"subject with another issuer", subject("CN=social,O=City of Northside", "CN=Other CA"), nullptr,
       "matches no agency"},
      {"issuer with another subject", subject("CN=social", "CN=Liaison Dev CA"), nullptr, "matches no agency"},
      {"first SPKI pin", spki(kPinA), "health", nullptr},
      {"second SPKI pin (rotation)", spki(kPinB), "health", nullptr},
      {"unknown SPKI pin", spki(kPinC), nullptr, "matches no agency"},
      {"SAN URIs of two agencies", san({"urn:liaison:agency:police", "urn:example:school:northside"}), nullptr,
       "matches several agencies (police, school)"},
      {"SAN URI of one agency, pin of another",
       [] {
         PeerIdentity id;
         id.san_uris = {"urn:liaison:agency:police"};
         id.spki_sha256 = kPinA;
         return id;
       }(),
       nullptr, "matches several agencies"},
      {"SAN URI of one agency, subject of another",
       [] {
         PeerIdentity id;
         id.san_uris = {"urn:liaison:agency:police"};
         id.subject = "CN=social,O=City of Northside";
         id.issuer = "CN=Liaison Dev CA";
         return id;
       }(),
       nullptr, "matches several agencies"},
      {"nothing at all", PeerIdentity{}, nullptr, "matches no agency"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto got = p->Identify(c.peer);
    if (c.agency) {
      INFO(got.status().ToString());
      REQUIRE(got.ok());
      REQUIRE(*got != nullptr);
      CHECK((*got)->id == c.agency);
      CHECK(*got == p->FindAgency(c.agency));
    } else {
      REQUIRE_FALSE(got.ok());
      CHECK(got.status().IsPermissionDenied());
      CHECK_THAT(got.status().message(), Catch::Contains(c.error));
    }
  }
}

// The example operators copy must always load.
TEST_CASE("the example policy loads", "[policy]") {
  const std::string path = std::string(LIAISON_UNIT_SOURCE_DIR) + "/docs/examples/policy.yaml";
  Diagnostics diags;
  auto p = Policy::LoadFile(path, &diags);
  INFO(Errors(diags));
  REQUIRE(p != nullptr);
  CHECK(p->agencies().size() == 7);
  REQUIRE(p->FindAgency("auditor") != nullptr);
  CHECK(p->FindAgency("auditor")->roles == std::vector<std::string>{"auditor"});
  PeerIdentity id;
  id.san_uris = {"urn:liaison:agency:youth-ngo"};
  auto got = p->Identify(id);
  REQUIRE(got.ok());
  CHECK((*got)->id == "youth-ngo");
}

// yaml-cpp keeps both entries of a repeated key and returns the first, so
// an agency whose "certificate:" is given twice is bound by the first and
// the second is silently ignored: an operator who appended a new binding
// sees no error, and the old one stays in force.
// (A regression test: duplicate keys used to be accepted silently.)
TEST_CASE("Policy::LoadFile refuses a duplicate key in an agency", "[policy]") {
  TempDir dir;
  const std::string path = dir.Write("policy.yaml",
                                     "version: 1\n"
                                     "agencies:\n"
                                     "  - id: police\n"
                                     "    name: Police\n"
                                     "    sector: law_enforcement\n"
                                     "    certificate:\n"
                                     "      san_uri: urn:old:police\n"
                                     "    certificate:\n"  // 8
                                     "      san_uri: urn:new:police\n");
  Diagnostics diags;
  auto p = Policy::LoadFile(path, &diags);
  INFO(Errors(diags));
  CHECK(p == nullptr);
  REQUIRE(CountErrors(diags) >= 1);
  CHECK(diags[0].line == 8);
  CHECK_THAT(diags[0].message, Catch::Contains("certificate"));
}

// An empty pin list passes every check, so the agency is accepted with no
// binding at all: no certificate can ever identify it, and the operator is
// not told.
// (A regression test: an empty list used to be accepted.)
TEST_CASE("Policy::LoadFile refuses an empty spki_sha256 list", "[policy]") {
  TempDir dir;
  const std::string path = dir.Write("policy.yaml",
                                     "version: 1\n"
                                     "agencies:\n"
                                     "  - id: health\n"
                                     "    name: Health\n"
                                     "    sector: health\n"
                                     "    certificate:\n"
                                     "      spki_sha256: []\n");  // 7
  Diagnostics diags;
  auto p = Policy::LoadFile(path, &diags);
  INFO(Errors(diags));
  CHECK(p == nullptr);
  REQUIRE(CountErrors(diags) == 1);
  CHECK(diags[0].line == 7);
  CHECK_THAT(diags[0].message, Catch::Contains("spki_sha256"));
}
