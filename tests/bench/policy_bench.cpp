// liaison-bench policy: how long the broker takes to decide one recipient.
//
// Generates a synthetic policy (agencies of every sector, groups nested
// three deep, a handful of agreements, thousands of rules with obligations,
// forbids, purposes, TLP ranges and consent filters), times loading it
// (Policy::LoadText: YAML parse, validation, compilation), then times
// decisions the way the broker makes them: Evaluate, and for a permit
// ObligationsOf. Half of the requests are aimed at a permit rule that
// carries obligations (sender, recipient, type, TLP and purpose chosen to
// match it), half are random; the fractions actually obtained are printed.
//
// One JSON line to stdout; details to stderr. See docs/benchmarks.md.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/diagnostic.h"
#include "policy/policy.h"
#include "tests/bench/bench.h"

namespace liaison::bench {
namespace {

using Clock = std::chrono::steady_clock;
using policy::KnownSectors;
using Set = std::vector<uint64_t>;  // a set of agency indices

const char* const kTypes[] = {"incident_report", "case_referral", "case_update"};
constexpr int kCaseReferral = 1;
const char* const kTlp[] = {"", "CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"};
const char* const kConsent[] = {"", "given", "refused", "withdrawn", "not_sought", "not_required"};
const char* const kLegal[] = {"",       "consent",         "legal_obligation", "vital_interests",
                              "public_task", "legitimate_interests", "substantial_public_interest",
                              "law_enforcement"};
const char* const kPurposes[] = {"safeguarding",     "threat_assessment", "case_coordination", "child_protection",
                                 "domestic_abuse",   "missing_persons",   "public_health",     "school_attendance",
                                 "housing_support",  "youth_offending",   "exit_programme",    "victim_support"};
constexpr int kNumPurposes = 12;
const char* const kCategories[] = {"identifying", "personal", "special_category", "criminal_offence", "free_text"};
const char* const kPaths[] = {"incident_report.persons.full_name",  "incident_report.persons.notes",
                              "incident_report.location.street_address", "incident_report.police_reference",
                              "incident_report.description",        "case_referral.person",
                              "case_referral.person.national_id",   "case_referral.concerns.details",
                              "case_referral.referrer.phone",       "case_update.contact",
                              "case_update.summary",                "case_update.closure_reason"};

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// The generator's own model of what it wrote, to aim requests at rules.
struct Model {
  size_t n = 0;
  size_t words = 0;
  std::vector<std::string> ids;
  std::vector<int> sector;            // index into KnownSectors()
  std::vector<Set> sector_members;
  std::vector<std::string> group_ids;
  std::vector<Set> group_members;     // expanded
  std::vector<int> leaf, mid, top;    // group indices by level

  struct Agreement {
    std::string id;
    Set parties;
    std::vector<int> purposes;  // indices into kPurposes
    std::vector<int> legal;     // LegalBasis values
    bool in_force = true;
  };
  std::vector<Agreement> agreements;

  struct Rule {
    bool permit = true;
    int agreement = -1;
    Set from, to;
    std::vector<int> types;     // indices into kTypes; all three when not given
    int tlp_min = 1, tlp_max = 5;
    std::vector<int> purposes;  // empty: the agreement's
    std::vector<int> consent;
    std::vector<int> legal;
    bool obligations = false;
  };
  std::vector<Rule> rules;

  Set Empty() const { return Set(words, 0); }
  static void Add(Set& s, size_t i) { s[i >> 6] |= uint64_t{1} << (i & 63); }
  static bool Has(const Set& s, size_t i) { return (s[i >> 6] >> (i & 63)) & 1; }
  static void Or(Set& a, const Set& b) {
    for (size_t w = 0; w < a.size(); ++w) a[w] |= b[w];
  }
  std::vector<uint32_t> Members(const Set& s) const {
    std::vector<uint32_t> out;
    for (size_t i = 0; i < n; ++i) {
      if (Has(s, i)) out.push_back(static_cast<uint32_t>(i));
    }
    return out;
  }
  size_t Count(const Set& s) const {
    size_t c = 0;
    for (uint64_t w : s) c += static_cast<size_t>(__builtin_popcountll(w));
    return c;
  }
};

class Generator {
 public:
  Generator(size_t agencies, size_t groups, size_t rules, uint64_t seed)
      : n_agencies_(agencies), n_groups_(groups), n_rules_(rules), rng_(seed) {}

  std::string Generate(Model* m) {
    m_ = m;
    m_->n = n_agencies_;
    m_->words = (n_agencies_ + 63) / 64;
    out_ = "# liaison-bench policy: synthetic\nversion: 1\n";
    Agencies();
    Groups();
    Agreements();
    Rules();
    return std::move(out_);
  }

 private:
  size_t Uniform(size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng_); }
  bool Chance(double p) { return std::bernoulli_distribution(p)(rng_); }
  template <typename T>
  std::vector<T> Subset(const std::vector<T>& from, size_t min_size = 1) {  // random non-empty subset
    std::vector<T> out;
    while (out.size() < min_size) {
      out.clear();
      for (const T& x : from) {
        if (Chance(0.5)) out.push_back(x);
      }
    }
    return out;
  }

  void Agencies() {
    const auto& sectors = KnownSectors();
    m_->sector_members.assign(sectors.size(), m_->Empty());
    out_ += "agencies:\n";
    char id[32];
    for (size_t i = 0; i < n_agencies_; ++i) {
      std::snprintf(id, sizeof id, "ag%04zu", i);
      // Mixed sectors, weighted like a city network: many schools, social
      // work and civil society; few national bodies.
      static const int kWeights[] = {8, 24, 14, 10, 10, 18, 8, 3, 5};
      int sector = std::discrete_distribution<int>(std::begin(kWeights), std::end(kWeights))(rng_);
      m_->ids.push_back(id);
      m_->sector.push_back(sector);
      Model::Add(m_->sector_members[sector], i);
      out_ += "  - id: " + std::string(id) + "\n    name: Agency " + std::to_string(i) + "\n    sector: " +
              sectors[sector] + "\n";
      if (i == 0) out_ += "    roles: [auditor]\n    audit_scope: [\"*\"]\n";
    }
  }

  // Three levels: top groups of mid groups of leaf groups of agencies.
  void Groups() {
    const size_t top = std::max<size_t>(1, n_groups_ / 10), mid = std::max<size_t>(1, n_groups_ / 5);
    const size_t leaf = n_groups_ - top - mid;
    out_ += "groups:\n";
    auto add = [&](const std::string& id, const std::vector<std::string>& members, const Set& expanded) {
      m_->group_ids.push_back(id);
      m_->group_members.push_back(expanded);
      out_ += "  - id: " + id + "\n    members: [";
      for (size_t i = 0; i < members.size(); ++i) out_ += (i ? ", " : "") + members[i];
      out_ += "]\n";
      return static_cast<int>(m_->group_ids.size() - 1);
    };
    for (size_t g = 0; g < leaf; ++g) {  // 8-16 agencies each
      Set s = m_->Empty();
      std::vector<std::string> members;
      const size_t k = std::min(n_agencies_, 8 + Uniform(9));
      while (members.size() < k) {
        const size_t a = Uniform(n_agencies_);
        if (Model::Has(s, a)) continue;
        Model::Add(s, a);
        members.push_back(m_->ids[a]);
      }
      m_->leaf.push_back(add("leaf-" + std::to_string(g), members, s));
    }
    for (size_t g = 0; g < mid; ++g) {  // 3-4 leaf groups, sometimes an agency too
      Set s = m_->Empty();
      std::vector<std::string> members;
      for (size_t k = 0, want = 3 + Uniform(2); k < want; ++k) {
        const int l = m_->leaf[Uniform(m_->leaf.size())];
        const std::string ref = "group:" + m_->group_ids[l];
        if (std::find(members.begin(), members.end(), ref) != members.end()) continue;
        members.push_back(ref);
        Model::Or(s, m_->group_members[l]);
      }
      if (Chance(0.5)) {
        const size_t a = Uniform(n_agencies_);
        if (!Model::Has(s, a)) members.push_back(m_->ids[a]);
        Model::Add(s, a);
      }
      m_->mid.push_back(add("mid-" + std::to_string(g), members, s));
    }
    for (size_t g = 0; g < top; ++g) {  // 2-3 mid groups
      Set s = m_->Empty();
      std::vector<std::string> members;
      for (size_t k = 0, want = 2 + Uniform(2); k < want; ++k) {
        const int md = m_->mid[Uniform(m_->mid.size())];
        const std::string ref = "group:" + m_->group_ids[md];
        if (std::find(members.begin(), members.end(), ref) != members.end()) continue;
        members.push_back(ref);
        Model::Or(s, m_->group_members[md]);
      }
      m_->top.push_back(add("top-" + std::to_string(g), members, s));
    }
  }

  // A reference's text and the agencies it names.
  std::string SectorRef(int s, Set* set) {
    Model::Or(*set, m_->sector_members[s]);
    return "sector:" + KnownSectors()[s];
  }
  std::string GroupRef(int g, Set* set) {
    Model::Or(*set, m_->group_members[g]);
    return "group:" + m_->group_ids[g];
  }

  void Agreements() {
    // name, parties (sectors by index into KnownSectors, "*", top groups), legal bases
    struct Def {
      const char* id;
      std::vector<int> sectors;
      bool star;
      int top_groups;
      std::vector<int> legal;
      bool expired;
    };
    const std::vector<Def> defs = {
        {"city-network", {}, true, 0, {4, 2, 3}, false},
        {"statutory-partners", {0, 2, 3, 6}, false, 0, {4, 2}, false},
        {"education-youth", {1, 4, 5}, false, 1, {4, 1}, false},
        {"health-social", {2, 3}, false, 1, {1, 3, 6}, false},
        {"justice", {0, 6, 7}, false, 0, {7, 2}, false},
        {"regional-partnerships", {}, false, 4, {4, 5}, false},
        {"civil-society-compact", {5, 8, 2}, false, 0, {1, 5}, false},
        {"pilot-2025", {1, 5}, false, 0, {4}, true},
    };
    out_ += "agreements:\n";
    for (size_t i = 0; i < defs.size(); ++i) {
      const Def& d = defs[i];
      Model::Agreement ag;
      ag.id = d.id;
      ag.parties = m_->Empty();
      std::vector<std::string> parties;
      if (d.star) {
        parties.push_back("\"*\"");
        for (size_t a = 0; a < n_agencies_; ++a) Model::Add(ag.parties, a);
      }
      for (int s : d.sectors) parties.push_back(SectorRef(s, &ag.parties));
      for (int t = 0; t < d.top_groups; ++t) {
        const int g = m_->top[(i + static_cast<size_t>(t)) % m_->top.size()];
        const std::string ref = GroupRef(g, &ag.parties);
        if (std::find(parties.begin(), parties.end(), ref) == parties.end()) parties.push_back(ref);
      }
      for (int k = 0; k < 3; ++k) ag.purposes.push_back(static_cast<int>((i * 2 + static_cast<size_t>(k)) % kNumPurposes));
      ag.legal = d.legal;
      ag.in_force = !d.expired;
      out_ += "  - id: " + ag.id + "\n    title: Agreement " + ag.id + "\n    parties: [" + Join(parties) +
              "]\n    purposes: [" + Names(ag.purposes, kPurposes) + "]\n    legal_basis: [" +
              Names(ag.legal, kLegal) + "]\n";
      out_ += d.expired ? "    valid_from: 2025-01-01\n    valid_until: 2025-12-31\n"
                        : "    valid_from: 2026-01-01\n    valid_until: 2035-12-31\n    review_by: 2035-06-30\n";
      m_->agreements.push_back(std::move(ag));
    }
  }

  static std::string Join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
  }
  static std::string Names(const std::vector<int>& v, const char* const* names) {
    std::string s;
    for (int x : v) s += (s.empty() ? "" : ", ") + std::string(names[x]);
    return s;
  }

  // An agency inside scope (or any, when scope is empty of members).
  size_t AgencyIn(const Set& scope) {
    for (int tries = 0; tries < 64; ++tries) {
      const size_t a = Uniform(n_agencies_);
      if (Model::Has(scope, a)) return a;
    }
    return Uniform(n_agencies_);
  }
  // A sector with members inside scope.
  int SectorIn(const Set& scope) {
    for (int tries = 0; tries < 64; ++tries) {
      const int s = m_->sector[AgencyIn(scope)];
      if (m_->Count(m_->sector_members[s])) return s;
    }
    return m_->sector[Uniform(n_agencies_)];
  }

  // A 'from' or 'to' list. weights: agencies, leaf, mid, top, sector, "*".
  std::string Refs(const std::vector<double>& weights, const Set& scope, Set* set) {
    std::vector<std::string> refs;
    switch (std::discrete_distribution<int>(weights.begin(), weights.end())(rng_)) {
      case 0:
        for (size_t k = 0, want = 1 + Uniform(3); k < want; ++k) {
          const size_t a = AgencyIn(scope);
          Model::Add(*set, a);
          refs.push_back(m_->ids[a]);
        }
        break;
      case 1: refs.push_back(GroupRef(m_->leaf[Uniform(m_->leaf.size())], set)); break;
      case 2: refs.push_back(GroupRef(m_->mid[Uniform(m_->mid.size())], set)); break;
      case 3: refs.push_back(GroupRef(m_->top[Uniform(m_->top.size())], set)); break;
      case 4: refs.push_back(SectorRef(SectorIn(scope), set)); break;
      default:
        refs.push_back("\"*\"");
        for (size_t a = 0; a < n_agencies_; ++a) Model::Add(*set, a);
        break;
    }
    if (refs.size() == 1 && refs[0][0] != '"' && Chance(0.1)) {  // mixed lists: a group plus an agency
      const size_t a = AgencyIn(scope);
      if (!Model::Has(*set, a)) refs.push_back(m_->ids[a]);
      Model::Add(*set, a);
    }
    return "[" + Join(refs) + "]";
  }

  std::string ObligationList(int n_categories, int n_paths) {
    std::vector<std::string> items;
    for (int i = 0; i < n_categories; ++i) {
      const std::string c = kCategories[Uniform(std::size(kCategories))];
      if (std::find(items.begin(), items.end(), c) == items.end()) items.push_back(c);
    }
    for (int i = 0; i < n_paths; ++i) {
      const std::string p = kPaths[Uniform(std::size(kPaths))];
      if (std::find(items.begin(), items.end(), p) == items.end()) items.push_back(p);
    }
    return "[" + Join(items) + "]";
  }

  void Rules() {
    out_ += "rules:\n";
    const std::vector<double> from_permit = {35, 30, 10, 5, 15, 5}, to_permit = {50, 28, 10, 2, 10, 0};
    const std::vector<double> from_forbid = {50, 30, 0, 0, 20, 0}, to_forbid = {60, 30, 0, 0, 10, 0};
    const Set all = [&] {
      Set s = m_->Empty();
      for (size_t a = 0; a < n_agencies_; ++a) Model::Add(s, a);
      return s;
    }();
    for (size_t i = 0; i < n_rules_; ++i) {
      Model::Rule r;
      r.from = m_->Empty();
      r.to = m_->Empty();
      r.permit = !Chance(0.05);
      std::string y = "  - id: r" + std::to_string(i) + "\n    effect: " + (r.permit ? "permit" : "forbid") + "\n";
      if (r.permit) {
        r.agreement = static_cast<int>(Uniform(m_->agreements.size()));
        const auto& ag = m_->agreements[static_cast<size_t>(r.agreement)];
        y += "    agreement: " + ag.id + "\n";
        y += "    from: " + Refs(from_permit, ag.parties, &r.from) + "\n";
        y += "    to: " + Refs(to_permit, ag.parties, &r.to) + "\n";
        if (Chance(0.08)) {  // consent filter: case referrals only
          r.types = {kCaseReferral};
          r.consent = Chance(0.5) ? std::vector<int>{1} : std::vector<int>{1, 5};
          y += "    types: [case_referral]\n    consent: [" + Names(r.consent, kConsent) + "]\n";
        } else if (Chance(0.6)) {
          r.types = Subset(std::vector<int>{0, 1, 2});
          y += "    types: [" + Names(r.types, kTypes) + "]\n";
        }
        if (Chance(0.04)) {
          r.legal = Subset(ag.legal);
          if (r.types.empty()) r.types = {kCaseReferral};  // only referrals carry a legal basis
          y += "    legal_basis: [" + Names(r.legal, kLegal) + "]\n";
        }
        if (Chance(0.5)) {
          r.purposes = Subset(ag.purposes);
          y += "    purposes: [" + Names(r.purposes, kPurposes) + "]\n";
        }
        if (Chance(0.7)) {
          r.obligations = true;
          std::string o;
          const int rc = static_cast<int>(Uniform(3)), rp = static_cast<int>(Uniform(2));
          const int pc = static_cast<int>(Uniform(2)), pp = static_cast<int>(Uniform(2));
          if (rc + rp == 0 && pc + pp == 0) {
            o += "      redact: [criminal_offence]\n";
          } else {
            if (rc + rp) o += "      redact: " + ObligationList(rc, rp) + "\n";
            if (pc + pp) o += "      pseudonymise: " + ObligationList(pc, pp) + "\n";
          }
          y += "    obligations:\n" + o;
        }
      } else {  // guard rails: narrow, mostly at the top of the TLP scale
        y += "    from: " + Refs(from_forbid, all, &r.from) + "\n";
        y += "    to: " + Refs(to_forbid, all, &r.to) + "\n";
        if (Chance(0.7)) {
          r.tlp_min = Chance(0.5) ? 5 : 4;
          r.tlp_max = 5;
          y += std::string("    tlp: ") + (r.tlp_min == 5 ? "RED" : "AMBER+STRICT..RED") + "\n";
        } else {
          r.types = {static_cast<int>(Uniform(3))};
          y += std::string("    types: [") + kTypes[r.types[0]] + "]\n";
        }
      }
      if (r.permit && Chance(0.7)) {
        r.tlp_min = 1 + static_cast<int>(Uniform(3));
        r.tlp_max = r.tlp_min + static_cast<int>(Uniform(static_cast<size_t>(6 - r.tlp_min)));
        y += std::string("    tlp: ") + kTlp[r.tlp_min] + ".." + kTlp[r.tlp_max] + "\n";
      }
      if (r.types.empty()) r.types = {0, 1, 2};
      out_ += y;
      m_->rules.push_back(std::move(r));
    }
  }

  size_t n_agencies_, n_groups_, n_rules_;
  std::mt19937_64 rng_;
  Model* m_ = nullptr;
  std::string out_;
};

// One request, compactly; turned into a policy::Request when evaluated.
struct Req {
  uint32_t sender, recipient;
  uint8_t type, tlp, consent, legal;
  int16_t purpose;    // index into kPurposes; -1: a purpose no rule names
  int16_t agreement;  // named in the envelope; -1: none
};

std::vector<Req> MakeRequests(const Model& m, size_t count, uint64_t seed, size_t* aimable_rules) {
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  auto uniform = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  auto chance = [&](double p) { return std::bernoulli_distribution(p)(rng); };

  // Permit rules with obligations, in force, with a sender and a distinct
  // recipient that are parties: what an aimed request picks from.
  struct Aim {
    uint32_t rule;
    std::vector<uint32_t> senders, recipients;
  };
  std::vector<Aim> aims;
  for (uint32_t i = 0; i < m.rules.size(); ++i) {
    const auto& r = m.rules[i];
    if (!r.permit || !r.obligations || !m.agreements[static_cast<size_t>(r.agreement)].in_force) continue;
    const Set& parties = m.agreements[static_cast<size_t>(r.agreement)].parties;
    Set s = r.from, t = r.to;
    for (size_t w = 0; w < s.size(); ++w) {
      s[w] &= parties[w];
      t[w] &= parties[w];
    }
    Aim aim{i, m.Members(s), m.Members(t)};
    if (aim.senders.empty() || aim.recipients.empty()) continue;
    if (aim.senders.size() == 1 && aim.recipients.size() == 1 && aim.senders[0] == aim.recipients[0]) continue;
    aims.push_back(std::move(aim));
  }
  *aimable_rules = aims.size();

  std::vector<Req> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    Req q{};
    q.agreement = -1;
    if (!aims.empty() && chance(0.5)) {
      const Aim& aim = aims[uniform(aims.size())];
      const auto& r = m.rules[aim.rule];
      const auto& ag = m.agreements[static_cast<size_t>(r.agreement)];
      do {
        q.sender = aim.senders[uniform(aim.senders.size())];
        q.recipient = aim.recipients[uniform(aim.recipients.size())];
      } while (q.sender == q.recipient);
      q.type = static_cast<uint8_t>(r.types[uniform(r.types.size())]);
      q.tlp = static_cast<uint8_t>(r.tlp_min + static_cast<int>(uniform(static_cast<size_t>(r.tlp_max - r.tlp_min + 1))));
      const auto& purposes = r.purposes.empty() ? ag.purposes : r.purposes;
      q.purpose = static_cast<int16_t>(purposes[uniform(purposes.size())]);
      if (q.type == kCaseReferral) {
        q.consent = static_cast<uint8_t>(r.consent.empty() ? 1 + uniform(5) : r.consent[uniform(r.consent.size())]);
        const auto& legal = r.legal.empty() ? ag.legal : r.legal;
        q.legal = static_cast<uint8_t>(legal[uniform(legal.size())]);
      }
      if (chance(0.5)) q.agreement = static_cast<int16_t>(r.agreement);  // the envelope names it
    } else {
      q.sender = static_cast<uint32_t>(uniform(m.n));
      do {
        q.recipient = static_cast<uint32_t>(uniform(m.n));
      } while (m.n > 1 && q.recipient == q.sender);
      q.type = static_cast<uint8_t>(uniform(3));
      q.tlp = static_cast<uint8_t>(1 + uniform(5));
      q.purpose = chance(0.05) ? int16_t{-1} : static_cast<int16_t>(uniform(kNumPurposes));
      if (q.type == kCaseReferral) {
        q.consent = static_cast<uint8_t>(1 + uniform(5));
        q.legal = static_cast<uint8_t>(1 + uniform(7));
      }
    }
    out.push_back(q);
  }
  return out;
}

// A fixed decision time, inside every agreement but the expired pilot.
const std::chrono::system_clock::time_point kNow = std::chrono::sys_days(std::chrono::year(2027) / 3 / 15);

policy::Request ToRequest(const Model& m, const Req& r) {
  policy::Request q;
  q.sender = m.ids[r.sender];
  q.recipient = m.ids[r.recipient];
  q.message_type = kTypes[r.type];
  q.tlp = r.tlp;
  q.purpose = r.purpose < 0 ? std::string_view("marketing") : std::string_view(kPurposes[r.purpose]);
  q.consent_status = r.consent;
  q.legal_basis = r.legal;
  if (r.agreement >= 0) q.agreement = m.agreements[static_cast<size_t>(r.agreement)].id;
  q.now = kNow;
  return q;
}

struct Options {
  size_t agencies = 1000, groups = 100, rules = 10000, decisions = 1000000;
  uint64_t seed = 1;
  int loads = 3;
  std::string dump;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int RunPolicy(const Options& o) {
  if (o.agencies < 2 || o.groups < 3 || o.decisions < 1 || o.loads < 1) {
    std::fprintf(stderr, "liaison-bench policy: need --agencies >= 2, --groups >= 3, --decisions >= 1, --loads >= 1\n");
    return 1;
  }
  Model model;
  const std::string text = Generator(o.agencies, o.groups, o.rules, o.seed).Generate(&model);
  if (!o.dump.empty()) std::ofstream(o.dump) << text;

  // Loading: YAML parse alone, then the whole of LoadText (parse, validate,
  // compile), each the median of --loads runs.
  std::vector<double> parse_ms, load_ms;
  std::shared_ptr<const policy::Policy> p;
  for (int i = 0; i < o.loads; ++i) {
    auto t0 = Clock::now();
    YAML::Node root = YAML::Load(text);
    parse_ms.push_back(Ms(Clock::now() - t0));
    Diagnostics diags;
    t0 = Clock::now();
    p = policy::Policy::LoadText(text, "bench-policy.yaml", &diags);
    load_ms.push_back(Ms(Clock::now() - t0));
    if (!p) {
      std::fprintf(stderr, "liaison-bench policy: the generated policy was refused:\n%s",
                   FormatDiagnostics(diags).c_str());
      return 1;
    }
  }

  size_t aimable = 0;
  const std::vector<Req> reqs = MakeRequests(model, o.decisions, o.seed, &aimable);

  // Warm-up (caches, allocator), untimed.
  uint64_t sink = 0;
  for (size_t i = 0; i < std::min<size_t>(reqs.size(), 20000); ++i) {
    policy::Decision d = p->Evaluate(ToRequest(model, reqs[i]));
    if (d.permit) sink += p->SharedObligationsOf(d)->redact_categories.size();
  }

  // Per decision: Evaluate, and ObligationsOf for a permit, as the broker
  // does per recipient; the request is built outside the clock.
  std::vector<uint32_t> ns(reqs.size());
  size_t permit_obl = 0, permit_plain = 0;
  size_t denials[16] = {};
  for (size_t i = 0; i < reqs.size(); ++i) {
    const policy::Request q = ToRequest(model, reqs[i]);
    const auto t0 = Clock::now();
    {
      policy::Decision d = p->Evaluate(q);
      if (d.permit) {
        auto ob = p->SharedObligationsOf(d);
        (ob->empty() ? permit_plain : permit_obl)++;
      } else {
        denials[static_cast<int>(d.denial) & 15]++;
      }
    }
    const auto t1 = Clock::now();
    ns[i] = static_cast<uint32_t>(std::min<int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count(),
                                                    UINT32_MAX));
  }

  // Batch: the same requests with no clock in the loop (request
  // construction included, as in the broker).
  const auto b0 = Clock::now();
  for (const Req& r : reqs) {
    policy::Decision d = p->Evaluate(ToRequest(model, r));
    if (d.permit) sink += p->SharedObligationsOf(d)->redact_paths.size();
    sink += d.rules.size();
  }
  const double batch_s = std::chrono::duration<double>(Clock::now() - b0).count();

  // Where the time goes: Evaluate alone, and ObligationsOf alone (permits
  // only), on a sample; stderr only.
  std::vector<uint32_t> eval_ns, obl_ns;
  for (size_t i = 0; i < std::min<size_t>(reqs.size(), 200000); ++i) {
    const policy::Request q = ToRequest(model, reqs[i]);
    const auto t0 = Clock::now();
    policy::Decision d = p->Evaluate(q);
    const auto t1 = Clock::now();
    eval_ns.push_back(static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()));
    if (!d.permit) continue;
    const auto t2 = Clock::now();
    {
      auto ob = p->SharedObligationsOf(d);
      sink += ob->pseudonymise_paths.size();
    }
    const auto t3 = Clock::now();
    obl_ns.push_back(static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t3 - t2).count()));
  }
  auto median = [](std::vector<uint32_t>& v) {
    if (v.empty()) return 0u;
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  };

  // What two back-to-back clock reads cost (included in every per-decision figure).
  std::vector<uint32_t> clock_ns(100000);
  for (auto& c : clock_ns) {
    const auto t0 = Clock::now();
    const auto t1 = Clock::now();
    c = static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
  }
  std::nth_element(clock_ns.begin(), clock_ns.begin() + clock_ns.size() / 2, clock_ns.end());

  std::sort(ns.begin(), ns.end());
  auto pct = [&](double q) {
    size_t k = static_cast<size_t>(std::ceil(q * static_cast<double>(ns.size())));
    return ns[std::min(ns.size() - 1, k == 0 ? 0 : k - 1)];
  };
  const double n = static_cast<double>(reqs.size());
  const size_t denied = reqs.size() - permit_obl - permit_plain;

  // Rules per recipient, the length of the list a decision walks.
  size_t list_total = 0, list_max = 0;
  std::vector<size_t> per_recipient(model.n, 0);
  for (const auto& r : model.rules) {
    for (uint32_t a : model.Members(r.to)) per_recipient[a]++;
  }
  for (size_t c : per_recipient) {
    list_total += c;
    list_max = std::max(list_max, c);
  }

  std::printf("{\"bench\":\"policy\",\"agencies\":%zu,\"groups\":%zu,\"rules\":%zu,\"compile_ms\":%.1f,"
              "\"parse_ms\":%.1f,\"median_ns\":%u,\"p99_ns\":%u,\"p999_ns\":%u,\"decisions_per_s\":%.0f,"
              "\"permit_with_obligations\":%.2f,\"deny\":%.2f}\n",
              o.agencies, o.groups, o.rules, Median(load_ms), Median(parse_ms), pct(0.5), pct(0.99), pct(0.999),
              n / batch_s, static_cast<double>(permit_obl) / n, static_cast<double>(denied) / n);
  std::fflush(stdout);

  std::fprintf(stderr, "policy: %zu bytes of YAML, %zu agreements; version %.12s\n", text.size(),
               model.agreements.size(), p->version().c_str());
  std::fprintf(stderr, "load (ms, %d runs): LoadText", o.loads);
  for (double x : load_ms) std::fprintf(stderr, " %.1f", x);
  std::fprintf(stderr, "; YAML parse alone");
  for (double x : parse_ms) std::fprintf(stderr, " %.1f", x);
  std::fprintf(stderr, "\nrules per recipient: mean %.1f, max %zu; permit rules with obligations that requests aim at: %zu\n",
               static_cast<double>(list_total) / static_cast<double>(model.n), list_max, aimable);
  std::fprintf(stderr, "decisions: %zu; permit with obligations %.3f, permit without %.3f, deny %.3f", reqs.size(),
               static_cast<double>(permit_obl) / n, static_cast<double>(permit_plain) / n,
               static_cast<double>(denied) / n);
  static const char* const kDenials[] = {"none",      "unknown_sender", "unknown_recipient", "no_permit",
                                         "forbidden", "not_in_force",   "ambiguous_agreement", "red_needs_named",
                                         "forward_restricted", "forward_origin_unknown"};
  std::fprintf(stderr, " (");
  for (size_t k = 1; k < std::size(kDenials); ++k) {
    if (denials[k]) std::fprintf(stderr, " %s %.3f", kDenials[k], static_cast<double>(denials[k]) / n);
  }
  std::fprintf(stderr, " )\nper decision (ns): median %u, p90 %u, p99 %u, p99.9 %u, max %u; clock pair overhead %u ns\n",
               pct(0.5), pct(0.9), pct(0.99), pct(0.999), ns.back(), clock_ns[clock_ns.size() / 2]);
  std::fprintf(stderr, "parts (median ns, %zu decisions): Evaluate alone %u; ObligationsOf alone (permits) %u\n",
               eval_ns.size(), median(eval_ns), median(obl_ns));
  std::fprintf(stderr, "batch: %.0f decisions/s (%.0f ns each)  [sink %llu]\n", n / batch_s, batch_s * 1e9 / n,
               static_cast<unsigned long long>(sink));
  return 0;
}

}  // namespace

void RegisterPolicy(CLI::App& app, int* exit_code) {
  auto opts = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(
      "policy", "Time loading a synthetic policy (LoadText) and deciding recipients (Evaluate + ObligationsOf)");
  sub->add_option("--agencies", opts->agencies, "agencies in the generated policy")->capture_default_str();
  sub->add_option("--groups", opts->groups, "groups, nested three deep (at least 3)")->capture_default_str();
  sub->add_option("--rules", opts->rules, "rules")->capture_default_str();
  sub->add_option("--decisions", opts->decisions, "decisions to time")->capture_default_str();
  sub->add_option("--seed", opts->seed, "seed of the generator and of the requests")->capture_default_str();
  sub->add_option("--loads", opts->loads, "times LoadText is run (the median is reported)")->capture_default_str();
  sub->add_option("--dump-policy", opts->dump, "also write the generated policy YAML to this file");
  sub->callback([opts, exit_code] { *exit_code = RunPolicy(*opts); });
}

}  // namespace liaison::bench
