// Publish: validate, bind the sender to the session's agency, expand groups,
// ask the policy for every recipient, and store the message with one
// pending delivery per permitted recipient in the same transaction as the
// audit records of those decisions. The PublishAck ("queued" or "refused"
// per recipient) goes out only once that transaction is durable; delivery
// happens from the queue (handle_delivery_ack.cpp). Publishing is
// idempotent on (sender, message id), except that a publish queued for
// nobody and refused as queue_full for some recipient is not remembered:
// a full queue passes, and its repeat is decided afresh. Rule ids and
// reasons stay in the audit log; the sender learns only a reason code.
#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include "broker/detail/broker_state.h"
#include "common/sha256.h"
#include "proto/frame_codec.h"
#include "broker/detail/session.h"
#include "policy/redact.h"
#include "proto/validate.h"

namespace liaison::broker {
namespace {

struct Target {
  std::string agency;
  bool named = true;  // named in the envelope, not reached through a group
};

// Envelope recipients as agencies: groups expanded (never back to the
// sender), duplicates removed, unknown references kept for refusal.
std::vector<Target> ExpandRecipients(const policy::Policy& policy, const v1::Envelope& env) {
  std::vector<Target> out;
  auto add = [&](const std::string& agency, bool named) {
    for (auto& t : out) {
      if (t.agency == agency) {
        t.named = t.named || named;
        return;
      }
    }
    out.push_back({agency, named});
  };
  for (const auto& ref : env.recipients()) {
    if (ref.rfind("group:", 0) != 0) {
      add(ref, true);
      continue;
    }
    auto members = policy.ExpandRecipient(ref);
    if (!members.ok()) {
      add(ref, true);  // refused below as unknown
      continue;
    }
    for (const auto& m : *members) {
      if (m != env.sender()) add(m, false);
    }
  }
  return out;
}

// The message as the client sent it, validated, before stamping, serialized,
// in two parts: the validated envelope's field, then the rest of the bytes
// it arrived as, when validation found them exactly as serializing would
// write them (the usual case, and cheaper: the body is neither serialized
// nor copied); else the message serialized again, all of it in head. The
// same bytes either way. A message whose body was not parsed (body_parsed
// false) has only its bytes to be serialized from.
struct Unstamped {
  std::string head;
  std::string_view rest;
  bool whole = false;  // head is all of it
  // Serialized bytes that begin with an envelope field: for WithEnvelope.
  std::string_view with_any_envelope(std::string_view wire) const { return whole ? head : wire; }
};

Result<Unstamped> MakeUnstamped(const v1::Message& message, std::string_view wire, bool body_as_serialized,
                                bool body_parsed) {
  Unstamped u;
  if (body_as_serialized) {
    const auto rest = proto::AfterEnvelope(wire);
    if (rest.ok()) {
      proto::AppendEnvelopeField(&u.head, message.envelope());
      u.rest = *rest;
      return u;
    }
    if (!body_parsed) return rest.status();
  }
  u.head = message.SerializeAsString();
  u.whole = true;
  return u;
}

// The digest a publish is known by (StoredMessage::publish_digest): of the
// message as the client sent it, validated, before stamping.
std::string PublishDigest(const Unstamped& u) {
  const crypto::Digest d = crypto::Sha256(u.head, u.rest);
  return std::string(d.begin(), d.end());
}

// A checkpoint serialized, as every PublishAck carries it: the acks of one
// group commit share it, so the last one is kept (per thread: the store's
// callbacks run on its own).
const std::string& CheckpointBytes(const audit::Checkpoint& cp) {
  thread_local audit::Checkpoint last;
  thread_local std::string bytes;
  if (bytes.empty() || cp.tree_size != last.tree_size || cp.time_ms != last.time_ms || cp.root != last.root ||
      cp.signature != last.signature || cp.origin != last.origin || cp.key_id != last.key_id) {
    v1::Checkpoint c;
    ToProto(cp, &c);
    bytes = c.SerializeAsString();
    last = cp;
  }
  return bytes;
}

// The answer to a publish the store did not simply queue: refused for all
// it was to be queued for when the store failed; the original outcome for a
// repeat of a message, or an error when the id was used for another.
Result<std::string> EncodeRareAnswer(const Status& s, const BatchResult& result, uint64_t rid,
                                     const std::string& stored_ack, const std::string& digest,
                                     const audit::Checkpoint& cp) {
  v1::Frame f;
  v1::PublishAck* ack = f.mutable_publish_ack();
  if (!s.ok()) {
    ack->ParseFromString(stored_ack);
    for (auto& o : *ack->mutable_outcomes()) {
      if (o.outcome() != v1::OUTCOME_QUEUED) continue;
      o.set_outcome(v1::OUTCOME_REFUSED);
      o.set_reason(v1::REASON_STORE_FAILURE);
      o.set_detail("the broker could not store this message, so nothing was queued: " + s.message());
    }
  } else if (result.original.publish_digest != digest) {
    v1::PublishAck mine;
    mine.ParseFromString(stored_ack);
    auto* e = f.mutable_error();
    e->set_request_id(rid);
    e->set_code(v1::REASON_DUPLICATE_MESSAGE_ID);
    e->set_message("message id '" + mine.message_id() +
                   "' was already used by this agency for a different message; give each message its own id");
    return proto::EncodeFrame(f);
  } else {
    ack->ParseFromString(result.original.ack);
    ack->set_duplicate(true);
  }
  ack->set_request_id(rid);
  ToProto(cp, ack->mutable_checkpoint());
  return proto::EncodeFrame(f);
}

}  // namespace

bool Session::IsExpiredPublish(const v1::Publish& publish) {
  if (!publish.message().envelope().has_expires_at()) return false;
  const int64_t now_s =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  // A second's margin: validation, a moment later, must not find it expired
  // when this did not.
  return publish.message().envelope().expires_at().seconds() <= now_s + 1;
}

bool Session::AnswerExpiredRepeat(uint64_t rid, v1::Message* message, std::string_view wire) {
  // Invalid only because it has expired since?
  if (!message->envelope().has_expires_at()) return false;
  const proto::MessageLimits ml = PublishLimits();
  const bool body_parsed = vouched_.type.empty();
  bool as_serialized = !body_parsed;
  const auto any_time = std::chrono::system_clock::time_point::min();
  if (!(body_parsed ? proto::ValidateForPublish(message, ml, any_time, wire, &as_serialized)
                    : proto::ValidateVouchedPublish(message, ml, any_time))
           .ok()) {
    return false;
  }
  const v1::Envelope& env = message->envelope();
  if (!env.sender().empty() && env.sender() != agency_) return false;
  // Run waited for the applier before dispatching this frame (IsExpiredPublish).
  if (!store_applied_.ok()) {
    SendError(rid, v1::REASON_STORE_FAILURE,
              "the broker cannot read its store to look for an earlier publish of this message, publish again later: " +
                  store_applied_.message(),
              false);
    return true;
  }
  auto stored = broker_.store->FindMessage(agency_, env.message_id(), Store::Wait::kNo);
  if (!stored.ok()) {
    SendError(rid, v1::REASON_STORE_FAILURE, "the broker cannot read its store: " + stored.status().message(), false);
    return true;
  }
  const auto unstamped = MakeUnstamped(*message, wire, as_serialized, body_parsed);
  if (!unstamped.ok() || !stored->has_value() || (*stored)->publish_digest != PublishDigest(*unstamped)) return false;
  // The broker has it: the repeat gets the original outcome, as a repeat
  // before the expiry does.
  broker_.stats.publishes++;
  v1::Frame f;
  v1::PublishAck* ack = f.mutable_publish_ack();
  if (!ack->ParseFromString((*stored)->ack)) return false;
  ack->set_duplicate(true);
  ack->set_request_id(rid);
  ToProto(broker_.store->latest(), ack->mutable_checkpoint());
  Send(f);
  return true;
}

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
  if (!broker_.admission.TakePublish(agency_)) {
    SendError(rid, v1::REASON_RATE_LIMITED,
              "agency '" + agency_ + "' publishes faster than this broker allows (" +
                  std::to_string(l.publish_rate_per_agency) + " per second); slow down and publish again",
              false);
    return;
  }
  if (const size_t bytes = stream_.last_frame().size(); !broker_.admission.TakePublishBytes(agency_, bytes)) {
    SendError(rid, v1::REASON_RATE_LIMITED,
              "agency '" + agency_ + "' publishes more bytes than this broker allows (" +
                  std::to_string(l.publish_bytes_per_agency) + " a second); slow down and publish again",
              false);
    return;
  }
  if (!publish.has_message()) {
    SendError(rid, v1::REASON_INVALID_MESSAGE, "Publish carries no message", false);
    return;
  }
  // In the frame's arena: what the queue keeps is taken out of it below.
  v1::Message* message = publish.mutable_message();
  const proto::MessageLimits ml = PublishLimits();
  // The message's bytes as they arrived: its body is checked on them (or
  // was, when ParseFrame left it unparsed).
  const std::string_view wire = proto::PublishedMessage(stream_.last_frame());
  const bool body_parsed = vouched_.type.empty();
  bool as_serialized = !body_parsed;
  if (Status s = body_parsed
                     ? proto::ValidateForPublish(message, ml, std::chrono::system_clock::now(), wire, &as_serialized)
                     : proto::ValidateVouchedPublish(message, ml, std::chrono::system_clock::now());
      !s.ok()) {
    if (!AnswerExpiredRepeat(rid, message, wire)) SendError(rid, v1::REASON_INVALID_MESSAGE, s.message(), false);
    return;
  }
  v1::Envelope* env = message->mutable_envelope();
  // Identity comes from the certificate, never from the message.
  if (!env->sender().empty() && env->sender() != agency_) {
    spdlog::warn("{}: publish {} refused: envelope names sender '{}'", tag_, env->message_id(),
                 Printable(env->sender(), 64));
    audit::Record r = MakeRecord("sender_mismatch");
    r.actor = agency_;
    r.cert_sha256 = identity_.cert_sha256;
    r.message_id = env->message_id();
    r.sender = Printable(env->sender(), 64);
    r.decision = "refused:sender_mismatch";
    r.detail = "the envelope names another agency as sender";
    broker_.store->Append({std::move(r)}, nullptr);
    SendError(rid, v1::REASON_SENDER_MISMATCH,
              "envelope.sender '" + env->sender() + "' is not this session's agency '" + agency_ + "'", false);
    return;
  }
  // Idempotency: the message as the client sent it, before stamping.
  const auto unstamped = MakeUnstamped(*message, wire, as_serialized, body_parsed);
  if (!unstamped.ok()) {  // not reached: validation vouched for the bytes
    SendError(rid, v1::REASON_INVALID_MESSAGE, unstamped.status().message(), false);
    return;
  }
  std::string digest = PublishDigest(*unstamped);
  env->set_sender(agency_);
  *env->mutable_received_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
  // The stamped message as it is stored and delivered: only the envelope
  // changed, so only the envelope is serialized again.
  auto stamped = proto::WithEnvelope(unstamped->with_any_envelope(wire), *env);
  if (!stamped.ok()) {  // not reached: these bytes begin with an envelope
    SendError(rid, v1::REASON_INVALID_MESSAGE, stamped.status().message(), false);
    return;
  }
  // Stamping made it larger: it must still fit every recipient's Deliver frame.
  if (stamped->size() + kDeliverOverhead > l.max_frame_bytes) {
    SendError(rid, v1::REASON_INVALID_MESSAGE,
              "the message is too large to deliver (limit " + std::to_string(l.max_frame_bytes) + " bytes per frame)",
              false);
    return;
  }
  const auto policy = broker_.policy();
  const std::vector<Target> targets = ExpandRecipients(*policy, *env);
  if (targets.size() > l.max_recipients) {
    SendError(rid, v1::REASON_INVALID_MESSAGE,
              "the recipients expand to " + std::to_string(targets.size()) + " agencies (maximum " +
                  std::to_string(l.max_recipients) + ")",
              false);
    return;
  }
  broker_.stats.publishes++;

  // What the queue keeps of the message besides its bytes, and the policy
  // question, asked from it here as at each delivery.
  auto queued = std::make_shared<QueuedMessage>();
  queued->facts = FactsOf(*message, vouched_);
  const std::string& type = queued->facts.message_type;
  policy::Request q = RequestFor(queued->facts, agency_);
  std::optional<policy::OriginalMessage> original;
  if (q.is_forward) {
    // Run waited for the applier before dispatching this frame.
    if (!store_applied_.ok()) {
      SendError(rid, v1::REASON_STORE_FAILURE,
                "the broker cannot write its store to check the forwarded message, publish again later: " +
                    store_applied_.message(),
                false);
      return;
    }
    original = LookupOriginal(*broker_.store, agency_, env->forwarded_from(), Store::Wait::kNo);
    if (original) q.original = &*original;
  }

  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  queued->row = broker_.store->NextMessageRow();
  queued->sender = agency_;
  queued->message_id = env->message_id();
  queued->expires_ms = now_ms + l.max_retention.count();
  if (env->has_expires_at()) {
    queued->expires_ms = std::min<int64_t>(
        queued->expires_ms, google::protobuf::util::TimeUtil::TimestampToMilliseconds(env->expires_at()));
  }
  queued->want_reports = publish.want_reports();
  queued->original = original;

  v1::PublishAck ack;
  ack.set_message_id(env->message_id());
  *ack.mutable_accepted_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
  Batch batch;
  std::vector<QueuedDelivery> copies;
  std::string queued_to, agreement_used;
  bool queue_full = false;  // refused as queue_full for some recipient
  auto record = [&](const std::string& recipient, std::string event, std::string decision) -> audit::Record& {
    audit::Record r = MakeRecord(std::move(event));
    r.actor = agency_;
    r.cert_sha256 = identity_.cert_sha256;
    r.message_id = env->message_id();
    r.case_id = env->case_id();
    r.sender = agency_;
    r.recipient = recipient;
    r.message_type = type;
    r.tlp = env->tlp();
    r.purpose = env->purpose();
    r.decision = std::move(decision);
    r.policy_version = policy->version();
    batch.records.push_back(std::move(r));
    return batch.records.back();
  };
  for (const Target& t : targets) {
    const std::string& recipient = t.agency;
    v1::RecipientOutcome* out = ack.add_outcomes();
    out->set_recipient(recipient);
    auto refuse = [&](v1::Reason reason, std::string detail) {
      out->set_outcome(v1::OUTCOME_REFUSED);
      out->set_reason(reason);
      out->set_detail(std::move(detail));
    };
    if (policy->FindAgency(recipient) == nullptr) {
      record(recipient, "decision", "refused:unknown_recipient");
      refuse(v1::REASON_UNKNOWN_RECIPIENT, recipient.rfind("group:", 0) == 0
                                               ? "no group '" + recipient.substr(6) + "'"
                                               : "no agency '" + recipient + "'");
      continue;
    }
    q.recipient = recipient;
    q.named_individually = t.named;
    const policy::Decision d = policy->Evaluate(q);
    std::string rules;
    for (const auto& id : policy->RuleIds(d)) rules += (rules.empty() ? "" : ",") + id;
    if (!d.permit) {
      const std::string reason = policy->Reasons(d, q).front();
      spdlog::info("{}: {} {} -> {}: refused: {} (policy {})", tag_, type, env->message_id(), recipient, reason,
                   policy->version().substr(0, 12));
      audit::Record& r = record(recipient, "decision", "deny");
      r.rules = rules;
      r.detail = reason;
      refuse(v1::REASON_NOT_PERMITTED,
             "the network's policy does not permit sharing this message with '" + recipient + "'");
      continue;
    }
    if (broker_.mailboxes.waiting_copies(recipient) >= l.max_backlog) {
      audit::Record& r = record(recipient, "decision", "refused:queue_full");
      r.rules = rules;
      r.detail = "the recipient has " + std::to_string(l.max_backlog) + " or more messages waiting";
      refuse(v1::REASON_QUEUE_FULL, "'" + recipient + "' has too many messages waiting; publish again later");
      queue_full = true;
      continue;
    }
    const std::string& agreement = policy->agreements()[d.agreement].id;
    if (agreement_used.empty()) agreement_used = agreement;
    audit::Record& r = record(recipient, "queued", "permit");
    r.rules = rules;
    r.detail = "agreement=" + agreement;
    StoredDelivery row;
    row.id = broker_.store->NextDeliveryId();
    row.recipient = recipient;
    row.message_row = queued->row;
    row.named = t.named;
    QueuedDelivery copy;
    copy.id = row.id;
    copy.recipient = recipient;
    copy.named = t.named;
    copy.message = queued;
    copies.push_back(std::move(copy));
    batch.new_deliveries.push_back(std::move(row));
    queued_to += (queued_to.empty() ? "" : ",") + recipient;
    out->set_outcome(v1::OUTCOME_QUEUED);
  }

  StoredMessage stored;
  stored.row = queued->row;
  stored.sender = agency_;
  stored.message_id = env->message_id();
  stored.case_id = env->case_id();
  stored.message_type = type;
  stored.tlp = env->tlp();
  stored.purpose = env->purpose();
  stored.agreement = env->sharing_agreement().empty() ? agreement_used : env->sharing_agreement();
  stored.recipients = queued_to;
  stored.received_ms = now_ms;
  queued->received_ms = now_ms;
  stored.expires_ms = queued->expires_ms;
  stored.want_reports = queued->want_reports;
  stored.publish_digest = digest;
  stored.ack = ack.SerializeAsString();
  if (!copies.empty()) {
    queued->wire = std::make_shared<const std::string>(std::move(stamped).value());
    stored.body = queued->wire;  // the same bytes, not a copy
  }
  batch.new_message = std::move(stored);
  // Queued for nobody, and refused for a reason that passes: remembered, the
  // refusal would be the answer to every repeat of this id for ever, even
  // once the recipient's queue has room. So only its records are written,
  // and a repeat is decided afresh. (A message the broker already has is
  // still found: its repeat gets the original outcome.) Queued for someone,
  // it is remembered as it is: a repeat must not queue it twice.
  batch.keep_message = !(copies.empty() && queue_full);

  ++in_flight_publishes_;
  broker_.in_flight_publishes++;
  BrokerState& broker = broker_;
  std::string stored_ack = batch.new_message->ack;  // the answer is made from it, and the stored one stays the same
  broker_.store->Commit(
      std::move(batch),
      [&broker, self = shared_from_this(), rid, stored_ack = std::move(stored_ack), copies = std::move(copies),
       digest = std::move(digest)](const Status& s, const audit::Checkpoint& cp, const BatchResult& result) mutable {
        const bool usual = s.ok() && !result.duplicate;  // the ack as stored, the request id and checkpoint
        if (usual && !copies.empty()) broker.mailboxes.Add(std::move(copies));
        Result<std::string> encoded = usual ? proto::EncodePublishAckFrame(rid, stored_ack, CheckpointBytes(cp))
                                            : EncodeRareAnswer(s, result, rid, stored_ack, digest, cp);
        broker.in_flight_publishes--;
        self->SendPublishAck(encoded.ok() ? std::move(encoded).value() : std::string());
      });
}

}  // namespace liaison::broker
