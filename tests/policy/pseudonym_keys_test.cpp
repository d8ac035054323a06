// Unit tests for policy/pseudonym_keys.h: creating, reloading and rotating
// per-agreement keys, and refusing key files that are exposed, misnamed or
// corrupt.
#include "policy/pseudonym_keys.h"

#include <sys/stat.h>

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace {

using liaison::policy::Pseudonym;
using liaison::policy::PseudonymKey;
using liaison::policy::PseudonymKeyStore;
namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "liaison-keys-test-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string Write(const std::string& name, const std::string& text, unsigned mode = 0600) const {
    const std::string p = path_ + "/" + name;
    {
      std::ofstream out(p, std::ios::binary | std::ios::trunc);
      out << text;
    }
    REQUIRE(::chmod(p.c_str(), mode) == 0);
    return p;
  }

 private:
  std::string path_;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

unsigned ModeOf(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

std::unique_ptr<PseudonymKeyStore> MustOpen(const std::string& dir) {
  auto store = PseudonymKeyStore::Open(dir);
  INFO(store.status().ToString());
  REQUIRE(store.ok());
  return std::move(store).value();
}

template <typename T>
T Must(liaison::Result<T> r) {
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  return std::move(r).value();
}

const std::string kHex1(64, 'a');
const std::string kHex2 = "00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff";

}  // namespace

TEST_CASE("key store: creates the directory and a first key", "[pseudonym_keys]") {
  TempDir tmp;
  const std::string dir = tmp.path() + "/keys";
  auto store = MustOpen(dir);
  CHECK(fs::is_directory(dir));
  CHECK(ModeOf(dir) == 0700);

  const PseudonymKey key = Must(store->Current("agr-1"));
  CHECK(key.agreement == "agr-1");
  CHECK(key.version == 1);
  CHECK(key.key.size() == 32);
  const std::string file = dir + "/agr-1.key";
  CHECK(ModeOf(file) == 0600);
  CHECK(std::regex_match(ReadAll(file), std::regex("1 [0-9a-f]{64}\n")));

  // Asking again does not make another key.
  const PseudonymKey again = Must(store->Current("agr-1"));
  CHECK(again.version == 1);
  CHECK(again.key == key.key);

  // Each agreement has its own key.
  const PseudonymKey other = Must(store->Current("agr-2"));
  CHECK(other.key != key.key);
  CHECK(Pseudonym(key, "Jan Jansen") != Pseudonym(other, "Jan Jansen"));
}

TEST_CASE("key store: reloading from disk gives the same keys", "[pseudonym_keys]") {
  TempDir tmp;
  PseudonymKey first;
  {
    auto store = MustOpen(tmp.path());
    first = Must(store->Current("agr.2024"));
  }
  auto store = MustOpen(tmp.path());
  const PseudonymKey reloaded = Must(store->Current("agr.2024"));
  CHECK(reloaded.version == first.version);
  CHECK(reloaded.key == first.key);
  CHECK(Pseudonym(reloaded, "x") == Pseudonym(first, "x"));
  CHECK(Must(store->Get("agr.2024", 1)).key == first.key);
}

TEST_CASE("key store: rotation adds version 2 and keeps version 1", "[pseudonym_keys]") {
  TempDir tmp;
  auto store = MustOpen(tmp.path());
  const PseudonymKey v1 = Must(store->Current("agr"));
  const PseudonymKey v2 = Must(store->Rotate("agr"));
  CHECK(v2.version == 2);
  CHECK(v2.key.size() == 32);
  CHECK(v2.key != v1.key);
  CHECK(Must(store->Current("agr")).version == 2);
  CHECK(Must(store->Get("agr", 1)).key == v1.key);
  CHECK(Must(store->Get("agr", 2)).key == v2.key);
  CHECK(Pseudonym(v1, "Jan").rfind("ps:v1:", 0) == 0);
  CHECK(Pseudonym(v2, "Jan").rfind("ps:v2:", 0) == 0);
  CHECK(Pseudonym(v1, "Jan").substr(6) != Pseudonym(v2, "Jan").substr(6));

  const std::string file = tmp.path() + "/agr.key";
  CHECK(std::regex_match(ReadAll(file), std::regex("1 [0-9a-f]{64}\n2 [0-9a-f]{64}\n")));
  CHECK(ModeOf(file) == 0600);

  auto reloaded = MustOpen(tmp.path());
  CHECK(Must(reloaded->Current("agr")).key == v2.key);
  CHECK(Must(reloaded->Get("agr", 1)).key == v1.key);

  // Rotating an agreement with no key yet makes version 1.
  CHECK(Must(store->Rotate("fresh")).version == 1);
}

TEST_CASE("key store: Get of a missing agreement or version", "[pseudonym_keys]") {
  TempDir tmp;
  auto store = MustOpen(tmp.path());
  CHECK(store->Get("agr", 1).status().IsNotFound());
  (void)Must(store->Current("agr"));
  CHECK(store->Get("agr", 2).status().IsNotFound());
  CHECK(store->Get("agr", 0).status().IsNotFound());
}

TEST_CASE("key store: loads a hand-written file", "[pseudonym_keys]") {
  TempDir tmp;
  tmp.Write("manual.key", "1 " + kHex1 + "\n\n3 " + kHex2 + "\n");
  tmp.Write("README", "not a key file", 0644);
  auto store = MustOpen(tmp.path());
  const PseudonymKey current = Must(store->Current("manual"));
  CHECK(current.version == 3);
  CHECK(current.key.substr(0, 4) == std::string("\x00\x11\x22\x33", 4));
  CHECK(Must(store->Get("manual", 1)).key == std::string(32, '\xaa'));
  CHECK(store->Get("manual", 2).status().IsNotFound());
  CHECK(Must(store->Rotate("manual")).version == 4);
}

TEST_CASE("key store: refuses a key file readable by others", "[pseudonym_keys]") {
  TempDir tmp;
  const std::string file = tmp.Write("agr.key", "1 " + kHex1 + "\n", 0644);
  auto store = PseudonymKeyStore::Open(tmp.path());
  REQUIRE_FALSE(store.ok());
  CHECK(store.status().IsPermissionDenied());
  CHECK_THAT(store.status().message(), Catch::Contains(file) && Catch::Contains("0644"));

  REQUIRE(::chmod(file.c_str(), 0640) == 0);
  CHECK_FALSE(PseudonymKeyStore::Open(tmp.path()).ok());
  REQUIRE(::chmod(file.c_str(), 0600) == 0);
  CHECK(PseudonymKeyStore::Open(tmp.path()).ok());
}

TEST_CASE("key store: refuses bad agreement ids", "[pseudonym_keys]") {
  TempDir tmp;
  const std::string dir = tmp.path() + "/keys";
  auto store = MustOpen(dir);
  for (const std::string id : {"../x", "..", "", "a/b", "Upper", ".hidden", "x y", "/etc/passwd"}) {
    INFO(id);
    CHECK(store->Current(id).status().IsInvalidArgument());
    CHECK(store->Rotate(id).status().IsInvalidArgument());
    CHECK(store->Get(id, 1).status().IsInvalidArgument());
  }
  CHECK_FALSE(fs::exists(tmp.path() + "/x.key"));
  CHECK(fs::is_empty(dir));

  SECTION("and key files named after one") {
    tmp.Write("keys/Bad.key", "1 " + kHex1 + "\n");
    auto reopened = PseudonymKeyStore::Open(dir);
    REQUIRE_FALSE(reopened.ok());
    CHECK_THAT(reopened.status().message(), Catch::Contains("Bad.key"));
  }
}

TEST_CASE("key store: refuses corrupt key files with a clear error", "[pseudonym_keys]") {
  struct Case {
    std::string text;
    std::string error;  // expected in the message
  };
  const std::vector<Case> cases = {
      {"", "holds no key"},
      {"\n\n", "holds no key"},
      {"1 " + kHex1.substr(2) + "\n", "agr.key:1: key has 62 characters, not 64"},
      {"1 " + kHex1 + "aa\n", "agr.key:1: key has 66 characters"},
      {"1 " + kHex1.substr(2) + "zz\n", "agr.key:1: key is not hexadecimal"},
      {"1\n", "agr.key:1: no space"},
      {"x " + kHex1 + "\n", "agr.key:1: version 'x' is not a positive integer"},
      {"0 " + kHex1 + "\n", "version '0'"},
      {"-1 " + kHex1 + "\n", "version '-1'"},
      {"1  " + kHex1 + "\n", "agr.key:1: key has 65 characters"},
      {"99999999999 " + kHex1 + "\n", "version '99999999999'"},
      {"2 " + kHex1 + "\n1 " + kHex2 + "\n", "agr.key:2: version 1 does not follow version 2"},
      {"1 " + kHex1 + "\n1 " + kHex2 + "\n", "agr.key:2: version 1 does not follow version 1"},
      {"1 " + kHex1 + "\r\n", "agr.key:1: key has 65 characters"},
  };
  for (const Case& c : cases) {
    INFO(c.text);
    TempDir tmp;
    tmp.Write("agr.key", c.text);
    auto store = PseudonymKeyStore::Open(tmp.path());
    REQUIRE_FALSE(store.ok());
    CHECK(store.status().code() == liaison::Status::Code::kCorruption);
    CHECK_THAT(store.status().message(), Catch::Contains(c.error) && Catch::Contains(tmp.path()));
    if (c.error != "holds no key") {
      CHECK_THAT(store.status().message(), Catch::Contains("expected '<version> <64 hex digits>'"));
    }
  }
}

TEST_CASE("key store: a directory that is a file is refused", "[pseudonym_keys]") {
  TempDir tmp;
  const std::string file = tmp.Write("plain", "x");
  CHECK_FALSE(PseudonymKeyStore::Open(file).ok());
}

TEST_CASE("key store: concurrent first use makes one key", "[pseudonym_keys]") {
  TempDir tmp;
  auto store = MustOpen(tmp.path());
  std::vector<PseudonymKey> keys(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < keys.size(); ++i) {
    threads.emplace_back([&, i] { keys[i] = store->Current("shared").value(); });
  }
  for (auto& t : threads) t.join();
  for (const PseudonymKey& k : keys) {
    CHECK(k.version == 1);
    CHECK(k.key == keys[0].key);
  }
}
