#!/usr/bin/env bash
# meshtrain's FNO and its PyTorch peer side by side, on the same machine, data and settings:
# the Darcy target configuration (examples/darcy_fno_target.toml: s = 32, modes 12, width 32,
# 4 layers, batch 20, AdamW 1e-3, cosine over the run, pointwise normalisation) for EPOCHS
# epochs, meshtrain on RANKS ranks (launch/mpirun.sh) and then PyTorch on RANKS gloo processes
# (benchmarks/fno_torch.py), one thread per process. Prints each epoch's seconds and test
# relative L2 for both, and the mean seconds per epoch.
#
#   benchmarks/fno_compare.sh [EPOCHS (3)] [RANKS (2)]
#
# Needs the data of examples/darcy_fno_target.toml (its header says how to make it) and
# Debian's python3-torch.
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-3}
ranks=${2:-2}
train=build/darcy/train1000
test=build/darcy/test200
for f in "$train/x.npy" "$test/x.npy" build/bin/meshtrain; do
  [ -e "$f" ] || { echo "fno_compare.sh: $f is missing (see examples/darcy_fno_target.toml)" >&2; exit 2; }
done
/usr/bin/python3 -c "import torch" 2>/dev/null ||
  { echo "fno_compare.sh: PyTorch is missing: apt-get install python3-torch" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== meshtrain, $ranks rank(s), $epochs epochs"
launch/mpirun.sh -np "$ranks" build/bin/meshtrain train --config examples/darcy_fno_target.toml \
  --progress lines --set "training.num_epochs=$epochs" --set "output.dir='$out/meshtrain'" \
  --set "checkpoint.dir='$out/ckpt'" | grep -E '^(Ranks|Model|epoch )'
echo "== PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)'), $ranks process(es), $epochs epochs"
/usr/bin/python3 benchmarks/fno_torch.py --train "$train" --test "$test" --epochs "$epochs" \
  --procs "$ranks" --csv "$out/torch.csv"

/usr/bin/python3 - "$out/meshtrain/metrics.csv" "$out/torch.csv" <<'EOF'
import csv, sys
def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))
ours, torch = rows(sys.argv[1]), rows(sys.argv[2])
print(f"{'epoch':>5} {'meshtrain s':>12} {'test':>9} {'pytorch s':>10} {'test':>9}")
for a, b in zip(ours, torch):
    print(f"{a['epoch']:>5} {float(a['epoch_seconds']):12.2f} {float(a['test_loss']):9.5f} "
          f"{float(b['epoch_seconds']):10.2f} {float(b['test_loss']):9.5f}")
mean = lambda rs: sum(float(r["epoch_seconds"]) for r in rs) / len(rs)
print(f"mean seconds per epoch: meshtrain {mean(ours):.2f}, PyTorch {mean(torch):.2f} "
      f"(ratio {mean(torch) / mean(ours):.2f})")
EOF
