#!/usr/bin/env bash
# The GPU check, as one command, for a machine with a GPU, CUDA and CMake but perhaps no MPI
# and no Debian packages (so perhaps no Kokkos):
#
#   1. says what the machine has (GPU, driver, nvcc, CMake, NCCL, MPI);
#   2. if MPI is there (mpicc on PATH, or an Open MPI prefix carried at third_party/openmpi),
#      configures meshtrain with -DMESHTRAIN_ENABLE_CUDA=ON -DMESHTRAIN_ENABLE_NCCL=ON, builds
#      nccl_tests and runs it on one rank; when Kokkos or another dependency is not findable
#      it says so and goes on;
#   3. always builds tests/device/nccl_sweep.cpp straight against CUDA and NCCL (no MPI, one
#      process, ncclCommInitAll) and runs an all-reduce sweep from 8 B to 256 MiB with a
#      correctness check;
#   4. ends with a list of what it could not run. Exits non-zero only when something that ran
#      failed.
#
# Logs and results go to $OUT when it is set (else build-device/out). The whole script keeps
# inside about 4.5 minutes: each step gets what is left of that budget.
#
# Where the machine cannot build meshtrain (no MPI, Kokkos, OpenBLAS, Google Benchmark), use
# prebuilt binaries instead: tests/device/bundle.sh [BUILD_DIR] packs them, their libraries and
# a relocatable Open MPI into .devbundle/bundle.tar.xz (carry that file), and
# tests/device/run_bundle.sh runs nccl_tests, this NCCL sweep and the CPU benchmarks from it.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${OUT:-$repo/build-device/out}
build=$repo/build-device/build
mkdir -p "$out" "$build"
cd "$repo" || exit 1

budget_s=270
sweep_reserve_s=75  # kept back for the sweep, which must run whatever happens before it
not_run=()
failed=()
say() { echo "[device_check] $*" | tee -a "$out/summary.txt"; }
left() { echo $((budget_s - SECONDS)); }
# step_limit WANTED [RESERVE]: seconds a step may take, leaving RESERVE for what follows;
# 0 when fewer than 15 are left (and `timeout 0` would mean no limit at all, so callers skip).
step_limit() {
  local limit=$(($(left) - ${2:-0}))
  ((limit > $1)) && limit=$1
  echo $((limit >= 15 ? limit : 0))
}
: >"$out/summary.txt"

# --- 1. What this machine has ---------------------------------------------------------------
cuda_home=${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}
{
  echo "== date: $(date -u +%FT%TZ)  host: $(hostname)  user: $(id -un)"
  echo "== nvidia-smi"; nvidia-smi -L 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  echo "== nvcc ($cuda_home)"; "$cuda_home/bin/nvcc" --version 2>&1 | tail -2
  echo "== cmake"; cmake --version 2>&1 | head -1
  echo "== c++"; c++ --version 2>&1 | head -1
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
have_gpu=0
nvidia-smi -L >/dev/null 2>&1 && have_gpu=1
((have_gpu)) || say "no GPU answered nvidia-smi: the NCCL tests will skip and the sweep has nothing to measure"

# NCCL: NCCL_HOME/NCCL_ROOT, the CUDA toolkit, then the nvidia-nccl Python wheel.
nccl_root=""
nccl_lib=""
python_nccl=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null || true)
for candidate in "${NCCL_HOME:-}" "${NCCL_ROOT:-}" "$cuda_home" "$python_nccl" /usr; do
  [[ -n "$candidate" && -f "$candidate/include/nccl.h" ]] || continue
  nccl_lib=$(find "$candidate"/lib64 "$candidate"/lib "$candidate"/lib/x86_64-linux-gnu \
    -maxdepth 1 -name 'libnccl.so*' 2>/dev/null | sort | head -1)
  if [[ -n "$nccl_lib" ]]; then
    nccl_root=$candidate
    break
  fi
done
if [[ -z "$nccl_root" ]]; then
  say "NCCL not found (looked in NCCL_HOME, NCCL_ROOT, $cuda_home, the nvidia-nccl wheel, /usr)"
  not_run+=("meshtrain nccl_tests and the NCCL sweep: no NCCL on this machine")
else
  say "NCCL: $nccl_lib (headers in $nccl_root/include)"
fi

# MPI: on PATH, or an Open MPI prefix carried in the working tree.
have_mpi=0
if command -v mpicc >/dev/null 2>&1; then
  have_mpi=1
  say "MPI: $(command -v mpicc)"
elif [[ -x "$repo/third_party/openmpi/bin/mpicc" ]]; then
  export OPAL_PREFIX=$repo/third_party/openmpi
  export PATH=$OPAL_PREFIX/bin:$PATH
  export LD_LIBRARY_PATH=$OPAL_PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  have_mpi=1
  say "MPI: carried Open MPI at third_party/openmpi"
else
  say "no MPI: mpicc is not on PATH and no Open MPI prefix was carried at third_party/openmpi"
  not_run+=("meshtrain build and nccl_tests: no MPI on this machine (carry an Open MPI prefix at third_party/openmpi)")
fi

# --- 2. meshtrain with CUDA and NCCL, and its NCCL tests on one rank --------------------------
meshtrain_checks() {
  local limit missing
  limit=$(step_limit 90 $sweep_reserve_s)
  ((limit)) || { not_run+=("meshtrain configure: out of time"); return; }
  say "configuring meshtrain with CUDA and NCCL (limit ${limit}s)"
  if ! timeout "$limit" cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release \
    -DMESHTRAIN_ENABLE_CUDA=ON -DMESHTRAIN_ENABLE_NCCL=ON -DMESHTRAIN_BUILD_TESTS=ON \
    -DMESHTRAIN_BUILD_BENCHMARKS=OFF -DCUDAToolkit_ROOT="$cuda_home" -DNCCL_ROOT="$nccl_root" \
    >"$out/configure.log" 2>&1; then
    missing=$(grep -oiE 'provided by "[A-Za-z0-9_]+"|could not find [A-Za-z0-9_]+' \
      "$out/configure.log" | sort -u | tr '\n' ' ')
    say "meshtrain could not be configured here: ${missing:-see configure.log}"
    tail -15 "$out/configure.log"
    not_run+=("meshtrain build and nccl_tests: configure failed (${missing:-see configure.log}); Kokkos, Kokkos Kernels, GTest and CLI11 come from Debian packages this image may lack")
    return
  fi
  limit=$(step_limit 150 $sweep_reserve_s)
  ((limit)) || { not_run+=("meshtrain build: out of time"); return; }
  say "building nccl_tests (limit ${limit}s)"
  if ! timeout "$limit" cmake --build "$build" -j "$(nproc)" --target nccl_tests \
    >"$out/build.log" 2>&1; then
    say "building nccl_tests FAILED or timed out; the end of its log:"
    tail -30 "$out/build.log"
    failed+=("meshtrain build (see build.log)")
    return
  fi
  local root_flag=()
  [[ $(id -u) == 0 ]] && root_flag=(--allow-run-as-root)
  limit=$(step_limit 90 $sweep_reserve_s)
  ((limit)) || { not_run+=("nccl_tests: out of time"); return; }
  say "running nccl_tests on one rank (limit ${limit}s)"
  if OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp timeout "$limit" \
    mpiexec -n 1 "${root_flag[@]}" "$build/bin/nccl_tests" >"$out/nccl_tests.log" 2>&1; then
    say "nccl_tests: passed ($(grep -c '^\[       OK' "$out/nccl_tests.log") OK, $(grep -cE '^\[  SKIPPED \] .*\([0-9]+ ms\)$' "$out/nccl_tests.log") skipped)"
  else
    say "nccl_tests: FAILED or timed out (exit $?); the end of its log:"
    tail -30 "$out/nccl_tests.log"
    failed+=("nccl_tests (see nccl_tests.log)")
  fi
  not_run+=("nccl_tests at 2 ranks: needs one GPU per rank")
}
if ((have_mpi)) && [[ -n "$nccl_root" ]]; then
  meshtrain_checks
fi

# --- 3. The standalone NCCL all-reduce sweep ------------------------------------------------
if [[ -n "$nccl_root" ]]; then
  compiler=$(command -v g++ || command -v c++ || true)
  sweep=$build/nccl_sweep
  if [[ -z "$compiler" ]]; then
    say "no C++ compiler (g++/c++) for the sweep"
    not_run+=("NCCL sweep: no host C++ compiler")
  elif "$compiler" -std=c++17 -O2 -I"$cuda_home/include" -I"$nccl_root/include" \
    tests/device/nccl_sweep.cpp "$nccl_lib" -L"$cuda_home/lib64" -lcudart \
    -Wl,-rpath,"$(dirname "$nccl_lib")" -Wl,-rpath,"$cuda_home/lib64" -o "$sweep" \
    >"$build/sweep_build.log" 2>&1; then
    limit=$(step_limit 120)
    ((limit)) || limit=15  # the sweep runs regardless; its reserve keeps this rare
    say "running the all-reduce sweep, 8 B to 256 MiB (limit ${limit}s)"
    if timeout "$limit" "$sweep" --min-bytes 8 --max-bytes $((256 << 20)) --warmup 5 --iters 20 \
      --json "$out/nccl_sweep.json" 2>&1 | tee "$out/nccl_sweep.txt"; then
      ((have_gpu)) || not_run+=("NCCL sweep: no GPU to measure")
    else
      say "the sweep FAILED or timed out"
      failed+=("NCCL sweep")
    fi
  else
    say "building the sweep FAILED:"
    cat "$build/sweep_build.log"
    failed+=("NCCL sweep build")
  fi
fi

# --- 4. What could not run ------------------------------------------------------------------
say "finished in ${SECONDS}s"
for item in "${not_run[@]}"; do say "NOT RUN: $item"; done
for item in "${failed[@]}"; do say "FAILED: $item"; done
((${#failed[@]} == 0))
