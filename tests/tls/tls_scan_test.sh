#!/usr/bin/env bash
# tls_scan_test.sh — scan the real liaison-broker's TLS configuration.
#
# Usage: tests/tls/tls_scan_test.sh [BROKER_BINARY]
#   BROKER_BINARY defaults to $LIAISON_BROKER_BIN, then build/broker/liaison-broker.
#
# Starts the broker on 127.0.0.1 (port 0) with a throwaway dev PKI, runs
# sslscan (offline, XML output) and openssl s_client against it, and checks:
#   - only TLS 1.3 is offered (SSLv2, SSLv3, TLS 1.0, 1.1, 1.2 disabled);
#   - only the three AEAD suites TLS_AES_256_GCM_SHA384,
#     TLS_CHACHA20_POLY1305_SHA256, TLS_AES_128_GCM_SHA256 are accepted;
#   - no session ticket is issued, and a session (from a control server) is
#     not resumed;
#   - early data (0-RTT) is not accepted;
#   - a client without a certificate is refused (alert 116, no app data).
# A control run against `openssl s_server` (which does issue tickets and
# accept early data) proves the ticket/resumption/0-RTT checks can fail.
# Exit status: 0 when every check passes, 1 otherwise.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BROKER=${1:-${LIAISON_BROKER_BIN:-$ROOT/build/broker/liaison-broker}}

command -v sslscan >/dev/null || { echo "tls_scan_test: sslscan not installed (apt-get install sslscan)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "tls_scan_test: openssl not installed" >&2; exit 1; }
[[ -x $BROKER ]] || { echo "tls_scan_test: broker binary not found: $BROKER" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/liaison-tls-scan.XXXXXX")
BROKER_PID=
CONTROL_PID=
cleanup() {
    if [[ -n $CONTROL_PID ]]; then kill "$CONTROL_PID" 2>/dev/null || true; fi
    if [[ -n $BROKER_PID ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

FAILURES=0
PASSES=0
pass() { PASSES=$((PASSES + 1)); echo "  PASS  $*"; }
fail() { FAILURES=$((FAILURES + 1)); echo "  FAIL  $*"; }
check() { # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
has() { grep -Eq -- "$1" "$2"; }
lacks() { ! grep -Eq -- "$1" "$2"; }

# ---------------------------------------------------------------------------
# PKI, policy, config

PKI=$WORK/pki
bash "$ROOT/certs/dev-pki.sh" "$PKI" police >"$WORK/pki.log" 2>&1 || { cat "$WORK/pki.log" >&2; exit 1; }

cat >"$WORK/policy.yaml" <<'EOF'
version: 1
agencies:
  - id: police
    name: Agency police
    sector: law_enforcement
agreements:
  - id: test-network
    title: Test network
    parties: ["*"]
    purposes: [safeguarding]
    legal_basis: [public_task]
    valid_from: 2020-01-01
    valid_until: 2099-12-31
rules:
  - id: everyone-shares
    effect: permit
    agreement: test-network
    from: ["*"]
    to: ["*"]
    tlp: CLEAR..RED
EOF

cat >"$WORK/broker.yaml" <<EOF
name: tls-scan
listen: 127.0.0.1:0
threads: 2
policy: $WORK/policy.yaml
keys_dir: $WORK/keys
data_dir: $WORK/data
tls:
  certificate: $PKI/broker.crt
  private_key: $PKI/broker.key
  ca_bundle: $PKI/ca.crt
  crl: [$PKI/ca.crl]
EOF

# ---------------------------------------------------------------------------
# Start the broker and wait for "listening on 127.0.0.1:PORT"

"$BROKER" --config "$WORK/broker.yaml" </dev/null >"$WORK/broker.out" 2>"$WORK/broker.err" &
BROKER_PID=$!
PORT=
for _ in $(seq 1 200); do
    PORT=$(grep -Eo 'listening on 127\.0\.0\.1:[0-9]+' "$WORK/broker.err" 2>/dev/null | head -n1 | cut -d: -f2 || true)
    [[ -n $PORT ]] && break
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.05
done
if [[ -z $PORT ]]; then
    echo "tls_scan_test: broker did not start:" >&2
    cat "$WORK/broker.err" >&2
    exit 1
fi
echo "tls_scan_test: broker pid $BROKER_PID listening on 127.0.0.1:$PORT"

CLIENT_CERT=(-cert "$PKI/police.crt" -key "$PKI/police.key")
S_CLIENT=(openssl s_client -connect "127.0.0.1:$PORT" -servername localhost -CAfile "$PKI/ca.crt")

# ---------------------------------------------------------------------------
# 1. sslscan: protocols and suites

echo "sslscan:"
XML=$WORK/scan.xml
timeout 180 sslscan --no-colour --xml="$XML" "127.0.0.1:$PORT" >"$WORK/scan.txt" 2>&1 || {
    cat "$WORK/scan.txt" >&2
    fail "sslscan ran"
}
for v in 'ssl" version="2' 'ssl" version="3' 'tls" version="1.0' 'tls" version="1.1' 'tls" version="1.2'; do
    name=${v%%\"*}; name=${name^^}; ver=${v##*\"}
    check "$name $ver disabled" has "<protocol type=\"$v\" enabled=\"0\"" "$XML"
done
check "TLS 1.3 enabled" has '<protocol type="tls" version="1.3" enabled="1"' "$XML"

EXPECTED="TLS_AES_128_GCM_SHA256
TLS_AES_256_GCM_SHA384
TLS_CHACHA20_POLY1305_SHA256"
ACCEPTED=$(grep -Eo '<cipher status="(accepted|preferred)"[^>]*' "$XML" | grep -Eo 'cipher="[^"]+"' | cut -d'"' -f2 | sort -u || true)
if [[ $ACCEPTED == "$EXPECTED" ]]; then
    pass "only AEAD suites accepted: ${ACCEPTED//$'\n'/ }"
else
    fail "suites accepted: [${ACCEPTED//$'\n'/ }], expected [${EXPECTED//$'\n'/ }]"
fi
check "every accepted suite is TLSv1.3" lacks '<cipher [^>]*sslversion="(SSLv[23]|TLSv1\.[012])"' "$XML"
check "no renegotiation" has '<renegotiation supported="0"' "$XML"
check "no compression reported" lacks '<compression supported="1"' "$XML"

# ---------------------------------------------------------------------------
# 2. Control: openssl s_server issues tickets and accepts 0-RTT, so the
#    checks below can tell a server that does from one that does not.

echo "control (openssl s_server with tickets and early data):"
echo "early data probe" >"$WORK/early.txt"
# s_server quits at EOF on stdin: give it a FIFO that this script holds open.
mkfifo "$WORK/control.in"
exec 3<>"$WORK/control.in"
openssl s_server -accept 127.0.0.1:0 -cert "$PKI/broker.crt" -key "$PKI/broker.key" \
    -tls1_3 -early_data -naccept 2 <&3 >"$WORK/control.out" 2>&1 &
CONTROL_PID=$!
CPORT=
for _ in $(seq 1 100); do
    CPORT=$(grep -Eo 'ACCEPT 127\.0\.0\.1:[0-9]+' "$WORK/control.out" 2>/dev/null | cut -d: -f2 || true)
    [[ -n $CPORT ]] && break
    sleep 0.05
done
if [[ -n $CPORT ]]; then
    C=(openssl s_client -connect "127.0.0.1:$CPORT" -servername localhost -CAfile "$PKI/ca.crt" -tls1_3)
    sleep 1 | timeout 10 "${C[@]}" -sess_out "$WORK/control-sess.pem" >"$WORK/control1.txt" 2>&1 || true
    sleep 1 | timeout 10 "${C[@]}" -sess_in "$WORK/control-sess.pem" -early_data "$WORK/early.txt" \
        >"$WORK/control2.txt" 2>&1 || true
    if [[ -s $WORK/control-sess.pem ]] && has 'New Session Ticket arrived' "$WORK/control1.txt" &&
        has '^Reused, TLSv1\.3' "$WORK/control2.txt" && has 'Early data was accepted' "$WORK/control2.txt"; then
        pass "control server: ticket issued, session reused, early data accepted (detection works)"
    else
        fail "control server did not show ticket/resumption/0-RTT; the checks below would prove nothing"
    fi
else
    fail "control server did not start"
fi
kill "$CONTROL_PID" 2>/dev/null || true
wait "$CONTROL_PID" 2>/dev/null || true
CONTROL_PID=
exec 3>&-

# ---------------------------------------------------------------------------
# 3. Session tickets, resumption, 0-RTT against the broker

echo "resumption and 0-RTT (openssl s_client, police certificate):"
SESS=$WORK/broker-sess.pem
# `sleep 1 |` keeps the client reading after the handshake, long enough for
# a post-handshake NewSessionTicket to arrive if the broker sent one.
sleep 1 | timeout 10 "${S_CLIENT[@]}" "${CLIENT_CERT[@]}" -tls1_3 -sess_out "$SESS" >"$WORK/full.txt" 2>&1 || true
check "mutual-TLS handshake with police certificate succeeds (TLSv1.3)" has '^New, TLSv1\.3, Cipher is TLS_' "$WORK/full.txt"
check "broker authenticated the police client" has "authenticated as agency 'police'" "$WORK/broker.err"
check "no NewSessionTicket sent" lacks 'New Session Ticket arrived' "$WORK/full.txt"
check "no session saved by -sess_out" test ! -s "$SESS"

# With no ticket from the broker, offer one to it anyway: its own (if any)
# or the control server's. It must not resume and must not take early data.
OFFER=$SESS
[[ -s $OFFER ]] || OFFER=$WORK/control-sess.pem
if [[ -s $OFFER ]]; then
    sleep 1 | timeout 10 "${S_CLIENT[@]}" "${CLIENT_CERT[@]}" -tls1_3 -sess_in "$OFFER" >"$WORK/resume.txt" 2>&1 || true
    check "offered session is not resumed (no 'Reused')" lacks '^Reused' "$WORK/resume.txt"
    check "full handshake instead (New, TLSv1.3)" has '^New, TLSv1\.3' "$WORK/resume.txt"
    sleep 1 | timeout 10 "${S_CLIENT[@]}" "${CLIENT_CERT[@]}" -tls1_3 -sess_in "$OFFER" -early_data "$WORK/early.txt" \
        >"$WORK/early-out.txt" 2>&1 || true
    check "early data (0-RTT) not accepted" lacks 'Early data was accepted' "$WORK/early-out.txt"
    check "no session reused with early data" lacks '^Reused' "$WORK/early-out.txt"
else
    fail "no session available to offer (control failed)"
fi

# ---------------------------------------------------------------------------
# 4. A client without a certificate cannot complete

echo "client without certificate:"
# -ign_eof: keep reading until the broker closes the connection.
timeout 10 "${S_CLIENT[@]}" -tls1_3 -ign_eof </dev/null >"$WORK/nocert.txt" 2>&1 || true
check "refused with 'certificate required' alert (116)" has 'alert certificate required|alert number 116' "$WORK/nocert.txt"
check "broker logged the missing certificate" has 'peer did not return a certificate' "$WORK/broker.err"
check "no application data from the broker" lacks 'read R BLOCK|Welcome' "$WORK/nocert.txt"

echo "TLS 1.2 downgrade attempt:"
timeout 10 "${S_CLIENT[@]}" "${CLIENT_CERT[@]}" -tls1_2 </dev/null >"$WORK/tls12.txt" 2>&1 || true
check "TLS 1.2 ClientHello refused (protocol version alert)" has 'alert protocol version|alert number 70' "$WORK/tls12.txt"
check "no TLS 1.2 session established" lacks '^New, TLSv1\.2' "$WORK/tls12.txt"

# ---------------------------------------------------------------------------
# Stop the broker with SIGTERM

kill -TERM "$BROKER_PID"
RC=
for _ in $(seq 1 300); do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        set +e; wait "$BROKER_PID"; RC=$?; set -e
        break
    fi
    sleep 0.05
done
if [[ $RC == 0 ]]; then
    pass "broker stopped cleanly on SIGTERM"
    BROKER_PID=
else
    fail "broker did not exit 0 on SIGTERM (exit: ${RC:-still running})"
fi

echo
echo "tls_scan_test: $PASSES passed, $FAILURES failed"
if [[ $FAILURES -ne 0 ]]; then
    echo "--- broker stderr ---"
    cat "$WORK/broker.err"
    exit 1
fi
