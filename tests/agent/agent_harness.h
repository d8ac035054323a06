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

// A child process: argv[0] is the program; stdout and stderr go to files
// in dir (appended, so restarts keep the earlier logs).
class ChildProcess {
 public:
  ChildProcess(const std::vector<std::string>& argv, const std::string& dir, const std::string& name)
      : out_(dir + "/" + name + ".out"), err_(dir + "/" + name + ".err") {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, err_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  ~ChildProcess() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  bool started() const { return pid_ > 0; }
  // Exit code, 128+signal when killed, -1 on timeout.
  int Wait(std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return -1;
  }
  void Signal(int sig) { ::kill(pid_, sig); }
  // SIGKILL and reap.
  void Kill() {
    Signal(SIGKILL);
    Wait();
  }
  std::string out() const { return Slurp(out_); }
  std::string err() const { return Slurp(err_); }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  std::string out_, err_;
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
