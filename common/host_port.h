// "host:port" and "[v6]:port" as written in config files and flags.
#pragma once

#include <cstdint>
#include <string>

namespace liaison {

// Splits text into host and port. Port 0 is accepted only with allow_zero
// (a broker listening on any free port, in tests).
bool ParseHostPort(const std::string& text, std::string* host, uint16_t* port, bool allow_zero = false);

}  // namespace liaison
