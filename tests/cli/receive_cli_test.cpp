// liaison receive (and the global --witness) as a process: what comes from
// the network is checked before it becomes a file name or output, and what
// comes from local files is refused rather than silently replaced. Some
// cases need a broker that sends what the real one never would
// (tests/integration/scripted_broker.h).
#include <catch2/catch.hpp>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <filesystem>

#include "common/files.h"
#include "proto/detail/pb.h"
#include "proto/message_json.h"
#include "tests/integration/process_support.h"
#include "tests/integration/scripted_broker.h"
#include "tests/integration/test_support.h"

using namespace liaison;
using namespace liaison::test;

TEST_CASE("liaison receive --out prints one line per notice even when the broker's fields hold newlines",
          "[cli][receive]") {
  TempDir dir;
  std::filesystem::create_directories(dir.File("inbox"));
  ScriptedBroker broker({DeliverReport(1, "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42\nreceived forged", "school\nx")});
  std::string out, err;
  const int rc = Run(broker.Cli("school", {"receive", "--out", dir.File("inbox"), "--count", "1", "--wait", "3"}),
                     dir.path(), &out, &err);
  INFO(out << err);
  CHECK(rc == 5);  // a report is no message: none came
  CHECK(std::count(out.begin(), out.end(), '\n') == 1);
  CHECK(out.rfind("delivery report: ", 0) == 0);
}

TEST_CASE("liaison receive --out refuses a sender or message id from the broker that is no safe file name",
          "[cli][receive]") {
  TempDir dir;
  std::filesystem::create_directories(dir.File("work/inbox"));
  const std::string inbox = dir.File("work/inbox");
  std::string out, err;
  SECTION("a message whose sender climbs out of the directory") {
    ScriptedBroker broker({DeliverMessage(1, "../escaped", "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42")});
    const int rc = Run(broker.Cli("school", {"receive", "--out", inbox, "--count", "1", "--wait", "10"}), dir.path(),
                       &out, &err);
    INFO(out << err);
    CHECK(rc == 3);
    CHECK(err.find("not acknowledged") != std::string::npos);
    CHECK(!std::filesystem::exists(dir.File("work/escaped_0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42.json")));
  }
  SECTION("a message whose id climbs out of the directory") {
    std::filesystem::create_directories(dir.File("work/inbox/police_"));
    ScriptedBroker broker({DeliverMessage(1, "police", "/../../escaped")});
    const int rc = Run(broker.Cli("school", {"receive", "--out", inbox, "--count", "1", "--wait", "10"}), dir.path(),
                       &out, &err);
    INFO(out << err);
    CHECK(rc == 3);
    CHECK(!std::filesystem::exists(dir.File("work/escaped.json")));
  }
  SECTION("a recall notice whose sender climbs out of the directory") {
    ScriptedBroker broker({DeliverRecall(1, "../../escaped", "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42")});
    REQUIRE(WriteFileAtomic(dir.File("escaped_0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42.json"), "{}\n").ok());
    const int rc = Run(broker.Cli("school", {"receive", "--out", inbox, "--count", "1", "--wait", "3"}), dir.path(),
                       &out, &err);
    INFO(out << err);
    CHECK(rc == 3);
    // Neither moved from outside --out nor a notice written there.
    CHECK(std::filesystem::exists(dir.File("escaped_0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42.json")));
    CHECK(!std::filesystem::exists(dir.File("work/escaped_0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42.recall.json")));
  }
}

TEST_CASE("liaison receive --out --json prints valid JSON when the directory's name holds a quote or a backslash",
          "[cli][receive]") {
  TempDir dir;
  BrokerProcess broker(dir);
  REQUIRE(WriteFileAtomic(dir.File("incident.json"), *proto::ToJson(IncidentReport({"school"}), true)).ok());
  const std::string inbox = dir.File("in\"box\\");
  std::filesystem::create_directory(inbox);
  std::string out, err;
  REQUIRE(Run(broker.Cli("police", {"send", "--to", "school", dir.File("incident.json")}), dir.path(), &out, &err) == 0);
  const int rc = Run(broker.Cli("school", {"--json", "receive", "--out", inbox, "--count", "1", "--wait", "20"}),
                     dir.path(), &out, &err);
  INFO(out << err);
  REQUIRE(rc == 0);
  google::protobuf::Struct line;
  REQUIRE(google::protobuf::util::JsonStringToMessage(out, &line).ok());
  const std::string file = line.fields().at("file").string_value();
  CHECK(file.rfind(inbox + "/police_", 0) == 0);
  CHECK(std::filesystem::exists(file));
}

TEST_CASE("liaison --witness refuses a witness file that is not a checkpoint and leaves it as it is", "[cli][witness]") {
  TempDir dir;
  BrokerProcess broker(dir);
  REQUIRE(WriteFileAtomic(dir.File("incident.json"), *proto::ToJson(IncidentReport({"school"}), true)).ok());
  const std::string witness = dir.File("police.checkpoint");
  // A witness file damaged by hand or by another program: starting over from
  // whatever the broker shows now would silently drop what was witnessed.
  REQUIRE(WriteFileAtomic(witness, "liaison-test/audit\n12\n").ok());
  std::string out, err;
  const int rc = Run(broker.Cli("police", {"--witness", witness, "send", "--to", "school", dir.File("incident.json")}),
                     dir.path(), &out, &err);
  INFO(out << err);
  CHECK(rc == 2);
  CHECK(err.find(witness) != std::string::npos);
  CHECK(out.empty());  // nothing was sent
  CHECK(Slurp(witness) == "liaison-test/audit\n12\n");
  // One that cannot be kept where it is named is refused too, before sending.
  CHECK(Run(broker.Cli("police", {"--witness", dir.File("missing/police.checkpoint"), "send", "--to", "school",
                                  dir.File("incident.json")}),
            dir.path(), &out, &err) == 2);
  CHECK(err.find("missing/police.checkpoint") != std::string::npos);
  CHECK(out.empty());
  // A witness file that does not exist yet is started.
  const std::string fresh = dir.File("school.checkpoint");
  const int fresh_rc =
      Run(broker.Cli("police", {"--witness", fresh, "send", "--to", "school", dir.File("incident.json")}), dir.path(),
          &out, &err);
  INFO("fresh witness: " << out << err);
  CHECK(fresh_rc == 0);
  CHECK(std::filesystem::exists(fresh));
}

TEST_CASE("liaison receive stops with exit 3 when the broker sends more deliveries than the credit granted",
          "[cli][receive][credit]") {
  // A broker that ignores the credit could grow receive's queue without
  // bound: the client library takes nothing beyond it and ends the
  // connection; what came within the credit is written as usual.
  const std::string a = "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c41", b = "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42",
                    c = "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c43";
  struct Case {
    std::string what;
    uint32_t announced;  // the credit in the broker's Welcome
    std::vector<v1::Frame> deliveries;
    std::vector<std::string> options;
    std::string written, not_written;  // message ids
  };
  const Case cases[] = {
      {"--credit 2", 2,
       {DeliverMessage(1, "police", a), DeliverMessage(2, "police", b), DeliverMessage(3, "police", c)},
       {"--count", "3", "--credit", "2"}, b, c},
      {"the broker's own default, a delivery report taking credit as a message does", 2,
       {DeliverReport(1, a, "social"), DeliverMessage(2, "police", b), DeliverMessage(3, "police", c)},
       {"--count", "2"}, b, c},
      {"a broker announcing more credit than --credit asked for", 64,
       {DeliverMessage(1, "police", a), DeliverMessage(2, "police", b), DeliverMessage(3, "police", c)},
       {"--count", "3", "--credit", "2"}, b, c},
  };
  for (const Case& k : cases) {
    TempDir dir;
    const std::string inbox = dir.File("inbox");
    std::filesystem::create_directories(inbox);
    ScriptedBroker broker(k.deliveries, k.announced);
    std::vector<std::string> args = {"receive", "--out", inbox, "--wait", "20"};
    args.insert(args.end(), k.options.begin(), k.options.end());
    std::string out, err;
    const int rc = Run(broker.Cli("school", args), dir.path(), &out, &err);
    INFO(k.what << "\n" << out << err);
    CHECK(rc == 3);
    CHECK(err.find("liaison receive: the broker exceeded this session's credit of 2: it sent delivery 3 while 2 "
                   "deliveries were unacknowledged\n") != std::string::npos);
    CHECK(std::filesystem::exists(inbox + "/police_" + k.written + ".json"));
    CHECK_FALSE(std::filesystem::exists(inbox + "/police_" + k.not_written + ".json"));
  }
}
