// liaison-broker: the broker process. See docs/broker.md.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>

#include "broker/server.h"
#include "common/logging.h"

int main(int argc, char** argv) {
  using namespace liaison;
  CLI::App app{"liaison-broker: the Liaison secure information-sharing broker (mutual TLS 1.3)"};
  std::string config_path;
  bool check_only = false;
  std::string log_level;
  app.add_option("--config,-c", config_path, "broker configuration file (YAML)")->required();
  app.add_flag("--check-config", check_only,
               "validate the configuration, the policy and the TLS files, report every problem, and exit");
  app.add_option("--log-level", log_level, "override log_level: trace, debug, info, warn, error, off");
  app.set_version_flag("--version", "liaison-broker 0.1.0");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  Diagnostics diags;
  auto config = broker::BrokerConfig::Load(config_path, &diags);
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
