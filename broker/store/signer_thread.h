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
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "common/checkpoint.h"
#include "common/merkle.h"

namespace liaison::broker {

// Signs checkpoints on a thread of its own, so that a commit's signature
// (about 25 us in a loop, several times that on an idle machine) is made
// while its log append waits for the disk instead of before it. One job at
// a time: Start, then Wait (which signs itself a job the thread has not
// started).
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
      pending_ = Job{tree_size, root, time_ms};
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
      const Job job = Take();
      lock.unlock();
      return Sign(job);
    }
    cv_.wait(lock, [&] { return ready_; });
    ready_ = false;
    return out_;
  }

 private:
  struct Job {
    uint64_t tree_size;
    merkle::Hash root;
    int64_t time_ms;
  };
  Job Take() {  // mu_ held, a job pending
    const Job job = *pending_;
    pending_.reset();
    return job;
  }
  audit::Checkpoint Sign(const Job& job) const { return signer_->Sign(origin_, job.tree_size, job.root, job.time_ms); }

  void Loop() {
    pthread_setname_np(pthread_self(), "store-sign");
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return pending_ || stopping_; });
      if (!pending_) return;
      const Job job = Take();
      lock.unlock();
      audit::Checkpoint cp = Sign(job);
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
  std::optional<Job> pending_;                // guarded by mu_: started, not yet taken
  bool ready_ = false, stopping_ = false;     // guarded by mu_
  audit::Checkpoint out_;                     // guarded by mu_: the thread's last signature
  std::thread thread_;  // last: starts once the rest is ready
};

}  // namespace liaison::broker
