// Signed checkpoints of the audit log: (origin, tree size, root, time)
// signed with the broker's Ed25519 key. Agencies keep the newest they have
// seen and auditors verify exports against them. The text form follows the
// shape of C2SP signed notes:
//
//   <origin>\n<tree size>\n<base64 root>\n<time ms>\n\n— <key id> <base64 signature>\n
//
// The signature covers the first four lines (with their newlines).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/merkle.h"
#include "common/status.h"

namespace liaison::audit {

struct Checkpoint {
  std::string origin;
  uint64_t tree_size = 0;
  merkle::Hash root{};
  int64_t time_ms = 0;
  std::string key_id;     // first 8 bytes (hex) of SHA-256 of the public key
  std::string signature;  // 64 raw bytes

  // The signed bytes.
  std::string Body() const;
};

std::string FormatCheckpoint(const Checkpoint& c);
Result<Checkpoint> ParseCheckpoint(std::string_view text);

// Verifies c's signature with a PEM Ed25519 public key.
Status VerifyCheckpoint(const Checkpoint& c, const std::string& public_key_pem);

// The broker's signing key. Created on first use (mode 0600) if the file is
// absent; its public half is written beside it as <path>.pub (0644) for
// auditors. Thread-safe after construction.
class Signer {
 public:
  static Result<std::unique_ptr<Signer>> LoadOrCreate(const std::string& path);
  ~Signer();
  Checkpoint Sign(const std::string& origin, uint64_t tree_size, const merkle::Hash& root, int64_t time_ms) const;
  const std::string& public_key_pem() const { return public_pem_; }
  const std::string& key_id() const { return key_id_; }

 private:
  Signer() = default;
  // The key for libsodium (seed, then public key): it signs.
  unsigned char sodium_key_[64] = {};
  std::string public_pem_;
  std::string key_id_;
};

std::string Base64(std::string_view bytes);
Result<std::string> FromBase64(std::string_view text);
std::string Hex(std::string_view bytes);

}  // namespace liaison::audit
