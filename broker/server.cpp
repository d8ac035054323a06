#include "broker/server.h"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "broker/detail/broker_state.h"
#include "broker/detail/io_pool.h"
#include "broker/detail/session.h"
#include "common/json_string.h"

namespace liaison::broker {

std::string HumanDuration(int64_t s) {
  auto two = [](int64_t a, const char* ua, int64_t b, const char* ub) {
    return std::to_string(a) + ua + (b > 0 ? " " + std::to_string(b) + ub : "");
  };
  if (s < 60) return std::to_string(std::max<int64_t>(s, 0)) + "s";
  if (s < 3600) return two(s / 60, "m", s % 60, "s");
  if (s < 86'400) return two(s / 3600, "h", s % 3600 / 60, "m");
  return two(s / 86'400, "d", s % 86'400 / 3600, "h");
}

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

// One agency's state for the admin command "queues" and the log's queue
// report: whether its receiving program is connected and what waits for it.
// No message ids or senders: the counts and ages an operator needs to see an
// agency that has been offline too long.
struct AgencyQueue {
  MailboxSummary waiting;  // waiting.agency names the agency
  bool in_policy = false;
  bool receiving = false;
  std::optional<int64_t> since_s;  // receiving, or not, this long; unknown if neither began since the start
  std::optional<int64_t> oldest_age_s, next_expiry_in_s;  // none while no message waits
};

// Every agency with anything waiting, by agency id; with policy_agencies
// every agency of the policy as well.
std::vector<AgencyQueue> AgencyQueues(const BrokerState& state, int64_t now_ms, bool policy_agencies) {
  const auto policy = state.policy();
  std::map<std::string, AgencyQueue> by_agency;
  if (policy_agencies) {
    for (const auto& a : policy->agencies()) by_agency[a.id].waiting.agency = a.id;
  }
  for (MailboxSummary& m : state.mailboxes.Summary()) by_agency[m.agency].waiting = std::move(m);
  const auto steady_now = std::chrono::steady_clock::now();
  std::vector<AgencyQueue> out;
  out.reserve(by_agency.size());
  for (auto& [agency, q] : by_agency) {
    q.in_policy = policy->FindAgency(agency) != nullptr;
    const Router::ReceiverState receiver = state.router.StateOf(agency);
    q.receiving = receiver.receiving;
    if (receiver.since) {
      q.since_s = std::chrono::duration_cast<std::chrono::seconds>(steady_now - *receiver.since).count();
    }
    if (q.waiting.messages > 0) {
      q.oldest_age_s = std::max<int64_t>(now_ms - q.waiting.oldest_received_ms, 0) / 1000;
      q.next_expiry_in_s = std::max<int64_t>(q.waiting.next_expiry_ms - now_ms, 0) / 1000;
    }
    out.push_back(std::move(q));
  }
  return out;
}

// The answer to the admin command "queues" (docs/broker.md, section 2).
std::string QueuesJson(const BrokerState& state, int64_t now_ms) {
  auto number = [](const std::optional<int64_t>& v) { return v ? std::to_string(*v) : std::string("null"); };
  size_t waiting = 0;
  std::string agencies;
  for (const AgencyQueue& q : AgencyQueues(state, now_ms, /*policy_agencies=*/true)) {
    const MailboxSummary& m = q.waiting;
    waiting += m.messages + m.notices;
    agencies += agencies.empty() ? "{" : ",{";
    agencies += "\"agency\":" + JsonString(m.agency);
    agencies += std::string(",\"in_policy\":") + (q.in_policy ? "true" : "false");
    agencies += std::string(",\"receiving\":") + (q.receiving ? "true" : "false");
    agencies += ",\"since_s\":" + number(q.since_s);
    agencies += ",\"messages\":" + std::to_string(m.messages) + ",\"redelivered\":" + std::to_string(m.redelivered) +
                ",\"notices\":" + std::to_string(m.notices);
    agencies += ",\"oldest_age_s\":" + number(q.oldest_age_s) + ",\"next_expiry_in_s\":" + number(q.next_expiry_in_s);
    agencies += "}";
  }
  return "{\"waiting\":" + std::to_string(waiting) + ",\"agencies\":[" + agencies + "]}";
}

std::shared_ptr<const policy::Policy> LoadPolicy(const BrokerConfig& config, Diagnostics* diags) {
  return policy::Policy::LoadFile(config.policy_path, diags);
}

// Runs a blocking admin command on a thread of its own and waits for it
// without holding an I/O thread; its result as the admin socket's answer.
asio::awaitable<std::string> OffIoThreads(asio::io_context& ioc, std::function<Result<std::string>()> work) {
  auto done = std::make_shared<std::promise<Result<std::string>>>();
  auto fut = done->get_future();
  std::thread([work = std::move(work), done] { done->set_value(work()); }).detach();
  asio::steady_timer t(ioc);
  while (fut.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
    t.expires_after(std::chrono::milliseconds(10));
    co_await t.async_wait(kUseTuple);
  }
  Result<std::string> r = fut.get();
  co_return r.ok() ? "ok " + *r : "error " + r.status().message();
}

// The source handshakes are limited for (rate and in progress): an IPv4
// address (also when mapped into IPv6), or an IPv6 address's /64, which
// one host may fill.
std::string SourceOf(const asio::ip::address& a) {
  if (a.is_v4()) return a.to_string();
  const asio::ip::address_v6 v6 = a.to_v6();
  if (v6.is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, v6).to_string();
  asio::ip::address_v6::bytes_type b = v6.to_bytes();
  std::fill(b.begin() + 8, b.end(), 0);
  return asio::ip::address_v6(b).to_string() + "/64";
}

// The I/O threads' pool for a configuration: at most `threads` of them,
// one a core when it is 0.
IoPool::Options IoThreads(const BrokerConfig& c) {
  IoPool::Options o;
  o.max_threads = c.threads > 0 ? c.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return o;
}

// The commit log's fdatasyncs since the start, for the admin socket's
// status: how many, percentiles and the longest in microseconds, and the
// buckets they fell in ([[upper_bound_us,count],...], LatencyHistogram).
std::string LogSyncsJson(const LatencyHistogram::Snapshot& s) {
  return "\"log_syncs\":" + std::to_string(s.count) + ",\"log_sync_p50_us\":" + std::to_string(s.PercentileUs(0.5)) +
         ",\"log_sync_p99_us\":" + std::to_string(s.PercentileUs(0.99)) +
         ",\"log_sync_p999_us\":" + std::to_string(s.PercentileUs(0.999)) +
         ",\"log_sync_max_us\":" + std::to_string(s.max_us) + ",\"log_sync_buckets\":" + s.BucketsJson();
}

}  // namespace

struct Server::Impl {
  explicit Impl(BrokerConfig config)
      : state(std::move(config)), acceptor(ioc), admin(ioc), signals(ioc, SIGINT, SIGTERM) {
    signals.add(SIGHUP);
  }

  asio::io_context ioc;
  // The listeners, the signal set and the timers are used from this strand
  // only: Drain closes and cancels them while the pool's threads run.
  asio::strand<asio::io_context::executor_type> control{asio::make_strand(ioc)};
  BrokerState state;
  tcp::acceptor acceptor;
  asio::local::stream_protocol::acceptor admin;
  asio::signal_set signals;
  std::mutex reload_mu;  // one reload at a time
  std::atomic<bool> stopping{false};
  uint16_t port = 0;
  // One thread runs the io_context; the others join while it is busy
  // (broker/detail/io_pool.h).
  IoPool io_pool{ioc, IoThreads(state.config)};

  asio::awaitable<void> Accept();
  asio::awaitable<void> AcceptAdmin(Server* server);
  asio::awaitable<void> ServeAdmin(Server* server, asio::local::stream_protocol::socket socket);
  asio::awaitable<void> Drain();
  asio::awaitable<void> WaitUntil(std::function<bool()> done, std::chrono::milliseconds limit);
  asio::awaitable<void> FlushRefusals();
  asio::awaitable<void> ExpireLoop();
  asio::awaitable<void> PruneLoop();
  asio::awaitable<void> QueueReportLoop();
  void ReportQueues();
  asio::steady_timer refusal_timer{ioc};
  asio::steady_timer queue_report_timer{ioc};
  asio::steady_timer expiry_timer{ioc};
  asio::steady_timer prune_timer{ioc};
};

asio::awaitable<void> Server::Impl::Accept() {
  const Limits& l = state.config.limits;
  while (acceptor.is_open()) {
    auto [ec, socket] = co_await acceptor.async_accept(asio::make_strand(ioc), kUseTuple);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) break;
      spdlog::warn("accept failed: {}", ec.message());
      if (ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space) {
        asio::steady_timer t(ioc, std::chrono::milliseconds(100));
        co_await t.async_wait(kUseTuple);
      }
      continue;
    }
    boost::system::error_code ignored;
    const auto remote = socket.remote_endpoint(ignored);
    std::string peer = remote.address().to_string() + ":" + std::to_string(remote.port());
    if (state.router.size() >= l.max_connections) {
      spdlog::warn("connection from {} refused: {} connections open (limits.max_connections)", peer,
                   l.max_connections);
      socket.close(ignored);
      continue;
    }
    // Limited and counted per source: one host holds a whole IPv6 /64, and
    // per address it would have a rate, handshake slots and an audit record
    // for every address it uses.
    std::string source = SourceOf(remote.address());
    if (!state.admission.TakeHandshake(source)) {
      state.refusals.Count(source, "handshake_rate");
      socket.close(ignored);
      continue;
    }
    if (!state.admission.BeginHandshake(source)) {
      state.refusals.Count(source, "too_many_handshakes");
      socket.close(ignored);
      continue;
    }
    socket.set_option(tcp::no_delay(true), ignored);
    state.stats.connections_accepted++;
    auto tls = state.tls_context();
    net::TlsStream stream(std::move(socket), tls->native_handle());
    const uint64_t id = state.next_session_id++;
    std::make_shared<Session>(state, std::move(tls), std::move(stream), id, std::move(peer), std::move(source))
        ->Start();
  }
}

asio::awaitable<void> Server::Impl::AcceptAdmin(Server* server) {
  while (admin.is_open()) {
    auto [ec, socket] = co_await admin.async_accept(kUseTuple);
    if (ec) {
      if (ec == asio::error::operation_aborted || !admin.is_open()) break;
      continue;
    }
    asio::co_spawn(ioc, ServeAdmin(server, std::move(socket)), asio::detached);
  }
}

// One command per connection, one line each way: "reload", "status",
// "queues", "rotate-key <agreement>" or "prune-audit".
asio::awaitable<void> Server::Impl::ServeAdmin(Server* server, asio::local::stream_protocol::socket socket) {
  asio::streambuf buf(256);
  auto [ec, n] = co_await asio::async_read_until(socket, buf, '\n', kUseTuple);
  if (ec) co_return;
  std::string command(asio::buffers_begin(buf.data()), asio::buffers_begin(buf.data()) + static_cast<long>(n) - 1);
  std::string answer;
  if (command == "reload") {
    spdlog::info("admin socket: reload requested");
    // Loading files blocks; keep the I/O threads free while it runs.
    answer = co_await OffIoThreads(ioc, [server] { return server->Reload(); });
  } else if (command == "status") {
    const auto c = server->counters();
    answer = "ok {\"sessions\":" + std::to_string(c.sessions) +
             ",\"connections_accepted\":" + std::to_string(c.connections_accepted) +
             ",\"handshakes_failed\":" + std::to_string(c.handshakes_failed) +
             ",\"identities_refused\":" + std::to_string(c.identities_refused) +
             ",\"publishes\":" + std::to_string(c.publishes) +
             ",\"deliveries_acked\":" + std::to_string(c.deliveries_acked) +
             ",\"protocol_errors\":" + std::to_string(c.protocol_errors) +
             ",\"waiting\":" + std::to_string(state.mailboxes.waiting_total()) + ",\"policy_version\":\"" +
             state.policy()->version() + "\",\"io_threads\":" + std::to_string(io_pool.active()) +
             ",\"io_threads_max\":" + std::to_string(io_pool.max_threads()) +
             ",\"io_thread_joins\":" + std::to_string(io_pool.joins()) + "," + LogSyncsJson(c.log_syncs) + "}";
  } else if (command == "queues") {
    answer = "ok " + QueuesJson(state, NowMs());
  } else if (command.rfind("rotate-key ", 0) == 0) {
    // New pseudonyms for an agreement from now on: a new key version. Old
    // versions stay, so earlier pseudonyms remain explainable.
    const std::string agreement = command.substr(11);
    auto key = state.keys->Rotate(agreement);
    if (key.ok()) {
      spdlog::info("admin socket: pseudonym key of agreement '{}' rotated to version {}", agreement, key->version);
      audit::Record r = MakeRecord("key_rotated");
      r.detail = "pseudonym key of agreement '" + agreement + "' now version " + std::to_string(key->version);
      state.store->Append({std::move(r)}, nullptr);
      answer = "ok agreement '" + agreement + "' now uses pseudonym key version " + std::to_string(key->version);
    } else {
      answer = "error " + key.status().message();
    }
  } else if (command == "prune-audit") {
    spdlog::info("admin socket: audit pruning requested");
    // A large prune takes a while (in chunks, through the store's writer).
    answer = co_await OffIoThreads(ioc, [server] { return server->PruneAudit(); });
  } else {
    answer = "error unknown command (reload, status, queues, rotate-key AGREEMENT, prune-audit)";
  }
  for (char& ch : answer) {
    if (ch == '\n') ch = ' ';
  }
  answer += '\n';
  co_await asio::async_write(socket, asio::buffer(answer), kUseTuple);
}

// Writes the refused-connection tally to the audit log once per interval.
asio::awaitable<void> Server::Impl::FlushRefusals() {
  while (!stopping) {
    refusal_timer.expires_after(state.config.limits.refusal_audit_interval);
    co_await refusal_timer.async_wait(kUseTuple);
    auto records = state.refusals.Drain();
    if (!records.empty()) state.store->Append(std::move(records), nullptr);
  }
}

// Expires waiting copies once a second.
asio::awaitable<void> Server::Impl::ExpireLoop() {
  while (!stopping) {
    expiry_timer.expires_after(std::chrono::seconds(1));
    co_await expiry_timer.async_wait(kUseTuple);
    if (stopping) break;
    ExpireDue(state, NowMs());
  }
}

// Names, every limits.queue_report_interval, each agency that is not
// receiving while messages have waited for it longer than that: a receiving
// program that is down (a school's server off for the holidays, an expired
// agent certificate) shows in the log, and as a warning once the first of
// its messages would expire unread within a day.
asio::awaitable<void> Server::Impl::QueueReportLoop() {
  const auto every = state.config.limits.queue_report_interval;
  if (every.count() == 0) co_return;
  while (!stopping) {
    queue_report_timer.expires_after(every);
    co_await queue_report_timer.async_wait(kUseTuple);
    if (stopping) break;
    ReportQueues();
  }
}

void Server::Impl::ReportQueues() {
  const int64_t every_s = std::chrono::duration_cast<std::chrono::seconds>(state.config.limits.queue_report_interval).count();
  for (const AgencyQueue& q : AgencyQueues(state, NowMs(), /*policy_agencies=*/false)) {
    // Waiting that long, and not being served (a stuck receiver is closed
    // by its own timeouts).
    if (!q.oldest_age_s || *q.oldest_age_s < every_s || q.receiving) continue;
    const std::string gone = q.since_s ? "for " + HumanDuration(*q.since_s) : "since the broker started";
    const std::string line = fmt::format(
        "queue: '{}' has not been receiving {}: {} message(s) wait for it, the oldest for {}; the first expires in {}",
        q.waiting.agency, gone, q.waiting.messages, HumanDuration(*q.oldest_age_s), HumanDuration(*q.next_expiry_in_s));
    if (*q.next_expiry_in_s < 86'400) {
      spdlog::warn("{}, unread", line);
    } else {
      spdlog::info("{}", line);
    }
  }
}

// Applies audit.retention_days once an hour (and soon after the start), so
// records are pruned within an hour of falling out of retention.
asio::awaitable<void> Server::Impl::PruneLoop() {
  const uint32_t days = state.config.audit.retention_days;
  if (days == 0) co_return;
  auto wait = std::chrono::seconds(10);
  while (!stopping) {
    prune_timer.expires_after(wait);
    co_await prune_timer.async_wait(kUseTuple);
    if (stopping) break;
    wait = std::chrono::hours(1);
    state.store->PruneAudit(NowMs() - int64_t{days} * 86'400'000, "audit.retention_days " + std::to_string(days),
                            [](const Status& s, const Store::Pruned& p) {
                              if (!s.ok()) {
                                spdlog::error("audit retention: pruning failed: {}", s.message());
                              } else if (p.last != 0) {
                                spdlog::info("audit retention: records {} to {} pruned", p.first, p.last);
                              }
                            });
  }
}

asio::awaitable<void> Server::Impl::WaitUntil(std::function<bool()> done, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  asio::steady_timer t(ioc);
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    t.expires_after(std::chrono::milliseconds(10));
    co_await t.async_wait(kUseTuple);
  }
}

asio::awaitable<void> Server::Impl::Drain() {
  const Limits& l = state.config.limits;
  spdlog::info("stopping: refusing new work, finishing {} in-flight publish(es) (grace {} ms)",
               state.in_flight_publishes.load(), l.shutdown_grace.count());
  state.draining = true;
  boost::system::error_code ignored;
  acceptor.close(ignored);
  if (admin.is_open()) {
    admin.close(ignored);
    ::unlink(state.config.admin_socket.c_str());
  }
  for (auto& s : state.router.All()) s->BeginDrain();
  co_await WaitUntil([&] { return state.in_flight_publishes.load() <= 0; }, l.shutdown_grace);
  if (state.in_flight_publishes.load() > 0) {
    spdlog::warn("stopping: {} publish(es) still not committed after the grace period; their senders get no "
                 "acknowledgement and should publish again",
                 state.in_flight_publishes.load());
  }
  for (auto& s : state.router.All()) s->Shutdown(v1::REASON_SHUTTING_DOWN, "the broker is shutting down");
  co_await WaitUntil([&] { return state.router.size() == 0; }, std::chrono::milliseconds(3000));
  for (auto& s : state.router.All()) s->Abort();
  signals.cancel(ignored);
  refusal_timer.cancel();
  expiry_timer.cancel();
  prune_timer.cancel();
  queue_report_timer.cancel();
  auto records = state.refusals.Drain();
  audit::Record stop = MakeRecord("broker_stop");
  stop.detail = std::to_string(state.stats.connections_accepted.load()) + " connection(s), " +
                std::to_string(state.stats.publishes.load()) + " publish(es)";
  records.push_back(std::move(stop));
  state.store->Append(std::move(records), nullptr);  // committed before the store closes
  spdlog::info("stopped: {} connection(s) served, {} publish(es), {} deliveries acknowledged",
               state.stats.connections_accepted.load(), state.stats.publishes.load(),
               state.stats.deliveries_acked.load());
}

void CheckConfigFiles(const BrokerConfig& config, Diagnostics* diags) {
  LoadPolicy(config, diags);
  auto tls = tls::MakeServerContext(config.tls);
  if (!tls.ok()) diags->push_back({Diagnostic::Severity::kError, config.path, 0, 0, "tls: " + tls.status().message()});
  // What a reload refuses (Server::Reload), shown before one is tried. A
  // warning, not an error: a broker starting with such a CRL serves no
  // agency of that CA, but it starts as it always did.
  if (tls.ok()) {
    if (Status crls = tls::CheckCrls(config.tls); !crls.ok()) {
      diags->push_back({Diagnostic::Severity::kWarning, config.path, 0, 0, "tls: " + crls.message()});
    }
  }
  if (config.tls.crls.empty()) {
    diags->push_back({Diagnostic::Severity::kWarning, config.path, 0, 0,
                      "tls: no 'crl' configured, so revoked agency certificates cannot be refused"});
  }
}

Result<std::unique_ptr<Server>> Server::Create(BrokerConfig config) {
  auto impl = std::make_unique<Impl>(std::move(config));
  const BrokerConfig& c = impl->state.config;
  Diagnostics diags;
  auto policy = LoadPolicy(c, &diags);
  if (!policy) return Status::InvalidArgument("policy rejected:\n" + FormatDiagnostics(diags));
  impl->state.set_policy(policy);
  // Pseudonym keys in their own directory: the store's keys sit beside it.
  auto keys = policy::PseudonymKeyStore::Open(c.keys_dir + "/pseudonym");
  if (!keys.ok()) return keys.status().Annotate("pseudonym keys in " + c.keys_dir + "/pseudonym");
  impl->state.keys = std::move(keys).value();
  Store::Options so;
  so.path = c.data_dir + "/liaison.db";
  so.origin = "liaison/" + c.name;
  so.signing_key = c.keys_dir + "/audit-signing.key";
  so.digest_key = c.keys_dir + "/body-digest.key";
  auto store = Store::Open(so);
  if (!store.ok()) return store.status().Annotate("store");
  impl->state.store = std::move(store).value();
  if (Status s = impl->state.mailboxes.Load(*impl->state.store); !s.ok()) return s.Annotate("store: queue");
  if (size_t n = impl->state.mailboxes.waiting_total(); n > 0) {
    spdlog::info("store: {} deliveries waiting for their recipients", n);
  }
  auto reader = AuditReader::Open(so.path);
  if (!reader.ok()) return reader.status().Annotate("audit reader");
  impl->state.audit_reader = std::move(reader).value();
  auto tls = tls::MakeServerContext(c.tls);
  if (!tls.ok()) return tls.status().Annotate("TLS configuration");
  impl->state.set_tls_context(std::move(tls).value());

  boost::system::error_code ec;
  const auto address = asio::ip::make_address(c.listen_host, ec);
  if (ec) return Status::InvalidArgument("listen address '" + c.listen_host + "' is not an IP address");
  const tcp::endpoint ep(address, c.listen_port);
  impl->acceptor.open(ep.protocol(), ec);
  if (!ec) impl->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(ep, ec);
  if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return Status::Unavailable("cannot listen on " + c.listen_host + ":" + std::to_string(c.listen_port) + ": " +
                               ec.message());
  }
  impl->port = impl->acceptor.local_endpoint().port();
  {
    audit::Record start = MakeRecord("broker_start");
    start.detail = "liaison-broker 0.1.0 '" + c.name + "' on " + c.listen_host + ":" + std::to_string(impl->port);
    audit::Record loaded = MakeRecord("policy_loaded");
    loaded.policy_version = policy->version();
    loaded.detail = c.policy_path + "; TLS material from " + c.tls.certificate + " and " + c.tls.ca_bundle;
    auto committed = impl->state.store->AppendSync({std::move(start), std::move(loaded)});
    if (!committed.ok()) return committed.status().Annotate("store: cannot record the start");
  }
  if (!c.admin_socket.empty()) {
    struct stat st {};
    if (::lstat(c.admin_socket.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) return Status::InvalidArgument("admin_socket " + c.admin_socket + " exists and is not a socket");
      ::unlink(c.admin_socket.c_str());  // left over from a broker that did not stop cleanly
    }
    const mode_t old_mask = ::umask(0177);  // the socket is created 0600
    impl->admin.open(asio::local::stream_protocol(), ec);
    if (!ec) impl->admin.bind(asio::local::stream_protocol::endpoint(c.admin_socket), ec);
    ::umask(old_mask);
    if (!ec) impl->admin.listen(16, ec);
    if (ec) return Status::Unavailable("cannot create admin_socket " + c.admin_socket + ": " + ec.message());
  }
  spdlog::info("policy {} loaded: {} agencies (version {})", c.policy_path, policy->agencies().size(),
               policy->version().substr(0, 12));
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;

uint16_t Server::port() const { return impl_->port; }

Status Server::Run(bool handle_signals) {
  Impl& s = *impl_;
  asio::co_spawn(s.control, s.Accept(), [](std::exception_ptr e) {
    if (e) spdlog::critical("listener stopped unexpectedly");
  });
  if (s.admin.is_open()) asio::co_spawn(s.control, s.AcceptAdmin(this), asio::detached);
  asio::co_spawn(s.control, s.FlushRefusals(), asio::detached);
  asio::co_spawn(s.control, s.ExpireLoop(), asio::detached);
  asio::co_spawn(s.control, s.PruneLoop(), asio::detached);
  asio::co_spawn(s.control, s.QueueReportLoop(), asio::detached);
  if (handle_signals) {
    WaitForSignal();
  } else {
    boost::system::error_code ignored;
    s.signals.clear(ignored);
  }
  spdlog::info("broker '{}' listening on {}:{} (up to {} I/O thread(s), more joining only while busy)",
               s.state.config.name, s.state.config.listen_host, s.port, s.io_pool.max_threads());
  s.io_pool.Run();
  return Status::Ok();
}

void Server::WaitForSignal() {
  impl_->signals.async_wait(asio::bind_executor(impl_->control, [this](const boost::system::error_code& ec, int signo) {
    if (ec) return;
    if (signo == SIGHUP) {
      spdlog::info("received SIGHUP: reloading");
      std::thread([this] { (void)Reload(); }).detach();
      WaitForSignal();
      return;
    }
    spdlog::info("received {}", signo == SIGTERM ? "SIGTERM" : "SIGINT");
    RequestStop();
  }));
}

void Server::RequestStop() {
  asio::post(impl_->control, [this] {
    if (impl_->stopping.exchange(true)) return;
    asio::co_spawn(impl_->control, impl_->Drain(), asio::detached);
  });
}

Result<std::string> Server::PruneAudit() {
  const uint32_t days = impl_->state.config.audit.retention_days;
  if (days == 0) {
    return Status::InvalidArgument("the configuration sets no audit.retention_days: every record is kept");
  }
  auto pruned = impl_->state.store->PruneAuditSync(NowMs() - int64_t{days} * 86'400'000,
                                                   "audit.retention_days " + std::to_string(days));
  if (!pruned.ok()) return pruned.status();
  if (pruned->last == 0) return std::string("no audit records older than " + std::to_string(days) + " day(s) to prune");
  return "audit records " + std::to_string(pruned->first) + " to " + std::to_string(pruned->last) +
         " pruned (older than " + std::to_string(days) + " day(s); their leaf hashes are kept)";
}

Result<std::string> Server::Reload() {
  std::lock_guard lock(impl_->reload_mu);
  BrokerState& st = impl_->state;
  const BrokerConfig& c = st.config;
  Diagnostics diags;
  auto policy = LoadPolicy(c, &diags);
  auto tls = tls::MakeServerContext(c.tls);
  // A CRL that has expired, is not yet valid or is not signed by a CA of
  // the bundle loads, but then refuses every certificate of its CA: taken
  // in, it would close every session of the network and refuse every
  // reconnection. Refused like a file that does not parse.
  const Status crls = tls.ok() ? tls::CheckCrls(c.tls) : Status::Ok();
  if (!policy || !tls.ok() || !crls.ok()) {
    std::string why;
    for (const auto& d : diags) {
      if (d.severity == Diagnostic::Severity::kError) why += (why.empty() ? "" : "; ") + d.ToString();
    }
    if (!tls.ok()) why += (why.empty() ? "" : "; ") + std::string("TLS: ") + tls.status().message();
    if (!crls.ok()) why += (why.empty() ? "" : "; ") + std::string("TLS: ") + crls.message();
    spdlog::error("reload rejected, still running the previous policy and certificates: {}", why);
    audit::Record rejected = MakeRecord("policy_rejected");
    rejected.policy_version = st.policy()->version();
    rejected.detail = why.substr(0, 2000);
    st.store->Append({std::move(rejected)}, nullptr);
    return Status::InvalidArgument("reload rejected, nothing changed: " + why);
  }
  for (const auto& d : diags) spdlog::warn("{}", d.ToString());
  const std::string old_version = st.policy()->version();
  st.set_policy(policy);
  st.set_tls_context(std::move(tls).value());
  audit::Record loaded = MakeRecord("policy_loaded");
  loaded.policy_version = policy->version();
  loaded.detail = "reload: " + c.policy_path + "; CA bundle, CRLs and broker certificate reloaded";
  st.store->Append({std::move(loaded)}, nullptr);
  const auto sessions = st.router.All();
  for (auto& s : sessions) s->Revalidate();
  const std::string summary = "policy " + old_version.substr(0, 12) + " -> " + policy->version().substr(0, 12) + " (" +
                              std::to_string(policy->agencies().size()) + " agencies, " +
                              std::to_string(policy->rules().size()) + " rules), CA bundle, CRLs and broker "
                              "certificate reloaded; " + std::to_string(sessions.size()) + " session(s) re-checked";
  spdlog::info("reloaded: {}", summary);
  return summary;
}

Status Server::SyncStore() { return impl_->state.store->Sync(); }

Server::Counters Server::counters() const {
  const auto& st = impl_->state.stats;
  return Counters{st.connections_accepted.load(), st.handshakes_failed.load(),
                  st.identities_refused.load(),   st.publishes.load(),
                  st.deliveries_acked.load(),     st.protocol_errors.load(),
                  impl_->state.router.size(),     impl_->state.store->log_syncs()};
}

}  // namespace liaison::broker
