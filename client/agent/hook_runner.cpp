#include "client/agent/hook_runner.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "client/agent/agent_files.h"

extern char** environ;

namespace liaison::agent {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool IsOurVariable(const char* entry) {
  for (const char* name : {"LIAISON_SENDER=", "LIAISON_MESSAGE_ID=", "LIAISON_MESSAGE_FILE="}) {
    if (std::strncmp(entry, name, std::strlen(name)) == 0) return true;
  }
  return false;
}

}  // namespace

HookRunner::HookRunner(StateDb& db, HookConfig config) : db_(db), config_(std::move(config)) {}

HookRunner::~HookRunner() {
  Stop();
}

void HookRunner::Start() {
  {
    std::lock_guard lock(mu_);
    busy_ = true;  // until the loop has looked at the queue once
  }
  thread_ = std::thread([this] { Loop(); });
}

void HookRunner::Notify() {
  std::lock_guard lock(mu_);
  notified_ = true;
  busy_ = true;
  cv_.notify_all();
}

bool HookRunner::Idle() {
  std::lock_guard lock(mu_);
  return !busy_;
}

void HookRunner::RequestStop() {
  std::lock_guard lock(mu_);
  stop_ = true;
  cv_.notify_all();
}

void HookRunner::Stop() {
  RequestStop();
  if (thread_.joinable()) thread_.join();
}

bool HookRunner::StoppingSoon() {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, std::chrono::seconds(1), [&] { return stop_; });
}

void HookRunner::Loop() {
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (stop_) return;
      notified_ = false;
    }
    auto next = db_.NextHook();
    int64_t wait_ms = 1000;
    if (!next.ok()) {
      spdlog::error("hook: {}", next.status().message());
    } else if (next->has_value()) {
      HookRow row = **next;
      const int64_t now = NowMs();
      if (row.next_ms <= now) {
        bool by_signal = false;
        Status s = RunOnce(row, &by_signal);
        const int attempts = row.attempts + 1;
        Status rec;
        if (!s.ok() && by_signal && StoppingSoon()) {
          // Recorded as a failure, a stop (systemctl stop or restart) in the
          // middle of a run would use up an attempt, or the last one.
          spdlog::info("hook: {} ended ({}) while the agent was stopping: not counted; it runs again at the next start",
                       row.path, s.message());
          continue;
        }
        if (s.ok()) {
          ++succeeded_;
          spdlog::info("hook: {} done (run {})", row.path, attempts);
          rec = db_.HookDone(row.id, "done", attempts, "");
        } else if (s.IsNotFound()) {
          spdlog::info("hook: {} skipped: {}", row.path, s.message());
          rec = db_.HookDone(row.id, "skipped", row.attempts, s.message());
        } else {
          ++failed_runs_;
          if (attempts >= config_.max_attempts) {
            spdlog::error("hook: {} failed {} time(s), giving up: {}", row.path, attempts, s.message());
            rec = db_.HookDone(row.id, "failed", attempts, s.message());
          } else {
            auto backoff = config_.initial_backoff;
            for (int i = 1; i < attempts && backoff < config_.max_backoff; ++i) backoff *= 2;
            backoff = std::min(backoff, config_.max_backoff);
            spdlog::warn("hook: {} failed (run {} of {}): {}; next run in {} ms", row.path, attempts,
                         config_.max_attempts, s.message(), backoff.count());
            rec = db_.HookRetry(row.id, attempts, NowMs() + backoff.count(), s.message());
          }
        }
        if (!rec.ok()) spdlog::error("hook: {}", rec.message());
        continue;  // look for the next due run at once
      }
      wait_ms = std::min<int64_t>(row.next_ms - now, 1000);
    }
    std::unique_lock lock(mu_);
    // Idle: nothing due now (a later retry may be queued).
    if (!notified_) busy_ = false;
    cv_.wait_for(lock, std::chrono::milliseconds(wait_ms), [&] { return stop_ || notified_; });
    busy_ = true;
    if (stop_) return;
  }
}

Status HookRunner::RunOnce(const HookRow& row, bool* by_signal) {
  if (!FileExists(row.path)) return Status::NotFound("the message file is gone (recalled or removed)");
  std::vector<std::string> args = config_.command;
  args.push_back(row.path);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> vars = {"LIAISON_SENDER=" + row.sender, "LIAISON_MESSAGE_ID=" + row.message_id,
                                   "LIAISON_MESSAGE_FILE=" + row.path};
  std::vector<char*> envp;
  for (char** e = environ; e && *e; ++e) {
    if (!IsOurVariable(*e)) envp.push_back(*e);
  }
  for (auto& v : vars) envp.push_back(v.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, 2, 1);
  // Nothing else of the agent's: its connection to the broker (the client
  // library's sockets are not close-on-exec) must not live on in a hook,
  // or in a background job the hook leaves behind.
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // The agent blocks SIGTERM/SIGINT in all its threads (a signal thread
  // takes them); the hook gets the default mask and dispositions back.
  sigset_t none, all_default;
  sigemptyset(&none);
  sigemptyset(&all_default);
  sigaddset(&all_default, SIGTERM);
  sigaddset(&all_default, SIGINT);
  sigaddset(&all_default, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all_default);
  // A process group of its own, so that a timeout kills what the hook
  // started too (a hung import program under a script), not the script alone.
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return Status::IoError("cannot start " + config_.command[0] + ": " + std::strerror(rc));

  const auto deadline = std::chrono::steady_clock::now() + config_.timeout;
  bool killed = false;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      if (killed) return Status::Timeout("no exit within " + std::to_string(config_.timeout.count()) + " ms; killed");
      if (WIFEXITED(status)) {
        if (WEXITSTATUS(status) == 0) return Status::Ok();
        return Status::Unavailable("exit status " + std::to_string(WEXITSTATUS(status)));
      }
      *by_signal = true;
      return Status::Unavailable(std::string("killed by signal ") + std::to_string(WTERMSIG(status)));
    }
    if (r < 0 && errno != EINTR) return Status::IoError(std::string("waitpid: ") + std::strerror(errno));
    if (!killed && std::chrono::steady_clock::now() > deadline) {
      ::kill(-pid, SIGKILL);
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace liaison::agent
