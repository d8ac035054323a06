// Reading a protobuf varint from raw bytes, for the walks over serialized
// messages that do not parse them (proto/field_plan.cpp, proto/frame_codec.cpp).
// Internal.
#pragma once

#include <cstdint>

namespace liaison::proto {

// Reads a varint at p (advancing it) into *v; false when the bytes end
// first or it runs past 10 bytes.
inline bool ReadVarint(const uint8_t*& p, const uint8_t* end, uint64_t* v) {
  uint64_t r = 0;
  for (int shift = 0; shift < 64 && p < end; shift += 7) {
    const uint8_t b = *p++;
    r |= static_cast<uint64_t>(b & 0x7F) << shift;
    if ((b & 0x80) == 0) {
      *v = r;
      return true;
    }
  }
  return false;
}

}  // namespace liaison::proto
