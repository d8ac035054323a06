// A publish waiting for its recipients' outcomes (internal). Each recipient
// is resolved exactly once, from whichever session's strand learns the
// outcome; the last one sends the PublishAck on the sender's session.
// Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "proto/detail/pb.h"

namespace liaison::broker {

class BrokerState;
class Session;

class PendingPublish {
 public:
  PendingPublish(BrokerState& state, std::weak_ptr<Session> sender, uint64_t request_id,
                 const std::string& message_id, const google::protobuf::RepeatedPtrField<std::string>& recipients);

  size_t size() const { return recipients_; }
  const std::string& message_id() const { return message_id_; }

  // Records recipient index's outcome; ignored if already resolved. When it
  // is the last one, sends the PublishAck to the sender's session.
  void Resolve(size_t index, v1::Outcome outcome, v1::Reason reason, std::string detail);

 private:
  BrokerState& state_;
  std::weak_ptr<Session> sender_;
  const size_t recipients_;
  const std::string message_id_;
  std::mutex mu_;
  v1::PublishAck ack_;                 // guarded by mu_
  std::vector<bool> resolved_;          // guarded by mu_
  size_t remaining_;                    // guarded by mu_
};

}  // namespace liaison::broker
