// liaison-agent: the agency daemon. See docs/agent.md.
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <thread>

#include "client/agent/agent.h"
#include "common/logging.h"

namespace {

// Exit codes (docs/agent.md).
enum ExitCode : int {
  kExitOk = 0,
  kExitConfig = 1,      // the configuration (or a file it names) is invalid
  kExitUsage = 2,       // bad command line
  kExitUnfinished = 3,  // --once: broker unreachable, or work left when --timeout ran out
  kExitLocal = 4,       // local failure: state directory locked or unusable, disk, database
  kExitAuditAlarm = 6,  // the broker's audit checkpoint contradicted the witness file
};

std::string Json(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

int ReportDiagnostics(const liaison::Diagnostics& diags, const std::string& path, bool json, bool ok) {
  if (json) {
    std::string out = "{\"config\":" + Json(path) + ",\"ok\":" + (ok ? "true" : "false") + ",\"diagnostics\":[";
    for (size_t i = 0; i < diags.size(); ++i) {
      const auto& d = diags[i];
      out += (i ? "," : "") + std::string("{\"file\":") + Json(d.file) + ",\"line\":" + std::to_string(d.line) +
             ",\"column\":" + std::to_string(d.column) +
             ",\"severity\":" + (d.severity == liaison::Diagnostic::Severity::kError ? "\"error\"" : "\"warning\"") +
             ",\"message\":" + Json(d.message) + "}";
    }
    std::printf("%s]}\n", out.c_str());
  } else {
    std::fputs(liaison::FormatDiagnostics(diags).c_str(), stderr);
    if (ok) {
      std::printf("%s: configuration OK\n", path.c_str());
    } else {
      size_t errors = 0;
      for (const auto& d : diags) errors += d.severity == liaison::Diagnostic::Severity::kError;
      std::fprintf(stderr, "%s: %zu error(s)\n", path.c_str(), errors);
    }
  }
  return ok ? kExitOk : kExitConfig;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace liaison;
  CLI::App app{
      "liaison-agent: the agency daemon of a Liaison network. Sends the message files dropped into the "
      "outbox, writes received messages into the inbox, files recall notices and delivery reports "
      "(docs/agent.md)"};
  std::string config_path, log_level;
  bool check_only = false, json = false, once = false;
  int idle_ms = 1000, timeout_s = 120;
  app.add_option("--config,-c", config_path, "agent configuration file (YAML)")->required();
  app.add_flag("--check-config", check_only,
               "validate the configuration and the files and directories it names, report every problem, and exit");
  app.add_flag("--once", once,
               "send what is in the outbox, receive what is waiting, run due hooks, then exit (for cron and tests)");
  app.add_option("--idle", idle_ms, "with --once: exit after this many milliseconds without a delivery")
      ->check(CLI::Range(100, 3'600'000))
      ->capture_default_str();
  app.add_option("--timeout", timeout_s, "with --once: give up after this many seconds (exit 3)")
      ->check(CLI::Range(1, 86'400))
      ->capture_default_str();
  app.add_flag("--json", json, "machine-readable output: --check-config diagnostics, the --once summary");
  app.add_option("--log-level", log_level, "override log_level: trace, debug, info, warn, error, off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  app.set_version_flag("--version", "liaison-agent 0.1.0");
  app.footer(
      "Exit codes: 0 stopped by SIGTERM/SIGINT, or --once finished; 1 invalid configuration; 2 bad command line; "
      "3 --once: broker unreachable or work left at --timeout; 4 local failure (state directory locked by another "
      "agent, disk, database); 6 audit alarm (the broker's checkpoint contradicts the witness).");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }

  Diagnostics diags;
  auto config = agent::AgentConfig::Load(config_path, &diags);
  if (config) agent::CheckAgentFiles(*config, &diags);
  const bool config_ok = config && !HasErrors(diags);
  if (check_only) return ReportDiagnostics(diags, config_path, json, config_ok);
  if (!config_ok) {
    std::fputs(FormatDiagnostics(diags).c_str(), stderr);
    return kExitConfig;
  }
  if (Status s = SetupLogging(log_level.empty() ? config->log_level : log_level, "liaison-agent"); !s.ok()) {
    std::fprintf(stderr, "liaison-agent: %s\n", s.message().c_str());
    return kExitUsage;
  }
  for (const auto& d : diags) spdlog::warn("{}", d.ToString());

  // SIGTERM and SIGINT are taken by one thread (blocked everywhere else,
  // including the client library's threads, which inherit the mask).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  auto agent = agent::Agent::Open(std::move(*config));
  if (!agent.ok()) {
    spdlog::critical("cannot start: {}", agent.status().message());
    return kExitLocal;
  }
  agent::Agent* a = agent->get();
  // Joined before the agent goes (a signal during teardown must not reach
  // an agent already destroyed): main wakes it with a signal of its own.
  std::atomic<bool> exiting{false};
  std::thread signal_thread([stop_signals, a, &exiting] {
    int sig = 0;
    if (sigwait(&stop_signals, &sig) == 0 && !exiting.load()) {
      spdlog::info("{}: finishing the current step, then stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      a->Stop();
    }
  });
  struct JoinSignalThread {
    std::thread& t;
    std::atomic<bool>& exiting;
    ~JoinSignalThread() {
      exiting.store(true);
      pthread_kill(t.native_handle(), SIGTERM);  // harmless if it took a signal and ended
      t.join();
    }
  } join_signal_thread{signal_thread, exiting};

  spdlog::info("started (config {}){}", config_path, once ? ", --once" : "");
  agent::Agent::RunOptions ro;
  ro.once = once;
  ro.idle = std::chrono::milliseconds(idle_ms);
  ro.timeout = std::chrono::seconds(timeout_s);
  const Status s = a->Run(ro);
  const agent::AgentStats st = a->stats();
  spdlog::info(
      "stopped: {} sent, {} failed, {} received, {} duplicate(s) dropped, {} recall(s), {} report(s), "
      "{} quarantined, {} outbox file(s) still to send",
      st.sent, st.failed, st.received, st.duplicates, st.recalls, st.reports, st.quarantined, st.pending);
  int rc = kExitOk;
  if (!s.ok()) {
    spdlog::error("{}", s.message());
    rc = s.IsCorruption() ? kExitAuditAlarm : s.IsUnavailable() ? kExitUnfinished : kExitLocal;
  }
  if (json && once) {
    std::printf(
        "{\"ok\":%s,\"sent\":%lld,\"failed\":%lld,\"received\":%lld,\"duplicates\":%lld,\"recalls\":%lld,"
        "\"reports\":%lld,\"quarantined\":%lld,\"pending\":%lld,\"error\":%s}\n",
        s.ok() ? "true" : "false", static_cast<long long>(st.sent), static_cast<long long>(st.failed),
        static_cast<long long>(st.received), static_cast<long long>(st.duplicates), static_cast<long long>(st.recalls),
        static_cast<long long>(st.reports), static_cast<long long>(st.quarantined), static_cast<long long>(st.pending),
        Json(s.ok() ? "" : s.message()).c_str());
    std::fflush(stdout);
  }
  agent->reset();
  return rc;
}
