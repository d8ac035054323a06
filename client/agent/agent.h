// The agency daemon (liaison-agent, docs/agent.md): keeps one connection to
// the broker, sends what is dropped into the outbox, writes what arrives
// into the inbox before acknowledging it, files recall notices and delivery
// reports, and runs the hook for each received message. Exactly once into
// sent/, failed/ and the inbox, across crashes: every step is recorded in
// the state database (StateDb) before the step after it, and every step
// can be repeated after a crash without effect beyond the first.
//
// Threading: Run() is the agent's own loop and does all file and database
// work on the calling thread; the client library's I/O thread only queues
// events for it; the hook runner has its own thread. Stop() may be called
// from any thread (the signal thread).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "client/agent/agent_config.h"
#include "client/agent/agent_files.h"
#include "client/agent/hook_runner.h"
#include "client/agent/state_db.h"
#include "client/client.h"

namespace liaison::agent {

struct AgentStats {
  int64_t sent = 0;         // outbox files moved to sent/
  int64_t failed = 0;       // outbox files moved to failed/
  int64_t received = 0;     // messages written to the inbox
  int64_t duplicates = 0;   // deliveries of messages already in the inbox (dropped, acknowledged)
  int64_t recalls = 0;      // recall notices filed
  int64_t reports = 0;      // delivery reports filed
  int64_t quarantined = 0;  // recall notices and reports that could not be filed (Agent::Quarantine)
  int64_t pending = 0;      // outbox files not yet sent when Run returned
};

class Agent {
 public:
  struct RunOptions {
    // Process the outbox and the deliveries waiting at the broker, then
    // return: when nothing is left to send, no delivery arrived for idle,
    // and no hook run is due.
    bool once = false;
    Millis idle{1'000};
    Millis timeout{120'000};  // once: give up after this long
  };

  // Creates the directories, takes the state directory's lock, opens the
  // state database and finishes whatever a crashed predecessor left half
  // done (files to move to sent/ or failed/, messages to move from staging
  // into the inbox). Errors: Unavailable (another agent holds the lock),
  // IoError.
  static Result<std::unique_ptr<Agent>> Open(AgentConfig config);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // OK after Stop(), or with once when all was done. Unavailable: once ran
  // out of time (broker unreachable, or work left). IoError: once, a local
  // failure (disk, database). Corruption: the broker's audit checkpoint
  // contradicted the witness file.
  Status Run(const RunOptions& options);
  void Stop();
  AgentStats stats() const;

 private:
  struct Event {
    enum class Kind { kDelivery, kPublished, kClosed };
    Kind kind = Kind::kDelivery;
    uint64_t generation = 0;
    client::Delivery delivery;
    int64_t row = 0;
    client::PublishResult result;
    Status why;
  };

  explicit Agent(AgentConfig config);
  Status Recover();
  void Push(Event e);

  // Connection.
  void TryConnect(std::chrono::steady_clock::time_point now);
  void Disconnect(const std::string& why, bool error);
  Millis NextBackoff();

  // Outbox.
  // Claims new outbox files; *more: some were left for a later scan.
  Status ScanOutbox(bool* more);
  bool StillWriting(const std::string& name, const OutboxFile& file);
  void FailFile(const std::string& name, const std::string& code, const std::string& message);
  std::string DestName(const std::string& name, const std::string& unique);
  void PublishPending(std::chrono::steady_clock::time_point now);
  Status ApplySettled(const std::vector<OutboxRow>& rows);

  // Events.
  Status HandleEvents(std::deque<Event>& events);
  Status HandleResults(std::vector<Event*>& results);
  Status FlushMessages(std::vector<Event*>& group, std::vector<const Event*>* acks);
  Status HandleRecall(const client::RecallNotice& n);
  Status HandleReport(const client::DeliveryReport& r);
  Status Quarantine(const client::Delivery& d, const std::string& why);

  AgentConfig config_;
  std::string staging_;  // inbox/.liaison-incoming: messages written, not yet renamed into the inbox
  int lock_fd_ = -1;
  std::unique_ptr<StateDb> db_;
  std::unique_ptr<HookRunner> hooks_;

  // Run thread only.
  std::unique_ptr<client::Client> client_;
  uint64_t generation_ = 0;
  std::chrono::steady_clock::time_point connected_at_{}, next_connect_{}, last_activity_{};
  int backoff_attempt_ = 0;
  bool ever_connected_ = false;
  std::map<int64_t, OutboxRow> pending_;  // claimed, not settled, by row id
  std::set<int64_t> in_flight_;           // published on the current connection, unanswered
  std::map<int64_t, std::chrono::steady_clock::time_point> retry_at_;
  // Pending rows refused for a full queue: the wait before the next try.
  std::map<int64_t, std::chrono::seconds> queue_full_wait_;
  static constexpr std::chrono::seconds kQueueFullMaxWait{60};
  std::vector<OutboxRow> unmoved_;  // settled, but the move failed (disk): tried again
  std::set<std::string> skipped_logged_;  // outbox files left for now as still being written, logged once
  // Outbox files that could not be moved to failed/, with when that was
  // last logged (once a minute each, not at every scan).
  std::map<std::string, std::chrono::steady_clock::time_point> fail_logged_;
  static constexpr std::chrono::seconds kFailLogEvery{60};
  Status alarm_;
  std::mt19937_64 rng_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;  // guarded by mu_
  bool stop_ = false;         // guarded by mu_
  AgentStats stats_;          // guarded by mu_
};

}  // namespace liaison::agent
