// The in-memory view of the durable queue (internal; DESIGN.md, Delivery
// guarantees). Per recipient agency, the deliveries waiting to be sent, in
// delivery order. It is rebuilt from the store at start, and changed only
// after the store has committed the change it mirrors (QueueChange).
//
// A delivery taken by a receiving session is in flight: the session holds
// it until the recipient acknowledges it, or gives it back (Return) when
// the session ends, so it is sent again, with its attempt count, on the
// agency's next session.
//
// Thread-safety: Mailboxes is thread-safe (one mutex, never held while
// calling into a session or the store). QueuedMessage's mutable fields are
// guarded by that same mutex.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "broker/store/store.h"
#include "policy/policy.h"
#include "proto/detail/pb.h"
#include "proto/validate.h"

namespace liaison::broker {

class BrokerState;
class Router;

// What the re-check at delivery and the copies' audit records need from a
// queued message, taken from it once (at publish, or when the queue is
// loaded at start), so that the parsed message need not be kept.
struct MessageFacts {
  std::string message_type;  // proto::MessageTypeName
  std::string case_id, purpose, sharing_agreement, forwarded_from;
  int tlp = 0;
  int consent_status = 0, legal_basis = 0;  // of a case referral; 0 for other messages
};
// body: for a message whose body ParseVouchedPublish left unparsed, what
// the facts need of it (its type, a referral's consent and legal basis).
MessageFacts FactsOf(const v1::Message& m, const proto::VouchedBody& body = {});
// The policy question about the message from sender, the same at publish and
// at each delivery (the caller adds the recipient, how it was named, and
// the original of a forward). It views f, which must outlive it.
policy::Request RequestFor(const MessageFacts& f, std::string_view sender);

// A message with copies still to deliver, shared by those copies.
struct QueuedMessage {
  int64_t row = 0;
  std::string sender;
  std::string message_id;
  int64_t expires_ms = 0;
  int64_t received_ms = 0;  // when the broker accepted it
  bool want_reports = false;
  MessageFacts facts;
  // The message as stamped at publish, serialized (the bytes the store
  // holds): copies delivered without redaction go out as these bytes,
  // unparsed and uncopied; a redacted copy is parsed from them.
  std::shared_ptr<const std::string> wire;
  // The store's digest of wire (Store::BodyDigest), for the records of the
  // copies that go out unredacted: worked out by the first of them, once.
  std::string WireDigest(const Store& store);
  // A mutex, not std::call_once: glibc's pthread_once makes a futex system
  // call every time it runs the function, once a message.
  std::mutex wire_digest_mu;
  std::string wire_digest;  // empty until worked out
  // A forward: the original's routing metadata as the publish found it (it
  // does not change), for the check at delivery. A forward is queued only
  // with its original found, so none means: queued before a restart.
  std::optional<policy::OriginalMessage> original;
  // Guarded by the Mailboxes mutex.
  int unfinished = 0;                // copies pending or in flight
  bool recalled = false;
  // Who recalled it and why, for the records and notices of copies settled
  // after the recall (in flight then); empty for a recall before a restart.
  std::string recall_reason, recall_cert;
  // A session settled a copy or sent a notice because of the mark
  // (Recalled, Acknowledged): it can no longer be taken back.
  bool recall_acted_on = false;
  std::set<std::string> notified;    // recipients already sent a recall notice
  // Recipients whose DeliveryAck was read but not yet handed to the store
  // (where a recall looks for who has the message): while any is, the
  // message stays findable, and a recall counts them as having it.
  std::multiset<std::string> acking;
};

// How a message was recalled (Mailboxes::Recalled).
struct RecallFacts {
  std::string reason;       // the sender's reason, as its recipients are told
  std::string cert_sha256;  // the recalling session's certificate (empty if unknown)
};

struct QueuedDelivery {
  int64_t id = 0;
  std::string recipient;
  DeliveryKind kind = DeliveryKind::kMessage;
  uint32_t attempts = 0;
  bool named = true;
  std::shared_ptr<QueuedMessage> message;          // the message (copies) or the one it concerns
  std::shared_ptr<const std::string> payload;      // notices and reports
  // A report: when it was made (from its time at start), for its expiry
  // (Mailboxes::TakeExpired). 0 for copies and recall notices.
  int64_t made_ms = 0;
};

// What waits for one agency (Mailboxes::Summary; the admin command
// "queues").
struct MailboxSummary {
  std::string agency;
  size_t messages = 0;             // message copies waiting to be sent
  size_t redelivered = 0;          // of them, sent before and never confirmed (attempts > 0)
  size_t notices = 0;              // recall notices and delivery reports waiting
  int64_t oldest_received_ms = 0;  // the oldest waiting copy's message was accepted then (0: none waits)
  int64_t next_expiry_ms = 0;      // the first waiting copy to expire does then (0: none waits)
};

class Mailboxes {
 public:
  explicit Mailboxes(Router& router) : router_(router) {}

  // Rebuilds the queue from the store's pending deliveries.
  Status Load(const Store& store);

  // Adds committed deliveries (a new message's copies count toward its
  // unfinished copies) and wakes each recipient's receiving session.
  void Add(std::vector<QueuedDelivery> deliveries);
  // Gives in-flight deliveries back, in delivery order, ahead of the rest.
  void Return(std::vector<QueuedDelivery> deliveries);
  // Up to n of agency's deliveries, removed from its queue.
  std::vector<QueuedDelivery> Take(std::string_view agency, size_t n);

  // One copy of m is finished; true when it was the last (its body can go).
  bool FinishCopy(QueuedMessage& m);
  // Undoes FinishCopy after a failed commit.
  void UnfinishCopy(const std::shared_ptr<QueuedMessage>& m);

  // The sender's message, while copies of it are unfinished.
  std::shared_ptr<QueuedMessage> Find(std::string_view sender, std::string_view message_id) const;
  // Marks m recalled (the first recall's reason and certificate are kept)
  // and returns the recipients whose acknowledgement is not yet with the
  // store (QueuedMessage::acking): they have it. A recall marks its message
  // before it waits for the store, so that every acknowledgement is either
  // in what it reads there, or returned here, or sees the mark. *newly (if
  // given) is set when m was not marked before.
  std::vector<std::string> MarkRecalled(QueuedMessage& m, const RecallFacts& how, bool* newly = nullptr);
  // MarkRecalled; then removes and returns m's copies still waiting (the
  // in-flight ones are settled by their sessions).
  std::vector<QueuedDelivery> Recall(QueuedMessage& m, const RecallFacts& how, bool* newly = nullptr);
  // Takes back the mark of a recall that was refused or could not be
  // stored (only the recall that set it: *newly), so that m is delivered
  // as the store says it is: not recalled. Not once a session acted on the
  // mark (a copy settled as recalled, a notice sent): then it stays, and a
  // warning says so.
  void UnmarkRecalled(QueuedMessage& m);
  // recipient acknowledged its copy of m: how m was recalled, if it was
  // (the recipient is to be told); otherwise the recipient counts in
  // m.acking until AcksSubmitted.
  std::optional<RecallFacts> Acknowledged(QueuedMessage& m, const std::string& recipient);
  // Those acknowledgements (by recipient) are handed to the store.
  void AcksSubmitted(const std::vector<std::shared_ptr<QueuedMessage>>& messages, const std::string& recipient);
  // How m was recalled, for a copy about to be settled as recalled; none
  // if it was not.
  std::optional<RecallFacts> Recalled(QueuedMessage& m);
  // True the first time it is called for (m, recipient).
  bool MarkNotified(QueuedMessage& m, const std::string& recipient);
  void UnmarkNotified(QueuedMessage& m, const std::string& recipient);

  // Removes and returns waiting copies whose message expired by now_ms, and
  // delivery reports made report_retention_ms or longer before it. (Recall
  // notices wait for good: a recipient that has a recalled message must
  // learn of the recall whenever it comes back.)
  std::vector<QueuedDelivery> TakeExpired(int64_t now_ms, int64_t report_retention_ms);

  // Message copies waiting for agency (what limits.max_backlog bounds:
  // notices and reports are not counted, so that an agency's own reports
  // never fill its queue against messages for it).
  size_t waiting_copies(std::string_view agency) const;
  size_t waiting_total() const;  // copies, notices and reports
  // Every agency with anything waiting, by agency id. Walks every waiting
  // copy (holding the lock): for the operator's command, not the hot path.
  std::vector<MailboxSummary> Summary() const;

 private:
  void WakeReceivers(const std::set<std::string>& agencies);
  // The caller holds mu_.
  bool MarkRecalledLocked(QueuedMessage& m, const RecallFacts& how);  // true: newly
  static RecallFacts FactsLocked(const QueuedMessage& m);
  // Removes and returns the waiting deliveries (copies, notices, reports)
  // that match; the caller holds mu_.
  std::vector<QueuedDelivery> TakeWaiting(const std::function<bool(const QueuedDelivery&)>& which);
  // One agency's waiting deliveries, in delivery order, and how many of
  // them are message copies.
  struct Queue {
    std::deque<QueuedDelivery> waiting;
    size_t copies = 0;
  };
  // Queues d in delivery order, or counts d out of q; the caller holds mu_.
  void PushLocked(QueuedDelivery d);
  void CountOutLocked(Queue& q, const QueuedDelivery& d);

  Router& router_;
  mutable std::mutex mu_;
  std::map<std::string, Queue, std::less<>> queues_;  // guarded by mu_
  // Messages with unfinished copies, by (sender, message id).
  std::map<std::pair<std::string, std::string>, std::weak_ptr<QueuedMessage>, std::less<>> messages_;  // mu_
  size_t total_ = 0;  // guarded by mu_
};

// One change to the queue: its store batch (with the audit records that
// describe it) and what Mailboxes learns once the batch is durable. On
// failure, copies it finished are given back to their queues.
class QueueChange {
 public:
  explicit QueueChange(BrokerState& broker) : broker_(broker) {}

  Batch batch;

  // A copy (or notice or report) leaves the queue in state. For message
  // copies: the sender gets a report when it asked for reports or
  // always_report is set, and the body is dropped after the last copy.
  void Finish(const QueuedDelivery& d, DeliveryState state, v1::Outcome outcome, v1::Reason reason,
              const std::string& detail, bool always_report);
  // Queues a new delivery for recipient (a notice or a report) about m.
  void AddDelivery(const std::shared_ptr<QueuedMessage>& m, const std::string& recipient, DeliveryKind kind,
                   std::string payload);
  // A recall notice for recipient, unless one was already issued, with
  // the recall's record ("<why>; a recall notice is queued: <reason>"; the
  // recall made by m's sender with the certificate recall_cert). True when
  // a notice was added.
  bool NotifyRecall(const std::shared_ptr<QueuedMessage>& m, const std::string& recipient, const std::string& reason,
                    const std::string& recall_cert, const std::string& why);

  // A recall that newly marked m: if the commit fails, the mark is taken
  // back before the copies are given back (none is settled by it).
  void UnmarkRecallOnFailure(std::shared_ptr<QueuedMessage> m) { unmark_recall_ = std::move(m); }

  // On failure, the copies this change finished are not given back to
  // their queues by Submit: the caller does it, once it no longer holds
  // them (a session's acknowledged deliveries stay in flight there until
  // their commit's answer reaches its strand; in the queue meanwhile, they
  // would be sent again under the ids it still holds).
  void CallerGivesBackOnFailure() { give_back_on_failure_ = false; }

  // Commits; then (on the writer thread) updates Mailboxes and calls then.
  void Submit(std::function<void(const Status&, const audit::Checkpoint&)> then = nullptr);

 private:
  BrokerState& broker_;
  std::vector<QueuedDelivery> added_;
  std::vector<QueuedDelivery> finished_;
  std::vector<std::pair<std::shared_ptr<QueuedMessage>, std::string>> notified_;
  std::shared_ptr<QueuedMessage> unmark_recall_;
  bool give_back_on_failure_ = true;
};

// The routing metadata of the message forwarder received (or sent) as
// original_id, for the policy's forwarding check; none when unknown.
std::optional<policy::OriginalMessage> LookupOriginal(const Store& store, const std::string& forwarder,
                                                      const std::string& original_id,
                                                      Store::Wait wait = Store::Wait::kForApplier);

// An audit record about recipient's copy of m (message fields filled in).
audit::Record CopyRecord(std::string event, const QueuedMessage& m, const std::string& recipient);

// Expires every waiting copy whose message expired by now_ms (audited; the
// sender gets a report), and every delivery report that waited longer than
// limits.max_retention (audited).
void ExpireDue(BrokerState& broker, int64_t now_ms);
// Adds the expiry of the copy d, taken from the queue, to change.
void ExpireCopy(QueueChange& change, const QueuedDelivery& d);

// "sent N time(s) and never acknowledged": what is known of a copy sent
// before (attempts > 0) and given back unacknowledged, whose recipient may
// have it all the same (for a recall's notice and an expiry's report).
std::string SentUnacknowledged(const QueuedDelivery& d);

// For a copy d settled as recalled: if it was sent before (attempts > 0)
// and never acknowledged, its recipient may have it (an agent stores a
// message before it acknowledges it, and the connection can drop in
// between), so it is notified (QueueChange::NotifyRecall). True when a
// notice was added.
bool AddRecallNoticeForUnacknowledged(QueueChange& change, const QueuedDelivery& d, const std::string& reason,
                                      const std::string& recall_cert);

// A report about one recipient's copy, serialized.
std::string MakeReport(const QueuedMessage& m, const std::string& recipient, v1::Outcome outcome, v1::Reason reason,
                       const std::string& detail);

}  // namespace liaison::broker
