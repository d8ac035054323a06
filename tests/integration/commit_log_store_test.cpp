// The store with its commit log (broker/store/commit_log.h, store.h): a
// commit is durable once logged, the database is applied behind it with
// what later commits undo netted out, and after kill -9 the next Open applies
// what the log holds. Real files; the crash is a real child process killed
// with SIGKILL.
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <optional>
#include <string>
#include <thread>

#include "broker/store/log_group.h"
#include "broker/store/store.h"
#include "common/audit_record.h"
#include "common/files.h"
#include "common/merkle.h"
#include "tests/integration/test_support.h"
#include "tests/temp_dir.h"

using namespace liaison;
using liaison::test::QueryInt;
using liaison::test::StoreFileBytes;
using liaison::test::StoreLogBytes;
using liaison::test::StoreOptions;
using liaison::test::TempDir;
using liaison::test::WaitFor;

namespace {

audit::Record Record(const std::string& event, const std::string& message_id) {
  audit::Record r;
  r.time_ms = 1'800'000'000'000;
  r.event = event;
  r.actor = "police";
  r.sender = "police";
  r.recipient = "school";
  r.message_id = message_id;
  r.case_id = "CASE-1";
  r.decision = "permit";
  return r;
}

// A publish of message_id with body to school: the message, one delivery,
// one record.
broker::Batch Publish(broker::Store& store, const std::string& message_id, const std::string& body,
                      int64_t* delivery_id = nullptr) {
  broker::Batch b;
  broker::StoredMessage m;
  m.row = store.NextMessageRow();
  m.sender = "police";
  m.message_id = message_id;
  m.case_id = "CASE-1";
  m.recipients = "school";
  m.publish_digest = std::string(32, 'd') + message_id;
  m.ack = "ack of " + message_id;
  m.body = body;
  broker::StoredDelivery d;
  d.id = store.NextDeliveryId();
  d.recipient = "school";
  d.message_row = m.row;
  if (delivery_id) *delivery_id = d.id;
  b.new_message = m;
  b.new_deliveries.push_back(d);
  b.records.push_back(Record("queued", message_id));
  return b;
}

// The delivery finished and recorded (the body stays: other copies wait).
broker::Batch Delivered(int64_t delivery_id, const std::string& message_id) {
  broker::Batch b;
  b.finished.emplace_back(delivery_id, broker::DeliveryState::kDelivered);
  b.records.push_back(Record("delivered", message_id));
  return b;
}

// The delivery acknowledged: finished, body dropped, recorded.
broker::Batch Acknowledged(int64_t delivery_id, int64_t row, const std::string& message_id) {
  broker::Batch b = Delivered(delivery_id, message_id);
  b.drop_bodies.push_back(row);
  return b;
}

std::string FileBytes(const std::string& path) {
  auto b = ReadFile(path, 1 << 30);
  return b.ok() ? *b : std::string();
}

int64_t Count(const std::string& db_path, const std::string& sql) {
  const int64_t v = QueryInt(db_path, sql);
  REQUIRE(v >= 0);
  return v;
}

// Options for a store in dir whose applier runs only when asked (Sync,
// WhenApplied, the reads): what is committed stays in the commit log.
broker::Store::Options Unapplied(const TempDir& dir) {
  auto o = StoreOptions(dir);
  o.apply_delay = o.apply_early = std::chrono::seconds(60);
  return o;
}

}  // namespace

TEST_CASE("a message acknowledged before its group is applied never writes its body into the database",
          "[store][commit_log]") {
  TempDir dir;
  auto o = Unapplied(dir);  // nothing is applied unless asked
  auto store = broker::Store::Open(o);
  REQUIRE(store.ok());
  const std::string marker = "Netted-body-7d41c2 that must never reach the database";
  int64_t delivery = 0;
  auto publish = Publish(**store, "0190a5c4-8d2e-7b3a-9c1d-000000000001", marker + std::string(3000, 'x'), &delivery);
  const int64_t row = publish.new_message->row;
  REQUIRE((*store)->CommitSync(std::move(publish)).ok());
  // Durable: in the commit log, not yet in the database.
  CHECK(StoreLogBytes(o.path).find(marker) != std::string::npos);
  CHECK(Count(o.path, "SELECT COUNT(*) FROM messages") == 0);
  REQUIRE((*store)->CommitSync(Acknowledged(delivery, row, "0190a5c4-8d2e-7b3a-9c1d-000000000001")).ok());
  REQUIRE((*store)->Sync().ok());
  // Applied together: the message with no body, the delivery finished (its
  // recipient in the message's delivered column, schema 9, and no row of
  // its own), both records; the body was never written to the database or
  // its WAL.
  CHECK(Count(o.path, "SELECT COUNT(*) FROM messages WHERE body IS NULL AND delivered = 'school'") == 1);
  CHECK(Count(o.path, "SELECT COUNT(*) FROM deliveries") == 0);
  CHECK(Count(o.path, "SELECT COUNT(*) FROM audit_log") == 2);
  CHECK(Count(o.path, "SELECT value FROM store_info WHERE key = 'log_applied'") == 2);
  CHECK((FileBytes(o.path) + FileBytes(o.path + "-wal")).find(marker) == std::string::npos);
  // The log lets go of it once nothing more comes (commit_log.h).
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {
    gone = StoreFileBytes(o.path).find(marker) == std::string::npos;
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(gone);
  // The message is still known: a duplicate gets the original outcome.
  auto again = (*store)->CommitSync(Publish(**store, "0190a5c4-8d2e-7b3a-9c1d-000000000001", "other"));
  REQUIRE(again.ok());
  CHECK(again->duplicate);
  CHECK(again->original.ack == "ack of 0190a5c4-8d2e-7b3a-9c1d-000000000001");
}

// The applier's look-ahead (store_impl.h, kApplyHoldDivisor): with a delay
// of 4 s, a group is applied once the oldest has waited 6 s, and only the
// groups that have waited 2 s are taken. A publish logged at 0 s and its
// acknowledgement at 5 s: the applier at 6 s takes the publish alone (a
// second either way to spare), yet writes it without its body, since the
// acknowledgement, already logged, is looked at first; the
// acknowledgement's own group follows at about 11 s, or at Sync.
namespace {

constexpr auto kLookAheadDelay = std::chrono::seconds(4);
constexpr auto kAcknowledgeAt = std::chrono::seconds(5);  // after the publish's commit returned

// Runs child on a store opened with o in a child process, which reports a
// line (child's result, newline added) and is then killed with SIGKILL;
// returns that line, or "" if the child failed first (a non-zero exit
// code: child returns nullopt, or the store did not open).
std::string ReportThenKill(const broker::Store::Options& o,
                           const std::function<std::optional<std::string>(broker::Store&)>& child) {
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(pipe_fds[0]);
    auto store = broker::Store::Open(o);
    if (!store.ok()) ::_exit(2);
    const std::optional<std::string> result = child(**store);
    if (!result) ::_exit(3);
    const std::string line = *result + "\n";
    if (::write(pipe_fds[1], line.data(), line.size()) != static_cast<ssize_t>(line.size())) ::_exit(4);
    ::pause();
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  std::string reported;
  char buf[256];
  ssize_t n;
  while (reported.find('\n') == std::string::npos && (n = ::read(pipe_fds[0], buf, sizeof buf)) > 0) {
    reported.append(buf, static_cast<size_t>(n));
  }
  ::close(pipe_fds[0]);
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  INFO("the child's wait status: " << status);
  CHECK(WIFSIGNALED(status));
  return reported.find('\n') == std::string::npos ? std::string() : reported;
}

broker::Store::Options LookAhead(const TempDir& dir) {
  auto o = StoreOptions(dir);
  o.apply_delay = o.apply_early = kLookAheadDelay;
  return o;
}

// The database holds n message rows (the first apply has run).
bool HasMessageRows(const std::string& db_path, int64_t n) {
  return QueryInt(db_path, "SELECT COUNT(*) FROM messages") == n;
}

}  // namespace

TEST_CASE("a message applied before its acknowledgement's group is netted out by the applier's look-ahead",
          "[store][commit_log]") {
  TempDir dir;
  auto o = LookAhead(dir);
  auto store = broker::Store::Open(o);
  REQUIRE(store.ok());
  const std::string marker = "Looked-ahead-body-5be0 that must never reach the database";
  const std::string id = "0190a5c4-8d2e-7b3a-9c1d-000000000001";
  const std::string other = "0190a5c4-8d2e-7b3a-9c1d-000000000002";
  int64_t delivery = 0, other_delivery = 0;
  auto publish = Publish(**store, id, marker + std::string(3000, 'x'), &delivery);
  const int64_t row = publish.new_message->row;
  REQUIRE((*store)->CommitSync(std::move(publish)).ok());
  REQUIRE((*store)->CommitSync(Publish(**store, other, "another body", &other_delivery)).ok());
  std::this_thread::sleep_until(std::chrono::steady_clock::now() + kAcknowledgeAt);
  REQUIRE((*store)->CommitSync(Acknowledged(delivery, row, id)).ok());
  // The other copy is finished twice, in two later groups: the first
  // counts, as if the groups had been applied together.
  broker::Batch expired;
  expired.finished.emplace_back(other_delivery, broker::DeliveryState::kExpired);
  expired.records.push_back(Record("expired", other));
  REQUIRE((*store)->CommitSync(std::move(expired)).ok());
  REQUIRE((*store)->CommitSync(Delivered(other_delivery, other)).ok());
  REQUIRE(WaitFor([&] { return HasMessageRows(o.path, 2); }));
  // The publishes' groups alone (their records, the watermark at the
  // second), the first message already without its body and its copy
  // already delivered, the other copy already expired.
  auto check_queue = [&] {
    CHECK(Count(o.path, "SELECT COUNT(*) FROM messages WHERE body IS NULL AND delivered = 'school'") == 1);
    CHECK(Count(o.path, "SELECT COUNT(*) FROM messages WHERE body IS NOT NULL") == 1);
    CHECK(Count(o.path, "SELECT COUNT(*) FROM deliveries") == 1);
    CHECK(Count(o.path, "SELECT state FROM deliveries WHERE id = " + std::to_string(other_delivery)) ==
          static_cast<int64_t>(broker::DeliveryState::kExpired));
  };
  CHECK(Count(o.path, "SELECT COUNT(*) FROM audit_log") == 2);
  CHECK(Count(o.path, "SELECT value FROM store_info WHERE key = 'log_applied'") == 2);
  check_queue();
  // Then the later groups: their records, nothing left to change.
  REQUIRE((*store)->Sync().ok());
  CHECK(Count(o.path, "SELECT COUNT(*) FROM audit_log") == 5);
  CHECK(Count(o.path, "SELECT value FROM store_info WHERE key = 'log_applied'") == 5);
  check_queue();
  CHECK((FileBytes(o.path) + FileBytes(o.path + "-wal")).find(marker) == std::string::npos);
  int pending = 0;
  REQUIRE((*store)->LoadPending([&](broker::StoredDelivery, const broker::StoredMessage&) { pending++; }).ok());
  CHECK(pending == 0);
}

TEST_CASE("after kill -9 between a look-ahead apply and the acknowledgement's own, the next Open applies the rest",
          "[store][commit_log][crash]") {
  TempDir dir;
  auto o = LookAhead(dir);
  const std::string id = "0190a5c4-8d2e-7b3a-9c1d-000000000001";
  const std::string reported = ReportThenKill(o, [&](broker::Store& store) -> std::optional<std::string> {
    int64_t delivery = 0;
    auto publish = Publish(store, id, "the body", &delivery);
    const int64_t row = publish.new_message->row;
    if (!store.CommitSync(std::move(publish)).ok()) return std::nullopt;
    std::this_thread::sleep_until(std::chrono::steady_clock::now() + kAcknowledgeAt);
    if (!store.CommitSync(Acknowledged(delivery, row, id)).ok()) return std::nullopt;
    if (!WaitFor([&] { return HasMessageRows(o.path, 1); })) return std::nullopt;
    return "applied";
  });
  REQUIRE(reported == "applied\n");
  // Killed with the publish applied (netted) and the acknowledgement only
  // in the commit log (its own apply was due 5 s later).
  CHECK(Count(o.path, "SELECT value FROM store_info WHERE key = 'log_applied'") == 1);
  CHECK(Count(o.path, "SELECT COUNT(*) FROM audit_log") == 1);
  CHECK(Count(o.path, "SELECT COUNT(*) FROM messages WHERE body IS NULL AND delivered = 'school'") == 1);
  auto store = broker::Store::Open(o);
  REQUIRE(store.ok());
  CHECK((*store)->latest().tree_size == 2);
  CHECK(Count(o.path, "SELECT COUNT(*) FROM audit_log") == 2);
  CHECK(Count(o.path, "SELECT COUNT(*) FROM messages WHERE body IS NULL AND delivered = 'school'") == 1);
  CHECK(Count(o.path, "SELECT COUNT(*) FROM deliveries") == 0);
  int pending = 0;
  REQUIRE((*store)->LoadPending([&](broker::StoredDelivery, const broker::StoredMessage&) { pending++; }).ok());
  CHECK(pending == 0);
  auto again = (*store)->CommitSync(Publish(**store, id, "the body"));
  REQUIRE(again.ok());
  CHECK(again->duplicate);
}

TEST_CASE("a duplicate is found whether its first copy is applied or only logged", "[store][commit_log]") {
  TempDir dir;
  auto o = Unapplied(dir);
  auto store = broker::Store::Open(o);
  REQUIRE(store.ok());
  // Two copies in one commit, and one more while the first is only logged.
  // (Checked on this thread: Catch's assertions are not thread-safe.)
  std::promise<Result<broker::BatchResult>> first, second;
  auto to = [](std::promise<Result<broker::BatchResult>>& p) {
    return [&p](const Status& s, const audit::Checkpoint&, const broker::BatchResult& r) {
      p.set_value(s.ok() ? Result<broker::BatchResult>(r) : Result<broker::BatchResult>(s));
    };
  };
  (*store)->Commit(Publish(**store, "0190a5c4-8d2e-7b3a-9c1d-0000000000a1", "one"), to(first));
  (*store)->Commit(Publish(**store, "0190a5c4-8d2e-7b3a-9c1d-0000000000a1", "two"), to(second));
  auto r1 = first.get_future().get();
  auto r2 = second.get_future().get();
  REQUIRE(r1.ok());
  REQUIRE(r2.ok());
  CHECK_FALSE(r1->duplicate);
  CHECK(r2->duplicate);
  auto logged = (*store)->CommitSync(Publish(**store, "0190a5c4-8d2e-7b3a-9c1d-0000000000a1", "three"));
  REQUIRE(logged.ok());
  CHECK(logged->duplicate);
  REQUIRE((*store)->Sync().ok());
  auto applied = (*store)->CommitSync(Publish(**store, "0190a5c4-8d2e-7b3a-9c1d-0000000000a1", "four"));
  REQUIRE(applied.ok());
  CHECK(applied->duplicate);
  CHECK(applied->original.ack == "ack of 0190a5c4-8d2e-7b3a-9c1d-0000000000a1");
  REQUIRE((*store)->Sync().ok());
  CHECK(Count(o.path, "SELECT COUNT(*) FROM messages") == 1);
  CHECK(Count(o.path, "SELECT COUNT(*) FROM audit_log") == 1);
}

TEST_CASE("a new message id is not looked up in the database, and a used one is, also after a restart",
          "[store][commit_log]") {
  TempDir dir;
  auto o = StoreOptions(dir);
  auto id = [](int i) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "0190a5c4-8d2e-7b3a-9c1d-%012d", i);
    return std::string(buf);
  };
  {
    auto store = broker::Store::Open(o);
    REQUIRE(store.ok());
    for (int i = 0; i < 200; ++i) {
      auto r = (*store)->CommitSync(Publish(**store, id(i), "body " + std::to_string(i)));
      REQUIRE(r.ok());
      CHECK_FALSE(r->duplicate);
    }
    CHECK((*store)->counters().duplicate_lookups == 0);
    REQUIRE((*store)->Sync().ok());
    auto again = (*store)->CommitSync(Publish(**store, id(5), "body 5"));
    REQUIRE(again.ok());
    CHECK(again->duplicate);
    CHECK(again->original.ack == "ack of " + id(5));
    CHECK((*store)->counters().duplicate_lookups == 1);
  }
  // Reopened: the filter is filled from the database.
  auto store = broker::Store::Open(o);
  REQUIRE(store.ok());
  for (int i : {0, 7, 199}) {
    auto r = (*store)->CommitSync(Publish(**store, id(i), "body"));
    REQUIRE(r.ok());
    CHECK(r->duplicate);
  }
  CHECK((*store)->counters().duplicate_lookups == 3);
  auto fresh = (*store)->CommitSync(Publish(**store, id(200), "body 200"));
  REQUIRE(fresh.ok());
  CHECK_FALSE(fresh->duplicate);
  CHECK((*store)->counters().duplicate_lookups == 3);
  REQUIRE((*store)->Sync().ok());
  CHECK(Count(o.path, "SELECT COUNT(*) FROM messages") == 201);
}

TEST_CASE("Sync covers what is still queued to the writer", "[store][commit_log]") {
  TempDir dir;
  auto o = Unapplied(dir);
  auto store = broker::Store::Open(o);
  REQUIRE(store.ok());
  // Queued without waiting, many commits' worth (each Append is its own
  // batch; the writer takes them a group at a time).
  for (int i = 0; i < 2000; ++i) (*store)->Append({Record("policy_loaded", ""), Record("policy_loaded", "")}, nullptr);
  REQUIRE((*store)->Sync().ok());
  CHECK(Count(o.path, "SELECT COUNT(*) FROM audit_log") == 4000);
}

TEST_CASE("WhenApplied runs once what was committed before it is in the database", "[store][commit_log]") {
  TempDir dir;
  auto o = Unapplied(dir);
  auto store = broker::Store::Open(o);
  REQUIRE(store.ok());
  REQUIRE((*store)->AppendSync({Record("policy_loaded", "")}).ok());
  CHECK(Count(o.path, "SELECT COUNT(*) FROM audit_log") == 0);
  // What the database held when then() ran, read there (QueryInt: Catch's
  // assertions are not thread-safe).
  std::promise<std::pair<bool, int64_t>> seen;
  (*store)->WhenApplied([&](const Status& s) {
    seen.set_value({s.ok(), QueryInt(o.path, "SELECT COUNT(*) FROM audit_log")});
  });
  auto f = seen.get_future();
  REQUIRE(f.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  const auto [ok, n] = f.get();
  CHECK(ok);
  CHECK(n == 1);
  // Nothing waiting: it runs at once.
  bool ran = false;
  (*store)->WhenApplied([&](const Status& s) { ran = s.ok(); });
  CHECK(ran);
}

TEST_CASE("WhenApplied covers what is still queued, a lingering lazy batch too", "[store][commit_log]") {
  TempDir dir;
  auto o = Unapplied(dir);
  o.lazy_linger = std::chrono::seconds(30);  // a lazy batch alone would wait this long
  auto store = broker::Store::Open(o);
  REQUIRE(store.ok());
  int64_t delivery = 0;
  broker::Batch publish = Publish(**store, "m-1", "the body", &delivery);
  const int64_t row = publish.new_message->row;
  REQUIRE((*store)->CommitSync(std::move(publish)).ok());
  // The acknowledgement is lazy and queued without waiting; WhenApplied
  // right behind it must see it committed and applied, as a forward of
  // the message just acknowledged needs (FindDelivered).
  broker::Batch ack = Acknowledged(delivery, row, "m-1");
  ack.lazy = true;
  (*store)->Commit(std::move(ack), nullptr);
  std::promise<std::pair<bool, int64_t>> seen;
  (*store)->WhenApplied([&](const Status& s) {
    seen.set_value({s.ok(), QueryInt(o.path, "SELECT COUNT(*) FROM messages WHERE delivered = 'school'")});
  });
  auto f = seen.get_future();
  REQUIRE(f.wait_for(std::chrono::seconds(20)) == std::future_status::ready);  // not the 30 s linger
  const auto [ok, delivered] = f.get();
  CHECK(ok);
  CHECK(delivered == 1);
  auto found = (*store)->FindDelivered("school", "m-1", broker::Store::Wait::kNo);
  REQUIRE(found.ok());
  CHECK(found->has_value());
}

TEST_CASE("while little waits the applier applies after apply_early, while much waits after apply_delay",
          "[store][commit_log]") {
  TempDir dir;
  auto o = StoreOptions(dir);
  o.apply_delay = std::chrono::seconds(60);
  o.apply_early = std::chrono::milliseconds(50);
  auto store = broker::Store::Open(o);
  REQUIRE(store.ok());
  auto applied = [&] { return Count(o.path, "SELECT COUNT(*) FROM audit_log"); };
  // One record: applied soon after apply_early, long before apply_delay.
  REQUIRE((*store)->AppendSync({Record("policy_loaded", "")}).ok());
  bool soon = false;
  for (int i = 0; i < 250 && !soon; ++i) {
    soon = applied() == 1;
    if (!soon) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(soon);
  // Many in one go (over kApplyEarlyWeight): they wait for apply_delay, so
  // a second later none of them is in the database yet,
  std::vector<audit::Record> many(1100, Record("queued", "0190a5c4-8d2e-7b3a-9c1d-000000000001"));
  REQUIRE((*store)->AppendSync(std::move(many)).ok());
  std::this_thread::sleep_for(std::chrono::seconds(1));
  CHECK(applied() == 1);
  // unless someone asks for them.
  REQUIRE((*store)->Sync().ok());
  CHECK(applied() == 1101);
}

TEST_CASE("after kill -9, the next Open applies the commit log: the same tree, queue and duplicates",
          "[store][commit_log][crash]") {
  TempDir dir;
  auto o = StoreOptions(dir);
  o.apply_delay = o.apply_early = std::chrono::seconds(60);  // the child applies nothing
  const std::string reported = ReportThenKill(o, [](broker::Store& store) -> std::optional<std::string> {
    for (int i = 0; i < 50; ++i) {
      char id[64];
      std::snprintf(id, sizeof id, "0190a5c4-8d2e-7b3a-9c1d-%012d", i);
      int64_t delivery = 0;
      auto publish = Publish(store, id, "body " + std::to_string(i), &delivery);
      const int64_t row = publish.new_message->row;
      if (!store.CommitSync(std::move(publish)).ok()) return std::nullopt;
      // Every other one is acknowledged too.
      if (i % 2 == 1 && !store.CommitSync(Acknowledged(delivery, row, id)).ok()) return std::nullopt;
    }
    const audit::Checkpoint cp = store.latest();
    return std::to_string(cp.tree_size) + " " +
           audit::Hex(std::string(reinterpret_cast<const char*>(cp.root.data()), cp.root.size()));
  });
  REQUIRE(!reported.empty());
  // Nothing of it reached the database.
  CHECK(Count(o.path, "SELECT COUNT(*) FROM audit_log") == 0);
  // (Torn appends at the log's end are commit_log_test's: exact offsets.)

  o.apply_delay = std::chrono::milliseconds(200);
  o.apply_early = std::chrono::milliseconds(20);
  auto store = broker::Store::Open(o);
  REQUIRE(store.ok());
  const audit::Checkpoint cp = (*store)->latest();
  CHECK(std::to_string(cp.tree_size) + " " +
            audit::Hex(std::string(reinterpret_cast<const char*>(cp.root.data()), cp.root.size())) + "\n" ==
        reported);
  CHECK(cp.tree_size == 75);  // 50 queued, 25 delivered
  CHECK(Count(o.path, "SELECT COUNT(*) FROM audit_log") == 75);
  std::vector<std::string> pending;
  REQUIRE((*store)
              ->LoadPending([&](broker::StoredDelivery, const broker::StoredMessage& m) {
                pending.push_back(m.message_id);
                CHECK(m.body.str().rfind("body ", 0) == 0);
              })
              .ok());
  CHECK(pending.size() == 25);
  CHECK(Count(o.path, "SELECT COUNT(*) FROM messages WHERE body IS NULL") == 25);
  auto again = (*store)->CommitSync(Publish(**store, "0190a5c4-8d2e-7b3a-9c1d-000000000007", "body 7"));
  REQUIRE(again.ok());
  CHECK(again->duplicate);
  // New commits go on from there, and survive an orderly restart.
  REQUIRE((*store)->AppendSync({Record("policy_loaded", "")}).ok());
  store->reset();
  auto reopened = broker::Store::Open(o);
  REQUIRE(reopened.ok());
  CHECK((*reopened)->latest().tree_size == 76);
}

TEST_CASE("a logged group encodes and decodes to itself, and a damaged one is refused", "[store][commit_log]") {
  broker::LogGroup g;
  audit::Record r = Record("queued", "0190a5c4-8d2e-7b3a-9c1d-000000000001");
  r.seq = 7;
  broker::LoggedRecord lr;
  lr.leaf = audit::EncodeLeaf(r);
  lr.hash = merkle::LeafHash(lr.leaf);
  lr.record = r;
  g.records.push_back(lr);
  broker::Batch b;
  broker::StoredMessage m;
  m.row = 3;
  m.sender = "police";
  m.message_id = "0190a5c4-8d2e-7b3a-9c1d-000000000001";
  m.tlp = 2;
  m.body = std::string("\0body\xff", 6);
  m.want_reports = true;
  b.new_message = m;
  broker::StoredDelivery d;
  d.id = 9;
  d.recipient = "school";
  d.message_row = 3;
  d.kind = broker::DeliveryKind::kReport;
  d.attempts = 2;
  d.named = false;
  d.payload = "report";
  b.new_deliveries.push_back(d);
  b.finished.emplace_back(4, broker::DeliveryState::kExpired);
  b.attempts.emplace_back(5, 3u);
  b.drop_bodies.push_back(1);
  g.batches.push_back(b);
  g.recalls.emplace_back(2, 1'800'000'000'123);
  g.prunes.push_back({10, 20});
  g.checkpoint_row = broker::LogGroup::CheckpointRow{7, 1'800'000'000'000, "checkpoint text"};
  std::string bytes;
  broker::EncodeLogGroup(g, &bytes);
  auto back = broker::DecodeLogGroup(bytes);
  REQUIRE(back.ok());
  REQUIRE(back->records.size() == 1);
  CHECK(back->records[0].record == r);
  CHECK(back->records[0].leaf == lr.leaf);
  CHECK(back->records[0].hash == lr.hash);
  REQUIRE(back->batches.size() == 1);
  const broker::Batch& bb = back->batches[0];
  REQUIRE(bb.new_message);
  CHECK(bb.new_message->body == m.body);
  CHECK(bb.new_message->tlp == 2);
  CHECK(bb.new_message->want_reports);
  REQUIRE(bb.new_deliveries.size() == 1);
  CHECK(bb.new_deliveries[0].kind == broker::DeliveryKind::kReport);
  CHECK(bb.new_deliveries[0].attempts == 2);
  CHECK_FALSE(bb.new_deliveries[0].named);
  CHECK(bb.new_deliveries[0].payload == "report");
  CHECK(bb.finished == b.finished);
  CHECK(bb.attempts == b.attempts);
  CHECK(bb.drop_bodies == b.drop_bodies);
  CHECK(back->recalls == g.recalls);
  REQUIRE(back->prunes.size() == 1);
  CHECK(back->prunes[0].through == 20);
  REQUIRE(back->checkpoint_row);
  CHECK(back->checkpoint_row->text == "checkpoint text");
  // Every cut short is refused, and so are bytes left over.
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    INFO("cut at " << cut);
    CHECK(broker::DecodeLogGroup(std::string_view(bytes).substr(0, cut)).status().IsCorruption());
  }
  CHECK(broker::DecodeLogGroup(bytes + "x").status().IsCorruption());
  // A count no entry could hold is refused without allocating for it.
  std::string huge = bytes;
  huge[1] = huge[2] = huge[3] = huge[4] = '\xff';
  CHECK(broker::DecodeLogGroup(huge).status().IsCorruption());
}

TEST_CASE("a copy acknowledged before its message is applied is no row of its own, and forwards, recalls and ids "
          "still find it",
          "[store][commit_log]") {
  TempDir dir;
  auto o = Unapplied(dir);
  int64_t last_id = 0;
  int64_t row = 0;
  {
    auto store = broker::Store::Open(o);
    REQUIRE(store.ok());
    // One message for two agencies; school acknowledges before the apply,
    // youth after it.
    int64_t to_school = 0;
    broker::Batch publish = Publish(**store, "m-1", "the body", &to_school);
    row = publish.new_message->row;
    publish.new_message->recipients = "school,youth";
    broker::StoredDelivery youth = publish.new_deliveries.front();
    youth.id = (*store)->NextDeliveryId();
    youth.recipient = "youth";
    publish.new_deliveries.push_back(youth);
    last_id = youth.id;
    REQUIRE((*store)->CommitSync(std::move(publish)).ok());
    REQUIRE((*store)->CommitSync(Delivered(to_school, "m-1")).ok());
    REQUIRE((*store)->Sync().ok());
    CHECK(Count(o.path, "SELECT COUNT(*) FROM messages WHERE delivered = 'school'") == 1);
    CHECK(Count(o.path, "SELECT COUNT(*) FROM deliveries") == 1);  // youth's, pending
    CHECK(Count(o.path, "SELECT COUNT(*) FROM deliveries WHERE recipient = 'youth' AND state = 0") == 1);
    auto found = (*store)->FindDelivered("school", "m-1", broker::Store::Wait::kNo);
    REQUIRE(found.ok());
    REQUIRE(found->has_value());
    CHECK((*found)->row == row);
    auto not_yet = (*store)->FindDelivered("youth", "m-1", broker::Store::Wait::kNo);
    REQUIRE(not_yet.ok());
    CHECK_FALSE(not_yet->has_value());
    // A name that only contains another's is not it.
    auto partial = (*store)->FindDelivered("schoo", "m-1", broker::Store::Wait::kNo);
    REQUIRE(partial.ok());
    CHECK_FALSE(partial->has_value());
    auto recipients = (*store)->DeliveredRecipients(row, broker::Store::Wait::kNo);
    REQUIRE(recipients.ok());
    CHECK(*recipients == std::vector<std::string>{"school"});
    // youth acknowledges after the apply: its row is finished.
    REQUIRE((*store)->CommitSync(Delivered(youth.id, "m-1")).ok());
    REQUIRE((*store)->Sync().ok());
    recipients = (*store)->DeliveredRecipients(row, broker::Store::Wait::kNo);
    REQUIRE(recipients.ok());
    CHECK(*recipients == std::vector<std::string>{"school", "youth"});
    found = (*store)->FindDelivered("youth", "m-1", broker::Store::Wait::kNo);
    REQUIRE(found.ok());
    CHECK(found->has_value());
  }
  {
    // The next start goes on after the highest delivery id, even one that
    // only a delivered column remembers.
    {
      auto store = broker::Store::Open(o);
      REQUIRE(store.ok());
      int64_t folded_only = 0;
      REQUIRE((*store)->CommitSync(Publish(**store, "m-2", "another", &folded_only)).ok());
      CHECK(folded_only > last_id);
      REQUIRE((*store)->CommitSync(Delivered(folded_only, "m-2")).ok());
      REQUIRE((*store)->Sync().ok());
      last_id = folded_only;
    }
    CHECK(Count(o.path, "SELECT COUNT(*) FROM deliveries WHERE id = " + std::to_string(last_id)) == 0);
    auto store = broker::Store::Open(o);
    REQUIRE(store.ok());
    CHECK((*store)->NextDeliveryId() > last_id);
  }
}
