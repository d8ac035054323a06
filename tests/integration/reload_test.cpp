// Reload: a new policy, CA bundle and CRL swapped in while sessions run; a
// bad file changes nothing; agencies removed or revoked lose their sessions.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <future>
#include <optional>

#include "common/files.h"
#include "tests/integration/test_support.h"

using namespace liaison;
using namespace liaison::test;

namespace {

// A dev PKI of its own (certs/dev-pki.sh) with police and school, in dir;
// returns its directory. Run again, it issues certificates for those whose
// files are missing.
std::string MakePki(const TempDir& dir) {
  const std::string pki = dir.File("pki");
  REQUIRE(std::system(("bash " LIAISON_SOURCE_DIR "/certs/dev-pki.sh " + pki + " police school >/dev/null").c_str()) == 0);
  return pki;
}

// Runs `openssl ca` of pki's CA with args (-revoke, -gencrl ...); true
// when it succeeds.
bool Ca(const std::string& pki, const std::string& args) {
  const std::string env = "LIAISON_PKI_DB=" + pki + "/ca-db LIAISON_CA_CRT=" + pki + "/ca.crt LIAISON_CA_KEY=" + pki +
                          "/ca.key SAN=DNS:unused.invalid ";
  return std::system((env + "openssl ca -config " LIAISON_SOURCE_DIR "/certs/openssl.cnf " + args + " 2>/dev/null")
                         .c_str()) == 0;
}

struct Watched {
  Watched(uint16_t port, const std::string& agency, const std::string& pki = "") {
    auto c = client::Client::Connect(Options(port, agency, true, pki), nullptr, [this](const Status& why) {
      std::lock_guard lock(mu);
      reason = why.message();
      closed = true;
    });
    REQUIRE(c.ok());
    client = std::move(c).value();
  }
  std::string why() {
    std::lock_guard lock(mu);
    return reason;
  }
  std::atomic<bool> closed{false};
  std::mutex mu;
  std::string reason;
  std::unique_ptr<client::Client> client;
};

std::string Without(const std::string& agency) {
  std::vector<std::string> rest;
  for (const auto& a : DefaultAgencies()) {
    if (a != agency) rest.push_back(a);
  }
  return PolicyYaml(rest);
}

}  // namespace

TEST_CASE("a reload with an invalid policy keeps everything as it was", "[reload]") {
  TestBroker broker;
  Watched school(broker.port(), "school");
  REQUIRE(WriteFileAtomic(broker.dir() + "/policy.yaml", "version: 1\nagencies: [{id: police}]\n").ok());
  auto r = broker.server().Reload();
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("nothing changed") != std::string::npos);
  CHECK(r.status().message().find("policy.yaml:2") != std::string::npos);
  // The old policy still decides: it still knows agency social.
  auto police = Connect(broker.port(), "police");
  CHECK(police->Publish(IncidentReport({"social"})).outcomes.at(0).outcome == "queued");
  CHECK_FALSE(school.closed);
}

TEST_CASE("a reload closes the sessions of an agency removed from the policy, and only those", "[reload]") {
  TestBroker broker;
  Watched school(broker.port(), "school");
  Watched social(broker.port(), "social");
  REQUIRE(WriteFileAtomic(broker.dir() + "/policy.yaml", Without("school")).ok());
  auto r = broker.server().Reload();
  REQUIRE(r.ok());
  REQUIRE(WaitFor([&] { return school.closed.load(); }));
  CHECK(school.why().find("no longer in the policy") != std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK_FALSE(social.closed);
  // And the agency can no longer connect.
  auto again = client::Client::Connect(Options(broker.port(), "school"));
  CHECK_FALSE(again.ok());
}

TEST_CASE("a reload with a new CRL closes the session of a revoked certificate", "[reload]") {
  TempDir dir;
  const std::string pki = MakePki(dir);
  TestBroker broker({}, 2, PolicyYaml({"police", "school"}), pki);
  Watched school(broker.port(), "school", pki);
  Watched police(broker.port(), "police", pki);
  REQUIRE(Ca(pki, "-revoke " + pki + "/school.crt"));
  REQUIRE(Ca(pki, "-gencrl -crldays 30 -out " + pki + "/ca.crl"));
  auto r = broker.server().Reload();
  REQUIRE(r.ok());
  REQUIRE(WaitFor([&] { return school.closed.load(); }));
  CHECK(school.why().find("revoked") != std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK_FALSE(police.closed);
}

// A connection's TLS context is the one of the moment it was accepted. A
// reload that revokes a certificate re-checked only the sessions past their
// handshake: one accepted before the reload and shaking hands after it was
// verified against the old CRL and got a session, and its agency's
// deliveries, with a revoked certificate.
TEST_CASE("a handshake begun before a reload is checked against the reloaded CRL", "[reload]") {
  TempDir dir;
  const std::string pki = MakePki(dir);
  TestBroker broker({}, 2, PolicyYaml({"police", "school"}), pki);
  // Something waits for school.
  auto police = client::Client::Connect(Options(broker.port(), "police", false, pki));
  REQUIRE(police.ok());
  REQUIRE((*police)->Publish(IncidentReport({"school"})).AllAccepted());

  const auto accepted_before = broker.server().counters().connections_accepted;
  RawClient raw;
  RawClient::Options o;
  o.tls = TlsFiles{pki + "/school.crt", pki + "/school.key", pki + "/ca.crt", {}};
  o.before_handshake = [&] {
    // The broker has accepted the TCP connection, and taken the TLS files
    // of that moment, when school's certificate is revoked and reloaded.
    REQUIRE(WaitFor([&] { return broker.server().counters().connections_accepted > accepted_before; }));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    REQUIRE(Ca(pki, "-revoke " + pki + "/school.crt"));
    const std::string crl = pki + "/ca.crl";
    REQUIRE(Ca(pki, "-gencrl -crldays 30 -out " + crl));
    REQUIRE(broker.server().Reload().ok());
  };
  // The handshake completes (the connection's context is the old one), but
  // no session follows: the first frame is a fatal permission_denied, not
  // a Welcome and a delivery.
  REQUIRE(raw.Connect(broker.port(), o).ok());
  REQUIRE(raw.SendHello(/*receive=*/true, 4));
  auto f = raw.ReadFrame();
  REQUIRE(f);
  INFO(f->DebugString());
  REQUIRE(f->has_error());
  CHECK(f->error().code() == v1::REASON_PERMISSION_DENIED);
  CHECK(f->error().fatal());
  CHECK(f->error().message().find("revoked") != std::string::npos);
  CHECK(raw.WaitClosed());
  // A connection made after the reload is refused in its handshake, as before.
  CHECK_FALSE(client::Client::Connect(Options(broker.port(), "school", true, pki)).ok());
}

// A CRL that has expired, or that its CA did not sign, loads, but OpenSSL
// then refuses every certificate of that CA ("CRL has expired", "CRL
// signature failure"). A reload took such a file in, re-checked every
// session against it and closed them all, and every reconnection was
// refused: one wrong file cut the whole network off.
TEST_CASE("a reload with a CRL that has expired or that its CA did not sign keeps the previous one", "[reload]") {
  TempDir dir;
  const std::string pki = MakePki(dir);
  TestBroker broker({}, 2, PolicyYaml({"police", "school"}), pki);
  Watched school(broker.port(), "school", pki);
  Watched police(broker.port(), "police", pki);
  const std::string crl = pki + "/ca.crl";
  std::string expect;
  SECTION("expired") {
    REQUIRE(Ca(pki, "-gencrl -crl_lastupdate 20250101000000Z -crl_nextupdate 20250102000000Z -out " + crl));
    expect = "has expired";
  }
  SECTION("not signed by its CA") {
    // The CA's own CRL with one byte of its signature changed.
    const std::string der = dir.File("crl.der");
    REQUIRE(std::system(("openssl crl -in " + crl + " -outform DER -out " + der).c_str()) == 0);
    std::string bytes = *ReadFile(der, 1 << 20);
    bytes.back() ^= 0x01;
    REQUIRE(WriteFileAtomic(der, bytes).ok());
    REQUIRE(std::system(("openssl crl -inform DER -in " + der + " -out " + crl).c_str()) == 0);
    expect = "does not verify";
  }
  auto r = broker.server().Reload();
  REQUIRE_FALSE(r.ok());
  INFO(r.status().message());
  CHECK(r.status().message().find("nothing changed") != std::string::npos);
  CHECK(r.status().message().find(crl + " " + expect) != std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK_FALSE(school.closed);
  CHECK_FALSE(police.closed);
  CHECK(client::Client::Connect(Options(broker.port(), "police", false, pki)).ok());
}

// Probe (DESIGN.md, Transport and identity; Delivery guarantees): a session
// closed because a reload revoked its certificate gives back what it held
// unacknowledged; the agency's next session (with a new certificate) gets
// it first, as the next attempt, and each copy is delivered once.
TEST_CASE("deliveries held by a session whose certificate is revoked reach the next session as the next attempt",
          "[reload]") {
  TempDir dir;
  const std::string pki = MakePki(dir);
  TestBroker broker({}, 2, PolicyYaml({"police", "school"}), pki);
  auto police = client::Client::Connect(Options(broker.port(), "police", false, pki));
  REQUIRE(police.ok());
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    v1::Message m = IncidentReport({"school"});
    ids.push_back(m.envelope().message_id());
    REQUIRE((*police)->Publish(m).AllAccepted());
  }
  RawClient::Options o;
  o.tls = TlsFiles{pki + "/school.crt", pki + "/school.key", pki + "/ca.crt", {}};
  RawClient first;
  REQUIRE(first.Connect(broker.port(), o).ok());
  REQUIRE(first.SendHello(/*receive=*/true, 2));
  std::vector<v1::Deliver> held;
  for (int i = 0; i < 2; ++i) {
    auto d = ReadDeliver(first);
    REQUIRE(d);
    CHECK(d->message().envelope().message_id() == ids[i]);
    CHECK(d->attempt() == 1);
    held.push_back(*d);
  }
  REQUIRE(Ca(pki, "-revoke " + pki + "/school.crt"));
  const std::string crl = pki + "/ca.crl";
  REQUIRE(Ca(pki, "-gencrl -crldays 30 -out " + crl));
  REQUIRE(broker.server().Reload().ok());
  std::optional<v1::Frame> f;
  while ((f = first.ReadFrame()) && !f->has_error()) {
  }
  REQUIRE(f);
  CHECK(f->error().code() == v1::REASON_PERMISSION_DENIED);
  // Acknowledgements sent now settle nothing: the session is closing.
  for (const auto& d : held) (void)SendAck(first, d);
  CHECK(first.WaitClosed());

  // school gets a new certificate (the old one stays revoked).
  REQUIRE(std::rename((pki + "/school.crt").c_str(), (pki + "/school-revoked.crt").c_str()) == 0);
  MakePki(dir);  // the same PKI, with a new certificate for school
  REQUIRE(broker.server().Reload().ok());
  RawClient second;
  REQUIRE(second.Connect(broker.port(), o).ok());
  REQUIRE(second.SendHello(/*receive=*/true, 16));
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
  CHECK(attempts == std::vector<uint32_t>{2, 2, 1});
  std::vector<v1::Deliver> more;
  REQUIRE(PingPong(second, 1, &more));
  CHECK(more.empty());
  for (size_t i = 0; i < ids.size(); ++i) {
    std::vector<std::string> delivered;
    REQUIRE(WaitFor([&] {
      delivered.clear();
      for (const auto& e : AuditColumn(broker, ids[i], "event || ':' || recipient")) {
        if (e == "delivered:school") delivered.push_back(e);
      }
      return !delivered.empty();
    }));
    CHECK(delivered.size() == 1);
  }
}

// A FIFO in the place of the policy or of a CRL (a hostile or mistaken
// file): opening it waited for a writer for ever, so the reload never
// ended, logged nothing, and every later reload (a new CRL revoking a
// certificate, say) waited behind it.
TEST_CASE("a reload with a FIFO in place of the policy or a CRL is refused at once", "[reload]") {
  TempDir dir;
  const std::string pki = MakePki(dir);
  TestBroker broker({}, 2, PolicyYaml({"police", "school"}), pki);
  Watched school(broker.port(), "school", pki);
  std::string path;
  SECTION("policy") { path = broker.dir() + "/policy.yaml"; }
  SECTION("CRL") { path = pki + "/ca.crl"; }
  REQUIRE(::unlink(path.c_str()) == 0);
  REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
  auto reload = std::async(std::launch::async, [&] { return broker.server().Reload(); });
  const bool answered = reload.wait_for(std::chrono::seconds(3)) == std::future_status::ready;
  if (!answered) {
    // A writer that opens and closes the FIFO lets the reload end, and the test.
    const int fd = ::open(path.c_str(), O_WRONLY | O_NONBLOCK);
    if (fd >= 0) ::close(fd);
  }
  CHECK(answered);
  auto r = reload.get();
  REQUIRE_FALSE(r.ok());
  INFO(r.status().message());
  CHECK(r.status().message().find("nothing changed") != std::string::npos);
  CHECK(r.status().message().find(path + " is not a regular file") != std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK_FALSE(school.closed);
}
