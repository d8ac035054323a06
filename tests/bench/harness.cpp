// The shared harness of the benchmarks that drive a real broker (harness.h).
#include "tests/bench/harness.h"

#include <fcntl.h>
#include <google/protobuf/util/time_util.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

extern char** environ;

namespace liaison::bench {

namespace fs = std::filesystem;

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

std::string Fmt(double v, int prec) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

double Percentile(std::vector<int64_t>& v, double p) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(std::ceil(p * static_cast<double>(v.size()))) - 1);
  return static_cast<double>(v[i]);
}

// ------------------------------------------------------------ processes

Child::Child(const std::vector<std::string>& argv, const std::string& out, const std::string& err) {
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

Child::~Child() {
  if (running()) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
}

int Child::Stop(int sig, std::chrono::milliseconds timeout) {
  if (!running()) return status_;
  ::kill(pid_, sig);
  if (Wait(timeout)) return status_;
  ::kill(pid_, SIGKILL);
  Wait(std::chrono::seconds(5));
  return status_;
}

bool Child::Wait(std::chrono::milliseconds timeout) {
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

int RunQuiet(const std::vector<std::string>& argv, const std::string& out, const std::string& err) {
  Child c(argv, out, err);
  if (c.pid() <= 0) return -1;
  c.Wait(std::chrono::minutes(5));
  return c.Stop(SIGKILL, std::chrono::seconds(1));
}

// ------------------------------------------------------------ readings

namespace {

// User + system CPU seconds from the text of a /proc stat file (a process's
// or a thread's): fields 14 and 15, counted after the name in parentheses,
// which may itself hold spaces.
double StatCpuSeconds(const std::string& stat) {
  const size_t close = stat.rfind(')');
  if (close == std::string::npos || close + 2 > stat.size()) return 0;
  std::istringstream in(stat.substr(close + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

}  // namespace

double ProcessCpuSeconds(pid_t pid) { return StatCpuSeconds(Slurp("/proc/" + std::to_string(pid) + "/stat")); }

std::map<pid_t, std::pair<std::string, double>> ThreadCpuSeconds(pid_t pid) {
  std::map<pid_t, std::pair<std::string, double>> out;
  const std::string process = Slurp("/proc/" + std::to_string(pid) + "/comm");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    const std::string stat = Slurp(e.path().string() + "/stat");
    const size_t open = stat.find('('), close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos || close < open) continue;
    std::string name = stat.substr(open + 1, close - open - 1);
    if (name + "\n" == process || name == process) name = "io";
    const auto tid = static_cast<pid_t>(std::strtol(e.path().filename().c_str(), nullptr, 10));
    out[tid] = {name, StatCpuSeconds(stat)};
  }
  return out;
}

std::string ThreadCoresJson(const std::map<std::string, double>& cores) {
  std::string out = "{";
  for (const auto& [name, c] : cores) {
    char v[32];
    std::snprintf(v, sizeof v, "%.2f", c);
    out += (out.size() > 1 ? ",\"" : "\"") + name + "\":" + v;
  }
  return out + "}";
}

long ProcessRssBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6) * 1024L;  // "VmRSS:   12345 kB"
  }
  return -1;
}

long ProcessFileWriteBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/io");
  std::string key;
  long value = 0;
  while (in >> key >> value) {
    if (key == "wchar:") return value;
  }
  return -1;
}

long DeviceWriteBytes(const std::string& path) {
  struct stat st {};
  if (path.empty() || ::stat(path.c_str(), &st) != 0) return -1;
  std::ifstream in("/sys/dev/block/" + std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev)) +
                   "/stat");
  long fields[7] = {};
  for (long& f : fields) {
    if (!(in >> f)) return -1;
  }
  return fields[6] * 512;  // sectors written, 512 bytes each whatever the device's own
}

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

void CpuMeter::Start() {
  t0 = NowNs();
  threads0 = ThreadCpuSeconds(broker);
  b0 = ProcessCpuSeconds(broker);
  c0 = ProcessCpuSeconds(::getpid());
  file0 = ProcessFileWriteBytes(broker);
  disk0 = DeviceWriteBytes(disk_path);
  std::tie(busy0, total0) = MachineJiffies();
}

CpuMeter::Reading CpuMeter::Stop() const {
  const double wall = static_cast<double>(NowNs() - t0) / 1e9;
  const double b = ProcessCpuSeconds(broker) - b0, c = ProcessCpuSeconds(::getpid()) - c0;
  auto [busy, total] = MachineJiffies();
  const double cores = static_cast<double>(std::thread::hardware_concurrency());
  const double m = total > total0 ? (busy - busy0) / (total - total0) * 100.0 * cores : 0;
  // Threads that began meanwhile count from 0; any that ended are missing.
  std::map<std::string, double> by_name;
  for (const auto& [tid, now] : ThreadCpuSeconds(broker)) {
    auto before = threads0.find(tid);
    const double used = now.second - (before == threads0.end() ? 0 : before->second.second);
    if (wall > 0) by_name[now.first] += used / wall;
  }
  const long file = ProcessFileWriteBytes(broker), disk = DeviceWriteBytes(disk_path);
  return {wall > 0 ? b / wall * 100 : 0,
          wall > 0 ? c / wall * 100 : 0,
          m,
          b,
          std::move(by_name),
          file >= 0 && file0 >= 0 ? file - file0 : -1,
          disk >= 0 && disk0 >= 0 ? disk - disk0 : -1};
}

// ------------------------------------------------------------ the message

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

// Message ids are UUIDv7, as Liaison's own clients make them (common/uuid.h:
// time-ordered, so the broker's index of message ids is appended to at its
// end), with (run, publisher, sequence) in the random bits:
// TTTTTTTT-TTTT-7RRR-8RRR-PPPPSSSSSSSS (T: Unix milliseconds; R: the run's
// low 24 bits).
std::string MessageId(uint32_t run, int pub, long seq) {
  const auto ms = static_cast<unsigned long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                      std::chrono::system_clock::now().time_since_epoch())
                                                      .count()) &
                  0xffffffffffffull;
  char b[64];
  std::snprintf(b, sizeof b, "%08llx-%04llx-7%03x-8%03x-%04x%08llx", ms >> 16, ms & 0xffff, (run >> 12) & 0xfffu,
                run & 0xfffu, static_cast<unsigned>(pub) & 0xffffu,
                static_cast<unsigned long long>(seq) & 0xffffffffull);
  return b;
}

bool ParseMessageId(const std::string& id, uint32_t* run, int* pub, long* seq) {
  if (id.size() != 36 || id[14] != '7' || id[19] != '8') return false;
  char* end = nullptr;
  *run = static_cast<uint32_t>(std::strtoul(id.substr(15, 3).c_str(), &end, 16) << 12 |
                               std::strtoul(id.substr(20, 3).c_str(), &end, 16));
  *pub = static_cast<int>(std::strtol(id.substr(24, 4).c_str(), &end, 16));
  *seq = static_cast<long>(std::strtoll(id.substr(28, 8).c_str(), &end, 16));
  return true;
}

// ------------------------------------------------------------ the broker

TempDir::TempDir(const std::string& prefix, bool keep, std::string tag) : keep_(keep), tag_(std::move(tag)) {
  std::string tmpl = (fs::temp_directory_path() / (prefix + "-XXXXXX")).string();
  if (::mkdtemp(tmpl.data())) path_ = tmpl;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  if (keep_) {
    std::fprintf(stderr, "%s: kept %s\n", tag_.c_str(), path_.c_str());
    return;
  }
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string PreparePki(const std::string& pki_in, const std::string& script, const std::string& dir,
                       const std::vector<std::string>& agencies, const char* tag) {
  // Absolute: the broker resolves paths relative to its configuration file.
  std::string pki = pki_in.empty() ? std::string() : fs::absolute(pki_in).string();
  if (pki.empty()) {
    pki = dir + "/pki";
    std::vector<std::string> argv = {"bash", script, pki};
    argv.insert(argv.end(), agencies.begin(), agencies.end());
    if (RunQuiet(argv, dir + "/pki.log", dir + "/pki.log.err") != 0) {
      std::fprintf(stderr, "%s: %s failed:\n%s%s\n", tag, script.c_str(), Slurp(dir + "/pki.log").c_str(),
                   Slurp(dir + "/pki.log.err").c_str());
      return "";
    }
  }
  for (const auto& a : agencies) {
    if (!fs::exists(pki + "/" + a + ".crt")) {
      std::fprintf(stderr, "%s: %s has no certificate for %s\n", tag, pki.c_str(), a.c_str());
      return "";
    }
  }
  return pki;
}

std::string FindBroker(const std::string& explicit_bin) {
  if (!explicit_bin.empty()) return explicit_bin;
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

client::ClientOptions ClientOpts(uint16_t port, const std::string& pki, const std::string& agency,
                                 const std::string& client_name) {
  client::ClientOptions c;
  c.host = "127.0.0.1";
  c.port = port;
  c.server_name = "localhost";
  c.tls = TlsFiles{pki + "/" + agency + ".crt", pki + "/" + agency + ".key", pki + "/ca.crt", {}};
  c.client_name = client_name;
  return c;
}

std::string BrokerYaml(const std::string& name, int threads, const std::string& pki, const std::string& limits) {
  return "name: " + name + "\nlisten: 127.0.0.1:0\nthreads: " + std::to_string(threads) +
         "\nlog_level: info\npolicy: policy.yaml\nadmin_socket: admin.sock\n"
         "tls:\n  certificate: " +
         pki + "/broker.crt\n  private_key: " + pki + "/broker.key\n  ca_bundle: " + pki + "/ca.crt\n  crl: " + pki +
         "/ca.crl\n" + (limits.empty() ? "" : "limits:\n" + limits);
}

std::string WorkloadPolicy(const std::string& header, int publishers, int redacted,
                           const std::vector<std::pair<std::string, std::string>>& extra_pairs) {
  std::string y = header + "version: 1\nagencies:\n";
  static const char* kPubSectors[] = {"law_enforcement", "social_work", "health", "law_enforcement"};
  static const char* kRcvSectors[] = {"social_work", "health", "law_enforcement", "local_government"};
  for (int i = 1; i <= publishers; ++i) {
    y += "  - id: " + Agency(i) + "\n    name: Benchmark publisher " + std::to_string(i) +
         "\n    sector: " + kPubSectors[(i - 1) % 4] + "\n";
  }
  for (int i = 1; i <= publishers; ++i) {
    const bool school = i <= redacted;
    y += "  - id: " + Agency(publishers + i) + "\n    name: Benchmark receiver " + std::to_string(i) +
         "\n    sector: " + (school ? "education" : kRcvSectors[(i - 1) % 4]) + "\n";
  }
  for (size_t i = 0; i < extra_pairs.size(); ++i) {
    const std::string n = std::to_string(i + 1);
    y += "  - id: " + extra_pairs[i].first + "\n    name: Benchmark extra sender " + n +
         "\n    sector: law_enforcement\n";
    y += "  - id: " + extra_pairs[i].second + "\n    name: Benchmark extra recipient " + n +
         "\n    sector: social_work\n";
  }
  y += "  - id: auditor\n    name: Data protection officer\n    sector: local_government\n"
       "    roles: [auditor]\n    audit_scope: [\"*\"]\n";
  y += "groups:\n  - id: publishers\n    name: Benchmark publishers\n    members: [";
  for (int i = 1; i <= publishers; ++i) y += (i > 1 ? ", " : "") + Agency(i);
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
  for (int i = 1; i <= publishers; ++i) {
    const bool school = i <= redacted;
    y += "  - id: pair-" + std::to_string(i) + "\n    effect: permit\n    agreement: bench-network\n    from: [" +
         Agency(i) + "]\n    to: [" + Agency(publishers + i) +
         "]\n    types: [incident_report, case_update]\n    tlp: CLEAR..AMBER\n";
    if (school) {
      y += "    purposes: [safeguarding]\n"
           "    obligations:\n"
           "      redact: [criminal_offence, special_category, incident_report.persons.notes]\n"
           "      pseudonymise: [identifying]\n";
    }
  }
  for (size_t i = 0; i < extra_pairs.size(); ++i) {
    y += "  - id: extra-" + std::to_string(i + 1) + "\n    effect: permit\n    agreement: bench-network\n    from: [" +
         extra_pairs[i].first + "]\n    to: [" + extra_pairs[i].second +
         "]\n    types: [incident_report, case_update]\n    tlp: CLEAR..AMBER\n";
  }
  y += "  - id: no-red-to-schools\n    effect: forbid\n    from: [\"*\"]\n    to: [sector:education]\n"
       "    tlp: RED\n";
  return y;
}

std::unique_ptr<Child> StartBroker(const std::string& bin, const std::string& dir, uint16_t* port, const char* tag) {
  auto broker =
      std::make_unique<Child>(std::vector<std::string>{bin, "--config", dir + "/broker.yaml"}, dir + "/broker.out",
                              dir + "/broker.log");
  if (broker->pid() <= 0) {
    std::fprintf(stderr, "%s: cannot start %s\n", tag, bin.c_str());
    return nullptr;
  }
  *port = 0;
  const std::regex listening("listening on 127\\.0\\.0\\.1:([0-9]+)");
  const auto deadline = SteadyClock::now() + std::chrono::seconds(30);
  while (*port == 0 && SteadyClock::now() < deadline && broker->running()) {
    std::smatch m;
    const std::string log = Slurp(dir + "/broker.log");
    if (std::regex_search(log, m, listening)) *port = static_cast<uint16_t>(std::stoi(m[1]));
    if (*port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    broker->Wait(std::chrono::milliseconds(0));
  }
  if (*port == 0) {
    std::fprintf(stderr, "%s: the broker did not start:\n%s\n", tag, Slurp(dir + "/broker.log").c_str());
    return nullptr;
  }
  return broker;
}

std::string AdminStatus(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  std::string answer;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::write(fd, "status\n", 7) == 7) {
    char buf[1024];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0) answer.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  while (!answer.empty() && answer.back() == '\n') answer.pop_back();
  return answer;
}

long JsonLong(const std::string& text, const std::string& key) {
  const size_t p = text.find("\"" + key + "\":");
  return p == std::string::npos ? -1 : std::atol(text.c_str() + p + key.size() + 3);
}

std::optional<LatencyHistogram::Snapshot> BrokerLogSyncs(const std::string& dir) {
  const std::string status = AdminStatus(dir + "/admin.sock");
  const std::string key = "\"log_sync_buckets\":";
  LatencyHistogram::Snapshot s;
  const size_t at = status.find(key);
  if (at == std::string::npos ||
      !LatencyHistogram::Snapshot::ParseBucketsJson(std::string_view(status).substr(at + key.size()), &s)) {
    return std::nullopt;
  }
  return s;
}

long CountLoggedErrors(const std::string& log_path) {
  const std::string log = Slurp(log_path);
  long errors = 0;
  for (size_t pos = 0; (pos = log.find("[error]", pos)) != std::string::npos; ++pos) errors++;
  for (size_t pos = 0; (pos = log.find("[critical]", pos)) != std::string::npos; ++pos) errors++;
  return errors;
}

// ------------------------------------------------------------ the workload

namespace {

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

}  // namespace

// Publisher loop: as fast as the window allows (interval 0), or paced.
void PublisherLoop(World* w, Publisher* p, const Phase* ph, int64_t t0, int64_t interval_ns, int64_t deadline) {
  const Workload& o = w->o;
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
    if (interval_ns > 0) p->late_ns[static_cast<size_t>(s)] = sent - tsched;  // read after the phase
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
  run &= kRunMask;  // what a message id carries
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
    p->late_ns.assign(static_cast<size_t>(per_pub), -1);
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

bool ConnectWorld(World& w, uint16_t port, const std::string& pki, const std::string& client_name, const char* tag) {
  const Workload& o = w.o;
  for (int i = 0; i < o.publishers; ++i) {
    auto r = std::make_unique<Receiver>();
    r->name = Agency(o.publishers + 1 + i);
    r->expect_pub = i;
    r->redacted_rule = i < o.redacted;
    auto co = ClientOpts(port, pki, r->name, client_name);
    co.receive = true;
    co.credit = static_cast<uint32_t>(o.window);
    Receiver* rp = r.get();
    World* wp = &w;
    // Deliveries may arrive before Connect returns only if something was
    // queued before; nothing is, so r->client is set before the first one.
    auto c = client::Client::Connect(co, [wp, rp](client::Delivery d) { OnDelivery(wp, rp, std::move(d)); });
    if (!c.ok()) {
      std::fprintf(stderr, "%s: receiver %s cannot connect: %s\n", tag, r->name.c_str(), c.status().ToString().c_str());
      return false;
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
    auto c = client::Client::Connect(ClientOpts(port, pki, p->name, client_name));
    if (!c.ok()) {
      std::fprintf(stderr, "%s: publisher %s cannot connect: %s\n", tag, p->name.c_str(), c.status().ToString().c_str());
      return false;
    }
    p->client = std::move(c).value();
    w.pubs.push_back(std::move(p));
  }
  return true;
}

void CloseWorld(World& w) {
  for (auto& p : w.pubs) p->client->Close();
  for (auto& r : w.rcv) r->client->Close();
  w.phase.store(nullptr);
}

void RunPaced(World& w, Phase& ph, double rate, double duration, double timeout) {
  const double per_pub_rate = rate / w.o.publishers;
  const int64_t interval = static_cast<int64_t>(1e9 / per_pub_rate);
  const int64_t t0 = NowNs() + 50'000'000;
  const int64_t deadline = t0 + static_cast<int64_t>((duration + std::min(timeout, 30.0)) * 1e9);
  std::vector<std::thread> th;
  for (auto& p : w.pubs) {
    th.emplace_back(PublisherLoop, &w, p.get(), &ph, t0 + p->idx * interval / w.o.publishers, interval, deadline);
  }
  for (auto& t : th) t.join();
  WaitDelivery(ph, deadline, 5.0);
}

LatencyStats SummariseLatency(World& w, double per_pub_rate, double warmup) {
  const long warm_n = static_cast<long>(per_pub_rate * warmup);
  std::vector<int64_t> lat, al;
  for (auto& r : w.rcv) {
    std::lock_guard g(r->mu);
    for (long s = warm_n; s < r->expect_n; ++s) {
      if (r->lat_ns[static_cast<size_t>(s)] >= 0) lat.push_back(r->lat_ns[static_cast<size_t>(s)]);
    }
  }
  std::vector<int64_t> late;
  for (auto& p : w.pubs) {
    std::lock_guard g(p->mu);
    for (long s = warm_n; s < static_cast<long>(p->ack_ns.size()); ++s) {
      if (p->ack_ns[static_cast<size_t>(s)] >= 0) al.push_back(p->ack_ns[static_cast<size_t>(s)]);
      if (p->late_ns[static_cast<size_t>(s)] >= 0) late.push_back(p->late_ns[static_cast<size_t>(s)]);
    }
  }
  LatencyStats s;
  s.measured = lat.size();
  s.max = lat.empty() ? -1 : static_cast<double>(*std::max_element(lat.begin(), lat.end())) / 1e6;
  s.p50 = Percentile(lat, 0.50) / 1e6;
  s.p90 = Percentile(lat, 0.90) / 1e6;
  s.p99 = Percentile(lat, 0.99) / 1e6;
  s.p999 = Percentile(lat, 0.999) / 1e6;
  s.ack_p50 = Percentile(al, 0.5) / 1e6;
  s.ack_p99 = Percentile(al, 0.99) / 1e6;
  if (!late.empty()) {
    s.late_p50 = Percentile(late, 0.5) / 1e6;
    s.late_p99 = Percentile(late, 0.99) / 1e6;
  }
  return s;
}

Status WriteLatencyTrace(World& w, const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return Status::IoError("cannot write " + path + ": " + std::strerror(errno));
  std::fprintf(f, "publisher,seq,sched_ms,sched_ns,late_ms,ack_ms,e2e_ms\n");
  int64_t first = 0;
  for (auto& p : w.pubs) {
    for (size_t s = 0; s < p->ack_ns.size(); ++s) {
      const int64_t t = p->sched[s].load(std::memory_order_acquire);
      if (t > 0 && (first == 0 || t < first)) first = t;
    }
  }
  for (auto& r : w.rcv) {
    Publisher& p = *w.pubs[static_cast<size_t>(r->expect_pub)];
    std::scoped_lock g(r->mu, p.mu);
    for (long s = 0; s < r->expect_n && s < static_cast<long>(p.ack_ns.size()); ++s) {
      const auto i = static_cast<size_t>(s);
      const int64_t t = p.sched[i].load(std::memory_order_acquire);
      if (t <= 0) continue;
      std::fprintf(f, "%d,%ld,%.3f,%ld,", r->expect_pub, s, static_cast<double>(t - first) / 1e6, static_cast<long>(t));
      if (p.late_ns[i] >= 0) std::fprintf(f, "%.3f", static_cast<double>(p.late_ns[i]) / 1e6);
      std::fputc(',', f);
      if (p.ack_ns[i] >= 0) std::fprintf(f, "%.3f", static_cast<double>(p.ack_ns[i]) / 1e6);
      std::fputc(',', f);
      if (r->lat_ns[i] >= 0) std::fprintf(f, "%.3f", static_cast<double>(r->lat_ns[i]) / 1e6);
      std::fputc('\n', f);
    }
  }
  if (std::fclose(f) != 0) return Status::IoError("cannot write " + path + ": " + std::strerror(errno));
  return Status::Ok();
}

}  // namespace liaison::bench
