// liaison-bench audit: the audit log's three figures (issue #4).
//   append_per_s  durable records per second through the store's group
//                 commit (WAL, synchronous=FULL), appended the way the broker
//                 appends them: many callers at once, a few records each;
//   verify_per_s  records per second of `liaison audit verify`'s full
//                 recompute (every record against its leaf hash, the RFC 6962
//                 root, every signed checkpoint) over an export of the log,
//                 just written and so mostly in the page cache (warm);
//   verify_cold_per_s  the same, run again after the export's pages were
//                 dropped from the page cache (fdatasync, then
//                 posix_fadvise DONTNEED): what an auditor sees on an export
//                 that was not just written, bounded by the disk;
//   export_bytes  the size of the export file;
//   query_ms      median time to the first page of 100 rows, by case id and
//                 by agency and time range, through the broker's audit
//                 reader (the code path of a remote `liaison audit query`).
// The log it builds has --records records (default 10,000,000).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "broker/store/audit_reader.h"
#include "broker/store/store.h"
#include "client/audit_verify.h"
#include "common/files.h"
#include "tests/bench/bench.h"

namespace liaison::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct AuditOptions {
  uint64_t records = 10'000'000;
  int agencies = 25;
  uint64_t cases = 200'000;
  int queries = 200;
  std::string dir;  // default: a new directory under /tmp (removed after)
  bool keep = false;
  bool verify = true;  // export and verify (an export is about as large as the store)
};

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// CPU seconds (user + system) spent so far by this process's thread named
// name (the store names its writer "store-writer"); -1 if there is none.
// The writer's CPU per record is what limits appends on a loaded machine,
// and unlike wall time it hardly depends on what else runs.
double ThreadCpuSeconds(const std::string& name) {
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    // /proc files have no size: read them as streams.
    std::string comm;
    std::getline(std::ifstream(task.path() / "comm"), comm);
    if (comm != name) continue;
    std::string stat_line;
    std::getline(std::ifstream(task.path() / "stat"), stat_line);
    const std::string* stat = &stat_line;
    // Fields 14 and 15 (utime, stime, in clock ticks) follow the ")" that
    // ends the thread's name.
    const size_t close = stat->rfind(')');
    if (close == std::string::npos) return -1;
    unsigned long long utime = 0, stime = 0;
    if (std::sscanf(stat->c_str() + close + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                    &stime) != 2) {
      return -1;
    }
    return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
  return -1;
}

// Drops a file's pages from the page cache (the kernel may keep pages that
// are mapped or locked by someone). Root could write /proc/sys/vm/drop_caches
// instead, but that is for the whole machine and not always writable;
// fadvise acts on this file alone. Dirty pages are written first, since
// DONTNEED leaves them in the cache. Returns the share of the file's pages
// still resident afterwards (by mincore), or -1 if that cannot be told.
double EvictFromPageCache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  double resident = -1;
  const off_t size = ::lseek(fd, 0, SEEK_END);
  if (size > 0) {
    void* map = ::mmap(nullptr, static_cast<size_t>(size), PROT_READ, MAP_SHARED, fd, 0);
    if (map != MAP_FAILED) {
      const long page = ::sysconf(_SC_PAGESIZE);
      const size_t pages = (static_cast<size_t>(size) + static_cast<size_t>(page) - 1) / static_cast<size_t>(page);
      std::vector<unsigned char> in_core(pages);
      if (::mincore(map, static_cast<size_t>(size), in_core.data()) == 0) {
        size_t n = 0;
        for (unsigned char c : in_core) n += c & 1;
        resident = static_cast<double>(n) / static_cast<double>(pages);
      }
      ::munmap(map, static_cast<size_t>(size));
    }
  }
  ::close(fd);
  return resident;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int RunAudit(const AuditOptions& o) {
  spdlog::set_level(spdlog::level::warn);
  std::string dir = o.dir;
  if (dir.empty()) {
    char tmpl[] = "/tmp/liaison-bench-audit-XXXXXX";
    if (!mkdtemp(tmpl)) {
      std::fprintf(stderr, "liaison-bench audit: cannot create a temporary directory\n");
      return 1;
    }
    dir = tmpl;
  }
  broker::Store::Options so;
  so.path = dir + "/data/liaison.db";
  so.origin = "liaison/bench";
  so.signing_key = dir + "/audit-signing.key";
  so.digest_key = dir + "/body-digest.key";
  std::vector<std::string> agencies;
  for (int i = 0; i < o.agencies; ++i) agencies.push_back("agency-" + std::to_string(i));
  const int64_t t0_ms = 1'800'000'000'000;  // the log's first record time
  // The log spans a year of a city network's history.
  const int64_t year_ms = 365LL * 86'400'000;
  const int64_t step_ms = std::max<int64_t>(1, year_ms / static_cast<int64_t>(std::max<uint64_t>(o.records, 1)));
  // A realistic record: a queued decision with rules, obligations, digest.
  auto make = [&](uint64_t i, std::mt19937_64& rng) {
    audit::Record r;
    r.time_ms = t0_ms + static_cast<int64_t>(i) * step_ms;
    r.event = (i % 2 == 0) ? "queued" : "delivered";
    const std::string& sender = agencies[rng() % agencies.size()];
    const std::string& recipient = agencies[rng() % agencies.size()];
    r.actor = (i % 2 == 0) ? sender : recipient;
    r.cert_sha256 = std::string(64, 'c');
    char id[64];
    std::snprintf(id, sizeof id, "01a2%04x-%04x-7%03x-8%03x-%012llx", static_cast<unsigned>(i >> 48 & 0xffff),
                  static_cast<unsigned>(i >> 32 & 0xffff), static_cast<unsigned>(i >> 20 & 0xfff),
                  static_cast<unsigned>(i >> 8 & 0xfff), static_cast<unsigned long long>(i / 2));
    r.message_id = id;
    r.case_id = "CASE-" + std::to_string(rng() % o.cases);
    r.sender = sender;
    r.recipient = recipient;
    r.message_type = "incident_report";
    r.tlp = 2;
    r.purpose = "safeguarding";
    r.decision = (i % 2 == 0) ? "permit" : "delivered";
    r.rules = "incidents-to-schools";
    r.policy_version = std::string(64, 'a');
    r.obligations = "redacted:incident_report.offender_details;pseudonymised:incident_report.victims (key v1)";
    r.body_hmac = std::string(64, 'b');
    r.detail = "agreement=core-partners-share";
    return r;
  };

  // 1. Append.
  double append_s = 0, writer_cpu_s = -1, indexer_cpu_s = -1, close_s = 0;
  uint64_t index_lag = 0;  // records not yet in the derived audit index when the last append was durable
  {
    auto store = broker::Store::Open(so);
    if (!store.ok()) {
      std::fprintf(stderr, "liaison-bench audit: %s\n", store.status().ToString().c_str());
      return 1;
    }
    constexpr int kPerAppend = 2;       // a publish to two recipients
    constexpr int kOutstanding = 20000;  // callers waiting for their commit
    std::mutex mu;
    std::condition_variable cv;
    int outstanding = 0;
    std::atomic<uint64_t> failed{0};
    std::mt19937_64 rng(42);
    const auto start = Clock::now();
    for (uint64_t i = 0; i < o.records; i += kPerAppend) {
      std::vector<audit::Record> batch;
      for (uint64_t k = i; k < std::min(o.records, i + kPerAppend); ++k) batch.push_back(make(k, rng));
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return outstanding < kOutstanding; });
        ++outstanding;
      }
      (*store)->Append(std::move(batch), [&](const Status& s, const audit::Checkpoint&) {
        if (!s.ok()) failed++;
        std::lock_guard lock(mu);
        --outstanding;
        cv.notify_one();
      });
      if (i % 1'000'000 == 0 && i > 0) std::fprintf(stderr, "  appended %llu\n", static_cast<unsigned long long>(i));
    }
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return outstanding == 0; });
    }
    // Durable once in the store's commit log; counted when the database
    // has them too (queries read it), so the rate is the database's.
    if (Status s = (*store)->Sync(); !s.ok()) {
      std::fprintf(stderr, "liaison-bench audit: %s\n", s.ToString().c_str());
      return 1;
    }
    append_s = Seconds(start, Clock::now());
    // The writer's work is two threads since the commit log: it logs, the
    // applier writes the database.
    writer_cpu_s = ThreadCpuSeconds("store-writer") + ThreadCpuSeconds("store-apply");
    indexer_cpu_s = ThreadCpuSeconds("store-indexer");
    index_lag = (*store)->latest().tree_size - (*store)->audit_indexed_through();
    const auto c = (*store)->counters();
    std::fprintf(stderr, "append: %llu records in %.1f s, %llu commits (%.0f records per commit), %llu failed\n",
                 static_cast<unsigned long long>(c.records), append_s, static_cast<unsigned long long>(c.commits),
                 c.commits ? static_cast<double>(c.records) / c.commits : 0.0,
                 static_cast<unsigned long long>(failed.load()));
    // Closing indexes what is left when that is little (an orderly stop).
    const auto close_start = Clock::now();
    store->reset();
    close_s = Seconds(close_start, Clock::now());
  }

  // 2. Query, through the broker's audit reader.
  std::vector<double> by_case, by_agency;
  {
    auto reader = broker::AuditReader::Open(so.path, 1);
    if (!reader.ok()) {
      std::fprintf(stderr, "liaison-bench audit: %s\n", reader.status().ToString().c_str());
      return 1;
    }
    std::mt19937_64 rng(7);
    for (int q = 0; q < o.queries; ++q) {
      broker::AuditPageRequest a;
      a.scope = agencies;
      a.limit = 100;
      a.filter.case_id = "CASE-" + std::to_string(rng() % o.cases);
      auto t = Clock::now();
      auto page = (*reader)->QueryPageSync(a);
      by_case.push_back(Seconds(t, Clock::now()) * 1000);
      if (!page.ok()) {
        std::fprintf(stderr, "liaison-bench audit: query: %s\n", page.status().ToString().c_str());
        return 1;
      }
      broker::AuditPageRequest b;
      b.scope = agencies;
      b.limit = 100;
      b.filter.agency = agencies[rng() % agencies.size()];
      // A day of history somewhere in the log.
      const int64_t from = t0_ms + static_cast<int64_t>(rng() % static_cast<uint64_t>(year_ms - 86'400'000));
      b.filter.from_ms = from;
      b.filter.to_ms = from + 86'400'000;
      t = Clock::now();
      page = (*reader)->QueryPageSync(b);
      by_agency.push_back(Seconds(t, Clock::now()) * 1000);
      if (!page.ok()) {
        std::fprintf(stderr, "liaison-bench audit: query: %s\n", page.status().ToString().c_str());
        return 1;
      }
    }
  }

  // 3. Export and verify.
  const std::string out = dir + "/export.db";
  double export_s = 0, verify_s = 0, verify_cold_s = 0, resident_after_evict = -1;
  uint64_t export_bytes = 0;
  audit::VerifyReport report;
  if (o.verify) {
    auto t = Clock::now();
    if (Status s = broker::Store::ExportAudit(so.path, out); !s.ok()) {
      std::fprintf(stderr, "liaison-bench audit: export: %s\n", s.ToString().c_str());
      return 1;
    }
    export_s = Seconds(t, Clock::now());
    export_bytes = std::filesystem::file_size(out);
    audit::VerifyOptions v;
    v.db_path = out;
    v.public_key_pem = *ReadFile(so.signing_key + ".pub", 1 << 16);
    t = Clock::now();
    Status vs = audit::VerifyAuditLog(v, &report);
    verify_s = Seconds(t, Clock::now());
    if (!vs.ok()) {
      std::fprintf(stderr, "liaison-bench audit: verify failed: %s\n", vs.ToString().c_str());
      return 1;
    }
    // Again, from the disk.
    resident_after_evict = EvictFromPageCache(out);
    audit::VerifyReport cold;
    t = Clock::now();
    vs = audit::VerifyAuditLog(v, &cold);
    verify_cold_s = Seconds(t, Clock::now());
    if (!vs.ok() || cold.records != report.records) {
      std::fprintf(stderr, "liaison-bench audit: cold verify failed: %s\n", vs.ToString().c_str());
      return 1;
    }
    std::fprintf(stderr,
                 "verify: %llu records, export %.2f GB; warm %.2f s, cold %.2f s (%.1f %% of the export's pages "
                 "still cached after eviction)\n",
                 static_cast<unsigned long long>(report.records), static_cast<double>(export_bytes) / 1e9, verify_s,
                 verify_cold_s, resident_after_evict * 100);
  }
  const auto size = std::filesystem::file_size(so.path);
  std::printf(
      "{\"bench\":\"audit\",\"records\":%llu,\"append_per_s\":%.0f,\"verify_per_s\":%.0f,\"query_ms\":%.3f,"
      "\"query_case_ms\":%.3f,\"query_agency_time_ms\":%.3f,\"query_case_p99_ms\":%.3f,"
      "\"query_agency_time_p99_ms\":%.3f,\"export_s\":%.1f,\"store_bytes\":%llu,\"checkpoints_verified\":%llu,"
      "\"writer_cpu_us_per_record\":%.2f,\"indexer_cpu_us_per_record\":%.2f,\"index_lag_records\":%llu,"
      "\"close_s\":%.2f,\"verify_cold_per_s\":%.0f,\"export_bytes\":%llu}\n",
      static_cast<unsigned long long>(o.records), o.records / append_s, verify_s > 0 ? report.records / verify_s : 0.0,
      std::max(Median(by_case), Median(by_agency)), Median(by_case), Median(by_agency),
      [&] {
        auto v2 = by_case;
        std::sort(v2.begin(), v2.end());
        return v2.empty() ? 0.0 : v2[v2.size() * 99 / 100];
      }(),
      [&] {
        auto v2 = by_agency;
        std::sort(v2.begin(), v2.end());
        return v2.empty() ? 0.0 : v2[v2.size() * 99 / 100];
      }(),
      export_s, static_cast<unsigned long long>(size),
      static_cast<unsigned long long>(report.checkpoints_verified),
      writer_cpu_s < 0 ? -1.0 : writer_cpu_s * 1e6 / static_cast<double>(std::max<uint64_t>(o.records, 1)),
      indexer_cpu_s < 0 ? -1.0 : indexer_cpu_s * 1e6 / static_cast<double>(std::max<uint64_t>(o.records, 1)),
      static_cast<unsigned long long>(index_lag), close_s, verify_cold_s > 0 ? report.records / verify_cold_s : 0.0,
      static_cast<unsigned long long>(export_bytes));
  std::fflush(stdout);
  if (!o.keep && o.dir.empty()) std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace

void RegisterAudit(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<AuditOptions>();
  CLI::App* cmd = app.add_subcommand("audit", "audit log: durable appends/s, full verification/s, query latency");
  cmd->add_option("--records", o->records, "records in the log it builds")->capture_default_str();
  cmd->add_option("--agencies", o->agencies, "agencies in the records")->capture_default_str();
  cmd->add_option("--cases", o->cases, "distinct case ids")->capture_default_str();
  cmd->add_option("--queries", o->queries, "queries of each kind")->capture_default_str();
  cmd->add_option("--dir", o->dir, "directory for the store (default: a temporary one, removed after)");
  cmd->add_flag("--keep", o->keep, "keep the temporary directory");
  cmd->add_flag("!--no-verify", o->verify, "skip the export and verification (verify_per_s 0)");
  cmd->callback([o, exit_code] { *exit_code = RunAudit(*o); });
}

}  // namespace liaison::bench
