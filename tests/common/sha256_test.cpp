#include "common/sha256.h"

#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <catch2/catch.hpp>
#include <string>
#include <thread>
#include <vector>

namespace liaison::crypto {
namespace {

std::string HexOf(const Digest& d) { return Hex(d.data(), d.size()); }

std::string Bytes(size_t n, uint8_t fill) { return std::string(n, static_cast<char>(fill)); }

std::string OpenSslHmac(const std::string& key, const std::string& data) {
  unsigned char md[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
       data.size(), md, &len);
  return Hex(md, len);
}

TEST_CASE("Sha256 matches FIPS 180-2 test vectors", "[sha256]") {
  CHECK(HexOf(Sha256("")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(HexOf(Sha256("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(HexOf(Sha256(std::string(1000000, 'a'))) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("Sha256 of two parts is the digest of them joined, wherever the cut falls", "[sha256]") {
  std::string data;
  for (int i = 0; i < 300; ++i) data.push_back(static_cast<char>(i * 7 + 3));
  for (size_t cut = 0; cut <= data.size(); ++cut) {
    CAPTURE(cut);
    CHECK(Sha256(std::string_view(data).substr(0, cut), std::string_view(data).substr(cut)) == Sha256(data));
  }
  CHECK(HexOf(Sha256("ab", "c")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("HmacSha256 matches RFC 4231 test vectors", "[sha256]") {
  // Test case 1: a 20-byte key.
  CHECK(HexOf(HmacSha256(Bytes(20, 0x0b)).Mac("Hi There")) ==
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  // Test case 2: a key shorter than the block.
  CHECK(HexOf(HmacSha256("Jefe").Mac("what do ya want for nothing?")) ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // Test case 6: a 131-byte key, longer than the block, is hashed first.
  CHECK(HexOf(HmacSha256(Bytes(131, 0xaa)).Mac("Test Using Larger Than Block-Size Key - Hash Key First")) ==
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

TEST_CASE("HmacSha256 agrees with OpenSSL's HMAC for every key and input length around the block", "[sha256]") {
  for (size_t key_len : {0, 1, 31, 32, 63, 64, 65, 100, 200}) {
    const std::string key = Bytes(key_len, static_cast<uint8_t>(0x30 + key_len % 50));
    const HmacSha256 mac(key);
    for (size_t n : {0, 1, 55, 56, 63, 64, 65, 1000}) {
      const std::string data = Bytes(n, static_cast<uint8_t>(n));
      INFO("key " << key_len << " bytes, data " << n << " bytes");
      CHECK(HexOf(mac.Mac(data)) == OpenSslHmac(key, data));
      CHECK(HexOf(mac.Mac(data)) == OpenSslHmac(key, data));  // the keyed state is not consumed
    }
  }
}

TEST_CASE("HmacSha256 gives the same MACs from several threads at once", "[sha256]") {
  const HmacSha256 mac("a key shared by the broker's threads");
  const std::string want = OpenSslHmac("a key shared by the broker's threads", "body");
  std::vector<std::thread> threads;
  std::vector<int> wrong(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) wrong[t] += HexOf(mac.Mac("body")) != want;
    });
  }
  for (auto& th : threads) th.join();
  for (int w : wrong) CHECK(w == 0);
}

// Set by a thread_local destructor that runs after the thread's other
// thread_locals are gone (thread_locals are destroyed in reverse order of
// construction; exit handlers likewise run after the main thread's): hashing
// must not depend on any of them.
std::string hashed_late;

struct HashesWhenDestroyed {
  ~HashesWhenDestroyed() {
    hashed_late = HexOf(Sha256("abc")) + " " + HexOf(HmacSha256("Jefe").Mac("what do ya want for nothing?"));
  }
};

TEST_CASE("Sha256 and HmacSha256 still work after the thread's own context is destroyed", "[sha256]") {
  hashed_late.clear();
  std::thread t([] {
    thread_local HashesWhenDestroyed late;  // constructed first, destroyed last
    (void)&late;
    CHECK(HexOf(Sha256("")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  });
  t.join();
  CHECK(hashed_late ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad "
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

}  // namespace
}  // namespace liaison::crypto
