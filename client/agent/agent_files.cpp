#include "client/agent/agent_files.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/files.h"
#include "common/sha256.h"

namespace liaison::agent {
namespace {

Status Errno(const std::string& what) {
  return Status::IoError(what + ": " + std::strerror(errno));
}

bool EndsWith(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

}  // namespace

Status EnsureDirectory(const std::string& dir, unsigned mode) {
  std::error_code ec;
  if (std::filesystem::is_directory(dir, ec)) return Status::Ok();
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::IoError("cannot create directory " + dir + ": " + ec.message());
  if (::chmod(dir.c_str(), mode) != 0) return Errno("cannot chmod " + dir);
  const auto parent = std::filesystem::path(dir).lexically_normal().parent_path();
  return SyncDirectory(parent.empty() ? "." : parent.string());
}

Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open directory " + dir);
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  errno = saved;
  if (rc != 0) return Errno("cannot fsync directory " + dir);
  return Status::Ok();
}

Status RenameFile(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) return Errno("cannot move " + from + " to " + to);
  return Status::Ok();
}

bool FileExists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

bool IsOutboxMessageName(const std::string& name) {
  if (name.empty() || name[0] == '.') return false;
  if (EndsWith(name, ".tmp") || EndsWith(name, "~")) return false;
  return (EndsWith(name, ".json") && name.size() > 5) || (EndsWith(name, ".pb") && name.size() > 3);
}

Result<std::vector<std::string>> ListOutbox(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return Errno("cannot read directory " + dir);
  std::vector<std::string> out;
  errno = 0;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (!IsOutboxMessageName(name)) continue;
    struct stat st {};
    if (::lstat((dir + "/" + name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    out.push_back(name);
  }
  const int saved = errno;
  ::closedir(d);
  if (saved != 0) {
    errno = saved;
    return Errno("cannot read directory " + dir);
  }
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

struct Seen {
  std::string id;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
};

// NotFound unless path is (not leads to) a regular file.
Result<Seen> Look(const std::string& path) {
  struct statx st {};
  if (::statx(AT_FDCWD, path.c_str(), AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_BTIME, &st) != 0 ||
      !S_ISREG(st.stx_mode)) {
    return Status::NotFound(path + " is gone or is not a regular file");
  }
  Seen s;
  s.id = std::to_string(::makedev(st.stx_dev_major, st.stx_dev_minor)) + ":" + std::to_string(st.stx_ino);
  if (st.stx_mask & STATX_BTIME) {
    s.id += ":" + std::to_string(st.stx_btime.tv_sec) + "." + std::to_string(st.stx_btime.tv_nsec);
  }
  s.size = st.stx_size;
  s.mtime_ns = st.stx_mtime.tv_sec * int64_t{1'000'000'000} + st.stx_mtime.tv_nsec;
  return s;
}

std::string Digest(const std::string& data) {
  const crypto::Digest d = crypto::Sha256(data);
  return crypto::Hex(d.data(), d.size());
}

}  // namespace

bool IsClaimedFile(const std::string& path, const std::string& claimed_id, size_t max_bytes) {
  const auto space = claimed_id.rfind(' ');
  if (space == std::string::npos) return false;
  auto seen = Look(path);
  if (!seen.ok()) return false;
  if (seen->id == claimed_id.substr(0, space)) return true;
  auto data = ReadFile(path, max_bytes, O_NOFOLLOW | O_NONBLOCK);
  return data.ok() && Digest(*data) == claimed_id.substr(space + 1);
}

Result<OutboxFile> ReadOutboxFile(const std::string& path, size_t max_bytes) {
  auto before = Look(path);
  if (!before.ok()) return before.status();
  // O_NOFOLLOW: the name is opened as listed, not what a link leads to;
  // O_NONBLOCK: open(2) of a FIFO would wait for a writer.
  auto data = ReadFile(path, max_bytes, O_NOFOLLOW | O_NONBLOCK);
  auto after = Look(path);
  if (!after.ok()) return after.status();
  if (!data.ok()) return data.status();
  // Another file under the name now, or this one written to while it was
  // read (a writer still at work): what was read may be half of it.
  if (after->id != before->id || after->size != before->size || after->mtime_ns != before->mtime_ns ||
      data->size() != after->size) {
    return Status::Unavailable(path + " changed while it was read");
  }
  OutboxFile f;
  f.data = std::move(data).value();
  f.id = after->id + " " + Digest(f.data);
  f.mtime_ms = after->mtime_ns / 1'000'000;
  return f;
}

Result<int> LockFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("cannot open lock file " + path);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int saved = errno;
    ::close(fd);
    if (saved == EWOULDBLOCK) {
      return Status::Unavailable("another liaison-agent is running with this state directory (" + path + " is locked)");
    }
    errno = saved;
    return Errno("cannot lock " + path);
  }
  return fd;
}

}  // namespace liaison::agent
