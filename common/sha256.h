// SHA-256 and HMAC-SHA256 for the hot paths (body digests, pseudonyms,
// idempotency digests). OpenSSL 3's one-shot HMAC() and SHA256() look the
// algorithm up in the provider registry and allocate a context on every
// call, which cost more than the hashing itself for the broker's short
// inputs; these fetch SHA-256 once, and an HmacSha256 keeps the keyed inner
// and outer states, so a MAC is two context copies and the hashing.
//
// Thread-safety: all functions, and const methods of HmacSha256, may be
// called from any thread (each thread uses its own scratch context).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

struct evp_md_ctx_st;

namespace liaison::crypto {

using Digest = std::array<uint8_t, 32>;

Digest Sha256(std::string_view data);
// SHA-256 of one prefix byte followed by data (RFC 6962 leaf and node
// hashes), without copying data behind the prefix.
Digest Sha256(uint8_t prefix, std::string_view data);

class HmacSha256 {
 public:
  // Any key length (RFC 2104: keys longer than the block are hashed first).
  explicit HmacSha256(std::string_view key);
  ~HmacSha256();
  HmacSha256(const HmacSha256&) = delete;
  HmacSha256& operator=(const HmacSha256&) = delete;

  Digest Mac(std::string_view data) const;

 private:
  evp_md_ctx_st* inner_;  // SHA-256 state after (key ^ ipad)
  evp_md_ctx_st* outer_;  // SHA-256 state after (key ^ opad)
};

// Lower-case hex of bytes.
std::string Hex(const uint8_t* data, size_t n);

}  // namespace liaison::crypto
