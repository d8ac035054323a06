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
  std::string db, pubkey, store, out, proof;
  std::vector<std::string> checkpoints;
  uint64_t seq = 0;
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

int RunProve(const AuditOptions& o) {
  audit::Checkpoint against;
  if (!o.checkpoints.empty()) {
    auto text = ReadFile(o.checkpoints.front(), 64 * 1024);
    auto cp = text.ok() ? audit::ParseCheckpoint(*text) : Result<audit::Checkpoint>(text.status());
    if (!cp.ok()) {
      std::fprintf(stderr, "liaison audit prove: %s\n", cp.status().message().c_str());
      return kExitUsage;
    }
    against = *cp;
  }
  auto p = audit::ProveInclusion(o.db, o.seq, against);
  if (!p.ok()) {
    std::fprintf(stderr, "liaison audit prove: %s\n", p.status().message().c_str());
    return p.status().IsCorruption() ? kExitRefused : kExitUsage;
  }
  const std::string text = audit::FormatInclusionProof(*p);
  if (!o.out.empty()) {
    if (Status s = WriteFileAtomic(o.out, text, 0644); !s.ok()) {
      std::fprintf(stderr, "liaison audit prove: %s\n", s.message().c_str());
      return kExitUsage;
    }
  } else {
    std::fputs(text.c_str(), stdout);
  }
  return kExitOk;
}

int RunVerifyProof(const CommonOptions& common, const AuditOptions& o) {
  auto pem = ReadFile(o.pubkey, 64 * 1024);
  auto text = ReadFile(o.proof, 1 << 20);
  if (!pem.ok() || !text.ok()) {
    std::fprintf(stderr, "liaison audit verify-proof: %s\n",
                 (!pem.ok() ? pem.status() : text.status()).message().c_str());
    return kExitUsage;
  }
  auto p = audit::ParseInclusionProof(*text);
  if (!p.ok()) {
    std::fprintf(stderr, "liaison audit verify-proof: %s\n", p.status().message().c_str());
    return kExitUsage;
  }
  auto r = audit::VerifyInclusionProof(*p, *pem);
  if (!r.ok()) {
    if (common.json) {
      std::printf("{\"ok\":false,\"error\":%s}\n", JsonString(r.status().message()).c_str());
    } else {
      std::fprintf(stderr, "FAILED: %s\n", r.status().message().c_str());
    }
    return kExitRefused;
  }
  if (common.json) {
    std::printf("{\"ok\":true,\"seq\":%llu,\"tree_size\":%llu,\"event\":%s,\"sender\":%s,\"recipient\":%s,"
                "\"message_id\":%s,\"decision\":%s}\n",
                static_cast<unsigned long long>(r->seq), static_cast<unsigned long long>(p->checkpoint.tree_size),
                JsonString(r->event).c_str(), JsonString(r->sender).c_str(), JsonString(r->recipient).c_str(),
                JsonString(r->message_id).c_str(), JsonString(r->decision).c_str());
  } else {
    std::printf("OK: record %llu is in the log of %llu records signed by key %s\n"
                "  %s %s -> %s, message %s, %s, decision %s, rules %s\n",
                static_cast<unsigned long long>(r->seq), static_cast<unsigned long long>(p->checkpoint.tree_size),
                p->checkpoint.key_id.c_str(), r->event.c_str(), r->sender.c_str(), r->recipient.c_str(),
                r->message_id.c_str(), r->message_type.c_str(), r->decision.c_str(), r->rules.c_str());
  }
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
  CLI::App* prove = audit->add_subcommand(
      "prove", "an RFC 6962 inclusion proof of one record against a signed checkpoint, from an export");
  prove->add_option("--db", o->db, "audit export (SQLite)")->required()->check(CLI::ExistingFile);
  prove->add_option("--seq", o->seq, "the record's sequence number")->required()->check(CLI::Range(uint64_t{1}, UINT64_MAX));
  prove->add_option("--checkpoint", o->checkpoints, "prove against this saved checkpoint (default: the newest in the export)")
      ->check(CLI::ExistingFile);
  prove->add_option("--out", o->out, "write the proof here (default: stdout)");
  prove->callback([o, exit_code] { *exit_code = RunProve(*o); });
  CLI::App* vp = audit->add_subcommand(
      "verify-proof", "check an inclusion proof from the proof and the broker's public key alone");
  vp->add_option("--proof", o->proof, "proof file from 'liaison audit prove'")->required()->check(CLI::ExistingFile);
  vp->add_option("--pubkey", o->pubkey, "the broker's audit public key (PEM)")->required()->check(CLI::ExistingFile);
  vp->callback([&common, o, exit_code] { *exit_code = RunVerifyProof(common, *o); });
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
