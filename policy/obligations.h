// Obligations: what a permit obliges the broker to do to a message for one
// recipient before delivering it (docs/policy.md). Plain data, produced by
// the evaluator and applied by policy/redact.h; a value type with no
// synchronisation, safe to copy between threads.
#pragma once

#include <set>
#include <string>

namespace liaison::policy {

// Categories are liaison.v1.DataCategory values; paths are body field paths
// in proto field names, dot-separated, without indices, starting at the body
// message, e.g. "incident_report.persons.full_name" (a path names a field
// and everything under it, so "incident_report.persons" covers all persons).
struct Obligations {
  std::set<int> redact_categories;
  std::set<std::string> redact_paths;
  std::set<int> pseudonymise_categories;
  std::set<std::string> pseudonymise_paths;

  bool empty() const {
    return redact_categories.empty() && redact_paths.empty() && pseudonymise_categories.empty() &&
           pseudonymise_paths.empty();
  }

  // Union: when several permits apply, the most protective result. (Where
  // one says redact and another pseudonymise, redaction wins when applied.)
  void Merge(const Obligations& other) {
    redact_categories.insert(other.redact_categories.begin(), other.redact_categories.end());
    redact_paths.insert(other.redact_paths.begin(), other.redact_paths.end());
    pseudonymise_categories.insert(other.pseudonymise_categories.begin(),
                                   other.pseudonymise_categories.end());
    pseudonymise_paths.insert(other.pseudonymise_paths.begin(), other.pseudonymise_paths.end());
  }
};

}  // namespace liaison::policy
