#!/usr/bin/env python3
"""Compares the per-epoch losses of two `meshtrain train` runs (their metrics.jsonl files).

    compare_losses.py EXPECTED.jsonl ACTUAL.jsonl [--rtol 1e-5] [--label NAME]

Every epoch of EXPECTED must be in ACTUAL, and each of its train_loss and val_loss (when
present and not null) must equal ACTUAL's within rtol relative (|a - e| <= rtol * |e|, with
an absolute floor of rtol * 1e-6 for losses near zero). Prints one line per epoch and a
verdict; exits 0 when every loss agrees, 1 otherwise, 2 when a file is missing or malformed.
"""
import argparse
import json
import sys


def read(path):
    rows = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                rows[int(r["epoch"])] = r
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("expected")
    ap.add_argument("actual")
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    try:
        exp, act = read(a.expected), read(a.actual)
    except (OSError, ValueError, KeyError) as e:
        print("compare_losses %s: cannot read: %s" % (a.label, e))
        return 2
    if not exp:
        print("compare_losses %s: %s has no epochs" % (a.label, a.expected))
        return 2
    worst, bad = 0.0, 0
    for epoch in sorted(exp):
        if epoch not in act:
            print("epoch %d: missing from %s" % (epoch, a.actual))
            bad += 1
            continue
        cells = []
        for key in ("train_loss", "val_loss"):
            e, v = exp[epoch].get(key), act[epoch].get(key)
            if e is None:
                continue
            if v is None:
                cells.append("%s missing" % key)
                bad += 1
                continue
            rel = abs(v - e) / max(abs(e), 1e-6)
            worst = max(worst, rel)
            ok = abs(v - e) <= a.rtol * max(abs(e), 1e-6)
            bad += 0 if ok else 1
            cells.append("%s cpu %.9g gpu %.9g rel %.2e%s" % (key, e, v, rel, "" if ok else " BAD"))
        print("epoch %3d: %s" % (epoch, "; ".join(cells)))
    verdict = "agree" if bad == 0 else "DIFFER"
    print("compare_losses %s: %d epochs, worst relative difference %.3e (rtol %g): %s"
          % (a.label, len(exp), worst, a.rtol, verdict))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
