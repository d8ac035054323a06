// Helpers for the liaison-agent tests: the real agent binary as a child
// process, its configuration in a test directory, and reading the
// directories it writes. Not thread-safe.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/files.h"
#include "tests/integration/process_support.h"
#include "tests/integration/test_support.h"

extern char** environ;

namespace liaison::test {

inline bool FileExists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

// The names in dir (not recursive), sorted; hidden names only with hidden.
inline std::vector<std::string> Names(const std::string& dir, bool hidden = false) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (!hidden && n[0] == '.') continue;
    out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Names in dir ending in suffix.
inline std::vector<std::string> NamesEnding(const std::string& dir, const std::string& suffix) {
  std::vector<std::string> out;
  for (const auto& n : Names(dir)) {
    if (n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0) {
      out.push_back(n);
    }
  }
  return out;
}

// The string value of "key" in a JSON text (first occurrence, any
// whitespace around the colon), or "".
inline std::string JsonField(const std::string& json, const std::string& key) {
  const std::string pat = "\"" + key + "\"";
  auto at = json.find(pat);
  if (at == std::string::npos) return "";
  at = json.find_first_not_of(" \t\n", at + pat.size());
  if (at == std::string::npos || json[at] != ':') return "";
  at = json.find_first_not_of(" \t\n", at + 1);
  if (at == std::string::npos || json[at] != '"') return "";
  const auto end = json.find('"', at + 1);
  return json.substr(at + 1, end - at - 1);
}

// The agent as a child process; its stderr is appended, so restarts keep
// the earlier logs.
struct ChildProcess : Process {
  ChildProcess(const std::vector<std::string>& argv, const std::string& dir, const std::string& name)
      : Process(argv, dir, name, "/dev/null", /*append_err=*/true) {}
};

// An agency's agent in dir/<agency>/: config file agent.yaml and the
// directories outbox, sent, failed, inbox, recalled, state beside it.
struct AgentDirs {
  AgentDirs(const std::string& parent, const std::string& agency) : root(parent + "/" + agency) {
    std::filesystem::create_directories(root);
  }
  std::string root;
  std::string config() const { return root + "/agent.yaml"; }
  std::string outbox() const { return root + "/outbox"; }
  std::string sent() const { return root + "/sent"; }
  std::string failed() const { return root + "/failed"; }
  std::string inbox() const { return root + "/inbox"; }
  std::string recalled() const { return root + "/recalled"; }
  std::string state() const { return root + "/state"; }

  // Writes agent.yaml for agency and the broker on port; extra is appended.
  void WriteConfig(const std::string& agency, uint16_t port, const std::string& extra = "") const {
    const std::string& pki = PkiDir();
    const std::string text = "broker: 127.0.0.1:" + std::to_string(port) +
                             "\nserver_name: localhost\n"
                             "certificate: " +
                             pki + "/" + agency +
                             ".crt\n"
                             "private_key: " +
                             pki + "/" + agency +
                             ".key\n"
                             "ca_bundle: " +
                             pki +
                             "/ca.crt\n"
                             "outbox: outbox\ninbox: inbox\nstate_dir: state\n"
                             "poll_interval_ms: 50\n"
                             "reconnect:\n  initial_delay_ms: 50\n  max_delay_ms: 400\n" +
                             extra;
    if (!WriteFileAtomic(config(), text).ok()) throw std::runtime_error("cannot write " + config());
    std::filesystem::create_directories(outbox());
  }
  // Writes hook.sh (executable) beside the config, with body after the
  // "#!/bin/sh" line; the config names it as "command: [hook.sh]".
  void WriteHook(const std::string& body) const {
    if (!WriteFileAtomic(root + "/hook.sh", "#!/bin/sh\n" + body, 0755).ok()) {
      throw std::runtime_error("cannot write " + root + "/hook.sh");
    }
  }
  // Drops a message file into the outbox the way writers should: a hidden
  // temp name, then a rename.
  void Drop(const std::string& name, const std::string& content) const {
    const std::string tmp = outbox() + "/." + name + ".part";
    std::ofstream(tmp, std::ios::binary) << content;
    std::filesystem::rename(tmp, outbox() + "/" + name);
  }
};

inline std::vector<std::string> AgentArgs(const AgentDirs& d, std::vector<std::string> extra = {}) {
  std::vector<std::string> argv = {LIAISON_AGENT_BIN, "--config", d.config()};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

// A message file in JSON for the given recipients (JSON list text, e.g.
// "[\"school\"]"); id empty: none (the agent assigns one).
inline std::string MessageJson(const std::string& recipients, const std::string& description,
                               const std::string& id = "") {
  return std::string("{\n  \"envelope\": {") + (id.empty() ? "" : "\"messageId\": \"" + id + "\", ") +
         "\"recipients\": " + recipients +
         ", \"tlp\": \"TLP_AMBER\", \"purpose\": \"safeguarding\", \"caseId\": \"CASE-7\"},\n"
         "  \"incidentReport\": {\"incidentType\": \"INCIDENT_HATE_SPEECH\", \"biasMotivations\": [\"BIAS_ANTI_ROMA\"],"
         " \"description\": \"" +
         description + "\", \"severity\": \"SEVERITY_MEDIUM\"}\n}\n";
}

}  // namespace liaison::test
