// Hello -> Welcome: protocol version, receiving session and credit window.
#include <spdlog/spdlog.h>

#include "broker/detail/broker_state.h"
#include "broker/detail/session.h"

namespace liaison::broker {

inline constexpr uint32_t kProtocolVersion = 1;

void Session::HandleHello(const v1::Hello& hello) {
  if (phase_ != Phase::kAwaitHello) {
    SendError(0, v1::REASON_PROTOCOL_ERROR, "Hello was already received on this session", false);
    return;
  }
  if (hello.protocol_version() != kProtocolVersion) {
    SendError(0, v1::REASON_UNSUPPORTED_VERSION,
              "protocol version " + std::to_string(hello.protocol_version()) + " is not supported (this broker speaks " +
                  std::to_string(kProtocolVersion) + ")",
              true);
    return;
  }
  const Limits& l = broker_.config.limits;
  if (hello.receive()) {
    if (draining_ || broker_.draining) {
      SendError(0, v1::REASON_SHUTTING_DOWN, "the broker is shutting down", true);
      return;
    }
    auto claimed = broker_.router.ClaimReceiver(agency_, shared_from_this(), hello.take_over());
    if (!claimed.ok()) {
      spdlog::info("{}: refused as receiver: {}", tag_, claimed.status().message());
      SendError(0, v1::REASON_RECEIVER_ACTIVE,
                "another session of agency '" + agency_ +
                    "' is already receiving; stop it, or connect with take-over to replace it",
                true);
      return;
    }
    if (auto previous = claimed.value()) {
      spdlog::info("{}: takes over receiving from session {}", tag_, previous->id());
      // What previous holds unacknowledged goes out first, once it is back
      // in the queue: until then this session sends nothing.
      awaiting_predecessor_ = true;
      previous->Shutdown(v1::REASON_TAKEN_OVER, "another session of this agency took over receiving",
                         shared_from_this());
    }
    receiving_ = true;
    credit_ = hello.credit() == 0 ? l.default_credit : std::min(hello.credit(), l.max_credit);
  }
  phase_ = Phase::kReady;
  const std::string client = Printable(hello.client_name(), 64);
  spdlog::info("{}: ready{} (client '{}')", tag_,
               receiving_ ? " to receive, credit " + std::to_string(credit_) : std::string(), client);

  v1::Frame f;
  auto* w = f.mutable_welcome();
  w->set_protocol_version(kProtocolVersion);
  w->set_agency_id(agency_);
  w->set_session_id(std::to_string(id_));
  w->set_broker_name(broker_.config.name);
  w->set_max_frame_bytes(l.max_frame_bytes);
  w->set_receiving(receiving_);
  w->set_credit(credit_);
  w->set_ping_interval_ms(static_cast<uint32_t>(l.ping_interval.count()));
  w->set_idle_timeout_ms(static_cast<uint32_t>(l.idle_timeout.count()));
  w->set_max_recipients(l.max_recipients);
  ToProto(broker_.store->latest(), w->mutable_checkpoint());
  Send(f);
  if (receiving_) PumpDeliveries();  // what waited while the agency was away
}

void Session::HandlePing(const v1::Ping& ping) {
  v1::Frame f;
  f.mutable_pong()->set_nonce(ping.nonce());
  Send(f);
}

void Session::HandlePong(const v1::Pong& /*pong*/) { ping_outstanding_ = false; }

void Session::HandleError(const v1::Error& error) {
  // A client reporting a problem: log it (bounded), close if it says so.
  spdlog::info("{}: client reported {} ({}): {}", tag_, v1::Reason_Name(error.code()), error.request_id(),
               Printable(error.message(), 200));
  if (error.fatal()) stream_.CloseGracefully();
}

}  // namespace liaison::broker
