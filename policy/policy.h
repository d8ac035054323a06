// The policy file: the one place where agencies, their certificates and
// their roles are defined (docs/policy.md). This unit parses and validates
// it strictly (every problem reported with file:line:column) into an
// immutable Policy that many threads may read at once; a reload builds a new
// Policy and swaps the pointer, never mutating one in use.
//
// The secure core uses the `agencies` section: who may connect, and who
// exists as a recipient. Rules, groups and agreements come with the policy
// engine.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/diagnostic.h"
#include "common/status.h"
#include "common/tls.h"

namespace liaison::policy {

// How a verified certificate is bound to an agency (DESIGN.md, identity).
// Never by CN alone.
struct CertificateMatch {
  enum class Kind {
    kSanUri,   // a subjectAltName URI, by default urn:liaison:agency:<id>
    kSubject,  // the exact subject DN together with its issuer DN (RFC 2253)
    kSpki,     // SHA-256 pins of the public key; several allowed for rotation
  };
  Kind kind = Kind::kSanUri;
  std::string san_uri;
  std::string subject;
  std::string issuer;
  std::vector<std::string> spki_sha256;  // lower-case hex
};

struct Agency {
  std::string id;
  std::string name;
  std::string sector;
  CertificateMatch certificate;
  std::vector<std::string> roles;
  int line = 0;  // where it is defined, for messages
};

// Sectors an agency may belong to.
const std::vector<std::string>& KnownSectors();
std::string DefaultSanUri(std::string_view agency_id);

class Policy {
 public:
  // Parses and validates a policy file. Returns nothing (and errors in
  // diags) when any error is found; warnings may be added either way.
  static std::shared_ptr<const Policy> LoadFile(const std::string& path, Diagnostics* diags);

  const std::vector<Agency>& agencies() const { return agencies_; }
  const Agency* FindAgency(std::string_view id) const;

  // The agency a verified peer certificate identifies. Errors say why none
  // does (PermissionDenied), including when the certificate matches more than
  // one agency.
  Result<const Agency*> Identify(const PeerIdentity& peer) const;

  // SHA-256 (hex) of the policy file's bytes.
  const std::string& version() const { return version_; }
  const std::string& path() const { return path_; }

 private:
  Policy() = default;
  std::string path_;
  std::string version_;
  std::vector<Agency> agencies_;
  std::map<std::string, size_t, std::less<>> by_id_;
  std::map<std::string, size_t, std::less<>> by_san_uri_;
  std::map<std::pair<std::string, std::string>, size_t> by_subject_;
  std::map<std::string, size_t, std::less<>> by_spki_;
};

}  // namespace liaison::policy
