#include "common/host_port.h"

#include <charconv>

namespace liaison {

bool ParseHostPort(const std::string& text, std::string* host, uint16_t* port, bool allow_zero) {
  std::string h, p;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') return false;
    h = text.substr(1, close - 1);
    p = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string::npos || text.find(':') != colon) return false;
    h = text.substr(0, colon);
    p = text.substr(colon + 1);
  }
  unsigned v = 0;
  auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
  if (h.empty() || p.empty() || ec != std::errc() || end != p.data() + p.size() || v > 65535) return false;
  if (v == 0 && !allow_zero) return false;
  *host = h;
  *port = static_cast<uint16_t>(v);
  return true;
}

}  // namespace liaison
