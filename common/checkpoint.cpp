#include "common/checkpoint.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sodium.h>

#include <charconv>
#include <filesystem>

#include "common/files.h"

namespace liaison::audit {
namespace {

constexpr std::string_view kSigPrefix = "\xE2\x80\x94 ";  // "— "

std::string KeyIdOf(const std::string& public_pem) {
  unsigned char md[32];
  EVP_Digest(public_pem.data(), public_pem.size(), md, nullptr, EVP_sha256(), nullptr);
  return Hex(std::string_view(reinterpret_cast<const char*>(md), 8));
}

std::string PublicPem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PUBKEY(bio, key);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string s(data, static_cast<size_t>(n));
  BIO_free(bio);
  return s;
}

bool ParseU64(std::string_view s, uint64_t* v) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *v);
  return ec == std::errc() && p == s.data() + s.size() && !s.empty();
}

}  // namespace

std::string Hex(std::string_view bytes) {
  static const char* kHex = "0123456789abcdef";
  std::string s;
  s.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    s.push_back(kHex[c >> 4]);
    s.push_back(kHex[c & 0xF]);
  }
  return s;
}

std::string Base64(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

Result<std::string> FromBase64(std::string_view text) {
  if (text.size() % 4 != 0) return Status::InvalidArgument("not base64");
  std::string out(3 * text.size() / 4 + 1, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (n < 0) return Status::InvalidArgument("not base64");
  size_t len = static_cast<size_t>(n);
  if (!text.empty() && text.back() == '=') --len;
  if (text.size() >= 2 && text[text.size() - 2] == '=') --len;
  out.resize(len);
  return out;
}

std::string Checkpoint::Body() const {
  return origin + "\n" + std::to_string(tree_size) + "\n" +
         Base64(std::string_view(reinterpret_cast<const char*>(root.data()), root.size())) + "\n" +
         std::to_string(time_ms) + "\n";
}

std::string FormatCheckpoint(const Checkpoint& c) {
  return c.Body() + "\n" + std::string(kSigPrefix) + c.key_id + " " + Base64(c.signature) + "\n";
}

Result<Checkpoint> ParseCheckpoint(std::string_view text) {
  // Tolerate blank lines added at the end (e.g. by a shell redirect).
  while (text.size() >= 2 && text.substr(text.size() - 2) == "\n\n") text.remove_suffix(1);
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start < text.size()) {
    const size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) return Status::InvalidArgument("checkpoint: missing final newline");
    lines.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  if (lines.size() != 6 || !lines[4].empty()) return Status::InvalidArgument("checkpoint: expected 4 lines, a blank line and a signature line");
  Checkpoint c;
  c.origin = std::string(lines[0]);
  uint64_t time = 0;
  if (c.origin.empty() || !ParseU64(lines[1], &c.tree_size) || !ParseU64(lines[3], &time)) {
    return Status::InvalidArgument("checkpoint: bad origin, size or time");
  }
  c.time_ms = static_cast<int64_t>(time);
  auto root = FromBase64(lines[2]);
  if (!root.ok() || root->size() != 32) return Status::InvalidArgument("checkpoint: root is not 32 bytes of base64");
  std::copy(root->begin(), root->end(), c.root.begin());
  std::string_view sig = lines[5];
  if (sig.substr(0, kSigPrefix.size()) != kSigPrefix) return Status::InvalidArgument("checkpoint: no signature line");
  sig.remove_prefix(kSigPrefix.size());
  const size_t space = sig.find(' ');
  if (space == std::string_view::npos) return Status::InvalidArgument("checkpoint: bad signature line");
  c.key_id = std::string(sig.substr(0, space));
  auto s = FromBase64(sig.substr(space + 1));
  if (!s.ok() || s->size() != 64) return Status::InvalidArgument("checkpoint: signature is not 64 bytes of base64");
  c.signature = std::move(s).value();
  return c;
}

Status VerifyCheckpoint(const Checkpoint& c, const std::string& public_key_pem) {
  BIO* bio = BIO_new_mem_buf(public_key_pem.data(), static_cast<int>(public_key_pem.size()));
  EVP_PKEY* key = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (!key || EVP_PKEY_id(key) != EVP_PKEY_ED25519) {
    if (key) EVP_PKEY_free(key);
    return Status::InvalidArgument("not a PEM Ed25519 public key");
  }
  if (c.key_id != KeyIdOf(public_key_pem)) {
    EVP_PKEY_free(key);
    return Status::PermissionDenied("checkpoint signed by key " + c.key_id + ", not by this public key (" +
                                    KeyIdOf(public_key_pem) + ")");
  }
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const std::string body = c.Body();
  const bool ok = EVP_DigestVerifyInit(ctx, nullptr, nullptr, nullptr, key) == 1 &&
                  EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(c.signature.data()), c.signature.size(),
                                   reinterpret_cast<const unsigned char*>(body.data()), body.size()) == 1;
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(key);
  return ok ? Status::Ok() : Status::PermissionDenied("checkpoint signature does not verify");
}

Result<std::unique_ptr<Signer>> Signer::LoadOrCreate(const std::string& path) {
  std::unique_ptr<Signer> s(new Signer());
  // OpenSSL reads and writes the PEM file; libsodium, about twice as fast
  // as OpenSSL 3.0, signs with the same key (below). Ed25519 signatures are
  // deterministic (RFC 8032): the same bytes either way.
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(nullptr, &EVP_PKEY_free);
  if (std::filesystem::exists(path)) {
    if (Status st = CheckPrivateKeyFile(path); !st.ok()) return st;
    auto pem = ReadFile(path, 64 * 1024);
    if (!pem.ok()) return pem.status();
    BIO* bio = BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size()));
    key.reset(PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr));
    BIO_free(bio);
    if (!key || EVP_PKEY_id(key.get()) != EVP_PKEY_ED25519) {
      return Status::InvalidArgument(path + " is not a PEM Ed25519 private key");
    }
  } else {
    key.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
    if (!key) return Status::Internal("cannot create an Ed25519 key");
    BIO* bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(bio, key.get(), nullptr, nullptr, 0, nullptr, nullptr);
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio, &data);
    std::string pem(data, static_cast<size_t>(n));
    BIO_free(bio);
    if (Status st = WriteFileAtomic(path, pem, 0600); !st.ok()) return st;
  }
  if (sodium_init() < 0) return Status::Internal("libsodium cannot be initialised");
  unsigned char seed[32];
  size_t seed_len = sizeof seed;
  unsigned char pk[32];
  if (EVP_PKEY_get_raw_private_key(key.get(), seed, &seed_len) != 1 || seed_len != sizeof seed ||
      crypto_sign_seed_keypair(pk, s->sodium_key_, seed) != 0) {
    sodium_memzero(seed, sizeof seed);
    return Status::Internal("cannot read the Ed25519 key in " + path);
  }
  sodium_memzero(seed, sizeof seed);
  s->public_pem_ = PublicPem(key.get());
  s->key_id_ = KeyIdOf(s->public_pem_);
  if (Status st = WriteFileAtomic(path + ".pub", s->public_pem_, 0644); !st.ok()) return st;
  return s;
}

Signer::~Signer() { sodium_memzero(sodium_key_, sizeof sodium_key_); }

Checkpoint Signer::Sign(const std::string& origin, uint64_t tree_size, const merkle::Hash& root, int64_t time_ms) const {
  Checkpoint c;
  c.origin = origin;
  c.tree_size = tree_size;
  c.root = root;
  c.time_ms = time_ms;
  c.key_id = key_id_;
  const std::string body = c.Body();
  unsigned char sig[crypto_sign_BYTES];
  unsigned long long len = 0;
  if (crypto_sign_detached(sig, &len, reinterpret_cast<const unsigned char*>(body.data()), body.size(),
                           sodium_key_) != 0) {
    throw std::runtime_error("Ed25519 signing failed");  // the key was checked at load: truly unexpected
  }
  c.signature.assign(reinterpret_cast<const char*>(sig), static_cast<size_t>(len));
  return c;
}

}  // namespace liaison::audit
