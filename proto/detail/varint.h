// Reading (and writing) protobuf wire format as raw bytes, for the walks over
// serialized messages that do not parse them (proto/field_plan.cpp,
// proto/frame_codec.cpp, proto/validate.cpp, policy/redact_copy.cpp).
// Internal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
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

// The bytes the shortest varint encoding of v takes (the serializer's).
inline size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// Appends the shortest varint encoding of v (the serializer's).
inline void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// One value of wire type 0 (a varint), 1 (8 bytes) or 5 (4 bytes) at p,
// advancing p: *v is the varint, or the fixed bytes read little-endian;
// for wire type 2, *v is the payload's length and *payload the payload.
// False when the bytes end first, a varint runs past 10 bytes, or the wire
// type is a group's (3, 4), which none of the walks follows.
inline bool ReadValue(const uint8_t*& p, const uint8_t* end, unsigned wire_type, uint64_t* v,
                      std::string_view* payload = nullptr) {
  switch (wire_type) {
    case 0:
      return ReadVarint(p, end, v);
    case 1:
    case 5: {
      const int n = wire_type == 1 ? 8 : 4;
      if (end - p < n) return false;
      uint64_t bits = 0;
      for (int i = n - 1; i >= 0; --i) bits = (bits << 8) | p[i];
      p += n;
      *v = bits;
      return true;
    }
    case 2:
      if (!ReadVarint(p, end, v) || *v > static_cast<uint64_t>(end - p)) return false;
      if (payload != nullptr) *payload = std::string_view(reinterpret_cast<const char*>(p), static_cast<size_t>(*v));
      p += *v;
      return true;
    default:
      return false;
  }
}

// One field of a serialized message.
struct WireField {
  uint32_t number = 0;
  unsigned wire_type = 0;
  uint64_t value = 0;       // as ReadValue gives it
  std::string_view payload;  // wire type 2
};

// Reads the field at p, advancing p past it; false as ReadValue, and for a
// tag beyond 32 bits.
inline bool ReadField(const uint8_t*& p, const uint8_t* end, WireField* f) {
  uint64_t tag = 0;
  if (!ReadVarint(p, end, &tag) || tag > 0xFFFFFFFFu) return false;
  f->number = static_cast<uint32_t>(tag >> 3);
  f->wire_type = static_cast<unsigned>(tag & 7);
  return ReadValue(p, end, f->wire_type, &f->value, &f->payload);
}

// The value of length-delimited field `number` of the message in bytes,
// when it occurs there exactly once (more often, the parser would merge
// the occurrences). False too when bytes do not read as ReadField reads.
inline bool FindOnlyField(std::string_view bytes, uint32_t number, std::string_view* value) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const uint8_t* end = p + bytes.size();
  int count = 0;
  WireField f;
  while (p < end) {
    if (!ReadField(p, end, &f)) return false;
    if (f.number == number && f.wire_type == 2 && ++count == 1) *value = f.payload;
  }
  return count == 1;
}

}  // namespace liaison::proto
