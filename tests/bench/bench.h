// liaison-bench: one subcommand per benchmark. Each prints one JSON line to
// stdout (the figures) and a human-readable summary to stderr.
#pragma once

#include <CLI/CLI.hpp>

namespace liaison::bench {

// Exit codes: 0 measured; 1 the benchmark could not run (e.g. the
// generated input was refused); 2 (e2e, flood) it ran, but messages were
// lost, refused or misrouted; (connections) not every session opened and
// stayed open.
void RegisterPolicy(CLI::App& app, int* exit_code);
void RegisterAudit(CLI::App& app, int* exit_code);
void RegisterE2e(CLI::App& app, int* exit_code);
void RegisterFlood(CLI::App& app, int* exit_code);
void RegisterConnections(CLI::App& app, int* exit_code);
void RegisterRedact(CLI::App& app, int* exit_code);

}  // namespace liaison::bench
