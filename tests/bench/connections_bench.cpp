// liaison-bench connections: what an idle agency session costs the broker
// (docs/benchmarks.md).
//
// Starts a real liaison-broker process (as e2e does: dev PKI, mutual TLS,
// policy, audit log) and reads its resident memory (VmRSS) after it
// settled; opens N sessions spread over the dev agencies a01..aK, each a
// complete TLS 1.3 handshake with the agency's client certificate followed
// by Hello -> Welcome, so each is an authenticated agency session the broker
// counts; reads VmRSS again after a settle and reports
// (after - before) / N. The sessions then stay idle for a while (answering
// the broker's pings, as a client must) to measure the broker's CPU for
// idle sessions and to check that none was dropped.
//
// The client library runs a thread per connection, far too heavy for
// 10,000 sessions in one process; the sessions here are non-blocking
// OpenSSL connections on a few epoll threads, made with the client's own
// TLS context (common/detail/tls.h) and the wire framing of proto/.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/detail/tls.h"
#include "proto/frame_codec.h"
#include "tests/bench/bench.h"
#include "tests/bench/harness.h"

namespace liaison::bench {
namespace {

struct Options {
  long sessions = 10'000;
  int agencies = 20;     // a01..aK, sessions spread round-robin
  int threads = 2;       // client epoll threads (this process)
  int parallel = 32;     // sessions being set up at once (below the broker's max_handshakes_per_source)
  double settle = 3;     // seconds before each memory reading
  double hold = 5;       // seconds the sessions stay idle after the second reading
  double timeout = 600;  // longest time to open all sessions
  int broker_threads = 2;
  std::string broker, pki, pki_script;
  bool keep = false;
};

// ------------------------------------------------------------ the sessions

enum class State { kConnecting, kHandshake, kAwaitWelcome, kOpen, kDone };

struct Conn {
  int fd = -1;
  SSL* ssl = nullptr;
  State state = State::kConnecting;
  uint32_t events = 0;  // registered with epoll
  std::string out;      // encoded frames not yet written
  proto::FrameDecoder decoder;
};

// Counters of all workers.
struct Tally {
  std::atomic<long> started{0}, open{0}, failed{0}, closed_by_broker{0}, pings{0};
  std::atomic<int64_t> first_open_ns{0}, last_open_ns{0};
  std::mutex mu;
  std::string first_error;
  void Error(const std::string& e) {
    std::lock_guard g(mu);
    if (first_error.empty()) first_error = e;
  }
};

// One epoll thread owning the sessions i = index, index + threads, ...
class Worker {
 public:
  Worker(const Options& o, int index, uint16_t port, const std::vector<SSL_CTX*>& ctx, Tally* tally,
         const std::atomic<bool>* stop)
      : o_(o), index_(index), port_(port), ctx_(ctx), tally_(tally), stop_(stop) {
    for (long i = index; i < o.sessions; i += o.threads) mine_++;
    max_pending_ = std::max(1, o.parallel / o.threads);
  }
  ~Worker() {
    for (auto& c : conns_) Close(c.get());
    if (ep_ >= 0) ::close(ep_);
  }

  void Run() {
    ep_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) {
      tally_->Error(std::string("epoll_create1: ") + std::strerror(errno));
      return;
    }
    std::vector<epoll_event> evs(256);
    while (!stop_->load(std::memory_order_relaxed)) {
      while (pending_ < max_pending_ && next_ < mine_) StartOne();
      const int n = ::epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()), 100);
      for (int i = 0; i < n; ++i) Handle(static_cast<Conn*>(evs[static_cast<size_t>(i)].data.ptr),
                                         evs[static_cast<size_t>(i)].events);
    }
    // Close every session: close_notify, then the socket.
    for (auto& c : conns_) {
      if (c->ssl && c->state == State::kOpen) SSL_shutdown(c->ssl);
      Close(c.get());
    }
  }

 private:
  void StartOne() {
    const long global = index_ + next_ * o_.threads;
    ++next_;
    auto c = std::make_unique<Conn>();
    Conn* cp = c.get();
    conns_.push_back(std::move(c));
    tally_->started++;
    ++pending_;
    cp->fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (cp->fd < 0) return Fail(cp, std::string("socket: ") + std::strerror(errno));
    const int one = 1;
    ::setsockopt(cp->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port_);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(cp->fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno != EINPROGRESS) {
      return Fail(cp, std::string("connect: ") + std::strerror(errno));
    }
    cp->ssl = SSL_new(ctx_[static_cast<size_t>(global % o_.agencies)]);
    if (!cp->ssl) return Fail(cp, "SSL_new: " + tls::OpenSslErrors());
    SSL_set_fd(cp->ssl, cp->fd);
    SSL_set_connect_state(cp->ssl);
    SSL_set1_host(cp->ssl, "localhost");  // the broker's certificate must name it, as for the client library
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.ptr = cp;
    cp->events = EPOLLOUT;
    if (::epoll_ctl(ep_, EPOLL_CTL_ADD, cp->fd, &ev) != 0) {
      return Fail(cp, std::string("epoll_ctl: ") + std::strerror(errno));
    }
  }

  void Handle(Conn* c, uint32_t events) {
    if (c->state == State::kDone) return;
    if (c->state == State::kConnecting) {
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0 || (events & EPOLLERR)) return Fail(c, std::string("connect: ") + std::strerror(err));
      c->state = State::kHandshake;
    }
    if (c->state == State::kHandshake) {
      ERR_clear_error();
      const int r = SSL_do_handshake(c->ssl);
      if (r != 1) {
        const int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) return Want(c, EPOLLIN);
        if (e == SSL_ERROR_WANT_WRITE) return Want(c, EPOLLOUT);
        const long verify = SSL_get_verify_result(c->ssl);
        return Fail(c, "TLS handshake: " + (verify != X509_V_OK ? std::string(X509_verify_cert_error_string(verify))
                                                                 : tls::OpenSslErrors()));
      }
      // Hello straight after the handshake (docs/protocol.md, section 5).
      v1::Frame f;
      f.mutable_hello()->set_protocol_version(1);
      f.mutable_hello()->set_client_name("liaison-bench/connections");
      c->out += proto::EncodeFrame(f).value();
      c->state = State::kAwaitWelcome;
    }
    if (!Flush(c)) return;
    if (!ReadFrames(c)) return;
    Want(c, c->out.empty() ? EPOLLIN : EPOLLIN | EPOLLOUT);
  }

  // Writes what is queued; false when the session ended.
  bool Flush(Conn* c) {
    while (!c->out.empty()) {
      ERR_clear_error();
      const int n = SSL_write(c->ssl, c->out.data(), static_cast<int>(c->out.size()));
      if (n > 0) {
        c->out.erase(0, static_cast<size_t>(n));
        continue;
      }
      const int e = SSL_get_error(c->ssl, n);
      if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) return true;
      Ended(c, "write failed: " + tls::OpenSslErrors());
      return false;
    }
    return true;
  }

  // Reads and answers what arrived; false when the session ended.
  bool ReadFrames(Conn* c) {
    uint8_t buf[4096];
    for (;;) {
      ERR_clear_error();
      const int n = SSL_read(c->ssl, buf, sizeof buf);
      if (n <= 0) {
        const int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
        Ended(c, e == SSL_ERROR_ZERO_RETURN ? "closed by the broker" : "read failed: " + tls::OpenSslErrors());
        return false;
      }
      c->decoder.Feed(buf, static_cast<size_t>(n));
      for (;;) {
        auto next = c->decoder.Next();
        if (!next.ok()) {
          Ended(c, "bad frame: " + next.status().message());
          return false;
        }
        if (!next->has_value()) break;
        v1::Frame f;
        if (!proto::ParseFrame(**next, &f).ok()) {
          Ended(c, "unparsable frame");
          return false;
        }
        if (f.has_welcome() && c->state == State::kAwaitWelcome) {
          c->state = State::kOpen;
          --pending_;
          const int64_t now = NowNs();
          int64_t zero = 0;
          tally_->first_open_ns.compare_exchange_strong(zero, now);
          tally_->last_open_ns.store(now);
          tally_->open++;
        } else if (f.has_ping()) {
          // Answer, as any client must, or the broker closes the session
          // after its idle timeout.
          v1::Frame pong;
          pong.mutable_pong()->set_nonce(f.ping().nonce());
          c->out += proto::EncodeFrame(pong).value();
          tally_->pings++;
        } else if (f.has_error()) {
          tally_->Error("broker: " + f.error().message());
        }
      }
    }
    return Flush(c);
  }

  void Want(Conn* c, uint32_t events) {
    if (c->events == events) return;
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = c;
    ::epoll_ctl(ep_, EPOLL_CTL_MOD, c->fd, &ev);
    c->events = events;
  }

  // A session that ended after it was open, or during its setup.
  void Ended(Conn* c, const std::string& why) {
    if (c->state == State::kOpen) {
      tally_->closed_by_broker++;
      tally_->open--;
      tally_->Error(why);
      Close(c);
      return;
    }
    Fail(c, why);
  }

  void Fail(Conn* c, const std::string& why) {
    tally_->failed++;
    tally_->Error(why);
    --pending_;
    Close(c);
  }

  void Close(Conn* c) {
    if (c->ssl) SSL_free(c->ssl);
    c->ssl = nullptr;
    if (c->fd >= 0) ::close(c->fd);  // also leaves the epoll set
    c->fd = -1;
    c->state = State::kDone;
    c->out = std::string();
  }

  const Options& o_;
  const int index_;
  const uint16_t port_;
  const std::vector<SSL_CTX*>& ctx_;
  Tally* tally_;
  const std::atomic<bool>* stop_;
  int ep_ = -1;
  long mine_ = 0, next_ = 0;
  int pending_ = 0, max_pending_ = 1;
  std::vector<std::unique_ptr<Conn>> conns_;
};

// ------------------------------------------------------------ setup

// Ensures this process (and so the broker it starts, which inherits the
// limit) may open need file descriptors, raising the soft limit up to the
// hard one.
bool RaiseFdLimit(rlim_t need) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return false;
  if (rl.rlim_cur >= need) return true;
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
    std::fprintf(stderr, "connections: %llu file descriptors needed, the hard limit is %llu (ulimit -Hn)\n",
                 static_cast<unsigned long long>(need), static_cast<unsigned long long>(rl.rlim_max));
    return false;
  }
  rl.rlim_cur = need;
  return ::setrlimit(RLIMIT_NOFILE, &rl) == 0;
}

std::string PolicyText(int agencies) {
  std::string y =
      "# liaison-bench connections: agencies a01..aK that only connect.\n"
      "version: 1\nagencies:\n";
  for (int i = 1; i <= agencies; ++i) {
    y += "  - id: " + Agency(i) + "\n    name: Benchmark agency " + std::to_string(i) + "\n    sector: social_work\n";
  }
  y += "agreements:\n"
       "  - id: bench-network\n"
       "    title: Benchmark prevention network agreement\n"
       "    parties: [\"*\"]\n"
       "    purposes: [safeguarding]\n"
       "    legal_basis: [public_task]\n"
       "    valid_from: 2020-01-01\n"
       "    valid_until: 2099-12-31\n"
       "rules:\n"
       "  - id: all\n    effect: permit\n    agreement: bench-network\n    from: [\"*\"]\n    to: [\"*\"]\n"
       "    types: [incident_report]\n    tlp: CLEAR..AMBER\n";
  return y;
}

void Sleep(double s) { std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(s * 1000))); }

int RunConnections(const Options& o) {
  const auto load_before = LoadAverages();
  // This process holds a socket per session, and so does the broker.
  if (!RaiseFdLimit(static_cast<rlim_t>(o.sessions) + 512)) {
    std::fprintf(stderr, "connections: cannot raise the open-file limit to %ld\n", o.sessions + 512);
    return 1;
  }
  TempDir tmp("liaison-conn", o.keep, "connections");
  if (!tmp.ok()) {
    std::fprintf(stderr, "connections: mkdtemp failed\n");
    return 1;
  }
  const std::string dir = tmp.path();
  std::vector<std::string> agencies;
  for (int i = 1; i <= o.agencies; ++i) agencies.push_back(Agency(i));
  const std::string pki = PreparePki(o.pki, o.pki_script, dir, agencies, "connections");
  if (pki.empty()) return 1;
  const long per_agency = (o.sessions + o.agencies - 1) / o.agencies;
  // The defaults allow 256 sessions per agency, and 1,000 handshakes then
  // 100 a second from one address (every session here comes from
  // 127.0.0.1); everything else (handshakes in progress per source, idle
  // timeout, pings) stays as shipped.
  const std::string limits = "  max_connections: " + std::to_string(o.sessions + 100) +
                             "\n  max_connections_per_agency: " + std::to_string(per_agency + 10) +
                             "\n  handshake_rate_per_source: 0\n";
  if (!WriteFile(dir + "/policy.yaml", PolicyText(o.agencies)) ||
      !WriteFile(dir + "/broker.yaml", BrokerYaml("bench-connections", o.broker_threads, pki, limits))) {
    std::fprintf(stderr, "connections: cannot write the broker's configuration in %s\n", dir.c_str());
    return 1;
  }
  std::vector<std::shared_ptr<tls::Context>> contexts;
  std::vector<SSL_CTX*> ctx;
  for (const auto& a : agencies) {
    auto c = tls::MakeClientContext(TlsFiles{pki + "/" + a + ".crt", pki + "/" + a + ".key", pki + "/ca.crt", {}});
    if (!c.ok()) {
      std::fprintf(stderr, "connections: TLS context for %s: %s\n", a.c_str(), c.status().ToString().c_str());
      return 1;
    }
    ctx.push_back((*c)->native_handle());
    contexts.push_back(std::move(c).value());
  }

  const std::string broker_bin = FindBroker(o.broker);
  uint16_t port = 0;
  auto broker = StartBroker(broker_bin, dir, &port, "connections");
  if (!broker) return 1;
  std::fprintf(stderr, "connections: broker %s (pid %d) on port %u, data in %s\n", broker_bin.c_str(), broker->pid(),
               port, dir.c_str());
  Sleep(o.settle);
  const long rss_before = ProcessRssBytes(broker->pid());
  std::fprintf(stderr, "connections: broker RSS %.1f MiB with no session; opening %ld sessions as %d agencies\n",
               static_cast<double>(rss_before) / 1048576.0, o.sessions, o.agencies);

  Tally tally;
  std::atomic<bool> stop{false};
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::thread> threads;
  const int64_t t0 = NowNs();
  for (int i = 0; i < o.threads; ++i) {
    workers.push_back(std::make_unique<Worker>(o, i, port, ctx, &tally, &stop));
    threads.emplace_back(&Worker::Run, workers.back().get());
  }
  const int64_t deadline = t0 + static_cast<int64_t>(o.timeout * 1e9);
  long last_report = 0;
  while (tally.open.load() + tally.failed.load() + tally.closed_by_broker.load() < o.sessions && NowNs() < deadline &&
         broker->running()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    broker->Wait(std::chrono::milliseconds(0));
    if (tally.open.load() >= last_report + 2000) {
      last_report = tally.open.load();
      std::fprintf(stderr, "connections: %ld open after %.1f s\n", last_report, static_cast<double>(NowNs() - t0) / 1e9);
    }
  }
  const double open_s = static_cast<double>(tally.last_open_ns.load() - t0) / 1e9;
  const long opened = tally.open.load();
  Sleep(o.settle);
  const long rss_after = ProcessRssBytes(broker->pid());
  const std::string status = AdminStatus(dir + "/admin.sock");
  // Idle: the broker's CPU while the sessions do nothing.
  CpuMeter cpu{broker->pid()};
  cpu.Start();
  Sleep(o.hold);
  const auto idle = cpu.Stop();
  const long rss_hold = ProcessRssBytes(broker->pid());
  const long still_open = tally.open.load();

  stop.store(true);
  for (auto& t : threads) t.join();
  workers.clear();
  const int rc = broker->Stop(SIGTERM, std::chrono::seconds(30));
  const long errors = CountLoggedErrors(dir + "/broker.log");
  const auto load_after = LoadAverages();

  const double per_session =
      opened > 0 ? static_cast<double>(rss_after - rss_before) / static_cast<double>(opened) : -1;
  const double rate = open_s > 0 ? static_cast<double>(opened) / open_s : 0;
  const long broker_sessions = JsonLong(status, "sessions");
  std::fprintf(stderr,
               "connections: %ld of %ld sessions open in %.1f s (%.0f handshakes/s), %ld failed%s%s; broker RSS "
               "%.1f -> %.1f MiB = %.0f bytes per session (%.1f MiB after %.0f s idle); broker reports %ld "
               "sessions; idle: broker CPU %.1f%% of one core, %ld pings answered, %ld sessions closed by the broker\n",
               opened, o.sessions, open_s, rate, tally.failed.load(), tally.first_error.empty() ? "" : "; first error: ",
               tally.first_error.c_str(), static_cast<double>(rss_before) / 1048576.0,
               static_cast<double>(rss_after) / 1048576.0, per_session, static_cast<double>(rss_hold) / 1048576.0,
               o.hold, broker_sessions, idle.broker_pct, tally.pings.load(), tally.closed_by_broker.load());
  if (errors > 0) std::fprintf(stderr, "connections: the broker logged %ld error(s); see its log (--keep)\n", errors);
  std::ostringstream json;
  json << "{\"bench\":\"connections\",\"sessions\":" << o.sessions << ",\"agencies\":" << o.agencies
       << ",\"broker_threads\":" << o.broker_threads << ",\"sessions_open\":" << opened
       << ",\"failed\":" << tally.failed.load() << ",\"broker_sessions\":" << broker_sessions
       << ",\"rss_before\":" << rss_before << ",\"rss_after\":" << rss_after
       << ",\"bytes_per_session\":" << Fmt(per_session, 0) << ",\"rss_after_idle\":" << rss_hold
       << ",\"handshakes_per_s\":" << Fmt(rate, 0) << ",\"seconds\":" << Fmt(open_s, 2)
       << ",\"idle_s\":" << Fmt(o.hold, 1) << ",\"idle_broker_cpu_pct\":" << Fmt(idle.broker_pct, 1)
       << ",\"pings\":" << tally.pings.load() << ",\"closed_by_broker\":" << tally.closed_by_broker.load()
       << ",\"broker_exit\":" << rc << ",\"broker_errors\":" << errors << ",\"load_before\":["
       << Fmt(load_before[0], 2) << "," << Fmt(load_before[1], 2) << "," << Fmt(load_before[2], 2)
       << "],\"load_after\":[" << Fmt(load_after[0], 2) << "," << Fmt(load_after[1], 2) << ","
       << Fmt(load_after[2], 2) << "]}";
  std::printf("%s\n", json.str().c_str());
  std::fflush(stdout);
  return opened == o.sessions && still_open == o.sessions ? 0 : 2;
}

}  // namespace

void RegisterConnections(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<Options>();
#ifdef LIAISON_SOURCE_DIR
  o->pki_script = std::string(LIAISON_SOURCE_DIR) + "/certs/dev-pki.sh";
#endif
  CLI::App* sub = app.add_subcommand(
      "connections", "The broker's memory per idle authenticated session (mutual TLS + Hello/Welcome), and its "
                     "handshake rate");
  sub->add_option("--sessions", o->sessions, "sessions to open")->capture_default_str()->check(CLI::Range(1, 200000));
  sub->add_option("--agencies", o->agencies, "agencies a01..aK the sessions are spread over")
      ->capture_default_str()
      ->check(CLI::Range(1, 99));
  sub->add_option("--threads", o->threads, "client threads (epoll) in this process")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  sub->add_option("--parallel", o->parallel, "sessions being set up at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  sub->add_option("--settle", o->settle, "seconds to wait before each memory reading")->capture_default_str();
  sub->add_option("--hold", o->hold, "seconds the open sessions stay idle (broker CPU)")->capture_default_str();
  sub->add_option("--timeout", o->timeout, "longest time to open the sessions, seconds")->capture_default_str();
  sub->add_option("--broker-threads", o->broker_threads, "the broker's worker threads")->capture_default_str();
  sub->add_option("--broker", o->broker, "liaison-broker binary (default: beside liaison-bench)");
  sub->add_option("--pki", o->pki, "an existing dev PKI (certs/dev-pki.sh) with certificates a01..aK");
  sub->add_option("--pki-script", o->pki_script, "certs/dev-pki.sh, to make a PKI")->capture_default_str();
  sub->add_flag("--keep", o->keep, "keep the temporary directory (broker log, database)");
  sub->callback([o, exit_code] {
    if (o->threads > o->parallel) o->threads = o->parallel;
    *exit_code = RunConnections(*o);
  });
}

}  // namespace liaison::bench
