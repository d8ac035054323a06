// liaison send: publish one message and report each recipient's outcome.
#include <google/protobuf/util/time_util.h>

#include <cstdio>
#include <future>
#include <iostream>
#include <iterator>
#include <sstream>

#include "client/cli/commands.h"
#include "common/files.h"
#include "common/uuid.h"
#include "proto/detail/pb.h"
#include "proto/message_json.h"
#include "proto/names.h"
#include "proto/validate.h"

namespace liaison::cli {
namespace {

constexpr size_t kMaxInputBytes = 4 * 1024 * 1024;

struct SendOptions {
  std::string file = "-";
  std::string format = "auto";
  std::vector<std::string> to;
  std::string tlp, purpose, case_id, agreement, in_reply_to, message_id;
  int64_t expires_in = 0;
  int timeout_s = 60;
  bool reports = false;
};

Result<std::string> ReadInput(const std::string& file) {
  if (file != "-") return ReadFile(file, kMaxInputBytes);
  std::string data;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, stdin)) > 0) {
    data.append(buf, n);
    if (data.size() > kMaxInputBytes) return Status::InvalidArgument("standard input is larger than 4 MiB");
  }
  return data;
}


int RunSend(const CommonOptions& common, const SendOptions& o) {
  auto input = ReadInput(o.file);
  if (!input.ok()) {
    std::fprintf(stderr, "liaison send: %s\n", input.status().message().c_str());
    return kExitUsage;
  }
  v1::Message msg;
  std::string format = o.format;
  if (format == "auto") {
    const auto first = input->find_first_not_of(" \t\r\n");
    format = first != std::string::npos && (*input)[first] == '{' ? "json" : "binary";
  }
  Status parsed = format == "json" ? proto::FromJson(*input, &msg) : proto::FromBinary(*input, &msg);
  if (!parsed.ok()) {
    std::fprintf(stderr, "liaison send: %s: %s\n", o.file == "-" ? "stdin" : o.file.c_str(),
                 parsed.message().c_str());
    return kExitUsage;
  }
  v1::Envelope* env = msg.mutable_envelope();
  if (!o.to.empty()) {
    env->clear_recipients();
    for (const auto& r : o.to) env->add_recipients(r);
  }
  if (!o.tlp.empty()) {
    auto tlp = proto::ParseTlp(o.tlp);
    if (!tlp.ok()) {
      std::fprintf(stderr, "liaison send: --tlp: %s\n", tlp.status().message().c_str());
      return kExitUsage;
    }
    env->set_tlp(static_cast<v1::Tlp>(*tlp));
  }
  if (!o.purpose.empty()) env->set_purpose(o.purpose);
  if (!o.case_id.empty()) env->set_case_id(o.case_id);
  if (!o.agreement.empty()) env->set_sharing_agreement(o.agreement);
  if (!o.in_reply_to.empty()) env->set_in_reply_to(o.in_reply_to);
  if (!o.message_id.empty()) env->set_message_id(o.message_id);
  const auto now = google::protobuf::util::TimeUtil::GetCurrentTime();
  if (env->message_id().empty()) {
    env->set_message_id(NewUuid());
    // Only a message this command names may get the time stamped on it: a
    // message whose id the user gives may be a repeat, which must carry the
    // same bytes as the first send or the broker refuses it as a different
    // message under a used id (duplicate_message_id).
    if (!env->has_created_at()) *env->mutable_created_at() = now;
  }
  if (o.expires_in > 0) {
    *env->mutable_expires_at() = now + google::protobuf::util::TimeUtil::SecondsToDuration(o.expires_in);
  }
  if (Status s = proto::ValidateForPublish(&msg, proto::MessageLimits{}, std::chrono::system_clock::now()); !s.ok()) {
    std::fprintf(stderr, "liaison send: invalid message: %s\n", s.message().c_str());
    return kExitUsage;
  }

  auto options = ConnectionOrReport(common);
  if (!options) return kExitUsage;
  options->client_name = "liaison-cli/0.1 send";
  options->want_reports = o.reports;
  auto client = client::Client::Connect(*options);
  if (!client.ok()) return ReportConnectError(client.status());
  auto answer = std::make_shared<std::promise<client::PublishResult>>();
  auto future = answer->get_future();
  (*client)->Publish(msg, [answer](client::PublishResult r) { answer->set_value(std::move(r)); });
  if (future.wait_for(std::chrono::seconds(o.timeout_s)) != std::future_status::ready) {
    std::fprintf(stderr, "liaison send: no answer from the broker within %d s; the outcome of message %s is unknown\n",
                 o.timeout_s, env->message_id().c_str());
    (*client)->Close();
    return kExitConnection;
  }
  const client::PublishResult r = future.get();
  const std::string agency = (*client)->session().agency_id;
  (*client)->Close();
  if (int alarm = CheckWitness(**client, kExitOk); alarm != kExitOk) return alarm;

  if (!r.status.ok()) {
    if (common.json) {
      std::printf("{\"messageId\":%s,\"ok\":false,\"error\":%s,\"message\":%s}\n",
                  JsonString(env->message_id()).c_str(), JsonString(r.error_code).c_str(),
                  JsonString(r.status.message()).c_str());
    } else {
      std::fprintf(stderr, "liaison send: message %s was not accepted: %s\n", env->message_id().c_str(),
                   r.status.message().c_str());
    }
    return r.error_code.empty() ? kExitConnection : kExitRejected;
  }
  const bool ok = r.AllAccepted();
  if (common.json) {
    std::string out = "{\"messageId\":" + JsonString(r.message_id) + ",\"sender\":" + JsonString(agency) +
                      ",\"ok\":" + (ok ? "true" : "false") + ",\"duplicate\":" + (r.duplicate ? "true" : "false") +
                      ",\"outcomes\":[";
    for (size_t i = 0; i < r.outcomes.size(); ++i) {
      const auto& oc = r.outcomes[i];
      out += (i ? "," : "") + std::string("{\"recipient\":") + JsonString(oc.recipient) +
             ",\"outcome\":" + JsonString(oc.outcome) + ",\"reason\":" + JsonString(oc.reason) +
             ",\"detail\":" + JsonString(oc.detail) + "}";
    }
    std::printf("%s]}\n", out.c_str());
  } else {
    std::printf("message %s from %s (%s, TLP:%s)%s\n", r.message_id.c_str(), agency.c_str(),
                proto::MessageTypeName(msg).c_str(), proto::TlpName(env->tlp()).c_str(),
                r.duplicate ? " -- already sent before; these are the original outcomes" : "");
    for (const auto& oc : r.outcomes) {
      if (oc.outcome == "refused") {
        std::printf("  %-24s REFUSED  %s: %s\n", oc.recipient.c_str(), oc.reason.c_str(), oc.detail.c_str());
      } else {
        std::printf("  %-24s %s\n", oc.recipient.c_str(), oc.outcome.c_str());
      }
    }
  }
  return ok ? kExitOk : kExitRefused;
}

}  // namespace

void RegisterSend(CLI::App& app, CommonOptions& common, int* exit_code) {
  auto o = std::make_shared<SendOptions>();
  CLI::App* cmd = app.add_subcommand("send", "send one message (JSON or binary protobuf) to agencies");
  cmd->add_option("file", o->file, "message file (liaison.v1.Message as JSON or binary); - for stdin")
      ->capture_default_str();
  cmd->add_option("--format", o->format, "input format")
      ->check(CLI::IsMember({"auto", "json", "binary"}))
      ->capture_default_str();
  cmd->add_option("--to", o->to, "recipient agency ids, comma-separated or repeated (replaces envelope.recipients)")
      ->delimiter(',')
      ->allow_extra_args(false);
  cmd->add_option("--tlp", o->tlp, "TLP label: CLEAR, GREEN, AMBER, AMBER+STRICT, RED");
  cmd->add_option("--purpose", o->purpose, "purpose of this share, e.g. safeguarding");
  cmd->add_option("--case-id", o->case_id, "case id");
  cmd->add_option("--agreement", o->agreement, "sharing agreement id");
  cmd->add_option("--in-reply-to", o->in_reply_to, "message id this message answers");
  cmd->add_option("--message-id", o->message_id, "message id (UUID; default: a new UUIDv7)");
  cmd->add_option("--expires-in", o->expires_in, "seconds until the message expires")->check(CLI::Range(1, 315360000));
  cmd->add_flag("--reports", o->reports,
                "ask for a delivery report per recipient (delivered, expired, refused, recalled); they arrive "
                "with this agency's deliveries (liaison receive)");
  cmd->add_option("--timeout", o->timeout_s, "seconds to wait for the broker's answer (exit 3 after)")
      ->check(CLI::Range(1, 86400))
      ->capture_default_str();
  cmd->callback([&common, o, exit_code] { *exit_code = RunSend(common, *o); });
}

}  // namespace liaison::cli
