// Offline verification of an audit export (or a store): every record's leaf
// bytes against its columns and its stored hash, a gapless sequence, the
// RFC 6962 root at every checkpoint, every checkpoint's signature, and
// consistency with checkpoints saved earlier by auditors or agencies.
// Read-only. Not thread-safe (one verification per call).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

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
  uint64_t checkpoints_verified = 0;
  merkle::Hash root{};
  uint64_t first_bad_seq = 0;  // 0 when none
};

// OK when everything verifies; otherwise Corruption (or PermissionDenied
// for a bad signature) naming the first bad record or checkpoint.
Status VerifyAuditLog(const VerifyOptions& options, VerifyReport* report);

}  // namespace liaison::audit
