// A framed, mutually authenticated TLS connection (internal: Asio). Used by
// the broker's sessions and by the client library, so both speak the wire
// format of docs/protocol.md through the same code.
//
// Threading: every member must be called on the stream's strand (the
// executor its socket was created with); one ReadFrame and one WriteLoop may
// be outstanding at the same time, which TlsStream allows.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/detail/tls_stream.h"
#include "common/status.h"

namespace liaison::v1 {
class Frame;
}

namespace liaison::net {

using Clock = std::chrono::steady_clock;

class FrameStream {
 public:
  FrameStream(TlsStream stream, uint32_t max_frame_bytes, size_t max_queued_bytes);
  FrameStream(const FrameStream&) = delete;
  FrameStream& operator=(const FrameStream&) = delete;

  TlsStream& tls() { return stream_; }
  const Strand& strand() { return strand_; }

  // Reads the next frame. Errors: Unavailable (the peer closed or the
  // connection failed), ProtocolError (bad length: the stream is no longer
  // in sync), InvalidArgument (the body does not parse: the frame was read
  // whole, so the stream is still in sync).
  asio::awaitable<Status> ReadFrame(v1::Frame* frame);
  // Reads the next frame without parsing it: its bytes are last_frame().
  // Errors as ReadFrame's but InvalidArgument.
  asio::awaitable<Status> NextFrame();
  // The bytes of the last frame ReadFrame or NextFrame read (without the
  // length prefix), until the next read.
  std::string_view last_frame() const { return last_frame_; }

  // Queues a frame for the writer. Errors: InvalidArgument when the frame
  // exceeds the maximum frame size; Unavailable when the connection is
  // closed or the queue would exceed max_queued_bytes (the peer is not
  // reading: the caller then aborts the connection).
  Status Send(const v1::Frame& frame);
  Status SendEncoded(std::string encoded);
  // Queues the frame that append(std::string* queue) -> Status writes at the
  // end of the queue, so that it is not copied again on its way out. When
  // append fails, or the frame would overfill the queue, nothing is queued.
  template <class Append>
  Status SendAppended(Append&& append);

  // The writer: drains the queue, coalescing frames into few TLS records,
  // until Abort, a write error, or CloseGracefully's queue is drained (then
  // it sends close_notify and closes the socket).
  asio::awaitable<void> WriteLoop();

  // Flush what is queued, then shut TLS down and close. Idempotent.
  void CloseGracefully();
  // Close the socket now; pending reads and writes complete with errors.
  void Abort();

  bool closing() const { return closing_; }
  bool closed() const { return closed_; }
  // Bytes queued and not yet handed to the socket: the queue, and what is
  // left of the batch being written. max_queued_bytes bounds it.
  size_t queued_bytes() const { return queue_.size() + out_.size() - out_at_; }
  // When the current write started, if one is in progress.
  bool write_in_progress(Clock::time_point* since) const;
  Clock::time_point last_read() const { return last_read_; }
  uint64_t bytes_read() const { return bytes_read_; }
  // Memory held for bytes read ahead (none while the connection idles).
  size_t read_buffer_bytes() const { return in_.size; }
  // Memory held by the queue's buffer, and by the batch being written.
  size_t queue_buffer_bytes() const { return queue_.capacity(); }
  size_t batch_buffer_bytes() const { return out_.capacity(); }
  uint64_t bytes_written() const { return bytes_written_; }

 private:
  TlsStream stream_;
  Strand strand_;
  asio::steady_timer wake_;
  uint32_t max_frame_bytes_;
  size_t max_queued_bytes_;
  std::string queue_;  // encoded frames, one after the other
  std::string out_;    // those being written (the queue as it was)
  size_t out_at_ = 0;  // how much of out_ the socket has taken
  bool writing_ = false;
  Clock::time_point write_started_{};
  Clock::time_point last_read_;
  bool closing_ = false;
  bool closed_ = false;
  uint64_t bytes_read_ = 0;
  uint64_t bytes_written_ = 0;
  // What has been read and not yet returned as frames: ReadFrame takes many
  // small frames from one TLS read. It grows to hold a frame larger than its
  // normal size, and is cut back at the next ReadFrame.
  ReadBuffer in_;
  std::string_view last_frame_;  // in in_
};

template <class Append>
Status FrameStream::SendAppended(Append&& append) {
  if (closed_) return Status::Unavailable("connection closed");
  const size_t before = queue_.size();
  Status s = append(&queue_);
  if (s.ok() && queued_bytes() > max_queued_bytes_) s = Status::Unavailable("outgoing queue full");
  if (!s.ok()) {
    queue_.resize(before);
    return s;
  }
  wake_.cancel();
  return Status::Ok();
}

}  // namespace liaison::net
