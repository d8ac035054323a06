#include "proto/frame_codec.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include <algorithm>

#include "proto/detail/field_plan.h"
#include "proto/detail/pb.h"
#include "proto/detail/varint.h"

namespace liaison::proto {

Result<uint32_t> DecodeFrameLength(const uint8_t header[kFrameHeaderBytes], uint32_t max_frame_bytes) {
  const uint32_t n = (uint32_t{header[0]} << 24) | (uint32_t{header[1]} << 16) |
                     (uint32_t{header[2]} << 8) | uint32_t{header[3]};
  if (n == 0) return Status::ProtocolError("frame length 0");
  if (n > max_frame_bytes) {
    return Status::ProtocolError("frame length " + std::to_string(n) + " exceeds the maximum of " +
                                 std::to_string(max_frame_bytes) + " bytes");
  }
  return n;
}

namespace {

uint32_t Tag(int field, google::protobuf::internal::WireFormatLite::WireType type) {
  return google::protobuf::internal::WireFormatLite::MakeTag(field, type);
}

// A varint field as the serializer writes it: left out when 0.
size_t VarintFieldSize(uint32_t tag, uint64_t v) { return v == 0 ? 0 : VarintSize(tag) + VarintSize(v); }
void PutVarintField(std::string* out, uint32_t tag, uint64_t v) {
  if (v == 0) return;
  PutVarint(out, tag);
  PutVarint(out, v);
}

// Appends the length prefix of a frame of n bytes, with room for them.
void StartFrame(std::string* out, size_t n) {
  out->reserve(out->size() + kFrameHeaderBytes + n);
  out->push_back(static_cast<char>((n >> 24) & 0xFF));
  out->push_back(static_cast<char>((n >> 16) & 0xFF));
  out->push_back(static_cast<char>((n >> 8) & 0xFF));
  out->push_back(static_cast<char>(n & 0xFF));
}

Status TooLarge(size_t n, uint32_t max_frame_bytes) {
  return Status::InvalidArgument("frame of " + std::to_string(n) + " bytes exceeds the maximum of " +
                                 std::to_string(max_frame_bytes) + " bytes");
}

}  // namespace

Result<std::string> EncodeFrame(const v1::Frame& frame, uint32_t max_frame_bytes) {
  const size_t n = frame.ByteSizeLong();
  if (n == 0 || n > max_frame_bytes) return TooLarge(n, max_frame_bytes);
  std::string out;
  StartFrame(&out, n);
  out.resize(kFrameHeaderBytes + n);
  if (!frame.SerializeToArray(out.data() + kFrameHeaderBytes, static_cast<int>(n))) {
    return Status::Internal("frame serialization failed");
  }
  return out;
}

Status AppendDeliverFrame(std::string* out, uint64_t delivery_id, uint32_t attempt, std::string_view message,
                          uint32_t max_frame_bytes) {
  using WFL = google::protobuf::internal::WireFormatLite;
  const uint32_t id_tag = Tag(v1::Deliver::kDeliveryIdFieldNumber, WFL::WIRETYPE_VARINT);
  const uint32_t attempt_tag = Tag(v1::Deliver::kAttemptFieldNumber, WFL::WIRETYPE_VARINT);
  const uint32_t message_tag = Tag(v1::Deliver::kMessageFieldNumber, WFL::WIRETYPE_LENGTH_DELIMITED);
  const uint32_t deliver_tag = Tag(v1::Frame::kDeliverFieldNumber, WFL::WIRETYPE_LENGTH_DELIMITED);
  // Fields in number order, defaults omitted, as SerializeToArray writes them.
  const size_t inner = VarintFieldSize(id_tag, delivery_id) + VarintFieldSize(attempt_tag, attempt) +
                       VarintSize(message_tag) + VarintSize(message.size()) + message.size();
  const size_t n = VarintSize(deliver_tag) + VarintSize(inner) + inner;
  if (n > max_frame_bytes) return TooLarge(n, max_frame_bytes);
  StartFrame(out, n);
  PutVarint(out, deliver_tag);
  PutVarint(out, inner);
  PutVarintField(out, id_tag, delivery_id);
  PutVarintField(out, attempt_tag, attempt);
  PutVarint(out, message_tag);
  PutVarint(out, message.size());
  out->append(message);
  return Status::Ok();
}

Result<std::string> EncodeDeliverFrame(uint64_t delivery_id, uint32_t attempt, std::string_view message,
                                       uint32_t max_frame_bytes) {
  std::string out;
  if (Status s = AppendDeliverFrame(&out, delivery_id, attempt, message, max_frame_bytes); !s.ok()) return s;
  return out;
}

Result<std::string> EncodePublishFrame(uint64_t request_id, bool want_reports, const v1::Message& message,
                                       uint32_t max_frame_bytes) {
  using WFL = google::protobuf::internal::WireFormatLite;
  const uint32_t id_tag = Tag(v1::Publish::kRequestIdFieldNumber, WFL::WIRETYPE_VARINT);
  const uint32_t message_tag = Tag(v1::Publish::kMessageFieldNumber, WFL::WIRETYPE_LENGTH_DELIMITED);
  const uint32_t reports_tag = Tag(v1::Publish::kWantReportsFieldNumber, WFL::WIRETYPE_VARINT);
  const uint32_t publish_tag = Tag(v1::Frame::kPublishFieldNumber, WFL::WIRETYPE_LENGTH_DELIMITED);
  const size_t body = message.ByteSizeLong();  // caches the sizes the serializer below uses
  const size_t inner = VarintFieldSize(id_tag, request_id) + VarintSize(message_tag) + VarintSize(body) + body +
                       VarintFieldSize(reports_tag, want_reports ? 1 : 0);
  const size_t n = VarintSize(publish_tag) + VarintSize(inner) + inner;
  if (n > max_frame_bytes) return TooLarge(n, max_frame_bytes);
  std::string out;
  StartFrame(&out, n);
  PutVarint(&out, publish_tag);
  PutVarint(&out, inner);
  PutVarintField(&out, id_tag, request_id);
  PutVarint(&out, message_tag);
  PutVarint(&out, body);
  const size_t at = out.size();
  out.resize(at + body);
  message.SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(out.data() + at));
  PutVarintField(&out, reports_tag, want_reports ? 1 : 0);
  return out;
}

Result<std::string> EncodePublishAckFrame(uint64_t request_id, std::string_view stored_ack, std::string_view checkpoint,
                                          uint32_t max_frame_bytes) {
  using WFL = google::protobuf::internal::WireFormatLite;
  static_assert(v1::PublishAck::kRequestIdFieldNumber == 1 && v1::PublishAck::kCheckpointFieldNumber == 5 &&
                    v1::PublishAck::kDuplicateFieldNumber == 6,
                "the request id comes before the stored fields, the checkpoint after them");
  const uint32_t id_tag = Tag(v1::PublishAck::kRequestIdFieldNumber, WFL::WIRETYPE_VARINT);
  const uint32_t checkpoint_tag = Tag(v1::PublishAck::kCheckpointFieldNumber, WFL::WIRETYPE_LENGTH_DELIMITED);
  const uint32_t ack_tag = Tag(v1::Frame::kPublishAckFieldNumber, WFL::WIRETYPE_LENGTH_DELIMITED);
  const size_t inner = VarintFieldSize(id_tag, request_id) + stored_ack.size() + VarintSize(checkpoint_tag) +
                       VarintSize(checkpoint.size()) + checkpoint.size();
  const size_t n = VarintSize(ack_tag) + VarintSize(inner) + inner;
  if (n > max_frame_bytes) return TooLarge(n, max_frame_bytes);
  std::string out;
  StartFrame(&out, n);
  PutVarint(&out, ack_tag);
  PutVarint(&out, inner);
  PutVarintField(&out, id_tag, request_id);
  out.append(stored_ack);
  PutVarint(&out, checkpoint_tag);
  PutVarint(&out, checkpoint.size());
  out.append(checkpoint);
  return out;
}

Result<std::string_view> AfterEnvelope(std::string_view message) {
  using WFL = google::protobuf::internal::WireFormatLite;
  static_assert(v1::Message::kEnvelopeFieldNumber == 1, "the envelope is the first field written");
  const uint32_t tag = Tag(v1::Message::kEnvelopeFieldNumber, WFL::WIRETYPE_LENGTH_DELIMITED);
  // The old envelope field: its tag, its length, its bytes.
  if (message.empty() || static_cast<uint8_t>(message[0]) != tag) {
    return Status::InvalidArgument("the serialized message does not begin with its envelope");
  }
  const auto* p = reinterpret_cast<const uint8_t*>(message.data()) + 1;
  const auto* end = reinterpret_cast<const uint8_t*>(message.data()) + message.size();
  uint64_t old_len = 0;
  if (!ReadVarint(p, end, &old_len)) {
    return Status::InvalidArgument("the serialized message's envelope has a bad length");
  }
  if (old_len > static_cast<uint64_t>(end - p)) {
    return Status::InvalidArgument("the serialized message's envelope runs past its end");
  }
  return std::string_view(reinterpret_cast<const char*>(p + old_len), static_cast<size_t>(end - p - old_len));
}

void AppendEnvelopeField(std::string* out, const v1::Envelope& envelope, size_t reserve_after) {
  using WFL = google::protobuf::internal::WireFormatLite;
  const uint32_t tag = Tag(v1::Message::kEnvelopeFieldNumber, WFL::WIRETYPE_LENGTH_DELIMITED);
  const size_t n = envelope.ByteSizeLong();
  out->reserve(out->size() + VarintSize(tag) + VarintSize(n) + n + reserve_after);
  PutVarint(out, tag);
  PutVarint(out, n);
  const size_t env_at = out->size();
  out->resize(env_at + n);
  envelope.SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(out->data() + env_at));
}

Result<std::string> WithEnvelope(std::string_view message, const v1::Envelope& envelope) {
  const auto rest = AfterEnvelope(message);
  if (!rest.ok()) return rest.status();
  std::string out;
  AppendEnvelopeField(&out, envelope, rest->size());
  out.append(*rest);
  return out;
}

Status ParseFrame(std::string_view body, v1::Frame* frame) {
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(body.data()),
                                            static_cast<int>(body.size()));
  in.SetRecursionLimit(kMaxNestingDepth);
  frame->Clear();
  if (!frame->MergePartialFromCodedStream(&in) || !in.ConsumedEntireMessage()) {
    return Status::ProtocolError("frame does not parse as liaison.v1.Frame");
  }
  // Unknown fields are rare: a walk over the bytes finds out whether there
  // are any, and only then does the walk over the parsed objects drop them.
  if (MayHoldUnknownFields(body, v1::Frame::descriptor())) DiscardUnknownFields(frame);
  return Status::Ok();
}

size_t FrameDecoder::Feed(const uint8_t* data, size_t size) {
  size_t used = 0;
  while (used < size && error_.ok()) {
    if (header_len_ < kFrameHeaderBytes) {
      const size_t take = std::min(kFrameHeaderBytes - header_len_, size - used);
      std::copy_n(data + used, take, header_ + header_len_);
      header_len_ += take;
      used += take;
      if (header_len_ == kFrameHeaderBytes) {
        auto len = DecodeFrameLength(header_, max_);
        if (!len.ok()) {
          error_ = len.status();
          break;
        }
        body_len_ = *len;
        body_.clear();
        body_.reserve(std::min<size_t>(body_len_, 64 * 1024));
      }
      continue;
    }
    const size_t take = std::min<size_t>(body_len_ - body_.size(), size - used);
    body_.append(reinterpret_cast<const char*>(data + used), take);
    used += take;
    if (body_.size() == body_len_) {
      ready_.push_back(std::move(body_));
      body_ = std::string();
      header_len_ = 0;
      body_len_ = 0;
    }
  }
  return used;
}

Result<std::optional<std::string>> FrameDecoder::Next() {
  if (!ready_.empty()) {
    std::optional<std::string> out = std::move(ready_.front());
    ready_.pop_front();
    return out;
  }
  if (!error_.ok()) return error_;
  return std::optional<std::string>();
}

}  // namespace liaison::proto
