// ConsistencyProofRequest: an RFC 6962 consistency proof between two sizes
// of the audit log, so that an agency holding an older checkpoint can check
// that the newer one extends it (agencies are the log's witnesses). Any
// agency may ask: a proof holds node hashes only, no record content. The
// proof is computed on the audit reader's threads from the stored leaf
// hashes (O(n) reads for a log of n records).
#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>

#include "broker/detail/audit_events.h"
#include "broker/detail/broker_state.h"
#include "broker/detail/session.h"

namespace liaison::broker {

void Session::HandleConsistencyProofRequest(const v1::ConsistencyProofRequest& request) {
  const uint64_t rid = request.request_id();
  const uint64_t m = request.old_size(), n = request.new_size();
  const uint64_t size = broker_.store->latest().tree_size;
  if (m == 0 || m > n || n > size) {
    SendError(rid, v1::REASON_INVALID_AUDIT_REQUEST,
              "a consistency proof needs 0 < old_size <= new_size <= " + std::to_string(size) +
                  " (the log's size); got " + std::to_string(m) + " and " + std::to_string(n),
              false);
    return;
  }
  // Counted until the proof is ready.
  auto slot = BeginAuditRequest(rid);
  if (!slot) return;
  auto self = shared_from_this();
  // The proof is computed from the database, which trails the commit log.
  broker_.store->WhenApplied([self, rid, m, n, slot](const Status& applied) {
    if (!applied.ok()) {
      slot->Release();
      boost::asio::post(self->stream_.strand(), [self, rid, applied] {
        self->SendError(rid, v1::REASON_AUDIT_UNAVAILABLE, "the audit log cannot be read now: " + applied.message(),
                        false);
      });
      return;
    }
    self->broker_.audit_reader->ConsistencyProof(
        m, n, [self, rid, m, n, slot](Result<std::vector<merkle::Hash>> proof) {
          v1::Frame f;
          if (!proof.ok()) {
            spdlog::error("{}: consistency proof {} -> {} failed: {}", self->tag_, m, n, proof.status().message());
            auto* e = f.mutable_error();
            e->set_request_id(rid);
            e->set_code(AuditReason(proof.status()));
            e->set_message(proof.status().message());
          } else {
            auto* p = f.mutable_consistency_proof();
            p->set_request_id(rid);
            p->set_old_size(m);
            p->set_new_size(n);
            for (const auto& h : *proof) p->add_path(std::string(reinterpret_cast<const char*>(h.data()), h.size()));
          }
          // The slot is given back before the answer leaves (the callback that
          // holds it may be destroyed only after the agency has asked again).
          slot->Release();
          boost::asio::post(self->stream_.strand(), [self, f = std::move(f)] { self->Send(f); });
        });
  });
}

}  // namespace liaison::broker
