// Internal to the store (included by store_impl.h): the thread on which the
// writer signs a commit's checkpoint while the commit's log append waits for
// the disk.
//
// Thread-safety: one thread (the store's writer) calls Start and then Wait,
// in turn. The signer passed in must outlive it.
#pragma once

#include <pthread.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "common/checkpoint.h"
#include "common/merkle.h"

namespace liaison::broker {

// Signs checkpoints on a thread of its own, so that a commit's signature
// (about 60 us here) is made while its log append waits for the disk
// instead of before it. One job at a time: Start, then Wait (which signs
// itself a job the thread has not started).
class SignerThread {
 public:
  SignerThread(const audit::Signer* signer, std::string origin)
      : signer_(signer), origin_(std::move(origin)), thread_([this] { Loop(); }) {}
  ~SignerThread() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Start(uint64_t tree_size, const merkle::Hash& root, int64_t time_ms) {
    {
      std::lock_guard lock(mu_);
      size_ = tree_size;
      root_ = root;
      time_ = time_ms;
      pending_ = true;
      ready_ = false;
    }
    cv_.notify_all();
  }
  // The job's checkpoint. If the thread has not taken the job yet (it was
  // not scheduled while the append ran: both CPUs busy), the caller signs
  // it itself rather than wait for the scheduler.
  audit::Checkpoint Wait() {
    std::unique_lock lock(mu_);
    if (pending_) {
      pending_ = false;
      const uint64_t size = size_;
      const merkle::Hash root = root_;
      const int64_t time = time_;
      lock.unlock();
      return signer_->Sign(origin_, size, root, time);
    }
    cv_.wait(lock, [&] { return ready_; });
    ready_ = false;
    return out_;
  }

 private:
  void Loop() {
    pthread_setname_np(pthread_self(), "store-sign");
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return pending_ || stopping_; });
      if (!pending_) return;
      pending_ = false;
      const uint64_t size = size_;
      const merkle::Hash root = root_;
      const int64_t time = time_;
      lock.unlock();
      audit::Checkpoint cp = signer_->Sign(origin_, size, root, time);
      lock.lock();
      out_ = std::move(cp);
      ready_ = true;
      cv_.notify_all();
    }
  }

  const audit::Signer* signer_;
  const std::string origin_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool pending_ = false, ready_ = false, stopping_ = false;  // guarded by mu_
  uint64_t size_ = 0;
  merkle::Hash root_{};
  int64_t time_ = 0;
  audit::Checkpoint out_;
  std::thread thread_;  // last: starts once the rest is ready
};

}  // namespace liaison::broker
