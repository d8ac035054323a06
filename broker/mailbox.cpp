#include "broker/detail/mailbox.h"

#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "broker/detail/broker_state.h"
#include "broker/detail/router.h"
#include "broker/detail/session.h"
#include "proto/names.h"

namespace liaison::broker {
namespace {

// When a stored report was made: its time, or (a report without one, or
// one that does not parse) now, so that it waits the whole retention again.
int64_t ReportMadeMs(const std::string& payload, int64_t now_ms) {
  v1::DeliveryReport r;
  if (!r.ParseFromString(payload) || !r.has_time()) return now_ms;
  return google::protobuf::util::TimeUtil::TimestampToMilliseconds(r.time());
}

}  // namespace

MessageFacts FactsOf(const v1::Message& m, const proto::VouchedBody& body) {
  MessageFacts f;
  const v1::Envelope& env = m.envelope();
  f.message_type = body.type.empty() ? proto::MessageTypeName(m) : std::string(body.type);
  f.case_id = env.case_id();
  f.purpose = env.purpose();
  f.sharing_agreement = env.sharing_agreement();
  f.forwarded_from = env.forwarded_from();
  f.tlp = env.tlp();
  if (m.has_case_referral()) {
    f.consent_status = m.case_referral().consent_status();
    f.legal_basis = m.case_referral().legal_basis();
  } else if (!body.type.empty()) {
    f.consent_status = body.consent_status;
    f.legal_basis = body.legal_basis;
  }
  return f;
}

policy::Request RequestFor(const MessageFacts& f, std::string_view sender) {
  policy::Request q;
  q.sender = sender;
  q.message_type = f.message_type;
  q.tlp = f.tlp;
  q.purpose = f.purpose;
  q.agreement = f.sharing_agreement;
  q.is_forward = !f.forwarded_from.empty();
  q.consent_status = f.consent_status;
  q.legal_basis = f.legal_basis;
  return q;
}

std::string QueuedMessage::WireDigest(const Store& store) {
  std::lock_guard lock(wire_digest_mu);
  if (wire_digest.empty()) wire_digest = store.BodyDigest(*wire);
  return wire_digest;
}

Status Mailboxes::Load(const Store& store) {
  const int64_t now_ms = NowMs();
  std::map<int64_t, std::shared_ptr<QueuedMessage>> by_row;
  std::vector<QueuedDelivery> all;
  Status parse_error = Status::Ok();
  Status s = store.LoadPending([&](StoredDelivery d, const StoredMessage& m) {
    auto& qm = by_row[m.row];
    if (!qm) {
      qm = std::make_shared<QueuedMessage>();
      qm->row = m.row;
      qm->sender = m.sender;
      qm->message_id = m.message_id;
      qm->expires_ms = m.expires_ms;
      qm->received_ms = m.received_ms;
      qm->want_reports = m.want_reports;
      qm->recalled = m.recalled_ms != 0;
      if (!m.body.empty()) {
        v1::Message body;
        if (!body.ParseFromString(m.body.str())) {
          parse_error = Status::Corruption("stored message " + std::to_string(m.row) + " does not parse");
        }
        qm->facts = FactsOf(body);
        qm->wire = m.body.shared();
      }
    }
    QueuedDelivery q;
    q.id = d.id;
    q.recipient = std::move(d.recipient);
    q.kind = d.kind;
    q.attempts = d.attempts;
    q.named = d.named;
    q.message = qm;
    if (!d.payload.empty()) q.payload = std::make_shared<const std::string>(std::move(d.payload));
    if (q.kind == DeliveryKind::kReport) q.made_ms = ReportMadeMs(q.payload ? *q.payload : std::string(), now_ms);
    all.push_back(std::move(q));
  });
  if (!s.ok()) return s;
  if (!parse_error.ok()) return parse_error;
  std::lock_guard lock(mu_);
  for (auto& q : all) {
    if (q.kind == DeliveryKind::kMessage) {
      if (!q.message->wire) return Status::Corruption("pending delivery " + std::to_string(q.id) + " has no body");
      q.message->unfinished++;
      messages_[{q.message->sender, q.message->message_id}] = q.message;
    }
    PushLocked(std::move(q));
  }
  return Status::Ok();
}

void Mailboxes::PushLocked(QueuedDelivery d) {
  Queue& queue = queues_[d.recipient];  // before d is moved from
  if (d.kind == DeliveryKind::kMessage) queue.copies++;
  ++total_;
  auto& q = queue.waiting;
  if (q.empty() || q.back().id < d.id) {
    q.push_back(std::move(d));
    return;
  }
  auto it = std::upper_bound(q.begin(), q.end(), d.id, [](int64_t id, const QueuedDelivery& e) { return id < e.id; });
  q.insert(it, std::move(d));
}

void Mailboxes::CountOutLocked(Queue& q, const QueuedDelivery& d) {
  --total_;
  if (d.kind == DeliveryKind::kMessage) q.copies--;
}

void Mailboxes::Add(std::vector<QueuedDelivery> deliveries) {
  std::set<std::string> touched;
  {
    std::lock_guard lock(mu_);
    for (auto& d : deliveries) {
      if (d.kind == DeliveryKind::kMessage) {
        d.message->unfinished++;
        messages_[{d.message->sender, d.message->message_id}] = d.message;
      }
      touched.insert(d.recipient);
      PushLocked(std::move(d));
    }
  }
  WakeReceivers(touched);
}

void Mailboxes::Return(std::vector<QueuedDelivery> deliveries) {
  std::set<std::string> touched;
  {
    std::lock_guard lock(mu_);
    for (auto& d : deliveries) {
      touched.insert(d.recipient);
      PushLocked(std::move(d));
    }
  }
  WakeReceivers(touched);
}

std::vector<QueuedDelivery> Mailboxes::Take(std::string_view agency, size_t n) {
  std::vector<QueuedDelivery> out;
  std::lock_guard lock(mu_);
  auto it = queues_.find(agency);
  if (it == queues_.end()) return out;
  auto& q = it->second.waiting;
  while (!q.empty() && out.size() < n) {
    CountOutLocked(it->second, q.front());
    out.push_back(std::move(q.front()));
    q.pop_front();
  }
  if (q.empty()) queues_.erase(it);
  return out;
}

bool Mailboxes::FinishCopy(QueuedMessage& m) {
  std::lock_guard lock(mu_);
  if (--m.unfinished > 0) return false;
  if (m.acking.empty()) messages_.erase({m.sender, m.message_id});  // else at AcksSubmitted
  return true;
}

std::optional<RecallFacts> Mailboxes::Acknowledged(QueuedMessage& m, const std::string& recipient) {
  std::lock_guard lock(mu_);
  if (m.recalled) {
    m.recall_acted_on = true;
    return FactsLocked(m);
  }
  m.acking.insert(recipient);
  return std::nullopt;
}

void Mailboxes::AcksSubmitted(const std::vector<std::shared_ptr<QueuedMessage>>& messages,
                              const std::string& recipient) {
  std::lock_guard lock(mu_);
  for (const auto& m : messages) {
    if (auto it = m->acking.find(recipient); it != m->acking.end()) m->acking.erase(it);
    if (m->unfinished > 0 || !m->acking.empty()) continue;
    auto it = messages_.find(std::pair<std::string, std::string>(m->sender, m->message_id));
    if (it != messages_.end() && it->second.lock() == m) messages_.erase(it);
  }
}

void Mailboxes::UnfinishCopy(const std::shared_ptr<QueuedMessage>& m) {
  std::lock_guard lock(mu_);
  if (m->unfinished++ == 0) messages_[{m->sender, m->message_id}] = m;
}

std::shared_ptr<QueuedMessage> Mailboxes::Find(std::string_view sender, std::string_view message_id) const {
  std::lock_guard lock(mu_);
  auto it = messages_.find(std::pair<std::string, std::string>(sender, message_id));
  return it == messages_.end() ? nullptr : it->second.lock();
}

std::vector<QueuedDelivery> Mailboxes::TakeWaiting(const std::function<bool(const QueuedDelivery&)>& which) {
  std::vector<QueuedDelivery> out;
  for (auto it = queues_.begin(); it != queues_.end();) {
    auto& q = it->second.waiting;
    for (auto d = q.begin(); d != q.end();) {
      if (which(*d)) {
        CountOutLocked(it->second, *d);
        out.push_back(std::move(*d));
        d = q.erase(d);
      } else {
        ++d;
      }
    }
    it = q.empty() ? queues_.erase(it) : std::next(it);
  }
  return out;
}

bool Mailboxes::MarkRecalledLocked(QueuedMessage& m, const RecallFacts& how) {
  const bool newly = !m.recalled;
  if (newly || m.recall_reason.empty()) {
    m.recall_reason = how.reason;
    m.recall_cert = how.cert_sha256;
  }
  m.recalled = true;
  return newly;
}

std::vector<std::string> Mailboxes::MarkRecalled(QueuedMessage& m, const RecallFacts& how, bool* newly) {
  std::lock_guard lock(mu_);
  const bool n = MarkRecalledLocked(m, how);
  if (newly) *newly = n;
  return {m.acking.begin(), m.acking.end()};
}

std::vector<QueuedDelivery> Mailboxes::Recall(QueuedMessage& m, const RecallFacts& how, bool* newly) {
  std::lock_guard lock(mu_);
  const bool n = MarkRecalledLocked(m, how);
  if (newly) *newly = n;
  return TakeWaiting(
      [&m](const QueuedDelivery& d) { return d.kind == DeliveryKind::kMessage && d.message.get() == &m; });
}

void Mailboxes::UnmarkRecalled(QueuedMessage& m) {
  std::lock_guard lock(mu_);
  if (m.recall_acted_on) {
    spdlog::warn("the recall of {} from {} was not recorded, but a copy was already settled or a notice sent on it: "
                 "it stays recalled in memory until the sender recalls it again",
                 Printable(m.message_id, 128), m.sender);
    return;
  }
  m.recalled = false;
  m.recall_reason.clear();
  m.recall_cert.clear();
}

std::optional<RecallFacts> Mailboxes::Recalled(QueuedMessage& m) {
  std::lock_guard lock(mu_);
  if (!m.recalled) return std::nullopt;
  m.recall_acted_on = true;
  return FactsLocked(m);
}

RecallFacts Mailboxes::FactsLocked(const QueuedMessage& m) {
  // Recalled before a restart: the reason was not kept.
  return RecallFacts{m.recall_reason.empty() ? "recalled by the sender" : m.recall_reason, m.recall_cert};
}

bool Mailboxes::MarkNotified(QueuedMessage& m, const std::string& recipient) {
  std::lock_guard lock(mu_);
  return m.notified.insert(recipient).second;
}

void Mailboxes::UnmarkNotified(QueuedMessage& m, const std::string& recipient) {
  std::lock_guard lock(mu_);
  m.notified.erase(recipient);
}

std::vector<QueuedDelivery> Mailboxes::TakeExpired(int64_t now_ms, int64_t report_retention_ms) {
  std::lock_guard lock(mu_);
  return TakeWaiting([=](const QueuedDelivery& d) {
    switch (d.kind) {
      case DeliveryKind::kMessage:
        return d.message->expires_ms <= now_ms;
      case DeliveryKind::kReport:
        return d.made_ms <= now_ms - report_retention_ms;
      default:
        return false;
    }
  });
}

size_t Mailboxes::waiting_copies(std::string_view agency) const {
  std::lock_guard lock(mu_);
  auto it = queues_.find(agency);
  return it == queues_.end() ? 0 : it->second.copies;
}

size_t Mailboxes::waiting_total() const {
  std::lock_guard lock(mu_);
  return total_;
}

std::vector<MailboxSummary> Mailboxes::Summary() const {
  std::vector<MailboxSummary> out;
  std::lock_guard lock(mu_);
  for (const auto& [agency, queue] : queues_) {
    if (queue.waiting.empty()) continue;
    MailboxSummary& s = out.emplace_back();
    s.agency = agency;
    for (const QueuedDelivery& d : queue.waiting) {
      if (d.kind != DeliveryKind::kMessage) {
        s.notices++;
        continue;
      }
      s.messages++;
      if (d.attempts > 0) s.redelivered++;
      const QueuedMessage& m = *d.message;
      if (s.oldest_received_ms == 0 || m.received_ms < s.oldest_received_ms) s.oldest_received_ms = m.received_ms;
      if (s.next_expiry_ms == 0 || m.expires_ms < s.next_expiry_ms) s.next_expiry_ms = m.expires_ms;
    }
  }
  return out;
}

void Mailboxes::WakeReceivers(const std::set<std::string>& agencies) {
  for (const auto& agency : agencies) {
    if (auto session = router_.Receiver(agency)) session->Wake();
  }
}

audit::Record CopyRecord(std::string event, const QueuedMessage& m, const std::string& recipient) {
  audit::Record r = MakeRecord(std::move(event));
  r.message_id = m.message_id;
  r.sender = m.sender;
  r.recipient = recipient;
  r.case_id = m.facts.case_id;
  r.message_type = m.facts.message_type;
  r.tlp = m.facts.tlp;
  r.purpose = m.facts.purpose;
  return r;
}

std::string MakeReport(const QueuedMessage& m, const std::string& recipient, v1::Outcome outcome, v1::Reason reason,
                       const std::string& detail) {
  v1::DeliveryReport r;
  r.set_message_id(m.message_id);
  r.set_recipient(recipient);
  r.set_outcome(outcome);
  r.set_reason(reason);
  r.set_detail(detail);
  *r.mutable_time() = google::protobuf::util::TimeUtil::GetCurrentTime();
  return r.SerializeAsString();
}

void QueueChange::Finish(const QueuedDelivery& d, DeliveryState state, v1::Outcome outcome, v1::Reason reason,
                         const std::string& detail, bool always_report) {
  batch.finished.emplace_back(d.id, state);
  finished_.push_back(d);
  if (d.kind != DeliveryKind::kMessage) return;
  QueuedMessage& m = *d.message;
  if (broker_.mailboxes.FinishCopy(m)) batch.drop_bodies.push_back(m.row);
  if (m.want_reports || always_report) {
    AddDelivery(d.message, m.sender, DeliveryKind::kReport, MakeReport(m, d.recipient, outcome, reason, detail));
  }
}

void QueueChange::AddDelivery(const std::shared_ptr<QueuedMessage>& m, const std::string& recipient,
                              DeliveryKind kind, std::string payload) {
  StoredDelivery row;
  row.id = broker_.store->NextDeliveryId();
  row.recipient = recipient;
  row.message_row = m->row;
  row.kind = kind;
  row.payload = payload;
  batch.new_deliveries.push_back(std::move(row));
  QueuedDelivery q;
  q.id = batch.new_deliveries.back().id;
  q.recipient = recipient;
  q.kind = kind;
  q.message = m;
  q.payload = std::make_shared<const std::string>(std::move(payload));
  if (kind == DeliveryKind::kReport) q.made_ms = NowMs();
  added_.push_back(std::move(q));
}

bool QueueChange::NotifyRecall(const std::shared_ptr<QueuedMessage>& m, const std::string& recipient,
                               const std::string& reason, const std::string& recall_cert, const std::string& why) {
  if (!broker_.mailboxes.MarkNotified(*m, recipient)) return false;  // told already
  notified_.emplace_back(m, recipient);
  v1::RecallNotice n;
  n.set_message_id(m->message_id);
  n.set_sender(m->sender);
  n.set_reason(reason);
  *n.mutable_recalled_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
  AddDelivery(m, recipient, DeliveryKind::kRecallNotice, n.SerializeAsString());
  audit::Record r = CopyRecord("recalled", *m, recipient);
  r.actor = m->sender;
  r.cert_sha256 = recall_cert;
  r.decision = "recall_notice";
  r.detail = why + "; a recall notice is queued: " + reason;
  batch.records.push_back(std::move(r));
  return true;
}

std::string SentUnacknowledged(const QueuedDelivery& d) {
  return "sent " + std::to_string(d.attempts) + (d.attempts == 1 ? " time" : " times") + " and never acknowledged";
}

bool AddRecallNoticeForUnacknowledged(QueueChange& change, const QueuedDelivery& d, const std::string& reason,
                                      const std::string& recall_cert) {
  if (d.kind != DeliveryKind::kMessage || d.attempts == 0) return false;
  return change.NotifyRecall(d.message, d.recipient, reason, recall_cert, SentUnacknowledged(d) + ", so it may have it");
}

void QueueChange::Submit(std::function<void(const Status&, const audit::Checkpoint&)> then) {
  BrokerState& broker = broker_;
  broker_.store->Commit(std::move(batch), [&broker, added = std::move(added_), finished = std::move(finished_),
                                           notified = std::move(notified_), unmark = std::move(unmark_recall_),
                                           give_back = give_back_on_failure_, then = std::move(then)](
                                              const Status& s, const audit::Checkpoint& cp, const BatchResult&) mutable {
    if (s.ok()) {
      if (!added.empty()) broker.mailboxes.Add(std::move(added));
    } else {
      // Nothing of it is stored: the copies are still pending there, so
      // they wait again here too.
      for (auto& d : finished) {
        if (d.kind == DeliveryKind::kMessage) broker.mailboxes.UnfinishCopy(d.message);
      }
      for (auto& [m, recipient] : notified) broker.mailboxes.UnmarkNotified(*m, recipient);
      if (unmark) broker.mailboxes.UnmarkRecalled(*unmark);
      if (give_back) broker.mailboxes.Return(std::move(finished));
    }
    if (then) then(s, cp);
  });
}

}  // namespace liaison::broker
