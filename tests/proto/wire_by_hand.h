// For tests that need protobuf's wire format written by hand: encodings a
// parser accepts and SerializeAsString never makes (fields out of order or
// repeated, unpacked numbers, unknown numbers, wrong wire types).
#pragma once

#include <cstdint>
#include <string>

namespace liaison::test {

// A frame's length prefix (docs/protocol.md, section 3): n, 4 bytes big-endian.
inline std::string FrameHeader(uint32_t n) {
  return {static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8), static_cast<char>(n)};
}

// The varint encoding of v.
inline std::string Varint(uint64_t v) {
  std::string out;
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
  return out;
}

// A field: its tag, then for wire type 2 the payload's length, then the
// payload (already encoded for the other wire types).
inline std::string Field(int number, int wire_type, const std::string& payload) {
  std::string out = Varint(static_cast<uint64_t>(number) << 3 | static_cast<uint64_t>(wire_type));
  if (wire_type == 2) out += Varint(payload.size());
  return out + payload;
}

}  // namespace liaison::test
