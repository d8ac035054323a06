// An audit record and its canonical leaf bytes (version 1): a fixed,
// length-prefixed encoding. The broker's store keeps the bytes exactly as
// hashed; an export keeps the fields as columns only, and a verifier
// encodes them again and checks the hash. The encoding is canonical both
// ways: bytes that decode encode back to themselves, and fields that encode
// decode back to themselves, so a hash that matches means exactly the
// signed fields. Metadata only: never a message body. Plain value type.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace liaison::audit {

struct Record {
  uint64_t seq = 0;        // 1-based, gapless; assigned by the store
  int64_t time_ms = 0;     // Unix milliseconds
  std::string event;       // connection_accepted, decision, delivered, ...
  std::string actor;       // the agency acting (sender, recipient, auditor)
  std::string cert_sha256; // the actor's certificate fingerprint, when relevant
  std::string message_id;
  std::string case_id;
  std::string sender;
  std::string recipient;
  std::string message_type;
  int tlp = 0;
  std::string purpose;
  std::string decision;        // permit, deny:<why>, refused:<reason>, ...
  std::string rules;           // the rule ids that decided, comma-separated
  std::string policy_version;
  std::string obligations;     // what was applied: redacted/pseudonymised paths
  std::string body_hmac;       // HMAC-SHA256 (hex) of the body as this recipient received it
  std::string detail;          // anything else, e.g. the peer address or a count

  bool operator==(const Record&) const = default;
};

inline constexpr uint8_t kLeafVersion = 1;

// A record's fields without owning them: the strings point into leaf bytes
// (DecodeLeafView) or into wherever the caller holds them (a verifier's
// SQLite row, for EncodeLeafView), and are valid as long as those are. For
// the verifier, which encodes every record of a log (docs/auditing.md,
// section 3.2).
struct RecordView {
  // The 15 strings in leaf order (see EncodeLeaf): event, actor,
  // cert_sha256, message_id, case_id, sender, recipient, message_type,
  // purpose, decision, rules, policy_version, obligations, body_hmac, detail.
  static constexpr int kStrings = 15;
  uint64_t seq = 0;
  int64_t time_ms = 0;
  int64_t tlp = 0;  // 0 to 2^31 - 1 in a leaf; wider here so that a column's value is checked, not cut
  std::string_view strings[kStrings];
};

// The canonical leaf bytes.
std::string EncodeLeaf(const Record& r);
// Parses leaf bytes; Corruption if they are not a version-1 leaf.
Result<Record> DecodeLeaf(std::string_view leaf);
// The same checks as DecodeLeaf, without allocating; false (and *why set to
// the reason) if the bytes are not a version-1 leaf.
bool DecodeLeafView(std::string_view leaf, RecordView* out, const char** why);
// The canonical leaf bytes of v, written into *buffer (which only grows, so
// a caller that encodes many records reuses it and allocates a few times in
// all) and returned as a view into it, valid until *buffer changes. False
// (and *why set) if no leaf holds these fields, i.e. DecodeLeafView would
// refuse their encoding: a TLP outside [0, 2^31 - 1], a string of 2^32
// bytes or more.
bool EncodeLeafView(const RecordView& v, std::string* buffer, std::string_view* leaf, const char** why);

}  // namespace liaison::audit
