#include "common/sha256.h"

// OpenSSL 3 marks its SHA256_* functions deprecated but keeps them; they are
// the only SHA-256 interface that neither looks the algorithm up nor
// allocates per hash.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <cstring>
#include <stdexcept>

namespace liaison::crypto {

namespace {

constexpr size_t kBlock = 64;  // SHA-256's block size

// Hashing failing is OpenSSL itself being broken: a digest must never be
// silently wrong, so this throws rather than returning garbage.
void Check(int ok) {
  if (ok != 1) throw std::runtime_error("SHA-256 failed");
}

SHA256_CTX Start() {
  SHA256_CTX c;
  Check(SHA256_Init(&c));
  return c;
}

void Add(SHA256_CTX* c, const void* data, size_t n) { Check(SHA256_Update(c, data, n)); }

Digest Finish(SHA256_CTX* c) {
  Digest d;
  Check(SHA256_Final(d.data(), c));
  return d;
}

}  // namespace

Digest Sha256(std::string_view data) {
  SHA256_CTX c = Start();
  Add(&c, data.data(), data.size());
  return Finish(&c);
}

Digest Sha256(uint8_t prefix, std::string_view data) {
  SHA256_CTX c = Start();
  Add(&c, &prefix, 1);
  Add(&c, data.data(), data.size());
  return Finish(&c);
}

Digest Sha256(std::string_view a, std::string_view b) {
  SHA256_CTX c = Start();
  Add(&c, a.data(), a.size());
  Add(&c, b.data(), b.size());
  return Finish(&c);
}

struct HmacSha256::Keyed {
  SHA256_CTX inner;
  SHA256_CTX outer;
};

HmacSha256::HmacSha256(std::string_view key) {
  uint8_t k[kBlock] = {};
  if (key.size() > kBlock) {
    const Digest d = Sha256(key);
    std::memcpy(k, d.data(), d.size());
  } else {
    std::memcpy(k, key.data(), key.size());
  }
  auto keyed = std::make_unique<Keyed>();
  uint8_t pad[kBlock];
  for (size_t i = 0; i < kBlock; ++i) pad[i] = k[i] ^ 0x36;
  keyed->inner = Start();
  Add(&keyed->inner, pad, kBlock);
  for (size_t i = 0; i < kBlock; ++i) pad[i] = k[i] ^ 0x5c;
  keyed->outer = Start();
  Add(&keyed->outer, pad, kBlock);
  OPENSSL_cleanse(k, sizeof k);
  OPENSSL_cleanse(pad, sizeof pad);
  keyed_ = std::move(keyed);
}

HmacSha256::~HmacSha256() {
  if (keyed_) OPENSSL_cleanse(const_cast<Keyed*>(keyed_.get()), sizeof(Keyed));
}

Digest HmacSha256::Mac(std::string_view data) const {
  SHA256_CTX c = keyed_->inner;
  Add(&c, data.data(), data.size());
  const Digest inner = Finish(&c);
  c = keyed_->outer;
  Add(&c, inner.data(), inner.size());
  const Digest mac = Finish(&c);
  OPENSSL_cleanse(&c, sizeof c);
  return mac;
}

std::string Hex(const uint8_t* data, size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(n * 2, '\0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kHex[data[i] >> 4];
    out[2 * i + 1] = kHex[data[i] & 0x0f];
  }
  return out;
}

}  // namespace liaison::crypto
