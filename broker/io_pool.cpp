#include "broker/detail/io_pool.h"

#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace liaison::broker {
namespace {

// The CPU time a thread of this process has used, in nanoseconds (0 if its
// clock cannot be read).
int64_t CpuNs(pthread_t t) {
  clockid_t clock;
  if (pthread_getcpuclockid(t, &clock) != 0) return 0;
  timespec ts{};
  if (clock_gettime(clock, &ts) != 0) return 0;
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
  int wanted = 1;     // guarded by mu: threads 0..wanted-1 are to run the io_context
  bool done = false;  // guarded by mu: the io_context has stopped; everyone leaves

  // Helper i (1..max-1) runs the io_context while wanted > i, a slice at a
  // time, so that it notices when it is no longer wanted.
  std::vector<std::thread> helpers;
  helpers.reserve(static_cast<size_t>(max - 1));
  for (int i = 1; i < max; ++i) {
    helpers.emplace_back([&, i] {
      for (;;) {
        {
          std::unique_lock lock(mu);
          cv.wait(lock, [&] { return done || wanted > i; });
          if (done) return;
        }
        for (;;) {
          if (ioc_.stopped()) return;
          ioc_.run_for(options_.slice);
          std::lock_guard lock(mu);
          if (done) return;
          if (wanted <= i) break;
        }
      }
    });
  }

  const pthread_t caller = pthread_self();  // the first I/O thread
  std::thread monitor([&] {
    pthread_setname_np(pthread_self(), "io-monitor");
    std::vector<pthread_t> threads{caller};
    for (auto& h : helpers) threads.push_back(h.native_handle());
    std::unique_lock lock(mu);
    std::vector<int64_t> last(threads.size());
    for (size_t i = 0; i < threads.size(); ++i) last[i] = CpuNs(threads[i]);
    int high = 0, low = 0;
    const double period_ns = static_cast<double>(std::chrono::nanoseconds(options_.period).count());
    while (!done) {
      cv.wait_for(lock, options_.period);
      if (done) break;
      double busy = 0;  // of a core, by the threads wanted during the period
      for (size_t i = 0; i < threads.size(); ++i) {
        const int64_t now = CpuNs(threads[i]);
        if (static_cast<int>(i) < wanted) busy += static_cast<double>(now - last[i]) / period_ns;
        last[i] = now;
      }
      if (wanted < max && busy > options_.up_busy * wanted) {
        low = 0;
        if (++high >= options_.up_periods) {
          high = 0;
          wanted++;
          active_.store(wanted, std::memory_order_relaxed);
          joins_.fetch_add(1, std::memory_order_relaxed);
          cv.notify_all();
        }
      } else if (wanted > 1 && busy < options_.down_busy * (wanted - 1)) {
        high = 0;
        if (++low >= options_.down_periods) {
          low = 0;
          wanted--;
          active_.store(wanted, std::memory_order_relaxed);
        }
      } else {
        high = low = 0;
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
