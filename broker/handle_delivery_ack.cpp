// Deliveries to a receiving session under its credit window, and the
// DeliveryAck that resolves each. A DeliveryAck is accepted only from the
// session that received that delivery (ids are per session).
#include <boost/asio/post.hpp>
#include <spdlog/spdlog.h>

#include "broker/detail/broker_state.h"
#include "broker/detail/pending_publish.h"
#include "broker/detail/session.h"

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
    d.pending->Resolve(d.index, v1::OUTCOME_REFUSED, v1::REASON_RECIPIENT_DISCONNECTED,
                       "the recipient's session closed before delivery");
    return;
  }
  if (backlog_.size() >= broker_.config.limits.max_backlog) {
    d.pending->Resolve(d.index, v1::OUTCOME_REFUSED, v1::REASON_RECIPIENT_BUSY,
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
  d.pending->Resolve(d.index, v1::OUTCOME_DELIVERED, v1::REASON_UNSPECIFIED, "");
  PumpDeliveries();
}

void Session::ResolveDeliveries(v1::Reason reason, const std::string& detail) {
  for (auto& [id, d] : unacked_) d.pending->Resolve(d.index, v1::OUTCOME_REFUSED, reason, detail);
  unacked_.clear();
  for (auto& d : backlog_) d.pending->Resolve(d.index, v1::OUTCOME_REFUSED, reason, detail);
  backlog_.clear();
}

}  // namespace liaison::broker
