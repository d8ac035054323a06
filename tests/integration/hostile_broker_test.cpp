// The client library against a broker that breaks the protocol
// (tests/integration/scripted_broker.h): what the library must not take
// from it, and how the application hears of it.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "common/checkpoint.h"
#include "common/files.h"
#include "tests/temp_dir.h"
#include "tests/integration/scripted_broker.h"
#include "tests/integration/test_support.h"

using namespace liaison;
using namespace liaison::test;

namespace {

const char* kId[] = {"", "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c41", "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42",
                     "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c43", "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c44"};

v1::Frame Message(uint64_t delivery_id) {
  return DeliverMessage(delivery_id, "police", kId[delivery_id]);
}

// Why the connection ended, once it has (a library that let the broker go
// on would keep it open: then this fails instead of waiting for ever).
Status Ended(client::Client& c) {
  if (!WaitFor([&] { return !c.connected(); })) return Status::Ok();
  return c.Wait();
}

// Whether the broker was told why, in a fatal Error.
bool BrokerTold(ScriptedBroker& broker, const std::string& what) {
  return WaitFor([&] {
    for (const auto& f : broker.Received()) {
      if (f.has_error() && f.error().fatal() && f.error().code() == v1::REASON_PROTOCOL_ERROR &&
          f.error().message().find(what) != std::string::npos) {
        return true;
      }
    }
    return false;
  });
}

}  // namespace

TEST_CASE("the client library ends a connection whose broker sends beyond the credit granted", "[client][credit]") {
  SECTION("recall notices and delivery reports take credit as messages do") {
    ScriptedBroker broker({DeliverReport(1, kId[1], "social"), DeliverRecall(2, "police", kId[2]), Message(3)}, 2);
    Receiver school(broker.port(), "school", /*ack=*/false, /*credit=*/2);
    const Status why = Ended(*school.client);
    INFO(why.message());
    CHECK(why.IsProtocolError());
    CHECK(why.message() ==
          "the broker exceeded this session's credit of 2: it sent delivery 3 while 2 deliveries were unacknowledged");
    CHECK(school.Reports().size() == 1);
    CHECK(school.Recalls().size() == 1);
    CHECK(school.count() == 0);  // the delivery beyond the credit never reaches the application
    CHECK(BrokerTold(broker, "credit of 2"));
  }

  // 1 and 2 at once; 3 after the client's first acknowledgement; 4 after
  // its second, which the real broker takes for no credit.
  auto acknowledged_twice = [](uint64_t second_id, uint32_t second_attempt) {
    ScriptedBroker broker({{0, {Message(1), Message(2)}}, {1, {Message(3)}}, {2, {Message(4)}}}, 2);
    Receiver school(broker.port(), "school", /*ack=*/false, /*credit=*/2);
    REQUIRE(school.WaitCount(2));
    school.client->Acknowledge(1, 1);
    REQUIRE(school.WaitCount(3));  // 1's credit came back: 3 is taken
    school.client->Acknowledge(second_id, second_attempt);
    const Status why = Ended(*school.client);
    INFO(why.message());
    CHECK(why.IsProtocolError());
    CHECK(why.message() ==
          "the broker exceeded this session's credit of 2: it sent delivery 4 while 2 deliveries were unacknowledged");
    CHECK(school.count() == 3);
  };
  SECTION("an acknowledged delivery gives its credit back once") {
    acknowledged_twice(1, 1);
  }
  SECTION("an acknowledgement of another attempt gives no credit back") {
    acknowledged_twice(2, 7);
  }

  SECTION("the broker's default, as its Welcome announced it") {
    ScriptedBroker broker({Message(1), Message(2), Message(3)}, 2);
    Receiver school(broker.port(), "school", /*ack=*/false, /*credit=*/0);
    CHECK(Ended(*school.client).message().find("credit of 2: it sent delivery 3 while 2") != std::string::npos);
    CHECK(school.count() == 2);
  }

  SECTION("a Welcome announcing more than was asked for holds the broker to what was asked") {
    ScriptedBroker broker({Message(1), Message(2), Message(3)}, 16);
    Receiver school(broker.port(), "school", /*ack=*/false, /*credit=*/2);
    CHECK(Ended(*school.client).message().find("credit of 2: it sent delivery 3 while 2") != std::string::npos);
    CHECK(school.count() == 2);
  }

  SECTION("the same delivery again while it is unacknowledged") {
    ScriptedBroker broker({Message(1), Message(1)}, 16);
    Receiver school(broker.port(), "school", /*ack=*/false, /*credit=*/0);
    const Status why = Ended(*school.client);
    CHECK(why.IsProtocolError());
    CHECK(why.message() == "the broker sent delivery 1 again while it was still unacknowledged");
    CHECK(school.count() == 1);
  }

  SECTION("a delivery on a session that does not receive") {
    ScriptedBroker broker({Message(1)}, 16);
    std::atomic<int> delivered{0};
    auto school = Connect(broker.port(), "school", /*receive=*/false, [&](client::Delivery) { delivered++; });
    const Status why = Ended(*school);
    CHECK(why.IsProtocolError());
    CHECK(why.message() == "the broker sent delivery 1 on a session that does not receive (credit 0)");
    CHECK(delivered == 0);
  }
}

TEST_CASE("the client library answers a frame of a type it does not know and goes on", "[client][frames]") {
  v1::Frame newer;  // only a field this client does not know, as from a newer broker
  newer.GetReflection()->MutableUnknownFields(&newer)->AddVarint(999, 1);
  ScriptedBroker broker({newer, Message(1)}, 16);
  Receiver school(broker.port(), "school", /*ack=*/false, /*credit=*/16);
  REQUIRE(school.WaitCount(1));
  CHECK(school.client->connected());
  CHECK(WaitFor([&] {
    for (const auto& f : broker.Received()) {
      if (f.has_error() && !f.error().fatal() && f.error().code() == v1::REASON_PROTOCOL_ERROR) return true;
    }
    return false;
  }));
  CHECK(school.client->connected());
}

TEST_CASE("the client library ends a connection whose broker sends a frame only clients send", "[client][frames]") {
  v1::Frame publish;
  publish.mutable_publish()->set_request_id(7);
  ScriptedBroker broker({publish, Message(1)}, 16);
  Receiver school(broker.port(), "school", /*ack=*/false, /*credit=*/16);
  const Status why = Ended(*school.client);
  CHECK(why.IsProtocolError());
  CHECK(why.message() == "the broker sent a frame a broker never sends (publish)");
  CHECK(school.count() == 0);
  CHECK(BrokerTold(broker, "a broker never sends (publish)"));
}

TEST_CASE("a witness left without proofs for longer than witness_max_unproven raises the alarm", "[client][witness]") {
  TempDir dir;
  audit::Checkpoint witnessed;
  witnessed.origin = "scripted.example/log";
  witnessed.tree_size = 5;
  witnessed.root.fill(7);
  witnessed.time_ms = WallMs() - 60'000;
  witnessed.key_id = "0123456789abcdef";
  witnessed.signature.assign(64, 's');
  const std::string file = dir.File("checkpoint.txt");
  REQUIRE(WriteFileAtomic(file, audit::FormatCheckpoint(witnessed)).ok());
  // The broker shows a larger log and answers every request for a proof
  // with audit_busy (the real one does so only while an agency has too
  // many audit requests in progress).
  v1::Checkpoint larger;
  larger.set_origin(witnessed.origin);
  larger.set_tree_size(10);
  larger.set_root_hash(std::string(32, '\x09'));
  larger.set_time_ms(WallMs());
  larger.set_key_id(witnessed.key_id);
  larger.set_signature(std::string(64, 't'));
  auto run = [&](std::chrono::milliseconds max_unproven) {
    ScriptedBroker broker(std::vector<v1::Frame>{});
    broker.RefuseProofs(larger, v1::REASON_AUDIT_BUSY);
    auto o = Options(broker.port(), "school", true);
    o.checkpoint_file = file;
    o.witness_max_unproven = max_unproven;
    auto c = client::Client::Connect(o);
    REQUIRE(c.ok());
    REQUIRE(WaitFor([&] {
      for (const auto& f : broker.Received()) {
        if (f.has_consistency_proof_request()) return true;
      }
      return false;
    }));
    (*c)->Close();
    return (*c)->witness_status();
  };
  // Within the time allowed: no alarm, but the first unproven request is kept.
  CHECK(run(std::chrono::hours(1)).ok());
  auto since = ReadFile(file + ".unproven", 64);
  REQUIRE(since.ok());
  const int64_t since_ms = std::strtoll(since->c_str(), nullptr, 10);
  CHECK(since_ms > witnessed.time_ms);
  // A later connection (or run) counts from that first request: past the
  // time allowed, the witness raises the alarm.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const Status alarm = run(std::chrono::milliseconds(20));
  INFO(alarm.ToString());
  CHECK(alarm.message().find("AUDIT ALARM: the broker's audit log of 10 records has come without a consistency proof "
                             "from the 5 records witnessed since") != std::string::npos);
  CHECK(alarm.message().find("audit_busy") != std::string::npos);
  // The witness file keeps what was witnessed.
  CHECK(audit::ParseCheckpoint(*ReadFile(file, 1 << 16))->tree_size == 5);
  // With no limit, the witness never alarms on this.
  CHECK(run(std::chrono::milliseconds(0)).ok());
}
