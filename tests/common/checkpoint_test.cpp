// Checkpoint signing (common/checkpoint.h): libsodium signs what OpenSSL
// would sign, byte for byte, with the key OpenSSL reads and writes, and
// OpenSSL verifies it.
#include "common/checkpoint.h"

#include <openssl/evp.h>
#include <openssl/pem.h>

#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

#include "tests/temp_dir.h"

using namespace liaison;

namespace {

// Signs body with the PEM private key in path, through OpenSSL only.
std::string OpenSslSign(const std::string& path, const std::string& body) {
  std::ifstream in(path);
  std::stringstream pem;
  pem << in.rdbuf();
  const std::string text = pem.str();
  BIO* bio = BIO_new_mem_buf(text.data(), static_cast<int>(text.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  REQUIRE(key != nullptr);
  unsigned char sig[64];
  size_t len = sizeof sig;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const bool ok = EVP_DigestSignInit(ctx, nullptr, nullptr, nullptr, key) == 1 &&
                  EVP_DigestSign(ctx, sig, &len, reinterpret_cast<const unsigned char*>(body.data()), body.size()) == 1;
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(key);
  REQUIRE(ok);
  return std::string(reinterpret_cast<const char*>(sig), len);
}

merkle::Hash RootOf(unsigned char fill) {
  merkle::Hash h;
  h.fill(fill);
  return h;
}

}  // namespace

TEST_CASE("checkpoint: the signature is OpenSSL's Ed25519 signature, and verifies", "[checkpoint]") {
  test::TempDir dir;
  const std::string path = dir / "audit-signing.key";
  auto signer = audit::Signer::LoadOrCreate(path);
  REQUIRE(signer.ok());
  for (uint64_t size : {uint64_t{0}, uint64_t{1}, uint64_t{1234567}}) {
    const audit::Checkpoint c =
        (*signer)->Sign("liaison/test-network", size, RootOf(static_cast<unsigned char>(size)), 1767225600000);
    CHECK(c.signature.size() == 64);
    CHECK(c.signature == OpenSslSign(path, c.Body()));
    CHECK(audit::VerifyCheckpoint(c, (*signer)->public_key_pem()).ok());
    // Round trip through the text form, and a changed field fails.
    auto parsed = audit::ParseCheckpoint(audit::FormatCheckpoint(c));
    REQUIRE(parsed.ok());
    CHECK(audit::VerifyCheckpoint(*parsed, (*signer)->public_key_pem()).ok());
    audit::Checkpoint changed = c;
    changed.tree_size++;
    CHECK(audit::VerifyCheckpoint(changed, (*signer)->public_key_pem()).IsPermissionDenied());
  }
}

TEST_CASE("checkpoint: a key loaded from its file signs as the one that created it", "[checkpoint]") {
  test::TempDir dir;
  const std::string path = dir / "audit-signing.key";
  auto created = audit::Signer::LoadOrCreate(path);
  REQUIRE(created.ok());
  auto loaded = audit::Signer::LoadOrCreate(path);
  REQUIRE(loaded.ok());
  CHECK((*loaded)->key_id() == (*created)->key_id());
  const auto a = (*created)->Sign("o", 7, RootOf(7), 1);
  const auto b = (*loaded)->Sign("o", 7, RootOf(7), 1);
  CHECK(a.signature == b.signature);
  // Another key signs differently, and its signature does not verify here.
  auto other = audit::Signer::LoadOrCreate(dir / "other.key");
  REQUIRE(other.ok());
  const auto c = (*other)->Sign("o", 7, RootOf(7), 1);
  CHECK(c.signature != a.signature);
  audit::Checkpoint forged = a;
  forged.signature = c.signature;
  CHECK_FALSE(audit::VerifyCheckpoint(forged, (*created)->public_key_pem()).ok());
}
