// Offline verification of an audit export (or a store): every record's leaf
// bytes against its columns and its stored hash (records an auditor's
// scoped export holds as hash only count by their stored hash, and must
// carry nothing else), a gapless sequence, the
// RFC 6962 root at every checkpoint, every checkpoint's signature, and
// consistency with checkpoints saved earlier by auditors or agencies.
// Read-only. Not thread-safe (one verification per call).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/audit_record.h"
#include "common/checkpoint.h"
#include "common/status.h"

namespace liaison::audit {

struct VerifyOptions {
  std::string db_path;
  std::string public_key_pem;
  std::vector<Checkpoint> saved;  // checkpoints kept by auditors or agencies
  // Called every `progress_every` records with (done, total).
  std::function<void(uint64_t, uint64_t)> progress;
  uint64_t progress_every = 1'000'000;
};

struct VerifyReport {
  uint64_t records = 0;
  uint64_t hash_only = 0;  // of records: outside an auditor's scope, checked by their hash alone
  uint64_t checkpoints_verified = 0;
  merkle::Hash root{};
  uint64_t first_bad_seq = 0;  // 0 when none
};

// OK when everything verifies; otherwise Corruption (or PermissionDenied
// for a bad signature) naming the first bad record or checkpoint.
Status VerifyAuditLog(const VerifyOptions& options, VerifyReport* report);

// An RFC 6962 inclusion proof of one record against a signed checkpoint: all
// a third party needs, with the broker's public key, to check that the
// record is in the log the checkpoint commits to.
struct InclusionProof {
  uint64_t seq = 0;
  std::string leaf;                 // the record's canonical leaf bytes
  std::vector<merkle::Hash> path;   // RFC 6962 audit path
  Checkpoint checkpoint;
};

// Builds the proof of record seq from an export (or a store), against
// `against` or, when it has no origin, the export's newest checkpoint.
Result<InclusionProof> ProveInclusion(const std::string& db_path, uint64_t seq, const Checkpoint& against);
std::string FormatInclusionProof(const InclusionProof& p);
Result<InclusionProof> ParseInclusionProof(std::string_view text);
// Checks the checkpoint's signature and the path; returns the record.
Result<Record> VerifyInclusionProof(const InclusionProof& p, const std::string& public_key_pem);

}  // namespace liaison::audit
