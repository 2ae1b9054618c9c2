#!/usr/bin/env bash
# The Kokkos 4 part of CI (scripts/run-tests.sh runs it last; MESHTRAIN_SKIP_KOKKOS4=1 skips it
# there). Runs on its own too, after scripts/install-deps.sh:
#   - Kokkos 4 OpenMP (scripts/build-kokkos.sh, cached outside the clone), the project against
#     it in build-openmp/, and its unit and multi-rank suites with 2 OpenMP threads per rank
#     (`ctest --preset openmp`);
#   - Kokkos 4 CUDA for HOPPER90 (cached likewise) and the whole project, tests and benchmarks
#     included, compiled and linked against it in build-cuda/. Nothing runs: these machines
#     have no GPU. Skipped, saying so, where no CUDA toolkit (nvcc) is found.
# Prints each part's wall time at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
launcher=()
if command -v ccache > /dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi

times=()
timed() {  # timed LABEL COMMAND...: run it and record its wall time
  local label="$1" start=$SECONDS
  shift
  "$@"
  times+=("$(printf '%-42s %5d s' "$label" $((SECONDS - start)))")
}
report() {
  echo "test-kokkos4: wall time per part"
  printf '  %s\n' "${times[@]}"
}
prefix_file=$(mktemp)
trap 'rm -f "$prefix_file"; report' EXIT

# configure_and_build PRESET PREFIX [CMAKE ARGS...]
configure_and_build() {
  local preset="$1" prefix="$2"
  shift 2
  Kokkos_ROOT="$prefix" KokkosKernels_ROOT="$prefix" \
    cmake --preset "$preset" "${launcher[@]}" "$@" > /dev/null
  cmake --build --preset "$preset" -j "$jobs"
}

timed "Kokkos 4 OpenMP install (cached after 1st)" \
  bash -c 'scripts/build-kokkos.sh --backend openmp --jobs "$1" > "$2"' _ "$jobs" "$prefix_file"
openmp_prefix=$(tail -n 1 "$prefix_file")
timed "openmp: configure + build" \
  configure_and_build openmp "$openmp_prefix" -DMESHTRAIN_BUILD_BENCHMARKS=OFF
timed "openmp: ctest (unit|mpi, 2 threads/rank)" ctest --preset openmp

if command -v nvcc > /dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  timed "Kokkos 4 CUDA install (cached after 1st)" \
    bash -c 'scripts/build-kokkos.sh --backend cuda --arch HOPPER90 --jobs "$1" > "$2"' \
    _ "$jobs" "$prefix_file"
  cuda_prefix=$(tail -n 1 "$prefix_file")
  timed "cuda: configure + build (nothing runs)" configure_and_build cuda "$cuda_prefix"
else
  echo "test-kokkos4: no CUDA toolkit (nvcc) found: the Kokkos 4 CUDA build is skipped"
  times+=("$(printf '%-42s %s' "cuda: configure + build" "skipped (no nvcc)")")
fi
