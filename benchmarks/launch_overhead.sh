#!/usr/bin/env bash
# Process start to exit of the whole reference run at np ranks against an empty MPI program
# (MPI_Init + MPI_Finalize), side by side, with Open MPI's defaults and with launch/mpirun.sh's
# single-node settings. Prints the median of RUNS runs of each.
#   benchmarks/launch_overhead.sh [BUILD_DIR] [NP] [RUNS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
np=${2:-2}
runs=${3:-11}
root_flag=()
[ "$(id -u)" = "0" ] && root_flag=(--allow-run-as-root)
oversub=()
[ "$np" -gt "$(nproc)" ] && oversub=(--oversubscribe)

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_runs() {  # command...
  for _ in $(seq "$runs"); do
    local t0 t1
    t0=$(date +%s.%N)
    "$@" > /dev/null
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
  done | median
}

printf '%-34s %12s %12s %12s\n' "launcher" "empty MPI s" "reference s" "difference s"
for mode in defaults launch-script; do
  if [ "$mode" = defaults ]; then
    launcher=(env -u OMPI_MCA_pml -u OMPI_MCA_btl mpirun -q "${root_flag[@]}" "${oversub[@]}" -np "$np")
    label="mpirun -np $np (Open MPI defaults)"
  else
    launcher=("$here/../launch/mpirun.sh" -np "$np")
    label="launch/mpirun.sh -np $np (ob1)"
  fi
  empty=$(time_runs "${launcher[@]}" "$build/bin/mpi_empty")
  full=$(time_runs "${launcher[@]}" "$build/bin/distributed_pde")
  printf '%-34s %12.3f %12.3f %12.3f\n' "$label" "$empty" "$full" "$(echo "$full - $empty" | bc -l)"
done
