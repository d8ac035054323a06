#include "broker/detail/admission.h"

#include <algorithm>

namespace liaison::broker {

bool Admission::BeginHandshake(const std::string& source) {
  std::lock_guard lock(mu_);
  uint32_t& n = handshakes_[source];
  if (n >= limits_.max_handshakes_per_source) {
    if (n == 0) handshakes_.erase(source);
    return false;
  }
  ++n;
  return true;
}

void Admission::EndHandshake(const std::string& source) {
  std::lock_guard lock(mu_);
  auto it = handshakes_.find(source);
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

namespace {

// Takes n tokens from a bucket at now (a new bucket starts full): false,
// taking none, when it holds fewer. now may be earlier than the bucket's
// last time (a thread that read the clock before another took the lock):
// it refills nothing and leaves that time, or the interval between would
// be credited twice.
bool Take(Admission::Clock::time_point now, double rate, double burst, bool fresh, double* tokens,
          Admission::Clock::time_point* last, double n = 1) {
  if (fresh) {
    *tokens = burst;
    *last = now;
  } else if (now > *last) {
    const double elapsed = std::chrono::duration<double>(now - *last).count();
    *tokens = std::min(burst, *tokens + elapsed * rate);
    *last = now;
  }
  if (*tokens < n) return false;
  *tokens -= n;
  return true;
}

}  // namespace

bool Admission::TakePublish(const std::string& agency, Clock::time_point now) {
  if (limits_.publish_rate_per_agency == 0) return true;  // unlimited
  std::lock_guard lock(mu_);
  auto [it, fresh] = buckets_.try_emplace(agency);
  return Take(now, limits_.publish_rate_per_agency, std::max<double>(limits_.publish_burst_per_agency, 1), fresh,
              &it->second.tokens, &it->second.last);
}

bool Admission::TakePublishBytes(const std::string& agency, uint64_t bytes, Clock::time_point now) {
  if (limits_.publish_bytes_per_agency == 0) return true;  // unlimited
  std::lock_guard lock(mu_);
  auto [it, fresh] = byte_buckets_.try_emplace(agency);
  return Take(now, static_cast<double>(limits_.publish_bytes_per_agency),
              static_cast<double>(std::max(limits_.publish_bytes_burst_per_agency, bytes)), fresh, &it->second.tokens,
              &it->second.last, static_cast<double>(bytes));
}

bool Admission::TakeHandshake(const std::string& source, Clock::time_point now) {
  if (limits_.handshake_rate_per_source == 0) return true;  // unlimited
  const double rate = limits_.handshake_rate_per_source;
  const double burst = std::max<double>(limits_.handshake_burst_per_source, 1);
  std::lock_guard lock(mu_);
  // At the bound the table grows no more, so it may never reach sweep_at_
  // again: there it is swept once a second too, or sources gone quiet would
  // be kept for good and every new source would share one bucket.
  if (sources_.size() >= sweep_at_ ||
      (sources_.size() >= kMaxSourceBuckets && now - swept_ >= std::chrono::seconds(1))) {
    // A bucket full again is the same as none. What stays after the sweep
    // sets the next one, so sweeps cost O(1) a handshake.
    std::erase_if(sources_, [&](const auto& e) {
      const double elapsed = std::chrono::duration<double>(now - e.second.last).count();
      return e.second.tokens + std::max(0.0, elapsed) * rate >= burst;
    });
    sweep_at_ = std::max<size_t>(1024, 2 * sources_.size());
    swept_ = now;
  }
  // Past the bound (many sources, each busy), new sources share a bucket:
  // "" is no address.
  const bool known = sources_.count(source) != 0;
  const std::string& key = known || sources_.size() < kMaxSourceBuckets ? source : std::string();
  auto [it, fresh] = sources_.try_emplace(key);
  return Take(now, rate, burst, fresh, &it->second.tokens, &it->second.last);
}

size_t Admission::source_buckets() {
  std::lock_guard lock(mu_);
  return sources_.size();
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
