#include "common/detail/frame_stream.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cstring>

#include "proto/detail/pb.h"
#include "proto/frame_codec.h"

namespace liaison::net {
namespace {
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);
constexpr size_t kMaxBatchBytes = 256 * 1024;
// Two TLS records of plaintext: SSL_read_ex returns at most one record's,
// and a frame begun in one is completed from the next.
constexpr size_t kReadBufferBytes = 32 * 1024;
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
  last_frame_ = {};
  if (in_.size > kReadBufferBytes) {
    // Given back after a large frame (a bigger one, partly read, keeps it).
    if (in_.unread() == 0) {
      in_.Release();
    } else if (in_.unread() <= kReadBufferBytes) {
      ReadBuffer smaller(kReadBufferBytes);
      smaller.Prepare(0);
      std::memcpy(smaller.data.get(), in_.unread_data(), in_.unread());
      smaller.end = in_.unread();
      in_ = std::move(smaller);
    }
  }
  while (in_.unread() < proto::kFrameHeaderBytes) {
    in_.Prepare(proto::kFrameHeaderBytes);
    const ErrorCode ec = co_await stream_.ReadSome(in_);
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
  Status s = proto::ParseFrame(last_frame_, frame);
  if (!s.ok()) co_return Status::InvalidArgument(s.message());
  co_return Status::Ok();
}

Status FrameStream::Send(const v1::Frame& frame) {
  auto encoded = proto::EncodeFrame(frame, max_frame_bytes_);
  if (!encoded.ok()) return encoded.status();
  return SendEncoded(std::move(encoded).value());
}

Status FrameStream::SendEncoded(std::string encoded) {
  if (closed_) return Status::Unavailable("connection closed");
  if (queued_bytes_ + encoded.size() > max_queued_bytes_) return Status::Unavailable("outgoing queue full");
  queued_bytes_ += encoded.size();
  queue_.push_back(std::move(encoded));
  wake_.cancel();
  return Status::Ok();
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
      wake_.expires_at(Clock::time_point::max());
      co_await wake_.async_wait(kUseTuple);
      continue;
    }
    out_.clear();
    while (!queue_.empty() && (out_.empty() || out_.size() + queue_.front().size() <= kMaxBatchBytes)) {
      std::string& next = queue_.front();
      queued_bytes_ -= next.size();
      if (out_.empty()) {
        out_.swap(next);
      } else {
        out_.append(next);
      }
      queue_.pop_front();
    }
    writing_ = true;
    write_started_ = Clock::now();
    size_t n = 0;
    ErrorCode ec = co_await stream_.WriteAll(out_.data(), out_.size(), &n);
    writing_ = false;
    bytes_written_ += n;
    if (ec) {
      Abort();
      co_return;
    }
    if (out_.capacity() > kMaxBatchBytes) out_ = std::string();
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
