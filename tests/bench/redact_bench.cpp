// liaison-bench redact: the cost of one recipient's redacted copy of the
// e2e workload's message (IncidentTemplate, stamped and serialized as the
// broker stores it) under the workload's school rule (WorkloadPolicy:
// redact criminal_offence, special_category and persons.notes; pseudonymise
// identifying). Two ways: RedactCopy's walk over the bytes, as the broker
// makes copies, and RedactCopyByParsing, the definition it must equal
// (parse, ApplyObligations, the paths added to the envelope, serialize), as
// the broker made copies before. Each is timed over --copies copies, --rounds times; the medians
// are printed. Not a test: no figure is checked.
#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "common/diagnostic.h"
#include "policy/policy.h"
#include "policy/redact.h"
#include "proto/detail/pb.h"
#include "tests/bench/bench.h"
#include "tests/bench/harness.h"

namespace liaison::bench {
namespace {

struct Options {
  int copies = 20000;
  int rounds = 7;
  int size = 1024;
};

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int RunRedact(const Options& o) {
  Diagnostics diags;
  auto p = policy::Policy::LoadText(WorkloadPolicy("", 4, 1), "bench-policy.yaml", &diags);
  if (!p) {
    std::fprintf(stderr, "liaison-bench redact: the workload policy was refused:\n%s",
                 FormatDiagnostics(diags).c_str());
    return 1;
  }
  policy::Request q;
  const std::string sender = Agency(1), recipient = Agency(5);
  q.sender = sender;
  q.recipient = recipient;
  q.message_type = "incident_report";
  q.tlp = v1::TLP_AMBER;
  q.purpose = "safeguarding";
  const policy::Decision d = p->Evaluate(q);
  if (!d.permit) {
    std::fprintf(stderr, "liaison-bench redact: the workload policy does not permit %s -> %s\n", sender.c_str(),
                 recipient.c_str());
    return 1;
  }
  const auto obligations = p->SharedObligationsOf(d);
  const policy::PseudonymKey key{"bench-network", 1, std::string(32, 'k')};

  v1::Message m = IncidentTemplate(o.size);
  auto* env = m.mutable_envelope();
  env->set_sender(sender);
  env->add_recipients(recipient);
  *env->mutable_received_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
  const std::string wire = m.SerializeAsString();

  auto walked = policy::RedactCopy(wire, *obligations, &key);
  auto by_parsing = policy::RedactCopyByParsing(wire, *obligations, &key);
  const std::string parsed = by_parsing.ok() ? by_parsing->wire : std::string();
  if (!walked.ok() || walked->parsed || walked->wire != parsed) {
    std::fprintf(stderr, "liaison-bench redact: the walk %s\n",
                 !walked.ok() ? walked.status().ToString().c_str()
                              : (walked->parsed ? "did not take the message" : "gave other bytes than the definition"));
    return 1;
  }

  std::vector<double> walk_ns, parse_ns;
  size_t sink = 0;
  for (int r = 0; r < o.rounds; ++r) {
    auto t0 = Clock::now();
    for (int i = 0; i < o.copies; ++i) sink += policy::RedactCopy(wire, *obligations, &key)->wire.size();
    auto t1 = Clock::now();
    walk_ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / o.copies);
    t0 = Clock::now();
    for (int i = 0; i < o.copies; ++i) sink += policy::RedactCopyByParsing(wire, *obligations, &key)->wire.size();
    t1 = Clock::now();
    parse_ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / o.copies);
  }
  const double walk = Median(walk_ns), parse = Median(parse_ns);
  std::printf(
      "{\"bench\":\"redact\",\"bytes\":%zu,\"copy_bytes\":%zu,\"redacted_paths\":%zu,"
      "\"pseudonymised_paths\":%zu,\"walk_ns\":%.0f,\"parse_ns\":%.0f,\"speedup\":%.2f}\n",
      wire.size(), parsed.size(), walked->report.redacted_paths.size(), walked->report.pseudonymised_paths.size(), walk,
      parse, parse / walk);
  std::fflush(stdout);
  std::fprintf(stderr,
               "redact: a %zu-byte message, copy %zu bytes; per copy (median of %d rounds of %d): walk %.0f ns, "
               "parse %.0f ns  [sink %zu]\n",
               wire.size(), parsed.size(), o.rounds, o.copies, walk, parse, sink);
  return 0;
}

}  // namespace

void RegisterRedact(CLI::App& app, int* exit_code) {
  auto opts = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(
      "redact", "Time a recipient's redacted copy of the e2e workload's message: the walk and the parsing path");
  sub->add_option("--copies", opts->copies, "copies per round")->capture_default_str()->check(CLI::Range(1, 100000000));
  sub->add_option("--rounds", opts->rounds, "rounds (the median is reported)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  sub->add_option("--size", opts->size, "the message's serialized size in bytes")
      ->capture_default_str()
      ->check(CLI::Range(256, 1 << 20));
  sub->callback([opts, exit_code] { *exit_code = RunRedact(*opts); });
}

}  // namespace liaison::bench
