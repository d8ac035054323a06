// What the benchmarks that drive a real liaison-broker process share (e2e,
// flood, connections): child processes, CPU and memory readings of a
// process, a temporary directory with a dev PKI and the broker's
// configuration, starting the broker and finding its port, and the
// peerbench-style workload (paired publishers and receivers on the client
// library, every message accounted for by the (run, publisher, sequence) in
// its id, latency from the scheduled send time).
//
// Threading: the workload's Receiver and Publisher are shared between the
// benchmark's threads and the clients' I/O threads; their fields are guarded
// by their mu. Everything else is used from one thread.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "client/client.h"
#include "common/latency_histogram.h"
#include "proto/detail/pb.h"

namespace liaison::bench {

using SteadyClock = std::chrono::steady_clock;

int64_t NowNs();  // steady clock
void SleepUntilNs(int64_t t);
std::string Slurp(const std::string& path);
bool WriteFile(const std::string& path, const std::string& text);
// Agency i (1-based), padded like the test PKI's a01..a20.
std::string Agency(int i);
std::string Fmt(double v, int prec = 3);
// The p-quantile (0..1) of v, which it sorts; -1 when v is empty.
double Percentile(std::vector<int64_t>& v, double p);

// ------------------------------------------------------------ processes

// A child process with stdout and stderr to files; killed if still running
// when destroyed.
class Child {
 public:
  Child() = default;
  Child(const std::vector<std::string>& argv, const std::string& out, const std::string& err);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0 && !exited_; }
  // Sends sig, waits up to timeout, then SIGKILL. Returns the exit status
  // (128+signal when killed by one).
  int Stop(int sig, std::chrono::milliseconds timeout);
  bool Wait(std::chrono::milliseconds timeout);

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = -1;
};

// Runs argv to completion (at most 5 minutes), stdout and stderr to files.
int RunQuiet(const std::vector<std::string>& argv, const std::string& out, const std::string& err);

// ------------------------------------------------------------ readings

// CPU seconds (user + system) of a process, all threads.
double ProcessCpuSeconds(pid_t pid);
// Resident set size of a process (VmRSS of /proc/PID/status), bytes; -1 if
// it cannot be read.
long ProcessRssBytes(pid_t pid);
// Bytes a process has passed to write calls on files (wchar of
// /proc/PID/io; its sockets' sends are not counted there); -1 if it cannot
// be read. (Not write_bytes: for the commit log's small synced appends it
// counted about a hundred times what reached the disk; docs/benchmarks.md.)
long ProcessFileWriteBytes(pid_t pid);
// Bytes written to the block device that holds path, by everyone (sectors
// written in /sys/dev/block/MAJ:MIN/stat); -1 if path is on no block device.
long DeviceWriteBytes(const std::string& path);
// Busy and total jiffies of the whole machine.
std::pair<double, double> MachineJiffies();
std::vector<double> LoadAverages();

// CPU seconds of each of a process's threads, by thread id: (name, seconds).
std::map<pid_t, std::pair<std::string, double>> ThreadCpuSeconds(pid_t pid);

struct CpuMeter {
  pid_t broker = 0;
  int64_t t0 = 0;
  double b0 = 0, c0 = 0, busy0 = 0, total0 = 0;
  std::string disk_path = {};  // the broker's data directory: its device's writes are counted
  long file0 = -1, disk0 = -1;
  std::map<pid_t, std::pair<std::string, double>> threads0 = {};
  void Start();
  // Percent of one core over the interval: broker, this process, machine;
  // the broker's CPU seconds; and the broker's cores by thread name, its
  // threads of one name summed, the I/O threads (which carry the
  // process's own name) as "io"; the bytes the broker wrote to files, and
  // the bytes written to disk_path's device meanwhile (-1 if unknown).
  struct Reading {
    double broker_pct, client_pct, machine_pct, broker_s;
    std::map<std::string, double> thread_cores;
    long broker_file_bytes, device_bytes;
  };
  Reading Stop() const;
};

// A Reading's thread_cores as a JSON object, two decimals.
std::string ThreadCoresJson(const std::map<std::string, double>& cores);

// ------------------------------------------------------------ the message

// A realistic incident report from the police (about 1 KiB serialized),
// padded or trimmed to size bytes through its description.
v1::Message IncidentTemplate(int size);
// Message ids are UUIDv7 (time-ordered, like those of Liaison's clients)
// carrying (run, publisher, sequence): TTTTTTTT-TTTT-7RRR-8RRR-PPPPSSSSSSSS,
// of the run its low 24 bits (kRunMask).
constexpr uint32_t kRunMask = 0xffffff;
std::string MessageId(uint32_t run, int pub, long seq);
bool ParseMessageId(const std::string& id, uint32_t* run, int* pub, long* seq);

// ------------------------------------------------------------ the broker

// A directory made with mkdtemp, removed on destruction unless keep.
class TempDir {
 public:
  TempDir(const std::string& prefix, bool keep, std::string tag);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool keep_;
  std::string tag_;
};

// The PKI to use: pki if given, else a new one made in dir/pki with the
// script (certs/dev-pki.sh), as an absolute path. Every agency must have a
// certificate there.
// Returns "" after printing why not.
std::string PreparePki(const std::string& pki, const std::string& script, const std::string& dir,
                       const std::vector<std::string>& agencies, const char* tag);

// The liaison-broker binary: explicit_bin, else beside this executable,
// else the build's.
std::string FindBroker(const std::string& explicit_bin);

// A broker.yaml with policy.yaml, admin.sock and the PKI's broker
// certificate, CA and CRL, listening on 127.0.0.1:0. limits is the body of
// the limits map (lines indented by two spaces, comments allowed), or "".
std::string BrokerYaml(const std::string& name, int threads, const std::string& pki, const std::string& limits);

// The workload's policy: publishers a01..aP, receivers a(P+1)..a(2P), one
// rule per pair under one agreement, the first `redacted` receivers schools
// whose rule redacts and pseudonymises as the example city policy does, an
// auditor and a forbid rule. extra_pairs adds (sender, recipient) agencies
// and a rule for each.
std::string WorkloadPolicy(const std::string& header, int publishers, int redacted,
                           const std::vector<std::pair<std::string, std::string>>& extra_pairs = {});

// Starts bin --config dir/broker.yaml (log in dir/broker.log) and waits up
// to 30 s for the port it listens on. nullptr after printing the log.
std::unique_ptr<Child> StartBroker(const std::string& bin, const std::string& dir, uint16_t* port, const char* tag);

// [error] and [critical] lines in a broker log.
long CountLoggedErrors(const std::string& log_path);

// The broker's answer to "status" on its admin socket, or "".
std::string AdminStatus(const std::string& path);
// A number in such an answer; -1 if it has none.
long JsonLong(const std::string& text, const std::string& key);
// How long the commit log's fdatasyncs took in the broker started in dir
// (StartBroker), from its admin socket's status; nullopt if it did not
// answer with them.
std::optional<LatencyHistogram::Snapshot> BrokerLogSyncs(const std::string& dir);

client::ClientOptions ClientOpts(uint16_t port, const std::string& pki, const std::string& agency,
                                 const std::string& client_name);

// ------------------------------------------------------------ the workload

struct Workload {
  int publishers = 4;
  int size = 1024;    // serialized message bytes (approximately)
  int window = 256;   // unacknowledged publishes per publisher; also the receivers' credit
  int redacted = 1;   // receivers whose rule carries a redaction/pseudonymisation obligation
};

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
  std::vector<int64_t> late_ns;                   // per seq: scheduled time -> Publish called (paced runs)
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

// Publisher i (0-based) is a(i+1) and sends to receiver a(P+1+i).
struct World {
  Workload o;
  std::vector<std::unique_ptr<Receiver>> rcv;
  std::vector<std::unique_ptr<Publisher>> pubs;
  std::atomic<Phase*> phase{nullptr};  // set before each phase starts, read by receivers
};

// Connects the receivers (receiving, credit = window, acknowledging every
// delivery on receipt), then the publishers. false after printing why.
bool ConnectWorld(World& w, uint16_t port, const std::string& pki, const std::string& client_name, const char* tag);
void CloseWorld(World& w);

// Publisher loop: as fast as the window allows (interval 0), or paced.
void PublisherLoop(World* w, Publisher* p, const Phase* ph, int64_t t0, int64_t interval_ns, int64_t deadline);
void StartPhase(World& w, Phase& ph, uint32_t run, long per_pub);
// Waits until every message of the phase arrived, the deadline passed, or
// nothing arrived for idle_s.
void WaitDelivery(Phase& ph, int64_t deadline, double idle_s);

struct Totals {
  long sent = 0, acked = 0, nacked = 0, unique = 0, dups = 0, foreign = 0, stale = 0, bad = 0;
  long redacted = 0, unredacted_on_redacted_rule = 0, redacted_on_plain_rule = 0;
  int64_t last_rx = 0, pub_done = 0;
  std::string first_error;
};
Totals Collect(World& w);

// The latency phase (StartPhase first): rate msgs/s in total, each publisher
// paced open-loop and offset from the others, for duration s; returns once
// everything arrived or nothing did for 5 s.
void RunPaced(World& w, Phase& ph, double rate, double duration, double timeout);

struct LatencyStats {
  size_t measured = 0;
  double p50 = -1, p90 = -1, p99 = -1, p999 = -1, max = -1;  // ms, one way, from the scheduled send
  double ack_p50 = -1, ack_p99 = -1;                          // ms, publish -> PublishAck
  double late_p50 = -1, late_p99 = -1;  // ms, scheduled send -> Publish called (the benchmark's own delay)
};
// The latencies of the messages after the first warmup s.
LatencyStats SummariseLatency(World& w, double per_pub_rate, double warmup);
// Writes one CSV line per message of the phase: publisher, seq, scheduled
// send (ms from the first, and the steady clock's ns), how late Publish was
// called, publish->ack and send->receive latency (ms, empty when unknown).
// For finding out when a tail happens.
Status WriteLatencyTrace(World& w, const std::string& path);

}  // namespace liaison::bench
