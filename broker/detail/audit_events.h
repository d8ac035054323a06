// The broker's audit events (internal): record builders, the tally of
// refused connections (aggregated per source and reason per interval, so an
// unauthenticated flood cannot fill the disk), and the checkpoint's wire
// form. Event names are documented in docs/auditing.md.
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "common/audit_record.h"
#include "common/checkpoint.h"
#include "proto/detail/pb.h"

namespace liaison::broker {

inline audit::Record MakeRecord(std::string event) {
  audit::Record r;
  r.event = std::move(event);
  r.time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  return r;
}

inline void ToProto(const audit::Checkpoint& c, v1::Checkpoint* out) {
  out->set_origin(c.origin);
  out->set_tree_size(c.tree_size);
  out->set_root_hash(std::string(reinterpret_cast<const char*>(c.root.data()), c.root.size()));
  out->set_time_ms(c.time_ms);
  out->set_key_id(c.key_id);
  out->set_signature(c.signature);
}

// The wire reason for an audit reader's error (the one mapping of its
// errors to reason codes).
inline v1::Reason AuditReason(const Status& s) {
  if (s.IsInvalidArgument()) return v1::REASON_INVALID_AUDIT_REQUEST;
  if (s.IsUnavailable()) return v1::REASON_AUDIT_BUSY;
  return v1::REASON_AUDIT_UNAVAILABLE;
}

// Thread-safe. Bounded: past kMaxKeys (source, reason) pairs in one
// interval, a new source is counted under kOtherSources with its reason,
// and past kMaxKeys + kMaxOtherReasons under kOtherSources and
// kOtherReasons: many attacking addresses cannot grow it (or the records
// of one interval) without limit.
class RefusalTally {
 public:
  static constexpr size_t kMaxKeys = 10000;
  static constexpr size_t kMaxOtherReasons = 100;
  static constexpr const char* kOtherSources = "(other sources)";
  static constexpr const char* kOtherReasons = "(other reasons)";

  void Count(const std::string& source, const std::string& reason) {
    std::pair<std::string, std::string> key{source, reason};
    std::lock_guard lock(mu_);
    if (counts_.size() >= kMaxKeys && !counts_.count(key)) {
      key.first = kOtherSources;
      if (counts_.size() >= kMaxKeys + kMaxOtherReasons && !counts_.count(key)) key.second = kOtherReasons;
    }
    counts_[key]++;
  }
  // One record per source and reason since the last call.
  std::vector<audit::Record> Drain() {
    std::map<std::pair<std::string, std::string>, uint64_t> counts;
    {
      std::lock_guard lock(mu_);
      counts.swap(counts_);
    }
    std::vector<audit::Record> out;
    for (const auto& [key, n] : counts) {
      audit::Record r = MakeRecord("connection_refused");
      r.decision = key.second;
      r.detail = "source=" + key.first + " count=" + std::to_string(n);
      out.push_back(std::move(r));
    }
    return out;
  }

 private:
  std::mutex mu_;
  std::map<std::pair<std::string, std::string>, uint64_t> counts_;
};

}  // namespace liaison::broker
