// The agent's configuration: table-driven, text in, expected error and
// position out (client/agent/agent_config.h).
#include "client/agent/agent_config.h"

#include <catch2/catch.hpp>

using namespace liaison;
using namespace liaison::agent;

namespace {

const std::string kBase =
    "broker: broker.example.org:7443\n"  // 1
    "certificate: tls/police.crt\n"      // 2
    "private_key: tls/police.key\n"      // 3
    "ca_bundle: /etc/liaison/ca.crt\n"   // 4
    "outbox: spool/outbox\n"             // 5
    "inbox: spool/inbox\n"               // 6
    "state_dir: /var/lib/agent\n";       // 7

std::string Errors(const Diagnostics& d) {
  return FormatDiagnostics(d);
}

}  // namespace

TEST_CASE("a minimal agent configuration gets the documented defaults", "[agent][config]") {
  Diagnostics diags;
  auto c = AgentConfig::LoadText(kBase, "/etc/liaison/agent.yaml", &diags);
  INFO(Errors(diags));
  REQUIRE(c);
  CHECK(c->connection.host == "broker.example.org");
  CHECK(c->connection.port == 7443);
  CHECK(c->connection.tls.certificate == "/etc/liaison/tls/police.crt");
  CHECK(c->outbox == "/etc/liaison/spool/outbox");
  CHECK(c->sent == "/etc/liaison/spool/sent");
  CHECK(c->failed == "/etc/liaison/spool/failed");
  CHECK(c->recalled == "/etc/liaison/spool/recalled");
  CHECK(c->state_dir == "/var/lib/agent");
  CHECK(c->connection.checkpoint_file == "/var/lib/agent/checkpoint.txt");
  CHECK(c->want_reports);
  CHECK(c->credit == 0);
  CHECK_FALSE(c->hook);
  CHECK(c->reconnect_initial.count() == 500);
  CHECK(c->reconnect_max.count() == 30'000);
  CHECK(c->connection.witness_max_unproven == std::chrono::hours(24));
}

TEST_CASE("a full agent configuration is read as written", "[agent][config]") {
  Diagnostics diags;
  auto c = AgentConfig::LoadText(kBase +
                                     "sent: /srv/sent\nfailed: /srv/failed\nrecalled: /srv/recalled\n"
                                     "credit: 16\nwant_reports: false\nmax_in_flight: 8\npoll_interval_ms: 250\n"
                                     "log_level: debug\nwitness_max_unproven_s: 3600\n"
                                     "reconnect:\n  initial_delay_ms: 100\n  max_delay_ms: 5000\n"
                                     "hook:\n  command: [bin/import, --quiet]\n  max_attempts: 3\n"
                                     "  initial_backoff_ms: 20\n  max_backoff_ms: 40\n  timeout_ms: 1000\n",
                                 "/etc/liaison/agent.yaml", &diags);
  INFO(Errors(diags));
  REQUIRE(c);
  CHECK(c->sent == "/srv/sent");
  CHECK(c->credit == 16);
  CHECK_FALSE(c->want_reports);
  CHECK(c->max_in_flight == 8);
  CHECK(c->poll_interval.count() == 250);
  CHECK(c->log_level == "debug");
  CHECK(c->connection.witness_max_unproven == std::chrono::hours(1));
  CHECK(c->reconnect_max.count() == 5000);
  REQUIRE(c->hook);
  CHECK(c->hook->command == std::vector<std::string>{"/etc/liaison/bin/import", "--quiet"});
  CHECK(c->hook->max_attempts == 3);
  CHECK(c->hook->timeout.count() == 1000);
}

TEST_CASE("agent configuration errors name file:line:column", "[agent][config]") {
  struct Case {
    std::string text;
    std::string expected;  // a substring of the diagnostics
  };
  const std::string f = "/etc/liaison/agent.yaml";
  const std::vector<Case> cases = {
      {kBase + "colour: blue\n", f + ":8:1: error: unknown key 'colour'"},
      {"broker: nohost\n" + kBase.substr(kBase.find('\n') + 1), f + ":1:9: error: 'broker' must be HOST:PORT"},
      {kBase.substr(0, kBase.find("inbox:")) + "state_dir: /x\n", "missing required key 'inbox'"},
      {kBase + "credit: lots\n", f + ":8:9: error: 'credit' must be a whole number"},
      {kBase + "credit: 0\n", f + ":8:9: error: 'credit' must be between 1 and 65536"},
      {kBase + "want_reports: maybe\n", f + ":8:15: error: 'want_reports' must be true or false"},
      {kBase + "log_level: loud\n", f + ":8:12: error: 'log_level' must be trace"},
      {kBase + "witness_max_unproven_s: -1\n", f + ":8:25: error: 'witness_max_unproven_s' must be between 0 and"},
      {kBase + "sent: spool/outbox\n", f + ":8:7: error: 'sent' is the same directory as 'outbox'"},
      {kBase + "recalled: /var/lib/agent\n", "'state_dir' is the same directory as 'recalled'"},
      {kBase + "reconnect:\n  initial_delay_ms: 1000\n  max_delay_ms: 100\n",
       f + ":10:17: error: 'max_delay_ms' must not be smaller than 'initial_delay_ms'"},
      {kBase + "reconnect:\n  every: 5\n", f + ":9:3: error: unknown key 'every'"},
      {kBase + "hook:\n  max_attempts: 3\n", f + ":9:3: error: missing required key 'command'"},
      {kBase + "hook:\n  command: []\n", "'command' must name a program"},
      {kBase + "hook:\n  command: /bin/true\n  max_attempts: 0\n", f + ":10:17: error: 'max_attempts' must be between"},
      {kBase + "hook:\n  command: /bin/true\n  shell: yes\n", f + ":10:3: error: unknown key 'shell'"},
      {"- a\n- b\n", "the agent configuration must be a map"},
      {"", "the file is empty"},
  };
  for (const auto& c : cases) {
    Diagnostics diags;
    auto cfg = AgentConfig::LoadText(c.text, f, &diags);
    INFO(c.text);
    INFO(Errors(diags));
    CHECK_FALSE(cfg);
    CHECK(Errors(diags).find(c.expected) != std::string::npos);
  }
}

TEST_CASE("a directory written with a trailing slash is the same directory as without it", "[agent][config]") {
  // "sent: spool/outbox/" passed as a directory of its own: with the
  // directories not yet made (the first start), nothing else noticed, and
  // every file "moved to sent/" stayed in the outbox, to be sent again and
  // again as a new message.
  const std::string f = "/etc/liaison/agent.yaml";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"sent: spool/outbox/\n", f + ":8:7: error: 'sent' is the same directory as 'outbox'"},
      {"failed: spool/outbox/.\n", f + ":8:9: error: 'failed' is the same directory as 'outbox'"},
      {"sent: spool//outbox//\n", f + ":8:7: error: 'sent' is the same directory as 'outbox'"},
      {"recalled: /var/lib/agent/\n", "'state_dir' is the same directory as 'recalled'"},
  };
  for (const auto& [extra, expected] : cases) {
    Diagnostics diags;
    auto cfg = AgentConfig::LoadText(kBase + extra, f, &diags);
    INFO(extra);
    INFO(Errors(diags));
    CHECK_FALSE(cfg);
    CHECK(Errors(diags).find(expected) != std::string::npos);
  }
  // "/" is left as it is.
  Diagnostics diags;
  CHECK(AgentConfig::LoadText(kBase + "recalled: /\n", f, &diags));
}

TEST_CASE("every error of an agent configuration is reported in one run", "[agent][config]") {
  Diagnostics diags;
  auto c = AgentConfig::LoadText("broker: x\ncredit: -1\nlog_level: loud\nfoo: 1\n", "a.yaml", &diags);
  CHECK_FALSE(c);
  const std::string all = Errors(diags);
  INFO(all);
  for (const char* e : {"a.yaml:1:9:", "a.yaml:2:9:", "a.yaml:3:12:", "a.yaml:4:1:", "missing required key 'outbox'",
                        "missing required key 'certificate'"}) {
    CHECK(all.find(e) != std::string::npos);
  }
}

TEST_CASE("the example agent configuration loads", "[agent][config]") {
  Diagnostics diags;
  auto c = AgentConfig::Load(LIAISON_SOURCE_DIR "/docs/examples/agent-police.yaml", &diags);
  INFO(Errors(diags));
  REQUIRE(c);
  CHECK(c->connection.port == 7443);
  CHECK(c->want_reports);
  CHECK(c->sent.find("build/agent-police/sent") != std::string::npos);
}
