// Offline verification of an audit export: every record's canonical leaf,
// encoded from its columns (which must have the types an export writes),
// against its stored leaf hash, and, in exports of earlier versions that
// also hold the leaf bytes, those bytes against the encoding (records an
// auditor's scoped export holds as hash only count by their stored hash,
// and must carry nothing else); a gapless sequence, the RFC 6962 root at
// every checkpoint, every checkpoint's signature, and consistency with
// checkpoints saved earlier by auditors or agencies.
// Read-only. One verification per call; each call checks the log on the
// calling thread and on one more thread of its own, each reading its own
// part of the file with its own SQLite connection; what they find is joined
// in log order, so the first bad record is the one reported.
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
  // Called every `progress_every` records with (done, total), on the
  // calling thread; done counts the records checked so far by both threads
  // (in any order: a problem may still be found before them).
  std::function<void(uint64_t, uint64_t)> progress;
  uint64_t progress_every = 1'000'000;
  // Also run SQLite's PRAGMA quick_check over the whole file first (its
  // free pages and any other tables too); the audit data is checked in
  // full either way.
  bool quick_check = false;
  // Records per chunk of work handed to a thread (0: the default, 16384).
  // Tests set small ones so that a small log is cut into many chunks.
  uint64_t rows_per_chunk = 0;
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
// `against` or, when it has no origin, the export's newest checkpoint. The
// leaf is encoded from the record's columns, as verify does (a store's is
// its stored leaf), and must match the record's leaf hash: Corruption if it
// does not; InvalidArgument if the export holds the record by hash only.
Result<InclusionProof> ProveInclusion(const std::string& db_path, uint64_t seq, const Checkpoint& against);
std::string FormatInclusionProof(const InclusionProof& p);
Result<InclusionProof> ParseInclusionProof(std::string_view text);
// Checks the checkpoint's signature and the path; returns the record.
Result<Record> VerifyInclusionProof(const InclusionProof& p, const std::string& public_key_pem);

// An RFC 6962 consistency proof between two signed checkpoints of one log:
// that the log of the new checkpoint extends the log of the old one (no
// record of the old log was changed, removed or reordered), shown without
// the records. With the broker's public key, that is all a verifier needs.
struct ConsistencyProof {
  Checkpoint old_checkpoint;
  Checkpoint new_checkpoint;
  std::vector<merkle::Hash> path;  // RFC 9162 section 2.1.4
};

// The checkpoint of tree size `size` stored in an export (or a store); its
// newest when size is 0.
Result<Checkpoint> StoredCheckpoint(const std::string& db_path, uint64_t size);
// Builds the proof from an export (or a store) from `old_checkpoint` to
// `new_checkpoint`. Both must commit to the export's records: Corruption
// if one does not (that is itself evidence), InvalidArgument if the sizes
// are not ordered or the export is too short.
Result<ConsistencyProof> ProveConsistency(const std::string& db_path, const Checkpoint& old_checkpoint,
                                          const Checkpoint& new_checkpoint);
std::string FormatConsistencyProof(const ConsistencyProof& p);
Result<ConsistencyProof> ParseConsistencyProof(std::string_view text);
// Checks both signatures, that both are of the same log, that the old is
// not larger nor dated later than the new, and the proof (RFC 9162 section
// 2.1.4.2). PermissionDenied for a bad signature, Corruption otherwise.
Status VerifyConsistencyProof(const ConsistencyProof& p, const std::string& public_key_pem);

// Which kind of proof a proof file holds, from its first line.
enum class ProofKind { kInclusion, kConsistency, kUnknown };
ProofKind KindOfProof(std::string_view text);

}  // namespace liaison::audit
