// net::TlsStream, the coroutine TLS stream under every broker session and
// client: real sockets on 127.0.0.1, the dev PKI's broker and agency
// certificates, both ends in this process on one io_context.
#include <catch2/catch.hpp>

#include <openssl/ssl.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <chrono>
#include <optional>
#include <string>

#include "common/detail/tls.h"
#include "common/detail/tls_stream.h"
#include "tests/integration/test_support.h"

using namespace liaison;
using net::ErrorCode;
using net::TlsStream;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

std::string Pattern(size_t n, unsigned seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (auto& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

// A connected, handshaken pair: server (the broker's certificate, requires
// a client certificate) and client (police).
struct Pair {
  asio::io_context ioc;
  std::shared_ptr<tls::Context> server_ctx;
  std::shared_ptr<tls::Context> client_ctx;
  std::optional<TlsStream> server;
  std::optional<TlsStream> client;

  explicit Pair(const std::string& server_name = "localhost") {
    const std::string pki = test::PkiDir();
    auto s = tls::MakeServerContext(TlsFiles{pki + "/broker.crt", pki + "/broker.key", pki + "/ca.crt", {}});
    auto c = tls::MakeClientContext(test::AgencyTls("police"));
    REQUIRE(s.ok());
    REQUIRE(c.ok());
    server_ctx = *s;
    client_ctx = *c;

    tcp::acceptor acceptor(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    net::Strand strand = asio::make_strand(ioc);
    net::Socket accepted(strand);
    // Construct, then move, as the broker and the client library do: the
    // BIO must follow the stream to its new address.
    TlsStream client_stream(net::Socket(asio::make_strand(ioc)), client_ctx->native_handle());
    client_stream.socket().connect(acceptor.local_endpoint());
    acceptor.accept(accepted);
    REQUIRE(client_stream.SetExpectedServerName(server_name));
    client.emplace(std::move(client_stream));
    server.emplace(std::move(accepted), server_ctx->native_handle());
  }

  // Runs both handshakes; returns {server error, client error}.
  std::pair<ErrorCode, ErrorCode> Handshake() {
    auto fs = asio::co_spawn(ioc, server->Handshake(TlsStream::Role::kServer), asio::use_future);
    auto fc = asio::co_spawn(ioc, client->Handshake(TlsStream::Role::kClient), asio::use_future);
    ioc.run();
    ioc.restart();
    return {fs.get(), fc.get()};
  }

  // Both handshakes, which must succeed.
  void Connect() {
    auto [se, ce] = Handshake();
    REQUIRE_FALSE(se);
    REQUIRE_FALSE(ce);
  }
};

asio::awaitable<ErrorCode> WriteString(TlsStream& s, const std::string& data, size_t* n) {
  co_return co_await s.WriteAll(data.data(), data.size(), n);
}

asio::awaitable<ErrorCode> ReadString(TlsStream& s, std::string* out, size_t size, size_t* n) {
  out->resize(size);
  co_return co_await s.ReadExactly(out->data(), size, n);
}

// How the next read of s ends (when nothing more is expected: its end).
asio::awaitable<ErrorCode> ReadEnd(TlsStream& s) {
  std::string more;
  size_t n = 0;
  co_return co_await ReadString(s, &more, 1, &n);
}

// Shuts s down (close_notify, then the peer's end) and closes it.
asio::awaitable<ErrorCode> ShutdownAndClose(TlsStream& s) {
  const ErrorCode ec = co_await s.Shutdown();
  s.Close();
  co_return ec;
}

// Starts a read of 10 bytes on s; *end gets how it ended.
void SpawnRead(TlsStream& s, std::optional<ErrorCode>* end) {
  asio::co_spawn(
      s.get_executor(),
      [&s, end]() -> asio::awaitable<void> {
        std::string buf;
        size_t n = 0;
        *end = co_await ReadString(s, &buf, 10, &n);
      },
      asio::detached);
}

}  // namespace

TEST_CASE("TlsStream: mutual TLS 1.3 handshake with the expected server name", "[tls_stream]") {
  Pair p;
  p.Connect();
  CHECK(SSL_version(p.client->native_handle()) == TLS1_3_VERSION);
  CHECK(SSL_get0_peer_certificate(p.server->native_handle()) != nullptr);  // the client's certificate
}

TEST_CASE("TlsStream: the client refuses a server certificate without the expected name or address",
          "[tls_stream]") {
  for (const char* name : {"broker.example.org", "127.0.0.2"}) {
    SECTION(name) {
      Pair p(name);
      auto [se, ce] = p.Handshake();
      CHECK(ce);
      const long verify = SSL_get_verify_result(p.client->native_handle());
      CHECK((verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH));
    }
  }
  SECTION("127.0.0.1 is in the certificate") {
    Pair p("127.0.0.1");
    auto [se, ce] = p.Handshake();
    CHECK_FALSE(se);
    CHECK_FALSE(ce);
  }
}

TEST_CASE("TlsStream: many megabytes both ways at once, through full socket buffers", "[tls_stream]") {
  Pair p;
  p.Connect();
  // Each side writes 8 MiB in one WriteAll while reading the other's 8 MiB
  // in 1,000-byte pieces: both writers block on full socket buffers
  // (WANT_WRITE) while their own reader is outstanding on the same SSL.
  const size_t kBytes = 8 << 20;
  const std::string to_client = Pattern(kBytes, 1);
  const std::string to_server = Pattern(kBytes, 2);
  auto reader = [](TlsStream& s, size_t total) -> asio::awaitable<std::string> {
    std::string got;
    std::string piece;
    while (got.size() < total) {
      size_t n = 0;
      ErrorCode ec = co_await ReadString(s, &piece, std::min<size_t>(1000, total - got.size()), &n);
      if (ec) break;
      got += piece;
    }
    co_return got;
  };
  size_t wrote_s = 0, wrote_c = 0;
  auto ws = asio::co_spawn(p.server->get_executor(), WriteString(*p.server, to_client, &wrote_s), asio::use_future);
  auto wc = asio::co_spawn(p.client->get_executor(), WriteString(*p.client, to_server, &wrote_c), asio::use_future);
  auto rs = asio::co_spawn(p.server->get_executor(), reader(*p.server, kBytes), asio::use_future);
  auto rc = asio::co_spawn(p.client->get_executor(), reader(*p.client, kBytes), asio::use_future);
  p.ioc.run();
  CHECK_FALSE(ws.get());
  CHECK_FALSE(wc.get());
  CHECK(wrote_s == kBytes);
  CHECK(wrote_c == kBytes);
  CHECK(rs.get() == to_server);
  CHECK(rc.get() == to_client);
}

TEST_CASE("TlsStream: Shutdown delivers everything, then both ends see a clean end", "[tls_stream]") {
  Pair p;
  p.Connect();
  const std::string data = Pattern(3 << 20, 3);
  std::optional<ErrorCode> server_shutdown;
  std::string got;
  std::optional<ErrorCode> client_end;
  std::optional<ErrorCode> client_shutdown;
  asio::co_spawn(
      p.server->get_executor(),
      [&]() -> asio::awaitable<void> {
        size_t n = 0;
        ErrorCode ec = co_await p.server->WriteAll(data.data(), data.size(), &n);
        REQUIRE_FALSE(ec);
        server_shutdown = co_await ShutdownAndClose(*p.server);  // returns once the client has closed too
      },
      asio::detached);
  asio::co_spawn(
      p.client->get_executor(),
      [&]() -> asio::awaitable<void> {
        size_t n = 0;
        ErrorCode ec = co_await ReadString(*p.client, &got, data.size(), &n);
        REQUIRE_FALSE(ec);
        client_end = co_await ReadEnd(*p.client);
        client_shutdown = co_await ShutdownAndClose(*p.client);
      },
      asio::detached);
  p.ioc.run();
  CHECK(got == data);
  REQUIRE(client_end);
  CHECK(*client_end == asio::error::eof);  // close_notify, not a truncation
  REQUIRE(server_shutdown);
  CHECK_FALSE(*server_shutdown);
  REQUIRE(client_shutdown);
  CHECK_FALSE(*client_shutdown);
}

TEST_CASE("TlsStream: Shutdown with no reader discards what the peer still sends and waits for its end",
          "[tls_stream]") {
  Pair p;
  p.Connect();
  // The client keeps sending 2 MiB that the server never reads; the server
  // shuts down meanwhile. Its Shutdown must drain the data (or the client's
  // writes would block for ever) and return when the client closes.
  const std::string data = Pattern(2 << 20, 4);
  std::optional<ErrorCode> server_shutdown;
  std::optional<ErrorCode> client_end;
  asio::co_spawn(
      p.server->get_executor(),
      [&]() -> asio::awaitable<void> { server_shutdown = co_await ShutdownAndClose(*p.server); },
      asio::detached);
  asio::co_spawn(
      p.client->get_executor(),
      [&]() -> asio::awaitable<void> {
        size_t n = 0;
        co_await p.client->WriteAll(data.data(), data.size(), &n);
        client_end = co_await ReadEnd(*p.client);
        co_await ShutdownAndClose(*p.client);
      },
      asio::detached);
  p.ioc.run();
  REQUIRE(client_end);
  CHECK(*client_end == asio::error::eof);
  REQUIRE(server_shutdown);
  CHECK_FALSE(*server_shutdown);
}

TEST_CASE("TlsStream: Close ends an outstanding read at once, and a vanished peer is a truncation", "[tls_stream]") {
  SECTION("Close") {
    Pair p;
    p.Connect();
    std::optional<ErrorCode> read_end;
    asio::steady_timer timer(p.server->get_executor());
    SpawnRead(*p.server, &read_end);
    asio::co_spawn(
        p.server->get_executor(),
        [&]() -> asio::awaitable<void> {
          timer.expires_after(std::chrono::milliseconds(50));
          co_await timer.async_wait(kUseTuple);
          p.server->Close();
          // Nothing of the closed stream touches a descriptor again.
          size_t n = 0;
          char c = 'x';
          ErrorCode ec = co_await p.server->WriteAll(&c, 1, &n);
          CHECK(ec == asio::error::operation_aborted);
          CHECK(n == 0);
        },
        asio::detached);
    p.ioc.run();
    REQUIRE(read_end);
    CHECK(*read_end == asio::error::operation_aborted);
  }
  SECTION("the peer closes TCP without close_notify") {
    Pair p;
    p.Connect();
    std::optional<ErrorCode> read_end;
    SpawnRead(*p.server, &read_end);
    p.client->Close();
    p.ioc.run();
    REQUIRE(read_end);
    CHECK(*read_end == asio::ssl::error::stream_truncated);
  }
}
