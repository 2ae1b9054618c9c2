#!/usr/bin/env python3
"""The PyTorch peer of meshtrain's MLP step benchmarks (bench_step): one training step
(forward, MSE loss, backward, torch.optim.Adam step) in eager mode, timed per step on one
device, for the two jobs the GPU issue compares:

    reference  the tutorial's 385-parameter MLP (4 -> 64, ReLU, 64 -> 1), global batch 32,
               y = sum(x^2) of standard normal x (meshtrain's BM_TrainStep_Reference)
    big        4 -> 1024 -> 1024 -> 1024 -> 1 with ReLU, batch 1024 (BM_TrainStep_MLP1024x3)

    python3 benchmarks/mlp_torch.py --job big --device cuda --steps 200
    /usr/bin/python3 benchmarks/mlp_torch.py --job reference --device cpu   # Debian's torch

Each step is synchronised (torch.cuda.synchronize) before its clock stops, so the figure is
the step's latency as meshtrain's benchmark measures it (meshtrain fences at the end of each
step too). Warm-up steps are not timed. Prints one line per job with the median, mean and
minimum step time and samples/s, and with --json appends the same as one JSON object per line.
The step is checked to train: the loss after the timed steps must be below the first one
(exit 1 otherwise), so a broken setup does not print a fast figure.
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn

JOBS = {
    "reference": ([4, 64, 1], 32),
    "big": ([4, 1024, 1024, 1024, 1], 1024),
}


def mlp(widths):
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i + 2 < len(widths):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(job, device, steps, warmup, lr, seed):
    widths, batch = JOBS[job]
    torch.manual_seed(seed)
    model = mlp(widths).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # One global batch, reused every step (as bench_step does): the data is not the subject.
    x = torch.randn(batch, widths[0], device=device)
    y = (x * x).sum(dim=1, keepdim=True)
    loss_fn = nn.MSELoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    first = float(step().detach())
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - start)
    last = float(loss.detach())
    if not last < first:
        print(f"mlp_torch: {job}: the loss did not fall ({first:.6g} -> {last:.6g})", file=sys.stderr)
        sys.exit(1)
    median = statistics.median(times)
    return {
        "job": job,
        "device": str(device),
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "steps": steps,
        "step_us_median": median * 1e6,
        "step_us_mean": statistics.fmean(times) * 1e6,
        "step_us_min": min(times) * 1e6,
        "samples_per_s": batch / median,
        "loss_first": first,
        "loss_last": last,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", choices=[*JOBS, "all"], default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per job")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads on the CPU (meshtrain's rank uses one core)")
    parser.add_argument("--json", help="append one JSON object per job to this file")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps {args.steps} / --warmup {args.warmup}: need steps >= 1, warmup >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is visible")
    torch.set_num_threads(args.threads)
    for job in JOBS if args.job == "all" else [args.job]:
        r = run(job, device, args.steps, args.warmup, args.lr, args.seed)
        print(f"torch {r['torch']} {r['device']} {job}: {r['parameters']} parameters, batch "
              f"{r['batch']}: step median {r['step_us_median']:.1f} us (mean "
              f"{r['step_us_mean']:.1f}, min {r['step_us_min']:.1f}), "
              f"{r['samples_per_s']:.0f} samples/s; loss {r['loss_first']:.4g} -> "
              f"{r['loss_last']:.4g}", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
