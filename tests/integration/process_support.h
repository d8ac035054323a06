// Real processes for tests: a child with its output in files, and the
// real liaison-broker on a free port with a config and policy in a
// directory (restartable on the same files).
#pragma once

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "common/files.h"
#include "common/uuid.h"
#include "tests/integration/test_support.h"
#include "tests/temp_dir.h"

extern char** environ;

namespace liaison::test {

inline std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A child process with stdin from a file (or /dev/null) and stdout/stderr to files.
class Process {
 public:
  // append_err: stderr is appended to, so a restarted program keeps its
  // earlier log in the same file.
  Process(const std::vector<std::string>& argv, const std::string& dir, const std::string& name,
          const std::string& stdin_file = "/dev/null", bool append_err = false)
      : out_(dir + "/" + name + ".out"), err_(dir + "/" + name + ".err") {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, stdin_file.c_str(), O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, err_.c_str(), O_WRONLY | O_CREAT | (append_err ? O_APPEND : O_TRUNC),
                                     0644);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  bool started() const { return pid_ > 0; }
  // Exit code, or -1 on timeout, 128+signal when killed.
  int Wait(std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
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

inline int Run(const std::vector<std::string>& argv, const std::string& dir, std::string* out, std::string* err,
        const std::string& stdin_file = "/dev/null") {
  Process p(argv, dir, "run", stdin_file);
  const int rc = p.Wait();
  if (out) *out = p.out();
  if (err) *err = p.err();
  return rc;
}

// The real liaison-broker on a free port, with a config and policy in dir
// (extra_config: more top-level YAML for the config file).
class BrokerProcess {
 public:
  explicit BrokerProcess(const TempDir& dir, const std::string& policy = "", const std::string& extra_config = "") {
    const std::string& pki = PkiDir();
    REQUIRE(WriteFileAtomic(dir.File("policy.yaml"), policy.empty() ? PolicyYaml(DefaultAgencies()) : policy).ok());
    const std::string config = "name: process-test\nlisten: 127.0.0.1:0\nthreads: 2\npolicy: policy.yaml\n"
                               "admin_socket: admin.sock\n"
                               "tls:\n  certificate: " + pki + "/broker.crt\n  private_key: " + pki +
                               "/broker.key\n  ca_bundle: " + pki + "/ca.crt\n  crl: " + pki + "/ca.crl\n" +
                               extra_config;
    REQUIRE(WriteFileAtomic(dir.File("broker.yaml"), config).ok());
    proc_ = std::make_unique<Process>(std::vector<std::string>{LIAISON_BROKER_BIN, "--config", dir.File("broker.yaml")},
                                      dir.path(), "broker");
    const std::regex listening("listening on 127\\.0\\.0\\.1:([0-9]+)");
    const bool started = WaitFor([&] {
      std::smatch m;
      const std::string log = proc_->err();
      if (!std::regex_search(log, m, listening)) return false;
      port_ = static_cast<uint16_t>(std::stoi(m[1]));
      return true;
    });
    INFO(proc_->err());
    REQUIRE(started);
  }
  uint16_t port() const { return port_; }
  Process& process() { return *proc_; }
  std::vector<std::string> Cli(const std::string& agency, std::vector<std::string> rest) const {
    const std::string& pki = PkiDir();
    std::vector<std::string> argv = {LIAISON_CLI_BIN,
                                     "--broker", "127.0.0.1:" + std::to_string(port_),
                                     "--server-name", "localhost",
                                     "--cert", pki + "/" + agency + ".crt",
                                     "--key", pki + "/" + agency + ".key",
                                     "--ca", pki + "/ca.crt"};
    argv.insert(argv.end(), rest.begin(), rest.end());
    return argv;
  }

 private:
  std::unique_ptr<Process> proc_;
  uint16_t port_ = 0;
};

// A tmpfs of the given size mounted on dir/data (where BrokerProcess keeps
// its store), for the disk-full tests; unmounted when it goes. Empty (after
// a warning) where mounting is not allowed.
struct SmallDisk {
  std::string path;
  explicit SmallDisk(std::string p) : path(std::move(p)) {}
  SmallDisk(const SmallDisk&) = delete;
  SmallDisk& operator=(const SmallDisk&) = delete;
  ~SmallDisk() { ::umount2(path.c_str(), MNT_DETACH); }
};

inline std::unique_ptr<SmallDisk> MountSmallDisk(const TempDir& dir, const char* size) {
  const std::string data = dir.File("data");
  REQUIRE(::mkdir(data.c_str(), 0700) == 0);
  const std::string options = std::string("size=") + size + ",mode=0700";
  if (::mount("tmpfs", data.c_str(), "tmpfs", 0, options.c_str()) != 0) {
    WARN("cannot mount a tmpfs here (" << std::strerror(errno) << "): the disk-full test did not run");
    return nullptr;
  }
  return std::make_unique<SmallDisk>(data);
}

// Fills the filesystem of dir with one file, dir/filler, until it is full
// (remove that file to give the space back).
inline void FillDisk(const std::string& dir) {
  std::ofstream filler(dir + "/filler", std::ios::binary);
  const std::string block(64 * 1024, 'x');
  while (filler.write(block.data(), block.size())) {
  }
}

// Publishes incident reports to recipient, each with a description of
// the given size, until the broker refuses one (true) or 5,000 were
// accepted (false). With the disk full, this uses up the space the store's
// commit log holds ahead: large ones first, then small ones.
inline bool PublishUntilRefused(client::Client& c, size_t description, const std::string& recipient = "a01") {
  v1::Message m = IncidentReport({recipient});
  m.mutable_incident_report()->set_description(std::string(description, 'y'));
  for (int i = 0; i < 5000; ++i) {
    m.mutable_envelope()->set_message_id(NewUuid());
    auto r = c.Publish(m);
    REQUIRE(r.status.ok());
    if (!r.AllAccepted()) return true;
  }
  return false;
}

// Fills the disk under the broker's data directory dir, then publishes
// through c until the space the commit log holds ahead is used up too
// (true): from then on the store cannot write.
inline bool FillStoreDisk(const std::string& dir, client::Client& c, const std::string& recipient = "a01") {
  FillDisk(dir);
  return PublishUntilRefused(c, 20000, recipient) && PublishUntilRefused(c, 1, recipient);
}

}  // namespace liaison::test
