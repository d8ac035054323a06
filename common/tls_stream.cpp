#include "common/detail/tls_stream.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <utility>

namespace liaison::net {
namespace {
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

bool WouldBlock(const ErrorCode& ec) {
  return ec == asio::error::would_block || ec == asio::error::try_again;
}
}  // namespace

// The BIO between OpenSSL and the socket: its data pointer is the stream
// (kept current when the stream moves).
struct TlsStreamBio {
  static TlsStream* Of(BIO* b) { return static_cast<TlsStream*>(BIO_get_data(b)); }

  // One non-blocking call of the socket for OpenSSL: 1 and the bytes moved,
  // or 0 with the retry flag set when the socket would block, or 0 with the
  // error kept for ErrorFor (end of stream is OpenSSL's to see, not an error).
  template <class SocketCall>
  static int Transfer(BIO* b, bool writing, size_t* done, SocketCall call) {
    BIO_clear_retry_flags(b);
    *done = 0;
    TlsStream* s = Of(b);
    if (!s->socket_.is_open()) {
      s->io_error_ = asio::error::bad_descriptor;
      return 0;
    }
    ErrorCode ec;
    const size_t n = call(s->socket_, ec);
    if (!ec) {
      *done = n;
      return 1;
    }
    if (WouldBlock(ec)) {
      writing ? BIO_set_retry_write(b) : BIO_set_retry_read(b);
    } else if (writing || ec != asio::error::eof) {
      s->io_error_ = ec;
    }
    return 0;
  }

  static int Write(BIO* b, const char* data, size_t size, size_t* written) {
    return Transfer(b, true, written,
                    [&](Socket& socket, ErrorCode& ec) { return socket.write_some(asio::buffer(data, size), ec); });
  }

  static int Read(BIO* b, char* data, size_t size, size_t* read) {
    return Transfer(b, false, read,
                    [&](Socket& socket, ErrorCode& ec) { return socket.read_some(asio::buffer(data, size), ec); });
  }

  static long Ctrl(BIO*, int cmd, long, void*) {
    // Writes go straight to the socket: there is nothing to flush. Every
    // other control (kTLS, push/pop, ...) is unsupported.
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
  }

  static int Create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
  }

  static const BIO_METHOD* Method() {
    static const BIO_METHOD* method = [] {
      BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "liaison socket");
      if (!m || BIO_meth_set_write_ex(m, Write) != 1 || BIO_meth_set_read_ex(m, Read) != 1 ||
          BIO_meth_set_ctrl(m, Ctrl) != 1 || BIO_meth_set_create(m, Create) != 1) {
        throw std::runtime_error("OpenSSL: cannot create the socket BIO method");
      }
      return m;
    }();
    return method;
  }
};

TlsStream::TlsStream(Socket socket, SSL_CTX* ctx) : socket_(std::move(socket)) {
  ssl_ = SSL_new(ctx);
  BIO* bio = ssl_ ? BIO_new(TlsStreamBio::Method()) : nullptr;
  if (!bio) {
    SSL_free(ssl_);
    throw std::runtime_error("OpenSSL: cannot allocate a TLS connection");
  }
  BIO_set_data(bio, this);
  SSL_set_bio(ssl_, bio, bio);  // one reference, owned by ssl_
  // Read whole records (and more) per recv; the buffer is released again
  // when it is empty (SSL_MODE_RELEASE_BUFFERS on the context).
  SSL_set_read_ahead(ssl_, 1);
}

TlsStream::TlsStream(TlsStream&& other) noexcept
    : socket_(std::move(other.socket_)), ssl_(std::exchange(other.ssl_, nullptr)) {
  if (ssl_) BIO_set_data(SSL_get_rbio(ssl_), this);
}

TlsStream::~TlsStream() { SSL_free(ssl_); }

bool TlsStream::SetExpectedServerName(const std::string& name) {
  ErrorCode not_address;
  asio::ip::make_address(name, not_address);
  if (!not_address) return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), name.c_str()) == 1;
  SSL_set_hostflags(ssl_, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  return SSL_set_tlsext_host_name(ssl_, name.c_str()) == 1 && SSL_set1_host(ssl_, name.c_str()) == 1;
}

ErrorCode TlsStream::ErrorFor(int ret) {
  switch (SSL_get_error(ssl_, ret)) {
    case SSL_ERROR_ZERO_RETURN:
      return asio::error::eof;
    case SSL_ERROR_SYSCALL:
      if (io_error_) return io_error_;
      return asio::ssl::error::stream_truncated;  // EOF without close_notify
    case SSL_ERROR_SSL: {
      const unsigned long e = ERR_get_error();
      ERR_clear_error();
      if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        return asio::ssl::error::stream_truncated;
      }
      if (e == 0) return asio::ssl::error::unexpected_result;
      return ErrorCode(static_cast<int>(e), asio::error::get_ssl_category());
    }
    default:
      return asio::ssl::error::unexpected_result;
  }
}

template <class Call, class BeforeWait>
asio::awaitable<ErrorCode> TlsStream::Drive(Call call, BeforeWait before_wait) {
  for (;;) {
    if (!socket_.is_open()) co_return asio::error::operation_aborted;
    ERR_clear_error();
    io_error_ = {};
    const int ret = call();
    if (ret > 0) co_return ErrorCode();
    const int err = SSL_get_error(ssl_, ret);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) co_return ErrorFor(ret);
    before_wait();
    auto [ec] = co_await socket_.async_wait(err == SSL_ERROR_WANT_READ ? tcp::socket::wait_read : tcp::socket::wait_write,
                                            kUseTuple);
    if (ec) co_return ec;
  }
}

asio::awaitable<ErrorCode> TlsStream::Handshake(Role role) {
  ErrorCode ec;
  socket_.non_blocking(true, ec);
  if (ec) co_return ec;
  if (role == Role::kServer) {
    SSL_set_accept_state(ssl_);
  } else {
    SSL_set_connect_state(ssl_);
  }
  co_return co_await Drive([this] { return SSL_do_handshake(ssl_); });
}

void ReadBuffer::Prepare(size_t n) {
  n = std::max(n, normal);
  const size_t unread_bytes = unread();
  if (size < n) {
    auto bigger = std::make_unique_for_overwrite<char[]>(n);
    if (unread_bytes > 0) std::memcpy(bigger.get(), data.get() + begin, unread_bytes);
    data = std::move(bigger);
    size = n;
  } else if (begin > 0 && unread_bytes > 0) {
    std::memmove(data.get(), data.get() + begin, unread_bytes);
  }
  begin = 0;
  end = unread_bytes;
}

void ReadBuffer::CutBack() {
  if (size <= normal) return;
  if (unread() == 0) {
    Release();
  } else if (unread() <= normal) {
    auto smaller = std::make_unique_for_overwrite<char[]>(normal);
    std::memcpy(smaller.get(), data.get() + begin, unread());
    end = unread();
    begin = 0;
    data = std::move(smaller);
    size = normal;
  }
}

void ReadBuffer::Release() {
  data.reset();
  size = begin = end = 0;
}

asio::awaitable<ErrorCode> TlsStream::ReadSome(ReadBuffer& buf) {
  readers_++;
  const ErrorCode ec = co_await Drive(
      [&] {
        if (buf.size == 0) buf.Prepare(0);  // given back while waiting
        size_t got = 0;
        const int ret = SSL_read_ex(ssl_, buf.data.get() + buf.end, buf.size - buf.end, &got);
        buf.end += got;
        return ret;
      },
      [&] {
        if (buf.unread() == 0) buf.Release();  // an idle connection keeps no read buffer
      });
  readers_--;
  co_return ec;
}

asio::awaitable<ErrorCode> TlsStream::WriteAll(const void* data, size_t size, size_t* n) {
  // SSL_write_ex without partial writes: a retry after WANT_WRITE passes the
  // same buffer, and it returns once all of it is written.
  *n = 0;
  if (size == 0) co_return ErrorCode();
  size_t written = 0;
  ErrorCode ec = co_await Drive([&] { return SSL_write_ex(ssl_, data, size, &written); });
  if (!ec) *n = written;
  co_return ec;
}

asio::awaitable<ErrorCode> TlsStream::Shutdown() {
  // close_notify: SSL_shutdown returns 0 once it is sent (1 if the peer's
  // came first).
  ErrorCode ec = co_await Drive([this] {
    const int r = SSL_shutdown(ssl_);
    return r >= 0 ? 1 : r;
  });
  if (ec) co_return ec;
  socket_.shutdown(tcp::socket::shutdown_send, ec);
  // Wait for the peer's end, so that closing the socket does not reset a
  // connection whose last bytes the peer is still reading.
  unsigned char scratch[512];
  for (;;) {
    if (!socket_.is_open()) co_return asio::error::operation_aborted;
    if (readers_ > 0) {
      auto [wec] = co_await socket_.async_wait(tcp::socket::wait_read, kUseTuple);
      if (wec) co_return wec;
      if (readers_ == 0) co_return ErrorCode();  // the reader saw the end
      unsigned char peek;
      const size_t got = socket_.receive(asio::buffer(&peek, 1), tcp::socket::message_peek, ec);
      if (got == 0 && !WouldBlock(ec)) co_return ErrorCode();  // EOF or error: the peer is gone
      // Data the reader will consume: let its completion run first.
      co_await asio::post(socket_.get_executor(), asio::use_awaitable);
      continue;
    }
    size_t got = 0;
    ec = co_await Drive([&] { return SSL_read_ex(ssl_, scratch, sizeof scratch, &got); });
    if (ec) co_return ec == asio::error::eof ? ErrorCode() : ec;
  }
}

void TlsStream::Close() {
  ErrorCode ignored;
  socket_.shutdown(tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
}

}  // namespace liaison::net
