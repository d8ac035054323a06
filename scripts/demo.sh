#!/usr/bin/env bash
# The Liaison demo, from a fresh Debian 12 machine: installs what is missing,
# builds, makes a development PKI, starts the broker with the example
# configuration and policy, has the police send an incident report that one
# agency receives in full, one redacted and one not at all (the policy says
# so), shows what was exchanged, stops the broker, and shows and verifies the
# audit trail.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${BUILD_DIR:-build}
DEMO=$BUILD/demo
PKI=$BUILD/pki          # docs/examples/broker.yaml points here
PORT=7443

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Installing missing Debian packages"
scripts/install-deps.sh

step "2. Building the broker and the CLI"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" --target liaison-broker liaison
BROKER=$ROOT/$BUILD/broker/liaison-broker
CLI=$ROOT/$BUILD/client/liaison

step "3. Development PKI: a CA, the broker certificate, one certificate per agency"
certs/dev-pki.sh "$PKI" police school social health youth-ngo national-centre auditor

step "4. Checking the configuration"
"$BROKER" --config docs/examples/broker.yaml --check-config

rm -rf "$DEMO"
mkdir -p "$DEMO/inbox-school"
if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then
  echo "error: something already listens on 127.0.0.1:$PORT; stop it first" >&2
  exit 1
fi

step "5. Starting the broker (log: $DEMO/broker.log)"
"$BROKER" --config docs/examples/broker.yaml 2>"$DEMO/broker.log" &
BROKER_PID=$!
trap 'kill -TERM $BROKER_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "listening on" "$DEMO/broker.log" && break
  kill -0 $BROKER_PID 2>/dev/null || { cat "$DEMO/broker.log"; exit 1; }
  sleep 0.1
done
cat "$DEMO/broker.log"

as() {  # as AGENCY liaison-args...
  local agency=$1; shift
  "$CLI" --broker 127.0.0.1:$PORT --server-name localhost \
    --cert "$PKI/$agency.crt" --key "$PKI/$agency.key" --ca "$PKI/ca.crt" "$@"
}

step "6. Social services start receiving (the school's server is offline for now)"
mkdir -p "$DEMO/inbox-social" "$DEMO/inbox-school"
rm -f "$DEMO"/inbox-social/*.json "$DEMO"/inbox-school/*.json
as social receive --out "$DEMO/inbox-social" --count 1 --wait 30 &
SOCIAL_PID=$!
for _ in $(seq 50); do
  [ "$(grep -c "ready to receive" "$DEMO/broker.log")" -ge 1 ] && break
  sleep 0.1
done

step "7. The police send an incident report to social services, the school and the youth NGO"
echo "The policy (docs/examples/policy.yaml) permits social services the full report, the school"
echo "a redacted copy (no criminal or special-category data, names pseudonymised), and the"
echo "youth NGO nothing: no rule lets incident reports reach civil society."
echo "'queued' means stored durably for that agency (it survives a crash of the broker)."
echo "\$ liaison send --to social,school,youth-ngo --purpose safeguarding docs/examples/incident-report.json"
set +e
as police send --to social,school,youth-ngo --purpose safeguarding docs/examples/incident-report.json
rc=$?
set -e
echo "(exit code $rc: at least one recipient was refused)"
wait $SOCIAL_PID

step "7b. The school comes online later and gets the copy that waited for it"
echo "What waits for whom (the operator's view, through the broker's admin socket):"
echo "\$ liaison-broker --config docs/examples/broker.yaml --admin queues"
"$BROKER" --config docs/examples/broker.yaml --admin queues
as school receive --out "$DEMO/inbox-school" --count 1 --wait 30

step "8. What each agency received (written to disk before it was acknowledged)"
echo "-- social services (full report):"
cat "$DEMO"/inbox-social/*.json
echo "-- the school (redacted and pseudonymised; see redactedPaths and pseudonymisedPaths):"
cat "$DEMO"/inbox-school/*.json
echo "-- the youth NGO received nothing. The broker's log says why (the sender only learns 'not_permitted'):"
grep "refused:" "$DEMO/broker.log" | sed 's/^/  /'

step "9. An agency cannot pretend to be another"
set +e
sed 's/"tlp"/"sender": "social", "tlp"/' docs/examples/incident-report.json | as police send --to school --purpose safeguarding -
echo "(exit code $?)"
set -e

step "9b. A message sent by mistake is recalled before the recipient collects it"
ID=$(as police --json send --to health --purpose safeguarding docs/examples/incident-report.json | sed -n 's/.*"messageId":"\([0-9a-f-]*\)".*/\1/p')
echo "sent $ID to health (offline); now:"
echo "\$ liaison recall $ID --reason 'sent to the wrong agency'"
as police recall "$ID" --reason "sent to the wrong agency"

step "10. Stopping the broker (SIGTERM: finish in-flight work, then close)"
kill -TERM $BROKER_PID
wait $BROKER_PID
trap - EXIT
echo "broker log:"
sed 's/^/  /' "$DEMO/broker.log"

step "11. The audit trail: export it (no message bodies) and verify it offline"
rm -f "$DEMO/audit-export.db"
"$CLI" audit export --store "$BUILD/data/liaison.db" --out "$DEMO/audit-export.db"
echo "What this demo exchanged, as an auditor sees it:"
sqlite3 -header -column "$DEMO/audit-export.db" \
  "SELECT seq, datetime(time_ms / 1000, 'unixepoch') AS time, event, sender, recipient, message_type AS type,
          purpose, decision, rules, substr(obligations, 1, 40) AS obligations
   FROM audit_log
   WHERE message_id IN (SELECT message_id FROM audit_log WHERE message_id <> '' ORDER BY seq DESC LIMIT 10)
   ORDER BY seq"
echo "\$ liaison audit verify --db $DEMO/audit-export.db --pubkey $BUILD/keys/audit-signing.key.pub"
"$CLI" audit verify --db "$DEMO/audit-export.db" --pubkey "$BUILD/keys/audit-signing.key.pub"

echo
echo "Demo complete. Next: docs/cli.md (the liaison tool), docs/policy.md (the policy),"
echo "docs/auditing.md (the audit log), docs/broker.md (running the broker)."
