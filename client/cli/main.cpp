// liaison: the command-line tool agencies and auditors use (docs/cli.md).
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>

#include "client/cli/commands.h"

namespace liaison::cli {

namespace {

// A witness file that exists must hold a checkpoint: the client library
// would otherwise start over from whatever the broker shows now and
// overwrite it, dropping what was witnessed without a word.
Status CheckWitnessFile(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 && errno == ENOENT) {
    // A new one: the library keeps it without reporting a failure to write,
    // so a directory it cannot be written in is refused here.
    std::string dir = std::filesystem::path(path).parent_path().string();
    if (dir.empty()) dir = ".";
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec) || ::access(dir.c_str(), W_OK) != 0) {
      return Status::InvalidArgument("cannot create " + path + ": " + dir + " is no directory this user can write in");
    }
    return Status::Ok();
  }
  auto saved = client::LoadWitness(path);
  if (!saved.ok() && saved.status().IsCorruption()) {
    return Status::InvalidArgument(path + " is not a checkpoint (" + saved.status().message() +
                                   "); restore it, or remove it to start a new witness");
  }
  return saved.status();
}

}  // namespace

std::optional<client::ClientOptions> ConnectionOrReport(const CommonOptions& common) {
  if (!common.checkpoint_file.empty()) {
    if (Status s = CheckWitnessFile(common.checkpoint_file); !s.ok()) {
      std::fprintf(stderr, "liaison: --witness: %s\n", s.message().c_str());
      return std::nullopt;
    }
  }
  Diagnostics diags;
  auto o = client::ResolveConnection(common.connection, &diags);
  std::fputs(FormatDiagnostics(diags).c_str(), stderr);
  if (o) o->checkpoint_file = common.checkpoint_file;
  return o;
}

int CheckWitness(const client::Client& c, int rc) {
  Status w = c.witness_status();
  if (w.ok()) return rc;
  std::fprintf(stderr, "liaison: %s\n", w.message().c_str());
  return kExitAuditAlarm;
}

int ReportConnectError(const Status& s) {
  std::fprintf(stderr, "liaison: %s\n", s.message().c_str());
  return s.IsInvalidArgument() ? kExitUsage : kExitConnection;
}

}  // namespace liaison::cli

int main(int argc, char** argv) {
  using namespace liaison::cli;
  CLI::App app{"liaison: send and receive standardised case and incident messages through a Liaison broker"};
  app.require_subcommand(1);
  app.fallthrough();
  CommonOptions common;
  auto& c = common.connection;
  app.add_option("--config", c.config, "client config file (YAML; default $LIAISON_CONFIG)");
  app.add_option("--broker", c.broker, "broker address HOST:PORT");
  app.add_option("--server-name", c.server_name, "name the broker certificate must carry (default: HOST)");
  app.add_option("--cert", c.cert, "this agency's client certificate (PEM)");
  app.add_option("--key", c.key, "its private key (PEM, mode 0600)");
  app.add_option("--ca", c.ca, "CA bundle that issued the broker certificate (PEM)");
  app.add_option("--crl", c.crls, "CRL of that CA (PEM; repeatable): refuse a revoked broker certificate");
  app.add_flag("--json", common.json, "machine-readable output (JSON)");
  app.add_option("--witness", common.checkpoint_file,
                 "keep the newest audit checkpoint in FILE and raise an alarm (exit 6) if the broker's log "
                 "shrinks or is rewritten");
  app.set_version_flag("--version", "liaison 0.1.0");
  int exit_code = kExitOk;
  RegisterSend(app, common, &exit_code);
  RegisterReceive(app, common, &exit_code);
  RegisterRecall(app, common, &exit_code);
  RegisterAudit(app, common, &exit_code);
  RegisterPolicy(app, common, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  return exit_code;
}
