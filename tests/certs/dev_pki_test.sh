#!/usr/bin/env bash
# dev_pki_test.sh [PARENT_DIR] — test certs/dev-pki.sh with the openssl CLI.
#
# Runs dev-pki.sh into a fresh temporary directory (created with mktemp under
# PARENT_DIR, default $TMPDIR or /tmp, removed on exit) with the agencies
# "police" and "school", then checks every certificate it made: the good ones
# verify, and each test/ certificate fails for exactly its one defect.
# Exits 0 if all checks pass, 1 otherwise (with a FAIL line per failed check).
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PKI_SH=$HERE/../../certs/dev-pki.sh
PARENT=${1:-${TMPDIR:-/tmp}}

[[ -f $PKI_SH ]] || { echo "FAIL - $PKI_SH not found" >&2; exit 1; }
command -v openssl >/dev/null || { echo "FAIL - openssl not found in PATH" >&2; exit 1; }

WORK=$(mktemp -d "$PARENT/dev_pki_test.XXXXXX")
WORK=$(cd "$WORK" && pwd) # absolute: the test cd's into it
trap 'rm -rf "$WORK"' EXIT
OUT=$WORK/pki

FAILURES=0
CHECKS=0
pass() { CHECKS=$((CHECKS + 1)); echo "ok   - $*"; }
fail() { CHECKS=$((CHECKS + 1)); FAILURES=$((FAILURES + 1)); echo "FAIL - $*" >&2; }
fatal() { echo "FAIL - $*" >&2; echo "dev_pki_test: aborted" >&2; exit 1; }

# check DESC CMD...: pass if CMD succeeds.
check() {
    local desc=$1
    shift
    if "$@"; then pass "$desc"; else fail "$desc"; fi
}

# verify_ok DESC [openssl verify options...] CERT
verify_ok() {
    local desc=$1 out
    shift
    if out=$(openssl verify "$@" 2>&1); then
        pass "$desc"
    else
        fail "$desc: openssl verify $*: $(echo "$out" | tr '\n' ' ')"
    fi
}

# verify_fails DESC EXPECTED_ERROR [openssl verify options...] CERT
verify_fails() {
    local desc=$1 want=$2 out
    shift 2
    if out=$(openssl verify "$@" 2>&1); then
        fail "$desc: openssl verify $* unexpectedly succeeded"
    elif [[ $out == *"$want"* ]]; then
        pass "$desc"
    else
        fail "$desc: expected '$want', got: $(echo "$out" | tr '\n' ' ')"
    fi
}

# ext CERT EXTNAME: the extension's value on one line ("" if absent).
ext() {
    openssl x509 -in "$1" -noout -ext "$2" 2>/dev/null | tail -n +2 | tr -s ' \n' ' ' |
        sed 's/^ //; s/ $//'
}

# ext_is DESC CERT EXTNAME EXPECTED: the extension value is exactly EXPECTED.
ext_is() {
    local got
    got=$(ext "$2" "$3")
    if [[ $got == "$4" ]]; then pass "$1"; else fail "$1: $3 is '$got', expected '$4'"; fi
}

# critical DESC CERT EXTNAME: the extension is present and marked critical.
critical() {
    if openssl x509 -in "$2" -noout -ext "$3" 2>/dev/null | head -n 1 | grep -q ': critical$'; then
        pass "$1"
    else
        fail "$1: $3 missing or not critical"
    fi
}

subject() { openssl x509 -in "$1" -noout -subject -nameopt oneline | sed 's/^subject= *//'; }
issuer() { openssl x509 -in "$1" -noout -issuer -nameopt oneline | sed 's/^issuer= *//'; }
fingerprint() { openssl x509 -in "$1" -noout -fingerprint -sha256; }
serial() { openssl x509 -in "$1" -noout -serial | sed 's/^serial=//'; }
epoch() { date -u -d "$1" +%s; }

# key_matches CERT KEY
key_matches() {
    [[ "$(openssl x509 -in "$1" -noout -pubkey)" == "$(openssl pkey -in "$2" -pubout)" ]]
}

# days_valid CERT: notAfter - notBefore, in days
days_valid() {
    local start end
    start=$(openssl x509 -in "$1" -noout -startdate | sed 's/^notBefore=//')
    end=$(openssl x509 -in "$1" -noout -enddate | sed 's/^notAfter=//')
    echo $(((($(epoch "$end") - $(epoch "$start")) + 43200) / 86400))
}

# ---------------------------------------------------------------------------
echo "# usage"

if out=$("$PKI_SH" --help 2>&1) && [[ $out == *Usage:* ]]; then
    pass "--help prints usage and exits 0"
else
    fail "--help: $out"
fi

expect_rc() { # expect_rc DESC RC ARGS...
    local desc=$1 want=$2 rc=0
    shift 2
    "$PKI_SH" "$@" >/dev/null 2>&1 || rc=$?
    if [[ $rc == "$want" ]]; then pass "$desc"; else fail "$desc: exit $rc, expected $want"; fi
}
expect_rc "no arguments exits 2" 2
expect_rc "OUTDIR without NAME exits 2" 2 "$OUT"
expect_rc "upper-case NAME exits 2" 2 "$OUT" Police
expect_rc "NAME with a dot exits 2" 2 "$OUT" police.x
expect_rc "NAME starting with '-' exits 2" 2 "$OUT" police -x
expect_rc "NAME of 64 characters exits 2" 2 "$OUT" "$(printf 'a%.0s' {1..64})"
expect_rc "reserved NAME 'broker' exits 2" 2 "$OUT" broker
expect_rc "unknown option exits 2" 2 --frobnicate
check "bad usage creates nothing" test ! -e "$OUT"

# ---------------------------------------------------------------------------
echo "# first run: police school"

start_ns=$(date +%s%N)
if ! "$PKI_SH" "$OUT" police school >"$WORK/run1.log" 2>&1; then
    cat "$WORK/run1.log" >&2
    fatal "dev-pki.sh $OUT police school failed"
fi
echo "# took $((($(date +%s%N) - start_ns) / 1000000)) ms"
pass "dev-pki.sh exits 0"

cd "$OUT"
T="test"
for f in ca.crt ca.key ca.crl broker.crt broker.key police.crt police.key \
    school.crt school.key $T/wrong-ca-ca.crt \
    $T/{expired,revoked,wrong-ca,no-client-auth,wrong-san,no-san}.{crt,key}; do
    [[ -s $f ]] || fatal "missing or empty: $OUT/$f"
done
pass "all expected files exist"

bad_modes=$(find . -name '*.key' ! -perm 600 -printf '%m %p\n')
if [[ -z $bad_modes ]]; then
    pass "all key files are mode 600"
else
    fail "key files not mode 600: $(echo "$bad_modes" | tr '\n' ' ')"
fi

mismatched=""
for pair in ca broker police school $T/{expired,revoked,wrong-ca,no-client-auth,wrong-san,no-san}; do
    key_matches "$pair.crt" "$pair.key" || mismatched+=" $pair"
done
if [[ -z $mismatched ]]; then
    pass "every key matches its certificate"
else
    fail "key does not match certificate:$mismatched"
fi

echo "# CA"
check "CA subject is 'Liaison Dev CA'" [ "$(subject ca.crt)" = "O = Liaison dev, CN = Liaison Dev CA" ]
check "CA is self-signed" [ "$(issuer ca.crt)" = "$(subject ca.crt)" ]
ext_is "CA basicConstraints CA:TRUE" ca.crt basicConstraints "CA:TRUE, pathlen:0"
critical "CA basicConstraints is critical" ca.crt basicConstraints
ext_is "CA keyUsage keyCertSign,cRLSign" ca.crt keyUsage "Certificate Sign, CRL Sign"
critical "CA keyUsage is critical" ca.crt keyUsage
check "CA valid 825 days" [ "$(days_valid ca.crt)" = 825 ]
check "CA key is ECDSA P-256" bash -c "openssl pkey -in ca.key -noout -text | grep -q 'NIST CURVE: P-256'"

echo "# broker"
verify_ok "broker verifies -purpose sslserver (x509_strict, with CRL)" \
    -x509_strict -CAfile ca.crt -crl_check -CRLfile ca.crl -purpose sslserver broker.crt
verify_fails "broker is refused as a client" "unsuitable certificate purpose" \
    -CAfile ca.crt -purpose sslclient broker.crt
check "broker CN=localhost" [ "$(subject broker.crt)" = "O = Liaison dev, CN = localhost" ]
ext_is "broker SAN" broker.crt subjectAltName \
    "DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1"
ext_is "broker EKU serverAuth only" broker.crt extendedKeyUsage "TLS Web Server Authentication"
ext_is "broker keyUsage digitalSignature" broker.crt keyUsage "Digital Signature"

echo "# agencies"
for a in police school; do
    verify_ok "$a verifies -purpose sslclient (x509_strict, with CRL)" \
        -x509_strict -CAfile ca.crt -crl_check -CRLfile ca.crl -purpose sslclient $a.crt
    verify_fails "$a is refused as a server" "unsuitable certificate purpose" \
        -CAfile ca.crt -purpose sslserver $a.crt
    check "$a subject CN=$a, O=Liaison dev" [ "$(subject $a.crt)" = "O = Liaison dev, CN = $a" ]
    ext_is "$a SAN is URI:urn:liaison:agency:$a only" $a.crt subjectAltName "URI:urn:liaison:agency:$a"
    ext_is "$a EKU clientAuth only" $a.crt extendedKeyUsage "TLS Web Client Authentication"
    ext_is "$a keyUsage digitalSignature" $a.crt keyUsage "Digital Signature"
    ext_is "$a basicConstraints CA:FALSE" $a.crt basicConstraints "CA:FALSE"
done

echo "# CRL"
if out=$(openssl crl -in ca.crl -CAfile ca.crt -noout 2>&1) && [[ $out == *"verify OK"* ]]; then
    pass "CRL is signed by the CA"
else
    fail "CRL signature: $out"
fi
last=$(openssl crl -in ca.crl -noout -lastupdate | sed 's/^lastUpdate=//')
next=$(openssl crl -in ca.crl -noout -nextupdate | sed 's/^nextUpdate=//')
check "CRL valid 30 days" [ $((($(epoch "$next") - $(epoch "$last")) / 86400)) = 30 ]

echo "# test/ certificates (agency police)"
for t in expired revoked wrong-ca no-client-auth; do
    check "$t: CN=police" [ "$(subject $T/$t.crt)" = "O = Liaison dev, CN = police" ]
    ext_is "$t: SAN is police's" $T/$t.crt subjectAltName "URI:urn:liaison:agency:police"
done

verify_fails "expired is refused: certificate has expired" "certificate has expired" \
    -CAfile ca.crt -purpose sslclient $T/expired.crt
verify_ok "expired is otherwise valid (-no_check_time)" \
    -no_check_time -CAfile ca.crt -purpose sslclient $T/expired.crt

verify_fails "revoked is refused with the CRL: certificate revoked" "certificate revoked" \
    -CAfile ca.crt -crl_check -CRLfile ca.crl -purpose sslclient $T/revoked.crt
verify_ok "revoked is otherwise valid (no CRL check)" \
    -CAfile ca.crt -purpose sslclient $T/revoked.crt

verify_fails "wrong-ca is refused by the dev CA" "unable to get local issuer certificate" \
    -CAfile ca.crt -purpose sslclient $T/wrong-ca.crt
verify_ok "wrong-ca is otherwise valid (against wrong-ca-ca.crt)" \
    -x509_strict -CAfile $T/wrong-ca-ca.crt -purpose sslclient $T/wrong-ca.crt
check "wrong-ca issuer is 'Rogue CA'" [ "$(issuer $T/wrong-ca.crt)" = "$(subject $T/wrong-ca-ca.crt)" ]
check "wrong-ca-ca.crt subject is 'Rogue CA'" [ "$(subject $T/wrong-ca-ca.crt)" = "O = Rogue, CN = Rogue CA" ]
check "wrong-ca-ca.crt is self-signed" [ "$(issuer $T/wrong-ca-ca.crt)" = "O = Rogue, CN = Rogue CA" ]

verify_fails "no-client-auth is refused as a client" "unsuitable certificate purpose" \
    -CAfile ca.crt -purpose sslclient $T/no-client-auth.crt
verify_ok "no-client-auth is otherwise valid (as a server)" \
    -CAfile ca.crt -crl_check -CRLfile ca.crl -purpose sslserver $T/no-client-auth.crt
ext_is "no-client-auth EKU serverAuth only" $T/no-client-auth.crt extendedKeyUsage \
    "TLS Web Server Authentication"

verify_ok "wrong-san chain is valid (must be refused by identity)" \
    -CAfile ca.crt -crl_check -CRLfile ca.crl -purpose sslclient $T/wrong-san.crt
check "wrong-san CN=police" [ "$(subject $T/wrong-san.crt)" = "O = Liaison dev, CN = police" ]
ext_is "wrong-san SAN is URI:urn:liaison:agency:intruder" $T/wrong-san.crt subjectAltName \
    "URI:urn:liaison:agency:intruder"

verify_ok "no-san chain is valid (must be refused by identity)" \
    -CAfile ca.crt -crl_check -CRLfile ca.crl -purpose sslclient $T/no-san.crt
check "no-san CN=police" [ "$(subject $T/no-san.crt)" = "O = Liaison dev, CN = police" ]
check "no-san has no subjectAltName" \
    bash -c "! openssl x509 -in $T/no-san.crt -noout -text | grep -q 'Subject Alternative Name'"

# ---------------------------------------------------------------------------
echo "# second run: same OUTDIR"

ca_fp=$(fingerprint ca.crt)
police_fp=$(fingerprint police.crt)
police_key_sum=$(sha256sum police.key)
old_revoked_serial=$(serial $T/revoked.crt)
if ! "$PKI_SH" "$OUT" police school >"$WORK/run2.log" 2>&1; then
    cat "$WORK/run2.log" >&2
    fatal "second run of dev-pki.sh failed"
fi
pass "second run exits 0"
check "ca.crt unchanged (same fingerprint)" [ "$(fingerprint ca.crt)" = "$ca_fp" ]
check "police.crt unchanged" [ "$(fingerprint police.crt)" = "$police_fp" ]
check "police.key unchanged" [ "$(sha256sum police.key)" = "$police_key_sum" ]
check "test/revoked.crt regenerated" [ "$(serial $T/revoked.crt)" != "$old_revoked_serial" ]
verify_fails "new revoked.crt is in the new CRL" "certificate revoked" \
    -CAfile ca.crt -crl_check -CRLfile ca.crl -purpose sslclient $T/revoked.crt
verify_ok "police still verifies with the new CRL" \
    -CAfile ca.crt -crl_check -CRLfile ca.crl -purpose sslclient police.crt
verify_fails "expired.crt still expired after re-run" "certificate has expired" \
    -CAfile ca.crt -purpose sslclient $T/expired.crt

echo "# third run: school.crt deleted, new agency health"
school_pub=$(openssl pkey -in school.key -pubout)
rm school.crt
"$PKI_SH" "$OUT" police school health >"$WORK/run3.log" 2>&1 ||
    { cat "$WORK/run3.log" >&2; fatal "third run of dev-pki.sh failed"; }
check "ca.crt still unchanged" [ "$(fingerprint ca.crt)" = "$ca_fp" ]
check "police.crt still unchanged" [ "$(fingerprint police.crt)" = "$police_fp" ]
verify_ok "school.crt reissued and valid" -CAfile ca.crt -purpose sslclient school.crt
check "school.crt reissued with the existing key" \
    [ "$(openssl x509 -in school.crt -noout -pubkey)" = "$school_pub" ]
verify_ok "health.crt issued and valid" \
    -CAfile ca.crt -crl_check -CRLfile ca.crl -purpose sslclient health.crt
ext_is "health SAN" health.crt subjectAltName "URI:urn:liaison:agency:health"
check "health.key is mode 600" [ "$(stat -c %a health.key)" = 600 ]

# ---------------------------------------------------------------------------
echo
if ((FAILURES > 0)); then
    echo "dev_pki_test: $FAILURES of $CHECKS checks FAILED" >&2
    exit 1
fi
echo "dev_pki_test: all $CHECKS checks passed"
