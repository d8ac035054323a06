// liaison policy: local tools for the people who write and review a policy
// file (check, explain, test, matrix). Nothing here talks to a broker; every
// answer comes from the same Policy::Evaluate the broker runs.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "client/cli/commands.h"
#include "common/detail/yaml_util.h"
#include "policy/policy.h"
#include "policy/redact.h"
#include "proto/detail/pb.h"
#include "proto/names.h"

namespace liaison::cli {
namespace {

using policy::Policy;
using Clock = std::chrono::system_clock;

constexpr size_t kMaxCasesBytes = 4 * 1024 * 1024;

// ---- small helpers -------------------------------------------------------


template <typename Container>
std::string JsonList(const Container& items) {
  std::string out = "[";
  for (const auto& s : items) out += (out.size() > 1 ? "," : "") + JsonString(s);
  return out + "]";
}

template <typename Container>
std::string Join(const Container& items, const std::string& sep = ", ") {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : sep) + s;
  return out;
}

// Lower-case value names of a wire enum without its prefix ("given").
std::map<std::string, int> EnumNames(const google::protobuf::EnumDescriptor* d, std::string_view prefix) {
  std::map<std::string, int> out;
  for (int i = 0; i < d->value_count(); ++i) {
    if (d->value(i)->number() == 0) continue;
    std::string n = d->value(i)->name();
    if (n.rfind(prefix, 0) == 0) n = n.substr(prefix.size());
    std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return std::tolower(c); });
    out[n] = d->value(i)->number();
  }
  return out;
}

const std::map<std::string, int>& ConsentNames() {
  static const auto m = EnumNames(v1::ConsentStatus_descriptor(), "CONSENT_");
  return m;
}
const std::map<std::string, int>& LegalBasisNames() {
  static const auto m = EnumNames(v1::LegalBasis_descriptor(), "LEGAL_BASIS_");
  return m;
}
const std::map<std::string, int>& CategoryNames() {
  static const auto m = EnumNames(v1::DataCategory_descriptor(), "CAT_");
  return m;
}

std::string NameOf(const std::map<std::string, int>& names, int value) {
  for (const auto& [n, v] : names) {
    if (v == value) return n;
  }
  return std::to_string(value);
}

Result<int> ParseEnum(const std::map<std::string, int>& names, const std::string& text, const char* what) {
  std::string t = text;
  std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return std::tolower(c); });
  if (auto it = names.find(t); it != names.end()) return it->second;
  std::vector<std::string> known;
  for (const auto& [n, _] : names) known.push_back(n);
  return Status::InvalidArgument("unknown " + std::string(what) + " '" + text + "' (one of: " + Join(known) + ")");
}

// A day as YYYY-MM-DD, taken at 12:00 UTC so that an agreement valid through
// that day (or from it) is in force.
Result<Clock::time_point> ParseDay(const std::string& text) {
  int y = 0;
  unsigned m = 0, d = 0;
  char tail = 0;
  if (text.size() != 10 || std::sscanf(text.c_str(), "%4d-%2u-%2u%c", &y, &m, &d, &tail) != 3) {
    return Status::InvalidArgument("'" + text + "' is not a date YYYY-MM-DD");
  }
  const std::chrono::year_month_day ymd{std::chrono::year{y}, std::chrono::month{m}, std::chrono::day{d}};
  if (!ymd.ok()) return Status::InvalidArgument("'" + text + "' is not a valid date");
  return Clock::time_point(std::chrono::sys_days(ymd)) + std::chrono::hours(12);
}

std::string DayString(policy::Date d) {
  const std::chrono::year_month_day ymd{d};
  char b[16];
  std::snprintf(b, sizeof b, "%04d-%02u-%02u", static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month()),
                static_cast<unsigned>(ymd.day()));
  return b;
}


// Obligations as people write them: category names and paths, sorted.
std::set<std::string> RedactItems(const policy::Obligations& o) {
  std::set<std::string> out(o.redact_paths.begin(), o.redact_paths.end());
  for (int c : o.redact_categories) out.insert(proto::DataCategoryName(c));
  return out;
}
std::set<std::string> PseudonymiseItems(const policy::Obligations& o) {
  std::set<std::string> out(o.pseudonymise_paths.begin(), o.pseudonymise_paths.end());
  for (int c : o.pseudonymise_categories) out.insert(proto::DataCategoryName(c));
  return out;
}

bool PathCovers(const std::set<std::string>& paths, const std::string& leaf) {
  for (const auto& p : paths) {
    if (leaf == p || (leaf.size() > p.size() && leaf.compare(0, p.size(), p) == 0 && leaf[p.size()] == '.')) {
      return true;
    }
  }
  return false;
}

// What the obligations do to each leaf of a message type (redaction wins).
struct FieldAction {
  std::string path, category, action;
};
std::vector<FieldAction> AffectedFields(const policy::Obligations& o, const std::string& type) {
  std::vector<FieldAction> out;
  for (const auto& [path, cat] : policy::LeafPaths(type)) {
    const char* action = nullptr;
    if (o.redact_categories.count(cat) || PathCovers(o.redact_paths, path)) {
      action = "redact";
    } else if (o.pseudonymise_categories.count(cat) || PathCovers(o.pseudonymise_paths, path)) {
      action = "pseudonymise";
    }
    if (action) out.push_back({path, proto::DataCategoryName(cat), action});
  }
  return out;
}

std::shared_ptr<const Policy> LoadPolicy(const std::string& file, Diagnostics* diags) {
  return Policy::LoadFile(file, diags, Clock::now());
}

bool KnownType(const std::string& type) {
  const auto types = proto::MessageTypeNames();
  return std::find(types.begin(), types.end(), type) != types.end();
}

// The agencies a rule or agreement reference names: an agency, group:,
// sector: or "*". Nothing for an unknown reference.
std::set<std::string> Resolve(const Policy& p, const std::string& ref) {
  std::set<std::string> out;
  if (ref == "*") {
    for (const auto& a : p.agencies()) out.insert(a.id);
  } else if (ref.rfind("sector:", 0) == 0) {
    for (const auto& a : p.agencies()) {
      if (a.sector == ref.substr(7)) out.insert(a.id);
    }
  } else if (auto r = p.ExpandRecipient(ref); r.ok()) {
    out.insert(r->begin(), r->end());
  }
  return out;
}
std::set<std::string> ResolveAll(const Policy& p, const std::vector<std::string>& refs) {
  std::set<std::string> out;
  for (const auto& ref : refs) {
    auto s = Resolve(p, ref);
    out.insert(s.begin(), s.end());
  }
  return out;
}

template <typename T>
bool Includes(const std::set<T>& outer, const std::set<T>& inner) {
  return std::includes(outer.begin(), outer.end(), inner.begin(), inner.end());
}

// A request's inputs as text, validated into a Request (which borrows them).
struct Query {
  std::string from, to, type, tlp, purpose, consent, legal_basis, agreement, at;
  bool via_group = false;
};

Result<policy::Request> BuildRequest(const Query& q) {
  policy::Request r;
  r.sender = q.from;
  r.recipient = q.to;
  if (!KnownType(q.type)) {
    return Status::InvalidArgument("unknown message type '" + q.type + "' (one of: " + Join(proto::MessageTypeNames()) +
                                   ")");
  }
  r.message_type = q.type;
  auto tlp = proto::ParseTlp(q.tlp);
  if (!tlp.ok()) return tlp.status();
  r.tlp = *tlp;
  r.purpose = q.purpose;
  if (!q.consent.empty()) {
    auto c = ParseEnum(ConsentNames(), q.consent, "consent status");
    if (!c.ok()) return c.status();
    r.consent_status = *c;
  }
  if (!q.legal_basis.empty()) {
    auto l = ParseEnum(LegalBasisNames(), q.legal_basis, "legal basis");
    if (!l.ok()) return l.status();
    r.legal_basis = *l;
  }
  r.agreement = q.agreement;
  r.named_individually = !q.via_group;
  if (!q.at.empty()) {
    auto at = ParseDay(q.at);
    if (!at.ok()) return at.status();
    r.now = *at;
  }
  return r;
}

// ---- check ---------------------------------------------------------------

void Lint(const Policy& p, Clock::time_point now, Diagnostics* out) {
  const std::string& file = p.path();
  auto warn = [&](int line, const std::string& msg) {
    out->push_back({Diagnostic::Severity::kWarning, file, line, 0, msg});
  };
  const policy::Date today = std::chrono::floor<std::chrono::days>(now);
  auto find_agreement = [&](const std::string& id) -> const policy::Agreement* {
    for (const auto& a : p.agreements()) {
      if (a.id == id) return &a;
    }
    return nullptr;
  };
  struct Sets {
    std::set<std::string> from, to, types, purposes;
    std::set<int> consent, legal;
    bool any_purpose = false;
  };
  auto sets_of = [&](const policy::Rule& r) {
    Sets s;
    s.from = ResolveAll(p, r.from);
    s.to = ResolveAll(p, r.to);
    s.types.insert(r.types.begin(), r.types.end());
    if (s.types.empty()) {
      for (const auto& t : proto::MessageTypeNames()) s.types.insert(t);
    }
    s.purposes.insert(r.purposes.begin(), r.purposes.end());
    if (s.purposes.empty()) {
      if (const auto* a = find_agreement(r.agreement)) {
        s.purposes.insert(a->purposes.begin(), a->purposes.end());
      } else {
        s.any_purpose = true;
      }
    }
    s.consent.insert(r.consent.begin(), r.consent.end());
    s.legal.insert(r.legal_bases.begin(), r.legal_bases.end());
    return s;
  };

  std::vector<Sets> sets;
  for (const auto& r : p.rules()) sets.push_back(sets_of(r));

  // Agencies no certificate can match: a subject or issuer that is not a
  // distinguished name, or a SAN URI the dev PKI and the default would not
  // issue (a typo in the id makes the agency unreachable).
  for (const auto& a : p.agencies()) {
    const auto& c = a.certificate;
    if (c.kind == policy::CertificateMatch::Kind::kSubject &&
        (c.subject.find('=') == std::string::npos || c.issuer.find('=') == std::string::npos)) {
      warn(a.line, "agency '" + a.id + "': no certificate can match: subject and issuer must be distinguished names "
                   "in RFC 2253 form, e.g. CN=school,O=City of Example");
    }
    if (c.kind == policy::CertificateMatch::Kind::kSanUri && c.san_uri.rfind("urn:liaison:agency:", 0) == 0 &&
        c.san_uri != policy::DefaultSanUri(a.id)) {
      warn(a.line, "agency '" + a.id + "' is matched by " + c.san_uri +
                       ", which names another agency id: is that intended?");
    }
  }

  for (size_t i = 0; i < p.rules().size(); ++i) {
    const policy::Rule& r = p.rules()[i];
    const Sets& s = sets[i];
    const std::string name = "rule '" + r.id + "' can never match: ";
    bool never = false;
    if (s.from.empty()) {
      warn(r.line, name + "its 'from' names no agency");
      never = true;
    }
    if (s.to.empty()) {
      warn(r.line, name + "its 'to' names no agency");
      never = true;
    }
    if (r.tlp_min > r.tlp_max) {
      warn(r.line, name + "its 'tlp' range excludes every label");
      never = true;
    }
    if (r.effect != policy::Effect::kPermit) continue;
    if (const auto* a = find_agreement(r.agreement)) {
      if (a->valid_until < today) {
        warn(r.line, name + "its agreement '" + a->id + "' expired on " + DayString(a->valid_until));
        never = true;
      } else if (!never) {
        const auto parties = ResolveAll(p, a->parties);
        const bool any_from = std::any_of(s.from.begin(), s.from.end(), [&](auto& x) { return parties.count(x); });
        const bool any_to = std::any_of(s.to.begin(), s.to.end(), [&](auto& x) { return parties.count(x); });
        if (!any_from || !any_to) {
          warn(r.line,
               name + "no agency in its '" + (any_from ? "to" : "from") + "' is a party to agreement '" + a->id + "'");
          never = true;
        }
      }
    }
    if (never) continue;
    // Shadowing: a forbid that matches at least everything this permit does.
    for (size_t j = 0; j < p.rules().size(); ++j) {
      const policy::Rule& f = p.rules()[j];
      if (f.effect != policy::Effect::kForbid) continue;
      const Sets& fs = sets[j];
      const bool purposes = fs.any_purpose || (!s.any_purpose && Includes(fs.purposes, s.purposes));
      const bool consent = fs.consent.empty() || (!s.consent.empty() && Includes(fs.consent, s.consent));
      const bool legal = fs.legal.empty() || (!s.legal.empty() && Includes(fs.legal, s.legal));
      if (Includes(fs.from, s.from) && Includes(fs.to, s.to) && Includes(fs.types, s.types) && f.tlp_min <= r.tlp_min &&
          f.tlp_max >= r.tlp_max && purposes && consent && legal) {
        warn(r.line, "permit '" + r.id + "' is fully shadowed by forbid '" + f.id + "' (line " +
                         std::to_string(f.line) + "): it can never permit anything");
        break;
      }
    }
  }
}

std::string DiagJson(const Diagnostic& d) {
  return "{\"file\":" + JsonString(d.file) + ",\"line\":" + std::to_string(d.line) +
         ",\"column\":" + std::to_string(d.column) + ",\"message\":" + JsonString(d.message) +
         ",\"text\":" + JsonString(d.ToString()) + "}";
}

int RunCheck(const CommonOptions& common, const std::string& file) {
  Diagnostics diags;
  const auto now = Clock::now();
  auto p = Policy::LoadFile(file, &diags, now);
  if (p) Lint(*p, now, &diags);
  const bool ok = p && !HasErrors(diags);
  if (common.json) {
    std::string errors = "[", warnings = "[";
    for (const auto& d : diags) {
      std::string& list = d.severity == Diagnostic::Severity::kError ? errors : warnings;
      list += (list.size() > 1 ? "," : "") + DiagJson(d);
    }
    std::printf("{\"ok\":%s,\"version\":%s,\"errors\":%s],\"warnings\":%s]}\n", ok ? "true" : "false",
                p ? JsonString(p->version()).c_str() : "null", errors.c_str(), warnings.c_str());
  } else {
    std::fputs(FormatDiagnostics(diags).c_str(), stdout);
    size_t n_errors = 0;
    for (const auto& d : diags) n_errors += d.severity == Diagnostic::Severity::kError;
    if (ok) {
      std::printf("%s: OK, version %s (%zu agencies, %zu groups, %zu agreements, %zu rules; %zu warnings)\n",
                  file.c_str(), p->version().c_str(), p->agencies().size(), p->groups().size(), p->agreements().size(),
                  p->rules().size(), diags.size());
    } else {
      std::printf("%s: %zu error(s), %zu warning(s)\n", file.c_str(), n_errors, diags.size() - n_errors);
    }
  }
  return ok ? kExitOk : kExitRefused;
}

// ---- explain -------------------------------------------------------------

std::string ObligationsJson(const policy::Obligations& o) {
  std::vector<std::string> rc, pc;
  for (int c : o.redact_categories) rc.push_back(proto::DataCategoryName(c));
  for (int c : o.pseudonymise_categories) pc.push_back(proto::DataCategoryName(c));
  return "{\"redact\":" + JsonList(RedactItems(o)) + ",\"pseudonymise\":" + JsonList(PseudonymiseItems(o)) +
         ",\"redact_categories\":" + JsonList(rc) + ",\"redact_paths\":" + JsonList(o.redact_paths) +
         ",\"pseudonymise_categories\":" + JsonList(pc) + ",\"pseudonymise_paths\":" + JsonList(o.pseudonymise_paths) +
         "}";
}

int RunExplain(const CommonOptions& common, const std::string& file, const Query& q) {
  Diagnostics diags;
  auto p = LoadPolicy(file, &diags);
  if (!p) {
    std::fputs(FormatDiagnostics(diags).c_str(), stderr);
    return kExitUsage;
  }
  auto request = BuildRequest(q);
  if (!request.ok()) {
    std::fprintf(stderr, "liaison policy explain: %s\n", request.status().message().c_str());
    return kExitUsage;
  }
  for (const std::string* id : {&q.from, &q.to}) {
    if (!p->FindAgency(*id)) {
      std::vector<std::string> known;
      for (const auto& a : p->agencies()) known.push_back(a.id);
      std::fprintf(stderr, "liaison policy explain: no agency '%s' in %s (agencies: %s)\n", id->c_str(), file.c_str(),
                   Join(known).c_str());
      return kExitUsage;
    }
  }
  std::vector<policy::TraceStep> trace;
  const policy::Decision d = p->Evaluate(*request, &trace);
  const auto reasons = p->Reasons(d, *request);
  const auto rule_ids = p->RuleIds(d);
  const policy::Obligations o = p->ObligationsOf(d);
  const std::string agreement = d.agreement >= 0 ? p->agreements()[d.agreement].id : "";
  const auto fields = AffectedFields(o, q.type);

  if (common.json) {
    std::string out =
        "{\"decision\":" + JsonString(d.permit ? "permit" : "deny") + ",\"permit\":" + (d.permit ? "true" : "false") +
        ",\"denial\":" + JsonString(DenialName(d.denial)) +
        ",\"agreement\":" + (agreement.empty() ? "null" : JsonString(agreement)) + ",\"rules\":" + JsonList(rule_ids) +
        ",\"reasons\":" + JsonList(reasons) + ",\"obligations\":" + ObligationsJson(o) + ",\"fields\":[";
    for (size_t i = 0; i < fields.size(); ++i) {
      out += (i ? "," : "") + std::string("{\"path\":") + JsonString(fields[i].path) +
             ",\"category\":" + JsonString(fields[i].category) + ",\"action\":" + JsonString(fields[i].action) + "}";
    }
    out += "],\"trace\":[";
    for (size_t i = 0; i < trace.size(); ++i) {
      out += (i ? "," : "") + std::string("{\"rule\":") + JsonString(trace[i].rule) +
             ",\"outcome\":" + JsonString(trace[i].outcome) + "}";
    }
    out += "],\"policy_version\":" + JsonString(p->version()) + "}";
    std::printf("%s\n", out.c_str());
  } else {
    std::printf("request:      %s -> %s, %s at TLP:%s for '%s'%s%s%s%s%s\n", q.from.c_str(), q.to.c_str(),
                q.type.c_str(), proto::TlpName(request->tlp).c_str(), q.purpose.c_str(),
                q.consent.empty() ? "" : (", consent " + q.consent).c_str(),
                q.legal_basis.empty() ? "" : (", legal basis " + q.legal_basis).c_str(),
                q.agreement.empty() ? "" : (", agreement " + q.agreement).c_str(),
                q.via_group ? ", via a group" : ", named individually", q.at.empty() ? "" : (", on " + q.at).c_str());
    std::printf("decision:     %s%s\n", d.permit ? "PERMIT" : "DENY",
                d.permit ? "" : (" (" + std::string(DenialName(d.denial)) + ")").c_str());
    std::printf("agreement:    %s\n", agreement.empty() ? "-" : agreement.c_str());
    std::printf("rules:        %s\n", rule_ids.empty() ? "-" : Join(rule_ids).c_str());
    for (size_t i = 0; i < reasons.size(); ++i) {
      std::printf("%s%s\n", i ? "              " : "reasons:      ", reasons[i].c_str());
    }
    if (d.permit) {
      const auto red = RedactItems(o), pse = PseudonymiseItems(o);
      std::printf("redact:       %s\n", red.empty() ? "-" : Join(red).c_str());
      std::printf("pseudonymise: %s\n", pse.empty() ? "-" : Join(pse).c_str());
      if (!fields.empty()) {
        std::printf("fields affected:\n");
        for (const auto& f : fields) {
          std::printf("  %-13s %-18s %s\n", f.action.c_str(), f.category.c_str(), f.path.c_str());
        }
      }
    }
    std::printf("trace (rules considered for %s):\n", q.to.c_str());
    if (trace.empty()) std::printf("  (none)\n");
    size_t width = 4;
    for (const auto& t : trace) width = std::max(width, t.rule.size());
    for (const auto& t : trace) {
      std::printf("  %-*s  %s\n", static_cast<int>(width), t.rule.c_str(), t.outcome.c_str());
    }
  }
  return d.permit ? kExitOk : kExitRefused;
}

// ---- test ----------------------------------------------------------------

struct Case {
  std::string name;
  int line = 0;
  Query query;
  bool expect_permit = false;
  std::optional<std::set<std::string>> redact, pseudonymise;
};

// Parses a cases file; every problem goes to diags with file:line:column.
std::vector<Case> ParseCases(const std::string& path, const Policy& p, Diagnostics* diags) {
  std::vector<Case> cases;
  auto root = yaml::LoadFile(path, kMaxCasesBytes, diags);
  if (!root) return cases;
  yaml::Reader r(path, diags);
  if (!r.ExpectMap(*root, "a policy test file", {"cases"})) return cases;
  const YAML::Node list = (*root)["cases"];
  if (!list.IsDefined()) {
    r.Error(*root, "missing required key 'cases'");
    return cases;
  }
  if (!r.ExpectSequence(list, "'cases'")) return cases;
  std::set<std::string> names;
  for (const YAML::Node& n : list) {
    if (!r.ExpectMap(n, "a test case",
                     {"name", "from", "to", "type", "tlp", "purpose", "consent", "legal_basis", "agreement",
                      "via_group", "at", "expect", "redact", "pseudonymise"})) {
      continue;
    }
    Case c;
    c.line = n.Mark().line + 1;
    const size_t before = diags->size();
    auto get = [&](const char* key, std::string* out, bool required) {
      if (auto v = r.String(n, key, required)) *out = *v;
    };
    get("name", &c.name, true);
    get("from", &c.query.from, true);
    get("to", &c.query.to, true);
    get("type", &c.query.type, true);
    get("tlp", &c.query.tlp, true);
    get("purpose", &c.query.purpose, true);
    get("consent", &c.query.consent, false);
    get("legal_basis", &c.query.legal_basis, false);
    get("agreement", &c.query.agreement, false);
    get("at", &c.query.at, false);
    if (auto v = r.Bool(n, "via_group")) c.query.via_group = *v;
    if (auto e = r.String(n, "expect", true)) {
      if (*e == "permit" || *e == "deny") {
        c.expect_permit = *e == "permit";
      } else {
        r.Error(n["expect"], "'expect' must be permit or deny, not '" + *e + "'");
      }
    }
    for (const char* key : {"redact", "pseudonymise"}) {
      if (auto items = r.StringList(n, key)) {
        std::set<std::string> s;
        for (const auto& item : *items) {
          if (!CategoryNames().count(item) && !policy::IsValidBodyPath(item)) {
            r.Error(n[key], "'" + item + "' is neither a data category nor a body field path");
          }
          s.insert(item);
        }
        (std::string(key) == "redact" ? c.redact : c.pseudonymise) = std::move(s);
      }
    }
    if (diags->size() != before) continue;
    if (!names.insert(c.name).second) r.Error(n["name"], "duplicate case name '" + c.name + "'");
    for (const char* key : {"from", "to"}) {
      const std::string& id = std::string(key) == "from" ? c.query.from : c.query.to;
      if (!p.FindAgency(id)) r.Error(n[key], "no agency '" + id + "' in " + p.path());
    }
    auto request = BuildRequest(c.query);
    if (!request.ok()) r.Error(n, request.status().message());
    if (c.expect_permit == false && (c.redact || c.pseudonymise)) {
      r.Error(n, "a case that expects deny cannot expect obligations");
    }
    cases.push_back(std::move(c));
  }
  return cases;
}

std::string SetText(const std::set<std::string>& s) {
  return "[" + Join(s) + "]";
}

int RunTest(const CommonOptions& common, const std::string& file, const std::string& cases_file) {
  Diagnostics diags;
  auto p = LoadPolicy(file, &diags);
  if (!p) {
    std::fputs(FormatDiagnostics(diags).c_str(), stderr);
    return kExitUsage;
  }
  diags.clear();  // policy warnings (overdue reviews) are check's business
  auto cases = ParseCases(cases_file, *p, &diags);
  if (HasErrors(diags)) {
    std::fputs(FormatDiagnostics(diags).c_str(), stderr);
    return kExitUsage;
  }
  size_t failed = 0;
  std::string json = "[";
  for (const Case& c : cases) {
    const policy::Request request = BuildRequest(c.query).value();
    const policy::Decision d = p->Evaluate(request);
    std::vector<std::string> problems;
    if (d.permit != c.expect_permit) {
      std::string reasons = Join(p->Reasons(d, request), "; ");
      problems.push_back(std::string("expected ") + (c.expect_permit ? "permit" : "deny") + ", got " +
                         (d.permit ? "permit" : "deny") + " (" + reasons + ")");
    } else if (d.permit) {
      const policy::Obligations o = p->ObligationsOf(d);
      if (c.redact && *c.redact != RedactItems(o)) {
        problems.push_back("redact: expected " + SetText(*c.redact) + ", got " + SetText(RedactItems(o)));
      }
      if (c.pseudonymise && *c.pseudonymise != PseudonymiseItems(o)) {
        problems.push_back("pseudonymise: expected " + SetText(*c.pseudonymise) + ", got " +
                           SetText(PseudonymiseItems(o)));
      }
    }
    failed += !problems.empty();
    if (common.json) {
      json += (json.size() > 1 ? "," : "") + std::string("{\"name\":") + JsonString(c.name) +
              ",\"line\":" + std::to_string(c.line) + ",\"ok\":" + (problems.empty() ? "true" : "false") +
              ",\"problems\":" + JsonList(problems) + "}";
    } else if (problems.empty()) {
      std::printf("ok    %s\n", c.name.c_str());
    } else {
      std::printf("FAIL  %s (%s:%d): %s\n", c.name.c_str(), cases_file.c_str(), c.line, Join(problems, "; ").c_str());
    }
  }
  if (common.json) {
    std::printf("{\"ok\":%s,\"passed\":%zu,\"failed\":%zu,\"cases\":%s]}\n", failed ? "false" : "true",
                cases.size() - failed, failed, json.c_str());
  } else {
    std::printf("%zu cases: %zu passed, %zu failed\n", cases.size(), cases.size() - failed, failed);
  }
  return failed ? kExitRefused : kExitOk;
}

// ---- matrix --------------------------------------------------------------

struct MatrixRow {
  std::string sender, recipient, type;
  std::set<std::string> purposes;
  std::string tlp, condition, agreement, redact, pseudonymise;
};

// TLP values as one range ("CLEAR..AMBER") when contiguous.
std::string TlpText(const std::vector<int>& tlps) {
  if (tlps.size() == 1) return proto::TlpName(tlps[0]);
  if (tlps.back() - tlps.front() + 1 == static_cast<int>(tlps.size())) {
    return proto::TlpName(tlps.front()) + ".." + proto::TlpName(tlps.back());
  }
  std::vector<std::string> names;
  for (int t : tlps) names.push_back(proto::TlpName(t));
  return Join(names, " ");
}

std::vector<MatrixRow> BuildMatrix(const Policy& p, const std::string& only_purpose, Clock::time_point now) {
  std::set<std::string> purposes;
  if (!only_purpose.empty()) {
    purposes.insert(only_purpose);
  } else {
    for (const auto& a : p.agreements()) purposes.insert(a.purposes.begin(), a.purposes.end());
    for (const auto& r : p.rules()) purposes.insert(r.purposes.begin(), r.purposes.end());
  }
  // Conditions to try, unconditional first: the consent statuses and legal
  // bases some rule asks for.
  std::set<std::pair<int, int>> extra;
  for (const auto& r : p.rules()) {
    std::vector<int> cs = r.consent, ls = r.legal_bases;
    cs.push_back(0);
    ls.push_back(0);
    for (int c : cs) {
      for (int l : ls) {
        if (c || l) extra.insert({c, l});
      }
    }
  }
  std::vector<std::pair<int, int>> conditions{{0, 0}};
  conditions.insert(conditions.end(), extra.begin(), extra.end());
  auto condition_text = [](std::pair<int, int> c) {
    std::vector<std::string> parts;
    if (c.first) parts.push_back("consent=" + NameOf(ConsentNames(), c.first));
    if (c.second) parts.push_back("legal_basis=" + NameOf(LegalBasisNames(), c.second));
    return Join(parts, " ");
  };

  std::vector<MatrixRow> rows;
  for (const auto& s : p.agencies()) {
    for (const auto& r : p.agencies()) {
      if (s.id == r.id) continue;
      for (const auto& type : proto::MessageTypeNames()) {
        std::vector<MatrixRow> here;
        for (const auto& purpose : purposes) {
          // For each TLP, the first condition that permits and what it obliges.
          std::map<std::tuple<std::string, std::string, std::string, std::string>, std::vector<int>> by_outcome;
          for (int tlp = v1::TLP_CLEAR; tlp <= v1::TLP_RED; ++tlp) {
            for (auto cond : conditions) {
              policy::Request q;
              q.sender = s.id;
              q.recipient = r.id;
              q.message_type = type;
              q.tlp = tlp;
              q.purpose = purpose;
              q.consent_status = cond.first;
              q.legal_basis = cond.second;
              q.now = now;
              const policy::Decision d = p.Evaluate(q);
              if (!d.permit) continue;
              const auto o = p.ObligationsOf(d);
              by_outcome[{condition_text(cond), p.agreements()[d.agreement].id, Join(RedactItems(o), " "),
                          Join(PseudonymiseItems(o), " ")}]
                  .push_back(tlp);
              break;
            }
          }
          for (const auto& [k, tlps] : by_outcome) {
            MatrixRow row{s.id,           r.id,           type,           {purpose},     TlpText(tlps),
                          std::get<0>(k), std::get<1>(k), std::get<2>(k), std::get<3>(k)};
            auto same = std::find_if(here.begin(), here.end(), [&](const MatrixRow& x) {
              return x.tlp == row.tlp && x.condition == row.condition && x.agreement == row.agreement &&
                     x.redact == row.redact && x.pseudonymise == row.pseudonymise;
            });
            if (same != here.end()) {
              same->purposes.insert(purpose);
            } else {
              here.push_back(std::move(row));
            }
          }
        }
        rows.insert(rows.end(), here.begin(), here.end());
      }
    }
  }
  return rows;
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string HtmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

struct MatrixOptions {
  std::string file, purpose, at;
  bool csv = false, html = false;
};

int RunMatrix(const CommonOptions& common, const MatrixOptions& o) {
  Diagnostics diags;
  auto p = LoadPolicy(o.file, &diags);
  if (!p) {
    std::fputs(FormatDiagnostics(diags).c_str(), stderr);
    return kExitUsage;
  }
  Clock::time_point now = Clock::now();
  if (!o.at.empty()) {
    auto at = ParseDay(o.at);
    if (!at.ok()) {
      std::fprintf(stderr, "liaison policy matrix: --at: %s\n", at.status().message().c_str());
      return kExitUsage;
    }
    now = *at;
  }
  const auto rows = BuildMatrix(*p, o.purpose, now);
  const std::vector<std::string> header{"sender",    "recipient", "type",   "purposes",    "tlp",
                                        "condition", "agreement", "redact", "pseudonymise"};
  auto fields = [](const MatrixRow& r) {
    return std::vector<std::string>{r.sender,    r.recipient, r.type,   Join(r.purposes, " "), r.tlp,
                                    r.condition, r.agreement, r.redact, r.pseudonymise};
  };
  if (common.json) {
    std::string out = "{\"policy_version\":" + JsonString(p->version()) + ",\"rows\":[";
    for (size_t i = 0; i < rows.size(); ++i) {
      const auto f = fields(rows[i]);
      out += i ? ",{" : "{";
      for (size_t k = 0; k < header.size(); ++k) {
        out += (k ? "," : "") + JsonString(header[k]) + ":" + JsonString(f[k]);
      }
      out += "}";
    }
    std::printf("%s]}\n", out.c_str());
  } else if (o.csv) {
    std::string line;
    for (const auto& h : header) line += (line.empty() ? "" : ",") + h;
    std::printf("%s\n", line.c_str());
    for (const auto& r : rows) {
      line.clear();
      bool first = true;
      for (const auto& f : fields(r)) {
        line += (first ? "" : ",") + CsvField(f);
        first = false;
      }
      std::printf("%s\n", line.c_str());
    }
  } else if (o.html) {
    std::string out =
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Sharing matrix: " +
        HtmlEscape(o.file) +
        "</title>\n<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{border:1px solid #999;padding:.3em .6em;text-align:left;vertical-align:top}"
        "th{background:#eee}</style>\n</head>\n<body>\n<h1>Sharing matrix</h1>\n<p>Policy " +
        HtmlEscape(o.file) + ", version <code>" + HtmlEscape(p->version()) +
        "</code>. Each row is a permitted share to an individually named recipient; everything not listed is "
        "denied.</p>\n<table>\n<thead><tr>";
    for (const auto& h : header) out += "<th>" + HtmlEscape(h) + "</th>";
    out += "</tr></thead>\n<tbody>\n";
    for (const auto& r : rows) {
      out += "<tr>";
      for (const auto& f : fields(r)) out += "<td>" + HtmlEscape(f) + "</td>";
      out += "</tr>\n";
    }
    out += "</tbody>\n</table>\n</body>\n</html>\n";
    std::fputs(out.c_str(), stdout);
  } else {
    std::vector<size_t> width(header.size());
    for (size_t k = 0; k < header.size(); ++k) width[k] = header[k].size();
    for (const auto& r : rows) {
      const auto f = fields(r);
      for (size_t k = 0; k < f.size(); ++k) width[k] = std::max(width[k], f[k].size());
    }
    auto print = [&](const std::vector<std::string>& f) {
      std::string line;
      for (size_t k = 0; k < f.size(); ++k) {
        line += f[k];
        if (k + 1 < f.size()) line += std::string(width[k] - f[k].size() + 2, ' ');
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      std::printf("%s\n", line.c_str());
    };
    print(header);
    for (const auto& r : rows) print(fields(r));
    std::printf("(%zu permitted combinations for individually named recipients; everything else is denied)\n",
                rows.size());
  }
  return kExitOk;
}

void AddQueryOptions(CLI::App* cmd, Query* q) {
  cmd->add_option("--from", q->from, "sending agency id")->required();
  cmd->add_option("--to", q->to, "receiving agency id")->required();
  cmd->add_option("--type", q->type, "message type: incident_report, case_referral, case_update")->required();
  cmd->add_option("--tlp", q->tlp, "TLP label: CLEAR, GREEN, AMBER, AMBER+STRICT, RED")->required();
  cmd->add_option("--purpose", q->purpose, "purpose of the share, e.g. safeguarding")->required();
  cmd->add_option("--consent", q->consent, "consent status: given, refused, withdrawn, not_sought, not_required");
  cmd->add_option("--legal-basis", q->legal_basis, "legal basis, e.g. public_task");
  cmd->add_option("--agreement", q->agreement, "the sharing agreement the envelope names");
  cmd->add_flag("--via-group", q->via_group, "the recipient comes from a group fan-out, not named individually");
  cmd->add_option("--at", q->at, "evaluate on this day (YYYY-MM-DD, at 12:00 UTC; default: now)");
}

}  // namespace

void RegisterPolicy(CLI::App& app, CommonOptions& common, int* exit_code) {
  CLI::App* policy = app.add_subcommand("policy", "check, explain, test and tabulate a policy file (local, no broker)");
  policy->require_subcommand(1);

  auto check_file = std::make_shared<std::string>();
  CLI::App* check = policy->add_subcommand("check", "validate a policy file and warn about rules that cannot match");
  check->add_option("file", *check_file, "policy file (YAML)")->required();
  check->callback([&common, check_file, exit_code] { *exit_code = RunCheck(common, *check_file); });

  auto explain_file = std::make_shared<std::string>();
  auto query = std::make_shared<Query>();
  CLI::App* explain = policy->add_subcommand("explain", "show the decision for one request and why");
  explain->add_option("file", *explain_file, "policy file (YAML)")->required();
  AddQueryOptions(explain, query.get());
  explain->callback(
      [&common, explain_file, query, exit_code] { *exit_code = RunExplain(common, *explain_file, *query); });

  auto test_files = std::make_shared<std::pair<std::string, std::string>>();
  CLI::App* test = policy->add_subcommand("test", "run policy unit tests (a cases file) against a policy");
  test->add_option("file", test_files->first, "policy file (YAML)")->required();
  test->add_option("cases", test_files->second, "test cases file (YAML)")->required();
  test->callback(
      [&common, test_files, exit_code] { *exit_code = RunTest(common, test_files->first, test_files->second); });

  auto mo = std::make_shared<MatrixOptions>();
  CLI::App* matrix = policy->add_subcommand("matrix", "tabulate who may share what with whom, at which TLP");
  matrix->add_option("file", mo->file, "policy file (YAML)")->required();
  auto* csv = matrix->add_flag("--csv", mo->csv, "comma-separated values");
  auto* html = matrix->add_flag("--html", mo->html, "a self-contained HTML page");
  csv->excludes(html);
  matrix->add_option("--purpose", mo->purpose, "only this purpose (default: every purpose the policy mentions)");
  matrix->add_option("--at", mo->at, "evaluate on this day (YYYY-MM-DD; default: now)");
  matrix->callback([&common, mo, exit_code] { *exit_code = RunMatrix(common, *mo); });
}

}  // namespace liaison::cli
