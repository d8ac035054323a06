// The compiled, indexed form of a Policy (internal to policy/). Agencies
// are numbered; every agency reference (agency, group:, sector:, *) becomes
// a bitset over them, and rules are listed per recipient, so a decision
// costs the rules that can apply to that recipient, not all rules.
#pragma once

#include <cstdint>
#include <map>
#include <unordered_map>
#include <memory>
#include <string>
#include <vector>

#include "policy/policy.h"

namespace liaison::policy {

using Bits = std::vector<uint64_t>;

inline bool TestBit(const Bits& b, size_t i) { return (b[i >> 6] >> (i & 63)) & 1; }
inline void SetBit(Bits& b, size_t i) { b[i >> 6] |= uint64_t{1} << (i & 63); }

struct Policy::Compiled {
  size_t words = 0;  // 64-bit words per bitset
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>> purpose_ids;
  std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>> type_bits;  // message type -> bit

  struct CRule {
    Effect effect = Effect::kPermit;
    int agreement = -1;
    Bits senders;
    uint32_t types = 0;              // bit per message type
    int tlp_min = 1, tlp_max = 5;
    std::vector<uint32_t> purposes;  // sorted ids; empty: any
    uint32_t consent = 0;            // bit per ConsentStatus; 0: any
    uint32_t legal = 0;              // bit per LegalBasis; 0: any
  };
  std::vector<CRule> rules;
  std::vector<std::vector<uint32_t>> by_recipient;  // agency -> rules naming it as recipient, in order

  // The decision index: for each condition value, the set of rules (one bit
  // per rule) it admits. A decision ANDs five rows and visits only the rules
  // left: the cost follows the matching rules, not all rules.
  size_t rule_words = 0;
  std::vector<Bits> to_rules;       // per recipient agency
  std::vector<Bits> from_rules;     // per sender agency
  std::vector<Bits> type_rules;     // per message type (bit index of type_bits)
  std::vector<Bits> tlp_rules;      // per TLP value 0..5 (0 admits none)
  std::vector<Bits> purpose_rules;  // per purpose id; the last row: a purpose no rule names
  std::vector<std::shared_ptr<const Obligations>> obligations;  // per rule

  struct CAgreement {
    int64_t from_s = 0, until_s = 0;  // [from, until) in Unix seconds
    Bits parties;
    uint32_t legal = 0;               // bit per LegalBasis it allows
  };
  std::vector<CAgreement> agreements;

  std::map<std::string, Bits, std::less<>> groups;  // group id -> member agencies (expanded)
  std::vector<Bits> audit_scope;                    // per agency; empty for non-auditors
};

}  // namespace liaison::policy
