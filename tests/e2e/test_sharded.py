#!/usr/bin/env python3
"""End-to-end tests of sharded loading (data.loading = "sharded") through the meshtrain
program, launched with launch/mpirun.sh on 2 ranks.

The larger-than-memory proof: a data set split over several .npy shards whose total is
several times what a rank is allowed to hold (data.max_resident_bytes, which the loader
enforces) trains to the same final loss and the same parameters as the in-memory path, and
the ranks' peak resident memory (VmHWM, printed by meshtrain) shows that they never held it.

Usage: test_sharded.py --binary PATH [unittest args]
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import random

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
LAUNCH = os.path.join(ROOT, "launch", "mpirun.sh")
sys.path.insert(0, HERE)
import make_npy  # noqa: E402

BINARY = None
WORK = None

SAMPLES = 6144
DIM = 512  # x: 12 MiB of float32 in 5 shards
X_BYTES = SAMPLES * DIM * 4
CAP = 2 * 1024 * 1024  # what one rank may hold: a sixth of the data set
SHARD_ROWS = [1000, 1, 2000, 1543, 1600]

CONFIG = """\
[training]
num_epochs = 2
batch_size = 64
learning_rate = 0.001
shuffle = true
seed = 5

[model]
widths = [%d, 16, 1]

[data]
train_x = "../data/x"
train_y = "../data/y/part-*.npy"
val_x = "../data/val_x.npy"
val_y = "../data/val_y.npy"

[checkpoint]
dir = "ckpt"
every_epochs = 0
""" % DIM


def launch(np_, *args, cwd=None, timeout=300):
    cmd = [LAUNCH, "-np", str(np_), BINARY, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or WORK)


def make_run(name, config=CONFIG):
    run_dir = os.path.join(WORK, name)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    path = os.path.join(run_dir, "run.toml")
    with open(path, "w") as f:
        f.write(config)
    return path


def field(text, name):
    m = re.search(rf"^{re.escape(name)}\s*(.+)$", text, re.M)
    if not m:
        raise AssertionError(f"no line '{name}' in output:\n{text}")
    return m.group(1).strip()


def peak_mib(text):
    return float(re.search(r"^Peak memory:\s+([0-9.]+) MiB", text, re.M).group(1))


def tensor_hash(config_path):
    ckpt = os.path.join(os.path.dirname(config_path), "ckpt")
    path = os.path.join(ckpt, sorted(f for f in os.listdir(ckpt) if f.endswith(".safetensors"))[-1])
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    meta = json.loads(blob[8:8 + n])["__metadata__"]
    return hashlib.sha256(blob[8 + n:]).hexdigest(), meta["data_crc32"]


def one_error_line(test, result, expected):
    test.assertEqual(result.returncode, 2, result.stdout + result.stderr)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    test.assertEqual(len(lines), 1, f"stderr: {result.stderr!r}")
    test.assertTrue(lines[0].startswith("meshtrain: error: "), lines[0])
    test.assertIn(expected, lines[0])


def write_rows(path, rows, columns, values, first, count):
    make_npy.write_npy(path, (count, columns) if columns > 1 else (count,),
                       values[first * columns:(first + count) * columns])


def setUpModule():
    global WORK
    WORK = tempfile.mkdtemp(prefix="meshtrain-sharded-")
    data = os.path.join(WORK, "data")
    os.makedirs(os.path.join(data, "x"))
    os.makedirs(os.path.join(data, "y"))
    rng = random.Random(11)
    x = [rng.uniform(-1.0, 1.0) for _ in range(SAMPLES * DIM)]
    x = list(struct.unpack("<%df" % len(x), struct.pack("<%df" % len(x), *x)))
    y = [sum(x[i * DIM:i * DIM + 8]) for i in range(SAMPLES)]
    # The in-memory path's single files, and the same rows as shards: x in a directory of 5
    # (one of a single row), y as a glob over 3 one-dimensional files.
    make_npy.write_npy(os.path.join(data, "x.npy"), (SAMPLES, DIM), x)
    make_npy.write_npy(os.path.join(data, "y.npy"), (SAMPLES, 1), y)
    first = 0
    for i, count in enumerate(SHARD_ROWS):
        write_rows(os.path.join(data, "x", "shard-%02d.npy" % i), None, DIM, x, first, count)
        first += count
    for i, (a, b) in enumerate([(0, 2000), (2000, 2001), (2001, SAMPLES)]):
        write_rows(os.path.join(data, "y", "part-%d.npy" % i), None, 1, y, a, b - a)
    make_npy.write_npy(os.path.join(data, "y", "notes.npz"), (1,), [0.0])  # not *.npy: ignored
    vx = x[:300 * DIM]
    make_npy.write_npy(os.path.join(data, "val_x.npy"), (300, DIM), vx)
    make_npy.write_npy(os.path.join(data, "val_y.npy"), (300, 1), y[:300])


def tearDownModule():
    shutil.rmtree(WORK, ignore_errors=True)


class LargerThanARanksShare(unittest.TestCase):
    """12 MiB of inputs in 5 shards against a cap of 2 MiB per rank."""

    @classmethod
    def setUpClass(cls):
        cls.memory_config = make_run("memory", CONFIG.replace('"../data/x"', '"../data/x.npy"')
                                     .replace('"../data/y/part-*.npy"', '"../data/y.npy"'))
        cls.memory = launch(2, "train", "--config", cls.memory_config, "--progress", "lines")
        cls.sharded_config = make_run("sharded")
        cls.sharded = launch(2, "train", "--config", cls.sharded_config, "--progress", "lines",
                             "--set", "data.loading='sharded'",
                             "--set", "data.max_resident_bytes=%d" % CAP)

    def test_both_runs_finish(self):
        self.assertEqual(self.memory.returncode, 0, self.memory.stderr)
        self.assertEqual(self.sharded.returncode, 0, self.sharded.stderr)

    def test_same_losses_and_parameters_as_in_memory(self):
        for name in ("Initial loss:", "Final loss:"):
            self.assertEqual(field(self.sharded.stdout, name), field(self.memory.stdout, name))
        mem = re.findall(r"val loss ([0-9.]+)", self.memory.stdout)
        shd = re.findall(r"val loss ([0-9.]+)", self.sharded.stdout)
        self.assertEqual(len(mem), 2)
        self.assertEqual(shd, mem)
        # Bit-identical parameters and Adam moments, and the same data CRC (a checkpoint of
        # one resumes with the other).
        self.assertEqual(tensor_hash(self.sharded_config), tensor_hash(self.memory_config))

    def test_the_header_tells_what_each_rank_holds(self):
        data = field(self.sharded.stdout, "Data:")
        self.assertIn("sharded, ../data/x (6144, 512) in 5 files", data.replace(WORK + "/", "../"))
        self.assertIn("(6144, 1) in 3 files", data)
        held = int(re.search(r"; data (\d+) \(", field(self.sharded.stdout, "Memory:")).group(1))
        self.assertLessEqual(held, CAP)
        self.assertIn("sets 0,", field(self.sharded.stdout, "Memory:"))
        mem_held = int(re.search(r"; data (\d+) \(", field(self.memory.stdout, "Memory:")).group(1))
        self.assertGreater(mem_held, 2 * X_BYTES)  # host and device copies
        self.assertRegex(field(self.sharded.stdout, "Data wait:"), r"^[0-9.]+ s \(")

    def test_no_rank_held_the_data_set(self):
        # The in-memory ranks held x at least twice (host and device copies); the sharded
        # ranks' peak stays below the in-memory peak by more than the whole data set.
        self.assertGreater(peak_mib(self.memory.stdout) - peak_mib(self.sharded.stdout),
                           X_BYTES / 2 ** 20,
                           self.memory.stdout + self.sharded.stdout)

    def test_the_cap_refuses_the_in_memory_path(self):
        result = launch(2, "train", "--config", self.memory_config,
                        "--set", "data.max_resident_bytes=%d" % CAP)
        one_error_line(self, result, "--set: data.max_resident_bytes %d: each rank would hold %d bytes"
                       % (CAP, X_BYTES + SAMPLES * 4 + 300 * (DIM + 1) * 4))

    def test_a_cap_below_a_few_batches_is_refused_before_training(self):
        result = launch(2, "train", "--config", self.sharded_config, "--set", "data.loading='sharded'",
                        "--set", "data.max_resident_bytes=100000")
        one_error_line(self, result, "--set: data.max_resident_bytes 100000: each rank would hold ")
        self.assertNotIn("epoch 1", result.stdout)


FNO_CONFIG = """\
[training]
num_epochs = 2
batch_size = 5
loss = "relative_l2"
shuffle = true

[model]
type = "fno"
modes = 3
width = 6
layers = 1
projection = 8

[data]
train_x = "../fields/x-*.npy"
train_y = "../fields/y"
test_x = "../fields/tx.npy"
test_y = "../fields/ty.npy"
normalize = "pointwise"

[checkpoint]
dir = "ckpt"
every_epochs = 0
"""


class NormalisedFieldsWithATestSet(unittest.TestCase):
    """An FNO on (N, 8, 8, 1) fields in shards, pointwise normalisation streamed by rank 0:
    the same losses and parameters as in memory."""

    def test_equals_in_memory(self):
        fields = os.path.join(WORK, "fields")
        os.makedirs(os.path.join(fields, "y"), exist_ok=True)
        rng = random.Random(3)
        n, s = 23, 8
        x = [rng.uniform(0.5, 2.0) for _ in range(n * s * s)]
        y = [v * v + 0.1 for v in x]
        tx, ty = x[:7 * s * s], y[:7 * s * s]
        make_npy.write_npy(os.path.join(fields, "x-0.npy"), (10, s, s, 1), x[:10 * s * s])
        make_npy.write_npy(os.path.join(fields, "x-1.npy"), (13, s, s, 1), x[10 * s * s:])
        make_npy.write_npy(os.path.join(fields, "y", "a.npy"), (4, s, s, 1), y[:4 * s * s])
        make_npy.write_npy(os.path.join(fields, "y", "b.npy"), (19, s, s, 1), y[4 * s * s:])
        make_npy.write_npy(os.path.join(fields, "tx.npy"), (7, s, s, 1), tx)
        make_npy.write_npy(os.path.join(fields, "ty.npy"), (7, s, s, 1), ty)
        make_npy.write_npy(os.path.join(fields, "all_x.npy"), (n, s, s, 1), x)
        make_npy.write_npy(os.path.join(fields, "all_y.npy"), (n, s, s, 1), y)
        sharded = make_run("fno-sharded", FNO_CONFIG)
        memory = make_run("fno-memory", FNO_CONFIG.replace("x-*.npy", "all_x.npy")
                          .replace('"../fields/y"', '"../fields/all_y.npy"'))
        a = launch(2, "train", "--config", memory, "--progress", "lines")
        b = launch(2, "train", "--config", sharded, "--progress", "lines", "--set", "data.loading='sharded'")
        self.assertEqual(a.returncode, 0, a.stderr)
        self.assertEqual(b.returncode, 0, b.stderr)
        self.assertIn("normalized pointwise", field(b.stdout, "Data:"))
        self.assertEqual(field(b.stdout, "Final loss:"), field(a.stdout, "Final loss:"))
        self.assertEqual(re.findall(r"test loss ([0-9.]+)", b.stdout),
                         re.findall(r"test loss ([0-9.]+)", a.stdout))
        self.assertEqual(len(re.findall(r"test loss ([0-9.]+)", a.stdout)), 2)
        self.assertEqual(tensor_hash(sharded), tensor_hash(memory))


class Errors(unittest.TestCase):
    """One line from rank 0 naming the key and the value, exit 2, before any training."""

    def test_errors_name_the_key(self):
        config = make_run("errors")
        data = os.path.join(WORK, "data")
        bad = os.path.join(WORK, "bad")
        os.makedirs(bad, exist_ok=True)
        make_npy.write_npy(os.path.join(bad, "a.npy"), (3, DIM), [0.0] * 3 * DIM)
        make_npy.write_npy(os.path.join(bad, "b.npy"), (3, DIM + 1), [0.0] * 3 * (DIM + 1))
        make_npy.write_bad("f2", os.path.join(bad, "half.npy"))
        zero_y = [1.0] * SAMPLES
        zero_y[3] = 0.0
        make_npy.write_npy(os.path.join(bad, "zero_y.npy"), (SAMPLES,), zero_y)
        os.makedirs(os.path.join(bad, "empty"), exist_ok=True)
        sharded = ["--set", "data.loading='sharded'"]
        cases = [
            (["--set", "data.loading='streamed'"],
             "data.loading: 'streamed' is not one of memory, sharded"),
            (["--set", "data.max_resident_bytes=-1"], "data.max_resident_bytes: -1 is out of range"),
            (sharded + ["--set", "data.train_x='../data/nothing-*.npy'"],
             "data.train_x: ../data/nothing-*.npy: no file matches the pattern"),
            (sharded + ["--set", "data.train_x='%s'" % os.path.join(bad, "empty")],
             "data.train_x: %s: a directory with no .npy files" % os.path.join(bad, "empty")),
            (sharded + ["--set", "data.train_x='%s'" % os.path.join(bad, "[ab].npy")],
             "data.train_x: %s: samples of shape (%d,), but %s has (%d,)"
             % (os.path.join(bad, "b.npy"), DIM + 1, os.path.join(bad, "a.npy"), DIM)),
            (sharded + ["--set", "data.train_x='%s'" % os.path.join(bad, "half.npy")],
             "data.train_x: %s: unsupported dtype '<f2'" % os.path.join(bad, "half.npy")),
            (sharded + ["--set", "data.train_y='data/y/part-0.npy'"],
             "data.train_y: data/y/part-0.npy: 2000 samples, but data.train_x has 6144"),
            # relative_l2 divides by each target's norm: rank 0 finds a zero target streaming.
            (sharded + ["--set", "training.loss='relative_l2'",
                        "--set", "data.train_y='%s'" % os.path.join(bad, "zero_y.npy")],
             "--set: training.loss relative_l2: training target 3 is all zeros"),
            # The in-memory path reads shards too, and names the shard.
            (["--set", "data.train_x='%s'" % os.path.join(bad, "[ab].npy")],
             "data.train_x: %s: samples of shape (%d,), but %s has (%d,)"
             % (os.path.join(bad, "b.npy"), DIM + 1, os.path.join(bad, "a.npy"), DIM)),
        ]
        for args, expected in cases:
            with self.subTest(args=args):
                one_error_line(self, launch(2, "train", "--config", config, *args), expected)
        synthetic = make_run("synthetic", "[data]\nsynthetic = \"reference\"\nloading = \"sharded\"\n")
        one_error_line(self, launch(2, "train", "--config", synthetic),
                       "data.loading: only with .npy files, not synthetic data")
        self.assertTrue(os.path.isdir(data))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    args, rest = parser.parse_known_args()
    BINARY = os.path.realpath(args.binary)
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
