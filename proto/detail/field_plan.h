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

#include <string_view>
#include <vector>

#include "proto/detail/varint.h"

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

struct MessagePlan;

// The wire type protobuf's parser keeps a field under: one it stores
// nowhere else (groups, maps, proto2's closed enums) is kAlwaysUnknown, so
// that the scan below sends such a message down the slow path.
constexpr unsigned char kAlwaysUnknown = 0xFF;

struct FieldPlan {
  const google::protobuf::FieldDescriptor* field;
  FieldKind kind;
  FieldRule rule;  // a check that depends on the field's name
  bool repeated;
  int category;    // the (liaison.v1.data_category) option; 0 when unset
  int number;      // field->number()
  unsigned char wire_type;  // 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32, or kAlwaysUnknown
  bool packable;            // repeated numeric: also accepted length-delimited (packed)
  // A string the generated parser refuses unless it is valid UTF-8 (proto3's
  // string fields; not bytes).
  bool utf8 = false;
  // kMessage and kTimestamp: the sub-message's plan (resolved for every type
  // a frame can contain; null for a type outside the wire protocol).
  const MessagePlan* sub = nullptr;
};

struct MessagePlan {
  std::vector<FieldPlan> fields;  // ascending field number, as ListFields
  bool has_sub_messages = false;  // any kTimestamp or kMessage field
  // fields' index by field number (-1: none), when the largest number is
  // small (every liaison.v1 type's is): the byte scan looks up every tag.
  std::vector<short> index_of;
  const FieldPlan* Find(int number) const;
};

// The plan of a message type.
const MessagePlan& PlanOf(const google::protobuf::Descriptor* d);

// Message::DiscardUnknownFields, visiting only the sub-messages that are set.
void DiscardUnknownFields(google::protobuf::Message* message);

// False only when wire, a serialized message of type d that protobuf has
// parsed, holds no field the parser kept as unknown, at any depth: every
// tag names a field of its message with the wire type the parser expects.
// True (perhaps) otherwise: an unknown number, a known one under another
// wire type, a group, a type outside the wire protocol, nesting deeper than
// kMaxNestingDepth, or bytes it cannot follow. A walk over the bytes
// without allocating, so that the usual message skips DiscardUnknownFields'
// walk over the parsed objects.
bool MayHoldUnknownFields(std::string_view wire, const google::protobuf::Descriptor* d);

// The member of liaison.v1.Message's body oneof in wire, a serialized
// Message, and its bytes in *bytes, when one member occurs there exactly
// once: the body the parser makes of it is then that one occurrence alone
// (several occurrences it would merge, or replace by the last member).
// Null otherwise, and when wire does not parse as far as the walk goes.
const google::protobuf::FieldDescriptor* OnlyBodyMember(std::string_view wire, std::string_view* bytes);

// What protobuf's serializer writes, for the walks that need to know
// whether bytes are exactly that (validation's canonical(), RedactCopy):

// The bytes the serializer writes for w: its tag, then its value (a varint,
// 8 or 4 bytes, or a length and the payload), each varint shortest.
size_t CanonicalSize(const WireField& w);

// Whether w holds the value a field without presence has when unset, which
// the serializer leaves out: 0, all-zero bits (a -0.0 is written), an empty
// string or bytes.
inline bool HoldsDefault(const WireField& w) { return w.wire_type == 2 ? w.payload.empty() : w.value == 0; }

// Whether v is a 32-bit signed value as the serializer writes it: its low 32
// bits sign-extended to 64.
inline bool SignExtended32(uint64_t v) {
  return v == static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(v))));
}

// Whether v is how the serializer writes the value the parser makes of it
// for a varint field of f's type: 32-bit signed values sign-extended,
// unsigned and zigzag ones within 32 bits, bools as 1 or 0.
bool CanonicalVarint(uint64_t v, const FieldPlan& f);

// Whether payload, the packed elements of f, is as the serializer packs
// them: at least one, each varint shortest and canonical.
bool CanonicalPacked(std::string_view payload, const FieldPlan& f);

// Whether bytes are a google.protobuf.Timestamp as the serializer writes
// it: seconds (1) and nanos (2) each at most once, in order, not 0, each
// varint shortest, nanos sign-extended.
bool CanonicalTimestamp(std::string_view bytes);

}  // namespace liaison::proto
