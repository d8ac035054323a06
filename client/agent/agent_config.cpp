#include "client/agent/agent_config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <vector>

#include "common/detail/yaml_util.h"
#include "common/files.h"
#include "common/host_port.h"

namespace liaison::agent {
namespace {

constexpr size_t kMaxConfigBytes = 256 * 1024;

// The directory itself if it exists, otherwise its nearest existing ancestor.
std::string ExistingAncestor(const std::string& dir) {
  std::filesystem::path p = std::filesystem::absolute(dir).lexically_normal();
  std::error_code ec;
  while (!std::filesystem::exists(p, ec) && p.has_parent_path() && p != p.parent_path()) p = p.parent_path();
  return p.string();
}

// A directory's path for comparing with others: absolute, normalized, and
// without the trailing separator that lexically_normal keeps ("outbox/" and
// "outbox/." are the directory "outbox").
std::string DirKey(const std::filesystem::path& dir) {
  std::filesystem::path p = dir.lexically_normal();
  if (!p.has_filename() && p.has_relative_path()) p = p.parent_path();
  return p.string();
}

void FileError(Diagnostics* diags, const std::string& file, const std::string& message) {
  diags->push_back({Diagnostic::Severity::kError, file, 0, 0, message});
}

}  // namespace

std::optional<AgentConfig> AgentConfig::Load(const std::string& path, Diagnostics* diags) {
  auto text = ReadFile(path, kMaxConfigBytes);
  if (!text.ok()) {
    FileError(diags, path, text.status().message());
    return std::nullopt;
  }
  return LoadText(*text, path, diags);
}

std::optional<AgentConfig> AgentConfig::LoadText(const std::string& text, const std::string& path, Diagnostics* diags) {
  const size_t before = diags->size();
  auto root = yaml::Parse(text, path, diags);
  if (!root) return std::nullopt;
  yaml::Reader r(path, diags);
  AgentConfig c;
  c.path = path;
  if (!r.ExpectMap(*root, "the agent configuration",
                   {"broker", "server_name", "certificate", "private_key", "ca_bundle", "crl", "outbox", "sent", "failed",
                    "inbox", "recalled", "state_dir", "hook", "credit", "want_reports", "max_in_flight",
                    "poll_interval_ms", "reconnect", "log_level", "witness_max_unproven_s"})) {
    return std::nullopt;
  }
  const YAML::Node& m = *root;
  auto file = [&](const char* key, bool required) -> std::string {
    auto v = r.String(m, key, required);
    return v ? ResolveRelativeTo(path, *v) : std::string();
  };
  if (auto v = r.String(m, "broker", true)) {
    if (!ParseHostPort(*v, &c.connection.host, &c.connection.port)) {
      r.Error(m["broker"], "'broker' must be HOST:PORT, not '" + *v + "'");
    }
  }
  if (auto v = r.String(m, "server_name")) c.connection.server_name = *v;
  c.connection.tls.certificate = file("certificate", true);
  c.connection.tls.private_key = file("private_key", true);
  c.connection.tls.ca_bundle = file("ca_bundle", true);
  if (auto v = r.StringList(m, "crl")) {
    for (const auto& crl : *v) c.connection.tls.crls.push_back(ResolveRelativeTo(path, crl));
  }

  c.outbox = file("outbox", true);
  c.inbox = file("inbox", true);
  c.state_dir = file("state_dir", true);
  c.sent = file("sent", false);
  c.failed = file("failed", false);
  c.recalled = file("recalled", false);
  auto sibling = [](const std::string& dir, const char* name) {
    if (dir.empty()) return std::string();
    const auto parent = std::filesystem::path(dir).lexically_normal().parent_path();
    return (parent.empty() ? std::filesystem::path(name) : parent / name).string();
  };
  if (c.sent.empty()) c.sent = sibling(c.outbox, "sent");
  if (c.failed.empty()) c.failed = sibling(c.outbox, "failed");
  if (c.recalled.empty()) c.recalled = sibling(c.inbox, "recalled");
  // Every directory has one job: a file moved "to sent/" must not land back
  // in the outbox, a received message must not be sent.
  {
    std::map<std::string, std::string> seen;
    const std::pair<const char*, std::string*> dirs[] = {{"outbox", &c.outbox},     {"sent", &c.sent},
                                                         {"failed", &c.failed},     {"inbox", &c.inbox},
                                                         {"recalled", &c.recalled}, {"state_dir", &c.state_dir}};
    for (const auto& [key, dir] : dirs) {
      if (dir->empty()) continue;
      const std::string norm = DirKey(std::filesystem::absolute(*dir));
      auto [it, fresh] = seen.emplace(norm, key);
      if (!fresh) {
        r.Error(m[key] ? m[key] : m, std::string("'") + key + "' is the same directory as '" + it->second + "' (" +
                                         norm + "); each directory must have its own");
      }
    }
  }

  if (const YAML::Node& h = m["hook"]; h) {
    HookConfig hook;
    if (r.ExpectMap(h, "'hook'", {"command", "max_attempts", "initial_backoff_ms", "max_backoff_ms", "timeout_ms"})) {
      if (auto cmd = r.StringList(h, "command", true)) {
        if (cmd->empty() || (*cmd)[0].empty()) {
          r.Error(h["command"], "'command' must name a program");
        } else {
          hook.command = *cmd;
          hook.command[0] = ResolveRelativeTo(path, hook.command[0]);
        }
      }
      if (auto v = r.Int(h, "max_attempts", 1, 1000)) hook.max_attempts = static_cast<int>(*v);
      if (auto v = r.Int(h, "initial_backoff_ms", 10, 86'400'000)) hook.initial_backoff = Millis(*v);
      if (auto v = r.Int(h, "max_backoff_ms", 10, 86'400'000)) hook.max_backoff = Millis(*v);
      if (auto v = r.Int(h, "timeout_ms", 100, 86'400'000)) hook.timeout = Millis(*v);
      if (hook.max_backoff < hook.initial_backoff) {
        r.Error(h["max_backoff_ms"] ? h["max_backoff_ms"] : h,
                "'max_backoff_ms' must not be smaller than 'initial_backoff_ms' (" +
                    std::to_string(hook.initial_backoff.count()) + ")");
      }
    }
    c.hook = std::move(hook);
  }
  if (auto v = r.Int(m, "credit", 1, 65536)) c.credit = static_cast<uint32_t>(*v);
  if (auto v = r.Bool(m, "want_reports")) c.want_reports = *v;
  if (auto v = r.Int(m, "max_in_flight", 1, 1024)) c.max_in_flight = static_cast<uint32_t>(*v);
  if (auto v = r.Int(m, "poll_interval_ms", 10, 3'600'000)) c.poll_interval = Millis(*v);
  if (const YAML::Node& rc = m["reconnect"]; rc) {
    if (r.ExpectMap(rc, "'reconnect'", {"initial_delay_ms", "max_delay_ms"})) {
      if (auto v = r.Int(rc, "initial_delay_ms", 10, 3'600'000)) c.reconnect_initial = Millis(*v);
      if (auto v = r.Int(rc, "max_delay_ms", 10, 3'600'000)) c.reconnect_max = Millis(*v);
      if (c.reconnect_max < c.reconnect_initial) {
        r.Error(rc["max_delay_ms"] ? rc["max_delay_ms"] : rc,
                "'max_delay_ms' must not be smaller than 'initial_delay_ms' (" +
                    std::to_string(c.reconnect_initial.count()) + ")");
      }
    }
  }
  if (auto v = r.String(m, "log_level")) {
    static const char* kLevels[] = {"trace", "debug", "info", "warn", "error", "off"};
    bool known = false;
    for (const char* l : kLevels) known |= *v == l;
    if (known) {
      c.log_level = *v;
    } else {
      r.Error(m["log_level"], "'log_level' must be trace, debug, info, warn, error or off, not '" + *v + "'");
    }
  }
  if (auto v = r.Int(m, "witness_max_unproven_s", 0, 366 * 86'400)) {
    c.connection.witness_max_unproven = std::chrono::seconds(*v);
  }
  c.connection.checkpoint_file = c.state_dir.empty() ? "" : c.state_dir + "/checkpoint.txt";
  for (size_t i = before; i < diags->size(); ++i) {
    if ((*diags)[i].severity == Diagnostic::Severity::kError) return std::nullopt;
  }
  return c;
}

void CheckAgentFiles(const AgentConfig& c, Diagnostics* diags) {
  auto readable = [&](const std::string& f, const char* what) {
    if (::access(f.c_str(), R_OK) != 0) FileError(diags, c.path, std::string(what) + " " + f + " cannot be read");
  };
  readable(c.connection.tls.certificate, "certificate");
  readable(c.connection.tls.ca_bundle, "ca_bundle");
  if (Status s = CheckPrivateKeyFile(c.connection.tls.private_key); !s.ok()) FileError(diags, c.path, s.message());
  if (c.hook) {
    const std::string& prog = c.hook->command[0];
    struct stat st {};
    if (::stat(prog.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || ::access(prog.c_str(), X_OK) != 0) {
      FileError(diags, c.path, "hook command " + prog + " is not an executable file");
    }
  }
  struct Dir {
    const char* key;
    const std::string& path;
  };
  const Dir dirs[] = {{"outbox", c.outbox}, {"sent", c.sent},         {"failed", c.failed},
                      {"inbox", c.inbox},   {"recalled", c.recalled}, {"state_dir", c.state_dir}};
  // One directory under two paths (a symbolic link, a bind mount): Load
  // compared the paths as written, this what they lead to. The staging
  // directory too, since the agent empties it at every start.
  {
    const std::string staging = c.inbox + "/" + kInboxStagingName;
    std::vector<std::pair<std::string, const std::string*>> roles = {{"the inbox's staging directory", &staging}};
    for (const auto& d : dirs) roles.emplace_back(std::string("'") + d.key + "'", &d.path);
    std::map<std::string, std::string> by_path;
    std::map<std::pair<dev_t, ino_t>, std::string> by_inode;
    for (const auto& [role, dir] : roles) {
      std::string other;
      std::error_code ec;
      const auto canonical = std::filesystem::weakly_canonical(std::filesystem::absolute(*dir), ec);
      if (!ec) {
        auto [it, fresh] = by_path.emplace(DirKey(canonical), role);
        if (!fresh) other = it->second;
      }
      struct stat st {};
      if (other.empty() && ::stat(dir->c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        auto [it, fresh] = by_inode.emplace(std::make_pair(st.st_dev, st.st_ino), role);
        if (!fresh) other = it->second;
      }
      if (!other.empty()) {
        FileError(diags, c.path,
                  role + " is the same directory as " + other + " (" + *dir + "); each directory must have its own");
      }
    }
  }
  std::map<std::string, dev_t> devices;
  for (const auto& d : dirs) {
    const std::string at = ExistingAncestor(d.path);
    struct stat st {};
    if (::stat(at.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      FileError(diags, c.path, std::string(d.key) + " " + d.path + ": " + at + " is not a directory");
      continue;
    }
    if (::access(at.c_str(), W_OK | X_OK) != 0) {
      FileError(diags, c.path,
                std::string(d.key) + " " + d.path + ": " + at +
                    (at == std::filesystem::absolute(d.path).lexically_normal().string()
                         ? " is not writable"
                         : " is not writable, so it cannot be created"));
      continue;
    }
    devices[d.key] = st.st_dev;
  }
  auto same_fs = [&](const char* a, const char* b) {
    if (devices.count(a) && devices.count(b) && devices[a] != devices[b]) {
      FileError(
          diags, c.path,
          std::string("'") + b + "' must be on the same file system as '" + a + "' (files are renamed between them)");
    }
  };
  same_fs("outbox", "sent");
  same_fs("outbox", "failed");
  same_fs("inbox", "recalled");
}

}  // namespace liaison::agent
