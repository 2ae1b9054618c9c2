#!/usr/bin/env bash
# Quick start, step 2: install what is missing, build, and run every test (unit, multi-rank at
# np = 1, 2, 3, 4, end-to-end through the real binaries), then the multi-rank suites again
# under AddressSanitizer and UndefinedBehaviorSanitizer. MESHTRAIN_SKIP_SANITIZERS=1 skips
# the second build.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
jobs=$(nproc)
cmake --preset release > /dev/null
cmake --build --preset release -j "$jobs"
ctest --preset release
if [ "${MESHTRAIN_SKIP_SANITIZERS:-0}" != "1" ]; then
  cmake --preset asan > /dev/null
  cmake --build --preset asan -j "$jobs"
  ctest --preset asan
fi
