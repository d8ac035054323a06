// Deliveries to a receiving session under its credit window, and the
// DeliveryAck that resolves each. A DeliveryAck is accepted only from the
// session that received that delivery (ids are per session).
#include <boost/asio/post.hpp>
#include <spdlog/spdlog.h>

#include "broker/detail/broker_state.h"
#include "broker/detail/pending_publish.h"
#include "broker/detail/session.h"
#include "proto/names.h"

namespace liaison::broker {

void Session::OfferDelivery(std::shared_ptr<PendingPublish> pending, size_t index,
                            std::shared_ptr<const v1::Message> message) {
  boost::asio::post(stream_.strand(), [self = shared_from_this(), pending = std::move(pending), index,
                                       message = std::move(message)]() mutable {
    self->EnqueueDelivery(Delivery{std::move(pending), index, std::move(message), {}});
  });
}

void Session::EnqueueDelivery(Delivery d) {
  if (!receiving_ || stream_.closing()) {
    RecordOutcome(d, v1::OUTCOME_REFUSED, v1::REASON_RECIPIENT_DISCONNECTED,
                  "the recipient's session closed before delivery");
    return;
  }
  if (backlog_.size() >= broker_.config.limits.max_backlog) {
    RecordOutcome(d, v1::OUTCOME_REFUSED, v1::REASON_RECIPIENT_BUSY,
                  "the recipient has " + std::to_string(backlog_.size()) + " deliveries waiting");
    return;
  }
  backlog_.push_back(std::move(d));
  PumpDeliveries();
}

void Session::PumpDeliveries() {
  while (receiving_ && !stream_.closing() && !backlog_.empty() && unacked_.size() < credit_) {
    Delivery d = std::move(backlog_.front());
    backlog_.pop_front();
    const uint64_t id = next_delivery_id_++;
    v1::Frame f;
    auto* del = f.mutable_deliver();
    del->set_delivery_id(id);
    del->set_attempt(1);
    *del->mutable_message() = *d.message;
    d.sent_at = net::Clock::now();
    unacked_.emplace(id, std::move(d));
    Send(f);
  }
}

void Session::HandleDeliveryAck(const v1::DeliveryAck& ack) {
  if (!receiving_) {
    SendError(0, v1::REASON_NOT_RECEIVING, "this session does not receive deliveries", false);
    return;
  }
  auto it = unacked_.find(ack.delivery_id());
  if (it == unacked_.end()) {
    // An id this session issued whose delivery already timed out: late, harmless.
    if (ack.delivery_id() != 0 && ack.delivery_id() < next_delivery_id_) return;
    broker_.stats.protocol_errors++;
    SendError(0, v1::REASON_UNKNOWN_DELIVERY,
              "no delivery " + std::to_string(ack.delivery_id()) + " was sent on this session", false);
    return;
  }
  Delivery d = std::move(it->second);
  unacked_.erase(it);
  broker_.stats.deliveries_acked++;
  RecordOutcome(d, v1::OUTCOME_DELIVERED, v1::REASON_UNSPECIFIED, "");
  PumpDeliveries();
}

void Session::ResolveDeliveries(v1::Reason reason, const std::string& detail) {
  for (auto& [id, d] : unacked_) RecordOutcome(d, v1::OUTCOME_REFUSED, reason, detail);
  unacked_.clear();
  for (auto& d : backlog_) RecordOutcome(d, v1::OUTCOME_REFUSED, reason, detail);
  backlog_.clear();
}

// The outcome of one delivery reaches the sender only after its audit record
// ("delivered" or "not_delivered") is committed.
void Session::RecordOutcome(const Delivery& d, v1::Outcome outcome, v1::Reason reason, std::string detail) {
  const v1::Envelope& env = d.message->envelope();
  audit::Record r = MakeRecord(outcome == v1::OUTCOME_DELIVERED ? "delivered" : "not_delivered");
  r.actor = agency_;
  r.cert_sha256 = identity_.cert_sha256;
  r.message_id = env.message_id();
  r.case_id = env.case_id();
  r.sender = env.sender();
  r.recipient = agency_;
  r.message_type = proto::MessageTypeName(*d.message);
  r.tlp = env.tlp();
  r.purpose = env.purpose();
  r.decision = outcome == v1::OUTCOME_DELIVERED ? "delivered" : "refused:" + proto::ReasonName(reason);
  r.detail = detail;
  broker_.store->Append({std::move(r)}, [pending = d.pending, index = d.index, outcome, reason,
                                         detail = std::move(detail)](const Status& s, const audit::Checkpoint&) {
    if (!s.ok() && outcome == v1::OUTCOME_DELIVERED) {
      // The recipient has it; only the record failed. Say so rather than hide it.
      pending->Resolve(index, outcome, v1::REASON_STORE_FAILURE,
                       "delivered, but the broker could not record the delivery: " + s.message());
      return;
    }
    pending->Resolve(index, outcome, reason, detail);
  });
}

}  // namespace liaison::broker
