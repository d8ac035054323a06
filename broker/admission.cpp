#include "broker/detail/admission.h"

#include <algorithm>

namespace liaison::broker {

bool Admission::BeginHandshake(const std::string& address) {
  std::lock_guard lock(mu_);
  uint32_t& n = handshakes_[address];
  if (n >= limits_.max_handshakes_per_source) {
    if (n == 0) handshakes_.erase(address);
    return false;
  }
  ++n;
  return true;
}

void Admission::EndHandshake(const std::string& address) {
  std::lock_guard lock(mu_);
  auto it = handshakes_.find(address);
  if (it == handshakes_.end()) return;
  if (--it->second == 0) handshakes_.erase(it);
}

bool Admission::AddSession(const std::string& agency) {
  std::lock_guard lock(mu_);
  uint32_t& n = sessions_[agency];
  if (n >= limits_.max_connections_per_agency) return false;
  ++n;
  return true;
}

void Admission::RemoveSession(const std::string& agency) {
  std::lock_guard lock(mu_);
  auto it = sessions_.find(agency);
  if (it == sessions_.end()) return;
  if (--it->second == 0) sessions_.erase(it);
}

bool Admission::TakePublish(const std::string& agency, Clock::time_point now) {
  if (limits_.publish_rate_per_agency == 0) return true;  // unlimited
  const double rate = limits_.publish_rate_per_agency;
  const double burst = std::max<double>(limits_.publish_burst_per_agency, 1);
  std::lock_guard lock(mu_);
  auto [it, fresh] = buckets_.try_emplace(agency);
  Bucket& b = it->second;
  if (fresh) {
    b.tokens = burst;
  } else {
    const double elapsed = std::chrono::duration<double>(now - b.last).count();
    b.tokens = std::min(burst, b.tokens + std::max(0.0, elapsed) * rate);
  }
  b.last = now;
  if (b.tokens < 1) return false;
  b.tokens -= 1;
  return true;
}

std::shared_ptr<Admission::AuditSlot> Admission::BeginAuditRequest(const std::string& agency) {
  {
    std::lock_guard lock(mu_);
    uint32_t& n = audit_requests_[agency];
    if (n >= limits_.max_audit_requests_per_agency) return nullptr;
    ++n;
  }
  // The Admission outlives every session and request (BrokerState owns it
  // and is destroyed after the audit reader has stopped).
  return std::make_shared<AuditSlot>(this, agency);
}

void Admission::AuditSlot::Release() {
  if (released_.exchange(true)) return;
  std::lock_guard lock(admission_->mu_);
  auto it = admission_->audit_requests_.find(agency_);
  if (it != admission_->audit_requests_.end() && --it->second == 0) admission_->audit_requests_.erase(it);
}

}  // namespace liaison::broker
