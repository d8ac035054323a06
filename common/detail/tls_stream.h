// A TLS connection over a non-blocking TCP socket, driven by C++20
// coroutines (internal: Asio). It replaces asio::ssl::stream for the one
// thing Liaison needs, and keeps an idle connection small:
//
//  - OpenSSL reads and writes the socket itself, through a BIO that calls
//    the socket's non-blocking read_some/write_some. asio::ssl::stream puts
//    a BIO pair and two 17 KiB buffers between them, which every idle
//    session kept (about 68 KiB of the 90 KiB a session cost).
//  - SSL_MODE_RELEASE_BUFFERS (set on the context) lets OpenSSL free its
//    record buffers whenever they are empty, so an idle session keeps only
//    the SSL object itself.
//
// When OpenSSL wants the socket readable or writable, the coroutine waits
// for it with async_wait and tries again. One read and one write may be
// outstanding at the same time (the broker's reader and writer), provided
// every member is called on the socket's strand: OpenSSL is never entered
// from two threads, only interleaved between non-blocking calls.
//
// Once the socket is closed (Close, or the owner's Abort), no OpenSSL call
// touches it again: the BIO checks that the socket is open, so a reused
// descriptor number can never be read or written through this stream.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/system/error_code.hpp>

#include <cstddef>
#include <memory>
#include <string>

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;

namespace liaison::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Strand = asio::strand<asio::io_context::executor_type>;
using Socket = asio::basic_stream_socket<tcp, Strand>;
using ErrorCode = boost::system::error_code;

// Application data read ahead of its use: bytes [begin, end) of data are
// unread. TlsStream::ReadSome gives the memory back while the connection
// idles, and allocates `normal` bytes again when data comes.
struct ReadBuffer {
  explicit ReadBuffer(size_t normal_size) : normal(normal_size) {}

  size_t unread() const { return end - begin; }
  const char* unread_data() const { return data.get() + begin; }
  // Moves the unread bytes to the front and makes room for at least n
  // unread bytes (the normal size when that is more).
  void Prepare(size_t n);
  // Back to the normal size after a larger one, unless the unread bytes
  // need more (nothing at all when none are unread).
  void CutBack();
  void Release();

  std::unique_ptr<char[]> data;
  size_t size = 0;
  size_t begin = 0, end = 0;
  size_t normal;
};

class TlsStream {
 public:
  enum class Role { kClient, kServer };

  // Takes the socket (connected now or later) and a new SSL object from ctx.
  // Throws std::runtime_error when OpenSSL cannot allocate one.
  TlsStream(Socket socket, SSL_CTX* ctx);
  TlsStream(TlsStream&& other) noexcept;
  TlsStream& operator=(TlsStream&&) = delete;
  TlsStream(const TlsStream&) = delete;
  ~TlsStream();

  SSL* native_handle() const { return ssl_; }
  Socket& socket() { return socket_; }
  Strand get_executor() { return socket_.get_executor(); }

  // The client names the server it expects: its certificate must carry this
  // DNS name or IP address (OpenSSL's own host check), and a DNS name is
  // also sent as SNI. Call before Handshake.
  bool SetExpectedServerName(const std::string& name);

  // The TLS handshake. Errors carry OpenSSL's reason (asio::error::ssl
  // category); SSL_get_verify_result tells why a certificate was refused.
  asio::awaitable<ErrorCode> Handshake(Role role);

  // Reads the application data that has arrived, at least one byte, into
  // buf after its unread bytes (there must be room: ReadBuffer::Prepare).
  // While it waits for data with nothing unread, buf holds no memory: an
  // idle connection keeps no read buffer. asio::error::eof when the peer
  // closed the TLS session cleanly (close_notify);
  // asio::ssl::error::stream_truncated when the connection ended without one.
  asio::awaitable<ErrorCode> ReadSome(ReadBuffer& buf);

  // Writes all of data. *n is what was handed to the socket.
  asio::awaitable<ErrorCode> WriteAll(const void* data, size_t size, size_t* n);

  // Sends close_notify and the TCP FIN, then waits until the peer has
  // closed its side too (reading and discarding what it still sends, unless
  // a ReadSome is outstanding and will see the end itself). The owner
  // bounds the wait (its watchdog closes the socket).
  asio::awaitable<ErrorCode> Shutdown();

  // Closes the socket now; outstanding operations complete with an error.
  void Close();

 private:
  friend struct TlsStreamBio;
  enum class Want { kNone, kRead, kWrite };

  // Runs one OpenSSL call, waiting for the socket as it asks, until it
  // succeeds (returns > 0) or fails; before_wait() runs before each wait.
  struct NothingBeforeWait {
    void operator()() const {}
  };
  template <class Call, class BeforeWait = NothingBeforeWait>
  asio::awaitable<ErrorCode> Drive(Call call, BeforeWait before_wait = {});
  ErrorCode ErrorFor(int ret);

  Socket socket_;
  SSL* ssl_ = nullptr;
  ErrorCode io_error_;  // the socket error behind an SSL_ERROR_SYSCALL
  int readers_ = 0;     // ReadSome calls outstanding
};

}  // namespace liaison::net
