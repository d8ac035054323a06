// Decisions: default deny, forbid overrides permit, an agreement not in
// force permits nothing, exactly one agreement per permit, TLP 2.0 at
// routing (RED only to named recipients; only CLEAR and GREEN forwarded).
#include <algorithm>
#include <bit>

#include "policy/detail/compiled.h"
#include "policy/policy.h"
#include "proto/detail/pb.h"
#include "proto/names.h"

namespace liaison::policy {
namespace {

bool IsAudience(const OriginalMessage& o, std::string_view agency) {
  if (o.sender == agency) return true;
  return std::find(o.recipients.begin(), o.recipients.end(), agency) != o.recipients.end();
}

}  // namespace

Decision Policy::Evaluate(const Request& q, std::vector<TraceStep>* trace) const {
  Decision d;
  const Compiled& c = *compiled_;
  auto s = by_id_.find(q.sender), r = by_id_.find(q.recipient);
  if (s == by_id_.end()) {
    d.denial = Denial::kUnknownSender;
    return d;
  }
  if (r == by_id_.end()) {
    d.denial = Denial::kUnknownRecipient;
    return d;
  }
  const size_t si = s->second;
  auto type = c.type_bits.find(q.message_type);
  const uint32_t type_bit = type == c.type_bits.end() ? 0 : type->second;
  auto purpose = c.purpose_ids.find(q.purpose);
  const bool known_purpose = purpose != c.purpose_ids.end();
  const int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(q.now.time_since_epoch()).count();

  // Enum values arrive validated; anything else matches no filter.
  const uint32_t consent_bit = q.consent_status >= 0 && q.consent_status < 32 ? 1u << q.consent_status : 0;
  const uint32_t legal_bit = q.legal_basis >= 0 && q.legal_basis < 32 ? 1u << q.legal_basis : 0;
  std::vector<uint32_t>& permits = d.rules;
  std::vector<uint32_t> forbids;
  // The checks the index cannot make; null when the rule applies.
  auto rest = [&](uint32_t ri) -> const char* {
    const Compiled::CRule& rule = c.rules[ri];
    if (rule.consent && !(rule.consent & consent_bit)) return "consent status not in 'consent'";
    if (rule.legal && !(rule.legal & legal_bit)) return "legal basis not in 'legal_basis'";
    if (rule.effect != Effect::kPermit) return nullptr;
    const Compiled::CAgreement& ag = c.agreements[rule.agreement];
    if (!q.agreement.empty() && agreements_[rule.agreement].id != q.agreement) {
      return "belongs to another agreement than the envelope names";
    }
    if (now_s < ag.from_s || now_s >= ag.until_s) {
      if (std::find(d.not_in_force.begin(), d.not_in_force.end(), rule.agreement) == d.not_in_force.end()) {
        d.not_in_force.push_back(static_cast<uint32_t>(rule.agreement));
      }
      return "its agreement is not in force";
    }
    if (!TestBit(ag.parties, si) || !TestBit(ag.parties, r->second)) {
      return "sender or recipient is not a party to its agreement";
    }
    if (q.legal_basis != 0 && !(ag.legal & legal_bit)) return "the message's legal basis is not one its agreement allows";
    return nullptr;
  };
  auto take = [&](uint32_t ri) { (c.rules[ri].effect == Effect::kForbid ? forbids : permits).push_back(ri); };

  if (!trace) {
    // The index: AND the rows for this request, visit the rules left.
    if (type_bit != 0 && q.tlp >= 1 && q.tlp <= 5) {
      const uint64_t* to = c.to_rules[r->second].data();
      const uint64_t* from = c.from_rules[si].data();
      const uint64_t* types = c.type_rules[std::countr_zero(type_bit)].data();
      const uint64_t* tlp = c.tlp_rules[q.tlp].data();
      const uint64_t* purposes = c.purpose_rules[known_purpose ? purpose->second : c.purpose_rules.size() - 1].data();
      for (size_t w = 0; w < c.rule_words; ++w) {
        for (uint64_t m = to[w] & from[w] & types[w] & tlp[w] & purposes[w]; m; m &= m - 1) {
          const uint32_t ri = static_cast<uint32_t>(w * 64 + std::countr_zero(m));
          if (!rest(ri)) take(ri);
        }
      }
    }
  } else {
    // Every rule that names this recipient, with why it did or did not apply.
    for (uint32_t ri : c.by_recipient[r->second]) {
      const Compiled::CRule& rule = c.rules[ri];
      const char* skip = nullptr;
      if (!TestBit(rule.senders, si)) {
        skip = "sender not in 'from'";
      } else if (!(rule.types & type_bit)) {
        skip = "message type not in 'types'";
      } else if (q.tlp < rule.tlp_min || q.tlp > rule.tlp_max) {
        skip = "TLP outside 'tlp'";
      } else if (!rule.purposes.empty() && (!known_purpose || !std::binary_search(rule.purposes.begin(),
                                                                                   rule.purposes.end(), purpose->second))) {
        skip = "purpose not permitted";
      } else {
        skip = rest(ri);
      }
      trace->push_back({rules_[ri].id, skip ? std::string("skipped: ") + skip : "matched"});
      if (!skip) take(ri);
    }
  }

  if (!forbids.empty()) {
    d.denial = Denial::kForbidden;
    d.rules = std::move(forbids);
    return d;
  }
  if (permits.empty()) {
    d.denial = d.not_in_force.empty() ? Denial::kNoPermit : Denial::kAgreementNotInForce;
    return d;
  }
  const int agreement = c.rules[permits[0]].agreement;
  for (uint32_t ri : permits) {
    if (c.rules[ri].agreement != agreement) {
      d.denial = Denial::kAmbiguousAgreement;
      return d;
    }
  }
  if (q.tlp == v1::TLP_RED && !q.named_individually) {
    d.denial = Denial::kRedNeedsNamedRecipient;
    return d;
  }
  if (q.is_forward) {
    if (!q.original) {
      d.denial = Denial::kForwardOriginUnknown;
      return d;
    }
    const bool shareable = q.original->tlp == v1::TLP_CLEAR || q.original->tlp == v1::TLP_GREEN;
    if ((!shareable && !IsAudience(*q.original, q.recipient)) || q.tlp < q.original->tlp) {
      d.denial = Denial::kForwardRestricted;
      return d;
    }
  }
  d.permit = true;
  d.agreement = agreement;
  return d;
}

const char* DenialName(Denial d) {
  switch (d) {
    case Denial::kNone: return "none";
    case Denial::kUnknownSender: return "unknown_sender";
    case Denial::kUnknownRecipient: return "unknown_recipient";
    case Denial::kNoPermit: return "no_permit";
    case Denial::kForbidden: return "forbidden";
    case Denial::kAgreementNotInForce: return "agreement_not_in_force";
    case Denial::kAmbiguousAgreement: return "ambiguous_agreement";
    case Denial::kRedNeedsNamedRecipient: return "red_needs_named_recipient";
    case Denial::kForwardRestricted: return "forward_restricted";
    case Denial::kForwardOriginUnknown: return "forward_origin_unknown";
  }
  return "unknown";
}

Obligations Policy::ObligationsOf(const Decision& d) const { return *SharedObligationsOf(d); }

std::shared_ptr<const Obligations> Policy::SharedObligationsOf(const Decision& d) const {
  static const auto kNone = std::make_shared<const Obligations>();
  if (!d.permit || d.rules.empty()) return kNone;
  if (d.rules.size() == 1) return compiled_->obligations[d.rules[0]];
  auto o = std::make_shared<Obligations>();
  for (uint32_t ri : d.rules) o->Merge(rules_[ri].obligations);
  return o;
}

std::vector<std::string> Policy::RuleIds(const Decision& d) const {
  std::vector<std::string> out;
  for (uint32_t ri : d.rules) out.push_back(rules_[ri].id);
  return out;
}

std::vector<std::string> Policy::Reasons(const Decision& d, const Request& q) const {
  std::vector<std::string> out;
  const std::string who = std::string(q.sender) + " -> " + std::string(q.recipient);
  auto rule_list = [&] {
    std::string s;
    for (const auto& id : RuleIds(d)) s += (s.empty() ? "" : ", ") + id;
    return s;
  };
  switch (d.denial) {
    case Denial::kNone:
      out.push_back("permitted by " + rule_list() + " under agreement '" + agreements_[d.agreement].id + "'");
      break;
    case Denial::kUnknownSender: out.push_back("unknown sender '" + std::string(q.sender) + "'"); break;
    case Denial::kUnknownRecipient: out.push_back("unknown recipient '" + std::string(q.recipient) + "'"); break;
    case Denial::kNoPermit:
      out.push_back("no rule permits " + std::string(q.message_type) + " at TLP:" + proto::TlpName(q.tlp) +
                    " for purpose '" + std::string(q.purpose) + "' " + who + " (default deny)");
      break;
    case Denial::kForbidden: out.push_back("forbidden by " + rule_list()); break;
    case Denial::kAgreementNotInForce:
      for (uint32_t a : d.not_in_force) {
        out.push_back("agreement '" + agreements_[a].id + "' is not in force, so it permits nothing");
      }
      break;
    case Denial::kAmbiguousAgreement:
      out.push_back("rules of several agreements permit this (" + rule_list() +
                    "); the envelope must name the sharing agreement");
      break;
    case Denial::kRedNeedsNamedRecipient:
      out.push_back("TLP:RED goes only to individually named recipients, not by group fan-out");
      break;
    case Denial::kForwardRestricted:
      out.push_back("a forwarded message may not reach a wider audience than its original's TLP allows "
                    "(only CLEAR and GREEN may be forwarded to another agency)");
      break;
    case Denial::kForwardOriginUnknown:
      out.push_back("the forwarded message's original is unknown to this broker, so its TLP cannot be checked");
      break;
  }
  return out;
}

}  // namespace liaison::policy
