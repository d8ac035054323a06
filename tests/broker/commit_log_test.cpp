// Unit tests for broker/store/commit_log.h, each in a private temporary
// directory: replay, torn tails against corruption, rotation and release,
// the entry length limit, a failing disk (RLIMIT_FSIZE), the spare segment
// written ahead, and CRC-32C.
#include "broker/store/commit_log.h"

#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/log_capture.h"
#include "tests/temp_dir.h"

namespace liaison::broker {
namespace {

using test::TempDir;
using Entries = std::vector<std::pair<uint64_t, std::string>>;

constexpr uint64_t kHeader = 16;

CommitLog::Options LogOptions(const TempDir& dir) {
  CommitLog::Options o;
  o.prefix = dir / "liaison.db-log";
  o.preallocate_bytes = 4096;
  return o;
}

// Segments of four 200-byte entries, and ten of them appended (lsn i holds
// 200 times the letter 'a' + i): segments [1..4] [5..8] [9..10].
CommitLog::Options FourPerSegment(const TempDir& dir) {
  CommitLog::Options o = LogOptions(dir);
  o.segment_bytes = 4 * (kHeader + 200);
  return o;
}

void AppendTenLetters(CommitLog& log) {
  for (uint64_t i = 1; i <= 10; ++i) REQUIRE(*log.Append(std::string(200, 'a' + static_cast<char>(i))) == i);
}

// Opens the log, collecting what it replays into *out.
Result<std::unique_ptr<CommitLog>> OpenLog(const CommitLog::Options& o, uint64_t after_lsn, Entries* out) {
  out->clear();
  return CommitLog::Open(o, after_lsn, [out](uint64_t lsn, std::string_view payload) {
    out->emplace_back(lsn, std::string(payload));
    return Status::Ok();
  });
}

std::unique_ptr<CommitLog> MustOpen(const CommitLog::Options& o, uint64_t after_lsn, Entries* out) {
  auto log = OpenLog(o, after_lsn, out);
  INFO(log.status().ToString());
  REQUIRE(log.ok());
  return std::move(log).value();
}

std::string Payload(uint64_t i) {
  return "entry " + std::to_string(i) + std::string(i % 7, '.');
}

// Appends Payload(first..last), checking the lsns given.
void AppendRange(CommitLog& log, uint64_t first, uint64_t last) {
  for (uint64_t i = first; i <= last; ++i) {
    auto lsn = log.Append(Payload(i));
    INFO(lsn.status().ToString());
    REQUIRE(lsn.ok());
    REQUIRE(*lsn == i);
  }
}

Entries Expected(uint64_t first, uint64_t last) {
  Entries e;
  for (uint64_t i = first; i <= last; ++i) e.emplace_back(i, Payload(i));
  return e;
}

// The segment files on disk, in counter order.
std::vector<std::string> SegmentFiles(const TempDir& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    const std::string name = e.path().filename().string();
    const std::string base = "liaison.db-log.";
    if (name.rfind(base, 0) == 0 && name.size() == base.size() + 20 &&
        name.find_first_not_of("0123456789", base.size()) == std::string::npos) {
      out.push_back(e.path().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Copies every segment in from into to, as a crash would leave them.
void CopySegments(const TempDir& from, const TempDir& to) {
  for (const auto& f : SegmentFiles(from)) {
    std::filesystem::copy_file(f, to / std::filesystem::path(f).filename().string());
  }
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  REQUIRE(out.good());
}

void FlipByte(const std::string& path, uint64_t offset) {
  std::string data = ReadAll(path);
  REQUIRE(offset < data.size());
  data[offset] = static_cast<char>(data[offset] ^ 0x40);
  WriteAll(path, data);
}

// Offset of the k-th entry (0-based) of a segment holding Payload(first...).
uint64_t EntryOffset(uint64_t first, uint64_t k) {
  uint64_t off = 0;
  for (uint64_t i = first; i < first + k; ++i) off += kHeader + Payload(i).size();
  return off;
}

std::string Header(uint32_t length, uint32_t crc, uint64_t lsn) {
  std::string h(kHeader, '\0');
  for (int i = 0; i < 4; ++i) h[i] = static_cast<char>(length >> (8 * i));
  for (int i = 0; i < 4; ++i) h[4 + i] = static_cast<char>(crc >> (8 * i));
  for (int i = 0; i < 8; ++i) h[8 + i] = static_cast<char>(lsn >> (8 * i));
  return h;
}

// A valid entry, as the log writes it.
std::string Entry(uint64_t lsn, const std::string& payload) {
  const std::string unsigned_header = Header(static_cast<uint32_t>(payload.size()), 0, lsn);
  uint32_t crc = crc32c::Extend(0, unsigned_header.data() + 8, 8);  // lsn, then length
  crc = crc32c::Extend(crc, unsigned_header.data(), 4);
  crc = crc32c::Extend(crc, payload.data(), payload.size());
  return Header(static_cast<uint32_t>(payload.size()), crc, lsn) + payload;
}

// ---------------------------------------------------------------------------

TEST_CASE("commit log: CRC-32C gives the standard check value on both paths", "[commit_log]") {
  const std::string check = "123456789";
  CHECK(crc32c::ExtendPortable(0, check.data(), check.size()) == 0xE3069283u);
  CHECK(crc32c::Extend(0, check.data(), check.size()) == 0xE3069283u);
  // Extending in pieces is the same as one go.
  CHECK(crc32c::ExtendPortable(crc32c::ExtendPortable(0, check.data(), 4), check.data() + 4, 5) == 0xE3069283u);
  if (!crc32c::HardwareAvailable()) {
    WARN("no SSE4.2 on this CPU: the hardware path is not tested");
    return;
  }
  CHECK(crc32c::ExtendHardware(0, check.data(), check.size()) == 0xE3069283u);
  CHECK(crc32c::ExtendHardware(crc32c::ExtendHardware(0, check.data(), 4), check.data() + 4, 5) == 0xE3069283u);
}

TEST_CASE("commit log: CRC-32C hardware and portable paths agree on random buffers of odd lengths", "[commit_log]") {
  if (!crc32c::HardwareAvailable()) {
    WARN("no SSE4.2 on this CPU: the hardware path is not tested");
    return;
  }
  std::mt19937_64 rng(42);
  std::string buf(4096 + 8, '\0');
  for (char& c : buf) c = static_cast<char>(rng());
  for (int round = 0; round < 500; ++round) {
    const size_t start = rng() % 8;  // every alignment
    const size_t length = (rng() % 2048) | 1;
    const uint32_t seed = round % 2 ? static_cast<uint32_t>(rng()) : 0;
    INFO("start " << start << " length " << length);
    REQUIRE(crc32c::ExtendHardware(seed, buf.data() + start, length) ==
            crc32c::ExtendPortable(seed, buf.data() + start, length));
  }
}

TEST_CASE("commit log: appends are replayed in order with their lsns after a reopen", "[commit_log]") {
  TempDir dir;
  const auto o = LogOptions(dir);
  Entries replayed;
  {
    auto log = MustOpen(o, 0, &replayed);
    CHECK(replayed.empty());
    CHECK(log->last_lsn() == 0);
    CHECK(SegmentFiles(dir) == std::vector<std::string>{o.prefix + ".00000000000000000001"});
    AppendRange(*log, 1, 20);
    CHECK(log->last_lsn() == 20);
    CHECK(log->bytes_on_disk() == EntryOffset(1, 20));
  }
  {
    auto log = MustOpen(o, 0, &replayed);
    CHECK(replayed == Expected(1, 20));
    CHECK(log->last_lsn() == 20);
    CHECK(log->segments() == 2);  // a new one for appends, nothing deleted
    AppendRange(*log, 21, 22);
  }
  auto log = MustOpen(o, 0, &replayed);
  CHECK(replayed == Expected(1, 22));
  CHECK(SegmentFiles(dir).size() == 3);
  CHECK(SegmentFiles(dir).back() == o.prefix + ".00000000000000000003");
}

TEST_CASE("commit log: empty entries and releases beyond the last lsn are refused", "[commit_log]") {
  TempDir dir;
  Entries replayed;
  auto log = MustOpen(LogOptions(dir), 0, &replayed);
  CHECK(log->Append("").status().IsInvalidArgument());
  AppendRange(*log, 1, 1);
  CHECK(log->Release(2).IsInvalidArgument());
  CHECK(log->Release(1).ok());
}

TEST_CASE("commit log: entries up to after_lsn are skipped", "[commit_log]") {
  TempDir dir;
  const auto o = LogOptions(dir);
  Entries replayed;
  AppendRange(*MustOpen(o, 0, &replayed), 1, 10);

  auto log = MustOpen(o, 5, &replayed);
  CHECK(replayed == Expected(6, 10));
  CHECK(log->last_lsn() == 10);
  log.reset();

  log = MustOpen(o, 10, &replayed);
  CHECK(replayed.empty());
  CHECK(log->last_lsn() == 10);
  log.reset();

  // SQLite ahead of the log (entries released and deleted, say): appends go on from after_lsn.
  log = MustOpen(o, 15, &replayed);
  CHECK(replayed.empty());
  CHECK(log->last_lsn() == 15);
  AppendRange(*log, 16, 16);
}

TEST_CASE("commit log: a replay error stops Open and is returned", "[commit_log]") {
  TempDir dir;
  const auto o = LogOptions(dir);
  Entries replayed;
  AppendRange(*MustOpen(o, 0, &replayed), 1, 5);
  int calls = 0;
  auto log = CommitLog::Open(o, 0, [&](uint64_t lsn, std::string_view) {
    ++calls;
    return lsn == 3 ? Status::Internal("apply failed") : Status::Ok();
  });
  REQUIRE_FALSE(log.ok());
  CHECK(log.status().message() == "apply failed");
  CHECK(calls == 3);
  CHECK(SegmentFiles(dir).size() == 1);  // no segment started
}

TEST_CASE("commit log: a last entry cut short is a torn tail and appends continue after it", "[commit_log]") {
  TempDir dir;
  const auto o = LogOptions(dir);
  Entries replayed;
  AppendRange(*MustOpen(o, 0, &replayed), 1, 5);
  const std::string seg = SegmentFiles(dir).at(0);
  const uint64_t fifth = EntryOffset(1, 4);
  uint64_t cut = 0;
  SECTION("in the payload") {
    cut = fifth + kHeader + 3;
  }
  SECTION("in the header") {
    cut = fifth + 10;
  }
  std::filesystem::resize_file(seg, cut);

  {
    auto log = MustOpen(o, 0, &replayed);
    CHECK(replayed == Expected(1, 4));
    CHECK(log->last_lsn() == 4);
    auto lsn = log->Append("new five");
    REQUIRE(lsn.ok());
    CHECK(*lsn == 5);
  }
  CHECK(std::filesystem::file_size(seg) == cut);  // never written over
  auto log = MustOpen(o, 0, &replayed);
  Entries want = Expected(1, 4);
  want.emplace_back(5, "new five");
  CHECK(replayed == want);
  CHECK(log->last_lsn() == 5);
}

TEST_CASE("commit log: a flipped byte in the last entry's payload is a torn tail", "[commit_log]") {
  TempDir dir;
  const auto o = LogOptions(dir);
  Entries replayed;
  AppendRange(*MustOpen(o, 0, &replayed), 1, 5);
  FlipByte(SegmentFiles(dir).at(0), EntryOffset(1, 4) + kHeader + 2);
  {
    auto log = MustOpen(o, 0, &replayed);
    CHECK(replayed == Expected(1, 4));
    REQUIRE(log->Append("new five").ok());
  }
  auto log = MustOpen(o, 0, &replayed);
  CHECK(replayed.size() == 5);
  CHECK(replayed.back() == std::make_pair(uint64_t{5}, std::string("new five")));
}

TEST_CASE("commit log: a damaged entry with valid entries after it in the last segment is Corruption", "[commit_log]") {
  // Only the last append can be torn: one that others follow was synced,
  // and acknowledged, before them.
  TempDir dir;
  const auto o = LogOptions(dir);
  Entries replayed;
  AppendRange(*MustOpen(o, 0, &replayed), 1, 6);
  const std::string seg = SegmentFiles(dir).at(0);
  const uint64_t third = EntryOffset(1, 2);
  std::string lost;
  uint64_t held = 0;  // after_lsn that holds every damaged entry
  SECTION("one entry, in its payload") {
    FlipByte(seg, third + kHeader + 1);
    lost = "(lsn 3)";
    held = 3;
  }
  SECTION("one entry, in its lsn field") {
    FlipByte(seg, third + 9);
    lost = "(lsn 3)";
    held = 3;
  }
  SECTION("two entries in a row") {
    FlipByte(seg, third + kHeader + 1);
    FlipByte(seg, EntryOffset(1, 3) + 5);  // the fourth's CRC
    lost = "(lsns 3 to 4)";
    held = 4;
  }
  const std::string before = ReadAll(seg);

  auto log = OpenLog(o, 0, &replayed);
  REQUIRE_FALSE(log.ok());
  CHECK(log.status().IsCorruption());
  CHECK_THAT(log.status().message(), Catch::Contains(seg + " at offset " + std::to_string(third)));
  CHECK_THAT(log.status().message(), Catch::Contains(lost));
  CHECK_THAT(log.status().message(), Catch::Contains("backup"));
  CHECK(SegmentFiles(dir).size() == 1);  // nothing started
  CHECK(ReadAll(seg) == before);

  // Damaged entries SQLite holds lose nothing: replay goes on after them.
  auto one_short = OpenLog(o, held - 1, &replayed);
  CHECK(one_short.status().IsCorruption());
  {
    auto applied = MustOpen(o, held, &replayed);
    CHECK(replayed == Expected(held + 1, 6));
    CHECK(applied->last_lsn() == 6);
    auto lsn = applied->Append("seven");
    REQUIRE(lsn.ok());
    CHECK(*lsn == 7);
  }
  auto again = MustOpen(o, 7, &replayed);
  CHECK(replayed.empty());
  CHECK(again->last_lsn() == 7);
}

TEST_CASE("commit log: a damaged first entry of the last segment with valid entries after it is Corruption",
          "[commit_log]") {
  TempDir dir;
  const auto o = LogOptions(dir);
  Entries replayed;
  AppendRange(*MustOpen(o, 0, &replayed), 1, 2);
  AppendRange(*MustOpen(o, 0, &replayed), 3, 5);
  const auto segs = SegmentFiles(dir);
  REQUIRE(segs.size() == 2);
  FlipByte(segs[1], kHeader);

  auto log = OpenLog(o, 0, &replayed);
  REQUIRE_FALSE(log.ok());
  CHECK(log.status().IsCorruption());
  CHECK_THAT(log.status().message(), Catch::Contains(segs[1] + " at offset 0"));
  CHECK_THAT(log.status().message(), Catch::Contains("(lsn 3)"));

  auto applied = MustOpen(o, 3, &replayed);
  CHECK(replayed == Expected(4, 5));
}

TEST_CASE("commit log: a damaged length cannot be told from a torn tail and stops replay there", "[commit_log]") {
  // The limit of the check above, as docs/security.md states it (and a
  // damaged last entry, which is the torn-tail tests' case).
  TempDir dir;
  const auto o = LogOptions(dir);
  Entries replayed;
  AppendRange(*MustOpen(o, 0, &replayed), 1, 5);
  const std::string seg = SegmentFiles(dir).at(0);
  FlipByte(seg, EntryOffset(1, 2));  // the third's length, now past the others
  auto log = MustOpen(o, 0, &replayed);
  CHECK(replayed == Expected(1, 2));
  CHECK(log->last_lsn() == 2);
}

TEST_CASE("commit log: an entry imitated inside a torn entry's payload is not read as one", "[commit_log]") {
  // A client's message body may hold the bytes of a valid entry with the
  // right lsn; the check follows lengths only, so it never lands there.
  TempDir dir;
  const auto o = LogOptions(dir);
  Entries replayed;
  std::string body;
  {
    auto log = MustOpen(o, 0, &replayed);
    AppendRange(*log, 1, 2);
    body = "x" + Entry(4, "forged") + Entry(5, "forged too") + "y";
    REQUIRE(log->Append(body).ok());
  }
  const std::string seg = SegmentFiles(dir).at(0);
  FlipByte(seg, EntryOffset(1, 2) + kHeader + body.size() - 1);  // the third is torn
  auto log = MustOpen(o, 0, &replayed);
  CHECK(replayed == Expected(1, 2));
  CHECK(log->last_lsn() == 2);
}

TEST_CASE("commit log: a damaged entry in an earlier segment followed by valid segments is Corruption",
          "[commit_log]") {
  TempDir dir;
  const auto o = LogOptions(dir);
  Entries replayed;
  AppendRange(*MustOpen(o, 0, &replayed), 1, 3);
  AppendRange(*MustOpen(o, 0, &replayed), 4, 5);
  const std::string first = SegmentFiles(dir).at(0);
  uint64_t damaged = 0;
  SECTION("a middle entry") {
    damaged = EntryOffset(1, 1);
  }
  SECTION("the segment's last entry") {
    damaged = EntryOffset(1, 2);
  }
  FlipByte(first, damaged + kHeader);

  auto log = OpenLog(o, 0, &replayed);
  REQUIRE_FALSE(log.ok());
  CHECK(log.status().IsCorruption());
  CHECK_THAT(log.status().message(), Catch::Contains(first + " at offset " + std::to_string(damaged)));
  CHECK_THAT(log.status().message(), Catch::Contains("backup"));
  CHECK(SegmentFiles(dir).size() == 2);  // nothing started, nothing deleted

  // The same damage in entries SQLite already holds loses nothing.
  auto applied = MustOpen(o, 3, &replayed);
  CHECK(replayed == Expected(4, 5));
}

TEST_CASE("commit log: a gap in lsns is Corruption", "[commit_log]") {
  TempDir dir;
  const auto o = LogOptions(dir);
  Entries replayed;
  // Each Open starts a segment: [1, 2] [3, 4] [5, 6].
  AppendRange(*MustOpen(o, 0, &replayed), 1, 2);
  AppendRange(*MustOpen(o, 0, &replayed), 3, 4);
  AppendRange(*MustOpen(o, 0, &replayed), 5, 6);
  auto files = SegmentFiles(dir);
  REQUIRE(files.size() == 3);

  SECTION("a segment missing in the middle") {
    std::filesystem::remove(files[1]);
    auto log = OpenLog(o, 0, &replayed);
    REQUIRE_FALSE(log.ok());
    CHECK(log.status().IsCorruption());
    CHECK_THAT(log.status().message(), Catch::Contains(files[2]));
    CHECK_THAT(log.status().message(), Catch::Contains("lsn 5 follows lsn 2"));
    // Not if SQLite holds the missing entries.
    auto applied = MustOpen(o, 4, &replayed);
    CHECK(replayed == Expected(5, 6));
  }
  SECTION("the first entry beyond after_lsn + 1") {
    std::filesystem::remove(files[0]);
    auto log = OpenLog(o, 1, &replayed);
    REQUIRE_FALSE(log.ok());
    CHECK(log.status().IsCorruption());
    CHECK_THAT(log.status().message(), Catch::Contains("lsn 3 follows lsn 0"));
    auto applied = MustOpen(o, 2, &replayed);
    CHECK(replayed == Expected(3, 6));
  }
}

TEST_CASE("commit log: segments rotate by size and Release deletes exactly the fully released ones", "[commit_log]") {
  TempDir dir;
  const auto o = FourPerSegment(dir);
  Entries replayed;
  auto log = MustOpen(o, 0, &replayed);
  AppendTenLetters(*log);  // [1..4] [5..8] [9..10]
  CHECK(log->segments() == 3);
  CHECK(SegmentFiles(dir).size() == 3);
  CHECK(log->bytes_on_disk() == 10 * (kHeader + 200));
  const auto files = SegmentFiles(dir);

  REQUIRE(log->Release(3).ok());
  CHECK(SegmentFiles(dir) == files);
  REQUIRE(log->Release(5).ok());
  CHECK(SegmentFiles(dir) == std::vector<std::string>(files.begin() + 1, files.end()));
  CHECK(log->segments() == 2);
  CHECK(log->bytes_on_disk() == 6 * (kHeader + 200));
  REQUIRE(log->Release(7).ok());
  CHECK(log->segments() == 2);
  REQUIRE(log->Release(8).ok());
  CHECK(SegmentFiles(dir) == std::vector<std::string>{files[2]});
  CHECK(log->segments() == 1);
  CHECK(log->bytes_on_disk() == 2 * (kHeader + 200));
  log.reset();

  log = MustOpen(o, 8, &replayed);
  REQUIRE(replayed.size() == 2);
  CHECK(replayed[0].first == 9);
  CHECK(replayed[1] == std::make_pair(uint64_t{10}, std::string(200, 'a' + 10)));
}

TEST_CASE("commit log: releasing everything leaves one empty segment and no released payload on disk", "[commit_log]") {
  TempDir dir;
  auto o = LogOptions(dir);
  o.segment_bytes = 1000;
  const std::string marker = "SECRET-BODY-7f3a";
  Entries replayed;
  AppendRange(*MustOpen(o, 0, &replayed), 1, 2);  // a segment from an earlier run
  auto log = MustOpen(o, 0, &replayed);
  for (uint64_t i = 3; i <= 12; ++i) REQUIRE(*log->Append(marker + std::string(100, 'x') + std::to_string(i)) == i);
  REQUIRE(log->segments() > 2);
  auto marker_files = [&] {
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
      if (ReadAll(e.path().string()).find(marker) != std::string::npos) ++n;
    }
    return n;
  };
  REQUIRE(marker_files() > 1);

  REQUIRE(log->Release(12).ok());
  CHECK(log->segments() == 1);
  CHECK(SegmentFiles(dir).size() == 1);
  CHECK(log->bytes_on_disk() == 0);
  CHECK(marker_files() == 0);
  CHECK(std::filesystem::file_size(SegmentFiles(dir).at(0)) == 0);

  // Releasing again changes nothing; appends go on.
  REQUIRE(log->Release(12).ok());
  CHECK(SegmentFiles(dir).size() == 1);
  REQUIRE(*log->Append("after") == 13);
  log.reset();
  log = MustOpen(o, 12, &replayed);
  CHECK(replayed == Entries{{13, "after"}});
}

TEST_CASE("commit log: segments rotate by age", "[commit_log]") {
  TempDir dir;
  auto o = LogOptions(dir);
  o.segment_age = std::chrono::milliseconds(500);  // long enough for two appends on a loaded machine
  Entries replayed;
  auto log = MustOpen(o, 0, &replayed);
  AppendRange(*log, 1, 2);
  CHECK(log->segments() == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  AppendRange(*log, 3, 3);
  CHECK(log->segments() == 2);
  AppendRange(*log, 4, 4);
  CHECK(log->segments() == 2);
  REQUIRE(log->Release(2).ok());  // the old segment can go though 3 and 4 cannot
  CHECK(log->segments() == 1);
  CHECK(log->bytes_on_disk() == EntryOffset(3, 2));
}

TEST_CASE("commit log: an entry larger than segment_bytes gets a segment of its own", "[commit_log]") {
  TempDir dir;
  auto o = LogOptions(dir);
  o.segment_bytes = 256;
  const std::string big(1000, 'B');
  Entries replayed;
  {
    auto log = MustOpen(o, 0, &replayed);
    REQUIRE(*log->Append(big) == 1);  // into the empty current segment
    CHECK(log->segments() == 1);
    REQUIRE(*log->Append("small") == 2);
    CHECK(log->segments() == 2);
    REQUIRE(*log->Append(big) == 3);
    CHECK(log->segments() == 3);
    REQUIRE(*log->Append("small") == 4);
    CHECK(log->segments() == 4);
  }
  const auto files = SegmentFiles(dir);
  REQUIRE(files.size() == 4);
  CHECK(std::filesystem::file_size(files[0]) == kHeader + big.size());  // preallocation given back
  CHECK(std::filesystem::file_size(files[2]) == kHeader + big.size());
  MustOpen(o, 0, &replayed);
  CHECK(replayed == Entries{{1, big}, {2, "small"}, {3, big}, {4, "small"}});
}

TEST_CASE("commit log: lengths over 1 GiB in a header are rejected without allocating", "[commit_log]") {
  TempDir dir;
  const auto o = LogOptions(dir);
  const std::string seg = o.prefix + ".00000000000000000001";
  uint64_t length = 0;
  SECTION("over the limit") {
    length = (uint64_t{1} << 30) + 1;
  }
  SECTION("past the end of the file") {
    length = 1000;
  }
  // A sparse file long enough for the entry, with a valid CRC over its
  // zeros: only the length checks can refuse it.
  const std::string unsigned_header = Header(static_cast<uint32_t>(length), 0, 1);
  uint32_t crc = crc32c::Extend(0, unsigned_header.data() + 8, 8);  // lsn, then length
  crc = crc32c::Extend(crc, unsigned_header.data(), 4);
  const std::string zeros(1 << 20, '\0');
  for (uint64_t left = length; left > 0;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(left, zeros.size()));
    crc = crc32c::Extend(crc, zeros.data(), n);
    left -= n;
  }
  WriteAll(seg, Header(static_cast<uint32_t>(length), crc, 1));
  std::filesystem::resize_file(seg, kHeader + (length == 1000 ? 999 : length));

  Entries replayed;
  auto log = MustOpen(o, 0, &replayed);
  CHECK(replayed.empty());
  CHECK(log->last_lsn() == 0);
  CHECK(log->bytes_on_disk() == 0);
  REQUIRE(*log->Append("one") == 1);
}

// Makes writes past a file size fail with EFBIG, as a full disk would with
// ENOSPC, until destroyed.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &old_);
    old_handler_ = ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit l = old_;
    l.rlim_cur = bytes;
    ok_ = ::setrlimit(RLIMIT_FSIZE, &l) == 0;
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old_);
    ::signal(SIGXFSZ, old_handler_);
  }
  bool ok() const { return ok_; }

 private:
  struct rlimit old_ {};
  sighandler_t old_handler_;
  bool ok_ = false;
};

TEST_CASE("commit log: a failed append consumes no lsn and the next append takes its place", "[commit_log]") {
  TempDir dir;
  auto o = LogOptions(dir);
  uint64_t limit = 0;
  std::string what;
  SECTION("the write fails") {
    o.preallocate_bytes = 0;
    limit = 100;
    what = "cannot write";
  }
  SECTION("the preallocation fails") {
    o.preallocate_bytes = 4096;
    limit = 4096;
    what = "cannot preallocate";
  }
  const std::string big(5000, 'Z');
  Entries replayed;
  auto log = MustOpen(o, 0, &replayed);
  REQUIRE(*log->Append("a") == 1);
  const std::string seg = SegmentFiles(dir).back();
  const uint64_t size_before = std::filesystem::file_size(seg);

  Result<uint64_t> failed = Status::Internal("not run");
  Result<uint64_t> fits = Status::Internal("not run");
  int ran = 0;
  {
    // Nothing in here may write to a file (not even a failing CHECK's report).
    FileSizeLimit fsize(limit);
    REQUIRE(fsize.ok());
    failed = log->Append(big, [&] { ++ran; });
    fits = log->Append("b");
  }
  CHECK(ran == 0);  // the work given to Append runs only once the entry is written
  REQUIRE_FALSE(failed.ok());
  CHECK(failed.status().IsIoError());
  CHECK_THAT(failed.status().message(), Catch::Contains(seg));
  CHECK_THAT(failed.status().message(), Catch::Contains(what));
  CHECK_THAT(failed.status().message(), Catch::Contains("File too large"));
  CHECK_THAT(failed.status().message(), Catch::Contains("(lsn 2)"));
  INFO(fits.status().ToString());
  REQUIRE(fits.ok());
  CHECK(*fits == 2);
  CHECK(std::filesystem::file_size(seg) == std::max<uint64_t>(size_before, 2 * kHeader + 2));
  CHECK(log->last_lsn() == 2);
  CHECK(log->bytes_on_disk() == 2 * kHeader + 2);

  REQUIRE(*log->Append(big) == 3);
  log.reset();
  MustOpen(o, 0, &replayed);
  CHECK(replayed == Entries{{1, "a"}, {2, "b"}, {3, big}});
}

TEST_CASE("commit log: Open ignores files that only look like segments and deletes nothing", "[commit_log]") {
  TempDir dir;
  const auto o = LogOptions(dir);
  const std::vector<std::string> others = {
      dir.Write("liaison.db-log.tmp", "junk"),
      dir.Write("liaison.db-log.123", "junk"),
      dir.Write("liaison.db-log.0000000000000000000a", "junk"),
      dir.Write("liaison.db-log.000000000000000000001", "junk"),  // 21 digits
      dir.Write("other.00000000000000000001", "junk"),
  };
  Entries replayed;
  auto log = MustOpen(o, 0, &replayed);
  CHECK(replayed.empty());
  AppendRange(*log, 1, 3);
  REQUIRE(log->Release(3).ok());
  log.reset();
  for (const auto& f : others) CHECK(ReadAll(f) == "junk");
  CHECK(SegmentFiles(dir).size() == 1);
}

// Found by tests/fuzz/commit_log_fuzz.cpp: after a segment named with the
// largest counter, the next one wrapped to 00000000000000000000, which the
// next Open reads before every other segment (or cannot create, if it exists).
TEST_CASE("commit log: a segment numbered 2^64-1 is refused and never followed by segment 0", "[commit_log]") {
  TempDir dir;
  const auto o = LogOptions(dir);
  Entries replayed;
  AppendRange(*MustOpen(o, 0, &replayed), 1, 2);
  // Hand-made names: the counter just before its limit still opens, and the
  // Open starts the last segment there can be ...
  std::filesystem::rename(SegmentFiles(dir).at(0), o.prefix + ".18446744073709551614");
  AppendRange(*MustOpen(o, 0, &replayed), 3, 3);
  CHECK(replayed == Expected(1, 2));
  const std::string last = o.prefix + ".18446744073709551615";
  CHECK(SegmentFiles(dir) == std::vector<std::string>{o.prefix + ".18446744073709551614", last});
  // ... after which no Open can start one.
  auto log = OpenLog(o, 0, &replayed);
  REQUIRE_FALSE(log.ok());
  CHECK(log.status().IsCorruption());
  CHECK_THAT(log.status().message(), Catch::Contains(last));
  CHECK(SegmentFiles(dir) == std::vector<std::string>{o.prefix + ".18446744073709551614", last});
}

// Found by tests/fuzz/commit_log_fuzz.cpp: at after_lsn 2^64-1 Open
// succeeded and the next Append took lsn 0, which no later Open accepts; an
// entry with lsn 2^64-1 was followed in its segment by lsn 0 as if in
// sequence, and the next Append took 2^64-1 again.
TEST_CASE("commit log: lsn 2^64-1 leaves no lsn for an append and Open refuses it rather than wrap to 0",
          "[commit_log]") {
  TempDir dir;
  const auto o = LogOptions(dir);
  const std::string seg = o.prefix + ".00000000000000000001";
  Entries replayed;
  SECTION("as after_lsn") {
    auto log = OpenLog(o, UINT64_MAX, &replayed);
    REQUIRE_FALSE(log.ok());
    CHECK(log.status().IsCorruption());
    CHECK_THAT(log.status().message(), Catch::Contains("no lsn is left"));
    CHECK(SegmentFiles(dir).empty());
  }
  SECTION("an entry's, followed by lsn 0 and 1") {
    WriteAll(seg, Entry(UINT64_MAX, "last") + Entry(0, "wrapped") + Entry(1, "again"));
    auto log = OpenLog(o, UINT64_MAX - 1, &replayed);
    CHECK(replayed == Entries{{UINT64_MAX, "last"}});
    REQUIRE_FALSE(log.ok());
    CHECK(log.status().IsCorruption());
    CHECK(SegmentFiles(dir) == std::vector<std::string>{seg});
  }
  SECTION("appended: the lsn before the limit") {
    auto log = MustOpen(o, UINT64_MAX - 1, &replayed);
    CHECK(*log->Append("last") == UINT64_MAX);
    log.reset();
    auto again = OpenLog(o, UINT64_MAX - 1, &replayed);
    CHECK(replayed == Entries{{UINT64_MAX, "last"}});
    REQUIRE_FALSE(again.ok());
    CHECK(again.status().IsCorruption());
  }
}

TEST_CASE("commit log: Release from another thread while appending", "[commit_log]") {
  TempDir dir;
  auto o = LogOptions(dir);
  o.segment_bytes = 512;
  Entries replayed;
  auto log = MustOpen(o, 0, &replayed);
  std::atomic<bool> done{false};
  std::string release_error;  // Catch2 assertions are for the test's own thread
  std::thread releaser([&] {
    while (!done && release_error.empty()) {
      if (Status s = log->Release(log->last_lsn()); !s.ok()) release_error = s.ToString();
    }
  });
  uint64_t appended = 0;
  for (uint64_t i = 1; i <= 200; ++i) {
    auto lsn = log->Append(Payload(i));
    if (!lsn.ok() || *lsn != i) break;
    appended = i;
  }
  done = true;
  releaser.join();
  CHECK(release_error.empty());
  REQUIRE(appended == 200);
  REQUIRE(log->Release(200).ok());
  CHECK(log->segments() == 1);
  CHECK(SegmentFiles(dir).size() == 1);
  log.reset();
  MustOpen(o, 200, &replayed);
  CHECK(replayed.empty());
}

// The extents of a file that are allocated but not yet written (ext4 and
// others mark what posix_fallocate reserved so; FIEMAP reports the flag):
// -1 if the filesystem cannot say.
int UnwrittenExtents(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  constexpr unsigned kMax = 64;
  std::vector<char> buf(sizeof(fiemap) + kMax * sizeof(fiemap_extent));
  auto* fm = reinterpret_cast<fiemap*>(buf.data());
  fm->fm_start = 0;
  fm->fm_length = FIEMAP_MAX_OFFSET;
  fm->fm_flags = FIEMAP_FLAG_SYNC;
  fm->fm_extent_count = kMax;
  const int rc = ::ioctl(fd, FS_IOC_FIEMAP, fm);
  ::close(fd);
  if (rc != 0) return -1;
  int n = 0;
  for (unsigned i = 0; i < fm->fm_mapped_extents; ++i) {
    if (fm->fm_extents[i].fe_flags & FIEMAP_EXTENT_UNWRITTEN) ++n;
  }
  return n;
}

// Small segments that ask for a spare after 4 KiB, whatever the free space.
CommitLog::Options SpareOptions(const TempDir& dir, uint64_t segment_bytes) {
  auto o = LogOptions(dir);
  o.segment_bytes = segment_bytes;
  o.preallocate_bytes = 4096;
  o.spare_min_free_bytes = 0;
  return o;
}

TEST_CASE("commit log: a busy log's next segment is written ahead as zeros, and appends fill it", "[commit_log]") {
  TempDir dir;
  const auto o = SpareOptions(dir, 64 * 1024);
  const std::string spare = dir / "liaison.db-log.spare";
  Entries replayed;
  auto log = MustOpen(o, 0, &replayed);
  const std::string entry(1000, 'e');
  // Nothing is written ahead for a log that is barely used.
  REQUIRE(*log->Append(entry) == 1);
  CHECK_FALSE(log->WaitForSpare(std::chrono::milliseconds(200)));
  CHECK_FALSE(std::filesystem::exists(spare));
  // Past preallocate_bytes in the current segment, the spare is made.
  uint64_t lsn = 1;
  while (lsn < 5) lsn = *log->Append(entry);
  REQUIRE(log->WaitForSpare(std::chrono::seconds(10)));
  REQUIRE(std::filesystem::file_size(spare) == o.segment_bytes);
  CHECK(ReadAll(spare) == std::string(o.segment_bytes, '\0'));
  CHECK(UnwrittenExtents(spare) <= 0);  // written, not only reserved (0), or the filesystem cannot say (-1)
  // The next segment is the spare, renamed: full size, zeros after the entries.
  const size_t per_segment = o.segment_bytes / (kHeader + entry.size());
  while (log->segments() < 2) lsn = *log->Append(entry);
  CHECK(log->spares_used() == 1);
  CHECK(log->segments_preallocated() == 1);  // the first segment only
  CHECK_FALSE(std::filesystem::exists(spare));
  const std::string current = SegmentFiles(dir).back();
  CHECK(std::filesystem::file_size(current) == o.segment_bytes);
  const std::string data = ReadAll(current);
  CHECK(data.find_first_not_of('\0', kHeader + entry.size()) == std::string::npos);
  if (const int unwritten = UnwrittenExtents(current); unwritten >= 0) CHECK(unwritten == 0);
  // A copy taken now (as a crash would leave it) replays every entry: the
  // zeros after the last one end the segment.
  TempDir crashed;
  CopySegments(dir, crashed);
  for (uint64_t i = 0; i < per_segment; ++i) lsn = *log->Append(entry);
  log.reset();
  auto o2 = o;
  o2.prefix = crashed / "liaison.db-log";
  MustOpen(o2, 0, &replayed);
  CHECK(replayed.size() == per_segment + 1);
  // Closing gives the zeros past the last entry back; every entry replays.
  CHECK(std::filesystem::file_size(SegmentFiles(dir).back()) < o.segment_bytes);
  MustOpen(o, 0, &replayed);
  CHECK(replayed.size() == lsn);
  for (const auto& [l, payload] : replayed) CHECK(payload == entry);
}

TEST_CASE("commit log: a spare left behind is removed at Open and never read as a segment", "[commit_log]") {
  TempDir dir;
  const auto o = LogOptions(dir);
  Entries replayed;
  AppendRange(*MustOpen(o, 0, &replayed), 1, 3);
  // A spare holds zeros only; this one holds a valid segment's bytes, which
  // must not be replayed either.
  const std::string spare = dir / "liaison.db-log.spare";
  std::filesystem::copy_file(SegmentFiles(dir).at(0), spare);
  auto log = MustOpen(o, 3, &replayed);
  CHECK(replayed.empty());
  CHECK_FALSE(std::filesystem::exists(spare));
  AppendRange(*log, 4, 4);
}

TEST_CASE("commit log: no spare is written while the filesystem is short of space", "[commit_log]") {
  TempDir dir;
  auto o = SpareOptions(dir, 16 * 1024);
  o.preallocate_bytes = 8192;  // more than a block: reserved space is left after the first entry
  o.spare_min_free_bytes = uint64_t{1} << 60;
  Entries replayed;
  test::LogCapture capture;
  auto log = MustOpen(o, 0, &replayed);
  const std::string entry(1000, 's');
  uint64_t lsn = 0;
  while (log->segments() < 3) lsn = *log->Append(entry);
  CHECK_FALSE(log->WaitForSpare(std::chrono::milliseconds(200)));
  // The operator is told (a disk filling up), by the spare's thread.
  const std::string warning = "MiB free in " + dir.path() + ": segments are no longer written ahead";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (capture.text().find(warning) == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK_THAT(capture.text(), Catch::Contains(warning));
  CHECK(log->spares_used() == 0);
  CHECK(log->segments_preallocated() == 3);
  CHECK_FALSE(std::filesystem::exists(dir / "liaison.db-log.spare"));
  // The current segment's space is reserved, not written, past its entries.
  if (const int unwritten = UnwrittenExtents(SegmentFiles(dir).back()); unwritten >= 0) CHECK(unwritten > 0);
  log.reset();
  MustOpen(o, 0, &replayed);
  CHECK(replayed.size() == lsn);
}

TEST_CASE("commit log: without prepare_spare nothing is written ahead", "[commit_log]") {
  TempDir dir;
  auto o = SpareOptions(dir, 16 * 1024);
  o.prepare_spare = false;
  Entries replayed;
  auto log = MustOpen(o, 0, &replayed);
  const std::string entry(1000, 'n');
  while (log->segments() < 3) (void)*log->Append(entry);
  CHECK_FALSE(log->WaitForSpare(std::chrono::milliseconds(200)));
  CHECK(log->spares_used() == 0);
}

TEST_CASE("commit log: the spare's pauses spread it over half the time the current segment has left", "[commit_log]") {
  using std::chrono::microseconds;
  using std::chrono::milliseconds;
  using std::chrono::seconds;
  const uint64_t seg = 16u << 20;
  const milliseconds age(10000);
  const microseconds cap(20000);
  // 4 MiB in one second: the other 12 MiB take three seconds, so 256 steps
  // share 1.5 s: 5,859 us each.
  CHECK(SparePause(4u << 20, seconds(1), seg, age, 256, cap) == microseconds(5859));
  // Slower, the pause is capped (unless the age is near: 5 s of 10 left, so
  // 2.5 s for 256 steps); faster, it shrinks to nothing.
  CHECK(SparePause(4u << 20, seconds(5), seg, milliseconds(60000), 256, cap) == cap);
  CHECK(SparePause(4u << 20, seconds(5), seg, age, 256, cap) == microseconds(9765));
  CHECK(SparePause(4u << 20, milliseconds(10), seg, age, 256, cap) == microseconds(58));
  // The segment's age rotates it first: 1 MiB in 9.5 s leaves half a second.
  CHECK(SparePause(1u << 20, milliseconds(9500), seg, age, 100, cap) == microseconds(2500));
  // Nothing known, nothing left, or already due: no pause.
  CHECK(SparePause(0, seconds(1), seg, age, 256, cap) == microseconds(0));
  CHECK(SparePause(4u << 20, seconds(0), seg, age, 256, cap) == microseconds(0));
  CHECK(SparePause(4u << 20, seconds(1), seg, age, 0, cap) == microseconds(0));
  CHECK(SparePause(seg, seconds(1), seg, age, 256, cap) == microseconds(0));
  CHECK(SparePause(1u << 20, seconds(11), seg, age, 256, cap) == microseconds(0));
}

TEST_CASE("commit log: a released segment larger than a deletion step is removed whole", "[commit_log]") {
  TempDir dir;
  auto o = LogOptions(dir);
  o.segment_bytes = 3u << 20;  // six of the 512 KiB steps a deletion takes
  Entries replayed;
  auto log = MustOpen(o, 0, &replayed);
  const std::string entry(100 << 10, 'r');
  uint64_t lsn = 0;
  while (log->segments() < 3) lsn = *log->Append(entry);
  const auto files = SegmentFiles(dir);
  REQUIRE(files.size() == 3);
  REQUIRE(std::filesystem::file_size(files[0]) > (2u << 20));
  const uint64_t per_segment = o.segment_bytes / (kHeader + entry.size());
  REQUIRE(log->Release(per_segment).ok());
  CHECK(SegmentFiles(dir) == std::vector<std::string>(files.begin() + 1, files.end()));
  CHECK(log->bytes_on_disk() == (lsn - per_segment) * (kHeader + entry.size()));
}

TEST_CASE("commit log: a released segment cut short by a crash while it was deleted is read as entries SQLite holds",
          "[commit_log]") {
  TempDir dir;
  const auto o = FourPerSegment(dir);
  {
    Entries replayed;
    AppendTenLetters(*MustOpen(o, 0, &replayed));
  }
  // [1..4] [5..8] [9..10]. A deletion gives a segment's blocks back from its
  // end, so a crash leaves a prefix of it: nothing, part of an entry, or
  // whole entries.
  const auto files = SegmentFiles(dir);
  REQUIRE(files.size() == 3);
  const std::string first = ReadAll(files[0]);
  for (const size_t keep : {size_t{0}, kHeader + 200 + 100, 2 * (kHeader + 200)}) {
    INFO("the first segment cut to " << keep << " bytes");
    TempDir copy;
    CopySegments(dir, copy);
    WriteAll(copy / std::filesystem::path(files[0]).filename().string(), first.substr(0, keep));
    auto oc = o;
    oc.prefix = copy / "liaison.db-log";
    // Released: SQLite holds 1..4, and the rest replays.
    Entries replayed;
    auto log = MustOpen(oc, 4, &replayed);
    REQUIRE(replayed.size() == 6);
    CHECK(replayed.front().first == 5);
    CHECK(*log->Append("next") == 11);
    log.reset();
    // Had SQLite not held lsn 4, it would be lost: the log says so.
    CHECK(OpenLog(oc, 3, &replayed).status().code() == Status::Code::kCorruption);
  }
}

TEST_CASE("commit log: every append's fdatasync is timed and a slow one is a warning at most once an interval",
          "[commit_log]") {
  TempDir dir;
  auto o = LogOptions(dir);
  o.slow_sync = std::chrono::milliseconds(0);  // every sync counts as slow
  o.slow_sync_every = std::chrono::milliseconds(2000);
  Entries replayed;
  test::LogCapture capture;
  auto log = MustOpen(o, 0, &replayed);
  CHECK(log->syncs().count == 0);
  AppendRange(*log, 1, 5);
  auto syncs = log->syncs();
  CHECK(syncs.count == 5);
  CHECK(syncs.PercentileUs(1.0) >= syncs.max_us);
  const std::string first = "commit log: an fdatasync of " + SegmentFiles(dir).back() + " took ";
  auto count = [&](const std::string& what) {
    const std::string text = capture.text();
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  };
  // The first at once; the other four wait for the interval to end.
  CHECK(count(first) == 1);
  CHECK(count("publishes wait for it (is the disk slow or busy?)") == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  AppendRange(*log, 6, 6);
  CHECK(count(first) == 2);
  CHECK(count("and 4 more took 0 ms or longer since the last such warning") == 1);
  CHECK(log->syncs().count == 6);
  log.reset();
  // Below the threshold, a sync is only counted.
  o.slow_sync = std::chrono::hours(1);
  log = MustOpen(o, 0, &replayed);
  AppendRange(*log, 7, 9);
  CHECK(log->syncs().count == 3);
  CHECK(count(first) == 2);
  CHECK(count("commit log: an fdatasync of") == 2);
}

TEST_CASE("commit log: the work given to Append runs once with the entry written and before its sync is counted",
          "[commit_log]") {
  TempDir dir;
  const auto o = LogOptions(dir);
  Entries replayed;
  auto log = MustOpen(o, 0, &replayed);
  const std::string seg = SegmentFiles(dir).back();
  int ran = 0;
  std::string seen;
  uint64_t syncs_seen = 99;
  auto lsn = log->Append("while written", [&] {
    ++ran;
    std::ifstream in(seg, std::ios::binary);
    seen.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    syncs_seen = log->syncs().count;  // lock-free: callable from here
  });
  REQUIRE(lsn.ok());
  CHECK(*lsn == 1);
  CHECK(ran == 1);
  // The whole entry was in the file (header, then payload) when it ran.
  REQUIRE(seen.size() >= kHeader + 13);
  CHECK(seen.substr(kHeader, 13) == "while written");
  CHECK(syncs_seen == 0);
  CHECK(log->syncs().count == 1);
  REQUIRE(*log->Append("plain") == 2);
  CHECK(ran == 1);
  log.reset();
  MustOpen(o, 0, &replayed);
  CHECK(replayed == Entries{{1, "while written"}, {2, "plain"}});
}
}  // namespace
}  // namespace liaison::broker
