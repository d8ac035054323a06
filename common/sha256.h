// SHA-256 and HMAC-SHA256 for the hot paths (Merkle leaves and nodes, body
// digests, pseudonyms, idempotency digests). OpenSSL 3's one-shot HMAC() and
// SHA256(), and every EVP_DigestInit_ex, look the algorithm up or allocate a
// context per call, which cost more than hashing the broker's short inputs
// (and about a fifth of the hashing time when verifying a log). These hash
// with OpenSSL's SHA-256 state on the stack: no lookup, no allocation. An
// HmacSha256 keeps the keyed inner and outer states, so a MAC is two state
// copies and the hashing.
//
// Thread-safety: all functions, and const methods of HmacSha256, may be
// called from any thread (also from exit handlers: nothing is per thread).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include <memory>

namespace liaison::crypto {

using Digest = std::array<uint8_t, 32>;

Digest Sha256(std::string_view data);
// SHA-256 of one prefix byte followed by data (RFC 6962 leaf and node
// hashes), without copying data behind the prefix.
Digest Sha256(uint8_t prefix, std::string_view data);
// SHA-256 of a followed by b, without joining them.
Digest Sha256(std::string_view a, std::string_view b);

class HmacSha256 {
 public:
  // Any key length (RFC 2104: keys longer than the block are hashed first).
  explicit HmacSha256(std::string_view key);
  ~HmacSha256();
  HmacSha256(const HmacSha256&) = delete;
  HmacSha256& operator=(const HmacSha256&) = delete;

  Digest Mac(std::string_view data) const;

 private:
  struct Keyed;  // the SHA-256 states after (key ^ ipad) and (key ^ opad)
  std::unique_ptr<const Keyed> keyed_;
};

// Lower-case hex of bytes.
std::string Hex(const uint8_t* data, size_t n);

}  // namespace liaison::crypto
