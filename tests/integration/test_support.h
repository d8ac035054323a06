// Test support for integration tests: dev certificates made once per test
// process with certs/dev-pki.sh, an in-process broker on 127.0.0.1 with a
// free port, a client factory, and a raw blocking TLS client that can break
// the protocol on purpose. Not thread-safe unless noted.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "broker/server.h"
#include "broker/store/store.h"
#include "client/client.h"
#include "proto/detail/pb.h"
#include "tests/temp_dir.h"

namespace liaison::test {


// Certificates for agencies police, school, social, health, youth-ngo and
// a01..a20, plus the broker and the single-defect test certificates
// (test/expired, revoked, wrong-ca, no-client-auth, wrong-san, no-san, all
// claiming police). Made once per process; thread-safe.
const std::string& PkiDir();
TlsFiles AgencyTls(const std::string& agency);
TlsFiles DefectTls(const std::string& defect);  // "expired", "wrong-ca", ...

// Policy text listing the given agencies with their default SAN URI, and
// one rule that lets every agency share anything with every other.
std::string PolicyYaml(const std::vector<std::string>& agencies);
std::vector<std::string> DefaultAgencies();  // police school social health youth-ngo a01..a20

// An in-process broker serving on its own threads.
class TestBroker {
 public:
  // limits tweak the defaults; the policy is policy_text, or by default
  // PolicyYaml(DefaultAgencies()).
  // pki: a directory made by certs/dev-pki.sh (default: PkiDir()).
  // listen_host: the address it listens on (port 0: any free one).
  explicit TestBroker(broker::Limits limits = {}, int threads = 2, const std::string& policy_text = "",
                      const std::string& pki = "", const std::string& listen_host = "127.0.0.1");
  ~TestBroker();  // graceful stop
  uint16_t port() const { return server_->port(); }
  broker::Server& server() { return *server_; }
  // Requests a graceful stop and waits until Run() returns.
  void Stop();
  // Stops (if running) and starts a new broker on the same files, policy
  // and keys (on a new port).
  void Restart();
  const std::string& dir() const { return dir_.path(); }

 private:
  void Start();

  TempDir dir_;
  broker::BrokerConfig config_;
  std::unique_ptr<broker::Server> server_;
  std::thread thread_;
  bool stopped_ = false;
};

client::ClientOptions Options(uint16_t port, const std::string& agency, bool receive = false,
                              const std::string& pki = "");
std::unique_ptr<client::Client> Connect(uint16_t port, const std::string& agency, bool receive = false,
                                        client::Client::DeliveryHandler on_delivery = nullptr,
                                        client::Client::ClosedHandler on_closed = nullptr);

// A valid incident report from nobody to the given recipients.
v1::Message IncidentReport(const std::vector<std::string>& recipients);
// The wall clock in ms since the epoch (as envelope times are).
int64_t WallMs();
// Sets m's expiresAt ms from now; returns it (WallMs time).
int64_t ExpireIn(v1::Message* m, int64_t ms);

// A receiving client that records every delivery and, with ack, acknowledges
// it at once. Thread-safe through mu.
// A receiving session that keeps what it gets (messages in got, recall
// notices and delivery reports apart) and, with ack, acknowledges each.
struct Receiver {
  Receiver(uint16_t port, const std::string& agency, bool ack = true, uint32_t credit = 0);
  size_t count();
  // Waits until at least n messages arrived; false after timeout.
  bool WaitCount(size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(10));
  std::vector<client::DeliveryReport> Reports();
  std::vector<client::RecallNotice> Recalls();
  std::mutex mu;
  std::vector<client::Delivery> got;
  std::vector<client::Delivery> notices;  // recall notices and reports
  std::unique_ptr<client::Client> client;  // guarded by mu until connected
};

// One value per audit record about message_id, in seq order: expr (SQL over
// audit_log's columns), as bytes. Syncs the store first (the database
// trails the commit log); nothing if it cannot.
std::vector<std::string> AuditColumn(TestBroker& broker, const std::string& message_id, const std::string& expr);

// Polls cond every 5 ms until it holds or timeout passes.
bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout = std::chrono::seconds(10));

// A store of its own in dir: data/liaison.db, with its keys beside it.
broker::Store::Options StoreOptions(const TempDir& dir);
// The bytes of the store's commit log segments (db_path-log.*), and of
// everything the store keeps on disk for db_path: the database, its WAL
// and those segments. For tests that look for a body's bytes.
std::string StoreLogBytes(const std::string& db_path);
std::string StoreFileBytes(const std::string& db_path);
// One integer a query of the SQLite file db_path returns, read on any
// thread (no assertions); -1 if it returns none or the file cannot be read.
int64_t QueryInt(const std::string& db_path, const std::string& sql);
// A store's audit log altered as someone with write access to the file
// could (broker/store/audit_chunks.h): record seq's time, leaf and hash as
// stored changed by f; or the records after through removed (a restore
// from an older backup). False if that could not be done. Every connection a test opens reads a store's
// audit_log as the broker does: test_support registers its virtual table.
bool AlterStoredRecord(const std::string& db_path, uint64_t seq,
                       const std::function<void(int64_t* time_ms, std::string* leaf, std::string* hash)>& f);
bool TruncateStoredAuditLog(const std::string& db_path, uint64_t through);

// A blocking TLS (or plain TCP) client built directly on OpenSSL, for
// tests that misbehave on purpose.
class RawClient {
 public:
  struct Options {
    std::optional<TlsFiles> tls;       // nothing: plain TCP
    bool present_certificate = true;
    bool tls12_only = false;
    // Runs once the TCP connection is up, before the TLS handshake (to
    // change something on the broker in between).
    std::function<void()> before_handshake;
  };
  RawClient() = default;
  ~RawClient();
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  // TCP connect and, with tls, the client side of the handshake.
  Status Connect(uint16_t port, const Options& options);
  bool SendBytes(const std::string& bytes);
  bool SendFrame(const v1::Frame& frame);
  // The next frame, or nothing on EOF, error or timeout.
  std::optional<v1::Frame> ReadFrame(std::chrono::milliseconds timeout = std::chrono::seconds(5));
  // The next frame's body (the bytes after its length) as it arrived, not parsed.
  std::optional<std::string> ReadFrameBody(std::chrono::milliseconds timeout = std::chrono::seconds(5));
  // True when the peer closes the connection within timeout (any frames
  // received meanwhile are discarded).
  bool WaitClosed(std::chrono::milliseconds timeout = std::chrono::seconds(5));
  // Hello for protocol version 1.
  bool SendHello(bool receive = false, uint32_t credit = 0, bool take_over = false);
  void Close();

 private:
  int Read(void* buf, int n, std::chrono::milliseconds timeout);
  int fd_ = -1;
  void* ctx_ = nullptr;  // SSL_CTX*
  void* ssl_ = nullptr;  // SSL*
};

// raw as agency's receiving session with this credit (with take_over, it
// replaces the agency's receiving session).
bool ConnectReceiving(RawClient& raw, uint16_t port, const std::string& agency, uint32_t credit,
                      bool take_over = false);
// Reads frames until a Deliver; nothing on EOF or timeout. Frames of other
// kinds (a Welcome, a Pong) are skipped.
std::optional<v1::Deliver> ReadDeliver(RawClient& raw, std::chrono::milliseconds timeout = std::chrono::seconds(5));
// Acknowledges d on raw.
bool SendAck(RawClient& raw, const v1::Deliver& d);
// Sends a Ping and reads until its Pong: true when the session answered
// everything sent before it. Deliveries read meanwhile go to *skipped.
bool PingPong(RawClient& raw, uint64_t nonce, std::vector<v1::Deliver>* skipped = nullptr,
              std::chrono::milliseconds timeout = std::chrono::seconds(5));

}  // namespace liaison::test
