// Unit tests for common/files.h, in a private temporary directory.
#include "common/files.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>

#include "tests/temp_dir.h"
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

using liaison::test::TempDir;

void WritePlain(const std::string& path, const std::string& data, mode_t mode) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << data;
    REQUIRE(out.good());
  }
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_CASE("WriteFileAtomic and ReadFile round-trip", "[common][files]") {
  TempDir dir;
  const std::string path = dir / "state.bin";
  const std::string data = std::string("binary\0data\xff\n", 13) + std::string(100000, 'x');
  REQUIRE(liaison::WriteFileAtomic(path, data, 0600).ok());
  CHECK(ModeOf(path) == 0600);
  auto back = liaison::ReadFile(path, data.size());
  REQUIRE(back.ok());
  CHECK(*back == data);
  // No temp file is left behind.
  CHECK(Entries(dir.path()) == std::vector<std::string>{"state.bin"});

  // Replacing: the new content and the new mode, nothing else left behind.
  REQUIRE(liaison::WriteFileAtomic(path, "short", 0640).ok());
  CHECK(ModeOf(path) == 0640);
  back = liaison::ReadFile(path, 1024);
  REQUIRE(back.ok());
  CHECK(*back == "short");
  CHECK(Entries(dir.path()) == std::vector<std::string>{"state.bin"});

  // Empty content; default mode 0644.
  REQUIRE(liaison::WriteFileAtomic(dir / "empty", "").ok());
  CHECK(ModeOf(dir / "empty") == 0644);
  back = liaison::ReadFile(dir / "empty", 0);
  REQUIRE(back.ok());
  CHECK(back->empty());
}

TEST_CASE("WriteFileAtomic reports a missing directory", "[common][files]") {
  TempDir dir;
  const liaison::Status s = liaison::WriteFileAtomic(dir / "no/such/dir/file", "x");
  REQUIRE_FALSE(s.ok());
  CHECK(s.IsIoError());
  CHECK_THAT(s.message(), Catch::Contains("no/such/dir"));
}

TEST_CASE("ReadFile refuses files over max_bytes", "[common][files]") {
  TempDir dir;
  const std::string path = dir / "ten";
  WritePlain(path, "0123456789", 0644);
  auto exact = liaison::ReadFile(path, 10);
  REQUIRE(exact.ok());
  CHECK(*exact == "0123456789");
  auto over = liaison::ReadFile(path, 9);
  REQUIRE_FALSE(over.ok());
  CHECK(over.status().IsInvalidArgument());
  CHECK_THAT(over.status().message(), Catch::Contains("larger than 9 bytes"));
}

TEST_CASE("ReadFile refuses what is not a readable regular file", "[common][files]") {
  TempDir dir;
  auto d = liaison::ReadFile(dir.path(), 1 << 20);
  REQUIRE_FALSE(d.ok());
  CHECK(d.status().IsInvalidArgument());
  CHECK_THAT(d.status().message(), Catch::Contains("is not a regular file"));

  auto missing = liaison::ReadFile(dir / "missing", 1 << 20);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().IsIoError());
  CHECK_THAT(missing.status().message(), Catch::Contains("cannot open"));

  // A FIFO would block a naive reader forever; /dev/null is a character device.
  auto dev = liaison::ReadFile("/dev/null", 1 << 20);
  REQUIRE_FALSE(dev.ok());
  CHECK_THAT(dev.status().message(), Catch::Contains("is not a regular file"));
}

TEST_CASE("CheckPrivateKeyFile refuses keys readable by group or others", "[common][files]") {
  TempDir dir;
  struct Row {
    mode_t mode;
    bool ok;
  };
  const std::vector<Row> rows = {
      {0600, true},  {0400, true},  {0700, true},  {0200, true},  {0000, true},
      {0644, false}, {0640, false}, {0604, false}, {0660, false}, {0610, false},
      {0601, false}, {0602, false}, {0620, false}, {0666, false}, {0777, false},
  };
  const std::string key = dir / "broker.key";
  WritePlain(key, "-----BEGIN PRIVATE KEY-----\n", 0600);
  for (const auto& r : rows) {
    CAPTURE(r.mode);
    REQUIRE(::chmod(key.c_str(), r.mode) == 0);
    const liaison::Status s = liaison::CheckPrivateKeyFile(key);
    CHECK(s.ok() == r.ok);
    if (!r.ok) {
      CHECK(s.IsPermissionDenied());
      char mode[8];
      std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(r.mode));
      CHECK_THAT(s.message(), Catch::Contains(std::string("has mode ") + mode));
    }
  }

  const liaison::Status on_dir = liaison::CheckPrivateKeyFile(dir.path());
  REQUIRE_FALSE(on_dir.ok());
  CHECK_THAT(on_dir.message(), Catch::Contains("is not a regular file"));

  const liaison::Status missing = liaison::CheckPrivateKeyFile(dir / "missing.key");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.IsIoError());
}

TEST_CASE("ResolveRelativeTo", "[common][files]") {
  struct Row {
    const char* base;
    const char* path;
    const char* expected;
  };
  const std::vector<Row> rows = {
      {"/etc/liaison/broker.yaml", "policy.yaml", "/etc/liaison/policy.yaml"},
      {"/etc/liaison/broker.yaml", "pki/ca.crt", "/etc/liaison/pki/ca.crt"},
      {"/etc/liaison/broker.yaml", "../pki/ca.crt", "/etc/pki/ca.crt"},
      {"/etc/liaison/broker.yaml", "./policy.yaml", "/etc/liaison/policy.yaml"},
      {"/etc/liaison/broker.yaml", "/srv/policy.yaml", "/srv/policy.yaml"},
      {"/etc/liaison/broker.yaml", "", ""},
      {"conf/broker.yaml", "policy.yaml", "conf/policy.yaml"},
      {"conf/broker.yaml", "../pki/ca.crt", "pki/ca.crt"},
      {"broker.yaml", "policy.yaml", "policy.yaml"},
      {"broker.yaml", "/abs/p.yaml", "/abs/p.yaml"},
      {"/broker.yaml", "policy.yaml", "/policy.yaml"},
  };
  for (const auto& r : rows) {
    CAPTURE(r.base, r.path);
    CHECK(liaison::ResolveRelativeTo(r.base, r.path) == r.expected);
  }
}
