// Per-recipient redaction and pseudonymisation of a message body: the
// broker applies a permit's Obligations (policy/obligations.h) to its own
// copy of a message before delivering it to one recipient. The walks go
// by the schema's descriptors and (liaison.v1.data_category) annotations,
// so a field added to the schema is covered without code here:
// ApplyObligations over a parsed message by reflection (the definition),
// RedactCopy over the stored bytes (what the broker calls; the same bytes).
// Stateless functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "policy/obligations.h"

namespace liaison::v1 {
class Message;
}

namespace liaison::policy {

// One version of a sharing agreement's pseudonym key (policy/pseudonym_keys.h).
struct PseudonymKey {
  std::string agreement;
  uint32_t version = 0;
  std::string key;  // 32 raw bytes
};

// What was done, for the envelope's redacted_paths / pseudonymised_paths and
// the audit log. Sorted and unique; paths in the Obligations form. A path is
// the highest field removed: "incident_report.persons" when all persons went,
// "incident_report.persons.full_name" when only their names did.
struct RedactionReport {
  std::vector<std::string> redacted_paths;
  std::vector<std::string> pseudonymised_paths;
};

// Applies o to message's body, in place. Unknown fields are dropped from the
// whole message (envelope included), at every depth. Otherwise the envelope
// is not touched. For each field of the body, at every depth (repeated
// fields: every element):
//  - redaction (by category or path) wins over pseudonymisation; a redacted
//    field is cleared (a repeated one loses all its elements);
//  - pseudonymisation replaces each non-empty string value with
//    Pseudonym(*key, value); a set non-string leaf (enum, number, bool,
//    Timestamp, bytes) it matches is redacted instead, and reported so;
//  - a path naming a message field covers everything under it; categories
//    apply to leaves (scalars, enums, strings, Timestamps) only.
// Only fields that were set (repeated: non-empty) are reported. When o asks
// for any pseudonymisation and key is null (or not 32 bytes), returns an
// error and leaves the message unchanged.
Result<RedactionReport> ApplyObligations(v1::Message* message, const Obligations& o,
                                         const PseudonymKey* key);

// A recipient's copy of a message, obligations applied (RedactCopy).
struct RedactedCopy {
  std::string wire;  // the serialized Message
  RedactionReport report;
  bool parsed = false;  // made by parsing, not by the walk over the bytes
};

// The copy of wire, a serialized Message as the broker stores it, that one
// recipient gets: ApplyObligations(o, key) applied, the report's paths added
// to the envelope's redacted_paths and pseudonymised_paths, serialized.
// The bytes are exactly those of parsing wire, ApplyObligations, adding the
// paths and SerializeAsString. When wire is as serializing writes it (the
// broker stores nothing else), a walk over the bytes makes the copy without
// parsing them; bytes the walk does not follow (unknown or misplaced fields,
// a second body, fields out of order) are parsed. Errors: ApplyObligations's
// (a key missing or unusable), and InvalidArgument when wire does not parse
// as a Message.
Result<RedactedCopy> RedactCopy(std::string_view wire, const Obligations& o, const PseudonymKey* key);

// The same copy made by parsing wire, whatever its bytes (the definition;
// RedactCopy's path for bytes its walk does not follow). parsed is true.
Result<RedactedCopy> RedactCopyByParsing(std::string_view wire, const Obligations& o, const PseudonymKey* key);

// For the policy loader: does path name a field of a body message? The first
// element is a message type ("incident_report", "case_referral",
// "case_update"; alone it names the whole body), each further element a
// field of the message named before it. Leaves (a Timestamp included) have
// no sub-fields.
bool IsValidBodyPath(std::string_view path);

// Every leaf field path of a message type ("incident_report") with its
// liaison.v1.DataCategory, depth first in schema order. Empty for an
// unknown type.
std::vector<std::pair<std::string, int>> LeafPaths(std::string_view message_type);

// "ps:v<version>:" + 32 lower-case hex digits: the first 16 bytes of
// HMAC-SHA256(key.key, Normalise(value)).
std::string Pseudonym(const PseudonymKey& key, std::string_view value);

// The form a value is pseudonymised in, so that trivially different
// spellings of the same name give the same pseudonym: Unicode case folding
// and NFC, then runs of Unicode white space (White_Space property) become
// one ASCII space, leading and trailing ones removed. Invalid UTF-8 is not
// reinterpreted (no replacement characters, so distinct inputs stay
// distinct): only ASCII letters are lower-cased and ASCII white space
// collapsed.
std::string Normalise(std::string_view value);

}  // namespace liaison::policy
