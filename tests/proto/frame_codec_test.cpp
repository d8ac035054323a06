// Unit tests for proto/frame_codec.h: the length prefix, EncodeFrame and
// ParseFrame, and the incremental FrameDecoder on arbitrary chunkings.
#include "proto/frame_codec.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "proto/detail/field_plan.h"
#include "proto/detail/pb.h"
#include "tests/proto/any_unknown.h"
#include "tests/proto/wire_by_hand.h"

namespace {

using liaison::proto::DecodeFrameLength;
using liaison::proto::EncodeFrame;
using liaison::proto::FrameDecoder;
using liaison::proto::kDefaultMaxFrameBytes;
using liaison::proto::kFrameHeaderBytes;
using liaison::proto::ParseFrame;
using liaison::test::Field;
using liaison::test::FrameHeader;
using liaison::test::Varint;
namespace v1 = liaison::v1;

const uint8_t* Bytes(const std::string& s) {
  return reinterpret_cast<const uint8_t*>(s.data());
}

v1::Frame PingFrame(uint64_t nonce) {
  v1::Frame f;
  f.mutable_ping()->set_nonce(nonce);
  return f;
}

v1::Frame PublishFrame(uint64_t request_id, const std::string& description) {
  v1::Frame f;
  auto* p = f.mutable_publish();
  p->set_request_id(request_id);
  auto* env = p->mutable_message()->mutable_envelope();
  env->set_message_id("0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1d");
  env->add_recipients("school");
  env->set_tlp(v1::TLP_AMBER);
  auto* report = p->mutable_message()->mutable_incident_report();
  report->set_description(description);
  report->add_bias_motivations(v1::BIAS_ANTI_ROMA);
  return f;
}

std::string Encode(const v1::Frame& f) {
  auto r = EncodeFrame(f);
  REQUIRE(r.ok());
  return *r;
}

// Result of driving a decoder: the frame bodies it produced, and the error
// it stopped on (ok when it consumed everything).
struct Drained {
  std::vector<std::string> frames;
  liaison::Status error;
};

// Feeds data in chunks of the sizes `next_chunk` returns, taking every frame
// the decoder offers as soon as it offers it (the decoder holds one complete
// frame at a time and stops consuming until it is taken).
template <typename ChunkFn>
Drained Drive(FrameDecoder& d, const std::string& data, ChunkFn next_chunk) {
  Drained out;
  size_t pos = 0;
  while (pos < data.size()) {
    const size_t chunk = std::min(next_chunk(), data.size() - pos);
    size_t left = chunk;
    const uint8_t* p = Bytes(data) + pos;
    for (int guard = 0;; ++guard) {
      if (guard > 1000000) FAIL("decoder makes no progress");
      const size_t used = d.Feed(p, left);
      if (used > left) FAIL("Feed consumed " << used << " of " << left << " bytes");
      p += used;
      left -= used;
      pos += used;
      auto next = d.Next();
      if (!next.ok()) {
        out.error = next.status();
        return out;
      }
      if (next->has_value()) {
        out.frames.push_back(std::move(**next));
        continue;  // the decoder may now take the rest of the chunk
      }
      if (left == 0) break;
      FAIL("decoder refused " << left << " bytes without an error or a ready frame");
    }
  }
  auto tail = d.Next();
  if (!tail.ok()) {
    out.error = tail.status();
  } else if (tail->has_value()) {
    out.frames.push_back(std::move(**tail));
  }
  return out;
}

}  // namespace

TEST_CASE("DecodeFrameLength validates 0, the maximum and byte order", "[proto][frame_codec]") {
  struct Case {
    std::string header;
    uint32_t max;
    bool ok;
    uint32_t length;
    const char* error;
  };
  const std::vector<Case> cases = {
      {FrameHeader(0), 1024, false, 0, "frame length 0"},
      {FrameHeader(1), 1024, true, 1, nullptr},
      {FrameHeader(1024), 1024, true, 1024, nullptr},
      {FrameHeader(1025), 1024, false, 0, "exceeds the maximum of 1024"},
      {FrameHeader(kDefaultMaxFrameBytes), kDefaultMaxFrameBytes, true, kDefaultMaxFrameBytes, nullptr},
      {FrameHeader(kDefaultMaxFrameBytes + 1), kDefaultMaxFrameBytes, false, 0, "exceeds the maximum"},
      {FrameHeader(0xFFFFFFFFu), kDefaultMaxFrameBytes, false, 0, "4294967295"},
      {FrameHeader(0xFFFFFFFFu), 0xFFFFFFFFu, true, 0xFFFFFFFFu, nullptr},
      // Big-endian: the first byte is the most significant.
      {std::string("\x00\x00\x01\x02", 4), 1 << 20, true, 0x0102, nullptr},
      {std::string("\x01\x02\x03\x04", 4), 0x7FFFFFFF, true, 0x01020304, nullptr},
      {std::string("\x00\x01\x00\x00", 4), 1 << 20, true, 0x10000, nullptr},
      {std::string("\x80\x00\x00\x00", 4), 0xFFFFFFFFu, true, 0x80000000u, nullptr},
  };
  for (const auto& c : cases) {
    CAPTURE(static_cast<unsigned>(static_cast<uint8_t>(c.header[0])),
            static_cast<unsigned>(static_cast<uint8_t>(c.header[1])),
            static_cast<unsigned>(static_cast<uint8_t>(c.header[2])),
            static_cast<unsigned>(static_cast<uint8_t>(c.header[3])), c.max);
    auto r = DecodeFrameLength(Bytes(c.header), c.max);
    REQUIRE(r.ok() == c.ok);
    if (c.ok) {
      CHECK(*r == c.length);
    } else {
      CHECK(r.status().IsProtocolError());
      CHECK_THAT(r.status().message(), Catch::Contains(c.error));
    }
  }
}

TEST_CASE("EncodeFrame writes a big-endian length prefix that ParseFrame round-trips", "[proto][frame_codec]") {
  const std::vector<v1::Frame> frames = {PingFrame(1), PingFrame(0xFFFFFFFFFFFFFFFFull),
                                         PublishFrame(7, "a hate crime report"),
                                         PublishFrame(8, std::string(70000, 'x'))};
  for (const auto& f : frames) {
    const std::string wire = Encode(f);
    REQUIRE(wire.size() > kFrameHeaderBytes);
    const size_t body_size = wire.size() - kFrameHeaderBytes;
    CHECK(body_size == f.ByteSizeLong());
    auto len = DecodeFrameLength(Bytes(wire), kDefaultMaxFrameBytes);
    REQUIRE(len.ok());
    CHECK(*len == body_size);
    CHECK(wire.substr(0, 4) == FrameHeader(static_cast<uint32_t>(body_size)));

    v1::Frame back;
    REQUIRE(ParseFrame(std::string_view(wire).substr(kFrameHeaderBytes), &back).ok());
    CHECK(back.SerializeAsString() == f.SerializeAsString());
    CHECK(back.kind_case() == f.kind_case());
  }
  // The long frame's length needs three bytes: check them one by one.
  const std::string wire = Encode(PublishFrame(8, std::string(70000, 'x')));
  const uint32_t n = static_cast<uint32_t>(wire.size() - 4);
  CHECK(static_cast<uint8_t>(wire[0]) == 0);
  CHECK(static_cast<uint8_t>(wire[1]) == ((n >> 16) & 0xFF));
  CHECK(static_cast<uint8_t>(wire[2]) == ((n >> 8) & 0xFF));
  CHECK(static_cast<uint8_t>(wire[3]) == (n & 0xFF));
  CHECK(n > 0xFFFF);
}

TEST_CASE("EncodeFrame refuses empty and oversized frames", "[proto][frame_codec]") {
  CHECK_FALSE(EncodeFrame(v1::Frame()).ok());  // no kind set: 0 bytes, not a valid frame length
  const v1::Frame big = PublishFrame(1, std::string(2000, 'y'));
  const uint32_t size = static_cast<uint32_t>(big.ByteSizeLong());
  CHECK(EncodeFrame(big, size).ok());
  auto r = EncodeFrame(big, size - 1);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("exceeds the maximum"));
}

TEST_CASE("EncodeDeliverFrame writes exactly what EncodeFrame writes for the same Deliver", "[proto][frame_codec]") {
  // delivery ids and attempts whose varints take 1, 2, 5 and 10 bytes, and
  // messages whose lengths take 1 to 3 bytes.
  const std::vector<std::pair<uint64_t, uint32_t>> ids = {
      {1, 1}, {127, 2}, {128, 300}, {0xFFFFFFFFull, 0xFFFFFFFFu}, {0xFFFFFFFFFFFFFFFFull, 7}};
  for (const std::string& text : {std::string("x"), std::string(200, 'r'), std::string(70000, 'z')}) {
    const v1::Frame publish = PublishFrame(9, text);
    const std::string message = publish.publish().message().SerializeAsString();
    for (const auto& [id, attempt] : ids) {
      v1::Frame f;
      f.mutable_deliver()->set_delivery_id(id);
      f.mutable_deliver()->set_attempt(attempt);
      *f.mutable_deliver()->mutable_message() = publish.publish().message();
      auto raw = liaison::proto::EncodeDeliverFrame(id, attempt, message);
      REQUIRE(raw.ok());
      CHECK(*raw == Encode(f));
      // Appended behind what a queue already holds, the same bytes.
      std::string queue = "queued";
      REQUIRE(liaison::proto::AppendDeliverFrame(&queue, id, attempt, message).ok());
      CHECK(queue == "queued" + *raw);
      v1::Frame back;
      REQUIRE(ParseFrame(std::string_view(*raw).substr(kFrameHeaderBytes), &back).ok());
      CHECK(back.deliver().delivery_id() == id);
      CHECK(back.deliver().attempt() == attempt);
      CHECK(back.deliver().message().SerializeAsString() == message);
    }
  }
  // The same size limit as EncodeFrame.
  v1::Frame f;
  f.mutable_deliver()->set_delivery_id(5);
  f.mutable_deliver()->set_attempt(1);
  *f.mutable_deliver()->mutable_message() = PublishFrame(1, std::string(2000, 'y')).publish().message();
  const std::string message = f.deliver().message().SerializeAsString();
  const uint32_t size = static_cast<uint32_t>(f.ByteSizeLong());
  CHECK(liaison::proto::EncodeDeliverFrame(5, 1, message, size).ok());
  auto r = liaison::proto::EncodeDeliverFrame(5, 1, message, size - 1);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("exceeds the maximum"));
  std::string queue = "queued";
  CHECK_FALSE(liaison::proto::AppendDeliverFrame(&queue, 5, 1, message, size - 1).ok());
  CHECK(queue == "queued");  // nothing appended
}

TEST_CASE("EncodePublishFrame writes exactly what EncodeFrame writes for the same Publish", "[proto][frame_codec]") {
  // Request ids whose varints take 0 (the default, omitted), 1, 2, 5 and 10
  // bytes, with and without reports, and messages whose lengths take 1 to 3
  // bytes; an empty message is still written (the field is set).
  const std::vector<uint64_t> ids = {0, 1, 127, 128, 0xFFFFFFFFull, 0xFFFFFFFFFFFFFFFFull};
  std::vector<v1::Message> messages;
  messages.emplace_back();
  for (const std::string& text : {std::string("x"), std::string(200, 'r'), std::string(70000, 'z')}) {
    messages.push_back(PublishFrame(9, text).publish().message());
  }
  for (const v1::Message& message : messages) {
    for (uint64_t id : ids) {
      for (bool reports : {false, true}) {
        v1::Frame f;
        f.mutable_publish()->set_request_id(id);
        f.mutable_publish()->set_want_reports(reports);
        *f.mutable_publish()->mutable_message() = message;
        auto raw = liaison::proto::EncodePublishFrame(id, reports, message);
        REQUIRE(raw.ok());
        CHECK(*raw == Encode(f));
        v1::Frame back;
        REQUIRE(ParseFrame(std::string_view(*raw).substr(kFrameHeaderBytes), &back).ok());
        CHECK(back.publish().request_id() == id);
        CHECK(back.publish().want_reports() == reports);
        CHECK(back.publish().has_message());
        CHECK(back.publish().message().SerializeAsString() == message.SerializeAsString());
      }
    }
  }
  // The same size limit as EncodeFrame.
  v1::Frame f = PublishFrame(5, std::string(2000, 'y'));
  f.mutable_publish()->set_want_reports(true);
  const uint32_t size = static_cast<uint32_t>(f.ByteSizeLong());
  CHECK(liaison::proto::EncodePublishFrame(5, true, f.publish().message(), size).ok());
  auto r = liaison::proto::EncodePublishFrame(5, true, f.publish().message(), size - 1);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("exceeds the maximum"));
}

TEST_CASE("EncodePublishAckFrame writes exactly what EncodeFrame writes for the same PublishAck",
          "[proto][frame_codec]") {
  // Acks as the broker stores them (message id, outcomes, time), with none,
  // one and many outcomes (lengths of 1 and 2 bytes); request ids of every
  // varint size, 0 omitted; an empty checkpoint and a full one.
  std::vector<v1::PublishAck> acks(3);
  for (size_t i = 0; i < acks.size(); ++i) {
    acks[i].set_message_id("0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1d");
    acks[i].mutable_accepted_at()->set_seconds(1764633600);
    acks[i].mutable_accepted_at()->set_nanos(123456789);
    for (size_t k = 0; k < (i == 0 ? 0 : i == 1 ? 1 : 40); ++k) {
      v1::RecipientOutcome* o = acks[i].add_outcomes();
      o->set_recipient("agency-" + std::to_string(k));
      o->set_outcome(k % 3 == 0 ? v1::OUTCOME_REFUSED : v1::OUTCOME_QUEUED);
      if (k % 3 == 0) {
        o->set_reason(v1::REASON_NOT_PERMITTED);
        o->set_detail("the network's policy does not permit sharing this message");
      }
    }
  }
  std::vector<v1::Checkpoint> checkpoints(2);
  checkpoints[1].set_origin("liaison.example.org/audit");
  checkpoints[1].set_tree_size(123456789);
  checkpoints[1].set_root_hash(std::string(32, '\x5a'));
  checkpoints[1].set_time_ms(1764633600123);
  checkpoints[1].set_key_id("k1");
  checkpoints[1].set_signature(std::string(64, '\x01'));
  for (const v1::PublishAck& stored : acks) {
    for (const v1::Checkpoint& cp : checkpoints) {
      for (uint64_t id : {0ull, 1ull, 127ull, 128ull, 0xFFFFFFFFull, 0xFFFFFFFFFFFFFFFFull}) {
        v1::Frame f;
        *f.mutable_publish_ack() = stored;
        f.mutable_publish_ack()->set_request_id(id);
        *f.mutable_publish_ack()->mutable_checkpoint() = cp;
        auto raw = liaison::proto::EncodePublishAckFrame(id, stored.SerializeAsString(), cp.SerializeAsString());
        REQUIRE(raw.ok());
        CHECK(*raw == Encode(f));
      }
    }
  }
  // The same size limit as EncodeFrame.
  v1::Frame f;
  *f.mutable_publish_ack() = acks[2];
  f.mutable_publish_ack()->set_request_id(9);
  *f.mutable_publish_ack()->mutable_checkpoint() = checkpoints[1];
  const uint32_t size = static_cast<uint32_t>(f.ByteSizeLong());
  const std::string stored = acks[2].SerializeAsString(), cp = checkpoints[1].SerializeAsString();
  CHECK(liaison::proto::EncodePublishAckFrame(9, stored, cp, size).ok());
  auto r = liaison::proto::EncodePublishAckFrame(9, stored, cp, size - 1);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("exceeds the maximum"));
}

TEST_CASE("FrameDecoder reassembles frames fed byte by byte", "[proto][frame_codec]") {
  std::vector<v1::Frame> frames = {PingFrame(1), PublishFrame(2, "first"), PingFrame(3),
                                   PublishFrame(4, std::string(3000, 'z'))};
  std::string stream;
  for (const auto& f : frames) stream += Encode(f);

  FrameDecoder d;
  size_t max_buffered = 0;
  std::vector<std::string> bodies;
  for (size_t i = 0; i < stream.size(); ++i) {
    if (d.Feed(Bytes(stream) + i, 1) != 1) FAIL("byte " << i << " not consumed");
    max_buffered = std::max(max_buffered, d.buffered());
    auto next = d.Next();
    if (!next.ok()) FAIL("byte " << i << ": " << next.status().ToString());
    if (next->has_value()) {
      bodies.push_back(**next);
      CHECK(d.buffered() == 0);
    }
  }
  REQUIRE(bodies.size() == frames.size());
  for (size_t i = 0; i < frames.size(); ++i) {
    v1::Frame back;
    REQUIRE(ParseFrame(bodies[i], &back).ok());
    CHECK(back.SerializeAsString() == frames[i].SerializeAsString());
  }
  CHECK(max_buffered == 4 + frames.back().ByteSizeLong() - 1);
  auto idle = d.Next();
  REQUIRE(idle.ok());
  CHECK_FALSE(idle->has_value());
}

TEST_CASE("FrameDecoder reassembles frames from random chunk sizes", "[proto][frame_codec]") {
  std::mt19937 rng(20240229);
  std::vector<v1::Frame> frames;
  std::string stream;
  for (int i = 0; i < 60; ++i) {
    v1::Frame f = (i % 3 == 0) ? PingFrame(static_cast<uint64_t>(i))
                               : PublishFrame(static_cast<uint64_t>(i),
                                              std::string(static_cast<size_t>(rng() % 5000), 'a' + i % 26));
    stream += Encode(f);
    frames.push_back(std::move(f));
  }
  for (size_t max_chunk : {2u, 3u, 7u, 64u, 1000u, 20000u, 1u << 20}) {
    CAPTURE(max_chunk);
    FrameDecoder d;
    std::uniform_int_distribution<size_t> dist(1, max_chunk);
    Drained got = Drive(d, stream, [&] { return dist(rng); });
    REQUIRE(got.error.ok());
    REQUIRE(got.frames.size() == frames.size());
    for (size_t i = 0; i < frames.size(); ++i) {
      CHECK(got.frames[i] == frames[i].SerializeAsString());
    }
    CHECK(d.buffered() == 0);
  }
}

TEST_CASE("FrameDecoder holds nothing and reports nothing for truncated input", "[proto][frame_codec]") {
  const std::string wire = Encode(PublishFrame(1, "truncated"));
  for (size_t cut : {size_t{0}, size_t{1}, size_t{3}, size_t{4}, size_t{5}, wire.size() - 1}) {
    CAPTURE(cut);
    FrameDecoder d;
    CHECK(d.Feed(Bytes(wire), cut) == cut);
    auto next = d.Next();
    REQUIRE(next.ok());  // no frame yet, and no error
    CHECK_FALSE(next->has_value());
    CHECK(d.buffered() == cut);
    // The rest arrives: the frame completes.
    CHECK(d.Feed(Bytes(wire) + cut, wire.size() - cut) == wire.size() - cut);
    auto done = d.Next();
    REQUIRE(done.ok());
    REQUIRE(done->has_value());
    CHECK(**done == wire.substr(4));
  }
}

TEST_CASE("FrameDecoder: a zero-length header is a sticky error", "[proto][frame_codec]") {
  FrameDecoder d;
  std::string bytes = FrameHeader(0) + Encode(PingFrame(5));
  CHECK(d.Feed(Bytes(bytes), bytes.size()) == 4);  // stops right after the bad header
  for (int i = 0; i < 3; ++i) {
    auto next = d.Next();
    REQUIRE_FALSE(next.ok());
    CHECK(next.status().IsProtocolError());
    CHECK_THAT(next.status().message(), Catch::Contains("frame length 0"));
  }
  // Later bytes, even a valid frame, are refused.
  const std::string good = Encode(PingFrame(6));
  CHECK(d.Feed(Bytes(good), good.size()) == 0);
  CHECK_FALSE(d.Next().ok());
}

TEST_CASE("FrameDecoder: an oversize header is an error before any body is buffered", "[proto][frame_codec]") {
  const uint32_t max = 1024;
  for (uint32_t announced : {max + 1, 1u << 20, 0xFFFFFFFFu}) {
    CAPTURE(announced);
    FrameDecoder d(max);
    // Header followed by as much body as the peer claims it will send (capped).
    const std::string body(std::min<uint32_t>(announced, 64 * 1024), 'B');
    const std::string bytes = FrameHeader(announced) + body;
    size_t fed = 0;
    size_t max_buffered = 0;
    // Byte by byte, so buffered() is observed at every step.
    for (size_t i = 0; i < bytes.size(); ++i) {
      fed += d.Feed(Bytes(bytes) + i, 1);
      max_buffered = std::max(max_buffered, d.buffered());
    }
    CHECK(fed == 4);
    CHECK(max_buffered <= 4);
    auto next = d.Next();
    REQUIRE_FALSE(next.ok());
    CHECK(next.status().IsProtocolError());
    CHECK_THAT(next.status().message(), Catch::Contains("exceeds the maximum of 1024"));
    // And all at once.
    FrameDecoder d2(max);
    CHECK(d2.Feed(Bytes(bytes), bytes.size()) == 4);
    CHECK(d2.buffered() <= 4);
    CHECK_FALSE(d2.Next().ok());
  }
}

TEST_CASE("FrameDecoder accepts a frame of exactly the maximum and buffers at most max + 4", "[proto][frame_codec]") {
  const uint32_t max = 4096;
  const std::string body(max, '\x08');  // content does not matter to the decoder
  const std::string bytes = FrameHeader(max) + body;
  FrameDecoder d(max);
  size_t max_buffered = 0;
  std::vector<std::string> got;
  for (size_t i = 0; i < bytes.size(); i += 100) {
    const size_t n = std::min<size_t>(100, bytes.size() - i);
    REQUIRE(d.Feed(Bytes(bytes) + i, n) == n);
    max_buffered = std::max(max_buffered, d.buffered());
    auto next = d.Next();
    REQUIRE(next.ok());
    if (next->has_value()) got.push_back(**next);
  }
  REQUIRE(got.size() == 1);
  CHECK(got[0] == body);
  CHECK(max_buffered <= max + 4);
}

// The header says Feed returns fewer bytes than given "only after an error".
// The implementation holds one ready frame and stops consuming until Next()
// takes it, so a caller following the documented contract
// (Feed everything, then drain Next()) loses the second frame.
// (A regression test: Feed used to stop after each complete frame.)
TEST_CASE("FrameDecoder::Feed consumes all bytes unless there is an error (documented contract)",
          "[proto][frame_codec]") {
  const std::string stream = Encode(PingFrame(1)) + Encode(PingFrame(2));
  FrameDecoder d;
  const size_t used = d.Feed(Bytes(stream), stream.size());
  CHECK(used == stream.size());
  std::vector<std::string> frames;
  for (;;) {
    auto next = d.Next();
    REQUIRE(next.ok());
    if (!next->has_value()) break;
    frames.push_back(**next);
  }
  CHECK(frames.size() == 2);
}

TEST_CASE("ParseFrame refuses garbage bodies", "[proto][frame_codec]") {
  const std::vector<std::pair<const char*, std::string>> cases = {
      {"truncated varint", std::string("\x38\xff", 2)},
      {"end-group tag without a group", std::string("\x0c", 1)},
      {"invalid wire type 7", std::string("\x0f\x00", 2)},
      {"invalid wire type 6", std::string("\x0e\x00", 2)},
      {"field number 0", std::string("\x00\x00", 2)},
      {"length beyond the body", std::string("\x1a\x10\x08\x01", 4)},
      {"publish whose message is cut short", std::string("\x1a\x04\x12\x05\x0a\x03", 6)},
      {"all ones", std::string(16, '\xff')},
      {"unterminated group", std::string("\x7b\x08\x01", 3)},
  };
  for (const auto& [name, body] : cases) {
    CAPTURE(name);
    v1::Frame f;
    f.mutable_ping()->set_nonce(99);  // must be cleared, not merged into
    liaison::Status s = ParseFrame(body, &f);
    CHECK_FALSE(s.ok());
    CHECK(s.IsProtocolError());
  }
  // A well-formed body for contrast: ParseFrame replaces, never merges.
  v1::Frame f;
  f.mutable_ping()->set_nonce(99);
  const std::string pong = PingFrame(5).SerializeAsString();
  REQUIRE(ParseFrame(pong, &f).ok());
  CHECK(f.ping().nonce() == 5);
}

namespace {

// n nested groups of unknown field 15 (start tag 0x7B, end tag 0x7C).
std::string NestedGroups(int n) {
  return std::string(static_cast<size_t>(n), '\x7b') + std::string(static_cast<size_t>(n), '\x7c');
}

// n nested length-delimited submessages inside unknown field 15 of the
// Publish's message, i.e. Frame.publish.message.<unknown>... The outer
// known levels are always parsed; how the nested bytes are handled is up to
// the parser, but it must never recurse without a limit.
std::string NestedPublish(int extra_groups) {
  v1::Frame f;
  f.mutable_publish()->mutable_message()->mutable_incident_report()->set_title("t");
  std::string inner = f.publish().message().incident_report().SerializeAsString() + NestedGroups(extra_groups);
  // Re-wrap by hand: Message.incident_report (field 10), Publish.message (2), Frame.publish (3).
  return Field(3, 2, Field(2, 2, Field(10, 2, inner)));
}

}  // namespace

TEST_CASE("ParseFrame enforces the nesting limit instead of recursing without bound", "[proto][frame_codec]") {
  // Shallow nesting is fine: unknown groups parse and are then dropped.
  for (int depth : {1, 5, 20}) {
    CAPTURE(depth);
    v1::Frame f;
    REQUIRE(ParseFrame(NestedGroups(depth), &f).ok());
    CHECK(f.ByteSizeLong() == 0);
    REQUIRE(ParseFrame(NestedPublish(depth), &f).ok());
    CHECK(f.publish().message().incident_report().title() == "t");
    const auto& report = f.publish().message().incident_report();
    CHECK(report.GetReflection()->GetUnknownFields(report).empty());
  }
  // The boundary: kMaxNestingDepth levels parse, one more does not.
  {
    v1::Frame f;
    CHECK(ParseFrame(NestedGroups(liaison::proto::kMaxNestingDepth), &f).ok());
  }
  // Deeper than kMaxNestingDepth: refused, not a crash. 100000 levels would
  // overflow the stack of an unbounded recursive parser.
  for (int depth : {liaison::proto::kMaxNestingDepth + 1, 64, 1000, 100000}) {
    CAPTURE(depth);
    v1::Frame f;
    CHECK_FALSE(ParseFrame(NestedGroups(depth), &f).ok());
    CHECK_FALSE(ParseFrame(NestedPublish(depth), &f).ok());
  }
}

TEST_CASE("ParseFrame accepts the deepest nesting the schema uses", "[proto][frame_codec]") {
  // Frame > Deliver > Message > CaseReferral > Concern > Timestamp.
  v1::Frame f;
  auto* concern = f.mutable_deliver()->mutable_message()->mutable_case_referral()->add_concerns();
  concern->set_type(v1::CONCERN_RADICALISATION);
  concern->mutable_observed_at()->set_seconds(1700000000);
  const std::string wire = Encode(f);
  v1::Frame back;
  REQUIRE(ParseFrame(std::string_view(wire).substr(4), &back).ok());
  CHECK(back.deliver().message().case_referral().concerns(0).observed_at().seconds() == 1700000000);
}

TEST_CASE("ParseFrame drops unknown fields at every level", "[proto][frame_codec]") {
  const v1::Frame known = PublishFrame(42, "known");
  std::string body = known.SerializeAsString();
  // Unknown top-level field 100 (varint) and field 101 (bytes).
  body += std::string("\xa0\x06\x01", 3);
  body += std::string(
      "\xaa\x06\x03"
      "abc",
      6);
  // An unknown field inside Publish: append a second Publish record (fields
  // of repeated occurrences merge) carrying only unknown field 50.
  body += std::string("\x1a\x03\x90\x03\x07", 5);

  v1::Frame f;
  REQUIRE(ParseFrame(body, &f).ok());
  CHECK(f.GetReflection()->GetUnknownFields(f).empty());
  CHECK(f.publish().GetReflection()->GetUnknownFields(f.publish()).empty());
  CHECK(f.publish().request_id() == 42);
  CHECK(f.SerializeAsString() == known.SerializeAsString());
  CHECK(body.size() > known.ByteSizeLong());  // the test input really had extras
}

namespace {

// Sets every message field of m that is unset (one element for repeated
// ones), down to depth levels, so that every message type of the schema
// under m appears at least once.
void FillMessages(google::protobuf::Message* m, int depth) {
  if (depth == 0) return;
  const auto* d = m->GetDescriptor();
  const auto* r = m->GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const auto* f = d->field(i);
    if (f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (f->containing_oneof() && r->HasOneof(*m, f->containing_oneof()) &&
        r->GetOneofFieldDescriptor(*m, f->containing_oneof()) != f) {
      continue;  // another member of the oneof is the chosen one
    }
    google::protobuf::Message* sub = f->is_repeated() ? r->AddMessage(m, f) : r->MutableMessage(m, f);
    FillMessages(sub, depth - 1);
  }
}

// Adds unknown field 1999 to m and every sub-message set in it; returns how
// many messages got one.
int AddUnknownEverywhere(google::protobuf::Message* m) {
  const auto* r = m->GetReflection();
  r->MutableUnknownFields(m)->AddVarint(1999, 7);
  int n = 1;
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(*m, &fields);
  for (const auto* f : fields) {
    if (f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (f->is_repeated()) {
      for (int i = 0; i < r->FieldSize(*m, f); ++i) n += AddUnknownEverywhere(r->MutableRepeatedMessage(m, f, i));
    } else {
      n += AddUnknownEverywhere(r->MutableMessage(m, f));
    }
  }
  return n;
}

}  // namespace

TEST_CASE("ParseFrame drops unknown fields in every message type of every body, repeated and Timestamp included",
          "[proto][frame_codec]") {
  const auto* oneof = v1::Message::descriptor()->FindOneofByName("body");
  for (int b = 0; b < oneof->field_count(); ++b) {
    const auto* body = oneof->field(b);
    CAPTURE(body->name());
    v1::Frame frame;
    auto* message = frame.mutable_publish()->mutable_message();
    message->GetReflection()->MutableMessage(message, body);  // selects this body
    FillMessages(&frame, 12);
    const std::string known = frame.SerializeAsString();
    v1::Frame marked = frame;
    const int marked_messages = AddUnknownEverywhere(&marked);
    CHECK(marked_messages > 8);  // the walk really reached nested levels
    v1::Frame back;
    REQUIRE(ParseFrame(marked.SerializeAsString(), &back).ok());
    CHECK(back.SerializeAsString() == known);
  }
}

namespace {

using liaison::proto::MayHoldUnknownFields;
using liaison::test::AnyUnknown;


// A Publish frame whose incident report carries extra (bytes of fields).
std::string PublishWithReportExtra(const std::string& extra) {
  const v1::Frame f = PublishFrame(42, "known");
  const std::string report = f.publish().message().incident_report().SerializeAsString() + extra;
  v1::Message message = f.publish().message();
  message.clear_incident_report();
  const std::string publish = Field(1, 0, Varint(42)) + Field(2, 2, message.SerializeAsString() + Field(10, 2, report));
  return Field(3, 2, publish);
}

}  // namespace

TEST_CASE("MayHoldUnknownFields clears every frame of the schema's own fields, and ParseFrame keeps them",
          "[proto][frame_codec]") {
  const auto* oneof = v1::Message::descriptor()->FindOneofByName("body");
  for (int b = 0; b < oneof->field_count(); ++b) {
    CAPTURE(oneof->field(b)->name());
    v1::Frame frame;
    auto* message = frame.mutable_publish()->mutable_message();
    message->GetReflection()->MutableMessage(message, oneof->field(b));
    FillMessages(&frame, 12);
    const std::string wire = frame.SerializeAsString();
    CHECK_FALSE(MayHoldUnknownFields(wire, v1::Frame::descriptor()));
    v1::Frame back;
    REQUIRE(ParseFrame(wire, &back).ok());
    CHECK(back.SerializeAsString() == wire);
  }
  // Every kind of frame, as FillMessages sets them (one oneof member each).
  const auto* kinds = v1::Frame::descriptor()->FindOneofByName("kind");
  REQUIRE(kinds != nullptr);
  for (int k = 0; k < kinds->field_count(); ++k) {
    CAPTURE(kinds->field(k)->name());
    v1::Frame frame;
    frame.GetReflection()->MutableMessage(&frame, kinds->field(k));
    FillMessages(&frame, 12);
    CHECK_FALSE(MayHoldUnknownFields(frame.SerializeAsString(), v1::Frame::descriptor()));
  }
}

TEST_CASE("A repeated enum parses packed and unpacked, and neither is taken for an unknown field",
          "[proto][frame_codec]") {
  // bias_motivations (IncidentReport field 5): appended unpacked (wire type
  // 0) and packed (wire type 2), after the one PublishFrame sets.
  const std::string unpacked = Field(5, 0, Varint(v1::BIAS_ANTISEMITIC));
  const std::string packed = Field(5, 2, Varint(v1::BIAS_RACIST_XENOPHOBIC) + Varint(v1::BIAS_ANTISEMITIC));
  for (const std::string& extra : {unpacked, packed, unpacked + packed}) {
    const std::string wire = PublishWithReportExtra(extra);
    CHECK_FALSE(MayHoldUnknownFields(wire, v1::Frame::descriptor()));
    v1::Frame f;
    REQUIRE(ParseFrame(wire, &f).ok());
    CHECK(f.publish().message().incident_report().bias_motivations_size() > 1);
    CHECK_FALSE(AnyUnknown(f));
  }
}

TEST_CASE("What protobuf keeps as unknown is seen on the wire and dropped, at any depth", "[proto][frame_codec]") {
  struct Case {
    const char* what;
    std::string wire;
  };
  const v1::Frame known = PublishFrame(42, "known");
  const std::string base = known.SerializeAsString();
  const std::vector<Case> cases = {
      {"an unknown number at the top", base + Field(100, 0, Varint(1))},
      {"an unknown number deep in the body", PublishWithReportExtra(Field(999, 2, "secret"))},
      // A known number under another wire type: protobuf keeps it aside.
      {"a varint field sent length-delimited", base + Field(3, 2, Field(1, 2, "xyz"))},
      {"a string field sent as a varint", PublishWithReportExtra(Field(7, 0, Varint(7)))},
      {"a message field sent as fixed64", PublishWithReportExtra(Field(4, 1, std::string(8, '\0')))},
      {"a double sent as fixed32", PublishWithReportExtra(Field(4, 2, Field(6, 5, std::string(4, '\0'))))},
      {"a Timestamp's seconds sent as fixed64", PublishWithReportExtra(Field(2, 2, Field(1, 1, std::string(8, '\0'))))},
      {"an unknown number in a Timestamp", PublishWithReportExtra(Field(3, 2, Field(9, 0, Varint(1))))},
      {"a group", PublishWithReportExtra("\x7b\x7c")},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    CHECK(MayHoldUnknownFields(c.wire, v1::Frame::descriptor()));
    v1::Frame with_unknown;
    REQUIRE(with_unknown.ParseFromString(c.wire));
    CHECK(AnyUnknown(with_unknown));  // the case really makes an unknown field
    v1::Frame f;
    REQUIRE(ParseFrame(c.wire, &f).ok());
    CHECK_FALSE(AnyUnknown(f));
    CHECK(f.publish().message().envelope().message_id() == known.publish().message().envelope().message_id());
  }
  // Bytes the walk cannot follow: it says "perhaps", never "none".
  CHECK(MayHoldUnknownFields(std::string("\x1a\x7f", 2), v1::Frame::descriptor()));        // length past the end
  CHECK(MayHoldUnknownFields(std::string("\x08\xff\xff", 3), v1::Frame::descriptor()));    // varint cut short
  CHECK(MayHoldUnknownFields(std::string(1, '\x0f'), v1::Frame::descriptor()));            // wire type 7
  CHECK(MayHoldUnknownFields("", google::protobuf::Timestamp::descriptor()) == false);    // in the wire closure
  CHECK(MayHoldUnknownFields("", v1::Frame::descriptor()) == false);
}

TEST_CASE("WithEnvelope gives the bytes serializing the message with the new envelope gives", "[proto][frame_codec]") {
  using liaison::proto::WithEnvelope;
  const auto* oneof = v1::Message::descriptor()->FindOneofByName("body");
  for (int b = 0; b < oneof->field_count(); ++b) {
    CAPTURE(oneof->field(b)->name());
    v1::Message m;
    m.GetReflection()->MutableMessage(&m, oneof->field(b));
    FillMessages(&m, 12);
    m.mutable_envelope()->set_message_id("0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1d");
    m.mutable_envelope()->add_recipients("school");
    const std::string before = m.SerializeAsString();
    // Stamped as the broker stamps, and a new envelope far longer than the old
    // one (its length takes more varint bytes).
    m.mutable_envelope()->set_sender("police");
    m.mutable_envelope()->mutable_received_at()->set_seconds(1700000000);
    auto stamped = WithEnvelope(before, m.envelope());
    REQUIRE(stamped.ok());
    CHECK(*stamped == m.SerializeAsString());
    m.mutable_envelope()->set_purpose(std::string(300, 'p'));
    stamped = WithEnvelope(before, m.envelope());
    REQUIRE(stamped.ok());
    CHECK(*stamped == m.SerializeAsString());
    v1::Message back;
    REQUIRE(back.ParseFromString(*stamped));
    CHECK(back.envelope().sender() == "police");
  }
  // A message that does not begin with an envelope: refused, not guessed at.
  v1::Message no_envelope;
  no_envelope.mutable_incident_report()->set_title("t");
  CHECK_FALSE(WithEnvelope(no_envelope.SerializeAsString(), v1::Envelope()).ok());
  CHECK_FALSE(WithEnvelope("", v1::Envelope()).ok());
  CHECK_FALSE(WithEnvelope(std::string("\x0a\x05\x01", 3), v1::Envelope()).ok());    // runs past the end
  CHECK_FALSE(WithEnvelope(std::string("\x0a\xff\xff\xff\xff\xff", 6), v1::Envelope()).ok());  // bad length
}
