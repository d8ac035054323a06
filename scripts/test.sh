#!/usr/bin/env bash
# Builds Liaison and runs every test (unit, integration on 127.0.0.1 with
# real certificates, and real-process tests) through ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
BUILD=${BUILD_DIR:-build}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
start=$(date +%s)
cmake --build "$BUILD"
echo "build: $(( $(date +%s) - start )) s"
start=$(date +%s)
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)"
echo "tests: $(( $(date +%s) - start )) s"
