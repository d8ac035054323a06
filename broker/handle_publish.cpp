// Publish: validate, bind the sender to the session's agency, expand groups,
// ask the policy for every recipient, prepare each permitted recipient's
// copy (redacted and pseudonymised as the permit obliges) and hand it to the
// receiving session. The PublishAck goes out when every recipient has an
// outcome (PendingPublish). Rule ids and reasons stay in the broker's log
// (the audit log, once it lands); the sender learns only a reason code.
#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include "broker/detail/broker_state.h"
#include "broker/detail/pending_publish.h"
#include "broker/detail/session.h"
#include "policy/redact.h"
#include "proto/names.h"
#include "proto/validate.h"

namespace liaison::broker {
namespace {

// Room a Deliver frame needs around its message: frame and Deliver tags,
// lengths, delivery id and attempt.
constexpr size_t kDeliverOverhead = 64;

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

}  // namespace

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
  env->set_sender(agency_);
  *env->mutable_received_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
  // Stamping made it larger: it must still fit every recipient's Deliver frame.
  if (message->ByteSizeLong() + kDeliverOverhead > l.max_frame_bytes) {
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

  google::protobuf::RepeatedPtrField<std::string> names;
  for (const auto& t : targets) *names.Add() = t.agency;
  auto pending = std::make_shared<PendingPublish>(broker_, weak_from_this(), rid, env->message_id(), names);
  ++in_flight_publishes_;

  policy::Request q;
  q.sender = agency_;
  const std::string type = proto::MessageTypeName(*message);
  q.message_type = type;
  q.tlp = env->tlp();
  q.purpose = env->purpose();
  q.agreement = env->sharing_agreement();
  q.is_forward = !env->forwarded_from().empty();
  if (message->has_case_referral()) {
    q.consent_status = message->case_referral().consent_status();
    q.legal_basis = message->case_referral().legal_basis();
  }

  // Decide every recipient, prepare its copy and its audit records; act
  // only once the records are durable (nothing leaves before its audit
  // record is committed).
  struct Step {
    size_t index;
    v1::Reason refusal = v1::REASON_UNSPECIFIED;  // unspecified: deliver
    std::string detail;
    std::shared_ptr<Session> receiver;
    std::shared_ptr<const v1::Message> copy;
  };
  std::vector<Step> steps;
  std::vector<audit::Record> records;
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
    records.push_back(std::move(r));
    return records.back();
  };
  auto refuse = [&](size_t i, v1::Reason reason, std::string detail) {
    steps.push_back({i, reason, std::move(detail), nullptr, nullptr});
  };
  std::shared_ptr<const v1::Message> shared = message;
  std::string shared_digest;
  for (size_t i = 0; i < targets.size(); ++i) {
    const std::string& recipient = targets[i].agency;
    if (policy->FindAgency(recipient) == nullptr) {
      record(recipient, "decision", "refused:unknown_recipient");
      refuse(i, v1::REASON_UNKNOWN_RECIPIENT,
                       recipient.rfind("group:", 0) == 0 ? "no group '" + recipient.substr(6) + "'"
                                                          : "no agency '" + recipient + "'");
      continue;
    }
    q.recipient = recipient;
    q.named_individually = targets[i].named;
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
      refuse(i, v1::REASON_NOT_PERMITTED,
                       "the network's policy does not permit sharing this message with '" + recipient + "'");
      continue;
    }
    std::shared_ptr<const v1::Message> copy = shared;
    std::string obligations_text;
    const auto shared_obligations = policy->SharedObligationsOf(d);
    const policy::Obligations& obligations = *shared_obligations;
    const std::string& agreement = policy->agreements()[d.agreement].id;
    if (!obligations.empty()) {
      auto redacted = std::make_shared<v1::Message>(*message);
      Result<policy::PseudonymKey> key = Status::NotFound("no pseudonymisation asked");
      if (!obligations.pseudonymise_categories.empty() || !obligations.pseudonymise_paths.empty()) {
        key = broker_.keys->Current(agreement);
      }
      auto report = policy::ApplyObligations(redacted.get(), obligations, key.ok() ? &key.value() : nullptr);
      if (!report.ok()) {
        spdlog::error("{}: {} -> {}: cannot apply obligations: {}", tag_, env->message_id(), recipient,
                      report.status().message());
        audit::Record& r = record(recipient, "decision", "refused:internal_error");
        r.rules = rules;
        r.detail = "obligations could not be applied: " + report.status().message();
        refuse(i, v1::REASON_INTERNAL_ERROR, "the broker could not prepare the recipient's copy");
        continue;
      }
      auto* renv = redacted->mutable_envelope();
      for (const auto& p : report->redacted_paths) {
        renv->add_redacted_paths(p);
        obligations_text += (obligations_text.empty() ? "redacted:" : ",") + p;
      }
      std::string pseud;
      for (const auto& p : report->pseudonymised_paths) {
        renv->add_pseudonymised_paths(p);
        pseud += (pseud.empty() ? "" : ",") + p;
      }
      if (!pseud.empty()) {
        obligations_text += (obligations_text.empty() ? "" : ";") + std::string("pseudonymised:") + pseud +
                            " (key v" + std::to_string(key->version) + ")";
      }
      copy = std::move(redacted);
    }
    audit::Record& r = record(recipient, "decision", "permit");
    r.rules = rules;
    r.obligations = obligations_text;
    r.detail = "agreement=" + agreement;
    if (copy == shared) {
      if (shared_digest.empty()) shared_digest = broker_.store->BodyDigest(shared->SerializeAsString());
      r.body_hmac = shared_digest;
    } else {
      r.body_hmac = broker_.store->BodyDigest(copy->SerializeAsString());
    }
    auto receiver = broker_.router.Receiver(recipient);
    if (!receiver) {
      record(recipient, "not_delivered", "refused:recipient_offline");
      refuse(i, v1::REASON_RECIPIENT_OFFLINE,
                       "'" + recipient + "' has no receiving session; this broker keeps no queue, so nothing was stored");
      continue;
    }
    steps.push_back({i, v1::REASON_UNSPECIFIED, "", std::move(receiver), std::move(copy)});
  }
  broker_.store->Append(std::move(records), [pending, steps = std::move(steps)](const Status& s,
                                                                                const audit::Checkpoint&) mutable {
    for (auto& step : steps) {
      if (!s.ok()) {
        pending->Resolve(step.index, v1::OUTCOME_REFUSED, v1::REASON_STORE_FAILURE,
                         "the broker could not record this share, so nothing was delivered: " + s.message());
      } else if (step.refusal != v1::REASON_UNSPECIFIED) {
        pending->Resolve(step.index, v1::OUTCOME_REFUSED, step.refusal, std::move(step.detail));
      } else {
        step.receiver->OfferDelivery(pending, step.index, std::move(step.copy));
      }
    }
  });
}

}  // namespace liaison::broker
