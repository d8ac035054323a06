// liaison-bench: performance benchmarks for Liaison (docs/benchmarks.md).
//   liaison-bench policy [--agencies N --groups N --rules N --decisions N --seed N]
//   liaison-bench audit [--records N --agencies N --cases N --queries N]
//   liaison-bench e2e [--publishers 4 --messages 50000 --size 1024 --window 256 --rate 2000 --duration 10]
//   liaison-bench flood [--publishers 4 --rate 2000 --duration 10 --flood-factor 10 --rate-limit 1000]
//   liaison-bench connections [--sessions 10000 --agencies 20]
//   liaison-bench redact [--copies 20000 --rounds 7 --size 1024]
#include "tests/bench/bench.h"

int main(int argc, char** argv) {
  CLI::App app{"liaison-bench: performance benchmarks for the Liaison broker (docs/benchmarks.md)"};
  app.require_subcommand(1);
  int exit_code = 0;
  liaison::bench::RegisterPolicy(app, &exit_code);
  liaison::bench::RegisterAudit(app, &exit_code);
  liaison::bench::RegisterE2e(app, &exit_code);
  liaison::bench::RegisterFlood(app, &exit_code);
  liaison::bench::RegisterConnections(app, &exit_code);
  liaison::bench::RegisterRedact(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return exit_code;
}
