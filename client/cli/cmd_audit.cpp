// liaison audit: the auditor's tools. verify (offline, read-only) and export
// (a local administrator's copy of the audit log, without anything else of
// the store).
#include <cstdio>

#include "broker/store/store.h"
#include "client/client.h"
#include "client/audit_verify.h"
#include "client/cli/commands.h"
#include "common/files.h"

namespace liaison::cli {
namespace {

struct AuditOptions {
  std::string db, pubkey, store, out;
  std::vector<std::string> checkpoints;
};

int RunVerify(const CommonOptions& common, const AuditOptions& o) {
  auto pem = ReadFile(o.pubkey, 64 * 1024);
  if (!pem.ok()) {
    std::fprintf(stderr, "liaison audit verify: %s\n", pem.status().message().c_str());
    return kExitUsage;
  }
  audit::VerifyOptions v;
  v.db_path = o.db;
  v.public_key_pem = *pem;
  for (const auto& path : o.checkpoints) {
    auto text = ReadFile(path, 64 * 1024);
    auto cp = text.ok() ? audit::ParseCheckpoint(*text) : Result<audit::Checkpoint>(text.status());
    if (!cp.ok()) {
      std::fprintf(stderr, "liaison audit verify: %s: %s\n", path.c_str(), cp.status().message().c_str());
      return kExitUsage;
    }
    v.saved.push_back(*cp);
  }
  if (!common.json) {
    v.progress = [](uint64_t done, uint64_t total) {
      std::fprintf(stderr, "  %llu of %llu records verified\n", static_cast<unsigned long long>(done),
                   static_cast<unsigned long long>(total));
    };
  }
  audit::VerifyReport report;
  Status s = audit::VerifyAuditLog(v, &report);
  const std::string root = audit::Hex(std::string_view(reinterpret_cast<const char*>(report.root.data()), 32));
  if (common.json) {
    std::printf("{\"ok\":%s,\"records\":%llu,\"checkpoints\":%llu,\"root\":\"%s\",\"first_bad_seq\":%llu,"
                "\"error\":%s}\n",
                s.ok() ? "true" : "false", static_cast<unsigned long long>(report.records),
                static_cast<unsigned long long>(report.checkpoints_verified), root.c_str(),
                static_cast<unsigned long long>(report.first_bad_seq), JsonString(s.ok() ? "" : s.message()).c_str());
  } else if (s.ok()) {
    std::printf("OK: %llu record(s), %llu signed checkpoint(s) verified; root %s\n",
                static_cast<unsigned long long>(report.records),
                static_cast<unsigned long long>(report.checkpoints_verified), root.c_str());
  } else {
    std::fprintf(stderr, "FAILED: %s\n", s.message().c_str());
  }
  return s.ok() ? kExitOk : kExitRefused;
}

// Fetches the broker's newest signed checkpoint (from its Welcome) and
// saves it, so it can later prove the log was not cut short or rewritten.
int RunCheckpoint(const CommonOptions& common, const AuditOptions& o) {
  auto options = ConnectionOrReport(common);
  if (!options) return kExitUsage;
  options->client_name = "liaison-cli/0.1 audit checkpoint";
  auto client = client::Client::Connect(*options);
  if (!client.ok()) return ReportConnectError(client.status());
  const audit::Checkpoint cp = (*client)->session().checkpoint;
  (*client)->Close();
  if (int alarm = CheckWitness(**client, kExitOk); alarm != kExitOk) return alarm;
  const std::string text = audit::FormatCheckpoint(cp);
  if (!o.out.empty()) {
    if (Status s = WriteFileAtomic(o.out, text, 0644); !s.ok()) {
      std::fprintf(stderr, "liaison audit checkpoint: %s\n", s.message().c_str());
      return kExitUsage;
    }
  }
  std::fputs(text.c_str(), stdout);
  return kExitOk;
}

int RunExport(const AuditOptions& o) {
  Status s = broker::Store::ExportAudit(o.store, o.out);
  if (!s.ok()) {
    std::fprintf(stderr, "liaison audit export: %s\n", s.message().c_str());
    return kExitUsage;
  }
  std::printf("exported the audit log of %s to %s (no message bodies)\n", o.store.c_str(), o.out.c_str());
  return kExitOk;
}

}  // namespace

void RegisterAudit(CLI::App& app, CommonOptions& common, int* exit_code) {
  auto o = std::make_shared<AuditOptions>();
  CLI::App* audit = app.add_subcommand("audit", "the auditor's tools: verify and export the tamper-evident audit log");
  audit->require_subcommand(1);
  CLI::App* verify = audit->add_subcommand(
      "verify", "verify an audit export offline: every record, the Merkle tree, every checkpoint signature");
  verify->add_option("--db", o->db, "audit export (SQLite)")->required()->check(CLI::ExistingFile);
  verify->add_option("--pubkey", o->pubkey, "the broker's audit public key (PEM)")->required()->check(CLI::ExistingFile);
  verify->add_option("--checkpoint", o->checkpoints,
                     "checkpoints saved earlier (by you or by an agency) that the log must be consistent with")
      ->check(CLI::ExistingFile);
  verify->callback([&common, o, exit_code] { *exit_code = RunVerify(common, *o); });
  CLI::App* cp = audit->add_subcommand("checkpoint", "fetch the broker's newest signed audit checkpoint and save it");
  cp->add_option("--out", o->out, "file to save it in (the text form that verify --checkpoint reads)");
  cp->callback([&common, o, exit_code] { *exit_code = RunCheckpoint(common, *o); });
  CLI::App* exp = audit->add_subcommand(
      "export", "local administrator: copy the audit log (and nothing else of the store) into a new SQLite file");
  exp->add_option("--store", o->store, "the broker's store database")->required()->check(CLI::ExistingFile);
  exp->add_option("--out", o->out, "new SQLite file to create")->required();
  exp->callback([o, exit_code] { *exit_code = RunExport(*o); });
}

}  // namespace liaison::cli
