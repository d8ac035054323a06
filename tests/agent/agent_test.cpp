// liaison-agent as agencies run it: the real binary against an in-process
// broker over real TLS, with real files (docs/agent.md).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <set>

#include "client/client.h"
#include "tests/agent/agent_harness.h"
#include "tests/integration/scripted_broker.h"

using namespace liaison;
using namespace liaison::test;

namespace {

// A broker, school receiving from it, and police's agent directories with
// its configuration: the setting of most outbox tests.
struct PoliceToSchool {
  TestBroker broker;
  Receiver school{broker.port(), "school"};
  TempDir dir;
  AgentDirs police{dir.path(), "police"};
  PoliceToSchool() { police.WriteConfig("police", broker.port()); }
};

const std::vector<std::string> kOnce = {"--once", "--idle", "300", "--json"};

// Runs the agent with --once; returns its exit code (stdout in *out).
int RunOnce(const AgentDirs& d, std::string* out = nullptr, const std::string& name = "once",
            std::string* err = nullptr) {
  ChildProcess p(AgentArgs(d, kOnce), d.root, name);
  const int rc = p.Wait();
  if (out) *out = p.out();
  if (err) *err = p.err();
  if (rc != 0) UNSCOPED_INFO(p.err());
  return rc;
}

std::set<std::string> AckIds(const AgentDirs& d) {
  std::set<std::string> ids;
  for (const auto& n : NamesEnding(d.sent(), ".ack.json"))
    ids.insert(JsonField(Slurp(d.sent() + "/" + n), "messageId"));
  return ids;
}

std::set<std::string> ReceivedIds(Receiver& r) {
  std::lock_guard lock(r.mu);
  std::set<std::string> ids;
  for (const auto& d : r.got) ids.insert(d.message->envelope().message_id());
  return ids;
}

std::unique_ptr<client::Client> Publisher(uint16_t port, const std::string& agency, bool want_reports = false) {
  auto o = Options(port, agency);
  o.want_reports = want_reports;
  auto c = client::Client::Connect(o);
  REQUIRE(c.ok());
  return std::move(c).value();
}

}  // namespace

TEST_CASE("liaison-agent answers --help and checks its configuration", "[agent][process]") {
  TempDir dir;
  std::string out;
  {
    ChildProcess p({LIAISON_AGENT_BIN, "--help"}, dir.path(), "help");
    CHECK(p.Wait() == 0);
    CHECK(p.out().find("--once") != std::string::npos);
    CHECK(p.out().find("Exit codes") != std::string::npos);
  }
  {
    ChildProcess p({LIAISON_AGENT_BIN, "--config"}, dir.path(), "usage");
    CHECK(p.Wait() == 2);
  }
  AgentDirs d(dir.path(), "police");
  d.WriteConfig("police", 7443);
  {
    ChildProcess p(AgentArgs(d, {"--check-config"}), dir.path(), "check-ok");
    CHECK(p.Wait() == 0);
    CHECK(p.out().find("configuration OK") != std::string::npos);
  }
  REQUIRE(WriteFileAtomic(d.config(), Slurp(d.config()) + "credit: none\nhook:\n  command: [missing-hook]\n").ok());
  {
    ChildProcess p(AgentArgs(d, {"--check-config"}), dir.path(), "check-bad");
    CHECK(p.Wait() == 1);
    INFO(p.err());
    CHECK(p.err().find(d.config() + ":13:9: error: 'credit' must be a whole number") != std::string::npos);
  }
  REQUIRE(WriteFileAtomic(d.config(), Slurp(d.config()).substr(0, Slurp(d.config()).find("credit:")) +
                                          "hook:\n  command: [missing-hook]\n")
              .ok());
  {
    ChildProcess p(AgentArgs(d, {"--check-config", "--json"}), dir.path(), "check-json");
    CHECK(p.Wait() == 1);
    INFO(p.out());
    CHECK(p.out().find("\"ok\":false") != std::string::npos);
    CHECK(p.out().find("missing-hook is not an executable file") != std::string::npos);
  }
}

TEST_CASE_METHOD(PoliceToSchool,
                 "agent outbox: each file is sent once and moved to sent/ with its ack, other files stay",
                 "[agent][outbox]") {
  const std::string given_id = "0190a000-0000-7000-8000-0000000000b1";
  police.Drop("a.json", MessageJson("[\"school\"]", "first"));
  police.Drop("b.json", MessageJson("[\"school\"]", "second", given_id));
  v1::Message binary = IncidentReport({"school"});
  binary.mutable_envelope()->clear_message_id();
  police.Drop("c.pb", binary.SerializeAsString());
  // Not message files: a writer's temp files and anything else.
  for (const char* name : {".d.json", "e.json.tmp", "f.json~", "notes.txt"}) {
    std::ofstream(police.outbox() + "/" + name) << "{";
  }

  std::string out;
  REQUIRE(RunOnce(police, &out) == 0);
  INFO(out);
  CHECK(out.find("\"sent\":3") != std::string::npos);
  CHECK(Names(police.outbox()) == std::vector<std::string>{"e.json.tmp", "f.json~", "notes.txt"});
  CHECK(Names(police.outbox(), true).size() == 4);
  CHECK(NamesEnding(police.sent(), ".ack.json") ==
        std::vector<std::string>{"a.json.ack.json", "b.json.ack.json", "c.pb.ack.json"});
  for (const char* f : {"a.json", "b.json", "c.pb"}) CHECK(FileExists(police.sent() + "/" + f));
  CHECK(Names(police.failed()).empty());
  const std::string ack_b = Slurp(police.sent() + "/b.json.ack.json");
  CHECK(JsonField(ack_b, "messageId") == given_id);
  CHECK(ack_b.find("\"outcome\":\"queued\"") != std::string::npos);
  CHECK(ack_b.find("\"duplicate\":false") != std::string::npos);

  REQUIRE(school.WaitCount(3));
  CHECK(ReceivedIds(school) == AckIds(police));
  CHECK(AckIds(police).size() == 3);

  // A second run finds nothing to send, and the same name used again later
  // is a new message, kept beside the first.
  REQUIRE(RunOnce(police, &out, "again") == 0);
  CHECK(out.find("\"sent\":0") != std::string::npos);
  police.Drop("a.json", MessageJson("[\"school\"]", "first, again"));
  REQUIRE(RunOnce(police, &out, "third") == 0);
  CHECK(out.find("\"sent\":1") != std::string::npos);
  REQUIRE(school.WaitCount(4));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(school.count() == 4);
  CHECK(AckIds(police).size() == 4);
  CHECK(Names(police.outbox()).size() == 3);
}

TEST_CASE("agent outbox: files the broker cannot take go to failed/ with the reason", "[agent][outbox]") {
  TestBroker broker;
  TempDir dir;
  AgentDirs police(dir.path(), "police");
  police.WriteConfig("police", broker.port());
  // The same id as a message this agency already sent, with other content.
  v1::Message earlier = IncidentReport({"school"});
  auto pub = Publisher(broker.port(), "police");
  REQUIRE(pub->Publish(earlier).AllAccepted());
  pub->Close();

  police.Drop("broken.json", "{ \"envelope\": ");
  police.Drop("garbage.pb", std::string("\xff\xff\xff\x01 not protobuf", 17));
  police.Drop("no-recipients.json", MessageJson("[]", "nobody to send to"));
  police.Drop("unknown.json", MessageJson("[\"nobody\", \"nothing\"]", "to agencies that do not exist"));
  police.Drop("conflict.json", MessageJson("[\"school\"]", "other content", earlier.envelope().message_id()));

  std::string out;
  REQUIRE(RunOnce(police, &out) == 0);
  INFO(out);
  CHECK(out.find("\"failed\":5") != std::string::npos);
  CHECK(Names(police.outbox()).empty());
  CHECK(Names(police.sent()).empty());
  auto reason = [&](const std::string& name) { return Slurp(police.failed() + "/" + name + ".error.json"); };
  for (const char* f : {"broken.json", "garbage.pb", "no-recipients.json", "unknown.json", "conflict.json"}) {
    CHECK(FileExists(police.failed() + "/" + f));
  }
  CHECK(JsonField(reason("broken.json"), "error") == "invalid_file");
  CHECK(reason("broken.json").find("not a valid liaison.v1.Message in JSON") != std::string::npos);
  CHECK(JsonField(reason("garbage.pb"), "error") == "invalid_file");
  CHECK(JsonField(reason("no-recipients.json"), "error") == "invalid_message");
  CHECK(reason("no-recipients.json").find("recipients") != std::string::npos);
  CHECK(JsonField(reason("unknown.json"), "error") == "refused");
  CHECK(reason("unknown.json").find("\"reason\":\"unknown_recipient\"") != std::string::npos);
  CHECK(JsonField(reason("conflict.json"), "error") == "duplicate_message_id");
  CHECK(JsonField(reason("conflict.json"), "messageId") == earlier.envelope().message_id());
}

TEST_CASE("agent inbox: written before the acknowledgement, duplicates dropped, recalls filed", "[agent][inbox]") {
  TestBroker broker;
  TempDir dir;
  AgentDirs school(dir.path(), "school");
  school.WriteConfig("school", broker.port());
  Receiver police_rx(broker.port(), "police");
  auto pub = Publisher(broker.port(), "police", /*want_reports=*/true);
  v1::Message m1 = IncidentReport({"school"});
  v1::Message m2 = IncidentReport({"school"});
  m2.mutable_incident_report()->set_description("Second report.");
  REQUIRE(pub->Publish(m1).AllAccepted());
  REQUIRE(pub->Publish(m2).AllAccepted());
  auto file = [&](const v1::Message& m) { return school.inbox() + "/police_" + m.envelope().message_id() + ".json"; };

  SECTION("written before acknowledged") {
    ChildProcess agent(AgentArgs(school), school.root, "daemon");
    // When the sender hears "delivered", the file is already in the inbox.
    for (const v1::Message* m : {&m1, &m2}) {
      const std::string id = m->envelope().message_id();
      REQUIRE(WaitFor([&] {
        for (const auto& r : police_rx.Reports()) {
          if (r.message_id == id && r.outcome == "delivered") return true;
        }
        return false;
      }));
      CHECK(FileExists(file(*m)));
    }
    CHECK(Slurp(file(m2)).find("Second report.") != std::string::npos);
    CHECK(JsonField(Slurp(file(m1)), "sender") == "police");
    CHECK(Names(school.inbox()).size() == 2);
    agent.Signal(SIGTERM);
    CHECK(agent.Wait() == 0);
  }

  SECTION("duplicates are dropped but acknowledged, even after the agency took the file") {
    REQUIRE(RunOnce(school) == 0);
    REQUIRE(FileExists(file(m1)));
    std::filesystem::remove(file(m1));  // the agency processed it
    // Another broker (say, restored from a backup) delivers m1 again.
    TestBroker other;
    Receiver police_rx2(other.port(), "police");
    auto pub2 = Publisher(other.port(), "police", true);
    REQUIRE(pub2->Publish(m1).AllAccepted());
    school.WriteConfig("school", other.port());
    std::string out, err;
    // The other broker's audit log is not the one this agency witnessed:
    // the agent says so (and exits 6), after doing its work.
    CHECK(RunOnce(school, &out, "dup", &err) == 6);
    INFO(out);
    CHECK(err.find("AUDIT ALARM: the broker's checkpoint names another log or key") != std::string::npos);
    CHECK(out.find("\"received\":0") != std::string::npos);
    CHECK(out.find("\"duplicates\":1") != std::string::npos);
    CHECK_FALSE(FileExists(file(m1)));
    CHECK(Names(school.inbox()).size() == 1);  // m2
    // Acknowledged: the sender hears "delivered".
    CHECK(WaitFor([&] {
      auto reports = police_rx2.Reports();
      return !reports.empty() && reports[0].outcome == "delivered";
    }));
  }

  SECTION("a recall moves the message to recalled/ with the notice beside it") {
    REQUIRE(RunOnce(school) == 0);
    REQUIRE(FileExists(file(m1)));
    std::filesystem::remove(file(m2));  // already taken by the agency
    const auto r1 = pub->Recall(m1.envelope().message_id(), "sent to the wrong agency");
    REQUIRE(r1.status.ok());
    CHECK(r1.notified == std::vector<std::string>{"school"});
    REQUIRE(pub->Recall(m2.envelope().message_id(), "withdrawn").status.ok());
    std::string out;
    REQUIRE(RunOnce(school, &out, "recall") == 0);
    INFO(out);
    CHECK(out.find("\"recalls\":2") != std::string::npos);
    const std::string base1 = "police_" + m1.envelope().message_id();
    const std::string base2 = "police_" + m2.envelope().message_id();
    CHECK(Names(school.inbox()).empty());
    std::vector<std::string> expected = {base1 + ".json", base1 + ".recall.json", base2 + ".recall.json"};
    std::sort(expected.begin(), expected.end());
    CHECK(Names(school.recalled()) == expected);
    CHECK(JsonField(Slurp(school.recalled() + "/" + base1 + ".recall.json"), "reason") == "sent to the wrong agency");
    CHECK(Slurp(school.recalled() + "/" + base1 + ".json").find("Graffiti") != std::string::npos);
  }
}

// The broker's disk is full: it refuses the message with store_failure for
// every recipient and keeps nothing of it, not even its id. That is a
// passing refusal (docs/agent.md): the agent sends the same bytes again
// under the same id until they are stored, and does not move the file to
// failed/ (it did). Nor does the broker's audit_unavailable meanwhile make
// the witness raise an alarm (it did: exit 6).
TEST_CASE("agent outbox: a message the broker cannot store is sent again until it is stored", "[agent][diskfull]") {
  TempDir broker_dir;
  const auto disk = MountSmallDisk(broker_dir, "64m");
  if (!disk) return;
  BrokerProcess broker(broker_dir);
  {
    auto filler = Connect(broker.port(), "health");
    REQUIRE(FillStoreDisk(disk->path, *filler));
  }
  TempDir dir;
  AgentDirs police(dir.path(), "police");
  police.WriteConfig("police", broker.port());
  police.Drop("referral.json", MessageJson("[\"school\"]", "written while the broker's disk was full"));
  ChildProcess agent(AgentArgs(police), police.root, "daemon");
  REQUIRE(agent.started());
  auto refusals = [&] {
    const std::string log = agent.err();
    size_t n = 0;
    for (size_t at = 0; (at = log.find("could not be stored by the broker", at)) != std::string::npos; ++at) ++n;
    return n;
  };
  REQUIRE(WaitFor([&] { return refusals() >= 2; }, std::chrono::seconds(20)));
  INFO(agent.err());
  CHECK(Names(police.failed()).empty());
  CHECK(Names(police.sent()).empty());
  // Space returns: stored, moved to sent/, delivered once. (The ack file is
  // written before the move: the moved file is waited for.)
  REQUIRE(std::remove((disk->path + "/filler").c_str()) == 0);
  REQUIRE(WaitFor([&] { return FileExists(police.sent() + "/referral.json"); }, std::chrono::seconds(30)));
  CHECK(Names(police.failed()).empty());
  CHECK(Names(police.outbox()).empty());
  const std::string id = JsonField(Slurp(police.sent() + "/referral.json.ack.json"), "messageId");
  Receiver school(broker.port(), "school");
  REQUIRE(school.WaitCount(1, std::chrono::seconds(30)));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  std::lock_guard lock(school.mu);
  REQUIRE(school.got.size() == 1);
  CHECK(school.got.at(0).message->envelope().message_id() == id);
  // The broker could not read its audit log while the disk was full
  // (audit_unavailable): no proof either way, so no alarm, and exit 0.
  CHECK(agent.err().find("AUDIT ALARM") == std::string::npos);
  agent.Signal(SIGTERM);
  CHECK(agent.Wait(std::chrono::seconds(10)) == 0);
}

// A full queue at the broker passes. A file refused as queue_full for its
// only recipient went to failed/ (and the broker answered its retries with
// that refusal for ever); it is now sent again until the queue has room,
// the waits doubling (2 s, 4 s, 8 s: the third try comes 6 s after the first).
// One queued for some recipients and refused as queue_full for others goes
// to sent/, with a warning naming those it did not reach.
TEST_CASE("agent outbox: a file refused as queue_full is sent again until queued and a partly queued one warns",
          "[agent][outbox][backlog]") {
  broker::Limits limits;
  limits.max_backlog = 1;
  TestBroker broker(limits);
  // school is offline: one message fills its queue.
  const v1::Message filler = IncidentReport({"school"});
  {
    auto pub = Publisher(broker.port(), "police");
    REQUIRE(pub->Publish(filler).AllAccepted());
    pub->Close();
  }
  TempDir dir;
  AgentDirs police(dir.path(), "police");
  police.WriteConfig("police", broker.port());
  police.Drop("full.json", MessageJson("[\"school\"]", "waits for room in the queue"));
  police.Drop("partly.json", MessageJson("[\"school\", \"health\"]", "reaches health only"));
  // At debug level, to see every try's line.
  ChildProcess agent(AgentArgs(police, {"--log-level", "debug"}), police.root, "daemon");
  REQUIRE(agent.started());
  auto count = [&](const std::string& text) {
    const std::string log = agent.err();
    size_t n = 0;
    for (size_t at = 0; (at = log.find(text, at)) != std::string::npos; ++at) ++n;
    return n;
  };
  // partly.json: queued for health, so sent/, with the warning. (The ack
  // file is written before the move: the moved file is waited for.)
  REQUIRE(WaitFor([&] { return FileExists(police.sent() + "/partly.json"); }));
  // full.json: tried at least three times (the filler and partly.json are
  // the other two publishes), warned of once, and never in failed/.
  WaitFor([&] { return broker.server().counters().publishes >= 5 || !Names(police.failed()).empty(); },
          std::chrono::seconds(20));
  INFO(agent.err());
  REQUIRE(Names(police.failed()).empty());
  REQUIRE(broker.server().counters().publishes >= 5);
  CHECK(count("partly.json (") >= 1);
  CHECK(count("did not reach 'school': the broker's queue for them was full") == 1);
  CHECK(count("full.json (") >= 1);
  // Warned of once; the waits between tries double.
  CHECK(count("warning liaison-agent: outbox: full.json (") == 1);
  CHECK(count("not queued for now: the broker's queue for 'school' is full; trying again in 2 s") == 1);
  CHECK(count("not queued for now: the broker's queue for 'school' is full; trying again in 4 s") == 1);
  CHECK(Names(police.failed()).empty());
  CHECK(Names(police.outbox()) == std::vector<std::string>{"full.json"});
  CHECK_FALSE(FileExists(police.sent() + "/full.json"));
  const std::string partly_ack = Slurp(police.sent() + "/partly.json.ack.json");
  CHECK(partly_ack.find("\"reason\":\"queue_full\"") != std::string::npos);

  // school drains its queue: full.json is queued, moved to sent/ and
  // delivered once; partly.json never reaches school.
  Receiver school(broker.port(), "school");
  REQUIRE(WaitFor([&] { return FileExists(police.sent() + "/full.json"); }, std::chrono::seconds(20)));
  CHECK(Names(police.failed()).empty());
  CHECK(Names(police.outbox()).empty());
  const std::string ack = Slurp(police.sent() + "/full.json.ack.json");
  CHECK(ack.find("\"outcome\":\"queued\"") != std::string::npos);
  CHECK(ack.find("\"duplicate\":false") != std::string::npos);
  const std::string id = JsonField(ack, "messageId");
  REQUIRE(school.WaitCount(2, std::chrono::seconds(20)));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(ReceivedIds(school) == std::set<std::string>{filler.envelope().message_id(), id});
  CHECK(school.count() == 2);
  agent.Signal(SIGTERM);
  CHECK(agent.Wait(std::chrono::seconds(10)) == 0);
}

TEST_CASE_METHOD(PoliceToSchool, "agent: delivery reports beside the sent file, and SIGTERM stops it cleanly",
                 "[agent][reports]") {
  ChildProcess agent(AgentArgs(police), police.root, "daemon");
  police.Drop("r.json", MessageJson("[\"school\", \"social\"]", "reported"));
  const std::string report = police.sent() + "/r.json.report.school.json";
  REQUIRE(WaitFor([&] { return FileExists(report); }));
  // The broker's answer came before the report: its file is already there.
  REQUIRE(FileExists(police.sent() + "/r.json.ack.json"));
  CHECK(JsonField(Slurp(report), "outcome") == "delivered");
  CHECK(JsonField(Slurp(report), "messageId") == JsonField(Slurp(police.sent() + "/r.json.ack.json"), "messageId"));
  CHECK_FALSE(FileExists(police.sent() + "/r.json.report.social.json"));  // social is not receiving
  agent.Signal(SIGTERM);
  CHECK(agent.Wait(std::chrono::seconds(10)) == 0);
  CHECK(agent.err().find("SIGTERM") != std::string::npos);
  CHECK(agent.err().find("1 sent") != std::string::npos);
}

TEST_CASE("agent hook: runs with the message's path, retried until it succeeds, never blocks receiving",
          "[agent][hook]") {
  TestBroker broker;
  TempDir dir;
  AgentDirs school(dir.path(), "school");
  // Fails twice per message, then succeeds; slow enough that a hook run
  // holding up receiving would show.
  school.WriteHook("d=$(dirname \"$0\")\n"
                   "echo x >> \"$d/count.$LIAISON_MESSAGE_ID\"\n"
                   "n=$(wc -l < \"$d/count.$LIAISON_MESSAGE_ID\")\n"
                   "echo \"$1 $LIAISON_SENDER $LIAISON_MESSAGE_ID $n $#\" >> \"$d/hook.log\"\n"
                   "sleep 0.2\n"
                   "[ \"$n\" -ge 3 ]\n");
  school.WriteConfig("school", broker.port(),
                     "hook:\n  command: [hook.sh]\n  max_attempts: 4\n  initial_backoff_ms: 50\n"
                     "  max_backoff_ms: 100\n  timeout_ms: 5000\n");
  ChildProcess agent(AgentArgs(school), school.root, "daemon");
  auto pub = Publisher(broker.port(), "police");
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    v1::Message m = IncidentReport({"school"});
    ids.push_back(m.envelope().message_id());
    REQUIRE(pub->Publish(m).AllAccepted());
  }
  const std::string log = school.root + "/hook.log";
  auto lines = [&] {
    std::vector<std::string> out;
    std::istringstream in(Slurp(log));
    for (std::string l; std::getline(in, l);) out.push_back(l);
    return out;
  };
  REQUIRE(WaitFor([&] { return Names(school.inbox()).size() == 3; }));
  CHECK(lines().size() < 9);  // receiving did not wait for the hooks
  REQUIRE(WaitFor([&] { return lines().size() >= 9; }, std::chrono::seconds(20)));
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  const auto all = lines();
  CHECK(all.size() == 9);  // 3 runs each, none after success
  for (const auto& id : ids) {
    const std::string path = school.inbox() + "/police_" + id + ".json";
    for (int n = 1; n <= 3; ++n) {
      const std::string expected = path + " police " + id + " " + std::to_string(n) + " 1";
      CHECK(std::count(all.begin(), all.end(), expected) == 1);
    }
  }
  agent.Signal(SIGTERM);
  CHECK(agent.Wait(std::chrono::seconds(10)) == 0);
  CHECK(agent.err().find("failed (run 1 of 4): exit status 1") != std::string::npos);
}

TEST_CASE("agent hook: gives up after max_attempts", "[agent][hook]") {
  TestBroker broker;
  TempDir dir;
  AgentDirs social(dir.path(), "social");
  social.WriteHook("echo \"$1\" >> \"$(dirname \"$0\")/hook.log\"\nexit 7\n");
  social.WriteConfig("social", broker.port(),
                     "hook:\n  command: [hook.sh]\n  max_attempts: 2\n  initial_backoff_ms: 20\n"
                     "  max_backoff_ms: 20\n");
  ChildProcess agent(AgentArgs(social), social.root, "daemon");
  auto pub = Publisher(broker.port(), "police");
  REQUIRE(pub->Publish(IncidentReport({"social"})).AllAccepted());
  REQUIRE(WaitFor([&] { return agent.err().find("giving up") != std::string::npos; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::string runs = Slurp(social.root + "/hook.log");
  CHECK(std::count(runs.begin(), runs.end(), '\n') == 2);
  agent.Signal(SIGTERM);
  CHECK(agent.Wait(std::chrono::seconds(10)) == 0);
}

TEST_CASE("agent: a second agent on the same state directory is refused", "[agent][process]") {
  TestBroker broker;
  TempDir dir;
  AgentDirs police(dir.path(), "police");
  police.WriteConfig("police", broker.port());
  ChildProcess first(AgentArgs(police), police.root, "first");
  REQUIRE(WaitFor([&] { return first.err().find("connected to broker") != std::string::npos; }));
  ChildProcess second(AgentArgs(police), police.root, "second");
  CHECK(second.Wait() == 4);
  CHECK(second.err().find("another liaison-agent is running") != std::string::npos);
  first.Signal(SIGTERM);
  CHECK(first.Wait(std::chrono::seconds(10)) == 0);
}

TEST_CASE_METHOD(PoliceToSchool, "agent outbox: a file with a very long name is sent and filed under a shorter name",
                 "[agent][outbox]") {
  // Names up to the file system's 255 bytes are valid in the outbox; the
  // agent's own files beside them (".ack.json", ".report.<agency>.json" and
  // the temp names it writes them under) must still fit.
  ChildProcess agent(AgentArgs(police), police.root, "daemon");
  const std::string long_ack = std::string(245, 'a') + ".json";     // its ack file's name would be too long
  const std::string long_report = std::string(225, 'r') + ".json";  // its report file's name would be
  auto drop_long = [&](const std::string& name, const std::string& content) {
    std::ofstream(police.outbox() + "/.long", std::ios::binary) << content;
    std::filesystem::rename(police.outbox() + "/.long", police.outbox() + "/" + name);
  };
  drop_long(long_ack, MessageJson("[\"school\"]", "long name"));
  drop_long(long_report, MessageJson("[\"school\"]", "long name, reported"));
  police.Drop("short.json", MessageJson("[\"school\"]", "short name"));
  REQUIRE(school.WaitCount(3));
  INFO(agent.err());
  CHECK(WaitFor([&] { return NamesEnding(police.sent(), ".report.school.json").size() == 3; }));
  CHECK(Names(police.outbox()).empty());
  const auto acks = NamesEnding(police.sent(), ".ack.json");
  CHECK(acks.size() == 3);
  std::set<std::string> files;
  for (const auto& n : acks) {
    CHECK(n.size() <= 200);
    files.insert(JsonField(Slurp(police.sent() + "/" + n), "file"));
    CHECK(FileExists(police.sent() + "/" + n.substr(0, n.size() - 9)));  // the message file beside it
  }
  CHECK(files == std::set<std::string>{long_ack, long_report, "short.json"});
  // Receiving goes on: a report that could not be filed would hold it up.
  auto pub = Publisher(broker.port(), "school");
  v1::Message m = IncidentReport({"police"});
  REQUIRE(pub->Publish(m).AllAccepted());
  CHECK(WaitFor([&] { return FileExists(police.inbox() + "/school_" + m.envelope().message_id() + ".json"); }));
  agent.Signal(SIGTERM);
  CHECK(agent.Wait(std::chrono::seconds(10)) == 0);
  // A restart finds nothing left half done.
  std::string out;
  REQUIRE(RunOnce(police, &out, "again") == 0);
  CHECK(out.find("\"sent\":0") != std::string::npos);
}

TEST_CASE_METHOD(PoliceToSchool, "agent outbox: the same file dropped again and again leaves the outbox each time",
                 "[agent][outbox]") {
  // A program that sets its own message ids drops the same file more than
  // once (say, after a failure it did not see). Each copy must leave the
  // outbox under a name of its own, however often.
  const std::string id = "0190a000-0000-7000-8000-0000000000c7";
  const std::string body = "{\"envelope\": {\"messageId\": \"" + id +
                           "\", \"createdAt\": \"2026-01-05T10:00:00Z\", \"recipients\": [\"school\"], "
                           "\"tlp\": \"TLP_AMBER\", \"purpose\": \"safeguarding\"},"
                           " \"incidentReport\": {\"incidentType\": \"INCIDENT_HATE_SPEECH\", \"biasMotivations\":"
                           " [\"BIAS_ANTI_ROMA\"], \"description\": \"again\", \"severity\": \"SEVERITY_MEDIUM\"}}\n";
  for (int i = 0; i < 4; ++i) {
    police.Drop("same.json", body);
    ChildProcess p(AgentArgs(police, {"--once", "--idle", "300", "--timeout", "10", "--json"}), police.root,
                   "once" + std::to_string(i));
    const int rc = p.Wait(std::chrono::seconds(30));
    INFO(p.err());
    REQUIRE(rc == 0);
    CHECK(p.out().find("\"sent\":1") != std::string::npos);
    CHECK(Names(police.outbox()).empty());
    CHECK(NamesEnding(police.sent(), ".ack.json").size() == static_cast<size_t>(i + 1));
  }
  CHECK(school.WaitCount(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(school.count() == 1);  // one message, published once and repeated
}

TEST_CASE_METHOD(PoliceToSchool,
                 "agent outbox: a file named like the agent's own files in sent/ is not overwritten by them",
                 "[agent][outbox]") {
  // Sent first, each under a name that the ack, error or report file of a
  // later "x.json" takes.
  police.Drop("x.json.ack.json", MessageJson("[\"school\"]", "named like an ack"));
  police.Drop("x.json.report.school.json", MessageJson("[\"school\"]", "named like a report"));
  police.Drop("y.json.error.json", MessageJson("[]", "named like an error"));  // fails too
  REQUIRE(RunOnce(police) == 0);
  police.Drop("x.json", MessageJson("[\"school\"]", "the plain name"));
  police.Drop("y.json", MessageJson("[]", "fails"));
  ChildProcess agent(AgentArgs(police), police.root, "daemon");
  REQUIRE(WaitFor([&] { return FileExists(police.sent() + "/x.json.report.school.json") &&
                               FileExists(police.failed() + "/y.json.error.json"); }));
  REQUIRE(school.WaitCount(3));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  agent.Signal(SIGTERM);
  CHECK(agent.Wait(std::chrono::seconds(10)) == 0);
  // Every message file is still in sent/ or failed/, once, whatever its name.
  auto holding = [&](const std::string& dir, const std::string& text) {
    int n = 0;
    for (const auto& name : Names(dir)) n += Slurp(dir + "/" + name).find(text) != std::string::npos;
    return n;
  };
  for (const char* text : {"named like an ack", "named like a report", "the plain name"}) {
    INFO(text);
    CHECK(holding(police.sent(), text) == 1);
  }
  CHECK(holding(police.failed(), "named like an error") == 1);
  CHECK(holding(police.failed(), "fails") == 1);
  CHECK(JsonField(Slurp(police.sent() + "/x.json.ack.json"), "file") == "x.json");
  CHECK(JsonField(Slurp(police.failed() + "/y.json.error.json"), "file") == "y.json");
}

TEST_CASE("agent hook: the hook gets only stdin stdout and stderr and not the connection to the broker",
          "[agent][hook]") {
  // A hook (or a background job it leaves behind) holding the agent's
  // descriptors could write into its TLS connection, or keep it open after
  // the agent has gone.
  TestBroker broker;
  TempDir dir;
  AgentDirs school(dir.path(), "school");
  school.WriteHook("out=\"$(dirname \"$0\")/fds.txt\"\n"
                   "for f in /proc/$$/fd/*; do echo \"${f##*/} $(readlink \"$f\")\"; done > \"$out.tmp\"\n"
                   "mv \"$out.tmp\" \"$out\"\n");
  school.WriteConfig("school", broker.port(), "hook:\n  command: [hook.sh]\n");
  ChildProcess agent(AgentArgs(school), school.root, "daemon");
  auto pub = Publisher(broker.port(), "police");
  REQUIRE(pub->Publish(IncidentReport({"school"})).AllAccepted());
  REQUIRE(WaitFor([&] { return FileExists(school.root + "/fds.txt"); }));
  const std::string fds = Slurp(school.root + "/fds.txt");
  INFO(fds);
  CHECK(fds.find("socket:") == std::string::npos);
  CHECK(fds.find("state.db") == std::string::npos);
  CHECK(fds.find("agent.lock") == std::string::npos);
  agent.Signal(SIGTERM);
  CHECK(agent.Wait(std::chrono::seconds(10)) == 0);
}

TEST_CASE("agent: a directory reached by two paths is refused as two roles", "[agent][process]") {
  // sent: is a symbolic link to the outbox. Files "moved to sent/" would
  // stay in the outbox and be sent again, as new messages, for ever.
  TestBroker broker;
  Receiver school(broker.port(), "school");
  TempDir dir;
  AgentDirs police(dir.path(), "police");
  police.WriteConfig("police", broker.port(), "sent: sent-link\n");
  std::filesystem::create_directory_symlink("outbox", police.root + "/sent-link");
  police.Drop("a.json", MessageJson("[\"school\"]", "once only"));
  {
    ChildProcess p(AgentArgs(police, {"--check-config"}), police.root, "check");
    CHECK(p.Wait() == 1);
    INFO(p.err());
    CHECK(p.err().find("'sent' is the same directory as 'outbox'") != std::string::npos);
  }
  ChildProcess p(AgentArgs(police, {"--once", "--idle", "300", "--timeout", "5"}), police.root, "once");
  CHECK(p.Wait(std::chrono::seconds(30)) == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(school.count() == 0);
  CHECK(Names(police.outbox()) == std::vector<std::string>{"a.json"});

  // The same for the inbox's staging directory, which the agent empties at
  // every start.
  police.WriteConfig("police", broker.port());
  std::filesystem::create_directories(police.inbox());
  std::filesystem::create_directory_symlink("../outbox", police.inbox() + "/.liaison-incoming");
  {
    ChildProcess q(AgentArgs(police, {"--check-config"}), police.root, "check-staging");
    CHECK(q.Wait() == 1);
    INFO(q.err());
    CHECK(q.err().find("'outbox' is the same directory as the inbox's staging directory") != std::string::npos);
  }
  ChildProcess r(AgentArgs(police, {"--once", "--idle", "300", "--timeout", "5"}), police.root, "once-staging");
  CHECK(r.Wait(std::chrono::seconds(30)) == 1);
  CHECK(Names(police.outbox()) == std::vector<std::string>{"a.json"});
}

TEST_CASE("agent outbox: a file replaced by a FIFO while the agent looks at it does not block the agent",
          "[agent][outbox]") {
  // A FIFO in the outbox is not a message file; but one renamed over a
  // regular file between the agent's listing and its open() must not hang
  // the agent (open() of a FIFO waits for a writer that never comes).
  TempDir dir;
  AgentDirs police(dir.path(), "police");
  police.WriteConfig("police", 1);  // no broker needed: files are looked at without one
  std::string config = Slurp(police.config());
  config.replace(config.find("poll_interval_ms: 50"), 20, "poll_interval_ms: 10");
  REQUIRE(WriteFileAtomic(police.config(), config).ok());
  std::filesystem::create_directories(police.outbox());
  std::atomic<bool> stop{false};
  std::thread swapper([&] {
    // x.json and a FIFO beside it trade places as fast as rename can; when
    // the agent has taken x.json away (to failed/), a new one comes.
    const std::string out = police.outbox(), x = out + "/x.json", fifo = out + "/.fifo";
    ::mkfifo(fifo.c_str(), 0600);
    while (!stop) {
      if (::renameat2(AT_FDCWD, x.c_str(), AT_FDCWD, fifo.c_str(), RENAME_EXCHANGE) != 0) {
        ::unlink(fifo.c_str());  // it may be the regular one now
        ::mkfifo(fifo.c_str(), 0600);
        std::ofstream(out + "/.reg") << "{";
        ::rename((out + "/.reg").c_str(), x.c_str());
      }
    }
  });
  ChildProcess agent(AgentArgs(police, {"--once", "--timeout", "4"}), police.root, "once");
  const int rc = agent.Wait(std::chrono::seconds(20));
  stop = true;
  swapper.join();
  INFO(agent.err());
  CHECK(rc == 3);  // the broker could not be reached: but the agent gave up in time
}

TEST_CASE("agent hook: a hook that runs too long is killed with everything it started", "[agent][hook]") {
  // A hook script whose import program hangs: killing the script alone
  // would leave the program running, and every retry would add another.
  TestBroker broker;
  TempDir dir;
  AgentDirs school(dir.path(), "school");
  school.WriteHook("d=$(dirname \"$0\")\n"
                   "(sleep 3; echo survived >> \"$d/survivors\") &\n"
                   "echo started >> \"$d/runs\"\n"
                   "wait\n");
  school.WriteConfig("school", broker.port(),
                     "hook:\n  command: [hook.sh]\n  max_attempts: 2\n  initial_backoff_ms: 20\n"
                     "  max_backoff_ms: 20\n  timeout_ms: 300\n");
  ChildProcess agent(AgentArgs(school), school.root, "daemon");
  auto pub = Publisher(broker.port(), "police");
  REQUIRE(pub->Publish(IncidentReport({"school"})).AllAccepted());
  REQUIRE(WaitFor([&] { return agent.err().find("giving up") != std::string::npos; }));
  CHECK(agent.err().find("no exit within 300 ms; killed") != std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(4000));
  CHECK(Slurp(school.root + "/runs") == "started\nstarted\n");
  CHECK_FALSE(FileExists(school.root + "/survivors"));
  agent.Signal(SIGTERM);
  CHECK(agent.Wait(std::chrono::seconds(10)) == 0);
}

namespace {

// A port on 127.0.0.1 where nothing listens (bound, then closed).
uint16_t ClosedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

// The "pending" count in a --once --json summary, or -1.
long PendingIn(const std::string& summary) {
  const auto at = summary.find("\"pending\":");
  return at == std::string::npos ? -1 : std::stol(summary.substr(at + 10));
}

}  // namespace

TEST_CASE("agent outbox: while the broker is unreachable claims stop at a bound and the rest are sent later",
          "[agent][outbox]") {
  // Each claimed file's body waits in the agent's memory until the broker
  // has it: an outbox backlog built up while the broker is down must not
  // all be claimed at once.
  TempDir dir;
  const uint16_t closed = ClosedPort();
  auto unreachable_once = [&](const AgentDirs& d) {
    ChildProcess p(AgentArgs(d, {"--once", "--timeout", "3", "--json"}), d.root, "unreachable");
    const int rc = p.Wait(std::chrono::seconds(30));
    INFO(p.err());
    CHECK(rc == 3);
    return PendingIn(p.out());
  };

  // By count: 1,500 small files, 1,024 claimed (all of them, without the
  // bound: 256 a scan, a scan every 50 ms).
  AgentDirs police(dir.path(), "police");
  police.WriteConfig("police", closed);
  for (int i = 0; i < 1500; ++i) police.Drop("m" + std::to_string(i) + ".json", MessageJson("[\"school\"]", "n"));
  CHECK(unreachable_once(police) == 1024);
  CHECK(Names(police.outbox()).size() == 1500);

  // By bytes: 400 files of about 60 KB; claims stop at 16 MiB of bodies.
  AgentDirs social(dir.path(), "social");
  social.WriteConfig("social", closed);
  const std::string long_text(60000, 'x');
  for (int i = 0; i < 400; ++i) social.Drop("m" + std::to_string(i) + ".json", MessageJson("[\"school\"]", long_text));
  const long claimed = unreachable_once(social);
  CHECK(claimed >= 250);
  CHECK(claimed <= (16 << 20) / 60000 + 1);

  // Once the broker is there, one --once run sends every file: a scan that
  // left files behind is not the last.
  TestBroker broker;
  Receiver school(broker.port(), "school");
  police.WriteConfig("police", broker.port());
  std::string out;
  REQUIRE(RunOnce(police, &out) == 0);
  INFO(out);
  CHECK(out.find("\"sent\":1500") != std::string::npos);
  CHECK(Names(police.outbox()).empty());
  CHECK(NamesEnding(police.sent(), ".ack.json").size() == 1500);
  CHECK(school.WaitCount(1500));
}

TEST_CASE_METHOD(PoliceToSchool,
                 "agent outbox: a name that is not UTF-8 or holds a newline gives valid JSON and one log line",
                 "[agent][outbox]") {
  const std::string name = "caf\xe9\nforged line.json";  // Latin-1 e-acute, then a newline
  police.Drop(name, MessageJson("[\"school\"]", "odd name"));
  std::string out, err;
  REQUIRE(RunOnce(police, &out, "once", &err) == 0);
  CHECK(out.find("\"sent\":1") != std::string::npos);
  REQUIRE(FileExists(police.sent() + "/" + name + ".ack.json"));
  const std::string ack = Slurp(police.sent() + "/" + name + ".ack.json");
  INFO(ack);
  CHECK(ack.find("\"file\":\"caf\\ufffd\\nforged line.json\"") != std::string::npos);
  CHECK(ack.find('\xe9') == std::string::npos);
  INFO(err);
  CHECK(err.find("\nforged line.json") == std::string::npos);
  CHECK(err.find("caf\xe9?forged line.json is message") != std::string::npos);
}

TEST_CASE_METHOD(PoliceToSchool,
                 "agent outbox: a symbolic link in the outbox is not followed and nothing it points to is sent",
                 "[agent][outbox]") {
  // A program that may write into the outbox must not get the agent (and
  // its certificate) to send a file it could not read itself.
  const std::string elsewhere = dir.path() + "/elsewhere.json";
  std::ofstream(elsewhere) << MessageJson("[\"school\"]", "not for the outbox");
  std::filesystem::create_symlink(elsewhere, police.outbox() + "/link.json");
  police.Drop("real.json", MessageJson("[\"school\"]", "a real one"));
  std::string out;
  REQUIRE(RunOnce(police, &out) == 0);
  INFO(out);
  CHECK(out.find("\"sent\":1") != std::string::npos);
  CHECK(Names(police.outbox()) == std::vector<std::string>{"link.json"});
  CHECK(std::filesystem::is_symlink(police.outbox() + "/link.json"));
  CHECK(Names(police.failed()).empty());
  REQUIRE(school.WaitCount(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(school.count() == 1);
}

TEST_CASE_METHOD(PoliceToSchool, "agent: a damaged witness file is an audit alarm and is left as it is",
                 "[agent][witness]") {
  // The witness (state/checkpoint.txt) is the agency's evidence of what the
  // broker's audit log held. Damaged, it must not be replaced by whatever
  // the broker shows now, which would drop that evidence without a word.
  police.Drop("a.json", MessageJson("[\"school\"]", "first"));
  REQUIRE(RunOnce(police) == 0);
  const std::string witness = police.state() + "/checkpoint.txt";
  REQUIRE(FileExists(witness));
  const std::string kept = Slurp(witness);
  const std::string damaged = kept.substr(0, kept.size() / 2);  // cut short, as a failing disk might
  REQUIRE(WriteFileAtomic(witness, damaged).ok());

  police.Drop("b.json", MessageJson("[\"school\"]", "second"));
  std::string out, err;
  CHECK(RunOnce(police, &out, "damaged", &err) == 6);
  INFO(err);
  CHECK(err.find("AUDIT ALARM: the witness file " + witness + " holds no checkpoint") != std::string::npos);
  CHECK(Slurp(witness) == damaged);
  CHECK(out.find("\"sent\":1") != std::string::npos);  // its work is done all the same

  // Removed, a new witness starts.
  std::filesystem::remove(witness);
  REQUIRE(RunOnce(police, &out, "fresh") == 0);
  CHECK(FileExists(witness));
}

TEST_CASE("agent: a broker that sends beyond the credit is cut off and nothing beyond it is filed", "[agent][credit]") {
  // The broker announces credit 2 and sends three messages at once.
  const std::string a = "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c41", b = "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42",
                    c = "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c43";
  ScriptedBroker broker(
      {DeliverMessage(1, "police", a), DeliverMessage(2, "police", b), DeliverMessage(3, "police", c)}, 2);
  TempDir dir;
  AgentDirs school(dir.path(), "school");
  school.WriteConfig("school", broker.port(), "credit: 2\n");
  ChildProcess agent(AgentArgs(school), school.root, "daemon");
  const std::string exceeded =
      " error liaison-agent: connection to the broker lost: the broker exceeded this session's credit of 2: it sent "
      "delivery 3 while 2 deliveries were unacknowledged; reconnecting in ";
  const bool cut_off = WaitFor([&] { return agent.err().find(exceeded) != std::string::npos; });
  agent.Signal(SIGTERM);
  CHECK(agent.Wait() == 0);
  INFO(agent.err());
  CHECK(cut_off);
  // What came within the credit is written as usual (and, unacknowledged
  // on a connection that is gone, recognised when it comes again).
  CHECK(Names(school.inbox()) == std::vector<std::string>{"police_" + a + ".json", "police_" + b + ".json"});
}

TEST_CASE("agent: a recall notice or report that cannot be filed is quarantined and acknowledged and frees its credit",
          "[agent][inbox]") {
  // Both units of credit go to notices whose names cannot be file names;
  // the broker sends the message after them only once both are
  // acknowledged (as the real broker would, had it sent such notices).
  const std::string id = "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42";
  ScriptedBroker broker({{0, {DeliverRecall(1, "../escaped", id), DeliverReport(2, "x\ny", "school/..")}},
                         {2, {DeliverMessage(3, "police", id)}}},
                        2);
  TempDir dir;
  AgentDirs school(dir.path(), "school");
  school.WriteConfig("school", broker.port(), "credit: 2\n");
  ChildProcess agent(AgentArgs(school), school.root, "daemon");
  const bool received = WaitFor([&] { return FileExists(school.inbox() + "/police_" + id + ".json"); });
  agent.Signal(SIGTERM);
  CHECK(agent.Wait() == 0);
  INFO(agent.err());
  REQUIRE(received);
  CHECK(WaitFor([&] { return broker.Acked() == std::vector<uint64_t>{1, 2, 3}; }));
  const std::string quarantine = school.state() + "/quarantine";
  const auto recalls = NamesEnding(quarantine, ".recall.json");
  const auto reports = NamesEnding(quarantine, ".report.json");
  REQUIRE(recalls.size() == 1);
  REQUIRE(reports.size() == 1);
  CHECK(Names(quarantine).size() == 2);
  const std::string recall = Slurp(quarantine + "/" + recalls[0]);
  CHECK(JsonField(recall, "sender") == "../escaped");
  CHECK(JsonField(recall, "messageId") == id);
  CHECK(recall.find("\"deliveryId\":1,\"attempt\":1,") != std::string::npos);
  const std::string report = Slurp(quarantine + "/" + reports[0]);
  CHECK(report.find("\"messageId\":\"x\\ny\",\"recipient\":\"school/..\"") != std::string::npos);
  CHECK(std::count(report.begin(), report.end(), '\n') == 1);
  // Nothing filed under the names they give.
  CHECK(Names(school.recalled()).empty());
  CHECK(Names(school.sent()).empty());
  CHECK_FALSE(FileExists(school.root + "/escaped_" + id + ".recall.json"));
  CHECK(agent.err().find(" error liaison-agent: inbox: a recall notice names sender '../escaped' and message id '" +
                         id + "', which cannot be a file name: kept as " + quarantine + "/") != std::string::npos);
  CHECK(agent.err().find("1 received, 0 duplicate(s) dropped, 0 recall(s), 0 report(s), 2 quarantined") !=
        std::string::npos);
}

TEST_CASE("agent outbox: a file removed while being sent and written anew under its name is sent and not filed in its place",
          "[agent][outbox]") {
  // The agency may remove a file while it is being sent, and use its name
  // again once it has left the outbox. The new file was moved to sent/ as
  // the earlier message (its own content never sent, and no error): lost.
  TempDir dir;
  AgentDirs police(dir.path(), "police");
  police.WriteConfig("police", ClosedPort());
  const std::string first_id = "0190a000-0000-7000-8000-0000000000c1";
  police.Drop("x.json", MessageJson("[\"school\"]", "the first", first_id));
  {
    // The broker cannot be reached: x.json is claimed and waits.
    ChildProcess p(AgentArgs(police, {"--once", "--timeout", "2", "--json"}), police.root, "unreachable");
    REQUIRE(p.Wait(std::chrono::seconds(30)) == 3);
    REQUIRE(PendingIn(p.out()) == 1);
  }
  std::filesystem::remove(police.outbox() + "/x.json");
  police.Drop("x.json", MessageJson("[\"school\"]", "the second"));

  TestBroker broker;
  Receiver school(broker.port(), "school");
  police.WriteConfig("police", broker.port());
  std::string out, err;
  REQUIRE(RunOnce(police, &out, "once", &err) == 0);
  INFO(out);
  INFO(err);
  CHECK(out.find("\"sent\":2") != std::string::npos);
  CHECK(Names(police.outbox()).empty());
  // Both messages reached school, each once.
  REQUIRE(school.WaitCount(2));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(school.count() == 2);
  std::set<std::string> descriptions;
  {
    std::lock_guard lock(school.mu);
    for (const auto& d : school.got) descriptions.insert(d.message->incident_report().description());
  }
  CHECK(descriptions == std::set<std::string>{"the first", "the second"});
  // The first one's ack stays; the second is filed under its own id, with
  // its own ack beside it.
  CHECK(JsonField(Slurp(police.sent() + "/x.json.ack.json"), "messageId") == first_id);
  CHECK_FALSE(FileExists(police.sent() + "/x.json"));
  const auto acks = NamesEnding(police.sent(), ".ack.json");
  REQUIRE(acks.size() == 2);
  const std::string second = acks[0] == "x.json.ack.json" ? acks[1] : acks[0];
  const std::string second_file = second.substr(0, second.size() - 9);
  const std::string second_id = JsonField(Slurp(police.sent() + "/" + second), "messageId");
  CHECK(second_file == "x." + second_id + ".json");
  CHECK(Slurp(police.sent() + "/" + second_file).find("the second") != std::string::npos);
  CHECK(err.find("was replaced in the outbox by another file of that name") != std::string::npos);
}

TEST_CASE_METHOD(PoliceToSchool,
                 "agent outbox: a file still being written under its final name is sent once it is whole",
                 "[agent][outbox]") {
  // Not renamed into place but copied straight under its name: the agent
  // saw it empty or half written, filed it in failed/ as invalid_file, and
  // its writer went on writing it there. Never sent.
  ChildProcess agent(AgentArgs(police), police.root, "daemon");
  REQUIRE(WaitFor([&] { return agent.err().find("connected to broker") != std::string::npos; }));
  const std::string text = MessageJson("[\"school\"]", "written slowly");
  {
    std::ofstream f(police.outbox() + "/slow.json", std::ios::binary);
    f << text.substr(0, text.size() / 2) << std::flush;
    // Several scans (every 50 ms) see the first half.
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    f << text.substr(text.size() / 2) << std::flush;
  }
  {
    // Empty for a while, as a writer that created it and has not written yet.
    std::ofstream f(police.outbox() + "/empty.pb", std::ios::binary);
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    f << IncidentReport({"school"}).SerializeAsString() << std::flush;
  }
  const bool sent = WaitFor([&] {
    return FileExists(police.sent() + "/slow.json") && FileExists(police.sent() + "/empty.pb");
  });
  agent.Signal(SIGTERM);
  CHECK(agent.Wait(std::chrono::seconds(10)) == 0);
  INFO(agent.err());
  CHECK(sent);
  CHECK(Names(police.failed()).empty());
  CHECK(school.WaitCount(2));
  CHECK(agent.err().find("outbox: slow.json is not a valid message (yet) and was changed") != std::string::npos);

  // A file that stays invalid still goes to failed/, once it has stood
  // unchanged for a while.
  police.Drop("broken.json", "{ \"envelope\": ");
  std::string out;
  REQUIRE(RunOnce(police, &out) == 0);
  INFO(out);
  CHECK(out.find("\"failed\":1") != std::string::npos);
  CHECK(JsonField(Slurp(police.failed() + "/broken.json.error.json"), "error") == "invalid_file");
}

TEST_CASE("agent hook: a run cut short by the service stopping is not counted and runs again at the next start",
          "[agent][hook]") {
  // systemctl stop (or restart) sends SIGTERM to every process of the
  // service, the hook too. That run was counted as failed: with
  // max_attempts 1 the agent gave the message's hook up for good.
  TestBroker broker;
  TempDir dir;
  AgentDirs school(dir.path(), "school");
  school.WriteHook("d=$(dirname \"$0\")\n"
                   "echo $$ >> \"$d/runs\"\n"
                   "if [ ! -e \"$d/slept\" ]; then touch \"$d/slept\"; sleep 5; fi\n"
                   "echo done >> \"$d/done\"\n");
  school.WriteConfig("school", broker.port(), "hook:\n  command: [hook.sh]\n  max_attempts: 1\n  timeout_ms: 20000\n");
  ChildProcess agent(AgentArgs(school), school.root, "daemon");
  auto pub = Publisher(broker.port(), "police");
  REQUIRE(pub->Publish(IncidentReport({"school"})).AllAccepted());
  const std::string runs = school.root + "/runs";
  REQUIRE(WaitFor([&] { return FileExists(school.root + "/slept"); }));
  const pid_t hook = std::stoi(Slurp(runs));
  // As systemd stops a service: the agent and the hook's process group.
  agent.Signal(SIGTERM);
  ::kill(-hook, SIGTERM);
  CHECK(agent.Wait(std::chrono::seconds(10)) == 0);
  INFO(agent.err());
  CHECK_FALSE(FileExists(school.root + "/done"));
  CHECK(agent.err().find("giving up") == std::string::npos);
  CHECK(agent.err().find("while the agent was stopping: not counted") != std::string::npos);

  std::string out, err;
  CHECK(RunOnce(school, &out, "again", &err) == 0);
  INFO(err);
  CHECK(Slurp(school.root + "/done") == "done\n");
  const std::string all = Slurp(runs);
  CHECK(std::count(all.begin(), all.end(), '\n') == 2);
}

TEST_CASE("agent inbox: a message is not acknowledged while the inbox's disk is full and arrives once there is room",
          "[agent][inbox][diskfull]") {
  TestBroker broker;
  TempDir dir;
  const auto disk = MountSmallDisk(dir, "2m");
  if (!disk) return;
  AgentDirs school(dir.path(), "school");
  school.WriteConfig("school", broker.port());
  std::string config = Slurp(school.config());
  config.replace(config.find("inbox: inbox"), 12, "inbox: " + disk->path + "/inbox");
  REQUIRE(WriteFileAtomic(school.config(), config + "recalled: " + disk->path + "/recalled\n").ok());
  std::filesystem::create_directories(disk->path + "/inbox");
  FillDisk(disk->path);
  Receiver police_rx(broker.port(), "police");
  auto pub = Publisher(broker.port(), "police", /*want_reports=*/true);
  v1::Message m = IncidentReport({"school"});
  REQUIRE(pub->Publish(m).AllAccepted());
  const std::string file = disk->path + "/inbox/police_" + m.envelope().message_id() + ".json";
  ChildProcess agent(AgentArgs(school), school.root, "daemon");
  auto failures = [&] {
    const std::string log = agent.err();
    size_t n = 0;
    for (size_t at = 0; (at = log.find("local failure", at)) != std::string::npos; ++at) ++n;
    return n;
  };
  REQUIRE(WaitFor([&] { return failures() >= 2; }, std::chrono::seconds(20)));
  INFO(agent.err());
  CHECK_FALSE(FileExists(file));
  CHECK(police_rx.Reports().empty());  // not acknowledged: the sender hears nothing yet
  REQUIRE(std::remove((disk->path + "/filler").c_str()) == 0);
  REQUIRE(WaitFor([&] { return FileExists(file); }, std::chrono::seconds(20)));
  CHECK(WaitFor([&] {
    auto reports = police_rx.Reports();
    return !reports.empty() && reports[0].outcome == "delivered";
  }));
  agent.Signal(SIGTERM);
  CHECK(agent.Wait(std::chrono::seconds(10)) == 0);
  CHECK(Names(disk->path + "/inbox").size() == 1);
  CHECK(police_rx.Reports().size() == 1);
  CHECK(Names(disk->path + "/inbox/.liaison-incoming", true).empty());
}

TEST_CASE("agent outbox: a file being sent that is copied back with the same bytes is filed once and not sent again",
          "[agent][outbox]") {
  // The outbox restored from a backup, or moved to another disk, while a
  // file waited for the broker: a new inode, the same file. Taken for
  // another file, it would be sent a second time under a new id.
  TempDir dir;
  AgentDirs police(dir.path(), "police");
  police.WriteConfig("police", ClosedPort());
  police.Drop("x.json", MessageJson("[\"school\"]", "copied back"));
  {
    ChildProcess p(AgentArgs(police, {"--once", "--timeout", "2", "--json"}), police.root, "unreachable");
    REQUIRE(p.Wait(std::chrono::seconds(30)) == 3);
    REQUIRE(PendingIn(p.out()) == 1);
  }
  const std::string x = police.outbox() + "/x.json";
  std::filesystem::copy_file(x, police.outbox() + "/.x.json.copy");
  std::filesystem::rename(police.outbox() + "/.x.json.copy", x);

  TestBroker broker;
  Receiver school(broker.port(), "school");
  police.WriteConfig("police", broker.port());
  std::string out;
  REQUIRE(RunOnce(police, &out) == 0);
  INFO(out);
  CHECK(out.find("\"sent\":1") != std::string::npos);
  CHECK(Names(police.outbox()).empty());
  CHECK(NamesEnding(police.sent(), ".json") ==
        std::vector<std::string>{"x.json", "x.json.ack.json", "x.json.report.school.json"});
  REQUIRE(school.WaitCount(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(school.count() == 1);
}

TEST_CASE_METHOD(PoliceToSchool,
                 "agent outbox: a file that cannot be moved to failed/ leaves no reasons behind and is logged once",
                 "[agent][outbox]") {
  // An outbox that becomes read-only while the agent runs (a file system
  // remounted read-only after an error; the agent refuses one at start):
  // an invalid file in it cannot be moved to failed/. Each scan (every
  // 50 ms here) wrote another reason file into failed/, and two log lines.
  ChildProcess agent(AgentArgs(police), police.root, "daemon");
  REQUIRE(WaitFor([&] { return agent.err().find("connected to broker") != std::string::npos; }));
  // The outbox as it becomes: another directory holding an invalid file
  // unchanged for a minute (a file changed in the last 2 s is looked at
  // again later), mounted read-only in its place.
  const std::string frozen = dir.File("frozen");
  REQUIRE(::mkdir(frozen.c_str(), 0700) == 0);
  std::ofstream(frozen + "/broken.json") << "{ not json";
  const timespec times[2] = {{0, UTIME_OMIT}, {std::time(nullptr) - 60, 0}};
  REQUIRE(::utimensat(AT_FDCWD, (frozen + "/broken.json").c_str(), times, 0) == 0);
  if (::mount(frozen.c_str(), police.outbox().c_str(), nullptr, MS_BIND, nullptr) != 0) {
    WARN("cannot bind-mount here (" << std::strerror(errno) << "): the test did not run");
    return;
  }
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{police.outbox()};
  REQUIRE(::mount(nullptr, police.outbox().c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr) == 0);
  const bool seen = WaitFor([&] { return agent.err().find("cannot move broken.json to failed/") != std::string::npos; });
  INFO(agent.err());
  REQUIRE(seen);
  std::this_thread::sleep_for(std::chrono::seconds(1));  // about 20 scans more
  agent.Signal(SIGTERM);
  CHECK(agent.Wait(std::chrono::seconds(10)) == 0);
  const std::string err = agent.err();
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t at = err.find(what); at != std::string::npos; at = err.find(what, at + 1)) ++n;
    return n;
  };
  CHECK(count("cannot move broken.json to failed/") == 1);
  CHECK(count("broken.json not sent") == 1);
  CHECK(NamesEnding(police.failed(), ".error.json").empty());
  CHECK(FileExists(police.outbox() + "/broken.json"));
}
