#!/usr/bin/env bash
# Sanitizer builds for CI (run by .ci/run after scripts/test.sh), with clang-14
# and ccache:
#   build-asan: AddressSanitizer + UndefinedBehaviorSanitizer, Debug; the whole
#               suite through ctest (a UBSan finding aborts, so the test fails).
#   build-tsan: ThreadSanitizer, Debug at -O1; only the integration tests
#               (the broker and clients on their own threads), the
#               concurrency-heavy part, and the I/O threads' pool.
#   fuzz:       the libFuzzer targets (built in build-asan): each replays its
#               corpus (tests/fuzz/corpus/<target>/) and fuzzes for FUZZ_SECONDS
#               (default 30), as many targets at once as there are cores;
#               a crash fails CI and leaves its input in build-asan/fuzz-out/
#               to become a regression test. fuzz_session runs a broker in
#               its own process and talks to it over TLS (it makes dev
#               certificates with openssl at start).
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
# Both are Debug builds (assertions on). ThreadSanitizer's at -O1, as its
# docs advise, with line tables only (enough for file:line in a report):
# against -O0 -g its build took 188 s instead of 157 and its tests 165 s
# instead of 222 (empty ccache, this 2-core machine). The ASan build stays at
# -O0: at -O1 its build took 641 s instead of 442 and its tests saved only
# 143 s (290 instead of 433).
TSAN_FLAGS="-O1 -gline-tables-only"

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
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_C_FLAGS_DEBUG=$TSAN_FLAGS" \
    "-DCMAKE_CXX_FLAGS_DEBUG=$TSAN_FLAGS" -DLIAISON_SANITIZE=thread
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

# One libFuzzer target: replays its seed corpus, then fuzzes for $seconds.
fuzz_one() {
  local target=$1 seconds=$2 out=$3
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
      -artifact_prefix="$out/$target/" corpus "$OLDPWD/tests/fuzz/corpus/$target" > log 2>&1 )
}

fuzz() {
  local seconds=${FUZZ_SECONDS:-30} out="$PWD/build-asan/fuzz-out" target failed=0 start
  local targets=(frame json policy config audit audit_chunks session log_group commit_log redact)
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DLIAISON_SANITIZE=address,undefined -DLIAISON_FUZZ=ON
  cmake --build build-asan -j "$JOBS" --target "${targets[@]/#/fuzz_}"
  # Each target is one single-threaded process: as many run at once as
  # there are cores, each fuzzing for the whole $seconds (on two cores ten
  # targets take 150 s instead of 300 s, with the same time for each).
  start=$(date +%s)
  local -A pid_of=()
  for target in "${targets[@]}"; do
    while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || true; done
    fuzz_one "$target" "$seconds" "$out" &
    pid_of[$target]=$!
  done
  for target in "${targets[@]}"; do
    if wait "${pid_of[$target]}"; then
      echo "fuzz_$target: $(grep -o 'number_of_executed_units: [0-9]*' "$out/$target/log" | grep -o '[0-9]*') executions in ${seconds} s, no findings"
    else
      echo "fuzz_$target FAILED: see $out/$target/log"; tail -40 "$out/$target/log"; failed=1
    fi
  done
  echo "fuzz: $(( $(date +%s) - start )) s for ${#targets[@]} targets, $JOBS at once"
  (( failed == 0 )) || exit 1
}

steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=(asan tsan fuzz)
for step in "${steps[@]}"; do
  case "$step" in
    asan|tsan|fuzz) "$step" ;;
    *) echo "usage: $0 [asan|tsan|fuzz]..." >&2; exit 2 ;;
  esac
done
