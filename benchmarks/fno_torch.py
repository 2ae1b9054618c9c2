#!/usr/bin/env python3
"""The PyTorch peer of meshtrain's FNO: the same 2-D Fourier Neural Operator (Li et al. 2020,
the reference's FNO2d without domain padding), data, loss, optimizer and schedule, trained in
one process or data parallel over N gloo processes (DistributedDataParallel, CPU).

    /usr/bin/python3 benchmarks/fno_torch.py --train build/darcy/train --test build/darcy/test \
        --epochs 3 --procs 2

Uses Debian's python3-torch (apt install python3-torch); one thread per process. Prints one
line per epoch (train relative L2, test relative L2, seconds) and, with --csv, writes them.

What matches meshtrain's `examples/darcy_fno_target.toml`: modes, width, layers, projection
128; the input field plus the grid coordinates; GELU between Fourier layers; inputs and targets
normalised pointwise from the training set (UnitGaussianNormalizer, eps 1e-5) with the loss on
decoded outputs; the per-sample relative L2 loss averaged over the global batch; AdamW (weight
decay 1e-4, decoupled, as meshtrain's adamw) with a per-step cosine decay to 0 (PyTorch's
CosineAnnealingLR, optax's cosine_decay_schedule); a seeded shuffle each epoch; each process
takes its contiguous share of every global batch.
"""
import argparse
import csv
import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F


class SpectralConv2d(nn.Module):
    def __init__(self, width, modes):
        super().__init__()
        self.modes = modes
        scale = 1.0 / (width * width)
        # Complex weights as (real, imaginary) pairs, as meshtrain stores them (gloo cannot
        # broadcast complex tensors); U(0, scale) parts, as torch.rand(..., dtype=cfloat).
        self.weights1 = nn.Parameter(scale * torch.rand(width, width, modes, modes, 2))
        self.weights2 = nn.Parameter(scale * torch.rand(width, width, modes, modes, 2))

    def forward(self, x):  # x: (batch, channels, s1, s2)
        b, _, s1, s2 = x.shape
        m = self.modes
        x_ft = torch.fft.rfft2(x)
        w1 = torch.view_as_complex(self.weights1)
        w2 = torch.view_as_complex(self.weights2)
        out = torch.zeros(b, w1.shape[1], s1, s2 // 2 + 1, dtype=torch.cfloat)
        out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :m, :m], w1)
        out[:, :, -m:, :m] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, -m:, :m], w2)
        return torch.fft.irfft2(out, s=(s1, s2))


class FNO2d(nn.Module):
    def __init__(self, modes, width, layers, projection, y_mean, y_scale):
        super().__init__()
        self.fc0 = nn.Linear(3, width)
        self.spectral = nn.ModuleList(SpectralConv2d(width, modes) for _ in range(layers))
        self.w = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))
        self.fc1 = nn.Linear(width, projection)
        self.fc2 = nn.Linear(projection, 1)
        self.register_buffer("y_mean", y_mean)
        self.register_buffer("y_scale", y_scale)

    def forward(self, a):  # a: (batch, s1, s2, 1), normalised
        b, s1, s2, _ = a.shape
        gx = torch.linspace(0, 1, s1).reshape(1, s1, 1, 1).repeat(b, 1, s2, 1)
        gy = torch.linspace(0, 1, s2).reshape(1, 1, s2, 1).repeat(b, s1, 1, 1)
        x = self.fc0(torch.cat((a, gx, gy), dim=-1)).permute(0, 3, 1, 2)
        for i, (k, w) in enumerate(zip(self.spectral, self.w)):
            x = k(x) + w(x)
            if i + 1 < len(self.w):
                x = F.gelu(x)
        x = F.gelu(self.fc1(x.permute(0, 2, 3, 1)))
        return self.fc2(x) * self.y_scale + self.y_mean  # decoded to u's units


def relative_l2(pred, y):
    b = y.shape[0]
    diff = torch.linalg.norm((pred - y).reshape(b, -1), dim=1)
    return diff / torch.linalg.norm(y.reshape(b, -1), dim=1)


def load(directory):
    x = np.load(os.path.join(directory, "x.npy")).astype(np.float32)
    y = np.load(os.path.join(directory, "y.npy")).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y)


def train(rank, args, procs):
    torch.set_num_threads(1)
    if procs > 1:
        dist.init_process_group("gloo", rank=rank, world_size=procs)
    torch.manual_seed(args.seed)
    x, y = load(args.train)
    x_test, y_test = load(args.test)
    eps = 1e-5
    x_mean, x_scale = x.mean(0), x.std(0) + eps
    y_mean, y_scale = y.mean(0), y.std(0) + eps
    x = (x - x_mean) / x_scale
    x_test = (x_test - x_mean) / x_scale
    model = FNO2d(args.modes, args.width, args.layers, args.projection, y_mean, y_scale)
    if procs > 1:
        model = nn.parallel.DistributedDataParallel(model)
    n = x.shape[0]
    steps_per_epoch = n // args.batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  betas=(0.9, 0.999), eps=1e-8)
    total = args.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total))
        if args.schedule == "cosine" else 1.0)
    share = args.batch // procs
    rows = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed + epoch))
        model.train()
        loss_sum = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * args.batch + rank * share:s * args.batch + (rank + 1) * share]
            optimizer.zero_grad()
            # Each process's sum over its rows / the global batch: DDP averages over the
            # processes, so scale by procs to get the global mean.
            loss = relative_l2(model(x[idx]), y[idx]).sum() / args.batch * procs
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() / procs
        model.eval()
        with torch.no_grad():
            test = sum(relative_l2(model(x_test[i:i + 50]), y_test[i:i + 50]).sum().item()
                       for i in range(0, x_test.shape[0], 50)) / x_test.shape[0]
        train_loss = loss_sum / steps_per_epoch
        if procs > 1:  # the mean over processes (each summed its own rows)
            t = torch.tensor([train_loss])
            dist.all_reduce(t)
            train_loss = t.item()
        seconds = time.perf_counter() - t0
        rows.append((epoch + 1, train_loss, test, seconds, time.perf_counter() - start))
        if rank == 0:
            print(f"torch epoch {epoch + 1}/{args.epochs}: train rel L2 {train_loss:.6f}, "
                  f"test rel L2 {test:.6f}, {seconds:.2f} s", flush=True)
    if rank == 0 and args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "train_loss", "test_loss", "epoch_seconds", "elapsed_seconds"])
            w.writerows(rows)
    if procs > 1:
        dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", required=True, help="directory with x.npy, y.npy")
    p.add_argument("--test", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=20, help="global batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--modes", type=int, default=12)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--projection", type=int, default=128)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", help="write the per-epoch rows here")
    args = p.parse_args()
    if args.batch % args.procs:
        sys.exit(f"fno_torch.py: --batch {args.batch} is not divisible by --procs {args.procs}")
    if args.procs == 1:
        train(0, args, 1)
    else:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        mp.spawn(train, args=(args, args.procs), nprocs=args.procs)


if __name__ == "__main__":
    main()
