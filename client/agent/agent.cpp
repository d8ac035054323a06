#include "client/agent/agent.h"

#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "client/agent/agent_files.h"
#include "common/files.h"
#include "common/json_string.h"
#include "common/printable.h"
#include "common/uuid.h"
#include "proto/detail/pb.h"
#include "proto/message_json.h"
#include "proto/validate.h"

namespace liaison::agent {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMaxMessageFileBytes = 4 * 1024 * 1024;
constexpr size_t kMaxClaimsPerScan = 256;
// Claimed files wait in memory until the broker has them. While it cannot
// be reached, claims stop at this many files or bytes; the rest stay in
// the outbox (a backlog of thousands must not exhaust the agent's memory).
constexpr size_t kMaxPendingFiles = 1024;
constexpr size_t kMaxPendingBytes = 16u << 20;
// Longest name of a file in sent/ or failed/. A name may have 255 bytes
// (NAME_MAX), but the agent writes "<name>.report.<agency>.json" (an agency
// id has up to 63 bytes) beside it, under a temporary name 12 bytes longer:
// longer outbox names are shortened on the way (DestName).
constexpr size_t kMaxKeptName = 160;
// A file that is not a valid message and was changed less than this long
// ago may still be being written (copied straight under its final name,
// rather than renamed into place): it is looked at again, not failed.
constexpr int64_t kStillWritingMs = 2'000;
// A connection that lasted this long resets the reconnect backoff.
constexpr auto kStableConnection = std::chrono::seconds(10);
// state_dir/<this>: recall notices and reports the agent could not file
// (Agent::Quarantine).
constexpr const char* kQuarantineName = "quarantine";

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string OutcomesJson(const std::vector<client::RecipientOutcome>& outcomes) {
  std::string out = "[";
  for (size_t i = 0; i < outcomes.size(); ++i) {
    const auto& o = outcomes[i];
    out += (i ? "," : "") + std::string("{\"recipient\":") + JsonString(o.recipient) + ",\"outcome\":" + JsonString(o.outcome) +
           ",\"reason\":" + JsonString(o.reason) + ",\"detail\":" + JsonString(o.detail) + "}";
  }
  return out + "]";
}

std::string ErrorJson(const std::string& file, const std::string& message_id, const std::string& code,
                      const std::string& message, const std::vector<client::RecipientOutcome>& outcomes = {}) {
  return "{\"file\":" + JsonString(file) + ",\"messageId\":" + JsonString(message_id) + ",\"error\":" + JsonString(code) +
         ",\"message\":" + JsonString(message) + ",\"outcomes\":" + OutcomesJson(outcomes) +
         ",\"timeMs\":" + std::to_string(NowMs()) + "}\n";
}

// A recall notice and a delivery report as the agent files them: the
// object after "recall" or "report".
std::string RecallJson(const client::RecallNotice& n) {
  return "{\"messageId\":" + JsonString(n.message_id) + ",\"sender\":" + JsonString(n.sender) +
         ",\"reason\":" + JsonString(n.reason) + ",\"recalledAtMs\":" + std::to_string(n.recalled_at_ms) + "}";
}

std::string ReportJson(const client::DeliveryReport& r) {
  return "{\"messageId\":" + JsonString(r.message_id) + ",\"recipient\":" + JsonString(r.recipient) +
         ",\"outcome\":" + JsonString(r.outcome) + ",\"reason\":" + JsonString(r.reason) +
         ",\"detail\":" + JsonString(r.detail) + ",\"timeMs\":" + std::to_string(r.time_ms) + "}";
}

// Sender ids and message ids come from the broker; they become file names,
// so they are checked rather than trusted.
bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Whether name has the form of a file the agent writes beside a sent or
// failed file: <name>.ack.json, <name>.error.json, <name>.report.<agency>.json.
bool IsSideFileName(const std::string& name) {
  if (EndsWith(name, ".ack.json") || EndsWith(name, ".error.json")) return true;
  const auto at = name.rfind(".report.");
  if (at == std::string::npos || !EndsWith(name, ".json")) return false;
  const size_t from = at + 8;
  return name.size() > from + 5 && proto::IsValidAgencyId(name.substr(from, name.size() - from - 5));
}

}  // namespace

Agent::Agent(AgentConfig config) : config_(std::move(config)), rng_(std::random_device{}()) {
  staging_ = config_.inbox + "/" + kInboxStagingName;
}

Agent::~Agent() {
  if (client_) client_->Close();
  if (hooks_) hooks_->Stop();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

Result<std::unique_ptr<Agent>> Agent::Open(AgentConfig config) {
  std::unique_ptr<Agent> a(new Agent(std::move(config)));
  const AgentConfig& c = a->config_;
  if (Status s = EnsureDirectory(c.state_dir, 0700); !s.ok()) return s;
  auto lock = LockFile(c.state_dir + "/agent.lock");
  if (!lock.ok()) return lock.status();
  a->lock_fd_ = *lock;
  const std::string* dirs[] = {&c.outbox, &c.sent, &c.failed, &c.inbox, &c.recalled, &a->staging_};
  for (const std::string* dir : dirs) {
    if (Status s = EnsureDirectory(*dir, 0750); !s.ok()) return s;
  }
  if (Status s = EnsureDirectory(c.state_dir + "/" + kQuarantineName, 0700); !s.ok()) return s;
  auto db = StateDb::Open(c.state_dir + "/state.db");
  if (!db.ok()) return db.status();
  a->db_ = std::move(db).value();
  if (Status s = a->Recover(); !s.ok()) return s.Annotate("finishing what the last run left");
  if (c.hook) a->hooks_ = std::make_unique<HookRunner>(*a->db_, *c.hook);
  return a;
}

// Completes every step a crash interrupted. Each is repeatable: a file
// already moved is not moved again, a staged message already in the inbox
// is not written again.
Status Agent::Recover() {
  auto active = db_->ActiveOutbox();
  if (!active.ok()) return active.status();
  std::vector<OutboxRow> settled;
  for (auto& r : *active) {
    if (r.state == OutboxRow::State::kSettled) {
      settled.push_back(std::move(r));
    } else {
      pending_.emplace(r.id, std::move(r));
    }
  }
  if (!settled.empty()) {
    spdlog::info("moving {} file(s) the last run had sent but not yet moved", settled.size());
    if (Status s = ApplySettled(settled); !s.ok()) return s;
  }
  if (!pending_.empty()) {
    spdlog::info("{} outbox file(s) recorded but not yet acknowledged by the broker: sending again under their ids",
                 pending_.size());
  }
  auto staged = db_->StagedInbox();
  if (!staged.ok()) return staged.status();
  if (!staged->empty()) {
    for (const auto& k : *staged) {
      // Still in staging: the rename into the inbox did not happen yet.
      if (FileExists(staging_ + "/" + k.name)) {
        if (Status s = RenameFile(staging_ + "/" + k.name, config_.inbox + "/" + k.name); !s.ok()) return s;
      }
    }
    if (Status s = SyncDirectory(config_.inbox); !s.ok()) return s;
    if (Status s = SyncDirectory(staging_); !s.ok()) return s;
    if (Status s = db_->FinishInbox(*staged, config_.hook.has_value(), config_.inbox, NowMs()); !s.ok()) return s;
    spdlog::info("moved {} message(s) the last run had written but not yet placed into the inbox", staged->size());
  }
  // What is left in staging was written but never recorded: its delivery
  // was not acknowledged, so the broker delivers it again.
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(staging_, ec)) {
    std::filesystem::remove(e.path(), ec);
  }
  return Status::Ok();
}

void Agent::Push(Event e) {
  std::lock_guard lock(mu_);
  events_.push_back(std::move(e));
  cv_.notify_one();
}

void Agent::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  if (hooks_) hooks_->RequestStop();
}

AgentStats Agent::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

// ---- connection --------------------------------------------------------

Millis Agent::NextBackoff() {
  Millis d = config_.reconnect_initial;
  for (int i = 0; i < backoff_attempt_ && d < config_.reconnect_max; ++i) d *= 2;
  d = std::min(d, config_.reconnect_max);
  if (backoff_attempt_ < 30) ++backoff_attempt_;
  // "Equal jitter": between half and all of the delay, so that agencies
  // cut off together do not all come back in the same millisecond.
  std::uniform_int_distribution<int64_t> jitter(d.count() / 2, d.count());
  return Millis(jitter(rng_));
}

void Agent::TryConnect(Clock::time_point now) {
  client::ClientOptions o = config_.connection;
  o.receive = true;
  o.take_over = true;  // replaces the session of a predecessor that crashed
  o.credit = config_.credit;
  o.want_reports = config_.want_reports;
  o.client_name = "liaison-agent/0.1";
  o.connect_timeout = std::chrono::seconds(5);
  const uint64_t gen = ++generation_;
  auto c = client::Client::Connect(
      o,
      [this, gen](client::Delivery d) {
        Event e;
        e.kind = Event::Kind::kDelivery;
        e.generation = gen;
        e.delivery = std::move(d);
        Push(std::move(e));
      },
      [this, gen](const Status& why) {
        Event e;
        e.kind = Event::Kind::kClosed;
        e.generation = gen;
        e.why = why;
        Push(std::move(e));
      });
  if (!c.ok()) {
    const Millis delay = NextBackoff();
    next_connect_ = now + delay;
    spdlog::warn("cannot connect to the broker at {}:{}: {}; retrying in {} ms", o.host, o.port, c.status().message(),
                 delay.count());
    return;
  }
  client_ = std::move(c).value();
  in_flight_.clear();
  connected_at_ = Clock::now();
  last_activity_ = connected_at_;
  ever_connected_ = true;
  const client::SessionInfo& s = client_->session();
  spdlog::info("connected to broker '{}' at {}:{} as agency {} (session {}), receiving with credit {}", s.broker_name,
               o.host, o.port, s.agency_id, s.session_id, s.credit);
}

void Agent::Disconnect(const std::string& why, bool error) {
  if (!client_) return;
  client_->Close();
  client_.reset();
  in_flight_.clear();
  const auto now = Clock::now();
  if (now - connected_at_ >= kStableConnection) backoff_attempt_ = 0;
  const Millis delay = NextBackoff();
  next_connect_ = now + delay;
  if (error) {
    spdlog::error("{}; reconnecting in {} ms", why, delay.count());
  } else {
    spdlog::warn("{}; reconnecting in {} ms", why, delay.count());
  }
}

// ---- outbox ------------------------------------------------------------

std::string Agent::DestName(const std::string& name, const std::string& unique) {
  // A name is taken by a file there, and by an ack or error file without
  // its file (one removed from the outbox while it was sent): a new file of
  // that name would write over that message's ack.
  auto taken = [&](const std::string& n) {
    return FileExists(config_.sent + "/" + n) || FileExists(config_.failed + "/" + n) ||
           FileExists(config_.sent + "/" + n + ".ack.json") || FileExists(config_.failed + "/" + n + ".error.json");
  };
  if (name.size() <= kMaxKeptName && !IsSideFileName(name) && !taken(name)) return name;
  // An earlier file of the same name is in sent/ or failed/ (keep both); or
  // the name is one the agent may give a file beside another (kept, it
  // would be overwritten); or it is too long for the files beside it (cut,
  // not at a UTF-8 continuation byte; unique keeps it apart from others
  // cut alike).
  const auto dot = name.rfind('.');
  std::string stem = name.substr(0, dot);
  const std::string ext = name.substr(dot);
  const size_t room = kMaxKeptName - ext.size() - 1 - unique.size();
  if (stem.size() > room) {
    size_t cut = room;
    while (cut > 0 && (static_cast<unsigned char>(stem[cut]) & 0xC0) == 0x80) --cut;
    stem.resize(cut);
  }
  // The message id is not unique to a file: the same file (with its id)
  // may be dropped again and again. The name must be free, or the move
  // would be skipped as already done and the file claimed again forever.
  std::string dest = stem + "." + unique + ext;
  while (taken(dest)) dest = stem + "." + NewUuid() + ext;
  return dest;
}

// A file that is not (yet) a valid message: whether it was changed so
// recently that its writer may still be at work. A file copied straight
// into the outbox (not renamed into place) is first empty, then half
// written; failed then, it went to failed/ while its writer went on writing
// it there, and was never sent.
bool Agent::StillWriting(const std::string& name, const OutboxFile& file) {
  const int64_t age = NowMs() - file.mtime_ms;
  // A time set in the future is no sign of a writer (its writes would
  // set it to now).
  if (age < -kStillWritingMs || age >= kStillWritingMs) {
    skipped_logged_.erase(name);
    return false;
  }
  if (skipped_logged_.insert(name).second) {
    spdlog::info("outbox: {} is not a valid message (yet) and was changed {} ms ago: still being written? Looked at again",
                 Printable(name, 255), std::max<int64_t>(age, 0));
  }
  return true;
}

void Agent::FailFile(const std::string& name, const std::string& code, const std::string& message) {
  // A file that cannot be moved is tried again at every scan; it is logged
  // once a minute, not each time.
  const auto now = std::chrono::steady_clock::now();
  auto logged = fail_logged_.find(name);
  const bool quiet = logged != fail_logged_.end() && now - logged->second < kFailLogEvery;
  if (!quiet) spdlog::warn("outbox: {} not sent: {}", Printable(name, 255), message);
  const std::string dest = DestName(name, NewUuid());
  const std::string reason = config_.failed + "/" + dest + ".error.json";
  // The reason first, then the move: a crash in between leaves the file in
  // the outbox, where it fails again the same way (and the reason without
  // its file, which the move's failure below takes back).
  Status s = WriteFileAtomic(reason, ErrorJson(name, "", code, message), 0640);
  if (s.ok()) {
    s = RenameFile(config_.outbox + "/" + name, config_.failed + "/" + dest);
    // Not moved (an outbox the agent cannot write, say): the reason goes,
    // or each scan would leave another beside the last.
    if (!s.ok()) ::unlink(reason.c_str());
  }
  if (s.ok()) s = SyncDirectory(config_.failed);
  if (s.ok()) s = SyncDirectory(config_.outbox);
  if (!s.ok()) {
    if (!quiet) {
      spdlog::error("outbox: cannot move {} to failed/ (tried again at each scan, logged once a minute): {}",
                    Printable(name, 255), s.message());
      fail_logged_[name] = now;
    }
    return;
  }
  fail_logged_.erase(name);
  std::lock_guard lock(mu_);
  ++stats_.failed;
}

Status Agent::ScanOutbox(bool* more) {
  *more = false;
  auto names = ListOutbox(config_.outbox);
  if (!names.ok()) return names.status();
  // Files that could not be moved to failed/ and have since gone.
  for (auto it = fail_logged_.begin(); it != fail_logged_.end();) {
    it = std::find(names->begin(), names->end(), it->first) == names->end() ? fail_logged_.erase(it) : std::next(it);
  }
  std::set<std::string> active;
  size_t pending_bytes = 0;
  for (const auto& [id, r] : pending_) {
    active.insert(r.name);
    pending_bytes += r.body.size();
  }
  // Settled, their move to be tried again: not new files (and claiming one
  // again would fail the whole batch on the database's unique name).
  for (const auto& r : unmoved_) active.insert(r.name);
  std::vector<OutboxRow> claims;
  for (const std::string& name : *names) {
    if (active.count(name)) continue;
    if (claims.size() >= kMaxClaimsPerScan || pending_.size() + claims.size() >= kMaxPendingFiles ||
        pending_bytes >= kMaxPendingBytes) {
      *more = true;  // the rest at a later scan
      break;
    }
    auto file = ReadOutboxFile(config_.outbox + "/" + name, kMaxMessageFileBytes);
    if (!file.ok()) {
      // Moved away meanwhile, or replaced by what ListOutbox passes over.
      if (file.status().IsNotFound()) continue;
      // Replaced while it was read: looked at again at the next scan.
      if (file.status().IsUnavailable()) {
        *more = true;
        continue;
      }
      FailFile(name, "unreadable", file.status().message());
      continue;
    }
    v1::Message msg;
    const bool json = EndsWith(name, ".json");
    Status parsed = json ? proto::FromJson(file->data, &msg) : proto::FromBinary(file->data, &msg);
    v1::Envelope* env = msg.mutable_envelope();
    std::string code, why;
    if (!parsed.ok()) {
      code = "invalid_file";
      why = std::string("not a valid liaison.v1.Message in ") + (json ? "JSON" : "binary protobuf") + ": " +
            parsed.message();
    } else {
      if (env->message_id().empty()) env->set_message_id(NewUuid());
      if (!env->has_created_at()) *env->mutable_created_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
      if (Status s = proto::ValidateForPublish(&msg, proto::MessageLimits{}, std::chrono::system_clock::now());
          !s.ok()) {
        code = "invalid_message";
        why = "invalid message: " + s.message();
      }
    }
    if (!code.empty()) {
      // Not (yet) a valid message (an empty .pb even parses, as one without
      // recipients): failed, unless its writer may still be at work.
      if (StillWriting(name, *file)) {
        *more = true;
      } else {
        FailFile(name, code, why);
      }
      continue;
    }
    skipped_logged_.erase(name);
    OutboxRow r;
    r.name = name;
    r.message_id = env->message_id();
    r.body = msg.SerializeAsString();
    r.file_id = file->id;
    pending_bytes += r.body.size();
    r.dest = DestName(name, r.message_id);
    claims.push_back(std::move(r));
  }
  if (claims.empty()) return Status::Ok();
  // The id is on disk before the first send: after a crash the file is
  // sent again under this id, never under a new one.
  if (Status s = db_->Claim(&claims); !s.ok()) return s;
  for (auto& r : claims) {
    spdlog::info("outbox: {} is message {}", Printable(r.name, 255), r.message_id);
    pending_.emplace(r.id, std::move(r));
  }
  return Status::Ok();
}

void Agent::PublishPending(Clock::time_point now) {
  for (auto& [id, row] : pending_) {
    if (in_flight_.size() >= config_.max_in_flight) return;
    if (in_flight_.count(id)) continue;
    if (auto it = retry_at_.find(id); it != retry_at_.end()) {
      if (it->second > now) continue;
      retry_at_.erase(it);
    }
    v1::Message msg;
    if (!msg.ParseFromString(row.body)) {
      // Only a damaged database gets here; the file is still in the outbox.
      spdlog::error("outbox: the recorded body of {} ({}) does not parse; not sending it", Printable(row.name, 255), row.message_id);
      retry_at_[id] = Clock::time_point::max();
      continue;
    }
    in_flight_.insert(id);
    const uint64_t gen = generation_;
    const int64_t row_id = id;
    client_->Publish(msg, [this, gen, row_id](client::PublishResult r) {
      Event e;
      e.kind = Event::Kind::kPublished;
      e.generation = gen;
      e.row = row_id;
      e.result = std::move(r);
      Push(std::move(e));
    });
  }
}

// Writes the outcome beside the destination and moves the file there;
// then forgets the body. Repeatable after a crash at any point.
Status Agent::ApplySettled(const std::vector<OutboxRow>& rows) {
  std::vector<int64_t> done;
  int64_t sent = 0, failed = 0;
  for (const auto& r : rows) {
    const std::string& dir = r.dir == "failed" ? config_.failed : config_.sent;
    const std::string side = dir + "/" + r.dest + (r.dir == "failed" ? ".error.json" : ".ack.json");
    if (Status s = WriteFileAtomic(side, r.result, 0640); !s.ok()) return s;
    const std::string dest = dir + "/" + r.dest;
    if (!FileExists(dest)) {
      const std::string from = config_.outbox + "/" + r.name;
      const bool there = FileExists(from);
      if (there && (r.file_id.empty() || IsClaimedFile(from, r.file_id, kMaxMessageFileBytes))) {
        if (Status s = RenameFile(from, dest); !s.ok()) return s;
      } else if (there) {
        // Removed while it was being sent, and a new file written under
        // its name (which docs/agent.md allows once the first has left the
        // outbox): that one was never sent, and filed as this one it would
        // be lost. It stays, and is claimed as a message of its own.
        spdlog::warn(
            "outbox: {} ({}) was replaced in the outbox by another file of that name before it could be moved "
            "to {}/; the new file stays in the outbox and is sent as a message of its own",
            Printable(r.name, 255), r.message_id, r.dir);
      } else {
        spdlog::warn("outbox: {} ({}) was removed from the outbox before it could be moved to {}/", Printable(r.name, 255),
                     r.message_id, r.dir);
      }
    }
    (r.dir == "failed" ? failed : sent)++;
    done.push_back(r.id);
  }
  const std::string* dirs[] = {&config_.outbox, &config_.sent, &config_.failed};
  for (const std::string* d : dirs) {
    if (Status s = SyncDirectory(*d); !s.ok()) return s;
  }
  if (Status s = db_->Finish(done); !s.ok()) return s;
  std::lock_guard lock(mu_);
  stats_.sent += sent;
  stats_.failed += failed;
  return Status::Ok();
}

Status Agent::HandleResults(std::vector<Event*>& results) {
  std::vector<StateDb::Settlement> settle;
  std::vector<OutboxRow> rows;
  const auto now = Clock::now();
  for (Event* e : results) {
    if (e->generation == generation_) in_flight_.erase(e->row);
    auto it = pending_.find(e->row);
    if (it == pending_.end()) continue;  // settled by an earlier answer
    OutboxRow& row = it->second;
    const client::PublishResult& r = e->result;
    last_activity_ = now;
    std::string dir, result;
    if (!r.status.ok()) {
      const std::string& code = r.error_code;
      const bool permanent = code == "invalid_message" || code == "sender_mismatch" || code == "duplicate_message_id" ||
                             (code.empty() && r.status.IsInvalidArgument());
      if (!permanent) {
        // Unknown outcome or a passing refusal: the same bytes go again,
        // under the same id (the broker answers a repeat with the original
        // outcome).
        if (!code.empty()) {
          spdlog::warn("outbox: {} ({}) not accepted for now: {}; trying again", Printable(row.name, 255), row.message_id,
                       r.status.message());
          retry_at_[row.id] = now + std::chrono::seconds(2);
        }
        continue;
      }
      std::string why = r.status.message();
      if (code == "duplicate_message_id") {
        why = "this agency already sent a different message with id " + row.message_id + ": " + why;
      }
      spdlog::warn("outbox: {} ({}) refused by the broker: {}", Printable(row.name, 255), row.message_id, why);
      dir = "failed";
      result = ErrorJson(row.name, row.message_id, code.empty() ? "invalid_message" : code, why);
    } else {
      bool all_refused = !r.outcomes.empty();
      const client::RecipientOutcome* not_stored = nullptr;
      std::string queue_full;  // the recipients refused as queue_full, for the log
      for (const auto& o : r.outcomes) {
        all_refused &= o.outcome == "refused";
        if (o.reason == "store_failure") not_stored = &o;
        if (o.outcome == "refused" && o.reason == "queue_full") {
          queue_full += (queue_full.empty() ? "'" : ", '") + Printable(o.recipient, 64) + "'";
        }
      }
      if (not_stored) {
        // The broker could not store it (disk full, I/O error): nothing of
        // it was kept, not even its id, so the same bytes go again later
        // under the same id, like any passing refusal.
        spdlog::warn("outbox: {} ({}) could not be stored by the broker: {}; trying again",
                     Printable(row.name, 255), row.message_id, Printable(not_stored->detail, 500));
        retry_at_[row.id] = now + std::chrono::seconds(2);
        continue;
      }
      if (all_refused && !queue_full.empty()) {
        // Queued for nobody, and a recipient's queue at the broker was
        // full: the broker kept nothing of it (docs/protocol.md, section
        // 7), so the same bytes go again under the same id until a queue
        // has room. A full queue can last (a recipient away for days), and
        // each try is a publish with its audit records: the wait doubles
        // from 2 s to kQueueFullMaxWait, and only the first is a warning.
        auto [wait, first] = queue_full_wait_.try_emplace(row.id, std::chrono::seconds(2));
        if (!first) wait->second = std::min(wait->second * 2, kQueueFullMaxWait);
        const auto level = first ? spdlog::level::warn : spdlog::level::debug;
        spdlog::log(level,
                    "outbox: {} ({}) not queued for now: the broker's queue for {} is full; trying again in {} s "
                    "(waits double up to {} s)",
                    Printable(row.name, 255), row.message_id, queue_full, wait->second.count(),
                    kQueueFullMaxWait.count());
        retry_at_[row.id] = now + wait->second;
        continue;
      }
      if (all_refused) {
        spdlog::warn("outbox: {} ({}) refused for every recipient", Printable(row.name, 255), row.message_id);
        dir = "failed";
        result = ErrorJson(row.name, row.message_id, "refused", "the broker refused the message for every recipient",
                           r.outcomes);
      } else {
        spdlog::info("outbox: {} ({}) {} -> sent/{}", Printable(row.name, 255), row.message_id,
                     r.duplicate ? "was already accepted before a restart" : "accepted", Printable(row.dest, 255));
        if (!queue_full.empty()) {
          // The broker keeps this outcome (it queued the message for the
          // others): sending these bytes again would get it again.
          spdlog::warn(
              "outbox: {} ({}) did not reach {}: the broker's queue for them was full (queue_full); "
              "send them a new message to reach them",
              Printable(row.name, 255), row.message_id, queue_full);
        }
        dir = "sent";
        result = "{\"file\":" + JsonString(row.name) + ",\"messageId\":" + JsonString(row.message_id) +
                 ",\"duplicate\":" + (r.duplicate ? "true" : "false") + ",\"outcomes\":" + OutcomesJson(r.outcomes) +
                 ",\"checkpointTreeSize\":" + std::to_string(r.checkpoint.tree_size) +
                 ",\"ackedAtMs\":" + std::to_string(NowMs()) + "}\n";
      }
    }
    settle.push_back({row.id, dir, result});
    row.dir = dir;
    row.result = result;
    rows.push_back(row);
    pending_.erase(it);
    retry_at_.erase(e->row);
    queue_full_wait_.erase(e->row);
  }
  if (settle.empty()) return Status::Ok();
  // The outcome is on disk before the move: a crash after this line
  // finishes the move at the next start without asking the broker again.
  if (Status s = db_->Settle(settle); !s.ok()) {
    for (auto& r : rows) pending_.emplace(r.id, r);  // unknown outcome: publish again
    return s;
  }
  Status moved = ApplySettled(rows);
  if (!moved.ok()) unmoved_.insert(unmoved_.end(), rows.begin(), rows.end());
  return moved;
}

// ---- inbox -------------------------------------------------------------

Status Agent::FlushMessages(std::vector<Event*>& group, std::vector<const Event*>* acks) {
  if (group.empty()) return Status::Ok();
  std::vector<StateDb::InboxKey> fresh;
  std::set<std::pair<std::string, std::string>> seen;
  int64_t duplicates = 0;
  std::vector<const Event*> group_acks;
  for (Event* e : group) {
    const v1::Envelope& env = e->delivery.message->envelope();
    const std::string& sender = env.sender();
    const std::string& id = env.message_id();
    if (!proto::IsFileSafeKey(sender, id)) {
      spdlog::error(
          "inbox: a delivery from the broker names sender '{}' and message id '{}', which cannot be a "
          "file name; not acknowledged",
          Printable(sender, 64), Printable(id, 64));
      continue;
    }
    StateDb::InboxKey key{sender, id, sender + "_" + id + ".json"};
    auto state = db_->Inbox(sender, id);
    if (!state.ok()) return state.status();
    if (*state == StateDb::InboxState::kDone || !seen.insert({sender, id}).second) {
      spdlog::info("inbox: {} from {} is already in the inbox (delivery attempt {}): dropped", id, sender,
                   e->delivery.attempt);
      ++duplicates;
      group_acks.push_back(e);
      continue;
    }
    if (*state == StateDb::InboxState::kNone) {
      auto json = proto::ToJson(*e->delivery.message, true);
      if (!json.ok()) return json.status();
      // "Finish the file being written": this write is never interrupted
      // by a shutdown request, only by a crash (then it is repeated).
      if (Status s = WriteFileAtomic(staging_ + "/" + key.name, *json + "\n", 0640); !s.ok()) return s;
    }
    fresh.push_back(std::move(key));
    group_acks.push_back(e);
  }
  if (!fresh.empty()) {
    // Recorded as staged before the rename: after a crash the staging
    // directory says whether the rename happened (the file is gone from it),
    // so the inbox never gets a message twice, even if the agency has
    // already taken the first copy away.
    if (Status s = db_->Stage(fresh); !s.ok()) return s;
    for (const auto& k : fresh) {
      if (FileExists(staging_ + "/" + k.name)) {
        if (Status s = RenameFile(staging_ + "/" + k.name, config_.inbox + "/" + k.name); !s.ok()) return s;
      }
    }
    if (Status s = SyncDirectory(config_.inbox); !s.ok()) return s;
    if (Status s = SyncDirectory(staging_); !s.ok()) return s;
    if (Status s = db_->FinishInbox(fresh, hooks_ != nullptr, config_.inbox, NowMs()); !s.ok()) return s;
    for (const auto& k : fresh) spdlog::info("inbox: {} from {} -> {}", k.message_id, k.sender, k.name);
    if (hooks_) hooks_->Notify();
  }
  acks->insert(acks->end(), group_acks.begin(), group_acks.end());
  group.clear();
  std::lock_guard lock(mu_);
  stats_.received += static_cast<int64_t>(fresh.size());
  stats_.duplicates += duplicates;
  return Status::Ok();
}

Status Agent::HandleRecall(const client::RecallNotice& n) {
  if (!proto::IsFileSafeKey(n.sender, n.message_id)) {
    return Status::ProtocolError("a recall notice names sender '" + Printable(n.sender, 64) + "' and message id '" +
                                 Printable(n.message_id, 64) + "'");
  }
  const std::string base = n.sender + "_" + n.message_id;
  const std::string line = "{\"recall\":" + RecallJson(n) + "}\n";
  // The notice first: a crash before the move leaves the message in the
  // inbox and the notice unacknowledged; it comes again and the move follows.
  if (Status s = WriteFileAtomic(config_.recalled + "/" + base + ".recall.json", line, 0640); !s.ok()) return s;
  const std::string from = config_.inbox + "/" + base + ".json";
  const bool present = FileExists(from);
  if (present) {
    if (Status s = RenameFile(from, config_.recalled + "/" + base + ".json"); !s.ok()) return s;
    if (Status s = SyncDirectory(config_.inbox); !s.ok()) return s;
    if (Status s = SyncDirectory(config_.recalled); !s.ok()) return s;
  }
  spdlog::warn("inbox: {} recalled {} ({}): {}", n.sender, n.message_id, n.reason,
               present ? "moved to recalled/" : "no longer in the inbox; the notice is in recalled/");
  std::lock_guard lock(mu_);
  ++stats_.recalls;
  return Status::Ok();
}

Status Agent::HandleReport(const client::DeliveryReport& r) {
  // Both become part of a file name: a canonical UUID and an agency id have
  // a known, short length and no special characters.
  if (!proto::IsFileSafeKey(r.recipient, r.message_id)) {
    return Status::ProtocolError("a delivery report names message id '" + Printable(r.message_id, 64) +
                                 "' and recipient '" + Printable(r.recipient, 64) + "'");
  }
  auto where = db_->FindSent(r.message_id);
  if (!where.ok()) return where.status();
  std::string dir = config_.sent, base = r.message_id;
  if (where->has_value()) {
    dir = (*where)->first == "failed" ? config_.failed : config_.sent;
    // Recorded before names were kept short: beside it would not fit.
    if ((*where)->second.size() <= kMaxKeptName) base = (*where)->second;
  }
  const std::string path = dir + "/" + base + ".report." + r.recipient + ".json";
  const std::string line = "{\"report\":" + ReportJson(r) + "}\n";
  if (Status s = WriteFileAtomic(path, line, 0640); !s.ok()) return s;
  spdlog::info("report: {} -> {}: {}{}", r.message_id, r.recipient, r.outcome,
               r.reason.empty() ? "" : " (" + r.reason + ")");
  std::lock_guard lock(mu_);
  ++stats_.reports;
  return Status::Ok();
}

// A recall notice or delivery report whose sender, recipient or message id
// cannot be part of a file name (HandleRecall, HandleReport). The real
// broker never sends one (it sends only agency ids and the UUIDs it
// validated at publish), so the broker is broken or hostile; still the
// agent must go on. Left unacknowledged, the notice would hold one unit of
// the session's credit until the next connection, and then come again,
// every time: a few of them and nothing else gets through. Reconnecting
// brings it back too, and stopping would hand any broker a way to stop
// the agency's daemon. So it is kept whole, under a name of the agent's
// own, in state_dir/quarantine/ for a person to read, logged as an error,
// and acknowledged. Filing it was not possible anyway: no message in the
// inbox can have the names of a notice that fails the check, and a
// report's file name would hold its recipient. (A message whose names fail
// the check is not acknowledged: "delivered" would tell its sender that it
// reached the agency.)
Status Agent::Quarantine(const client::Delivery& d, const std::string& why) {
  const bool recall = d.kind == client::Delivery::Kind::kRecallNotice;
  const std::string path =
      config_.state_dir + "/" + kQuarantineName + "/" + NewUuid() + (recall ? ".recall.json" : ".report.json");
  const std::string line =
      std::string("{") + (recall ? "\"recall\":" + RecallJson(d.recall) : "\"report\":" + ReportJson(d.report)) +
      ",\"deliveryId\":" + std::to_string(d.delivery_id) + ",\"attempt\":" + std::to_string(d.attempt) +
      ",\"error\":" + JsonString(why) + ",\"quarantinedAtMs\":" + std::to_string(NowMs()) + "}\n";
  if (Status s = WriteFileAtomic(path, line, 0600); !s.ok()) return s;
  spdlog::error("inbox: {}, which cannot be a file name: kept as {} and acknowledged", why, path);
  std::lock_guard lock(mu_);
  ++stats_.quarantined;
  return Status::Ok();
}

Status Agent::HandleEvents(std::deque<Event>& events) {
  std::vector<Event*> results, group;
  std::vector<const Event*> acks;
  bool closed = false;
  std::string closed_why;
  bool closed_error = false;
  // Answers to publishes first: they arrived before any report about the
  // same message, so the ack file is written before the report beside it.
  for (Event& e : events) {
    if (e.kind == Event::Kind::kPublished) results.push_back(&e);
  }
  Status status = HandleResults(results);
  for (Event& e : events) {
    if (!status.ok()) break;
    if (e.kind == Event::Kind::kPublished) continue;
    if (e.kind == Event::Kind::kClosed) {
      if (e.generation != generation_ || !client_) continue;
      closed = true;
      const std::string& m = e.why.message();
      const bool taken_over = m.find("taken_over") != std::string::npos;
      // Errors, not passing losses: another session took over (a second
      // agent?), or the broker broke the protocol (e.g. sent beyond the
      // credit).
      closed_error = taken_over || e.why.IsProtocolError();
      closed_why = taken_over ? "another session of this agency took over receiving (is a second liaison-agent "
                                "running for this agency?): " +
                                    m
                              : "connection to the broker lost: " + (e.why.ok() ? std::string("closed") : m);
      continue;
    }
    last_activity_ = Clock::now();
    if (e.delivery.kind == client::Delivery::Kind::kMessage) {
      group.push_back(&e);
      continue;
    }
    // Notices in their place in the stream: messages before them first.
    if (status = FlushMessages(group, &acks); !status.ok()) break;
    status = e.delivery.kind == client::Delivery::Kind::kRecallNotice ? HandleRecall(e.delivery.recall)
                                                                      : HandleReport(e.delivery.report);
    if (status.IsProtocolError()) status = Quarantine(e.delivery, status.message());
    if (!status.ok()) break;
    acks.push_back(&e);
  }
  if (status.ok()) status = FlushMessages(group, &acks);
  // Acknowledged only now, after everything above is durable; deliveries
  // of an earlier connection are not acknowledged (their ids belong to it):
  // the broker delivers them again and they are recognised as duplicates.
  if (client_) {
    for (const Event* e : acks) {
      if (e->generation == generation_) client_->Acknowledge(e->delivery);
    }
  }
  if (closed) Disconnect(closed_why, closed_error);
  return status;
}

// ---- the loop ----------------------------------------------------------

Status Agent::Run(const RunOptions& options) {
  if (hooks_) hooks_->Start();
  const auto start = Clock::now();
  const auto deadline = start + options.timeout;
  next_connect_ = start;
  auto next_scan = start;
  Status result;
  bool idle_scan = false;  // the last scan found nothing new
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (stop_) break;
    }
    auto now = Clock::now();
    if (!client_ && now >= next_connect_) TryConnect(now);
    now = Clock::now();
    if (now >= next_scan) {
      const size_t before = pending_.size();
      bool more = false;
      if (Status s = ScanOutbox(&more); !s.ok()) {
        spdlog::error("outbox: {}", s.message());
        if (options.once) {
          result = s;
          break;
        }
      }
      idle_scan = pending_.size() == before && !more;
      next_scan = now + config_.poll_interval;
      if (!unmoved_.empty()) {
        std::vector<OutboxRow> rows = std::move(unmoved_);
        unmoved_.clear();
        if (Status s = ApplySettled(rows); !s.ok()) {
          spdlog::error("outbox: {}", s.message());
          unmoved_ = std::move(rows);
        }
      }
    }
    if (client_) PublishPending(now);

    std::deque<Event> events;
    {
      std::lock_guard lock(mu_);
      events.swap(events_);
    }
    if (!events.empty()) {
      if (Status s = HandleEvents(events); !s.ok()) {
        spdlog::error("local failure: {}", s.message());
        if (options.once) {
          result = s;
          break;
        }
        // Nothing unsafe was acknowledged; start over on a new connection
        // (after the backoff), by which time the disk may have room again.
        Disconnect("stopped receiving after a local failure", true);
      }
    }
    if (client_ && alarm_.ok()) {
      if (Status w = client_->witness_status(); !w.ok()) {
        alarm_ = w;
        spdlog::critical("{}", w.message());
      }
    }
    now = Clock::now();
    if (options.once) {
      const bool done = client_ && ever_connected_ && pending_.empty() && in_flight_.empty() && unmoved_.empty() &&
                        idle_scan && now - last_activity_ >= options.idle && (!hooks_ || hooks_->Idle());
      if (done) break;
      if (now >= deadline) {
        result = Status::Unavailable(ever_connected_ ? "not finished within the time allowed"
                                                     : "the broker could not be reached within the time allowed");
        break;
      }
    }
    auto wake = std::min(next_scan, now + Millis(200));
    if (!client_) wake = std::min(wake, next_connect_);
    std::unique_lock lock(mu_);
    cv_.wait_until(lock, wake, [&] { return stop_ || !events_.empty(); });
  }
  if (client_) {
    client_->Close();
    client_.reset();
  }
  if (hooks_) hooks_->Stop();
  // What arrived after the last round: answers to publishes are kept (a
  // settled outcome need not be asked again); deliveries are not
  // acknowledged any more and come again next time.
  {
    std::deque<Event> events;
    {
      std::lock_guard lock(mu_);
      events.swap(events_);
    }
    std::vector<Event*> results;
    for (Event& e : events) {
      if (e.kind == Event::Kind::kPublished) results.push_back(&e);
    }
    if (Status s = HandleResults(results); !s.ok() && result.ok()) result = s;
  }
  std::lock_guard lock(mu_);
  stats_.pending = static_cast<int64_t>(pending_.size());
  if (result.ok() && !alarm_.ok()) result = alarm_;
  return result;
}

}  // namespace liaison::agent
