#include "common/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace liaison {
namespace {

Status Errno(std::string_view what, const std::string& path) {
  return Status::IoError(std::string(what) + " " + path + ": " + std::strerror(errno));
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

Result<std::string> ReadFile(const std::string& path, size_t max_bytes, int open_flags) {
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC | open_flags)};
  if (f.fd < 0) return Errno("cannot open", path);
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return Errno("cannot stat", path);
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(path + " is not a regular file");
  if (static_cast<unsigned long long>(st.st_size) > max_bytes) {
    return Status::InvalidArgument(path + " is larger than " + std::to_string(max_bytes) + " bytes");
  }
  std::string out;
  out.resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::read(f.fd, out.data() + done, out.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("cannot read", path);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  return out;
}

Status WriteFileAtomic(const std::string& path, std::string_view data, unsigned mode) {
  const std::filesystem::path p(path);
  std::string dir = p.parent_path().string();
  if (dir.empty()) dir = ".";
  std::string tmp = dir + "/." + p.filename().string() + ".tmp-XXXXXX";
  Fd f{::mkstemp(tmp.data())};
  if (f.fd < 0) return Errno("cannot create temp file in", dir);
  auto fail = [&](std::string_view what) {
    Status s = Errno(what, tmp);
    ::unlink(tmp.c_str());
    return s;
  };
  if (::fchmod(f.fd, mode) != 0) return fail("cannot chmod");
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(f.fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("cannot write");
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(f.fd) != 0) return fail("cannot fsync");
  if (::close(f.fd) != 0) {
    f.fd = -1;
    return fail("cannot close");
  }
  f.fd = -1;
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("cannot rename");
  Fd d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.fd < 0) return Errno("cannot open directory", dir);
  if (::fsync(d.fd) != 0) return Errno("cannot fsync directory", dir);
  return Status::Ok();
}

Status CheckPrivateKeyFile(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return Errno("cannot stat private key", path);
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument("private key " + path + " is not a regular file");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Status::PermissionDenied("private key " + path + " has mode " + mode +
                                    "; it must not be accessible by group or others (chmod 600)");
  }
  return Status::Ok();
}

std::string ResolveRelativeTo(const std::string& base_file, const std::string& path) {
  if (path.empty() || path.front() == '/') return path;
  const auto dir = std::filesystem::path(base_file).parent_path();
  if (dir.empty()) return path;
  return (dir / path).lexically_normal().string();
}

}  // namespace liaison
