// net::TlsStream, the coroutine TLS stream under every broker session and
// client, and net::FrameStream's reading of frames from it: real sockets on
// 127.0.0.1, the dev PKI's broker and agency certificates, both ends in this
// process on one io_context.
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
#include <future>
#include <optional>
#include <string>

#include "common/detail/frame_stream.h"
#include "common/detail/tls.h"
#include "common/detail/tls_stream.h"
#include "proto/detail/pb.h"
#include "proto/frame_codec.h"
#include "tests/integration/test_support.h"

using namespace liaison;
using net::ErrorCode;
using net::ReadBuffer;
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

// Reads size bytes into *out (*n of them before an error).
asio::awaitable<ErrorCode> ReadString(TlsStream& s, std::string* out, size_t size, size_t* n) {
  out->clear();
  while (out->size() < size) {
    ReadBuffer buf(size - out->size());  // no more than asked for
    buf.Prepare(0);
    const ErrorCode ec = co_await s.ReadSome(buf);
    if (ec) {
      *n = out->size();
      co_return ec;
    }
    out->append(buf.unread_data(), buf.unread());
  }
  *n = out->size();
  co_return ErrorCode();
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

namespace {

std::string Encoded(const v1::Frame& f) {
  auto e = proto::EncodeFrame(f, 1 << 20);
  REQUIRE(e.ok());
  return *e;
}

v1::Frame PingFrame(uint64_t nonce) {
  v1::Frame f;
  f.mutable_ping()->set_nonce(nonce);
  return f;
}

// An Error frame of about `bytes` bytes.
v1::Frame BigFrame(size_t bytes) {
  v1::Frame f;
  f.mutable_error()->set_message(std::string(bytes, 'x'));
  return f;
}

// Writes each piece with its own WriteAll (each a TLS record or more).
asio::awaitable<void> WritePieces(TlsStream& s, std::vector<std::string> pieces) {
  for (const auto& piece : pieces) {
    size_t n = 0;
    const ErrorCode ec = co_await WriteString(s, piece, &n);
    CHECK_FALSE(ec);
  }
}

// Reads frames until ReadFrame fails; *most_buffered is the largest read
// buffer seen after a frame, *after_big the buffer after the frame that
// follows one over 32 KiB.
struct FrameRead {
  std::string frame;       // serialized as parsed
  std::string last_frame;  // FrameStream::last_frame()
  size_t buffer = 0;       // FrameStream::read_buffer_bytes() after it
};
asio::awaitable<Status> ReadFrames(net::FrameStream& in, size_t count, std::vector<FrameRead>* got) {
  v1::Frame f;
  while (got->size() < count) {
    const Status s = co_await in.ReadFrame(&f);
    if (!s.ok()) co_return s;
    got->push_back({f.SerializeAsString(), std::string(in.last_frame()), in.read_buffer_bytes()});
  }
  co_return Status::Ok();
}

// Writes pieces from p's client while in reads count frames (ReadFrames),
// until both are done; what the reading came to.
Status ReadWhileWriting(Pair& p, net::FrameStream& in, std::vector<std::string> pieces, size_t count,
                        std::vector<FrameRead>* got) {
  p.ioc.restart();
  asio::co_spawn(p.client->get_executor(), WritePieces(*p.client, std::move(pieces)), asio::detached);
  auto done = asio::co_spawn(in.strand(), ReadFrames(in, count, got), asio::use_future);
  p.ioc.run();
  return done.get();
}

}  // namespace

TEST_CASE("FrameStream: frames however the bytes arrive, and a large frame's buffer given back after it",
          "[frame_stream]") {
  Pair p;
  p.Connect();
  net::FrameStream in(std::move(*p.server), 1 << 20, 1 << 20);
  std::vector<v1::Frame> frames;
  std::vector<std::string> pieces;
  // 300 frames in one write: one TLS record, read by one SSL_read.
  std::string many;
  for (int i = 0; i < 300; ++i) {
    frames.push_back(PingFrame(1000 + i));
    many += Encoded(frames.back());
  }
  pieces.push_back(many);
  // A frame a byte at a time: its header and its body split across records.
  frames.push_back(PingFrame(0x0102030405060708));
  for (char c : Encoded(frames.back())) pieces.emplace_back(1, c);
  // A boundary inside a header: a frame and two bytes of the next, then the rest.
  frames.push_back(PingFrame(7));
  frames.push_back(PingFrame(8));
  const std::string a = Encoded(frames[frames.size() - 2]), b = Encoded(frames.back());
  pieces.push_back(a + b.substr(0, 2));
  pieces.push_back(b.substr(2));
  // A 100,000-byte frame in 7,000-byte writes, the last with two small frames behind it.
  frames.push_back(BigFrame(100000));
  std::string big = Encoded(frames.back());
  frames.push_back(PingFrame(9));
  big += Encoded(frames.back());
  frames.push_back(PingFrame(10));
  big += Encoded(frames.back());
  for (size_t at = 0; at < big.size(); at += 7000) pieces.push_back(big.substr(at, 7000));

  std::vector<FrameRead> got;
  REQUIRE(ReadWhileWriting(p, in, pieces, frames.size(), &got).ok());
  REQUIRE(got.size() == frames.size());
  for (size_t i = 0; i < frames.size(); ++i) {
    INFO("frame " << i);
    CHECK(got[i].frame == frames[i].SerializeAsString());
    CHECK(got[i].last_frame == Encoded(frames[i]).substr(proto::kFrameHeaderBytes));
  }
  const size_t big_at = frames.size() - 3;
  CHECK(got[big_at].buffer >= 100000);          // grown for the large frame
  CHECK(got[big_at + 1].buffer <= 32 * 1024);   // and cut back at the next
  for (size_t i = 0; i < big_at; ++i) CHECK(got[i].buffer <= 32 * 1024);
}

TEST_CASE("FrameStream: an idle connection holds no read buffer, and bad frames are told apart", "[frame_stream]") {
  SECTION("idle") {
    Pair p;
    p.Connect();
    net::FrameStream in(std::move(*p.server), 1 << 20, 1 << 20);
    std::vector<FrameRead> got;
    REQUIRE(ReadWhileWriting(p, in, {Encoded(PingFrame(1))}, 1, &got).ok());
    p.ioc.restart();
    // The next read waits with nothing buffered.
    auto second = asio::co_spawn(in.strand(), ReadFrames(in, 2, &got), asio::use_future);
    std::optional<size_t> while_idle;
    asio::steady_timer timer(p.ioc);
    asio::co_spawn(
        p.client->get_executor(),
        [&]() -> asio::awaitable<void> {
          timer.expires_after(std::chrono::milliseconds(50));
          co_await timer.async_wait(kUseTuple);
          while_idle = in.read_buffer_bytes();
          std::vector<std::string> next{Encoded(PingFrame(2))};
          co_await WritePieces(*p.client, std::move(next));
        },
        asio::detached);
    p.ioc.run();
    REQUIRE(second.get().ok());
    REQUIRE(while_idle);
    CHECK(*while_idle == 0);
    REQUIRE(got.size() == 2);
    CHECK(got[1].frame == PingFrame(2).SerializeAsString());
  }
  SECTION("a body that does not parse is refused, and the next frame still reads") {
    Pair p;
    p.Connect();
    net::FrameStream in(std::move(*p.server), 1000, 1 << 20);
    const std::string garbage("\x00\x00\x00\x03\xff\xff\xff", 7);
    std::vector<FrameRead> got;
    CHECK(ReadWhileWriting(p, in, {garbage + Encoded(PingFrame(3))}, 1, &got).code() ==
          Status::Code::kInvalidArgument);
    REQUIRE(ReadWhileWriting(p, in, {}, 1, &got).ok());
    REQUIRE(got.size() == 1);
    CHECK(got[0].frame == PingFrame(3).SerializeAsString());
  }
  SECTION("a length over the limit") {
    Pair p;
    p.Connect();
    net::FrameStream in(std::move(*p.server), 1000, 1 << 20);
    std::vector<FrameRead> got;
    const Status s = ReadWhileWriting(p, in, {std::string("\x00\x00\x03\xe9", 4)}, 1, &got);
    CHECK(s.code() == Status::Code::kProtocolError);
    CHECK(s.message() == "frame length 1001 exceeds the maximum of 1000 bytes");
  }
  SECTION("the peer goes away mid-frame, in its header or its body") {
    for (const size_t sent : {2, 6}) {
      INFO(sent << " bytes of the frame sent");
      Pair p;
      p.Connect();
      net::FrameStream in(std::move(*p.server), 1000, 1 << 20);
      asio::co_spawn(
          p.client->get_executor(),
          [&]() -> asio::awaitable<void> {
            std::vector<std::string> part{Encoded(PingFrame(4)).substr(0, sent)};
            co_await WritePieces(*p.client, std::move(part));
            p.client->Close();
          },
          asio::detached);
      std::vector<FrameRead> got;
      auto r = asio::co_spawn(in.strand(), ReadFrames(in, 1, &got), asio::use_future);
      p.ioc.run();
      const Status s = r.get();
      CHECK(s.code() == Status::Code::kUnavailable);
      CHECK(s.message().rfind("connection lost mid-frame: ", 0) == 0);
    }
  }
}

TEST_CASE("FrameStream: frames queued by SendEncoded and SendAppended go out in order, in several writes",
          "[frame_stream]") {
  Pair p;
  p.Connect();
  net::FrameStream in(std::move(*p.server), 1 << 20, 1 << 20);
  net::FrameStream out(std::move(*p.client), 1 << 20, 1 << 20);
  std::vector<std::string> expected;  // each frame, serialized
  // 200 frames of 3,000 bytes and 200 Deliver frames, alternately: about
  // 600 KB, more than one write (256 KiB) takes.
  for (int i = 0; i < 200; ++i) {
    const v1::Frame big = BigFrame(3000 + i);
    REQUIRE(out.SendEncoded(Encoded(big)).ok());
    expected.push_back(big.SerializeAsString());
    v1::Frame deliver;
    deliver.mutable_deliver()->set_delivery_id(i + 1);
    deliver.mutable_deliver()->set_attempt(1);
    deliver.mutable_deliver()->mutable_message()->mutable_envelope()->set_message_id("m" + std::to_string(i));
    const std::string message = deliver.deliver().message().SerializeAsString();
    REQUIRE(out.SendAppended([&](std::string* queue) {
                 return proto::AppendDeliverFrame(queue, static_cast<uint64_t>(i + 1), 1, message);
               }).ok());
    expected.push_back(deliver.SerializeAsString());
  }
  // An append that fails queues nothing, even what it wrote before failing.
  const size_t queued = out.queued_bytes();
  const Status failed = out.SendAppended([](std::string* queue) {
    queue->append("half a frame");
    return Status::InvalidArgument("no");
  });
  CHECK(failed.code() == Status::Code::kInvalidArgument);
  CHECK(out.queued_bytes() == queued);
  out.CloseGracefully();

  std::vector<FrameRead> got;
  asio::co_spawn(out.strand(), out.WriteLoop(), asio::detached);
  auto done = asio::co_spawn(
      in.strand(),
      [&]() -> asio::awaitable<Status> {
        const Status s = co_await ReadFrames(in, expected.size() + 1, &got);
        in.Abort();  // the writer's shutdown waits for this end
        co_return s;
      },
      asio::use_future);
  p.ioc.run();
  const Status end = done.get();
  CHECK(end.code() == Status::Code::kUnavailable);  // the writer's close_notify after the last frame
  REQUIRE(got.size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    INFO("frame " << i);
    CHECK(got[i].frame == expected[i]);
  }
  CHECK(out.bytes_written() == in.bytes_read());
}

TEST_CASE("FrameStream: a frame that would overfill the queue is refused and nothing of it is queued",
          "[frame_stream]") {
  Pair p;
  p.Connect();
  net::FrameStream out(std::move(*p.client), 1 << 20, 10000);
  const std::string frame = Encoded(BigFrame(3000));
  for (int i = 0; i < 3; ++i) REQUIRE(out.SendEncoded(frame).ok());
  const size_t queued = out.queued_bytes();
  CHECK(queued == 3 * frame.size());
  CHECK(out.SendEncoded(frame).code() == Status::Code::kUnavailable);
  CHECK(out.queued_bytes() == queued);
  CHECK(out.SendAppended([&](std::string* queue) {
                queue->append(frame);
                return Status::Ok();
              }).code() == Status::Code::kUnavailable);
  CHECK(out.queued_bytes() == queued);
}

TEST_CASE("FrameStream: the queue's limit counts what a write has not yet handed to the socket", "[frame_stream]") {
  Pair p;
  p.Connect();
  // The peer reads nothing: once the socket's buffers are full, the batch
  // being written waits, and what is queued behind it counts with it.
  const size_t kLimit = 1 << 20;
  net::FrameStream out(std::move(*p.client), 1 << 20, kLimit);
  asio::co_spawn(out.strand(), out.WriteLoop(), asio::detached);
  const std::string frame = Encoded(BigFrame(100000));
  size_t accepted = 0;
  bool refused = false;
  for (int i = 0; i < 2000 && !refused; ++i) {
    if (out.SendEncoded(frame).ok()) {
      accepted += frame.size();
    } else {
      refused = true;
    }
    p.ioc.poll();
    REQUIRE(out.queued_bytes() == accepted - out.bytes_written());
    REQUIRE(out.queued_bytes() <= kLimit);
  }
  CHECK(refused);
  out.Abort();
  p.ioc.run();
}

TEST_CASE("FrameStream: a burst's write buffer is given back after it, though frames keep coming",
          "[frame_stream]") {
  Pair p;
  p.Connect();
  net::FrameStream in(std::move(*p.server), 1 << 20, 1 << 20);
  net::FrameStream out(std::move(*p.client), 1 << 20, 64 << 20);
  asio::co_spawn(out.strand(), out.WriteLoop(), asio::detached);
  const std::string frame = Encoded(BigFrame(100000));
  // A burst of 4 MB, taken as one batch; the peer reads nothing yet.
  for (int i = 0; i < 40; ++i) REQUIRE(out.SendEncoded(frame).ok());
  p.ioc.poll();
  // 20 MB queue up behind it: more than the sockets' buffers hold.
  for (int i = 0; i < 200; ++i) REQUIRE(out.SendEncoded(frame).ok());
  // The peer reads the burst and stops: the writer finishes the burst and
  // waits in the middle of the next batch.
  std::vector<FrameRead> got;
  auto read = asio::co_spawn(in.strand(), ReadFrames(in, 40, &got), asio::use_future);
  uint64_t written = 0;
  for (int i = 0; i < 200; ++i) {
    p.ioc.run_for(std::chrono::milliseconds(50));
    const bool done = read.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
    if (done && out.bytes_written() == written) break;
    written = out.bytes_written();
  }
  REQUIRE(read.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
  REQUIRE(read.get().ok());
  CHECK(got.size() == 40);
  CHECK(out.queued_bytes() > 0);                   // the second batch waits
  CHECK(out.queue_buffer_bytes() < (1u << 20));    // and the burst's buffer is gone
  CHECK(out.batch_buffer_bytes() >= out.queued_bytes());
  out.Abort();
  in.Abort();
  p.ioc.run();
}
