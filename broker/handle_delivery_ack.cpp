// Deliveries from the agency's mailbox to its receiving session, under the
// session's credit window, and the DeliveryAck that settles each.
//
// Before a message copy leaves, the policy decides again with the current
// policy (an agreement may have ended, a forbid rule appeared, the recipient
// left the network since it was queued): a copy no longer permitted is not
// sent, is audited, and the sender gets a report. The copy is redacted and
// pseudonymised as the current decision obliges.
//
// A DeliveryAck is accepted only from the session the delivery was sent on
// and only for the attempt in flight there. The delivery leaves the queue
// (and the recipient's "delivered" record is written) in one commit; if the
// session ends first, its unacknowledged deliveries go back to the mailbox
// and are sent again, with their attempt count, on the next session.
#include <boost/asio/post.hpp>
#include <spdlog/spdlog.h>

#include "broker/detail/broker_state.h"
#include "broker/detail/session.h"
#include "policy/redact.h"
#include "proto/frame_codec.h"

namespace liaison::broker {
namespace {

// DeliveryAcks read in one go share a commit, up to this many.
constexpr size_t kMaxAcksPerCommit = 256;
// A delivery whose copy cannot be made now (SendDelivery: kHeld) is tried
// again this much later (at the watchdog's next tick after it).
constexpr auto kHeldRetry = std::chrono::seconds(1);

}  // namespace

void Session::Wake() {
  // The exchanges pair up: a Wake that finds one pending happened before
  // that one's pump takes from the mailbox, so it sees what was added.
  if (wake_posted_.exchange(true, std::memory_order_acq_rel)) return;
  boost::asio::post(stream_.strand(), [self = shared_from_this()] {
    self->wake_posted_.exchange(false, std::memory_order_acq_rel);
    self->PumpDeliveries();
  });
}

void Session::PumpDeliveries() {
  TakeAndSend();
  CommitAttempts();
}

void Session::CommitAttempts() {
  if (sent_attempts_.empty()) return;
  Batch b;
  b.attempts.swap(sent_attempts_);
  b.lazy = true;  // nobody waits: it shares the next commit someone does wait for
  broker_.store->Commit(std::move(b), nullptr);
}

void Session::TakeAndSend() {
  // Credit bounds the count; this bounds the bytes waiting for the socket
  // (large messages times a large credit would otherwise overflow
  // max_queued_bytes and cut the session). Acks resume the pump.
  const uint64_t byte_budget = broker_.config.limits.max_queued_bytes / 2;
  // A take-over waits for the deliveries its predecessor gives back; a
  // delivery that could not be made waits for its retry (taking it again
  // at once would spin this thread and flood the log).
  if (awaiting_predecessor_) return;
  if (held_until_ != net::Clock::time_point{}) {
    if (net::Clock::now() < held_until_) return;
    held_until_ = {};
  }
  // Credit counts the deliveries the recipient has not acknowledged; those
  // it has acknowledged are only waiting for their commit here.
  while (receiving_ && !stream_.closing() && unacked_.size() - acking_ < credit_ &&
         stream_.queued_bytes() < byte_budget) {
    auto batch = broker_.mailboxes.Take(agency_, credit_ - (unacked_.size() - acking_));
    if (batch.empty()) return;
    std::vector<QueuedDelivery> give_back;
    bool held = false;
    for (auto& d : batch) {
      if (held || !receiving_ || stream_.closing() || stream_.queued_bytes() >= byte_budget) {
        give_back.push_back(std::move(d));
      } else if (SendDelivery(std::move(d)) == Sent::kHeld) {
        held = true;  // what follows it waits too: the agency's order is kept
      }
    }
    if (held) held_until_ = net::Clock::now() + kHeldRetry;
    if (!give_back.empty()) broker_.mailboxes.Return(std::move(give_back));
    if (held) return;
  }
}

namespace {

std::string Join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
  return out;
}

}  // namespace

std::optional<policy::OriginalMessage> LookupOriginal(const Store& store, const std::string& forwarder,
                                                      const std::string& original_id, Store::Wait wait) {
  auto found = store.FindDelivered(forwarder, original_id, wait);
  if (!found.ok() || !found->has_value()) found = store.FindMessage(forwarder, original_id, wait);
  if (!found.ok()) {
    spdlog::error("store: cannot look up forwarded message {}: {}", original_id, found.status().message());
    return std::nullopt;
  }
  if (!found->has_value()) return std::nullopt;
  const StoredMessage& m = **found;
  policy::OriginalMessage o;
  o.sender = m.sender;
  o.recipients = SplitAgencies(m.recipients);
  o.tlp = m.tlp;
  o.agreement = m.agreement;
  return o;
}

void Session::HoldAndGiveBack(std::vector<QueuedDelivery> back) {
  held_until_ = net::Clock::now() + kHeldRetry;
  broker_.mailboxes.Return(std::move(back));
}

void Session::SubmitSettled(QueueChange& c, const QueuedDelivery& d) {
  c.CallerGivesBackOnFailure();
  c.Submit([self = shared_from_this(), d](const Status& s, const audit::Checkpoint&) {
    if (s.ok()) return;
    boost::asio::post(self->stream_.strand(), [self, d] { self->HoldAndGiveBack({d}); });
  });
}

Session::Sent Session::RefuseCopy(const QueuedDelivery& d, std::string decision, std::string rules,
                                  std::string policy_version, std::string record_detail, v1::Reason reason,
                                  const std::string& sender_detail) {
  QueueChange c(broker_);
  audit::Record r = CopyRecord("not_delivered", *d.message, agency_);
  r.actor = agency_;
  r.cert_sha256 = identity_.cert_sha256;
  r.decision = std::move(decision);
  r.rules = std::move(rules);
  r.policy_version = std::move(policy_version);
  r.detail = std::move(record_detail);
  c.batch.records.push_back(std::move(r));
  c.Finish(d, DeliveryState::kRefused, v1::OUTCOME_REFUSED, reason, sender_detail, true);
  SubmitSettled(c, d);
  return Sent::kSettled;
}

Session::Sent Session::SendDelivery(QueuedDelivery d) {
  InFlight inflight;
  std::shared_ptr<const std::string> wire;  // the message, serialized, as it goes out
  if (d.kind == DeliveryKind::kMessage) {
    QueuedMessage& m = *d.message;
    if (auto recalled = broker_.mailboxes.Recalled(m)) {
      QueueChange c(broker_);
      audit::Record r = CopyRecord("recalled", m, agency_);
      r.actor = m.sender;
      r.cert_sha256 = recalled->cert_sha256;
      r.decision = "recalled";
      r.detail = "withdrawn before delivery: " + recalled->reason;
      c.batch.records.push_back(std::move(r));
      c.Finish(d, DeliveryState::kRecalled, v1::OUTCOME_RECALLED, v1::REASON_RECALLED, recalled->reason, false);
      AddRecallNoticeForUnacknowledged(c, d, recalled->reason, recalled->cert_sha256);
      SubmitSettled(c, d);
      return Sent::kSettled;
    }
    // Expired since the last expiry pass (expiry.cpp) took the waiting ones.
    if (m.expires_ms <= NowMs()) {
      QueueChange c(broker_);
      ExpireCopy(c, d);
      SubmitSettled(c, d);
      return Sent::kSettled;
    }
    const auto policy = broker_.policy();
    const std::string& type = m.facts.message_type;
    policy::Request q = RequestFor(m.facts, m.sender);
    q.recipient = agency_;
    q.named_individually = d.named;
    std::optional<policy::OriginalMessage> original;
    if (q.is_forward) {
      // Found at publish; looked up again only for a message queued before
      // a restart (blocking this thread until the applier has run: rare).
      original = m.original ? m.original : LookupOriginal(*broker_.store, m.sender, m.facts.forwarded_from);
      if (original) q.original = &*original;
    }
    const policy::Decision decision = policy->Evaluate(q);
    const std::string rules = Join(policy->RuleIds(decision));
    if (!decision.permit) {
      const std::string reason = policy->Reasons(decision, q).front();
      spdlog::info("{}: {} {} from {}: no longer permitted at delivery: {} (policy {})", tag_, type, m.message_id,
                   m.sender, reason, policy->version().substr(0, 12));
      // A copy sent before (attempts > 0: given back by a session that
      // ended without acknowledging it, the policy changing meanwhile) may
      // be with its recipient all the same (an agent stores a message
      // before it acknowledges it): the sender and the record say so, as
      // an expiry's do (ExpireCopy), not that it was never shared.
      const bool sent = d.attempts > 0;
      std::string detail = "re-checked at delivery: " + reason;
      if (sent) {
        detail +=
            "; attempts=" + std::to_string(d.attempts) + "; sent but never acknowledged: the recipient may have it";
      }
      return RefuseCopy(
          d, "deny", rules, policy->version(), std::move(detail), v1::REASON_NOT_PERMITTED,
          "the network's policy no longer permits sharing this message with '" + agency_ + "'" +
              (sent ? "; it was " + SentUnacknowledged(d) + " before, so the recipient may have it" : ""));
    }
    const auto obligations = policy->SharedObligationsOf(decision);
    const std::string& agreement = policy->agreements()[decision.agreement].id;
    if (obligations->empty()) {
      // The recipient gets the message as stored: its bytes go into the
      // frame as they are (no copy of the message, no re-serialization),
      // with their digest, the same for every such recipient.
      wire = m.wire;
      inflight.body_hmac = m.WireDigest(*broker_.store);
    } else {
      // A redacted copy, made from the stored bytes (policy/redact.h).
      Result<policy::PseudonymKey> key = Status::NotFound("no pseudonymisation asked");
      if (!obligations->pseudonymise_categories.empty() || !obligations->pseudonymise_paths.empty()) {
        key = broker_.keys->Current(agreement);
      }
      auto copy = policy::RedactCopy(*m.wire, *obligations, key.ok() ? &key.value() : nullptr);
      if (!copy.ok()) {
        // The copy cannot be made safe: keep it queued and say so loudly.
        spdlog::error("{}: {} from {}: cannot apply obligations, keeping it queued: {}", tag_, m.message_id, m.sender,
                      copy.status().message());
        broker_.mailboxes.Return({std::move(d)});
        return Sent::kHeld;
      }
      // Pseudonyms are longer than most values they replace: a message that
      // fitted a frame may make a copy that does not. It could never be
      // sent, so it is refused for this recipient, not retried for ever.
      if (const size_t limit = broker_.config.limits.max_frame_bytes; copy->wire.size() + kDeliverOverhead > limit) {
        spdlog::warn(
            "{}: {} {} from {}: its copy with the obligations applied is {} bytes, too large for a frame "
            "({} bytes); refused for this recipient",
            tag_, type, m.message_id, m.sender, copy->wire.size(), limit);
        const std::string why = "the copy for '" + agency_ + "', with its obligations applied, is " +
                                std::to_string(copy->wire.size()) + " bytes, over the limit of " +
                                std::to_string(limit) + " bytes a frame";
        return RefuseCopy(d, "refused:too_large", rules, policy->version(), why, v1::REASON_INVALID_MESSAGE, why);
      }
      std::string pseud;
      for (const auto& p : copy->report.redacted_paths) {
        inflight.obligations += (inflight.obligations.empty() ? "redacted:" : ",") + p;
      }
      for (const auto& p : copy->report.pseudonymised_paths) pseud += (pseud.empty() ? "" : ",") + p;
      if (!pseud.empty()) {
        inflight.obligations += (inflight.obligations.empty() ? "" : ";") + std::string("pseudonymised:") + pseud +
                                " (key v" + std::to_string(key->version) + ")";
      }
      wire = std::make_shared<const std::string>(std::move(copy->wire));
      inflight.body_hmac = broker_.store->BodyDigest(*wire);  // this recipient's own bytes
    }
    inflight.rules = rules;
    inflight.policy_version = policy->version();
  }
  d.attempts++;
  sent_attempts_.emplace_back(d.id, d.attempts);
  inflight.sent_at = net::Clock::now();
  const int64_t id = d.id;
  const uint32_t attempt = d.attempts;
  const DeliveryKind kind = d.kind;
  const std::shared_ptr<const std::string> payload = d.payload;
  inflight.d = std::move(d);
  unacked_.emplace(id, std::move(inflight));
  if (wire) {
    // A message (every one has its bytes by now), encoded straight into the
    // outgoing queue: its bytes are copied once on their way out.
    SendDone(stream_.SendAppended([&](std::string* queue) {
      return proto::AppendDeliverFrame(queue, static_cast<uint64_t>(id), attempt, *wire,
                                       broker_.config.limits.max_frame_bytes);
    }));
    return Sent::kSent;
  }
  // A recall notice or a delivery report, kept serialized.
  v1::Frame f;
  auto* del = f.mutable_deliver();
  del->set_delivery_id(static_cast<uint64_t>(id));
  del->set_attempt(attempt);
  if (kind == DeliveryKind::kRecallNotice) {
    del->mutable_recall()->ParseFromString(*payload);
  } else {
    del->mutable_report()->ParseFromString(*payload);
  }
  Send(f);
  return Sent::kSent;
}

void Session::HandleDeliveryAck(const v1::DeliveryAck& ack) {
  if (!receiving_) {
    SendError(0, v1::REASON_NOT_RECEIVING, "this session does not receive deliveries", false);
    return;
  }
  auto it = unacked_.find(static_cast<int64_t>(ack.delivery_id()));
  if (it == unacked_.end() || it->second.d.attempts != ack.attempt()) {
    broker_.stats.protocol_errors++;
    SendError(0, v1::REASON_UNKNOWN_DELIVERY,
              "delivery " + std::to_string(ack.delivery_id()) + " attempt " + std::to_string(ack.attempt()) +
                  " is not in flight on this session",
              false);
    return;
  }
  InFlight& f = it->second;
  if (f.acking) return;  // a repeated ack
  f.acking = true;
  acking_++;
  const QueuedDelivery& d = f.d;
  if (!acks_) {
    acks_.emplace(broker_);
    if (!ack_flush_posted_) {
      ack_flush_posted_ = true;
      boost::asio::post(stream_.strand(), [self = shared_from_this()] {
        self->ack_flush_posted_ = false;
        self->FlushAcks();
      });
    }
  }
  QueueChange& c = *acks_;
  if (d.kind == DeliveryKind::kMessage) {
    // Either a recall sees this acknowledgement (in the store, or as one
    // still acking), or this sees the recall.
    const std::optional<RecallFacts> recalled = broker_.mailboxes.Acknowledged(*d.message, agency_);
    if (!recalled) acked_messages_.push_back(d.message);
    audit::Record r = CopyRecord("delivered", *d.message, agency_);
    r.actor = agency_;
    r.cert_sha256 = identity_.cert_sha256;
    r.decision = "delivered";
    // The delivery's facts are needed only for this record (f.acking keeps
    // a repeated ack from coming here again).
    r.rules = std::move(f.rules);
    r.policy_version = std::move(f.policy_version);
    r.obligations = std::move(f.obligations);
    r.body_hmac = std::move(f.body_hmac);
    r.detail = "attempt=" + std::to_string(d.attempts);
    c.batch.records.push_back(std::move(r));
    c.Finish(d, DeliveryState::kDelivered, v1::OUTCOME_DELIVERED, v1::REASON_UNSPECIFIED, "", false);
    // Recalled while in flight: the recipient has it now, so it is told,
    // with the sender's reason, and the recall's record for this recipient
    // is written, as it is for one that had it before the recall.
    if (recalled) {
      c.NotifyRecall(d.message, agency_, recalled->reason, recalled->cert_sha256, "acknowledged after the recall");
    }
  } else {
    if (d.kind == DeliveryKind::kRecallNotice) {
      audit::Record r = CopyRecord("recall_notice_delivered", *d.message, agency_);
      r.actor = agency_;
      r.cert_sha256 = identity_.cert_sha256;
      r.decision = "delivered";
      c.batch.records.push_back(std::move(r));
    }
    c.Finish(d, DeliveryState::kDelivered, v1::OUTCOME_DELIVERED, v1::REASON_UNSPECIFIED, "", false);
  }
  // The credit is given back now; the commit follows (FlushAcks).
  if (c.batch.finished.size() >= kMaxAcksPerCommit) FlushAcks();
  PumpDeliveries();
}

void Session::FlushAcks() {
  if (!acks_) return;
  QueueChange c = std::move(*acks_);
  acks_.reset();
  std::vector<int64_t> ids;
  for (const auto& [id, state] : c.batch.finished) ids.push_back(id);
  // Nobody waits for this commit (a crash before it only means the copies
  // are delivered again, and the recipient drops them by message id), so
  // it may share the next publish's commit.
  c.batch.lazy = true;
  // On failure AckCommitted gives them back, once they are no longer in
  // flight here.
  c.CallerGivesBackOnFailure();
  c.Submit([self = shared_from_this(), ids = std::move(ids)](const Status& s, const audit::Checkpoint&) mutable {
    boost::asio::post(self->stream_.strand(),
                      [self, ids = std::move(ids), s] { self->AckCommitted(ids, s); });
  });
  // Queued to the store: a recall that waits for the store from now on
  // finds them there.
  broker_.mailboxes.AcksSubmitted(acked_messages_, agency_);
  acked_messages_.clear();
}

void Session::AckCommitted(const std::vector<int64_t>& ids, const Status& s) {
  // Either way they are no longer in flight here. On failure they go back
  // to the mailbox (they are still pending in the store), now that they
  // have left unacked_, and will be sent again: on this session, under a
  // new attempt after a pause, or on the agency's next one.
  std::vector<QueuedDelivery> back;
  for (int64_t id : ids) {
    auto it = unacked_.find(id);
    if (it == unacked_.end()) continue;
    if (!s.ok()) back.push_back(std::move(it->second.d));
    unacked_.erase(it);
    acking_--;
  }
  // After a pause: a recipient that acknowledges at once would otherwise
  // be sent them again and again, each acknowledgement a failed commit.
  if (!back.empty()) HoldAndGiveBack(std::move(back));
  if (s.ok()) {
    broker_.stats.deliveries_acked += ids.size();
  } else {
    spdlog::error("{}: acknowledgement of {} deliver{} ({} to {}) could not be recorded; they will be delivered again: {}",
                  tag_, ids.size(), ids.size() == 1 ? "y" : "ies", ids.front(), ids.back(), s.message());
  }
  PumpDeliveries();
}

void Session::ReturnDeliveries() {
  // Their attempt counts went to the store at each send (CommitAttempts).
  std::vector<QueuedDelivery> back;
  for (auto it = unacked_.begin(); it != unacked_.end();) {
    if (it->second.acking) {
      ++it;  // settled by its commit
      continue;
    }
    back.push_back(std::move(it->second.d));
    it = unacked_.erase(it);
  }
  if (back.empty()) return;
  spdlog::info("{}: {} unacknowledged deliver{} go back to the queue", tag_, back.size(),
               back.size() == 1 ? "y" : "ies");
  broker_.mailboxes.Return(std::move(back));
}

}  // namespace liaison::broker
