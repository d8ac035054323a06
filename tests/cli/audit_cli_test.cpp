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
