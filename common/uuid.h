// UUIDs for message ids: validation of the RFC 9562 text form and
// generation of time-ordered version-7 ids. Stateless; thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace liaison {

// Accepts 8-4-4-4-12 hex digits in either case, with the RFC 9562 variant
// bits and a version from 1 to 8; the nil and max UUIDs are refused.
// Returns the canonical lower-case form.
Result<std::string> NormalizeUuid(std::string_view text);

// A new random UUIDv7 (48-bit Unix milliseconds, then 74 random bits), in
// canonical form. Time-ordered ids keep database indexes compact.
std::string NewUuid();

}  // namespace liaison
