// Text from outside (a client's field, a file's name) made safe to put in
// a log line: control characters, a newline above all, could forge lines.
#pragma once

#include <string>
#include <string_view>

namespace liaison {

// text cut to max bytes, each control character (below 0x20, and 0x7f)
// replaced by '?'.
std::string Printable(std::string_view text, size_t max);

}  // namespace liaison
