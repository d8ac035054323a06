// The agency daemon's configuration file (YAML, docs/agent.md): how to
// reach the broker (the same keys as the client configuration, docs/cli.md),
// the agency's directories, the optional hook, and timings. Load validates
// everything and reports every problem with file:line:column; a loaded
// AgentConfig is a plain value. Stateless; thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "client/client.h"
#include "common/diagnostic.h"

namespace liaison::agent {

using Millis = std::chrono::milliseconds;

// A program run for each message written to the inbox (no shell).
struct HookConfig {
  // argv; the message file's path is appended as the last argument.
  std::vector<std::string> command;
  int max_attempts = 5;           // runs in all, the first included
  Millis initial_backoff{1'000};  // before the second run; doubles each time
  Millis max_backoff{300'000};
  Millis timeout{60'000};  // a run taking longer is killed and counts as failed
};

struct AgentConfig {
  std::string path;  // the file it was loaded from

  // Broker address, server name and TLS files (receive, take_over, credit
  // and want_reports are set by the agent).
  client::ClientOptions connection;

  // Directories; sent and failed must be on the outbox's file system,
  // recalled on the inbox's (files are renamed between them).
  std::string outbox, sent, failed;
  std::string inbox, recalled;
  std::string state_dir;  // state.db (SQLite), the lock file, the witness checkpoint

  std::optional<HookConfig> hook;

  uint32_t credit = 0;          // 0: the broker's default
  bool want_reports = true;     // ask for delivery reports on every message sent
  uint32_t max_in_flight = 64;  // publishes waiting for their PublishAck
  Millis poll_interval{500};    // outbox scan
  Millis reconnect_initial{500};
  Millis reconnect_max{30'000};
  std::string log_level = "info";

  static std::optional<AgentConfig> Load(const std::string& path, Diagnostics* diags);
  // The same for text already read; path names it and anchors relative paths.
  static std::optional<AgentConfig> LoadText(const std::string& text, const std::string& path, Diagnostics* diags);
};

// The inbox's staging directory, inbox/<this>: received messages are
// written there, then renamed into the inbox; emptied at every start.
inline constexpr const char* kInboxStagingName = ".liaison-incoming";

// Checks what Load cannot see in the text: TLS files readable (the private
// key 0600), the hook command executable, directories existing or
// creatable, on the right file systems, and not one directory under two
// paths (symbolic links, bind mounts). Appends problems to diags.
void CheckAgentFiles(const AgentConfig& config, Diagnostics* diags);

}  // namespace liaison::agent
