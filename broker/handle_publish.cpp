// Publish: validate, bind the sender to the session's agency, resolve each
// recipient, and hand the message to the receiving sessions. The
// PublishAck goes out when every recipient has an outcome (PendingPublish).
#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include "broker/detail/broker_state.h"
#include "broker/detail/pending_publish.h"
#include "broker/detail/session.h"
#include "proto/validate.h"

namespace liaison::broker {

void Session::HandlePublish(v1::Publish& publish) {
  const uint64_t rid = publish.request_id();
  if (draining_ || broker_.draining) {
    SendError(rid, v1::REASON_SHUTTING_DOWN, "the broker is shutting down; publish again after it restarts", false);
    return;
  }
  const Limits& l = broker_.config.limits;
  if (in_flight_publishes_ >= l.max_in_flight_publishes) {
    SendError(rid, v1::REASON_TOO_MANY_IN_FLIGHT,
              "more than " + std::to_string(l.max_in_flight_publishes) + " publishes await acknowledgement", false);
    return;
  }
  if (!publish.has_message()) {
    SendError(rid, v1::REASON_INVALID_MESSAGE, "Publish carries no message", false);
    return;
  }
  auto message = std::shared_ptr<v1::Message>(publish.release_message());
  proto::MessageLimits ml;
  ml.max_recipients = l.max_recipients;
  if (Status s = proto::ValidateForPublish(message.get(), ml, std::chrono::system_clock::now()); !s.ok()) {
    SendError(rid, v1::REASON_INVALID_MESSAGE, s.message(), false);
    return;
  }
  v1::Envelope* env = message->mutable_envelope();
  // Identity comes from the certificate, never from the message.
  if (!env->sender().empty() && env->sender() != agency_) {
    spdlog::warn("{}: publish {} refused: envelope names sender '{}'", tag_, env->message_id(),
                 env->sender().substr(0, 64));
    SendError(rid, v1::REASON_SENDER_MISMATCH,
              "envelope.sender '" + env->sender() + "' is not this session's agency '" + agency_ + "'", false);
    return;
  }
  env->set_sender(agency_);
  *env->mutable_received_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
  broker_.stats.publishes++;

  auto pending = std::make_shared<PendingPublish>(broker_, weak_from_this(), rid, env->message_id(), env->recipients());
  ++in_flight_publishes_;
  const auto policy = broker_.policy();
  std::shared_ptr<const v1::Message> shared = message;
  for (size_t i = 0; i < pending->size(); ++i) {
    const std::string& recipient = env->recipients(static_cast<int>(i));
    if (recipient.rfind("group:", 0) == 0) {
      pending->Resolve(i, v1::OUTCOME_REFUSED, v1::REASON_UNKNOWN_RECIPIENT,
                       "groups are not defined by this broker's policy");
      continue;
    }
    if (policy->FindAgency(recipient) == nullptr) {
      pending->Resolve(i, v1::OUTCOME_REFUSED, v1::REASON_UNKNOWN_RECIPIENT, "no agency '" + recipient + "'");
      continue;
    }
    auto receiver = broker_.router.Receiver(recipient);
    if (!receiver) {
      pending->Resolve(i, v1::OUTCOME_REFUSED, v1::REASON_RECIPIENT_OFFLINE,
                       "'" + recipient + "' has no receiving session; this broker keeps no queue, so nothing was stored");
      continue;
    }
    receiver->OfferDelivery(pending, i, shared);
  }
  spdlog::debug("{}: publish {} to {} recipient(s)", tag_, env->message_id(), pending->size());
}

}  // namespace liaison::broker
