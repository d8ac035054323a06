// liaison-bench e2e: the end-to-end benchmark (docs/benchmarks.md).
//
// Starts a real liaison-broker process (mutual TLS, the policy engine with
// a redaction obligation, the audit log, SQLite WAL synchronous=FULL) on a
// dev PKI in a temporary directory, and runs the workload of
// ../shared/peerbench against it with the real client library:
//
//   throughput  P publishers (a01..) each send M incident reports of about
//               SIZE bytes to one receiver (publisher i -> receiver P+i), at
//               most WINDOW unacknowledged publishes each; receivers connect
//               first and acknowledge every delivery on receipt.
//               msgs/s = received / (last receive - start).
//   latency     RATE msgs/s in total, paced open-loop for DURATION s; the
//               latency of a message runs from its *scheduled* send time
//               (steady clock) to its receipt; the first WARMUP s are not
//               counted.
//
// Every message is accounted for by (run, publisher, sequence), which are
// encoded in its message id (a valid UUID), so lost, duplicate and
// misrouted messages are counted as peerbench counts them.
//
// With perf available, the broker is sampled during the throughput phase
// and its CPU is split into stages (TLS, protobuf, policy and redaction,
// store, hashing, ...) by the sampled function and library; fsync and
// fdatasync calls are counted with perf's syscall tracepoints.
//
// The broker, its PKI and configuration, and the workload are the harness
// shared with flood and connections (harness.h).
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/bench/bench.h"
#include "tests/bench/harness.h"

namespace liaison::bench {
namespace {

namespace fs = std::filesystem;

struct Options {
  int publishers = 4;
  long messages = 50'000;  // per publisher, throughput phase
  int size = 1024;         // serialized message bytes (approximately)
  int window = 256;        // unacknowledged publishes per publisher; also the receivers' credit
  double rate = 2000;      // latency phase, msgs/s in total
  double duration = 10;    // latency phase, seconds
  double warmup = 1;       // latency phase, seconds not counted
  double timeout = 120;    // per phase
  int redacted = 1;        // receivers whose rule carries a redaction/pseudonymisation obligation
  int broker_threads = 2;
  std::string broker;            // liaison-broker binary
  std::string pki;               // existing dev PKI (certs/dev-pki.sh) with a01..; default: make one
  std::string pki_script;        // certs/dev-pki.sh
  std::string profile = "auto";  // perf | none | auto (perf if it works)
  int perf_freq = 499;
  bool keep = false;  // keep the temporary directory
  std::string trace;  // latency phase: per-message CSV
  bool skip_latency = false;
  bool skip_throughput = false;
};

// Bytes written a message received, over a phase: what the broker passed
// to write calls on its files (the commit log, its spare segments, SQLite's
// WAL and files, the audit index), and what reached the data directory's
// disk meanwhile (page-rounded, with the filesystem's metadata, and
// whatever else wrote to that disk).
std::string WriteBytesJson(const std::string& prefix, const CpuMeter::Reading& c, long received) {
  std::string out;
  if (received <= 0) return out;
  const double n = static_cast<double>(received);
  if (c.broker_file_bytes >= 0) {
    out += ",\"" + prefix + "file_bytes_per_msg\":" + Fmt(static_cast<double>(c.broker_file_bytes) / n, 0);
  }
  if (c.device_bytes >= 0) {
    out += ",\"" + prefix + "disk_bytes_per_msg\":" + Fmt(static_cast<double>(c.device_bytes) / n, 0);
  }
  return out;
}

// ------------------------------------------------------------ the profile

// Stages of the broker's CPU, from perf samples: the sampled function and
// library, and for kernel samples the system call they happened in.
const std::vector<std::string>& StageNames() {
  static const std::vector<std::string> k = {
      "tls", "protobuf", "policy_redaction", "store", "hashing", "network_kernel", "alloc_libc", "sched_sync", "other"};
  return k;
}

bool Has(const std::string& s, const char* needle) {
  return s.find(needle) != std::string::npos;
}

// The broker's commit-log syncs during a phase (its admin socket's status
// before and after): how many, and their percentiles in milliseconds (each a
// bucket's upper bound, at most 25 % high: common/latency_histogram.h). The
// disk's share of a phase's latency. All -1 when the broker did not answer
// either time.
std::string PhaseSyncsJson(const std::string& prefix, const std::optional<LatencyHistogram::Snapshot>& s) {
  auto ms = [&](double q) { return s ? Fmt(static_cast<double>(s->PercentileUs(q)) / 1000.0) : std::string("-1"); };
  return ",\"" + prefix + "log_syncs\":" + (s ? std::to_string(s->count) : std::string("-1")) + ",\"" + prefix +
         "log_sync_p50_ms\":" + ms(0.5) + ",\"" + prefix + "log_sync_p99_ms\":" + ms(0.99) + ",\"" + prefix +
         "log_sync_p999_ms\":" + ms(0.999) + ",\"" + prefix + "log_sync_max_ms\":" + ms(1.0);
}

std::string PhaseSyncsLine(const std::optional<LatencyHistogram::Snapshot>& s) {
  if (!s) return "the broker's commit log: no syncs reported (its admin socket did not answer)";
  char line[200];
  std::snprintf(
      line, sizeof line, "the broker's commit log: %llu fdatasyncs, p50 %.3f ms p99 %.3f ms p999 %.3f ms max %.3f ms",
      static_cast<unsigned long long>(s->count), static_cast<double>(s->PercentileUs(0.5)) / 1000.0,
      static_cast<double>(s->PercentileUs(0.99)) / 1000.0, static_cast<double>(s->PercentileUs(0.999)) / 1000.0,
      static_cast<double>(s->PercentileUs(1.0)) / 1000.0);
  return line;
}

// What the broker counted between two readings of its status.
std::optional<LatencyHistogram::Snapshot> SyncsSince(const std::optional<LatencyHistogram::Snapshot>& before,
                                                     const std::string& dir) {
  const auto after = BrokerLogSyncs(dir);
  if (!before || !after) return std::nullopt;
  return after->Since(*before);
}

std::string KernelStage(const std::string& syscall) {
  static const std::vector<std::string> store = {"fsync",    "fdatasync",  "pwrite64", "pread64", "fcntl",     "fstat",
                                                 "newfstat", "newfstatat", "openat",   "unlink",  "ftruncate", "lseek",
                                                 "mmap",     "munmap",     "statx",    "access"};
  static const std::vector<std::string> net = {"sendmsg", "recvmsg", "sendto", "recvfrom", "write",
                                               "read",    "writev",  "readv",  "accept4",  "shutdown"};
  for (const auto& s : store) {
    if (syscall == s) return "store";
  }
  for (const auto& s : net) {
    if (syscall == s) return "network_kernel";
  }
  return "sched_sync";  // futex, epoll_wait, nanosleep, clock, interrupts and the scheduler
}

// The stage a frame belongs to, or "" when it marks none (the caller
// decides): libc, the broker's own glue, OpenSSL internals without symbols.
std::string FrameStage(const std::string& sym, const std::string& dso) {
  if (Has(dso, "libsqlite3") || Has(sym, "sqlite3")) return "store";
  if (Has(sym, "liaison::merkle") || Has(sym, "7liaison6merkle") || Has(sym, "BodyDigest") || Has(sym, "LeafHash") ||
      Has(sym, "audit::Signer"))
    return "hashing";
  if (Has(dso, "libprotobuf") || Has(sym, "google::protobuf") || Has(sym, "6google8protobuf") ||
      Has(sym, "liaison::v1::") || Has(sym, "7liaison2v1"))
    return "protobuf";
  if (Has(sym, "liaison::broker::Store") || Has(sym, "7liaison6broker5Store") || Has(sym, "liaison::audit::") ||
      Has(sym, "7liaison5audit"))
    return "store";
  if (Has(dso, "libssl")) return "tls";
  if (Has(dso, "libcrypto")) {
    // The record layer's cipher (AES-GCM) is TLS; digests, HMACs and the
    // Ed25519 checkpoint signature are hashing. OpenSSL's internal
    // assembly has no symbols: its caller decides.
    static const std::regex tls_re("aes|gcm|ghash|GCM|AES|Cipher|cipher|EVP_Encrypt|EVP_Decrypt|chacha|poly1305");
    static const std::regex hash_re("sha|SHA|HMAC|hmac|Digest|digest|ED25519|ed25519|Ed25519|MAC|mac_");
    if (std::regex_search(sym, tls_re)) return "tls";
    if (std::regex_search(sym, hash_re)) return "hashing";
    return "";
  }
  return "";
}

// One perf sample, frames leaf first: redaction and pseudonymisation (any
// frame in liaison::policy) whatever they call; kernel samples by their
// system call; otherwise the nearest frame, from the leaf up, that marks a
// stage; failing that, the leaf's library.
std::string SampleStage(const std::vector<std::pair<std::string, std::string>>& frames, const std::string& syscall) {
  for (const auto& [sym, dso] : frames) {
    if (Has(sym, "liaison::policy") || Has(sym, "7liaison6policy")) return "policy_redaction";
  }
  const auto& [leaf_sym, leaf_dso] = frames.front();
  if (Has(leaf_dso, "kernel.kallsyms") || Has(leaf_dso, "[kernel")) return KernelStage(syscall);
  for (const auto& [sym, dso] : frames) {
    if (Has(dso, "kernel.kallsyms")) continue;
    std::string st = FrameStage(sym, dso);
    if (!st.empty()) return st;
  }
  if (Has(leaf_dso, "libcrypto")) return "hashing";
  if (Has(leaf_dso, "libc.so") || Has(leaf_dso, "libc-") || Has(leaf_sym, "malloc") || Has(leaf_sym, "operator new"))
    return "alloc_libc";
  return "other";
}

struct Profile {
  bool ok = false;
  long samples = 0;
  std::map<std::string, long> stage;
  std::vector<std::pair<long, std::string>> top;  // samples, "sym (dso)"
  std::string error;
};

// Parses `perf script -F ip,sym,dso` of a call-graph recording: one block
// of frames per sample (leaf first), blank line between samples.
Profile ParsePerfScript(const std::string& path) {
  Profile p;
  std::ifstream in(path);
  if (!in) {
    p.error = "no perf script output";
    return p;
  }
  std::map<std::string, long> by_sym;
  static const std::regex frame_re(R"(^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$)");
  std::string line, syscall;
  std::vector<std::pair<std::string, std::string>> frames;
  auto finish = [&] {
    if (frames.empty()) return;
    p.stage[SampleStage(frames, syscall)]++;
    p.samples++;
    by_sym[frames[0].first + " (" + fs::path(frames[0].second).filename().string() + ")"]++;
    frames.clear();
    syscall.clear();
  };
  while (std::getline(in, line)) {
    std::smatch m;
    if (!std::regex_match(line, m, frame_re)) {
      finish();
      continue;
    }
    std::string sym = m[1].str();
    const size_t plus = sym.rfind("+0x");
    if (plus != std::string::npos) sym.resize(plus);
    if (syscall.empty()) {
      for (const char* prefix : {"__x64_sys_", "__ia32_sys_", "__do_sys_", "__se_sys_"}) {
        if (sym.rfind(prefix, 0) == 0) {
          syscall = sym.substr(std::strlen(prefix));
          break;
        }
      }
    }
    frames.emplace_back(std::move(sym), m[2].str());
  }
  finish();
  for (auto& [s, n] : by_sym) p.top.emplace_back(n, s);
  std::sort(p.top.begin(), p.top.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  if (p.top.size() > 25) p.top.resize(25);
  p.ok = p.samples > 0;
  if (!p.ok) p.error = "perf recorded no samples";
  return p;
}

bool PerfWorks() {
  const int rc = RunQuiet({"perf", "stat", "-e", "cpu-clock", "true"}, "/dev/null", "/dev/null");
  return rc == 0;
}

// Counts of fsync and fdatasync from `perf stat -x,` output.
long ParseSyncCount(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  long total = 0;
  bool any = false;
  while (std::getline(in, line)) {
    if (!Has(line, "sys_enter_fsync") && !Has(line, "sys_enter_fdatasync")) continue;
    const size_t comma = line.find(',');
    try {
      total += std::stol(line.substr(0, comma));
      any = true;
    } catch (...) {
    }
  }
  return any ? total : -1;
}

// ------------------------------------------------------------ setup

std::string PolicyText(const Options& o) {
  return WorkloadPolicy(
      "# liaison-bench e2e: publishers a01..aP each send incident reports to one\n"
      "# receiver; the first receivers are schools and get them redacted and\n"
      "# pseudonymised, as the example city policy does (docs/examples/policy.yaml).\n",
      o.publishers, o.redacted);
}

std::string BrokerYaml(const Options& o, const std::string& pki) {
  return bench::BrokerYaml("bench-e2e", o.broker_threads, pki,
                           // One agency per publisher at full speed: the default per-agency
                           // publish rates (1000/s, 16 MiB/s) would measure the limiter, not
                           // the broker.
                           "  publish_rate_per_agency: 0\n  publish_bytes_per_agency: 0\n");
}


int RunE2e(const Options& o) {
  const auto load_before = LoadAverages();
  TempDir tmp("liaison-e2e", o.keep, "e2e");
  if (!tmp.ok()) {
    std::fprintf(stderr, "e2e: mkdtemp failed\n");
    return 1;
  }
  const std::string dir = tmp.path();

  // The PKI: a01..aP publishers, a(P+1)..a(2P) receivers.
  std::vector<std::string> agencies;
  for (int i = 1; i <= 2 * o.publishers; ++i) agencies.push_back(Agency(i));
  const std::string pki = PreparePki(o.pki, o.pki_script, dir, agencies, "e2e");
  if (pki.empty()) return 1;
  if (!WriteFile(dir + "/policy.yaml", PolicyText(o)) || !WriteFile(dir + "/broker.yaml", BrokerYaml(o, pki))) {
    std::fprintf(stderr, "e2e: cannot write the broker's configuration in %s\n", dir.c_str());
    return 1;
  }

  // The broker.
  const std::string broker_bin = FindBroker(o.broker);
  uint16_t port = 0;
  auto broker = StartBroker(broker_bin, dir, &port, "e2e");
  if (!broker) return 1;
  std::fprintf(stderr, "e2e: broker %s (pid %d) on port %u, data in %s\n", broker_bin.c_str(), broker->pid(), port,
               dir.c_str());

  bool use_perf = o.profile == "perf" || (o.profile == "auto" && PerfWorks());
  if (o.profile == "perf" && !PerfWorks()) {
    std::fprintf(stderr, "e2e: --profile perf, but perf does not work here\n");
    return 1;
  }

  // Receivers first, then publishers. The phases outlive the clients, whose
  // handlers may still see late deliveries.
  Phase tput_phase, lat_phase;
  World w;
  w.o = Workload{o.publishers, o.size, o.window, o.redacted};
  if (!ConnectWorld(w, port, pki, "liaison-bench/e2e", "e2e")) return 1;
  {
    const auto sample = IncidentTemplate(o.size);
    std::fprintf(stderr, "e2e: %d publishers -> %d receivers (%d with redaction and pseudonymisation), message %zu B\n",
                 o.publishers, o.publishers, std::min(o.redacted, o.publishers), sample.ByteSizeLong());
  }

  std::mt19937 rng(static_cast<uint32_t>(NowNs()));
  std::ostringstream json;
  json << "{\"bench\":\"e2e\",\"publishers\":" << o.publishers << ",\"messages\":" << o.messages
       << ",\"size\":" << o.size << ",\"window\":" << o.window << ",\"redacted_receivers\":" << o.redacted
       << ",\"broker_threads\":" << o.broker_threads;
  long lost_total = 0, dups_total = 0;
  bool complete = true;

  // ---------------- throughput
  if (!o.skip_throughput) {
    Phase& ph = tput_phase;
    StartPhase(w, ph, rng() | 1u, o.messages);
    std::unique_ptr<Child> perf_rec, perf_sync;
    if (use_perf) {
      perf_rec = std::make_unique<Child>(
          std::vector<std::string>{"perf", "record", "-e", "cpu-clock", "-F", std::to_string(o.perf_freq),
                                   "--call-graph", "dwarf,8192", "-p", std::to_string(broker->pid()), "-o",
                                   dir + "/perf.data"},
          dir + "/perf-record.out", dir + "/perf-record.err");
      perf_sync = std::make_unique<Child>(
          std::vector<std::string>{"perf", "stat", "-x,", "-e", "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync",
                                   "-p", std::to_string(broker->pid()), "-o", dir + "/fsync-tput.txt"},
          dir + "/perf-stat.out", dir + "/perf-stat.err");
      std::this_thread::sleep_for(std::chrono::milliseconds(500));  // perf attaches
    }
    CpuMeter cpu{broker->pid()};
    cpu.disk_path = dir;  // the broker's data directory is in it
    const auto syncs_before = BrokerLogSyncs(dir);
    std::fprintf(stderr, "e2e: throughput: %d pubs x %ld msgs x %d B, window %d\n", o.publishers, o.messages, o.size,
                 o.window);
    const int64_t t0 = NowNs();
    const int64_t deadline = t0 + static_cast<int64_t>(o.timeout * 1e9);
    cpu.Start();
    std::vector<std::thread> th;
    for (auto& p : w.pubs) th.emplace_back(PublisherLoop, &w, p.get(), &ph, t0, int64_t{0}, deadline);
    for (auto& t : th) t.join();
    WaitDelivery(ph, deadline, 10.0);
    const auto c = cpu.Stop();
    const auto syncs = SyncsSince(syncs_before, dir);
    if (perf_rec) perf_rec->Stop(SIGINT, std::chrono::seconds(30));
    if (perf_sync) perf_sync->Stop(SIGINT, std::chrono::seconds(10));
    const Totals t = Collect(w);
    const double e2e_s = t.last_rx > t0 ? static_cast<double>(t.last_rx - t0) / 1e9 : -1;
    const double ack_s = t.pub_done > t0 ? static_cast<double>(t.pub_done - t0) / 1e9 : -1;
    const double rate = e2e_s > 0 ? static_cast<double>(t.unique) / e2e_s : 0;
    const double ack_rate = ack_s > 0 ? static_cast<double>(t.acked) / ack_s : 0;
    std::vector<int64_t> al;
    for (auto& p : w.pubs) {
      for (int64_t v : p->ack_ns) {
        if (v >= 0) al.push_back(v);
      }
    }
    const double ack_p50 = Percentile(al, 0.5) / 1e6, ack_p99 = Percentile(al, 0.99) / 1e6;
    const long lost = ph.expected - t.unique;
    lost_total += lost;
    dups_total += t.dups;
    complete = complete && lost == 0 && t.foreign == 0 && t.nacked == 0;
    const long fsyncs = use_perf ? ParseSyncCount(dir + "/fsync-tput.txt") : -1;
    std::fprintf(stderr,
                 "e2e: throughput %.0f msgs/s (%.2f s), publish-acked %.0f msgs/s, received %ld/%ld, dups %ld, "
                 "foreign %ld, refused %ld%s%s; ack latency p50 %.2f ms p99 %.2f ms; cpu broker %.0f%% client %.0f%% "
                 "machine %.0f%% (of one core); broker %.1f CPU s = %.1f us/msg; fsyncs %ld\n",
                 rate, e2e_s, ack_rate, t.unique, ph.expected, t.dups, t.foreign, t.nacked,
                 t.first_error.empty() ? "" : " first: ", t.first_error.c_str(), ack_p50, ack_p99, c.broker_pct,
                 c.client_pct, c.machine_pct, c.broker_s,
                 t.unique > 0 ? c.broker_s / static_cast<double>(t.unique) * 1e6 : 0, fsyncs);
    json << ",\"msgs_per_s\":" << Fmt(rate, 0) << ",\"e2e_s\":" << Fmt(e2e_s)
         << ",\"ack_msgs_per_s\":" << Fmt(ack_rate, 0) << ",\"received\":" << t.unique << ",\"tput_lost\":" << lost
         << ",\"tput_dups\":" << t.dups << ",\"foreign\":" << t.foreign << ",\"refused\":" << t.nacked
         << ",\"redacted_received\":" << t.redacted
         << ",\"redaction_errors\":" << (t.unredacted_on_redacted_rule + t.redacted_on_plain_rule)
         << ",\"ack_p50_ms\":" << Fmt(ack_p50) << ",\"ack_p99_ms\":" << Fmt(ack_p99)
         << ",\"broker_cpu_s\":" << Fmt(c.broker_s, 2)
         << ",\"broker_cpu_us_per_msg\":" << Fmt(t.unique > 0 ? c.broker_s / static_cast<double>(t.unique) * 1e6 : 0, 1)
         << ",\"broker_cpu_pct\":" << Fmt(c.broker_pct, 0) << ",\"client_cpu_pct\":" << Fmt(c.client_pct, 0)
         << ",\"machine_cpu_pct\":" << Fmt(c.machine_pct, 0) << ",\"threads\":" << ThreadCoresJson(c.thread_cores)
         << ",\"fsyncs\":" << fsyncs << PhaseSyncsJson("", syncs);
    std::fprintf(stderr, "e2e: %s\n", PhaseSyncsLine(syncs).c_str());
    json << WriteBytesJson("", c, t.unique);
    if (fsyncs > 0 && t.unique > 0) {
      json << ",\"msgs_per_fsync\":" << Fmt(static_cast<double>(t.unique) / static_cast<double>(fsyncs), 1);
    }
    // The CPU breakdown of the broker during this phase.
    if (use_perf) {
      const int rc = RunQuiet({"perf", "script", "-i", dir + "/perf.data", "-F", "ip,sym,dso"}, dir + "/perf.txt",
                              dir + "/perf-script.err");
      Profile prof = rc == 0 ? ParsePerfScript(dir + "/perf.txt") : Profile{};
      if (rc != 0) prof.error = "perf script failed";
      if (prof.ok) {
        json << ",\"cpu\":{\"method\":\"perf cpu-clock " << o.perf_freq
             << " Hz, dwarf call chains\",\"samples\":" << prof.samples;
        std::fprintf(
            stderr, "e2e: broker CPU by stage (%ld perf samples; kernel by system call, else nearest marking frame):\n",
            prof.samples);
        for (const auto& s : StageNames()) {
          const double f = static_cast<double>(prof.stage[s]) / static_cast<double>(prof.samples);
          json << ",\"" << s << "\":" << Fmt(f);
          std::fprintf(stderr, "  %-17s %5.1f %%  %6.1f us/msg\n", s.c_str(), f * 100,
                       t.unique > 0 ? f * c.broker_s / static_cast<double>(t.unique) * 1e6 : 0);
        }
        json << "}";
        std::fprintf(stderr, "e2e: hottest broker functions (self):\n");
        for (const auto& [n, s] : prof.top) {
          std::fprintf(stderr, "  %5.1f %%  %s\n", 100.0 * static_cast<double>(n) / static_cast<double>(prof.samples),
                       s.c_str());
        }
      } else {
        std::fprintf(stderr, "e2e: no CPU breakdown: %s\n", prof.error.c_str());
      }
    }
  }

  // ---------------- latency
  if (!o.skip_latency) {
    Phase& ph = lat_phase;
    const double per_pub_rate = o.rate / o.publishers;
    const long per_pub = static_cast<long>(per_pub_rate * o.duration);
    StartPhase(w, ph, rng() | 1u, std::max(1L, per_pub));
    std::unique_ptr<Child> perf_sync;
    if (use_perf) {
      perf_sync = std::make_unique<Child>(
          std::vector<std::string>{"perf", "stat", "-x,", "-e", "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync",
                                   "-p", std::to_string(broker->pid()), "-o", dir + "/fsync-lat.txt"},
          dir + "/perf-stat2.out", dir + "/perf-stat2.err");
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    }
    CpuMeter cpu{broker->pid()};
    cpu.disk_path = dir;
    const auto syncs_before = BrokerLogSyncs(dir);
    std::fprintf(stderr, "e2e: latency: %.0f msgs/s total for %.1f s (%d pubs, %ld msgs each), warm-up %.1f s\n",
                 o.rate, o.duration, o.publishers, ph.per_pub, o.warmup);
    cpu.Start();
    RunPaced(w, ph, o.rate, o.duration, o.timeout);
    const auto c = cpu.Stop();
    const auto syncs = SyncsSince(syncs_before, dir);
    if (perf_sync) perf_sync->Stop(SIGINT, std::chrono::seconds(10));
    const Totals t = Collect(w);
    const LatencyStats ls = SummariseLatency(w, per_pub_rate, o.warmup);
    if (!o.trace.empty()) {
      if (Status s = WriteLatencyTrace(w, o.trace); !s.ok()) std::fprintf(stderr, "e2e: %s\n", s.ToString().c_str());
    }
    const size_t measured = ls.measured;
    const double mx = ls.max, p50 = ls.p50, p90 = ls.p90, p99 = ls.p99, p999 = ls.p999;
    const double ap50 = ls.ack_p50, ap99 = ls.ack_p99;
    const long lost = ph.expected - t.unique;
    lost_total += lost;
    dups_total += t.dups;
    complete = complete && lost == 0 && t.foreign == 0 && t.nacked == 0;
    const long fsyncs = use_perf ? ParseSyncCount(dir + "/fsync-lat.txt") : -1;
    std::fprintf(stderr,
                 "e2e: latency ms: p50 %.3f p90 %.3f p99 %.3f p999 %.3f max %.3f (n=%zu); publish->ack p50 %.3f "
                 "p99 %.3f; Publish called late p50 %.3f p99 %.3f; received %ld/%ld, dups %ld, refused %ld; cpu broker "
                 "%.0f%% client %.0f%% machine %.0f%%; "
                 "fsyncs %ld\n",
                 p50, p90, p99, p999, mx, measured, ap50, ap99, ls.late_p50, ls.late_p99, t.unique, ph.expected, t.dups,
                 t.nacked, c.broker_pct, c.client_pct, c.machine_pct, fsyncs);
    json << ",\"rate\":" << Fmt(o.rate, 0) << ",\"duration_s\":" << Fmt(o.duration, 1) << ",\"measured\":" << measured
         << ",\"p50_ms\":" << Fmt(p50) << ",\"p90_ms\":" << Fmt(p90) << ",\"p99_ms\":" << Fmt(p99)
         << ",\"p999_ms\":" << Fmt(p999) << ",\"max_ms\":" << Fmt(mx) << ",\"lat_ack_p50_ms\":" << Fmt(ap50)
         << ",\"lat_ack_p99_ms\":" << Fmt(ap99) << ",\"lat_late_p50_ms\":" << Fmt(ls.late_p50)
         << ",\"lat_late_p99_ms\":" << Fmt(ls.late_p99) << ",\"lat_lost\":" << lost << ",\"lat_dups\":" << t.dups
         << ",\"lat_refused\":" << t.nacked << ",\"lat_broker_cpu_pct\":" << Fmt(c.broker_pct, 0)
         << ",\"lat_client_cpu_pct\":" << Fmt(c.client_pct, 0) << ",\"lat_threads\":" << ThreadCoresJson(c.thread_cores)
         << ",\"lat_fsyncs\":" << fsyncs << PhaseSyncsJson("lat_", syncs);
    std::fprintf(stderr, "e2e: %s\n", PhaseSyncsLine(syncs).c_str());
    json << WriteBytesJson("lat_", c, t.unique);
  }

  // ---------------- teardown
  CloseWorld(w);
  const int rc = broker->Stop(SIGTERM, std::chrono::seconds(20));
  const long errors = CountLoggedErrors(dir + "/broker.log");
  if (errors > 0) std::fprintf(stderr, "e2e: the broker logged %ld error(s); see its log (--keep)\n", errors);
  const auto load_after = LoadAverages();
  json << ",\"lost\":" << lost_total << ",\"dups\":" << dups_total << ",\"broker_exit\":" << rc
       << ",\"broker_errors\":" << errors << ",\"load_before\":[" << Fmt(load_before[0], 2) << ","
       << Fmt(load_before[1], 2) << "," << Fmt(load_before[2], 2) << "],\"load_after\":[" << Fmt(load_after[0], 2)
       << "," << Fmt(load_after[1], 2) << "," << Fmt(load_after[2], 2) << "]}";
  std::printf("%s\n", json.str().c_str());
  std::fflush(stdout);
  return complete ? 0 : 2;
}

}  // namespace

void RegisterE2e(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<Options>();
#ifdef LIAISON_SOURCE_DIR
  o->pki_script = std::string(LIAISON_SOURCE_DIR) + "/certs/dev-pki.sh";
#endif
  CLI::App* sub = app.add_subcommand(
      "e2e", "A real broker (mTLS, policy, audit log, FULL sync) under peerbench's workload: throughput, then latency");
  sub->add_option("--publishers", o->publishers, "publishing agencies, each with its own receiver")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  sub->add_option("--messages", o->messages, "messages per publisher (throughput phase)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--size", o->size, "serialized message size in bytes (approximately)")
      ->capture_default_str()
      ->check(CLI::Range(300, 1 << 20));
  sub->add_option("--window", o->window, "unacknowledged publishes per publisher; receivers' credit")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  sub->add_option("--rate", o->rate, "latency phase: msgs/s in total")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--duration", o->duration, "latency phase: seconds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--warmup", o->warmup, "latency phase: first seconds not counted")->capture_default_str();
  sub->add_option("--timeout", o->timeout, "longest wait per phase, seconds")->capture_default_str();
  sub->add_option("--redacted", o->redacted, "receivers whose messages are redacted and pseudonymised")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  sub->add_option("--broker-threads", o->broker_threads, "the broker's worker threads")->capture_default_str();
  sub->add_option("--broker", o->broker, "liaison-broker binary (default: beside liaison-bench)");
  sub->add_option("--pki", o->pki, "an existing dev PKI (certs/dev-pki.sh) with certificates a01..a(2P)");
  sub->add_option("--pki-script", o->pki_script, "certs/dev-pki.sh, to make a PKI")->capture_default_str();
  sub->add_option("--profile", o->profile, "CPU breakdown of the broker: perf, none, auto (perf if it works)")
      ->capture_default_str()
      ->check(CLI::IsMember({"perf", "none", "auto"}));
  sub->add_option("--perf-freq", o->perf_freq, "perf sampling frequency, Hz")->capture_default_str();
  sub->add_option("--trace", o->trace,
                  "latency phase: write each message's scheduled send time and latencies to this CSV file");
  sub->add_flag("--keep", o->keep, "keep the temporary directory (broker log, database, perf data)");
  sub->add_flag("--no-latency", o->skip_latency, "skip the latency phase");
  sub->add_flag("--no-throughput", o->skip_throughput, "skip the throughput phase");
  sub->callback([o, exit_code] {
    if (o->redacted > o->publishers) o->redacted = o->publishers;
    *exit_code = RunE2e(*o);
  });
}

}  // namespace liaison::bench
