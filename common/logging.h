// Operator-readable logs on stderr through spdlog: one line per event,
// "2026-11-29T07:50:00.123Z info  session 12 police@127.0.0.1:40522: ...".
// Never log message bodies or secrets. spdlog's logger is thread-safe.
#pragma once

#include <string_view>

#include "common/status.h"

namespace liaison {

// level: trace, debug, info, warn, error, off. name prefixes every line.
Status SetupLogging(std::string_view level, std::string_view name);

}  // namespace liaison
