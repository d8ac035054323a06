// liaison-bench flood: what one flooding agency does to everyone else's
// latency (docs/benchmarks.md).
//
// Starts a real liaison-broker process as e2e does (mutual TLS, policy with
// a redaction obligation, audit log, SQLite synchronous=FULL), but with the
// per-agency publish rate limit on (publish_rate_per_agency, default 1000/s,
// and its burst), and runs e2e's latency workload twice: P publishers send
// RATE msgs/s in total to their receivers for DURATION s, paced open-loop,
// latency from the scheduled send time; first alone (the baseline), then
// while one more agency (the flooder) publishes FACTOR times its rate limit
// to a sink agency that acknowledges everything it gets. The flooder counts
// its rate_limited refusals and its queued publishes; every message of the
// others must arrive, and none may be refused.
#include <google/protobuf/util/time_util.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/bench/bench.h"
#include "tests/bench/harness.h"

namespace liaison::bench {
namespace {

struct Options {
  int publishers = 4;
  int size = 1024;
  int window = 256;      // the others' unacknowledged publishes, and every receiver's credit
  double rate = 2000;    // the others' msgs/s in total
  double duration = 10;  // each latency run, seconds
  double warmup = 1;     // seconds of each run not counted
  double timeout = 120;
  int redacted = 1;
  uint32_t rate_limit = 1000;  // the broker's publish_rate_per_agency
  uint32_t burst = 5000;       // and publish_burst_per_agency (the broker's defaults)
  double factor = 10;          // the flooder tries factor x rate_limit publishes per second
  int flood_window = 512;      // the flooder's unanswered publishes (the broker allows 1024)
  int broker_threads = 2;
  std::string broker, pki, pki_script;
  bool keep = false;
};

// The flooding agency and the sink its messages go to.
struct Flood {
  std::unique_ptr<client::Client> flooder, sink;
  std::mutex mu;
  std::condition_variable cv;
  long inflight = 0;
  long attempted = 0, queued = 0, rate_limited = 0, other_refused = 0;
  std::string first_other;
  std::atomic<long> delivered{0};
  uint32_t run = 0;
};

// Publishes paced at rate per second for duration s (open loop), with at
// most window publishes unanswered: when the broker answers slowly the
// attempts fall behind the schedule, which is counted, not hidden.
void FloodLoop(Flood* f, const Options& o, int64_t t0, double rate, double duration) {
  v1::Message msg = IncidentTemplate(o.size);
  msg.mutable_envelope()->add_recipients(Agency(2 * o.publishers + 2));
  const int64_t interval = static_cast<int64_t>(1e9 / rate);
  const int64_t end = t0 + static_cast<int64_t>(duration * 1e9);
  for (long s = 0;; ++s) {
    const int64_t t = t0 + s * interval;
    if (t >= end) break;
    SleepUntilNs(t);
    {
      std::unique_lock lk(f->mu);
      while (f->inflight >= o.flood_window && NowNs() < end) f->cv.wait_for(lk, std::chrono::milliseconds(20));
      if (f->inflight >= o.flood_window) break;
      f->inflight++;
      f->attempted++;
    }
    auto* env = msg.mutable_envelope();
    env->set_message_id(MessageId(f->run, 0x7fff, s));
    *env->mutable_created_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
    f->flooder->Publish(msg, [f](client::PublishResult r) {
      std::lock_guard g(f->mu);
      if (r.status.ok() && r.AllAccepted()) {
        f->queued++;
      } else if (r.error_code == "rate_limited") {
        f->rate_limited++;
      } else {
        f->other_refused++;
        if (f->first_other.empty()) f->first_other = r.error_code + " " + r.status.ToString();
      }
      f->inflight--;
      f->cv.notify_all();
    });
  }
  // Every attempt is answered before the counts are read.
  std::unique_lock lk(f->mu);
  const int64_t deadline = NowNs() + static_cast<int64_t>(o.timeout * 1e9);
  while (f->inflight > 0 && NowNs() < deadline) f->cv.wait_for(lk, std::chrono::milliseconds(50));
}

struct RunResult {
  LatencyStats lat;
  Totals t;
  long expected = 0;
  CpuMeter::Reading cpu{};
};

RunResult LatencyRun(World& w, Phase& ph, uint32_t run, const Options& o, pid_t broker, Flood* flood) {
  const double per_pub_rate = o.rate / o.publishers;
  StartPhase(w, ph, run, std::max(1L, static_cast<long>(per_pub_rate * o.duration)));
  CpuMeter cpu{broker};
  cpu.Start();
  std::thread flooder;
  if (flood) {
    flooder = std::thread(FloodLoop, flood, std::cref(o), NowNs(), o.factor * o.rate_limit, o.duration);
  }
  RunPaced(w, ph, o.rate, o.duration, o.timeout);
  if (flooder.joinable()) flooder.join();
  RunResult r;
  r.cpu = cpu.Stop();
  r.t = Collect(w);
  r.expected = ph.expected;
  r.lat = SummariseLatency(w, per_pub_rate, o.warmup);
  return r;
}

std::string LatencyJson(const std::string& prefix, const RunResult& r) {
  std::ostringstream j;
  j << ",\"" << prefix << "_p50_ms\":" << Fmt(r.lat.p50) << ",\"" << prefix << "_p90_ms\":" << Fmt(r.lat.p90)
    << ",\"" << prefix << "_p99_ms\":" << Fmt(r.lat.p99) << ",\"" << prefix << "_p999_ms\":" << Fmt(r.lat.p999)
    << ",\"" << prefix << "_max_ms\":" << Fmt(r.lat.max) << ",\"" << prefix << "_ack_p99_ms\":" << Fmt(r.lat.ack_p99)
    << ",\"" << prefix << "_measured\":" << r.lat.measured << ",\"" << prefix
    << "_broker_cpu_pct\":" << Fmt(r.cpu.broker_pct, 0);
  return j.str();
}

void PrintRun(const char* name, const RunResult& r) {
  std::fprintf(stderr,
               "flood: %s: latency ms p50 %.3f p90 %.3f p99 %.3f p999 %.3f max %.3f (n=%zu); received %ld/%ld, "
               "dups %ld, foreign %ld, refused %ld%s%s; cpu broker %.0f%% client %.0f%% machine %.0f%%\n",
               name, r.lat.p50, r.lat.p90, r.lat.p99, r.lat.p999, r.lat.max, r.lat.measured, r.t.unique, r.expected,
               r.t.dups, r.t.foreign, r.t.nacked, r.t.first_error.empty() ? "" : " first: ", r.t.first_error.c_str(),
               r.cpu.broker_pct, r.cpu.client_pct, r.cpu.machine_pct);
}

int RunFlood(const Options& o) {
  const auto load_before = LoadAverages();
  TempDir tmp("liaison-flood", o.keep, "flood");
  if (!tmp.ok()) {
    std::fprintf(stderr, "flood: mkdtemp failed\n");
    return 1;
  }
  const std::string dir = tmp.path();
  // a01..aP publish to a(P+1)..a(2P); a(2P+1) floods a(2P+2).
  const std::string flooder = Agency(2 * o.publishers + 1), sink = Agency(2 * o.publishers + 2);
  std::vector<std::string> agencies;
  for (int i = 1; i <= 2 * o.publishers + 2; ++i) agencies.push_back(Agency(i));
  const std::string pki = PreparePki(o.pki, o.pki_script, dir, agencies, "flood");
  if (pki.empty()) return 1;
  const std::string policy = WorkloadPolicy(
      "# liaison-bench flood: publishers a01..aP each send incident reports to one\n"
      "# receiver (the first ones schools, redacted and pseudonymised); one more\n"
      "# agency floods a sink agency.\n",
      o.publishers, o.redacted, {{flooder, sink}});
  const std::string limits = "  publish_rate_per_agency: " + std::to_string(o.rate_limit) +
                             "\n  publish_burst_per_agency: " + std::to_string(o.burst) + "\n";
  if (!WriteFile(dir + "/policy.yaml", policy) ||
      !WriteFile(dir + "/broker.yaml", BrokerYaml("bench-flood", o.broker_threads, pki, limits))) {
    std::fprintf(stderr, "flood: cannot write the broker's configuration in %s\n", dir.c_str());
    return 1;
  }
  if (o.rate / o.publishers >= o.rate_limit) {
    std::fprintf(stderr, "flood: each publisher sends %.0f/s, not below the rate limit of %u/s: they would be refused\n",
                 o.rate / o.publishers, o.rate_limit);
    return 1;
  }

  const std::string broker_bin = FindBroker(o.broker);
  uint16_t port = 0;
  auto broker = StartBroker(broker_bin, dir, &port, "flood");
  if (!broker) return 1;
  std::fprintf(stderr, "flood: broker %s (pid %d) on port %u, data in %s\n", broker_bin.c_str(), broker->pid(), port,
               dir.c_str());

  Phase base_phase, flood_phase;
  Flood flood;
  World w;
  w.o = Workload{o.publishers, o.size, o.window, o.redacted};
  if (!ConnectWorld(w, port, pki, "liaison-bench/flood", "flood")) return 1;
  {
    auto co = ClientOpts(port, pki, sink, "liaison-bench/flood");
    co.receive = true;
    co.credit = static_cast<uint32_t>(o.window);
    Flood* fp = &flood;
    // The sink acknowledges on receipt; nothing is queued for it before it
    // connects, so fp->sink is set before the first delivery.
    auto c = client::Client::Connect(co, [fp](client::Delivery d) {
      if (d.kind != client::Delivery::Kind::kMessage || !d.message) return;
      fp->delivered++;
      client::Client* s;
      {
        std::lock_guard g(fp->mu);
        s = fp->sink.get();
      }
      if (s) s->Acknowledge(d);
    });
    auto f = client::Client::Connect(ClientOpts(port, pki, flooder, "liaison-bench/flood"));
    if (!c.ok() || !f.ok()) {
      std::fprintf(stderr, "flood: %s cannot connect: %s\n", (c.ok() ? flooder : sink).c_str(),
                   (c.ok() ? f.status() : c.status()).ToString().c_str());
      return 1;
    }
    std::lock_guard g(flood.mu);
    flood.sink = std::move(c).value();
    flood.flooder = std::move(f).value();
  }
  std::fprintf(stderr,
               "flood: %d publishers -> %d receivers at %.0f msgs/s in total for %.1f s, twice: alone, then while %s "
               "floods %s at %.0f/s (limit %u/s, burst %u)\n",
               o.publishers, o.publishers, o.rate, o.duration, flooder.c_str(), sink.c_str(), o.factor * o.rate_limit,
               o.rate_limit, o.burst);

  std::mt19937 rng(static_cast<uint32_t>(NowNs()));
  const RunResult base = LatencyRun(w, base_phase, rng() | 1u, o, broker->pid(), nullptr);
  PrintRun("baseline", base);
  flood.run = rng() | 1u;
  const RunResult fl = LatencyRun(w, flood_phase, rng() | 1u, o, broker->pid(), &flood);
  PrintRun("with flood", fl);
  // The flood's queued messages reach the sink too (bounded wait).
  {
    long last = -1;
    int64_t last_change = NowNs();
    const int64_t deadline = NowNs() + static_cast<int64_t>(std::min(o.timeout, 60.0) * 1e9);
    long queued = 0;
    {
      std::lock_guard g(flood.mu);
      queued = flood.queued;
    }
    while (flood.delivered.load() < queued && NowNs() < deadline && NowNs() - last_change < 5'000'000'000) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (flood.delivered.load() != last) {
        last = flood.delivered.load();
        last_change = NowNs();
      }
    }
  }
  long attempted, queued, limited, other;
  std::string first_other;
  {
    std::lock_guard g(flood.mu);
    attempted = flood.attempted;
    queued = flood.queued;
    limited = flood.rate_limited;
    other = flood.other_refused;
    first_other = flood.first_other;
  }
  std::fprintf(stderr,
               "flood: the flooder attempted %ld publishes (%.0f/s): %ld queued, %ld rate_limited, %ld refused "
               "otherwise%s%s; the sink received %ld\n",
               attempted, static_cast<double>(attempted) / o.duration, queued, limited, other,
               first_other.empty() ? "" : ", first: ", first_other.c_str(), flood.delivered.load());

  CloseWorld(w);
  flood.flooder->Close();
  flood.sink->Close();
  const int rc = broker->Stop(SIGTERM, std::chrono::seconds(20));
  const long errors = CountLoggedErrors(dir + "/broker.log");
  if (errors > 0) std::fprintf(stderr, "flood: the broker logged %ld error(s); see its log (--keep)\n", errors);
  const auto load_after = LoadAverages();

  const long others_lost = (base.expected - base.t.unique) + (fl.expected - fl.t.unique);
  const long others_refused = base.t.nacked + fl.t.nacked;
  const long dups = base.t.dups + fl.t.dups, foreign = base.t.foreign + fl.t.foreign;
  std::ostringstream json;
  json << "{\"bench\":\"flood\",\"publishers\":" << o.publishers << ",\"size\":" << o.size
       << ",\"rate\":" << Fmt(o.rate, 0) << ",\"duration_s\":" << Fmt(o.duration, 1)
       << ",\"rate_limit\":" << o.rate_limit << ",\"burst\":" << o.burst
       << ",\"flood_target_per_s\":" << Fmt(o.factor * o.rate_limit, 0) << LatencyJson("baseline", base)
       << LatencyJson("flood", fl) << ",\"flood_attempted\":" << attempted
       << ",\"flood_attempted_per_s\":" << Fmt(static_cast<double>(attempted) / o.duration, 0)
       << ",\"flood_rate_limited\":" << limited << ",\"flood_queued\":" << queued
       << ",\"flood_other_refused\":" << other << ",\"flood_delivered\":" << flood.delivered.load()
       << ",\"others_lost\":" << others_lost << ",\"others_refused\":" << others_refused << ",\"others_dups\":" << dups
       << ",\"foreign\":" << foreign << ",\"broker_exit\":" << rc << ",\"broker_errors\":" << errors
       << ",\"load_before\":[" << Fmt(load_before[0], 2) << "," << Fmt(load_before[1], 2) << ","
       << Fmt(load_before[2], 2) << "],\"load_after\":[" << Fmt(load_after[0], 2) << "," << Fmt(load_after[1], 2) << ","
       << Fmt(load_after[2], 2) << "]}";
  std::printf("%s\n", json.str().c_str());
  std::fflush(stdout);
  return others_lost == 0 && others_refused == 0 && dups == 0 && foreign == 0 ? 0 : 2;
}

}  // namespace

void RegisterFlood(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<Options>();
#ifdef LIAISON_SOURCE_DIR
  o->pki_script = std::string(LIAISON_SOURCE_DIR) + "/certs/dev-pki.sh";
#endif
  CLI::App* sub = app.add_subcommand(
      "flood", "e2e's latency workload with and without one agency flooding at a multiple of its publish rate limit");
  sub->add_option("--publishers", o->publishers, "publishing agencies, each with its own receiver")
      ->capture_default_str()
      ->check(CLI::Range(1, 48));
  sub->add_option("--size", o->size, "serialized message size in bytes (approximately)")
      ->capture_default_str()
      ->check(CLI::Range(300, 1 << 20));
  sub->add_option("--window", o->window, "the others' unacknowledged publishes; receivers' credit")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  sub->add_option("--rate", o->rate, "the others' msgs/s in total")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--duration", o->duration, "each latency run, seconds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--warmup", o->warmup, "first seconds of each run not counted")->capture_default_str();
  sub->add_option("--timeout", o->timeout, "longest wait for answers and deliveries, seconds")->capture_default_str();
  sub->add_option("--redacted", o->redacted, "receivers whose messages are redacted and pseudonymised")
      ->capture_default_str()
      ->check(CLI::Range(0, 48));
  sub->add_option("--rate-limit", o->rate_limit, "the broker's publish_rate_per_agency")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  sub->add_option("--burst", o->burst, "the broker's publish_burst_per_agency")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  sub->add_option("--flood-factor", o->factor, "the flooder publishes this multiple of the rate limit per second")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--flood-window", o->flood_window, "the flooder's unanswered publishes at most")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  sub->add_option("--broker-threads", o->broker_threads, "the broker's worker threads")->capture_default_str();
  sub->add_option("--broker", o->broker, "liaison-broker binary (default: beside liaison-bench)");
  sub->add_option("--pki", o->pki, "an existing dev PKI (certs/dev-pki.sh) with certificates a01..a(2P+2)");
  sub->add_option("--pki-script", o->pki_script, "certs/dev-pki.sh, to make a PKI")->capture_default_str();
  sub->add_flag("--keep", o->keep, "keep the temporary directory (broker log, database)");
  sub->callback([o, exit_code] {
    if (o->redacted > o->publishers) o->redacted = o->publishers;
    *exit_code = RunFlood(*o);
  });
}

}  // namespace liaison::bench
