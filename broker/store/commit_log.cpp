#include "broker/store/commit_log.h"

#include <fcntl.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#include "broker/store/coding.h"

namespace liaison::broker {

// ---------------------------------------------------------------------------
// CRC-32C

namespace crc32c {
namespace {

struct Table {
  uint32_t v[256];
  constexpr Table() : v() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // reflected Castagnoli
      v[i] = c;
    }
  }
};
constexpr Table kTable;

}  // namespace

uint32_t ExtendPortable(uint32_t crc, const char* data, size_t n) {
  const auto* p = reinterpret_cast<const uint8_t*>(data);
  uint32_t l = ~crc;
  for (size_t i = 0; i < n; ++i) l = kTable.v[(l ^ p[i]) & 0xff] ^ (l >> 8);
  return ~l;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t ExtendHardware(uint32_t crc, const char* data, size_t n) {
  const auto* p = reinterpret_cast<const uint8_t*>(data);
  uint64_t l = ~crc;
  for (; n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0; --n) l = _mm_crc32_u8(static_cast<uint32_t>(l), *p++);
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    l = _mm_crc32_u64(l, word);
  }
  for (; n > 0; --n) l = _mm_crc32_u8(static_cast<uint32_t>(l), *p++);
  return ~static_cast<uint32_t>(l);
}

bool HardwareAvailable() {
  static const bool available = __builtin_cpu_supports("sse4.2");
  return available;
}
#else
uint32_t ExtendHardware(uint32_t crc, const char* data, size_t n) {
  return ExtendPortable(crc, data, n);
}
bool HardwareAvailable() {
  return false;
}
#endif

uint32_t Extend(uint32_t crc, const char* data, size_t n) {
  return HardwareAvailable() ? ExtendHardware(crc, data, n) : ExtendPortable(crc, data, n);
}

}  // namespace crc32c

// ---------------------------------------------------------------------------
// Entry format and file helpers

namespace {

constexpr size_t kHeaderBytes = 16;
constexpr uint64_t kMaxPayloadBytes = uint64_t{1} << 30;
constexpr size_t kCounterDigits = 20;
// The spare's zeros are written (and written out) this much at a time, with
// a pause after each step of at most kSparePauseMax (SparePause).
constexpr size_t kSpareStepBytes = 64u << 10;
constexpr auto kSparePauseMax = std::chrono::milliseconds(20);

using coding::GetFixed32;
using coding::GetFixed64;
using coding::PutFixed32;
using coding::PutFixed64;

// The CRC covers lsn, then length, then payload: header bytes 8..15, 0..3.
uint32_t EntryCrc(const char* header, std::string_view payload) {
  uint32_t crc = crc32c::Extend(0, header + 8, 8);
  crc = crc32c::Extend(crc, header, 4);
  return crc32c::Extend(crc, payload.data(), payload.size());
}

Status Io(const std::string& path, std::string_view what, int err) {
  std::string m = "commit log " + path + ": " + std::string(what);
  if (err != 0) m += std::string(": ") + std::strerror(err);
  return Status::IoError(m);
}

std::string SegmentPath(const std::string& prefix, uint64_t counter) {
  std::string digits = std::to_string(counter);
  return prefix + "." + std::string(kCounterDigits - digits.size(), '0') + digits;
}

// The counter of a file name prefix_name + "." + 20 digits, or nothing.
std::optional<uint64_t> ParseCounter(const std::string& name, const std::string& base) {
  if (name.size() != base.size() + 1 + kCounterDigits || name.compare(0, base.size(), base) != 0 ||
      name[base.size()] != '.') {
    return std::nullopt;
  }
  uint64_t counter = 0;
  for (size_t i = base.size() + 1; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    const uint64_t digit = static_cast<uint64_t>(name[i] - '0');
    if (counter > (UINT64_MAX - digit) / 10) return std::nullopt;
    counter = counter * 10 + digit;
  }
  return counter;
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Deletes a released segment: gives its blocks back from the end a step at
// a time (ftruncate), then removes the name. On a filesystem mounted with
// `discard` (this workplace's VMs, and many cloud disks) freeing blocks sends
// the disk a discard, and a whole segment's at once (16 MiB) held the disk
// for 6-10 ms; the log's fdatasyncs, which publishes wait for, waited behind
// it. Between the steps' smaller discards they get their turn. A crash
// part-way leaves a released segment cut short, which Open reads as entries
// SQLite already holds. (RocksDB deletes its files in chunks for the same
// reason.)
constexpr off_t kDeleteStepBytes = 512 << 10;

int RemoveSegment(const std::string& path) {
  {
    Fd f{::open(path.c_str(), O_WRONLY | O_CLOEXEC)};
    struct stat st {};
    if (f.fd >= 0 && ::fstat(f.fd, &st) == 0) {
      for (off_t size = st.st_size; size > 0;) {
        size = size > kDeleteStepBytes ? size - kDeleteStepBytes : 0;
        if (::ftruncate(f.fd, size) != 0) break;  // unlink frees the rest
      }
    }
  }  // closed before the unlink, whose errno the caller reads
  return ::unlink(path.c_str());
}

Status SyncDir(const std::string& dir) {
  Fd d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.fd < 0) return Io(dir, "cannot open directory", errno);
  if (::fsync(d.fd) != 0) return Io(dir, "cannot fsync directory", errno);
  return Status::Ok();
}

Status PreadAll(int fd, char* buf, size_t n, uint64_t offset, const std::string& path) {
  while (n > 0) {
    const ssize_t r = ::pread(fd, buf, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Io(path, "cannot read at offset " + std::to_string(offset), errno);
    if (r == 0) return Io(path, "file shrank while being read at offset " + std::to_string(offset), 0);
    buf += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return Status::Ok();
}

// One entry as read at Open. kInvalid carries what was wrong with it.
struct EntryRead {
  enum Kind { kEnd, kEntry, kInvalid } kind = kEnd;
  uint64_t lsn = 0;
  // Header + payload; for kInvalid, what its header claims (0 when that
  // length cannot be used).
  uint64_t bytes = 0;
  std::string reason;
};

// Reads the entry at offset of a segment of size bytes; its payload goes to
// *payload. The length is checked against the limit and the file's size
// before anything is allocated for it.
Result<EntryRead> ReadEntry(int fd, uint64_t size, uint64_t offset, const std::string& path, std::string* payload) {
  const uint64_t left = size - offset;
  if (left == 0) return EntryRead{};
  char header[kHeaderBytes] = {};
  const size_t header_bytes = static_cast<size_t>(std::min<uint64_t>(left, kHeaderBytes));
  if (Status s = PreadAll(fd, header, header_bytes, offset, path); !s.ok()) return s;
  if (header_bytes < kHeaderBytes) {
    if (std::all_of(header, header + header_bytes, [](char c) { return c == 0; })) return EntryRead{};
    return EntryRead{EntryRead::kInvalid, 0, 0, "header cut short at the end of the file"};
  }
  const uint64_t length = GetFixed32(header);
  const uint64_t lsn = GetFixed64(header + 8);
  if (length == 0) return EntryRead{};
  if (length > kMaxPayloadBytes) {
    return EntryRead{EntryRead::kInvalid, lsn, 0, "length " + std::to_string(length) + " over the 1 GiB limit"};
  }
  if (length > left - kHeaderBytes) {
    return EntryRead{
        EntryRead::kInvalid, lsn, 0,
        "length " + std::to_string(length) + " past the end of the file (" + std::to_string(size) + " bytes)"};
  }
  payload->resize(static_cast<size_t>(length));
  if (Status s = PreadAll(fd, payload->data(), payload->size(), offset + kHeaderBytes, path); !s.ok()) return s;
  if (EntryCrc(header, *payload) != GetFixed32(header + 4)) {
    return EntryRead{EntryRead::kInvalid, lsn, kHeaderBytes + length,
                     "bad CRC (lsn field " + std::to_string(lsn) + ")"};
  }
  return EntryRead{EntryRead::kEntry, lsn, kHeaderBytes + length, {}};
}

std::string Where(const std::string& path, uint64_t offset) {
  return "commit log " + path + " at offset " + std::to_string(offset);
}

// What Open learnt of one segment.
struct SegmentScan {
  uint64_t first_lsn = 0;
  uint64_t last_lsn = 0;
  uint64_t bytes = 0;
};

// Reads the segments at Open, in counter order, replaying entries and
// telling a torn tail from corruption (see the header for the rules).
class Recovery {
 public:
  Recovery(uint64_t after_lsn, const CommitLog::Replay& replay) : after_lsn_(after_lsn), replay_(replay) {}

  Result<SegmentScan> Read(const std::string& path) {
    Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
    if (f.fd < 0) return Io(path, "cannot open", errno);
    struct stat st {};
    if (::fstat(f.fd, &st) != 0) return Io(path, "cannot stat", errno);
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    SegmentScan scan;
    for (uint64_t offset = 0;;) {
      Result<EntryRead> r = ReadEntry(f.fd, size, offset, path, &payload_);
      if (!r.ok()) return r.status();
      EntryRead& e = r.value();
      if (e.kind == EntryRead::kEntry && offset == 0) {
        if (Status s = CheckFirst(path, e.lsn); !s.ok()) return s;
      } else if (e.kind == EntryRead::kEntry && (prev_ == UINT64_MAX || e.lsn != prev_ + 1)) {
        // (Nothing follows the last lsn there is: 0 would be a wrap.)
        e = EntryRead{EntryRead::kInvalid, e.lsn, e.bytes,
                      "lsn " + std::to_string(e.lsn) + " after lsn " + std::to_string(prev_)};
      }
      if (e.kind == EntryRead::kEnd) break;
      if (e.kind == EntryRead::kInvalid) {
        Result<uint64_t> resume = LookPast(f.fd, size, path, offset, e);
        if (!resume.ok()) return resume.status();
        if (*resume != 0) {
          offset = *resume;
          continue;
        }
        if (!invalid_) invalid_ = Invalid{path, offset, e.reason};
        break;
      }
      if (e.lsn > after_lsn_ && replay_) {
        if (Status s = replay_(e.lsn, payload_); !s.ok()) return s;
      }
      if (scan.first_lsn == 0) scan.first_lsn = e.lsn;
      scan.last_lsn = e.lsn;
      scan.bytes += e.bytes;
      prev_ = e.lsn;
      offset += e.bytes;
    }
    return scan;
  }

  // The lsn the next Append gets, 0 if none is left; warns of a torn tail
  // left unresolved.
  uint64_t Finish() const {
    if (invalid_) {
      spdlog::warn("commit log: torn tail in {} at offset {} ({}); replay stops at lsn {}", invalid_->path,
                   invalid_->offset, invalid_->reason, prev_);
    }
    return std::max(prev_, after_lsn_) + 1;
  }

 private:
  struct Invalid {
    std::string path;
    uint64_t offset = 0;
    std::string reason;
  };

  // Whether the invalid entry at offset is damage rather than a torn tail.
  // The log appends one entry at a time and syncs it before the next, so
  // only its last entry can be torn: a valid entry that goes on from the
  // invalid one (lsn first + k after k invalid entries, found by following
  // the lengths their headers claim) was appended after they were
  // acknowledged. Those entries are lost, Corruption, unless SQLite holds
  // them: replay then resumes at the valid entry, whose offset is returned
  // (0: a torn tail, or damage that cannot be told from one, e.g. in the
  // header's length or in the last entry). Only lengths are followed, never
  // a search through the bytes, which a client's message bodies could
  // imitate; a torn header's length could still point into its own payload,
  // but the entry found there would have to carry the right lsn, and a
  // torn entry is never one SQLite holds, so the worst it can do is stop
  // the store from opening.
  Result<uint64_t> LookPast(int fd, uint64_t size, const std::string& path, uint64_t offset, const EntryRead& bad) {
    if (prev_ == UINT64_MAX) return uint64_t{0};
    // The lsn the invalid entry should hold: the next one, or for a
    // segment's first entry any CheckFirst would accept.
    const uint64_t lo = prev_ + 1;
    const uint64_t hi = offset == 0 ? std::max(prev_, after_lsn_) + 1 : lo;
    std::string payload;
    uint64_t at = offset;
    uint64_t step = bad.bytes;
    for (uint64_t k = 1; step != 0 && step <= size - at; ++k) {
      at += step;
      Result<EntryRead> r = ReadEntry(fd, size, at, path, &payload);
      if (!r.ok()) return r.status();
      const EntryRead& e = r.value();
      if (e.kind == EntryRead::kEnd) break;
      step = e.bytes;
      if (e.kind != EntryRead::kEntry || e.lsn <= k || e.lsn - k < lo || e.lsn - k > hi) continue;
      const uint64_t first = e.lsn - k, last = e.lsn - 1;  // what the invalid entries held
      const std::string lost = first == last ? "lsn " + std::to_string(first)
                                             : "lsns " + std::to_string(first) + " to " + std::to_string(last);
      if (last > after_lsn_) {
        return Status::Corruption(Where(path, offset) + ": " + bad.reason + ", but the entry at offset " +
                                  std::to_string(at) + " goes on from it with lsn " + std::to_string(e.lsn) +
                                  ": acknowledged entries (" + lost + ") are damaged; restore the store from a backup");
      }
      spdlog::warn("{}: {} ({} damaged, SQLite holds {}); replay goes on at offset {}", Where(path, offset), bad.reason,
                   k == 1 ? "an entry" : std::to_string(k) + " entries", lost, at);
      if (offset == 0 && invalid_) {  // as CheckFirst with a valid first entry
        spdlog::warn("commit log: invalid entry in {} at offset {} ({}) skipped: {} goes on with lsn {}",
                     invalid_->path, invalid_->offset, invalid_->reason, path, first);
        invalid_.reset();
      }
      prev_ = last;
      return at;
    }
    return uint64_t{0};
  }

  // A segment's first entry may skip lsns only if SQLite holds them. Its
  // being valid also decides what an earlier invalid entry was.
  Status CheckFirst(const std::string& path, uint64_t lsn) {
    const uint64_t needed = std::max(prev_, after_lsn_) + 1;
    if (lsn <= prev_ || lsn > needed) {
      const std::string lsns = "lsn " + std::to_string(lsn) + " follows lsn " + std::to_string(prev_) + " (after_lsn " +
                               std::to_string(after_lsn_) + ")";
      if (invalid_) {
        return Status::Corruption(Where(invalid_->path, invalid_->offset) + ": " + invalid_->reason + ", but " +
                                  Where(path, 0) + " holds a valid entry after it (" + lsns +
                                  "): acknowledged entries are lost; restore the store from a backup");
      }
      return Status::Corruption(Where(path, 0) + ": " + lsns +
                                ": acknowledged entries are missing; restore the store from a backup");
    }
    if (invalid_) {
      spdlog::warn(
          "commit log: invalid entry in {} at offset {} ({}) skipped: {} goes on with lsn {}, so it was a torn "
          "tail of an earlier run or held only entries SQLite has",
          invalid_->path, invalid_->offset, invalid_->reason, path, lsn);
      invalid_.reset();
    } else if (prev_ > 0 && lsn > prev_ + 1) {
      spdlog::warn("commit log: lsns {} to {} missing before {} (SQLite holds them, after_lsn {})", prev_ + 1, lsn - 1,
                   path, after_lsn_);
    }
    return Status::Ok();
  }

  const uint64_t after_lsn_;
  const CommitLog::Replay& replay_;
  uint64_t prev_ = 0;               // the last valid lsn read
  std::optional<Invalid> invalid_;  // the first invalid entry not yet explained
  std::string payload_;
};

}  // namespace

// ---------------------------------------------------------------------------
// CommitLog

CommitLog::CommitLog(const Options& options) : options_(options), spare_path_(options.prefix + ".spare") {
  dir_ = std::filesystem::path(options_.prefix).parent_path().string();
  if (dir_.empty()) dir_ = ".";
}

CommitLog::~CommitLog() {
  {
    std::lock_guard<std::mutex> lock(prep_mu_);
    prep_stopping_ = true;
  }
  prep_cv_.notify_all();
  if (prep_thread_.joinable()) prep_thread_.join();
  if (spare_fd_ >= 0) {
    ::close(spare_fd_);
    ::unlink(spare_path_.c_str());
  }
  CloseCurrent();
}

Result<std::unique_ptr<CommitLog>> CommitLog::Open(const Options& options, uint64_t after_lsn, const Replay& replay) {
  if (options.prefix.empty() || options.prefix.back() == '/') {
    return Status::InvalidArgument("commit log: the prefix must name files, not a directory");
  }
  std::unique_ptr<CommitLog> log(new CommitLog(options));
  // A spare left behind holds only zeros (or fewer of them than it should).
  if (::unlink(log->spare_path_.c_str()) != 0 && errno != ENOENT) {
    return Io(log->spare_path_, "cannot remove the spare segment left behind", errno);
  }
  if (Status s = log->Recover(after_lsn, replay); !s.ok()) return s;
  if (Status s = log->StartSegment(); !s.ok()) return s;
  return log;
}

// Lists the segments, then reads them in counter order. Runs before any
// other thread can see the log.
Status CommitLog::Recover(uint64_t after_lsn, const Replay& replay) {
  const std::string base = std::filesystem::path(options_.prefix).filename().string();
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    const std::optional<uint64_t> counter = ParseCounter(it->path().filename().string(), base);
    std::error_code type_ec;  // a name that cannot be examined is not a segment we wrote
    if (counter && it->is_regular_file(type_ec)) {
      segments_.push_back(Segment{*counter, SegmentPath(options_.prefix, *counter)});
    }
  }
  if (ec) return Io(dir_, "cannot list directory", ec.value());
  std::sort(segments_.begin(), segments_.end(),
            [](const Segment& a, const Segment& b) { return a.counter < b.counter; });

  Recovery recovery(after_lsn, replay);
  for (Segment& seg : segments_) {
    Result<SegmentScan> scan = recovery.Read(seg.path);
    if (!scan.ok()) return scan.status();
    seg.first_lsn = scan->first_lsn;
    seg.last_lsn = scan->last_lsn;
    seg.bytes = scan->bytes;
    bytes_ += scan->bytes;
  }
  next_lsn_ = recovery.Finish();
  // Counting from 1 never gets there: only after_lsn or an entry's lsn the
  // log did not write can, and an Append would then take lsn 0.
  if (next_lsn_ == 0) {
    return Status::Corruption("commit log: lsn 18446744073709551615 reached (after_lsn " + std::to_string(after_lsn) +
                              "): no lsn is left for an append");
  }
  return Status::Ok();
}

// Creates the next segment, from the spare if one is ready, and makes it
// current. The directory is synced before any entry in it can be
// acknowledged, so the file (or the spare's new name) survives power loss.
// On failure the current segment stays current.
Status CommitLog::StartSegment() {
  // Past the largest counter the next would wrap to 0 and be read first.
  // Counting never gets there: only a name the log did not write does.
  if (!segments_.empty() && segments_.back().counter == UINT64_MAX) {
    return Status::Corruption("commit log " + segments_.back().path +
                              ": the segment counter is at its limit; no segment can follow it");
  }
  const uint64_t counter = segments_.empty() ? 1 : segments_.back().counter + 1;
  Segment seg{counter, SegmentPath(options_.prefix, counter)};
  uint64_t allocated = 0;
  int fd = TakeSpare(seg.path);
  if (fd >= 0) {
    allocated = options_.segment_bytes;
    spares_used_++;
  } else {
    fd = ::open(seg.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return Io(seg.path, "cannot create", errno);
    segments_preallocated_++;
  }
  if (Status s = SyncDir(dir_); !s.ok()) {
    ::close(fd);
    ::unlink(seg.path.c_str());
    return s;
  }
  CloseCurrent();
  fd_ = fd;
  offset_ = 0;
  allocated_ = allocated;
  spare_asked_ = false;
  fill_.store(0, std::memory_order_relaxed);
  first_append_ns_.store(0, std::memory_order_relaxed);
  segments_.push_back(std::move(seg));
  return Status::Ok();
}

void CommitLog::WantSpare() {
  spare_asked_ = true;
  {
    std::lock_guard<std::mutex> lock(prep_mu_);
    if (spare_fd_ >= 0 || prep_stopping_) return;
    spare_wanted_ = true;
    if (!prep_thread_.joinable()) prep_thread_ = std::thread([this] { SpareLoop(); });
  }
  prep_cv_.notify_all();
}

int CommitLog::TakeSpare(const std::string& path) {
  std::lock_guard<std::mutex> lock(prep_mu_);
  if (spare_fd_ < 0) return -1;
  const int fd = spare_fd_;
  spare_fd_ = -1;
  if (::rename(spare_path_.c_str(), path.c_str()) != 0) {
    spdlog::warn("{} (a new segment is made instead)",
                 Io(spare_path_, "cannot rename the spare segment", errno).message());
    ::close(fd);
    ::unlink(spare_path_.c_str());
    return -1;
  }
  return fd;
}

void CommitLog::SpareLoop() {
  pthread_setname_np(pthread_self(), "store-logspare");
  std::unique_lock<std::mutex> lock(prep_mu_);
  for (;;) {
    prep_cv_.wait(lock, [&] { return prep_stopping_ || (spare_wanted_ && spare_fd_ < 0); });
    if (prep_stopping_) return;
    if (std::chrono::steady_clock::now() < spare_retry_) {
      prep_cv_.wait_until(lock, spare_retry_, [&] { return prep_stopping_; });
      continue;
    }
    spare_wanted_ = false;
    lock.unlock();
    const Status s = MakeSpare();
    lock.lock();
    if (prep_stopping_) return;
    // Appends go on without a spare (preallocating as before); the next
    // segment's first use asks again, but not before a little while. Short
    // of space is said once, when it starts and when it ends: it warns of
    // a disk filling up.
    const bool short_of_space = s.code() == Status::Code::kUnavailable;
    if (short_of_space && !spare_short_) {
      spdlog::warn(
          "commit log: {}: segments are no longer written ahead (appends are slower); publishes are refused "
          "once the disk is full",
          s.message());
    } else if (!s.ok() && !short_of_space) {
      spdlog::warn("commit log: no spare segment: {}", s.message());
    } else if (s.ok() && spare_short_) {
      spdlog::info("commit log: {} has space again: segments are written ahead", dir_);
    }
    spare_short_ = short_of_space;
    if (!s.ok()) spare_retry_ = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  }
}

// Writes segment_bytes of zeros to the spare's file and syncs them, if the
// filesystem can spare them (spare thread, prep_mu_ not held). Stops early,
// with nothing kept, when the log closes.
Status CommitLog::MakeSpare() {
  struct statvfs fs {};
  if (::statvfs(dir_.c_str(), &fs) != 0) return Io(dir_, "cannot read the free space", errno);
  const uint64_t free = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  if (free < options_.segment_bytes + options_.spare_min_free_bytes) {
    return Status::Unavailable("only " + std::to_string(free >> 20) + " MiB free in " + dir_);
  }
  const int fd = ::open(spare_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Io(spare_path_, "cannot create", errno);
  // In steps, each written out before the next (sync_file_range): the log's
  // own syncs then never wait behind megabytes of zeros.
  static const std::string zeros(kSpareStepBytes, '\0');
  int err = 0;
  for (uint64_t at = 0; at < options_.segment_bytes && err == 0;) {
    {
      std::lock_guard<std::mutex> lock(prep_mu_);  // closing: no need to finish
      if (prep_stopping_) break;
    }
    const size_t n = static_cast<size_t>(std::min<uint64_t>(zeros.size(), options_.segment_bytes - at));
    const ssize_t w = ::pwrite(fd, zeros.data(), n, static_cast<off_t>(at));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      err = w < 0 ? errno : ENOSPC;
      break;
    }
    if (::sync_file_range(fd, static_cast<off_t>(at), w,
                          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) != 0) {
      err = errno;
    }
    at += static_cast<uint64_t>(w);
    const uint64_t steps_left = (options_.segment_bytes - at + kSpareStepBytes - 1) / kSpareStepBytes;
    const auto pause =
        SparePause(fill_.load(std::memory_order_relaxed), SinceFirstAppend(std::chrono::steady_clock::now()),
                   options_.segment_bytes, options_.segment_age, steps_left, kSparePauseMax);
    if (pause.count() > 0) {
      std::unique_lock<std::mutex> lock(prep_mu_);
      prep_cv_.wait_for(lock, pause, [&] { return prep_stopping_; });
    }
  }
  if (err == 0 && ::fdatasync(fd) != 0) err = errno;
  std::lock_guard<std::mutex> lock(prep_mu_);
  if (err != 0 || prep_stopping_) {
    ::close(fd);
    ::unlink(spare_path_.c_str());
    return err != 0 && !prep_stopping_ ? Io(spare_path_, "cannot write", err) : Status::Ok();
  }
  spare_fd_ = fd;
  prep_cv_.notify_all();
  return Status::Ok();
}

std::chrono::nanoseconds CommitLog::SinceFirstAppend(std::chrono::steady_clock::time_point now) const {
  const int64_t first = first_append_ns_.load(std::memory_order_relaxed);
  if (first == 0) return std::chrono::nanoseconds(0);
  return now.time_since_epoch() - std::chrono::nanoseconds(first);
}

std::chrono::microseconds SparePause(uint64_t fill, std::chrono::nanoseconds elapsed, uint64_t segment_bytes,
                                     std::chrono::milliseconds segment_age, uint64_t steps_left,
                                     std::chrono::microseconds max_pause) {
  using std::chrono::duration;
  if (fill == 0 || elapsed.count() <= 0 || steps_left == 0 || fill >= segment_bytes) {
    return std::chrono::microseconds(0);
  }
  const double elapsed_s = duration<double>(elapsed).count();
  const double rate = static_cast<double>(fill) / elapsed_s;  // bytes a second
  // The segment rotates when full or when its first entry is segment_age old.
  const double left_s =
      std::min(static_cast<double>(segment_bytes - fill) / rate, duration<double>(segment_age).count() - elapsed_s);
  if (left_s <= 0) return std::chrono::microseconds(0);
  const double pause_us = left_s / 2 / static_cast<double>(steps_left) * 1e6;
  return std::chrono::microseconds(static_cast<int64_t>(std::min(pause_us, static_cast<double>(max_pause.count()))));
}

bool CommitLog::WaitForSpare(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(prep_mu_);
  return prep_cv_.wait_for(lock, timeout, [&] { return spare_fd_ >= 0; });
}

uint64_t CommitLog::spares_used() const {
  std::lock_guard<std::mutex> lock(mu_);
  return spares_used_;
}

uint64_t CommitLog::segments_preallocated() const {
  std::lock_guard<std::mutex> lock(mu_);
  return segments_preallocated_;
}

// Gives back the preallocated zeros past the last entry (an idle, stalled
// log would otherwise keep preallocate_bytes per segment) and closes.
void CommitLog::CloseCurrent() {
  if (fd_ < 0) return;
  if (allocated_ > offset_) (void)::ftruncate(fd_, static_cast<off_t>(offset_));
  ::close(fd_);
  fd_ = -1;
}

Status CommitLog::FailAppend(std::string_view what, int err) {
  const std::string at = " at offset " + std::to_string(offset_) + " (lsn " + std::to_string(next_lsn_) + ")";
  const Status s = Io(segments_.back().path, std::string(what) + at, err);
  (void)::ftruncate(fd_, static_cast<off_t>(offset_));
  allocated_ = offset_;
  return s;
}

Result<uint64_t> CommitLog::Append(std::string_view payload, const std::function<void()>& while_written) {
  std::lock_guard<std::mutex> lock(mu_);
  if (payload.empty()) return Status::InvalidArgument("commit log: an entry cannot be empty");
  if (payload.size() > kMaxPayloadBytes) return Status::InvalidArgument("commit log: an entry is limited to 1 GiB");
  const uint64_t bytes = kHeaderBytes + payload.size();
  const bool rotate = offset_ > 0 && (offset_ + bytes > options_.segment_bytes ||
                                      SinceFirstAppend(std::chrono::steady_clock::now()) >= options_.segment_age);
  if (rotate) {
    if (Status s = StartSegment(); !s.ok()) return s;
  }
  if (options_.preallocate_bytes > 0 && offset_ + bytes > allocated_) {
    const uint64_t step = options_.preallocate_bytes;
    const uint64_t target = (offset_ + bytes + step - 1) / step * step;
    int err = ::posix_fallocate(fd_, static_cast<off_t>(offset_), static_cast<off_t>(target - offset_));
    uint64_t got = target;
    if (err == ENOSPC) {
      // A disk nearly full (or a small one): this entry's own space is
      // enough, the step ahead is only an optimisation.
      got = offset_ + bytes;
      err = ::posix_fallocate(fd_, static_cast<off_t>(offset_), static_cast<off_t>(bytes));
    }
    if (err != 0) return FailAppend("cannot preallocate", err);
    allocated_ = got;
  }
  if (Status s = WriteEntry(payload, while_written); !s.ok()) return s;

  const uint64_t lsn = next_lsn_++;
  Segment& seg = segments_.back();
  if (seg.first_lsn == 0) {
    seg.first_lsn = lsn;
    first_append_ns_.store(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
            .count(),
        std::memory_order_relaxed);
  }
  seg.last_lsn = lsn;
  seg.bytes += bytes;
  bytes_ += bytes;
  offset_ += bytes;
  fill_.store(offset_, std::memory_order_relaxed);
  if (options_.prepare_spare && !spare_asked_ && offset_ > options_.preallocate_bytes) WantSpare();
  return lsn;
}

// Writes entry next_lsn_ at offset_ and syncs it: the header and the
// payload in one pwritev, without copying the payload; while_written (if
// any) between the write and the sync.
Status CommitLog::WriteEntry(std::string_view payload, const std::function<void()>& while_written) {
  char header[kHeaderBytes];
  PutFixed32(header, static_cast<uint32_t>(payload.size()));
  PutFixed64(header + 8, next_lsn_);
  PutFixed32(header + 4, EntryCrc(header, payload));
  const size_t bytes = kHeaderBytes + payload.size();
  // One call in practice; a short count is continued so that the error
  // that cut it short (ENOSPC, EFBIG) is what gets reported.
  for (size_t done = 0; done < bytes;) {
    iovec iov[2];
    int n_iov = 0;
    if (done < kHeaderBytes) iov[n_iov++] = {header + done, kHeaderBytes - done};
    const size_t from = done > kHeaderBytes ? done - kHeaderBytes : 0;
    if (from < payload.size()) iov[n_iov++] = {const_cast<char*>(payload.data()) + from, payload.size() - from};
    const ssize_t n = ::pwritev(fd_, iov, n_iov, static_cast<off_t>(offset_ + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailAppend("cannot write", errno);
    if (n == 0) return FailAppend("short write", 0);
    done += static_cast<size_t>(n);
  }
  if (while_written) {
    // The device writes while the caller works; fdatasync then waits only
    // for the rest, and flushes. (Failure here is fdatasync's to report.)
    (void)::sync_file_range(fd_, static_cast<off_t>(offset_), static_cast<off_t>(bytes), SYNC_FILE_RANGE_WRITE);
    while_written();
  }
  // The wait that publishes see beyond the caller's work.
  const auto before = std::chrono::steady_clock::now();
  const int err = ::fdatasync(fd_) == 0 ? 0 : errno;
  const auto after = std::chrono::steady_clock::now();
  const auto took = std::chrono::duration_cast<std::chrono::microseconds>(after - before);
  if (err != 0) return FailAppend("cannot fdatasync", err);
  syncs_.Add(static_cast<uint64_t>(took.count()));
  if (took >= options_.slow_sync) NoteSlowSync(took, after);
  return Status::Ok();
}

// The first slow sync is logged at once, the next ones at most once every
// slow_sync_every, counting those in between. (A count left when the
// stalls end waits for the next slow sync; the admin status's histogram
// has every sync anyway.)
void CommitLog::NoteSlowSync(std::chrono::microseconds took, std::chrono::steady_clock::time_point now) {
  if (slow_warned_ != std::chrono::steady_clock::time_point{} && now - slow_warned_ < options_.slow_sync_every) {
    ++slow_suppressed_;
    return;
  }
  const double ms = static_cast<double>(took.count()) / 1000.0;
  if (slow_suppressed_ == 0) {
    spdlog::warn("commit log: an fdatasync of {} took {:.1f} ms; publishes wait for it (is the disk slow or busy?)",
                 segments_.back().path, ms);
  } else {
    spdlog::warn(
        "commit log: an fdatasync of {} took {:.1f} ms, and {} more took {} ms or longer since the last such "
        "warning; publishes wait for them (is the disk slow or busy?)",
        segments_.back().path, ms, slow_suppressed_, options_.slow_sync.count());
  }
  slow_warned_ = now;
  slow_suppressed_ = 0;
}

Status CommitLog::Release(uint64_t lsn, bool rotate_current) {
  std::vector<std::string> doomed;
  Status rotated;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (lsn >= next_lsn_) {
      return Status::InvalidArgument("commit log: release of lsn " + std::to_string(lsn) +
                                     " beyond the last appended, " + std::to_string(next_lsn_ - 1));
    }
    if (rotate_current && lsn == next_lsn_ - 1 && segments_.back().first_lsn != 0) rotated = StartSegment();
    // Oldest first and stopping at the first one still needed, so the
    // segments on disk always hold consecutive lsns.
    while (segments_.size() > 1 && segments_.front().last_lsn <= lsn) {
      doomed.push_back(segments_.front().path);
      bytes_ -= segments_.front().bytes;
      segments_.pop_front();
    }
  }
  // Deleting, and syncing the directory, take milliseconds: not while
  // Append waits for the lock. (A segment that fails to go holds only
  // released entries, which the next Open skips.)
  for (const auto& path : doomed) {
    if (RemoveSegment(path) != 0 && errno != ENOENT) {
      const Status s = Io(path, "cannot delete", errno);
      spdlog::warn("{} (its entries were released; the next start skips them)", s.message());
      if (rotated.ok()) rotated = s;
    }
  }
  if (!doomed.empty()) {
    if (Status s = SyncDir(dir_); !s.ok()) spdlog::warn("{} (released segments were deleted)", s.message());
  }
  return rotated;
}

uint64_t CommitLog::last_lsn() const {
  std::lock_guard<std::mutex> lock(mu_);
  return next_lsn_ - 1;
}

uint64_t CommitLog::bytes_on_disk() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

size_t CommitLog::segments() const {
  std::lock_guard<std::mutex> lock(mu_);
  return segments_.size();
}

}  // namespace liaison::broker
