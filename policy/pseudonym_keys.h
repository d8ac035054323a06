// The pseudonym key store: one versioned HMAC key per sharing agreement, so
// a recipient can correlate pseudonyms within an agreement but not join them
// across agreements (docs/policy.md). Keys live apart from the policy file
// and the database, in the directory named by the broker's
// `keys_dir`: one file `<agreement>.key` per agreement, mode 0600,
// one line per version, ascending: `<version> <64 hex digits>`.
//
// Thread-safe: every member may be called from any thread. The store is the
// only writer of its directory while it is open.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "common/status.h"
#include "policy/redact.h"

namespace liaison::policy {

class PseudonymKeyStore {
 public:
  // Loads every *.key in dir, refusing (with the file named) one that is
  // group/other accessible, named after an invalid agreement id, or corrupt.
  // Creates the directory (0700) if missing.
  static Result<std::unique_ptr<PseudonymKeyStore>> Open(const std::string& dir);

  ~PseudonymKeyStore();
  PseudonymKeyStore(const PseudonymKeyStore&) = delete;
  PseudonymKeyStore& operator=(const PseudonymKeyStore&) = delete;

  // The current (highest) version for agreement. An agreement with no key
  // yet gets version 1 (32 random bytes), written to disk before returning.
  Result<PseudonymKey> Current(const std::string& agreement);
  // Adds version N+1 (rotation), written to disk before returning; older
  // versions are kept.
  Result<PseudonymKey> Rotate(const std::string& agreement);
  Result<PseudonymKey> Get(const std::string& agreement, uint32_t version) const;

 private:
  using Versions = std::map<uint32_t, std::string>;  // version -> 32 raw bytes

  explicit PseudonymKeyStore(std::string dir) : dir_(std::move(dir)) {}
  // Adds a new highest version and writes the agreement's file.
  Result<PseudonymKey> AddVersionLocked(const std::string& agreement);
  std::string PathFor(const std::string& agreement) const;

  const std::string dir_;
  mutable std::mutex mu_;
  std::map<std::string, Versions> keys_;  // guarded by mu_
};

}  // namespace liaison::policy
