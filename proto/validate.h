// Validation of a message as a client submits it for publishing. Everything
// from the network is checked here before the broker looks at it further;
// the CLI runs the same checks before sending, so a person sees the same
// error locally. Stateless; thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <string_view>

#include "common/status.h"

namespace liaison::v1 {
class Frame;
class Message;
}

namespace liaison::proto {

struct MessageLimits {
  size_t max_recipients = 100;
  size_t max_string_bytes = 64 * 1024;   // any single string or bytes field
  size_t max_repeated = 1000;            // elements of any repeated field
};

// Agency ids: lower-case letters, digits, '-' and '_', 1-63 characters,
// starting with a letter or digit.
bool IsValidAgencyId(std::string_view id);
// Purposes and sharing agreement ids: as agency ids, plus '.'.
bool IsValidToken(std::string_view token);
// Whether an agency id and a message id may make up a file name, as the
// agent's inbox and `liaison receive --out` make them from what the broker
// sends: a valid agency id and a message id in canonical UUID form (neither
// can hold '/', a leading '.' or a control character).
bool IsFileSafeKey(std::string_view agency, std::string_view message_id);

// Checks a message a client wants to publish, and normalises it in place:
// the message id to canonical UUID form, recipients de-duplicated in order.
// Fields the broker stamps (sender excepted: the caller compares it with
// the session's agency) must be empty. now is compared with expires_at.
// wire, when not empty, is the serialized message that *message was parsed
// from: the body's fields are then checked on those bytes, which is
// cheaper than through reflection, and through reflection only when that
// walk cannot vouch for them (the outcome is the same either way).
// *body_as_serialized, when given, is set true only when the message is
// valid and wire is exactly what serializing *message would give but for
// the envelope (see BodySurelyValid): then WithEnvelope(wire, envelope)
// equals message->SerializeAsString(), without serializing the body.
Status ValidateForPublish(v1::Message* message, const MessageLimits& limits,
                          std::chrono::system_clock::time_point now, std::string_view wire = {},
                          bool* body_as_serialized = nullptr);

// True only when the body of wire, a serialized Message, surely passes the
// checks ValidateForPublish makes of body fields (lengths, enum values,
// dates, coordinates, times, repeated counts) once parsed. A walk over the
// bytes that allocates nothing; false (not sure) for anything it does not
// follow exactly: an unknown field, a body or singular sub-message sent
// twice (the parser merges them), bytes that do not parse.
// *as_serialized, when given, is set true only when this returns true and
// wire is its envelope then its body and nothing else, with the body's
// bytes exactly those protobuf's serializer writes for the parsed body
// (fields in order, numbers packed, defaults left out, shortest varints):
// a body encoded another way parses to the same message, but its bytes
// cannot stand for the serializer's.
bool BodySurelyValid(std::string_view wire, const MessageLimits& limits, bool* as_serialized = nullptr);

// What the broker needs of a publish's body that ParseVouchedPublish left
// unparsed.
struct VouchedBody {
  std::string_view type;   // its member of Message.body ("incident_report"); empty: not vouched for
  int consent_status = 0;  // a case referral's (liaison.v1.ConsentStatus); 0 for other bodies
  int legal_basis = 0;     // a case referral's (liaison.v1.LegalBasis)
};

// Reads frame_body, a Frame's bytes, as ParseFrame would, but for the body
// of a publish's message, which it leaves unparsed (unset in *frame) and
// describes in *body. It does so only when the frame is a publish and
// nothing else, each of the publish's fields at most once, none unknown,
// its message an envelope without unknown fields and then a body that
// BodySurelyValid vouches for as the serializer's bytes, with every string
// valid UTF-8 (the parser's own check, which here does not run). Then
// ValidateVouchedPublish on the message, with the message's bytes, reaches
// the verdict ValidateForPublish would on the parsed frame. False
// otherwise (*frame is then unspecified: parse it with ParseFrame).
bool ParseVouchedPublish(std::string_view frame_body, const MessageLimits& limits, v1::Frame* frame, VouchedBody* body);

// ValidateForPublish for a message ParseVouchedPublish read with the same
// limits: its envelope is checked and normalised; its body was vouched for
// on its bytes, which are the serializer's (as *body_as_serialized).
Status ValidateVouchedPublish(v1::Message* message, const MessageLimits& limits,
                              std::chrono::system_clock::time_point now);

// The serialized message of a Publish frame's body (without the length
// prefix): what publish.message was parsed from, when the frame holds one
// publish with one message; empty otherwise.
std::string_view PublishedMessage(std::string_view frame_body);

}  // namespace liaison::proto
