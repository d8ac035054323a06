// The `liaison` command-line tool's subcommands (docs/cli.md). Each
// cmd_*.cpp registers one subcommand and sets the process exit code.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "client/client_config.h"
#include "common/json_string.h"

namespace liaison::cli {

// Exit codes shared by every subcommand (docs/cli.md).
enum ExitCode : int {
  kExitOk = 0,
  kExitRefused = 1,       // send: at least one recipient was refused
  kExitUsage = 2,         // bad flags, unreadable or invalid input
  kExitConnection = 3,    // cannot connect, TLS or identity refused, connection lost
  kExitRejected = 4,      // the broker rejected the request as a whole
  kExitTimeout = 5,       // receive: fewer messages than asked for within --wait
  kExitAuditAlarm = 6,    // the broker's audit checkpoint contradicts the witness file
};

struct CommonOptions {
  client::ConnectionFlags connection;
  bool json = false;
  std::string checkpoint_file;  // --witness FILE
};

void RegisterSend(CLI::App& app, CommonOptions& common, int* exit_code);
void RegisterReceive(CLI::App& app, CommonOptions& common, int* exit_code);
void RegisterRecall(CLI::App& app, CommonOptions& common, int* exit_code);
void RegisterAudit(CLI::App& app, CommonOptions& common, int* exit_code);
// Local policy tools (check, explain, test, matrix); no broker connection.
void RegisterPolicy(CLI::App& app, CommonOptions& common, int* exit_code);

// Resolves connection settings, printing every problem; nothing on error.
std::optional<client::ClientOptions> ConnectionOrReport(const CommonOptions& common);
// rc, or kExitAuditAlarm (after printing it) when the witness raised one.
int CheckWitness(const client::Client& c, int rc);
// Maps a connection failure to an exit code after printing it.
int ReportConnectError(const Status& s);

}  // namespace liaison::cli
