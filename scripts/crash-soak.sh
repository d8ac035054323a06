#!/usr/bin/env bash
# Soak test for the "nothing lost" guarantee: runs the kill -9 crash test
# (tests/integration/crash_test.cpp) for many seeded trials against the real
# broker. Each trial kills the broker three times while three agencies
# publish 10,002 messages, then checks every acknowledged message arrived.
#
#   scripts/crash-soak.sh [TRIALS] [FIRST_SEED]     (defaults: 100, 1)
#
# Needs a build (scripts/test.sh or cmake --build build) and the test PKI
# that ctest makes (build/test-pki); BUILD_DIR overrides "build".
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD_DIR:-build}
TRIALS=${1:-100}
SEED=${2:-1}
if [ ! -d "$BUILD/test-pki" ]; then
  ctest --test-dir "$BUILD" -R dev_pki_setup >/dev/null
fi
start=$(date +%s)
LIAISON_TEST_PKI="$PWD/$BUILD/test-pki" LIAISON_CRASH_TRIALS="$TRIALS" LIAISON_CRASH_SEED="$SEED" \
  "$BUILD/tests/process_tests" "[crash]" | tee "$BUILD/crash-soak.log" | grep -E "crash trial|passed|failed"
echo "crash soak: $TRIALS trial(s) from seed $SEED in $(( $(date +%s) - start )) s (log: $BUILD/crash-soak.log)"
