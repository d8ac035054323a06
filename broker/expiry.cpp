// Expiry: a copy not delivered by its message's expiry (or the broker's
// maximum retention) leaves the queue, audited, and the sender is told:
// every second for the copies waiting, and just before sending for a copy
// taken from the queue between two of those (one given back by a session
// that ended, say). A delivery report its sender has not fetched within
// the maximum retention leaves too (audited); recall notices never expire.
#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include "broker/detail/broker_state.h"
#include "broker/detail/mailbox.h"
#include "proto/names.h"

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

namespace {

// A delivery report its recipient (the message's sender) did not fetch
// within the broker's maximum retention: it goes, like a message would, so
// that nothing about a share waits longer than that. Its record says what
// the sender was never told (the copy's own record is in the log already).
void ExpireReport(QueueChange& change, const QueuedDelivery& d) {
  using google::protobuf::util::TimeUtil;
  v1::DeliveryReport report;
  if (d.payload) report.ParseFromString(*d.payload);
  audit::Record r = CopyRecord("report_expired", *d.message, d.recipient);
  r.decision = "expired";
  r.detail = "a delivery report (" + proto::OutcomeName(report.outcome()) + " for '" + report.recipient() +
             "'), made " + TimeUtil::ToString(TimeUtil::MillisecondsToTimestamp(d.made_ms)) +
             ", was not fetched by the sender within limits.max_retention_s";
  change.batch.records.push_back(std::move(r));
  change.Finish(d, DeliveryState::kExpired, v1::OUTCOME_EXPIRED, v1::REASON_EXPIRED, "", false);
}

}  // namespace

void ExpireDue(BrokerState& broker, int64_t now_ms) {
  auto expired = broker.mailboxes.TakeExpired(now_ms, broker.config.limits.max_retention.count());
  if (expired.empty()) return;
  QueueChange change(broker);
  size_t reports = 0;
  for (const auto& d : expired) {
    if (d.kind == DeliveryKind::kReport) {
      ExpireReport(change, d);
      reports++;
    } else {
      ExpireCopy(change, d);
    }
  }
  if (reports < expired.size()) {
    const size_t n = expired.size() - reports;
    spdlog::info("{} waiting deliver{} expired", n, n == 1 ? "y" : "ies");
  }
  if (reports > 0) {
    spdlog::info("{} delivery report{} expired unfetched (limits.max_retention_s)", reports, reports == 1 ? "" : "s");
  }
  change.Submit([n = expired.size()](const Status& s, const audit::Checkpoint&) {
    if (!s.ok()) spdlog::error("expiring {} deliveries failed (they stay queued): {}", n, s.message());
  });
}

}  // namespace liaison::broker
