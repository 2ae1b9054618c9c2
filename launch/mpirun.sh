#!/usr/bin/env bash
# mpirun with the settings meshtrain wants, then your arguments unchanged:
#   launch/mpirun.sh -np 4 build/bin/distributed_pde --epochs 20
#
# - one thread per rank (OPENBLAS_NUM_THREADS=1, OMP_NUM_THREADS=1): each rank owns one core;
# - cores bound when the ranks fit the node's cores, otherwise --oversubscribe; when the node
#   has two cores per rank, each rank is bound to two (its own core and one for its
#   communication thread: see the trainer's progress setting); MESHTRAIN_CORES_PER_RANK=N
#   overrides the two;
# - on a single node (no -H/--host/--hostfile and not a multi-node Slurm allocation),
#   shared memory only: pml ob1 with btl self,vader. This skips UCX's probing, about 0.2 s of
#   every MPI_Init here; it is wrong for InfiniBand clusters, where MPI's defaults stay;
# - a zero SIGKILL delay, and mpirun's boxed reports filtered: a rank that exits with an
#   error ends the job at once and only meshtrain's own one-line error is printed, while a
#   rank killed by a signal or an MPI_Abort is still reported, as one line naming the rank;
# - across hosts, TCP keepalive settings that end the job within about 25 s of a dead link;
# - signals sent to this script (TERM, INT, HUP, USR1, USR2) passed on to mpirun, which
#   passes them to the ranks;
# - --allow-run-as-root only when running as root (containers, CI).
# Set MESHTRAIN_MPI_DEFAULTS=1 to pass your arguments to plain mpirun and nothing else.
set -euo pipefail

if [ "${MESHTRAIN_MPI_DEFAULTS:-0}" = "1" ]; then exec mpirun "$@"; fi

np=""
multi_host=0
prev=""
for arg in "$@"; do
  case "$prev" in -np|-n|--np|-c) np="$arg" ;; esac
  case "$arg" in
    -H|--host|-host|--hostfile|-hostfile|--machinefile|-machinefile) multi_host=1 ;;
  esac
  prev="$arg"
done
if [ "${SLURM_NNODES:-1}" -gt 1 ] 2>/dev/null; then multi_host=1; fi
if [ "$multi_host" = "1" ]; then
  # Open MPI's daemons notice a dead host only through TCP keepalive, by default after about
  # 8 minutes (300 s + 9 x 20 s): a cut link would hang the job that long. Ask for ~25 s.
  export OMPI_MCA_oob_tcp_keepalive_time=${OMPI_MCA_oob_tcp_keepalive_time:-10}
  export OMPI_MCA_oob_tcp_keepalive_intvl=${OMPI_MCA_oob_tcp_keepalive_intvl:-5}
  export OMPI_MCA_oob_tcp_keepalive_probes=${OMPI_MCA_oob_tcp_keepalive_probes:-3}
fi

flags=(-x OPENBLAS_NUM_THREADS=1 -x OMP_NUM_THREADS=1)
export OMPI_MCA_odls_base_sigkill_timeout=${OMPI_MCA_odls_base_sigkill_timeout:-0}
if [ "$multi_host" = "0" ]; then
  export OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}
  export OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader}
fi
# Physical cores this process may use (its CPU mask: a cgroup or a scheduler may allow fewer
# than the machine has), as Open MPI counts slots and binds: hyperthreads of a core are one.
allowed=$(awk '/^Cpus_allowed_list/ {print $2}' /proc/self/status 2>/dev/null)
cores=$(lscpu -p=CPU,SOCKET,CORE 2>/dev/null | awk -F, -v allowed="$allowed" '
  BEGIN { n = split(allowed, parts, ","); for (i = 1; i <= n; i++) {
            m = split(parts[i], r, "-"); if (m == 1) r[2] = r[1]
            for (c = r[1]; c <= r[2]; c++) ok[c] = 1 } }
  /^#/ { next }
  allowed == "" || ($1 in ok) { seen[$2 "," $3] = 1 }
  END { k = 0; for (s in seen) k++; print k }')
[ "${cores:-0}" -gt 0 ] 2>/dev/null || cores=$(nproc 2>/dev/null || echo 1)
if [ -n "$np" ] && [ "$multi_host" = "0" ] && [ "$np" -gt "$cores" ] 2>/dev/null; then
  flags+=(--oversubscribe --bind-to none)
elif [ "$multi_host" = "0" ]; then
  per_rank=${MESHTRAIN_CORES_PER_RANK:-}
  if [ -z "$per_rank" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    per_rank=${SLURM_CPUS_PER_TASK:-1}  # inside an allocation, what it gives each task
  elif [ -z "$per_rank" ]; then
    per_rank=1
    if [ -n "$np" ] && [ $((2 * np)) -le "$cores" ] 2>/dev/null; then per_rank=2; fi
  fi
  if [ "$per_rank" -gt 1 ] 2>/dev/null; then
    flags+=(--map-by "slot:PE=$per_rank" --bind-to core)
  else
    flags+=(--bind-to core)
  fi
fi
if [ "$(id -u)" = "0" ]; then flags+=(--allow-run-as-root); fi

# mpirun frames its reports in lines of dashes. Drop the ones that only restate a non-zero
# exit code (meshtrain has already said why); keep the first line of any other.
filter_reports() {
  awk '
    /^--------------------+$/ { if (inside) { flush() } else { inside = 1; n = 0 }; next }
    inside { block[++n] = $0; next }
    { print; fflush() }
    function flush(  text, i) {
      inside = 0; text = ""
      for (i = 1; i <= n; i++) text = text " " block[i]
      if (text ~ /returned[ \t]+a non-zero exit code|exited with non-zero status/) return
      for (i = 1; i <= n; i++) if (block[i] ~ /[^ \t]/) {
        print (block[i] ~ /^mpirun/ ? "" : "mpirun: ") block[i]; break
      }
      fflush()
    }
    END { if (inside) for (i = 1; i <= n; i++) print block[i] }'
}
exec 3> >(filter_reports >&2)
filter_pid=$!
# mpirun runs as a child (its stderr goes through the filter), so pass on every signal a
# scheduler or a user sends the wrapper: SIGTERM/SIGUSR1 are how Slurm warns of preemption.
mpirun "${flags[@]}" "$@" 2>&3 &
mpirun_pid=$!
for sig in INT HUP USR1 USR2; do
  trap 'kill -'"$sig"' "$mpirun_pid" 2>/dev/null' "$sig"
done
# mpirun answers SIGTERM by killing the ranks at once; hand it on as SIGUSR1, which mpirun
# forwards, so that meshtrain can finish its step and write a checkpoint (a program that does
# not catch SIGUSR1 still ends).
trap 'kill -USR1 "$mpirun_pid" 2>/dev/null' TERM
status=0
while :; do
  wait "$mpirun_pid" && status=0 || status=$?
  # wait returns early (status > 128) when a trapped signal arrives; go on waiting for mpirun.
  kill -0 "$mpirun_pid" 2>/dev/null || break
done
exec 3>&-
wait "$filter_pid" 2>/dev/null || true
exit "$status"
