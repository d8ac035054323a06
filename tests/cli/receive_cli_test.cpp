// liaison receive (and the global --witness) as a process: what comes from
// the network is checked before it becomes a file name or output, and what
// comes from local files is refused rather than silently replaced. Some
// cases need a broker that sends what the real one never would: a scripted
// one-connection TLS server with the dev PKI's broker certificate.
#include <catch2/catch.hpp>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <optional>
#include <thread>

#include "common/files.h"
#include "proto/detail/pb.h"
#include "proto/frame_codec.h"
#include "proto/message_json.h"
#include "tests/integration/process_support.h"
#include "tests/integration/test_support.h"

using namespace liaison;
using namespace liaison::test;

namespace {

// One connection: TLS with the broker certificate, read Hello, answer
// Welcome, send the given Deliver frames, then read until the client goes.
class ScriptedBroker {
 public:
  explicit ScriptedBroker(std::vector<v1::Frame> deliveries) : deliveries_(std::move(deliveries)) {
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
  ~ScriptedBroker() {
    ::shutdown(listen_fd_, SHUT_RDWR);
    thread_.join();
    ::close(listen_fd_);
  }
  uint16_t port() const { return port_; }
  std::vector<std::string> Cli(const std::string& agency, std::vector<std::string> rest) const {
    const std::string& pki = PkiDir();
    std::vector<std::string> argv = {LIAISON_CLI_BIN, "--broker", "127.0.0.1:" + std::to_string(port_),
                                     "--server-name", "localhost", "--cert", pki + "/" + agency + ".crt",
                                     "--key", pki + "/" + agency + ".key", "--ca", pki + "/ca.crt"};
    argv.insert(argv.end(), rest.begin(), rest.end());
    return argv;
  }

 private:
  void Serve() {
    // A client that has gone makes a write fail with EPIPE; the SIGPIPE it
    // raises stays pending on this thread instead of ending the tests.
    sigset_t pipe_signal;
    sigemptyset(&pipe_signal);
    sigaddset(&pipe_signal, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 20000) <= 0) return;
    const int fd = ::accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) return;
    const std::string& pki = PkiDir();
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_use_certificate_chain_file(ctx, (pki + "/broker.crt").c_str());
    SSL_CTX_use_PrivateKey_file(ctx, (pki + "/broker.key").c_str(), SSL_FILETYPE_PEM);
    SSL* ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    timeval tv{20, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (SSL_accept(ssl) == 1 && ReadFrame(ssl)) {
      v1::Frame w;
      v1::Welcome* welcome = w.mutable_welcome();
      welcome->set_agency_id("school");
      welcome->set_session_id("scripted");
      welcome->set_broker_name("scripted");
      welcome->set_receiving(true);
      welcome->set_credit(16);
      welcome->set_max_frame_bytes(proto::kDefaultMaxFrameBytes);
      Send(ssl, w);
      for (const auto& d : deliveries_) Send(ssl, d);
      while (ReadFrame(ssl)) {
      }
    }
    ERR_clear_error();
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    ::close(fd);
  }
  static void Send(SSL* ssl, const v1::Frame& f) {
    auto e = proto::EncodeFrame(f);
    if (e.ok()) SSL_write(ssl, e->data(), static_cast<int>(e->size()));
  }
  static bool ReadAll(SSL* ssl, char* buf, size_t n) {
    size_t got = 0;
    while (got < n) {
      const int r = SSL_read(ssl, buf + got, static_cast<int>(n - got));
      if (r <= 0) return false;
      got += static_cast<size_t>(r);
    }
    return true;
  }
  static bool ReadFrame(SSL* ssl) {
    uint8_t header[4];
    if (!ReadAll(ssl, reinterpret_cast<char*>(header), 4)) return false;
    auto len = proto::DecodeFrameLength(header, proto::kDefaultMaxFrameBytes);
    if (!len.ok()) return false;
    std::string body(*len, '\0');
    return ReadAll(ssl, body.data(), body.size());
  }

  std::vector<v1::Frame> deliveries_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
};

v1::Frame DeliverMessage(uint64_t delivery_id, const std::string& sender, const std::string& message_id) {
  v1::Frame f;
  v1::Deliver* d = f.mutable_deliver();
  d->set_delivery_id(delivery_id);
  d->set_attempt(1);
  *d->mutable_message() = IncidentReport({"school"});
  d->mutable_message()->mutable_envelope()->set_sender(sender);
  d->mutable_message()->mutable_envelope()->set_message_id(message_id);
  return f;
}

v1::Frame DeliverRecall(uint64_t delivery_id, const std::string& sender, const std::string& message_id) {
  v1::Frame f;
  v1::Deliver* d = f.mutable_deliver();
  d->set_delivery_id(delivery_id);
  d->set_attempt(1);
  d->mutable_recall()->set_sender(sender);
  d->mutable_recall()->set_message_id(message_id);
  d->mutable_recall()->set_reason("scripted");
  return f;
}

v1::Frame DeliverReport(uint64_t delivery_id, const std::string& message_id, const std::string& recipient) {
  v1::Frame f;
  v1::Deliver* d = f.mutable_deliver();
  d->set_delivery_id(delivery_id);
  d->set_attempt(1);
  d->mutable_report()->set_message_id(message_id);
  d->mutable_report()->set_recipient(recipient);
  d->mutable_report()->set_outcome(v1::OUTCOME_DELIVERED);
  return f;
}

}  // namespace

TEST_CASE("liaison receive --out prints one line per notice even when the broker's fields hold newlines",
          "[cli][receive]") {
  TempDir dir;
  std::filesystem::create_directories(dir.File("inbox"));
  ScriptedBroker broker({DeliverReport(1, "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42\nreceived forged", "school\nx")});
  std::string out, err;
  const int rc = Run(broker.Cli("school", {"receive", "--out", dir.File("inbox"), "--count", "1", "--wait", "3"}),
                     dir.path(), &out, &err);
  INFO(out << err);
  CHECK(rc == 5);  // a report is no message: none came
  CHECK(std::count(out.begin(), out.end(), '\n') == 1);
  CHECK(out.rfind("delivery report: ", 0) == 0);
}

TEST_CASE("liaison receive --out refuses a sender or message id from the broker that is no safe file name",
          "[cli][receive]") {
  TempDir dir;
  std::filesystem::create_directories(dir.File("work/inbox"));
  const std::string inbox = dir.File("work/inbox");
  std::string out, err;
  SECTION("a message whose sender climbs out of the directory") {
    ScriptedBroker broker({DeliverMessage(1, "../escaped", "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42")});
    const int rc = Run(broker.Cli("school", {"receive", "--out", inbox, "--count", "1", "--wait", "10"}), dir.path(),
                       &out, &err);
    INFO(out << err);
    CHECK(rc == 3);
    CHECK(err.find("not acknowledged") != std::string::npos);
    CHECK(!std::filesystem::exists(dir.File("work/escaped_0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42.json")));
  }
  SECTION("a message whose id climbs out of the directory") {
    std::filesystem::create_directories(dir.File("work/inbox/police_"));
    ScriptedBroker broker({DeliverMessage(1, "police", "/../../escaped")});
    const int rc = Run(broker.Cli("school", {"receive", "--out", inbox, "--count", "1", "--wait", "10"}), dir.path(),
                       &out, &err);
    INFO(out << err);
    CHECK(rc == 3);
    CHECK(!std::filesystem::exists(dir.File("work/escaped.json")));
  }
  SECTION("a recall notice whose sender climbs out of the directory") {
    ScriptedBroker broker({DeliverRecall(1, "../../escaped", "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42")});
    REQUIRE(WriteFileAtomic(dir.File("escaped_0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42.json"), "{}\n").ok());
    const int rc = Run(broker.Cli("school", {"receive", "--out", inbox, "--count", "1", "--wait", "3"}), dir.path(),
                       &out, &err);
    INFO(out << err);
    CHECK(rc == 3);
    // Neither moved from outside --out nor a notice written there.
    CHECK(std::filesystem::exists(dir.File("escaped_0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42.json")));
    CHECK(!std::filesystem::exists(dir.File("work/escaped_0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c42.recall.json")));
  }
}

TEST_CASE("liaison receive --out --json prints valid JSON when the directory's name holds a quote or a backslash",
          "[cli][receive]") {
  TempDir dir;
  BrokerProcess broker(dir);
  REQUIRE(WriteFileAtomic(dir.File("incident.json"), *proto::ToJson(IncidentReport({"school"}), true)).ok());
  const std::string inbox = dir.File("in\"box\\");
  std::filesystem::create_directory(inbox);
  std::string out, err;
  REQUIRE(Run(broker.Cli("police", {"send", "--to", "school", dir.File("incident.json")}), dir.path(), &out, &err) == 0);
  const int rc = Run(broker.Cli("school", {"--json", "receive", "--out", inbox, "--count", "1", "--wait", "20"}),
                     dir.path(), &out, &err);
  INFO(out << err);
  REQUIRE(rc == 0);
  google::protobuf::Struct line;
  REQUIRE(google::protobuf::util::JsonStringToMessage(out, &line).ok());
  const std::string file = line.fields().at("file").string_value();
  CHECK(file.rfind(inbox + "/police_", 0) == 0);
  CHECK(std::filesystem::exists(file));
}

TEST_CASE("liaison --witness refuses a witness file that is not a checkpoint and leaves it as it is", "[cli][witness]") {
  TempDir dir;
  BrokerProcess broker(dir);
  REQUIRE(WriteFileAtomic(dir.File("incident.json"), *proto::ToJson(IncidentReport({"school"}), true)).ok());
  const std::string witness = dir.File("police.checkpoint");
  // A witness file damaged by hand or by another program: starting over from
  // whatever the broker shows now would silently drop what was witnessed.
  REQUIRE(WriteFileAtomic(witness, "liaison-test/audit\n12\n").ok());
  std::string out, err;
  const int rc = Run(broker.Cli("police", {"--witness", witness, "send", "--to", "school", dir.File("incident.json")}),
                     dir.path(), &out, &err);
  INFO(out << err);
  CHECK(rc == 2);
  CHECK(err.find(witness) != std::string::npos);
  CHECK(out.empty());  // nothing was sent
  CHECK(Slurp(witness) == "liaison-test/audit\n12\n");
  // One that cannot be kept where it is named is refused too, before sending.
  CHECK(Run(broker.Cli("police", {"--witness", dir.File("missing/police.checkpoint"), "send", "--to", "school",
                                  dir.File("incident.json")}),
            dir.path(), &out, &err) == 2);
  CHECK(err.find("missing/police.checkpoint") != std::string::npos);
  CHECK(out.empty());
  // A witness file that does not exist yet is started.
  const std::string fresh = dir.File("school.checkpoint");
  const int fresh_rc =
      Run(broker.Cli("police", {"--witness", fresh, "send", "--to", "school", dir.File("incident.json")}), dir.path(),
          &out, &err);
  INFO("fresh witness: " << out << err);
  CHECK(fresh_rc == 0);
  CHECK(std::filesystem::exists(fresh));
}
