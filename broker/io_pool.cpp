#include "broker/detail/io_pool.h"

#include <pthread.h>
#include <time.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace liaison::broker {
namespace {

// A thread's CPU clock (pthread_getcpuclockid), and the CPU time it has
// used, in nanoseconds (0 if it cannot be read).
clockid_t CpuClock(pthread_t t) {
  clockid_t clock{};
  return pthread_getcpuclockid(t, &clock) == 0 ? clock : clockid_t{-1};
}
int64_t CpuNs(clockid_t clock) {
  timespec ts{};
  if (clock == clockid_t{-1} || clock_gettime(clock, &ts) != 0) return 0;
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace

IoPool::IoPool(boost::asio::io_context& ioc, Options options) : ioc_(ioc), options_(options) {
  options_.max_threads = std::max(1, options_.max_threads);
  options_.up_periods = std::max(1, options_.up_periods);
  options_.down_periods = std::max(1, options_.down_periods);
}

void IoPool::Run() {
  const int max = options_.max_threads;
  if (max == 1) {
    ioc_.run();
    return;
  }
  std::mutex mu;
  std::condition_variable cv;
  // Threads 0..active_-1 are to run the io_context: active_ changes with mu
  // held (the helpers read it under mu; active() reads it without).
  bool done = false;  // guarded by mu: the io_context has stopped; everyone leaves

  // Helper i (1..max-1) runs the io_context while active_ > i, a slice at a
  // time, so that it notices when it is no longer wanted. Once the
  // io_context has stopped it waits for Run to end (the monitor reads its
  // CPU clock until then).
  std::vector<std::thread> helpers;
  helpers.reserve(static_cast<size_t>(max - 1));
  for (int i = 1; i < max; ++i) {
    helpers.emplace_back([&, i] {
      std::unique_lock lock(mu);
      for (;;) {
        cv.wait(lock, [&] { return done || active() > i; });
        if (done) return;
        lock.unlock();
        const bool stopped = ioc_.stopped();
        if (!stopped) ioc_.run_for(options_.slice);
        lock.lock();
        if (stopped) cv.wait(lock, [&] { return done; });
      }
    });
  }

  // The probe: a handler the monitor posts and times. One that has waited a
  // whole period means the running threads are blocked or behind, whatever
  // their CPU says (a thread stuck in a lock or a page fault uses none). It
  // runs promptly on an idle loop, so it does not keep the io_context from
  // running out of work when everything else has ended.
  auto probe_waiting = std::make_shared<std::atomic<bool>>(false);

  const pthread_t caller = pthread_self();  // the first I/O thread
  std::thread monitor([&] {
    pthread_setname_np(pthread_self(), "io-monitor");
    std::vector<clockid_t> clocks{CpuClock(caller)};
    for (auto& h : helpers) clocks.push_back(CpuClock(h.native_handle()));
    std::unique_lock lock(mu);
    std::vector<int64_t> last(clocks.size());
    for (size_t i = 0; i < clocks.size(); ++i) last[i] = CpuNs(clocks[i]);
    auto last_time = std::chrono::steady_clock::now();
    int high = 0, low = 0;
    while (!done) {
      cv.wait_for(lock, options_.period);
      if (done) break;
      // Divided by the time that passed, not the period: a wait can end
      // late on a busy machine, or early.
      const auto now_time = std::chrono::steady_clock::now();
      const double elapsed_ns = static_cast<double>(
          std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::nanoseconds>(now_time - last_time).count()));
      last_time = now_time;
      const int wanted = active();
      double total = 0;    // of a core, by the threads wanted
      double least = 1e9;  // of a core, by the least busy of them
      for (size_t i = 0; i < clocks.size(); ++i) {
        const int64_t now = CpuNs(clocks[i]);
        const double used = now > last[i] ? static_cast<double>(now - last[i]) / elapsed_ns : 0.0;
        if (now > 0) last[i] = now;
        if (static_cast<int>(i) < wanted) {
          total += used;
          least = std::min(least, used);
        }
      }
      const bool stalled = probe_waiting->load(std::memory_order_acquire);
      if (wanted < max && (stalled || least > options_.up_busy)) {
        low = 0;
        if (stalled || ++high >= options_.up_periods) {
          high = 0;
          active_.store(wanted + 1, std::memory_order_relaxed);
          joins_.fetch_add(1, std::memory_order_relaxed);
          cv.notify_all();
        }
      } else if (wanted > 1 && !stalled && total < options_.down_busy * (wanted - 1)) {
        high = 0;
        if (++low >= options_.down_periods) {
          low = 0;
          active_.store(wanted - 1, std::memory_order_relaxed);
        }
      } else {
        high = low = 0;
      }
      if (!stalled) {
        probe_waiting->store(true, std::memory_order_release);
        boost::asio::post(ioc_, [probe_waiting] { probe_waiting->store(false, std::memory_order_release); });
      }
    }
  });

  ioc_.run();
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_all();
  monitor.join();
  for (auto& h : helpers) h.join();
  active_.store(1, std::memory_order_relaxed);
}

}  // namespace liaison::broker
