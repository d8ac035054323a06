// What the broker needs to know about each field of each liaison.v1 message
// type, worked out once from the descriptors instead of on every message:
// its kind, whether it repeats, its data category. Walks that visit every
// message (dropping unknown fields, validation, redaction) follow these
// plans and touch only the fields that can matter, where protobuf's own
// walks (Reflection::ListFields, Message::DiscardUnknownFields) test every
// field of every sub-message and allocate as they go.
//
// Internal: includes protobuf headers. Thread-safe; plans live for the
// whole program.
#pragma once

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <vector>

namespace liaison::proto {

enum class FieldKind : unsigned char {
  kString,     // string or bytes
  kEnum,
  kDouble,
  kTimestamp,  // google.protobuf.Timestamp: a leaf, like a scalar
  kMessage,    // any other message: a container
  kOther,      // integers, bools, floats: nothing to check or redact
};

enum class FieldRule : unsigned char { kNone, kDateOfBirth, kLatitude, kLongitude };

struct FieldPlan {
  const google::protobuf::FieldDescriptor* field;
  FieldKind kind;
  FieldRule rule;  // a check that depends on the field's name
  bool repeated;
  int category;    // the (liaison.v1.data_category) option; 0 when unset
};

struct MessagePlan {
  std::vector<FieldPlan> fields;  // ascending field number, as ListFields
  bool has_sub_messages = false;  // any kTimestamp or kMessage field
};

// The plan of a message type.
const MessagePlan& PlanOf(const google::protobuf::Descriptor* d);

// Message::DiscardUnknownFields, visiting only the sub-messages that are set.
void DiscardUnknownFields(google::protobuf::Message* message);

}  // namespace liaison::proto
