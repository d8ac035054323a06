#include "broker/detail/pending_publish.h"

#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include "broker/detail/broker_state.h"
#include "broker/detail/session.h"
#include "proto/frame_codec.h"

namespace liaison::broker {

PendingPublish::PendingPublish(BrokerState& state, std::weak_ptr<Session> sender, uint64_t request_id,
                               const std::string& message_id,
                               const google::protobuf::RepeatedPtrField<std::string>& recipients)
    : state_(state),
      sender_(std::move(sender)),
      recipients_(static_cast<size_t>(recipients.size())),
      message_id_(message_id),
      resolved_(recipients_, false),
      remaining_(recipients_) {
  ack_.set_request_id(request_id);
  *ack_.mutable_accepted_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
  ack_.set_message_id(message_id);
  for (const auto& r : recipients) ack_.add_outcomes()->set_recipient(r);
  state_.in_flight_publishes++;
}

void PendingPublish::Resolve(size_t index, v1::Outcome outcome, v1::Reason reason, std::string detail) {
  std::string encoded;
  {
    std::lock_guard lock(mu_);
    if (index >= recipients_ || resolved_[index]) return;
    resolved_[index] = true;
    auto* o = ack_.mutable_outcomes(static_cast<int>(index));
    o->set_outcome(outcome);
    o->set_reason(reason);
    o->set_detail(std::move(detail));
    if (--remaining_ > 0) return;
    // Every record of this publish was committed before its recipient was
    // resolved, so the newest checkpoint covers them all.
    ToProto(state_.store->latest(), ack_.mutable_checkpoint());
    v1::Frame f;
    f.mutable_publish_ack()->Swap(&ack_);
    auto e = proto::EncodeFrame(f);
    if (e.ok()) encoded = std::move(e).value();
  }
  state_.in_flight_publishes--;
  auto sender = sender_.lock();
  if (!sender) {
    spdlog::info("publish {}: the sender disconnected before its acknowledgement", message_id_);
    return;
  }
  sender->SendPublishAck(std::move(encoded));
}

}  // namespace liaison::broker
