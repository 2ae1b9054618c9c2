#!/usr/bin/env bash
# The flakiness check: runs the end-to-end suite (`ctest -j2 -L e2e`, which includes every
# preemption, signal and fault test) N times in a row while another build keeps the machine
# busy, and prints how many runs each test failed.
#
#   tests/e2e/repeat_loaded.sh [N] [BUILD_DIR]      # default 20 runs of build/
#
# The load: the project compiled from scratch, again and again, in BUILD_DIR-load/ (ccache
# off, -j2) for as long as the runs last; LOAD=0 runs without it (say so when quoting the
# result). Exits 0 when every run passed. Logs of failed runs are kept in
# BUILD_DIR-repeat/run-K.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-20}
build=${2:-build}
[[ -d $build ]] || { echo "repeat_loaded: no build directory $build" >&2; exit 2; }
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "repeat_loaded: N '$runs': expected a count >= 1" >&2; exit 2; }
logs=$build-repeat
rm -rf "$logs"
mkdir -p "$logs"

load_pid=
if [[ ${LOAD:-1} != 0 ]]; then
  load=$build-load
  cmake -S . -B "$load" -DCMAKE_BUILD_TYPE=Release > "$logs/load-configure.log" 2>&1 ||
    { echo "repeat_loaded: configuring the load build failed (see $logs/load-configure.log)" >&2; exit 2; }
  # Its own session, so that the whole loop (cmake, make, the compilers) is killed at the end.
  setsid -w bash -c 'while true; do
      cmake --build "$0" --target clean > /dev/null 2>&1
      CCACHE_DISABLE=1 cmake --build "$0" -j2 > /dev/null 2>&1
    done' "$load" &
  load_pid=$!
  trap 'kill -- -$load_pid 2>/dev/null' EXIT
  echo "repeat_loaded: load build running in $load (pid $load_pid)"
fi

declare -A failed
failures=0
start=$SECONDS
for ((k = 1; k <= runs; ++k)); do
  log=$logs/run-$k.log
  t0=$SECONDS
  if (cd "$build" && ctest -j2 -L e2e --output-on-failure) > "$log" 2>&1; then
    rm -f "$log"
    echo "run $k/$runs: passed ($((SECONDS - t0)) s, load $(cut -d' ' -f1 /proc/loadavg))"
  else
    failures=$((failures + 1))
    names=$(grep -oE '[0-9]+ - [^ ]+ \(Failed|Timeout\)' "$log" | sed -E 's/^[0-9]+ - //; s/ \(.*//' | tr '\n' ' ')
    for t in $names; do failed[$t]=$((${failed[$t]:-0} + 1)); done
    echo "run $k/$runs: FAILED: $names(log: $log)"
  fi
done
echo "repeat_loaded: $((runs - failures))/$runs runs passed in $((SECONDS - start)) s" \
  "($([[ ${LOAD:-1} != 0 ]] && echo "with a build running" || echo "no load"))"
for t in "${!failed[@]}"; do echo "  $t failed ${failed[$t]} time(s)"; done
((failures == 0))
