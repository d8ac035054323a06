// Fuzz target: the commit log's segment files as CommitLog::Open reads them
// at start (broker/store/commit_log.h). They are input from disk: a damaged,
// truncated or hand-made segment must be refused with a Status, never crash,
// read out of bounds, allocate what a length claims, replay an entry twice or
// out of order, or succeed while acknowledged entries are missing.
//
// The input is decoded into a few segments, each a sequence of entries whose
// lsn steps, payloads, CRC (right or wrong) and length field it chooses, or
// raw bytes written as they are; then a tail per segment (cut short, zeros,
// garbage, a flipped byte). Sometimes a spare left behind and a file that
// only looks like a segment. The files go to a fresh directory (in /dev/shm
// when the machine has it), removed after each input. Checked, aborting on a
// violation:
//  - Open returns OK or Corruption, and changes none of the files it read;
//    it fails without starting a segment, or succeeds having started one;
//  - what it replays has consecutive lsns from after_lsn + 1, each a valid
//    entry on disk found after the one replayed before it;
//  - a log written whole (valid entries, consecutive lsns from at most
//    after_lsn + 1, nothing damaged) opens and replays exactly its entries
//    past after_lsn;
//  - after a successful Open, each segment whose first entry is valid and
//    past after_lsn has had it replayed, and last_lsn() is the last lsn
//    replayed (after_lsn if none);
//  - then an Append, a close and a second Open replay the same and the
//    appended entry; a Release of an lsn the input picks, a close and a
//    third Open from that lsn replay the rest.
// LIAISON_FUZZ_LOG=info shows the log's own warnings (off by default);
// LIAISON_FUZZ_TRACE=1 prints each input as decoded and what Open made of it.
#include <fuzzer/FuzzedDataProvider.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "broker/store/coding.h"
#include "broker/store/commit_log.h"
#include "tests/temp_dir.h"

namespace liaison::broker {
namespace {

using Entries = std::vector<std::pair<uint64_t, std::string>>;

constexpr size_t kHeaderBytes = 16;
constexpr const char* kBase = "liaison.db-log";

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "commit_log_fuzz: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

using liaison::broker::coding::GetFixed32;
using liaison::broker::coding::GetFixed64;

// The header's CRC-32C: over the 8 lsn bytes, the 4 length bytes, the payload.
uint32_t EntryCrc(uint64_t lsn, uint32_t length, std::string_view payload) {
  std::string head;
  liaison::broker::coding::AppendFixed64(&head, lsn);
  liaison::broker::coding::AppendFixed32(&head, length);
  const uint32_t crc = crc32c::Extend(0, head.data(), head.size());
  return crc32c::Extend(crc, payload.data(), payload.size());
}

std::string SegmentName(uint64_t counter, size_t digits = 20) {
  std::string d = std::to_string(counter);
  if (d.size() < digits) d.insert(0, digits - d.size(), '0');
  return std::string(kBase) + "." + d;
}

// What the input wrote.
struct Written {
  // Counter and bytes of each segment, in counter order.
  std::vector<std::pair<uint64_t, std::string>> segments;
  Entries entries;       // the valid entries written as entries, in order
  bool damaged = false;  // anything but valid entries and zeros after them
  bool spare = false;    // prefix.spare left behind
  std::string decoy;     // a copy of the first segment under a 19-digit name, if any
  uint64_t after_lsn = 0;
  std::string append;         // the payload to append after a successful Open
  uint64_t release_pick = 0;  // picks the lsn to release
  uint64_t preallocate_bytes = 0;
  std::string trace;  // what was decoded, for LIAISON_FUZZ_TRACE
};

uint64_t PickLsn(FuzzedDataProvider& in, uint64_t next) {
  switch (in.ConsumeIntegralInRange<int>(0, 15)) {
    case 0: return in.ConsumeIntegral<uint64_t>();
    case 1: return UINT64_MAX - in.ConsumeIntegralInRange<uint64_t>(0, 3);
    case 2: return next - 1;                                          // a repeat
    case 3: return next + in.ConsumeIntegralInRange<uint64_t>(1, 3);  // a gap
    case 4: return next - in.ConsumeIntegralInRange<uint64_t>(2, 4);  // back
    default: return next;
  }
}

Written Decode(FuzzedDataProvider& in) {
  Written w;
  const uint8_t flags = in.ConsumeIntegral<uint8_t>();
  w.spare = flags & 1;
  w.preallocate_bytes = (flags & 2) ? 4096 : 0;
  const bool decoy = flags & 4;
  uint64_t counter = (flags & 0x18) == 0x18 ? UINT64_MAX - in.ConsumeIntegralInRange<uint64_t>(0, 6)
                                            : in.ConsumeIntegralInRange<uint64_t>(0, 2);
  uint64_t next = (flags & 0x60) == 0x60 ? in.ConsumeIntegral<uint64_t>() : in.ConsumeIntegralInRange<uint64_t>(0, 3);
  uint64_t last_valid = next - 1;  // where a log that took a torn tail goes on
  const int n_segments = in.ConsumeIntegralInRange<int>(0, 5);
  for (int s = 0; s < n_segments; ++s) {
    if (s > 0) {
      const uint64_t step = in.ConsumeIntegralInRange<uint64_t>(1, 3);
      if (counter > UINT64_MAX - step) break;
      counter += step;
      // A new segment goes on after the last valid entry, or somewhere else.
      next = in.ConsumeBool() ? last_valid + 1 : PickLsn(in, next);
    }
    w.trace += (s > 0 ? "; " : "") + std::string("segment ") + std::to_string(counter) + ":";
    std::string bytes;
    const int n_entries = in.ConsumeIntegralInRange<int>(0, 6);
    for (int e = 0; e < n_entries; ++e) {
      const uint8_t op = in.ConsumeIntegral<uint8_t>();
      const uint64_t lsn = (op & 3) == 3 ? PickLsn(in, next) : next;
      std::string payload = in.ConsumeBytesAsString(in.ConsumeIntegralInRange<size_t>(0, 40));
      const uint32_t length = static_cast<uint32_t>(payload.size());
      switch ((op >> 2) & 7) {
        case 0:  // raw bytes, written as they are
          w.trace += " raw" + std::to_string(payload.size());
          bytes += payload;
          w.damaged = true;
          continue;
        case 1: {  // a length that lies: past the end, past 1 GiB, or anything
          const uint32_t lie = in.ConsumeIntegral<uint32_t>();
          const uint32_t field = (op & 0x40) ? lie : length + 1 + (lie & 0xff);
          liaison::broker::coding::AppendFixed32(&bytes, field);
          liaison::broker::coding::AppendFixed32(&bytes, EntryCrc(lsn, field, payload));
          liaison::broker::coding::AppendFixed64(&bytes, lsn);
          bytes += payload;
          w.trace += " " + std::to_string(lsn) + "(length " + std::to_string(field) + ")";
          w.damaged = true;
          break;
        }
        case 2: {  // a wrong CRC
          liaison::broker::coding::AppendFixed32(&bytes, length);
          liaison::broker::coding::AppendFixed32(&bytes, EntryCrc(lsn, length, payload) ^ in.ConsumeIntegralInRange<uint32_t>(1, UINT32_MAX));
          liaison::broker::coding::AppendFixed64(&bytes, lsn);
          bytes += payload;
          w.trace += " " + std::to_string(lsn) + "(bad CRC)";
          w.damaged = true;
          break;
        }
        default:  // a valid entry (an empty one reads as the end of the segment)
          liaison::broker::coding::AppendFixed32(&bytes, length);
          liaison::broker::coding::AppendFixed32(&bytes, EntryCrc(lsn, length, payload));
          liaison::broker::coding::AppendFixed64(&bytes, lsn);
          bytes += payload;
          w.trace += " " + std::to_string(lsn) + (length == 0 ? "(empty)" : "");
          if (length == 0) {
            w.damaged = true;
          } else {
            w.entries.emplace_back(lsn, payload);
            last_valid = lsn;
          }
          break;
      }
      next = lsn + 1;
    }
    // The segment's tail.
    switch (in.ConsumeIntegralInRange<int>(0, 7)) {
      case 4:  // cut short
        if (!bytes.empty()) {
          bytes.resize(bytes.size() - in.ConsumeIntegralInRange<size_t>(1, bytes.size()));
          w.damaged = true;
          w.trace += " cut to " + std::to_string(bytes.size());
        }
        break;
      case 5:  // zeros, as preallocated space leaves them
        bytes.append(in.ConsumeIntegralInRange<size_t>(1, 40), '\0');
        w.trace += " zeros";
        break;
      case 6:  // garbage
        bytes += in.ConsumeBytesAsString(in.ConsumeIntegralInRange<size_t>(1, 24));
        w.trace += " garbage";
        w.damaged = true;
        break;
      case 7:  // a flipped byte
        if (!bytes.empty()) {
          bytes[in.ConsumeIntegralInRange<size_t>(0, bytes.size() - 1)] ^=
              static_cast<char>(in.ConsumeIntegralInRange<int>(1, 255));
          w.damaged = true;
          w.trace += " flipped";
        }
        break;
      default: break;
    }
    w.segments.emplace_back(counter, std::move(bytes));
  }
  if (decoy && !w.segments.empty()) w.decoy = w.segments.front().second;

  // after_lsn: mostly near the lsns written, so that both skipping and
  // replaying happen.
  const uint64_t first = w.entries.empty() ? 1 : w.entries.front().first;
  switch (in.ConsumeIntegralInRange<int>(0, 7)) {
    case 0: w.after_lsn = in.ConsumeIntegral<uint64_t>(); break;
    case 1: w.after_lsn = 0; break;
    case 2: w.after_lsn = UINT64_MAX - in.ConsumeIntegralInRange<uint64_t>(0, 3); break;
    default: w.after_lsn = first - 1 + in.ConsumeIntegralInRange<uint64_t>(0, w.entries.size() + 1); break;
  }
  w.append = in.ConsumeBytesAsString(in.ConsumeIntegralInRange<size_t>(1, 32));
  if (w.append.empty()) w.append = "appended";
  w.release_pick = in.ConsumeIntegral<uint64_t>();
  w.trace += "; after_lsn " + std::to_string(w.after_lsn) + (w.spare ? "; spare" : "") + (decoy ? "; decoy" : "");
  return w;
}

uint64_t LastCounter(const Written& w) {
  return w.segments.empty() ? 0 : w.segments.back().first;
}

// Valid entries as written, consecutive from at most after_lsn + 1, and
// nothing else but zeros: Open must replay exactly those past after_lsn.
bool WrittenWhole(const Written& w) {
  // (At the limits Open refuses: nothing can follow.)
  if (w.damaged || LastCounter(w) == UINT64_MAX || w.after_lsn == UINT64_MAX) return false;
  if (w.entries.empty()) return true;
  if (w.entries.back().first == UINT64_MAX) return false;
  if (w.entries.front().first == 0 || w.entries.front().first - 1 > w.after_lsn) return false;
  for (size_t i = 1; i < w.entries.size(); ++i) {
    if (w.entries[i - 1].first == UINT64_MAX || w.entries[i].first != w.entries[i - 1].first + 1) return false;
  }
  return true;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  if (!out.good()) Fail("cannot write " + path);
}

// The names in the directory, sorted.
std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::string Describe(const Entries& entries) {
  std::string s = "[";
  for (const auto& [lsn, payload] : entries) s += " " + std::to_string(lsn) + ":" + std::to_string(payload.size());
  return s + " ]";
}

// Where a valid entry (lsn, payload) starts in the segments at or after
// (segment, offset), or false. The first match is taken: a later copy
// Open might have read instead only widens the next search.
bool FindEntry(const Written& w, uint64_t lsn, const std::string& payload, size_t* segment, size_t* offset) {
  for (size_t s = *segment; s < w.segments.size(); ++s) {
    const std::string& b = w.segments[s].second;
    for (size_t o = s == *segment ? *offset : 0; o + kHeaderBytes + payload.size() <= b.size(); ++o) {
      const char* h = b.data() + o;
      if (GetFixed32(h) != payload.size() || GetFixed64(h + 8) != lsn) continue;
      if (b.compare(o + kHeaderBytes, payload.size(), payload) != 0) continue;
      if (GetFixed32(h + 4) != EntryCrc(lsn, static_cast<uint32_t>(payload.size()), payload)) continue;
      *segment = s;
      *offset = o;
      return true;
    }
  }
  return false;
}

// What any Open may replay, whether it succeeds or not: consecutive lsns
// from after_lsn + 1, each a valid entry on disk after the one before.
void CheckReplayed(const Written& w, uint64_t after_lsn, const Entries& got, const char* which) {
  size_t segment = 0, offset = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const auto& [lsn, payload] = got[i];
    const uint64_t want = i == 0 ? after_lsn + 1 : got[i - 1].first + 1;
    if (lsn != want || lsn <= after_lsn || (i > 0 && lsn <= got[i - 1].first)) {
      Fail(std::string(which) + ": replayed lsn " + std::to_string(lsn) + " where " + std::to_string(want) +
           " was due (after_lsn " + std::to_string(after_lsn) + "): " + Describe(got));
    }
    if (payload.empty() || !FindEntry(w, lsn, payload, &segment, &offset)) {
      Fail(std::string(which) + ": replayed lsn " + std::to_string(lsn) + " (" + std::to_string(payload.size()) +
           " bytes) is no valid entry on disk after the one replayed before it: " + Describe(got));
    }
    offset += kHeaderBytes + payload.size();
  }
}

Result<std::unique_ptr<CommitLog>> OpenLog(const CommitLog::Options& o, uint64_t after_lsn, Entries* got) {
  got->clear();
  return CommitLog::Open(o, after_lsn, [got](uint64_t lsn, std::string_view payload) {
    got->emplace_back(lsn, std::string(payload));
    return Status::Ok();
  });
}

void Run(const Written& w) {
  test::TempDir dir;
  CommitLog::Options o;
  o.prefix = dir / kBase;
  o.segment_bytes = 4096;
  o.segment_age = std::chrono::hours(1);  // no rotation by the clock: the same input, the same run
  o.preallocate_bytes = w.preallocate_bytes;
  o.prepare_spare = false;

  std::map<std::string, std::string> files;  // name -> bytes, all Open may read and must leave alone
  for (const auto& [counter, bytes] : w.segments) files[SegmentName(counter)] = bytes;
  if (!w.decoy.empty()) files[SegmentName(1, 19)] = w.decoy;
  for (const auto& [name, bytes] : files) WriteFile(dir / name, bytes);
  if (w.spare) WriteFile(o.prefix + ".spare", std::string(100, '\0'));

  Entries got;
  auto opened = OpenLog(o, w.after_lsn, &got);
  CheckReplayed(w, w.after_lsn, got, "open");
  const Status status = opened.status();
  if (std::getenv("LIAISON_FUZZ_TRACE")) {
    std::fprintf(stderr, "%s%s => %s, replayed %s\n", WrittenWhole(w) ? "whole: " : "", w.trace.c_str(),
                 status.ToString().c_str(), Describe(got).c_str());
  }
  if (!status.ok() && !status.IsCorruption()) Fail("open: neither OK nor Corruption: " + status.ToString());
  if (WrittenWhole(w)) {
    if (!status.ok()) Fail("open of a whole log failed: " + status.ToString());
    Entries want;
    for (const auto& e : w.entries) {
      if (e.first > w.after_lsn) want.push_back(e);
    }
    if (got != want) Fail("open of a whole log replayed " + Describe(got) + ", not " + Describe(want));
  }

  // Files read are left as they were; the spare is gone; a segment is
  // started only by an Open that succeeds, numbered after the last.
  for (const auto& [name, bytes] : files) {
    if (ReadFile(dir / name) != bytes) Fail("open changed or deleted " + name);
  }
  std::vector<std::string> want_names;
  for (const auto& f : files) want_names.push_back(f.first);
  if (status.ok()) {
    // The next counter, never wrapped to 0 (which would read first).
    if (LastCounter(w) == UINT64_MAX) Fail("open succeeded after a segment numbered 2^64-1");
    want_names.push_back(SegmentName(LastCounter(w) + 1));
  }
  std::sort(want_names.begin(), want_names.end());
  if (ListDir(dir.path()) != want_names)
    Fail("the files after open are not those expected (" + status.ToString() + ")");
  if (!status.ok()) return;
  std::unique_ptr<CommitLog> log = std::move(opened).value();

  // What a successful Open must not have let pass: a segment starting with
  // a valid entry past after_lsn that was not replayed (lost entries).
  for (const auto& [counter, b] : w.segments) {
    if (b.size() < kHeaderBytes) continue;
    const uint32_t length = GetFixed32(b.data());
    const uint64_t lsn = GetFixed64(b.data() + 8);
    if (length == 0 || length > b.size() - kHeaderBytes || lsn <= w.after_lsn) continue;
    const std::string payload = b.substr(kHeaderBytes, length);
    if (GetFixed32(b.data() + 4) != EntryCrc(lsn, length, payload)) continue;
    if (std::find(got.begin(), got.end(), std::make_pair(lsn, payload)) == got.end()) {
      Fail("open succeeded, but the first entry of segment " + std::to_string(counter) + " (lsn " +
           std::to_string(lsn) + ") was not replayed: " + Describe(got));
    }
  }
  const uint64_t last = got.empty() ? w.after_lsn : got.back().first;
  if (last == UINT64_MAX) Fail("open succeeded with no lsn left for an append");
  if (log->last_lsn() != last) {
    Fail("last_lsn() " + std::to_string(log->last_lsn()) + " after replaying " + Describe(got) + " from after_lsn " +
         std::to_string(w.after_lsn));
  }

  // Each of the steps below may start a segment: not with the counter at
  // its limit (a hand-made name, refused by the Open that gets there).
  if (LastCounter(w) > UINT64_MAX - 4) return;

  // An entry appended after the Open is replayed by the next one.
  auto appended = log->Append(w.append);
  if (!appended.ok()) Fail("append after open: " + appended.status().ToString());
  if (*appended != last + 1) Fail("append took lsn " + std::to_string(*appended) + " after " + std::to_string(last));
  log.reset();
  Entries want = got;
  want.emplace_back(*appended, w.append);
  opened = OpenLog(o, w.after_lsn, &got);
  if (*appended == UINT64_MAX) {  // the last lsn there is: replayed, then no further
    if (opened.ok() || !opened.status().IsCorruption() || got != want) Fail("second open at lsn 2^64-1");
    return;
  }
  if (!opened.ok()) Fail("second open, after an append: " + opened.status().ToString());
  log = std::move(opened).value();
  if (got != want) Fail("second open replayed " + Describe(got) + ", not " + Describe(want));

  // Released entries are never needed again: from that lsn on, what is left
  // on disk replays the rest.
  const uint64_t released = w.release_pick % (*appended + 1);
  if (Status s = log->Release(released); !s.ok()) Fail("release: " + s.ToString());
  log.reset();
  const uint64_t after = std::max(w.after_lsn, released);
  want.erase(std::remove_if(want.begin(), want.end(), [after](const auto& e) { return e.first <= after; }), want.end());
  opened = OpenLog(o, after, &got);
  if (!opened.ok()) Fail("open after releasing lsn " + std::to_string(released) + ": " + opened.status().ToString());
  if (got != want) {
    Fail("open after releasing lsn " + std::to_string(released) + " replayed " + Describe(got) + ", not " +
         Describe(want));
  }
}

}  // namespace
}  // namespace liaison::broker

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* level = std::getenv("LIAISON_FUZZ_LOG");
  spdlog::set_level(level ? spdlog::level::from_str(level) : spdlog::level::off);
  // Open and Append sync files and the directory: in memory when possible.
  if (!std::getenv("TMPDIR") && ::access("/dev/shm", W_OK) == 0) ::setenv("TMPDIR", "/dev/shm", 0);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  liaison::broker::Run(liaison::broker::Decode(in));
  return 0;
}
