// Recall: the sender withdraws a message. Copies still waiting are removed
// (audited as recalled, reported to the sender if it asked for reports);
// recipients who already acknowledged it get a recall notice (their daemon
// moves it aside). Copies in flight at that moment are settled by their
// session: acknowledged ones get a notice, returned ones are withdrawn. A
// withdrawn copy that was sent before and never acknowledged gets a notice
// too: its recipient may have stored it and lost the acknowledgement.
// A second recall of the same message changes nothing and says so. The
// message id is taken in any form a publish takes (NormalizeUuid: upper
// case too) and used, answered and audited in its canonical form, the form
// publish stored it under.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <optional>

#include "broker/detail/broker_state.h"
#include "broker/detail/session.h"
#include "common/uuid.h"
#include "proto/frame_codec.h"

namespace liaison::broker {
namespace {

// The recalled message's id in canonical form, for a recall HandleRecall
// accepts; nothing otherwise.
std::optional<std::string> ValidRecallId(const v1::Recall& recall) {
  if (recall.reason().size() > 1000) return std::nullopt;
  auto id = NormalizeUuid(recall.message_id());
  if (!id.ok()) return std::nullopt;
  return std::move(id).value();
}

std::string RecallReason(const v1::Recall& recall) {
  return recall.reason().empty() ? "recalled by the sender" : Printable(recall.reason(), 1000);
}

}  // namespace

void Session::PrepareRecall(const v1::Recall& recall) {
  recall_marked_.reset();
  recall_marked_newly_ = false;
  recall_acking_.clear();
  if (phase_ != Phase::kReady || draining_ || broker_.draining) return;
  const std::optional<std::string> id = ValidRecallId(recall);
  if (!id) return;
  // Only while copies of it are unfinished (or being acknowledged) is there
  // anything to mark; otherwise the store knows everything about it.
  auto m = broker_.mailboxes.Find(agency_, *id);
  if (!m) return;
  recall_acking_ =
      broker_.mailboxes.MarkRecalled(*m, RecallFacts{RecallReason(recall), identity_.cert_sha256}, &recall_marked_newly_);
  recall_marked_ = std::move(m);
}

void Session::HandleRecall(const v1::Recall& recall) {
  const uint64_t rid = recall.request_id();
  // PrepareRecall's, for this recall only.
  std::shared_ptr<QueuedMessage> marked = std::move(recall_marked_);
  // The message this recall marked (it was not marked before): a recall
  // refused below takes the mark back, so that the message is delivered as
  // the store has it, not recalled.
  std::shared_ptr<QueuedMessage> unmark = recall_marked_newly_ ? marked : nullptr;
  std::vector<std::string> acking = std::move(recall_acking_);
  recall_marked_.reset();
  recall_marked_newly_ = false;
  recall_acking_.clear();
  auto refuse = [&](v1::Reason code, const std::string& text) {
    if (unmark) broker_.mailboxes.UnmarkRecalled(*unmark);
    SendError(rid, code, text, false);
  };
  if (recall.message_id().empty()) {
    SendError(rid, v1::REASON_INVALID_MESSAGE, "Recall needs the message id", false);
    return;
  }
  // In the form publish stored it under.
  const Result<std::string> canonical = NormalizeUuid(recall.message_id());
  if (!canonical.ok()) {
    SendError(rid, v1::REASON_INVALID_MESSAGE,
              "Recall.message_id '" + Printable(recall.message_id(), 128) + "': " + canonical.status().message(),
              false);
    return;
  }
  const std::string& id = *canonical;
  if (recall.reason().size() > 1000) {
    SendError(rid, v1::REASON_INVALID_MESSAGE, "the recall reason is longer than 1000 bytes", false);
    return;
  }
  if (draining_ || broker_.draining) {
    refuse(v1::REASON_SHUTTING_DOWN, "the broker is shutting down; recall again after it restarts");
    return;
  }
  // Run waited for the applier before dispatching this frame.
  if (!store_applied_.ok()) {
    refuse(v1::REASON_STORE_FAILURE, "the broker cannot write its store, recall again later: " + store_applied_.message());
    return;
  }
  auto stored = broker_.store->FindMessage(agency_, id, Store::Wait::kNo);
  if (!stored.ok()) {
    refuse(v1::REASON_STORE_FAILURE, "the broker cannot read its store: " + stored.status().message());
    return;
  }
  // The queue may hold a message the reader's snapshot does not show yet
  // (just committed): the in-memory queue is asked first.
  std::shared_ptr<QueuedMessage> m = marked ? marked : broker_.mailboxes.Find(agency_, id);
  if (!m && !stored->has_value()) {
    SendError(rid, v1::REASON_UNKNOWN_MESSAGE, "this agency published no message with id '" + id + "'", false);
    return;
  }
  const bool already = stored->has_value() && (*stored)->recalled_ms != 0;
  if (!m) {
    const StoredMessage& s = **stored;
    m = std::make_shared<QueuedMessage>();
    m->row = s.row;
    m->sender = s.sender;
    m->message_id = s.message_id;
    m->expires_ms = s.expires_ms;
    m->received_ms = s.received_ms;
    m->want_reports = s.want_reports;
    m->recalled = true;
    // For the records of the recall (the body may be gone; its routing
    // metadata is kept).
    m->facts.message_type = s.message_type;
    m->facts.case_id = s.case_id;
    m->facts.purpose = s.purpose;
    m->facts.tlp = s.tlp;
  }
  const std::string reason = RecallReason(recall);
  bool newly = false;  // never for one made from the store (marked above)
  std::vector<QueuedDelivery> withdrawn =
      broker_.mailboxes.Recall(*m, RecallFacts{reason, identity_.cert_sha256}, &newly);
  if (newly) unmark = m;
  auto delivered = broker_.store->DeliveredRecipients(m->row, Store::Wait::kNo);
  if (!delivered.ok()) {
    // Unmarked before the copies are back in the queue: none is settled by
    // this recall.
    refuse(v1::REASON_STORE_FAILURE, "the broker cannot read its store: " + delivered.status().message());
    broker_.mailboxes.Return(std::move(withdrawn));
    return;
  }

  QueueChange c(broker_);
  if (unmark) c.UnmarkRecallOnFailure(unmark);
  v1::Frame f;
  auto* ack = f.mutable_recall_ack();
  ack->set_request_id(rid);
  ack->set_message_id(id);
  for (const auto& d : withdrawn) {
    audit::Record r = CopyRecord("recalled", *m, d.recipient);
    r.actor = agency_;
    r.cert_sha256 = identity_.cert_sha256;
    r.decision = "recalled";
    r.detail = "withdrawn before delivery: " + reason;
    c.batch.records.push_back(std::move(r));
    c.Finish(d, DeliveryState::kRecalled, v1::OUTCOME_RECALLED, v1::REASON_RECALLED, reason, false);
    ack->add_withdrawn(d.recipient);
    // Sent before and never acknowledged: the recipient may have it all
    // the same (an agent stores before it acknowledges), so it is told.
    if (AddRecallNoticeForUnacknowledged(c, d, reason, identity_.cert_sha256)) ack->add_notified(d.recipient);
  }
  // Recalled before: its notices went out then (and copies in flight at
  // that moment were settled by their sessions). Otherwise those whose
  // acknowledgement the store did not have yet when this recall marked the
  // message have it too.
  if (already) {
    delivered->clear();
  } else {
    for (auto& recipient : acking) {
      if (std::find(delivered->begin(), delivered->end(), recipient) == delivered->end()) {
        delivered->push_back(std::move(recipient));
      }
    }
  }
  for (const auto& recipient : *delivered) {
    if (c.NotifyRecall(m, recipient, reason, identity_.cert_sha256, "already delivered")) {
      ack->add_notified(recipient);
    }
  }
  if (!already) c.batch.recalled_row = m->row;
  spdlog::info("{}: recalled {}: {} copies withdrawn, {} recipients notified{}", tag_, id, ack->withdrawn_size(),
               ack->notified_size(), already ? " (recalled before)" : "");
  ++in_flight_publishes_;
  broker_.in_flight_publishes++;
  BrokerState& broker = broker_;
  c.Submit([&broker, self = shared_from_this(), f = std::move(f), rid](const Status& s,
                                                                       const audit::Checkpoint&) mutable {
    v1::Frame out;
    if (s.ok()) {
      out = std::move(f);
    } else {
      auto* e = out.mutable_error();
      e->set_request_id(rid);
      e->set_code(v1::REASON_STORE_FAILURE);
      e->set_message("the recall could not be recorded, so nothing was withdrawn; recall again: " + s.message());
    }
    auto encoded = proto::EncodeFrame(out);
    broker.in_flight_publishes--;
    self->SendPublishAck(encoded.ok() ? std::move(encoded).value() : std::string());
  });
}

}  // namespace liaison::broker
