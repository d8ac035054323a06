// liaison audit: the auditor's tools. query (remote, auditors only), verify
// and verify-proof (offline, read-only), prove (inclusion and consistency
// proofs), checkpoint, and export (a local administrator's copy of the whole audit log, or an
// auditor's scoped copy fetched over mutual TLS).
#include <cstdio>
#include <ctime>

#include "broker/store/store.h"
#include "client/audit_export.h"
#include "client/client.h"
#include "client/audit_verify.h"
#include "client/cli/commands.h"
#include "common/files.h"
#include "common/merkle.h"

namespace liaison::cli {
namespace {

struct AuditOptions {
  std::string db, pubkey, store, out, proof;
  std::vector<std::string> checkpoints;
  uint64_t seq = 0;
  bool remote = false;
  // query
  std::string from, to, agency, case_id, message_id, event, decision;
  uint32_t limit = 100;
  uint64_t page_token = 0;
  bool all = false, csv = false;
  bool quick_check = false;
  // prove: a consistency proof instead of an inclusion proof
  uint64_t from_size = 0, to_size = 0;
  std::string from_checkpoint;
};

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

// Unix milliseconds from "1764400000000" or RFC 3339: "2026-11-29",
// "2026-11-29T09:12:47Z", "2026-11-29T09:12:47.250+01:00".
Result<int64_t> ParseTimeMs(const std::string& text) {
  auto bad = [&] {
    return Status::InvalidArgument("'" + text + "' is neither Unix milliseconds nor an RFC 3339 time (2026-11-29T09:12:47Z)");
  };
  if (text.empty()) return bad();
  if (text.find_first_not_of("0123456789") == std::string::npos) {
    if (text.size() > 15) return bad();
    return static_cast<int64_t>(std::stoll(text));
  }
  auto digits = [&](size_t at, size_t n, int* out) {
    if (at + n > text.size()) return false;
    int v = 0;
    for (size_t i = at; i < at + n; ++i) {
      if (text[i] < '0' || text[i] > '9') return false;
      v = v * 10 + (text[i] - '0');
    }
    *out = v;
    return true;
  };
  int y, mo, d, h = 0, mi = 0, sec = 0, ms = 0;
  if (!digits(0, 4, &y) || text.size() < 10 || text[4] != '-' || !digits(5, 2, &mo) || text[7] != '-' ||
      !digits(8, 2, &d)) {
    return bad();
  }
  static const int kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > kDays[mo - 1] || (mo == 2 && d == 29 && !leap)) return bad();
  size_t at = 10;
  int64_t offset_min = 0;
  if (at < text.size()) {
    if ((text[at] != 'T' && text[at] != 't' && text[at] != ' ') || !digits(at + 1, 2, &h) || text[at + 3] != ':' ||
        !digits(at + 4, 2, &mi) || at + 6 >= text.size() || text[at + 6] != ':' || !digits(at + 7, 2, &sec)) {
      return bad();
    }
    at += 9;
    if (at < text.size() && text[at] == '.') {
      size_t n = 0;
      ++at;
      while (at < text.size() && text[at] >= '0' && text[at] <= '9') {
        if (n < 3) ms = ms * 10 + (text[at] - '0');
        ++n;
        ++at;
      }
      if (n == 0) return bad();
      for (; n < 3; ++n) ms *= 10;
    }
    if (at >= text.size()) return bad();  // a time needs its offset
    if (text[at] == 'Z' || text[at] == 'z') {
      ++at;
    } else if (text[at] == '+' || text[at] == '-') {
      int oh, om;
      if (!digits(at + 1, 2, &oh) || at + 3 >= text.size() || text[at + 3] != ':' || !digits(at + 4, 2, &om) ||
          oh > 23 || om > 59) {
        return bad();
      }
      offset_min = (text[at] == '+' ? 1 : -1) * (oh * 60 + om);
      at += 6;
    } else {
      return bad();
    }
    if (at != text.size() || h > 23 || mi > 59 || sec > 60) return bad();
  }
  const int64_t secs = DaysFromCivil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d)) * 86400 + h * 3600 +
                       mi * 60 + sec - offset_min * 60;
  if (secs < 0) return bad();
  return secs * 1000 + ms;
}

std::string IsoTime(int64_t ms) {
  const std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
  return buf;
}

std::string HashHex(const merkle::Hash& h) {
  return audit::Hex(std::string_view(reinterpret_cast<const char*>(h.data()), h.size()));
}

std::string CsvField(const std::string& v) {
  if (v.find_first_of(",\"\r\n") == std::string::npos) return v;
  std::string out = "\"";
  for (char c : v) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

// The columns of docs/auditing.md, section 1.1, in that order.
std::vector<std::pair<const char*, std::string>> Fields(const client::AuditRow& row) {
  const audit::Record& r = row.record;
  return {{"seq", std::to_string(r.seq)},
          {"time", IsoTime(r.time_ms)},
          {"time_ms", std::to_string(r.time_ms)},
          {"event", r.event},
          {"actor", r.actor},
          {"cert_sha256", r.cert_sha256},
          {"message_id", r.message_id},
          {"case_id", r.case_id},
          {"sender", r.sender},
          {"recipient", r.recipient},
          {"message_type", r.message_type},
          {"tlp", std::to_string(r.tlp)},
          {"purpose", r.purpose},
          {"decision", r.decision},
          {"rules", r.rules},
          {"policy_version", r.policy_version},
          {"obligations", r.obligations},
          {"body_hmac", r.body_hmac},
          {"detail", r.detail},
          {"leaf_hash", HashHex(row.leaf_hash)}};
}

std::string JsonRow(const client::AuditRow& row) {
  std::string out = "{";
  for (const auto& [k, v] : Fields(row)) {
    if (out.size() > 1) out += ",";
    out += JsonString(k) + ":";
    const bool number = std::string_view(k) == "seq" || std::string_view(k) == "time_ms" || std::string_view(k) == "tlp";
    out += number ? v : JsonString(v);
  }
  return out + "}";
}

// A table for people: the columns that say who shared what with whom.
void PrintTable(const std::vector<client::AuditRow>& rows) {
  static const char* kCols[] = {"seq", "time", "event", "actor", "sender", "recipient", "message_type",
                                "tlp", "purpose", "decision", "case_id", "message_id"};
  std::vector<std::vector<std::string>> cells;
  std::vector<size_t> width;
  for (const char* c : kCols) width.push_back(std::string_view(c).size());
  for (const auto& row : rows) {
    auto fields = Fields(row);
    std::vector<std::string> line;
    for (size_t i = 0; i < std::size(kCols); ++i) {
      for (const auto& [k, v] : fields) {
        if (std::string_view(k) == kCols[i]) line.push_back(v.substr(0, 48));
      }
      width[i] = std::max(width[i], line.back().size());
    }
    cells.push_back(std::move(line));
  }
  auto print = [&](const std::vector<std::string>& line) {
    std::string out;
    for (size_t i = 0; i < line.size(); ++i) {
      out += line[i];
      if (i + 1 < line.size()) out += std::string(width[i] - line[i].size() + 2, ' ');
    }
    std::puts(out.c_str());
  };
  print(std::vector<std::string>(std::begin(kCols), std::end(kCols)));
  for (const auto& line : cells) print(line);
}

int RunQuery(const CommonOptions& common, const AuditOptions& o) {
  if (common.json && o.csv) {
    std::fprintf(stderr, "liaison audit query: --json and --csv exclude each other\n");
    return kExitUsage;
  }
  client::AuditQuery q;
  for (auto [text, out, name] : {std::tuple{&o.from, &q.from_ms, "--from"}, std::tuple{&o.to, &q.to_ms, "--to"}}) {
    if (text->empty()) continue;
    auto ms = ParseTimeMs(*text);
    if (!ms.ok()) {
      std::fprintf(stderr, "liaison audit query: %s: %s\n", name, ms.status().message().c_str());
      return kExitUsage;
    }
    *out = *ms;
  }
  if (q.from_ms && q.to_ms && q.to_ms <= q.from_ms) {
    std::fprintf(stderr, "liaison audit query: --to must be after --from\n");
    return kExitUsage;
  }
  q.agency = o.agency;
  q.case_id = o.case_id;
  q.message_id = o.message_id;
  q.event = o.event;
  q.decision = o.decision;
  q.page_size = o.limit;
  q.page_token = o.page_token;
  auto options = ConnectionOrReport(common);
  if (!options) return kExitUsage;
  options->client_name = "liaison-cli/0.1 audit query";
  auto client = client::Client::Connect(*options);
  if (!client.ok()) return ReportConnectError(client.status());
  // The table aligns its columns over the rows it holds: with --all it is
  // printed every kTablePages pages (each with its header), so that a long
  // log is never held in memory whole.
  constexpr int kTablePages = 10;
  std::vector<client::AuditRow> table;
  int table_pages = 0;
  bool printed = false;
  bool header = false;
  int rc = kExitOk;
  for (;;) {
    client::AuditPage page = (*client)->QueryAudit(q);
    if (!page.status.ok()) {
      std::fprintf(stderr, "liaison audit query: %s\n", page.status.message().c_str());
      rc = page.error_code.empty() ? kExitConnection : page.error_code == "invalid_audit_request" ? kExitUsage
                                                                                                   : kExitRejected;
      break;
    }
    for (const auto& row : page.rows) {
      if (common.json) {
        std::puts(JsonRow(row).c_str());
      } else if (o.csv) {
        const auto fields = Fields(row);
        std::string line;
        if (!header) {
          for (const auto& [k, v] : fields) line += (line.empty() ? "" : ",") + std::string(k);
          std::puts(line.c_str());
          line.clear();
          header = true;
        }
        for (size_t i = 0; i < fields.size(); ++i) line += (i ? "," : "") + CsvField(fields[i].second);
        std::puts(line.c_str());
      } else {
        table.push_back(row);
      }
    }
    if (page.next_page_token == 0) break;
    if (o.all && !table.empty() && ++table_pages == kTablePages) {
      PrintTable(table);
      table.clear();
      table_pages = 0;
      printed = true;
    }
    if (!o.all) {
      std::fprintf(stderr, "more records: --page-token %llu\n", static_cast<unsigned long long>(page.next_page_token));
      break;
    }
    q.page_token = page.next_page_token;
  }
  if (rc == kExitOk && !common.json && !o.csv) {
    if (!table.empty()) {
      PrintTable(table);
    } else if (!printed) {
      std::fprintf(stderr, "no records\n");
    }
  }
  std::fflush(stdout);
  (*client)->Close();
  return CheckWitness(**client, rc);
}

int RunRemoteExport(const CommonOptions& common, const AuditOptions& o) {
  auto options = ConnectionOrReport(common);
  if (!options) return kExitUsage;
  options->client_name = "liaison-cli/0.1 audit export";
  auto client = client::Client::Connect(*options);
  if (!client.ok()) return ReportConnectError(client.status());
  client::RemoteExportReport report;
  Status s = client::ExportRemote(**client, o.out, &report, [&common](uint64_t done, uint64_t total) {
    if (!common.json && done % 100'000 == 0 && done > 0) {
      std::fprintf(stderr, "  %llu of %llu records\n", static_cast<unsigned long long>(done),
                   static_cast<unsigned long long>(total));
    }
  });
  (*client)->Close();
  if (int alarm = CheckWitness(**client, kExitOk); alarm != kExitOk) return alarm;
  if (!s.ok()) {
    std::fprintf(stderr, "liaison audit export: %s\n", s.message().c_str());
    if (s.IsInvalidArgument()) return kExitUsage;
    if (s.IsPermissionDenied()) return kExitRejected;
    return s.IsUnavailable() ? kExitConnection : kExitRejected;
  }
  if (common.json) {
    std::printf("{\"records\":%llu,\"hash_only\":%llu,\"checkpoints\":%llu,\"out\":%s}\n",
                static_cast<unsigned long long>(report.records), static_cast<unsigned long long>(report.hash_only),
                static_cast<unsigned long long>(report.checkpoints), JsonString(o.out).c_str());
  } else {
    std::printf("exported %llu record(s) to %s: %llu in full, %llu outside your audit scope as leaf hash only; "
                "%llu checkpoint(s) (no message bodies)\n",
                static_cast<unsigned long long>(report.records), o.out.c_str(),
                static_cast<unsigned long long>(report.records - report.hash_only),
                static_cast<unsigned long long>(report.hash_only), static_cast<unsigned long long>(report.checkpoints));
  }
  return kExitOk;
}

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
  v.quick_check = o.quick_check;
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
    std::printf("{\"ok\":%s,\"records\":%llu,\"hash_only\":%llu,\"checkpoints\":%llu,\"root\":\"%s\","
                "\"first_bad_seq\":%llu,\"error\":%s}\n",
                s.ok() ? "true" : "false", static_cast<unsigned long long>(report.records),
                static_cast<unsigned long long>(report.hash_only),
                static_cast<unsigned long long>(report.checkpoints_verified), root.c_str(),
                static_cast<unsigned long long>(report.first_bad_seq), JsonString(s.ok() ? "" : s.message()).c_str());
  } else if (s.ok()) {
    const std::string scoped =
        report.hash_only ? " (" + std::to_string(report.hash_only) + " outside the export's audit scope, by hash only)"
                         : std::string();
    std::printf("OK: %llu record(s)%s, %llu signed checkpoint(s) verified; root %s\n",
                static_cast<unsigned long long>(report.records), scoped.c_str(),
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

Result<audit::Checkpoint> ReadCheckpointFile(const std::string& path) {
  auto text = ReadFile(path, 64 * 1024);
  if (!text.ok()) return text.status();
  auto cp = audit::ParseCheckpoint(*text);
  if (!cp.ok()) return cp.status().Annotate(path);
  return cp;
}

int WriteProof(const AuditOptions& o, const std::string& text) {
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

// A consistency proof from the old checkpoint (--from-size: the export's;
// --from-checkpoint: a saved one) to the new one (--to-size: the export's;
// --checkpoint: a saved one; by default the export's newest).
int RunProveConsistency(const AuditOptions& o) {
  auto fail = [](const Status& s) {
    std::fprintf(stderr, "liaison audit prove: %s\n", s.message().c_str());
    return s.IsCorruption() ? kExitRefused : kExitUsage;
  };
  if (!o.from_checkpoint.empty() && o.from_size) {
    return fail(Status::InvalidArgument("give either --from-size or --from-checkpoint"));
  }
  if (!o.checkpoints.empty() && o.to_size) return fail(Status::InvalidArgument("give either --to-size or --checkpoint"));
  if (o.checkpoints.size() > 1) return fail(Status::InvalidArgument("give one --checkpoint (the new one)"));
  auto old_cp = o.from_size ? audit::StoredCheckpoint(o.db, o.from_size) : ReadCheckpointFile(o.from_checkpoint);
  if (!old_cp.ok()) return fail(old_cp.status().IsCorruption() ? old_cp.status() : old_cp.status().Annotate("--from"));
  auto new_cp = o.checkpoints.empty() ? audit::StoredCheckpoint(o.db, o.to_size) : ReadCheckpointFile(o.checkpoints[0]);
  if (!new_cp.ok()) return fail(new_cp.status());
  auto p = audit::ProveConsistency(o.db, *old_cp, *new_cp);
  if (!p.ok()) return fail(p.status());
  return WriteProof(o, audit::FormatConsistencyProof(*p));
}

int RunProve(const AuditOptions& o) {
  const bool consistency = o.from_size || !o.from_checkpoint.empty();
  if (consistency == (o.seq != 0)) {
    std::fprintf(stderr, "liaison audit prove: give --seq (an inclusion proof of one record), or --from-size or "
                         "--from-checkpoint (a consistency proof between two checkpoints)\n");
    return kExitUsage;
  }
  if (consistency) return RunProveConsistency(o);
  if (o.to_size) {
    std::fprintf(stderr, "liaison audit prove: --to-size is for consistency proofs; use --checkpoint with --seq\n");
    return kExitUsage;
  }
  audit::Checkpoint against;
  if (!o.checkpoints.empty()) {
    auto cp = ReadCheckpointFile(o.checkpoints.front());
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
  return WriteProof(o, audit::FormatInclusionProof(*p));
}

int RunVerifyProof(const CommonOptions& common, const AuditOptions& o) {
  auto pem = ReadFile(o.pubkey, 64 * 1024);
  auto text = ReadFile(o.proof, 1 << 20);
  if (!pem.ok() || !text.ok()) {
    std::fprintf(stderr, "liaison audit verify-proof: %s\n",
                 (!pem.ok() ? pem.status() : text.status()).message().c_str());
    return kExitUsage;
  }
  // Checkpoints the verifier holds itself: the proof must be about them.
  std::vector<audit::Checkpoint> held;
  for (const auto& path : o.checkpoints) {
    auto cp = ReadCheckpointFile(path);
    if (!cp.ok()) {
      std::fprintf(stderr, "liaison audit verify-proof: %s\n", cp.status().message().c_str());
      return kExitUsage;
    }
    held.push_back(*cp);
  }
  auto refuse = [&common](const Status& s) {
    if (common.json) {
      std::printf("{\"ok\":false,\"error\":%s}\n", JsonString(s.message()).c_str());
    } else {
      std::fprintf(stderr, "FAILED: %s\n", s.message().c_str());
    }
    return kExitRefused;
  };
  // Each held checkpoint must be one the proof is about (same log, size and root).
  auto check_held = [&held](const std::vector<const audit::Checkpoint*>& in_proof) {
    for (size_t i = 0; i < held.size(); ++i) {
      bool found = false;
      for (const audit::Checkpoint* c : in_proof) {
        found = found || (c->origin == held[i].origin && c->tree_size == held[i].tree_size && c->root == held[i].root);
      }
      if (!found) {
        return Status::Corruption("the proof is not about your checkpoint #" + std::to_string(i + 1) + " (tree size " +
                                  std::to_string(held[i].tree_size) + ", root " + HashHex(held[i].root) + ")");
      }
    }
    return Status::Ok();
  };
  if (audit::KindOfProof(*text) == audit::ProofKind::kConsistency) {
    auto p = audit::ParseConsistencyProof(*text);
    if (!p.ok()) {
      std::fprintf(stderr, "liaison audit verify-proof: %s\n", p.status().message().c_str());
      return kExitUsage;
    }
    Status s = audit::VerifyConsistencyProof(*p, *pem);
    if (s.ok()) s = check_held({&p->old_checkpoint, &p->new_checkpoint});
    if (!s.ok()) return refuse(s);
    const audit::Checkpoint& a = p->old_checkpoint;
    const audit::Checkpoint& b = p->new_checkpoint;
    if (common.json) {
      std::printf("{\"ok\":true,\"kind\":\"consistency\",\"origin\":%s,\"old_size\":%llu,\"old_root\":\"%s\","
                  "\"new_size\":%llu,\"new_root\":\"%s\",\"key_id\":%s}\n",
                  JsonString(a.origin).c_str(), static_cast<unsigned long long>(a.tree_size), HashHex(a.root).c_str(),
                  static_cast<unsigned long long>(b.tree_size), HashHex(b.root).c_str(), JsonString(b.key_id).c_str());
    } else {
      std::printf("OK: the log of %llu records extends the log of %llu records (%s), both checkpoints signed by key %s\n"
                  "  old root %s\n  new root %s\n",
                  static_cast<unsigned long long>(b.tree_size), static_cast<unsigned long long>(a.tree_size),
                  a.origin.c_str(), b.key_id.c_str(), HashHex(a.root).c_str(), HashHex(b.root).c_str());
    }
    return kExitOk;
  }
  auto p = audit::ParseInclusionProof(*text);
  if (!p.ok()) {
    std::fprintf(stderr, "liaison audit verify-proof: %s\n", p.status().message().c_str());
    return kExitUsage;
  }
  auto r = audit::VerifyInclusionProof(*p, *pem);
  if (!r.ok()) return refuse(r.status());
  if (Status s = check_held({&p->checkpoint}); !s.ok()) return refuse(s);
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

int RunExport(const CommonOptions& common, const AuditOptions& o) {
  if (o.remote == !o.store.empty()) {
    std::fprintf(stderr, "liaison audit export: give either --store (a local administrator's full export) or --remote "
                         "(an auditor's export over mutual TLS)\n");
    return kExitUsage;
  }
  if (o.remote) return RunRemoteExport(common, o);
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
  CLI::App* audit = app.add_subcommand("audit", "the auditor's tools: query, export and verify the tamper-evident audit log");
  audit->require_subcommand(1);
  CLI::App* verify = audit->add_subcommand(
      "verify", "verify an audit export offline: every record, the Merkle tree, every checkpoint signature");
  verify->add_option("--db", o->db, "audit export (SQLite)")->required()->check(CLI::ExistingFile);
  verify->add_option("--pubkey", o->pubkey, "the broker's audit public key (PEM)")->required()->check(CLI::ExistingFile);
  verify->add_option("--checkpoint", o->checkpoints,
                     "checkpoints saved earlier (by you or by an agency) that the log must be consistent with")
      ->check(CLI::ExistingFile);
  verify->add_flag("--quick-check", o->quick_check,
                   "also run SQLite's structural check over the whole file (free pages, other tables); slower");
  verify->callback([&common, o, exit_code] { *exit_code = RunVerify(common, *o); });
  CLI::App* prove = audit->add_subcommand(
      "prove", "an RFC 6962 inclusion proof of one record against a signed checkpoint, or a consistency proof "
               "between two signed checkpoints, from an export");
  prove->add_option("--db", o->db, "audit export (SQLite)")->required()->check(CLI::ExistingFile);
  prove->add_option("--seq", o->seq, "an inclusion proof of this record (its sequence number)")
      ->check(CLI::Range(uint64_t{1}, UINT64_MAX));
  prove->add_option("--from-size", o->from_size,
                    "a consistency proof from the export's checkpoint of this tree size")
      ->check(CLI::Range(uint64_t{1}, UINT64_MAX));
  prove->add_option("--from-checkpoint", o->from_checkpoint,
                    "a consistency proof from this saved checkpoint (e.g. an agency's witness file)")
      ->check(CLI::ExistingFile);
  prove->add_option("--to-size", o->to_size,
                    "consistency proof: to the export's checkpoint of this tree size (default: the newest)")
      ->check(CLI::Range(uint64_t{1}, UINT64_MAX));
  prove->add_option("--checkpoint", o->checkpoints,
                    "prove against this saved checkpoint (consistency proof: the new one; default: the newest in "
                    "the export)")
      ->check(CLI::ExistingFile);
  prove->add_option("--out", o->out, "write the proof here (default: stdout)");
  prove->callback([o, exit_code] { *exit_code = RunProve(*o); });
  CLI::App* vp = audit->add_subcommand(
      "verify-proof", "check an inclusion or consistency proof from the proof and the broker's public key alone");
  vp->add_option("--proof", o->proof, "proof file from 'liaison audit prove'")->required()->check(CLI::ExistingFile);
  vp->add_option("--pubkey", o->pubkey, "the broker's audit public key (PEM)")->required()->check(CLI::ExistingFile);
  vp->add_option("--checkpoint", o->checkpoints,
                 "a checkpoint you hold (e.g. your witness file) that the proof must be about; repeatable")
      ->check(CLI::ExistingFile);
  vp->callback([&common, o, exit_code] { *exit_code = RunVerifyProof(common, *o); });
  CLI::App* cp = audit->add_subcommand("checkpoint", "fetch the broker's newest signed audit checkpoint and save it");
  cp->add_option("--out", o->out, "file to save it in (the text form that verify --checkpoint reads)");
  cp->callback([&common, o, exit_code] { *exit_code = RunCheckpoint(common, *o); });
  CLI::App* exp = audit->add_subcommand(
      "export", "copy the audit log (and nothing else of the store) into a new SQLite file: the whole log from the "
                "store (local administrator), or your scoped view from the broker (--remote, auditors)");
  exp->add_option("--store", o->store, "the broker's store database")->check(CLI::ExistingFile);
  exp->add_flag("--remote", o->remote,
                "fetch over mutual TLS as an auditor: records in your scope in full, all others as leaf hash only");
  exp->add_option("--out", o->out, "new SQLite file to create")->required();
  exp->callback([&common, o, exit_code] { *exit_code = RunExport(common, *o); });
  CLI::App* query = audit->add_subcommand(
      "query", "auditors: query the broker's audit log over mutual TLS, within your audit scope (every query is "
               "itself recorded)");
  query->add_option("--from", o->from, "records at or after this time (RFC 3339, or Unix milliseconds)");
  query->add_option("--to", o->to, "records before this time (RFC 3339, or Unix milliseconds)");
  query->add_option("--agency", o->agency, "records with this agency as sender or recipient");
  query->add_option("--case", o->case_id, "records of this case id");
  query->add_option("--message", o->message_id, "records of this message id");
  query->add_option("--event", o->event, "records of this event (decision, delivered, ...)");
  query->add_option("--decision", o->decision, "records with this decision (permit, deny, refused:...)");
  query->add_option("--limit", o->limit, "records per page (1-1000, default 100)")->check(CLI::Range(1u, 1000u));
  query->add_option("--page-token", o->page_token, "continue after this record (printed when more records match)");
  query->add_flag("--all", o->all, "follow every page");
  query->add_flag("--csv", o->csv, "CSV with a header line instead of a table");
  query->callback([&common, o, exit_code] { *exit_code = RunQuery(common, *o); });
}

}  // namespace liaison::cli
