// Connection settings for command-line tools and the agency daemon: a YAML
// client config file (docs/cli.md), overridden by flags. Stateless.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "client/client.h"
#include "common/diagnostic.h"

namespace liaison::client {

// Settings given on the command line; empty means "not given".
struct ConnectionFlags {
  std::string config;       // --config FILE (or $LIAISON_CONFIG)
  std::string broker;       // --broker HOST:PORT
  std::string server_name;  // --server-name
  std::string cert, key, ca;
  std::vector<std::string> crls;  // --crl FILE (repeatable): revoked broker certificates
};

// Reads the file a config file path names (if any), applies flags, and
// checks that broker, certificate, key and CA are all known. Errors go to
// diags with file:line.
std::optional<ClientOptions> ResolveConnection(const ConnectionFlags& flags, Diagnostics* diags);

}  // namespace liaison::client
