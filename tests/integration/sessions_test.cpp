// Sessions: many at once, one receiver per agency, take-over, keep-alive,
// and graceful shutdown.
#include <catch2/catch.hpp>

#include <mutex>
#include <set>

#include "common/uuid.h"
#include "tests/integration/test_support.h"

using namespace liaison;
using namespace liaison::test;

// With one I/O thread, the default two and four (the threads share one
// io_context: each session's handlers run on any of them, one at a time on
// its strand); the broker stops gracefully at the end (TestBroker's
// destructor) with every session open.
TEST_CASE("120 concurrent agency sessions exchange messages", "[sessions]") {
  const int threads = GENERATE(1, 2, 4);
  INFO(threads << " I/O thread(s)");
  TestBroker broker({}, threads);
  const auto agencies = DefaultAgencies();  // 25 agencies
  // One receiving session per agency, plus four publishing sessions each.
  std::mutex mu;
  std::map<std::string, int> received;
  std::vector<std::unique_ptr<client::Client>> receivers(agencies.size());
  for (size_t i = 0; i < agencies.size(); ++i) {
    client::Client* self = nullptr;
    auto c = client::Client::Connect(Options(broker.port(), agencies[i], true), [&, i](client::Delivery d) {
      std::lock_guard lock(mu);
      received[agencies[i]]++;
      receivers[i]->Acknowledge(d);
    });
    REQUIRE(c.ok());
    receivers[i] = std::move(c).value();
    (void)self;
  }
  std::vector<std::unique_ptr<client::Client>> senders;
  for (size_t i = 0; i < agencies.size() * 4; ++i) senders.push_back(Connect(broker.port(), agencies[i % agencies.size()]));
  REQUIRE(broker.server().counters().sessions == agencies.size() * 5);

  std::atomic<int> accepted{0}, answered{0};
  for (size_t i = 0; i < senders.size(); ++i) {
    const std::string to = agencies[(i + 1) % agencies.size()];
    senders[i]->Publish(IncidentReport({to}), [&](client::PublishResult r) {
      answered++;
      if (r.AllAccepted()) accepted++;
    });
  }
  REQUIRE(WaitFor([&] { return answered == static_cast<int>(senders.size()); }, std::chrono::seconds(30)));
  CHECK(accepted == static_cast<int>(senders.size()));
  CHECK(WaitFor([&] {
    std::lock_guard lock(mu);
    int n = 0;
    for (const auto& [a, count] : received) n += count;
    return n == static_cast<int>(senders.size());
  }));
  std::lock_guard lock(mu);
  for (const auto& a : agencies) CHECK(received[a] == 4);
}

TEST_CASE("a second receiving session is refused unless it takes over", "[sessions]") {
  TestBroker broker;
  std::atomic<bool> first_closed{false};
  Status first_why;
  auto first = Connect(broker.port(), "school", true, nullptr, [&](const Status& why) {
    first_why = why;
    first_closed = true;
  });

  auto second = client::Client::Connect(Options(broker.port(), "school", true));
  REQUIRE_FALSE(second.ok());
  CHECK(second.status().IsPermissionDenied());
  CHECK(second.status().message().find("receiver_active") != std::string::npos);
  CHECK(first->connected());

  // A session of the same agency that does not receive is fine.
  auto publisher = Connect(broker.port(), "school");
  CHECK(publisher->session().receiving == false);

  auto o = Options(broker.port(), "school", true);
  o.take_over = true;
  std::atomic<int> got{0};
  auto third = client::Client::Connect(o, [&](client::Delivery) { got++; });
  REQUIRE(third.ok());
  CHECK((*third)->session().receiving);
  REQUIRE(WaitFor([&] { return first_closed.load(); }));
  CHECK(first_why.message().find("taken_over") != std::string::npos);

  // Deliveries now go to the new receiver.
  auto police = Connect(broker.port(), "police");
  police->Publish(IncidentReport({"school"}), [](client::PublishResult) {});
  CHECK(WaitFor([&] { return got == 1; }));
}

TEST_CASE("a take-over gets what the replaced session held first and everything in order", "[sessions][takeover]") {
  // One I/O thread: the replaced session gives its deliveries back only
  // after the Hello that takes over is handled, whatever the scheduling.
  TestBroker broker({}, 1);
  auto police = Connect(broker.port(), "police");
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    v1::Message m = IncidentReport({"school"});
    ids.push_back(m.envelope().message_id());
    REQUIRE(police->Publish(m).AllAccepted());
  }
  RawClient first;
  REQUIRE(ConnectReceiving(first, broker.port(), "school", 2));
  for (int i = 0; i < 2; ++i) {
    auto d = ReadDeliver(first);
    REQUIRE(d);
    CHECK(d->message().envelope().message_id() == ids[i]);  // held, never acknowledged
  }
  RawClient second;
  REQUIRE(ConnectReceiving(second, broker.port(), "school", 16, /*take_over=*/true));
  std::vector<std::string> got;
  std::vector<uint32_t> attempts;
  while (got.size() < ids.size()) {
    auto d = ReadDeliver(second);
    REQUIRE(d);
    got.push_back(d->message().envelope().message_id());
    attempts.push_back(d->attempt());
    REQUIRE(SendAck(second, *d));
  }
  CHECK(got == ids);
  CHECK(attempts == std::vector<uint32_t>{2, 2, 1, 1, 1, 1});
}

TEST_CASE("a take-over of a session that reads nothing is not held up by its stalled writes",
          "[sessions][takeover]") {
  // Taking over is what an agency does when its old connection is stuck
  // (a dead host, a program that hangs): the new session must not wait
  // for the old one's writes to time out.
  broker::Limits l;
  l.write_timeout = std::chrono::seconds(60);
  l.delivery_timeout = std::chrono::seconds(120);
  TestBroker broker(l);
  auto police = Connect(broker.port(), "police");
  v1::Message big = IncidentReport({"school"});
  big.mutable_incident_report()->set_description(std::string(60 * 1024, 'd'));
  std::vector<std::string> ids;
  for (int i = 0; i < 100; ++i) {
    big.mutable_envelope()->set_message_id(liaison::NewUuid());
    ids.push_back(big.envelope().message_id());
    REQUIRE(police->Publish(big).AllAccepted());
  }
  RawClient stuck;
  REQUIRE(ConnectReceiving(stuck, broker.port(), "school", 100));
  // It reads nothing from here on: 6 MB do not fit the socket's buffers.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  RawClient second;
  const auto start = std::chrono::steady_clock::now();
  REQUIRE(ConnectReceiving(second, broker.port(), "school", 16, /*take_over=*/true));
  std::vector<std::string> got;
  while (got.size() < ids.size()) {
    auto d = ReadDeliver(second, std::chrono::seconds(20));
    REQUIRE(d);
    got.push_back(d->message().envelope().message_id());
    REQUIRE(SendAck(second, *d));
  }
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO("all " << got.size() << " in " << took << " s");
  CHECK(got == ids);
  CHECK(took < 30);  // well before the stuck session's write timeout (60 s)
}

TEST_CASE("the receiving slot is released when its session ends", "[sessions]") {
  TestBroker broker;
  { auto first = Connect(broker.port(), "school", true); }
  REQUIRE(WaitFor([&] { return broker.server().counters().sessions == 0; }));
  auto again = client::Client::Connect(Options(broker.port(), "school", true));
  CHECK(again.ok());
}

TEST_CASE("idle sessions are pinged and stay open while the client answers", "[sessions]") {
  broker::Limits l;
  l.ping_interval = std::chrono::milliseconds(100);
  l.idle_timeout = std::chrono::milliseconds(400);
  TestBroker broker(l);
  auto c = Connect(broker.port(), "police");
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  CHECK(c->connected());
  CHECK(broker.server().counters().sessions == 1);
}

TEST_CASE("a peer that stops answering is closed after the idle timeout", "[sessions]") {
  broker::Limits l;
  l.ping_interval = std::chrono::milliseconds(100);
  l.idle_timeout = std::chrono::milliseconds(400);
  TestBroker broker(l);
  RawClient raw;
  RawClient::Options o;
  o.tls = AgencyTls("police");
  REQUIRE(raw.Connect(broker.port(), o).ok());
  REQUIRE(raw.SendHello());
  auto welcome = raw.ReadFrame();
  REQUIRE(welcome.has_value());
  REQUIRE(welcome->has_welcome());
  // Read pings without answering them; the broker gives up.
  bool saw_ping = false, saw_idle_error = false;
  for (int i = 0; i < 20; ++i) {
    auto f = raw.ReadFrame(std::chrono::milliseconds(1000));
    if (!f) break;
    saw_ping = saw_ping || f->has_ping();
    if (f->has_error()) saw_idle_error = f->error().code() == v1::REASON_IDLE_TIMEOUT;
  }
  CHECK(saw_ping);
  CHECK(saw_idle_error);
  CHECK(WaitFor([&] { return broker.server().counters().sessions == 0; }));
}

TEST_CASE("a graceful stop closes sessions, refuses new work, and keeps what is queued for the restart",
          "[sessions][shutdown][queue]") {
  TestBroker broker;
  std::atomic<bool> school_closed{false};
  Status school_why;
  std::atomic<int> got{0};
  auto school = Connect(
      broker.port(), "school", true, [&](client::Delivery) { got++; },  // never acknowledges
      [&](const Status& why) {
        school_why = why;
        school_closed = true;
      });
  auto police = Connect(broker.port(), "police");
  v1::Message m = IncidentReport({"school"});
  REQUIRE(police->Publish(m).AllAccepted());
  REQUIRE(WaitFor([&] { return got == 1; }));
  broker.Stop();
  CHECK(WaitFor([&] { return school_closed.load(); }));
  CHECK(school_why.message().find("shutting_down") != std::string::npos);
  CHECK_FALSE(police->Publish(IncidentReport({"school"})).status.ok());
  // Never acknowledged, so it waits for the next start, one attempt on.
  broker.Restart();
  Receiver again(broker.port(), "school");
  REQUIRE(again.WaitCount(1));
  CHECK(again.got[0].message->envelope().message_id() == m.envelope().message_id());
  CHECK(again.got[0].attempt == 2);
}

// Probe: a reconnect storm. Receiving sessions of one agency take over one
// another in quick succession and drop, some after acknowledging one of
// their deliveries: none is sent more than its credit unacknowledged, and
// in the end every message reaches the agency and is acknowledged once.
TEST_CASE("a storm of take-overs keeps each session within its credit and loses nothing", "[sessions][takeover]") {
  TestBroker broker;
  auto police = Connect(broker.port(), "police");
  std::vector<std::string> ids;
  for (int i = 0; i < 40; ++i) {
    v1::Message m = IncidentReport({"school"});
    ids.push_back(m.envelope().message_id());
    REQUIRE(police->Publish(m).AllAccepted());
  }
  std::set<std::string> acked;
  for (int round = 0; round < 20; ++round) {
    RawClient s;
    REQUIRE(ConnectReceiving(s, broker.port(), "school", 3, /*take_over=*/true));
    std::vector<v1::Deliver> got;
    while (auto d = ReadDeliver(s, std::chrono::milliseconds(150))) got.push_back(*d);
    CHECK(got.size() <= 3);
    if (round % 2 == 1 && !got.empty()) {
      REQUIRE(SendAck(s, got[0]));
      REQUIRE(PingPong(s, 1));  // handled before the connection drops
      acked.insert(got[0].message().envelope().message_id());
    }
  }  // each drops without a goodbye, or is taken over
  RawClient last;
  REQUIRE(ConnectReceiving(last, broker.port(), "school", 8, /*take_over=*/true));
  while (acked.size() < ids.size()) {
    auto d = ReadDeliver(last);
    REQUIRE(d);
    CHECK(acked.insert(d->message().envelope().message_id()).second);  // never one acknowledged before
    REQUIRE(SendAck(last, *d));
  }
  std::vector<v1::Deliver> more;
  REQUIRE(PingPong(last, 2, &more));
  CHECK(more.empty());
  CHECK(acked == std::set<std::string>(ids.begin(), ids.end()));
  for (const auto& id : ids) {
    std::vector<std::string> events;
    REQUIRE(WaitFor([&] {
      events.clear();
      for (auto& e : AuditColumn(broker, id, "event")) {
        if (e == "delivered") events.push_back(e);
      }
      return !events.empty();
    }));
    CHECK(events.size() == 1);
  }
}
