// What the broker and the client library write to their logs: never a
// message body (not even a redacted or pseudonymised one), never a key, and
// never a line a client could forge. Everything spdlog's default logger
// writes is captured at trace level, the most verbose there is, while a
// broker running the example city policy serves real agencies over TLS.
#include <catch2/catch.hpp>

#include <spdlog/spdlog.h>

#include <filesystem>
#include <mutex>
#include <sstream>

#include "common/files.h"
#include "common/sha256.h"
#include "tests/integration/test_support.h"
#include "tests/log_capture.h"

using namespace liaison;
using namespace liaison::test;

namespace {

std::string Base64Lines(const std::string& pem) {
  // The body lines of a PEM file (64 base64 characters each).
  std::string out;
  std::istringstream in(pem);
  for (std::string line; std::getline(in, line);) {
    if (line.size() >= 40 && line.find("-----") == std::string::npos) out += line + "\n";
  }
  return out;
}

}  // namespace

TEST_CASE("no message body, pseudonym, key or certificate secret reaches the logs, even at trace level", "[logs]") {
  const std::string description = "BODY-MARKER-description-5b1e";
  const std::string name = "Marker Personname Quux";
  const std::string police_ref = "POLREF-MARKER-8830";
  const std::string bad_date = "DOB-MARKER-19";
  std::string pseudonym;
  std::vector<std::pair<std::string, std::string>> keys;  // path, bytes
  PkiDir();  // its first call sets the tests' log level; trace must come after
  LogCapture capture;
  {
    TestBroker broker({}, 2, *ReadFile(LIAISON_SOURCE_DIR "/docs/examples/policy.yaml", 1 << 20));
    Receiver school(broker.port(), "school");  // gets names pseudonymised, police references removed
    Receiver social(broker.port(), "social");  // gets the whole report
    auto police = Connect(broker.port(), "police");
    v1::Message m = IncidentReport({"school", "social", "youth-ngo"});  // youth-ngo: not permitted
    m.mutable_incident_report()->set_description(description);
    m.mutable_incident_report()->set_police_reference(police_ref);
    m.mutable_incident_report()->mutable_persons(0)->set_full_name(name);
    auto r = police->Publish(m);
    REQUIRE(r.status.ok());
    REQUIRE(school.WaitCount(1));
    REQUIRE(social.WaitCount(1));
    pseudonym = school.got[0].message->incident_report().persons(0).full_name();
    REQUIRE(pseudonym.rfind("ps:v1:", 0) == 0);
    CHECK(social.got[0].message->incident_report().description() == description);

    // The same id with a different body, and a body the broker refuses as
    // invalid (its error names the bad value, to the sender only).
    m.mutable_incident_report()->set_description(description + " changed");
    auto dup = police->Publish(m);
    CHECK_FALSE(dup.status.ok());
    RawClient raw;
    RawClient::Options o;
    o.tls = AgencyTls("police");
    REQUIRE(raw.Connect(broker.port(), o).ok());
    REQUIRE(raw.SendHello());
    REQUIRE(raw.ReadFrame().has_value());  // Welcome
    v1::Frame bad;
    auto* pub = bad.mutable_publish();
    pub->set_request_id(7);
    *pub->mutable_message() = IncidentReport({"social"});
    auto* person = pub->mutable_message()->mutable_incident_report()->mutable_persons(0);
    person->set_date_of_birth(bad_date);
    person->set_full_name(name);
    REQUIRE(raw.SendFrame(bad));
    auto answer = raw.ReadFrame();
    REQUIRE(answer.has_value());
    REQUIRE(answer->has_error());
    CHECK(answer->error().message().find(bad_date) != std::string::npos);  // the sender is told

    auto recall = police->Recall(r.message_id, "sent to the wrong school");
    CHECK(recall.status.ok());
    for (const auto& entry : std::filesystem::recursive_directory_iterator(broker.dir() + "/keys")) {
      if (!entry.is_regular_file() || entry.path().extension() == ".pub") continue;
      const auto bytes = ReadFile(entry.path().string(), 1 << 20);
      REQUIRE(bytes.ok());
      keys.emplace_back(entry.path().string(), *bytes);
    }
  }
  const std::string log = capture.text();
  INFO("captured " << log.size() << " bytes of log");
  REQUIRE(log.find("authenticated as agency 'police'") != std::string::npos);  // the capture works
  for (const std::string& secret : {description, name, police_ref, bad_date, pseudonym}) {
    CHECK(log.find(secret) == std::string::npos);
  }
  // The broker's keys, raw and in hex, and its TLS private key.
  for (const auto& [path, bytes] : keys) {
    INFO(path);
    CHECK(log.find(bytes) == std::string::npos);
    CHECK(log.find(crypto::Hex(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size())) == std::string::npos);
  }
  CHECK(keys.size() >= 3);  // signing key, body-digest key, a pseudonym key
  const auto tls_key = ReadFile(PkiDir() + "/broker.key", 1 << 20);
  REQUIRE(tls_key.ok());
  std::istringstream lines(Base64Lines(*tls_key));
  for (std::string line; std::getline(lines, line);) CHECK(log.find(line) == std::string::npos);
}

TEST_CASE("client text cannot forge or colour log lines", "[logs]") {
  PkiDir();  // as above
  LogCapture capture;
  {
    TestBroker broker;
    RawClient raw;
    RawClient::Options o;
    o.tls = AgencyTls("police");
    REQUIRE(raw.Connect(broker.port(), o).ok());
    v1::Frame hello;
    hello.mutable_hello()->set_protocol_version(1);
    hello.mutable_hello()->set_client_name("x\n2026-11-29T00:00:00.000Z warn  FORGED-LINE broker compromised\x1b[31m");
    REQUIRE(raw.SendFrame(hello));
    REQUIRE(raw.ReadFrame().has_value());  // Welcome
    // A client error report carries free text too.
    v1::Frame report;
    report.mutable_error()->set_code(v1::REASON_INTERNAL_ERROR);
    report.mutable_error()->set_message("oops\r\nFORGED-TOO\x07");
    REQUIRE(raw.SendFrame(report));
    CHECK(WaitFor([&] { return capture.text().find("oops") != std::string::npos; }));
  }
  const std::string log = capture.text();
  std::istringstream lines(log);
  int seen = 0;
  for (std::string line; std::getline(lines, line);) {
    INFO(line);
    CHECK(line.find('\x1b') == std::string::npos);
    CHECK(line.find('\r') == std::string::npos);
    CHECK(line.find('\x07') == std::string::npos);
    // The forged text appears only inside the broker's own line, never as
    // a line of its own.
    if (line.find("FORGED") != std::string::npos) {
      ++seen;
      CHECK(line.rfind("2026-11-29T00:00:00.000Z", 0) != 0);
      CHECK(line.rfind("FORGED", 0) != 0);
      CHECK(line.find("session ") != std::string::npos);
    }
  }
  CHECK(seen == 2);
}
