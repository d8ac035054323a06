// A broker that sends what the real one never would, for tests of the
// client library, `liaison receive` and the agent against a hostile or
// broken broker: one connection, TLS with the dev PKI's broker certificate,
// a Welcome, then frames from a script. Built directly on OpenSSL and
// blocking, on a thread of its own. Thread-safe.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "proto/detail/pb.h"

namespace liaison::test {

class ScriptedBroker {
 public:
  // Frames written once the client has sent after_acks DeliveryAcks in all
  // (repeats included), together in one TLS write: when they fit in one
  // record (16 KB) the client reads them all at once, before anything it
  // does about the first can reach this broker.
  struct Step {
    size_t after_acks = 0;
    std::vector<v1::Frame> frames;
  };
  // Serves one connection (later ones are refused): reads Hello, answers
  // with a Welcome for agency "school" announcing credit, plays the script,
  // then reads until the client goes.
  explicit ScriptedBroker(std::vector<Step> script, uint32_t credit = 16);
  // The script of one step: frames at once.
  explicit ScriptedBroker(std::vector<v1::Frame> frames, uint32_t credit = 16)
      : ScriptedBroker(std::vector<Step>{Step{0, std::move(frames)}}, credit) {}
  ~ScriptedBroker();
  ScriptedBroker(const ScriptedBroker&) = delete;
  ScriptedBroker& operator=(const ScriptedBroker&) = delete;

  uint16_t port() const { return port_; }
  // The `liaison` command line for agency's certificate against this broker.
  std::vector<std::string> Cli(const std::string& agency, std::vector<std::string> rest) const;
  // What the client has sent so far, Hello first.
  std::vector<v1::Frame> Received();
  // The delivery ids of the DeliveryAcks received, in order.
  std::vector<uint64_t> Acked();
  // The Welcome carries checkpoint, and every ConsistencyProofRequest is
  // answered with an Error of code refusal (call before the client connects).
  void RefuseProofs(v1::Checkpoint checkpoint, v1::Reason refusal);

 private:
  void Serve();

  std::vector<Step> script_;
  uint32_t credit_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::mutex mu_;
  std::vector<v1::Frame> received_;  // guarded by mu_
  std::optional<v1::Checkpoint> checkpoint_;         // guarded by mu_
  v1::Reason refusal_ = v1::REASON_UNSPECIFIED;      // guarded by mu_
  std::thread thread_;
};

// Deliver frames (attempt 1) as a broker would send them.
v1::Frame DeliverMessage(uint64_t delivery_id, const std::string& sender, const std::string& message_id);
v1::Frame DeliverRecall(uint64_t delivery_id, const std::string& sender, const std::string& message_id);
v1::Frame DeliverReport(uint64_t delivery_id, const std::string& message_id, const std::string& recipient);

}  // namespace liaison::test
