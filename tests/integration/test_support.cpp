#include "tests/integration/test_support.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <google/protobuf/util/time_util.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <stdexcept>

#include "broker/store/audit_chunks.h"
#include "common/files.h"
#include "common/uuid.h"
#include "proto/frame_codec.h"

namespace liaison::test {


std::vector<std::string> DefaultAgencies() {
  std::vector<std::string> a = {"police", "school", "social", "health", "youth-ngo"};
  for (int i = 1; i <= 20; ++i) {
    char name[8];
    std::snprintf(name, sizeof name, "a%02d", i);
    a.push_back(name);
  }
  return a;
}

const std::string& PkiDir() {
  static std::once_flag once;
  static std::string dir;
  static TempDir* holder = nullptr;
  std::call_once(once, [] {
    if (const char* lvl = std::getenv("LIAISON_TEST_LOG")) {
      spdlog::set_level(spdlog::level::from_str(lvl));
    } else {
      spdlog::set_level(spdlog::level::warn);
    }
    // ctest makes the certificates once for all tests (fixture dev_pki_setup).
    if (const char* shared = std::getenv("LIAISON_TEST_PKI")) {
      if (std::filesystem::exists(std::string(shared) + "/test/no-san.crt")) {
        dir = std::filesystem::absolute(shared).string();
        return;
      }
    }
    holder = new TempDir();  // lives for the whole process; removed at exit
    std::atexit([] { delete holder; });
    dir = holder->File("pki");
    std::string cmd = "bash " LIAISON_SOURCE_DIR "/certs/dev-pki.sh " + dir;
    for (const auto& a : DefaultAgencies()) cmd += " " + a;
    cmd += " > " + holder->File("pki.log") + " 2>&1";
    if (std::system(cmd.c_str()) != 0) throw std::runtime_error("certs/dev-pki.sh failed: " + cmd);
  });
  return dir;
}

TlsFiles AgencyTls(const std::string& agency) {
  const std::string& d = PkiDir();
  return TlsFiles{d + "/" + agency + ".crt", d + "/" + agency + ".key", d + "/ca.crt", {}};
}

TlsFiles DefectTls(const std::string& defect) {
  const std::string& d = PkiDir();
  return TlsFiles{d + "/test/" + defect + ".crt", d + "/test/" + defect + ".key", d + "/ca.crt", {}};
}

std::string PolicyYaml(const std::vector<std::string>& agencies) {
  std::string y = "version: 1\nagencies:\n";
  for (const auto& a : agencies) {
    y += "  - id: " + a + "\n    name: Agency " + a + "\n    sector: " +
         (a == "police" ? "law_enforcement" : a == "school" ? "education" : "social_work") + "\n";
  }
  // One agreement among everyone and one rule permitting everything: the
  // tests here are about transport; policy semantics have their own tests.
  y += "agreements:\n"
       "  - id: test-network\n"
       "    title: Test network\n"
       "    parties: [\"*\"]\n"
       "    purposes: [safeguarding, threat_assessment, case_coordination]\n"
       "    legal_basis: [public_task]\n"
       "    valid_from: 2020-01-01\n"
       "    valid_until: 2099-12-31\n"
       "rules:\n"
       "  - id: everyone-shares\n"
       "    effect: permit\n"
       "    agreement: test-network\n"
       "    from: [\"*\"]\n"
       "    to: [\"*\"]\n"
       "    tlp: CLEAR..RED\n";
  return y;
}

TestBroker::TestBroker(broker::Limits limits, int threads, const std::string& policy_text, const std::string& pki_dir,
                       const std::string& listen_host) {
  const std::string& pki = pki_dir.empty() ? PkiDir() : pki_dir;
  broker::BrokerConfig c;
  c.path = dir_.File("broker.yaml");
  c.name = "test-broker";
  c.listen_host = listen_host;
  c.listen_port = 0;
  c.tls = TlsFiles{pki + "/broker.crt", pki + "/broker.key", pki + "/ca.crt", {pki + "/ca.crl"}};
  c.policy_path = dir_.File("policy.yaml");
  c.keys_dir = dir_.File("keys");
  c.data_dir = dir_.File("data");
  c.threads = threads;
  c.limits = limits;
  if (Status s = WriteFileAtomic(c.policy_path, policy_text.empty() ? PolicyYaml(DefaultAgencies()) : policy_text);
      !s.ok()) {
    throw std::runtime_error(s.ToString());
  }
  config_ = std::move(c);
  Start();
}

void TestBroker::Start() {
  auto server = broker::Server::Create(config_);
  if (!server.ok()) throw std::runtime_error("broker: " + server.status().ToString());
  server_ = std::move(server).value();
  stopped_ = false;
  thread_ = std::thread([this] { (void)server_->Run(false); });
}

void TestBroker::Restart() {
  Stop();
  server_.reset();
  Start();
}

void TestBroker::Stop() {
  if (stopped_) return;
  stopped_ = true;
  server_->RequestStop();
  thread_.join();
}

TestBroker::~TestBroker() { Stop(); }

client::ClientOptions Options(uint16_t port, const std::string& agency, bool receive, const std::string& pki) {
  client::ClientOptions o;
  o.host = "127.0.0.1";
  o.port = port;
  o.server_name = "localhost";
  o.tls = AgencyTls(agency);
  if (!pki.empty()) o.tls = TlsFiles{pki + "/" + agency + ".crt", pki + "/" + agency + ".key", pki + "/ca.crt", {}};
  o.receive = receive;
  o.connect_timeout = std::chrono::seconds(10);
  return o;
}

std::unique_ptr<client::Client> Connect(uint16_t port, const std::string& agency, bool receive,
                                        client::Client::DeliveryHandler on_delivery,
                                        client::Client::ClosedHandler on_closed) {
  auto c = client::Client::Connect(Options(port, agency, receive), std::move(on_delivery), std::move(on_closed));
  if (!c.ok()) throw std::runtime_error("connect as " + agency + ": " + c.status().ToString());
  return std::move(c).value();
}

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t ExpireIn(v1::Message* m, int64_t ms) {
  const int64_t at = WallMs() + ms;
  *m->mutable_envelope()->mutable_expires_at() = google::protobuf::util::TimeUtil::MillisecondsToTimestamp(at);
  return at;
}

v1::Message IncidentReport(const std::vector<std::string>& recipients) {
  v1::Message m;
  auto* env = m.mutable_envelope();
  env->set_message_id(NewUuid());
  for (const auto& r : recipients) env->add_recipients(r);
  env->set_tlp(v1::TLP_AMBER);
  env->set_purpose("safeguarding");
  env->set_case_id("CASE-1");
  *env->mutable_created_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
  auto* ir = m.mutable_incident_report();
  ir->set_incident_type(v1::INCIDENT_HATE_CRIME);
  ir->add_bias_motivations(v1::BIAS_ANTISEMITIC);
  ir->set_description("Graffiti on the synagogue wall at Main Street.");
  ir->set_severity(v1::SEVERITY_MEDIUM);
  auto* p = ir->add_persons();
  p->set_role(v1::ROLE_WITNESS);
  p->set_full_name("J. Witness");
  return m;
}

Receiver::Receiver(uint16_t port, const std::string& agency, bool ack, uint32_t credit) {
  // Queued deliveries may arrive before Connect returns: those are
  // acknowledged once the client is known.
  auto early = std::make_shared<std::vector<client::Delivery>>();
  auto o = Options(port, agency, true);
  o.credit = credit;
  auto c = client::Client::Connect(o, [this, ack, early](client::Delivery d) {
    std::lock_guard lock(mu);
    (d.kind == client::Delivery::Kind::kMessage ? got : notices).push_back(d);
    if (!ack) return;
    if (client) {
      client->Acknowledge(d);
    } else {
      early->push_back(d);
    }
  });
  if (!c.ok()) throw std::runtime_error("receiver " + agency + " cannot connect: " + c.status().message());
  std::lock_guard lock(mu);
  client = std::move(c).value();
  for (const auto& d : *early) client->Acknowledge(d);
}

size_t Receiver::count() {
  std::lock_guard lock(mu);
  return got.size();
}

bool Receiver::WaitCount(size_t n, std::chrono::milliseconds timeout) {
  return WaitFor([&] { return count() >= n; }, timeout);
}

std::vector<client::DeliveryReport> Receiver::Reports() {
  std::lock_guard lock(mu);
  std::vector<client::DeliveryReport> out;
  for (const auto& d : notices) {
    if (d.kind == client::Delivery::Kind::kReport) out.push_back(d.report);
  }
  return out;
}

std::vector<client::RecallNotice> Receiver::Recalls() {
  std::lock_guard lock(mu);
  std::vector<client::RecallNotice> out;
  for (const auto& d : notices) {
    if (d.kind == client::Delivery::Kind::kRecallNotice) out.push_back(d.recall);
  }
  return out;
}

bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// ---------------------------------------------------------------- RawClient

namespace {

// OpenSSL writes to the socket with write(): to a connection the broker
// has closed (a take-over, a protocol error) that raises SIGPIPE, which
// would end the test binary. While one lives, SIGPIPE is blocked on this
// thread, and one raised meanwhile is taken off it, so the write fails
// with EPIPE instead. (Scoped, not for good: processes the tests spawn
// inherit the signal mask.)
class NoSigpipe {
 public:
  NoSigpipe() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~NoSigpipe() {
    sigset_t pending;
    sigpending(&pending);
    if (!was_pending_ && sigismember(&pending, SIGPIPE) == 1) {
      const timespec now{0, 0};
      sigtimedwait(&pipe_, nullptr, &now);
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  NoSigpipe(const NoSigpipe&) = delete;
  NoSigpipe& operator=(const NoSigpipe&) = delete;

 private:
  sigset_t pipe_{}, old_{};
  bool was_pending_ = false;
};

}  // namespace

RawClient::~RawClient() { Close(); }

void RawClient::Close() {
  if (ssl_) SSL_free(static_cast<SSL*>(ssl_));
  if (ctx_) SSL_CTX_free(static_cast<SSL_CTX*>(ctx_));
  if (fd_ >= 0) ::close(fd_);
  ssl_ = nullptr;
  ctx_ = nullptr;
  fd_ = -1;
}

Status RawClient::Connect(uint16_t port, const Options& options) {
  fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return Status::Unavailable("connect");
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (options.before_handshake) options.before_handshake();
  if (!options.tls) return Status::Ok();
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  ctx_ = ctx;
  if (options.tls12_only) {
    SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
  }
  SSL_CTX_load_verify_locations(ctx, options.tls->ca_bundle.c_str(), nullptr);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (options.present_certificate) {
    if (SSL_CTX_use_certificate_chain_file(ctx, options.tls->certificate.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, options.tls->private_key.c_str(), SSL_FILETYPE_PEM) != 1) {
      return Status::InvalidArgument("cannot load client certificate");
    }
  }
  SSL* ssl = SSL_new(ctx);
  ssl_ = ssl;
  SSL_set_fd(ssl, fd_);
  SSL_set_tlsext_host_name(ssl, "localhost");
  timeval tv{5, 0};
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  NoSigpipe no_sigpipe;
  if (SSL_connect(ssl) != 1) {
    char buf[256];
    ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
    ERR_clear_error();
    return Status::Unavailable(std::string("TLS handshake failed: ") + buf);
  }
  return Status::Ok();
}

bool RawClient::SendBytes(const std::string& bytes) {
  if (ssl_) {
    NoSigpipe no_sigpipe;
    return SSL_write(static_cast<SSL*>(ssl_), bytes.data(), static_cast<int>(bytes.size())) > 0;
  }
  return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
}

bool RawClient::SendFrame(const v1::Frame& frame) {
  auto e = proto::EncodeFrame(frame);
  return e.ok() && SendBytes(*e);
}

bool RawClient::SendHello(bool receive, uint32_t credit, bool take_over) {
  v1::Frame f;
  f.mutable_hello()->set_protocol_version(1);
  f.mutable_hello()->set_client_name("raw-test-client");
  f.mutable_hello()->set_receive(receive);
  f.mutable_hello()->set_credit(credit);
  f.mutable_hello()->set_take_over(take_over);
  return SendFrame(f);
}

bool ConnectReceiving(RawClient& raw, uint16_t port, const std::string& agency, uint32_t credit, bool take_over) {
  RawClient::Options o;
  o.tls = AgencyTls(agency);
  return raw.Connect(port, o).ok() && raw.SendHello(/*receive=*/true, credit, take_over);
}

std::optional<v1::Deliver> ReadDeliver(RawClient& raw, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto f = raw.ReadFrame(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
    if (!f) return std::nullopt;
    if (f->has_deliver()) return f->deliver();
  }
  return std::nullopt;
}

bool SendAck(RawClient& raw, const v1::Deliver& d) {
  v1::Frame a;
  a.mutable_delivery_ack()->set_delivery_id(d.delivery_id());
  a.mutable_delivery_ack()->set_attempt(d.attempt());
  return raw.SendFrame(a);
}

bool PingPong(RawClient& raw, uint64_t nonce, std::vector<v1::Deliver>* skipped, std::chrono::milliseconds timeout) {
  v1::Frame p;
  p.mutable_ping()->set_nonce(nonce);
  if (!raw.SendFrame(p)) return false;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto f = raw.ReadFrame(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
    if (!f) return false;
    if (f->has_pong() && f->pong().nonce() == nonce) return true;
    if (f->has_deliver() && skipped) skipped->push_back(f->deliver());
  }
  return false;
}

int RawClient::Read(void* buf, int n, std::chrono::milliseconds timeout) {
  SSL* ssl = static_cast<SSL*>(ssl_);
  if (!ssl || SSL_pending(ssl) == 0) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return -2;  // timeout
  }
  if (ssl) {
    NoSigpipe no_sigpipe;  // TLS 1.3 reads may write (an alert, a key update)
    const int r = SSL_read(ssl, buf, n);
    if (r <= 0) ERR_clear_error();
    return r;
  }
  return static_cast<int>(::recv(fd_, buf, static_cast<size_t>(n), 0));
}

std::optional<v1::Frame> RawClient::ReadFrame(std::chrono::milliseconds timeout) {
  auto body = ReadFrameBody(timeout);
  if (!body) return std::nullopt;
  v1::Frame f;
  if (!proto::ParseFrame(*body, &f).ok()) return std::nullopt;
  return f;
}

std::optional<std::string> RawClient::ReadFrameBody(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto left = [&] {
    return std::max(std::chrono::milliseconds(1), std::chrono::duration_cast<std::chrono::milliseconds>(
                                                      deadline - std::chrono::steady_clock::now()));
  };
  uint8_t header[4];
  int got = 0;
  while (got < 4) {
    const int r = Read(header + got, 4 - got, left());
    if (r <= 0) return std::nullopt;
    got += r;
  }
  auto len = proto::DecodeFrameLength(header, proto::kDefaultMaxFrameBytes);
  if (!len.ok()) return std::nullopt;
  std::string body(*len, '\0');
  size_t have = 0;
  while (have < body.size()) {
    const int r = Read(body.data() + have, static_cast<int>(body.size() - have), left());
    if (r <= 0) return std::nullopt;
    have += static_cast<size_t>(r);
  }
  return body;
}

bool RawClient::WaitClosed(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    const int r = Read(buf, sizeof buf,
                       std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
    if (r == -2) return false;
    if (r <= 0) return true;
  }
  return false;
}

broker::Store::Options StoreOptions(const TempDir& dir) {
  broker::Store::Options o;
  o.path = dir.File("data/liaison.db");
  o.origin = "liaison/test";
  o.signing_key = dir.File("audit-signing.key");
  o.digest_key = dir.File("body-digest.key");
  return o;
}

namespace {

std::string FileBytes(const std::string& path) {
  auto b = ReadFile(path, 1 << 30);
  return b.ok() ? *b : std::string();
}

}  // namespace

std::string StoreLogBytes(const std::string& db_path) {
  const std::filesystem::path db(db_path);
  const std::string prefix = db.filename().string() + "-log.";
  std::string all;
  for (const auto& e : std::filesystem::directory_iterator(db.parent_path())) {
    if (e.path().filename().string().rfind(prefix, 0) == 0) all += FileBytes(e.path().string());
  }
  return all;
}

std::string StoreFileBytes(const std::string& db_path) {
  return FileBytes(db_path) + FileBytes(db_path + "-wal") + StoreLogBytes(db_path);
}

namespace {

int RegisterAuditLog(sqlite3* db, char**, const sqlite3_api_routines*) {
  return broker::audit_chunks::Register(db).ok() ? SQLITE_OK : SQLITE_ERROR;
}
const bool kAuditLogEverywhere = [] {
  sqlite3_auto_extension(reinterpret_cast<void (*)()>(RegisterAuditLog));
  return true;
}();

// Rewrites the chunk that holds seq (or, with seq 0, removes every record
// after through) on a connection of its own.
// False if the store cannot be read or written, or has no such record.
// (No Catch2 here: fuzz_session links this file without it.)
bool RewriteChunks(const std::string& db_path, uint64_t seq, uint64_t through,
                   const std::function<void(int64_t*, std::string*, std::string*)>& f) {
  sqlite3* db = nullptr;
  struct Closer {
    sqlite3*& db;
    ~Closer() { sqlite3_close_v2(db); }
  } closer{db};
  if (sqlite3_open(db_path.c_str(), &db) != SQLITE_OK) return false;
  const uint64_t from = seq != 0 ? seq : through + 1;
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(db,
                         "SELECT first_seq, n, times, hashes, leaves FROM audit_chunks WHERE first_seq + n > ? "
                         "ORDER BY first_seq",
                         -1, &s, nullptr) != SQLITE_OK) {
    return false;
  }
  sqlite3_bind_int64(s, 1, static_cast<int64_t>(from));
  struct Chunk {
    int64_t first;
    std::vector<int64_t> times;
    std::vector<std::string> leaves, hashes;
  };
  std::vector<Chunk> chunks;
  while (sqlite3_step(s) == SQLITE_ROW) {
    auto bytes = [&](int i) {
      return std::string_view(static_cast<const char*>(sqlite3_column_blob(s, i)),
                              static_cast<size_t>(sqlite3_column_bytes(s, i)));
    };
    const std::string_view leaves = bytes(4);
    std::vector<broker::audit_chunks::Entry> entries;
    if (!broker::audit_chunks::Decode(sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 1), bytes(2), bytes(3),
                                      &leaves, &entries)
             .ok()) {
      sqlite3_finalize(s);
      return false;
    }
    Chunk c{sqlite3_column_int64(s, 0), {}, {}, {}};
    for (const auto& e : entries) {
      c.times.push_back(e.time_ms);
      c.leaves.emplace_back(e.leaf);
      c.hashes.emplace_back(e.hash);
    }
    chunks.push_back(std::move(c));
    if (seq != 0) break;
  }
  sqlite3_finalize(s);
  if (chunks.empty() || sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr) != SQLITE_OK) return false;
  for (Chunk& c : chunks) {
    const uint64_t first = static_cast<uint64_t>(c.first);
    if (seq != 0) {
      if (seq < first || seq - first >= c.times.size()) return false;
      f(&c.times[seq - first], &c.leaves[seq - first], &c.hashes[seq - first]);
    } else {
      const size_t keep = through >= first ? through - first + 1 : 0;
      c.times.resize(std::min(keep, c.times.size()));
    }
    sqlite3_stmt* d = nullptr;
    sqlite3_prepare_v2(db, "DELETE FROM audit_chunks WHERE first_seq = ?", -1, &d, nullptr);
    sqlite3_bind_int64(d, 1, c.first);
    const int deleted = sqlite3_step(d);
    sqlite3_finalize(d);
    if (deleted != SQLITE_DONE) return false;
    if (c.times.empty()) continue;
    std::vector<broker::audit_chunks::Entry> entries;
    for (size_t i = 0; i < c.times.size(); ++i) entries.push_back({c.times[i], c.leaves[i], c.hashes[i]});
    broker::audit_chunks::Blobs blobs;
    sqlite3_stmt* w = nullptr;
    sqlite3_prepare_v2(db, broker::audit_chunks::kInsert, -1, &w, nullptr);
    broker::audit_chunks::BindInsert(w, c.first, entries, &blobs);
    const int inserted = sqlite3_step(w);
    sqlite3_finalize(w);
    if (inserted != SQLITE_DONE) return false;
  }
  return sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK;
}

}  // namespace

bool AlterStoredRecord(const std::string& db_path, uint64_t seq,
                       const std::function<void(int64_t* time_ms, std::string* leaf, std::string* hash)>& f) {
  return seq > 0 && RewriteChunks(db_path, seq, 0, f);
}

bool TruncateStoredAuditLog(const std::string& db_path, uint64_t through) {
  return RewriteChunks(db_path, 0, through, {});
}

int64_t QueryInt(const std::string& db_path, const std::string& sql) {
  sqlite3* db = nullptr;
  int64_t v = -1;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_stmt* q = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &q, nullptr) == SQLITE_OK && sqlite3_step(q) == SQLITE_ROW) {
      v = sqlite3_column_int64(q, 0);
    }
    sqlite3_finalize(q);
  }
  sqlite3_close(db);
  return v;
}

std::vector<std::string> AuditColumn(TestBroker& broker, const std::string& message_id, const std::string& expr) {
  if (!broker.server().SyncStore().ok()) return {};  // the database trails the commit log
  std::vector<std::string> out;
  sqlite3* db = nullptr;
  sqlite3_open_v2((broker.dir() + "/data/liaison.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, ("SELECT " + expr + " FROM audit_log WHERE message_id = ? ORDER BY seq").c_str(), -1, &st,
                     nullptr);
  sqlite3_bind_text(st, 1, message_id.c_str(), -1, SQLITE_TRANSIENT);
  while (sqlite3_step(st) == SQLITE_ROW) {
    const char* p = static_cast<const char*>(sqlite3_column_blob(st, 0));
    out.emplace_back(p ? p : "", static_cast<size_t>(sqlite3_column_bytes(st, 0)));
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

}  // namespace liaison::test
