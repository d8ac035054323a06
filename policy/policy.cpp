#include "policy/policy.h"

#include <openssl/evp.h>

#include <set>

#include "common/detail/yaml_util.h"
#include "common/files.h"
#include "proto/validate.h"

namespace liaison::policy {
namespace {

constexpr size_t kMaxPolicyBytes = 16 * 1024 * 1024;
constexpr const char* kSanUriPrefix = "urn:liaison:agency:";

std::string Sha256Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < len; ++i) {
    s.push_back(kHex[md[i] >> 4]);
    s.push_back(kHex[md[i] & 0xF]);
  }
  return s;
}

bool IsHex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

const std::vector<std::string>& KnownSectors() {
  static const std::vector<std::string> kSectors = {
      "law_enforcement", "education",      "social_work",         "health",         "youth_work",
      "civil_society",   "local_government", "national_government", "private_sector"};
  return kSectors;
}

std::string DefaultSanUri(std::string_view agency_id) { return kSanUriPrefix + std::string(agency_id); }

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
  if (auto it = by_subject_.find({peer.subject, peer.issuer}); it != by_subject_.end()) {
    matches.insert(it->second);
  }
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

std::shared_ptr<const Policy> Policy::LoadFile(const std::string& path, Diagnostics* diags) {
  const size_t errors_before = diags->size();
  std::string text;
  auto root = yaml::LoadFile(path, kMaxPolicyBytes, diags, &text);
  if (!root) return nullptr;

  std::shared_ptr<Policy> p(new Policy());
  p->path_ = path;
  p->version_ = Sha256Hex(text);
  yaml::Reader r(path, diags);
  if (!r.ExpectMap(*root, "the policy", {"version", "agencies"})) return nullptr;
  if (auto v = r.Int(*root, "version", 1, 1, true); !v) {
    // reported by Int
  }

  const YAML::Node agencies = (*root)["agencies"];
  if (!agencies.IsDefined() || agencies.IsNull()) {
    r.Error(*root, "missing required key 'agencies'");
  } else if (r.ExpectSequence(agencies, "'agencies'")) {
    for (const auto& a : agencies) {
      if (!r.ExpectMap(a, "an agency", {"id", "name", "sector", "certificate", "roles"})) continue;
      Agency ag;
      ag.line = a.Mark().line + 1;
      auto id = r.String(a, "id", true);
      if (id && !proto::IsValidAgencyId(*id)) {
        r.Error(a["id"], "agency id '" + *id +
                             "' must be 1-63 lower-case letters, digits, '-' or '_', starting with a letter or digit");
        id.reset();
      }
      if (id) {
        if (p->by_id_.count(*id)) {
          r.Error(a["id"], "duplicate agency id '" + *id + "' (first defined on line " +
                               std::to_string(p->agencies_[p->by_id_[*id]].line) + ")");
        }
        ag.id = *id;
      }
      if (auto name = r.String(a, "name", true)) ag.name = *name;
      if (auto sector = r.String(a, "sector", true)) {
        bool known = false;
        for (const auto& s : KnownSectors()) known = known || s == *sector;
        if (!known) {
          std::string list;
          for (const auto& s : KnownSectors()) list += (list.empty() ? "" : ", ") + s;
          r.Error(a["sector"], "unknown sector '" + *sector + "' (expected one of: " + list + ")");
        }
        ag.sector = *sector;
      }
      if (auto roles = r.StringList(a, "roles")) {
        for (const auto& role : *roles) {
          if (role != "auditor") r.Error(a["roles"], "unknown role '" + role + "' (expected: auditor)");
        }
        ag.roles = *roles;
      }
      const YAML::Node cert = a["certificate"];
      ag.certificate.kind = CertificateMatch::Kind::kSanUri;
      ag.certificate.san_uri = DefaultSanUri(ag.id);
      if (cert.IsDefined() && !cert.IsNull() &&
          r.ExpectMap(cert, "'certificate'", {"san_uri", "subject", "issuer", "spki_sha256"})) {
        const bool has_uri = cert["san_uri"].IsDefined(), has_subject = cert["subject"].IsDefined(),
                   has_issuer = cert["issuer"].IsDefined(), has_spki = cert["spki_sha256"].IsDefined();
        if (int(has_uri) + int(has_subject || has_issuer) + int(has_spki) != 1) {
          r.Error(cert, "'certificate' must use exactly one of: san_uri; subject with issuer; spki_sha256");
        } else if (has_uri) {
          if (auto uri = r.String(cert, "san_uri", true)) {
            if (uri->find(':') == std::string::npos) r.Error(cert["san_uri"], "san_uri '" + *uri + "' is not a URI");
            ag.certificate.san_uri = *uri;
          }
        } else if (has_subject || has_issuer) {
          auto subject = r.String(cert, "subject", true);
          auto issuer = r.String(cert, "issuer", true);
          if (subject && issuer) {
            ag.certificate.kind = CertificateMatch::Kind::kSubject;
            ag.certificate.subject = *subject;
            ag.certificate.issuer = *issuer;
            ag.certificate.san_uri.clear();
          }
        } else if (auto pins = r.StringList(cert, "spki_sha256", true)) {
          ag.certificate.kind = CertificateMatch::Kind::kSpki;
          ag.certificate.san_uri.clear();
          for (const auto& pin : *pins) {
            if (!IsHex64(pin)) {
              r.Error(cert["spki_sha256"], "pin '" + pin + "' must be 64 lower-case hex digits (SHA-256)");
            }
          }
          ag.certificate.spki_sha256 = *pins;
        }
      }
      if (ag.id.empty()) continue;
      const size_t index = p->agencies_.size();
      auto claim = [&](auto& map, auto key, const std::string& what) {
        auto [it, fresh] = map.emplace(key, index);
        if (!fresh) {
          r.Error(cert.IsDefined() ? cert : a, what + " is already bound to agency '" +
                                                   p->agencies_[it->second].id + "'");
        }
      };
      switch (ag.certificate.kind) {
        case CertificateMatch::Kind::kSanUri:
          claim(p->by_san_uri_, ag.certificate.san_uri, "SAN URI '" + ag.certificate.san_uri + "'");
          break;
        case CertificateMatch::Kind::kSubject:
          claim(p->by_subject_, std::make_pair(ag.certificate.subject, ag.certificate.issuer),
                "subject '" + ag.certificate.subject + "'");
          break;
        case CertificateMatch::Kind::kSpki:
          for (const auto& pin : ag.certificate.spki_sha256) claim(p->by_spki_, pin, "SPKI pin " + pin);
          break;
      }
      p->by_id_.emplace(ag.id, index);
      p->agencies_.push_back(std::move(ag));
    }
    if (p->agencies_.empty() && diags->size() == errors_before) r.Error(agencies, "'agencies' is empty");
  }
  for (size_t i = errors_before; i < diags->size(); ++i) {
    if ((*diags)[i].severity == Diagnostic::Severity::kError) return nullptr;
  }
  return p;
}

}  // namespace liaison::policy
