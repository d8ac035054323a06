#include "proto/validate.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/reflection.h>

#include <string>

#include "common/uuid.h"
#include "proto/detail/field_plan.h"
#include "proto/detail/pb.h"

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

bool ValidTimestamp(const google::protobuf::Timestamp& t) {
  // The range protobuf's JSON mapping can represent: 0001-01-01 to 9999-12-31.
  return t.seconds() >= -62135596800LL && t.seconds() <= 253402300799LL && t.nanos() >= 0 &&
         t.nanos() <= 999999999;
}

bool ValidDate(const std::string& s) {
  if (s.size() != 10 || s[4] != '-' || s[7] != '-') return false;
  for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9}) {
    if (s[i] < '0' || s[i] > '9') return false;
  }
  const int y = std::stoi(s.substr(0, 4)), m = std::stoi(s.substr(5, 2)), d = std::stoi(s.substr(8, 2));
  static const int kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (y < 1900 || m < 1 || m > 12 || d < 1 || d > kDays[m - 1]) return false;
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return !(m == 2 && d == 29 && !leap);
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
          if (!(v == v) || v > 1e300 || v < -1e300) {
            return Status::InvalidArgument(ipath() + " is not a finite number");
          }
          if ((p.rule == FieldRule::kLatitude && (v < -90 || v > 90)) ||
              (p.rule == FieldRule::kLongitude && (v < -180 || v > 180))) {
            return Status::InvalidArgument(ipath() + " is out of range");
          }
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

Status ValidateForPublish(v1::Message* message, const MessageLimits& limits,
                          std::chrono::system_clock::time_point now) {
  if (!message->has_envelope()) return Status::InvalidArgument("the message has no envelope");
  v1::Envelope* env = message->mutable_envelope();

  if (env->message_id().empty()) return Status::InvalidArgument("envelope.messageId is missing");
  auto id = NormalizeUuid(env->message_id());
  if (!id.ok()) return id.status().Annotate("envelope.messageId");
  env->set_message_id(std::move(id).value());

  if (message->body_case() == v1::Message::BODY_NOT_SET) {
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

  const google::protobuf::Reflection* r = message->GetReflection();
  static const google::protobuf::OneofDescriptor* const body_oneof = v1::Message::descriptor()->FindOneofByName("body");
  const auto* body_field = r->GetOneofFieldDescriptor(*message, body_oneof);
  const google::protobuf::Message& body = r->GetMessage(*message, body_field);
  return CheckFields(body, PlanOf(body.GetDescriptor()), limits, body_field->name());
}

}  // namespace liaison::proto
