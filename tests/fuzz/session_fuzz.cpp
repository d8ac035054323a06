// Fuzz target: the broker's session state machine (broker/session.cpp,
// Session::Dispatch and the handlers in broker/handle_*.cpp) fed frames in
// any order, well-formed or not, by clients of a real broker.
//
// The broker runs in this process (TestBroker: its own threads, a store in a
// temporary directory, dev certificates from certs/dev-pki.sh) on 127.0.0.1,
// and every input is played over real mutual-TLS connections, so the whole
// path a hostile agency can reach is covered: handshake and identity, the
// frame reader, Dispatch, every handler, the store and the audit reader
// behind them, deliveries, and the end of a session. Sessions are not driven
// through a seam in Session instead: handlers finish on the store's and the
// audit reader's threads, so a seam would still need the strand, the writer
// and the watchdog, i.e. the broker itself.
//
// An input is a sequence of operations, each one byte (its kind, modulo 10)
// and then its own bytes; a short tail is padded with zeros:
//
//   0 frame   len:u16be body    one frame with a correct length prefix and
//                               the body as given (any bytes)
//   1 raw     len:u16be bytes   bytes as they are (bad lengths, half frames)
//   2 hello   flags credit      Hello: bit 0 receive, bit 1 take_over, bit 2
//                               a protocol version of flags >> 3 instead of 1,
//                               bit 7 credit x 64
//   3 publish r t k f           a Publish built from a template (recipients r
//                               as a bitmask, TLP, purpose, body type,
//                               consent, forward, expiry, duplicate id, ...)
//   4 ack     which tweak       DeliveryAck of a Deliver received on this
//                               connection, or of a wrong id or attempt
//   5 recall  which len         Recall of a message published earlier
//   6 sync    -                 Ping, and wait for its Pong
//   7 connect agency            reconnect this slot as another agency (one
//                               certificate identifies no agency)
//   8 slot    -                 switch between two connection slots (two
//                               sessions at once: take-over, deliveries)
//   9 audit   a b c             AuditQuery (query or export page) or
//                               ConsistencyProofRequest near the log's size
//
// A connection is opened when an operation needs one, as the slot's agency
// (police for slot 0, school for slot 1), and reopened when the broker
// closed it (at most kMaxConnectionsPerInput per input). Nothing sends a
// Hello unless the input does. Before a connection is closed (by the input,
// or at its end) it is synchronised: a Ping must get its Pong, and every
// publish, recall and audit request of the harness its answer; then it is
// closed with close_notify, and the broker must close its end too (all
// within kAnswerTimeoutMs, answers within kRequestTimeoutMs). Every 128
// inputs a fresh session must get a Welcome and a consistency proof that
// verifies. Any frame the broker sends is checked: checkpoints must carry
// a valid signature and one root per tree size, consistency proofs between
// them must verify, a Welcome must name the certificate's agency, nothing
// marked RED reaches civil society. A broker that does not answer in time
// is hung: the target aborts, as it does for any broken check. After every
// input no session may stay registered; at exit the broker is stopped and
// its whole audit log verified.
//
// State outlives an input (the store, queues, message ids), as it does in a
// broker; connections do not, so an input that crashes the broker does so
// on its own. Run it as scripts/ci-sanitizers.sh does, with -entropic=0
// -detect_leaks=0: the broker's threads add coverage and allocations to
// every input, and libFuzzer's entropic schedule and per-input leak check
// then cost ten times the input (LeakSanitizer still checks at exit). Set
// LIAISON_FUZZ_LOG=info to see the broker's log.
#include <arpa/inet.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/util/time_util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "broker/server.h"
#include "broker/store/store.h"
#include "client/audit_verify.h"
#include "common/checkpoint.h"
#include "common/files.h"
#include "common/merkle.h"
#include "proto/detail/pb.h"
#include "proto/frame_codec.h"
#include "tests/integration/test_support.h"
#include "tests/temp_dir.h"

namespace {

using namespace liaison;
using Clock = std::chrono::steady_clock;

// Generous: an ASan build on a busy machine, a store that fsyncs.
constexpr int kAnswerTimeoutMs = 20'000;
// For answers to publishes, recalls and audit requests, after the session
// answered a Ping. Audit requests wait in the audit reader's one queue (up
// to 256 jobs, a consistency proof reading the whole log), behind the jobs
// of sessions that have already gone: the wait grows with the log.
constexpr int kRequestTimeoutMs = 120'000;
constexpr int kMaxConnectionsPerInput = 4;
constexpr int kHealthCheckEvery = 128;
constexpr size_t kRemembered = 64;  // message ids, deliveries kept for acks and recalls

// The agencies of the fuzz policy; the last certificate (dev-pki.sh's
// wrong-san test certificate) chains to the CA but identifies none.
const char* const kAgencies[] = {"police", "school", "social", "youth-ngo", "auditor", ""};
constexpr int kAgencyCount = 6;

// Redaction and pseudonymisation (school), consent (youth work), forbid
// (RED to civil society), an agreement that has ended, groups, and an
// auditor whose scope leaves some records as hashes in an export.
constexpr const char* kPolicy = R"(version: 1
agencies:
  - id: police
    name: Police
    sector: law_enforcement
  - id: school
    name: School
    sector: education
  - id: social
    name: Social services
    sector: social_work
  - id: youth-ngo
    name: Youth work
    sector: civil_society
  - id: auditor
    name: Data protection officer
    sector: local_government
    roles: [auditor]
    audit_scope: [police, school]
groups:
  - id: core
    name: Core partners
    members: [police, social]
  - id: all
    name: Everyone
    members: [group:core, school, youth-ngo]
agreements:
  - id: network
    title: Network agreement
    parties: [group:all]
    purposes: [safeguarding, threat_assessment, case_coordination]
    legal_basis: [public_task, legal_obligation, vital_interests, consent]
    valid_from: 2020-01-01
    valid_until: 2099-12-31
  - id: ended
    title: Ended pilot
    parties: [school, youth-ngo]
    purposes: [safeguarding]
    legal_basis: [public_task]
    valid_from: 2020-01-01
    valid_until: 2020-12-31
rules:
  - id: core-share
    effect: permit
    agreement: network
    from: [group:core]
    to: [group:core]
    tlp: CLEAR..RED
  - id: incidents-to-schools
    effect: permit
    agreement: network
    from: [police, social]
    to: [sector:education]
    types: [incident_report]
    tlp: CLEAR..AMBER
    purposes: [safeguarding]
    obligations:
      redact: [criminal_offence, special_category, incident_report.persons.notes]
      pseudonymise: [identifying]
  - id: schools-refer
    effect: permit
    agreement: network
    from: [sector:education]
    to: [group:core]
    tlp: CLEAR..AMBER
  - id: referrals-to-youth-work
    effect: permit
    agreement: network
    from: [group:core]
    to: [sector:civil_society]
    types: [case_referral]
    tlp: CLEAR..RED
    consent: [given]
    obligations:
      redact: [identifying, special_category, criminal_offence, free_text]
  - id: no-red-to-civil-society
    effect: forbid
    from: ["*"]
    to: [sector:civil_society]
    tlp: RED
  - id: pilot
    effect: permit
    agreement: ended
    from: [school]
    to: [youth-ngo]
)";

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "session_fuzz: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

// ------------------------------------------------------------ the client

// One blocking TLS connection to the broker, read with deadlines.
class Conn {
 public:
  enum class Read { kFrame, kTimeout, kClosed };

  ~Conn() {
    if (ssl_) SSL_free(ssl_);
    if (fd_ >= 0) ::close(fd_);
  }

  bool Open(uint16_t port, SSL_CTX* ctx) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return false;
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    // A backstop for a TLS record that never completes: SSL_read gives up.
    timeval tv{kAnswerTimeoutMs / 1000, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    ssl_ = SSL_new(ctx);
    SSL_set_fd(ssl_, fd_);
    const bool ok = SSL_connect(ssl_) == 1;
    ERR_clear_error();
    return ok;
  }

  void Write(std::string_view bytes) {
    if (closed_ || bytes.empty()) return;
    if (SSL_write(ssl_, bytes.data(), static_cast<int>(bytes.size())) <= 0) {
      ERR_clear_error();
      closed_ = true;  // the broker closed it; what it sent before is lost
    }
  }

  void Send(const v1::Frame& frame) {
    auto e = proto::EncodeFrame(frame);
    if (!e.ok()) Fail("cannot encode a frame of the harness: " + e.status().ToString());
    Write(*e);
  }

  // The next frame the broker sent, waiting at most timeout_ms.
  Read Next(v1::Frame* frame, int timeout_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      auto next = decoder_.Next();
      if (!next.ok()) Fail("the broker sent a bad frame length: " + next.status().ToString());
      if (next->has_value()) {
        if (Status s = proto::ParseFrame(**next, frame); !s.ok()) {
          Fail("the broker sent a frame that does not parse: " + s.ToString());
        }
        return Read::kFrame;
      }
      if (closed_) return Read::kClosed;
      if (SSL_pending(ssl_) == 0) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(left, 0))) <= 0) return Read::kTimeout;
      }
      uint8_t buf[16384];
      const int r = SSL_read(ssl_, buf, sizeof buf);
      if (r <= 0) {
        const int err = SSL_get_error(ssl_, r);
        ERR_clear_error();
        if (err == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK)) return Read::kTimeout;
        closed_ = true;
        continue;  // frames decoded before the end still count
      }
      decoder_.Feed(buf, static_cast<size_t>(r));
    }
  }

  void SendCloseNotify() {
    if (!closed_ && SSL_shutdown(ssl_) < 0) closed_ = true;
    ERR_clear_error();
  }

  bool closed() const { return closed_; }

 private:
  int fd_ = -1;
  SSL* ssl_ = nullptr;
  bool closed_ = false;
  proto::FrameDecoder decoder_{8 * 1024 * 1024};  // above any max_frame_bytes: the broker's limit is checked apart
};

// ------------------------------------------------------------ the harness

struct Slot {
  std::unique_ptr<Conn> conn;
  int agency = 0;
  // Raw bytes were sent: the broker may be in the middle of a frame.
  bool dirty = false;
  // The broker sent a fatal Error, so it is closing.
  bool fatal = false;
  // (delivery id, attempt) of the Deliver frames received here.
  std::vector<std::pair<uint64_t, uint32_t>> deliveries;
  // Request ids of our publishes, recalls and audit requests not yet answered.
  std::set<uint64_t> pending;
};

struct Harness {
  std::unique_ptr<test::TempDir> pki_dir;
  std::unique_ptr<test::TestBroker> broker;
  SSL_CTX* ctx[kAgencyCount] = {};
  std::string audit_pem;
  std::string db_path;

  std::map<uint64_t, merkle::Hash> roots;  // tree size -> root, from every checkpoint seen
  uint64_t largest_tree = 0;
  std::vector<std::string> published;  // message ids, newest last
  uint64_t next_id = 1;                // request ids, nonces, message ids
  uint64_t audit_page_token = 0;
  uint64_t runs = 0;

  Slot slots[2];
  int cur = 0;
  int connections = 0;  // opened during this input
};

Harness* h = nullptr;

void CheckCheckpoint(const v1::Checkpoint& p, const char* where) {
  audit::Checkpoint c;
  c.origin = p.origin();
  c.tree_size = p.tree_size();
  if (p.root_hash().size() != c.root.size()) Fail(std::string(where) + ": checkpoint root is not 32 bytes");
  std::copy(p.root_hash().begin(), p.root_hash().end(), c.root.begin());
  c.time_ms = p.time_ms();
  c.key_id = p.key_id();
  c.signature = p.signature();
  if (c.origin != "liaison/test-broker") Fail(std::string(where) + ": checkpoint of origin " + c.origin);
  if (Status s = audit::VerifyCheckpoint(c, h->audit_pem); !s.ok()) {
    Fail(std::string(where) + ": checkpoint does not verify: " + s.ToString());
  }
  auto [it, fresh] = h->roots.emplace(c.tree_size, c.root);
  if (!fresh && it->second != c.root) {
    Fail(std::string(where) + ": two different roots for tree size " + std::to_string(c.tree_size));
  }
  h->largest_tree = std::max(h->largest_tree, c.tree_size);
}

// Every frame the broker sends passes here.
void Observe(Slot& s, const v1::Frame& f) {
  const std::string agency = kAgencies[s.agency];
  switch (f.kind_case()) {
    case v1::Frame::kWelcome:
      if (f.welcome().agency_id() != agency) {
        Fail("Welcome for agency '" + f.welcome().agency_id() + "' on a connection of '" + agency + "'");
      }
      CheckCheckpoint(f.welcome().checkpoint(), "Welcome");
      break;
    case v1::Frame::kPublishAck:
      s.pending.erase(f.publish_ack().request_id());
      CheckCheckpoint(f.publish_ack().checkpoint(), "PublishAck");
      if (!f.publish_ack().duplicate()) {
        h->published.push_back(f.publish_ack().message_id());
        if (h->published.size() > kRemembered) h->published.erase(h->published.begin());
      }
      break;
    case v1::Frame::kDeliver: {
      const auto& d = f.deliver();
      s.deliveries.emplace_back(d.delivery_id(), d.attempt());
      if (s.deliveries.size() > kRemembered) s.deliveries.erase(s.deliveries.begin());
      // The policy's forbid rule: whatever else permits, RED never reaches
      // civil society.
      if (d.has_message() && agency == "youth-ngo" && d.message().envelope().tlp() == v1::TLP_RED) {
        Fail("a TLP:RED message was delivered to youth-ngo");
      }
      break;
    }
    case v1::Frame::kError:
      s.pending.erase(f.error().request_id());
      if (f.error().fatal()) s.fatal = true;
      break;
    case v1::Frame::kRecallAck: s.pending.erase(f.recall_ack().request_id()); break;
    case v1::Frame::kPing: {
      v1::Frame pong;
      pong.mutable_pong()->set_nonce(f.ping().nonce());
      s.conn->Send(pong);
      break;
    }
    case v1::Frame::kAuditQueryResult:
      s.pending.erase(f.audit_query_result().request_id());
      CheckCheckpoint(f.audit_query_result().checkpoint(), "AuditQueryResult");
      h->audit_page_token = f.audit_query_result().next_page_token();
      break;
    case v1::Frame::kConsistencyProof: {
      const auto& p = f.consistency_proof();
      s.pending.erase(p.request_id());
      auto old_root = h->roots.find(p.old_size()), new_root = h->roots.find(p.new_size());
      if (old_root == h->roots.end() || new_root == h->roots.end()) break;
      std::vector<merkle::Hash> path;
      for (const auto& node : p.path()) {
        if (node.size() != merkle::Hash().size()) Fail("consistency proof with a node not 32 bytes long");
        merkle::Hash n;
        std::copy(node.begin(), node.end(), n.begin());
        path.push_back(n);
      }
      if (!merkle::VerifyConsistency(p.old_size(), p.new_size(), old_root->second, new_root->second, path)) {
        Fail("consistency proof " + std::to_string(p.old_size()) + " -> " + std::to_string(p.new_size()) +
             " does not verify against the checkpoints");
      }
      break;
    }
    default: break;
  }
}

// Reads what the broker has sent on every open connection, without waiting.
void DrainAll() {
  for (auto& s : h->slots) {
    if (!s.conn) continue;
    v1::Frame f;
    while (s.conn->Next(&f, 0) == Conn::Read::kFrame) Observe(s, f);
  }
}

void Sync(Slot& s);

// Synchronises, so that no answer is left behind (and no audit job of ours
// waits in the broker for a session that is gone), then closes with
// close_notify; the broker must close its end in time.
void Close(Slot& s) {
  if (!s.conn) return;
  Sync(s);
  s.conn->SendCloseNotify();
  v1::Frame f;
  for (;;) {
    const Conn::Read r = s.conn->Next(&f, kAnswerTimeoutMs);
    if (r == Conn::Read::kClosed) break;
    if (r == Conn::Read::kTimeout) {
      Fail(std::string("the broker did not close a session of '") + kAgencies[s.agency] + "' within " +
           std::to_string(kAnswerTimeoutMs) + " ms of close_notify");
    }
    Observe(s, f);
  }
  s.conn.reset();
  s.dirty = s.fatal = false;
  s.deliveries.clear();
  s.pending.clear();
}

bool Open(Slot& s, int agency) {
  Close(s);
  s.agency = agency;
  if (h->connections >= kMaxConnectionsPerInput) return false;
  h->connections++;
  auto c = std::make_unique<Conn>();
  if (!c->Open(h->broker->port(), h->ctx[agency])) {
    Fail(std::string("TLS handshake as '") + kAgencies[agency] + "' failed: is the broker still accepting?");
  }
  s.conn = std::move(c);
  return true;
}

// The current slot's connection, (re)opened if needed; null when this input
// has used its connections.
Conn* Current() {
  Slot& s = h->slots[h->cur];
  if (s.conn && !s.conn->closed() && !s.fatal) return s.conn.get();
  if (!Open(s, s.agency)) return nullptr;
  return s.conn.get();
}

// Ping, then read until its Pong (everything sent before has been
// dispatched) and until every publish, recall and audit request has its
// answer: the protocol promises one for each, however late. A session in
// the middle of a frame (raw bytes) cannot answer.
void Sync(Slot& s) {
  if (!s.conn || s.dirty || s.fatal || s.conn->closed()) return;
  const uint64_t nonce = h->next_id++;
  v1::Frame ping;
  ping.mutable_ping()->set_nonce(nonce);
  s.conn->Send(ping);
  v1::Frame f;
  for (;;) {
    const Conn::Read r = s.conn->Next(&f, kAnswerTimeoutMs);
    if (r == Conn::Read::kClosed) return;  // closed by the broker (a fatal Error, or the client's)
    if (r == Conn::Read::kTimeout) {
      Fail(std::string("a session of '") + kAgencies[s.agency] + "' did not answer a Ping within " +
           std::to_string(kAnswerTimeoutMs) + " ms");
    }
    Observe(s, f);
    if (f.has_pong() && f.pong().nonce() == nonce) break;
  }
  while (!s.pending.empty()) {
    const Conn::Read r = s.conn->Next(&f, kRequestTimeoutMs);
    if (r == Conn::Read::kClosed) return;
    if (r == Conn::Read::kTimeout) {
      Fail("request " + std::to_string(*s.pending.begin()) + " of a session of '" + kAgencies[s.agency] +
           "' got no answer within " + std::to_string(kRequestTimeoutMs) + " ms");
    }
    Observe(s, f);
  }
}

std::string MessageId(uint64_t n) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "00000000-0000-4000-8000-%012llx", static_cast<unsigned long long>(n));
  return buf;
}

v1::Frame PublishFromTemplate(uint8_t r, uint8_t t, uint8_t k, uint8_t fl) {
  static const char* const kRecipients[] = {"police",  "school",     "social",    "youth-ngo",
                                            "auditor", "group:core", "group:all", "nobody"};
  static const char* const kPurposes[] = {"safeguarding", "threat_assessment", "case_coordination", "Not A Purpose"};
  v1::Frame f;
  auto* p = f.mutable_publish();
  p->set_request_id(h->next_id++);
  p->set_want_reports(fl & 1);
  auto* m = p->mutable_message();
  auto* env = m->mutable_envelope();
  const bool reuse = (fl & 8) && !h->published.empty();
  env->set_message_id(reuse ? h->published.back() : MessageId(h->next_id++));
  for (int i = 0; i < 8; ++i) {
    if (r & (1 << i)) env->add_recipients(kRecipients[i]);
  }
  env->set_tlp(static_cast<v1::Tlp>(t % 6));
  env->set_purpose(kPurposes[(t >> 3) % 4]);
  env->set_case_id("CASE-" + std::to_string(k >> 4));
  if ((fl & 2) && !h->published.empty()) env->set_forwarded_from(h->published[k % h->published.size()]);
  if (fl & 4) {
    *env->mutable_expires_at() = google::protobuf::util::TimeUtil::MillisecondsToTimestamp(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count() +
        1500);
  }
  if (fl & 16) env->set_sender(kAgencies[h->slots[h->cur].agency]);
  if (fl & 32) env->set_sender("social");
  if (fl & 64) env->set_sharing_agreement("network");
  if (fl & 128) env->set_sharing_agreement("ended");
  switch (k % 3) {
    case 0: {
      auto* ir = m->mutable_incident_report();
      ir->set_incident_type(v1::INCIDENT_HATE_CRIME);
      ir->add_bias_motivations(v1::BIAS_ANTISEMITIC);
      ir->set_description("Graffiti at the synagogue.");
      ir->set_police_reference("PR-" + std::to_string(k));
      auto* person = ir->add_persons();
      person->set_role(v1::ROLE_WITNESS);
      person->set_full_name("J. Witness");
      person->set_notes("saw it happen");
      break;
    }
    case 1: {
      auto* cr = m->mutable_case_referral();
      cr->mutable_person()->set_full_name("A. Person");
      cr->mutable_person()->set_date_of_birth("2010-02-28");
      cr->set_consent_status(static_cast<v1::ConsentStatus>((k >> 2) % 6));
      cr->set_legal_basis(static_cast<v1::LegalBasis>((k >> 3) % 8));
      cr->set_summary("Concerns raised by a teacher.");
      break;
    }
    default:
      m->mutable_case_update()->set_summary("Reviewed.");
      m->mutable_case_update()->add_actions_taken("mentoring offered");
      break;
  }
  return f;
}

void RunOp(uint8_t kind, const uint8_t*& at, const uint8_t* end) {
  auto byte = [&]() -> uint8_t { return at < end ? *at++ : 0; };
  auto bytes = [&]() {
    size_t n = static_cast<size_t>(byte()) << 8;
    n |= byte();
    n = std::min<size_t>(n, static_cast<size_t>(end - at));
    std::string_view out(reinterpret_cast<const char*>(at), n);
    at += n;
    return out;
  };
  Slot& s = h->slots[h->cur];
  switch (kind % 10) {
    case 0: {  // frame
      const std::string_view body = bytes();
      Conn* c = Current();
      if (!c) return;
      const auto n = static_cast<uint32_t>(body.size());
      const char header[4] = {static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8),
                              static_cast<char>(n)};
      c->Write(std::string(header, 4) + std::string(body));
      break;
    }
    case 1: {  // raw
      const std::string_view raw = bytes();
      Conn* c = Current();
      if (!c || raw.empty()) return;
      c->Write(raw);
      h->slots[h->cur].dirty = true;
      break;
    }
    case 2: {  // hello
      const uint8_t flags = byte(), credit = byte();
      Conn* c = Current();
      if (!c) return;
      v1::Frame f;
      auto* hello = f.mutable_hello();
      hello->set_protocol_version((flags & 4) ? flags >> 3 : 1);
      hello->set_client_name((flags & 64) ? "session-fuzz\n\x7f" : "session-fuzz");
      hello->set_receive(flags & 1);
      hello->set_take_over(flags & 2);
      hello->set_credit((flags & 128) ? credit * 64u : credit);
      c->Send(f);
      break;
    }
    case 3: {  // publish
      const uint8_t r = byte(), t = byte(), k = byte(), fl = byte();
      Conn* c = Current();
      if (!c) return;
      const v1::Frame f = PublishFromTemplate(r, t, k, fl);
      h->slots[h->cur].pending.insert(f.publish().request_id());
      c->Send(f);
      break;
    }
    case 4: {  // ack
      const uint8_t which = byte(), tweak = byte();
      Conn* c = Current();
      if (!c) return;
      Slot& now = h->slots[h->cur];  // Current() may have reopened it
      v1::Frame f;
      auto* ack = f.mutable_delivery_ack();
      if (now.deliveries.empty()) {
        ack->set_delivery_id(which);
        ack->set_attempt(tweak);
      } else {
        const auto& [id, attempt] = now.deliveries[which % now.deliveries.size()];
        ack->set_delivery_id(id + (tweak >> 4) % 2);
        ack->set_attempt(attempt + (tweak % 3 == 1 ? 1 : tweak % 3 == 2 ? -1 : 0));
      }
      c->Send(f);
      break;
    }
    case 5: {  // recall
      const uint8_t which = byte(), len = byte();
      Conn* c = Current();
      if (!c) return;
      v1::Frame f;
      auto* recall = f.mutable_recall();
      recall->set_request_id(h->next_id++);
      recall->set_message_id(h->published.empty() ? MessageId(which) : h->published[which % h->published.size()]);
      recall->set_reason(std::string(len * 5u, 'r'));  // up to 1275 bytes: over the limit of 1000
      h->slots[h->cur].pending.insert(recall->request_id());
      c->Send(f);
      break;
    }
    case 6:  // sync
      Sync(s);
      break;
    case 7: {  // connect
      const uint8_t agency = byte();
      Open(s, agency % kAgencyCount);
      break;
    }
    case 8:  // slot
      h->cur ^= 1;
      break;
    case 9: {  // audit
      const uint8_t a = byte(), b = byte(), c8 = byte();
      Conn* c = Current();
      if (!c) return;
      v1::Frame f;
      const uint64_t size = h->largest_tree;
      if (a % 3 == 0) {
        auto* q = f.mutable_consistency_proof_request();
        q->set_request_id(h->next_id++);
        q->set_old_size(size * b / 255);
        q->set_new_size(size + c8 % 4 - 1);  // one past the log's size is refused
      } else {
        static const char* const kEvents[] = {"", "decision", "queued", "delivered", "audit_query", "recalled"};
        auto* q = f.mutable_audit_query();
        q->set_request_id(h->next_id++);
        q->set_page_size(c8 % 4 == 3 ? 1001 : c8 * 4u);
        q->set_page_token((b & 1) ? h->audit_page_token : 0);
        if (a % 3 == 1) {
          q->set_agency(kAgencies[b % kAgencyCount]);
          q->set_event(kEvents[(b >> 3) % 6]);
          if (b & 2) q->set_from_ms(1);
          if (b & 4) q->set_to_ms(b & 2 ? 1 : 0);
        } else {
          q->set_export_mode(true);
          q->set_until_tree_size((b & 2) ? size + (b >> 6) : 0);
        }
      }
      h->slots[h->cur].pending.insert(f.has_audit_query() ? f.audit_query().request_id()
                                                          : f.consistency_proof_request().request_id());
      c->Send(f);
      break;
    }
  }
}

// A fresh, well-behaved session: Welcome, and a consistency proof from the
// oldest checkpoint seen to the Welcome's, which must verify.
void HealthCheck() {
  Slot probe;
  probe.agency = 2;  // social
  h->connections = 0;
  Open(probe, probe.agency);
  v1::Frame f;
  f.mutable_hello()->set_protocol_version(1);
  probe.conn->Send(f);
  uint64_t size = 0;
  for (;;) {
    const Conn::Read r = probe.conn->Next(&f, kAnswerTimeoutMs);
    if (r != Conn::Read::kFrame) Fail("a fresh session got no Welcome");
    Observe(probe, f);
    if (f.has_error()) Fail("a fresh session was refused: " + f.error().message());
    if (f.has_welcome()) {
      size = f.welcome().checkpoint().tree_size();
      break;
    }
  }
  const uint64_t oldest = h->roots.upper_bound(0) == h->roots.end() ? 0 : h->roots.upper_bound(0)->first;
  if (oldest > 0 && oldest <= size) {
    v1::Frame q;
    auto* req = q.mutable_consistency_proof_request();
    req->set_request_id(h->next_id++);
    req->set_old_size(oldest);
    req->set_new_size(size);
    probe.conn->Send(q);
    for (;;) {
      const Conn::Read r = probe.conn->Next(&f, kRequestTimeoutMs);
      if (r != Conn::Read::kFrame) Fail("a fresh session got no consistency proof");
      Observe(probe, f);  // verifies it
      // Busy is an answer: earlier inputs may have filled the reader's queue.
      if (f.has_error() && f.error().code() == v1::REASON_AUDIT_BUSY) break;
      if (f.has_error()) Fail("a fresh session's consistency proof was refused: " + f.error().message());
      if (f.has_consistency_proof()) break;
    }
  }
  Close(probe);
}

SSL_CTX* ClientContext(const TlsFiles& files) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (SSL_CTX_load_verify_locations(ctx, files.ca_bundle.c_str(), nullptr) != 1 ||
      SSL_CTX_use_certificate_chain_file(ctx, files.certificate.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, files.private_key.c_str(), SSL_FILETYPE_PEM) != 1) {
    Fail("cannot load the client certificate " + files.certificate);
  }
  return ctx;
}

// Stops the broker and verifies its whole audit log.
void AtExit() {
  if (!h || !h->broker) return;
  for (auto& s : h->slots) Close(s);
  h->broker->Stop();
  // Verified as an auditor verifies it: an export of the audit log (the
  // store keeps most fields only inside the leaves, the export as columns).
  const std::string export_path = h->broker->dir() + "/audit-export.db";
  if (Status s = broker::Store::ExportAudit(h->db_path, export_path); !s.ok()) {
    Fail("the audit log cannot be exported: " + s.ToString());
  }
  audit::VerifyOptions o;
  o.db_path = export_path;
  o.public_key_pem = h->audit_pem;
  audit::VerifyReport report;
  if (Status s = audit::VerifyAuditLog(o, &report); !s.ok()) Fail("the audit log does not verify: " + s.ToString());
  std::fprintf(stderr, "session_fuzz: %llu inputs; audit log of %llu records verified\n",
               static_cast<unsigned long long>(h->runs), static_cast<unsigned long long>(report.records));
  h->broker.reset();
  for (SSL_CTX* c : h->ctx) SSL_CTX_free(c);
  h->pki_dir.reset();
  delete h;
  h = nullptr;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);  // the broker meets invalid UTF-8 here on purpose
  ::signal(SIGPIPE, SIG_IGN);                // writes to a connection the broker closed
  const char* level = std::getenv("LIAISON_FUZZ_LOG");
  spdlog::set_level(level ? spdlog::level::from_str(level) : spdlog::level::off);

  // The store commits with fsync (synchronous=FULL): on a disk that costs
  // more than the rest of an input. Durability is not what this target
  // tests, so its files go to memory when the machine has /dev/shm.
  if (!std::getenv("TMPDIR") && ::access("/dev/shm", W_OK) == 0) ::setenv("TMPDIR", "/dev/shm", 0);
  h = new Harness;
  h->pki_dir = std::make_unique<test::TempDir>();
  const std::string pki = h->pki_dir->File("pki");
  const std::string cmd = "bash " LIAISON_SOURCE_DIR "/certs/dev-pki.sh " + pki +
                          " police school social youth-ngo auditor > " + h->pki_dir->File("pki.log") + " 2>&1";
  if (std::system(cmd.c_str()) != 0) Fail("certs/dev-pki.sh failed: " + cmd);
  for (int i = 0; i < kAgencyCount; ++i) {
    const std::string name = *kAgencies[i] ? pki + "/" + kAgencies[i] : pki + "/test/wrong-san";
    h->ctx[i] = ClientContext(TlsFiles{name + ".crt", name + ".key", pki + "/ca.crt", {}});
  }

  broker::Limits limits;
  // Small queues and short retention: copies nobody acknowledges expire
  // within seconds, so queue_full, expiry and reports happen, and the store
  // does not grow without bound over a long run.
  limits.max_backlog = 500;
  limits.max_retention = std::chrono::seconds(10);
  limits.max_frame_bytes = 256 * 1024;
  limits.shutdown_grace = std::chrono::seconds(2);
  // Every connection comes from 127.0.0.1 and stands for one of several
  // agencies, about a hundred a second: the handshake rate per source
  // (tested in abuse_test.cpp) would refuse them after its burst, and Open
  // would take the refusal for a broker that stopped accepting.
  limits.handshake_rate_per_source = 0;
  h->broker = std::make_unique<test::TestBroker>(limits, 2, kPolicy, pki);
  h->db_path = h->broker->dir() + "/data/liaison.db";
  auto pem = ReadFile(h->broker->dir() + "/keys/audit-signing.key.pub", 1 << 16);
  if (!pem.ok()) Fail("cannot read the audit public key: " + pem.status().ToString());
  h->audit_pem = *pem;
  h->slots[1].agency = 1;  // school
  std::atexit(AtExit);
  HealthCheck();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  h->connections = 0;
  h->cur = 0;
  const uint8_t* at = data;
  const uint8_t* end = data + size;
  while (at < end) {
    const uint8_t kind = *at++;
    RunOp(kind, at, end);
    DrainAll();
  }
  for (auto& s : h->slots) Close(s);
  h->slots[0].agency = 0;
  h->slots[1].agency = 1;
  // Every session of this input has ended: none may linger in the router.
  const auto deadline = Clock::now() + std::chrono::milliseconds(kAnswerTimeoutMs);
  while (h->broker->server().counters().sessions != 0) {
    if (Clock::now() > deadline) {
      Fail(std::to_string(h->broker->server().counters().sessions) + " session(s) still registered after " +
           std::to_string(kAnswerTimeoutMs) + " ms, though every connection was closed");
    }
    usleep(1000);
  }
  if (++h->runs % kHealthCheckEvery == 0) HealthCheck();
  return 0;
}
