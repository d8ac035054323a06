// The broker's I/O threads (broker/detail/io_pool.h): one runs the
// io_context while the load is light; more join while it is busy and leave
// when it is light again; every handler runs; Run returns when the
// io_context stops.
#include "broker/detail/io_pool.h"

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

namespace asio = boost::asio;
using liaison::broker::IoPool;
using namespace std::chrono_literals;

namespace {

// Burns the CPU of the thread it runs on for d.
void Spin(std::chrono::microseconds d) {
  const auto end = std::chrono::steady_clock::now() + d;
  volatile uint64_t x = 0;
  while (std::chrono::steady_clock::now() < end) x = x + 1;
}

// Waits up to limit for pred.
template <typename Pred>
bool Eventually(Pred pred, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

IoPool::Options Fast(int max) {
  IoPool::Options o;
  o.max_threads = max;
  o.period = 10ms;
  o.slice = 20ms;
  return o;
}

}  // namespace

TEST_CASE("io pool: a light load runs on one thread and the others stay parked") {
  asio::io_context ioc;
  auto work = asio::make_work_guard(ioc);
  IoPool pool(ioc, Fast(3));
  std::thread runner([&] { pool.Run(); });
  std::mutex mu;
  std::set<std::thread::id> ran_on;
  std::atomic<int> ran{0};
  // 200 small handlers, 2 ms apart: a few percent of a core.
  for (int i = 0; i < 200; ++i) {
    asio::post(ioc, [&] {
      std::lock_guard lock(mu);
      ran_on.insert(std::this_thread::get_id());
      ran++;
    });
    std::this_thread::sleep_for(2ms);
  }
  REQUIRE(Eventually([&] { return ran.load() == 200; }, 5000ms));
  CHECK(ran_on.size() == 1);
  CHECK(pool.active() == 1);
  CHECK(pool.joins() == 0);
  CHECK(pool.max_threads() == 3);
  work.reset();
  ioc.stop();
  runner.join();
}

TEST_CASE("io pool: threads join under load and leave when it ends") {
  asio::io_context ioc;
  auto work = asio::make_work_guard(ioc);
  IoPool pool(ioc, Fast(2));
  std::thread runner([&] { pool.Run(); });
  std::atomic<bool> loading{true};
  std::atomic<int> done{0};
  std::mutex mu;
  std::set<std::thread::id> ran_on;
  // A producer keeps a backlog of 1 ms handlers: more than one core's worth
  // would queue, so the first thread is busy all the time.
  std::thread producer([&] {
    while (loading) {
      for (int i = 0; i < 20; ++i) {
        asio::post(ioc, [&] {
          Spin(1000us);
          {
            std::lock_guard lock(mu);
            ran_on.insert(std::this_thread::get_id());
          }
          done++;
        });
      }
      std::this_thread::sleep_for(10ms);
    }
  });
  CHECK(Eventually([&] { return pool.active() == 2; }, 5000ms));
  CHECK(pool.joins() >= 1);
  CHECK(Eventually(
      [&] {
        std::lock_guard lock(mu);
        return ran_on.size() == 2;
      },
      5000ms));
  loading = false;
  producer.join();
  // The backlog drains, the load ends, and the second thread leaves.
  CHECK(Eventually([&] { return pool.active() == 1; }, 5000ms));
  work.reset();
  ioc.stop();
  runner.join();
  CHECK(done.load() > 0);
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
  pool.Run();  // no work guard: returns once the 1,000 have run
  CHECK(ran.load() == 1000);
  CHECK(pool.active() == 1);
}

TEST_CASE("io pool: one thread at most when the maximum is one") {
  asio::io_context ioc;
  auto work = asio::make_work_guard(ioc);
  IoPool pool(ioc, Fast(1));
  std::thread runner([&] { pool.Run(); });
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
  REQUIRE(Eventually([&] { return ran.load() == 300; }, 10000ms));
  CHECK(ran_on.size() == 1);
  CHECK(pool.active() == 1);
  work.reset();
  ioc.stop();
  runner.join();
}
