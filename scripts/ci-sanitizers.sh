#!/usr/bin/env bash
# Sanitizer builds for CI (run by .ci/run after scripts/test.sh), with clang-14
# and ccache:
#   build-asan: AddressSanitizer + UndefinedBehaviorSanitizer, Debug; the whole
#               suite through ctest (a UBSan finding aborts, so the test fails).
#   build-tsan: ThreadSanitizer, Debug; only the integration tests (the broker
#               and clients on their own threads), the concurrency-heavy part.
#   fuzz:       the libFuzzer targets (built in build-asan): each replays its
#               corpus (tests/fuzz/corpus/<target>/) and fuzzes for FUZZ_SECONDS
#               (default 30); a crash fails CI and leaves its input in
#               build-asan/fuzz-out/ to become a regression test. fuzz_session
#               runs a broker in its own process and talks to it over TLS
#               (it makes dev certificates with openssl at start).
# Needs clang-14 and libclang-rt-14-dev (Debian), besides scripts/install-deps.sh.
# Usage: scripts/ci-sanitizers.sh [asan|tsan|fuzz]...   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in clang++-14 ccache ninja; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install clang-14 libclang-rt-14-dev ccache ninja-build)" >&2; exit 1; }
done

JOBS=$(nproc)
SUPP="$PWD/tests/sanitizers"
export CC=clang-14 CXX=clang++-14

# Sanitizer runtime options: print a full report, fail the test on a finding.
export ASAN_OPTIONS="detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
if [[ -f "$SUPP/lsan.supp" ]]; then
  export LSAN_OPTIONS="suppressions=$SUPP/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
fi

asan() {
  local start
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DLIAISON_SANITIZE=address,undefined -DLIAISON_FUZZ=ON
  start=$(date +%s)
  cmake --build build-asan -j "$JOBS"
  echo "asan build: $(( $(date +%s) - start )) s"
  start=$(date +%s)
  ctest --test-dir build-asan --output-on-failure -j "$JOBS"
  echo "asan tests: $(( $(date +%s) - start )) s"
}

tsan() {
  local start tsan_opts="halt_on_error=0:second_deadlock_stack=1:history_size=4"
  [[ -f "$SUPP/tsan.supp" ]] && tsan_opts+=":suppressions=$SUPP/tsan.supp"
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DLIAISON_SANITIZE=thread
  start=$(date +%s)
  cmake --build build-tsan -j "$JOBS" --target integration_tests io_pool_tests
  echo "tsan build: $(( $(date +%s) - start )) s"
  start=$(date +%s)
  # Only the integration tests (and the PKI fixture they need), and the I/O
  # threads' pool, whose threads join and leave (ctest names its tests
  # "unit:io pool: ...", the prefix's space dropped). TSan reports make the
  # process exit 66, so a race fails its test even with halt_on_error=0.
  TSAN_OPTIONS="$tsan_opts${TSAN_OPTIONS:+:$TSAN_OPTIONS}" \
    ctest --test-dir build-tsan --output-on-failure -j "$JOBS" -R '^(integration:|dev_pki_setup$|unit: ?io pool)'
  echo "tsan tests: $(( $(date +%s) - start )) s"
}

fuzz() {
  local seconds=${FUZZ_SECONDS:-30} out="$PWD/build-asan/fuzz-out" target
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DLIAISON_SANITIZE=address,undefined -DLIAISON_FUZZ=ON
  cmake --build build-asan -j "$JOBS" --target fuzz_frame fuzz_json fuzz_policy fuzz_config fuzz_audit fuzz_audit_chunks fuzz_session fuzz_log_group fuzz_commit_log fuzz_redact
  for target in frame json policy config audit audit_chunks session log_group commit_log redact; do
    rm -rf "$out/$target"
    mkdir -p "$out/$target/corpus"
    # fuzz_session's broker threads add coverage and allocations to every
    # input: libFuzzer's entropic schedule and its per-input leak check would
    # cost ten times the input. LeakSanitizer still checks at exit.
    local opts=()
    [[ $target == session ]] && opts=(-entropic=0 -detect_leaks=0)
    # Work on a copy: new inputs stay out of the repository's seed corpus.
    ( cd "$out/$target" &&
      "$PWD/../../tests/fuzz_$target" "${opts[@]}" -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="$out/$target/" corpus "$OLDPWD/tests/fuzz/corpus/$target" > log 2>&1 ) || {
      echo "fuzz_$target FAILED: see $out/$target/log"; tail -40 "$out/$target/log"; exit 1; }
    echo "fuzz_$target: $(grep -o 'number_of_executed_units: [0-9]*' "$out/$target/log" | grep -o '[0-9]*') executions in ${seconds} s, no findings"
  done
}

steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=(asan tsan fuzz)
for step in "${steps[@]}"; do
  case "$step" in
    asan|tsan|fuzz) "$step" ;;
    *) echo "usage: $0 [asan|tsan|fuzz]..." >&2; exit 2 ;;
  esac
done
