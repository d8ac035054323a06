// Nothing lost (DESIGN.md, Delivery guarantees): the real broker is killed
// with SIGKILL at random moments while several agencies publish; after each
// restart they publish again whatever was not acknowledged (same message
// ids). Every message whose "queued" acknowledgement a sender saw must
// reach the recipient's inbox, once (the inbox keeps one copy per sender
// and message id, as the agency daemon does; the wire may repeat a delivery
// whose acknowledgement the crash cut off).
//
// LIAISON_CRASH_TRIALS (default 3) and LIAISON_CRASH_SEED (default 1) let
// scripts/crash-soak.sh run many trials.
#include <catch2/catch.hpp>


#include <sys/mount.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "common/uuid.h"
#include "proto/frame_codec.h"
#include "tests/integration/process_support.h"
#include "tests/integration/test_support.h"

using namespace liaison;
using namespace liaison::test;

namespace {

struct Inbox {
  std::mutex mu;
  std::map<std::pair<std::string, std::string>, int> copies;  // (sender, id) -> deliveries seen
  uint64_t wire_duplicates = 0;
};

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

// One trial: kills brokers until `kills` is spent, then lets the last one
// finish. Returns the number of wire duplicates seen.
uint64_t RunTrial(uint32_t seed, int messages_per_sender, int kills) {
  const std::vector<std::string> senders = {"police", "social", "health"};
  std::mt19937 rng(seed);
  TempDir dir;
  // Every message, with its id fixed once: a retry reuses it.
  std::map<std::string, std::vector<v1::Message>> outbox;
  std::map<std::string, std::set<std::string>> acked;  // per sender, under acked_mu
  std::mutex acked_mu;
  for (const auto& s : senders) {
    for (int i = 0; i < messages_per_sender; ++i) outbox[s].push_back(IncidentReport({"school"}));
  }
  Inbox inbox;
  std::atomic<int> duplicates_answered{0};
  for (int round = 0;; ++round) {
    const bool last = round >= kills;
    auto broker = std::make_unique<BrokerProcess>(dir);
    // The recipient: acknowledges each delivery once it is in the inbox.
    auto school = std::make_unique<Receiver>(broker->port(), "school");
    auto drain = [&] {
      std::lock_guard lock(school->mu);
      std::lock_guard l2(inbox.mu);
      for (const auto& d : school->got) {
        int& n = inbox.copies[{d.message->envelope().sender(), d.message->envelope().message_id()}];
        if (n++ > 0) inbox.wire_duplicates++;
      }
      school->got.clear();
    };
    // The senders: one thread each, at most 256 publishes unanswered, of
    // what is not acknowledged yet (three passes: a refusal is retried).
    std::vector<std::unique_ptr<client::Client>> clients;
    for (const auto& s : senders) clients.push_back(Connect(broker->port(), s));
    std::atomic<bool> stop{false};
    std::atomic<int> running{static_cast<int>(senders.size())};
    std::vector<std::thread> threads;
    for (size_t i = 0; i < senders.size(); ++i) {
      threads.emplace_back([&, i] {
        const std::string& s = senders[i];
        std::atomic<int> window{0};
        for (int pass = 0; pass < 3 && !stop; ++pass) {
          for (const auto& m : outbox[s]) {
            if (stop || !clients[i]->connected()) break;
            {
              std::lock_guard lock(acked_mu);
              if (acked[s].count(m.envelope().message_id())) continue;
            }
            while (window >= 256 && !stop) std::this_thread::sleep_for(std::chrono::microseconds(200));
            window++;
            clients[i]->Publish(m, [&, s](client::PublishResult r) {
              if (r.AllAccepted()) {
                std::lock_guard lock(acked_mu);
                acked[s].insert(r.message_id);
                if (r.duplicate) duplicates_answered++;
              }
              window--;
            });
          }
          WaitFor([&] { return window == 0; }, std::chrono::seconds(30));
        }
        running--;
      });
    }
    std::atomic<int>& outstanding = running;
    if (!last) {
      // Somewhere in the middle of the stream.
      std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(20, 400)(rng)));
      broker->process().Signal(SIGKILL);
      REQUIRE(broker->process().Wait() == 128 + SIGKILL);
      // Connections end: every publish is answered, most as failed.
      stop = true;
      REQUIRE(WaitFor([&] { return outstanding == 0; }, std::chrono::seconds(30)));
      for (auto& t : threads) t.join();
      for (auto& cl : clients) cl->Close();
      school->client->Close();
      drain();
      continue;
    }
    REQUIRE(WaitFor([&] { return outstanding == 0; }, std::chrono::seconds(120)));
    for (auto& t : threads) t.join();
    size_t total_acked = 0;
    {
      std::lock_guard lock(acked_mu);
      for (const auto& s : senders) total_acked += acked[s].size();
    }
    CHECK(total_acked == senders.size() * static_cast<size_t>(messages_per_sender));
    // Everything acknowledged arrives.
    const bool all_in = WaitFor(
        [&] {
          drain();
          std::lock_guard lock(inbox.mu);
          std::lock_guard l2(acked_mu);
          for (const auto& s : senders) {
            for (const auto& id : acked[s]) {
              if (!inbox.copies.count({s, id})) return false;
            }
          }
          return true;
        },
        std::chrono::seconds(60));
    CHECK(all_in);
    for (auto& cl : clients) cl->Close();
    school->client->Close();
    drain();
    break;
  }
  // Nothing arrives that was not published, and nothing is missing.
  std::lock_guard lock(inbox.mu);
  size_t missing = 0;
  for (const auto& s : senders) {
    for (const auto& m : outbox[s]) {
      if (!inbox.copies.count({s, m.envelope().message_id()})) ++missing;
    }
  }
  CHECK(missing == 0);
  CHECK(inbox.copies.size() == senders.size() * static_cast<size_t>(messages_per_sender));
  INFO("seed " << seed << ": " << inbox.wire_duplicates << " wire duplicate(s), " << duplicates_answered
               << " publish(es) answered as duplicates");
  return inbox.wire_duplicates;
}

}  // namespace

TEST_CASE("kill -9 of the broker while agencies publish loses no acknowledged message", "[process][crash]") {
  const int trials = EnvInt("LIAISON_CRASH_TRIALS", 3);
  const int seed = EnvInt("LIAISON_CRASH_SEED", 1);
  const int per_sender = EnvInt("LIAISON_CRASH_MESSAGES", 3334);  // 10,002 in all
  for (int t = 0; t < trials; ++t) {
    const uint32_t s = static_cast<uint32_t>(seed + t);
    INFO("trial seed " << s);
    const uint64_t dups = RunTrial(s, per_sender, /*kills=*/3);
    std::printf("crash trial seed %u: ok, %llu wire duplicate(s)\n", s, static_cast<unsigned long long>(dups));
  }
}

// A copy sent and never acknowledged may be with its recipient (the agent
// stores a message before acknowledging it). The broker knows it was sent
// by its attempt count, which decides that a recall notifies the recipient
// (and how an expiry is reported). Before, the count was saved only when
// the receiving session ended: after a kill -9 the copy counted as never
// sent, and a recall withdrew it without a word to a recipient that may
// hold it.
TEST_CASE("a copy sent before a kill -9 still counts as sent: its recall notifies the recipient",
          "[process][crash][recall]") {
  TempDir dir;
  auto broker = std::make_unique<BrokerProcess>(dir);
  auto police = Connect(broker->port(), "police");
  const v1::Message m = IncidentReport({"school"});
  REQUIRE(police->Publish(m).AllAccepted());
  RawClient school;
  REQUIRE(ConnectReceiving(school, broker->port(), "school", 4));
  auto d = ReadDeliver(school);
  REQUIRE(d);
  REQUIRE(d->message().envelope().message_id() == m.envelope().message_id());
  // Not acknowledged. The count is committed with the next commit someone
  // waits for: a publish after the send.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  REQUIRE(police->Publish(IncidentReport({"health"})).AllAccepted());
  police.reset();
  broker->process().Signal(SIGKILL);
  REQUIRE(broker->process().Wait() == 128 + SIGKILL);
  school.Close();
  broker = std::make_unique<BrokerProcess>(dir);
  police = Connect(broker->port(), "police");
  auto r = police->Recall(m.envelope().message_id(), "sent to the wrong agency");
  INFO(r.status.message());
  REQUIRE(r.status.ok());
  CHECK(r.withdrawn == std::vector<std::string>{"school"});
  CHECK(r.notified == std::vector<std::string>{"school"});
  Receiver back(broker->port(), "school");
  REQUIRE(WaitFor([&] { return back.Recalls().size() == 1; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(back.count() == 0);  // the message itself is not sent again
}

// Disk full: a small tmpfs under the store. Publishes that cannot be stored
// are refused (store_failure), nothing acknowledged is lost, and the broker
// recovers by itself when space returns.
TEST_CASE("a full disk refuses publishes clearly, loses nothing, and recovers without a restart",
          "[process][diskfull]") {
  TempDir dir;
  const auto disk = MountSmallDisk(dir, "6m");
  if (!disk) return;
  const std::string& data = disk->path;
  auto broker = std::make_unique<BrokerProcess>(dir);
  auto police = Connect(broker->port(), "police");
  std::vector<std::string> queued;
  for (int i = 0; i < 20; ++i) {
    v1::Message m = IncidentReport({"school"});
    auto r = police->Publish(m);
    REQUIRE(r.AllAccepted());
    queued.push_back(r.message_id);
  }
  FillDisk(data);
  int refused = 0, accepted_while_full = 0;
  v1::Message big = IncidentReport({"school"});
  big.mutable_incident_report()->set_description(std::string(20000, 'y'));
  // The store's commit log keeps a few MiB allocated ahead (commit_log.h):
  // publishes that fit in that space are durable and accepted; the rest
  // must be refused.
  for (int i = 0; i < 400 && refused == 0; ++i) {
    big.mutable_envelope()->set_message_id(NewUuid());
    auto r = police->Publish(big);
    REQUIRE(r.status.ok());
    if (r.AllAccepted()) {
      queued.push_back(r.message_id);
      accepted_while_full++;
    } else {
      CHECK(r.outcomes.at(0).reason == "store_failure");
      CHECK(r.outcomes.at(0).detail.find("could not store") != std::string::npos);
      refused++;
    }
  }
  CHECK(refused > 0);
  INFO(broker->process().err());
  CHECK(broker->process().err().find("failed, nothing of it is kept") != std::string::npos);
  // Space returns: the same broker process accepts again.
  REQUIRE(std::remove((data + "/filler").c_str()) == 0);
  for (int i = 0; i < 5; ++i) {
    v1::Message m = IncidentReport({"school"});
    auto r = police->Publish(m);
    CHECK(r.AllAccepted());
    if (r.AllAccepted()) queued.push_back(r.message_id);
  }
  // Everything acknowledged arrives, once.
  Receiver school(broker->port(), "school");
  REQUIRE(school.WaitCount(queued.size(), std::chrono::seconds(30)));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::lock_guard lock(school.mu);
  std::set<std::string> got;
  for (const auto& d : school.got) got.insert(d.message->envelope().message_id());
  CHECK(got == std::set<std::string>(queued.begin(), queued.end()));
  CHECK(school.got.size() == queued.size());
  INFO(accepted_while_full << " accepted before the disk filled");
  // The database catches up with the commit log too, without a restart, if
  // writing it failed while the disk was full.
  if (broker->process().err().find("could not be written into the database") != std::string::npos) {
    CHECK(WaitFor([&] { return broker->process().err().find("the database can be written again") != std::string::npos; },
                  std::chrono::seconds(15)));
  }
}

// A recall the store cannot record (the disk is full) is refused and
// changes nothing: its copies are delivered once space returns, as the
// store has them (before, the in-memory mark stayed and they were settled
// as recalled at their next send, though the sender was told nothing was
// withdrawn).
TEST_CASE("a recall that cannot be stored withdraws nothing", "[process][diskfull][recall]") {
  TempDir dir;
  const auto disk = MountSmallDisk(dir, "64m");  // room for the database to catch up afterwards
  if (!disk) return;
  const std::string& data = disk->path;
  auto broker = std::make_unique<BrokerProcess>(dir);
  auto police = Connect(broker->port(), "police");
  const std::vector<std::string> recipients{"a01", "a02", "a03", "a04", "a05"};
  v1::Message target = IncidentReport(recipients);
  auto published = police->Publish(target);
  REQUIRE(published.AllAccepted());
  const std::string id = published.message_id;
  // A recall of five copies with a 1,000-byte reason (five records that
  // hold it) does not fit where the smallest publish did not.
  REQUIRE(FillStoreDisk(data, *police, "school"));
  const std::string reason(1000, 'r');
  auto recall = police->Recall(id, reason);
  INFO(recall.status.message());
  REQUIRE_FALSE(recall.status.ok());
  std::printf("recall while the disk is full: %s\n", recall.status.message().c_str());
  CHECK(recall.error_code == "store_failure");
  // Space returns: every copy is delivered, not recalled.
  REQUIRE(std::remove((data + "/filler").c_str()) == 0);
  std::vector<std::unique_ptr<Receiver>> receivers;
  for (const auto& agency : recipients) {
    INFO(agency);
    receivers.push_back(std::make_unique<Receiver>(broker->port(), agency));
    Receiver& r = *receivers.back();
    REQUIRE(r.WaitCount(1, std::chrono::seconds(30)));
    std::lock_guard lock(r.mu);
    CHECK(r.got.size() == 1);
    CHECK(r.got.at(0).message->envelope().message_id() == id);
    CHECK(r.notices.empty());
  }
  // Recalled now, the message was delivered everywhere: nothing is
  // withdrawn and each recipient gets a notice.
  auto again = police->Recall(id, "sent to the wrong agencies");
  REQUIRE(again.status.ok());
  CHECK(again.withdrawn.empty());
  for (auto& r : receivers) CHECK(WaitFor([&] { return r->Recalls().size() == 1; }));
}

// Acknowledgements the store cannot record (the disk is full) leave their
// deliveries in flight on the session until their commit's answer reaches
// it; meanwhile the deliveries are back in the queue. Before, the session's
// pump took them from there at once and sent them again under the ids it
// still held as acknowledged: the new attempts were not tracked, so the
// recipient's acknowledgements of them were refused (unknown_delivery) and
// the copies stayed unsettled until a restart, their senders never told.
TEST_CASE("deliveries whose acknowledgement cannot be stored are sent again and settled once space returns",
          "[process][diskfull][reports]") {
  TempDir dir;
  const auto disk = MountSmallDisk(dir, "64m");  // room for the database to catch up afterwards
  if (!disk) return;
  const std::string& data = disk->path;
  auto broker = std::make_unique<BrokerProcess>(dir);
  Receiver police_inbox(broker->port(), "police");
  auto options = Options(broker->port(), "police");
  options.want_reports = true;
  auto police = client::Client::Connect(options);
  REQUIRE(police.ok());
  constexpr int kMessages = 50;
  std::set<std::string> ids;
  for (int i = 0; i < kMessages; ++i) {
    auto r = (*police)->Publish(IncidentReport({"school"}));
    REQUIRE(r.AllAccepted());
    ids.insert(r.message_id);
  }
  RawClient school;
  REQUIRE(ConnectReceiving(school, broker->port(), "school", kMessages));
  std::vector<v1::Deliver> first;
  for (int i = 0; i < kMessages; ++i) {
    auto d = ReadDeliver(school);
    REQUIRE(d);
    CHECK(d->attempt() == 1);
    first.push_back(*d);
  }
  REQUIRE(FillStoreDisk(data, **police));
  // All fifty acknowledgements at once: one commit, too large for what is left.
  std::string acks;
  for (const auto& d : first) {
    v1::Frame a;
    a.mutable_delivery_ack()->set_delivery_id(d.delivery_id());
    a.mutable_delivery_ack()->set_attempt(d.attempt());
    acks += proto::EncodeFrame(a).value();
  }
  REQUIRE(school.SendBytes(acks));
  // Not recorded: each is delivered again.
  std::vector<v1::Deliver> again;
  for (int i = 0; i < kMessages; ++i) {
    auto d = ReadDeliver(school, std::chrono::seconds(10));
    INFO(broker->process().err());
    REQUIRE(d);
    CHECK(d->attempt() == 2);
    again.push_back(*d);
  }
  CHECK(broker->process().err().find("could not be recorded; they will be delivered again") != std::string::npos);
  // Space returns: the new attempts are acknowledged, each accepted.
  REQUIRE(std::remove((data + "/filler").c_str()) == 0);
  for (const auto& d : again) REQUIRE(SendAck(school, d));
  v1::Frame ping;
  ping.mutable_ping()->set_nonce(7);
  REQUIRE(school.SendFrame(ping));
  std::vector<std::string> errors;
  for (;;) {
    auto f = school.ReadFrame(std::chrono::seconds(10));
    REQUIRE(f);
    if (f->has_pong() && f->pong().nonce() == 7) break;
    if (f->has_error()) errors.push_back(f->error().message());
    CHECK_FALSE(f->has_deliver());
  }
  CHECK(errors.empty());
  // Each copy is recorded delivered once, and its sender told once.
  REQUIRE(WaitFor([&] { return police_inbox.Reports().size() >= static_cast<size_t>(kMessages); },
                  std::chrono::seconds(30)));
  std::map<std::string, int> reported;
  for (const auto& rep : police_inbox.Reports()) {
    CHECK(rep.outcome == "delivered");
    reported[rep.message_id]++;
  }
  CHECK(reported.size() == ids.size());
  for (const auto& [id, n] : reported) {
    CHECK(ids.count(id) == 1);
    CHECK(n == 1);
  }
  const std::string db = data + "/liaison.db";
  CHECK(WaitFor([&] { return QueryInt(db, "SELECT COUNT(*) FROM audit_log WHERE event = 'delivered' AND recipient = 'school'") == kMessages; },
                std::chrono::seconds(30)));
}

namespace {

// The commits the broker has logged as failed so far.
size_t FailedCommits(BrokerProcess& broker) {
  const std::string text = broker.process().err();
  const std::string what = "failed, nothing of it is kept";
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

}  // namespace

// A copy settled just before it would be sent (expired here; recalled or
// refused at delivery alike) whose commit fails goes back to the queue.
// Before, the receiving session's pump took it again at once, and again
// after each failed commit: the broker committed, failed and logged
// without pause for as long as the disk stayed full.
TEST_CASE("a copy that expires while the disk is full is settled once space returns without a busy loop",
          "[process][diskfull][expiry]") {
  TempDir dir;
  const auto disk = MountSmallDisk(dir, "64m");
  if (!disk) return;
  const std::string& data = disk->path;
  auto broker = std::make_unique<BrokerProcess>(dir);
  Receiver police_inbox(broker->port(), "police");
  auto police = Connect(broker->port(), "police");
  v1::Message m = IncidentReport({"school"});
  const int64_t expires_ms = ExpireIn(&m, 2000);
  REQUIRE(police->Publish(m).AllAccepted());
  REQUIRE(FillStoreDisk(data, *police));
  REQUIRE(WaitFor([&] { return WallMs() > expires_ms; }));
  // school comes for it: its copy is expired just before sending, and that
  // cannot be stored.
  RawClient school;
  REQUIRE(ConnectReceiving(school, broker->port(), "school", 4));
  std::vector<v1::Deliver> got;
  REQUIRE(PingPong(school, 1, &got));
  const size_t before = FailedCommits(*broker);
  // A measurement over a fixed time, not a wait for something to happen.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const size_t during = FailedCommits(*broker) - before;
  INFO(during << " failed commits in 2 s");
  CHECK(during <= 20);
  REQUIRE(PingPong(school, 2, &got));
  // Space returns: it expires (audited, the sender told), never sent.
  REQUIRE(std::remove((data + "/filler").c_str()) == 0);
  REQUIRE(WaitFor([&] { return !police_inbox.Reports().empty(); }, std::chrono::seconds(15)));
  CHECK(police_inbox.Reports().at(0).outcome == "expired");
  CHECK(police_inbox.Reports().size() == 1);
  REQUIRE(PingPong(school, 3, &got));
  CHECK(got.empty());
}

// The acknowledgement of a copy cannot be stored (the disk is full), so the
// copy is sent again; a recipient acknowledges at once, as the agent does.
// Before, the copy went out again at once each time: failed commits and
// deliveries as fast as the round trip allowed, for as long as the disk
// stayed full.
TEST_CASE("a recipient that acknowledges while the disk is full is not sent its copy again without a pause",
          "[process][diskfull][reports]") {
  TempDir dir;
  const auto disk = MountSmallDisk(dir, "64m");
  if (!disk) return;
  const std::string& data = disk->path;
  auto broker = std::make_unique<BrokerProcess>(dir);
  Receiver police_inbox(broker->port(), "police");
  auto options = Options(broker->port(), "police");
  options.want_reports = true;
  auto police = client::Client::Connect(options);
  REQUIRE(police.ok());
  v1::Message m = IncidentReport({"school"});
  REQUIRE((*police)->Publish(m).AllAccepted());
  REQUIRE(FillStoreDisk(data, **police));
  Receiver school(broker->port(), "school");  // acknowledges each delivery at once
  REQUIRE(school.WaitCount(2));               // the first acknowledgement failed
  const size_t before = FailedCommits(*broker);
  const size_t got_before = school.count();
  // A measurement over a fixed time, not a wait for something to happen.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const size_t during = FailedCommits(*broker) - before;
  const size_t sent = school.count() - got_before;
  INFO(during << " failed commits and " << sent << " deliveries in 2 s");
  CHECK(during <= 20);
  CHECK(sent <= 10);
  // Space returns: the next attempt's acknowledgement is stored, and the
  // sender is told once.
  REQUIRE(std::remove((data + "/filler").c_str()) == 0);
  REQUIRE(WaitFor([&] { return !police_inbox.Reports().empty(); }, std::chrono::seconds(15)));
  CHECK(police_inbox.Reports().size() == 1);
  CHECK(police_inbox.Reports().at(0).outcome == "delivered");
}
