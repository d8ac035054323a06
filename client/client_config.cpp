#include "client/client_config.h"

#include <cstdlib>

#include "common/detail/yaml_util.h"
#include "common/files.h"
#include "common/host_port.h"

namespace liaison::client {

std::optional<ClientOptions> ResolveConnection(const ConnectionFlags& flags, Diagnostics* diags) {
  const size_t before = diags->size();
  ClientOptions o;
  std::string broker;
  std::string config = flags.config;
  if (config.empty()) {
    if (const char* env = std::getenv("LIAISON_CONFIG")) config = env;
  }
  if (!config.empty()) {
    auto root = yaml::LoadFile(config, 256 * 1024, diags);
    if (!root) return std::nullopt;
    yaml::Reader r(config, diags);
    if (r.ExpectMap(*root, "the client configuration",
                    {"broker", "server_name", "certificate", "private_key", "ca_bundle", "crl"})) {
      if (auto v = r.String(*root, "broker")) {
        broker = *v;
        if (!ParseHostPort(broker, &o.host, &o.port)) {
          r.Error((*root)["broker"], "'broker' must be HOST:PORT, not '" + broker + "'");
        }
      }
      if (auto v = r.String(*root, "server_name")) o.server_name = *v;
      if (auto v = r.String(*root, "certificate")) o.tls.certificate = ResolveRelativeTo(config, *v);
      if (auto v = r.String(*root, "private_key")) o.tls.private_key = ResolveRelativeTo(config, *v);
      if (auto v = r.String(*root, "ca_bundle")) o.tls.ca_bundle = ResolveRelativeTo(config, *v);
      if (auto v = r.StringList(*root, "crl")) {
        for (const auto& crl : *v) o.tls.crls.push_back(ResolveRelativeTo(config, crl));
      }
    }
  }
  auto flag_error = [&](const std::string& m) { diags->push_back({Diagnostic::Severity::kError, "command line", 0, 0, m}); };
  if (!flags.broker.empty()) {
    broker = flags.broker;
    if (!ParseHostPort(broker, &o.host, &o.port)) flag_error("--broker must be HOST:PORT, not '" + broker + "'");
  }
  if (!flags.server_name.empty()) o.server_name = flags.server_name;
  if (!flags.cert.empty()) o.tls.certificate = flags.cert;
  if (!flags.key.empty()) o.tls.private_key = flags.key;
  if (!flags.ca.empty()) o.tls.ca_bundle = flags.ca;
  if (!flags.crls.empty()) o.tls.crls = flags.crls;
  if (broker.empty()) flag_error("no broker address: give --broker HOST:PORT or 'broker:' in a --config file");
  if (o.tls.certificate.empty()) flag_error("no client certificate: give --cert FILE or 'certificate:' in --config");
  if (o.tls.private_key.empty()) flag_error("no private key: give --key FILE or 'private_key:' in --config");
  if (o.tls.ca_bundle.empty()) flag_error("no CA bundle: give --ca FILE or 'ca_bundle:' in --config");
  for (size_t i = before; i < diags->size(); ++i) {
    if ((*diags)[i].severity == Diagnostic::Severity::kError) return std::nullopt;
  }
  return o;
}

}  // namespace liaison::client
