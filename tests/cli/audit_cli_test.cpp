// liaison audit verify as a process, on export files made for the test.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "common/checkpoint.h"
#include "common/files.h"
#include "tests/common/audit_export_builder.h"
#include "tests/integration/process_support.h"

using namespace liaison;
using namespace liaison::test;

TEST_CASE("liaison audit verify checks the file it is given even when its name holds URI characters",
          "[cli][audit]") {
  TempDir dir;
  auto signer = audit::Signer::LoadOrCreate(dir.File("audit-signing.key"));
  REQUIRE(signer.ok());
  const std::string pub = dir.File("audit-signing.key.pub");
  BuildExport(dir.File("export.db"), 100, **signer, {100});
  std::string out, err;
  auto verify = [&](const std::string& db) {
    return Run({LIAISON_CLI_BIN, "audit", "verify", "--db", db, "--pubkey", pub}, dir.path(), &out, &err);
  };
  REQUIRE(verify(dir.File("export.db")) == 0);
  // Each of these names a file that is no database; the export beside it
  // is what a name cut at '#' or '?', or read with %-escapes, would open.
  for (const std::string name : {"export.db#1", "export.db?x=1", "export%2edb"}) {
    INFO(name);
    REQUIRE(WriteFileAtomic(dir.File(name), "this is not an audit export\n").ok());
    CHECK(verify(dir.File(name)) != 0);
    CHECK(out.find("OK") == std::string::npos);
  }
  // And such a name that is an export is verified.
  std::filesystem::copy_file(dir.File("export.db"), dir.File("copy #2?.db"));
  CHECK(verify(dir.File("copy #2?.db")) == 0);
}

TEST_CASE("liaison audit verify and prove refuse an export whose tables are views instead of running without end",
          "[cli][audit]") {
  TempDir dir;
  auto signer = audit::Signer::LoadOrCreate(dir.File("audit-signing.key"));
  REQUIRE(signer.ok());
  const std::string pub = dir.File("audit-signing.key.pub");
  const std::string db = dir.File("export.db");
  BuildExport(db, 100, **signer, {100});
  // A hostile export: a view with no end in place of a table. Sorting its
  // rows (ORDER BY) would read them for ever, spilling to temporary files.
  const std::string table = GENERATE(as<std::string>{}, "checkpoints", "audit_log");
  INFO(table);
  {
    sqlite3* h = nullptr;
    REQUIRE(sqlite3_open(db.c_str(), &h) == SQLITE_OK);
    const std::string columns = table == "checkpoints" ? "x AS tree_size, 'x' AS text"
                                                       : "x AS seq, x AS time_ms, zeroblob(32) AS leaf_hash";
    const std::string sql = "DROP TABLE " + table + "; CREATE VIEW " + table +
                            " AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT " + columns +
                            " FROM c;";
    CHECK(sqlite3_exec(h, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(h);
  }
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"audit", "verify", "--db", db, "--pubkey", pub},
           {"audit", "prove", "--db", db, "--from-size", "100", "--to-size", "100"}}) {
    std::vector<std::string> argv{LIAISON_CLI_BIN};
    argv.insert(argv.end(), args.begin(), args.end());
    Process p(argv, dir.path(), "verify");
    const int rc = p.Wait(std::chrono::seconds(20));
    INFO(args[1] << ": " << p.out() << p.err());
    CHECK(rc >= 1);
    CHECK(rc <= 2);
    CHECK(p.err().find("not a table") != std::string::npos);
  }
}
