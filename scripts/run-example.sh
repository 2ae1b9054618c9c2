#!/usr/bin/env bash
# Quick start, step 1: install what is missing, build, and run the reference example on
# 2 ranks. Extra arguments go to distributed_pde (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake --preset release > /dev/null
cmake --build --preset release -j "$(nproc)"
exec ./launch/mpirun.sh -np 2 build/bin/distributed_pde "$@"
