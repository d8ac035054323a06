// Reading protobuf wire format from raw bytes, for the walks over
// serialized messages that do not parse them (proto/field_plan.cpp,
// proto/frame_codec.cpp, proto/validate.cpp). Internal.
#pragma once

#include <cstdint>
#include <string_view>

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

// How many times length-delimited field `number` occurs in the message in
// bytes (the parser merges repeated occurrences of a singular one), with
// the last one's value in *value; -1 when bytes do not parse as far as the
// walk goes: a bad varint, a group, a length past the end.
inline int CountField(std::string_view bytes, int number, std::string_view* value) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const uint8_t* end = p + bytes.size();
  int count = 0;
  while (p < end) {
    uint64_t tag = 0, v = 0;
    if (!ReadVarint(p, end, &tag)) return -1;
    switch (tag & 7) {
      case 0:
        if (!ReadVarint(p, end, &v)) return -1;
        break;
      case 1:
        if (end - p < 8) return -1;
        p += 8;
        break;
      case 5:
        if (end - p < 4) return -1;
        p += 4;
        break;
      case 2:
        if (!ReadVarint(p, end, &v) || v > static_cast<uint64_t>(end - p)) return -1;
        if ((tag >> 3) == static_cast<uint64_t>(number)) {
          ++count;
          *value = std::string_view(reinterpret_cast<const char*>(p), static_cast<size_t>(v));
        }
        p += v;
        break;
      default:
        return -1;
    }
  }
  return count;
}

// The value of length-delimited field `number`, when it occurs exactly once.
inline bool FindOnlyField(std::string_view bytes, int number, std::string_view* value) {
  return CountField(bytes, number, value) == 1;
}

}  // namespace liaison::proto
