// liaison recall: withdraw a message this agency sent. Copies not yet
// delivered are removed; recipients who already have it get a recall notice.
#include <cstdio>

#include "client/cli/commands.h"
#include "common/uuid.h"

namespace liaison::cli {
namespace {

struct RecallOptions {
  std::string message_id;
  std::string reason;
};

int RunRecall(const CommonOptions& common, const RecallOptions& o) {
  auto options = ConnectionOrReport(common);
  if (!options) return kExitUsage;
  options->client_name = "liaison-cli/0.1 recall";
  auto client = client::Client::Connect(*options);
  if (!client.ok()) return ReportConnectError(client.status());
  const client::RecallResult r = (*client)->Recall(o.message_id, o.reason);
  (*client)->Close();
  if (int alarm = CheckWitness(**client, kExitOk); alarm != kExitOk) return alarm;
  if (!r.status.ok()) {
    if (common.json) {
      std::printf("{\"messageId\":%s,\"ok\":false,\"error\":%s,\"message\":%s}\n", JsonString(o.message_id).c_str(),
                  JsonString(r.error_code).c_str(), JsonString(r.status.message()).c_str());
    } else {
      std::fprintf(stderr, "liaison recall: %s\n", r.status.message().c_str());
    }
    return r.error_code.empty() ? kExitConnection : kExitRejected;
  }
  // The id in canonical form (lower case), as the broker's audit log has it;
  // worked out here rather than taken from the broker's answer.
  const Result<std::string> canonical = NormalizeUuid(o.message_id);
  const std::string& id = canonical.ok() ? *canonical : o.message_id;
  auto list = [](const std::vector<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : ",") + JsonString(s);
    return "[" + out + "]";
  };
  if (common.json) {
    std::printf("{\"messageId\":%s,\"ok\":true,\"withdrawn\":%s,\"notified\":%s}\n", JsonString(id).c_str(),
                list(r.withdrawn).c_str(), list(r.notified).c_str());
  } else {
    std::printf("recalled %s\n", id.c_str());
    for (const auto& a : r.withdrawn) std::printf("  %-24s withdrawn before delivery\n", a.c_str());
    for (const auto& a : r.notified) std::printf("  %-24s had it; a recall notice is on its way\n", a.c_str());
    if (r.withdrawn.empty() && r.notified.empty()) std::printf("  nothing changed (recalled before)\n");
  }
  return kExitOk;
}

}  // namespace

void RegisterRecall(CLI::App& app, CommonOptions& common, int* exit_code) {
  auto o = std::make_shared<RecallOptions>();
  CLI::App* cmd = app.add_subcommand(
      "recall", "withdraw a message this agency sent: undelivered copies are removed, recipients who have it are told");
  cmd->add_option("message_id", o->message_id, "the id of the message to recall")->required();
  cmd->add_option("--reason", o->reason, "why, shown to the recipients (at most 1000 bytes)");
  cmd->callback([&common, o, exit_code] { *exit_code = RunRecall(common, *o); });
}

}  // namespace liaison::cli
