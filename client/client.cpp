#include "client/client.h"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <google/protobuf/util/time_util.h>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cerrno>
#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "common/detail/frame_stream.h"
#include "common/files.h"
#include "common/detail/tls.h"
#include "proto/detail/pb.h"
#include "proto/frame_codec.h"
#include "proto/names.h"

namespace liaison::client {

namespace asio = boost::asio;
using net::Clock;
using tcp = asio::ip::tcp;

namespace {
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);
constexpr uint32_t kProtocolVersion = 1;
constexpr size_t kMaxQueuedBytes = 64 * 1024 * 1024;
// Frames from the broker may be as large as its configuration allows (up
// to 64 MiB); what we send is bounded by the broker's Welcome.
constexpr uint32_t kMaxIncomingFrameBytes = 64 * 1024 * 1024 + 1024;
constexpr auto kWriteStallLimit = std::chrono::seconds(30);
// Beside the witness file: when a request for a proof was first left
// unproven (ClientOptions::witness_max_unproven).
constexpr const char* kUnprovenSuffix = ".unproven";

int64_t WallClockMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string Rfc3339Ms(int64_t ms) {
  return google::protobuf::util::TimeUtil::ToString(google::protobuf::util::TimeUtil::MillisecondsToTimestamp(ms));
}

audit::Checkpoint FromProto(const v1::Checkpoint& c) {
  audit::Checkpoint out;
  out.origin = c.origin();
  out.tree_size = c.tree_size();
  if (c.root_hash().size() == out.root.size()) std::copy(c.root_hash().begin(), c.root_hash().end(), out.root.begin());
  out.time_ms = c.time_ms();
  out.key_id = c.key_id();
  out.signature = c.signature();
  return out;
}

// An Error frame from the broker as a Status, keeping its words.
Status StatusFromError(const v1::Error& e) {
  const std::string text = e.message() + " (" + proto::ReasonName(e.code()) + ")";
  switch (e.code()) {
    case v1::REASON_PERMISSION_DENIED:
    case v1::REASON_RECEIVER_ACTIVE:
    case v1::REASON_SENDER_MISMATCH:
    case v1::REASON_NOT_AUDITOR: return Status::PermissionDenied(text);
    case v1::REASON_INVALID_AUDIT_REQUEST:
    case v1::REASON_INVALID_MESSAGE:
    case v1::REASON_UNSUPPORTED_VERSION: return Status::InvalidArgument(text);
    case v1::REASON_PROTOCOL_ERROR:
    case v1::REASON_FRAME_TOO_LARGE:
    case v1::REASON_MALFORMED_FRAME:
    case v1::REASON_UNKNOWN_DELIVERY:
    case v1::REASON_NOT_RECEIVING: return Status::ProtocolError(text);
    default: return Status::Unavailable(text);
  }
}

}  // namespace

bool PublishResult::AllAccepted() const {
  if (!status.ok() || outcomes.empty()) return false;
  for (const auto& o : outcomes) {
    if (o.outcome != "delivered" && o.outcome != "queued") return false;
  }
  return true;
}

struct Client::Impl : std::enable_shared_from_this<Impl> {
  explicit Impl(ClientOptions o)
      : opts(std::move(o)), work(asio::make_work_guard(ioc)), strand(asio::make_strand(ioc)), watchdog(strand) {}

  ClientOptions opts;
  asio::io_context ioc;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  net::Strand strand;
  std::thread thread;
  std::shared_ptr<tls::Context> ctx;
  std::unique_ptr<net::FrameStream> stream;
  asio::steady_timer watchdog;
  DeliveryHandler on_delivery;
  ClosedHandler on_closed;
  SessionInfo info;
  Clock::duration idle_limit = std::chrono::seconds(100);

  // Strand only. A request waiting for its answer: a publish or a recall.
  struct Pending {
    PublishHandler publish;
    RecallHandler recall;
  };
  std::map<uint64_t, Pending> pending;
  void Fail(Pending& p, const Status& status, const std::string& code);
  bool running = false;
  Status end_reason;

  // Requests other than Publish (audit queries, consistency proofs), by
  // request id; called with the answer, or with the Error's status and
  // code, or with Unavailable when the connection ended. Strand only.
  using RequestHandler = std::function<void(const Status&, const std::string& error_code, v1::Frame* answer)>;
  std::map<uint64_t, RequestHandler> requests;
  void SendRequest(v1::Frame& frame, uint64_t rid, RequestHandler handler);

  // Deliveries handed to the application and not yet acknowledged, by id,
  // with their attempt; at most `credit` (strand only). Counted as the
  // broker counts them (broker/handle_delivery_ack.cpp): every Deliver
  // (message, recall notice or report) takes a unit, the first
  // acknowledgement of its id and attempt gives it back.
  std::map<uint64_t, uint32_t> unacked;
  uint32_t credit = 0;
  Status Admit(const v1::Deliver& delivery);
  // Tells the broker it broke the protocol (an Error, protocol_error).
  void SendProtocolError(const std::string& message, bool fatal);
  void Violation(const Status& why);

  // The witness (strand only, except witness_alarm and witness_busy under mu).
  bool witness_loaded = false;
  std::optional<audit::Checkpoint> witnessed;
  std::optional<audit::Checkpoint> witness_checking;  // awaiting its consistency proof
  std::optional<audit::Checkpoint> witness_next;      // the newest that arrived meanwhile
  // When a request for a proof first went unproven since the witness last
  // advanced (ms since the epoch; 0: none), as the ".unproven" file keeps it.
  int64_t unproven_since_ms = 0;
  Status witness_alarm;      // guarded by mu
  bool witness_busy = false; // guarded by mu
  void Witness(const audit::Checkpoint& cp);
  void Unproven(const std::string& what, const std::string& why);
  void WitnessProof(const Status& s, const std::string& error_code, v1::Frame* answer);
  void Keep(const audit::Checkpoint& cp);
  void Alarm(const std::string& what);
  void SetWitnessBusy(bool busy);

  std::atomic<uint64_t> next_request_id{1};
  std::atomic<bool> ended_flag{false};
  std::mutex mu;
  std::condition_variable cv;
  bool ended = false;      // guarded by mu
  Status final_status;     // guarded by mu

  asio::awaitable<Status> DoConnect();
  asio::awaitable<void> ReadLoop();
  asio::awaitable<void> Watchdog();
  void HandleFrame(v1::Frame& frame);
  void End(Status why);
  void FailAllPending(const Status& why);
};

void Client::Impl::Alarm(const std::string& what) {
  std::lock_guard lock(mu);
  if (witness_alarm.ok()) witness_alarm = Status::Corruption("AUDIT ALARM: " + what);
}

void Client::Impl::SetWitnessBusy(bool busy) {
  {
    std::lock_guard lock(mu);
    witness_busy = busy;
  }
  cv.notify_all();
}

void Client::Impl::Keep(const audit::Checkpoint& cp) {
  witnessed = cp;
  (void)WriteFileAtomic(opts.checkpoint_file, audit::FormatCheckpoint(cp), 0600);
  if (unproven_since_ms != 0) {
    unproven_since_ms = 0;
    ::unlink((opts.checkpoint_file + kUnprovenSuffix).c_str());
  }
}

// A request for a proof from the witnessed checkpoint got none (why): the
// first since the witness last advanced is kept, and one left unproven
// witness_max_unproven after it is an alarm.
void Client::Impl::Unproven(const std::string& what, const std::string& why) {
  const int64_t now = WallClockMs();
  if (unproven_since_ms == 0) {
    unproven_since_ms = now;
    (void)WriteFileAtomic(opts.checkpoint_file + kUnprovenSuffix, std::to_string(now) + "\n", 0600);
  }
  const auto max = opts.witness_max_unproven.count();
  if (max > 0 && now - unproven_since_ms >= max) {
    Alarm(what + "has come without a consistency proof from the " + std::to_string(witnessed->tree_size) +
          " records witnessed since " + Rfc3339Ms(unproven_since_ms) + ", longer than the " +
          std::to_string(max / 1000) + " s allowed (the last answer: " + why +
          "): the log cannot be checked; ask the broker's operator why it does not prove it");
  }
}

// Compares a checkpoint from the broker with the newest one this agency
// has kept. A log that shrank, or another root at the same size, is an
// alarm at once; a larger log must come with a consistency proof from the
// kept checkpoint (asked for here, checked in WitnessProof) before it is
// kept. One proof at a time: checkpoints arriving meanwhile wait, the
// newest only.
void Client::Impl::Witness(const audit::Checkpoint& cp) {
  if (opts.checkpoint_file.empty() || cp.origin.empty()) return;
  if (!witness_loaded) {
    witness_loaded = true;
    // Starting afresh from whatever the broker shows now would drop what
    // was witnessed: a file that holds no checkpoint is an alarm.
    auto saved = LoadWitness(opts.checkpoint_file);
    if (!saved.ok()) {
      return Alarm("the witness file " + opts.checkpoint_file + " holds no checkpoint (" + saved.status().message() +
                   "); restore it, or remove it to start a new witness");
    }
    witnessed = *saved;
    // When requests were first left unproven, by an earlier connection or
    // run; a file that says no time counts from now.
    if (auto since = ReadFile(opts.checkpoint_file + kUnprovenSuffix, 64); since.ok()) {
      const int64_t ms = std::strtoll(since->c_str(), nullptr, 10);
      unproven_since_ms = ms > 0 ? ms : WallClockMs();
    }
  }
  {
    std::lock_guard lock(mu);
    if (!witness_alarm.ok()) return;  // raised once; the witness stays where it was
  }
  if (witness_checking) {
    if (!witness_next || cp.tree_size > witness_next->tree_size) witness_next = cp;
    return;
  }
  if (!witnessed || witnessed->tree_size == 0) {
    if (witnessed && (cp.origin != witnessed->origin || cp.key_id != witnessed->key_id)) {
      return Alarm("the broker's checkpoint names another log or key (" + cp.origin + " " + cp.key_id +
                   ") than the one witnessed (" + witnessed->origin + " " + witnessed->key_id + ")");
    }
    return Keep(cp);  // the first checkpoint seen (every log extends the empty one)
  }
  if (cp.origin != witnessed->origin || cp.key_id != witnessed->key_id) {
    return Alarm("the broker's checkpoint names another log or key (" + cp.origin + " " + cp.key_id +
                 ") than the one witnessed (" + witnessed->origin + " " + witnessed->key_id + ")");
  }
  if (cp.tree_size < witnessed->tree_size) {
    return Alarm("the audit log shrank from " + std::to_string(witnessed->tree_size) + " to " +
                 std::to_string(cp.tree_size) + " records");
  }
  if (cp.tree_size == witnessed->tree_size) {
    if (cp.root != witnessed->root) {
      Alarm("the audit log's root changed at " + std::to_string(cp.tree_size) + " records");
    }
    return;
  }
  witness_checking = cp;
  SetWitnessBusy(true);
  v1::Frame f;
  const uint64_t rid = next_request_id++;
  auto* r = f.mutable_consistency_proof_request();
  r->set_request_id(rid);
  r->set_old_size(witnessed->tree_size);
  r->set_new_size(cp.tree_size);
  SendRequest(f, rid, [this](const Status& s, const std::string& code, v1::Frame* answer) {
    WitnessProof(s, code, answer);
  });
}

void Client::Impl::WitnessProof(const Status& s, const std::string& error_code, v1::Frame* answer) {
  const audit::Checkpoint cp = *witness_checking;
  witness_checking.reset();
  const uint64_t m = witnessed->tree_size, n = cp.tree_size;
  const std::string what = "the broker's audit log of " + std::to_string(n) + " records ";
  if (!s.ok()) {
    // A lost connection, a busy broker, or one that cannot read its log
    // just now (audit_unavailable: its disk is full, say) proves nothing
    // either way: the witness stays where it was and asks again next time.
    // (A broker could give these answers for ever; it could answer
    // audit_busy for ever too.) Any other refusal to prove is itself an
    // alarm.
    if (!error_code.empty() && error_code != "audit_busy" && error_code != "audit_unavailable") {
      Alarm(what + "came without a consistency proof from the " + std::to_string(m) +
            " records witnessed (the broker answered: " + s.message() + ")");
    } else {
      Unproven(what, s.message());
    }
  } else {
    const v1::ConsistencyProof& p = answer->consistency_proof();
    std::vector<merkle::Hash> path;
    bool well_formed = p.old_size() == m && p.new_size() == n;
    for (const auto& h : p.path()) {
      if (h.size() != 32) {
        well_formed = false;
        break;
      }
      merkle::Hash hash;
      std::copy(h.begin(), h.end(), hash.begin());
      path.push_back(hash);
    }
    if (!well_formed || !merkle::VerifyConsistency(m, n, witnessed->root, cp.root, path)) {
      Alarm(what + "does not extend the log of " + std::to_string(m) +
            " records this agency witnessed (the consistency proof fails): the log was rewritten or forked");
    } else {
      Keep(cp);
    }
  }
  if (witness_next) {
    const audit::Checkpoint next = *witness_next;
    witness_next.reset();
    Witness(next);
  }
  if (!witness_checking) SetWitnessBusy(false);
}

void Client::Impl::SendRequest(v1::Frame& frame, uint64_t rid, RequestHandler handler) {
  if (ended_flag || !running || !stream) {
    handler(Status::Unavailable("not connected to the broker"), "", nullptr);
    return;
  }
  requests.emplace(rid, std::move(handler));
  if (Status s = stream->Send(frame); !s.ok()) {
    auto h = std::move(requests[rid]);
    requests.erase(rid);
    h(Status::Unavailable("cannot send to the broker: " + s.message()), "", nullptr);
  }
}

asio::awaitable<Status> Client::Impl::DoConnect() {
  tcp::resolver resolver(strand);
  auto [rec, endpoints] = co_await resolver.async_resolve(opts.host, std::to_string(opts.port), kUseTuple);
  if (rec) co_return Status::Unavailable("cannot resolve " + opts.host + ": " + rec.message());
  net::TlsStream tls_stream(net::Socket(strand), ctx->native_handle());
  auto [cec, ep] = co_await asio::async_connect(tls_stream.socket(), endpoints, kUseTuple);
  if (cec) {
    co_return Status::Unavailable("cannot connect to " + opts.host + ":" + std::to_string(opts.port) + ": " +
                                  cec.message());
  }
  boost::system::error_code ignored;
  tls_stream.socket().set_option(tcp::no_delay(true), ignored);
  const std::string& name = opts.server_name.empty() ? opts.host : opts.server_name;
  if (!tls_stream.SetExpectedServerName(name)) {
    co_return Status::InvalidArgument("cannot check the broker certificate against the name '" + name + "'");
  }
  stream = std::make_unique<net::FrameStream>(std::move(tls_stream), kMaxIncomingFrameBytes, kMaxQueuedBytes);

  const net::ErrorCode hec = co_await stream->tls().Handshake(net::TlsStream::Role::kClient);
  if (hec) {
    const long verify = SSL_get_verify_result(stream->tls().native_handle());
    std::string why = hec.message();
    if (verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH) {
      why = "the broker certificate is not valid for the name '" + name + "' (use --server-name)";
    } else if (verify != X509_V_OK) {
      why = std::string("broker certificate refused: ") + X509_verify_cert_error_string(verify);
    }
    co_return Status::Unavailable("TLS handshake with " + opts.host + ":" + std::to_string(opts.port) +
                                  " failed: " + why);
  }
  asio::co_spawn(strand, stream->WriteLoop(), asio::detached);

  v1::Frame hello;
  auto* h = hello.mutable_hello();
  h->set_protocol_version(kProtocolVersion);
  h->set_client_name(opts.client_name);
  h->set_receive(opts.receive);
  h->set_take_over(opts.take_over);
  h->set_credit(opts.credit);
  stream->Send(hello);

  v1::Frame f;
  Status s = co_await stream->ReadFrame(&f);
  if (!s.ok()) {
    // With TLS 1.3 the broker checks our certificate after our side of the
    // handshake has finished, so a refusal shows up on the first read.
    if (s.message().find("alert") != std::string::npos || s.message().find("certificate") != std::string::npos) {
      co_return Status::PermissionDenied("the broker refused this client certificate (" + s.message() + ")");
    }
    co_return Status::Unavailable("no Welcome from the broker: " + s.message());
  }
  if (f.has_error()) co_return StatusFromError(f.error());
  if (!f.has_welcome()) co_return Status::ProtocolError("the broker answered Hello with something other than Welcome");
  const v1::Welcome& w = f.welcome();
  info.agency_id = w.agency_id();
  info.session_id = w.session_id();
  info.broker_name = w.broker_name();
  info.receiving = w.receiving();
  info.credit = w.credit();
  info.max_frame_bytes = w.max_frame_bytes();
  info.max_recipients = w.max_recipients();
  info.checkpoint = FromProto(w.checkpoint());
  // The credit this session granted: the broker's default when none was
  // asked for (it says which), never more than was asked.
  if (opts.receive && info.receiving) credit = opts.credit == 0 ? info.credit : std::min(opts.credit, info.credit);
  if (w.idle_timeout_ms() > 0) idle_limit = std::chrono::milliseconds(w.idle_timeout_ms()) + std::chrono::seconds(10);
  running = true;
  Witness(info.checkpoint);
  co_return Status::Ok();
}

asio::awaitable<void> Client::Impl::ReadLoop() {
  auto self = shared_from_this();
  v1::Frame f;
  for (;;) {
    Status s = co_await stream->ReadFrame(&f);
    if (!s.ok()) {
      End(end_reason.ok() && !stream->closing() ? Status::Unavailable("connection to the broker lost: " + s.message())
                                                : end_reason);
      co_return;
    }
    HandleFrame(f);
    if (!running) {
      End(end_reason);
      co_return;
    }
  }
}

void Client::Impl::HandleFrame(v1::Frame& f) {
  switch (f.kind_case()) {
    case v1::Frame::kPublishAck: {
      const v1::PublishAck& ack = f.publish_ack();
      auto it = pending.find(ack.request_id());
      if (it == pending.end()) return;
      PublishResult r;
      r.message_id = ack.message_id();
      r.checkpoint = FromProto(ack.checkpoint());
      r.duplicate = ack.duplicate();
      Witness(r.checkpoint);
      for (const auto& o : ack.outcomes()) {
        r.outcomes.push_back({o.recipient(), proto::OutcomeName(o.outcome()),
                              o.reason() == v1::REASON_UNSPECIFIED ? "" : proto::ReasonName(o.reason()), o.detail()});
      }
      auto done = std::move(it->second.publish);
      pending.erase(it);
      if (done) done(std::move(r));
      return;
    }
    case v1::Frame::kRecallAck: {
      const v1::RecallAck& ack = f.recall_ack();
      auto it = pending.find(ack.request_id());
      if (it == pending.end()) return;
      RecallResult r;
      r.message_id = ack.message_id();
      r.withdrawn.assign(ack.withdrawn().begin(), ack.withdrawn().end());
      r.notified.assign(ack.notified().begin(), ack.notified().end());
      auto done = std::move(it->second.recall);
      pending.erase(it);
      if (done) done(std::move(r));
      return;
    }
    case v1::Frame::kDeliver: {
      v1::Deliver& del = *f.mutable_deliver();
      if (Status s = Admit(del); !s.ok()) return Violation(s);
      Delivery d;
      d.delivery_id = del.delivery_id();
      d.attempt = del.attempt();
      if (del.has_recall()) {
        d.kind = Delivery::Kind::kRecallNotice;
        d.recall.message_id = del.recall().message_id();
        d.recall.sender = del.recall().sender();
        d.recall.reason = del.recall().reason();
        d.recall.recalled_at_ms = google::protobuf::util::TimeUtil::TimestampToMilliseconds(del.recall().recalled_at());
      } else if (del.has_report()) {
        const v1::DeliveryReport& rep = del.report();
        d.kind = Delivery::Kind::kReport;
        d.report.message_id = rep.message_id();
        d.report.recipient = rep.recipient();
        d.report.outcome = proto::OutcomeName(rep.outcome());
        d.report.reason = rep.reason() == v1::REASON_UNSPECIFIED ? "" : proto::ReasonName(rep.reason());
        d.report.detail = rep.detail();
        d.report.time_ms = google::protobuf::util::TimeUtil::TimestampToMilliseconds(rep.time());
      } else {
        d.message = std::shared_ptr<const v1::Message>(del.release_message());
        if (!d.message) d.message = std::make_shared<v1::Message>();
      }
      if (on_delivery) on_delivery(std::move(d));
      return;
    }
    case v1::Frame::kPing: {
      v1::Frame pong;
      pong.mutable_pong()->set_nonce(f.ping().nonce());
      stream->Send(pong);
      return;
    }
    case v1::Frame::kPong: return;
    case v1::Frame::kAuditQueryResult:
    case v1::Frame::kConsistencyProof: {
      const uint64_t rid = f.has_audit_query_result() ? f.audit_query_result().request_id()
                                                      : f.consistency_proof().request_id();
      auto it = requests.find(rid);
      if (it == requests.end()) return;
      auto handler = std::move(it->second);
      requests.erase(it);
      handler(Status::Ok(), "", &f);
      return;
    }
    case v1::Frame::kError: {
      const v1::Error& e = f.error();
      if (auto it = requests.find(e.request_id()); e.request_id() != 0 && it != requests.end()) {
        auto handler = std::move(it->second);
        requests.erase(it);
        handler(StatusFromError(e), proto::ReasonName(e.code()), nullptr);
      } else if (e.request_id() != 0) {
        auto it = pending.find(e.request_id());
        if (it != pending.end()) {
          Pending p = std::move(it->second);
          pending.erase(it);
          Fail(p, StatusFromError(e), proto::ReasonName(e.code()));
        }
      }
      if (e.fatal()) {
        end_reason = StatusFromError(e);
        running = false;
        stream->CloseGracefully();
      }
      return;
    }
    case v1::Frame::KIND_NOT_SET: {
      // A frame of a type this client does not know (from a newer broker,
      // say): answered as the broker answers one (docs/protocol.md, section
      // 3), not fatal, and the session goes on.
      SendProtocolError("frame of a type this client does not know; ignored", /*fatal=*/false);
      return;
    }
    default: {
      // A frame only a client sends (Publish, Hello, ...): a broker that
      // sends one is broken, and is told so before the connection ends.
      const auto* field = f.GetDescriptor()->FindFieldByNumber(static_cast<int>(f.kind_case()));
      return Violation(Status::ProtocolError("the broker sent a frame a broker never sends (" +
                                             (field ? field->name() : std::string("?")) + ")"));
    }
  }
}

// A broker that sends beyond the credit could make the application queue
// deliveries without bound: the delivery is not taken, and the connection
// ends. (The real broker stops at the credit: it never gets here.)
Status Client::Impl::Admit(const v1::Deliver& delivery) {
  const uint64_t id = delivery.delivery_id();
  if (credit == 0) {
    return Status::ProtocolError("the broker sent delivery " + std::to_string(id) +
                                 " on a session that does not receive (credit 0)");
  }
  if (unacked.count(id) != 0) {
    return Status::ProtocolError("the broker sent delivery " + std::to_string(id) +
                                 " again while it was still unacknowledged");
  }
  if (unacked.size() >= credit) {
    return Status::ProtocolError("the broker exceeded this session's credit of " + std::to_string(credit) +
                                 ": it sent delivery " + std::to_string(id) + " while " +
                                 std::to_string(unacked.size()) + " deliveries were unacknowledged");
  }
  unacked.emplace(id, delivery.attempt());
  return Status::Ok();
}

// Tells the broker why (its operator sees it in the broker's log), then
// closes; the application sees why through Wait() and its closed handler.
void Client::Impl::SendProtocolError(const std::string& message, bool fatal) {
  v1::Frame f;
  auto* e = f.mutable_error();
  e->set_code(v1::REASON_PROTOCOL_ERROR);
  e->set_message(message);
  e->set_fatal(fatal);
  stream->Send(f);
}

void Client::Impl::Violation(const Status& why) {
  SendProtocolError(why.message(), /*fatal=*/true);
  end_reason = why;
  running = false;
  stream->CloseGracefully();
}

asio::awaitable<void> Client::Impl::Watchdog() {
  auto self = shared_from_this();
  while (!ended_flag) {
    watchdog.expires_after(std::chrono::milliseconds(500));
    co_await watchdog.async_wait(kUseTuple);
    if (ended_flag || !stream) break;
    const auto now = Clock::now();
    Clock::time_point since;
    if (stream->write_in_progress(&since) && now - since > kWriteStallLimit) {
      end_reason = Status::Timeout("the broker stopped reading");
      stream->Abort();
    } else if (now - stream->last_read() > idle_limit) {
      end_reason = Status::Timeout("nothing heard from the broker for too long");
      stream->Abort();
    }
  }
}

void Client::Impl::Fail(Pending& p, const Status& status, const std::string& code) {
  if (p.publish) {
    PublishResult r;
    r.status = status;
    r.error_code = code;
    p.publish(std::move(r));
  }
  if (p.recall) {
    RecallResult r;
    r.status = status;
    r.error_code = code;
    p.recall(std::move(r));
  }
}

void Client::Impl::FailAllPending(const Status& why) {
  auto reqs = std::move(requests);
  requests.clear();
  for (auto& [id, handler] : reqs) handler(why, "", nullptr);
  auto all = std::move(pending);
  pending.clear();
  for (auto& [id, p] : all) Fail(p, why, "");
}

void Client::Impl::End(Status why) {
  if (ended_flag.exchange(true)) return;
  running = false;
  if (stream) stream->CloseGracefully();
  watchdog.cancel();
  FailAllPending(Status::Unavailable("the connection ended before the broker answered; the outcome is unknown (" +
                                     (why.ok() ? std::string("closed") : why.message()) + ")"));
  {
    std::lock_guard lock(mu);
    ended = true;
    final_status = why;
  }
  cv.notify_all();
  if (on_closed) on_closed(why);
  // The I/O thread keeps running until Close(), so that requests made after
  // the end are still answered (as failed) rather than never.
}

Result<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options, DeliveryHandler on_delivery,
                                                ClosedHandler on_closed) {
  auto impl = std::make_shared<Impl>(options);
  auto ctx = tls::MakeClientContext(options.tls);
  if (!ctx.ok()) return ctx.status();
  impl->ctx = std::move(ctx).value();
  impl->on_delivery = std::move(on_delivery);
  impl->on_closed = std::move(on_closed);
  impl->thread = std::thread([impl] { impl->ioc.run(); });

  auto fut = asio::co_spawn(impl->strand, impl->DoConnect(), asio::use_future);
  Status s;
  if (fut.wait_for(options.connect_timeout) != std::future_status::ready) {
    asio::post(impl->strand, [impl] {
      if (impl->stream) impl->stream->Abort();
    });
    fut.wait();
    s = Status::Timeout("no answer from the broker within " + std::to_string(options.connect_timeout.count()) + " ms");
  } else {
    try {
      s = fut.get();
    } catch (const std::exception& e) {
      s = Status::Internal(std::string("connect failed: ") + e.what());
    }
  }
  if (!s.ok()) {
    asio::post(impl->strand, [impl] {
      if (impl->stream) impl->stream->Abort();
      impl->ended_flag = true;
      impl->watchdog.cancel();
      impl->work.reset();
    });
    impl->thread.join();
    return s;
  }
  asio::co_spawn(impl->strand, impl->ReadLoop(), asio::detached);
  asio::co_spawn(impl->strand, impl->Watchdog(), asio::detached);
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() { Close(); }

const SessionInfo& Client::session() const { return impl_->info; }

void Client::Publish(const v1::Message& message, PublishHandler done) {
  const uint64_t rid = impl_->next_request_id++;
  // Serialized straight into the frame (copying the message into a Frame
  // first was most of a publisher's own work).
  auto encoded = proto::EncodePublishFrame(
      rid, impl_->opts.want_reports, message,
      impl_->info.max_frame_bytes ? impl_->info.max_frame_bytes : proto::kDefaultMaxFrameBytes);
  asio::post(impl_->strand, [impl = impl_, rid, encoded = std::move(encoded), done = std::move(done)]() mutable {
    PublishResult r;
    if (!encoded.ok()) {
      r.status = Status::InvalidArgument("the message is too large for the broker: " + encoded.status().message());
    } else if (impl->ended_flag || !impl->running) {
      r.status = Status::Unavailable("not connected to the broker");
    } else {
      impl->pending[rid].publish = std::move(done);
      if (impl->stream->SendEncoded(std::move(encoded).value()).ok()) return;
      done = std::move(impl->pending[rid].publish);
      impl->pending.erase(rid);
      r.status = Status::Unavailable("too much data queued for the broker");
    }
    if (done) done(std::move(r));
  });
}

PublishResult Client::Publish(const v1::Message& message) {
  std::promise<PublishResult> p;
  auto f = p.get_future();
  Publish(message, [&p](PublishResult r) { p.set_value(std::move(r)); });
  return f.get();
}

AuditPage Client::QueryAudit(const AuditQuery& q) {
  auto answer = std::make_shared<std::promise<AuditPage>>();
  auto fut = answer->get_future();
  asio::post(impl_->strand, [impl = impl_, q, answer] {
    const uint64_t rid = impl->next_request_id++;
    v1::Frame f;
    auto* a = f.mutable_audit_query();
    a->set_request_id(rid);
    a->set_from_ms(q.from_ms);
    a->set_to_ms(q.to_ms);
    a->set_agency(q.agency);
    a->set_case_id(q.case_id);
    a->set_message_id(q.message_id);
    a->set_event(q.event);
    a->set_decision(q.decision);
    a->set_page_size(q.page_size);
    a->set_page_token(q.page_token);
    a->set_export_mode(q.export_mode);
    a->set_until_tree_size(q.until_tree_size);
    impl->SendRequest(f, rid, [answer](const Status& s, const std::string& code, v1::Frame* frame) {
      AuditPage page;
      if (!s.ok()) {
        page.status = s;
        page.error_code = code;
      } else if (!frame->has_audit_query_result()) {
        page.status = Status::ProtocolError("the broker answered an audit query with another frame");
      } else {
        const v1::AuditQueryResult& r = frame->audit_query_result();
        page.next_page_token = r.next_page_token();
        page.checkpoint = FromProto(r.checkpoint());
        page.stored_checkpoints.assign(r.stored_checkpoints().begin(), r.stored_checkpoints().end());
        for (const auto& row : r.rows()) {
          AuditRow out;
          audit::Record& rec = out.record;
          rec.seq = row.seq();
          out.hash_only = row.hash_only();
          if (row.leaf_hash().size() != out.leaf_hash.size()) {
            page.status = Status::ProtocolError("audit row " + std::to_string(row.seq()) + " has a malformed leaf hash");
            break;
          }
          std::copy(row.leaf_hash().begin(), row.leaf_hash().end(), out.leaf_hash.begin());
          out.leaf = row.leaf();
          rec.time_ms = row.time_ms();
          rec.event = row.event();
          rec.actor = row.actor();
          rec.cert_sha256 = row.cert_sha256();
          rec.message_id = row.message_id();
          rec.case_id = row.case_id();
          rec.sender = row.sender();
          rec.recipient = row.recipient();
          rec.message_type = row.message_type();
          rec.tlp = row.tlp();
          rec.purpose = row.purpose();
          rec.decision = row.decision();
          rec.rules = row.rules();
          rec.policy_version = row.policy_version();
          rec.obligations = row.obligations();
          rec.body_hmac = row.body_hmac();
          rec.detail = row.detail();
          page.rows.push_back(std::move(out));
        }
        if (!page.status.ok()) page.rows.clear();
      }
      answer->set_value(std::move(page));
    });
  });
  return fut.get();
}

Result<std::vector<merkle::Hash>> Client::ConsistencyProof(uint64_t old_size, uint64_t new_size) {
  auto answer = std::make_shared<std::promise<Result<std::vector<merkle::Hash>>>>();
  auto fut = answer->get_future();
  asio::post(impl_->strand, [impl = impl_, old_size, new_size, answer] {
    const uint64_t rid = impl->next_request_id++;
    v1::Frame f;
    auto* r = f.mutable_consistency_proof_request();
    r->set_request_id(rid);
    r->set_old_size(old_size);
    r->set_new_size(new_size);
    impl->SendRequest(f, rid, [answer, old_size, new_size](const Status& s, const std::string&, v1::Frame* frame) {
      if (!s.ok()) return answer->set_value(s);
      if (!frame->has_consistency_proof() || frame->consistency_proof().old_size() != old_size ||
          frame->consistency_proof().new_size() != new_size) {
        return answer->set_value(Status::ProtocolError("the broker answered with another proof than asked for"));
      }
      std::vector<merkle::Hash> path;
      for (const auto& h : frame->consistency_proof().path()) {
        if (h.size() != 32) return answer->set_value(Status::ProtocolError("malformed hash in a consistency proof"));
        merkle::Hash hash;
        std::copy(h.begin(), h.end(), hash.begin());
        path.push_back(hash);
      }
      answer->set_value(std::move(path));
    });
  });
  return fut.get();
}

void Client::Acknowledge(uint64_t delivery_id, uint32_t attempt) {
  asio::post(impl_->strand, [impl = impl_, delivery_id, attempt] {
    // The unit of credit is back once this is queued: the broker can only
    // use it after reading this acknowledgement.
    if (auto it = impl->unacked.find(delivery_id); it != impl->unacked.end() && it->second == attempt) {
      impl->unacked.erase(it);
    }
    if (impl->ended_flag || !impl->stream) return;
    v1::Frame f;
    f.mutable_delivery_ack()->set_delivery_id(delivery_id);
    f.mutable_delivery_ack()->set_attempt(attempt);
    impl->stream->Send(f);
  });
}

void Client::Recall(const std::string& message_id, const std::string& reason, RecallHandler done) {
  const uint64_t rid = impl_->next_request_id++;
  v1::Frame f;
  auto* r = f.mutable_recall();
  r->set_request_id(rid);
  r->set_message_id(message_id);
  r->set_reason(reason);
  asio::post(impl_->strand, [impl = impl_, rid, f = std::move(f), done = std::move(done)]() mutable {
    if (impl->ended_flag || !impl->running) {
      RecallResult r;
      r.status = Status::Unavailable("not connected to the broker");
      if (done) done(std::move(r));
      return;
    }
    impl->pending[rid].recall = std::move(done);
    impl->stream->Send(f);
  });
}

RecallResult Client::Recall(const std::string& message_id, const std::string& reason) {
  std::promise<RecallResult> p;
  auto f = p.get_future();
  Recall(message_id, reason, [&p](RecallResult r) { p.set_value(std::move(r)); });
  return f.get();
}

void Client::Close() {
  if (!impl_ || !impl_->thread.joinable()) return;
  if (std::this_thread::get_id() == impl_->thread.get_id()) {
    asio::post(impl_->strand, [impl = impl_] { impl->End(Status::Ok()); });
    return;
  }
  {
    // A consistency proof in flight decides the witness: let it arrive.
    std::unique_lock lock(impl_->mu);
    impl_->cv.wait_for(lock, std::chrono::seconds(5), [&] { return !impl_->witness_busy || impl_->ended; });
  }
  asio::post(impl_->strand, [impl = impl_] { impl->End(Status::Ok()); });
  {
    std::unique_lock lock(impl_->mu);
    impl_->cv.wait_for(lock, std::chrono::seconds(5), [&] { return impl_->ended; });
  }
  asio::post(impl_->strand, [impl = impl_] { impl->work.reset(); });
  // The writer sends close_notify; give it a moment, then force.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (!impl_->ioc.stopped() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!impl_->ioc.stopped()) {
    asio::post(impl_->strand, [impl = impl_] {
      if (impl->stream) impl->stream->Abort();
    });
    impl_->ioc.stop();
  }
  impl_->thread.join();
}

Status Client::Wait() {
  std::unique_lock lock(impl_->mu);
  impl_->cv.wait(lock, [&] { return impl_->ended; });
  return impl_->final_status;
}

bool Client::connected() const { return !impl_->ended_flag; }

Result<std::optional<audit::Checkpoint>> LoadWitness(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 && errno == ENOENT) return std::optional<audit::Checkpoint>();
  auto text = ReadFile(path, 64 * 1024);
  if (!text.ok()) return text.status();
  auto cp = audit::ParseCheckpoint(*text);
  if (!cp.ok()) return Status::Corruption(cp.status().message());
  return std::optional<audit::Checkpoint>(*cp);
}

Status Client::witness_status() const {
  std::lock_guard lock(impl_->mu);
  return impl_->witness_alarm;
}

}  // namespace liaison::client
