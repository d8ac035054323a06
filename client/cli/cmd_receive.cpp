// liaison receive: take this agency's deliveries, write each (to stdout or
// a directory) and acknowledge it only after it is written.
#include <csignal>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <mutex>

#include "client/cli/commands.h"
#include "common/files.h"
#include "common/printable.h"
#include "proto/detail/pb.h"
#include "proto/message_json.h"
#include "proto/names.h"
#include "proto/validate.h"

namespace liaison::cli {
namespace {

std::atomic<bool> g_stop{false};
extern "C" void OnSignal(int) { g_stop = true; }

struct ReceiveOptions {
  std::string out_dir;
  bool follow = false;
  int count = 1;
  int wait_s = 30;
  bool take_over = false;
  uint32_t credit = 0;
  bool pretty = false;
};

// Deliveries handed from the client's I/O thread to the main thread.
struct Inbox {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<client::Delivery> queue;
  bool closed = false;
  Status why;
};

// Sender ids and message ids come from the broker; with --out they become
// file names, so they are checked (proto::IsFileSafeKey) rather than trusted.
Status UnsafeKey(const std::string& what, const std::string& sender, const std::string& message_id) {
  return Status::ProtocolError(what + " from the broker names sender '" + Printable(sender, 64) + "' and message id '" +
                               Printable(message_id, 64) + "', which cannot be a file name");
}

// A recall notice or a delivery report: one JSON line (stdout, or with
// --out the file beside the message); a recall notice also moves the
// recalled message's file into <out>/recalled/.
Status HandleNotice(const CommonOptions& common, const ReceiveOptions& o, const client::Delivery& d) {
  std::string line, text;
  if (d.kind == client::Delivery::Kind::kRecallNotice) {
    const client::RecallNotice& n = d.recall;
    line = "{\"recall\":{\"messageId\":" + JsonString(n.message_id) + ",\"sender\":" + JsonString(n.sender) +
           ",\"reason\":" + JsonString(n.reason) + ",\"recalledAtMs\":" + std::to_string(n.recalled_at_ms) + "}}";
    text = "recall notice: " + n.sender + " recalled " + n.message_id + " (" + n.reason + ")";
    if (!o.out_dir.empty()) {
      if (!proto::IsFileSafeKey(n.sender, n.message_id)) return UnsafeKey("a recall notice", n.sender, n.message_id);
      const std::string name = n.sender + "_" + n.message_id;
      std::error_code ec;
      std::filesystem::create_directories(o.out_dir + "/recalled", ec);
      if (ec) return Status::IoError("cannot create " + o.out_dir + "/recalled: " + ec.message());
      if (std::filesystem::exists(o.out_dir + "/" + name + ".json")) {
        std::filesystem::rename(o.out_dir + "/" + name + ".json", o.out_dir + "/recalled/" + name + ".json", ec);
        if (ec) return Status::IoError("cannot move " + name + ".json to recalled/: " + ec.message());
      }
      if (Status s = WriteFileAtomic(o.out_dir + "/recalled/" + name + ".recall.json", line + "\n", 0600); !s.ok()) {
        return s;
      }
      text += " -> " + o.out_dir + "/recalled/";
    }
  } else {
    const client::DeliveryReport& r = d.report;
    line = "{\"report\":{\"messageId\":" + JsonString(r.message_id) + ",\"recipient\":" + JsonString(r.recipient) +
           ",\"outcome\":" + JsonString(r.outcome) + ",\"reason\":" + JsonString(r.reason) +
           ",\"detail\":" + JsonString(r.detail) + ",\"timeMs\":" + std::to_string(r.time_ms) + "}}";
    text = "delivery report: " + r.message_id + " -> " + r.recipient + ": " + r.outcome +
           (r.reason.empty() ? "" : " (" + r.reason + ")");
  }
  if (common.json || o.out_dir.empty()) {
    std::printf("%s\n", line.c_str());
  } else {
    // Its fields come from the broker: a newline in one would forge a line.
    std::printf("%s\n", Printable(text, 8192).c_str());
  }
  if (std::fflush(stdout) != 0) return Status::IoError("cannot write to stdout");
  return Status::Ok();
}

int RunReceive(const CommonOptions& common, const ReceiveOptions& o) {
  if (!o.out_dir.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_directory(o.out_dir, ec)) {
      std::fprintf(stderr, "liaison receive: --out %s is not a directory\n", o.out_dir.c_str());
      return kExitUsage;
    }
  }
  auto options = ConnectionOrReport(common);
  if (!options) return kExitUsage;
  options->receive = true;
  options->take_over = o.take_over;
  options->credit = o.credit;
  options->client_name = "liaison-cli/0.1 receive";

  auto inbox = std::make_shared<Inbox>();
  auto client = client::Client::Connect(
      *options,
      [inbox](client::Delivery d) {
        std::lock_guard lock(inbox->mu);
        inbox->queue.push_back(std::move(d));
        inbox->cv.notify_one();
      },
      [inbox](const Status& why) {
        std::lock_guard lock(inbox->mu);
        inbox->closed = true;
        inbox->why = why;
        inbox->cv.notify_one();
      });
  if (!client.ok()) return ReportConnectError(client.status());
  if (!common.json) {
    std::fprintf(stderr, "liaison receive: receiving for agency %s%s\n", (*client)->session().agency_id.c_str(),
                 o.follow ? " (until interrupted)" : "");
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o.wait_s);
  int received = 0;
  int rc = kExitOk;
  while (!g_stop && (o.follow || received < o.count)) {
    client::Delivery d;
    {
      std::unique_lock lock(inbox->mu);
      inbox->cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return !inbox->queue.empty() || inbox->closed; });
      if (inbox->queue.empty()) {
        if (inbox->closed) {
          std::fprintf(stderr, "liaison receive: %s\n",
                       inbox->why.ok() ? "connection closed" : inbox->why.message().c_str());
          rc = kExitConnection;
          break;
        }
        if (!o.follow && std::chrono::steady_clock::now() > deadline) {
          rc = kExitTimeout;
          break;
        }
        continue;
      }
      d = std::move(inbox->queue.front());
      inbox->queue.pop_front();
    }
    if (d.kind != client::Delivery::Kind::kMessage) {
      if (Status s = HandleNotice(common, o, d); !s.ok()) {
        std::fprintf(stderr, "liaison receive: %s; not acknowledged\n", s.message().c_str());
        rc = s.IsProtocolError() ? kExitConnection : kExitUsage;
        break;
      }
      (*client)->Acknowledge(d);
      continue;
    }
    const v1::Envelope& env = d.message->envelope();
    auto json = proto::ToJson(*d.message, o.pretty || !o.out_dir.empty());
    if (!json.ok()) {
      std::fprintf(stderr, "liaison receive: %s\n", json.status().message().c_str());
      rc = kExitConnection;
      break;
    }
    if (o.out_dir.empty()) {
      std::fwrite(json->data(), 1, json->size(), stdout);
      std::fputc('\n', stdout);
      if (std::fflush(stdout) != 0) {
        std::fprintf(stderr, "liaison receive: cannot write to stdout; message %s not acknowledged\n",
                     env.message_id().c_str());
        rc = kExitUsage;
        break;
      }
    } else {
      if (!proto::IsFileSafeKey(env.sender(), env.message_id())) {
        std::fprintf(stderr, "liaison receive: %s; not acknowledged\n",
                     UnsafeKey("a message", env.sender(), env.message_id()).message().c_str());
        rc = kExitConnection;
        break;
      }
      const std::string path = o.out_dir + "/" + env.sender() + "_" + env.message_id() + ".json";
      if (Status s = WriteFileAtomic(path, *json + "\n", 0600); !s.ok()) {
        std::fprintf(stderr, "liaison receive: %s; message %s not acknowledged\n", s.message().c_str(),
                     env.message_id().c_str());
        rc = kExitUsage;
        break;
      }
      if (common.json) {
        std::printf("{\"messageId\":%s,\"sender\":%s,\"type\":%s,\"file\":%s}\n",
                    JsonString(env.message_id()).c_str(), JsonString(env.sender()).c_str(),
                    JsonString(proto::MessageTypeName(*d.message)).c_str(), JsonString(path).c_str());
      } else {
        std::printf("received %s from %s (%s, TLP:%s) -> %s\n", env.message_id().c_str(), env.sender().c_str(),
                    proto::MessageTypeName(*d.message).c_str(), proto::TlpName(env.tlp()).c_str(), path.c_str());
      }
      std::fflush(stdout);
    }
    (*client)->Acknowledge(d);
    ++received;
  }
  (*client)->Close();
  rc = CheckWitness(**client, rc);
  if (rc == kExitTimeout) {
    std::fprintf(stderr, "liaison receive: %d of %d message(s) within %d s\n", received, o.count, o.wait_s);
  }
  return rc;
}

}  // namespace

void RegisterReceive(CLI::App& app, CommonOptions& common, int* exit_code) {
  auto o = std::make_shared<ReceiveOptions>();
  CLI::App* cmd = app.add_subcommand("receive", "receive messages for this agency and acknowledge them once written");
  cmd->add_option("--out", o->out_dir, "write each message as <sender>_<message id>.json into this directory "
                                       "(default: JSON lines on stdout)");
  cmd->add_flag("--follow,-f", o->follow, "keep receiving until interrupted (SIGINT/SIGTERM)");
  cmd->add_option("--count,-n", o->count, "without --follow: stop after this many messages")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  cmd->add_option("--wait", o->wait_s, "without --follow: give up after this many seconds (exit 5)")
      ->check(CLI::Range(1, 86400))
      ->capture_default_str();
  cmd->add_flag("--take-over", o->take_over, "replace this agency's current receiving session");
  cmd->add_option("--credit", o->credit, "most unacknowledged deliveries in flight (default: the broker's)")
      ->check(CLI::Range(1, 65536));
  cmd->add_flag("--pretty", o->pretty, "indent JSON on stdout");
  cmd->callback([&common, o, exit_code] { *exit_code = RunReceive(common, *o); });
}

}  // namespace liaison::cli
