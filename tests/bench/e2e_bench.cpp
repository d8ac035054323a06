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
#include <fcntl.h>
#include <google/protobuf/util/time_util.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "proto/detail/pb.h"
#include "tests/bench/bench.h"

extern char** environ;

namespace liaison::bench {
namespace {

namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;

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
  bool skip_latency = false;
  bool skip_throughput = false;
};

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now().time_since_epoch()).count();
}

void SleepUntilNs(int64_t t) {
  const int64_t now = NowNs();
  if (t > now) std::this_thread::sleep_for(std::chrono::nanoseconds(t - now));
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  return out.good();
}

std::string Agency(int i) {  // 1-based, like peerbench's a1..aN, padded like the test PKI
  char b[16];
  std::snprintf(b, sizeof b, "a%02d", i);
  return b;
}

// ------------------------------------------------------------ processes

// A child process with stdout and stderr to files; killed if still running
// when destroyed.
class Child {
 public:
  Child() = default;
  Child(const std::vector<std::string>& argv, const std::string& out, const std::string& err) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    if (posix_spawnp(&pid_, args[0], &fa, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  ~Child() {
    if (running()) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0 && !exited_; }
  // Sends sig, waits up to timeout, then SIGKILL. Returns the exit status
  // (128+signal when killed by one).
  int Stop(int sig, std::chrono::milliseconds timeout) {
    if (!running()) return status_;
    ::kill(pid_, sig);
    if (Wait(timeout)) return status_;
    ::kill(pid_, SIGKILL);
    Wait(std::chrono::seconds(5));
    return status_;
  }
  bool Wait(std::chrono::milliseconds timeout) {
    const auto deadline = SteadyClock::now() + timeout;
    while (running()) {
      int st = 0;
      const pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return true;
      }
      if (SteadyClock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
  }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = -1;
};

// Runs argv to completion (at most 5 minutes), stdout and stderr to files.
int RunQuiet(const std::vector<std::string>& argv, const std::string& out, const std::string& err) {
  Child c(argv, out, err);
  if (c.pid() <= 0) return -1;
  c.Wait(std::chrono::minutes(5));
  return c.Stop(SIGKILL, std::chrono::seconds(1));
}

// ------------------------------------------------------------ CPU meters

// CPU seconds (user + system) of a process, all threads.
double ProcessCpuSeconds(pid_t pid) {
  const std::string stat = Slurp("/proc/" + std::to_string(pid) + "/stat");
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream in(stat.substr(close + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// Busy and total jiffies of the whole machine.
std::pair<double, double> MachineJiffies() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  in >> cpu;
  std::vector<double> v;
  double x;
  for (int i = 0; i < 8 && in >> x; ++i) v.push_back(x);
  if (v.size() < 5) return {0, 0};
  double total = 0;
  for (double d : v) total += d;
  const double idle = v[3] + v[4];  // idle + iowait
  return {total - idle, total};
}

std::vector<double> LoadAverages() {
  std::ifstream in("/proc/loadavg");
  std::vector<double> v(3, 0);
  in >> v[0] >> v[1] >> v[2];
  return v;
}

struct CpuMeter {
  pid_t broker = 0;
  int64_t t0 = 0;
  double b0 = 0, c0 = 0, busy0 = 0, total0 = 0;
  void Start() {
    t0 = NowNs();
    b0 = ProcessCpuSeconds(broker);
    c0 = ProcessCpuSeconds(::getpid());
    std::tie(busy0, total0) = MachineJiffies();
  }
  // Percent of one core over the interval: broker, this process, machine;
  // and the broker's CPU seconds.
  struct Reading {
    double broker_pct, client_pct, machine_pct, broker_s;
  };
  Reading Stop() const {
    const double wall = static_cast<double>(NowNs() - t0) / 1e9;
    const double b = ProcessCpuSeconds(broker) - b0, c = ProcessCpuSeconds(::getpid()) - c0;
    auto [busy, total] = MachineJiffies();
    const double cores = static_cast<double>(std::thread::hardware_concurrency());
    const double m = total > total0 ? (busy - busy0) / (total - total0) * 100.0 * cores : 0;
    return {wall > 0 ? b / wall * 100 : 0, wall > 0 ? c / wall * 100 : 0, m, b};
  }
};

// ------------------------------------------------------------ the message

// A realistic incident report from the police (about 1 KiB serialized),
// padded or trimmed to size bytes through its description.
v1::Message IncidentTemplate(int size) {
  using google::protobuf::util::TimeUtil;
  v1::Message m;
  auto* env = m.mutable_envelope();
  env->set_message_id("00000000-0000-4000-8000-000000000001");
  env->set_tlp(v1::TLP_AMBER);
  env->set_purpose("safeguarding");
  env->set_case_id("CASE-2026-004711");
  *env->mutable_created_at() = TimeUtil::GetCurrentTime();
  auto* ir = m.mutable_incident_report();
  ir->set_incident_type(v1::INCIDENT_HATE_CRIME);
  *ir->mutable_occurred_at() = TimeUtil::GetCurrentTime() - TimeUtil::SecondsToDuration(26 * 3600);
  *ir->mutable_reported_at() = TimeUtil::GetCurrentTime() - TimeUtil::SecondsToDuration(3 * 3600);
  auto* loc = ir->mutable_location();
  loc->set_type(v1::LOCATION_PUBLIC_TRANSPORT);
  loc->set_municipality("Example City");
  loc->set_district("Northside");
  loc->set_street_address("Station Square 4, tram stop platform B");
  loc->set_postal_code("4711 AB");
  loc->set_latitude(52.0907);
  loc->set_longitude(5.1214);
  loc->set_description("Covered tram shelter next to the bicycle parking, camera 3 covers the platform.");
  ir->add_bias_motivations(v1::BIAS_ANTI_MUSLIM);
  ir->add_bias_motivations(v1::BIAS_GENDER_BASED);
  auto* victim = ir->add_persons();
  victim->set_role(v1::ROLE_VICTIM);
  victim->set_full_name("Amira El Idrissi");
  victim->set_date_of_birth("2009-04-17");
  victim->set_age(16);
  victim->set_gender(v1::GENDER_FEMALE);
  victim->set_address("Lindenlaan 12, 4712 CD Example City");
  victim->set_contact("+31 6 1234 5678 (mother)");
  victim->set_notes("Pupil at Northside Secondary; shaken, not injured. Family asks for contact via school mentor.");
  auto* suspect = ir->add_persons();
  suspect->set_role(v1::ROLE_SUSPECT);
  suspect->set_full_name("Kevin de Vries");
  suspect->set_age(19);
  suspect->set_gender(v1::GENDER_MALE);
  suspect->set_notes("Known to youth work; earlier warning in March for extremist stickers.");
  auto* witness = ir->add_persons();
  witness->set_role(v1::ROLE_WITNESS);
  witness->set_full_name("J. Bakker");
  witness->set_contact("j.bakker@example.org");
  ir->set_severity(v1::SEVERITY_HIGH);
  ir->set_title("Headscarf pulled and verbal abuse at tram stop");
  ir->set_police_reference("PR-2026-0815-3321");
  static const std::string kText =
      "At about 16:40 the victim, waiting for tram 7 after school, was approached by a young man who shouted "
      "anti-Muslim insults, pulled at her headscarf and filmed her with his phone. Two bystanders intervened; the "
      "suspect left towards the bus station. The incident was reported by the victim's mother the same evening. "
      "Footage from the transport operator has been requested. Several pupils of the same school witnessed the "
      "incident and the school reports tension in two classes since. ";
  const size_t base = m.ByteSizeLong() + 3;  // + the description's tag and length
  std::string desc;
  const size_t want = size > static_cast<int>(base) ? static_cast<size_t>(size) - base : 16;
  while (desc.size() < want) desc += kText;
  desc.resize(want);
  ir->set_description(desc);
  return m;
}

// Message ids carry (run, publisher, sequence): RRRRRRRR-PPPP-4000-8000-SSSSSSSSSSSS.
std::string MessageId(uint32_t run, int pub, long seq) {
  char b[64];
  std::snprintf(b, sizeof b, "%08x-%04x-4000-8000-%012llx", run, static_cast<unsigned>(pub) & 0xffffu,
                static_cast<unsigned long long>(seq) & 0xffffffffffffull);
  return b;
}

bool ParseMessageId(const std::string& id, uint32_t* run, int* pub, long* seq) {
  if (id.size() != 36) return false;
  char* end = nullptr;
  *run = static_cast<uint32_t>(std::strtoul(id.substr(0, 8).c_str(), &end, 16));
  *pub = static_cast<int>(std::strtol(id.substr(9, 4).c_str(), &end, 16));
  *seq = static_cast<long>(std::strtoll(id.substr(24, 12).c_str(), &end, 16));
  return true;
}

// ------------------------------------------------------------ run state

struct Receiver {
  std::string name;
  int expect_pub = 0;
  bool redacted_rule = false;
  std::mutex mu;
  uint32_t run = 0;  // the phase's run id
  long expect_n = 0;
  std::vector<uint8_t> seen;    // per seq
  std::vector<int64_t> lat_ns;  // per seq
  long unique = 0, dups = 0, foreign = 0, stale = 0, bad = 0, redacted = 0, unredacted = 0;
  int64_t last_rx_ns = 0;
  std::unique_ptr<client::Client> client;
};

struct Publisher {
  std::string name, to;
  int idx = 0;
  std::unique_ptr<client::Client> client;
  std::mutex mu;
  std::condition_variable cv;
  long inflight = 0, low_water = 0;
  long sent = 0, acked = 0, nacked = 0;
  int64_t done_ns = 0;
  std::vector<int64_t> ack_ns;                    // per seq: publish -> PublishAck
  std::unique_ptr<std::atomic<int64_t>[]> sched;  // per seq: scheduled (or actual) send time
  std::string first_error;
};

struct Phase {
  uint32_t run = 0;
  long per_pub = 0;
  std::atomic<long> total_unique{0};
  long expected = 0;
  std::mutex done_mu;
  std::condition_variable done_cv;
};

struct World {
  Options o;
  std::vector<std::unique_ptr<Receiver>> rcv;
  std::vector<std::unique_ptr<Publisher>> pubs;
  std::atomic<Phase*> phase{nullptr};  // set before each phase starts, read by receivers
};

void OnDelivery(World* w, Receiver* r, client::Delivery d) {
  const int64_t t = NowNs();
  if (d.kind == client::Delivery::Kind::kMessage && d.message) {
    uint32_t run = 0;
    int pub = 0;
    long seq = 0;
    Phase* ph = w->phase.load(std::memory_order_acquire);
    std::lock_guard g(r->mu);
    const v1::Envelope& env = d.message->envelope();
    if (!ParseMessageId(env.message_id(), &run, &pub, &seq)) {
      r->bad++;
    } else if (ph == nullptr || run != r->run) {
      r->stale++;
    } else if (pub != r->expect_pub) {
      r->foreign++;
    } else if (seq < 0 || seq >= r->expect_n) {
      r->bad++;
    } else if (r->seen[static_cast<size_t>(seq)]) {
      r->dups++;
    } else {
      r->seen[static_cast<size_t>(seq)] = 1;
      r->unique++;
      r->last_rx_ns = t;
      const int64_t s =
          w->pubs[static_cast<size_t>(pub)]->sched[static_cast<size_t>(seq)].load(std::memory_order_acquire);
      if (s > 0) r->lat_ns[static_cast<size_t>(seq)] = t - s;
      if (env.redacted_paths_size() > 0 || env.pseudonymised_paths_size() > 0) {
        r->redacted++;
      } else {
        r->unredacted++;
      }
      if (ph->total_unique.fetch_add(1) + 1 == ph->expected) {
        std::lock_guard g2(ph->done_mu);
        ph->done_cv.notify_all();
      }
    }
  }
  // Acknowledge on receipt, as peerbench's subscribers do.
  client::Client* c;
  {
    std::lock_guard g(r->mu);
    c = r->client.get();
  }
  if (c) c->Acknowledge(d);
}

// Publisher loop: as fast as the window allows (interval 0), or paced.
void PublisherLoop(World* w, Publisher* p, const Phase* ph, int64_t t0, int64_t interval_ns, int64_t deadline) {
  const Options& o = w->o;
  v1::Message msg = IncidentTemplate(o.size);
  msg.mutable_envelope()->add_recipients(p->to);
  for (long s = 0; s < ph->per_pub; ++s) {
    int64_t tsched = 0;
    if (interval_ns > 0) {
      tsched = t0 + s * interval_ns;
      if (tsched > deadline) break;
      SleepUntilNs(tsched);
    }
    {
      std::unique_lock lk(p->mu);
      while (p->inflight >= o.window && NowNs() < deadline) p->cv.wait_for(lk, std::chrono::milliseconds(50));
      if (p->inflight >= o.window) break;  // deadline
      p->inflight++;
    }
    const int64_t sent = NowNs();
    p->sched[static_cast<size_t>(s)].store(interval_ns > 0 ? tsched : sent, std::memory_order_release);
    auto* env = msg.mutable_envelope();
    env->set_message_id(MessageId(ph->run, p->idx, s));
    *env->mutable_created_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
    p->client->Publish(msg, [p, s, sent](client::PublishResult r) {
      const int64_t t = NowNs();
      std::lock_guard g(p->mu);
      p->ack_ns[static_cast<size_t>(s)] = t - sent;
      if (r.status.ok() && r.AllAccepted()) {
        p->acked++;
      } else {
        p->nacked++;
        if (p->first_error.empty()) {
          p->first_error = !r.status.ok() ? r.status.ToString()
                                          : (r.outcomes.empty() ? std::string("no outcome")
                                                                : r.outcomes[0].outcome + " " + r.outcomes[0].reason);
        }
      }
      p->inflight--;
      if (p->inflight == 0) p->done_ns = t;
      if (p->inflight <= p->low_water) p->cv.notify_one();
    });
    std::lock_guard g(p->mu);
    p->sent++;
  }
  std::unique_lock lk(p->mu);
  while (p->inflight > 0 && NowNs() < deadline) p->cv.wait_for(lk, std::chrono::milliseconds(50));
  if (p->inflight == 0 && p->done_ns == 0) p->done_ns = NowNs();
}

void StartPhase(World& w, Phase& ph, uint32_t run, long per_pub) {
  ph.run = run;
  ph.per_pub = per_pub;
  ph.expected = per_pub * w.o.publishers;
  for (auto& r : w.rcv) {
    std::lock_guard g(r->mu);
    r->run = run;
    r->expect_n = per_pub;
    r->seen.assign(static_cast<size_t>(per_pub), 0);
    r->lat_ns.assign(static_cast<size_t>(per_pub), -1);
    r->unique = r->dups = r->foreign = r->stale = r->bad = r->redacted = r->unredacted = 0;
    r->last_rx_ns = 0;
  }
  for (auto& p : w.pubs) {
    std::lock_guard g(p->mu);
    p->inflight = p->sent = p->acked = p->nacked = 0;
    p->done_ns = 0;
    p->low_water = w.o.window - std::max(1, w.o.window / 8);
    p->ack_ns.assign(static_cast<size_t>(per_pub), -1);
    p->sched = std::make_unique<std::atomic<int64_t>[]>(static_cast<size_t>(per_pub));
    for (long i = 0; i < per_pub; ++i) p->sched[static_cast<size_t>(i)].store(0);
  }
  w.phase.store(&ph, std::memory_order_release);
}

void WaitDelivery(Phase& ph, int64_t deadline, double idle_s) {
  long last = -1;
  int64_t last_change = NowNs();
  std::unique_lock lk(ph.done_mu);
  while (ph.total_unique.load() < ph.expected && NowNs() < deadline) {
    ph.done_cv.wait_for(lk, std::chrono::milliseconds(100));
    const long cur = ph.total_unique.load();
    if (cur != last) {
      last = cur;
      last_change = NowNs();
    } else if (NowNs() - last_change > static_cast<int64_t>(idle_s * 1e9)) {
      break;
    }
  }
}

struct Totals {
  long sent = 0, acked = 0, nacked = 0, unique = 0, dups = 0, foreign = 0, stale = 0, bad = 0;
  long redacted = 0, unredacted_on_redacted_rule = 0, redacted_on_plain_rule = 0;
  int64_t last_rx = 0, pub_done = 0;
  std::string first_error;
};

Totals Collect(World& w) {
  Totals t;
  for (auto& p : w.pubs) {
    std::lock_guard g(p->mu);
    t.sent += p->sent;
    t.acked += p->acked;
    t.nacked += p->nacked;
    t.pub_done = std::max(t.pub_done, p->done_ns);
    if (t.first_error.empty()) t.first_error = p->first_error;
  }
  for (auto& r : w.rcv) {
    std::lock_guard g(r->mu);
    t.unique += r->unique;
    t.dups += r->dups;
    t.foreign += r->foreign;
    t.stale += r->stale;
    t.bad += r->bad;
    t.redacted += r->redacted;
    if (r->redacted_rule) t.unredacted_on_redacted_rule += r->unredacted;
    if (!r->redacted_rule) t.redacted_on_plain_rule += r->redacted;
    t.last_rx = std::max(t.last_rx, r->last_rx_ns);
  }
  return t;
}

double Percentile(std::vector<int64_t>& v, double p) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(std::ceil(p * static_cast<double>(v.size()))) - 1);
  return static_cast<double>(v[i]);
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
  std::string y =
      "# liaison-bench e2e: publishers a01..aP each send incident reports to one\n"
      "# receiver; the first receivers are schools and get them redacted and\n"
      "# pseudonymised, as the example city policy does (docs/examples/policy.yaml).\n"
      "version: 1\nagencies:\n";
  static const char* kPubSectors[] = {"law_enforcement", "social_work", "health", "law_enforcement"};
  static const char* kRcvSectors[] = {"social_work", "health", "law_enforcement", "local_government"};
  for (int i = 1; i <= o.publishers; ++i) {
    y += "  - id: " + Agency(i) + "\n    name: Benchmark publisher " + std::to_string(i) +
         "\n    sector: " + kPubSectors[(i - 1) % 4] + "\n";
  }
  for (int i = 1; i <= o.publishers; ++i) {
    const bool school = i <= o.redacted;
    y += "  - id: " + Agency(o.publishers + i) + "\n    name: Benchmark receiver " + std::to_string(i) +
         "\n    sector: " + (school ? "education" : kRcvSectors[(i - 1) % 4]) + "\n";
  }
  y += "  - id: auditor\n    name: Data protection officer\n    sector: local_government\n"
       "    roles: [auditor]\n    audit_scope: [\"*\"]\n";
  y += "groups:\n  - id: publishers\n    name: Benchmark publishers\n    members: [";
  for (int i = 1; i <= o.publishers; ++i) y += (i > 1 ? ", " : "") + Agency(i);
  y += "]\n";
  y += "agreements:\n"
       "  - id: bench-network\n"
       "    title: Benchmark prevention network agreement\n"
       "    parties: [\"*\"]\n"
       "    purposes: [safeguarding, threat_assessment, case_coordination]\n"
       "    legal_basis: [public_task, legal_obligation]\n"
       "    valid_from: 2020-01-01\n"
       "    valid_until: 2099-12-31\n"
       "rules:\n";
  for (int i = 1; i <= o.publishers; ++i) {
    const bool school = i <= o.redacted;
    y += "  - id: pair-" + std::to_string(i) + "\n    effect: permit\n    agreement: bench-network\n    from: [" +
         Agency(i) + "]\n    to: [" + Agency(o.publishers + i) +
         "]\n    types: [incident_report, case_update]\n    tlp: CLEAR..AMBER\n";
    if (school) {
      y += "    purposes: [safeguarding]\n"
           "    obligations:\n"
           "      redact: [criminal_offence, special_category, incident_report.persons.notes]\n"
           "      pseudonymise: [identifying]\n";
    }
  }
  y += "  - id: no-red-to-schools\n    effect: forbid\n    from: [\"*\"]\n    to: [sector:education]\n"
       "    tlp: RED\n";
  return y;
}

std::string BrokerYaml(const Options& o, const std::string& pki) {
  return "name: bench-e2e\nlisten: 127.0.0.1:0\nthreads: " + std::to_string(o.broker_threads) +
         "\nlog_level: info\npolicy: policy.yaml\nadmin_socket: admin.sock\n"
         "tls:\n  certificate: " +
         pki + "/broker.crt\n  private_key: " + pki + "/broker.key\n  ca_bundle: " + pki + "/ca.crt\n  crl: " + pki +
         "/ca.crl\n"
         // One agency per publisher at full speed: the default per-agency
         // publish rate (1000/s) would measure the limiter, not the broker.
         "limits:\n  publish_rate_per_agency: 0\n";
}

std::string FindBroker(const Options& o) {
  if (!o.broker.empty()) return o.broker;
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const auto& c : {self.parent_path() / "liaison-broker", self.parent_path() / "broker" / "liaison-broker"}) {
      if (fs::exists(c)) return c.string();
    }
  }
#ifdef LIAISON_BROKER_BIN
  if (fs::exists(LIAISON_BROKER_BIN)) return LIAISON_BROKER_BIN;
#endif
  return "liaison-broker";
}

client::ClientOptions ClientOpts(uint16_t port, const std::string& pki, const std::string& agency) {
  client::ClientOptions c;
  c.host = "127.0.0.1";
  c.port = port;
  c.server_name = "localhost";
  c.tls = TlsFiles{pki + "/" + agency + ".crt", pki + "/" + agency + ".key", pki + "/ca.crt", {}};
  c.client_name = "liaison-bench/e2e";
  return c;
}

std::string Fmt(double v, int prec = 3) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

int RunE2e(const Options& o) {
  const auto load_before = LoadAverages();
  std::string tmpl = (fs::temp_directory_path() / "liaison-e2e-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) {
    std::fprintf(stderr, "e2e: mkdtemp failed\n");
    return 1;
  }
  const std::string dir = tmpl;
  struct Cleanup {
    std::string dir;
    bool keep;
    ~Cleanup() {
      if (keep) {
        std::fprintf(stderr, "e2e: kept %s\n", dir.c_str());
        return;
      }
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{dir, o.keep};

  // The PKI: a01..aP publishers, a(P+1)..a(2P) receivers.
  std::string pki = o.pki;
  if (pki.empty()) {
    pki = dir + "/pki";
    std::vector<std::string> argv = {"bash", o.pki_script, pki};
    for (int i = 1; i <= 2 * o.publishers; ++i) argv.push_back(Agency(i));
    if (RunQuiet(argv, dir + "/pki.log", dir + "/pki.log.err") != 0) {
      std::fprintf(stderr, "e2e: %s failed:\n%s%s\n", o.pki_script.c_str(), Slurp(dir + "/pki.log").c_str(),
                   Slurp(dir + "/pki.log.err").c_str());
      return 1;
    }
  }
  for (int i = 1; i <= 2 * o.publishers; ++i) {
    if (!fs::exists(pki + "/" + Agency(i) + ".crt")) {
      std::fprintf(stderr, "e2e: %s has no certificate for %s\n", pki.c_str(), Agency(i).c_str());
      return 1;
    }
  }
  if (!WriteFile(dir + "/policy.yaml", PolicyText(o)) || !WriteFile(dir + "/broker.yaml", BrokerYaml(o, pki))) {
    std::fprintf(stderr, "e2e: cannot write the broker's configuration in %s\n", dir.c_str());
    return 1;
  }

  // The broker.
  const std::string broker_bin = FindBroker(o);
  auto broker = std::make_unique<Child>(std::vector<std::string>{broker_bin, "--config", dir + "/broker.yaml"},
                                        dir + "/broker.out", dir + "/broker.log");
  if (broker->pid() <= 0) {
    std::fprintf(stderr, "e2e: cannot start %s\n", broker_bin.c_str());
    return 1;
  }
  uint16_t port = 0;
  {
    const std::regex listening("listening on 127\\.0\\.0\\.1:([0-9]+)");
    const auto deadline = SteadyClock::now() + std::chrono::seconds(30);
    while (port == 0 && SteadyClock::now() < deadline && broker->running()) {
      std::smatch m;
      const std::string log = Slurp(dir + "/broker.log");
      if (std::regex_search(log, m, listening)) port = static_cast<uint16_t>(std::stoi(m[1]));
      if (port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      broker->Wait(std::chrono::milliseconds(0));
    }
    if (port == 0) {
      std::fprintf(stderr, "e2e: the broker did not start:\n%s\n", Slurp(dir + "/broker.log").c_str());
      return 1;
    }
  }
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
  w.o = o;
  for (int i = 0; i < o.publishers; ++i) {
    auto r = std::make_unique<Receiver>();
    r->name = Agency(o.publishers + 1 + i);
    r->expect_pub = i;
    r->redacted_rule = i < o.redacted;
    auto co = ClientOpts(port, pki, r->name);
    co.receive = true;
    co.credit = static_cast<uint32_t>(o.window);
    Receiver* rp = r.get();
    World* wp = &w;
    // Deliveries may arrive before Connect returns only if something was
    // queued before; nothing is, so r->client is set before the first one.
    auto c = client::Client::Connect(co, [wp, rp](client::Delivery d) { OnDelivery(wp, rp, std::move(d)); });
    if (!c.ok()) {
      std::fprintf(stderr, "e2e: receiver %s cannot connect: %s\n", r->name.c_str(), c.status().ToString().c_str());
      return 1;
    }
    {
      std::lock_guard g(r->mu);
      r->client = std::move(c).value();
    }
    w.rcv.push_back(std::move(r));
  }
  for (int i = 0; i < o.publishers; ++i) {
    auto p = std::make_unique<Publisher>();
    p->name = Agency(i + 1);
    p->to = Agency(o.publishers + 1 + i);
    p->idx = i;
    auto c = client::Client::Connect(ClientOpts(port, pki, p->name));
    if (!c.ok()) {
      std::fprintf(stderr, "e2e: publisher %s cannot connect: %s\n", p->name.c_str(), c.status().ToString().c_str());
      return 1;
    }
    p->client = std::move(c).value();
    w.pubs.push_back(std::move(p));
  }
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
         << ",\"machine_cpu_pct\":" << Fmt(c.machine_pct, 0) << ",\"fsyncs\":" << fsyncs;
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
    const int64_t interval = static_cast<int64_t>(1e9 / per_pub_rate);
    std::unique_ptr<Child> perf_sync;
    if (use_perf) {
      perf_sync = std::make_unique<Child>(
          std::vector<std::string>{"perf", "stat", "-x,", "-e", "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync",
                                   "-p", std::to_string(broker->pid()), "-o", dir + "/fsync-lat.txt"},
          dir + "/perf-stat2.out", dir + "/perf-stat2.err");
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    }
    CpuMeter cpu{broker->pid()};
    std::fprintf(stderr, "e2e: latency: %.0f msgs/s total for %.1f s (%d pubs, %ld msgs each), warm-up %.1f s\n",
                 o.rate, o.duration, o.publishers, ph.per_pub, o.warmup);
    const int64_t t0 = NowNs() + 50'000'000;
    const int64_t deadline = t0 + static_cast<int64_t>((o.duration + std::min(o.timeout, 30.0)) * 1e9);
    cpu.Start();
    std::vector<std::thread> th;
    for (auto& p : w.pubs) {
      th.emplace_back(PublisherLoop, &w, p.get(), &ph, t0 + p->idx * interval / o.publishers, interval, deadline);
    }
    for (auto& t : th) t.join();
    WaitDelivery(ph, deadline, 5.0);
    const auto c = cpu.Stop();
    if (perf_sync) perf_sync->Stop(SIGINT, std::chrono::seconds(10));
    const Totals t = Collect(w);
    const long warm_n = static_cast<long>(per_pub_rate * o.warmup);
    std::vector<int64_t> lat, al;
    for (auto& r : w.rcv) {
      for (long s = warm_n; s < r->expect_n; ++s) {
        if (r->lat_ns[static_cast<size_t>(s)] >= 0) lat.push_back(r->lat_ns[static_cast<size_t>(s)]);
      }
    }
    for (auto& p : w.pubs) {
      for (long s = warm_n; s < static_cast<long>(p->ack_ns.size()); ++s) {
        if (p->ack_ns[static_cast<size_t>(s)] >= 0) al.push_back(p->ack_ns[static_cast<size_t>(s)]);
      }
    }
    const size_t measured = lat.size();
    const double mx = lat.empty() ? -1 : static_cast<double>(*std::max_element(lat.begin(), lat.end())) / 1e6;
    const double p50 = Percentile(lat, 0.50) / 1e6, p90 = Percentile(lat, 0.90) / 1e6,
                 p99 = Percentile(lat, 0.99) / 1e6, p999 = Percentile(lat, 0.999) / 1e6;
    const double ap50 = Percentile(al, 0.5) / 1e6, ap99 = Percentile(al, 0.99) / 1e6;
    const long lost = ph.expected - t.unique;
    lost_total += lost;
    dups_total += t.dups;
    complete = complete && lost == 0 && t.foreign == 0 && t.nacked == 0;
    const long fsyncs = use_perf ? ParseSyncCount(dir + "/fsync-lat.txt") : -1;
    std::fprintf(stderr,
                 "e2e: latency ms: p50 %.3f p90 %.3f p99 %.3f p999 %.3f max %.3f (n=%zu); publish->ack p50 %.3f "
                 "p99 %.3f; received %ld/%ld, dups %ld, refused %ld; cpu broker %.0f%% client %.0f%% machine %.0f%%; "
                 "fsyncs %ld\n",
                 p50, p90, p99, p999, mx, measured, ap50, ap99, t.unique, ph.expected, t.dups, t.nacked, c.broker_pct,
                 c.client_pct, c.machine_pct, fsyncs);
    json << ",\"rate\":" << Fmt(o.rate, 0) << ",\"duration_s\":" << Fmt(o.duration, 1) << ",\"measured\":" << measured
         << ",\"p50_ms\":" << Fmt(p50) << ",\"p90_ms\":" << Fmt(p90) << ",\"p99_ms\":" << Fmt(p99)
         << ",\"p999_ms\":" << Fmt(p999) << ",\"max_ms\":" << Fmt(mx) << ",\"lat_ack_p50_ms\":" << Fmt(ap50)
         << ",\"lat_ack_p99_ms\":" << Fmt(ap99) << ",\"lat_lost\":" << lost << ",\"lat_dups\":" << t.dups
         << ",\"lat_refused\":" << t.nacked << ",\"lat_broker_cpu_pct\":" << Fmt(c.broker_pct, 0)
         << ",\"lat_client_cpu_pct\":" << Fmt(c.client_pct, 0) << ",\"lat_fsyncs\":" << fsyncs;
  }

  // ---------------- teardown
  for (auto& p : w.pubs) p->client->Close();
  for (auto& r : w.rcv) r->client->Close();
  w.phase.store(nullptr);
  const int rc = broker->Stop(SIGTERM, std::chrono::seconds(20));
  const std::string log = Slurp(dir + "/broker.log");
  long errors = 0;
  for (size_t pos = 0; (pos = log.find("[error]", pos)) != std::string::npos; ++pos) errors++;
  for (size_t pos = 0; (pos = log.find("[critical]", pos)) != std::string::npos; ++pos) errors++;
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
  sub->add_flag("--keep", o->keep, "keep the temporary directory (broker log, database, perf data)");
  sub->add_flag("--no-latency", o->skip_latency, "skip the latency phase");
  sub->add_flag("--no-throughput", o->skip_throughput, "skip the throughput phase");
  sub->callback([o, exit_code] {
    if (o->redacted > o->publishers) o->redacted = o->publishers;
    *exit_code = RunE2e(*o);
  });
}

}  // namespace liaison::bench
