#include "tests/integration/scripted_broker.h"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto/frame_codec.h"
#include "tests/integration/test_support.h"

namespace liaison::test {
namespace {

bool WriteAll(SSL* ssl, const std::string& bytes) {
  return bytes.empty() || SSL_write(ssl, bytes.data(), static_cast<int>(bytes.size())) > 0;
}

bool ReadAll(SSL* ssl, char* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    const int r = SSL_read(ssl, buf + got, static_cast<int>(n - got));
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

bool ReadFrame(SSL* ssl, v1::Frame* frame) {
  uint8_t header[proto::kFrameHeaderBytes];
  if (!ReadAll(ssl, reinterpret_cast<char*>(header), sizeof header)) return false;
  auto len = proto::DecodeFrameLength(header, proto::kDefaultMaxFrameBytes);
  if (!len.ok()) return false;
  std::string body(*len, '\0');
  if (!ReadAll(ssl, body.data(), body.size())) return false;
  frame->Clear();
  (void)proto::ParseFrame(body, frame);  // kept even when it does not parse: the client sent something
  return true;
}

std::string Encode(const std::vector<v1::Frame>& frames) {
  std::string out;
  for (const auto& f : frames) {
    auto e = proto::EncodeFrame(f);
    if (e.ok()) out += *e;
  }
  return out;
}

v1::Frame Deliver(uint64_t delivery_id) {
  v1::Frame f;
  f.mutable_deliver()->set_delivery_id(delivery_id);
  f.mutable_deliver()->set_attempt(1);
  return f;
}

}  // namespace

ScriptedBroker::ScriptedBroker(std::vector<Step> script, uint32_t credit)
    : script_(std::move(script)), credit_(credit) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(listen_fd_, 1) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  port_ = ntohs(addr.sin_port);
  thread_ = std::thread([this] { Serve(); });
}

ScriptedBroker::~ScriptedBroker() {
  ::shutdown(listen_fd_, SHUT_RDWR);
  thread_.join();
  ::close(listen_fd_);
}

std::vector<std::string> ScriptedBroker::Cli(const std::string& agency, std::vector<std::string> rest) const {
  const std::string& pki = PkiDir();
  std::vector<std::string> argv = {LIAISON_CLI_BIN,
                                   "--broker",
                                   "127.0.0.1:" + std::to_string(port_),
                                   "--server-name",
                                   "localhost",
                                   "--cert",
                                   pki + "/" + agency + ".crt",
                                   "--key",
                                   pki + "/" + agency + ".key",
                                   "--ca",
                                   pki + "/ca.crt"};
  argv.insert(argv.end(), rest.begin(), rest.end());
  return argv;
}

std::vector<v1::Frame> ScriptedBroker::Received() {
  std::lock_guard lock(mu_);
  return received_;
}

std::vector<uint64_t> ScriptedBroker::Acked() {
  std::vector<uint64_t> ids;
  for (const auto& f : Received()) {
    if (f.has_delivery_ack()) ids.push_back(f.delivery_ack().delivery_id());
  }
  return ids;
}

void ScriptedBroker::RefuseProofs(v1::Checkpoint checkpoint, v1::Reason refusal) {
  std::lock_guard lock(mu_);
  checkpoint_ = std::move(checkpoint);
  refusal_ = refusal;
}

void ScriptedBroker::Serve() {
  // A client that has gone makes a write fail with EPIPE; the SIGPIPE it
  // raises stays pending on this thread instead of ending the tests.
  sigset_t pipe_signal;
  sigemptyset(&pipe_signal);
  sigaddset(&pipe_signal, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
  pollfd p{listen_fd_, POLLIN, 0};
  if (::poll(&p, 1, 20000) <= 0) return;
  const int fd = ::accept(listen_fd_, nullptr, nullptr);
  // One connection: a client that connects again is refused at once
  // instead of waiting for a handshake nobody answers.
  ::shutdown(listen_fd_, SHUT_RDWR);
  if (fd < 0) return;
  const std::string& pki = PkiDir();
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  SSL_CTX_use_certificate_chain_file(ctx, (pki + "/broker.crt").c_str());
  SSL_CTX_use_PrivateKey_file(ctx, (pki + "/broker.key").c_str(), SSL_FILETYPE_PEM);
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  timeval tv{20, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  v1::Frame f;
  auto keep = [&] {
    std::lock_guard lock(mu_);
    received_.push_back(f);
  };
  if (SSL_accept(ssl) == 1 && ReadFrame(ssl, &f)) {
    keep();
    v1::Frame w;
    v1::Welcome* welcome = w.mutable_welcome();
    welcome->set_protocol_version(1);
    welcome->set_agency_id("school");
    welcome->set_session_id("scripted");
    welcome->set_broker_name("scripted");
    welcome->set_receiving(true);
    welcome->set_credit(credit_);
    welcome->set_max_frame_bytes(proto::kDefaultMaxFrameBytes);
    v1::Reason refusal;
    {
      std::lock_guard lock(mu_);
      if (checkpoint_) *welcome->mutable_checkpoint() = *checkpoint_;
      refusal = refusal_;
    }
    bool ok = WriteAll(ssl, Encode({w}));
    size_t acks = 0, next = 0;
    auto play = [&] {
      while (ok && next < script_.size() && acks >= script_[next].after_acks) {
        ok = WriteAll(ssl, Encode(script_[next++].frames));
      }
    };
    play();
    while (ReadFrame(ssl, &f)) {
      keep();
      if (f.has_delivery_ack()) ++acks;
      if (f.has_consistency_proof_request() && refusal != v1::REASON_UNSPECIFIED) {
        v1::Frame e;
        e.mutable_error()->set_request_id(f.consistency_proof_request().request_id());
        e.mutable_error()->set_code(refusal);
        e.mutable_error()->set_message("scripted: no proof");
        ok = ok && WriteAll(ssl, Encode({e}));
      }
      play();
    }
  }
  ERR_clear_error();
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  ::close(fd);
}

v1::Frame DeliverMessage(uint64_t delivery_id, const std::string& sender, const std::string& message_id) {
  v1::Frame f = Deliver(delivery_id);
  v1::Message* m = f.mutable_deliver()->mutable_message();
  *m = IncidentReport({"school"});
  m->mutable_envelope()->set_sender(sender);
  m->mutable_envelope()->set_message_id(message_id);
  return f;
}

v1::Frame DeliverRecall(uint64_t delivery_id, const std::string& sender, const std::string& message_id) {
  v1::Frame f = Deliver(delivery_id);
  v1::RecallNotice* n = f.mutable_deliver()->mutable_recall();
  n->set_sender(sender);
  n->set_message_id(message_id);
  n->set_reason("scripted");
  return f;
}

v1::Frame DeliverReport(uint64_t delivery_id, const std::string& message_id, const std::string& recipient) {
  v1::Frame f = Deliver(delivery_id);
  v1::DeliveryReport* r = f.mutable_deliver()->mutable_report();
  r->set_message_id(message_id);
  r->set_recipient(recipient);
  r->set_outcome(v1::OUTCOME_DELIVERED);
  return f;
}

}  // namespace liaison::test
