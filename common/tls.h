// TLS material and peer identity, as plain data (no OpenSSL here; the
// contexts are built in common/detail/tls.h).
#pragma once

#include <string>
#include <vector>

namespace liaison {

// Files that make up one side's TLS configuration.
struct TlsFiles {
  std::string certificate;   // PEM, leaf first then intermediates
  std::string private_key;   // PEM; must be mode 0600 or stricter
  std::string ca_bundle;     // PEM CAs that issue the peer's certificates
  std::vector<std::string> crls;  // PEM CRLs (broker side)
};

// What a verified peer certificate says, extracted once after the handshake.
struct PeerIdentity {
  std::vector<std::string> san_uris;  // subjectAltName URIs
  std::string subject;                // RFC 2253 distinguished name
  std::string issuer;                 // RFC 2253 distinguished name
  std::string spki_sha256;            // hex SHA-256 of the DER SubjectPublicKeyInfo
  std::string cert_sha256;            // hex SHA-256 of the DER certificate
  std::string serial;                 // hex
};

}  // namespace liaison
