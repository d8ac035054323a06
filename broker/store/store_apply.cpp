// The store's applier thread (ApplyLoop): writes the groups the writer
// logged into the database behind it, netting out what later groups undo,
// then lets the commit log release them; and WaitApplied / WhenApplied for
// those who need the database to have caught up.
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "broker/store/audit_index.h"
#include "broker/store/audit_indexer.h"
#include "broker/store/commit_log.h"
#include "broker/store/log_group.h"
#include "broker/store/store_impl.h"

namespace liaison::broker {
namespace {

// Bound SQLITE_STATIC: they must outlive the statements.
const std::string kPrunedThrough = "pruned_through";
const std::string kLogAppliedKey = kLogApplied;
const std::string kLastDeliveryIdKey = kLastDeliveryId;
const std::string kNone;

}  // namespace

// Inserts the pending audit records (consecutive seqs, at most
// audit_chunks::kMaxRecords) as one chunk (applier).
Status Store::Impl::FlushRecords() {
  if (pending_records.empty()) return Status::Ok();
  audit_chunks::BindInsert(insert_chunk.get(), static_cast<int64_t>(pending_first_seq), pending_records, &chunk_blobs);
  pending_records.clear();
  return insert_chunk.Run("insert audit records");
}

// The queue changes of groups, netted (Apply): new messages and deliveries
// take the later changes to themselves before they are inserted, those of
// later groups too (later, logged but not applied yet: their own turn then
// finds nothing left to change); only changes to rows applied earlier are
// written as updates. *dropped counts bodies deleted from the database
// (not those that never reached it).
Status Store::Impl::WriteQueueChanges(std::deque<LogGroup>& groups, const LaterChanges* later, size_t* dropped) {
  std::unordered_map<int64_t, StoredMessage*> messages;
  struct New {
    StoredDelivery* d;
    DeliveryState state;
    bool folded = false;  // written as its recipient in the message's delivered column
  };
  std::unordered_map<int64_t, New> deliveries;
  std::vector<StoredMessage*> message_order;
  std::vector<int64_t> delivery_order;
  std::vector<std::pair<int64_t, DeliveryState>> finished;
  std::vector<std::pair<int64_t, uint32_t>> attempts;
  std::vector<int64_t> drops;
  std::vector<std::pair<int64_t, int64_t>> recalls;
  for (auto& g : groups) {
    for (auto& b : g.batches) {
      if (b.new_message) {
        messages[b.new_message->row] = &*b.new_message;
        message_order.push_back(&*b.new_message);
      }
      for (auto& d : b.new_deliveries) {
        deliveries[d.id] = {&d, DeliveryState::kPending};
        delivery_order.push_back(d.id);
      }
      for (const auto& [id, state] : b.finished) {
        auto it = deliveries.find(id);
        if (it == deliveries.end()) {
          if (finished_ahead.erase(id) != 0) continue;  // written when the delivery was
          finished.emplace_back(id, state);
        } else if (it->second.state == DeliveryState::kPending) {  // the first to finish it counts, as in SQL
          it->second.state = state;
          it->second.d->payload.clear();
        }
      }
      for (const auto& [id, n] : b.attempts) {
        auto it = deliveries.find(id);
        if (it == deliveries.end()) {
          attempts.emplace_back(id, n);
        } else {
          it->second.d->attempts = n;
        }
      }
      for (int64_t row : b.drop_bodies) {
        auto it = messages.find(row);
        if (it == messages.end()) {
          if (dropped_ahead.erase(row) != 0) continue;  // never written
          drops.push_back(row);
        } else {
          it->second->body.clear();
        }
      }
    }
    for (const auto& [row, ms] : g.recalls) {
      auto it = messages.find(row);
      if (it == messages.end()) {
        recalls.emplace_back(row, ms);
      } else {
        it->second->recalled_ms = ms;
      }
    }
  }
  if (later) {
    for (const auto& [id, state] : later->finished) {
      auto it = deliveries.find(id);
      if (it != deliveries.end() && it->second.state == DeliveryState::kPending) {
        it->second.state = state;
        it->second.d->payload.clear();
        finishing_ahead.push_back(id);
      }
    }
    for (int64_t row : later->drop_bodies) {
      if (auto it = messages.find(row); it != messages.end()) {
        it->second->body.clear();
        dropping_ahead.push_back(row);
      }
    }
  }
  // A transaction that cannot fit takes all the space there is before it
  // fails (SQLite writes its WAL as it goes), and the commit log needs some
  // to go on taking commits, acknowledgements in particular: those make
  // the next try smaller (their bodies are netted out). So a transaction
  // that plainly does not fit is not started.
  uint64_t need = 64u << 10;
  for (const StoredMessage* m : message_order) need += 3 * (m->body.size() + m->ack.size() + m->recipients.size() + 256);
  for (int64_t id : delivery_order) need += 3 * (deliveries[id].d->payload.size() + 128);
  for (const auto& g : groups) {
    for (const auto& r : g.records) need += 3 * r.leaf.size();
  }
  // A copy acknowledged before its message reached the database is only
  // its recipient in the message's row (schema 9); agency ids hold no comma.
  std::unordered_map<int64_t, std::string> delivered;  // message row -> recipients
  int64_t last_delivery_id = 0;
  for (int64_t id : delivery_order) {
    New& n = deliveries[id];
    last_delivery_id = std::max(last_delivery_id, id);
    if (n.state == DeliveryState::kDelivered && n.d->kind == DeliveryKind::kMessage &&
        messages.count(n.d->message_row) != 0 && n.d->recipient.find(',') == std::string::npos) {
      std::string& to = delivered[n.d->message_row];
      to += to.empty() ? "" : ",";
      to += n.d->recipient;
      n.folded = true;
    }
  }
  struct statvfs fs {};
  if (::statvfs(options.path.c_str(), &fs) == 0 && static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize < need) {
    return Status::IoError("not enough space for the database: about " + std::to_string(need >> 10) + " KiB needed, " +
                           std::to_string((static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize) >> 10) + " KiB free");
  }
  // Row k of a statement: its parameters after those of rows 0..k-1.
  const int per_row = insert_message.parameters();
  auto bind_message = [&](Stmt& stmt, int k, const StoredMessage& m) {
    int i = per_row * k + 1;
    stmt.Int(i++, m.row);
    for (const std::string* f : {&m.sender, &m.message_id, &m.case_id, &m.message_type}) stmt.Text(i++, *f);
    stmt.Int(i++, m.tlp);
    for (const std::string* f : {&m.purpose, &m.agreement, &m.recipients}) stmt.Text(i++, *f);
    stmt.Int(i++, m.received_ms);
    stmt.Int(i++, m.expires_ms);
    stmt.Int(i++, m.want_reports ? 1 : 0);
    stmt.Blob(i++, m.publish_digest.data(), m.publish_digest.size());
    stmt.Blob(i++, m.ack.data(), m.ack.size());
    if (m.body.empty()) {  // dropped before it was applied
      sqlite3_bind_null(stmt.get(), i++);
    } else {
      stmt.Blob(i++, m.body.data(), m.body.size());
    }
    stmt.Int(i++, m.recalled_ms);
    const auto to = delivered.find(m.row);
    stmt.Text(i++, to == delivered.end() ? kNone : to->second);
  };
  for (size_t i = 0; i < message_order.size();) {
    const bool many = message_order.size() - i >= static_cast<size_t>(kMessageRowsPerInsert);
    Stmt& stmt = many ? insert_messages : insert_message;
    const int n = many ? kMessageRowsPerInsert : 1;
    for (int k = 0; k < n; ++k) bind_message(stmt, k, *message_order[i++]);
    if (Status s = stmt.Run("insert message"); !s.ok()) return s;
  }
  for (int64_t id : delivery_order) {
    const New& n = deliveries[id];
    if (n.folded) continue;
    const StoredDelivery& d = *n.d;
    insert_delivery.Int(1, d.id);
    insert_delivery.Text(2, d.recipient);
    insert_delivery.Int(3, d.message_row);
    insert_delivery.Int(4, static_cast<int>(d.kind));
    insert_delivery.Int(5, static_cast<int>(n.state));
    insert_delivery.Int(6, d.attempts);
    insert_delivery.Int(7, d.named ? 1 : 0);
    if (d.payload.empty()) {
      sqlite3_bind_null(insert_delivery.get(), 8);
    } else {
      insert_delivery.Blob(8, d.payload.data(), d.payload.size());
    }
    if (Status s = insert_delivery.Run("insert delivery"); !s.ok()) return s;
  }
  if (last_delivery_id > 0) {
    set_store_info.Text(1, kLastDeliveryIdKey);
    set_store_info.Int(2, last_delivery_id);
    if (Status s = set_store_info.Run("record the last delivery id"); !s.ok()) return s;
  }
  for (const auto& [id, state] : finished) {
    if (Status s = finish_delivery.RunWith("finish delivery", static_cast<int>(state), id); !s.ok()) return s;
  }
  for (const auto& [id, n] : attempts) {
    if (Status s = set_attempts.RunWith("count attempt", n, id); !s.ok()) return s;
  }
  for (int64_t row : drops) {
    if (Status s = drop_body.RunWith("drop body", row); !s.ok()) return s;
    *dropped += static_cast<size_t>(sqlite3_changes(db));  // none if netted out before
  }
  for (const auto& [row, ms] : recalls) {
    if (Status s = mark_recalled.RunWith("mark recalled", ms, row); !s.ok()) return s;
  }
  return Status::Ok();
}

// Writes groups into the database in one transaction, with the commit
// log's watermark. What a later group undoes to an earlier one in the same
// transaction is never written (a body dropped, a delivery finished, a
// count of attempts): at a steady rate most messages are delivered and
// acknowledged before their group is applied, so their bodies never reach
// the database at all.
Status Store::Impl::Apply(std::deque<LogGroup>& groups, const LaterChanges* later, size_t* dropped) {
  if (groups.empty()) return Status::Ok();
  finishing_ahead.clear();
  dropping_ahead.clear();
  if (Status s = Exec(db, "BEGIN IMMEDIATE"); !s.ok()) return s;
  Status s = WriteGroups(groups, later, dropped);
  if (s.ok()) s = Exec(db, "COMMIT");
  if (s.ok()) {
    finished_ahead.insert(finishing_ahead.begin(), finishing_ahead.end());
    dropped_ahead.insert(dropping_ahead.begin(), dropping_ahead.end());
  }
  if (!s.ok()) {
    pending_records.clear();
    Exec(db, "ROLLBACK");
  }
  return s;
}

// Apply's transaction: the queue changes, the records, then pruning (which
// only reaches records applied before its group was logged: PruneChunk
// waits for that) and checkpoint rows, and the watermark.
Status Store::Impl::WriteGroups(std::deque<LogGroup>& groups, const LaterChanges* later, size_t* dropped) {
  if (Status s = WriteQueueChanges(groups, later, dropped); !s.ok()) return s;
  for (const auto& g : groups) {
    for (const auto& r : g.records) {
      // A chunk holds consecutive seqs only.
      if (!pending_records.empty() && r.record.seq != pending_first_seq + pending_records.size()) {
        if (Status s = FlushRecords(); !s.ok()) return s;
      }
      if (pending_records.empty()) pending_first_seq = r.record.seq;
      pending_records.push_back(
          {r.record.time_ms, r.leaf, std::string_view(reinterpret_cast<const char*>(r.hash.data()), r.hash.size())});
      if (pending_records.size() == static_cast<size_t>(audit_chunks::kMaxRecords)) {
        if (Status s = FlushRecords(); !s.ok()) return s;
      }
    }
  }
  if (Status s = FlushRecords(); !s.ok()) return s;
  for (const auto& g : groups) {
    for (const auto& p : g.prunes) {
      if (Status s = audit_chunks::Prune(db, p.after, p.through); !s.ok()) return s;
      set_info.Text(1, kPrunedThrough);
      set_info.Int(2, static_cast<int64_t>(p.through));
      if (Status s = set_info.Run("record pruning"); !s.ok()) return s;
      (*dropped)++;  // pruned fields, like dropped bodies, must leave the WAL
    }
    if (g.checkpoint_row) {
      insert_checkpoint.Int(1, static_cast<int64_t>(g.checkpoint_row->tree_size));
      insert_checkpoint.Int(2, g.checkpoint_row->time_ms);
      insert_checkpoint.Text(3, g.checkpoint_row->text);
      if (Status s = insert_checkpoint.Run("insert checkpoint"); !s.ok()) return s;
    }
  }
  set_store_info.Text(1, kLogAppliedKey);
  set_store_info.Int(2, static_cast<int64_t>(groups.back().lsn));
  return set_store_info.Run("record the commit log's watermark");
}

// The applier: writes logged groups into the database (Apply) once they
// are due (TakeGroups), when many have gathered, or when someone waits for
// them; then lets the log release them and the audit
// indexer index their records, and keeps the WAL short (what the writer
// did after each commit before the commit log).
void Store::Impl::ApplyLoop() {
  pthread_setname_np(pthread_self(), "store-apply");
  int failures = 0;  // in a row
  std::deque<LogGroup> groups;
  LaterChanges later;
  while (TakeGroups(&groups, &later)) {
    size_t dropped = 0;
    if (const Status s = Apply(groups, &later, &dropped); !s.ok()) {
      if (!ApplyFailed(groups, s, failures++)) return;
      continue;
    }
    failures = 0;
    Applied(groups, dropped);
  }
}

// Waits until the oldest logged group is due and takes those that have
// waited the hold (kApplyHoldDivisor), with what the younger ones say about
// them in *later; or all of them, at once, when someone waits for the
// database, many have gathered, or the store is stopping. False once
// stopping and nothing is left: the applier then ends.
bool Store::Impl::TakeGroups(std::deque<LogGroup>* groups, LaterChanges* later) {
  std::unique_lock lock(apply_mu);
  bool all = false;
  std::chrono::steady_clock::time_point cut;  // groups logged up to this are taken
  for (;;) {
    if (!to_apply.empty()) {
      // (What a take leaves behind may weigh little even under load: the
      // next take keeps the delay of the last.)
      const bool heavy = to_apply_records >= kApplyEarlyWeight || apply_heavy;
      const auto delay = heavy ? options.apply_delay : std::min(options.apply_early, options.apply_delay);
      const auto hold = delay / kApplyHoldDivisor;
      const auto due = to_apply.front().logged + delay + hold;
      const auto now = std::chrono::steady_clock::now();
      all = apply_now || apply_stopping || to_apply_records >= kApplyNowRecords;
      if (all || now >= due) {
        cut = now - hold;
        break;
      }
      apply_cv.wait_until(lock, due);
      continue;
    }
    if (apply_stopping) {
      applier_gone = true;
      applied_cv.notify_all();
      const uint64_t lsn = applied_lsn;
      lock.unlock();
      if (lsn > 0) ReleaseLog(lsn, true);
      return false;
    }
    apply_now = false;
    if (log_released) {
      apply_cv.wait(lock);
      continue;
    }
    // Quiet for a moment: the log lets go of its current segment too, so
    // that nothing applied stays on disk while the broker idles. (Under
    // load segments go by size and age; starting one costs a file and a
    // directory sync, not worth paying after every apply.)
    if (!apply_cv.wait_for(lock, kQuietForRelease, [&] { return !to_apply.empty() || apply_stopping; })) {
      const uint64_t lsn = applied_lsn;
      lock.unlock();
      ReleaseLog(lsn, true);
      lock.lock();
      log_released = true;
    }
  }
  groups->clear();
  later->clear();
  apply_heavy = to_apply_records >= kApplyEarlyWeight;
  if (all) {
    groups->swap(to_apply);
    to_apply_records = 0;
    apply_now = false;
    return true;
  }
  // The oldest is due, so at least it is taken.
  while (!to_apply.empty() && to_apply.front().logged <= cut) {
    to_apply_records -= Weight(to_apply.front());
    groups->push_back(std::move(to_apply.front()));
    to_apply.pop_front();
  }
  for (const LogGroup& g : to_apply) {
    for (const Batch& b : g.batches) {
      later->finished.insert(later->finished.end(), b.finished.begin(), b.finished.end());
      later->drop_bodies.insert(later->drop_bodies.end(), b.drop_bodies.begin(), b.drop_bodies.end());
    }
  }
  return true;
}

// Puts the groups back to be tried again later, tells those waiting for
// the database, and gives back the space the failed transaction took;
// failures counts those before this one in a row. False when stopping and
// it keeps failing: what is left is applied from the commit log at the
// next start.
bool Store::Impl::ApplyFailed(std::deque<LogGroup>& groups, const Status& s, int failures) {
  std::vector<std::function<void(const Status&)>> failed;
  {
    std::lock_guard lock(apply_mu);
    if (apply_error.ok()) {
      spdlog::error("store: {} commit(s) could not be written into the database (they are safe in the commit "
                    "log; retrying from {} ms on): {}",
                    groups.size(), kApplyRetry.count(), s.message());
    }
    apply_error = s;
    apply_failures++;
    for (auto it = groups.rbegin(); it != groups.rend(); ++it) {  // (they keep their time: due at once)
      to_apply_records += Weight(*it);
      to_apply.push_front(std::move(*it));
    }
    groups.clear();
    for (auto& w : apply_waiters) failed.push_back(std::move(w.second));
    apply_waiters.clear();
    if (apply_stopping && ++failures_while_stopping >= 3) {
      spdlog::error("store: stopping with {} commit(s) not in the database; they are applied from the commit "
                    "log at the next start",
                    to_apply.size());
      to_apply.clear();
      applier_gone = true;
      applied_cv.notify_all();
      return false;
    }
  }
  applied_cv.notify_all();
  for (auto& f : failed) f(s);
  // A transaction that failed for want of space leaves the WAL as long as
  // it got; that space is what the commit log needs to go on taking commits
  // (acknowledgements, whose bodies then need not be written at all). So
  // the WAL is cut back to what was committed,
  sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
  wal_backfilled.store(0, std::memory_order_relaxed);
  // and the applier tries again less and less often (each try takes the
  // space again while it runs).
  const auto retry = std::min<std::chrono::milliseconds>(kApplyRetry * (1 << std::min(failures, 5)), kApplyRetryMax);
  std::unique_lock lock(apply_mu);
  apply_cv.wait_for(lock, retry, [&] { return apply_stopping; });
  return true;
}

// After a successful apply: the messages leave the unapplied set, those
// waiting for the database go on, the log releases the groups, the indexer
// learns of their records, and the WAL is kept short.
void Store::Impl::Applied(std::deque<LogGroup>& groups, size_t dropped) {
  const uint64_t lsn = groups.back().lsn;
  // The records' index entries go to the indexer from here, so that it need
  // not read them back from the database.
  uint64_t first_seq = 0, last_seq = 0;
  std::vector<audit_index::Entry> entries;
  std::string last_hash;
  if (indexer) {
    size_t n = 0;
    for (const auto& g : groups) n += g.records.size();
    entries.reserve(4 * n);
    const LoggedRecord* last = nullptr;
    for (const auto& g : groups) {
      for (const LoggedRecord& lr : g.records) {
        const audit::Record& r = lr.record;
        if (first_seq == 0) first_seq = r.seq;
        last_seq = r.seq;
        last = &lr;
        audit_index::AddEntries(&entries, r.seq, r.message_id, r.case_id, r.sender, r.recipient);
      }
    }
    if (last) last_hash.assign(reinterpret_cast<const char*>(last->hash.data()), last->hash.size());
  }
  {
    std::vector<std::string> keys;  // made outside the lock
    for (const auto& g : groups) {
      for (const auto& b : g.batches) {
        if (b.new_message) keys.push_back(Key(b.new_message->sender, b.new_message->message_id));
      }
    }
    Forget(keys);
  }
  std::vector<std::function<void(const Status&)>> ready;
  {
    std::lock_guard lock(apply_mu);
    if (!apply_error.ok()) spdlog::info("store: the database can be written again; the commit log is applied");
    apply_error = Status::Ok();
    applied_lsn = lsn;
    for (const auto& g : groups) unapplied_bytes -= g.bytes;
    ready = TakeDue(apply_waiters, lsn);
  }
  applied_cv.notify_all();
  for (auto& f : ready) f(Status::Ok());
  groups.clear();  // frees the bodies
  ReleaseLog(lsn, false);
  log_released = false;
  if (last_seq != 0 && indexer) indexer->Committed(first_seq, last_seq, std::move(entries), std::move(last_hash));
  // Deleted bodies and pruned fields must not stay in the WAL.
  if (dropped > 0) bodies_dropped = true;
  // What counts is how many frames the last checkpoint has not copied yet.
  // (Counting all of them woke the checkpointer after every commit once the
  // WAL had grown.)
  const int frames = wal_frames.load(std::memory_order_relaxed);
  const int uncopied = UncopiedFrames();
  if (uncopied >= kWakeCheckpointerFrames) wal_cv.notify_one();
  if (frames >= kRestartWalFrames && uncopied > 0) {
    if (uncopied <= kRestartCopyFrames) {
      // PASSIVE never waits: if the checkpointer is running, the next
      // apply tries again.
      int log_frames = 0, done = 0;
      if (sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, &log_frames, &done) == SQLITE_OK &&
          done >= 0) {
        wal_backfilled.store(done, std::memory_order_relaxed);
      }
    } else {
      wal_cv.notify_one();  // the checkpointer copies most of it first
    }
  }
  last_commit_ns.store(std::chrono::steady_clock::now().time_since_epoch().count(), std::memory_order_relaxed);
}

void Store::Impl::ReleaseLog(uint64_t lsn, bool rotate_current) {
  if (Status s = log->Release(lsn, rotate_current); !s.ok()) spdlog::warn("store: commit log: {}", s.message());
}

// Waits until every group logged so far is in the database (or applying
// fails meanwhile).
Status Store::Impl::WaitApplied() {
  std::unique_lock lock(apply_mu);
  const uint64_t target = written_lsn;
  if (applied_lsn >= target) return Status::Ok();
  const uint64_t failures = apply_failures;
  apply_now = true;
  apply_cv.notify_one();
  applied_cv.wait(lock, [&] { return applied_lsn >= target || apply_failures != failures || applier_gone; });
  if (applied_lsn >= target) return Status::Ok();
  if (!apply_error.ok()) return apply_error;
  return Status::Unavailable("the store is closing");
}

void Store::Impl::WhenApplied(std::function<void(const Status&)> then) {
  Status s;
  {
    std::lock_guard lock(apply_mu);
    if (applied_lsn < written_lsn) {
      if (!applier_gone) {
        apply_waiters.emplace_back(written_lsn, std::move(then));
        apply_now = true;
        apply_cv.notify_one();
        return;
      }
      s = Status::Unavailable("the store is closing");
    }
  }
  then(s);
}

}  // namespace liaison::broker
