// The policy: the one reviewable file in which a city's data-protection
// officer defines the agencies (and how their certificates identify them),
// groups, sharing agreements and the rules that permit or forbid sharing,
// with the obligations (redaction, pseudonymisation) a permit carries
// (docs/policy.md). Load validates strictly and reports every problem with
// file:line:column; the result is compiled into an immutable, indexed form
// that any number of threads may evaluate at once. A reload builds a new
// Policy and swaps the pointer.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <unordered_map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/diagnostic.h"
#include "common/status.h"
#include "common/tls.h"
#include "policy/obligations.h"

namespace liaison::policy {

// How a verified certificate is bound to an agency (DESIGN.md, identity).
// Never by CN alone.
struct CertificateMatch {
  enum class Kind {
    kSanUri,   // a subjectAltName URI, by default urn:liaison:agency:<id>
    kSubject,  // the exact subject DN together with its issuer DN (RFC 2253)
    kSpki,     // SHA-256 pins of the public key; several allowed for rotation
  };
  Kind kind = Kind::kSanUri;
  std::string san_uri;
  std::string subject;
  std::string issuer;
  std::vector<std::string> spki_sha256;  // lower-case hex
};

struct Agency {
  std::string id;
  std::string name;
  std::string sector;
  CertificateMatch certificate;
  std::vector<std::string> roles;
  std::vector<std::string> audit_scope;  // auditors: agencies, group:, sector: whose records they see
  int line = 0;
  bool is_auditor() const;
};

struct Group {
  std::string id;
  std::string name;
  std::vector<std::string> members;  // agency ids and group:<id>
  int line = 0;
};

using Date = std::chrono::sys_days;

struct Agreement {
  std::string id;
  std::string title;
  std::vector<std::string> parties;      // agency, group:, sector: references
  std::vector<std::string> purposes;
  std::vector<int> legal_bases;          // liaison.v1.LegalBasis values
  Date valid_from{};
  Date valid_until{};                    // inclusive, through the end of the day (UTC)
  Date review_by{};
  int line = 0;
};

enum class Effect { kPermit, kForbid };

struct Rule {
  std::string id;
  Effect effect = Effect::kPermit;
  std::string agreement;                 // required for permits
  std::vector<std::string> from, to;     // agency, group:, sector: or "*"
  std::vector<std::string> types;        // message types; empty: all
  int tlp_min = 1, tlp_max = 5;          // liaison.v1.Tlp range, inclusive
  std::vector<std::string> purposes;     // empty: the agreement's (or any, for a forbid without one)
  std::vector<int> consent;              // liaison.v1.ConsentStatus; empty: any
  std::vector<int> legal_bases;          // liaison.v1.LegalBasis; empty: any
  Obligations obligations;
  int line = 0;
};

// The routing metadata of an earlier message that a forwarded one refers to.
struct OriginalMessage {
  std::string sender;
  std::vector<std::string> recipients;
  int tlp = 0;
  std::string agreement;
};

// One question: may this recipient receive this message?
struct Request {
  std::string_view sender;
  std::string_view recipient;
  std::string_view message_type;   // "incident_report", ...
  int tlp = 0;                     // liaison.v1.Tlp
  std::string_view purpose;
  int consent_status = 0;          // liaison.v1.ConsentStatus, 0 when the message has none
  int legal_basis = 0;             // liaison.v1.LegalBasis, 0 when the message has none
  std::string_view agreement;      // named by the envelope; empty when not
  bool named_individually = true;  // false when the recipient came from a group fan-out
  bool is_forward = false;         // the envelope references a forwarded message
  const OriginalMessage* original = nullptr;  // its metadata, when the broker knows it
  std::chrono::system_clock::time_point now = std::chrono::system_clock::now();
};

// Why a recipient was refused (the wire says only "not_permitted").
enum class Denial {
  kNone,
  kUnknownSender,
  kUnknownRecipient,
  kNoPermit,              // no permit rule matches
  kForbidden,             // a forbid rule matches
  kAgreementNotInForce,   // the only matching permits belong to agreements not in force
  kAmbiguousAgreement,    // permits under several agreements; the envelope must name one
  kRedNeedsNamedRecipient,
  kForwardRestricted,     // TLP forbids forwarding to this recipient
  kForwardOriginUnknown,  // a forward whose original this broker does not know
};

// "no_permit", "forbidden", ...: the name tools and logs use.
const char* DenialName(Denial denial);

struct Decision {
  bool permit = false;
  Denial denial = Denial::kNone;
  int agreement = -1;               // index into agreements(), when permitted
  std::vector<uint32_t> rules;      // indices of the rules that decided it
  std::vector<uint32_t> not_in_force;  // agreements whose permits matched but are not in force
};

// One step of an explanation: a rule considered and what came of it.
struct TraceStep {
  std::string rule;
  std::string outcome;  // "matched", "skipped: ..."
};

const std::vector<std::string>& KnownSectors();
std::string DefaultSanUri(std::string_view agency_id);

class Policy {
 public:
  // Parses, validates and compiles a policy file. Returns null when there
  // are errors (all of them in diags); warnings (overdue reviews) may be
  // added either way. now decides which review dates are overdue.
  static std::shared_ptr<const Policy> LoadFile(const std::string& path, Diagnostics* diags,
                                                std::chrono::system_clock::time_point now =
                                                    std::chrono::system_clock::now());
  static std::shared_ptr<const Policy> LoadText(const std::string& text, const std::string& name, Diagnostics* diags,
                                                std::chrono::system_clock::time_point now =
                                                    std::chrono::system_clock::now());
  ~Policy();

  const std::vector<Agency>& agencies() const { return agencies_; }
  const std::vector<Group>& groups() const { return groups_; }
  const std::vector<Agreement>& agreements() const { return agreements_; }
  const std::vector<Rule>& rules() const { return rules_; }
  const Agency* FindAgency(std::string_view id) const;

  // The agency a verified peer certificate identifies (PermissionDenied
  // with the reason when none, or when more than one, does).
  Result<const Agency*> Identify(const PeerIdentity& peer) const;

  // The agencies a recipient reference names: itself, or a group's members
  // (nested groups expanded). NotFound for unknown references.
  Result<std::vector<std::string>> ExpandRecipient(std::string_view ref) const;

  // The decision for one recipient. With trace, every rule considered is
  // recorded (for `liaison policy explain`). Thread-safe.
  Decision Evaluate(const Request& request, std::vector<TraceStep>* trace = nullptr) const;
  // The obligations of a permit: the union over its rules.
  Obligations ObligationsOf(const Decision& decision) const;
  // The same without copying when one rule decided (the common case).
  std::shared_ptr<const Obligations> SharedObligationsOf(const Decision& decision) const;
  // Human-readable reasons for a decision (for the audit log and tools).
  std::vector<std::string> Reasons(const Decision& decision, const Request& request) const;
  std::vector<std::string> RuleIds(const Decision& decision) const;

  // Whether an auditor agency may see records about agency.
  bool MayAudit(std::string_view auditor, std::string_view agency) const;

  // SHA-256 (hex) of the canonical form: the same policy written
  // differently (comments, order of keys) has the same version.
  const std::string& version() const { return version_; }
  const std::string& path() const { return path_; }

 private:
  friend class Loader;
  struct Compiled;
  Policy();

  std::string path_;
  std::string version_;
  std::vector<Agency> agencies_;
  std::vector<Group> groups_;
  std::vector<Agreement> agreements_;
  std::vector<Rule> rules_;
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, size_t, StringHash, std::equal_to<>> by_id_;
  std::map<std::string, size_t, std::less<>> by_san_uri_;
  std::map<std::pair<std::string, std::string>, size_t> by_subject_;
  std::map<std::string, size_t, std::less<>> by_spki_;
  std::unique_ptr<Compiled> compiled_;
};

}  // namespace liaison::policy
