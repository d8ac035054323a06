// A string as a JSON string literal (quoted, with escapes), for the
// one-line JSON that the command-line tools print. Always valid JSON:
// bytes that are not well-formed UTF-8 become U+FFFD, one each.
#pragma once

#include <string>
#include <string_view>

namespace liaison {

std::string JsonString(std::string_view s);

}  // namespace liaison
