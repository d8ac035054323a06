// For tests of unknown-field handling: whether a message or any message
// under it holds unknown fields, by protobuf's own walk (ListFields over
// every field), independent of the field plans the code under test uses.
#pragma once

#include <google/protobuf/message.h>

#include <vector>

namespace liaison::test {

inline bool AnyUnknown(const google::protobuf::Message& m) {
  const auto* r = m.GetReflection();
  if (!r->GetUnknownFields(m).empty()) return true;
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const auto* f : fields) {
    if (f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (f->is_repeated()) {
      for (int i = 0; i < r->FieldSize(m, f); ++i) {
        if (AnyUnknown(r->GetRepeatedMessage(m, f, i))) return true;
      }
    } else if (AnyUnknown(r->GetMessage(m, f))) {
      return true;
    }
  }
  return false;
}

}  // namespace liaison::test
