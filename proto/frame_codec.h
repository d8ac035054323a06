// Wire framing on plain buffers (no sockets): a frame is a 4-byte unsigned
// big-endian length N, then N bytes of a serialized liaison.v1.Frame.
// FrameDecoder checks the length before it buffers the body, so a peer can
// never make it hold more than max_frame_bytes. Not thread-safe; one per
// connection.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace liaison::v1 {
class Envelope;
class Frame;
class Message;
}  // namespace liaison::v1

namespace liaison::proto {

inline constexpr size_t kFrameHeaderBytes = 4;
inline constexpr uint32_t kDefaultMaxFrameBytes = 4 * 1024 * 1024;
// Deepest nesting of protobuf messages the parser accepts; our schema needs
// five levels, the rest is margin.
inline constexpr int kMaxNestingDepth = 32;

// Validates a frame header: 0 and lengths above max are protocol errors.
Result<uint32_t> DecodeFrameLength(const uint8_t header[kFrameHeaderBytes], uint32_t max_frame_bytes);

// Serializes frame with its length prefix. Fails only if the frame exceeds
// max_frame_bytes.
Result<std::string> EncodeFrame(const v1::Frame& frame, uint32_t max_frame_bytes = kDefaultMaxFrameBytes);

// A Deliver frame carrying a message that is already serialized, with its
// length prefix: the same bytes a parser reads as EncodeFrame(Frame{deliver:
// {delivery_id, attempt, message}}) would give, without parsing, copying or
// re-serializing the message. Fails only if the frame exceeds
// max_frame_bytes.
Result<std::string> EncodeDeliverFrame(uint64_t delivery_id, uint32_t attempt, std::string_view message,
                                       uint32_t max_frame_bytes = kDefaultMaxFrameBytes);
// The same frame appended to *out (nothing appended when it fails).
Status AppendDeliverFrame(std::string* out, uint64_t delivery_id, uint32_t attempt, std::string_view message,
                          uint32_t max_frame_bytes = kDefaultMaxFrameBytes);

// A Publish frame, with its length prefix: the bytes EncodeFrame(Frame{publish:
// {request_id, message, want_reports}}) gives, with the message serialized
// straight into the frame instead of copied into one first. Fails only if
// the frame exceeds max_frame_bytes.
Result<std::string> EncodePublishFrame(uint64_t request_id, bool want_reports, const v1::Message& message,
                                       uint32_t max_frame_bytes = kDefaultMaxFrameBytes);

// A PublishAck frame, with its length prefix, from the ack as the store
// keeps it (serialized with only its message id, outcomes and acceptance
// time set) and a serialized Checkpoint: the bytes EncodeFrame gives for
// that ack with request_id and the checkpoint set, without parsing or
// serializing the ack again. Fails only if the frame exceeds
// max_frame_bytes.
Result<std::string> EncodePublishAckFrame(uint64_t request_id, std::string_view stored_ack, std::string_view checkpoint,
                                          uint32_t max_frame_bytes = kDefaultMaxFrameBytes);
// A serialized liaison.v1.Message with another envelope: message is the
// serialization of a Message (SerializeAsString) whose envelope is set; the
// result is what serializing it would give with envelope in its place,
// without serializing the body again (the envelope is field 1, written
// first). InvalidArgument when message does not begin with an envelope.
Result<std::string> WithEnvelope(std::string_view message, const v1::Envelope& envelope);

// What WithEnvelope keeps of a serialized message: the bytes after its
// envelope field. InvalidArgument as WithEnvelope.
Result<std::string_view> AfterEnvelope(std::string_view message);
// Appends the envelope as a serialized Message's first field (its tag, its
// length, its bytes) to *out, with room reserved for reserve_after more.
void AppendEnvelopeField(std::string* out, const v1::Envelope& envelope, size_t reserve_after = 0);
// Parses a frame body (without the header) with the nesting limit; unknown
// fields are dropped so they never travel further.
Status ParseFrame(std::string_view body, v1::Frame* frame);

// Incremental decoder for a byte stream.
class FrameDecoder {
 public:
  explicit FrameDecoder(uint32_t max_frame_bytes = kDefaultMaxFrameBytes) : max_(max_frame_bytes) {}

  // Appends bytes from the stream; complete frames wait for Next(). Returns
  // how many were consumed: fewer than size only after an error, which is
  // then sticky.
  size_t Feed(const uint8_t* data, size_t size);
  // The next complete frame body, nothing if more bytes are needed, or the
  // sticky protocol error (bad length).
  Result<std::optional<std::string>> Next();
  // Bytes of an incomplete frame held right now (never above max + 4).
  size_t buffered() const { return header_len_ + body_.size(); }

 private:
  uint32_t max_;
  uint8_t header_[kFrameHeaderBytes] = {};
  size_t header_len_ = 0;
  uint32_t body_len_ = 0;
  std::string body_;
  std::deque<std::string> ready_;
  Status error_;
};

}  // namespace liaison::proto
