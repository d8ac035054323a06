// Who may connect: every certificate defect is refused, identity comes from
// the certificate only, and TLS is 1.3 with a client certificate or nothing.
#include <catch2/catch.hpp>

#include <cstdlib>

#include "tests/integration/test_support.h"

using namespace liaison;
using namespace liaison::test;

TEST_CASE("an agency certificate is accepted and identifies its agency", "[tls]") {
  TestBroker broker;
  auto c = Connect(broker.port(), "police");
  CHECK(c->session().agency_id == "police");
  CHECK(c->session().broker_name == "test-broker");
}

TEST_CASE("certificates with one defect each are refused", "[tls]") {
  TestBroker broker;
  // Each defect certificate claims agency police; only the defect differs.
  const char* defects[] = {"expired", "revoked", "wrong-ca", "no-client-auth", "wrong-san", "no-san"};
  for (const char* defect : defects) {
    SECTION(defect) {
      auto o = Options(broker.port(), "police");
      o.tls = DefectTls(defect);
      if (std::string(defect) == "wrong-ca") o.tls.ca_bundle = PkiDir() + "/ca.crt";
      auto c = client::Client::Connect(o);
      REQUIRE_FALSE(c.ok());
      INFO(c.status().ToString());
      CHECK(c.status().IsPermissionDenied());
      // The client may hear the alert before the broker's handshake returns.
      CHECK(WaitFor([&] {
        const auto k = broker.server().counters();
        return k.handshakes_failed + k.identities_refused == 1;
      }));
    }
  }
}

TEST_CASE("a CN that names an agency without the SAN URI does not identify it", "[tls]") {
  TestBroker broker;
  auto o = Options(broker.port(), "police");
  o.tls = DefectTls("no-san");  // CN=police, clientAuth, issued by the CA
  auto c = client::Client::Connect(o);
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().IsPermissionDenied());
  CHECK(WaitFor([&] { return broker.server().counters().identities_refused == 1; }));
}

TEST_CASE("a client without a certificate is refused in the handshake", "[tls]") {
  TestBroker broker;
  RawClient raw;
  RawClient::Options o;
  o.tls = AgencyTls("police");
  o.present_certificate = false;
  Status s = raw.Connect(broker.port(), o);
  // TLS 1.3: the client may finish its side; the refusal arrives as an alert.
  if (s.ok()) {
    raw.SendHello();
    CHECK_FALSE(raw.ReadFrame(std::chrono::seconds(3)).has_value());
  }
  CHECK(WaitFor([&] { return broker.server().counters().handshakes_failed == 1; }));
}

TEST_CASE("a TLS 1.2-only client cannot connect", "[tls]") {
  TestBroker broker;
  RawClient raw;
  RawClient::Options o;
  o.tls = AgencyTls("police");
  o.tls12_only = true;
  Status s = raw.Connect(broker.port(), o);
  CHECK_FALSE(s.ok());
  CHECK(WaitFor([&] { return broker.server().counters().handshakes_failed == 1; }));
}

TEST_CASE("a plaintext client gets no answer and is closed", "[tls]") {
  TestBroker broker;
  RawClient raw;
  REQUIRE(raw.Connect(broker.port(), RawClient::Options{}).ok());
  REQUIRE(raw.SendHello());
  CHECK_FALSE(raw.ReadFrame(std::chrono::seconds(3)).has_value());
  CHECK(WaitFor([&] { return broker.server().counters().handshakes_failed == 1; }));
}

TEST_CASE("the client refuses a broker whose certificate does not carry the expected name", "[tls]") {
  TestBroker broker;
  auto o = Options(broker.port(), "police");
  for (const char* name : {"broker.example.org", "127.0.0.2"}) {
    o.server_name = name;
    auto c = client::Client::Connect(o);
    REQUIRE_FALSE(c.ok());
    INFO(c.status().ToString());
    CHECK(c.status().message().find("TLS handshake") != std::string::npos);
    CHECK(c.status().message().find(std::string("not valid for the name '") + name + "'") != std::string::npos);
  }
  o.server_name = "127.0.0.1";  // the broker's certificate carries IP:127.0.0.1
  auto c = client::Client::Connect(o);
  CHECK(c.ok());
}

TEST_CASE("the client refuses a broker certificate from an unknown CA", "[tls]") {
  TestBroker broker;
  auto o = Options(broker.port(), "police");
  o.tls.ca_bundle = PkiDir() + "/test/wrong-ca-ca.crt";
  auto c = client::Client::Connect(o);
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().message().find("certificate") != std::string::npos);
}

TEST_CASE("a spoofed sender is refused and nothing is delivered", "[identity]") {
  TestBroker broker;
  std::mutex mu;
  std::vector<std::string> senders;
  std::unique_ptr<client::Client> school;
  school = Connect(broker.port(), "school", true, [&](client::Delivery d) {
    std::lock_guard lock(mu);
    senders.push_back(d.message->envelope().sender());
    school->Acknowledge(d);
  });
  auto police = Connect(broker.port(), "police");
  v1::Message m = IncidentReport({"school"});
  m.mutable_envelope()->set_sender("social");  // police pretends to be social services
  auto r = police->Publish(m);
  CHECK_FALSE(r.status.ok());
  CHECK(r.error_code == "sender_mismatch");
  // The same message naming its true sender goes through: the refusal was
  // about the sender alone.
  m.mutable_envelope()->set_sender("police");
  CHECK(police->Publish(m).AllAccepted());
  REQUIRE(WaitFor([&] {
    std::lock_guard lock(mu);
    return !senders.empty();
  }));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::lock_guard lock(mu);
  CHECK(senders == std::vector<std::string>{"police"});
}

TEST_CASE("the stamped sender is the certificate's agency", "[identity]") {
  TestBroker broker;
  std::mutex mu;
  std::vector<client::Delivery> got;
  std::unique_ptr<client::Client> school;
  school = Connect(broker.port(), "school", true, [&](client::Delivery d) {
    std::lock_guard lock(mu);
    got.push_back(d);
  });
  auto police = Connect(broker.port(), "police");
  std::atomic<bool> done{false};
  client::PublishResult result;
  police->Publish(IncidentReport({"school"}), [&](client::PublishResult r) {
    result = std::move(r);
    done = true;
  });
  REQUIRE(WaitFor([&] {
    std::lock_guard lock(mu);
    return !got.empty();
  }));
  {
    std::lock_guard lock(mu);
    CHECK(got[0].message->envelope().sender() == "police");
    school->Acknowledge(got[0]);
  }
  REQUIRE(WaitFor([&] { return done.load(); }));
  CHECK(result.AllAccepted());
}

TEST_CASE("a client with the CA's CRL refuses a revoked broker certificate", "[identity][crl]") {
  TempDir dir;
  const std::string pki = dir.File("pki");
  REQUIRE(std::system(("bash " LIAISON_SOURCE_DIR "/certs/dev-pki.sh " + pki + " police school >/dev/null").c_str()) == 0);
  TestBroker broker({}, 2, PolicyYaml({"police", "school"}), pki);
  auto o = Options(broker.port(), "police", false, pki);
  o.tls.crls = {pki + "/ca.crl"};
  {
    auto ok = client::Client::Connect(o);  // not revoked yet
    REQUIRE(ok.ok());
  }
  const std::string env = "LIAISON_PKI_DB=" + pki + "/ca-db LIAISON_CA_CRT=" + pki + "/ca.crt LIAISON_CA_KEY=" + pki +
                          "/ca.key SAN=DNS:unused.invalid ";
  const std::string cnf = " -config " LIAISON_SOURCE_DIR "/certs/openssl.cnf";
  REQUIRE(std::system((env + "openssl ca" + cnf + " -revoke " + pki + "/broker.crt 2>/dev/null").c_str()) == 0);
  REQUIRE(std::system((env + "openssl ca" + cnf + " -gencrl -crldays 30 -out " + pki + "/ca.crl 2>/dev/null").c_str()) == 0);
  auto refused = client::Client::Connect(o);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message().find("revoked") != std::string::npos);
  // Without the CRL the same client would not know.
  o.tls.crls.clear();
  CHECK(client::Client::Connect(o).ok());
}
