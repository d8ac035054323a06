// What the two ways of applying Obligations share (policy/redact.cpp walks
// parsed messages, policy/redact_copy.cpp serialized ones): which fields a
// path covers, and the check of the pseudonym key. Internal to policy/.
#pragma once

#include <set>
#include <string>
#include <string_view>

#include "common/status.h"
#include "policy/redact.h"

namespace liaison::policy::detail {

// Does one of paths name path or one of its ancestors? (The sets are small:
// the paths one rule names.)
inline bool Covers(const std::set<std::string>& paths, std::string_view path) {
  for (const std::string& p : paths) {
    if (path.size() >= p.size() && path.compare(0, p.size(), p) == 0 &&
        (path.size() == p.size() || path[p.size()] == '.')) {
      return true;
    }
  }
  return false;
}

// Ok unless o asks for pseudonymisation and key is null or not 32 bytes.
Status CheckPseudonymKey(const Obligations& o, const PseudonymKey* key);

}  // namespace liaison::policy::detail
