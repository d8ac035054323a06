// The broker's I/O threads (internal): up to a maximum run the io_context,
// but only as many as the load needs. One thread always runs it; the others
// wait, parked, and join while the running ones are busy.
//
// Why: with two threads in one io_context, Asio wakes the idle one for
// nearly every handler posted from another thread (a store commit's
// PublishAck, a delivery), and it mostly finds nothing to do. At 2,000
// msgs/s that was 11 context switches and 11 futex calls a message against
// 6 and 3 with one thread, and a fifth of the broker's CPU. Under a flood
// both threads are busy and both run.
//
// How: a monitor thread looks every period (25 ms) at the running threads.
// One more thread joins when the least busy of them used more than up_busy
// of a core for up_periods periods in a row, or at once when a probe (a
// handler the monitor posts each period) has waited a whole period: then
// the running threads are blocked or far behind, whatever their CPU says.
// The last to join leaves when all of them together used less than
// down_busy of a core for each thread but one, for down_periods periods in
// a row; it finishes its current slice (run_for) first, so active() is
// what the monitor wants, and a leaving thread may run handlers for up to
// a slice more.
//
// Threading: Run() is called once, on the thread that is to be the first
// I/O thread, and returns when the io_context stops (or runs out of work)
// and every thread has left. active() and joins() may be read from any
// thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace liaison::broker {

class IoPool {
 public:
  struct Options {
    int max_threads = 1;
    std::chrono::milliseconds period{25};
    double up_busy = 0.5;  // of a core, for each running thread
    int up_periods = 2;
    // Leaving needs the threads' total below what they would cost if one
    // fewer carried the load just under up_busy: two threads cost about 1.3
    // times one's CPU for the same load (the wake-ups). At 0.35 two threads
    // stayed at 2,000 msgs/s after a flood (0.40 cores between them, where
    // one alone used 0.30).
    double down_busy = 0.45;  // of a core, by all running threads, for each but one
    int down_periods = 8;
    std::chrono::milliseconds slice{50};  // a joined thread checks whether to leave this often
  };

  IoPool(boost::asio::io_context& ioc, Options options);
  IoPool(const IoPool&) = delete;
  IoPool& operator=(const IoPool&) = delete;

  void Run();

  // Threads running the io_context now (1..max_threads), and how many times
  // one joined since Run began.
  int active() const { return active_.load(std::memory_order_relaxed); }
  uint64_t joins() const { return joins_.load(std::memory_order_relaxed); }
  int max_threads() const { return options_.max_threads; }

 private:
  boost::asio::io_context& ioc_;
  Options options_;
  std::atomic<int> active_{1};
  std::atomic<uint64_t> joins_{0};
};

}  // namespace liaison::broker
