// Expiry: a copy not delivered by its message's expiry (or the broker's
// maximum retention) leaves the queue, audited, and the sender is told.
#include <spdlog/spdlog.h>

#include "broker/detail/broker_state.h"
#include "broker/detail/mailbox.h"

namespace liaison::broker {

void ExpireDue(BrokerState& broker, int64_t now_ms) {
  auto expired = broker.mailboxes.TakeExpired(now_ms);
  if (expired.empty()) return;
  QueueChange change(broker);
  const std::string why = "not delivered before the message expired";
  for (const auto& d : expired) {
    audit::Record r = CopyRecord("expired", *d.message, d.recipient);
    r.actor = d.recipient;
    r.decision = "expired";
    r.detail = "attempts=" + std::to_string(d.attempts);
    change.batch.records.push_back(std::move(r));
    change.Finish(d, DeliveryState::kExpired, v1::OUTCOME_EXPIRED, v1::REASON_EXPIRED, why, true);
  }
  spdlog::info("{} waiting deliver{} expired", expired.size(), expired.size() == 1 ? "y" : "ies");
  change.Submit([n = expired.size()](const Status& s, const audit::Checkpoint&) {
    if (!s.ok()) spdlog::error("expiring {} deliveries failed (they stay queued): {}", n, s.message());
  });
}

}  // namespace liaison::broker
