// An audit record and its canonical leaf bytes (version 1): a fixed,
// length-prefixed encoding that is stored exactly as hashed, so a verifier
// recomputes the Merkle tree from the stored bytes and checks that the
// queryable columns say the same. Metadata only: never a message body.
// Plain value type.
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

// The fields of leaf bytes without copying them: the strings point into the
// leaf and are valid as long as it is. For the verifier, which decodes every
// record of a log and only compares (docs/auditing.md, section 3.2).
struct RecordView {
  // The 15 strings in leaf order (see EncodeLeaf): event, actor,
  // cert_sha256, message_id, case_id, sender, recipient, message_type,
  // purpose, decision, rules, policy_version, obligations, body_hmac, detail.
  static constexpr int kStrings = 15;
  uint64_t seq = 0;
  int64_t time_ms = 0;
  int tlp = 0;
  std::string_view strings[kStrings];
};

// The canonical leaf bytes.
std::string EncodeLeaf(const Record& r);
// Parses leaf bytes; Corruption if they are not a version-1 leaf.
Result<Record> DecodeLeaf(std::string_view leaf);
// The same checks as DecodeLeaf, without allocating; false (and *why set to
// the reason) if the bytes are not a version-1 leaf.
bool DecodeLeafView(std::string_view leaf, RecordView* out, const char** why);

}  // namespace liaison::audit
