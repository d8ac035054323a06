// Session lifecycle: handshake, identity, the reader loop, the watchdog and
// the orderly end. Frame handlers live in handle_*.cpp.
#include "broker/detail/session.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "broker/detail/broker_state.h"
#include "proto/frame_codec.h"

namespace liaison::broker {

namespace asio = boost::asio;
using net::Clock;

namespace {
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);
constexpr auto kCloseGrace = std::chrono::seconds(2);
// The first block of a session's frame arena, one page: the benchmark's
// Publish of 1 KiB takes 1,720 bytes of it (a larger message adds a block,
// freed at the next frame). Every session uses it (Hello), and protobuf
// fills a block from both ends: 8 KiB made an idle session 8.6 KiB larger.
constexpr size_t kFrameArenaBytes = 4096;

// The watchdog's tick: a quarter of the shortest deadline, 10 ms to 1 s.
Clock::duration WatchdogTick(const Limits& l) {
  auto shortest = std::min({l.handshake_timeout, l.idle_timeout, l.ping_interval, l.write_timeout,
                            l.delivery_timeout});
  auto tick = std::chrono::duration_cast<Clock::duration>(shortest) / 4;
  return std::clamp<Clock::duration>(tick, std::chrono::milliseconds(10), std::chrono::seconds(1));
}

// Why a TLS handshake failed, in words an operator can act on.
std::string HandshakeFailure(SSL* ssl, const boost::system::error_code& ec) {
  const long verify = SSL_get_verify_result(ssl);
  if (verify != X509_V_OK) {
    return std::string("client certificate refused: ") + X509_verify_cert_error_string(verify);
  }
  return ec.message();
}

}  // namespace

Session::Session(BrokerState& state, std::shared_ptr<tls::Context> tls, net::TlsStream stream, uint64_t id,
                 std::string peer, std::string source)
    : broker_(state),
      id_(id),
      peer_(std::move(peer)),
      source_(std::move(source)),
      tag_("session " + std::to_string(id) + " " + peer_),
      stream_(std::move(stream), state.config.limits.max_frame_bytes, state.config.limits.max_queued_bytes),
      watchdog_(stream_.strand()),
      started_(Clock::now()),
      tls_(std::move(tls)) {}

Session::~Session() {
  if (successor_) successor_->ResumeAfterTakeOver();  // not reached: StopReceiving hands over
  if (peer_cert_) X509_free(peer_cert_);
  if (peer_chain_) sk_X509_pop_free(reinterpret_cast<STACK_OF(X509)*>(peer_chain_), X509_free);
}

void Session::Start() {
  broker_.router.Add(shared_from_this());
  asio::co_spawn(stream_.strand(), Run(), [self = shared_from_this()](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      spdlog::error("{}: internal error, closing: {}", self->tag_, ex.what());
    }
    self->Abort();
    self->Finish();
  });
}

asio::awaitable<void> Session::Run() {
  auto self = shared_from_this();
  asio::co_spawn(stream_.strand(), Watchdog(), asio::detached);

  const net::ErrorCode ec = co_await stream_.tls().Handshake(net::TlsStream::Role::kServer);
  broker_.admission.EndHandshake(source_);
  if (ec) {
    broker_.stats.handshakes_failed++;
    const std::string why = HandshakeFailure(stream_.tls().native_handle(), ec);
    broker_.refusals.Count(PeerAddress(), "tls_handshake: " + why);
    if (phase_ != Phase::kClosed) spdlog::info("{}: TLS handshake failed: {}", tag_, why);
    stream_.Abort();
    Finish();
    co_return;
  }

  X509* cert = SSL_get0_peer_certificate(stream_.tls().native_handle());
  if (cert) {
    X509_up_ref(cert);
    peer_cert_ = cert;
  }
  if (STACK_OF(X509)* chain = SSL_get_peer_cert_chain(stream_.tls().native_handle())) {
    peer_chain_ = reinterpret_cast<STACK_OF_X509*>(X509_chain_up_ref(chain));
  }
  identity_ = tls::IdentityOf(cert);
  const PeerIdentity& peer = identity_;
  auto policy = broker_.policy();
  auto agency = policy->Identify(peer);
  asio::co_spawn(stream_.strand(), Writer(), asio::detached);
  // The handshake verified the certificate against the CA bundle and CRLs
  // of the moment the connection was accepted (tls_). A reload since then
  // re-checked only the sessions past their handshake (Revalidate skips
  // the others), so a certificate revoked by it would get a session, and
  // its agency's deliveries, for as long as the handshake was held open
  // (up to handshake_timeout). Checked here against the current files;
  // a reload from now on posts a Revalidate that finds this session
  // identified.
  if (const auto current = broker_.tls_context(); current != tls_) {
    if (Status s = tls::VerifyClientCertificate(*current, peer_cert_, peer_chain_); !s.ok()) {
      broker_.stats.handshakes_failed++;
      broker_.refusals.Count(PeerAddress(), "tls_handshake: client certificate refused: " + s.message());
      spdlog::info("{}: TLS handshake began before a reload; the certificate is no longer accepted: {}", tag_,
                   s.message());
      SendError(0, v1::REASON_PERMISSION_DENIED, "the certificate is no longer accepted: " + s.message(), true);
      Finish();
      co_return;
    }
  }
  if (!agency.ok()) {
    broker_.stats.identities_refused++;
    broker_.refusals.Count(PeerAddress(), "no_agency: certificate " + peer.cert_sha256.substr(0, 16));
    spdlog::warn("{}: refused: {} (certificate sha256 {})", tag_, Printable(agency.status().message(), 400),
                 peer.cert_sha256);
    SendError(0, v1::REASON_PERMISSION_DENIED, "this certificate does not identify an agency of this network", true);
    Finish();
    co_return;
  }
  if (!broker_.admission.AddSession((*agency)->id)) {
    broker_.refusals.Count(PeerAddress(), "too_many_connections: " + (*agency)->id);
    spdlog::warn("{}: refused: agency '{}' already has {} connections (limits.max_connections_per_agency)", tag_,
                 (*agency)->id, broker_.config.limits.max_connections_per_agency);
    SendError(0, v1::REASON_TOO_MANY_CONNECTIONS,
              "agency '" + (*agency)->id + "' already has the most connections this broker allows", true);
    Finish();
    co_return;
  }
  agency_counted_ = true;
  agency_ = (*agency)->id;
  tag_ = "session " + std::to_string(id_) + " " + agency_ + "@" + peer_;
  phase_ = Phase::kAwaitHello;
  spdlog::info("{}: authenticated as agency '{}' (certificate sha256 {})", tag_, agency_,
               peer.cert_sha256.substr(0, 16));
  audit::Record accepted = MakeRecord("connection_accepted");
  accepted.actor = agency_;
  accepted.cert_sha256 = peer.cert_sha256;
  accepted.detail = "peer=" + peer_ + " session=" + std::to_string(id_);
  broker_.store->Append({std::move(accepted)}, nullptr);

  // The session's frames are parsed into one arena, emptied after each is
  // handled (nothing a handler keeps points into it: a published message is
  // queued as its serialized bytes). Its first block is the session's own,
  // so that a usual frame allocates nothing; Reset frees what grew beyond.
  std::unique_ptr<char[]> first_block(new char[kFrameArenaBytes]);  // uninitialised: untouched until used
  google::protobuf::ArenaOptions arena_options;
  arena_options.initial_block = first_block.get();
  arena_options.initial_block_size = kFrameArenaBytes;
  google::protobuf::Arena arena(arena_options);
  while (phase_ != Phase::kClosed && !stream_.closing()) {
    v1::Frame& frame = *google::protobuf::Arena::CreateMessage<v1::Frame>(&arena);
    Status s = co_await stream_.NextFrame();
    if (s.ok()) s = ParseFrame(&frame);
    if (!s.ok()) {
      if (s.IsUnavailable()) {
        if (!stream_.closing()) spdlog::info("{}: {}", tag_, s.message());
        break;
      }
      broker_.stats.protocol_errors++;
      const bool framing = s.IsProtocolError();
      spdlog::warn("{}: protocol error, closing: {}", tag_, s.message());
      SendError(0, framing ? v1::REASON_FRAME_TOO_LARGE : v1::REASON_MALFORMED_FRAME, s.message(), true);
      break;
    }
    if (frame.kind_case() != v1::Frame::kDeliveryAck) FlushAcks();
    if (frame.kind_case() == v1::Frame::kRecall) PrepareRecall(frame.recall());
    if (NeedsAppliedStore(frame)) {
      // The next frame is read only after this one is handled, so waiting
      // here keeps the session's order; other sessions go on meanwhile.
      store_applied_ = co_await AwaitApplied();
    }
    Dispatch(frame);
    arena.Reset();  // now, not at the next frame: an idle session keeps no large frame
  }
  Finish();
}

Status Session::ParseFrame(v1::Frame* frame) {
  if (proto::ParseVouchedPublish(stream_.last_frame(), PublishLimits(), frame, &vouched_)) return Status::Ok();
  vouched_ = {};
  if (Status s = proto::ParseFrame(stream_.last_frame(), frame); !s.ok()) return Status::InvalidArgument(s.message());
  return Status::Ok();
}

proto::MessageLimits Session::PublishLimits() const {
  proto::MessageLimits ml;
  ml.max_recipients = broker_.config.limits.max_recipients;
  return ml;
}

bool Session::NeedsAppliedStore(const v1::Frame& frame) {
  switch (frame.kind_case()) {
    case v1::Frame::kRecall: return true;
    case v1::Frame::kPublish:
      // A forward's original is looked up; so is an earlier publish of a
      // message that has expired (a repeat of it gets the original outcome).
      return !frame.publish().message().envelope().forwarded_from().empty() || IsExpiredPublish(frame.publish());
    default: return false;
  }
}

asio::awaitable<Status> Session::AwaitApplied() {
  // WhenApplied calls back on the applier's thread (or here, at once); the
  // answer is handed to the session's strand, where a timer that never
  // expires by itself wakes this coroutine.
  struct Waiter {
    explicit Waiter(const asio::strand<asio::io_context::executor_type>& strand)
        : timer(strand, asio::steady_timer::time_point::max()) {}
    asio::steady_timer timer;
    Status status;
    bool done = false;
  };
  auto w = std::make_shared<Waiter>(stream_.strand());
  broker_.store->WhenApplied([w, strand = stream_.strand()](const Status& s) {
    asio::post(strand, [w, s] {
      w->status = s;
      w->done = true;
      w->timer.cancel();
    });
  });
  while (!w->done) co_await w->timer.async_wait(kUseTuple);
  co_return w->status;
}

// The writer holds the session alive until its last operation (the TLS
// close) has completed: nothing of the stream may be freed under it.
asio::awaitable<void> Session::Writer() {
  auto self = shared_from_this();
  co_await stream_.WriteLoop();
}

asio::awaitable<void> Session::Watchdog() {
  auto self = shared_from_this();
  const auto tick = WatchdogTick(broker_.config.limits);
  while (phase_ != Phase::kClosed || !stream_.closed()) {
    // While closing, look often: the close must not wait a whole tick.
    watchdog_.expires_after(stream_.closing() ? std::chrono::milliseconds(20) : tick);
    co_await watchdog_.async_wait(kUseTuple);
    if (stream_.closed() && phase_ == Phase::kClosed) break;
    CheckDeadlines();
  }
}

void Session::CheckDeadlines() {
  const auto now = Clock::now();
  const Limits& l = broker_.config.limits;
  if (stream_.closed()) return;
  if (stream_.closing()) {
    if (close_started_ == Clock::time_point{}) close_started_ = now;
    if (now - close_started_ > kCloseGrace) stream_.Abort();
    return;
  }
  if (phase_ == Phase::kHandshake || phase_ == Phase::kAwaitHello) {
    if (now - started_ > l.handshake_timeout) {
      spdlog::info("{}: no {} within {} ms, closing", tag_, phase_ == Phase::kHandshake ? "TLS handshake" : "Hello",
                   l.handshake_timeout.count());
      stream_.Abort();
    }
    return;
  }
  Clock::time_point since;
  if (stream_.write_in_progress(&since) && now - since > l.write_timeout) {
    spdlog::warn("{}: peer has not read for {} ms, closing ({} bytes queued)", tag_, l.write_timeout.count(),
                 stream_.queued_bytes());
    stream_.Abort();
    return;
  }
  const auto idle = now - stream_.last_read();
  if (idle > l.idle_timeout) {
    spdlog::info("{}: idle for {} ms, closing", tag_, l.idle_timeout.count());
    SendError(0, v1::REASON_IDLE_TIMEOUT, "no frames received within the idle timeout", true);
    return;
  }
  if (idle > l.ping_interval && !ping_outstanding_) {
    ping_outstanding_ = true;
    v1::Frame f;
    f.mutable_ping()->set_nonce(++ping_nonce_);
    Send(f);
  }
  // A recipient that stops acknowledging holds its deliveries hostage: end
  // the session, so they go back to the queue for its next one.
  for (const auto& [id, f] : unacked_) {
    if (f.acking || now - f.sent_at <= l.delivery_timeout) continue;
    spdlog::warn("{}: delivery {} not acknowledged within {} ms, closing", tag_, id, l.delivery_timeout.count());
    SendError(0, v1::REASON_DELIVERY_TIMEOUT,
              "delivery " + std::to_string(id) + " was not acknowledged in time; it will be sent again", true);
    return;
  }
  PumpDeliveries();
}

void Session::Send(const v1::Frame& frame) {
  if (stream_.closed()) return;
  SendEncoded(proto::EncodeFrame(frame, broker_.config.limits.max_frame_bytes));
}

void Session::SendEncoded(Result<std::string> encoded) {
  SendDone(encoded.ok() ? stream_.SendEncoded(std::move(encoded).value()) : encoded.status());
}

void Session::SendDone(const Status& s) {
  if (stream_.closed()) return;  // nothing is sent any more, and that is no news
  if (s.IsUnavailable()) {
    spdlog::warn("{}: outgoing queue over {} bytes (peer not reading), closing", tag_,
                 broker_.config.limits.max_queued_bytes);
    stream_.Abort();
  } else if (!s.ok()) {
    spdlog::error("{}: cannot send a frame: {}", tag_, s.message());
  }
}

void Session::SendError(uint64_t request_id, v1::Reason code, const std::string& message, bool fatal) {
  v1::Frame f;
  auto* e = f.mutable_error();
  e->set_request_id(request_id);
  e->set_code(code);
  e->set_message(message);
  e->set_fatal(fatal);
  Send(f);
  if (fatal) {
    StopReceiving();  // at once, so the agency can reconnect and get its deliveries
    stream_.CloseGracefully();
  }
}

void Session::StopReceiving() {
  if (!receiving_) return;
  FlushAcks();
  receiving_ = false;
  // The deliveries go back before the receiving slot does: the agency's
  // next receiving session finds them queued ahead of what came later.
  ReturnDeliveries();
  broker_.router.ReleaseReceiver(agency_, id_);
  HandOver();
}

void Session::HandOver() {
  // Taken over before its own predecessor gave its deliveries back: the
  // successor waits for those too (ResumeAfterTakeOver hands on).
  if (!successor_ || awaiting_predecessor_) return;
  std::shared_ptr<Session> next = std::move(successor_);
  successor_.reset();
  next->ResumeAfterTakeOver();
}

void Session::ResumeAfterTakeOver() {
  asio::post(stream_.strand(), [self = shared_from_this()] {
    self->awaiting_predecessor_ = false;
    if (self->receiving_) {
      self->PumpDeliveries();
    } else {
      self->HandOver();
    }
  });
}

void Session::Finish() {
  if (phase_ == Phase::kClosed) return;
  const bool was_identified = !agency_.empty();
  phase_ = Phase::kClosed;
  stream_.CloseGracefully();
  StopReceiving();
  if (agency_counted_) broker_.admission.RemoveSession(agency_);
  agency_counted_ = false;
  broker_.router.Remove(id_);
  watchdog_.cancel();
  if (was_identified) {
    spdlog::info("{}: closed ({} bytes in, {} bytes out)", tag_, stream_.bytes_read(), stream_.bytes_written());
  }
}

void Session::Abort() {
  asio::post(stream_.strand(), [self = shared_from_this()] { self->stream_.Abort(); });
}

std::string Session::PeerAddress() const {
  const auto colon = peer_.rfind(':');
  return colon == std::string::npos ? peer_ : peer_.substr(0, colon);
}

void Session::Revalidate() {
  asio::post(stream_.strand(), [self = shared_from_this()] {
    if (self->phase_ != Phase::kReady && self->phase_ != Phase::kAwaitHello) return;
    if (self->stream_.closing()) return;
    auto policy = self->broker_.policy();
    auto agency = policy->Identify(self->identity_);
    std::string why;
    if (!agency.ok()) {
      why = "agency '" + self->agency_ + "' is no longer in the policy";
    } else if ((*agency)->id != self->agency_) {
      why = "the certificate now identifies agency '" + (*agency)->id + "'";
    } else if (Status s = tls::VerifyClientCertificate(*self->broker_.tls_context(), self->peer_cert_, self->peer_chain_);
               !s.ok()) {
      why = "the certificate is no longer accepted: " + s.message();
    }
    if (why.empty()) return;
    spdlog::warn("{}: closing after reload: {}", self->tag_, why);
    self->SendError(0, v1::REASON_PERMISSION_DENIED, why, true);
  });
}

void Session::BeginDrain() {
  asio::post(stream_.strand(), [self = shared_from_this()] { self->draining_ = true; });
}

void Session::Shutdown(v1::Reason reason, std::string message, std::shared_ptr<Session> successor) {
  asio::post(stream_.strand(), [self = shared_from_this(), reason, message = std::move(message),
                                successor = std::move(successor)]() mutable {
    if (successor) self->successor_ = std::move(successor);
    if (!self->stream_.closing()) {
      if (self->phase_ == Phase::kReady || self->phase_ == Phase::kAwaitHello) {
        self->SendError(0, reason, message, true);
      } else {
        self->stream_.Abort();
      }
    }
    // Still receiving only while closing: Finish stops it and hands over.
    if (!self->receiving_) self->HandOver();
  });
}

void Session::SendPublishAck(std::string encoded) {
  {
    std::lock_guard lock(answers_mu_);
    answers_.push_back(std::move(encoded));
    if (answers_.size() > 1) return;  // a FlushPublishAcks is on its way
  }
  asio::post(stream_.strand(), [self = shared_from_this()] { self->FlushPublishAcks(); });
}

void Session::FlushPublishAcks() {
  std::vector<std::string> answers;
  {
    std::lock_guard lock(answers_mu_);
    answers.swap(answers_);
  }
  for (auto& encoded : answers) {
    if (in_flight_publishes_ > 0) --in_flight_publishes_;
    if (stream_.closed() || encoded.empty()) continue;
    if (!stream_.SendEncoded(std::move(encoded)).ok()) {
      spdlog::warn("{}: outgoing queue full (peer not reading), closing", tag_);
      stream_.Abort();
    }
  }
}

void Session::Dispatch(v1::Frame& frame) {
  if (phase_ == Phase::kAwaitHello && frame.kind_case() != v1::Frame::kHello) {
    SendError(0, v1::REASON_PROTOCOL_ERROR, "the first frame must be Hello", true);
    return;
  }
  switch (frame.kind_case()) {
    case v1::Frame::kHello: HandleHello(frame.hello()); break;
    case v1::Frame::kPublish: HandlePublish(*frame.mutable_publish()); break;
    case v1::Frame::kDeliveryAck: HandleDeliveryAck(frame.delivery_ack()); break;
    case v1::Frame::kRecall: HandleRecall(frame.recall()); break;
    case v1::Frame::kPing: HandlePing(frame.ping()); break;
    case v1::Frame::kPong: HandlePong(frame.pong()); break;
    case v1::Frame::kError: HandleError(frame.error()); break;
    case v1::Frame::kAuditQuery: HandleAuditQuery(frame.audit_query()); break;
    case v1::Frame::kConsistencyProofRequest: HandleConsistencyProofRequest(frame.consistency_proof_request()); break;
    case v1::Frame::kWelcome:
    case v1::Frame::kPublishAck:
    case v1::Frame::kDeliver:
    case v1::Frame::kRecallAck:
    case v1::Frame::kAuditQueryResult:
    case v1::Frame::kConsistencyProof:
      broker_.stats.protocol_errors++;
      SendError(0, v1::REASON_PROTOCOL_ERROR, "this frame type is sent by the broker, not to it", false);
      break;
    case v1::Frame::KIND_NOT_SET:
      broker_.stats.protocol_errors++;
      SendError(0, v1::REASON_PROTOCOL_ERROR, "empty frame, or a frame type this broker does not know", false);
      break;
  }
}

}  // namespace liaison::broker
