// The agency daemon's durable state (docs/agent.md, "Crash guarantees"):
// one SQLite file in the state directory, WAL with synchronous=FULL, so a
// committed change survives kill -9 and power loss.
//
// - outbox: one row per file taken from the outbox, holding the message id,
//   the exact bytes published and which file it was (OutboxFile::id), from before the first send until the
//   file has been moved to sent/ or failed/ (then only the id and the file
//   name are kept, for delivery reports). A file's message id is never
//   chosen twice.
// - inbox: (sender, message id) of every message written to the inbox,
//   staged (written to the hidden staging directory, not yet renamed into
//   the inbox) or done. Duplicates are recognised by it.
// - hooks: hook runs still to do, with their attempt counts.
//
// Thread-safety: all methods are thread-safe (one connection, one mutex).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

struct sqlite3;

namespace liaison::agent {

struct OutboxRow {
  enum class State { kPending, kSettled, kDone };
  int64_t id = 0;
  std::string name;  // file name in the outbox
  std::string message_id;
  std::string body;  // serialized liaison.v1.Message, exactly as published (empty once done)
  State state = State::kPending;
  std::string dir;     // settled: "sent" or "failed"
  std::string dest;    // file name in sent/ or failed/
  std::string file_id;  // which file was claimed (OutboxFile::id); empty in rows of older versions
  std::string result;  // settled: the JSON written beside the file
};

struct HookRow {
  int64_t id = 0;
  std::string path;
  std::string sender;
  std::string message_id;
  int attempts = 0;
  int64_t next_ms = 0;
};

class StateDb {
 public:
  // Opens (creating) the database at path.
  static Result<std::unique_ptr<StateDb>> Open(const std::string& path);
  ~StateDb();
  StateDb(const StateDb&) = delete;
  StateDb& operator=(const StateDb&) = delete;

  // ---- outbox ----
  // Records new claims, all in one transaction; sets each row's id.
  Status Claim(std::vector<OutboxRow>* rows);
  // Rows not yet done, in claim order.
  Result<std::vector<OutboxRow>> ActiveOutbox();
  struct Settlement {
    int64_t id;
    std::string dir;     // "sent" or "failed"
    std::string result;  // JSON
  };
  Status Settle(const std::vector<Settlement>& settled);
  // Marks rows done and forgets their bodies.
  Status Finish(const std::vector<int64_t>& ids);
  // Where the file of a message this agent sent went: (dir, dest); dir is
  // "sent" for rows still pending. Nothing for unknown ids.
  Result<std::optional<std::pair<std::string, std::string>>> FindSent(const std::string& message_id);

  // ---- inbox ----
  enum class InboxState { kNone, kStaged, kDone };
  Result<InboxState> Inbox(const std::string& sender, const std::string& message_id);
  struct InboxKey {
    std::string sender, message_id, name;
  };
  Status Stage(const std::vector<InboxKey>& keys);
  // Marks staged rows done and, with hooks, queues a hook run for each
  // (path = inbox_dir/name), in one transaction.
  Status FinishInbox(const std::vector<InboxKey>& keys, bool hooks, const std::string& inbox_dir, int64_t now_ms);
  Result<std::vector<InboxKey>> StagedInbox();

  // ---- hooks ----
  // The hook run due first (whether due yet or not).
  Result<std::optional<HookRow>> NextHook();
  Status HookDone(int64_t id, const std::string& state, int attempts, const std::string& last_error);
  Status HookRetry(int64_t id, int attempts, int64_t next_ms, const std::string& last_error);
  Result<int64_t> PendingHooks();

 private:
  explicit StateDb(sqlite3* db) : db_(db) {}
  Status Exec(const char* sql);
  // Adds the columns newer versions need to a database an older one made.
  Status AddColumns();
  Status InTransaction(const std::function<Status()>& body);
  Status Error(const char* what);
  std::mutex mu_;
  sqlite3* db_;
};

}  // namespace liaison::agent
