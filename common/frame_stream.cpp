#include "common/detail/frame_stream.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>

#include "proto/detail/pb.h"
#include "proto/frame_codec.h"

namespace liaison::net {
namespace {
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);
// Two TLS records of plaintext: SSL_read_ex returns at most one record's,
// and a frame begun in one is completed from the next.
constexpr size_t kReadBufferBytes = 32 * 1024;
constexpr size_t kMaxWriteBytes = 256 * 1024;
// Write buffers up to this size are kept while the connection is quiet,
constexpr size_t kKeptBufferBytes = 64 * 1024;
// and up to this size while it is busy.
constexpr size_t kKeptBusyBytes = 1024 * 1024;

// Empties s, and frees its buffer when that holds more than bytes.
// (Assigning an empty string would not free it: libstdc++ copies a short
// string into the buffer the target already has.)
void KeepAtMost(std::string* s, size_t bytes) {
  if (s->capacity() > bytes) {
    std::string().swap(*s);
  } else {
    s->clear();
  }
}
}  // namespace

FrameStream::FrameStream(TlsStream stream, uint32_t max_frame_bytes, size_t max_queued_bytes)
    : stream_(std::move(stream)),
      strand_(stream_.get_executor()),
      wake_(strand_),
      max_frame_bytes_(max_frame_bytes),
      max_queued_bytes_(max_queued_bytes),
      last_read_(Clock::now()),
      in_(kReadBufferBytes) {
  wake_.expires_at(Clock::time_point::max());
}

asio::awaitable<Status> FrameStream::ReadFrame(v1::Frame* frame) {
  if (Status s = co_await NextFrame(); !s.ok()) co_return s;
  Status s = proto::ParseFrame(last_frame_, frame);
  if (!s.ok()) co_return Status::InvalidArgument(s.message());
  co_return Status::Ok();
}

asio::awaitable<Status> FrameStream::NextFrame() {
  last_frame_ = {};
  in_.CutBack();  // after a large frame
  while (in_.unread() < proto::kFrameHeaderBytes) {
    in_.Prepare(proto::kFrameHeaderBytes);
    const ErrorCode ec = co_await stream_.ReadSome(in_);
    if (ec && in_.unread() > 0) co_return Status::Unavailable("connection lost mid-frame: " + ec.message());
    if (ec == asio::error::eof) co_return Status::Unavailable("connection closed by peer");
    if (ec == asio::ssl::error::stream_truncated) {
      co_return Status::Unavailable("connection closed by peer (without TLS close_notify)");
    }
    if (ec) co_return Status::Unavailable(ec.message());
  }
  auto len = proto::DecodeFrameLength(reinterpret_cast<const uint8_t*>(in_.unread_data()), max_frame_bytes_);
  if (!len.ok()) co_return len.status();
  const size_t total = proto::kFrameHeaderBytes + *len;
  while (in_.unread() < total) {
    in_.Prepare(total);
    const ErrorCode ec = co_await stream_.ReadSome(in_);
    if (ec) co_return Status::Unavailable("connection lost mid-frame: " + ec.message());
  }
  last_read_ = Clock::now();
  bytes_read_ += total;
  last_frame_ = std::string_view(in_.unread_data() + proto::kFrameHeaderBytes, *len);
  in_.begin += total;
  co_return Status::Ok();
}

Status FrameStream::Send(const v1::Frame& frame) {
  auto encoded = proto::EncodeFrame(frame, max_frame_bytes_);
  if (!encoded.ok()) return encoded.status();
  return SendEncoded(std::move(encoded).value());
}

Status FrameStream::SendEncoded(std::string encoded) {
  return SendAppended([&](std::string* queue) {
    if (queue->empty()) {
      queue->swap(encoded);
    } else {
      queue->append(encoded);
    }
    return Status::Ok();
  });
}

void FrameStream::CloseGracefully() {
  if (closing_) return;
  closing_ = true;
  wake_.cancel();
}

void FrameStream::Abort() {
  if (closed_) return;
  closed_ = true;
  closing_ = true;
  stream_.Close();
  wake_.cancel();
}

bool FrameStream::write_in_progress(Clock::time_point* since) const {
  if (writing_ && since) *since = write_started_;
  return writing_;
}

asio::awaitable<void> FrameStream::WriteLoop() {
  while (!closed_) {
    if (queue_.empty()) {
      if (closing_) break;
      // A connection that goes quiet keeps no large buffers.
      KeepAtMost(&out_, kKeptBufferBytes);
      KeepAtMost(&queue_, kKeptBufferBytes);
      out_at_ = 0;
      wake_.expires_at(Clock::time_point::max());
      co_await wake_.async_wait(kUseTuple);
      continue;
    }
    // What is queued goes out as it is (the queue becomes the batch, and
    // the last batch's buffer the queue), in writes of at most
    // kMaxWriteBytes: a peer that reads slowly but steadily is not taken
    // for one that stopped (the owner's watchdog times each write).
    // A batch's buffer larger than kKeptBusyBytes is not kept to become the
    // next queue: a burst's memory is given back after it even while frames
    // keep coming. (Giving back every buffer over kKeptBufferBytes here cost
    // 1-4 % of the throughput: the queue regrew from nothing each time.)
    KeepAtMost(&out_, kKeptBusyBytes);
    out_.swap(queue_);
    out_at_ = 0;
    while (out_at_ < out_.size()) {
      writing_ = true;
      write_started_ = Clock::now();
      size_t n = 0;
      const ErrorCode ec =
          co_await stream_.WriteAll(out_.data() + out_at_, std::min(kMaxWriteBytes, out_.size() - out_at_), &n);
      writing_ = false;
      bytes_written_ += n;
      if (ec || n == 0) {
        Abort();
        co_return;
      }
      out_at_ += n;
    }
  }
  if (!closed_) {
    // close_notify, bounded by whoever owns the stream (its watchdog aborts a
    // peer that never answers).
    writing_ = true;
    write_started_ = Clock::now();
    co_await stream_.Shutdown();
    writing_ = false;
    Abort();
  }
}

}  // namespace liaison::net
