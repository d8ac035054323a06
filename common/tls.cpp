#include "common/detail/tls.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cstdio>
#include <string>
#include <vector>

#include "common/files.h"

namespace liaison::tls {
namespace {

constexpr const char* kCipherSuites = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";

std::string Hex(const unsigned char* p, size_t n) {
  static const char* kHex = "0123456789abcdef";
  std::string s;
  s.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    s.push_back(kHex[p[i] >> 4]);
    s.push_back(kHex[p[i] & 0xF]);
  }
  return s;
}

// What print writes into a memory BIO.
template <typename Print>
std::string Printed(Print print) {
  BIO* bio = BIO_new(BIO_s_mem());
  print(bio);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  std::string s(data, static_cast<size_t>(len));
  BIO_free(bio);
  return s;
}

std::string NameToString(const X509_NAME* name) {
  return Printed([&](BIO* bio) { X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253); });
}

// Rejects, during the handshake, a client leaf certificate without an
// explicit clientAuth extended key usage: OpenSSL's purpose check alone
// accepts certificates that have no EKU extension at all.
int VerifyClientCallback(int preverify_ok, X509_STORE_CTX* ctx) {
  if (!preverify_ok) return 0;
  if (X509_STORE_CTX_get_error_depth(ctx) != 0) return 1;
  X509* cert = X509_STORE_CTX_get_current_cert(ctx);
  if ((X509_get_extension_flags(cert) & EXFLAG_XKUSAGE) == 0 ||
      (X509_get_extended_key_usage(cert) & XKU_SSL_CLIENT) == 0) {
    X509_STORE_CTX_set_error(ctx, X509_V_ERR_INVALID_PURPOSE);
    return 0;
  }
  return 1;
}

// OpenSSL opens the files it loads itself: one that is not a regular file
// (a FIFO put in a CRL's place, say) would block the reload that loads it
// for ever, and every reload after it. Checked by name first (a file that
// cannot be found is left to OpenSSL, whose error says so).
Status RegularFile(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    return Status::InvalidArgument(what + " " + path + " is not a regular file");
  }
  return Status::Ok();
}

Status CommonSetup(SSL_CTX* ctx, const TlsFiles& files, const char* side) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  if (SSL_CTX_set_ciphersuites(ctx, kCipherSuites) != 1) return Status::Internal("cannot set TLS 1.3 suites");
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_max_early_data(ctx, 0);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  // Key exchange only over fast, strong groups: an unauthenticated peer must
  // not be able to make the broker compute an ffdhe8192 exchange.
  if (SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384") != 1) return Status::Internal("cannot set TLS groups");

  if (files.certificate.empty()) return Status::InvalidArgument(std::string(side) + " certificate file not set");
  if (files.private_key.empty()) return Status::InvalidArgument(std::string(side) + " private key file not set");
  if (files.ca_bundle.empty()) return Status::InvalidArgument("CA bundle file not set");
  if (Status s = RegularFile(files.certificate, "certificate"); !s.ok()) return s;
  if (Status s = RegularFile(files.ca_bundle, "CA bundle"); !s.ok()) return s;
  ERR_clear_error();
  if (SSL_CTX_use_certificate_chain_file(ctx, files.certificate.c_str()) != 1) {
    return Status::InvalidArgument("cannot load certificate " + files.certificate + ": " + OpenSslErrors());
  }
  if (Status s = CheckPrivateKeyFile(files.private_key); !s.ok()) return Status::InvalidArgument(s.message());
  if (SSL_CTX_use_PrivateKey_file(ctx, files.private_key.c_str(), SSL_FILETYPE_PEM) != 1) {
    return Status::InvalidArgument("cannot load private key " + files.private_key + ": " + OpenSslErrors());
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return Status::InvalidArgument("private key " + files.private_key + " does not match certificate " +
                                   files.certificate);
  }
  if (SSL_CTX_load_verify_locations(ctx, files.ca_bundle.c_str(), nullptr) != 1) {
    return Status::InvalidArgument("cannot load CA bundle " + files.ca_bundle + ": " + OpenSslErrors());
  }
  // OpenSSL works out a certificate's extensions (key identifiers, usages)
  // the first time a verification needs them and keeps them in the
  // certificate. Two handshakes verifying against the same CA at once then
  // race: one writes its key identifier while the other compares it (seen
  // by ThreadSanitizer in a reconnect storm). Worked out here, once, before
  // any handshake.
  STACK_OF(X509_OBJECT)* trusted = X509_STORE_get0_objects(SSL_CTX_get_cert_store(ctx));
  for (int i = 0; i < sk_X509_OBJECT_num(trusted); ++i) {
    if (X509* ca = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(trusted, i))) X509_check_purpose(ca, -1, 0);
  }
  return Status::Ok();
}

// The CRLs of files into store, and CRL checking of the peer's certificate
// (the leaf; its issuer's CRL must be among them).
Status LoadCrls(X509_STORE* store, const TlsFiles& files) {
  for (const auto& path : files.crls) {
    if (Status s = RegularFile(path, "CRL"); !s.ok()) return s;
    FILE* f = std::fopen(path.c_str(), "r");
    if (!f) return Status::InvalidArgument("cannot open CRL " + path);
    int loaded = 0;
    while (X509_CRL* crl = PEM_read_X509_CRL(f, nullptr, nullptr, nullptr)) {
      X509_STORE_add_crl(store, crl);
      X509_CRL_free(crl);
      ++loaded;
    }
    std::fclose(f);
    ERR_clear_error();  // the loop ends on a "no start line" error
    if (loaded == 0) return Status::InvalidArgument("no PEM CRL found in " + path);
  }
  if (!files.crls.empty()) X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
  return Status::Ok();
}

}  // namespace

std::string OpenSslErrors() {
  std::string out;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

Result<std::shared_ptr<Context>> MakeServerContext(const TlsFiles& files) {
  auto ctx = std::make_shared<Context>(Context::tls_server);
  SSL_CTX* c = ctx->native_handle();
  if (Status s = CommonSetup(c, files, "broker"); !s.ok()) return s;
  // A certificate is required; no client CA list is sent (agencies know
  // which certificate to present, and the list would reveal the CAs).
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, VerifyClientCallback);
  SSL_CTX_set_verify_depth(c, 8);
  X509_STORE* store = SSL_CTX_get_cert_store(c);
  X509_STORE_set_purpose(store, X509_PURPOSE_SSL_CLIENT);
  if (Status st = LoadCrls(store, files); !st.ok()) return st;
  // Session ids would allow resumption; keep them off entirely.
  SSL_CTX_set_session_id_context(c, reinterpret_cast<const unsigned char*>("liaison"), 7);
  return ctx;
}

Result<std::shared_ptr<Context>> MakeClientContext(const TlsFiles& files) {
  auto ctx = std::make_shared<Context>(Context::tls_client);
  SSL_CTX* c = ctx->native_handle();
  if (Status s = CommonSetup(c, files, "client"); !s.ok()) return s;
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
  X509_STORE* store = SSL_CTX_get_cert_store(c);
  X509_STORE_set_purpose(store, X509_PURPOSE_SSL_SERVER);
  if (Status st = LoadCrls(store, files); !st.ok()) return st;  // a revoked broker certificate is refused
  return ctx;
}

Status VerifyClientCertificate(Context& ctx, X509* cert, STACK_OF_X509* chain) {
  if (!cert) return Status::PermissionDenied("no certificate");
  X509_STORE_CTX* sctx = X509_STORE_CTX_new();
  if (!sctx) return Status::Internal("out of memory");
  Status result;
  if (X509_STORE_CTX_init(sctx, SSL_CTX_get_cert_store(ctx.native_handle()), cert,
                          reinterpret_cast<STACK_OF(X509)*>(chain)) != 1) {
    result = Status::Internal("cannot verify: " + OpenSslErrors());
  } else {
    X509_STORE_CTX_set_purpose(sctx, X509_PURPOSE_SSL_CLIENT);
    if (X509_verify_cert(sctx) != 1) {
      result = Status::PermissionDenied(X509_verify_cert_error_string(X509_STORE_CTX_get_error(sctx)));
    } else if ((X509_get_extension_flags(cert) & EXFLAG_XKUSAGE) == 0 ||
               (X509_get_extended_key_usage(cert) & XKU_SSL_CLIENT) == 0) {
      result = Status::PermissionDenied("no clientAuth extended key usage");
    }
  }
  X509_STORE_CTX_free(sctx);
  ERR_clear_error();
  return result;
}

namespace {

std::string TimeString(const ASN1_TIME* t) {
  return Printed([&](BIO* bio) { ASN1_TIME_print(bio, t); });
}

// The problem with crl under the CAs of the bundle; empty if none.
std::string CrlProblem(X509_CRL* crl, const std::vector<X509*>& cas) {
  const X509_NAME* issuer = X509_CRL_get_issuer(crl);
  bool named = false, signed_by_ca = false;
  for (X509* ca : cas) {
    if (X509_NAME_cmp(X509_get_subject_name(ca), issuer) != 0) continue;
    named = true;
    EVP_PKEY* key = X509_get0_pubkey(ca);
    if (key && X509_CRL_verify(crl, key) == 1) {
      signed_by_ca = true;
      break;
    }
  }
  if (!named) return "is issued by '" + NameToString(issuer) + "', which is not a CA of the bundle";
  if (!signed_by_ca) return "does not verify with the key of its CA '" + NameToString(issuer) + "'";
  if (const ASN1_TIME* last = X509_CRL_get0_lastUpdate(crl); !last || X509_cmp_current_time(last) >= 0) {
    return "is not valid yet (last update " + (last ? TimeString(last) : std::string("missing")) + ")";
  }
  if (const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl); next && X509_cmp_current_time(next) <= 0) {
    return "has expired (next update " + TimeString(next) + ")";
  }
  return "";
}

}  // namespace

Status CheckCrls(const TlsFiles& files) {
  if (files.crls.empty()) return Status::Ok();
  std::vector<X509*> cas;
  if (FILE* f = std::fopen(files.ca_bundle.c_str(), "r")) {
    while (X509* ca = PEM_read_X509(f, nullptr, nullptr, nullptr)) cas.push_back(ca);
    std::fclose(f);
  }
  std::string problems;
  for (const auto& path : files.crls) {
    FILE* f = std::fopen(path.c_str(), "r");
    if (!f) {
      problems += (problems.empty() ? "" : "; ") + std::string("cannot open CRL ") + path;
      continue;
    }
    int n = 0;
    while (X509_CRL* crl = PEM_read_X509_CRL(f, nullptr, nullptr, nullptr)) {
      ++n;
      if (std::string why = CrlProblem(crl, cas); !why.empty()) {
        problems += (problems.empty() ? "" : "; ") + std::string("CRL ") + path +
                    (n > 1 ? " (number " + std::to_string(n) + " in it)" : "") + " " + why;
      }
      X509_CRL_free(crl);
    }
    std::fclose(f);
  }
  for (X509* ca : cas) X509_free(ca);
  ERR_clear_error();  // the reading loops end on a "no start line" error
  if (problems.empty()) return Status::Ok();
  return Status::InvalidArgument(problems + ": every certificate of its CA would be refused");
}

PeerIdentity IdentityOf(X509* cert) {
  PeerIdentity id;
  if (!cert) return id;
  id.subject = NameToString(X509_get_subject_name(cert));
  id.issuer = NameToString(X509_get_issuer_name(cert));
  auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* gn = sk_GENERAL_NAME_value(sans, i);
      if (gn->type == GEN_URI) {
        const ASN1_IA5STRING* s = gn->d.uniformResourceIdentifier;
        id.san_uris.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                 static_cast<size_t>(ASN1_STRING_length(s)));
      }
    }
    GENERAL_NAMES_free(sans);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert, EVP_sha256(), md, &len) == 1) id.cert_sha256 = Hex(md, len);
  unsigned char* der = nullptr;
  const int der_len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
  if (der_len > 0) {
    EVP_Digest(der, static_cast<size_t>(der_len), md, &len, EVP_sha256(), nullptr);
    id.spki_sha256 = Hex(md, len);
    OPENSSL_free(der);
  }
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert);
  id.serial = Hex(serial->data, static_cast<size_t>(serial->length));
  return id;
}

}  // namespace liaison::tls
