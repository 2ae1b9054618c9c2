#!/usr/bin/env bash
# Quick start, step 2: install what is missing, build, and run every test (unit, multi-rank at
# np = 1, 2, 3, 4, end-to-end through the real binaries), then the multi-rank suites again
# under AddressSanitizer and UndefinedBehaviorSanitizer, then the Kokkos 4 builds
# (scripts/test-kokkos4.sh: the unit and multi-rank suites against Kokkos 4 OpenMP with 2
# threads per rank, and the whole project compiled and linked against Kokkos 4 CUDA).
# MESHTRAIN_SKIP_SANITIZERS=1 skips the sanitizer build, MESHTRAIN_SKIP_KOKKOS4=1 the Kokkos 4
# builds.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
jobs=$(nproc)
part_start=$SECONDS
part_done() {  # part_done LABEL: print the wall time since the previous part ended
  echo "run-tests: $1: $((SECONDS - part_start)) s"
  part_start=$SECONDS
}
cmake --preset release > /dev/null
cmake --build --preset release -j "$jobs"
part_done "release build"
ctest --preset release
part_done "release tests"
if [ "${MESHTRAIN_SKIP_SANITIZERS:-0}" != "1" ]; then
  cmake --preset asan > /dev/null
  cmake --build --preset asan -j "$jobs"
  part_done "asan build"
  ctest --preset asan
  part_done "asan tests"
fi
if [ "${MESHTRAIN_SKIP_KOKKOS4:-0}" != "1" ]; then
  ./scripts/test-kokkos4.sh
  part_done "Kokkos 4 (scripts/test-kokkos4.sh)"
fi
echo "run-tests: total $SECONDS s"
