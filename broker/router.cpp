#include "broker/detail/router.h"

#include "broker/detail/session.h"

namespace liaison::broker {

void Router::Add(const std::shared_ptr<Session>& session) {
  std::lock_guard lock(mu_);
  sessions_[session->id()] = session;
}

void Router::Remove(uint64_t session_id) {
  std::lock_guard lock(mu_);
  sessions_.erase(session_id);
}

Result<std::shared_ptr<Session>> Router::ClaimReceiver(const std::string& agency,
                                                       const std::shared_ptr<Session>& session, bool take_over) {
  std::lock_guard lock(mu_);
  auto it = receivers_.find(agency);
  std::shared_ptr<Session> previous;
  if (it != receivers_.end()) previous = it->second.session.lock();
  if (previous && !take_over) {
    return Status::Unavailable("session " + std::to_string(previous->id()) + " of agency " + agency +
                               " is already receiving; ask to take over to replace it");
  }
  receivers_[agency] = ReceiverEntry{session->id(), session};
  if (!previous) changed_[agency] = std::chrono::steady_clock::now();  // a take-over goes on receiving
  return previous;
}

void Router::ReleaseReceiver(const std::string& agency, uint64_t session_id) {
  std::lock_guard lock(mu_);
  auto it = receivers_.find(agency);
  if (it != receivers_.end() && it->second.session_id == session_id) {
    receivers_.erase(it);
    changed_[agency] = std::chrono::steady_clock::now();
  }
}

Router::ReceiverState Router::StateOf(std::string_view agency) const {
  std::lock_guard lock(mu_);
  ReceiverState state;
  auto it = receivers_.find(agency);
  state.receiving = it != receivers_.end() && !it->second.session.expired();
  if (auto c = changed_.find(agency); c != changed_.end()) state.since = c->second;
  return state;
}

std::shared_ptr<Session> Router::Receiver(std::string_view agency) const {
  std::lock_guard lock(mu_);
  auto it = receivers_.find(agency);
  return it == receivers_.end() ? nullptr : it->second.session.lock();
}

std::vector<std::shared_ptr<Session>> Router::All() const {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Session>> out;
  out.reserve(sessions_.size());
  for (const auto& [id, weak] : sessions_) {
    if (auto s = weak.lock()) out.push_back(std::move(s));
  }
  return out;
}

size_t Router::size() const {
  std::lock_guard lock(mu_);
  return sessions_.size();
}

}  // namespace liaison::broker
