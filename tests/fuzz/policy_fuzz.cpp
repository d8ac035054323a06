// Fuzz target: the policy parser and compiler; a policy that loads is asked
// for a decision and explained.
#include <cstddef>
#include <cstdint>
#include <string>

#include "policy/policy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  liaison::Diagnostics diags;
  auto p = liaison::policy::Policy::LoadText(std::string(reinterpret_cast<const char*>(data), size), "fuzz.yaml",
                                             &diags);
  if (!p || p->agencies().empty()) return 0;
  liaison::policy::Request q;
  q.sender = p->agencies().front().id;
  q.recipient = p->agencies().back().id;
  q.message_type = "incident_report";
  q.tlp = 3;
  q.purpose = "safeguarding";
  std::vector<liaison::policy::TraceStep> trace;
  auto d = p->Evaluate(q, &trace);
  (void)p->Reasons(d, q);
  (void)p->ObligationsOf(d);
  return 0;
}
