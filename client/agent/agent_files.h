// File-system steps of the agency daemon that common/files.h does not
// have: directory fsync, rename, listing the outbox, the lock file.
// Errors are values. Stateless; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace liaison::agent {

// Makes the directory (and its parents) if missing, with mode for new ones.
Status EnsureDirectory(const std::string& dir, unsigned mode = 0750);
// Makes a rename or a new file in dir durable.
Status SyncDirectory(const std::string& dir);
// rename(2); the caller syncs both directories.
Status RenameFile(const std::string& from, const std::string& to);
bool FileExists(const std::string& path);

// Whether a name in the outbox is a message file to send: ends in .json or
// .pb, and is not hidden (".name") or temporary ("name.tmp", "name~"), so
// writers can create a file under such a name and rename it into place.
bool IsOutboxMessageName(const std::string& name);
// The outbox's message files (regular files only), sorted by name.
Result<std::vector<std::string>> ListOutbox(const std::string& dir);

struct OutboxFile {
  std::string data;
  // Which file this is, for IsClaimedFile: its device, inode and, where the
  // file system keeps it, the time the inode was born (the inode alone is
  // not enough: a file deleted and a new one written under its name often
  // get the same inode number), and the SHA-256 of its bytes.
  std::string id;
  int64_t mtime_ms = 0;  // last change, system clock
};
// Reads a file ListOutbox named, refusing one larger than max_bytes
// (InvalidArgument). NotFound if it is gone or is no longer a regular file
// (a symbolic link, a FIFO, ... renamed over it since the listing): never
// follows a link, never waits for a FIFO's writer. Unavailable if it
// changed while it was read (a writer still at work): read it again later.
Result<OutboxFile> ReadOutboxFile(const std::string& path, size_t max_bytes);
// Whether the regular file at path is the one whose OutboxFile::id is
// claimed_id: the same inode, or failing that (the outbox restored from a
// backup, or moved to another disk) the same bytes.
bool IsClaimedFile(const std::string& path, const std::string& claimed_id, size_t max_bytes);

// An exclusive lock on path (created if missing), held until the process
// exits: a second agent on the same state directory is refused. Returns
// the open descriptor.
Result<int> LockFile(const std::string& path);

}  // namespace liaison::agent
