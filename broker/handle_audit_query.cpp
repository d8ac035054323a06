// AuditQuery: an auditor's query or export page. Only agencies with the
// auditor role may ask, and they see only the records of agencies in their
// audit_scope (Policy::MayAudit; records that name no agency are visible to
// every auditor). Every AuditQuery, refused or not, is itself recorded
// (event audit_query) and the answer goes out only after that record is
// durable. The query runs on the audit reader's own connections and
// threads, never on the session strand and never through the store's
// writer.
#include <boost/asio/post.hpp>
#include <spdlog/spdlog.h>

#include "broker/detail/broker_state.h"
#include "broker/detail/session.h"
#include "broker/detail/audit_events.h"
#include "proto/names.h"

namespace liaison::broker {
namespace {

// Room for the frame, the result's fields and one row's tags; rows are cut
// off before the frame would exceed the session's maximum.
constexpr size_t kResultOverhead = 4096;
constexpr size_t kMaxFilterBytes = 128;

// A filter string: bounded, no control characters (it goes into a record).
Status CheckText(const char* name, const std::string& value) {
  if (value.size() > kMaxFilterBytes) {
    return Status::InvalidArgument(std::string(name) + " is longer than " + std::to_string(kMaxFilterBytes) + " bytes");
  }
  for (unsigned char c : value) {
    if (c < 0x20 || c == 0x7f) return Status::InvalidArgument(std::string(name) + " contains control characters");
  }
  return Status::Ok();
}

Status Validate(const v1::AuditQuery& q, uint64_t tree_size) {
  if (q.page_size() > AuditReader::kMaxPageSize) {
    return Status::InvalidArgument("page_size " + std::to_string(q.page_size()) + " is above the maximum of " +
                                   std::to_string(AuditReader::kMaxPageSize));
  }
  if (q.from_ms() < 0 || q.to_ms() < 0) return Status::InvalidArgument("from_ms and to_ms must not be negative");
  if (q.from_ms() > 0 && q.to_ms() > 0 && q.to_ms() <= q.from_ms()) {
    return Status::InvalidArgument("to_ms must be after from_ms");
  }
  for (auto [name, value] : {std::pair<const char*, const std::string*>{"agency", &q.agency()},
                             {"case_id", &q.case_id()},
                             {"message_id", &q.message_id()},
                             {"event", &q.event()},
                             {"decision", &q.decision()}}) {
    if (Status s = CheckText(name, *value); !s.ok()) return s;
  }
  if (q.export_mode()) {
    if (q.from_ms() || q.to_ms() || !q.agency().empty() || !q.case_id().empty() || !q.message_id().empty() ||
        !q.event().empty() || !q.decision().empty()) {
      return Status::InvalidArgument("an export takes no filters (it carries the whole log)");
    }
    if (q.until_tree_size() > tree_size) {
      return Status::InvalidArgument("until_tree_size " + std::to_string(q.until_tree_size()) +
                                     " is beyond the log's " + std::to_string(tree_size) + " records");
    }
    if (q.until_tree_size() > 0 && q.page_token() > q.until_tree_size()) {
      return Status::InvalidArgument("page_token is beyond until_tree_size");
    }
  } else if (q.until_tree_size() != 0) {
    return Status::InvalidArgument("until_tree_size is for exports only");
  }
  return Status::Ok();
}

// What the auditor asked, for the audit_query record's detail.
std::string Describe(const v1::AuditQuery& q, uint32_t limit, uint64_t until) {
  std::string d = q.export_mode() ? "export" : "query";
  auto add = [&](const char* k, const std::string& v) {
    if (!v.empty()) d += std::string(" ") + k + "=" + Printable(v, kMaxFilterBytes);
  };
  if (q.from_ms()) add("from_ms", std::to_string(q.from_ms()));
  if (q.to_ms()) add("to_ms", std::to_string(q.to_ms()));
  add("agency", q.agency());
  add("case_id", q.case_id());
  add("message_id", q.message_id());
  add("event", q.event());
  add("decision", q.decision());
  add("page_size", std::to_string(limit));
  add("page_token", std::to_string(q.page_token()));
  if (q.export_mode()) add("until_tree_size", std::to_string(until));
  return d;
}

void RowToProto(const AuditRow& row, v1::AuditRow* out) {
  const audit::Record& r = row.record;
  out->set_seq(r.seq);
  out->set_leaf_hash(std::string(reinterpret_cast<const char*>(row.leaf_hash.data()), row.leaf_hash.size()));
  if (row.hash_only) {
    out->set_hash_only(true);
    return;
  }
  out->set_leaf(row.leaf);
  out->set_time_ms(r.time_ms);
  out->set_event(r.event);
  out->set_actor(r.actor);
  out->set_cert_sha256(r.cert_sha256);
  out->set_message_id(r.message_id);
  out->set_case_id(r.case_id);
  out->set_sender(r.sender);
  out->set_recipient(r.recipient);
  out->set_message_type(r.message_type);
  out->set_tlp(r.tlp);
  out->set_purpose(r.purpose);
  out->set_decision(r.decision);
  out->set_rules(r.rules);
  out->set_policy_version(r.policy_version);
  out->set_obligations(r.obligations);
  out->set_body_hmac(r.body_hmac);
  out->set_detail(r.detail);
}

}  // namespace

std::shared_ptr<Admission::AuditSlot> Session::BeginAuditRequest(uint64_t rid) {
  auto slot = broker_.admission.BeginAuditRequest(agency_);
  if (!slot) {
    SendError(rid, v1::REASON_AUDIT_BUSY,
              "agency '" + agency_ + "' already has " + std::to_string(broker_.config.limits.max_audit_requests_per_agency) +
                  " audit requests in progress; send another when one has been answered",
              false);
  }
  return slot;
}

void Session::HandleAuditQuery(const v1::AuditQuery& query) {
  const uint64_t rid = query.request_id();
  const auto policy = broker_.policy();
  const policy::Agency* self_agency = policy->FindAgency(agency_);
  const audit::Checkpoint latest = broker_.store->latest();
  const uint32_t limit = query.page_size() == 0 ? 100 : query.page_size();
  const uint64_t until = query.export_mode() && query.until_tree_size() == 0 ? latest.tree_size : query.until_tree_size();

  v1::Reason refusal = v1::REASON_UNSPECIFIED;
  std::string why;
  if (self_agency == nullptr || !self_agency->is_auditor()) {
    refusal = v1::REASON_NOT_AUDITOR;
    why = "agency '" + agency_ + "' does not have the auditor role in the network's policy";
  } else if (Status s = Validate(query, latest.tree_size); !s.ok()) {
    refusal = v1::REASON_INVALID_AUDIT_REQUEST;
    why = s.message();
  }

  audit::Record r = MakeRecord("audit_query");
  r.actor = agency_;
  r.cert_sha256 = identity_.cert_sha256;
  r.policy_version = policy->version();
  r.decision = refusal == v1::REASON_UNSPECIFIED ? "permit" : "refused:" + proto::ReasonName(refusal);
  r.detail = Describe(query, limit, until);
  if (refusal == v1::REASON_UNSPECIFIED) {
    // Who looked at which case or message is itself findable by them.
    r.case_id = query.case_id();
    r.message_id = query.message_id();
  }
  if (refusal == v1::REASON_NOT_AUDITOR) {
    spdlog::warn("{}: audit query refused: not an auditor", tag_);
  }

  AuditPageRequest request;
  request.filter = {query.from_ms(),    query.to_ms(), query.agency(), query.case_id(),
                    query.message_id(), query.event(), query.decision()};
  if (refusal == v1::REASON_UNSPECIFIED) {
    for (const auto& a : policy->agencies()) {
      if (policy->MayAudit(agency_, a.id)) request.scope.push_back(a.id);
    }
  }
  request.limit = limit;
  request.after_seq = query.page_token();
  request.export_mode = query.export_mode();
  request.until_seq = until;
  const size_t max_bytes = broker_.config.limits.max_frame_bytes > kResultOverhead
                               ? broker_.config.limits.max_frame_bytes - kResultOverhead
                               : broker_.config.limits.max_frame_bytes / 2;

  // Counted until its answer is ready (fail, which every callback below
  // holds, holds the token).
  auto slot = BeginAuditRequest(rid);
  if (!slot) return;
  auto self = shared_from_this();
  auto fail = [self, rid, slot](v1::Reason code, std::string message) {
    slot->Release();  // answered: the agency may ask again once it has the answer
    boost::asio::post(self->stream_.strand(), [self, rid, code, message = std::move(message)] {
      self->SendError(rid, code, message, false);
    });
  };
  broker_.store->Append({std::move(r)}, [self, fail, slot, rid, refusal, why, request = std::move(request), latest,
                                         max_bytes](const Status& s, const audit::Checkpoint&) mutable {
    // The writer's thread: hand on at once.
    if (refusal != v1::REASON_UNSPECIFIED) return fail(refusal, why);
    if (!s.ok()) {
      return fail(v1::REASON_AUDIT_UNAVAILABLE,
                  "the query could not be recorded in the audit log, so it was not run: " + s.message());
    }
    // The reader reads the database, which trails the commit log.
    self->broker_.store->WhenApplied(
        [self, fail, slot, rid, request = std::move(request), latest, max_bytes](const Status& applied) mutable {
          if (!applied.ok()) {
            return fail(v1::REASON_AUDIT_UNAVAILABLE, "the audit log cannot be read now: " + applied.message());
          }
          self->broker_.audit_reader->QueryPage(
              std::move(request), [self, fail, slot, rid, latest, max_bytes](Result<AuditPage> page) {
                if (!page.ok()) {
                  spdlog::error("{}: audit query failed: {}", self->tag_, page.status().message());
                  return fail(AuditReason(page.status()), page.status().message());
                }
                v1::Frame f;
                auto* res = f.mutable_audit_query_result();
                res->set_request_id(rid);
                size_t bytes = 0;
                uint64_t last = 0;
                bool cut = false;
                for (const auto& row : page->rows) {
                  v1::AuditRow out;
                  RowToProto(row, &out);
                  bytes += out.ByteSizeLong() + 8;
                  if (bytes > max_bytes && last != 0) {
                    cut = true;
                    break;
                  }
                  *res->add_rows() = std::move(out);
                  last = row.record.seq;
                }
                for (const auto& text : page->stored_checkpoints) {
                  auto parsed = audit::ParseCheckpoint(text);
                  if (parsed.ok() && parsed->tree_size <= last) res->add_stored_checkpoints(text);
                }
                res->set_next_page_token(cut || page->more ? last : 0);
                // Taken before the rows were read, so it never covers more
                // than the log held. On an export's first page its size is
                // the export's end (until_tree_size).
                ToProto(latest, res->mutable_checkpoint());
                slot->Release();
                boost::asio::post(self->stream_.strand(), [self, f = std::move(f)] { self->Send(f); });
              });
        });
  });
}

}  // namespace liaison::broker
