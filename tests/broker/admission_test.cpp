#include "broker/detail/admission.h"

#include <catch2/catch.hpp>

#include <vector>

namespace liaison::broker {
namespace {

TEST_CASE("Admission counts an agency's audit requests until their last token is gone", "[admission]") {
  Limits l;
  l.max_audit_requests_per_agency = 2;
  Admission a(l);
  auto first = a.BeginAuditRequest("auditor");
  auto second = a.BeginAuditRequest("auditor");
  REQUIRE(first);
  REQUIRE(second);
  CHECK_FALSE(a.BeginAuditRequest("auditor"));  // the third waits for an answer
  CHECK(a.BeginAuditRequest("other-auditor"));    // other agencies are not affected

  // Copies (the request's callbacks) keep the request counted.
  std::vector<std::shared_ptr<void>> callbacks{first, first};
  first.reset();
  CHECK_FALSE(a.BeginAuditRequest("auditor"));
  callbacks.clear();
  auto third = a.BeginAuditRequest("auditor");
  CHECK(third);
  CHECK_FALSE(a.BeginAuditRequest("auditor"));
  second.reset();
  third.reset();
  auto again = a.BeginAuditRequest("auditor");
  auto again2 = a.BeginAuditRequest("auditor");
  CHECK(again);
  CHECK(again2);
}

TEST_CASE("Admission: an audit request released when answered is no longer counted, whoever still holds its token",
          "[admission]") {
  Limits l;
  l.max_audit_requests_per_agency = 1;
  Admission a(l);
  auto slot = a.BeginAuditRequest("auditor");
  REQUIRE(slot);
  std::vector<std::shared_ptr<Admission::AuditSlot>> callbacks{slot, slot};
  CHECK_FALSE(a.BeginAuditRequest("auditor"));
  slot->Release();  // the answer is ready; callbacks still hold the token
  auto next = a.BeginAuditRequest("auditor");
  CHECK(next);
  // Releasing again, or the last copy going, does not count it off twice.
  callbacks.front()->Release();
  slot.reset();
  callbacks.clear();
  CHECK_FALSE(a.BeginAuditRequest("auditor"));  // `next` is still in progress
  next.reset();
  CHECK(a.BeginAuditRequest("auditor"));
}

}  // namespace
}  // namespace liaison::broker
