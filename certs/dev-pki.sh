#!/usr/bin/env bash
# dev-pki.sh — create a throwaway development PKI for Liaison.
#
# Usage: certs/dev-pki.sh OUTDIR NAME...   (see --help)
#
# Uses only the openssl command-line tool (OpenSSL 3.0) and the config file
# certs/openssl.cnf next to this script.  NOT for production: see
# docs/certificates.md.
set -euo pipefail
export LC_ALL=C # byte-wise [a-z] in the NAME check; stable openssl output

PROG=${0##*/}

usage() {
    cat <<EOF
Usage: $PROG OUTDIR NAME...

Create (or update) a development PKI for Liaison in OUTDIR:

  ca.crt, ca.key          dev CA "Liaison Dev CA" (825 days); reused if present
  broker.crt, broker.key  broker server cert: CN=localhost,
                          SAN DNS:localhost, IP:127.0.0.1, IP:::1, serverAuth
  NAME.crt, NAME.key      one client cert per agency NAME:
                          SAN URI:urn:liaison:agency:NAME, clientAuth only
  ca.crl                  CRL from the dev CA (30 days), regenerated every run
  test/                   certs for the FIRST agency, each with exactly one
                          defect: expired, revoked, wrong-ca (+ wrong-ca-ca.crt),
                          no-client-auth, wrong-san, no-san; regenerated every run
  ca-db/                  the 'openssl ca' database (index, serial, crlnumber)

Existing agency and broker certificates are kept while they still verify
against the CA; missing or invalid ones are (re)issued, reusing an existing
key file if there is one (so SPKI pins stay valid).

NAME must match ^[a-z0-9][a-z0-9_-]{0,62}\$ and must not be one of the
reserved names: ca, broker, intruder.

Exit status: 0 on success, 1 on failure, 2 on bad usage.
EOF
}

usage_error() {
    echo "$PROG: $*" >&2
    echo "Try '$PROG --help'." >&2
    exit 2
}

die() {
    echo "$PROG: error: $*" >&2
    exit 1
}

# ---------------------------------------------------------------------------
# Arguments

case ${1:-} in
    -h | --help) usage; exit 0 ;;
    -*) usage_error "unknown option: $1" ;;
esac
[[ $# -ge 2 ]] || usage_error "need OUTDIR and at least one agency NAME"

OUTDIR=$1
shift
[[ -n $OUTDIR ]] || usage_error "OUTDIR must not be empty"

NAMES=()
for name in "$@"; do
    if [[ ! $name =~ ^[a-z0-9][a-z0-9_-]{0,62}$ ]]; then
        usage_error "invalid agency name '$name' (must match ^[a-z0-9][a-z0-9_-]{0,62}\$)"
    fi
    case $name in
        ca | broker | intruder) usage_error "agency name '$name' is reserved" ;;
    esac
    for seen in "${NAMES[@]}"; do
        [[ $seen != "$name" ]] || continue 2 # ignore duplicates
    done
    NAMES+=("$name")
done
FIRST=${NAMES[0]}

command -v openssl >/dev/null 2>&1 || die "openssl not found in PATH"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CNF=$SCRIPT_DIR/openssl.cnf
[[ -r $CNF ]] || die "cannot read $CNF"

mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd) # absolute: the config file uses these paths
DB=$OUTDIR/ca-db

# One run at a time per OUTDIR (tests may run in parallel).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$OUTDIR/.dev-pki.lock"
    flock 9
fi

# openssl.cnf takes these from the environment; OpenSSL refuses to load the
# file if any of them is unset, so SAN gets a placeholder.
export LIAISON_PKI_DB=$DB
export LIAISON_CA_CRT=$OUTDIR/ca.crt
export LIAISON_CA_KEY=$OUTDIR/ca.key
export SAN=DNS:unused.invalid

TMP=$(mktemp -d "$OUTDIR/.dev-pki.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
LOG=$TMP/openssl.log

# ---------------------------------------------------------------------------
# Helpers

# run CMD...: run quietly; on failure show the command and openssl's output.
run() {
    : >"$LOG"
    if ! "$@" >"$LOG" 2>&1; then
        echo "$PROG: error: command failed: $*" >&2
        sed 's/^/    /' "$LOG" >&2
        exit 1
    fi
}

# genkey FILE: new ECDSA P-256 private key, mode 0600.
genkey() {
    local old_umask
    old_umask=$(umask)
    umask 077
    run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
    umask "$old_umask"
    chmod 600 "$1"
}

# csr KEY SUBJECT OUT
csr() {
    run openssl req -new -config "$CNF" -key "$1" -subj "$2" -out "$3"
}

# ca_sign EXTENSIONS SAN CSR OUT [openssl ca options...]: sign with the dev CA.
ca_sign() {
    local ext=$1 san=$2 req=$3 out=$4
    shift 4
    run env SAN="$san" openssl ca -batch -notext -config "$CNF" \
        -extensions "$ext" -in "$req" -out "$out" "$@"
}

# leaf_ok CRT KEY PURPOSE SAN_ENTRY: does an existing cert still verify against
# the CA, for PURPOSE, and carry SAN_ENTRY?
leaf_ok() {
    local crt=$1 key=$2 purpose=$3 want=$4 san
    [[ -f $crt && -f $key && $CA_STATE == reused ]] || return 1
    openssl verify -CAfile "$OUTDIR/ca.crt" -purpose "$purpose" "$crt" \
        >/dev/null 2>&1 || return 1
    san=$(openssl x509 -in "$crt" -noout -ext subjectAltName 2>/dev/null) || return 1
    san=${san#*$'\n'}         # drop the "X509v3 Subject Alternative Name:" line
    san=${san//[$' \t\n']/} # "URI:a, DNS:b" -> "URI:a,DNS:b"
    [[ ",$san," == *",$want,"* ]]
}

# leaf BASENAME EXTENSIONS SAN SUBJECT PURPOSE: keep or (re)issue OUTDIR/BASENAME.{crt,key}.
leaf() {
    local base=$1 ext=$2 san=$3 subj=$4 purpose=$5
    local crt=$OUTDIR/$base.crt key=$OUTDIR/$base.key newkey=""
    if leaf_ok "$crt" "$key" "$purpose" "${san%%,*}"; then
        SUMMARY+=("  $base.crt (kept)")
        return
    fi
    if [[ ! -f $key ]]; then
        newkey=$TMP/$base.key
        genkey "$newkey"
    fi
    csr "${newkey:-$key}" "$subj" "$TMP/$base.csr"
    ca_sign "$ext" "$san" "$TMP/$base.csr" "$TMP/$base.crt"
    [[ -z $newkey ]] || mv -f "$newkey" "$key"
    chmod 600 "$key"
    mv -f "$TMP/$base.crt" "$crt"
    SUMMARY+=("  $base.crt (issued${newkey:+ with new key})")
}

SUMMARY=()

# ---------------------------------------------------------------------------
# CA

if [[ -e $OUTDIR/ca.crt || -e $OUTDIR/ca.key ]]; then
    [[ -f $OUTDIR/ca.crt && -f $OUTDIR/ca.key ]] ||
        die "found only one of ca.crt / ca.key in $OUTDIR; remove it to start a new CA"
    ca_pub=$(openssl x509 -in "$OUTDIR/ca.crt" -noout -pubkey 2>/dev/null) ||
        die "cannot read $OUTDIR/ca.crt"
    key_pub=$(openssl pkey -in "$OUTDIR/ca.key" -pubout 2>/dev/null) ||
        die "cannot read $OUTDIR/ca.key"
    [[ $ca_pub == "$key_pub" ]] || die "ca.key does not belong to ca.crt in $OUTDIR"
    openssl x509 -in "$OUTDIR/ca.crt" -noout -checkend 86400 >/dev/null ||
        die "$OUTDIR/ca.crt expires within a day; remove ca.crt and ca.key to start a new CA"
    CA_STATE=reused
    SUMMARY+=("  ca.crt (reused)")
else
    genkey "$TMP/ca.key"
    run openssl req -x509 -new -config "$CNF" -extensions ext_ca \
        -key "$TMP/ca.key" -subj "/O=Liaison dev/CN=Liaison Dev CA" \
        -days 825 -sha256 -out "$TMP/ca.crt"
    rm -rf "$DB" # any old database belongs to a different CA
    mv -f "$TMP/ca.key" "$OUTDIR/ca.key"
    mv -f "$TMP/ca.crt" "$OUTDIR/ca.crt"
    CA_STATE=created
    SUMMARY+=("  ca.crt (new CA)")
fi
chmod 600 "$OUTDIR/ca.key"

mkdir -p "$DB/newcerts"
[[ -f $DB/index.txt ]] || : >"$DB/index.txt"
# Random start serial: if ca-db/ is ever recreated for an existing CA, new
# serials must not collide with (and so revoke) certificates issued before.
[[ -f $DB/serial ]] || echo "01$(openssl rand -hex 15)" >"$DB/serial"
[[ -f $DB/crlnumber ]] || echo 01 >"$DB/crlnumber"

# ---------------------------------------------------------------------------
# Broker and agencies

leaf broker ext_server "DNS:localhost,IP:127.0.0.1,IP:::1" \
    "/O=Liaison dev/CN=localhost" sslserver

for name in "${NAMES[@]}"; do
    leaf "$name" ext_client "URI:urn:liaison:agency:$name" \
        "/O=Liaison dev/CN=$name" sslclient
done

# ---------------------------------------------------------------------------
# test/: one defect each, for the first agency; always regenerated

T=$TMP/test
mkdir -p "$T"
F_SUBJ="/O=Liaison dev/CN=$FIRST"
F_SAN="URI:urn:liaison:agency:$FIRST"

for t in expired revoked wrong-ca no-client-auth wrong-san no-san; do
    genkey "$T/$t.key"
    csr "$T/$t.key" "$F_SUBJ" "$T/$t.csr"
done

ca_sign ext_client "$F_SAN" "$T/expired.csr" "$T/expired.crt" \
    -startdate 20200101000000Z -enddate 20200201000000Z
ca_sign ext_client "$F_SAN" "$T/revoked.csr" "$T/revoked.crt" -days 825
ca_sign ext_server "$F_SAN" "$T/no-client-auth.csr" "$T/no-client-auth.crt" -days 825
ca_sign ext_client "URI:urn:liaison:agency:intruder" "$T/wrong-san.csr" "$T/wrong-san.crt" -days 825
ca_sign ext_client_nosan "$SAN" "$T/no-san.csr" "$T/no-san.crt" -days 825

# wrong-ca: a perfectly good client cert, but from a self-signed "Rogue CA".
genkey "$TMP/rogue.key"
run openssl req -x509 -new -config "$CNF" -extensions ext_ca \
    -key "$TMP/rogue.key" -subj "/O=Rogue/CN=Rogue CA" -days 825 -sha256 \
    -out "$T/wrong-ca-ca.crt"
run env SAN="$F_SAN" openssl x509 -req -in "$T/wrong-ca.csr" \
    -CA "$T/wrong-ca-ca.crt" -CAkey "$TMP/rogue.key" \
    -set_serial "0x01$(openssl rand -hex 15)" -days 825 -sha256 \
    -extfile "$CNF" -extensions ext_client -out "$T/wrong-ca.crt"

# Revoke, then regenerate the CRL (it lists every test cert ever revoked).
run openssl ca -config "$CNF" -revoke "$T/revoked.crt" -crl_reason keyCompromise
run openssl ca -config "$CNF" -gencrl -crldays 30 -out "$TMP/ca.crl"
mv -f "$TMP/ca.crl" "$OUTDIR/ca.crl"

mkdir -p "$OUTDIR/test"
rm -f "$OUTDIR"/test/*.crt "$OUTDIR"/test/*.key
for t in expired revoked wrong-ca no-client-auth wrong-san no-san; do
    mv -f "$T/$t.key" "$T/$t.crt" "$OUTDIR/test/"
done
mv -f "$T/wrong-ca-ca.crt" "$OUTDIR/test/"

# ---------------------------------------------------------------------------

revoked_count=$(grep -c '^R' "$DB/index.txt" || true)
echo "$PROG: dev PKI in $OUTDIR"
printf '%s\n' "${SUMMARY[@]}"
echo "  ca.crl (regenerated, 30 days, $revoked_count revoked)"
echo "  test/ for agency '$FIRST': expired revoked wrong-ca no-client-auth wrong-san no-san (regenerated)"
