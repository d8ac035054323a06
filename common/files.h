// Small file helpers with errors as values. Stateless; thread-safe.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "common/status.h"

namespace liaison {

// Reads a whole regular file, refusing files larger than max_bytes.
// open_flags are added to O_RDONLY | O_CLOEXEC (O_NOFOLLOW, O_NONBLOCK:
// a name that must not lead elsewhere, or that may be a FIFO).
Result<std::string> ReadFile(const std::string& path, size_t max_bytes, int open_flags = 0);

// Writes data so that after return the file exists with exactly this content
// even across a crash or power loss: temp file in the same directory, fsync,
// rename, fsync of the directory. mode is applied to the new file.
Status WriteFileAtomic(const std::string& path, std::string_view data, unsigned mode = 0644);

// Refuses a private key file that is readable or writable by group or others,
// or that is not a regular file.
Status CheckPrivateKeyFile(const std::string& path);

// Resolves path relative to the directory of base_file (absolute paths are
// returned unchanged).
std::string ResolveRelativeTo(const std::string& base_file, const std::string& path);

}  // namespace liaison
