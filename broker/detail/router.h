// Which sessions exist and which one receives for each agency (DESIGN.md,
// Sessions: one receiving session per agency). Thread-safe: one mutex,
// never held while calling into a session.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace liaison::broker {

class Session;

class Router {
 public:
  void Add(const std::shared_ptr<Session>& session);
  void Remove(uint64_t session_id);

  // Makes session the receiver for agency. If another session receives and
  // take_over is false: an error. With take_over, returns the replaced
  // session (the caller closes it); otherwise null.
  Result<std::shared_ptr<Session>> ClaimReceiver(const std::string& agency, const std::shared_ptr<Session>& session,
                                                 bool take_over);
  // Drops session as the receiver for agency, if it still is.
  void ReleaseReceiver(const std::string& agency, uint64_t session_id);
  std::shared_ptr<Session> Receiver(std::string_view agency) const;
  // Whether agency has a receiving session, and since when (its receiving
  // program connected, or the last one went): unknown if neither happened
  // since the broker started.
  struct ReceiverState {
    bool receiving = false;
    std::optional<std::chrono::steady_clock::time_point> since;
  };
  ReceiverState StateOf(std::string_view agency) const;

  std::vector<std::shared_ptr<Session>> All() const;
  size_t size() const;

 private:
  mutable std::mutex mu_;
  std::map<uint64_t, std::weak_ptr<Session>> sessions_;
  struct ReceiverEntry {
    uint64_t session_id;
    std::weak_ptr<Session> session;
  };
  std::map<std::string, ReceiverEntry, std::less<>> receivers_;
  // When each agency last began or stopped receiving.
  std::map<std::string, std::chrono::steady_clock::time_point, std::less<>> changed_;
};

}  // namespace liaison::broker
