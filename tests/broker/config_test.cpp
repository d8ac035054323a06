// Unit tests for broker/config.h: BrokerConfig::Load on YAML written to a
// temporary directory. Table-driven: text in, expected diagnostic
// (line, column, message) out, as in nats-server's config tests.
#include "broker/config.h"

#include <algorithm>
#include <catch2/catch.hpp>

#include "tests/temp_dir.h"
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

using liaison::Diagnostic;
using liaison::Diagnostics;
using liaison::broker::BrokerConfig;

using liaison::test::TempDir;

// The smallest valid configuration: lines 1-6.
const std::string kMinimal =
    "listen: 127.0.0.1:7443\n"  // 1
    "policy: policy.yaml\n"     // 2
    "tls:\n"                    // 3
    "  certificate: broker.crt\n"
    "  private_key: broker.key\n"
    "  ca_bundle: ca.crt\n";  // 6

std::string Errors(const Diagnostics& d) {
  return liaison::FormatDiagnostics(d);
}

int CountErrors(const Diagnostics& d) {
  int n = 0;
  for (const auto& x : d) n += x.severity == Diagnostic::Severity::kError;
  return n;
}

}  // namespace

TEST_CASE("BrokerConfig::Load reports each error with its position", "[broker][config]") {
  struct Case {
    const char* name;
    std::string yaml;
    int line;
    int column;  // 0: not checked
    std::string message;
  };
  const std::vector<Case> cases = {
      {"unknown top-level key", kMinimal + "bogus: 1\n", 7, 1,
       "unknown key 'bogus' in the broker configuration (expected one of: name, listen,"},
      {"misspelt top-level key", "lissen: 127.0.0.1:1\n" + kMinimal, 1, 1, "unknown key 'lissen'"},
      {"unknown key under limits", kMinimal + "limits:\n  max_frame_bytes: 2048\n  max_framebytes: 3\n", 9, 3,
       "unknown key 'max_framebytes' in 'limits'"},
      {"unknown key under tls", kMinimal + "  key_password: x\n", 7, 3, "unknown key 'key_password' in 'tls'"},
      {"listen without a port", "listen: localhost\n" + kMinimal.substr(kMinimal.find('\n') + 1), 1, 9,
       "'listen' must be HOST:PORT, e.g. 127.0.0.1:7443 or [::1]:7443, not 'localhost'"},
      {"listen port 70000", "listen: 127.0.0.1:70000\n" + kMinimal.substr(kMinimal.find('\n') + 1), 1, 9,
       "'listen' must be HOST:PORT"},
      {"listen port not a number", "listen: 127.0.0.1:https\n" + kMinimal.substr(kMinimal.find('\n') + 1), 1, 9,
       "'listen' must be HOST:PORT"},
      {"listen without a host", "listen: ':7443'\n" + kMinimal.substr(kMinimal.find('\n') + 1), 1, 9,
       "'listen' must be HOST:PORT"},
      {"listen with an empty port", "listen: '127.0.0.1:'\n" + kMinimal.substr(kMinimal.find('\n') + 1), 1, 9,
       "'listen' must be HOST:PORT"},
      {"listen IPv6 without brackets", "listen: '::1:7443'\n" + kMinimal.substr(kMinimal.find('\n') + 1), 1, 9,
       "'listen' must be HOST:PORT"},
      {"listen IPv6 bracket not closed", "listen: '[::1:7443'\n" + kMinimal.substr(kMinimal.find('\n') + 1), 1, 9,
       "'listen' must be HOST:PORT"},
      {"listen negative port", "listen: 127.0.0.1:-1\n" + kMinimal.substr(kMinimal.find('\n') + 1), 1, 9,
       "'listen' must be HOST:PORT"},
      {"listen as a list", "listen: [a, b]\n" + kMinimal.substr(kMinimal.find('\n') + 1), 1, 9,
       "'listen' must be a single value"},
      {"missing listen", kMinimal.substr(kMinimal.find('\n') + 1), 1, 1, "missing required key 'listen'"},
      {"threads two", kMinimal + "threads: two\n", 7, 10, "'threads' must be a whole number, not 'two'"},
      {"threads 65", kMinimal + "threads: 65\n", 7, 10, "'threads' must be between 0 and 64, not 65"},
      {"threads -1", kMinimal + "threads: -1\n", 7, 10, "'threads' must be between 0 and 64, not -1"},
      {"threads 2.5", kMinimal + "threads: 2.5\n", 7, 10, "'threads' must be a whole number"},
      {"log_level loud", kMinimal + "log_level: loud\n", 7, 12,
       "'log_level' must be one of trace, debug, info, warn, error, off"},
      {"log_level in capitals", kMinimal + "log_level: INFO\n", 7, 12, "'log_level' must be one of"},
      {"missing tls", "listen: 127.0.0.1:7443\npolicy: policy.yaml\n", 1, 1, "missing required key 'tls'"},
      {"tls not a map", "listen: 127.0.0.1:7443\npolicy: policy.yaml\ntls: yes\n", 3, 6, "'tls' must be a map"},
      {"tls without ca_bundle", "listen: 127.0.0.1:7443\npolicy: p.yaml\ntls:\n  certificate: c\n  private_key: k\n", 4,
       3, "missing required key 'ca_bundle'"},
      {"tls with an empty private_key",
       "listen: 127.0.0.1:7443\npolicy: p.yaml\ntls:\n  certificate: c\n  private_key: ''\n  ca_bundle: a\n", 5, 16,
       "'private_key' must not be empty"},
      {"crl list with a map in it", kMinimal + "  crl: [a.crl, {b: c}]\n", 7, 16,
       "each entry of 'crl' must be a single value"},
      {"missing policy", "listen: 127.0.0.1:7443\n" + kMinimal.substr(kMinimal.find("tls:")), 1, 1,
       "missing required key 'policy'"},
      {"limits not a map", kMinimal + "limits: 5\n", 7, 9, "'limits' must be a map"},
      {"max_frame_bytes too small", kMinimal + "limits:\n  max_frame_bytes: 10\n", 8, 20,
       "'max_frame_bytes' must be between 1024 and 67108864, not 10"},
      {"max_frame_bytes too large", kMinimal + "limits:\n  max_frame_bytes: 67108865\n", 8, 20,
       "'max_frame_bytes' must be between 1024 and 67108864"},
      {"max_recipients 0", kMinimal + "limits:\n  max_recipients: 0\n", 8, 19,
       "'max_recipients' must be between 1 and"},
      {"max_credit 0", kMinimal + "limits:\n  max_credit: 0\n", 8, 15, "'max_credit' must be between 1 and 65536"},
      {"idle timeout in words", kMinimal + "limits:\n  idle_timeout_ms: 90s\n", 8, 20,
       "'idle_timeout_ms' must be a whole number, not '90s'"},
      {"max_queued_bytes over 16 GiB", kMinimal + "limits:\n  max_queued_bytes: 17179869185\n", 8, 21,
       "'max_queued_bytes' must be between 65536 and 17179869184"},
      {"shutdown grace negative", kMinimal + "limits:\n  shutdown_grace_ms: -5\n", 8, 22,
       "'shutdown_grace_ms' must be between 0 and 600000"},
      {"default_credit > max_credit", kMinimal + "limits:\n  default_credit: 100\n  max_credit: 10\n", 8, 3,
       "'default_credit' must not exceed 'max_credit'"},
      {"default_credit > default max_credit", kMinimal + "limits:\n  default_credit: 2000\n", 8, 3,
       "'default_credit' must not exceed 'max_credit'"},
      {"ping_interval == idle_timeout", kMinimal + "limits:\n  idle_timeout_ms: 1000\n  ping_interval_ms: 1000\n", 8, 3,
       "'ping_interval_ms' must be shorter than 'idle_timeout_ms'"},
      {"ping_interval > idle_timeout", kMinimal + "limits:\n  ping_interval_ms: 100000\n", 8, 3,
       "'ping_interval_ms' must be shorter than 'idle_timeout_ms'"},
      {"max_queued_bytes below one frame",
       kMinimal + "limits:\n  max_frame_bytes: 1048576\n  max_queued_bytes: 1048579\n", 8, 3,
       "'max_queued_bytes' must hold at least one frame"},
      {"publish byte burst below one frame", kMinimal + "limits:\n  publish_bytes_burst_per_agency: 1048576\n", 8, 3,
       "'publish_bytes_burst_per_agency' must allow at least one frame of 'max_frame_bytes'"},
      {"audit not a map", kMinimal + "audit: 30\n", 7, 8, "'audit' must be a map"},
      {"unknown key under audit", kMinimal + "audit:\n  retention: 30\n", 8, 3, "unknown key 'retention' in 'audit'"},
      {"audit retention_days 0", kMinimal + "audit:\n  retention_days: 0\n", 8, 19,
       "'retention_days' must be between 1 and 36600, not 0"},
      {"audit retention_days in words", kMinimal + "audit:\n  retention_days: 1y\n", 8, 19,
       "'retention_days' must be a whole number"},
      {"YAML syntax error (bad indentation)", kMinimal + "threads: 1\n  log_level: info\n", 8, 0, "YAML syntax"},
      {"YAML syntax error (unclosed flow sequence)", kMinimal + "limits: [1, 2\nthreads: 1\n", 8, 0, "YAML syntax"},
      {"YAML syntax error (tab indentation)", kMinimal + "limits:\n\tmax_credit: 5\n", 8, 0, "YAML syntax"},
      {"empty file", "", 0, 0, "the file is empty"},
      {"only comments", "# nothing here\n\n", 0, 0, "the file is empty"},
      {"a list instead of a map", "- listen\n- policy\n", 1, 1, "the broker configuration must be a map"},
      {"a scalar instead of a map", "hello\n", 1, 1, "the broker configuration must be a map"},
  };
  TempDir dir;
  for (const auto& c : cases) {
    CAPTURE(c.name, c.yaml);
    const std::string path = dir.Write("broker.yaml", c.yaml);
    Diagnostics diags;
    auto config = BrokerConfig::Load(path, &diags);
    INFO("diagnostics:\n" << Errors(diags));
    CHECK_FALSE(config.has_value());
    REQUIRE(CountErrors(diags) == 1);
    const Diagnostic& d = diags.front();
    CHECK(d.severity == Diagnostic::Severity::kError);
    CHECK(d.file == path);
    CHECK(d.line == c.line);
    if (c.column != 0) CHECK(d.column == c.column);
    CHECK_THAT(d.message, Catch::Contains(c.message));
  }
}

TEST_CASE("BrokerConfig::Load reports every error of a file in one run", "[broker][config]") {
  TempDir dir;
  const std::string path = dir.Write("broker.yaml",
                                     "name: x\n"            // 1
                                     "listen: localhost\n"  // 2  bad listen
                                     "threads: two\n"       // 3  not a number
                                     "log_level: loud\n"    // 4  unknown level
                                     "colour: blue\n"       // 5  unknown key
                                     "tls:\n"               // 6
                                     "  certificate: c\n"   // 7
                                     "  private_key: k\n"   // 8  ca_bundle missing (at line 7)
                                     "limits:\n"            // 9
                                     "  max_credit: 0\n"    // 10 out of range
                                     "  retries: 3\n");     // 11 unknown key
  //                                 (policy missing: reported at line 1)
  Diagnostics diags;
  CHECK_FALSE(BrokerConfig::Load(path, &diags).has_value());
  INFO(Errors(diags));
  CHECK(CountErrors(diags) == 8);
  std::vector<int> lines;
  for (const auto& d : diags) lines.push_back(d.line);
  std::sort(lines.begin(), lines.end());
  CHECK(lines == std::vector<int>{1, 2, 3, 4, 5, 7, 10, 11});
  const std::string all = Errors(diags);
  for (const char* part :
       {":2:9: error: 'listen' must be HOST:PORT", ":3:10: error: 'threads' must be a whole number",
        ":4:12: error: 'log_level' must be one of", ":5:1: error: unknown key 'colour'",
        ":7:3: error: missing required key 'ca_bundle'", ":10:15: error: 'max_credit' must be between",
        ":11:3: error: unknown key 'retries'", ":1:1: error: missing required key 'policy'"}) {
    CHECK_THAT(all, Catch::Contains(part));
  }
}

TEST_CASE("BrokerConfig::Load reports a missing file", "[broker][config]") {
  TempDir dir;
  Diagnostics diags;
  const std::string path = dir.path() + "/nope.yaml";
  CHECK_FALSE(BrokerConfig::Load(path, &diags).has_value());
  REQUIRE(diags.size() == 1);
  CHECK(diags[0].line == 0);
  CHECK(diags[0].file == path);
  CHECK_THAT(diags[0].message, Catch::Contains("cannot open"));
}

TEST_CASE("BrokerConfig::Load refuses a file over 1 MiB before parsing it", "[broker][config]") {
  TempDir dir;
  const std::string padding = "# " + std::string(1024 * 1024, '.') + "\n";
  const std::string path = dir.Write("broker.yaml", kMinimal + padding);
  Diagnostics diags;
  CHECK_FALSE(BrokerConfig::Load(path, &diags).has_value());
  REQUIRE(diags.size() == 1);
  CHECK(diags[0].line == 0);
  CHECK_THAT(diags[0].message, Catch::Contains("is larger than 1048576 bytes"));
  // Just under the limit, the same configuration loads.
  const std::string fits = kMinimal + "# " + std::string(1024 * 1024 - kMinimal.size() - 3, '.') + "\n";
  REQUIRE(fits.size() == 1024 * 1024);
  Diagnostics ok;
  CHECK(BrokerConfig::Load(dir.Write("fits.yaml", fits), &ok).has_value());
  CHECK(ok.empty());
}

TEST_CASE("BrokerConfig::Load resolves relative paths and applies defaults", "[broker][config]") {
  TempDir dir;
  const std::string path = dir.Write("etc/broker.yaml",
                                     "listen: '[::1]:0'\n"
                                     "policy: policy.yaml\n"
                                     "tls:\n"
                                     "  certificate: pki/broker.crt\n"
                                     "  private_key: ../secret/broker.key\n"
                                     "  ca_bundle: /srv/pki/ca.crt\n"
                                     "  crl: pki/ca.crl\n");
  Diagnostics diags;
  auto c = BrokerConfig::Load(path, &diags);
  INFO(Errors(diags));
  REQUIRE(c.has_value());
  CHECK(diags.empty());
  const std::string etc = dir.path() + "/etc";
  CHECK(c->path == path);
  CHECK(c->listen_host == "::1");
  CHECK(c->listen_port == 0);
  CHECK(c->policy_path == etc + "/policy.yaml");
  CHECK(c->tls.certificate == etc + "/pki/broker.crt");
  CHECK(c->tls.private_key == dir.path() + "/secret/broker.key");
  CHECK(c->tls.ca_bundle == "/srv/pki/ca.crt");
  CHECK(c->tls.crls == std::vector<std::string>{etc + "/pki/ca.crl"});
  // Defaults.
  const liaison::broker::Limits d;
  CHECK(c->name == "liaison");
  CHECK(c->threads == 0);
  CHECK(c->log_level == "info");
  CHECK(c->limits.max_frame_bytes == d.max_frame_bytes);
  CHECK(c->limits.max_recipients == d.max_recipients);
  CHECK(c->limits.default_credit == d.default_credit);
  CHECK(c->limits.max_credit == d.max_credit);
  CHECK(c->limits.max_backlog == d.max_backlog);
  CHECK(c->limits.max_in_flight_publishes == d.max_in_flight_publishes);
  CHECK(c->limits.max_queued_bytes == d.max_queued_bytes);
  CHECK(c->limits.max_connections == d.max_connections);
  CHECK(c->limits.handshake_timeout == d.handshake_timeout);
  CHECK(c->limits.idle_timeout == d.idle_timeout);
  CHECK(c->limits.ping_interval == d.ping_interval);
  CHECK(c->limits.write_timeout == d.write_timeout);
  CHECK(c->limits.delivery_timeout == d.delivery_timeout);
  CHECK(c->limits.shutdown_grace == d.shutdown_grace);
  CHECK(c->audit.retention_days == 0);  // keep every record for ever
  CHECK(d.max_frame_bytes == 4u * 1024 * 1024);  // the documented default
}

TEST_CASE("BrokerConfig::Load reads every setting", "[broker][config]") {
  TempDir dir;
  const std::string path = dir.Write("broker.yaml",
                                     "name: city-prevention-network\n"
                                     "listen: 0.0.0.0:8443\n"
                                     "threads: 4\n"
                                     "log_level: debug\n"
                                     "policy: /etc/liaison/policy.yaml\n"
                                     "tls:\n"
                                     "  certificate: b.crt\n"
                                     "  private_key: b.key\n"
                                     "  ca_bundle: ca.crt\n"
                                     "  crl: [one.crl, two.crl]\n"
                                     "limits:\n"
                                     "  max_frame_bytes: 1024\n"
                                     "  max_recipients: 7\n"
                                     "  default_credit: 8\n"
                                     "  max_credit: 9\n"
                                     "  max_backlog: 10\n"
                                     "  max_in_flight_publishes: 11\n"
                                     "  max_queued_bytes: 65536\n"
                                     "  max_connections: 12\n"
                                     "  handshake_timeout_ms: 50\n"
                                     "  idle_timeout_ms: 100\n"
                                     "  ping_interval_ms: 99\n"
                                     "  write_timeout_ms: 51\n"
                                     "  delivery_timeout_ms: 52\n"
                                     "  shutdown_grace_ms: 0\n"
                                     "  max_retention_s: 13\n"
                                     "  max_handshakes_per_source: 14\n"
                                     "  handshake_rate_per_source: 0\n"
                                     "  handshake_burst_per_source: 19\n"
                                     "  max_connections_per_agency: 15\n"
                                     "  publish_rate_per_agency: 0\n"
                                     "  publish_burst_per_agency: 17\n"
                                     "  publish_bytes_per_agency: 0\n"
                                     "  publish_bytes_burst_per_agency: 2048\n"
                                     "  max_audit_requests_per_agency: 3\n"
                                     "  queue_report_interval_s: 600\n"
                                     "audit:\n"
                                     "  retention_days: 400\n");
  Diagnostics diags;
  auto c = BrokerConfig::Load(path, &diags);
  INFO(Errors(diags));
  REQUIRE(c.has_value());
  using std::chrono::milliseconds;
  CHECK(c->name == "city-prevention-network");
  CHECK(c->listen_host == "0.0.0.0");
  CHECK(c->listen_port == 8443);
  CHECK(c->threads == 4);
  CHECK(c->log_level == "debug");
  CHECK(c->policy_path == "/etc/liaison/policy.yaml");
  CHECK(c->tls.crls == std::vector<std::string>{dir.path() + "/one.crl", dir.path() + "/two.crl"});
  CHECK(c->limits.max_frame_bytes == 1024);
  CHECK(c->limits.max_recipients == 7);
  CHECK(c->limits.default_credit == 8);
  CHECK(c->limits.max_credit == 9);
  CHECK(c->limits.max_backlog == 10);
  CHECK(c->limits.max_in_flight_publishes == 11);
  CHECK(c->limits.max_queued_bytes == 65536);
  CHECK(c->limits.max_connections == 12);
  CHECK(c->limits.handshake_timeout == milliseconds(50));
  CHECK(c->limits.idle_timeout == milliseconds(100));
  CHECK(c->limits.ping_interval == milliseconds(99));
  CHECK(c->limits.write_timeout == milliseconds(51));
  CHECK(c->limits.delivery_timeout == milliseconds(52));
  CHECK(c->limits.shutdown_grace == milliseconds(0));
  CHECK(c->limits.max_retention == milliseconds(13'000));
  CHECK(c->limits.max_handshakes_per_source == 14);
  CHECK(c->limits.handshake_rate_per_source == 0);
  CHECK(c->limits.handshake_burst_per_source == 19);
  CHECK(c->limits.max_connections_per_agency == 15);
  CHECK(c->limits.publish_rate_per_agency == 0);
  CHECK(c->limits.publish_burst_per_agency == 17);
  CHECK(c->limits.publish_bytes_per_agency == 0);
  CHECK(c->limits.publish_bytes_burst_per_agency == 2048);
  CHECK(c->limits.max_audit_requests_per_agency == 3);
  CHECK(c->limits.queue_report_interval == milliseconds(600'000));
  CHECK(c->audit.retention_days == 400);
}

TEST_CASE("the example broker configuration loads", "[broker][config]") {
  // docs/examples/broker.yaml is what operators copy; it must stay valid.
  const std::string path = std::string(LIAISON_UNIT_SOURCE_DIR) + "/docs/examples/broker.yaml";
  Diagnostics diags;
  auto c = BrokerConfig::Load(path, &diags);
  INFO(Errors(diags));
  REQUIRE(c.has_value());
  CHECK(c->listen_port == 7443);
  CHECK(c->policy_path == std::string(LIAISON_UNIT_SOURCE_DIR) + "/docs/examples/policy.yaml");
}

// yaml-cpp keeps both entries of a repeated key and Node::operator[] returns
// the first, so a second "listen:" is silently ignored. A strict loader that
// "reports every problem" should refuse it.
// (A regression test: duplicate keys used to be accepted silently.)
TEST_CASE("BrokerConfig::Load refuses a duplicate key", "[broker][config]") {
  TempDir dir;
  const std::string path = dir.Write("broker.yaml", kMinimal + "listen: 0.0.0.0:9000\n");
  Diagnostics diags;
  auto c = BrokerConfig::Load(path, &diags);
  INFO(Errors(diags));
  CHECK_FALSE(c.has_value());
  REQUIRE(CountErrors(diags) == 1);
  CHECK(diags[0].line == 7);
  CHECK_THAT(diags[0].message, Catch::Contains("listen"));
}
