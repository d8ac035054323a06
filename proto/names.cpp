#include "proto/names.h"

#include <algorithm>
#include <cctype>

#include "proto/detail/pb.h"

namespace liaison::proto {
namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

// Enum value name without its prefix, in lower case.
std::string StripPrefix(const std::string& name, std::string_view prefix) {
  if (name.rfind(prefix, 0) == 0) return Lower(name.substr(prefix.size()));
  return Lower(name);
}

}  // namespace

Result<int> ParseTlp(std::string_view text) {
  std::string s = Lower(text);
  if (s.rfind("tlp:", 0) == 0 || s.rfind("tlp_", 0) == 0) s = s.substr(4);
  std::replace(s.begin(), s.end(), '_', '+');
  if (s == "clear" || s == "white") return int{v1::TLP_CLEAR};
  if (s == "green") return int{v1::TLP_GREEN};
  if (s == "amber") return int{v1::TLP_AMBER};
  if (s == "amber+strict") return int{v1::TLP_AMBER_STRICT};
  if (s == "red") return int{v1::TLP_RED};
  return Status::InvalidArgument("unknown TLP label '" + std::string(text) +
                                 "' (expected CLEAR, GREEN, AMBER, AMBER+STRICT or RED)");
}

std::string TlpName(int tlp) {
  switch (tlp) {
    case v1::TLP_CLEAR: return "CLEAR";
    case v1::TLP_GREEN: return "GREEN";
    case v1::TLP_AMBER: return "AMBER";
    case v1::TLP_AMBER_STRICT: return "AMBER+STRICT";
    case v1::TLP_RED: return "RED";
    default: return "UNSPECIFIED";
  }
}

std::string ReasonName(int reason) {
  const auto* d = v1::Reason_descriptor()->FindValueByNumber(reason);
  return d ? StripPrefix(d->name(), "REASON_") : "reason_" + std::to_string(reason);
}

std::string OutcomeName(int outcome) {
  const auto* d = v1::Outcome_descriptor()->FindValueByNumber(outcome);
  return d ? StripPrefix(d->name(), "OUTCOME_") : "outcome_" + std::to_string(outcome);
}

std::string DataCategoryName(int category) {
  const auto* d = v1::DataCategory_descriptor()->FindValueByNumber(category);
  return d ? StripPrefix(d->name(), "CAT_") : "category_" + std::to_string(category);
}

std::string MessageTypeName(const v1::Message& message) {
  static const auto* const oneof = v1::Message::descriptor()->FindOneofByName("body");  // once: a lookup by name
  const auto* field = message.GetReflection()->GetOneofFieldDescriptor(message, oneof);
  return field ? field->name() : std::string();
}

std::vector<std::string> MessageTypeNames() {
  std::vector<std::string> out;
  const auto* oneof = v1::Message::descriptor()->FindOneofByName("body");
  for (int i = 0; i < oneof->field_count(); ++i) out.push_back(oneof->field(i)->name());
  return out;
}

}  // namespace liaison::proto
