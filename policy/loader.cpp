// Parsing, validation and compilation of the policy file. Every problem is
// reported with file:line:column, and all of them in one run.
#include <fcntl.h>
#include <openssl/evp.h>

#include <algorithm>
#include <bit>
#include <set>

#include "common/detail/yaml_util.h"
#include "common/files.h"
#include "policy/detail/compiled.h"
#include "policy/policy.h"
#include "policy/redact.h"
#include "proto/detail/pb.h"
#include "proto/names.h"
#include "proto/validate.h"

namespace liaison::policy {
namespace {

constexpr size_t kMaxPolicyBytes = 16 * 1024 * 1024;
// The compiled policy holds, per rule and per group, a bit for every
// agency, and while it is built an index entry for every (recipient, rule)
// pair: memory grows with agencies x rules and agencies x groups.
// Unbounded, a policy file well under 16 MiB asked for tens of gigabytes
// (2.6 MB with 20,000 agencies and 20,000 rules took 2.5 GB and 17 s), and
// the broker that reloaded it was killed for lack of memory. These bounds
// keep the index to about 100 MB (agencies x rules) and 128 MiB (agencies
// x groups), far above any real network (20,000 agencies leave room for
// 838 rules and 53,687 groups).
constexpr size_t kMaxAgencyRulePairs = size_t{1} << 24;
constexpr size_t kMaxAgencyGroupPairs = size_t{1} << 30;

std::string Sha256Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < len; ++i) {
    s.push_back(kHex[md[i] >> 4]);
    s.push_back(kHex[md[i] & 0xF]);
  }
  return s;
}

bool IsHex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string Join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

// Enum value names without prefix, lower case: LEGAL_BASIS_PUBLIC_TASK -> public_task.
std::map<std::string, int> EnumNames(const google::protobuf::EnumDescriptor* d, std::string_view prefix) {
  std::map<std::string, int> out;
  for (int i = 1; i < d->value_count(); ++i) {
    std::string n = d->value(i)->name();
    if (n.rfind(prefix, 0) == 0) n = n.substr(prefix.size());
    std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return std::tolower(c); });
    out[n] = d->value(i)->number();
  }
  return out;
}

std::string Names(const std::map<std::string, int>& m) {
  std::vector<std::string> v;
  for (const auto& [k, _] : m) v.push_back(k);
  return Join(v);
}

std::optional<Date> ParseDate(const std::string& s) {
  if (s.size() != 10 || s[4] != '-' || s[7] != '-') return std::nullopt;
  int y = 0, m = 0, d = 0;
  if (std::sscanf(s.c_str(), "%4d-%2d-%2d", &y, &m, &d) != 3) return std::nullopt;
  const std::chrono::year_month_day ymd{std::chrono::year(y), std::chrono::month(static_cast<unsigned>(m)),
                                        std::chrono::day(static_cast<unsigned>(d))};
  if (!ymd.ok()) return std::nullopt;
  return std::chrono::sys_days(ymd);
}

std::string FormatDate(Date d) {
  const std::chrono::year_month_day ymd(d);
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02u", static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month()),
                static_cast<unsigned>(ymd.day()));
  return buf;
}

}  // namespace

class Loader {
 public:
  Loader(const std::string& name, Diagnostics* diags, std::chrono::system_clock::time_point now)
      : r_(name, diags), diags_(diags), now_(now) {}

  std::shared_ptr<const Policy> Load(const YAML::Node& root, const std::string& name) {
    p_.reset(new Policy());
    p_->path_ = name;
    c_ = std::make_unique<Policy::Compiled>();
    const size_t before = diags_->size();
    if (!r_.ExpectMap(root, "the policy", {"version", "agencies", "groups", "agreements", "rules"})) return nullptr;
    r_.Int(root, "version", 1, 1, true);
    if (!WithinSizeLimits(root)) return nullptr;
    ParseAgencies(root["agencies"], root);
    c_->words = (p_->agencies_.size() + 63) / 64;
    ParseGroups(root["groups"]);
    ResolveGroups();
    ResolveAuditScopes();
    ParseAgreements(root["agreements"]);
    ParseRules(root["rules"]);
    BuildIndex();
    for (size_t i = before; i < diags_->size(); ++i) {
      if ((*diags_)[i].severity == Diagnostic::Severity::kError) return nullptr;
    }
    p_->version_ = Sha256Hex(Canonical());
    p_->compiled_ = std::move(c_);
    return std::shared_ptr<const Policy>(p_.release());
  }

 private:
  Bits Empty() const { return Bits(c_->words, 0); }

  // Checked before anything is compiled (kMaxAgencyRulePairs, ...):
  // reported at the list that makes the product too large.
  bool WithinSizeLimits(const YAML::Node& root) {
    auto count = [&](const char* key) -> size_t {
      const YAML::Node n = root[key];
      return n.IsDefined() && n.IsSequence() ? n.size() : 0;
    };
    const size_t agencies = count("agencies"), groups = count("groups"), rules = count("rules");
    bool ok = true;
    auto limit = [&](const char* key, size_t n, size_t max) {
      if (agencies * n <= max) return;
      r_.Error(root[key], std::to_string(agencies) + " agencies and " + std::to_string(n) + " " + key +
                              ": agencies x " + key + " may be at most " + std::to_string(max) +
                              " (the broker's decision index grows with it)");
      ok = false;
    };
    limit("rules", rules, kMaxAgencyRulePairs);
    limit("groups", groups, kMaxAgencyGroupPairs);
    return ok;
  }

  // Resolves agency references to a bitset; reports unknown ones.
  Bits Resolve(const YAML::Node& at, const std::vector<std::string>& refs, const std::string& what, bool allow_star) {
    Bits b = Empty();
    for (const auto& ref : refs) {
      if (ref == "*") {
        if (!allow_star) {
          r_.Error(at, "'*' is not allowed in " + what);
          continue;
        }
        for (size_t i = 0; i < p_->agencies_.size(); ++i) SetBit(b, i);
      } else if (ref.rfind("group:", 0) == 0) {
        auto it = c_->groups.find(ref.substr(6));
        if (it == c_->groups.end()) {
          r_.Error(at, "unknown group '" + ref.substr(6) + "' in " + what);
          continue;
        }
        for (size_t w = 0; w < b.size(); ++w) b[w] |= it->second[w];
      } else if (ref.rfind("sector:", 0) == 0) {
        const std::string sector = ref.substr(7);
        if (std::find(KnownSectors().begin(), KnownSectors().end(), sector) == KnownSectors().end()) {
          r_.Error(at, "unknown sector '" + sector + "' in " + what + " (expected one of: " + Join(KnownSectors()) + ")");
          continue;
        }
        for (size_t i = 0; i < p_->agencies_.size(); ++i) {
          if (p_->agencies_[i].sector == sector) SetBit(b, i);
        }
      } else {
        auto it = p_->by_id_.find(ref);
        if (it == p_->by_id_.end()) {
          r_.Error(at, "unknown agency '" + ref + "' in " + what);
          continue;
        }
        SetBit(b, it->second);
      }
    }
    return b;
  }

  template <typename Fn>
  void ForEachItem(const YAML::Node& list, const char* section, Fn&& fn) {
    if (!list.IsDefined() || list.IsNull()) return;
    if (!r_.ExpectSequence(list, std::string("'") + section + "'")) return;
    for (const auto& item : list) fn(item);
  }

  bool CheckId(const YAML::Node& item, const std::optional<std::string>& id, const char* what,
               std::map<std::string, int>* seen) {
    if (!id) return false;
    if (!proto::IsValidToken(*id)) {
      r_.Error(item["id"], std::string(what) + " id '" + *id +
                               "' must be 1-63 lower-case letters, digits, '-', '_' or '.', starting with a letter or digit");
      return false;
    }
    const int line = item.Mark().line + 1;
    auto [it, fresh] = seen->emplace(*id, line);
    if (!fresh) {
      r_.Error(item["id"], "duplicate " + std::string(what) + " id '" + *id + "' (first defined on line " +
                               std::to_string(it->second) + ")");
      return false;
    }
    return true;
  }

  void ParseAgencies(const YAML::Node& agencies, const YAML::Node& root) {
    if (!agencies.IsDefined() || agencies.IsNull()) {
      r_.Error(root, "missing required key 'agencies'");
      return;
    }
    if (!r_.ExpectSequence(agencies, "'agencies'")) return;
    std::map<std::string, int> seen;
    for (const auto& a : agencies) {
      if (!r_.ExpectMap(a, "an agency", {"id", "name", "sector", "certificate", "roles", "audit_scope"})) continue;
      Agency ag;
      ag.line = a.Mark().line + 1;
      auto id = r_.String(a, "id", true);
      if (id && !proto::IsValidAgencyId(*id)) {
        r_.Error(a["id"], "agency id '" + *id +
                              "' must be 1-63 lower-case letters, digits, '-' or '_', starting with a letter or digit");
        id.reset();
      }
      const bool id_ok = id && CheckId(a, id, "agency", &seen);
      if (id) ag.id = *id;
      if (auto name = r_.String(a, "name", true)) ag.name = *name;
      if (auto sector = r_.String(a, "sector", true)) {
        if (std::find(KnownSectors().begin(), KnownSectors().end(), *sector) == KnownSectors().end()) {
          r_.Error(a["sector"], "unknown sector '" + *sector + "' (expected one of: " + Join(KnownSectors()) + ")");
        }
        ag.sector = *sector;
      }
      if (auto roles = r_.StringList(a, "roles")) {
        for (const auto& role : *roles) {
          if (role != "auditor") r_.Error(a["roles"], "unknown role '" + role + "' (expected: auditor)");
        }
        ag.roles = *roles;
      }
      if (auto scope = r_.StringList(a, "audit_scope")) {
        ag.audit_scope = *scope;
        if (!ag.is_auditor()) r_.Error(a["audit_scope"], "'audit_scope' is only for agencies with the auditor role");
      } else if (ag.is_auditor()) {
        r_.Error(a, "an auditor needs 'audit_scope': the agencies, group: or sector: whose records it may see ('*' for all)");
      }
      ParseCertificate(a, &ag);
      if (!id_ok) continue;
      const size_t index = p_->agencies_.size();
      const YAML::Node cert = a["certificate"];
      auto claim = [&](auto& map, auto key, const std::string& what) {
        auto [it, fresh] = map.emplace(key, index);
        if (!fresh) {
          r_.Error(cert.IsDefined() ? cert : a, what + " is already bound to agency '" + p_->agencies_[it->second].id + "'");
        }
      };
      switch (ag.certificate.kind) {
        case CertificateMatch::Kind::kSanUri:
          claim(p_->by_san_uri_, ag.certificate.san_uri, "SAN URI '" + ag.certificate.san_uri + "'");
          break;
        case CertificateMatch::Kind::kSubject:
          claim(p_->by_subject_, std::make_pair(ag.certificate.subject, ag.certificate.issuer),
                "subject '" + ag.certificate.subject + "'");
          break;
        case CertificateMatch::Kind::kSpki:
          for (const auto& pin : ag.certificate.spki_sha256) claim(p_->by_spki_, pin, "SPKI pin " + pin);
          break;
      }
      p_->by_id_.emplace(ag.id, index);
      agency_nodes_.push_back(a);
      p_->agencies_.push_back(std::move(ag));
    }
    if (p_->agencies_.empty() && seen.empty()) r_.Error(agencies, "'agencies' is empty");
  }

  void ParseCertificate(const YAML::Node& a, Agency* ag) {
    const YAML::Node cert = a["certificate"];
    ag->certificate.kind = CertificateMatch::Kind::kSanUri;
    ag->certificate.san_uri = DefaultSanUri(ag->id);
    if (!cert.IsDefined() || cert.IsNull()) return;
    if (!r_.ExpectMap(cert, "'certificate'", {"san_uri", "subject", "issuer", "spki_sha256"})) return;
    const bool has_uri = cert["san_uri"].IsDefined(), has_subject = cert["subject"].IsDefined(),
               has_issuer = cert["issuer"].IsDefined(), has_spki = cert["spki_sha256"].IsDefined();
    if (int(has_uri) + int(has_subject || has_issuer) + int(has_spki) != 1) {
      r_.Error(cert, "'certificate' must use exactly one of: san_uri; subject with issuer; spki_sha256");
    } else if (has_uri) {
      if (auto uri = r_.String(cert, "san_uri", true)) {
        if (uri->find(':') == std::string::npos) r_.Error(cert["san_uri"], "san_uri '" + *uri + "' is not a URI");
        ag->certificate.san_uri = *uri;
      }
    } else if (has_subject || has_issuer) {
      auto subject = r_.String(cert, "subject", true);
      auto issuer = r_.String(cert, "issuer", true);
      if (subject && issuer) {
        ag->certificate.kind = CertificateMatch::Kind::kSubject;
        ag->certificate.subject = *subject;
        ag->certificate.issuer = *issuer;
        ag->certificate.san_uri.clear();
      }
    } else if (auto pins = r_.StringList(cert, "spki_sha256", true)) {
      ag->certificate.kind = CertificateMatch::Kind::kSpki;
      ag->certificate.san_uri.clear();
      if (pins->empty()) r_.Error(cert["spki_sha256"], "'spki_sha256' needs at least one pin, or no certificate can match");
      for (const auto& pin : *pins) {
        if (!IsHex64(pin)) r_.Error(cert["spki_sha256"], "pin '" + pin + "' must be 64 lower-case hex digits (SHA-256)");
      }
      ag->certificate.spki_sha256 = *pins;
    }
  }

  void ParseGroups(const YAML::Node& groups) {
    std::map<std::string, int> seen;
    ForEachItem(groups, "groups", [&](const YAML::Node& g) {
      if (!r_.ExpectMap(g, "a group", {"id", "name", "members"})) return;
      Group grp;
      grp.line = g.Mark().line + 1;
      auto id = r_.String(g, "id", true);
      const bool ok = CheckId(g, id, "group", &seen);
      if (auto name = r_.String(g, "name")) grp.name = *name;
      if (auto members = r_.StringList(g, "members", true)) grp.members = *members;
      if (!ok) return;
      grp.id = *id;
      group_nodes_.push_back(g);
      p_->groups_.push_back(std::move(grp));
    });
  }

  // Expands nested groups; a cycle is an error.
  void ResolveGroups() {
    std::map<std::string, size_t> index;
    for (size_t i = 0; i < p_->groups_.size(); ++i) index[p_->groups_[i].id] = i;
    std::vector<int> state(p_->groups_.size(), 0);  // 0 new, 1 in progress, 2 done
    std::function<bool(size_t, std::vector<std::string>&)> visit = [&](size_t gi, std::vector<std::string>& path) {
      if (state[gi] == 2) return true;
      const Group& g = p_->groups_[gi];
      if (state[gi] == 1) {
        path.push_back(g.id);
        r_.Error(group_nodes_[gi], "group cycle: " + Join(path, " -> "));
        return false;
      }
      state[gi] = 1;
      path.push_back(g.id);
      Bits b = Empty();
      bool ok = true;
      for (const auto& m : g.members) {
        if (m.rfind("group:", 0) == 0) {
          auto it = index.find(m.substr(6));
          if (it == index.end()) {
            r_.Error(group_nodes_[gi]["members"], "unknown group '" + m.substr(6) + "' in members of group '" + g.id + "'");
            ok = false;
            continue;
          }
          if (!visit(it->second, path)) {
            ok = false;
            continue;
          }
          for (size_t w = 0; w < b.size(); ++w) b[w] |= c_->groups[it->first][w];
        } else if (m.rfind("sector:", 0) == 0 || m == "*") {
          r_.Error(group_nodes_[gi]["members"], "group members are agencies or group:<id>, not '" + m + "'");
          ok = false;
        } else {
          auto it = p_->by_id_.find(m);
          if (it == p_->by_id_.end()) {
            r_.Error(group_nodes_[gi]["members"], "unknown agency '" + m + "' in members of group '" + g.id + "'");
            ok = false;
            continue;
          }
          SetBit(b, it->second);
        }
      }
      path.pop_back();
      c_->groups[g.id] = b;
      state[gi] = 2;
      return ok;
    };
    for (size_t i = 0; i < p_->groups_.size(); ++i) {
      std::vector<std::string> path;
      if (state[i] == 0) visit(i, path);
    }
  }

  void ResolveAuditScopes() {
    c_->audit_scope.assign(p_->agencies_.size(), Bits());
    for (size_t i = 0; i < p_->agencies_.size(); ++i) {
      const Agency& a = p_->agencies_[i];
      if (a.is_auditor()) c_->audit_scope[i] = Resolve(agency_nodes_[i]["audit_scope"], a.audit_scope, "audit_scope", true);
    }
  }

  std::vector<int> ParseEnumList(const YAML::Node& map, const char* key, const std::map<std::string, int>& names,
                                 const char* what) {
    std::vector<int> out;
    auto list = r_.StringList(map, key);
    if (!list) return out;
    for (const auto& n : *list) {
      auto it = names.find(n);
      if (it == names.end()) {
        r_.Error(map[key], "unknown " + std::string(what) + " '" + n + "' (expected one of: " + Names(names) + ")");
        continue;
      }
      out.push_back(it->second);
    }
    return out;
  }

  std::optional<Date> DateField(const YAML::Node& map, const char* key, bool required) {
    auto s = r_.String(map, key, required);
    if (!s) return std::nullopt;
    auto d = ParseDate(*s);
    if (!d) r_.Error(map[key], std::string("'") + key + "' must be a date YYYY-MM-DD, not '" + *s + "'");
    return d;
  }

  void ParseAgreements(const YAML::Node& agreements) {
    std::map<std::string, int> seen;
    const auto legal = EnumNames(v1::LegalBasis_descriptor(), "LEGAL_BASIS_");
    const Date today = std::chrono::floor<std::chrono::days>(now_);
    ForEachItem(agreements, "agreements", [&](const YAML::Node& a) {
      if (!r_.ExpectMap(a, "a sharing agreement",
                        {"id", "title", "parties", "purposes", "legal_basis", "valid_from", "valid_until", "review_by"})) {
        return;
      }
      Agreement ag;
      ag.line = a.Mark().line + 1;
      auto id = r_.String(a, "id", true);
      const bool ok = CheckId(a, id, "agreement", &seen);
      if (auto t = r_.String(a, "title", true)) ag.title = *t;
      if (auto parties = r_.StringList(a, "parties", true)) ag.parties = *parties;
      if (auto purposes = r_.StringList(a, "purposes", true)) {
        if (purposes->empty()) r_.Error(a["purposes"], "'purposes' needs at least one purpose");
        for (const auto& p : *purposes) {
          if (!proto::IsValidToken(p)) r_.Error(a["purposes"], "purpose '" + p + "' is not a purpose id");
        }
        ag.purposes = *purposes;
      }
      ag.legal_bases = ParseEnumList(a, "legal_basis", legal, "legal basis");
      if (!a["legal_basis"].IsDefined()) r_.Error(a, "missing required key 'legal_basis'");
      auto from = DateField(a, "valid_from", true);
      auto until = DateField(a, "valid_until", true);
      auto review = DateField(a, "review_by", false);
      if (from) ag.valid_from = *from;
      if (until) ag.valid_until = *until;
      if (from && until && *until < *from) r_.Error(a["valid_until"], "'valid_until' is before 'valid_from'");
      if (review) {
        ag.review_by = *review;
        if (*review < today) {
          r_.Warning(a["review_by"], "agreement '" + id.value_or("") + "' was due for review on " + FormatDate(*review));
        }
      }
      if (until && *until < today) {
        r_.Warning(a["valid_until"], "agreement '" + (id ? *id : "") + "' expired on " + FormatDate(*until) +
                                         ": it permits nothing");
      }
      if (!ok) return;
      ag.id = *id;
      Policy::Compiled::CAgreement ca;
      ca.parties = Resolve(a["parties"], ag.parties, "parties", true);
      for (int v : ag.legal_bases) ca.legal |= 1u << v;
      ca.from_s = std::chrono::duration_cast<std::chrono::seconds>(ag.valid_from.time_since_epoch()).count();
      ca.until_s = std::chrono::duration_cast<std::chrono::seconds>((ag.valid_until + std::chrono::days(1))
                                                                      .time_since_epoch())
                       .count();
      agreement_index_[ag.id] = static_cast<int>(p_->agreements_.size());
      c_->agreements.push_back(std::move(ca));
      p_->agreements_.push_back(std::move(ag));
    });
  }

  uint32_t PurposeId(const std::string& p) {
    auto [it, fresh] = c_->purpose_ids.emplace(p, static_cast<uint32_t>(c_->purpose_ids.size()));
    return it->second;
  }

  void ParseObligations(const YAML::Node& rule, Rule* out) {
    const YAML::Node o = rule["obligations"];
    if (!o.IsDefined() || o.IsNull()) return;
    if (!r_.ExpectMap(o, "'obligations'", {"redact", "pseudonymise"})) return;
    if (out->effect == Effect::kForbid) r_.Error(o, "a forbid rule has no obligations");
    const auto categories = EnumNames(v1::DataCategory_descriptor(), "CAT_");
    auto parse = [&](const char* key, std::set<int>* cats, std::set<std::string>* paths) {
      auto list = r_.StringList(o, key);
      if (!list) return;
      for (const auto& item : *list) {
        if (auto it = categories.find(item); it != categories.end()) {
          cats->insert(it->second);
        } else if (item.find('.') != std::string::npos || IsValidBodyPath(item)) {
          if (!IsValidBodyPath(item)) {
            r_.Error(o[key], "unknown field path '" + item + "' (paths start at a message type, e.g. incident_report.persons.full_name)");
          } else {
            paths->insert(item);
          }
        } else {
          r_.Error(o[key], "unknown data category '" + item + "' (expected one of: " + Names(categories) +
                               ", or a field path)");
        }
      }
    };
    parse("redact", &out->obligations.redact_categories, &out->obligations.redact_paths);
    parse("pseudonymise", &out->obligations.pseudonymise_categories, &out->obligations.pseudonymise_paths);
  }

  void ParseRules(const YAML::Node& rules) {
    std::map<std::string, int> seen;
    const auto consent = EnumNames(v1::ConsentStatus_descriptor(), "CONSENT_");
    const auto legal = EnumNames(v1::LegalBasis_descriptor(), "LEGAL_BASIS_");
    const auto types = proto::MessageTypeNames();
    for (size_t i = 0; i < types.size(); ++i) c_->type_bits[types[i]] = 1u << i;
    c_->by_recipient.assign(p_->agencies_.size(), {});
    ForEachItem(rules, "rules", [&](const YAML::Node& n) {
      if (!r_.ExpectMap(n, "a rule",
                        {"id", "effect", "agreement", "from", "to", "types", "tlp", "purposes", "consent", "legal_basis",
                         "obligations", "description"})) {
        return;
      }
      Rule rule;
      rule.line = n.Mark().line + 1;
      auto id = r_.String(n, "id", true);
      const bool ok = CheckId(n, id, "rule", &seen);
      if (auto e = r_.String(n, "effect", true)) {
        if (*e == "permit") {
          rule.effect = Effect::kPermit;
        } else if (*e == "forbid") {
          rule.effect = Effect::kForbid;
        } else {
          r_.Error(n["effect"], "'effect' must be permit or forbid, not '" + *e + "'");
        }
      }
      Policy::Compiled::CRule cr;
      cr.effect = rule.effect;
      if (auto ag = r_.String(n, "agreement", rule.effect == Effect::kPermit)) {
        rule.agreement = *ag;
        auto it = agreement_index_.find(*ag);
        if (it == agreement_index_.end()) {
          r_.Error(n["agreement"], "unknown agreement '" + *ag + "'");
        } else {
          cr.agreement = it->second;
        }
      }
      if (auto from = r_.StringList(n, "from", true)) rule.from = *from;
      if (auto to = r_.StringList(n, "to", true)) rule.to = *to;
      cr.senders = Resolve(n["from"], rule.from, "'from'", true);
      const Bits recipients = Resolve(n["to"], rule.to, "'to'", true);
      if (auto t = r_.StringList(n, "types")) {
        if (t->empty()) r_.Error(n["types"], "'types' is empty: leave it out to mean every message type");
        for (const auto& type : *t) {
          auto it = c_->type_bits.find(type);
          if (it == c_->type_bits.end()) {
            r_.Error(n["types"], "unknown message type '" + type + "' (expected one of: " + Join(types) + ")");
            continue;
          }
          cr.types |= it->second;
        }
        rule.types = *t;
      } else {
        cr.types = ~0u;
      }
      if (auto tlp = r_.String(n, "tlp")) ParseTlpRange(n["tlp"], *tlp, &rule);
      cr.tlp_min = rule.tlp_min;
      cr.tlp_max = rule.tlp_max;
      if (auto purposes = r_.StringList(n, "purposes")) {
        if (purposes->empty()) r_.Error(n["purposes"], "'purposes' is empty: leave it out to mean the agreement's purposes");
        rule.purposes = *purposes;
        if (cr.agreement >= 0) {
          const auto& allowed = p_->agreements_[cr.agreement].purposes;
          for (const auto& p : *purposes) {
            if (std::find(allowed.begin(), allowed.end(), p) == allowed.end()) {
              r_.Error(n["purposes"], "purpose '" + p + "' is not among the purposes of agreement '" + rule.agreement + "'");
            }
          }
        }
      } else if (cr.agreement >= 0) {
        rule.purposes = p_->agreements_[cr.agreement].purposes;  // a permit never exceeds its agreement
      }
      for (const auto& p : rule.purposes) cr.purposes.push_back(PurposeId(p));
      std::sort(cr.purposes.begin(), cr.purposes.end());
      rule.consent = ParseEnumList(n, "consent", consent, "consent status");
      for (int v : rule.consent) cr.consent |= 1u << v;
      rule.legal_bases = ParseEnumList(n, "legal_basis", legal, "legal basis");
      for (int v : rule.legal_bases) cr.legal |= 1u << v;
      if (cr.agreement >= 0) {
        const auto& allowed = p_->agreements_[cr.agreement].legal_bases;
        for (int v : rule.legal_bases) {
          if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
            r_.Error(n["legal_basis"], "a legal basis of this rule is not among those of agreement '" +
                                           rule.agreement + "'");
          }
        }
      }
      ParseObligations(n, &rule);
      if (!ok) return;
      rule.id = *id;
      const uint32_t index = static_cast<uint32_t>(p_->rules_.size());
      for (size_t a = 0; a < p_->agencies_.size(); ++a) {
        if (TestBit(recipients, a)) c_->by_recipient[a].push_back(index);
      }
      c_->rules.push_back(std::move(cr));
      p_->rules_.push_back(std::move(rule));
    });
  }

  void BuildIndex() {
    Policy::Compiled& c = *c_;
    const size_t nrules = c.rules.size(), nagencies = p_->agencies_.size();
    c.rule_words = (nrules + 63) / 64;
    const Bits none(c.rule_words, 0);
    c.to_rules.assign(nagencies, none);
    c.from_rules.assign(nagencies, none);
    c.type_rules.assign(c.type_bits.size(), none);
    c.tlp_rules.assign(6, none);
    c.purpose_rules.assign(c.purpose_ids.size() + 1, none);
    for (size_t a = 0; a < nagencies; ++a) {
      for (uint32_t ri : c.by_recipient[a]) SetBit(c.to_rules[a], ri);
    }
    for (size_t ri = 0; ri < nrules; ++ri) {
      const Policy::Compiled::CRule& rule = c.rules[ri];
      for (size_t w = 0; w < rule.senders.size(); ++w) {
        for (uint64_t m = rule.senders[w]; m; m &= m - 1) SetBit(c.from_rules[w * 64 + std::countr_zero(m)], ri);
      }
      for (size_t t = 0; t < c.type_rules.size(); ++t) {
        if (rule.types & (1u << t)) SetBit(c.type_rules[t], ri);
      }
      for (int l = std::max(rule.tlp_min, 1); l <= std::min(rule.tlp_max, 5); ++l) SetBit(c.tlp_rules[l], ri);
      if (rule.purposes.empty()) {
        for (auto& row : c.purpose_rules) SetBit(row, ri);
      } else {
        for (uint32_t pid : rule.purposes) SetBit(c.purpose_rules[pid], ri);
      }
      c.obligations.push_back(std::make_shared<const Obligations>(p_->rules_[ri].obligations));
    }
  }

  void ParseTlpRange(const YAML::Node& at, const std::string& text, Rule* rule) {
    const auto dots = text.find("..");
    const std::string lo = dots == std::string::npos ? text : text.substr(0, dots);
    const std::string hi = dots == std::string::npos ? text : text.substr(dots + 2);
    auto a = proto::ParseTlp(lo), b = proto::ParseTlp(hi);
    if (!a.ok() || !b.ok()) {
      r_.Error(at, "'tlp' must be a label or a range like CLEAR..AMBER, not '" + text + "'");
      return;
    }
    if (*b < *a) {
      r_.Error(at, "'tlp' range " + text + " is empty (the lower label is more restrictive)");
      return;
    }
    rule->tlp_min = *a;
    rule->tlp_max = *b;
  }

  // The canonical text the version hashes: every definition in a fixed order,
  // every free-text field escaped so that no two policies share a text.
  static std::string Esc(const std::string& v) {
    std::string out;
    for (char ch : v) {
      if (ch == '\\' || ch == '|' || ch == ',' || ch == '[' || ch == ']' || ch == '\n') out.push_back('\\');
      out.push_back(ch == '\n' ? 'n' : ch);
    }
    return out;
  }

  std::string Canonical() const {
    std::string s = "liaison-policy-v2\n";
    auto list = [](const std::vector<std::string>& v) {
      std::vector<std::string> sorted;
      for (const auto& x : v) sorted.push_back(Esc(x));
      std::sort(sorted.begin(), sorted.end());
      return "[" + Join(sorted, ",") + "]";
    };
    auto ints = [](const std::vector<int>& v) {
      std::vector<int> sorted = v;
      std::sort(sorted.begin(), sorted.end());
      std::string o = "[";
      for (int x : sorted) o += std::to_string(x) + ",";
      return o + "]";
    };
    for (const auto& a : p_->agencies_) {
      s += "agency|" + a.id + "|" + Esc(a.name) + "|" + a.sector + "|" + std::to_string(int(a.certificate.kind)) + "|" +
           Esc(a.certificate.san_uri) + "|" + Esc(a.certificate.subject) + "|" + Esc(a.certificate.issuer) + "|" +
           list(a.certificate.spki_sha256) + "|" + list(a.roles) + "|" + list(a.audit_scope) + "\n";
    }
    for (const auto& g : p_->groups_) s += "group|" + g.id + "|" + Esc(g.name) + "|" + list(g.members) + "\n";
    for (const auto& a : p_->agreements_) {
      s += "agreement|" + a.id + "|" + Esc(a.title) + "|" + list(a.parties) + "|" + list(a.purposes) + "|" +
           ints(a.legal_bases) + "|" + FormatDate(a.valid_from) + "|" + FormatDate(a.valid_until) + "|" +
           FormatDate(a.review_by) + "\n";
    }
    for (const auto& r : p_->rules_) {  // rule order is kept: it is what the trace shows
      std::vector<int> rc(r.obligations.redact_categories.begin(), r.obligations.redact_categories.end());
      std::vector<int> pc(r.obligations.pseudonymise_categories.begin(), r.obligations.pseudonymise_categories.end());
      s += "rule|" + r.id + "|" + (r.effect == Effect::kPermit ? "permit" : "forbid") + "|" + r.agreement + "|" +
           list(r.from) + "|" + list(r.to) + "|" + list(r.types) + "|" + std::to_string(r.tlp_min) + ".." +
           std::to_string(r.tlp_max) + "|" + list(r.purposes) + "|" + ints(r.consent) + "|" + ints(r.legal_bases) +
           "|" + ints(rc) + "|" +
           list({r.obligations.redact_paths.begin(), r.obligations.redact_paths.end()}) + "|" + ints(pc) + "|" +
           list({r.obligations.pseudonymise_paths.begin(), r.obligations.pseudonymise_paths.end()}) + "\n";
    }
    return s;
  }

  yaml::Reader r_;
  Diagnostics* diags_;
  std::chrono::system_clock::time_point now_;
  std::unique_ptr<Policy> p_;
  std::unique_ptr<Policy::Compiled> c_;
  std::vector<YAML::Node> agency_nodes_, group_nodes_;
  std::map<std::string, int> agreement_index_;
};

std::shared_ptr<const Policy> Policy::LoadText(const std::string& text, const std::string& name, Diagnostics* diags,
                                               std::chrono::system_clock::time_point now) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    diags->push_back({Diagnostic::Severity::kError, name, e.mark.is_null() ? 0 : e.mark.line + 1,
                      e.mark.is_null() ? 0 : e.mark.column + 1, "YAML syntax: " + e.msg});
    return nullptr;
  }
  if (!root.IsDefined() || root.IsNull()) {
    diags->push_back({Diagnostic::Severity::kError, name, 0, 0, "the file is empty"});
    return nullptr;
  }
  Loader loader(name, diags, now);
  return loader.Load(root, name);
}

std::shared_ptr<const Policy> Policy::LoadFile(const std::string& path, Diagnostics* diags,
                                               std::chrono::system_clock::time_point now) {
  // O_NONBLOCK: a FIFO in the policy's place is refused as not a regular
  // file, where opening it would wait for a writer for ever, and with it the
  // reload (and every reload after it, which waits for that one).
  auto text = ReadFile(path, kMaxPolicyBytes, O_NONBLOCK);
  if (!text.ok()) {
    diags->push_back({Diagnostic::Severity::kError, path, 0, 0, text.status().message()});
    return nullptr;
  }
  return LoadText(*text, path, diags, now);
}

}  // namespace liaison::policy
