// The store's commit log: a write-ahead log of its own in front of SQLite.
//
// Why: a publish is acknowledged once its group commit is durable. Syncing
// one sequential append is much cheaper than a SQLite commit, so the store's
// writer appends one entry per group commit here, fdatasyncs it, and only
// then acknowledges. An entry in the log after fdatasync IS the acknowledged
// state; SQLite is applied behind it by a separate applier thread, which
// calls Release once what it applied is durable in SQLite. After a crash the
// store opens the log with the last lsn SQLite holds (after_lsn) and
// re-applies the rest from the replay callback.
//
// Files: prefix + "." + a 20-digit zero-padded decimal counter ("segments",
// e.g. liaison.db-log.00000000000000000001), mode 0600. Each Open starts a
// new segment and never appends after a tail it read, so a torn tail is never
// written over. No segment follows one numbered 2^64-1 (a hand-made name):
// starting one is Corruption, from Open as from a rotation. A segment is
// preallocated ahead (posix_fallocate) so that a full disk fails the
// allocation rather than an entry half-way.
//
// Entry: a 16-byte header, then the payload. Header, all little-endian:
// u32 payload length, u32 CRC-32C over (the 8 lsn bytes, the 4 length bytes,
// the payload), u64 lsn. lsns are consecutive from 1 and never wrap: Open
// refuses as Corruption a log or an after_lsn at 2^64-1, which leaves no lsn
// for an Append. A length of 0 ends the written part of a segment
// (preallocated space is zeros); lengths over 1 GiB are invalid.
//
// Torn tail or corruption: entries are appended one at a time, each synced
// before the next, so only the last can be torn. An invalid entry (bad CRC,
// length past the end of the file, lsn out of sequence) is a torn tail, an
// append cut short by a crash and never acknowledged, when no valid entry
// follows it: Open logs a warning and stops there (whatever follows it in
// its segment is ignored). What follows is found by the lengths the
// headers claim, never by searching the bytes (which message bodies could
// imitate): in the same segment, a valid entry that goes on from the
// invalid one (lsn first + k after k invalid entries); in a later segment,
// one whose first entry goes on from the last valid lsn (started by an Open
// that already took the invalid entry for a torn tail; read on). Any other
// valid entry after an invalid one, or a gap in the lsns, is Corruption:
// acknowledged entries are lost, and the operator must restore from a
// backup. (Lost or missing lsns that SQLite already holds, <= after_lsn,
// lose nothing: they are only warned about, and replay goes on.) Damage to
// an entry's length, or to the last entry, cannot be told from a torn tail.

// Release and deletion: message bodies must leave the disk within 60 s of
// being released, but only whole segments are deleted. So segments rotate by
// size and by age (segment_age after their first entry), and a Release of
// everything appended starts a new segment so the current one can go too.
// Deleting is unlink + fsync of the directory; Open never deletes a segment.
//
// The spare: an fdatasync after writing into space that posix_fallocate
// reserved also commits the filesystem's journal (ext4 records that the
// blocks now hold data), one more write and flush per append. So once the
// log is busy (its current segment holds more than preallocate_bytes), a
// thread of its own writes the next segment ahead, segment_bytes of zeros
// synced to disk, as prefix + ".spare"; a new segment is that file renamed,
// and appends into it overwrite zeros. The spare is made only while the
// filesystem keeps spare_min_free_bytes free besides it; without one, a new
// segment is preallocated as before. Open removes a spare left behind (it
// only ever holds zeros).
//
// Thread-safety: Append, Release and the accessors may be called from any
// thread (one internal mutex; Append holds it across pwrite + fdatasync;
// syncs() alone takes no lock, so it never waits for a sync).
// The spare's thread shares only the spare with them (a mutex of its own).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "common/latency_histogram.h"
#include "common/status.h"

namespace liaison::broker {

class CommitLog {
 public:
  struct Options {
    // Segment files are prefix + "." + 20-digit zero-padded decimal counter,
    // e.g. /data/liaison.db-log.00000000000000000001
    std::string prefix;
    // Start a new segment before an append that would take the current one
    // past this (an entry larger than this gets a segment of its own) ...
    uint64_t segment_bytes = 16u << 20;
    // ... or when the current segment's first entry is older than this (so
    // released entries leave the disk soon even at a low rate).
    std::chrono::milliseconds segment_age{10000};
    // posix_fallocate the current segment ahead in steps of this, so a full
    // disk fails the allocation before any entry is half written.
    uint64_t preallocate_bytes = 4u << 20;
    // Prepare the next segment ahead (see "The spare" above) ...
    bool prepare_spare = true;
    // ... only while this much stays free besides it.
    uint64_t spare_min_free_bytes = 256u << 20;
    // An fdatasync that takes this long or longer is logged as a warning
    // (the first at once, then at most one every slow_sync_every, with the
    // count meanwhile): every publish waits for these syncs, so an operator
    // should know when the disk stalls.
    std::chrono::milliseconds slow_sync{100};
    std::chrono::milliseconds slow_sync_every{10000};
  };
  // Called for each valid entry with lsn > after_lsn, in lsn order, during Open. A non-OK status stops Open and is
  // returned.
  using Replay = std::function<Status(uint64_t lsn, std::string_view payload)>;
  // Opens (creating the directory entry if needed) the log with this prefix: reads every existing segment in counter
  // order and calls replay for each entry whose lsn > after_lsn. Entries with lsn <= after_lsn are skipped (already
  // applied). Then starts a NEW empty segment for appends (never appends after a tail it read), and deletes nothing
  // yet. next lsn for Append = max(after_lsn, last valid lsn read) + 1.
  static Result<std::unique_ptr<CommitLog>> Open(const Options& options, uint64_t after_lsn, const Replay& replay);
  ~CommitLog();  // closes the file; deletes nothing
  CommitLog(const CommitLog&) = delete;
  CommitLog& operator=(const CommitLog&) = delete;
  // Appends one entry (one pwrite, then one fdatasync) and returns its lsn (consecutive: 1, 2, 3, ...). On any failure
  // (ENOSPC from fallocate/pwrite/fdatasync, EIO, short write) returns IoError with errno text naming the file, the lsn
  // is NOT consumed, and the file is cut back (ftruncate to the entry's start offset, best effort) so the next Append
  // overwrites the same place. An empty payload (it would read as the end of the segment) or one over 1 GiB is
  // InvalidArgument.
  // while_written, if given, runs once the entry is written and its
  // write-out to the disk started (sync_file_range), before fdatasync waits
  // for it: the caller's work overlaps the device's (the store signs its
  // checkpoint there). It does not run when the write fails.
  Result<uint64_t> Append(std::string_view payload, const std::function<void()>& while_written = {});
  // Every entry with lsn <= lsn has been applied and made durable elsewhere: deletes every segment whose entries are
  // all <= lsn. If that includes every entry appended so far and the current segment holds any entry, starts a new
  // segment first so the old one can be deleted too (nothing released stays on disk). Thread-safe with Append (one
  // internal mutex; Append holds it across its pwrite+fdatasync, that is fine). An lsn past last_lsn() is
  // InvalidArgument. Each call that rotates creates a file and syncs the directory twice: call it in batches.
  // rotate_current false leaves the current segment alone (a caller that
  // releases often, under load: segments then go by size and age).
  Status Release(uint64_t lsn, bool rotate_current = true);
  uint64_t last_lsn() const;       // the last lsn appended (or replayed); 0 if none
  uint64_t bytes_on_disk() const;  // bytes of entries in all segments not yet deleted (for logs/tests)
  size_t segments() const;         // segment files currently on disk
  // Segments started from a spare, and started without one (for tests).
  uint64_t spares_used() const;
  uint64_t segments_preallocated() const;
  // Waits up to timeout for a spare to be ready; false if none is (for tests).
  bool WaitForSpare(std::chrono::milliseconds timeout);
  // How long each append's fdatasync took (any thread, without waiting for
  // an append in progress).
  LatencyHistogram::Snapshot syncs() const { return syncs_.Get(); }

 private:
  struct Segment {
    uint64_t counter = 0;
    std::string path;
    uint64_t first_lsn = 0;  // 0: no valid entry
    uint64_t last_lsn = 0;
    uint64_t bytes = 0;  // of valid entries, headers included
  };

  explicit CommitLog(const Options& options);
  Status Recover(uint64_t after_lsn, const Replay& replay);
  // The spare (prep_mu_): asked for by Append, made by SpareLoop, taken by
  // StartSegment.
  void WantSpare();
  int TakeSpare(const std::string& path);  // the spare's fd, renamed to path; -1 if none is ready
  void SpareLoop();
  Status MakeSpare();  // Unavailable: too little space
  Status StartSegment();
  void CloseCurrent();
  Status WriteEntry(std::string_view payload, const std::function<void()>& while_written);
  void NoteSlowSync(std::chrono::microseconds took, std::chrono::steady_clock::time_point now);  // with mu_ held
  Status FailAppend(std::string_view what, int err);  // cuts the file back to offset_

  const Options options_;
  std::string dir_;
  mutable std::mutex mu_;         // guards everything below (Open's Recover runs before it is shared)
  std::deque<Segment> segments_;  // in counter order; the last one is current when fd_ >= 0
  int fd_ = -1;                   // the current segment, open for appends
  uint64_t offset_ = 0;           // where the next entry goes in the current segment
  uint64_t allocated_ = 0;        // the current segment is preallocated up to here
  uint64_t next_lsn_ = 1;
  uint64_t bytes_ = 0;  // sum of segments_[i].bytes
  uint64_t spares_used_ = 0, segments_preallocated_ = 0;
  bool spare_asked_ = false;  // for the current segment
  // When the current segment's first entry was appended (steady clock ns;
  // 0: none yet), and offset_ again: written under mu_, read without it by
  // the spare's thread, which paces itself by them (Append holds mu_ across
  // its fdatasync).
  std::atomic<int64_t> first_append_ns_{0};
  std::atomic<uint64_t> fill_{0};
  // How long each append's fdatasync took: lock-free, so syncs() never
  // waits for an append that holds mu_ across its sync.
  LatencyHistogram syncs_;
  std::chrono::steady_clock::time_point slow_warned_{};  // guarded by mu_: the last slow-sync warning
  uint64_t slow_suppressed_ = 0;                         // guarded by mu_: slow syncs since then, not logged
  // Since the current segment's first entry; 0 when it has none.
  std::chrono::nanoseconds SinceFirstAppend(std::chrono::steady_clock::time_point now) const;

  const std::string spare_path_;  // prefix + ".spare"
  std::mutex prep_mu_;            // guards the spare's state below; taken after mu_, never before it
  std::condition_variable prep_cv_;
  int spare_fd_ = -1;  // a spare ready: segment_bytes of synced zeros
  bool spare_wanted_ = false;
  bool prep_stopping_ = false;
  std::chrono::steady_clock::time_point spare_retry_{};  // after a failure, not before then
  bool spare_short_ = false;                             // the spare thread's: the last try found too little space
  std::thread prep_thread_;                              // started by the first WantSpare
};

// How long the spare's writing pauses after each step (commit_log.cpp), so
// that it is spread over half the time the current segment has left before
// it rotates, at the rate it has filled so far: a segment's worth of zeros
// written at once delays the log's own syncs (each flush of the disk's cache
// carries what was written before it) by several milliseconds. fill bytes
// of the segment written in elapsed since its first entry; steps_left steps
// of the spare to write. No pause when the rate is not known yet or the
// segment is nearly due; at most max_pause.
std::chrono::microseconds SparePause(uint64_t fill, std::chrono::nanoseconds elapsed, uint64_t segment_bytes,
                                     std::chrono::milliseconds segment_age, uint64_t steps_left,
                                     std::chrono::microseconds max_pause);

// CRC-32C (Castagnoli), as used in the entry header. Extend continues a CRC
// (start from 0); it uses SSE4.2 when the CPU has it. The two explicit paths
// are here for tests; ExtendHardware requires HardwareAvailable().
namespace crc32c {
uint32_t Extend(uint32_t crc, const char* data, size_t n);
uint32_t ExtendPortable(uint32_t crc, const char* data, size_t n);
uint32_t ExtendHardware(uint32_t crc, const char* data, size_t n);
bool HardwareAvailable();
}  // namespace crc32c

}  // namespace liaison::broker
