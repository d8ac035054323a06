// Fuzz target: the frame decoder and frame parser fed raw bytes, in the
// chunk sizes the first byte chooses, then message validation of any
// Publish, as the broker's session does (on the message's bytes, and it
// traps unless reflection alone reaches the same verdict, or when bytes it
// takes to be the serializer's are not). A frame ParseFrame accepts must
// hold no unknown field at any depth (protobuf's own walk checks it, not
// the field plans ParseFrame's scan of the bytes uses): it traps if one got
// through. Where ParseVouchedPublish takes a publish without parsing its
// body, as the broker's session does, it traps unless that reading agrees
// with ParseFrame's and validation's in every way the broker relies on.
#include <google/protobuf/stubs/logging.h>

#include <chrono>
#include <cstddef>
#include <cstdint>

#include "proto/detail/pb.h"
#include "proto/frame_codec.h"
#include "proto/names.h"
#include "proto/validate.h"
#include "tests/proto/any_unknown.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);  // invalid UTF-8 is expected here
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t chunk = 1 + data[0] % 64;
  liaison::proto::FrameDecoder decoder(64 * 1024);
  liaison::v1::Frame frame;
  for (size_t at = 1; at < size;) {
    const size_t n = std::min(chunk, size - at);
    const size_t used = decoder.Feed(data + at, n);
    at += used;
    for (;;) {
      auto next = decoder.Next();
      if (!next.ok() || !next->has_value()) break;
      const auto now = std::chrono::system_clock::now();
      liaison::proto::MessageLimits limits;
      limits.max_string_bytes = 16;  // small, so that the fuzzer reaches the limits
      limits.max_repeated = 3;
      // The broker's session first tries to read a publish without its body.
      liaison::v1::Frame shallow;
      liaison::proto::VouchedBody vouched;
      const bool took = liaison::proto::ParseVouchedPublish(**next, limits, &shallow, &vouched);
      if (!liaison::proto::ParseFrame(**next, &frame).ok()) {
        if (took) __builtin_trap();  // it took bytes that do not parse
        continue;
      }
      if (liaison::test::AnyUnknown(frame)) __builtin_trap();
      if (took) {
        // Then the frame is ParseFrame's but for the body, the body's facts
        // are the parsed body's, the verdict is the same, and so are the
        // bytes the broker would store.
        liaison::v1::Frame stripped = frame;
        stripped.mutable_publish()->mutable_message()->clear_body();
        if (liaison::test::AnyUnknown(shallow) || shallow.SerializeAsString() != stripped.SerializeAsString())
          __builtin_trap();
        const liaison::v1::Message& whole = frame.publish().message();
        if (vouched.type != liaison::proto::MessageTypeName(whole) ||
            vouched.consent_status != whole.case_referral().consent_status() ||
            vouched.legal_basis != whole.case_referral().legal_basis()) {
          __builtin_trap();
        }
        liaison::v1::Message parsed = whole;
        const auto wire = liaison::proto::PublishedMessage(**next);
        bool as_serialized = false;
        const liaison::Status on_parsed =
            liaison::proto::ValidateForPublish(&parsed, limits, now, wire, &as_serialized);
        const liaison::Status on_vouched =
            liaison::proto::ValidateVouchedPublish(shallow.mutable_publish()->mutable_message(), limits, now);
        if (on_parsed.ToString() != on_vouched.ToString()) __builtin_trap();
        if (on_parsed.ok()) {
          auto stored = liaison::proto::WithEnvelope(wire, shallow.publish().message().envelope());
          if (!as_serialized || !stored.ok() || *stored != parsed.SerializeAsString()) __builtin_trap();
        }
      }
      if (frame.has_publish() && frame.publish().has_message()) {
        // As the broker does, with the message's bytes; and the verdict is
        // the one reflection alone reaches (it traps if they differ).
        liaison::v1::Message copy = frame.publish().message();
        const auto wire = liaison::proto::PublishedMessage(**next);
        bool as_serialized = false;
        const liaison::Status on_bytes = liaison::proto::ValidateForPublish(frame.mutable_publish()->mutable_message(),
                                                                            limits, now, wire, &as_serialized);
        const liaison::Status by_reflection = liaison::proto::ValidateForPublish(&copy, limits, now);
        if (on_bytes.ToString() != by_reflection.ToString()) __builtin_trap();
        // Bytes said to be the serializer's must be: the broker stores and
        // delivers them, and knows the publish by them.
        if (as_serialized) {
          const auto& message = frame.publish().message();
          auto rebuilt = liaison::proto::WithEnvelope(wire, message.envelope());
          if (!rebuilt.ok() || *rebuilt != message.SerializeAsString()) __builtin_trap();
        }
      }
    }
    if (used < n) break;  // sticky error
  }
  return 0;
}
