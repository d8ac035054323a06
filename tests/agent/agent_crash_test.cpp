// kill -9 of the real liaison-agent process while it sends and while it
// receives, at moments chosen by fixed seeds; after a restart every message
// is in sent/ (sender) and in the inbox (recipient) exactly once, under one
// message id (docs/agent.md, "Crash guarantees").
#include <atomic>
#include <catch2/catch.hpp>
#include <map>
#include <random>
#include <set>

#include "client/client.h"
#include "tests/agent/agent_harness.h"

using namespace liaison;
using namespace liaison::test;

namespace {

constexpr int kMessages = 200;
using Ms = std::chrono::milliseconds;

size_t Count(const std::string& dir, const std::string& suffix) {
  return NamesEnding(dir, suffix).size();
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Moves each message file out of the inbox as soon as it appears, as an
// agency's own system would. A message written into the inbox twice shows
// up here a second time: counted in duplicates.
class Consumer {
 public:
  Consumer(std::string inbox, std::string processed) : inbox_(std::move(inbox)), processed_(std::move(processed)) {
    std::filesystem::create_directories(processed_);
    thread_ = std::thread([this] {
      while (!stop_) {
        Sweep();
        std::this_thread::sleep_for(Ms(2));
      }
    });
  }
  ~Consumer() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    Sweep();
  }
  size_t taken() const { return taken_; }
  size_t duplicates() const { return duplicates_; }

 private:
  void Sweep() {
    for (const auto& n : NamesEnding(inbox_, ".json")) {
      std::error_code ec;
      if (std::filesystem::exists(processed_ + "/" + n)) {
        ++duplicates_;
        std::filesystem::remove(inbox_ + "/" + n, ec);
        continue;
      }
      std::filesystem::rename(inbox_ + "/" + n, processed_ + "/" + n, ec);
      if (!ec) ++taken_;
    }
  }
  std::string inbox_, processed_;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> taken_{0}, duplicates_{0};
  std::thread thread_;
};

}  // namespace

TEST_CASE("kill -9 while sending: every outbox file ends in sent/ once, under one message id", "[agent][crash]") {
  int mid_stream_kills = 0, repeated = 0;
  for (const uint64_t seed : {101u, 202u, 303u}) {
    INFO("seed " << seed);
    const auto started = std::chrono::steady_clock::now();
    TestBroker broker;
    Receiver school(broker.port(), "school");
    TempDir dir;
    AgentDirs police(dir.path(), "police");
    police.WriteConfig("police", broker.port(), "log_level: warn\n");
    std::set<std::string> names;
    for (int i = 0; i < kMessages; ++i) {
      const std::string name = "m" + std::to_string(1000 + i) + ".json";
      police.Drop(name, MessageJson("[\"school\"]", "message " + std::to_string(i)));
      names.insert(name);
    }
    std::mt19937_64 rng(seed);
    std::string kills;
    for (int round = 0; round < 3; ++round) {
      ChildProcess agent(AgentArgs(police), police.root, "agent");
      REQUIRE(agent.started());
      if (round == 0) {
        // Early: while it claims the files and starts publishing.
        std::this_thread::sleep_for(Ms(std::uniform_int_distribution<int>(0, 150)(rng)));
      } else {
        const size_t target = Count(police.sent(), ".ack.json") + std::uniform_int_distribution<size_t>(1, 60)(rng);
        WaitFor([&] { return Count(police.sent(), ".ack.json") >= target; }, Ms(5000));
        std::this_thread::sleep_for(Ms(std::uniform_int_distribution<int>(0, 4)(rng)));
      }
      agent.Kill();
      const size_t settled = Count(police.sent(), ".ack.json");
      kills += " " + std::to_string(settled);
      if (settled > 0 && settled < static_cast<size_t>(kMessages)) ++mid_stream_kills;
    }
    ChildProcess last(AgentArgs(police, {"--once", "--idle", "300", "--json"}), police.root, "last");
    REQUIRE(last.Wait() == 0);
    INFO(last.err());

    // Sender: every file moved to sent/ exactly once, with its ack.
    CHECK(Names(police.outbox()).empty());
    CHECK(Names(police.failed()).empty());
    std::set<std::string> sent_files, ids;
    std::map<std::string, std::string> id_of;
    for (const auto& n : Names(police.sent())) {
      if (n.find(".ack.json") != std::string::npos || n.find(".report.") != std::string::npos) continue;
      sent_files.insert(n);
    }
    CHECK(sent_files == names);
    for (const auto& n : names) {
      const std::string ack = Slurp(police.sent() + "/" + n + ".ack.json");
      const std::string id = JsonField(ack, "messageId");
      CHECK_FALSE(id.empty());
      ids.insert(id);
      id_of[id] = n;
      repeated += ack.find("\"duplicate\":true") != std::string::npos;
    }
    CHECK(ids.size() == static_cast<size_t>(kMessages));

    // Recipient: each message once; nothing published under a second id
    // (that would be a delivery with an id no ack names).
    REQUIRE(school.WaitCount(kMessages));
    std::this_thread::sleep_for(Ms(300));
    std::set<std::string> received;
    {
      std::lock_guard lock(school.mu);
      CHECK(school.got.size() == static_cast<size_t>(kMessages));
      for (const auto& d : school.got) {
        received.insert(d.message->envelope().message_id());
        // The body is the file's: message <i> came from m<1000+i>.json.
        const std::string desc = d.message->incident_report().description();
        const auto it = id_of.find(d.message->envelope().message_id());
        if (it != id_of.end()) CHECK(it->second == "m" + std::to_string(1000 + std::stoi(desc.substr(8))) + ".json");
      }
    }
    CHECK(received == ids);
    std::fprintf(stderr, "agent kill -9 while sending, seed %llu: acks on disk at each kill:%s; %.2f s\n",
                 static_cast<unsigned long long>(seed), kills.c_str(), Seconds(started));
  }
  std::fprintf(stderr,
               "agent kill -9 while sending: %d kill(s) mid-stream, %d file(s) re-sent and answered "
               "as duplicates\n",
               mid_stream_kills, repeated);
  // The kills must have hit while there was work in progress.
  CHECK(mid_stream_kills >= 3);
}

TEST_CASE("kill -9 while receiving: every message in the inbox exactly once", "[agent][crash]") {
  int mid_stream_kills = 0;
  for (const uint64_t seed : {404u, 505u, 606u}) {
    INFO("seed " << seed);
    const auto started = std::chrono::steady_clock::now();
    TestBroker broker;
    // The messages wait at the broker before the agent first starts.
    std::set<std::string> published;
    {
      auto c = client::Client::Connect(Options(broker.port(), "police"));
      REQUIRE(c.ok());
      std::atomic<int> queued{0}, answered{0};
      for (int i = 0; i < kMessages; ++i) {
        v1::Message m = IncidentReport({"school"});
        published.insert(m.envelope().message_id());
        (*c)->Publish(m, [&](client::PublishResult r) {
          queued += r.AllAccepted();
          ++answered;
        });
      }
      REQUIRE(WaitFor([&] { return answered == kMessages; }, Ms(20000)));
      REQUIRE(queued == kMessages);
      (*c)->Close();
    }
    TempDir dir;
    AgentDirs school(dir.path(), "school");
    school.WriteConfig("school", broker.port(), "log_level: warn\ncredit: 16\n");
    Consumer consumer(school.inbox(), school.root + "/processed");
    std::mt19937_64 rng(seed);
    std::string kills;
    for (int round = 0; round < 3; ++round) {
      ChildProcess agent(AgentArgs(school), school.root, "agent");
      REQUIRE(agent.started());
      if (round == 0) {
        std::this_thread::sleep_for(Ms(std::uniform_int_distribution<int>(0, 150)(rng)));
      } else {
        const size_t target = consumer.taken() + std::uniform_int_distribution<size_t>(1, 50)(rng);
        WaitFor([&] { return consumer.taken() >= target; }, Ms(5000));
        std::this_thread::sleep_for(Ms(std::uniform_int_distribution<int>(0, 4)(rng)));
      }
      agent.Kill();
      const size_t taken = consumer.taken();
      kills += " " + std::to_string(taken);
      if (taken > 0 && taken < static_cast<size_t>(kMessages)) ++mid_stream_kills;
    }
    ChildProcess last(AgentArgs(school, {"--once", "--idle", "500", "--json"}), school.root, "last");
    REQUIRE(last.Wait() == 0);
    INFO(last.err());
    INFO(last.out());
    consumer.Stop();

    CHECK(consumer.duplicates() == 0);
    CHECK(consumer.taken() == static_cast<size_t>(kMessages));
    std::set<std::string> got;
    for (const auto& n : Names(school.root + "/processed")) {
      CHECK(n.rfind("police_", 0) == 0);
      got.insert(n.substr(7, n.size() - 7 - 5));
    }
    CHECK(got == published);
    CHECK(Names(school.inbox(), true) == std::vector<std::string>{".liaison-incoming"});
    CHECK(Names(school.inbox() + "/.liaison-incoming", true).empty());
    // Everything was acknowledged: nothing more comes to a new receiver.
    Receiver after(broker.port(), "school");
    std::this_thread::sleep_for(Ms(300));
    CHECK(after.count() == 0);
    std::fprintf(stderr, "agent kill -9 while receiving, seed %llu: messages taken at each kill:%s; %.2f s\n",
                 static_cast<unsigned long long>(seed), kills.c_str(), Seconds(started));
  }
  CHECK(mid_stream_kills >= 3);
}
