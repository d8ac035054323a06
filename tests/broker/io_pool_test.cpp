// The broker's I/O threads (broker/detail/io_pool.h): one runs the
// io_context while the load is light; more join while it is busy and leave
// when it is light again; every handler runs; Run returns when the
// io_context stops.
#include "broker/detail/io_pool.h"

#include <time.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

#include "tests/integration/test_support.h"

namespace asio = boost::asio;
using liaison::broker::IoPool;
using liaison::test::WaitFor;
using namespace std::chrono_literals;

namespace {

// Burns d of the CPU time of the thread it runs on (its own clock: a
// thread preempted meanwhile still burns all of it).
void Spin(std::chrono::microseconds d) {
  timespec ts{};
  auto cpu_ns = [&] {
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
  };
  const int64_t end = cpu_ns() + std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  volatile uint64_t x = 0;
  while (cpu_ns() < end) x = x + 1;
}

// Periods long enough that a loaded test machine (ctest -j, sanitizers)
// does not delay the probe a whole period, short enough to keep tests quick.
IoPool::Options Fast(int max) {
  IoPool::Options o;
  o.max_threads = max;
  o.period = 50ms;
  o.up_periods = 2;
  o.down_periods = 4;
  o.slice = 20ms;
  return o;
}

// Posts n small handlers, gap apart, and waits until all have run; the
// threads they ran on.
std::set<std::thread::id> Trickle(asio::io_context& ioc, int n, std::chrono::milliseconds gap) {
  std::mutex mu;
  std::set<std::thread::id> ran_on;
  std::atomic<int> ran{0};
  for (int i = 0; i < n; ++i) {
    asio::post(ioc, [&] {
      std::lock_guard lock(mu);
      ran_on.insert(std::this_thread::get_id());
      ran++;
    });
    std::this_thread::sleep_for(gap);
  }
  REQUIRE(WaitFor([&] { return ran.load() == n; }, 5000ms));
  std::lock_guard lock(mu);
  return ran_on;
}

// A pool running on a thread of its own until the end of the scope.
struct RunningPool {
  asio::io_context ioc;
  asio::executor_work_guard<asio::io_context::executor_type> work{asio::make_work_guard(ioc)};
  IoPool pool;
  std::thread runner;
  explicit RunningPool(int max) : RunningPool(Fast(max)) {}
  explicit RunningPool(IoPool::Options o) : pool(ioc, o), runner([this] { pool.Run(); }) {}
  ~RunningPool() {
    work.reset();
    ioc.stop();
    runner.join();
  }
};

}  // namespace

TEST_CASE("io pool: a light load runs on one thread and the others stay parked") {
  // Periods of 200 ms: on a loaded test machine the probe may well wait
  // 50 ms for a core now and then (and a thread would rightly join), but
  // not 200.
  IoPool::Options o = Fast(3);
  o.period = 200ms;
  RunningPool r(o);
  asio::io_context& ioc = r.ioc;
  IoPool& pool = r.pool;
  // 200 small handlers, 2 ms apart: a few percent of a core.
  CHECK(Trickle(ioc, 200, 2ms).size() == 1);
  CHECK(pool.active() == 1);
  CHECK(pool.joins() == 0);
  CHECK(pool.max_threads() == 3);
}

TEST_CASE("io pool: threads join under load and leave when it ends") {
  // (Declared before the pool: handlers still running when a check fails
  // use them until the pool's threads end.)
  std::atomic<bool> loading{true};
  std::mutex mu;
  std::set<std::thread::id> ran_on;
  RunningPool r(2);
  asio::io_context& ioc = r.ioc;
  IoPool& pool = r.pool;
  // A producer keeps a backlog of handlers that each burn 1 ms of CPU, 20
  // every 10 ms: two cores' worth, so the first thread is never idle.
  std::thread producer([&] {
    while (loading) {
      for (int i = 0; i < 20; ++i) {
        asio::post(ioc, [&] {
          Spin(1000us);
          std::lock_guard lock(mu);
          ran_on.insert(std::this_thread::get_id());
        });
      }
      std::this_thread::sleep_for(10ms);
    }
  });
  CHECK(WaitFor([&] { return pool.active() == 2; }, 5000ms));
  CHECK(pool.joins() >= 1);
  // The second thread really runs handlers.
  CHECK(WaitFor(
      [&] {
        std::lock_guard lock(mu);
        return ran_on.size() == 2;
      },
      5000ms));
  loading = false;
  producer.join();
  // The backlog drains, the load ends, and the second thread leaves: after
  // its last slice, a light load runs on one thread again.
  CHECK(WaitFor([&] { return pool.active() == 1; }, 10000ms));
  std::this_thread::sleep_for(100ms);
  const uint64_t joins = pool.joins();
  const size_t threads = Trickle(ioc, 100, 2ms).size();
  // A thread may rightly join again if the machine held the probe back a
  // whole period meanwhile; otherwise one thread ran them all.
  if (pool.joins() == joins) {
    CHECK(threads == 1);
  } else {
    WARN("a thread joined during the light load (the test machine is busy): not checked");
  }
}

TEST_CASE("io pool: a thread joins when the running one is blocked without using the CPU") {
  // The first thread waits on a lock (no CPU used): the probe waits a whole
  // period, a second thread joins and runs what is posted. (The lock and
  // the flag outlive the pool's threads; the lock is let go first.)
  std::mutex held;
  std::atomic<bool> blocked{false};
  RunningPool r(2);
  asio::io_context& ioc = r.ioc;
  IoPool& pool = r.pool;
  std::unique_lock hold(held);
  asio::post(ioc, [&] {
    blocked = true;
    std::lock_guard wait(held);
  });
  REQUIRE(WaitFor([&] { return blocked.load(); }, 5000ms));
  std::atomic<bool> ran{false};
  asio::post(ioc, [&] { ran = true; });
  CHECK(WaitFor([&] { return ran.load(); }, 5000ms));
  CHECK(pool.active() == 2);
  hold.unlock();
}

TEST_CASE("io pool: every handler runs and Run returns when the io_context runs out of work") {
  asio::io_context ioc;
  IoPool pool(ioc, Fast(4));
  std::atomic<int> ran{0};
  for (int i = 0; i < 1000; ++i) {
    asio::post(ioc, [&] {
      Spin(50us);
      ran++;
    });
  }
  pool.Run();  // no work guard: returns once the 1,000 have run (and the probe)
  CHECK(ran.load() == 1000);
}

TEST_CASE("io pool: one thread at most when the maximum is one") {
  RunningPool r(1);
  asio::io_context& ioc = r.ioc;
  IoPool& pool = r.pool;
  std::mutex mu;
  std::set<std::thread::id> ran_on;
  std::atomic<int> ran{0};
  for (int i = 0; i < 300; ++i) {
    asio::post(ioc, [&] {
      Spin(500us);
      std::lock_guard lock(mu);
      ran_on.insert(std::this_thread::get_id());
      ran++;
    });
  }
  REQUIRE(WaitFor([&] { return ran.load() == 300; }, 10000ms));
  CHECK(ran_on.size() == 1);
  CHECK(pool.active() == 1);
}
