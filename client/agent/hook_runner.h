// Runs the configured hook for each message written to the inbox, on its
// own thread so a slow hook never holds up receiving. Runs are queued in
// the state database (StateDb hooks table) in the same transaction that
// records the message, so a crash loses none: a run interrupted by a crash
// is repeated at the next start (hooks must therefore be idempotent).
// A run that exits non-zero, is killed, or exceeds the timeout is retried
// with exponential backoff up to max_attempts runs in all.
//
// The hook is started with posix_spawn (no shell): argv is the configured
// command with the message file's path appended; the environment is the
// agent's plus LIAISON_SENDER, LIAISON_MESSAGE_ID and LIAISON_MESSAGE_FILE;
// stdin is /dev/null and its stdout goes to the agent's stderr (the log);
// no other descriptor is inherited.
//
// Thread-safety: Notify, Idle and Stop may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "client/agent/agent_config.h"
#include "client/agent/state_db.h"

namespace liaison::agent {

class HookRunner {
 public:
  HookRunner(StateDb& db, HookConfig config);
  ~HookRunner();  // Stop()
  HookRunner(const HookRunner&) = delete;
  HookRunner& operator=(const HookRunner&) = delete;

  void Start();
  // New runs were queued.
  void Notify();
  // Nothing running and nothing due now.
  bool Idle();
  // The agent is stopping: no new run starts; a running one is not killed.
  // A run that a signal ends from now on (a service manager's stop signals
  // every process of the service, the hook too) was cut short by the stop,
  // not failed: it is not counted, and runs again at the next start.
  void RequestStop();
  // RequestStop, then waits for a running hook to finish (bounded by its
  // timeout).
  void Stop();

  int64_t succeeded() const { return succeeded_; }
  int64_t failed_runs() const { return failed_runs_; }

 private:
  void Loop();
  // One run: OK when the hook exited 0, otherwise why not; *by_signal when
  // a signal ended it (not the timeout's SIGKILL).
  Status RunOnce(const HookRow& row, bool* by_signal);
  // Whether the agent is stopping, waiting a little for it: the stop
  // signal may reach the hook a moment before it reaches the agent.
  bool StoppingSoon();

  StateDb& db_;
  HookConfig config_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;      // guarded by mu_
  bool notified_ = false;  // guarded by mu_
  bool busy_ = false;      // guarded by mu_: running, or about to look for work
  std::atomic<int64_t> succeeded_{0};
  std::atomic<int64_t> failed_runs_{0};
};

}  // namespace liaison::agent
