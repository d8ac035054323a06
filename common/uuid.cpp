#include "common/uuid.h"

#include <openssl/rand.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <stdexcept>

namespace liaison {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Result<std::string> NormalizeUuid(std::string_view text) {
  if (text.size() != 36) {
    return Status::InvalidArgument("not a UUID (expected 36 characters like "
                                   "0190a5c4-8d2e-7b3a-9c1d-2f4e6a8b0c1d)");
  }
  std::string out(36, '-');
  bool all_zero = true, all_f = true;
  for (size_t i = 0; i < 36; ++i) {
    const char c = text[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return Status::InvalidArgument("not a UUID (hyphens misplaced)");
      continue;
    }
    const int v = HexValue(c);
    if (v < 0) return Status::InvalidArgument("not a UUID (non-hex character)");
    out[i] = "0123456789abcdef"[v];
    all_zero = all_zero && v == 0;
    all_f = all_f && v == 15;
  }
  if (all_zero || all_f) return Status::InvalidArgument("the nil and max UUIDs are not message ids");
  const int version = HexValue(out[14]);
  if (version < 1 || version > 8) return Status::InvalidArgument("not a UUID (unknown version)");
  const int variant = HexValue(out[19]);
  if ((variant & 0xC) != 0x8) return Status::InvalidArgument("not a UUID (not the RFC 9562 variant)");
  return out;
}

std::string NewUuid() {
  std::array<uint8_t, 16> b{};
  if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) {
    throw std::runtime_error("RAND_bytes failed");  // the system RNG is broken: truly unexpected
  }
  const uint64_t ms = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                std::chrono::system_clock::now().time_since_epoch())
                                                .count());
  for (int i = 0; i < 6; ++i) b[i] = static_cast<uint8_t>(ms >> (8 * (5 - i)));
  b[6] = static_cast<uint8_t>((b[6] & 0x0F) | 0x70);
  b[8] = static_cast<uint8_t>((b[8] & 0x3F) | 0x80);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(36);
  for (size_t i = 0; i < b.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    out.push_back(kHex[b[i] >> 4]);
    out.push_back(kHex[b[i] & 0xF]);
  }
  return out;
}

}  // namespace liaison
