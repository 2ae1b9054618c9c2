#!/usr/bin/env bash
# A real one-node Slurm cluster for launch/slurm.sbatch.
#
#   tests/launch/slurm_test.sh build/bin/distributed_pde
#
# Installs slurm-wlm and munge when missing (apt), starts munged, slurmctld and slurmd with
# every file (key, socket, config, state, spool, logs, pid files) in a temporary directory and
# ports of their own, submits launch/slurm.sbatch with `sbatch --wait` (2 ranks on 1 node, no
# GPU) once with srun --mpi=pmix and once with mpirun inside the allocation, and requires the
# job to succeed with the same "Final loss:" as `launch/mpirun.sh -np 2` outside Slurm; then
# checks that SIGUSR1 for the batch process (what `--signal=B:USR1@120` sends) reaches and
# ends the ranks with both launchers; and, on 4 fake GPUs (Slurm GRES backed by device files
# in the temporary directory), that the script's own #SBATCH defaults give 4 ranks that each
# see all 4 of the node's GPUs (MESHTRAIN_SLURM_FAKE_GPUS=0 leaves GRES out altogether).
# The EXIT trap stops exactly the processes this script started (pid files, then any process
# still carrying this run's marker variable) and removes the directory, on failure too.
#
# Needs root (daemons, apt). Not root: prints why and exits 77 (CTest SKIP_RETURN_CODE).
# MESHTRAIN_TEST_KEEP=1 keeps the directory (logs) after a failure.
set -euo pipefail

say() { echo "slurm_test: $*"; }
fail() { echo "slurm_test: FAIL: $*" >&2; exit 1; }

if [ $# -lt 1 ]; then echo "usage: $0 PATH/TO/distributed_pde" >&2; exit 2; fi
if [ "$(id -u)" != "0" ]; then
  say "SKIP: needs root (starts munged, slurmctld and slurmd; may apt-get install slurm-wlm munge)"
  exit 77
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
binary=$(readlink -f "$1")
[ -x "$binary" ] || fail "binary '$1' is not an executable file"
sbatch_script="$root/launch/slurm.sbatch"
[ -f "$sbatch_script" ] || fail "no $sbatch_script"
start_time=$SECONDS

# --- packages ---------------------------------------------------------------------------
need=()
for p in slurm-wlm munge; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Wait for another apt/dpkg (other builds on the machine) instead of failing at once.
  apt-get -o DPkg::Lock::Timeout=300 update -qq || fail "apt-get update failed"
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" \
    >/dev/null || fail "apt-get install ${need[*]} failed"
fi
for cmd in munged munge slurmctld slurmd sbatch sinfo scontrol scancel srun mpirun; do
  command -v "$cmd" >/dev/null || fail "'$cmd' not found after installing slurm-wlm and munge"
done

# --- cleanup ------------------------------------------------------------------------------
tmp=$(mktemp -d /tmp/meshtrain-slurm.XXXXXX)
chmod 755 "$tmp"
marker="MESHTRAIN_SLURM_TEST_RUN=$tmp"   # in the environment of everything we start
conf="$tmp/slurm.conf"
ok=0

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
stop_pidfile() {  # stop_pidfile FILE: TERM, wait up to 5 s, then KILL
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f" 2>/dev/null) || return 0
  pid_alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do pid_alive "$pid" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
marked_pids() {  # processes whose environment carries this run's marker
  local d p
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    grep -qzx -- "$marker" "$d/environ" 2>/dev/null && echo "$p"
  done
  return 0
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ "$ok" != "1" ] && [ -d "$tmp" ]; then
    for f in "$tmp"/slurmctld.log "$tmp"/slurmd.log "$tmp"/munge/munged.log "$tmp"/job-*.out; do
      [ -f "$f" ] && { echo "----- tail of $f"; tail -n 25 "$f"; }
    done >&2
  fi
  if [ -s "$tmp/slurmctld.pid" ] && pid_alive "$(cat "$tmp/slurmctld.pid")"; then
    SLURM_CONF=$conf timeout 10 scancel --full --quiet --user=root >/dev/null 2>&1
  fi
  stop_pidfile "$tmp/slurmd.pid"
  stop_pidfile "$tmp/slurmctld.pid"
  # Job steps (slurmstepd and the ranks) are not children of slurmd once started.
  local left
  left=$(marked_pids)
  if [ -n "$left" ]; then
    kill -TERM $left 2>/dev/null; sleep 1
    left=$(marked_pids); [ -n "$left" ] && kill -KILL $left 2>/dev/null
  fi
  stop_pidfile "$tmp/munge/munged.pid"
  if [ "${MESHTRAIN_TEST_KEEP:-0}" = "1" ] && [ "$ok" != "1" ]; then
    echo "slurm_test: kept $tmp" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the reference, outside Slurm ---------------------------------------------------------
field() { sed -n "s/^$1[[:space:]]*//p" "$2" | head -n 1; }
timeout 120 "$root/launch/mpirun.sh" -np 2 "$binary" >"$tmp/reference.out" 2>&1 \
  || { cat "$tmp/reference.out" >&2; fail "reference run launch/mpirun.sh -np 2 failed"; }
ref_loss=$(field "Final loss:" "$tmp/reference.out")
[ -n "$ref_loss" ] || { cat "$tmp/reference.out" >&2; fail "no 'Final loss:' in the reference run"; }
say "reference (launch/mpirun.sh -np 2): Final loss $ref_loss"

# --- munge --------------------------------------------------------------------------------
# munged runs as the munge user (as the Debian service does); it insists that its key
# directory is private and its socket directory world-searchable, both owned by it.
mkdir -p "$tmp/munge/private"
chown munge:munge "$tmp/munge" "$tmp/munge/private"
chmod 755 "$tmp/munge"; chmod 700 "$tmp/munge/private"
dd if=/dev/urandom of="$tmp/munge/private/munge.key" bs=1024 count=1 status=none
chown munge:munge "$tmp/munge/private/munge.key"; chmod 400 "$tmp/munge/private/munge.key"
socket="$tmp/munge/munge.socket"
env "$marker" runuser -u munge -- munged --socket="$socket" \
  --key-file="$tmp/munge/private/munge.key" --pid-file="$tmp/munge/munged.pid" \
  --log-file="$tmp/munge/munged.log" --seed-file="$tmp/munge/private/munged.seed" \
  || fail "munged did not start"
munge -S "$socket" -n | unmunge -S "$socket" >/dev/null || fail "munge credential round trip failed"

# --- slurm.conf ---------------------------------------------------------------------------
# Ports below the kernel's ephemeral range: a port inside it can be taken at any moment by an
# outgoing connection (mpirun, munge, sinfo), and slurmd then fails with "Address already in
# use" although nothing listens there (CI saw it once). A port pair is free when no socket in
# any state uses either port; if a daemon still loses the race, the cluster restarts on
# another pair (start_cluster below).
read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || ephemeral_low=32768
[ "$ephemeral_low" -gt 12000 ] || ephemeral_low=32768
port_used() { ss -Htan "( sport = :$1 )" 2>/dev/null | grep -q .; }
pick_ports() {
  ctld_port=""
  for _ in $(seq 100); do
    p=$(( 10000 + (RANDOM * 32768 + RANDOM) % (ephemeral_low - 10002) ))
    if ! port_used "$p" && ! port_used $((p + 1)); then ctld_port=$p; break; fi
  done
  [ -n "$ctld_port" ] || fail "no free port pair found below $ephemeral_low"
  slurmd_port=$((ctld_port + 1))
}
host=$(hostname -s)
cpus=$(nproc)
[ "$cpus" -ge 2 ] || cpus=2   # two ranks; SlurmdParameters=config_overrides lets 1 core run them
mkdir -p "$tmp/state" "$tmp/spool"
fake_gpus=${MESHTRAIN_SLURM_FAKE_GPUS:-1}
gres_types="" node_gres=""
if [ "$fake_gpus" = "1" ]; then
  # 4 GPUs as Slurm sees them: a GRES backed by device files. Nothing opens them; Slurm only
  # needs their numbers to set CUDA_VISIBLE_DEVICES. The node claims 32 CPUs as well (the
  # script's default 4 ranks x 8 CPUs); config_overrides makes slurmd believe the config.
  mkdir -p "$tmp/dev"
  for i in 0 1 2 3; do
    mknod "$tmp/dev/nvidia$i" c 195 "$i" || fail "mknod $tmp/dev/nvidia$i failed"
  done
  echo "Name=gpu File=$tmp/dev/nvidia[0-3]" >"$tmp/gres.conf"
  gres_types="GresTypes=gpu"; node_gres="Gres=gpu:4"
  [ "$cpus" -ge 32 ] || cpus=32
fi
write_conf() {
cat >"$conf" <<EOF
# meshtrain test cluster, made by tests/launch/slurm_test.sh
ClusterName=meshtraintest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
KillWait=5
$gres_types
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=4000 $node_gres State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}
export SLURM_CONF=$conf

start_cluster() {  # 0: node idle; 1: a daemon could not bind its port; fails otherwise
  pick_ports
  write_conf
  rm -f "$tmp/slurmctld.log" "$tmp/slurmd.log"
  env "$marker" slurmctld -f "$conf" -c || fail "slurmctld did not start"
  env "$marker" slurmd -f "$conf" || fail "slurmd did not start"
  state=""
  for _ in $(seq 120); do   # at most 60 s
    state=$(timeout 5 sinfo -h -N -n "$host" -o %t 2>/dev/null | head -n 1) || true
    [ "$state" = "idle" ] && return 0
    if grep -qs "Address already in use" "$tmp/slurmctld.log" "$tmp/slurmd.log"; then
      say "ports $ctld_port/$slurmd_port were taken meanwhile; restarting on another pair"
      stop_pidfile "$tmp/slurmd.pid"; stop_pidfile "$tmp/slurmctld.pid"
      rm -rf "$tmp/state" "$tmp/spool"; mkdir -p "$tmp/state" "$tmp/spool"
      return 1
    fi
    sleep 0.5
  done
  fail "node $host not idle after 60 s (sinfo says '${state:-nothing}')"
}
started=0
for _ in 1 2 3; do start_cluster && { started=1; break; }; done
[ "$started" = "1" ] || fail "slurmctld/slurmd could not bind a port pair in 3 tries"
say "cluster up in $((SECONDS - start_time)) s: node $host idle, ports $ctld_port/$slurmd_port"

# --- the jobs -----------------------------------------------------------------------------
run_job() {  # run_job LAUNCHER
  local launcher=$1 out="$tmp/job-$1.out" rc=0 t0=$SECONDS loss devices
  # Command-line options override the script's #SBATCH lines: 2 ranks on 1 node, no GPU
  # (as on a CPU-only cluster).
  ( cd "$root" && env "$marker" MESHTRAIN_PROGRAM="$binary" MESHTRAIN_LAUNCHER="$launcher" \
      timeout 300 sbatch --wait --quiet --nodes=1 --ntasks=2 --ntasks-per-node=2 \
        --cpus-per-task=1 --gpus-per-node=0 --time=5 --job-name="meshtrain-$launcher" \
        --output="$out" "$sbatch_script" ) || rc=$?
  [ "$rc" = "124" ] && fail "[$launcher] sbatch --wait did not return within 300 s"
  [ "$rc" = "0" ] || { [ -f "$out" ] && cat "$out" >&2; fail "[$launcher] job failed (sbatch --wait exit $rc)"; }
  loss=$(field "Final loss:" "$out")
  devices=$(field "Devices used:" "$out")
  [ "$devices" = "2" ] || { cat "$out" >&2; fail "[$launcher] 'Devices used: ${devices}', expected 2"; }
  [ "$loss" = "$ref_loss" ] || { cat "$out" >&2; fail "[$launcher] Final loss '$loss' differs from the reference '$ref_loss'"; }
  say "[$launcher] ok in $((SECONDS - t0)) s: Devices used 2, Final loss $loss"
}
# A signal for the batch process (what `#SBATCH --signal=B:USR1@120`, preemption or
# `scancel --batch` deliver) must reach the ranks: the script execs the launcher, which
# forwards SIGUSR1. distributed_pde does not catch it, so the ranks die and the job fails.
rank_pids() {  # this run's ranks still alive
  local p
  for p in $(marked_pids); do
    [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$binary" ] && echo "$p"
  done
  return 0
}
signal_job() {  # signal_job LAUNCHER
  local launcher=$1 out="$tmp/job-$1-signal.out" job state="" t0 t_sig left
  job=$(cd "$root" && env "$marker" MESHTRAIN_PROGRAM="$binary" MESHTRAIN_LAUNCHER="$launcher" \
    sbatch --parsable --nodes=1 --ntasks=2 --ntasks-per-node=2 --cpus-per-task=1 \
      --gpus-per-node=0 --time=5 --job-name="meshtrain-$launcher-signal" --output="$out" \
      "$sbatch_script" --epochs 200000) || fail "[$launcher] sbatch of the long run failed"
  job=${job%%;*}
  t0=$SECONDS
  until grep -q '^Epochs:' "$out" 2>/dev/null; do
    [ $((SECONDS - t0)) -lt 60 ] || fail "[$launcher] long run $job did not start training in 60 s"
    sleep 0.2
  done
  sleep 1
  scancel --batch --signal=USR1 "$job" || fail "[$launcher] scancel --batch --signal=USR1 $job failed"
  t_sig=$SECONDS
  while :; do
    state=$(scontrol show job "$job" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
    case "$state" in RUNNING|PENDING|CONFIGURING|COMPLETING|"") ;; *) break ;; esac
    if [ "$state" = "COMPLETING" ] || [ -z "$state" ]; then [ -n "$(rank_pids)" ] || break; fi
    [ $((SECONDS - t_sig)) -lt 30 ] || { cat "$out" >&2; fail "[$launcher] job $job still $state 30 s after SIGUSR1"; }
    sleep 0.2
  done
  for _ in $(seq 50); do left=$(rank_pids); [ -z "$left" ] && break; sleep 0.2; done
  [ -z "$left" ] || fail "[$launcher] ranks still running after the job ended: $left"
  ! grep -q '^RESULTS' "$out" || { cat "$out" >&2; fail "[$launcher] the run finished despite SIGUSR1"; }
  case "$state" in COMPLETED) cat "$out" >&2; fail "[$launcher] job $job COMPLETED after SIGUSR1" ;; esac
  say "[$launcher] SIGUSR1 to the batch process ended the ranks in $((SECONDS - t_sig)) s (job ${state:-gone})"
}

gpu_job() {  # the script's #SBATCH defaults (4 ranks, 4 GPUs, 8 CPUs each) on the fake GPUs
  local out="$tmp/job-gpu.out" probe="$tmp/gpu-probe" rc=0 t0=$SECONDS lines
  cat >"$probe" <<'PROBE'
#!/bin/sh
echo "gpu-probe rank=$SLURM_PROCID local=$SLURM_LOCALID cvd=${CUDA_VISIBLE_DEVICES-unset} threads=$OMP_NUM_THREADS/$OPENBLAS_NUM_THREADS"
PROBE
  chmod 755 "$probe"
  ( cd "$root" && env "$marker" MESHTRAIN_PROGRAM="$probe" MESHTRAIN_SRUN_MPI=none \
      timeout 300 sbatch --wait --quiet --output="$out" "$sbatch_script" ) || rc=$?
  [ "$rc" = "0" ] || { [ -f "$out" ] && cat "$out" >&2; fail "[gpu] job with the script's defaults failed (exit $rc)"; }
  lines=$(grep '^gpu-probe' "$out" | sort)
  local expected="gpu-probe rank=0 local=0 cvd=0,1,2,3 threads=1/1
gpu-probe rank=1 local=1 cvd=0,1,2,3 threads=1/1
gpu-probe rank=2 local=2 cvd=0,1,2,3 threads=1/1
gpu-probe rank=3 local=3 cvd=0,1,2,3 threads=1/1"
  [ "$lines" = "$expected" ] || { cat "$out" >&2; fail "[gpu] expected 4 ranks each seeing GPUs 0,1,2,3, got:
$lines"; }
  ! grep -q warning "$out" || { cat "$out" >&2; fail "[gpu] the script warned with its own defaults"; }
  say "[gpu] ok in $((SECONDS - t0)) s: the script's defaults give 4 ranks, each seeing GPUs 0,1,2,3"
}

# meshtrain through the script: the first submission starts fresh (the script adds --resume
# auto and there is no checkpoint yet), the second, for more epochs, continues the first.
meshtrain_job() {
  local meshtrain run="$tmp/meshtrain-run" out rc n t0=$SECONDS
  meshtrain="$(dirname "$binary")/meshtrain"
  [ -x "$meshtrain" ] || fail "no meshtrain beside $binary"
  mkdir -p "$run"
  printf '[training]\nnum_epochs = 2\n\n[data]\nsynthetic = "reference"\n\n[checkpoint]\ndir = "ckpt"\n' \
    >"$run/run.toml"
  for n in 1 2; do
    out="$run/job-$n.out" rc=0
    ( cd "$root" && env "$marker" MESHTRAIN_PROGRAM="$meshtrain" MESHTRAIN_LAUNCHER=srun \
        timeout 300 sbatch --wait --quiet --nodes=1 --ntasks=2 --ntasks-per-node=2 \
          --cpus-per-task=1 --gpus-per-node=0 --time=5 --job-name="meshtrain-train-$n" \
          --output="$out" "$sbatch_script" train --config "$run/run.toml" --progress lines \
          --set "training.num_epochs=$((2 * n))" ) || rc=$?
    [ "$rc" = "0" ] || { [ -f "$out" ] && cat "$out" >&2; fail "[meshtrain] submission $n failed (sbatch --wait exit $rc)"; }
  done
  grep -q -- "train --config $run/run.toml .*--resume auto" "$run/job-1.out" \
    || { cat "$run/job-1.out" >&2; fail "[meshtrain] the script did not add --resume auto"; }
  ! grep -q '^Resumed:' "$run/job-1.out" || { cat "$run/job-1.out" >&2; fail "[meshtrain] the first submission resumed"; }
  grep -q '^Resumed: .*ckpt-16\.safetensors at epoch 3, batch 0' "$run/job-2.out" \
    || { cat "$run/job-2.out" >&2; fail "[meshtrain] the second submission did not continue the first"; }
  say "[meshtrain] ok in $((SECONDS - t0)) s: submitted twice, the first started fresh, the second resumed"
}

run_job srun
run_job mpirun
meshtrain_job
signal_job srun
signal_job mpirun
if [ "$fake_gpus" = "1" ]; then gpu_job; fi

ok=1
say "PASS in $((SECONDS - start_time)) s"
