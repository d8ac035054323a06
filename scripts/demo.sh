#!/usr/bin/env bash
# The Liaison demo, from a fresh Debian 12 machine: installs what is missing,
# builds, makes a development PKI, starts the broker with the example
# configuration and policy, has the police send an incident report that the
# school receives, shows what was exchanged, and stops the broker.
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

step "6. The school starts receiving"
as school receive --out "$DEMO/inbox-school" --count 1 --wait 30 &
RECEIVER_PID=$!
for _ in $(seq 50); do
  grep -q "ready to receive" "$DEMO/broker.log" && break
  sleep 0.1
done

step "7. The police send an incident report to the school and to health services"
echo "\$ liaison send --to school,health docs/examples/incident-report.json"
set +e
as send --to school,health docs/examples/incident-report.json
rc=$?
set -e
echo "(exit code $rc: health services have no receiving session, and this version keeps"
echo " no queue, so the broker says so instead of pretending the report was stored)"
wait $RECEIVER_PID

step "8. What the school received (written to disk before it was acknowledged)"
f=$(ls "$DEMO"/inbox-school/*.json)
echo "$f"
cat "$f"

step "9. An agency cannot pretend to be another"
set +e
sed 's/"tlp"/"sender": "social", "tlp"/' docs/examples/incident-report.json | as send --to school -
echo "(exit code $?)"
set -e

step "10. Stopping the broker (SIGTERM: finish in-flight work, then close)"
kill -TERM $BROKER_PID
wait $BROKER_PID
trap - EXIT
echo "broker log:"
sed 's/^/  /' "$DEMO/broker.log"
echo
echo "Demo complete. Next: docs/cli.md (the liaison tool), docs/broker.md (running the broker)."
