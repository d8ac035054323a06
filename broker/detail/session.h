// One client connection to the broker (internal). Owns the TLS stream and
// runs three coroutines on its strand: the reader (which dispatches each
// frame to a handle_*.cpp handler), the writer (FrameStream::WriteLoop) and
// a watchdog (handshake, idle, write and delivery deadlines; pings).
//
// Threading: private members are touched only on the session's strand. The
// public methods other than id()/agency() may be called from any thread;
// they post onto the strand.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/detail/frame_stream.h"
#include "common/detail/tls.h"
#include "common/printable.h"
#include "common/tls.h"
#include "broker/detail/admission.h"
#include "broker/detail/mailbox.h"
#include "proto/detail/pb.h"
#include "proto/validate.h"

namespace liaison::broker {

class BrokerState;

// Room a Deliver frame needs around its message: frame and Deliver tags,
// lengths, delivery id and attempt. A message, or a recipient's redacted
// copy, must fit max_frame_bytes with it.
inline constexpr size_t kDeliverOverhead = 64;

class Session : public std::enable_shared_from_this<Session> {
 public:
  // source: the peer's handshake source (Admission::BeginHandshake), whose
  // slot the session gives back when its handshake ends.
  Session(BrokerState& state, std::shared_ptr<tls::Context> tls, net::TlsStream stream, uint64_t id, std::string peer,
          std::string source);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void Start();
  uint64_t id() const { return id_; }

  // New deliveries wait in the agency's mailbox: send what credit allows.
  // Wakes that come while one is pending share it.
  void Wake();
  // Sends the encoded answer (PublishAck, RecallAck or Error) to a publish
  // or recall this session made, once the store committed it. The answers
  // of one commit reach the strand together (one post per session).
  void SendPublishAck(std::string encoded);
  // Graceful shutdown, step 1: refuse new publishes.
  void BeginDrain();
  // Step 3, or a take-over: send an Error with reason, flush, close. On a
  // take-over, successor is the session taking over: it sends nothing
  // until this one has given its unacknowledged deliveries back to the
  // queue (ResumeAfterTakeOver), so that they go out first, in order.
  void Shutdown(v1::Reason reason, std::string message, std::shared_ptr<Session> successor = nullptr);
  // The session this one took over from has stopped receiving.
  void ResumeAfterTakeOver();
  // Close now, without flushing.
  void Abort();
  // After a reload: closes the session when its certificate no longer
  // verifies against the current CA bundle and CRLs, or no longer
  // identifies the same agency in the current policy.
  void Revalidate();

 private:
  enum class Phase { kHandshake, kAwaitHello, kReady, kClosed };
  // A delivery sent and not yet acknowledged.
  struct InFlight {
    QueuedDelivery d;
    net::Clock::time_point sent_at{};
    bool acking = false;  // its DeliveryAck is being committed
    // Message copies: what the recipient received, for the audit record.
    std::string body_hmac;
    std::string obligations;
    std::string rules;
    std::string policy_version;
  };

  boost::asio::awaitable<void> Run();
  // Parses the frame NextFrame read: a publish whose body validation can
  // vouch for on its bytes without its body (ParseVouchedPublish, which
  // sets vouched_), anything else as a whole. InvalidArgument when it does
  // not parse.
  Status ParseFrame(v1::Frame* frame);
  // The limits a published message is validated against.
  proto::MessageLimits PublishLimits() const;
  // Frames whose handler reads the database (a recall, a forward, a publish
  // of an expired message) wait for the store's applier first, here,
  // without blocking the I/O thread; the status says whether it could write
  // the database.
  static bool NeedsAppliedStore(const v1::Frame& frame);
  // The publish's message has expired (or does within a second): invalid,
  // unless it repeats one the broker accepted (AnswerExpiredRepeat).
  static bool IsExpiredPublish(const v1::Publish& publish);
  boost::asio::awaitable<Status> AwaitApplied();
  boost::asio::awaitable<void> Writer();
  boost::asio::awaitable<void> Watchdog();
  void CheckDeadlines();
  std::string PeerAddress() const;  // the peer's IP address, without the port
  void Finish();

  // Frame handlers (one file each: handle_hello.cpp, handle_publish.cpp, ...).
  void Dispatch(v1::Frame& frame);
  // A slot for an audit query or proof of this agency, counted until the
  // answer is ready (Release) or the returned token's last copy is gone;
  // null after answering audit_busy.
  std::shared_ptr<Admission::AuditSlot> BeginAuditRequest(uint64_t rid);
  void HandleHello(const v1::Hello& hello);
  void HandlePublish(v1::Publish& publish);
  // A publish that failed validation only because its message has expired
  // since this agency published it: answered with the original PublishAck
  // (duplicate), as a repeat before the expiry is (true). False when it is
  // not such a repeat: then it is invalid.
  bool AnswerExpiredRepeat(uint64_t rid, v1::Message* message, std::string_view wire);
  void HandleDeliveryAck(const v1::DeliveryAck& ack);
  void HandleRecall(const v1::Recall& recall);
  // Before a Recall waits for the store: marks the message recalled in
  // memory (Mailboxes::MarkRecalled), for HandleRecall.
  void PrepareRecall(const v1::Recall& recall);
  void HandlePing(const v1::Ping& ping);
  void HandlePong(const v1::Pong& pong);
  void HandleError(const v1::Error& error);
  void HandleAuditQuery(const v1::AuditQuery& query);
  void HandleConsistencyProofRequest(const v1::ConsistencyProofRequest& request);

  void Send(const v1::Frame& frame);
  void SendEncoded(Result<std::string> encoded);  // a frame already encoded with its length
  void SendDone(const Status& s);  // what sending a frame came to: aborts a peer that is not reading
  void SendError(uint64_t request_id, v1::Reason code, const std::string& message, bool fatal);
  // Sends what the queue holds for this agency, as credit allows, then
  // puts the sends' attempt counts on record (CommitAttempts).
  void PumpDeliveries();
  void TakeAndSend();
  // A lazy commit of the attempt counts SendDelivery noted: within a
  // commit or two of the sends (a kill -9 in between forgets them), the
  // store knows each copy was sent, so that after a crash a recall still
  // notifies a recipient that may have the copy and an expiry's report
  // says it may have been delivered. The only place counts are saved.
  void CommitAttempts();
  enum class Sent {
    kSent,     // in flight
    kSettled,  // settled without sending (refused now, or recalled)
    kHeld,     // cannot be sent now (its copy cannot be made): back in the queue
  };
  // Re-checks the policy and sends one delivery.
  Sent SendDelivery(QueuedDelivery d);
  // Commits c, which settles d without sending it (kSettled); if that
  // fails, d goes back to the queue and the pump pauses (HoldAndGiveBack).
  void SubmitSettled(QueueChange& c, const QueuedDelivery& d);
  // Refuses message copy d at delivery (the policy's re-check, or a copy
  // too large for a frame): audited not_delivered with decision, rules,
  // policy_version and record_detail; out of the queue; the sender gets a
  // report with reason and sender_detail. kSettled.
  Sent RefuseCopy(const QueuedDelivery& d, std::string decision, std::string rules, std::string policy_version,
                  std::string record_detail, v1::Reason reason, const std::string& sender_detail);
  // Deliveries whose commit failed go back to the queue (they are still
  // pending in the store) and this session's pump pauses for kHeldRetry:
  // taken again at once, they would fail again at once, for as long as the
  // store cannot be written (a full disk), each a commit and an error line.
  void HoldAndGiveBack(std::vector<QueuedDelivery> back);
  // Submits the DeliveryAcks gathered since the last call as one commit.
  // Run calls it before it handles any other frame (so that a later frame,
  // a forward of what was just acknowledged say, finds the ack committed),
  // and it runs when the reader waits for the socket.
  void FlushAcks();
  void AckCommitted(const std::vector<int64_t>& ids, const Status& s);
  void FlushPublishAcks();
  // Gives every unacknowledged delivery back to the mailbox.
  void ReturnDeliveries();
  // Ends receiving: returns deliveries, releases the agency's receiver
  // claim, and lets a session that took over begin.
  void StopReceiving();
  void HandOver();

  BrokerState& broker_;
  const uint64_t id_;
  const std::string peer_;   // "127.0.0.1:40522"
  const std::string source_;  // "127.0.0.1", "2001:db8:1:2::/64"
  std::string tag_;          // log prefix: "session 12 police@127.0.0.1:40522"
  net::FrameStream stream_;
  boost::asio::steady_timer watchdog_;
  Phase phase_ = Phase::kHandshake;
  net::Clock::time_point started_;
  net::Clock::time_point close_started_{};
  std::shared_ptr<tls::Context> tls_;  // the context this connection was made with
  std::string agency_;
  PeerIdentity identity_;
  X509* peer_cert_ = nullptr;          // owned (up-referenced), for Revalidate
  STACK_OF_X509* peer_chain_ = nullptr;

  bool agency_counted_ = false;  // counted in Admission's sessions of agency_
  bool draining_ = false;
  uint32_t in_flight_publishes_ = 0;
  // For a frame that NeedsAppliedStore: whether the database could be
  // written when Run waited for the applier (if not, the handler answers
  // store_failure instead of reading it). Its reads then need not wait.
  Status store_applied_;
  // The frame being handled is a publish whose body ParseFrame left
  // unparsed (type empty otherwise): its bytes are in stream_.last_frame().
  proto::VouchedBody vouched_;

  bool receiving_ = false;
  // Took over from a session that has not yet given its deliveries back.
  bool awaiting_predecessor_ = false;
  // Replaced by this session (take-over): told once this one stops receiving.
  std::shared_ptr<Session> successor_;
  // The next delivery could not be made (SendDelivery: kHeld): the pump
  // tries again from then on, not at once (which would spin).
  net::Clock::time_point held_until_{};
  uint32_t credit_ = 0;
  std::map<int64_t, InFlight> unacked_;   // by delivery id, oldest first
  std::vector<std::pair<int64_t, uint32_t>> sent_attempts_;  // sends not yet on record (CommitAttempts)
  size_t acking_ = 0;                     // of them, acknowledged and waiting for their commit
  // DeliveryAcks read but not yet submitted (FlushAcks): one finished
  // delivery each.
  std::optional<QueueChange> acks_;
  // Of them, the messages whose copy was acknowledged (Mailboxes::AcksSubmitted).
  std::vector<std::shared_ptr<QueuedMessage>> acked_messages_;
  // PrepareRecall's: the message it marked, whether it was not marked
  // before, and who was acknowledging it.
  std::shared_ptr<QueuedMessage> recall_marked_;
  bool recall_marked_newly_ = false;
  std::vector<std::string> recall_acking_;
  bool ack_flush_posted_ = false;

  // Touched from any thread.
  std::atomic<bool> wake_posted_{false};
  std::mutex answers_mu_;
  // Guarded by answers_mu_: SendPublishAck's, for FlushPublishAcks (one is
  // posted while this is not empty).
  std::vector<std::string> answers_;

  uint64_t ping_nonce_ = 0;
  bool ping_outstanding_ = false;
};

}  // namespace liaison::broker
