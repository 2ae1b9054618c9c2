#!/usr/bin/env bash
# Post-install test, in the manner of heFFTe's: install the build tree into a temporary
# prefix, configure and build a tiny consumer with find_package(meshtrain) against that
# prefix alone, and run it under mpirun -np 2. Its losses must be the reference run's.
# usage: install_test.sh BUILD_DIR MPIEXEC REFERENCE_BINARY [MPIEXEC_FLAGS...]
set -euo pipefail
build=$1 mpiexec=$2 reference=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"
test -f "$work/prefix/include/meshtrain/meshtrain.hpp"
if find "$work/prefix/include" -name 'nccl_check.hpp' | grep -q .; then
  echo "internal header nccl_check.hpp was installed" >&2
  exit 1
fi
if grep -rq meshtrain_warnings "$work/prefix/lib"*/cmake/meshtrain/; then
  echo "the internal meshtrain_warnings target is exported" >&2
  exit 1
fi
# Only the prefix: not the build tree, not the source tree.
cmake -S "$here/consumer" -B "$work/consumer" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/configure.log" 2>&1 ||
  { cat "$work/configure.log" >&2; exit 1; }
cmake --build "$work/consumer" > "$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }

got=$("$mpiexec" -n 2 "$@" "$work/consumer/consumer")
echo "$got"
want=$("$mpiexec" -n 2 "$@" "$reference" | sed -n 's/^Initial loss: *//p;s/^Final loss: *//p' | paste -sd' ')
echo "reference: $want"
[ "$(echo "$got" | awk '{print $4, $6}')" = "$want" ] || { echo "losses differ" >&2; exit 1; }
