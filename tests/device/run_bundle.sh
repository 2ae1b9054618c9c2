#!/usr/bin/env bash
# The GPU machine's one command, run from the repository root there:
#
#   bash tests/device/run_bundle.sh             # results in ./device-out (or $OUT)
#
# Needs .devbundle/ from tests/device/bundle.sh (carry .devbundle/bundle.tar.xz: it is unpacked
# in place on first use) and, on the machine, CUDA 13 and python3 with the nvidia-nccl wheel.
# No Open MPI, Kokkos, OpenBLAS or Google Benchmark there: the bundle carries them, and
# Open MPI runs relocated (OPAL_PREFIX). The environment is set for this script's processes
# only; nothing outside the repository and $OUT is written, except Open MPI's and PMIx's
# session directories under /tmp.
#
# Steps, each under `timeout`, each going on after a failure, within about $BUDGET_S (330) s:
#   env        -> env.txt: GPU, driver, CPUs, memory, /dev/shm, which NCCL/cudart/MPI resolve
#   mpi_smoke  mpiexec -n 2 bin/mpi_empty (if MPI cannot launch, the MPI steps are skipped)
#   With the CUDA build in the bundle (bundle.sh --cuda build-cuda), first, on the GPU, one rank:
#   gpu_unit_tests, gpu_mpi_tests, gpu_io_tests, gpu_run_config_tests, gpu_darcy_tests,
#   gpu_checkpoint_state_tests, gpu_nccl_tests (GoogleTest)        -> gpu_tests.log
#   gpu_ref_data, gpu_ref_fsdp, gpu_ref_tensor  meshtrain train --config examples/reference.toml
#              --comm nccl under each strategy (tensor: mesh (1, 1) ('data', 'model')), each
#              followed by gpu_cmp_<strategy>: tests/device/compare_losses.py against the CPU
#              run's losses that bundle.sh stored (expected/), within 1e-5 relative
#                                                           -> gpu_ref_<strategy>.jsonl, gpu_reference.log
#   gpu_bench_step  bench_step: the reference step, the big-MLP step, sgemm peak, and the CUDA
#              graph replay of the reference step where built (BM_StepGraph_*) -> bench.json
#   Then, as before (with the CUDA build, pde_nccl runs its distributed_pde):
#   nccl_tests mpiexec -n 1 bin/nccl_tests (GoogleTest)            -> nccl_tests.log
#   nccl_sweep bin/nccl_sweep, all-reduce 8 B..256 MiB, 1 GPU       -> nccl_sweep.json
#   pde_nccl   mpiexec -n 1 bin/distributed_pde --comm nccl (the trainer's NCCL path, a few
#              seconds; log appended to nccl_tests.log)
#   torch_peer benchmarks/mlp_torch.py on the GPU: PyTorch eager steps of the reference job
#              and the 4->1024x3->1 MLP at batch 1024 (Adam)       -> torch_peer.json
#   CPU benchmarks through launch/mpirun.sh (cores bound, one thread per rank), the GPU hidden
#   (CUDA_VISIBLE_DEVICES=""), in this order (most wanted first, the last get what is left):
#   bench_step_np2, bench_kernels_np2, scaling (benchmarks/scaling.py, ranks 1,2,4,8, the
#   4->1024x3->1 MLP, --repeat sized to the time left), bench_step_np1 (less the benchmarks
#   that only differ in communication), bench_step_np4.
# Files in $OUT (no subfolders): env.txt, summary.txt (each step's exit status and time, then
# the figures), nccl_tests.log, nccl_sweep.json, bench.json (every Google Benchmark JSON,
# keyed bench_step_np1/2/4 and bench_kernels_np2), scaling.json, run.log (all other output).
#
# GPU_DRY=1 checks this script's logic without a GPU: the GPU steps run the bundle's cuda/bin
# (make it from a Serial build with BUNDLE_CPU_AS_CUDA=1 bundle.sh build --cuda build) with
# --comm mpi instead of nccl.
# GPU_ONLY=1 stops after the GPU steps. It is the default when the bundle has the CUDA build:
# the CPU benchmarks would not fit in the GPU run's 5 minutes, and they need a CPU like the CI
# machine's anyway (the GPU machines seen so far expose no AVX to their VMs, so OpenBLAS runs
# its generic kernels there, about 17 GFLOP/s a core).
# ONLY=REGEX runs only the steps whose names match (e.g. ONLY='mpi_smoke|scaling_.*').
# SCALING_ARGS replaces the scaling driver's arguments, and SCALING_PROGRESS="thread poll"
# runs it once per progress mode (scaling_thread.json, scaling_poll.json) instead of once.
# QUICK=1 shrinks the CPU steps to seconds (benchmark filters, a small MLP, ranks 1,2) for a
# check of the bundle itself on a small machine. BUDGET_S overrides the total budget.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo" || exit 1
out=${OUT:-$repo/device-out}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1
budget_s=${BUDGET_S:-330}  # 290 with the CUDA build (below): the GPU run must stay under 5 minutes
quick=${QUICK:-0}
bundle=$repo/.devbundle
tmp=$(mktemp -d "${TMPDIR:-/tmp}/run_bundle.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
summary=$out/summary.txt
log=$out/run.log
# Results of an earlier run would read as this run's: clear the names this script writes.
rm -f "$out"/{env.txt,summary.txt,nccl_tests.log,nccl_sweep.json,bench.json,scaling.json,scaling_*.json,run.log,torch_peer.json,gpu_tests.log,gpu_reference.log,gpu_ref_*.jsonl}
: >"$summary"
: >"$log"
: >"$out/nccl_tests.log"
say() { echo "[run_bundle] $*" | tee -a "$summary"; }

# --- the bundle ---------------------------------------------------------------------------------
if [[ ! -f $bundle/.complete ]]; then
  if [[ -f $bundle/bundle.tar.xz ]]; then
    say "unpacking .devbundle/bundle.tar.xz"
    if ! { tar -C "$bundle" -xJf "$bundle/bundle.tar.xz" 2>>"$log" ||
      python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
        "$bundle/bundle.tar.xz" "$bundle" 2>>"$log"; }; then
      say "FAILED to unpack the bundle (see run.log)"
      exit 1
    fi
    touch "$bundle/.complete"
  else
    say "no .devbundle/: run tests/device/bundle.sh where the build is, and carry .devbundle/bundle.tar.xz"
    exit 1
  fi
fi
say "bundle: $(head -2 "$bundle/BUNDLE_INFO" 2>/dev/null | tr '\n' ' ')"

# --- environment: for this script's processes only ----------------------------------------------
cuda=${CUDA_HOME:-/usr/local/cuda}
triplet=x86_64-linux-gnu
export OPAL_PREFIX=$bundle/ompi/usr
olib=$OPAL_PREFIX/lib/$triplet
export PMIX_PREFIX=$olib/pmix2
export PMIX_MCA_mca_base_component_path=$olib/pmix2/lib/pmix
export PMIX_MCA_pcompress_base_silence_warning=1  # its zlib plugin needs a newer PMIx symbol
export HWLOC_PLUGINS_PATH=$bundle/lib/hwloc  # empty: no plugins from the system's hwloc

# A library in python3's nvidia-* wheels (PyTorch's): the folder holding SONAME, if any.
find_wheel_lib() {
  python3 - "$1" <<'EOF' 2>/dev/null
import glob, os, site, sys
dirs = []
for f in (site.getsitepackages, site.getusersitepackages):
    try:
        r = f()
        dirs += [r] if isinstance(r, str) else list(r)
    except Exception:
        pass
cands = []
try:
    import nvidia.nccl as m
    cands += [os.path.join(p, "lib") for p in list(m.__path__)]
except Exception:
    pass
for d in dirs + [p for p in sys.path if p]:
    cands += glob.glob(os.path.join(d, "nvidia", "*", "lib"))
    cands += glob.glob(os.path.join(d, "nvidia", "*", "*", "lib"))
for c in cands:
    if os.path.isfile(os.path.join(c, sys.argv[1])):
        print(os.path.realpath(c))
        break
EOF
}

# NCCL: NCCL_LIB_DIR, else the nvidia-nccl wheel of python3, else CUDA's or the system's.
nccl_dir=${NCCL_LIB_DIR:-}
[[ -z $nccl_dir ]] && nccl_dir=$(find_wheel_lib libnccl.so.2)
if [[ -z $nccl_dir ]]; then
  for d in "$cuda/lib64" "$cuda/lib" /usr/lib/$triplet; do
    [[ -f $d/libnccl.so.2 ]] && { nccl_dir=$d; break; }
  done
fi
if [[ -z $nccl_dir ]]; then
  nccl_dir=$(timeout 20 find / -xdev -name libnccl.so.2 -path '*nvidia*' 2>/dev/null | head -1)
  nccl_dir=${nccl_dir:+$(dirname "$nccl_dir")}
fi
[[ -n $nccl_dir ]] && say "NCCL: $nccl_dir/libnccl.so.2" || say "NCCL: libnccl.so.2 not found"

# The CUDA build's cuBLAS and cuFFT are not carried: CUDA's lib64 has them; where it does not,
# the nvidia-* wheels of python3 (PyTorch's) may, and their folders join the path after it.
cuda_extra=
if [[ -d $bundle/cuda/bin ]]; then
  for so in libcublas.so.13 libcublasLt.so.13 libcufft.so.12; do
    [[ -f $cuda/lib64/$so || -f $cuda/lib/$so ]] && continue
    d=$(find_wheel_lib "$so")
    if [[ -n $d ]]; then
      [[ :$cuda_extra: == *:$d:* ]] || cuda_extra=$cuda_extra:$d
      say "$so: not in $cuda, using $d"
    else
      say "$so: found neither in $cuda nor in a python wheel: the CUDA build's binaries cannot start"
    fi
  done
fi

orig_ld_path=${LD_LIBRARY_PATH:-}  # for python3 calls that need nothing of the bundle
export PATH=$OPAL_PREFIX/bin:$bundle/bin:$PATH
export LD_LIBRARY_PATH=$bundle/lib:$olib:$olib/pmix2/lib${nccl_dir:+:$nccl_dir}:$cuda/lib64:$cuda/lib$cuda_extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp
# What Debian's /etc/openmpi/openmpi-mca-params.conf says (that file is not relocated).
export OMPI_MCA_btl_base_warn_component_unused=0 OMPI_MCA_osc=^pt2pt
export OMPI_MCA_odls_base_sigkill_timeout=0
# Not exported here: nproc obeys OMP_NUM_THREADS, and launch/mpirun.sh and scaling.py count the
# cores with nproc. The ranks get OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 from launch/mpirun.sh.
unset OMP_NUM_THREADS OMP_THREAD_LIMIT OPENBLAS_NUM_THREADS

# vader's single-copy path is process_vm_readv (CMA); containers often forbid it, and then
# large messages fail. Try it; without it vader copies through shared memory.
cma=$(timeout 10 python3 - <<'EOF' 2>&1
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.process_vm_readv.restype = ctypes.c_ssize_t
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
src = ctypes.create_string_buffer(b"cma-ok", 4096)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    libc.prctl(0x59616D61, ctypes.c_ulong(2**64 - 1), 0, 0, 0)  # PR_SET_PTRACER_ANY, as vader does
    os.write(w, b"x")
    time.sleep(5)
    os._exit(0)
os.read(r, 1)
dst = ctypes.create_string_buffer(4096)
loc = iovec(ctypes.cast(dst, ctypes.c_void_p), 4096)
rem = iovec(ctypes.cast(src, ctypes.c_void_p), 4096)
n = libc.process_vm_readv(pid, ctypes.byref(loc), 1, ctypes.byref(rem), 1, 0)
err = ctypes.get_errno()
os.kill(pid, 9)
os.waitpid(pid, 0)
print("ok" if n == 4096 and dst.value == b"cma-ok" else "failed: %s" % os.strerror(err))
EOF
)
if [[ $cma != ok ]]; then
  export OMPI_MCA_btl_vader_single_copy_mechanism=none
  say "process_vm_readv ${cma:-gave no answer}: vader's single copy turned off"
fi
# Docker's default /dev/shm is 64 MiB; vader's segments for 8 ranks need more.
shm_kb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
if [[ -z $shm_kb || $shm_kb -lt 1048576 ]]; then
  export OMPI_MCA_btl_vader_backing_directory=/tmp
  say "/dev/shm has ${shm_kb:-?} KiB free: vader's backing files go to /tmp"
fi

# launch/mpirun.sh gives each rank two cores where nproc allows, but Open MPI counts physical
# cores: with SMT (16 CPUs on 8 cores) 8 ranks of 2 cores cannot be placed. There, one core
# (both of its hardware threads) per rank.
phys_cores=$(python3 - <<'EOF' 2>/dev/null
import os
cores = set()
for c in os.sched_getaffinity(0):
    t = "/sys/devices/system/cpu/cpu%d/topology/" % c
    try:
        cores.add((open(t + "physical_package_id").read().strip(), open(t + "core_id").read().strip()))
    except OSError:
        cores.add(("cpu", c))
print(len(cores))
EOF
)
if [[ -n $phys_cores && $phys_cores -lt $(nproc) && -z ${MESHTRAIN_CORES_PER_RANK:-} ]]; then
  export MESHTRAIN_CORES_PER_RANK=1
  say "$(nproc) CPUs on $phys_cores cores (SMT): MESHTRAIN_CORES_PER_RANK=1 for launch/mpirun.sh"
fi

have_gpu=0
timeout 20 nvidia-smi -L >/dev/null 2>&1 && have_gpu=1

# --- budget -------------------------------------------------------------------------------------
left() { echo $((budget_s - SECONDS)); }
# step_limit WANTED [RESERVE]: seconds for a step, keeping RESERVE for later steps; 0 when
# fewer than 10 would be left (the caller then skips: `timeout 0` means no limit).
step_limit() {
  local limit=$(($(left) - ${2:-0}))
  ((limit > $1)) && limit=$1
  echo $((limit >= 10 ? limit : 0))
}
failed=()
skipped=()
# run_step NAME LIMIT LOGFILE CMD...: runs CMD under timeout, output appended to LOGFILE.
run_step() {
  local name=$1 limit=$2 file=$3 start rc status
  shift 3
  if [[ -n ${ONLY:-} && ! $name =~ ^(${ONLY})$ ]]; then
    printf '%-18s SKIPPED: not in ONLY=%s\n' "$name" "$ONLY" >>"$summary"
    return 98
  fi
  if ((limit == 0)); then
    skipped+=("$name (out of time)")
    printf '%-18s SKIPPED: out of time\n' "$name" >>"$summary"
    return 99
  fi
  echo "=== $name (limit ${limit}s, $(date -u +%T)): $*" >>"$file"
  echo "[run_bundle] $name (limit ${limit}s)"
  start=$SECONDS
  timeout -k 5 "$limit" "$@" >>"$file" 2>&1
  rc=$?
  status=ok
  ((rc == 124 || rc == 137)) && status=TIMEOUT
  ((rc != 0 && rc != 124 && rc != 137)) && status=FAILED
  [[ $status != ok ]] && failed+=("$name: $status (exit $rc)")
  printf '%-18s exit %-3d %-7s %4ds of %ds\n' "$name" "$rc" "$status" $((SECONDS - start)) "$limit" \
    | tee -a "$summary"
  echo "=== $name: exit $rc after $((SECONDS - start))s" >>"$file"
  return "$rc"
}
skip_step() { skipped+=("$1 ($2)"); printf '%-18s SKIPPED: %s\n' "$1" "$2" >>"$summary"; }

# CPU runs go through launch/mpirun.sh, as the README's figures and scaling.py do: a rank per
# core (two per rank, for the communication thread, where the cores allow), one OpenMP/OpenBLAS
# thread, ob1/vader. The GPU is hidden (CUDA_VISIBLE_DEVICES=""): these are CPU measurements,
# and several ranks on one GPU would take NCCL. cpu_launch NP sets the array mpx (timeout runs
# programs, not shell functions).
cpu_launch() {
  mpx=(env CUDA_VISIBLE_DEVICES= "$repo/launch/mpirun.sh" -np "$1" -x CUDA_VISIBLE_DEVICES)
}

# --- 1. the machine -----------------------------------------------------------------------------
{
  echo "== date $(date -u +%FT%TZ)  host $(hostname)  user $(id -un)  kernel $(uname -r)"
  grep -E '^(PRETTY_NAME)=' /etc/os-release 2>/dev/null
  echo "== nvidia-smi"
  timeout 20 nvidia-smi 2>&1
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1
  echo "== nproc $(nproc) on ${phys_cores:-?} physical cores (cpus allowed: $(grep Cpus_allowed_list /proc/self/status | cut -f2))"
  echo "== lscpu"
  lscpu 2>&1 | grep -E 'Model name|^CPU\(s\)|Thread|Core|Socket|NUMA|MHz|L[123]|Flags' | cut -c1-300
  echo "== memory"; free -g 2>&1
  echo "== df /dev/shm /tmp"; df -h /dev/shm /tmp 2>&1
  echo "== loadavg $(cat /proc/loadavg)"
  echo "== ptrace_scope $(cat /proc/sys/kernel/yama/ptrace_scope 2>/dev/null || echo n/a), CMA check: $cma"
  echo "== cuda $cuda: $("$cuda/bin/nvcc" --version 2>&1 | tail -1)"
  echo "== python3 $(python3 --version 2>&1); torch $(LD_LIBRARY_PATH=$orig_ld_path timeout 30 python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.nccl.version())' 2>&1 | tail -1)"
  echo "== nccl wheel $(python3 -c 'import importlib.metadata as m; print(m.version("nvidia-nccl-cu13"))' 2>&1 | tail -1); dir $nccl_dir"
  echo "== mpirun on PATH: $(type -a -P mpirun mpiexec 2>/dev/null | tr "\n" " ")"
  echo "== bundle"; cat "$bundle/BUNDLE_INFO" 2>&1
  echo "== bundled ompi_info: $(timeout 20 ompi_info --version 2>&1 | head -1)"
  timeout 20 ompi_info --path libdir --path pkglibdir --path pkgdatadir 2>&1
  echo "== libraries bin/nccl_tests resolves"
  ldd "$bundle/bin/nccl_tests" 2>&1
  if [[ -x $bundle/cuda/bin/meshtrain ]]; then
    echo "== libraries cuda/bin/meshtrain (the CUDA build) resolves"
    ldd "$bundle/cuda/bin/meshtrain" 2>&1
  fi
  echo "== environment"
  env | grep -E '^(OPAL_|PMIX_|OMPI_|HWLOC_|MESHTRAIN_|OMP_|OPENBLAS_|LD_LIBRARY_PATH|PATH|CUDA_|NCCL_)=' | sort
} >"$out/env.txt" 2>&1
say "$(grep -m1 'Model name' "$out/env.txt" | tr -s ' '), $(nproc) CPUs, GPU: $( ((have_gpu)) && nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo none)"

# --- 2. can MPI launch at all? ------------------------------------------------------------------
have_mpi=1
run_step mpi_smoke "$(step_limit 30)" "$log" mpiexec -n 2 --oversubscribe --bind-to none \
  "$bundle/bin/mpi_empty" || {
  have_mpi=0
  say "the bundled Open MPI cannot launch (see run.log): MPI steps skipped"
}

# --- 3a. the CUDA build on the GPU ---------------------------------------------------------------
cudabin=$bundle/cuda/bin
gpu_dry=${GPU_DRY:-0}
have_cuda_build=0
[[ -d $cudabin ]] && have_cuda_build=1
gpu_comm=nccl
((gpu_dry)) && gpu_comm=mpi
if ((have_cuda_build)); then
  : "${GPU_ONLY:=1}"
  [[ -n ${BUDGET_S:-} ]] || budget_s=290
  if ((have_mpi && (have_gpu || gpu_dry))); then
    : >"$out/gpu_tests.log"
    # One rank: every suite's tests that need more ranks skip themselves at one.
    for t in unit_tests mpi_tests io_tests run_config_tests darcy_tests checkpoint_state_tests nccl_tests; do
      [[ -x $cudabin/$t ]] || { skip_step "gpu_$t" "not in the bundle"; continue; }
      lim=30
      [[ $t == mpi_tests ]] && lim=90
      run_step "gpu_$t" "$(step_limit $lim 120)" "$out/gpu_tests.log" mpiexec -n 1 --bind-to none \
        "$cudabin/$t" --gtest_color=no
    done
    say "gpu tests: $(grep -c '^\[       OK' "$out/gpu_tests.log") OK, $(grep -cE '^\[  SKIPPED \] .*\([0-9]+ ms\)$' "$out/gpu_tests.log") skipped, $(grep -cE '^\[  FAILED  \] .*\([0-9]+ ms\)$' "$out/gpu_tests.log") failed"
    # The reference run under each strategy, its losses against the CPU's.
    : >"$out/gpu_reference.log"
    for strategy in data fsdp tensor; do
      extra=(--set "distributed.strategy='$strategy'")
      [[ $strategy == tensor ]] && extra=(--set "distributed.strategy='data'"
        --set 'distributed.mesh_shape=[1, 1]' --set 'distributed.mesh_axis_names=["data", "model"]')
      rm -rf "$tmp/ref_$strategy"
      if run_step "gpu_ref_$strategy" "$(step_limit 40 90)" "$out/gpu_reference.log" \
        mpiexec -n 1 --bind-to none "$cudabin/meshtrain" train --config "$repo/examples/reference.toml" \
        --set "distributed.comm=$gpu_comm" "${extra[@]}" --set "output.dir='$tmp/ref_$strategy'" \
        --set "checkpoint.dir='$tmp/ref_$strategy/ck'"; then
        cp "$tmp/ref_$strategy/metrics.jsonl" "$out/gpu_ref_$strategy.jsonl"
        run_step "gpu_cmp_$strategy" 20 "$out/gpu_reference.log" python3 \
          "$repo/tests/device/compare_losses.py" "$bundle/expected/$strategy.jsonl" \
          "$out/gpu_ref_$strategy.jsonl" --rtol 1e-5 --label "$strategy ($gpu_comm vs CPU)"
        say "$(grep "^compare_losses $strategy " "$out/gpu_reference.log" | tail -1)"
      fi
    done
    # The step benchmarks on the GPU: the reference step (target <= 30 us), the big MLP (target
    # >= 1.5x PyTorch eager's step, torch_peer below), sgemm peak, the CUDA graph replay.
    gpu_filter='--benchmark_filter=^BM_SgemmPeak|^BM_TrainStep_Reference|^BM_TrainStep_MLP1024x3/|^BM_StepGraph'
    ((quick)) && gpu_filter='--benchmark_filter=^BM_TrainStep_Reference|^BM_StepGraph'
    run_step gpu_bench_step "$(step_limit 60 60)" "$log" mpiexec -n 1 --bind-to none \
      "$cudabin/bench_step" "$gpu_filter" --benchmark_out="$tmp/gpu_bench_step_np1.json" \
      --benchmark_out_format=json
  else
    for s in gpu_tests gpu_ref gpu_bench_step; do skip_step "$s" "needs MPI and a GPU (or GPU_DRY=1)"; done
  fi
fi

# --- 3. GPU: nccl_tests, the sweep, the trainer's NCCL path -------------------------------------
if ((have_mpi)); then
  run_step nccl_tests "$(step_limit 60)" "$out/nccl_tests.log" mpiexec -n 1 --bind-to none \
    "$bundle/bin/nccl_tests" --gtest_color=no
  if [[ -s $out/nccl_tests.log ]]; then
    say "nccl_tests: $(grep -c '^\[       OK' "$out/nccl_tests.log") OK, $(grep -cE '^\[  SKIPPED \] .*\([0-9]+ ms\)$' "$out/nccl_tests.log") skipped, $(grep -cE '^\[  FAILED  \] .*\([0-9]+ ms\)$' "$out/nccl_tests.log") failed"
  fi
else
  skip_step nccl_tests "no MPI launch"
fi
run_step nccl_sweep "$(step_limit 60)" "$log" "$bundle/bin/nccl_sweep" --min-bytes 8 \
  --max-bytes $((256 << 20)) --warmup 5 --iters 20 --json "$out/nccl_sweep.json"
((have_gpu)) || say "no GPU answered nvidia-smi: nccl_tests skip their GPU cases, the sweep measures nothing"
pde_bin=$bundle/bin/distributed_pde  # Serial Kokkos: refuses --comm nccl, which is the check
((have_cuda_build)) && pde_bin=$cudabin/distributed_pde
if ((have_mpi && have_gpu)); then
  run_step pde_nccl "$(step_limit 30)" "$out/nccl_tests.log" mpiexec -n 1 --bind-to none \
    "$pde_bin" --comm nccl --hidden 1024 --layers 3 --batch-size 1024 \
    --samples 8192 --epochs 3
else
  skip_step pde_nccl "needs MPI and a GPU"
fi
# The PyTorch peer on the same GPU (the device image's PyTorch with CUDA): the reference job
# and the 4->1024x3->1 MLP at batch 1024, Adam, eager (benchmarks/mlp_torch.py).
if ((have_gpu)) && python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>>"$log"; then
  run_step torch_peer "$(step_limit 60)" "$log" python3 benchmarks/mlp_torch.py --device cuda \
    --steps 300 --json "$out/torch_peer.json"
else
  skip_step torch_peer "needs a GPU and PyTorch with CUDA"
fi

# --- 4. CPU benchmarks --------------------------------------------------------------------------
if [[ ${GPU_ONLY:-0} == 1 ]]; then
  have_mpi_cpu=0
  for s in bench_step_np2 bench_kernels_np2 scaling bench_step_np1 bench_step_np4; do
    skip_step "$s" "GPU_ONLY=1"
  done
else
  have_mpi_cpu=$have_mpi
fi
if ((quick)); then
  step_filter='--benchmark_filter=BM_SgemmPeak|BM_TrainStep_Reference'
  kernels_filter='--benchmark_filter=BM_SgemmPeak|BM_Adam/385|BM_AllreduceRawMpi/(4|2048|1048576)/'
  scaling_args=(--ranks 1,2 --mode strong --overlap on --hidden 64 --layers 1 --batch 64
    --steps 2 --epochs 1)
else
  step_filter='--benchmark_filter=.'
  kernels_filter='--benchmark_filter=.'
  scaling_args=(--ranks 1,2,4,8 --mode both --overlap both --hidden 1024 --layers 3
    --batch 1024 --steps 4 --epochs 3)
fi
bench_step() {  # bench_step NP LIMIT [FILTER]
  cpu_launch "$1"
  run_step "bench_step_np$1" "$2" "$log" "${mpx[@]}" "$bundle/bin/bench_step" \
    "${3:-$step_filter}" --benchmark_out="$tmp/bench_step_np$1.json" --benchmark_out_format=json
}
# One rank has nothing to communicate: the overlap/progress variants and the FSDP and tensor
# parallel strategies would repeat the plain step (about 13 s each on a 75 GFLOP/s core).
np1_filter=$step_filter
((quick)) || np1_filter='--benchmark_filter=^BM_SgemmPeak|^BM_TrainStep_Reference|^BM_TrainStep_MLP1024x3/|^BM_StepPhases'
if ((have_mpi_cpu)); then
  bench_step 2 "$(step_limit 90 120)"
  cpu_launch 2
  run_step bench_kernels_np2 "$(step_limit 50 80)" "$log" "${mpx[@]}" \
    "$bundle/bin/bench_kernels" "$kernels_filter" \
    --benchmark_out="$tmp/bench_kernels_np2.json" --benchmark_out_format=json
  # scaling.py: one failed or killed run loses its JSON, so the repeats follow the time left
  # (about 48 runs of 1-2 s each at --repeat 3), and each run has its own timeout.
  limit=$(step_limit "${SCALING_LIMIT:-130}" 30)
  repeat=1
  ((limit >= 110)) && repeat=3
  ((limit >= 75 && limit < 110)) && repeat=2
  ((quick)) && repeat=1
  [[ -n ${SCALING_ARGS:-} ]] && read -ra scaling_args <<<"$SCALING_ARGS"
  if [[ -n ${SCALING_PROGRESS:-} ]]; then
    read -ra modes <<<"$SCALING_PROGRESS"
    for mode in "${modes[@]}"; do
      run_step "scaling_$mode" "$(step_limit $((limit / ${#modes[@]})))" "$log" \
        env CUDA_VISIBLE_DEVICES= python3 benchmarks/scaling.py --progress "$mode" \
        --binary "$bundle/bin/distributed_pde" "${scaling_args[@]}" --repeat "$repeat" \
        --timeout 40 --json "$out/scaling_$mode.json" --png "$tmp/scaling_$mode.png"
    done
  else
    run_step scaling "$limit" "$log" env CUDA_VISIBLE_DEVICES= python3 benchmarks/scaling.py \
      --binary "$bundle/bin/distributed_pde" "${scaling_args[@]}" --repeat "$repeat" \
      --timeout 40 --json "$out/scaling.json" --png "$tmp/scaling.png"
  fi
  bench_step 1 "$(step_limit 50 30)" "$np1_filter"
  bench_step 4 "$(step_limit 60)"
elif ((!have_mpi)); then
  for s in bench_step_np2 bench_kernels_np2 scaling bench_step_np1 bench_step_np4; do
    skip_step "$s" "no MPI launch"
  done
fi

# --- 5. figures ---------------------------------------------------------------------------------
python3 - "$tmp" "$out" >>"$summary" 2>>"$log" <<'EOF'
import json, os, sys
tmp, out = sys.argv[1], sys.argv[2]
merged = {}
for name in ("gpu_bench_step_np1", "bench_step_np1", "bench_step_np2", "bench_step_np4",
             "bench_kernels_np2"):
    try:
        with open(os.path.join(tmp, name + ".json")) as f:
            merged[name] = json.load(f)
    except (OSError, ValueError):
        merged[name] = None
with open(os.path.join(out, "bench.json"), "w") as f:
    json.dump(merged, f, indent=1)
print("\n== figures (medians; Google Benchmark JSON in bench.json)")
keys = ("GFLOP/s", "fraction_of_peak", "samples/s", "algbw", "busbw", "allreduce_ms",
        "backward_ms", "forward_ms", "adam_ms")
for name, d in merged.items():
    if not d:
        if name != "gpu_bench_step_np1":
            print("%s: no results" % name)
        continue
    rows = [b for b in d["benchmarks"] if b.get("aggregate_name") == "median"
            or (b.get("run_type") == "iteration" and b.get("repetitions", 1) <= 1)]
    for b in rows:
        extra = " ".join("%s=%.4g" % (k, b[k]) for k in keys if k in b)
        print("%s %-58s %10.4g %-2s %s" % (name, b["run_name"][:58], b["real_time"],
                                          b["time_unit"], extra))
def ms(v):
    return "-" if v is None else "%.2f" % (v * 1e3)
try:
    with open(os.path.join(out, "scaling.json")) as f:
        s = json.load(f)
    st = s["metadata"]["settings"]
    print("\n== scaling (scaling.json): %s, median of %d, %d epochs x %d steps"
          % (s["metadata"]["model"], st["repeat"], st["epochs"], st["steps_per_epoch"]))
    print("mode   ranks batch  step_ms  samples/s  eff   comm_ms(off) exposed_ms(on) spread")
    for r in s["summary"]:
        print("%-6s %5d %5d %8s %10.0f %5.1f%% %12s %14s %5.1f%%%s"
              % (r["mode"], r["ranks"], r["global_batch"], ms(r["step_s"]), r["samples_per_s"],
                 100 * r["efficiency"], ms(r["comm_per_step_s"]),
                 ms(r["exposed_comm_per_step_s"]), 100 * r["step_spread"],
                 " oversubscribed" if r["oversubscribed"] else ""))
except (OSError, ValueError, KeyError, TypeError) as e:
    print("\n== scaling: no usable scaling.json (%s)" % e)
# The GPU targets: the reference step, and the big-MLP step against PyTorch eager's.
def median_of(d, prefix):
    for b in (d or {}).get("benchmarks", []):
        if b["run_name"].startswith(prefix) and (b.get("aggregate_name") == "median"
                                                 or b.get("repetitions", 1) <= 1):
            scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[b["time_unit"]]
            return b["real_time"] * scale
    return None
torch_us = {}
try:
    with open(os.path.join(out, "torch_peer.json")) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                torch_us[r["job"]] = r["step_us_median"]
except (OSError, ValueError, KeyError):
    pass
gpu = merged.get("gpu_bench_step_np1")
if gpu or torch_us:
    print("\n== GPU step times, median (meshtrain bench_step at one rank; torch_peer.json)")
    for job, prefix, target in (("reference", "BM_TrainStep_Reference", "<= 30 us"),
                                ("big", "BM_TrainStep_MLP1024x3/", ">= 1.5x PyTorch eager")):
        mine, theirs = median_of(gpu, prefix), torch_us.get(job)
        ratio = "" if not (mine and theirs) else " speed-up over PyTorch %.2fx" % (theirs / mine)
        print("%-9s meshtrain %10s us  PyTorch eager %10s us%s  (target %s)"
              % (job, "-" if mine is None else "%.1f" % mine,
                 "-" if theirs is None else "%.1f" % theirs, ratio, target))
    for b in (gpu or {}).get("benchmarks", []):
        if b["run_name"].startswith("BM_StepGraph") and (b.get("aggregate_name") == "median"
                                                         or b.get("repetitions", 1) <= 1):
            print("%-40s %10.2f %s" % (b["run_name"][:40], b["real_time"], b["time_unit"]))
try:
    with open(os.path.join(out, "nccl_sweep.json")) as f:
        sw = json.load(f)
    print("\n== nccl_sweep (nccl_sweep.json): NCCL %s, CUDA runtime %s, %d x %s"
          % (sw["nccl_version"], sw["cuda_runtime_version"], sw["devices"], sw["device_name"]))
    for r in sw["results"]:
        print("%12d B %10.2f us algbw %8.2f GB/s busbw %8.2f GB/s wrong %d"
              % (r["size_bytes"], r["time_us"], r["algbw_gbps"], r["busbw_gbps"], r["wrong"]))
except (OSError, ValueError, KeyError, TypeError) as e:
    print("\n== nccl_sweep: no usable nccl_sweep.json (%s)" % e)
EOF

say "finished in ${SECONDS}s of a ${budget_s}s budget"
for item in "${skipped[@]}"; do say "SKIPPED: $item"; done
for item in "${failed[@]}"; do say "FAILED: $item"; done
echo "results in $out: $(ls "$out" | tr '\n' ' ')"
((${#failed[@]} == 0))
