#include "policy/pseudonym_keys.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <charconv>
#include <filesystem>
#include <limits>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "common/files.h"
#include "proto/validate.h"

namespace liaison::policy {
namespace {

constexpr size_t kKeyBytes = 32;
constexpr std::string_view kSuffix = ".key";
constexpr size_t kMaxKeyFileBytes = 1 << 20;

Status CheckAgreement(const std::string& agreement) {
  if (proto::IsValidToken(agreement)) return Status::Ok();
  return Status::InvalidArgument("'" + agreement +
                                 "' is not a sharing agreement id (lower-case letters, digits, "
                                 "'-', '_', '.'; starting with a letter or digit)");
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string ToHex(const std::string& bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (const char ch : bytes) {
    const auto b = static_cast<unsigned char>(ch);
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 0x0f]);
  }
  return out;
}

// Parses "<version> <64 hex digits>" lines; versions strictly ascending.
// Empty lines are ignored.
Result<std::map<uint32_t, std::string>> ParseKeyFile(const std::string& path,
                                                     std::string_view text) {
  std::map<uint32_t, std::string> versions;
  int line_no = 0;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    const std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    ++line_no;
    if (line.empty()) continue;
    auto bad = [&](const std::string& why) {
      return Status::Corruption("pseudonym key file " + path + ":" + std::to_string(line_no) +
                                ": " + why + " (expected '<version> <64 hex digits>')");
    };
    const size_t space = line.find(' ');
    if (space == std::string_view::npos) return bad("no space between version and key");
    const std::string_view number = line.substr(0, space);
    const std::string_view hex = line.substr(space + 1);
    uint32_t version = 0;
    const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), version);
    if (number.empty() || ec != std::errc() || end != number.data() + number.size() ||
        version == 0) {
      return bad("version '" + std::string(number) + "' is not a positive integer");
    }
    if (!versions.empty() && version <= versions.rbegin()->first) {
      return bad("version " + std::to_string(version) + " does not follow version " +
                 std::to_string(versions.rbegin()->first) + " (versions must ascend)");
    }
    if (hex.size() != 2 * kKeyBytes) {
      return bad("key has " + std::to_string(hex.size()) + " characters, not " +
                 std::to_string(2 * kKeyBytes));
    }
    std::string key;
    for (size_t i = 0; i < hex.size(); i += 2) {
      const int hi = HexDigit(hex[i]);
      const int lo = HexDigit(hex[i + 1]);
      if (hi < 0 || lo < 0) return bad("key is not hexadecimal");
      key.push_back(static_cast<char>(hi << 4 | lo));
    }
    versions.emplace(version, std::move(key));
  }
  if (versions.empty()) {
    return Status::Corruption("pseudonym key file " + path + " holds no key");
  }
  return versions;
}

std::string Serialise(const std::map<uint32_t, std::string>& versions) {
  std::string out;
  for (const auto& [version, key] : versions) {
    out += std::to_string(version) + " " + ToHex(key) + "\n";
  }
  return out;
}

}  // namespace

Result<std::unique_ptr<PseudonymKeyStore>> PseudonymKeyStore::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    if (!fs::create_directories(dir, ec) && ec) {
      return Status::IoError("cannot create pseudonym key directory " + dir + ": " + ec.message());
    }
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace, ec);
    if (ec) return Status::IoError("cannot chmod 700 " + dir + ": " + ec.message());
  } else if (!fs::is_directory(dir, ec)) {
    return Status::InvalidArgument("pseudonym key directory " + dir + " is not a directory");
  }

  std::unique_ptr<PseudonymKeyStore> store(new PseudonymKeyStore(dir));
  fs::directory_iterator it(dir, ec);
  if (ec) return Status::IoError("cannot list pseudonym key directory " + dir + ": " + ec.message());
  for (const fs::directory_entry& entry : it) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= kSuffix.size() || !name.ends_with(kSuffix)) continue;
    const std::string agreement = name.substr(0, name.size() - kSuffix.size());
    const std::string path = entry.path().string();
    if (Status s = CheckAgreement(agreement); !s.ok()) {
      return s.Annotate("pseudonym key file " + path);
    }
    if (Status s = CheckPrivateKeyFile(path); !s.ok()) return s;
    auto text = ReadFile(path, kMaxKeyFileBytes);
    if (!text.ok()) return text.status();
    auto versions = ParseKeyFile(path, *text);
    OPENSSL_cleanse(text->data(), text->size());
    if (!versions.ok()) return versions.status();
    store->keys_.emplace(agreement, std::move(versions).value());
  }
  return store;
}

PseudonymKeyStore::~PseudonymKeyStore() {
  for (auto& [agreement, versions] : keys_) {
    for (auto& [version, key] : versions) OPENSSL_cleanse(key.data(), key.size());
  }
}

std::string PseudonymKeyStore::PathFor(const std::string& agreement) const {
  return dir_ + "/" + agreement + std::string(kSuffix);
}

Result<PseudonymKey> PseudonymKeyStore::Current(const std::string& agreement) {
  if (Status s = CheckAgreement(agreement); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = keys_.find(agreement);
  if (it != keys_.end() && !it->second.empty()) {
    const auto& [version, key] = *it->second.rbegin();
    return PseudonymKey{agreement, version, key};
  }
  return AddVersionLocked(agreement);
}

Result<PseudonymKey> PseudonymKeyStore::Rotate(const std::string& agreement) {
  if (Status s = CheckAgreement(agreement); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  return AddVersionLocked(agreement);
}

Result<PseudonymKey> PseudonymKeyStore::Get(const std::string& agreement, uint32_t version) const {
  if (Status s = CheckAgreement(agreement); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = keys_.find(agreement);
  if (it == keys_.end()) {
    return Status::NotFound("no pseudonym key for sharing agreement '" + agreement + "'");
  }
  const auto v = it->second.find(version);
  if (v == it->second.end()) {
    return Status::NotFound("no pseudonym key version " + std::to_string(version) +
                            " for sharing agreement '" + agreement + "'");
  }
  return PseudonymKey{agreement, version, v->second};
}

Result<PseudonymKey> PseudonymKeyStore::AddVersionLocked(const std::string& agreement) {
  Versions versions;
  if (const auto it = keys_.find(agreement); it != keys_.end()) versions = it->second;
  const uint32_t latest = versions.empty() ? 0 : versions.rbegin()->first;
  if (latest == std::numeric_limits<uint32_t>::max()) {
    return Status::Internal("pseudonym key versions exhausted for '" + agreement + "'");
  }
  std::string key(kKeyBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(key.data()), static_cast<int>(key.size())) != 1) {
    return Status::Internal("RAND_bytes failed making a pseudonym key");
  }
  const uint32_t version = latest + 1;
  versions.emplace(version, key);
  std::string text = Serialise(versions);
  const Status written = WriteFileAtomic(PathFor(agreement), text, 0600);
  OPENSSL_cleanse(text.data(), text.size());
  if (!written.ok()) return written.Annotate("writing pseudonym key");
  keys_[agreement] = std::move(versions);
  return PseudonymKey{agreement, version, std::move(key)};
}

}  // namespace liaison::policy
