// The shipped programs as users run them: real processes, real files,
// exit codes and output.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>
#include <sstream>

#include "common/files.h"
#include "tests/common/audit_export_builder.h"
#include "tests/integration/process_support.h"
#include "tests/integration/test_support.h"

extern char** environ;

using namespace liaison;
using namespace liaison::test;

namespace {

const char* kIncident = R"({
  "envelope": {"tlp": "TLP_AMBER", "purpose": "safeguarding", "caseId": "CASE-7"},
  "incidentReport": {
    "incidentType": "INCIDENT_HATE_SPEECH",
    "biasMotivations": ["BIAS_ANTI_ROMA"],
    "description": "Abusive leaflets left at the community centre.",
    "severity": "SEVERITY_MEDIUM"
  }
})";

}  // namespace

TEST_CASE("every command answers --help", "[process]") {
  TempDir dir;
  const std::vector<std::vector<std::string>> commands = {
      {LIAISON_BROKER_BIN, "--help"},
      {LIAISON_CLI_BIN, "--help"},
      {LIAISON_CLI_BIN, "send", "--help"},
      {LIAISON_CLI_BIN, "receive", "--help"},
      {LIAISON_CLI_BIN, "recall", "--help"},
  };
  for (const auto& argv : commands) {
    std::string out;
    CHECK(Run(argv, dir.path(), &out, nullptr) == 0);
    CHECK(out.find("--") != std::string::npos);
  }
  std::string err;
  CHECK(Run({LIAISON_CLI_BIN, "no-such-command"}, dir.path(), nullptr, &err) == 2);
}

TEST_CASE("liaison-broker --check-config reports every error with file:line", "[process][config]") {
  TempDir dir;
  REQUIRE(WriteFileAtomic(dir.File("policy.yaml"),
                          "version: 1\n"
                          "agencies:\n"
                          "  - id: police\n"
                          "    name: Police\n"
                          "    sector: policing\n"          // line 5: unknown sector
                          "  - id: police\n"                // line 6: duplicate id
                          "    name: Police again\n"
                          "    sector: law_enforcement\n"
                          "    colour: blue\n")             // line 9: unknown key
              .ok());
  const std::string& pki = PkiDir();
  REQUIRE(WriteFileAtomic(dir.File("broker.yaml"),
                          "listen: 127.0.0.1\n"             // line 1: no port
                          "policy: policy.yaml\n"
                          "tls:\n"
                          "  certificate: " + pki + "/broker.crt\n"
                          "  private_key: " + pki + "/broker.key\n"
                          "  ca_bundle: " + pki + "/ca.crt\n"
                          "limits:\n"
                          "  max_frame_bytes: lots\n"       // line 8
                          "  idle_timeout_ms: 5\n"          // line 9: below the minimum
                          "unknown_key: 1\n")               // line 10
              .ok());
  std::string out, err;
  CHECK(Run({LIAISON_BROKER_BIN, "--config", dir.File("broker.yaml"), "--check-config"}, dir.path(), &out, &err) == 1);
  INFO(err);
  const std::string b = dir.File("broker.yaml");
  CHECK(err.find(b + ":1:9: error: 'listen' must be HOST:PORT") != std::string::npos);
  CHECK(err.find(b + ":8:20: error: 'max_frame_bytes' must be a whole number") != std::string::npos);
  CHECK(err.find(b + ":9:20: error: 'idle_timeout_ms' must be between") != std::string::npos);
  CHECK(err.find(b + ":10:1: error: unknown key 'unknown_key'") != std::string::npos);
  // Config errors stop before the policy is read; fix them and see the policy's.
  REQUIRE(WriteFileAtomic(dir.File("broker.yaml"), "listen: 127.0.0.1:7443\npolicy: policy.yaml\ntls:\n"
                                                   "  certificate: " + pki + "/broker.crt\n"
                                                   "  private_key: " + pki + "/broker.key\n"
                                                   "  ca_bundle: " + pki + "/ca.crt\n")
              .ok());
  CHECK(Run({LIAISON_BROKER_BIN, "--config", dir.File("broker.yaml"), "--check-config"}, dir.path(), &out, &err) == 1);
  const std::string p = dir.File("policy.yaml");
  CHECK(err.find(p + ":5:13: error: unknown sector 'policing'") != std::string::npos);
  CHECK(err.find(p + ":6:9: error: duplicate agency id 'police'") != std::string::npos);
  CHECK(err.find(p + ":9:5: error: unknown key 'colour'") != std::string::npos);
  CHECK(err.find("warning: tls: no 'crl' configured") != std::string::npos);
}

TEST_CASE("the broker refuses a private key readable by others", "[process][config]") {
  TempDir dir;
  const std::string& pki = PkiDir();
  std::string key = *ReadFile(pki + "/broker.key", 1 << 20);
  REQUIRE(WriteFileAtomic(dir.File("broker.key"), key, 0644).ok());
  REQUIRE(WriteFileAtomic(dir.File("policy.yaml"), PolicyYaml({"police"})).ok());
  REQUIRE(WriteFileAtomic(dir.File("broker.yaml"), "listen: 127.0.0.1:0\npolicy: policy.yaml\ntls:\n"
                                                   "  certificate: " + pki + "/broker.crt\n"
                                                   "  private_key: broker.key\n"
                                                   "  ca_bundle: " + pki + "/ca.crt\n")
              .ok());
  std::string err;
  CHECK(Run({LIAISON_BROKER_BIN, "--config", dir.File("broker.yaml")}, dir.path(), nullptr, &err) == 1);
  CHECK(err.find("chmod 600") != std::string::npos);
}

TEST_CASE("liaison send and receive exchange a message through the real broker", "[process]") {
  TempDir dir;
  BrokerProcess broker(dir);
  REQUIRE(WriteFileAtomic(dir.File("incident.json"), kIncident).ok());
  std::filesystem::create_directory(dir.File("inbox"));

  Process receiver(broker.Cli("school", {"receive", "--out", dir.File("inbox"), "--count", "1", "--wait", "20"}),
                   dir.path(), "receiver");
  // The receiver must hold the receiving slot before the send.
  REQUIRE(WaitFor([&] { return receiver.err().find("receiving for agency school") != std::string::npos; }));

  std::string out, err;
  const int rc = Run(broker.Cli("police", {"--json", "send", "--to", "school", dir.File("incident.json")}),
                     dir.path(), &out, &err);
  INFO(out << err);
  CHECK(rc == 0);
  CHECK(out.find("\"ok\":true") != std::string::npos);
  CHECK(out.find("\"outcome\":\"queued\"") != std::string::npos);
  CHECK(receiver.Wait() == 0);
  std::smatch m;
  REQUIRE(std::regex_search(out, m, std::regex("\"messageId\":\"([0-9a-f-]{36})\"")));
  const std::string file = dir.File("inbox/police_" + m[1].str() + ".json");
  const std::string stored = Slurp(file);
  CHECK(stored.find("\"sender\": \"police\"") != std::string::npos);
  CHECK(stored.find("Abusive leaflets") != std::string::npos);

  // Stdin and an offline recipient: queued for it (exit 0).
  CHECK(Run(broker.Cli("police", {"send", "--to", "health", "-"}), dir.path(), &out, &err, dir.File("incident.json")) == 0);
  CHECK(out.find("health") != std::string::npos);
  CHECK(out.find("queued") != std::string::npos);
  // Sent again under the same id: the original outcome, marked as such.
  const std::string id = "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42";
  {
    const int first = Run(broker.Cli("police", {"send", "--to", "health", "--message-id", id, dir.File("incident.json")}),
                          dir.path(), &out, &err);
    INFO("first send: " << out << err);
    CHECK(first == 0);
  }
  // A repeat may come much later (this one crosses at least one second of
  // the clock that stamps times): it is still the same message.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  {
    const int again = Run(
        broker.Cli("police", {"--json", "send", "--to", "health", "--message-id", id, dir.File("incident.json")}),
        dir.path(), &out, &err);
    INFO("sent again: " << out << err);
    CHECK(again == 0);
    CHECK(out.find("\"duplicate\":true") != std::string::npos);
  }
  // health never connected: the recall withdraws its copy.
  CHECK(Run(broker.Cli("police", {"--json", "recall", id, "--reason", "wrong recipient"}), dir.path(), &out, &err) ==
        0);
  CHECK(out.find("\"withdrawn\":[\"health\"]") != std::string::npos);
  CHECK(Run(broker.Cli("social", {"recall", id}), dir.path(), &out, &err) == 4);  // not social's message
  CHECK(err.find("unknown_message") != std::string::npos);
  // A recipient the policy does not permit: exit 1 and the reason.
  CHECK(Run(broker.Cli("police", {"send", "--to", "nobody", "-"}), dir.path(), &out, &err, dir.File("incident.json")) == 1);
  CHECK(out.find("REFUSED  unknown_recipient") != std::string::npos);
}

TEST_CASE("liaison send reports bad input and bad certificates with distinct exit codes", "[process]") {
  TempDir dir;
  BrokerProcess broker(dir);
  REQUIRE(WriteFileAtomic(dir.File("bad.json"), "{\"envelope\": {\"colour\": 1}}").ok());
  REQUIRE(WriteFileAtomic(dir.File("incident.json"), kIncident).ok());
  std::string out, err;
  CHECK(Run(broker.Cli("police", {"send", "--to", "school", dir.File("bad.json")}), dir.path(), &out, &err) == 2);
  CHECK(err.find("colour") != std::string::npos);
  CHECK(Run(broker.Cli("police", {"send", "--to", "school", "--tlp", "purple", dir.File("incident.json")}),
            dir.path(), &out, &err) == 2);
  auto argv = broker.Cli("police", {"send", "--to", "school", dir.File("incident.json")});
  for (auto& a : argv) {
    if (a == PkiDir() + "/police.crt") a = PkiDir() + "/test/expired.crt";
    if (a == PkiDir() + "/police.key") a = PkiDir() + "/test/expired.key";
  }
  CHECK(Run(argv, dir.path(), &out, &err) == 3);
  CHECK(err.find("refused") != std::string::npos);
}

TEST_CASE("SIGTERM stops the broker cleanly", "[process]") {
  TempDir dir;
  BrokerProcess broker(dir);
  auto c = Connect(broker.port(), "police");
  broker.process().Signal(SIGTERM);
  CHECK(broker.process().Wait(std::chrono::seconds(15)) == 0);
  CHECK(broker.process().err().find("stopped:") != std::string::npos);
}

// A number field of a JSON object (an admin command's answer); -1 if it
// has none (or null).
long NumberIn(const std::string& object, const std::string& field) {
  const size_t at = object.find("\"" + field + "\":");
  if (at == std::string::npos) return -1;
  const std::string rest = object.substr(at + field.size() + 3);
  return rest.empty() || rest[0] < '0' || rest[0] > '9' ? -1 : std::stol(rest);
}

TEST_CASE("the admin socket and SIGHUP reload the policy, a bad policy is rejected", "[process][reload]") {
  TempDir dir;
  BrokerProcess broker(dir);
  const std::vector<std::string> admin = {LIAISON_BROKER_BIN, "--config", dir.File("broker.yaml"), "--admin"};
  auto with = [&](const std::string& command) {
    auto argv = admin;
    argv.push_back(command);
    return argv;
  };
  std::string out, err;
  CHECK(Run(with("status"), dir.path(), &out, &err) == 0);
  CHECK(out.find("\"policy_version\"") != std::string::npos);
  // The commit log's syncs since the start (the start's own records among
  // them): how many, percentiles, and the buckets they fell in.
  INFO(out);
  CHECK(NumberIn(out, "log_syncs") >= 1);
  for (const char* field : {"log_sync_p50_us", "log_sync_p99_us", "log_sync_p999_us", "log_sync_max_us"}) {
    INFO(field);
    CHECK(NumberIn(out, field) >= 0);
  }
  CHECK(out.find("\"log_sync_buckets\":[[") != std::string::npos);
  // The I/O threads: an idle broker runs one of the configuration's two.
  CHECK(NumberIn(out, "io_threads") == 1);
  CHECK(NumberIn(out, "io_threads_max") == 2);
  CHECK(NumberIn(out, "io_thread_joins") >= 0);
  struct stat st {};
  REQUIRE(::stat(dir.File("admin.sock").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  CHECK(Run(with("reload"), dir.path(), &out, &err) == 0);
  CHECK(out.rfind("ok policy", 0) == 0);

  REQUIRE(WriteFileAtomic(dir.File("policy.yaml"), "version: 1\nagencies:\n  - id: police\n    nme: x\n").ok());
  CHECK(Run(with("reload"), dir.path(), &out, &err) == 1);
  CHECK(out.find("policy.yaml:4:5: error: unknown key 'nme'") != std::string::npos);
  // Still serving with the old policy.
  auto c = Connect(broker.port(), "police");
  CHECK(c->session().agency_id == "police");

  // Pseudonym key rotation adds a version.
  CHECK(Run(with("rotate-key test-network"), dir.path(), &out, &err) == 0);
  CHECK(Run(with("rotate-key test-network"), dir.path(), &out, &err) == 0);
  CHECK(out.find("version 2") != std::string::npos);
  CHECK(Run(with("rotate-key ../etc"), dir.path(), &out, &err) == 1);

  REQUIRE(WriteFileAtomic(dir.File("policy.yaml"), PolicyYaml({"police", "school"})).ok());
  broker.process().Signal(SIGHUP);
  CHECK(WaitFor([&] { return broker.process().err().find("reloaded: policy") != std::string::npos; }));
  CHECK(WaitFor([&] { return broker.process().err().find("1 session(s) re-checked") != std::string::npos; }));
}

// The object about agency in the admin command queues' answer, or "".
std::string QueueOf(const std::string& answer, const std::string& agency) {
  const size_t at = answer.find("{\"agency\":\"" + agency + "\"");
  if (at == std::string::npos) return "";
  return answer.substr(at, answer.find('}', at) + 1 - at);
}

TEST_CASE("the admin command queues shows what waits for each agency and whether it receives", "[process][queue]") {
  TempDir dir;
  auto broker = std::make_unique<BrokerProcess>(dir);
  std::string out, err;
  auto queues = [&] {
    const int rc = Run({LIAISON_BROKER_BIN, "--config", dir.File("broker.yaml"), "--admin", "queues", "--json"},
                       dir.path(), &out, &err);
    INFO(out << err);
    REQUIRE(rc == 0);
    REQUIRE(out.rfind("{\"waiting\":", 0) == 0);
    return out;
  };
  std::string q = queues();
  CHECK(q.find("\"waiting\":0,") != std::string::npos);
  CHECK(QueueOf(q, "school") ==
        "{\"agency\":\"school\",\"in_policy\":true,\"receiving\":false,\"since_s\":null,\"messages\":0,"
        "\"redelivered\":0,\"notices\":0,\"oldest_age_s\":null,\"next_expiry_in_s\":null}");
  CHECK_FALSE(QueueOf(q, "police").empty());

  // Two messages for the school while nobody receives for it.
  REQUIRE(WriteFileAtomic(dir.File("incident.json"), kIncident).ok());
  for (int i = 0; i < 2; ++i) {
    REQUIRE(Run(broker->Cli("police", {"send", "--to", "school", dir.File("incident.json")}), dir.path(), &out, &err) ==
            0);
  }
  q = queues();
  CHECK(q.find("\"waiting\":2,") != std::string::npos);
  REQUIRE(Run({LIAISON_BROKER_BIN, "--config", dir.File("broker.yaml"), "--admin", "status"}, dir.path(), &out, &err) ==
          0);
  CHECK(out.rfind("ok {\"sessions\":", 0) == 0);
  CHECK(out.find(",\"waiting\":2,") != std::string::npos);
  // Without --json, a table for people.
  REQUIRE(Run({LIAISON_BROKER_BIN, "--config", dir.File("broker.yaml"), "--admin", "queues"}, dir.path(), &out, &err) ==
          0);
  INFO(out);
  CHECK(out.rfind("AGENCY ", 0) == 0);
  CHECK(std::regex_search(out, std::regex("\nschool +no +2 +0 +0 +[0-9]+s +29d 23h\n")));
  CHECK(std::regex_search(out, std::regex("\npolice +no +0 +0 +0 +- +-\n")));
  CHECK(out.find("\n2 waiting in all\n") != std::string::npos);
  const std::string school = QueueOf(q, "school");
  CHECK(school.find("\"receiving\":false,\"since_s\":null,\"messages\":2,\"redelivered\":0,\"notices\":0,") !=
        std::string::npos);
  CHECK(NumberIn(school, "oldest_age_s") >= 0);
  CHECK(NumberIn(school, "oldest_age_s") < 120);
  // Thirty days of retention by default: the first expires in just under.
  const long expiry = NumberIn(school, "next_expiry_in_s");
  CHECK(expiry > 30L * 86400 - 120);
  CHECK(expiry <= 30L * 86400);
  CHECK(QueueOf(q, "police").find("\"messages\":0") != std::string::npos);

  // The same after a restart (the queue is loaded from the store).
  broker->process().Signal(SIGTERM);
  REQUIRE(broker->process().Wait(std::chrono::seconds(15)) == 0);
  broker.reset();
  broker = std::make_unique<BrokerProcess>(dir);
  q = queues();
  CHECK(q.find("\"waiting\":2,") != std::string::npos);
  CHECK(QueueOf(q, "school").find("\"messages\":2,\"redelivered\":0,") != std::string::npos);
  CHECK(NumberIn(QueueOf(q, "school"), "oldest_age_s") >= 0);
  CHECK(NumberIn(QueueOf(q, "school"), "oldest_age_s") < 120);  // the time it was accepted, kept in the store

  // The school's receiving program connects and confirms both; then it
  // goes, and the time it went is shown.
  long connected = -1;
  {
    Receiver receiver(broker->port(), "school");
    REQUIRE(receiver.WaitCount(2));
    CHECK(WaitFor([&] {
      const std::string now = queues();
      return now.find("\"waiting\":0,") != std::string::npos &&
             QueueOf(now, "school").find("\"receiving\":true,") != std::string::npos &&
             QueueOf(now, "school").find("\"messages\":0,") != std::string::npos;
    }));
    CHECK(NumberIn(QueueOf(queues(), "school"), "since_s") >= 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(2100));
    connected = NumberIn(QueueOf(queues(), "school"), "since_s");
    CHECK(connected >= 2);
    CHECK(connected < 60);
  }
  CHECK(WaitFor([&] { return QueueOf(queues(), "school").find("\"receiving\":false,") != std::string::npos; }));
  // Counted from when it went, not from when it came.
  const long gone = NumberIn(QueueOf(queues(), "school"), "since_s");
  CHECK(gone >= 0);
  CHECK(gone < connected);
  REQUIRE(Run({LIAISON_BROKER_BIN, "--config", dir.File("broker.yaml"), "--admin", "queues"}, dir.path(), &out, &err) ==
          0);
  CHECK(std::regex_search(out, std::regex("\nschool +no, [0-9]+s +0 +0 +0 +- +-\n")));

  CHECK(Run({LIAISON_BROKER_BIN, "--config", dir.File("broker.yaml"), "--admin", "queue"}, dir.path(), &out, &err) ==
        2);
}

TEST_CASE("the log names an agency that is not receiving while its messages wait and warns near their expiry",
          "[process][queue]") {
  TempDir dir;
  BrokerProcess broker(dir, "", "limits:\n  queue_report_interval_s: 1\n  max_retention_s: 7200\n");
  REQUIRE(WriteFileAtomic(dir.File("incident.json"), kIncident).ok());
  std::string out, err;
  REQUIRE(Run(broker.Cli("police", {"send", "--to", "school", dir.File("incident.json")}), dir.path(), &out, &err) ==
          0);
  // Two hours of retention: the first expires within a day, so a warning.
  const std::regex line(
      "warning +liaison-broker: queue: 'school' has not been receiving since the broker started: 1 message\\(s\\) "
      "wait for it, the oldest for [0-9]+s; the first expires in 1h 59m, unread");
  CHECK(WaitFor([&] { return std::regex_search(broker.process().err(), line); }));
  CHECK(broker.process().err().find("queue: 'police'") == std::string::npos);  // nothing waits for it

  // Once the school has its message, it is no longer named.
  {
    Receiver receiver(broker.port(), "school");
    REQUIRE(receiver.WaitCount(1));
  }
  CHECK(WaitFor([&] {
    return QueueOf(Run({LIAISON_BROKER_BIN, "--config", dir.File("broker.yaml"), "--admin", "queues", "--json"},
                       dir.path(), &out, &err) == 0
                       ? out
                       : "",
                   "school")
               .find("\"messages\":0,") != std::string::npos;
  }));
  const auto named = [&] {
    const std::string log = broker.process().err();
    size_t n = 0;
    for (size_t at = 0; (at = log.find("queue: 'school'", at)) != std::string::npos; ++at) ++n;
    return n;
  };
  const size_t before = named();
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  CHECK(named() == before);
}

TEST_CASE("the admin command prune-audit applies audit.retention_days, and says when none is set", "[process][audit]") {
  std::string out, err;
  {
    TempDir dir;
    BrokerProcess broker(dir);
    CHECK(Run({LIAISON_BROKER_BIN, "--config", dir.File("broker.yaml"), "--admin", "prune-audit"}, dir.path(), &out,
              &err) == 1);
    CHECK(out.find("error the configuration sets no audit.retention_days") != std::string::npos);
  }
  TempDir dir;
  BrokerProcess broker(dir, "", "audit:\n  retention_days: 1\n");
  CHECK(Run({LIAISON_BROKER_BIN, "--config", dir.File("broker.yaml"), "--admin", "prune-audit"}, dir.path(), &out,
            &err) == 0);
  // Every record is from today: nothing is old enough, and nothing is pruned.
  CHECK(out.find("ok no audit records older than 1 day(s) to prune") != std::string::npos);
  CHECK(broker.process().err().find("audit pruning requested") != std::string::npos);
}

TEST_CASE("liaison audit query, export --remote and verify as an auditor", "[process][audit]") {
  TempDir dir;
  std::string policy = PolicyYaml(DefaultAgencies());
  const std::string entry = "  - id: a01\n    name: Agency a01\n    sector: social_work\n";
  policy.insert(policy.find(entry) + entry.size(), "    roles: [auditor]\n    audit_scope: [police, school]\n");
  BrokerProcess broker(dir, policy);
  REQUIRE(WriteFileAtomic(dir.File("incident.json"), kIncident).ok());
  std::string out, err;
  REQUIRE(Run(broker.Cli("police", {"send", "--to", "school,nobody", dir.File("incident.json")}), dir.path(), &out,
              &err) == 1);
  REQUIRE(Run(broker.Cli("social", {"send", "--to", "health", dir.File("incident.json")}), dir.path(), &out, &err) == 0);

  // A table by default; only what the scope allows.
  int rc = Run(broker.Cli("a01", {"audit", "query", "--case", "CASE-7"}), dir.path(), &out, &err);
  INFO(out << err);
  CHECK(rc == 0);
  CHECK(out.rfind("seq", 0) == 0);
  CHECK(out.find("refused:unknown_recipient") != std::string::npos);
  CHECK(out.find("social") == std::string::npos);  // social -> health is outside a01's scope

  // --json: one object per line; --limit and --all page through.
  auto lines_of = [](const std::string& text) {
    size_t n = 0;
    for (size_t at = 0; (at = text.find("{\"seq\":", at)) != std::string::npos; ++at) ++n;
    return n;
  };
  rc = Run(broker.Cli("a01", {"--json", "audit", "query", "--event", "queued", "--limit", "1", "--all"}), dir.path(),
           &out, &err);
  CHECK(rc == 0);
  CHECK(lines_of(out) == 1);  // police -> school
  rc = Run(broker.Cli("a01", {"--json", "audit", "query", "--event", "decision", "--limit", "1", "--all"}), dir.path(),
           &out, &err);
  CHECK(rc == 0);
  CHECK(lines_of(out) == 1);  // police -> nobody, refused
  rc = Run(broker.Cli("a01", {"--json", "audit", "query", "--limit", "1"}), dir.path(), &out, &err);
  CHECK(rc == 0);
  CHECK(lines_of(out) == 1);
  CHECK(err.find("more records: --page-token") != std::string::npos);
  // The table with --all is printed every 10 pages, each part with its
  // header, instead of being held whole: every row once.
  size_t rows = 0;
  for (int sent = 0; sent < 20; ++sent) {  // more than 10 records in a01's scope
    rc = Run(broker.Cli("a01", {"--json", "audit", "query", "--limit", "1", "--all"}), dir.path(), &out, &err);
    REQUIRE(rc == 0);
    rows = lines_of(out);
    if (rows > 10) break;
    REQUIRE(Run(broker.Cli("police", {"send", "--to", "school", dir.File("incident.json")}), dir.path(), &out, &err) ==
            0);
  }
  REQUIRE(rows > 10);
  rc = Run(broker.Cli("a01", {"audit", "query", "--limit", "1", "--all"}), dir.path(), &out, &err);
  CHECK(rc == 0);
  size_t headers = 0, lines = 0;
  for (size_t at = 0; at < out.size();) {
    const size_t end = out.find('\n', at);
    const std::string line = out.substr(at, end - at);
    (line.rfind("seq ", 0) == 0 ? headers : lines)++;
    at = end == std::string::npos ? out.size() : end + 1;
  }
  CHECK(headers == (rows + 9) / 10);
  CHECK(lines == rows);

  // --csv with a header; times as RFC 3339.
  rc = Run(broker.Cli("a01", {"audit", "query", "--csv", "--from", "2020-01-01T00:00:00Z", "--to", "2099-01-01",
                              "--agency", "school"}),
           dir.path(), &out, &err);
  CHECK(rc == 0);
  CHECK(out.rfind("seq,time,time_ms,event,", 0) == 0);
  CHECK(out.find(",school,") != std::string::npos);

  // Bad input: exit 2; a non-auditor: exit 4.
  CHECK(Run(broker.Cli("a01", {"audit", "query", "--from", "yesterday"}), dir.path(), &out, &err) == 2);
  CHECK(Run(broker.Cli("a01", {"audit", "query", "--limit", "5000"}), dir.path(), &out, &err) == 2);
  CHECK(Run(broker.Cli("police", {"audit", "query"}), dir.path(), &out, &err) == 4);
  CHECK(err.find("not_auditor") != std::string::npos);

  // The scoped export verifies with the broker's public key.
  rc = Run(broker.Cli("a01", {"audit", "export", "--remote", "--out", dir.File("scoped.db")}), dir.path(), &out, &err);
  INFO(out << err);
  REQUIRE(rc == 0);
  CHECK(out.find("outside your audit scope as leaf hash only") != std::string::npos);
  rc = Run({LIAISON_CLI_BIN, "audit", "verify", "--db", dir.File("scoped.db"), "--pubkey",
            dir.File("keys/audit-signing.key.pub")},
           dir.path(), &out, &err);
  CHECK(rc == 0);
  CHECK(out.find("OK: ") != std::string::npos);
  CHECK(out.find("by hash only") != std::string::npos);
  CHECK(Slurp(dir.File("scoped.db")).find("Abusive leaflets") == std::string::npos);
  CHECK(Run(broker.Cli("police", {"audit", "export", "--remote", "--out", dir.File("p.db")}), dir.path(), &out, &err) ==
        4);
}

TEST_CASE("liaison audit prove and verify-proof: consistency proofs between two checkpoints, text and --json",
          "[process][audit][proof][consistency]") {
  TempDir dir;
  auto signer = audit::Signer::LoadOrCreate(dir.File("audit-signing.key"));
  REQUIRE(signer.ok());
  const std::string pub = dir.File("audit-signing.key.pub");
  const std::string db = dir.File("export.db");
  const auto built = BuildExport(db, 3000, **signer, {1000, 2000, 3000});
  std::string out, err;
  auto cli = [&](std::vector<std::string> args) {
    args.insert(args.begin(), LIAISON_CLI_BIN);
    return Run(args, dir.path(), &out, &err);
  };
  CHECK(cli({"audit", "verify", "--db", db, "--pubkey", pub, "--quick-check"}) == 0);
  CHECK(out.find("OK: 3000 record(s), 3 signed checkpoint(s) verified") != std::string::npos);

  // From the export's checkpoint of 1000 records to its newest.
  REQUIRE(cli({"audit", "prove", "--db", db, "--from-size", "1000", "--out", dir.File("c.proof")}) == 0);
  REQUIRE(cli({"audit", "verify-proof", "--proof", dir.File("c.proof"), "--pubkey", pub}) == 0);
  CHECK(out.find("OK: the log of 3000 records extends the log of 1000 records (liaison/test)") != std::string::npos);
  REQUIRE(cli({"--json", "audit", "verify-proof", "--proof", dir.File("c.proof"), "--pubkey", pub}) == 0);
  CHECK(out.find("{\"ok\":true,\"kind\":\"consistency\",\"origin\":\"liaison/test\",\"old_size\":1000,") == 0);
  CHECK(out.find("\"new_size\":3000,") != std::string::npos);

  // From a checkpoint an agency kept to the export's checkpoint of 2000
  // records; the agency checks that the proof starts at its checkpoint.
  const std::string held = dir.File("police.checkpoint");
  REQUIRE(WriteFileAtomic(held, audit::FormatCheckpoint(built.checkpoints[0])).ok());
  REQUIRE(cli({"audit", "prove", "--db", db, "--from-checkpoint", held, "--to-size", "2000", "--out",
               dir.File("d.proof")}) == 0);
  CHECK(cli({"audit", "verify-proof", "--proof", dir.File("d.proof"), "--pubkey", pub, "--checkpoint", held}) == 0);
  CHECK(out.find("extends the log of 1000 records") != std::string::npos);
  const std::string other = dir.File("other.checkpoint");
  REQUIRE(WriteFileAtomic(other, audit::FormatCheckpoint(built.checkpoints[2])).ok());
  CHECK(cli({"audit", "verify-proof", "--proof", dir.File("d.proof"), "--pubkey", pub, "--checkpoint", other}) == 1);
  CHECK(err.find("FAILED: the proof is not about your checkpoint #1 (tree size 3000") != std::string::npos);

  // An altered proof hash: exit 1, in words and in JSON.
  std::string text = *ReadFile(dir.File("c.proof"), 1 << 20);
  const size_t at = text.find("path ") + 5;
  text[at] = text[at] == 'A' ? 'B' : 'A';
  REQUIRE(WriteFileAtomic(dir.File("bad.proof"), text).ok());
  CHECK(cli({"audit", "verify-proof", "--proof", dir.File("bad.proof"), "--pubkey", pub}) == 1);
  CHECK(err.find("FAILED: the log of 3000 records does not extend the log of 1000 records") != std::string::npos);
  CHECK(cli({"--json", "audit", "verify-proof", "--proof", dir.File("bad.proof"), "--pubkey", pub}) == 1);
  CHECK(out.find("{\"ok\":false,\"error\":\"the log of 3000 records does not extend") == 0);
  // Another broker's key: exit 1.
  TempDir other_dir;
  auto wrong = audit::Signer::LoadOrCreate(other_dir.File("k.pem"));
  REQUIRE(wrong.ok());
  CHECK(cli({"audit", "verify-proof", "--proof", dir.File("c.proof"), "--pubkey", other_dir.File("k.pem.pub")}) == 1);
  CHECK(err.find("the old checkpoint (tree size 1000): checkpoint signed by key") != std::string::npos);

  // Usage: exit 2.
  REQUIRE(WriteFileAtomic(dir.File("junk.proof"), "hello\n").ok());
  CHECK(cli({"audit", "verify-proof", "--proof", dir.File("junk.proof"), "--pubkey", pub}) == 2);
  CHECK(cli({"audit", "prove", "--db", db, "--seq", "5", "--from-size", "1000"}) == 2);
  CHECK(cli({"audit", "prove", "--db", db}) == 2);
  CHECK(cli({"audit", "prove", "--db", db, "--from-size", "5"}) == 2);
  CHECK(err.find("no checkpoint of tree size 5") != std::string::npos);
  CHECK(cli({"audit", "prove", "--db", db, "--from-size", "3000", "--to-size", "1000"}) == 2);
  // An export that no longer matches the checkpoint it is asked to prove from: exit 1.
  {
    sqlite3* h = nullptr;
    REQUIRE(sqlite3_open(db.c_str(), &h) == SQLITE_OK);
    REQUIRE(sqlite3_exec(h, "UPDATE audit_log SET leaf_hash = zeroblob(32) WHERE seq = 7", nullptr, nullptr,
                         nullptr) == SQLITE_OK);
    sqlite3_close(h);
  }
  CHECK(cli({"audit", "prove", "--db", db, "--from-size", "1000"}) == 1);
  CHECK(err.find("do not have the old checkpoint's root") != std::string::npos);
  CHECK(cli({"audit", "verify", "--db", db, "--pubkey", pub}) == 1);
  CHECK(err.find("FAILED: record 7: its columns do not match its leaf hash") != std::string::npos);
}
