// The store's writer thread (WriterLoop): takes the queued batches, makes
// one group of them (seqs, leaves, the tree, duplicates, prune chunks, the
// signed checkpoint), logs it and hands it to the applier; and the
// completion thread (DoneLoop) that runs the callers' done()s.
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "broker/store/audit_seq.h"
#include "broker/store/commit_log.h"
#include "broker/store/id_filter.h"
#include "broker/store/log_group.h"
#include "broker/store/store_impl.h"
#include "common/audit_record.h"
#include "common/checkpoint.h"
#include "common/merkle.h"

namespace liaison::broker {
namespace {

std::string Rfc3339(int64_t ms) {
  const time_t t = static_cast<time_t>(ms / 1000);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

// Gives a record its seq and time, encodes its leaf and adds it to the tree
// and the group (writer).
void Store::Impl::LogRecord(audit::Record& r, uint64_t seq, int64_t* last_time_ms, merkle::Tree* t, LogGroup* g) {
  r.seq = seq;
  // Time never runs backwards in seq order: records are made on many threads
  // and reach the writer in any order (and the clock may be stepped back),
  // but the reader finds a time range by binary search over seq.
  r.time_ms = std::max(r.time_ms, *last_time_ms);
  *last_time_ms = r.time_ms;
  LoggedRecord lr;
  lr.leaf = audit::EncodeLeaf(r);
  lr.hash = merkle::LeafHash(lr.leaf);
  t->Append(lr.hash);
  lr.record = std::move(r);
  g->records.push_back(std::move(lr));
}

// One chunk of a PruneAudit: the records made before before_ms, from the
// first not yet pruned, at most kPruneChunk of them, and the audit_pruned
// record that says so (added to the item's batch, so it is logged like any
// other). The range is found in the database, so everything logged before
// this commit is applied first; records of this same commit are not
// candidates (they are being made now).
Status Store::Impl::PruneChunk(Item& item, uint64_t next, uint64_t* pruned, LogGroup* g) {
  PruneJob& job = *item.prune;
  job.more = false;
  if (Status s = WaitApplied(); !s.ok()) return s.Annotate("pruning");
  // Every record before the seq found for before_ms - disorder was made
  // before before_ms (audit_seq.h): never prunes a newer record, at worst
  // leaves a few older ones of a log written before schema 5.
  auto end = audit_seq::FirstAtOrAfter(wdb, next - 1, job.before_ms - time_disorder_ms);
  if (!end.ok()) return end.status();
  const uint64_t target = *end - 1;
  if (target <= *pruned) return Status::Ok();
  const uint64_t last = std::min(target, *pruned + kPruneChunk);
  g->prunes.push_back({*pruned, last});
  audit::Record r;
  r.time_ms = NowMs();
  r.event = "audit_pruned";
  r.detail = "records " + std::to_string(*pruned + 1) + " to " + std::to_string(last) + " pruned (made before " +
             Rfc3339(job.before_ms) + (job.why.empty() ? "" : "; " + job.why) +
             "): their fields are removed, their seq and leaf hash kept";
  item.batch.records.push_back(std::move(r));
  if (job.pruned.first == 0) job.pruned.first = *pruned + 1;
  job.pruned.last = last;
  job.more = last < target;
  *pruned = last;
  return Status::Ok();
}

// A new message whose (sender, message id) was used before marks the
// batch a duplicate (item.result): then nothing of it is logged. Looks in
// the messages logged but not applied, then in the database; a new id is
// added to the former (and to *added, to forget it if the commit fails),
// unless the batch does not keep its message (Batch::keep_message).
Status Store::Impl::CheckDuplicate(Item& item, std::vector<std::string>* added) {
  const StoredMessage& m = *item.batch.new_message;
  std::string key = Key(m.sender, m.message_id);
  auto duplicate = [&](const Original& o) {
    item.result.duplicate = true;
    StoredMessage& out = item.result.original;
    out.row = o.row;
    out.sender = m.sender;
    out.message_id = m.message_id;
    out.publish_digest = o.publish_digest;
    out.ack = o.ack;
  };
  // A new id: remembered as unapplied until the applier's commit, and in
  // seen_ids for good (a failed commit forgets the former; the latter then
  // only answers "maybe" once too often).
  auto accept = [&]() {
    if (!item.batch.keep_message) return Status::Ok();  // nothing to remember
    seen_ids.Add(key);
    std::lock_guard lock(unapplied_mu);
    unapplied_ids.emplace(key, Original{m.row, m.publish_digest, m.ack});
    added->push_back(std::move(key));
    return Status::Ok();
  };
  // Every key ever accepted went through here into seen_ids, the unapplied
  // ones too: a key it has never seen is new (nearly every publish), with
  // neither a look among the unapplied nor a database read.
  if (!seen_ids.MayContain(key)) return accept();
  {
    std::lock_guard lock(unapplied_mu);
    if (auto it = unapplied_ids.find(key); it != unapplied_ids.end()) {
      duplicate(it->second);
      return Status::Ok();
    }
  }
  // Not among the unapplied: the applier's commit that took it out of them
  // is already visible to this read.
  {
    std::lock_guard lock(mu);
    counters.duplicate_lookups++;
  }
  find_duplicate.Text(1, m.sender);
  find_duplicate.Text(2, m.message_id);
  sqlite3_stmt* q = find_duplicate.get();
  const int rc = sqlite3_step(q);
  if (rc == SQLITE_ROW) {
    Original o;
    o.row = sqlite3_column_int64(q, 0);
    o.publish_digest.assign(static_cast<const char*>(sqlite3_column_blob(q, 1)), sqlite3_column_bytes(q, 1));
    o.ack.assign(static_cast<const char*>(sqlite3_column_blob(q, 2)), sqlite3_column_bytes(q, 2));
    duplicate(o);
  }
  sqlite3_reset(q);
  sqlite3_clear_bindings(q);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(wdb, "find duplicate");
  if (rc == SQLITE_ROW) return Status::Ok();
  return accept();
}

// Fills seen_ids with every (sender, message id) in the database (at Open,
// after the commit log is applied and next_message_row read). Reads the
// messages_id_sender index only.
Status Store::Impl::LoadSeenIds() {
  const auto start = std::chrono::steady_clock::now();
  // Room for the rows there are (at most the highest row id, which Open
  // has read) and as many again before a second layer.
  seen_ids = IdFilter(static_cast<size_t>(next_message_row - 1) * 2);
  sqlite3_stmt* q = nullptr;
  if (sqlite3_prepare_v2(wdb, "SELECT sender, message_id FROM messages INDEXED BY messages_id_sender", -1, &q,
                         nullptr) != SQLITE_OK) {
    sqlite3_finalize(q);
    return SqlError(wdb, "reading the message ids");
  }
  int rc;
  while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
    auto text = [&](int column) {
      return std::string_view(reinterpret_cast<const char*>(sqlite3_column_text(q, column)),
                              static_cast<size_t>(sqlite3_column_bytes(q, column)));
    };
    seen_ids.Add(Key(text(0), text(1)));
  }
  sqlite3_finalize(q);
  if (rc != SQLITE_DONE) return SqlError(wdb, "reading the message ids");
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  if (ms >= 1000) spdlog::info("store: {} message ids loaded in {} ms", seen_ids.size(), ms);
  return Status::Ok();
}

void Store::Impl::Forget(const std::vector<std::string>& keys) {
  // A chunk at a time: the writer looks among the unapplied for a possible
  // duplicate while it commits, and the applier forgets thousands at once.
  for (size_t i = 0; i < keys.size();) {
    std::lock_guard lock(unapplied_mu);
    for (const size_t end = std::min(keys.size(), i + kForgetChunk); i < end; ++i) unapplied_ids.erase(keys[i]);
  }
}

// Makes one group of the items (seqs, leaves, the tree, duplicates, the
// signed checkpoint), logs it (one append, one fdatasync) and hands it to
// the applier. If logging fails, nothing of it is kept: the in-memory tree
// and seq are the caller's to replace only on success.
Status Store::Impl::Commit(Items& items, audit::Checkpoint* cp, merkle::Tree* tree_out, uint64_t* next_out,
                           size_t* records_out, size_t* dropped_out) {
  merkle::Tree t = tree;
  uint64_t seq = next_seq;
  int64_t last_time = last_time_ms;
  uint64_t pruned = pruned_through;
  LogGroup g;
  std::vector<std::string> added;
  auto fail = [&](Status s) {
    Forget(added);
    for (auto& item : items) item.result = BatchResult{};
    return s;
  };
  {
    std::lock_guard lock(apply_mu);
    if (unapplied_bytes > kMaxUnappliedBytes) {
      return fail(Status::IoError("the store's database cannot be written (" + std::to_string(unapplied_bytes >> 20) +
                                  " MiB are in the commit log and not in the database): " + apply_error.message()));
    }
  }
  const int64_t now = NowMs();
  size_t records = 0, dropped = 0;
  {
    size_t n = 0;
    for (const auto& item : items) n += item.batch.records.size() + (item.prune ? 1 : 0);
    g.records.reserve(n);  // a record moved is fifteen strings moved
    g.batches.reserve(items.size());
  }
  for (auto& item : items) {
    if (item.prune) {
      if (Status s = PruneChunk(item, next_seq, &pruned, &g); !s.ok()) return fail(s);
    }
    if (item.batch.new_message) {
      if (Status s = CheckDuplicate(item, &added); !s.ok()) return fail(s);
      if (item.result.duplicate) continue;
      if (!item.batch.keep_message) item.batch.new_message.reset();  // looked up only
    }
    for (auto& r : item.batch.records) LogRecord(r, seq++, &last_time, &t, &g);
    records += item.batch.records.size();
    dropped += item.batch.drop_bodies.size();
    if (item.batch.recalled_row != 0) g.recalls.emplace_back(item.batch.recalled_row, now);
    item.batch.records.clear();
    g.batches.push_back(std::move(item.batch));
    item.batch = Batch{};
  }
  // A commit that logs a checkpoint row (once a second) signs before the
  // append, since the row holds the signature; the others while the disk
  // writes the entry (CommitLog::Append's while_written), on this thread:
  // at 2,000 msgs/s that took 57-67 us off the median publish
  // (docs/benchmarks.md, twenty-ninth session). (A thread of its own that
  // signed while the append waited cost more CPU than the signature at low
  // rates, waking it for every commit, and saved no latency: ninth session.)
  const bool row = now - last_checkpoint_row_ms >= kCheckpointRowEveryMs;
  if (row) {
    *cp = signer->Sign(options.origin, t.size(), t.Root(), now);
    g.checkpoint_row = LogGroup::CheckpointRow{cp->tree_size, now, audit::FormatCheckpoint(*cp)};
  }
  log_buffer.clear();
  EncodeLogGroup(g, &log_buffer);
  auto sign = [&] { *cp = signer->Sign(options.origin, t.size(), t.Root(), now); };
  // By reference: a std::function holds a reference_wrapper without
  // allocating, once a commit.
  auto lsn = row ? log->Append(log_buffer) : log->Append(log_buffer, std::ref(sign));
  if (!lsn.ok()) return fail(lsn.status());
  g.lsn = *lsn;
  if (g.checkpoint_row) last_checkpoint_row_ms = now;
  *tree_out = std::move(t);
  *next_out = seq;
  *records_out = records;
  *dropped_out = dropped;
  last_time_ms = last_time;
  pruned_through = pruned;
  {
    std::lock_guard lock(apply_mu);
    g.logged = std::chrono::steady_clock::now();
    to_apply_records += Weight(g);
    unapplied_bytes += log_buffer.size();
    g.bytes = log_buffer.size();
    written_lsn = g.lsn;
    to_apply.push_back(std::move(g));
    // The applier sleeps until the oldest group is due; it needs waking
    // only for the first group, or when enough have gathered.
    if (to_apply.size() == 1 || to_apply_records >= kApplyNowRecords) apply_cv.notify_one();
  }
  return Status::Ok();
}

void Store::Impl::WhenLoggedApplied(std::function<void(const Status&)> then) {
  {
    std::lock_guard lock(mu);
    if (finished_items < pushed_items && !writer_gone) {
      written_waiters.emplace_back(pushed_items, std::move(then));
      cv.notify_one();  // a lingering lazy batch goes now
      return;
    }
  }
  WhenApplied(std::move(then));
}

void Store::Impl::WriterLoop() {
  pthread_setname_np(pthread_self(), "store-writer");
  // Lazy batches (Batch::lazy) wait until this for one that is not. It is
  // set lazy_linger after each commit, and after a wait with nothing
  // queued, so a lazy batch waits at most that long, unless someone waits
  // for it (WhenApplied) or enough gather.
  auto linger_until = std::chrono::steady_clock::now();
  for (;;) {
    Items items;
    {
      std::unique_lock lock(mu);
      while (!WriterHasUrgent()) {  // (stopping among it)
        if (std::chrono::steady_clock::now() < linger_until) {
          writer_lingering = true;
          cv.wait_until(lock, linger_until);
          writer_lingering = false;
          continue;
        }
        if (!queue.empty()) break;  // lazy batches that have waited long enough
        cv.wait(lock);
        linger_until = std::chrono::steady_clock::now() + options.lazy_linger;
      }
      if (queue.empty() && stopping) {
        writer_gone = true;
        auto waiters = std::move(written_waiters);
        written_waiters.clear();
        lock.unlock();
        for (auto& w : waiters) w.second(Status::Unavailable("the store is closing"));
        return;
      }
      if (queued_records <= kMaxRecordsPerCommit) {
        // All of it: the items change hands without being moved one by one.
        items.swap(queue);
        queued_records = 0;
        queued_urgent = 0;
      } else {
        size_t records = 0;
        while (!queue.empty() &&
               (items.empty() || records + queue.front().batch.records.size() <= kMaxRecordsPerCommit)) {
          records += queue.front().batch.records.size() + 1;
          items.push_back(Pop());
        }
      }
    }
    audit::Checkpoint cp;
    merkle::Tree new_tree;
    uint64_t new_next = 0;
    size_t n = 0, dropped = 0;
    Status s = Commit(items, &cp, &new_tree, &new_next, &n, &dropped);
    // More is likely to come soon after a commit: the next lazy batch waits
    // for it without waking this thread.
    linger_until = std::chrono::steady_clock::now() + options.lazy_linger;
    {
      std::lock_guard lock(mu);
      if (s.ok()) {
        latest = cp;
        counters.commits++;
        counters.records += n;
        counters.bodies_dropped += dropped;
      } else {
        counters.failed_commits++;
      }
    }
    if (s.ok()) {
      tree = std::move(new_tree);
      next_seq = new_next;
    } else {
      spdlog::error("store: commit of {} change(s) failed, nothing of it is kept: {}", items.size(), s.message());
    }
    audit::Checkpoint current;
    {
      std::lock_guard lock(mu);
      current = latest;
    }
    Items again;  // prunes with more to do: their next chunk in a later commit
    for (auto& it : items) {
      if (s.ok() && it.prune && it.prune->more) {
        std::lock_guard lock(mu);
        if (!stopping) {  // when closing, the rest is left for the next prune
          it.batch = Batch{};
          again.push_back(std::move(it));
          it.done = nullptr;  // its done() runs after its last chunk
          continue;
        }
      }
    }
    std::vector<std::function<void(const Status&)>> due;
    {
      std::lock_guard lock(mu);
      for (auto& it : again) Push(std::move(it));
      finished_items += items.size();
      due = TakeDue(written_waiters, finished_items);
    }
    for (auto& then : due) WhenApplied(std::move(then));
    // The callers' done() (a PublishAck to encode, deliveries to hand to the
    // router) and the freeing of their batches run on the completion
    // thread, in commit order, while this thread commits the next batch.
    // A small commit with nothing ahead of it there is finished here: the
    // work is a few microseconds, and handing it over would cost a wake-up
    // and a trip through the scheduler (at low rates, every commit).
    bool here = false;
    {
      std::lock_guard lock(done_mu);
      here = items.size() <= kDoneHereItems && completed.empty() && !done_running;
      if (!here) completed.push_back({std::move(items), s, std::move(current)});
    }
    if (here) {
      for (auto& it : items) {
        if (it.done) it.done(s, current, it.result);
      }
    } else {
      done_cv.notify_one();
    }
  }
}

void Store::Impl::DoneLoop() {
  pthread_setname_np(pthread_self(), "store-done");
  for (;;) {
    Completed c;
    {
      std::unique_lock lock(done_mu);
      done_running = false;
      done_cv.wait(lock, [&] { return !completed.empty() || done_stopping; });
      if (completed.empty()) return;
      c = std::move(completed.front());
      completed.pop_front();
      done_running = true;
    }
    for (auto& it : c.items) {
      if (it.done) it.done(c.status, c.checkpoint, it.result);
    }
  }
}

}  // namespace liaison::broker
