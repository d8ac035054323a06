#include "broker/config.h"

#include <arpa/inet.h>

#include "common/detail/yaml_util.h"
#include "common/files.h"
#include "common/host_port.h"

namespace liaison::broker {
namespace {

constexpr size_t kMaxConfigBytes = 1024 * 1024;

}  // namespace

std::optional<BrokerConfig> BrokerConfig::Load(const std::string& path, Diagnostics* diags) {
  auto text = ReadFile(path, kMaxConfigBytes);
  if (!text.ok()) {
    diags->push_back({Diagnostic::Severity::kError, path, 0, 0, text.status().message()});
    return std::nullopt;
  }
  return LoadText(*text, path, diags);
}

std::optional<BrokerConfig> BrokerConfig::LoadText(const std::string& text, const std::string& path,
                                                   Diagnostics* diags) {
  const size_t before = diags->size();
  auto root = yaml::Parse(text, path, diags);
  if (!root) return std::nullopt;
  yaml::Reader r(path, diags);
  BrokerConfig c;
  c.path = path;
  if (!r.ExpectMap(*root, "the broker configuration",
                   {"name", "listen", "threads", "log_level", "policy", "keys_dir", "data_dir", "admin_socket", "tls", "limits",
                    "audit"})) {
    return std::nullopt;
  }
  if (auto v = r.String(*root, "name")) c.name = *v;
  if (auto v = r.String(*root, "listen", true)) {
    in6_addr scratch{};
    if (!ParseHostPort(*v, &c.listen_host, &c.listen_port, /*allow_zero=*/true)) {
      r.Error((*root)["listen"], "'listen' must be HOST:PORT, e.g. 127.0.0.1:7443 or [::1]:7443, not '" + *v + "'");
    } else if (inet_pton(AF_INET, c.listen_host.c_str(), &scratch) != 1 &&
               inet_pton(AF_INET6, c.listen_host.c_str(), &scratch) != 1) {
      r.Error((*root)["listen"], "'listen' needs an IP address (0.0.0.0 for every interface), not the name '" +
                                     c.listen_host + "'");
    }
  }
  if (auto v = r.Int(*root, "threads", 0, 64)) c.threads = static_cast<int>(*v);
  if (auto v = r.String(*root, "log_level")) {
    if (*v != "trace" && *v != "debug" && *v != "info" && *v != "warn" && *v != "error" && *v != "off") {
      r.Error((*root)["log_level"], "'log_level' must be one of trace, debug, info, warn, error, off");
    }
    c.log_level = *v;
  }
  if (auto v = r.String(*root, "policy", true)) c.policy_path = ResolveRelativeTo(path, *v);
  c.keys_dir = ResolveRelativeTo(path, r.String(*root, "keys_dir").value_or("keys"));
  c.data_dir = ResolveRelativeTo(path, r.String(*root, "data_dir").value_or("data"));
  if (auto v = r.String(*root, "admin_socket")) {
    c.admin_socket = ResolveRelativeTo(path, *v);
    if (c.admin_socket.size() >= 100) r.Error((*root)["admin_socket"], "'admin_socket' path is too long for a Unix socket");
  }

  const YAML::Node tls = (*root)["tls"];
  if (!tls.IsDefined() || tls.IsNull()) {
    r.Error(*root, "missing required key 'tls'");
  } else if (r.ExpectMap(tls, "'tls'", {"certificate", "private_key", "ca_bundle", "crl"})) {
    if (auto v = r.String(tls, "certificate", true)) c.tls.certificate = ResolveRelativeTo(path, *v);
    if (auto v = r.String(tls, "private_key", true)) c.tls.private_key = ResolveRelativeTo(path, *v);
    if (auto v = r.String(tls, "ca_bundle", true)) c.tls.ca_bundle = ResolveRelativeTo(path, *v);
    if (auto v = r.StringList(tls, "crl")) {
      for (const auto& crl : *v) c.tls.crls.push_back(ResolveRelativeTo(path, crl));
    }
  }

  const YAML::Node limits = (*root)["limits"];
  if (limits.IsDefined() && !limits.IsNull() &&
      r.ExpectMap(limits, "'limits'",
                  {"max_frame_bytes", "max_recipients", "default_credit", "max_credit", "max_backlog",
                   "max_in_flight_publishes", "max_queued_bytes", "max_connections", "handshake_timeout_ms",
                   "idle_timeout_ms", "ping_interval_ms", "write_timeout_ms", "delivery_timeout_ms",
                   "shutdown_grace_ms", "refusal_audit_interval_ms", "max_retention_s", "max_handshakes_per_source",
                   "handshake_rate_per_source", "handshake_burst_per_source",
                   "max_connections_per_agency", "publish_rate_per_agency", "publish_burst_per_agency",
                   "publish_bytes_per_agency", "publish_bytes_burst_per_agency",
                   "max_audit_requests_per_agency", "queue_report_interval_s"})) {
    Limits& l = c.limits;
    auto u32 = [&](const char* key, uint32_t* out, int64_t min, int64_t max) {
      if (auto v = r.Int(limits, key, min, max)) *out = static_cast<uint32_t>(*v);
    };
    auto u64 = [&](const char* key, uint64_t* out, int64_t min, int64_t max) {
      if (auto v = r.Int(limits, key, min, max)) *out = static_cast<uint64_t>(*v);
    };
    auto ms = [&](const char* key, Millis* out, int64_t min, int64_t max) {
      if (auto v = r.Int(limits, key, min, max)) *out = Millis(*v);
    };
    u32("max_frame_bytes", &l.max_frame_bytes, 1024, 64 * 1024 * 1024);
    u32("max_recipients", &l.max_recipients, 1, 10000);
    u32("default_credit", &l.default_credit, 1, 65536);
    u32("max_credit", &l.max_credit, 1, 65536);
    u32("max_backlog", &l.max_backlog, 1, 1000000);
    u32("max_in_flight_publishes", &l.max_in_flight_publishes, 1, 1000000);
    u32("max_connections", &l.max_connections, 1, 1000000);
    u32("max_handshakes_per_source", &l.max_handshakes_per_source, 1, 1000000);
    u32("handshake_rate_per_source", &l.handshake_rate_per_source, 0, 1000000);
    u32("handshake_burst_per_source", &l.handshake_burst_per_source, 1, 10000000);
    u32("max_connections_per_agency", &l.max_connections_per_agency, 1, 1000000);
    u32("publish_rate_per_agency", &l.publish_rate_per_agency, 0, 10000000);
    u32("publish_burst_per_agency", &l.publish_burst_per_agency, 1, 10000000);
    u32("max_audit_requests_per_agency", &l.max_audit_requests_per_agency, 1, 1024);
    u64("max_queued_bytes", &l.max_queued_bytes, 64 * 1024, int64_t{1} << 34);
    u64("publish_bytes_per_agency", &l.publish_bytes_per_agency, 0, int64_t{1} << 40);
    u64("publish_bytes_burst_per_agency", &l.publish_bytes_burst_per_agency, 1024, int64_t{1} << 40);
    ms("handshake_timeout_ms", &l.handshake_timeout, 50, 600'000);
    ms("idle_timeout_ms", &l.idle_timeout, 100, 86'400'000);
    ms("ping_interval_ms", &l.ping_interval, 50, 86'400'000);
    ms("write_timeout_ms", &l.write_timeout, 50, 600'000);
    ms("delivery_timeout_ms", &l.delivery_timeout, 50, 86'400'000);
    ms("shutdown_grace_ms", &l.shutdown_grace, 0, 600'000);
    ms("refusal_audit_interval_ms", &l.refusal_audit_interval, 100, 86'400'000);
    if (auto v = r.Int(limits, "max_retention_s", 1, int64_t{10} * 366 * 86'400)) l.max_retention = Millis(*v * 1000);
    if (auto v = r.Int(limits, "queue_report_interval_s", 0, 7 * 86'400)) l.queue_report_interval = Millis(*v * 1000);
    if (l.default_credit > l.max_credit) r.Error(limits, "'default_credit' must not exceed 'max_credit'");
    if (l.ping_interval >= l.idle_timeout) {
      r.Error(limits, "'ping_interval_ms' must be shorter than 'idle_timeout_ms', or idle peers are closed unpinged");
    }
    if (l.max_queued_bytes < uint64_t{l.max_frame_bytes} + 4) {
      r.Error(limits, "'max_queued_bytes' must hold at least one frame of 'max_frame_bytes'");
    }
    if (l.publish_bytes_per_agency != 0 && l.publish_bytes_burst_per_agency < l.max_frame_bytes) {
      r.Error(limits, "'publish_bytes_burst_per_agency' must allow at least one frame of 'max_frame_bytes'");
    }
  }
  const YAML::Node audit = (*root)["audit"];
  if (audit.IsDefined() && !audit.IsNull() && r.ExpectMap(audit, "'audit'", {"retention_days"})) {
    // Up to 100 years; at least a day, so that a slip cannot prune the
    // records of what is happening now.
    if (auto v = r.Int(audit, "retention_days", 1, 36'600)) c.audit.retention_days = static_cast<uint32_t>(*v);
  }
  for (size_t i = before; i < diags->size(); ++i) {
    if ((*diags)[i].severity == Diagnostic::Severity::kError) return std::nullopt;
  }
  return c;
}

}  // namespace liaison::broker
