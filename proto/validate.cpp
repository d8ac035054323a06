#include "proto/validate.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/reflection.h>
#include <google/protobuf/stubs/common.h>

#include <cstring>
#include <string>

#include "common/uuid.h"
#include "proto/detail/field_plan.h"
#include "proto/detail/pb.h"
#include "proto/detail/varint.h"
#include "proto/frame_codec.h"

namespace liaison::proto {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Reflection;

bool IsIdChar(char c, bool allow_dot) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
         (allow_dot && c == '.');
}

bool IsValidIdent(std::string_view s, bool allow_dot) {
  if (s.empty() || s.size() > 63) return false;
  if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9'))) return false;
  for (char c : s) {
    if (!IsIdChar(c, allow_dot)) return false;
  }
  return true;
}

bool ValidTime(int64_t seconds, int32_t nanos) {
  // The range protobuf's JSON mapping can represent: 0001-01-01 to 9999-12-31.
  return seconds >= -62135596800LL && seconds <= 253402300799LL && nanos >= 0 && nanos <= 999999999;
}

bool ValidTimestamp(const google::protobuf::Timestamp& t) { return ValidTime(t.seconds(), t.nanos()); }

bool ValidDate(std::string_view s) {
  if (s.size() != 10 || s[4] != '-' || s[7] != '-') return false;
  for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9}) {
    if (s[i] < '0' || s[i] > '9') return false;
  }
  auto num = [&](size_t at, size_t n) {
    int v = 0;
    for (size_t i = at; i < at + n; ++i) v = v * 10 + (s[i] - '0');
    return v;
  };
  const int y = num(0, 4), m = num(5, 2), d = num(8, 2);
  static const int kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (y < 1900 || m < 1 || m > 12 || d < 1 || d > kDays[m - 1]) return false;
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return !(m == 2 && d == 29 && !leap);
}

bool Finite(double v) { return v == v && v <= 1e300 && v >= -1e300; }

// Within the range its field's rule allows (coordinates).
bool InRange(double v, FieldRule rule) {
  return !((rule == FieldRule::kLatitude && (v < -90 || v > 90)) ||
           (rule == FieldRule::kLongitude && (v < -180 || v > 180)));
}

// Walks a body through reflection, following the body type's plan: string
// sizes, known enum values, dates, coordinates, timestamps and repeated
// counts, with the path of the first bad field. Fields are visited in field
// number order and unset ones skipped, as Reflection::ListFields lists them.
Status CheckFields(const google::protobuf::Message& msg, const MessagePlan& plan, const MessageLimits& limits,
                   const std::string& prefix) {
  const Reflection* r = msg.GetReflection();
  for (const FieldPlan& p : plan.fields) {
    if (p.kind == FieldKind::kOther) continue;
    const FieldDescriptor* f = p.field;
    // Paths are spelled out only for an error message or a sub-message's
    // prefix: building one per field was a good part of this walk's cost.
    const auto path = [&] { return prefix.empty() ? f->name() : prefix + "." + f->name(); };
    int n = 1;
    if (p.repeated) {
      n = r->FieldSize(msg, f);
      if (static_cast<size_t>(n) > limits.max_repeated) {
        return Status::InvalidArgument(path() + " has " + std::to_string(n) + " elements (maximum " +
                                       std::to_string(limits.max_repeated) + ")");
      }
    } else if ((p.kind == FieldKind::kMessage || p.kind == FieldKind::kTimestamp) && !r->HasField(msg, f)) {
      continue;
    }
    for (int i = 0; i < n; ++i) {
      const auto ipath = [&] { return p.repeated ? path() + "[" + std::to_string(i) + "]" : path(); };
      switch (p.kind) {
        case FieldKind::kString: {
          std::string scratch;
          const std::string& v = p.repeated ? r->GetRepeatedStringReference(msg, f, i, &scratch)
                                            : r->GetStringReference(msg, f, &scratch);
          if (v.size() > limits.max_string_bytes) {
            return Status::InvalidArgument(ipath() + " is longer than " +
                                           std::to_string(limits.max_string_bytes) + " bytes");
          }
          if (p.rule == FieldRule::kDateOfBirth && !v.empty() && !ValidDate(v)) {
            return Status::InvalidArgument(ipath() + " is not a date YYYY-MM-DD: '" + v + "'");
          }
          break;
        }
        case FieldKind::kEnum: {
          const int v = p.repeated ? r->GetRepeatedEnumValue(msg, f, i) : r->GetEnumValue(msg, f);
          if (v == 0 && !p.repeated) break;  // the default: unset, and always a value
          if (f->enum_type()->FindValueByNumber(v) == nullptr) {
            return Status::InvalidArgument(ipath() + " has unknown value " + std::to_string(v));
          }
          if (p.repeated && v == 0) {
            return Status::InvalidArgument(ipath() + " is " + f->enum_type()->value(0)->name());
          }
          break;
        }
        case FieldKind::kDouble: {
          const double v = p.repeated ? r->GetRepeatedDouble(msg, f, i) : r->GetDouble(msg, f);
          if (!Finite(v)) return Status::InvalidArgument(ipath() + " is not a finite number");
          if (!InRange(v, p.rule)) return Status::InvalidArgument(ipath() + " is out of range");
          break;
        }
        case FieldKind::kTimestamp: {
          const auto& t = p.repeated ? r->GetRepeatedMessage(msg, f, i) : r->GetMessage(msg, f);
          if (!ValidTimestamp(static_cast<const google::protobuf::Timestamp&>(t))) {
            return Status::InvalidArgument(ipath() + " is not a valid time");
          }
          break;
        }
        case FieldKind::kMessage: {
          const auto& sub = p.repeated ? r->GetRepeatedMessage(msg, f, i) : r->GetMessage(msg, f);
          if (Status s = CheckFields(sub, p.sub ? *p.sub : PlanOf(sub.GetDescriptor()), limits, ipath()); !s.ok()) {
            return s;
          }
          break;
        }
        case FieldKind::kOther:
          break;
      }
    }
  }
  return Status::Ok();
}

// The same checks as CheckFields, on a body's bytes as they arrived,
// without reflection: true only when the parsed body surely passes them.
// Anything the walk does not follow exactly answers false, and the caller
// asks CheckFields (which also names the field at fault): a tag the plan
// does not know, an unexpected wire type, a singular sub-message sent twice
// (the parser merges the two, so its repeated fields' counts add up), bytes
// that do not parse. Singular scalars sent twice are each checked, where the
// parser keeps the last: stricter, never looser. Allocates nothing.
//
// On the way it notes whether the bytes are exactly those protobuf's
// serializer makes of the parsed body (canonical()): fields in ascending
// number, each once (a repeated string or message's elements together),
// repeated numbers packed, no field that holds its default without
// presence, every varint as short as it can be, int32 and enum values
// sign-extended to 64 bits. Then the bytes as sent can stand for the
// message re-serialized.
class SurelyValidScan {
 public:
  // check_utf8: the body will not be parsed, so the scan also checks what
  // the parser would (strings are valid UTF-8) instead of relying on it.
  SurelyValidScan(const MessageLimits& limits, bool check_utf8) : limits_(limits), check_utf8_(check_utf8) {}

  bool canonical() const { return canonical_; }

  bool Message(const uint8_t* p, const uint8_t* end, const MessagePlan& plan, int depth) {
    if (depth > kMaxNestingDepth || plan.fields.size() > kMaxFields) return false;
    uint32_t count[kMaxFields] = {};  // elements of a repeated field; occurrences of a singular message
    uint32_t last = 0;                // the previous field's number
    WireField w;
    while (p < end) {
      const uint8_t* const start = p;
      if (!ReadField(p, end, &w)) return false;
      const FieldPlan* f = plan.Find(static_cast<int>(w.number));
      if (f == nullptr || f->wire_type == kAlwaysUnknown) return false;
      const bool packed = w.wire_type == 2 && f->packable;
      if (w.wire_type != f->wire_type && !packed) return false;
      if (canonical_) {
        canonical_ = (w.number > last || (w.number == last && f->repeated && !f->packable)) &&
                     (packed || !f->packable) && static_cast<size_t>(p - start) == CanonicalSize(w) &&
                     (f->repeated || f->field->has_presence() || !HoldsDefault(w));
        last = w.number;
      }
      uint32_t& n = count[f - plan.fields.data()];
      if (packed) {
        const auto* q = reinterpret_cast<const uint8_t*>(w.payload.data());
        const uint8_t* stop = q + w.payload.size();
        canonical_ = canonical_ && q < stop;
        uint64_t v = 0;
        while (q < stop) {
          const uint8_t* const at = q;
          if (!ReadValue(q, stop, f->wire_type, &v) || !Scalar(v, *f) || ++n > limits_.max_repeated) return false;
          canonical_ = canonical_ && (f->wire_type != 0 || (static_cast<size_t>(q - at) == VarintSize(v) &&
                                                            CanonicalVarint(v, *f)));
        }
        continue;
      }
      if (f->repeated && ++n > limits_.max_repeated) return false;
      if (w.wire_type != 2) {
        if (!Scalar(w.value, *f)) return false;
        canonical_ = canonical_ && (w.wire_type != 0 || CanonicalVarint(w.value, *f));
        continue;
      }
      const auto* value = reinterpret_cast<const uint8_t*>(w.payload.data());
      switch (f->kind) {
        case FieldKind::kString:
          if (w.payload.size() > limits_.max_string_bytes) return false;
          if (check_utf8_ && f->utf8 &&
              !google::protobuf::internal::IsStructurallyValidUTF8(w.payload.data(),
                                                                   static_cast<int>(w.payload.size()))) {
            return false;
          }
          if (f->rule == FieldRule::kDateOfBirth && !w.payload.empty() && !ValidDate(w.payload)) return false;
          break;
        case FieldKind::kTimestamp:
          if (!f->repeated && ++n > 1) return false;
          if (!Timestamp(value, value + w.payload.size())) return false;
          break;
        case FieldKind::kMessage:
          if (!f->repeated && ++n > 1) return false;
          if (f->sub == nullptr || !Message(value, value + w.payload.size(), *f->sub, depth + 1)) return false;
          break;
        default:
          break;
      }
    }
    return true;
  }

 private:
  // Plans with more fields go to CheckFields (no liaison.v1 type has so many).
  static constexpr size_t kMaxFields = 64;

  // One value of a numeric field (ReadValue's), checked as CheckFields
  // checks it: enums as the parser stores them (the low 32 bits), doubles
  // from their bits.
  static bool Scalar(uint64_t v, const FieldPlan& f) {
    if (f.kind == FieldKind::kEnum) {
      const auto e = static_cast<int32_t>(static_cast<uint32_t>(v));
      if (e == 0) return !f.repeated;
      return f.field->enum_type()->FindValueByNumber(e) != nullptr;
    }
    if (f.kind == FieldKind::kDouble) {
      double d;
      std::memcpy(&d, &v, sizeof d);
      return Finite(d) && InRange(d, f.rule);
    }
    return true;
  }

  // A google.protobuf.Timestamp's bytes: seconds (1) and nanos (2), the
  // last of each kept, as the parser keeps them.
  bool Timestamp(const uint8_t* p, const uint8_t* end) {
    canonical_ = canonical_ &&
                 CanonicalTimestamp(std::string_view(reinterpret_cast<const char*>(p), static_cast<size_t>(end - p)));
    int64_t seconds = 0;
    int32_t nanos = 0;
    WireField w;
    while (p < end) {
      if (!ReadField(p, end, &w) || w.wire_type != 0) return false;
      if (w.number == 1) {
        seconds = static_cast<int64_t>(w.value);
      } else if (w.number == 2) {
        nanos = static_cast<int32_t>(static_cast<uint32_t>(w.value));
      } else {
        return false;
      }
    }
    return ValidTime(seconds, nanos);
  }

  const MessageLimits& limits_;
  const bool check_utf8_;
  bool canonical_ = true;
};

// Whether wire, a serialized Message, is its envelope (field 1) followed by
// the body member body_bytes came from, and nothing else, the body's tag
// and length written as the serializer writes them.
bool EnvelopeThenBody(std::string_view wire, std::string_view body_bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(wire.data());
  const uint8_t* end = p + wire.size();
  WireField w;
  if (!ReadField(p, end, &w) || w.number != v1::Message::kEnvelopeFieldNumber || w.wire_type != 2) return false;
  const uint8_t* const start = p;
  if (!ReadField(p, end, &w) || w.wire_type != 2 || w.payload.data() != body_bytes.data()) return false;
  const size_t tag = VarintSize(static_cast<uint64_t>(w.number) << 3 | 2);
  return p == end && static_cast<size_t>(p - start) == tag + VarintSize(w.payload.size()) + w.payload.size();
}

Status CheckOptionalUuid(std::string* field, const char* name) {
  if (field->empty()) return Status::Ok();
  auto id = NormalizeUuid(*field);
  if (!id.ok()) return id.status().Annotate(std::string("envelope.") + name);
  *field = std::move(id).value();
  return Status::Ok();
}

}  // namespace

bool IsValidAgencyId(std::string_view id) { return IsValidIdent(id, false); }
bool IsValidToken(std::string_view token) { return IsValidIdent(token, true); }

bool IsFileSafeKey(std::string_view agency, std::string_view message_id) {
  if (!IsValidAgencyId(agency)) return false;
  auto id = NormalizeUuid(message_id);
  return id.ok() && *id == message_id;
}

bool BodySurelyValid(std::string_view wire, const MessageLimits& limits, bool* as_serialized) {
  if (as_serialized != nullptr) *as_serialized = false;
  std::string_view bytes;
  const FieldDescriptor* body_field = OnlyBodyMember(wire, &bytes);
  if (body_field == nullptr) return false;
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  SurelyValidScan scan(limits, false);  // the caller parsed wire
  if (!scan.Message(p, p + bytes.size(), PlanOf(body_field->message_type()), 1)) return false;
  if (as_serialized != nullptr) *as_serialized = scan.canonical() && EnvelopeThenBody(wire, bytes);
  return true;
}

bool ParseVouchedPublish(std::string_view frame_body, const MessageLimits& limits, v1::Frame* frame,
                         VouchedBody* body) {
  *body = {};
  // The frame: a publish and nothing else.
  const auto* p = reinterpret_cast<const uint8_t*>(frame_body.data());
  const uint8_t* end = p + frame_body.size();
  WireField w;
  if (!ReadField(p, end, &w) || w.number != v1::Frame::kPublishFieldNumber || w.wire_type != 2 || p != end) {
    return false;
  }
  // The publish: each of its fields at most once (the parser would keep
  // the last scalar and merge messages), none unknown.
  uint64_t request_id = 0;
  bool want_reports = false;
  std::string_view message;
  unsigned seen = 0;
  p = reinterpret_cast<const uint8_t*>(w.payload.data());
  end = p + w.payload.size();
  while (p < end) {
    if (!ReadField(p, end, &w) || w.number > 31 || (seen & (1u << w.number)) != 0) return false;
    seen |= 1u << w.number;
    if (w.number == v1::Publish::kRequestIdFieldNumber && w.wire_type == 0) {
      request_id = w.value;
    } else if (w.number == v1::Publish::kWantReportsFieldNumber && w.wire_type == 0) {
      want_reports = w.value != 0;
    } else if (w.number == v1::Publish::kMessageFieldNumber && w.wire_type == 2) {
      message = w.payload;
    } else {
      return false;
    }
  }
  if ((seen & (1u << v1::Publish::kMessageFieldNumber)) == 0) return false;
  // The message: its envelope, then a body the scan vouches for as the
  // serializer's, UTF-8 included (the parser's own check).
  std::string_view body_bytes;
  const FieldDescriptor* member = OnlyBodyMember(message, &body_bytes);
  if (member == nullptr) return false;
  SurelyValidScan scan(limits, true);
  const auto* b = reinterpret_cast<const uint8_t*>(body_bytes.data());
  if (!scan.Message(b, b + body_bytes.size(), PlanOf(member->message_type()), 1) || !scan.canonical() ||
      !EnvelopeThenBody(message, body_bytes)) {
    return false;
  }
  p = reinterpret_cast<const uint8_t*>(message.data());
  if (!ReadField(p, p + message.size(), &w)) return false;  // the envelope, first (EnvelopeThenBody)
  const std::string_view envelope = w.payload;
  if (MayHoldUnknownFields(envelope, v1::Envelope::descriptor())) return false;  // ParseFrame would drop them
  frame->Clear();
  v1::Publish* publish = frame->mutable_publish();
  publish->set_request_id(request_id);
  publish->set_want_reports(want_reports);
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(envelope.data()),
                                            static_cast<int>(envelope.size()));
  in.SetRecursionLimit(kMaxNestingDepth - 3);  // below the frame, the publish and the message
  v1::Envelope* env = publish->mutable_message()->mutable_envelope();
  if (!env->MergePartialFromCodedStream(&in) || !in.ConsumedEntireMessage()) return false;
  body->type = member->name();
  if (member->number() == v1::Message::kCaseReferralFieldNumber) {
    // What the policy reads of a referral; canonical, so each at most once.
    p = b;
    end = b + body_bytes.size();
    while (p < end && ReadField(p, end, &w)) {
      const auto v = static_cast<int32_t>(static_cast<uint32_t>(w.value));
      if (w.number == v1::CaseReferral::kConsentStatusFieldNumber && w.wire_type == 0) body->consent_status = v;
      if (w.number == v1::CaseReferral::kLegalBasisFieldNumber && w.wire_type == 0) body->legal_basis = v;
    }
  }
  return true;
}

std::string_view PublishedMessage(std::string_view frame_body) {
  std::string_view publish, message;
  if (!FindOnlyField(frame_body, v1::Frame::kPublishFieldNumber, &publish) ||
      !FindOnlyField(publish, v1::Publish::kMessageFieldNumber, &message)) {
    return {};
  }
  return message;
}

namespace {

// ValidateForPublish's checks but those of the body's fields; has_body
// tells whether it has one.
Status CheckEnvelope(v1::Message* message, const MessageLimits& limits, std::chrono::system_clock::time_point now,
                     bool has_body) {
  if (!message->has_envelope()) return Status::InvalidArgument("the message has no envelope");
  v1::Envelope* env = message->mutable_envelope();

  if (env->message_id().empty()) return Status::InvalidArgument("envelope.messageId is missing");
  auto id = NormalizeUuid(env->message_id());
  if (!id.ok()) return id.status().Annotate("envelope.messageId");
  env->set_message_id(std::move(id).value());

  if (!has_body) {
    return Status::InvalidArgument("the message has no body (incidentReport, caseReferral or caseUpdate)");
  }
  if (!v1::Tlp_IsValid(env->tlp()) || env->tlp() == v1::TLP_UNSPECIFIED) {
    return Status::InvalidArgument("envelope.tlp is missing (CLEAR, GREEN, AMBER, AMBER+STRICT or RED)");
  }
  if (env->purpose().empty()) return Status::InvalidArgument("envelope.purpose is missing");
  if (!IsValidToken(env->purpose())) {
    return Status::InvalidArgument("envelope.purpose '" + env->purpose() +
                                   "' is not a purpose id (lower-case letters, digits, '-', '_', '.')");
  }
  if (env->recipients().empty()) return Status::InvalidArgument("envelope.recipients is empty");
  if (static_cast<size_t>(env->recipients_size()) > limits.max_recipients) {
    return Status::InvalidArgument("envelope.recipients has " + std::to_string(env->recipients_size()) +
                                   " entries (maximum " + std::to_string(limits.max_recipients) + ")");
  }
  // Duplicates dropped, the first of each kept in place (the list is short:
  // at most max_recipients).
  auto* recipients = env->mutable_recipients();
  int kept = 0;
  for (int i = 0; i < recipients->size(); ++i) {
    const std::string& r = recipients->Get(i);
    const std::string_view name = r.rfind("group:", 0) == 0 ? std::string_view(r).substr(6) : std::string_view(r);
    if (!IsValidAgencyId(name)) {
      return Status::InvalidArgument("envelope.recipients: '" + r + "' is not an agency id or group:<id>");
    }
    bool seen = false;
    for (int j = 0; j < kept && !seen; ++j) seen = recipients->Get(j) == r;
    if (seen) continue;
    if (kept != i) recipients->Mutable(kept)->swap(*recipients->Mutable(i));
    ++kept;
  }
  recipients->DeleteSubrange(kept, recipients->size() - kept);

  if (env->case_id().size() > 128) return Status::InvalidArgument("envelope.caseId is longer than 128 bytes");
  for (char c : env->case_id()) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return Status::InvalidArgument("envelope.caseId contains control characters");
    }
  }
  if (Status s = CheckOptionalUuid(env->mutable_in_reply_to(), "inReplyTo"); !s.ok()) return s;
  if (Status s = CheckOptionalUuid(env->mutable_forwarded_from(), "forwardedFrom"); !s.ok()) return s;
  if (!env->sharing_agreement().empty() && !IsValidToken(env->sharing_agreement())) {
    return Status::InvalidArgument("envelope.sharingAgreement '" + env->sharing_agreement() + "' is not an id");
  }
  if (env->has_received_at() || env->redacted_paths_size() > 0 || env->pseudonymised_paths_size() > 0) {
    return Status::InvalidArgument(
        "envelope.receivedAt, redactedPaths and pseudonymisedPaths are set by the broker, not the sender");
  }
  if (env->has_created_at() && !ValidTimestamp(env->created_at())) {
    return Status::InvalidArgument("envelope.createdAt is not a valid time");
  }
  if (env->has_expires_at()) {
    if (!ValidTimestamp(env->expires_at())) return Status::InvalidArgument("envelope.expiresAt is not a valid time");
    const auto now_s = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
    if (env->expires_at().seconds() <= now_s) {
      return Status::InvalidArgument("envelope.expiresAt is in the past: the message has already expired");
    }
  }
  return Status::Ok();
}

}  // namespace

Status ValidateForPublish(v1::Message* message, const MessageLimits& limits, std::chrono::system_clock::time_point now,
                          std::string_view wire, bool* body_as_serialized) {
  if (body_as_serialized != nullptr) *body_as_serialized = false;
  if (Status s = CheckEnvelope(message, limits, now, message->body_case() != v1::Message::BODY_NOT_SET); !s.ok()) {
    return s;
  }
  if (!wire.empty() && BodySurelyValid(wire, limits, body_as_serialized)) return Status::Ok();
  const google::protobuf::Reflection* r = message->GetReflection();
  static const google::protobuf::OneofDescriptor* const body_oneof = v1::Message::descriptor()->FindOneofByName("body");
  const auto* body_field = r->GetOneofFieldDescriptor(*message, body_oneof);
  const google::protobuf::Message& body = r->GetMessage(*message, body_field);
  return CheckFields(body, PlanOf(body.GetDescriptor()), limits, body_field->name());
}

Status ValidateVouchedPublish(v1::Message* message, const MessageLimits& limits,
                              std::chrono::system_clock::time_point now) {
  return CheckEnvelope(message, limits, now, true);
}

}  // namespace liaison::proto
