// Expiry: a copy not delivered by its message's expiry (or the broker's
// maximum retention) leaves the queue, audited, and the sender is told:
// every second for the copies waiting, and just before sending for a copy
// taken from the queue between two of those (one given back by a session
// that ended, say).
#include <spdlog/spdlog.h>

#include "broker/detail/broker_state.h"
#include "broker/detail/mailbox.h"

namespace liaison::broker {

void ExpireCopy(QueueChange& change, const QueuedDelivery& d) {
  // A copy sent before and never acknowledged may be with its recipient
  // all the same (an agent stores a message before acknowledging it, and
  // the acknowledgement can be lost): the sender is told so, not that it
  // was not delivered. (Session::CommitAttempts keeps the count over a crash.)
  const bool sent = d.attempts > 0;
  audit::Record r = CopyRecord("expired", *d.message, d.recipient);
  r.actor = d.recipient;
  r.decision = "expired";
  r.detail = "attempts=" + std::to_string(d.attempts) +
             (sent ? "; sent but never acknowledged: the recipient may have it" : "");
  change.batch.records.push_back(std::move(r));
  change.Finish(d, DeliveryState::kExpired, v1::OUTCOME_EXPIRED, v1::REASON_EXPIRED,
                sent ? "expired before the recipient acknowledged it: " + SentUnacknowledged(d) +
                           ", so the recipient may have it"
                     : "not delivered before the message expired",
                true);
}

void ExpireDue(BrokerState& broker, int64_t now_ms) {
  auto expired = broker.mailboxes.TakeExpired(now_ms);
  if (expired.empty()) return;
  QueueChange change(broker);
  for (const auto& d : expired) ExpireCopy(change, d);
  spdlog::info("{} waiting deliver{} expired", expired.size(), expired.size() == 1 ? "y" : "ies");
  change.Submit([n = expired.size()](const Status& s, const audit::Checkpoint&) {
    if (!s.ok()) spdlog::error("expiring {} deliveries failed (they stay queued): {}", n, s.message());
  });
}

}  // namespace liaison::broker
