// liaison-broker: the broker process. See docs/broker.md.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "broker/server.h"
#include "common/logging.h"

namespace {

// The broker's answer to "queues" (a JSON object) as a table.
int PrintQueues(const std::string& json) {
  using google::protobuf::Struct;
  using google::protobuf::Value;
  Struct root;
  if (!google::protobuf::util::JsonStringToMessage(json, &root).ok() || !root.fields().contains("agencies")) {
    std::fprintf(stderr, "liaison-broker: cannot read the broker's answer: %s\n", json.c_str());
    return 1;
  }
  auto field = [](const Struct& o, const char* key) {
    auto it = o.fields().find(key);
    return it == o.fields().end() ? Value() : it->second;
  };
  auto count = [&](const Struct& o, const char* key) {
    return static_cast<long long>(field(o, key).number_value());
  };
  // A duration for people; "-" for null.
  auto age = [&](const Struct& o, const char* key) {
    const Value v = field(o, key);
    if (v.kind_case() != Value::kNumberValue) return std::string("-");
    return liaison::broker::HumanDuration(static_cast<int64_t>(v.number_value()));
  };
  struct Row {
    std::string agency, receiving, oldest, expires;
    long long messages, redelivered, notices;
  };
  std::vector<Row> rows;
  size_t width = std::strlen("AGENCY");
  for (const Value& a : root.fields().at("agencies").list_value().values()) {
    const Struct& o = a.struct_value();
    Row r;
    r.agency = field(o, "agency").string_value();
    if (const Value p = field(o, "in_policy"); p.kind_case() == Value::kBoolValue && !p.bool_value()) {
      r.agency += " (not in policy)";
    }
    // "yes, 2h 5m": connected that long; "no, 3d 4h": gone that long; a
    // bare "no": not since the broker started.
    r.receiving = field(o, "receiving").bool_value() ? "yes" : "no";
    if (const std::string since = age(o, "since_s"); since != "-") r.receiving += ", " + since;
    r.oldest = age(o, "oldest_age_s");
    r.expires = age(o, "next_expiry_in_s");
    r.messages = count(o, "messages");
    r.redelivered = count(o, "redelivered");
    r.notices = count(o, "notices");
    width = std::max(width, r.agency.size());
    rows.push_back(std::move(r));
  }
  const int w = static_cast<int>(width);
  std::printf("%-*s  %-14s  %8s  %11s  %7s  %-14s  %s\n", w, "AGENCY", "RECEIVING", "MESSAGES", "REDELIVERED", "NOTICES",
              "OLDEST WAITING", "FIRST EXPIRES IN");
  for (const Row& r : rows) {
    std::printf("%-*s  %-14s  %8lld  %11lld  %7lld  %-14s  %s\n", w, r.agency.c_str(), r.receiving.c_str(), r.messages,
                r.redelivered, r.notices, r.oldest.c_str(), r.expires.c_str());
  }
  std::printf("%lld waiting in all\n", count(root, "waiting"));
  return 0;
}

// Sends one command to a running broker's admin socket and prints its
// answer: as it comes, or with json only its JSON object, or for "queues"
// (without json) as a table.
int AdminCommand(const std::string& socket_path, const std::string& command, bool json) {
  if (socket_path.empty()) {
    std::fprintf(stderr, "liaison-broker: the configuration sets no admin_socket\n");
    return 2;
  }
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket_path.c_str());
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::fprintf(stderr, "liaison-broker: cannot reach the broker at %s: %s\n", socket_path.c_str(),
                 std::strerror(errno));
    if (fd >= 0) ::close(fd);
    return 3;
  }
  const std::string line = command + "\n";
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    ::close(fd);
    return 3;
  }
  std::string answer;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) answer.append(buf, static_cast<size_t>(n));
  ::close(fd);
  const bool ok = answer.rfind("ok", 0) == 0;
  const bool object = answer.rfind("ok {", 0) == 0;
  if (object && (json || command == "queues")) {
    std::string body = answer.substr(3);
    while (!body.empty() && body.back() == '\n') body.pop_back();
    if (json) {
      std::printf("%s\n", body.c_str());
      return 0;
    }
    return PrintQueues(body);
  }
  std::fputs(answer.c_str(), stdout);
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace liaison;
  CLI::App app{"liaison-broker: the Liaison secure information-sharing broker (mutual TLS 1.3)"};
  std::string config_path;
  bool check_only = false;
  std::string log_level;
  app.add_option("--config,-c", config_path, "broker configuration file (YAML)")->required();
  app.add_flag("--check-config", check_only,
               "validate the configuration, the policy and the TLS files, report every problem, and exit");
  app.add_option("--log-level", log_level, "override log_level: trace, debug, info, warn, error, off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  std::string admin;
  bool json = false;
  app.add_option("--admin", admin,
                 "send a command to the running broker through its admin_socket and exit: reload (policy, CA "
                 "bundle, CRLs, certificate), status (counters), queues (what waits for each agency, and whether its "
                 "receiving program is connected), 'rotate-key AGREEMENT' (a new pseudonym key version), or prune-audit "
                 "(prune audit records older than audit.retention_days now)")
      ->check([](const std::string& v) {
        if (v == "reload" || v == "status" || v == "queues" || v == "prune-audit") return std::string();
        if (v.rfind("rotate-key ", 0) == 0 && v.size() > 11) return std::string();
        return std::string("expected reload, status, queues, 'rotate-key AGREEMENT' or prune-audit");
      });
  app.add_flag("--json", json,
               "with --admin status or queues: print the broker's answer as one JSON object (for scripts); "
               "queues is otherwise a table");
  app.set_version_flag("--version", "liaison-broker 0.1.0");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  Diagnostics diags;
  auto config = broker::BrokerConfig::Load(config_path, &diags);
  if (!admin.empty()) {
    if (!config) {
      std::fputs(FormatDiagnostics(diags).c_str(), stderr);
      return 1;
    }
    return AdminCommand(config->admin_socket, admin, json);
  }
  if (config) broker::CheckConfigFiles(*config, &diags);
  if (check_only) {
    std::fputs(FormatDiagnostics(diags).c_str(), stderr);
    if (!config || HasErrors(diags)) {
      size_t errors = 0;
      for (const auto& d : diags) errors += d.severity == Diagnostic::Severity::kError;
      std::fprintf(stderr, "%s: %zu error(s)\n", config_path.c_str(), errors);
      return 1;
    }
    std::printf("%s: configuration OK\n", config_path.c_str());
    return 0;
  }
  if (!config || HasErrors(diags)) {
    std::fputs(FormatDiagnostics(diags).c_str(), stderr);
    return 1;
  }
  if (Status s = SetupLogging(log_level.empty() ? config->log_level : log_level, "liaison-broker"); !s.ok()) {
    std::fprintf(stderr, "liaison-broker: %s\n", s.message().c_str());
    return 2;
  }
  for (const auto& d : diags) spdlog::warn("{}", d.ToString());
  auto server = broker::Server::Create(std::move(*config));
  if (!server.ok()) {
    spdlog::critical("cannot start: {}", server.status().message());
    return 1;
  }
  Status s = (*server)->Run(/*handle_signals=*/true);
  if (!s.ok()) {
    spdlog::critical("{}", s.ToString());
    return 1;
  }
  return 0;
}
