// Peers that break the protocol: each gets an Error (or is dropped), and
// the broker keeps serving everyone else.
#include <arpa/inet.h>
#include <catch2/catch.hpp>
#include <netinet/in.h>
#include <sched.h>
#include <sqlite3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <set>

#include <random>

#include "common/audit_record.h"
#include "common/uuid.h"
#include "proto/frame_codec.h"
#include "tests/integration/test_support.h"
#include "tests/proto/wire_by_hand.h"

using namespace liaison;
using namespace liaison::test;

namespace {

// Proves the broker still serves: school receives a message from police.
void CheckStillServing(uint16_t port) {
  std::atomic<int> got{0};
  std::unique_ptr<client::Client> school;
  school = Connect(port, "school", true, [&](client::Delivery d) {
    got++;
    school->Acknowledge(d);
  });
  auto police = Connect(port, "police");
  auto r = police->Publish(IncidentReport({"school"}));
  CHECK(r.AllAccepted());
  CHECK(WaitFor([&] { return got == 1; }));
}

std::unique_ptr<RawClient> Authenticated(uint16_t port, const std::string& agency) {
  auto raw = std::make_unique<RawClient>();
  RawClient::Options o;
  o.tls = AgencyTls(agency);
  REQUIRE(raw->Connect(port, o).ok());
  return raw;
}

// Runs body on a thread of its own in a new network namespace whose
// loopback also holds fd00:64::1 to fd00:64::6 (one /64), so that a test
// can connect from several addresses of one IPv6 /64; what body starts
// (the broker's threads, sockets) stays in it. Catch's assertions belong
// after it returns. Why it could not run (no privilege to make a
// namespace), or "" once body has run.
std::string InIpv6Namespace(const std::function<void()>& body) {
  std::string skipped;
  std::thread([&] {
    if (::unshare(CLONE_NEWNET) != 0) {
      skipped = std::string("unshare(CLONE_NEWNET): ") + std::strerror(errno);
      return;
    }
    std::string setup = "ip link set lo up";
    for (int i = 1; i <= 6; ++i) setup += " && ip -6 addr add fd00:64::" + std::to_string(i) + "/64 dev lo nodad";
    if (std::system((setup + " 2>/dev/null").c_str()) != 0) {
      skipped = "cannot add addresses to the namespace's loopback";
      return;
    }
    body();
  }).join();
  return skipped;
}

// A plain TCP connection from fd00:64::<from> to fd00:64::1, port; -1 if
// it cannot be made.
int ConnectFrom(int from, uint16_t port) {
  const int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 src{}, dst{};
  src.sin6_family = dst.sin6_family = AF_INET6;
  ::inet_pton(AF_INET6, ("fd00:64::" + std::to_string(from)).c_str(), &src.sin6_addr);
  ::inet_pton(AF_INET6, "fd00:64::1", &dst.sin6_addr);
  dst.sin6_port = htons(port);
  if (fd >= 0 && (::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0 ||
                  ::connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof dst) != 0)) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// True when the peer closes fd within timeout (whatever it sent before).
bool ClosedWithin(int fd, std::chrono::milliseconds timeout) {
  timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char c[256];
  ssize_t n;
  while ((n = ::recv(fd, c, sizeof c, 0)) > 0) {
  }
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

}  // namespace

TEST_CASE("a zero-length frame is a protocol error", "[abuse]") {
  TestBroker broker;
  auto raw = Authenticated(broker.port(), "police");
  REQUIRE(raw->SendBytes(FrameHeader(0)));
  auto f = raw->ReadFrame();
  REQUIRE(f.has_value());
  REQUIRE(f->has_error());
  CHECK(f->error().code() == v1::REASON_FRAME_TOO_LARGE);
  CHECK(f->error().fatal());
  CHECK(raw->WaitClosed());
  CheckStillServing(broker.port());
}

TEST_CASE("an oversize frame is refused without buffering its body", "[abuse]") {
  broker::Limits l;
  l.max_frame_bytes = 64 * 1024;
  l.max_queued_bytes = 1024 * 1024;
  TestBroker broker(l);
  auto raw = Authenticated(broker.port(), "police");
  REQUIRE(raw->SendHello());
  REQUIRE(raw->ReadFrame().has_value());
  REQUIRE(raw->SendBytes(FrameHeader(64 * 1024 + 1)));
  auto f = raw->ReadFrame();
  REQUIRE(f.has_value());
  REQUIRE(f->has_error());
  CHECK(f->error().code() == v1::REASON_FRAME_TOO_LARGE);
  CHECK(raw->WaitClosed());
  CheckStillServing(broker.port());
}

TEST_CASE("garbage bytes get an Error and the broker stays up", "[abuse]") {
  TestBroker broker;
  std::mt19937 rng(42);
  for (int round = 0; round < 5; ++round) {
    auto raw = Authenticated(broker.port(), "police");
    std::string junk(200, '\0');
    for (auto& c : junk) c = static_cast<char>(rng());
    junk.replace(0, 4, FrameHeader(196));  // a plausible length, a body of noise
    REQUIRE(raw->SendBytes(junk));
    auto f = raw->ReadFrame();
    REQUIRE(f.has_value());
    REQUIRE(f->has_error());
    CHECK((f->error().code() == v1::REASON_MALFORMED_FRAME || f->error().code() == v1::REASON_PROTOCOL_ERROR));
  }
  CHECK(broker.server().counters().protocol_errors >= 1);
  CheckStillServing(broker.port());
}

TEST_CASE("a frame before Hello is a protocol error", "[abuse]") {
  TestBroker broker;
  auto raw = Authenticated(broker.port(), "police");
  v1::Frame f;
  f.mutable_publish()->set_request_id(7);
  REQUIRE(raw->SendFrame(f));
  auto e = raw->ReadFrame();
  REQUIRE(e.has_value());
  REQUIRE(e->has_error());
  CHECK(e->error().code() == v1::REASON_PROTOCOL_ERROR);
  CHECK(raw->WaitClosed());
}

TEST_CASE("frames only the broker sends, and unknown frame types, get an Error but keep the session", "[abuse]") {
  TestBroker broker;
  auto raw = Authenticated(broker.port(), "police");
  REQUIRE(raw->SendHello());
  REQUIRE(raw->ReadFrame().has_value());
  v1::Frame deliver;
  deliver.mutable_deliver()->set_delivery_id(1);
  REQUIRE(raw->SendFrame(deliver));
  auto e = raw->ReadFrame();
  REQUIRE(e.has_value());
  REQUIRE(e->has_error());
  CHECK(e->error().code() == v1::REASON_PROTOCOL_ERROR);
  CHECK_FALSE(e->error().fatal());
  // Field 99 of Frame is unknown to this broker: dropped, leaving an empty frame.
  REQUIRE(raw->SendBytes(FrameHeader(3) + std::string("\x98\x06\x01", 3)));  // field 99, varint 1
  auto e2 = raw->ReadFrame();
  REQUIRE(e2.has_value());
  CHECK(e2->has_error());
  v1::Frame ping;
  ping.mutable_ping()->set_nonce(5);
  if (!e2->error().fatal()) {
    REQUIRE(raw->SendFrame(ping));
    auto pong = raw->ReadFrame();
    REQUIRE(pong.has_value());
    CHECK(pong->pong().nonce() == 5);
  }
}

TEST_CASE("a DeliveryAck for a delivery this session never got is refused", "[abuse]") {
  TestBroker broker;
  auto raw = Authenticated(broker.port(), "school");
  REQUIRE(raw->SendHello(/*receive=*/true));
  REQUIRE(raw->ReadFrame().has_value());
  v1::Frame ack;
  ack.mutable_delivery_ack()->set_delivery_id(12345);
  REQUIRE(raw->SendFrame(ack));
  auto e = raw->ReadFrame();
  REQUIRE(e.has_value());
  REQUIRE(e->has_error());
  CHECK(e->error().code() == v1::REASON_UNKNOWN_DELIVERY);

  // A session that does not receive cannot acknowledge another's delivery.
  auto other = Authenticated(broker.port(), "school");
  REQUIRE(other->SendHello(false));
  REQUIRE(other->ReadFrame().has_value());
  ack.mutable_delivery_ack()->set_delivery_id(1);
  REQUIRE(other->SendFrame(ack));
  auto e2 = other->ReadFrame();
  REQUIRE(e2.has_value());
  CHECK(e2->error().code() == v1::REASON_NOT_RECEIVING);
}

TEST_CASE("a peer that disconnects mid-frame does not disturb the broker", "[abuse]") {
  TestBroker broker;
  for (int i = 0; i < 10; ++i) {
    auto raw = Authenticated(broker.port(), "police");
    REQUIRE(raw->SendHello());
    REQUIRE(raw->ReadFrame().has_value());
    REQUIRE(raw->SendBytes(FrameHeader(1000) + std::string(10, 'x')));
    raw->Close();
  }
  REQUIRE(WaitFor([&] { return broker.server().counters().sessions == 0; }));
  CheckStillServing(broker.port());
}

TEST_CASE("a silent TCP client is dropped at the handshake deadline", "[abuse]") {
  broker::Limits l;
  l.handshake_timeout = std::chrono::milliseconds(300);
  TestBroker broker(l);
  RawClient raw;
  REQUIRE(raw.Connect(broker.port(), RawClient::Options{}).ok());
  const auto start = std::chrono::steady_clock::now();
  CHECK(raw.WaitClosed(std::chrono::seconds(5)));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(3));
  CheckStillServing(broker.port());
}

TEST_CASE("an authenticated client that never says Hello is dropped", "[abuse]") {
  broker::Limits l;
  l.handshake_timeout = std::chrono::milliseconds(300);
  TestBroker broker(l);
  auto raw = Authenticated(broker.port(), "police");
  CHECK(raw->WaitClosed(std::chrono::seconds(5)));
}

TEST_CASE("a receiver that never reads is disconnected, everyone else keeps going", "[abuse]") {
  broker::Limits l;
  l.write_timeout = std::chrono::milliseconds(500);
  l.max_queued_bytes = 2 * 1024 * 1024;
  l.delivery_timeout = std::chrono::seconds(60);
  TestBroker broker(l);
  auto stuck = Authenticated(broker.port(), "health");
  REQUIRE(stuck->SendHello(/*receive=*/true, /*credit=*/1000));
  REQUIRE(stuck->ReadFrame().has_value());
  // From now on "health" reads nothing.
  auto police = Connect(broker.port(), "police");
  std::atomic<int> answered{0}, queued{0};
  v1::Message big = IncidentReport({"health"});
  big.mutable_incident_report()->set_description(std::string(60 * 1024, 'd'));
  std::set<std::string> ids;
  for (int i = 0; i < 200; ++i) {
    big.mutable_envelope()->set_message_id(liaison::NewUuid());
    ids.insert(big.envelope().message_id());
    police->Publish(big, [&](client::PublishResult r) {
      answered++;
      if (r.AllAccepted()) queued++;
    });
  }
  REQUIRE(WaitFor([&] { return answered == 200; }, std::chrono::seconds(20)));
  CHECK(queued == 200);  // stored for health, whatever its session does
  // The stuck session is cut off once its writes stall.
  CHECK(WaitFor([&] { return broker.server().counters().sessions <= 1; }, std::chrono::seconds(10)));
  CheckStillServing(broker.port());
  // A working session of health then gets every message, once each.
  Receiver health(broker.port(), "health");
  REQUIRE(health.WaitCount(200, std::chrono::seconds(20)));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::lock_guard lock(health.mu);
  std::set<std::string> got;
  for (const auto& d : health.got) got.insert(d.message->envelope().message_id());
  CHECK(health.got.size() == 200);
  CHECK(got == ids);
}

TEST_CASE("an agency that publishes too fast is rate limited, and the others' messages still flow", "[abuse][limits]") {
  broker::Limits l;
  l.publish_rate_per_agency = 20;
  l.publish_burst_per_agency = 20;
  TestBroker broker(l);
  Receiver school(broker.port(), "school");
  auto police = Connect(broker.port(), "police");
  auto social = Connect(broker.port(), "social");
  std::atomic<int> answered{0}, limited{0}, queued{0};
  for (int i = 0; i < 200; ++i) {
    police->Publish(IncidentReport({"school"}), [&](client::PublishResult r) {
      if (r.error_code == "rate_limited") limited++;
      if (r.AllAccepted()) queued++;
      answered++;
    });
  }
  // Meanwhile another agency is not slowed down.
  for (int i = 0; i < 10; ++i) CHECK(social->Publish(IncidentReport({"school"})).AllAccepted());
  REQUIRE(WaitFor([&] { return answered == 200; }));
  CHECK(limited > 100);
  CHECK(queued >= 20);
  CHECK(limited + queued == 200);
  REQUIRE(school.WaitCount(static_cast<size_t>(queued + 10)));
  // The bucket refills: after a pause police may publish again.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(police->Publish(IncidentReport({"school"})).AllAccepted());
}

TEST_CASE("an agency that publishes too many bytes a second is rate limited, and the others still flow",
          "[abuse][limits]") {
  broker::Limits l;
  l.publish_bytes_per_agency = 100 * 1024;  // a second, after a burst of
  l.publish_bytes_burst_per_agency = 200 * 1024;
  TestBroker broker(l);
  auto police = Connect(broker.port(), "police");
  auto social = Connect(broker.port(), "social");
  v1::Message big = IncidentReport({"school"});
  big.mutable_incident_report()->set_description(std::string(60 * 1024, 'd'));
  // Three frames of about 61 KB fit the burst; the fourth does not, although
  // four publishes are far below the count limit (1,000 a second).
  int queued = 0, limited = 0;
  std::string detail;
  for (int i = 0; i < 4; ++i) {
    big.mutable_envelope()->set_message_id(liaison::NewUuid());
    const auto r = police->Publish(big);
    if (r.AllAccepted()) queued++;
    if (r.error_code == "rate_limited") {
      limited++;
      detail = r.status.message();
    }
  }
  CHECK(queued == 3);
  CHECK(limited == 1);
  CHECK(detail.find("publishes more bytes than this broker allows (102400 a second)") != std::string::npos);
  // Small messages of police are refused too until the bucket refills; other
  // agencies are not slowed down.
  big.mutable_envelope()->set_message_id(liaison::NewUuid());
  CHECK(social->Publish(big).AllAccepted());
  CHECK(WaitFor([&] { return police->Publish(IncidentReport({"school"})).AllAccepted(); }, std::chrono::seconds(5)));
}

TEST_CASE("an agency may hold only so many connections", "[abuse][limits]") {
  broker::Limits l;
  l.max_connections_per_agency = 2;
  TestBroker broker(l);
  auto a = Connect(broker.port(), "police");
  auto b = Connect(broker.port(), "police");
  auto c = client::Client::Connect(Options(broker.port(), "police"));
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().message().find("too_many_connections") != std::string::npos);
  auto school = Connect(broker.port(), "school");  // other agencies are not affected
  CHECK(school->connected());
  // A connection that ends frees its place.
  a->Close();
  CHECK(WaitFor([&] { return client::Client::Connect(Options(broker.port(), "police")).ok(); }));
}

TEST_CASE("one source address may hold only so many TLS handshakes at once", "[abuse][limits]") {
  broker::Limits l;
  l.max_handshakes_per_source = 2;
  l.handshake_timeout = std::chrono::milliseconds(1500);
  TestBroker broker(l);
  // Two silent TCP clients occupy the handshake slots of 127.0.0.1.
  RawClient s1, s2, s3;
  REQUIRE(s1.Connect(broker.port(), {}).ok());
  REQUIRE(s2.Connect(broker.port(), {}).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  // A third is closed at once, before any TLS work.
  REQUIRE(s3.Connect(broker.port(), {}).ok());
  CHECK(s3.WaitClosed(std::chrono::milliseconds(500)));
  CHECK_FALSE(s1.WaitClosed(std::chrono::milliseconds(10)));
  // Once the silent ones hit the handshake deadline, agencies connect again.
  CHECK(s1.WaitClosed(std::chrono::seconds(5)));
  CHECK(s2.WaitClosed(std::chrono::seconds(5)));
  CHECK(WaitFor([&] { return client::Client::Connect(Options(broker.port(), "police")).ok(); }));
}

TEST_CASE("one source address may begin only so many TLS handshakes a second", "[abuse][limits]") {
  broker::Limits l;
  l.handshake_rate_per_source = 1;
  l.handshake_burst_per_source = 3;
  TestBroker broker(l);
  const std::string db = broker.dir() + "/data/liaison.db";
  // The burst: three handshakes.
  std::vector<std::unique_ptr<client::Client>> open;
  for (int i = 0; i < 3; ++i) open.push_back(Connect(broker.port(), "police"));
  // Then connections from the address are closed at once, before any TLS
  // work, until its bucket refills (one a second).
  auto refused = client::Client::Connect(Options(broker.port(), "police"));
  CHECK_FALSE(refused.ok());
  CHECK(WaitFor([&] { return client::Client::Connect(Options(broker.port(), "police")).ok(); },
                std::chrono::seconds(5)));
  broker.Stop();  // the refusals are audited, one record per source and reason
  REQUIRE(broker.server().SyncStore().ok());
  CHECK(QueryInt(db, "SELECT count(*) FROM audit_log WHERE event = 'connection_refused' AND decision = "
                     "'handshake_rate'") >= 1);
}

// Connections refused for the handshake rate are audited per source, as the
// rate is kept: one record for an IPv6 /64 whatever addresses of it they
// came from (one host may use them all).
TEST_CASE("connections refused for the handshake rate from one IPv6 /64 are audited as one source", "[abuse][limits]") {
  bool connected = true;
  std::vector<std::string> details;  // of the handshake_rate records
  const std::string skipped = InIpv6Namespace([&] {
    broker::Limits l;
    l.handshake_rate_per_source = 1;
    l.handshake_burst_per_source = 1;
    l.handshake_timeout = std::chrono::milliseconds(500);
    TestBroker broker(l, 2, "", "", "fd00:64::1");
    // Five plain TCP connections, each from another address of the /64:
    // the first takes the burst, the others are refused before TLS.
    std::vector<int> fds;
    for (int i = 2; i <= 6; ++i) {
      const int fd = ConnectFrom(i, broker.port());
      connected = connected && fd >= 0;
      if (fd >= 0) fds.push_back(fd);
    }
    // Until the broker has closed each (the first at its handshake deadline).
    for (const int fd : fds) {
      ClosedWithin(fd, std::chrono::seconds(5));
      ::close(fd);
    }
    broker.Stop();
    if (!broker.server().SyncStore().ok()) return;
    // The records' details are in their leaves.
    sqlite3* db = nullptr;
    sqlite3_open_v2((broker.dir() + "/data/liaison.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
    sqlite3_stmt* q = nullptr;
    sqlite3_prepare_v2(db,
                       "SELECT leaf FROM audit_log WHERE event = 'connection_refused' AND decision = "
                       "'handshake_rate'",
                       -1, &q, nullptr);
    while (q != nullptr && sqlite3_step(q) == SQLITE_ROW) {
      auto r = audit::DecodeLeaf(std::string(static_cast<const char*>(sqlite3_column_blob(q, 0)),
                                             static_cast<size_t>(sqlite3_column_bytes(q, 0))));
      details.push_back(r.ok() ? r->detail : r.status().ToString());
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
  });
  if (!skipped.empty()) {
    WARN("the IPv6 test did not run: " << skipped);
    return;
  }
  REQUIRE(connected);
  REQUIRE(details.size() == 1);
  CHECK(details[0].rfind("source=fd00:64::/64 count=", 0) == 0);
}

// The handshakes in progress are limited per source too: one host cannot
// hold more of them by using more addresses of its /64.
TEST_CASE("one IPv6 /64 may hold only so many TLS handshakes at once whatever addresses it uses", "[abuse][limits]") {
  bool connected = true, third_closed = false, first_closed = true;
  const std::string skipped = InIpv6Namespace([&] {
    broker::Limits l;
    l.max_handshakes_per_source = 2;
    l.handshake_timeout = std::chrono::milliseconds(1500);
    TestBroker broker(l, 2, "", "", "fd00:64::1");
    // Two silent TCP clients from two addresses occupy the /64's slots; a
    // third from another address is closed at once, before any TLS work.
    const int s1 = ConnectFrom(2, broker.port());
    const int s2 = ConnectFrom(3, broker.port());
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const int s3 = ConnectFrom(4, broker.port());
    connected = s1 >= 0 && s2 >= 0 && s3 >= 0;
    if (connected) {
      third_closed = ClosedWithin(s3, std::chrono::milliseconds(500));
      first_closed = ClosedWithin(s1, std::chrono::milliseconds(10));
    }
    for (const int fd : {s1, s2, s3}) {
      if (fd >= 0) ::close(fd);
    }
  });
  if (!skipped.empty()) {
    WARN("the IPv6 test did not run: " << skipped);
    return;
  }
  REQUIRE(connected);
  CHECK(third_closed);
  CHECK_FALSE(first_closed);
}

TEST_CASE("an agency may have only so many audit requests in progress, the rest get audit_busy", "[abuse][limits]") {
  broker::Limits l;
  l.max_audit_requests_per_agency = 1;
  TestBroker broker(l);
  auto police = Connect(broker.port(), "police");
  REQUIRE(police->Publish(IncidentReport({"school"})).status.ok());  // the log has records now
  auto raw = Authenticated(broker.port(), "social");
  REQUIRE(raw->SendHello());
  REQUIRE(raw->ReadFrame().has_value());  // Welcome
  // Many consistency proof requests in one write: while the first is being
  // worked on, the others are refused at once instead of queueing.
  constexpr int kRequests = 40;
  std::string burst;
  for (int i = 1; i <= kRequests; ++i) {
    v1::Frame f;
    f.mutable_consistency_proof_request()->set_request_id(i);
    f.mutable_consistency_proof_request()->set_old_size(1);
    f.mutable_consistency_proof_request()->set_new_size(2);
    burst += proto::EncodeFrame(f, 1 << 20).value();
  }
  REQUIRE(raw->SendBytes(burst));
  int proofs = 0, busy = 0, other = 0;
  for (int i = 0; i < kRequests; ++i) {
    auto f = raw->ReadFrame();
    REQUIRE(f.has_value());
    if (f->has_consistency_proof()) {
      proofs++;
    } else if (f->has_error() && f->error().code() == v1::REASON_AUDIT_BUSY) {
      busy++;
      CHECK_FALSE(f->error().fatal());
    } else {
      other++;
    }
  }
  CHECK(proofs >= 1);
  CHECK(busy >= 1);
  CHECK(other == 0);
  // The slot comes back once the answer is out.
  v1::Frame again;
  again.mutable_consistency_proof_request()->set_request_id(100);
  again.mutable_consistency_proof_request()->set_old_size(1);
  again.mutable_consistency_proof_request()->set_new_size(2);
  REQUIRE(raw->SendFrame(again));
  auto answer = raw->ReadFrame();
  REQUIRE(answer.has_value());
  CHECK(answer->has_consistency_proof());
}
