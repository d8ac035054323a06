// Policy accessors and identity: which agency a certificate identifies.
#include "policy/policy.h"

#include <set>

#include "policy/detail/compiled.h"

namespace liaison::policy {
namespace {
constexpr const char* kSanUriPrefix = "urn:liaison:agency:";
}

const std::vector<std::string>& KnownSectors() {
  static const std::vector<std::string> kSectors = {
      "law_enforcement", "education",        "social_work",         "health",        "youth_work",
      "civil_society",   "local_government", "national_government", "private_sector"};
  return kSectors;
}

std::string DefaultSanUri(std::string_view agency_id) { return kSanUriPrefix + std::string(agency_id); }

bool Agency::is_auditor() const {
  for (const auto& r : roles) {
    if (r == "auditor") return true;
  }
  return false;
}

Policy::Policy() = default;
Policy::~Policy() = default;

const Agency* Policy::FindAgency(std::string_view id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &agencies_[it->second];
}

Result<const Agency*> Policy::Identify(const PeerIdentity& peer) const {
  std::set<size_t> matches;
  for (const auto& uri : peer.san_uris) {
    auto it = by_san_uri_.find(uri);
    if (it != by_san_uri_.end()) matches.insert(it->second);
  }
  if (auto it = by_subject_.find({peer.subject, peer.issuer}); it != by_subject_.end()) matches.insert(it->second);
  if (auto it = by_spki_.find(peer.spki_sha256); it != by_spki_.end()) matches.insert(it->second);
  if (matches.empty()) {
    std::string uris;
    for (const auto& u : peer.san_uris) uris += (uris.empty() ? "" : ", ") + u;
    return Status::PermissionDenied("certificate matches no agency in the policy (subject '" + peer.subject +
                                    "', SAN URIs [" + uris + "])");
  }
  if (matches.size() > 1) {
    std::string ids;
    for (size_t i : matches) ids += (ids.empty() ? "" : ", ") + agencies_[i].id;
    return Status::PermissionDenied("certificate matches several agencies (" + ids + "); refusing to guess");
  }
  return &agencies_[*matches.begin()];
}

Result<std::vector<std::string>> Policy::ExpandRecipient(std::string_view ref) const {
  if (ref.rfind("group:", 0) == 0) {
    auto it = compiled_->groups.find(ref.substr(6));
    if (it == compiled_->groups.end()) return Status::NotFound("no group '" + std::string(ref.substr(6)) + "'");
    std::vector<std::string> out;
    for (size_t i = 0; i < agencies_.size(); ++i) {
      if (TestBit(it->second, i)) out.push_back(agencies_[i].id);
    }
    return out;
  }
  if (!FindAgency(ref)) return Status::NotFound("no agency '" + std::string(ref) + "'");
  return std::vector<std::string>{std::string(ref)};
}

bool Policy::MayAudit(std::string_view auditor, std::string_view agency) const {
  auto a = by_id_.find(auditor), b = by_id_.find(agency);
  if (a == by_id_.end() || b == by_id_.end()) return false;
  const Bits& scope = compiled_->audit_scope[a->second];
  return !scope.empty() && TestBit(scope, b->second);
}

}  // namespace liaison::policy
