#include "common/sha256.h"

#include <openssl/evp.h>

#include <cstring>
#include <memory>
#include <stdexcept>

namespace liaison::crypto {

namespace {

constexpr size_t kBlock = 64;  // SHA-256's block size

// Fetched once: an explicitly fetched EVP_MD skips the per-call lookup.
const EVP_MD* Md() {
  static EVP_MD* md = [] {
    EVP_MD* m = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    if (m == nullptr) throw std::runtime_error("OpenSSL has no SHA-256");
    return m;
  }();
  return md;
}

struct CtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

// Hashing failing is OpenSSL itself being broken: a digest must never be
// silently wrong, so this throws rather than returning garbage.
void Check(int ok) {
  if (ok != 1) throw std::runtime_error("SHA-256 failed");
}

// Each thread reuses one context. Code that runs after the thread's
// thread_locals are destroyed (exit handlers run after the main thread's)
// gets a context of its own per call instead; the flag, trivially
// destructible, stays readable then.
thread_local bool scratch_destroyed = false;

struct ScratchHolder {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~ScratchHolder() {
    EVP_MD_CTX_free(ctx);
    scratch_destroyed = true;
  }
};

class Scratch {
 public:
  Scratch() {
    if (!scratch_destroyed) {
      thread_local ScratchHolder holder;
      ctx_ = holder.ctx;
    } else {
      owned_.reset(EVP_MD_CTX_new());
      ctx_ = owned_.get();
    }
    if (ctx_ == nullptr) throw std::runtime_error("out of memory for a SHA-256 context");
  }
  EVP_MD_CTX* get() const { return ctx_; }

 private:
  EVP_MD_CTX* ctx_ = nullptr;
  std::unique_ptr<EVP_MD_CTX, CtxFree> owned_;
};

Digest Finish(EVP_MD_CTX* c) {
  Digest d;
  Check(EVP_DigestFinal_ex(c, d.data(), nullptr));
  return d;
}

}  // namespace

Digest Sha256(std::string_view data) {
  Scratch scratch;
  EVP_MD_CTX* c = scratch.get();
  Check(EVP_DigestInit_ex(c, Md(), nullptr));
  Check(EVP_DigestUpdate(c, data.data(), data.size()));
  return Finish(c);
}

Digest Sha256(uint8_t prefix, std::string_view data) {
  Scratch scratch;
  EVP_MD_CTX* c = scratch.get();
  Check(EVP_DigestInit_ex(c, Md(), nullptr));
  Check(EVP_DigestUpdate(c, &prefix, 1));
  Check(EVP_DigestUpdate(c, data.data(), data.size()));
  return Finish(c);
}

HmacSha256::HmacSha256(std::string_view key) : inner_(EVP_MD_CTX_new()), outer_(EVP_MD_CTX_new()) {
  if (inner_ == nullptr || outer_ == nullptr) {
    EVP_MD_CTX_free(inner_);
    EVP_MD_CTX_free(outer_);
    throw std::runtime_error("out of memory for an HMAC context");
  }
  uint8_t k[kBlock] = {};
  if (key.size() > kBlock) {
    const Digest d = Sha256(key);
    std::memcpy(k, d.data(), d.size());
  } else {
    std::memcpy(k, key.data(), key.size());
  }
  uint8_t pad[kBlock];
  for (size_t i = 0; i < kBlock; ++i) pad[i] = k[i] ^ 0x36;
  Check(EVP_DigestInit_ex(inner_, Md(), nullptr));
  Check(EVP_DigestUpdate(inner_, pad, kBlock));
  for (size_t i = 0; i < kBlock; ++i) pad[i] = k[i] ^ 0x5c;
  Check(EVP_DigestInit_ex(outer_, Md(), nullptr));
  Check(EVP_DigestUpdate(outer_, pad, kBlock));
  OPENSSL_cleanse(k, sizeof k);
  OPENSSL_cleanse(pad, sizeof pad);
}

HmacSha256::~HmacSha256() {
  EVP_MD_CTX_free(inner_);
  EVP_MD_CTX_free(outer_);
}

Digest HmacSha256::Mac(std::string_view data) const {
  Scratch scratch;
  EVP_MD_CTX* c = scratch.get();
  Check(EVP_MD_CTX_copy_ex(c, inner_));
  Check(EVP_DigestUpdate(c, data.data(), data.size()));
  const Digest inner = Finish(c);
  Check(EVP_MD_CTX_copy_ex(c, outer_));
  Check(EVP_DigestUpdate(c, inner.data(), inner.size()));
  return Finish(c);
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
