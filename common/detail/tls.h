// Building OpenSSL contexts for the broker and clients (internal: includes
// Asio.SSL). The settings are the security contract of DESIGN.md: TLS 1.3
// only, AEAD suites, no tickets, no resumption, no 0-RTT, peer certificate
// required and verified, clientAuth usage for clients. Contexts are built
// once and then shared read-only by all connections (OpenSSL allows that).
#pragma once

#include <boost/asio/ssl/context.hpp>

#include <memory>
#include <string>

#include "common/status.h"
#include "common/tls.h"

typedef struct x509_st X509;
typedef struct stack_st_X509 STACK_OF_X509;

namespace liaison::tls {

using Context = boost::asio::ssl::context;

// Server side: requires a client certificate issued by ca_bundle, checked
// against the CRLs, carrying the clientAuth extended key usage.
Result<std::shared_ptr<Context>> MakeServerContext(const TlsFiles& files);

// Client side: presents files.certificate, verifies the broker against
// files.ca_bundle (the caller adds host-name verification per connection).
Result<std::shared_ptr<Context>> MakeClientContext(const TlsFiles& files);

PeerIdentity IdentityOf(X509* cert);

// Verifies an already-accepted client certificate (and the chain it sent)
// against a server context's trust store, CRLs and usage rules: what a
// reload uses to find sessions whose certificate is now revoked or no
// longer trusted.
Status VerifyClientCertificate(Context& ctx, X509* cert, STACK_OF_X509* chain);

// Checks files.crls as a verification will use them: each CRL issued and
// signed by a CA of files.ca_bundle, and current (its last update passed,
// its next update not). A CRL that fails this makes OpenSSL refuse every
// certificate of its CA ("CRL has expired", "unable to get certificate
// CRL"), so a reload refuses it rather than close every session
// (docs/broker.md, Signals). Reads the files again; every problem, with its
// file, in one Status.
Status CheckCrls(const TlsFiles& files);

// Drains OpenSSL's thread-local error queue into one line.
std::string OpenSslErrors();

}  // namespace liaison::tls
