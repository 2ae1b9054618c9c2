#!/usr/bin/env python3
"""End-to-end tests of the meshtrain program, launched through launch/mpirun.sh.

Usage: test_meshtrain.py --binary PATH [--distributed-pde PATH] [unittest args]

Python standard library only: .npy files come from make_npy.py, checkpoints are read as
safetensors (8-byte header length, JSON header, raw bytes) by hand.
"""
import argparse
import csv
import fcntl
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
LAUNCH = os.path.join(ROOT, "launch", "mpirun.sh")
sys.path.insert(0, HERE)
import make_npy  # noqa: E402

BINARY = None
DISTRIBUTED_PDE = None
WORK = None  # temporary directory of the whole module
STRAIGHT = None  # run.toml of the straight run, made by setUpModule
STRAIGHT_RESULT = None
SINGLE = None  # run.toml of the same run with single-file checkpoints

PREEMPTED = 75
CSV_COLUMNS = ["epoch", "train_loss", "val_loss", "test_loss", "step", "skipped_steps",
               "epoch_seconds", "elapsed_seconds", "samples_per_second", "learning_rate",
               "grad_norm"]

# 96 training samples in batches of 16: 6 steps per epoch.
BASE_CONFIG = """\
[training]
num_epochs = 4
batch_size = 16
learning_rate = 0.01
shuffle = true
seed = 3

[model]
widths = [4, 16, 1]
activation = "tanh"

[data]
train_x = "../data/train_x.npy"
train_y = "../data/train_y.npy"
val_x = "../data/val_x.npy"
val_y = "../data/val_y.npy"

[checkpoint]
dir = "ckpt"
every_epochs = 1
keep_last = 2

[output]
dir = "out"
"""

# Long (400 epochs of 64 steps, a checkpoint per epoch): stopped by a signal long before its end.
STOP_STEP = 150  # where the Preemption tests raise SIGTERM: mid-epoch 3
SLOW_CONFIG = """\
[training]
num_epochs = 400
batch_size = 32
shuffle = true

[model]
widths = [4, 64, 64, 1]

[data]
train_x = "../data/big_x.npy"
train_y = "../data/big_y.npy"

[checkpoint]
dir = "ckpt"
every_epochs = 1
keep_last = 2

[output]
dir = "out"
"""


def launch(np_, *args, cwd=None, timeout=60):
    cmd = [LAUNCH, "-np", str(np_), BINARY, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or WORK)


def make_run(name, config=BASE_CONFIG):
    """A run directory WORK/name holding run.toml; returns the config's path."""
    run_dir = os.path.join(WORK, name)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    path = os.path.join(run_dir, "run.toml")
    with open(path, "w") as f:
        f.write(config)
    return path


def run_dir(config_path, *parts):
    return os.path.join(os.path.dirname(config_path), *parts)


def read_safetensors(path):
    """(metadata, {name: raw bytes})."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    metadata = header.pop("__metadata__", {})
    tensors = {name: data[t["data_offsets"][0]:t["data_offsets"][1]] for name, t in header.items()}
    return metadata, tensors


def read_state(path):
    """(metadata, {"params/NAME" | "adam/mu/NAME" | "adam/nu/NAME": raw bytes}) of a training-state
    checkpoint: a single file as it is, a sharded one reassembled from its index and shards
    (each value from the one shard whose runs hold it), as an independent reader would."""
    meta, tensors = read_safetensors(path)
    if meta.get("meshtrain.format") != "sharded_training_state":
        return meta, tensors
    assert not tensors, path
    shards_dir = os.path.join(os.path.dirname(path), meta["shards_dir"])
    count = int(meta["parameters"])
    flat, seen = {}, [0] * count
    entries = json.loads(meta["shards"])
    assert len(entries) == int(meta["shard_count"]), path
    for entry in entries:
        shard = os.path.join(shards_dir, entry["file"])
        assert os.path.getsize(shard) == entry["bytes"], shard
        assert file_crc_is_valid(shard), shard
        smeta, groups = read_safetensors(shard)
        assert smeta["checkpoint_id"] == meta["checkpoint_id"], shard
        for full, length in entry["runs"]:
            for i in range(full, full + length):
                seen[i] += 1
        for group, raw in groups.items():
            buf = flat.setdefault(group, bytearray(4 * count))
            at = 0
            for full, length in entry["runs"]:
                buf[4 * full:4 * (full + length)] = raw[4 * at:4 * (at + length)]
                at += length
            assert 4 * at == len(raw), shard
    assert seen == [1] * count, f"{path}: not every value in exactly one shard"
    out = {}
    for t in json.loads(meta["tensors"]):
        size = 1
        for d in t["shape"]:
            size *= d
        for group, buf in flat.items():
            out[f"{group}/{t['name']}"] = bytes(buf[4 * t["offset"]:4 * (t["offset"] + size)])
    return meta, out


def params_of(path):
    _, tensors = read_state(path)
    params = {k: v for k, v in tensors.items() if k.startswith("params/")}
    assert params, f"no params/ tensors in {path}"
    return params


def floats(raw):
    return struct.unpack("<%df" % (len(raw) // 4), raw)


def checkpoints_in(directory):
    names = [n for n in os.listdir(directory) if re.fullmatch(r"ckpt-\d+\.safetensors", n)]
    return sorted(names, key=lambda n: int(n[5:-12]))


def one_error_line(test, result, expected):
    test.assertNotEqual(result.returncode, 0, result.stdout)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    test.assertEqual(len(lines), 1, f"stderr: {result.stderr!r}")
    test.assertTrue(lines[0].startswith("meshtrain: error: "), lines[0])
    test.assertIn(expected, lines[0])
    for bad in ("Traceback", "core dumped", "terminate called", "Abort"):
        test.assertNotIn(bad, result.stderr)


def field(text, name):
    m = re.search(rf"^{re.escape(name)}\s*(.+)$", text, re.M)
    if not m:
        raise AssertionError(f"no line '{name}' in output:\n{text}")
    return m.group(1).strip()


def descendants(pid):
    """Pids of every process below pid (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def exe_of(pid):
    try:
        return os.path.realpath(f"/proc/{pid}/exe")
    except OSError:
        return ""


def wait_for_lines(path, count, process, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {count} epochs: {process.communicate()}")
        try:
            with open(path) as f:
                if sum(1 for _ in f) >= count:
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{path}: fewer than {count} lines after {timeout} s")


def preempt_by_launcher(config, np_=2):
    """Starts the slow run, sends SIGUSR1 to launch/mpirun.sh (which passes it to mpirun, which
    forwards it to the ranks) once two epochs are done, returns its CompletedProcess. When the
    signal lands does not matter to the callers: only that the run stops with a checkpoint."""
    cmd = [LAUNCH, "-np", str(np_), BINARY, "train", "--config", config]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=WORK)
    try:
        wait_for_lines(run_dir(config, "out", "metrics.jsonl"), 2, process)
        process.send_signal(signal.SIGUSR1)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            for pid in descendants(process.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(cmd, process.returncode, out, err)


def preempt_at_step(config, step, np_=2):
    """The slow run with SIGTERM raised in every rank at optimizer step `step`, as Slurm
    signals every task of a job step, but at a known step (the fault-injection hook), so that
    where the run stops does not depend on the machine's speed."""
    env = dict(os.environ, MESHTRAIN_FAULT_INJECT=f"term:*:{step}")
    return subprocess.run([LAUNCH, "-np", str(np_), BINARY, "train", "--config", config],
                          capture_output=True, text=True, timeout=300, cwd=WORK, env=env)


def setUpModule():
    global WORK
    WORK = tempfile.mkdtemp(prefix="meshtrain-e2e-")
    data = os.path.join(WORK, "data")
    os.makedirs(data)
    make_npy.write_regression(os.path.join(data, "train_x.npy"), os.path.join(data, "train_y.npy"), 96, 4, 1)
    make_npy.write_regression(os.path.join(data, "val_x.npy"), os.path.join(data, "val_y.npy"), 32, 4, 2)
    make_npy.write_regression(os.path.join(data, "big_x.npy"), os.path.join(data, "big_y.npy"), 2048, 4, 5)
    make_npy.write_regression(os.path.join(data, "short_x.npy"), os.path.join(data, "short_y.npy"), 50, 4, 1)
    # As many samples as train_x/train_y, other values: a resume must notice.
    make_npy.write_regression(os.path.join(data, "other_x.npy"), os.path.join(data, "other_y.npy"), 96, 4, 7)
    for kind in make_npy.BAD_KINDS:
        make_npy.write_bad(kind, os.path.join(data, f"bad-{kind}.npy"))
    # The uninterrupted run the resume tests compare with, launched from another directory:
    # relative paths in the file follow the file.
    global STRAIGHT, STRAIGHT_RESULT
    STRAIGHT = make_run("straight")
    STRAIGHT_RESULT = launch(2, "train", "--config", STRAIGHT, cwd="/")
    # The same run writing single-file checkpoints (checkpoint.format = "single").
    global SINGLE
    SINGLE = make_run("straight-single")
    launch(2, "train", "--config", SINGLE, "--set", "checkpoint.format=single")


def tearDownModule():
    shutil.rmtree(WORK, ignore_errors=True)


class StraightRun(unittest.TestCase):
    """4 epochs on 2 ranks, a checkpoint every epoch, the newest 2 kept."""

    @classmethod
    def setUpClass(cls):
        cls.config = STRAIGHT
        cls.result = STRAIGHT_RESULT

    def test_finishes_with_one_line_per_epoch(self):
        r = self.result
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr.strip(), "")
        epochs = re.findall(r"^epoch (\d+)/4: train loss [0-9.]+, val loss [0-9.]+, lr 0\.01, \d+ samples/s, "
                            r"elapsed \S+ s, ETA \S+ s$", r.stdout, re.M)
        self.assertEqual(epochs, ["1", "2", "3", "4"])
        self.assertEqual(r.stdout.count("Final loss:"), 1)  # rank 0 only
        self.assertNotIn("\r", r.stdout)  # no progress bar when not on a terminal

    def test_keeps_the_newest_two_checkpoints(self):
        self.assertEqual(checkpoints_in(run_dir(self.config, "ckpt")),
                         ["ckpt-18.safetensors", "ckpt-24.safetensors"])

    def test_the_checksum_covers_the_whole_file(self):
        for name in checkpoints_in(run_dir(self.config, "ckpt")):
            self.assertTrue(file_crc_is_valid(run_dir(self.config, "ckpt", name)), name)
            meta, _ = read_safetensors(run_dir(self.config, "ckpt", name))
            shards = run_dir(self.config, "ckpt", meta["shards_dir"])
            self.assertEqual(sorted(os.listdir(shards)),
                             ["shard-00000-of-00002.safetensors", "shard-00001-of-00002.safetensors"])
            for shard in os.listdir(shards):
                self.assertTrue(file_crc_is_valid(os.path.join(shards, shard)), shard)

    def test_only_the_kept_checkpoints_shards_remain(self):
        names = sorted(n for n in os.listdir(run_dir(self.config, "ckpt")) if ".shards-" in n)
        self.assertEqual([n.split(".")[0] for n in names], ["ckpt-18", "ckpt-24"])

    def test_single_file_and_sharded_checkpoints_hold_the_same_state(self):
        single = run_dir(SINGLE, "ckpt", "ckpt-24.safetensors")
        if not os.path.exists(single):
            self.skipTest("the single-file run failed")
        meta, tensors = read_safetensors(single)
        self.assertEqual(meta["meshtrain.format"], "training_state")
        self.assertEqual(tensors, read_state(run_dir(self.config, "ckpt", "ckpt-24.safetensors"))[1])
        self.assertEqual(sorted(os.listdir(run_dir(SINGLE, "ckpt"))),
                         [".ckpt.lock", "ckpt-18.safetensors", "ckpt-24.safetensors"])

    def test_consolidate_writes_the_single_file_checkpoint(self):
        single = run_dir(SINGLE, "ckpt", "ckpt-24.safetensors")
        if not os.path.exists(single):
            self.skipTest("the single-file run failed")
        out = os.path.join(WORK, "consolidated.safetensors")
        r = subprocess.run([BINARY, "consolidate", run_dir(self.config, "ckpt", "ckpt-24.safetensors"), "-o", out],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"wrote {out} (12 tensors, ", r.stdout)
        meta, tensors = read_safetensors(out)
        self.assertEqual(meta["meshtrain.format"], "training_state")
        self.assertTrue(file_crc_is_valid(out))
        self.assertEqual(tensors, read_safetensors(single)[1])
        self.assertEqual(meta["run_id"], read_safetensors(run_dir(self.config, "ckpt", "ckpt-24.safetensors"))[0]["run_id"])
        # A file that is not an index: one line, exit 2.
        r = subprocess.run([BINARY, "consolidate", single, "-o", out + ".x"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr.strip().count("\n"), 0, r.stderr)
        self.assertIn("not a sharded checkpoint's index", r.stderr)
        self.assertFalse(os.path.exists(out + ".x"))

    def test_checkpoint_metadata(self):
        meta, tensors = read_state(run_dir(self.config, "ckpt", "ckpt-24.safetensors"))
        self.assertEqual(meta["meshtrain.format"], "sharded_training_state")
        self.assertEqual(meta["shard_count"], "2")
        self.assertEqual(int(meta["parameters"]), 4 * 16 + 16 + 16 + 1)
        self.assertEqual([t["name"] for t in json.loads(meta["tensors"])],
                         ["layers.0.kernel", "layers.0.bias", "layers.1.kernel", "layers.1.bias"])
        self.assertEqual(meta["meshtrain.format_version"], "2")
        self.assertRegex(meta["run_id"], r"^[0-9a-f]{16}$")
        self.assertRegex(meta["data_crc32"], r"^[0-9a-f]{8}$")
        self.assertEqual(meta["epoch"], "4")
        self.assertEqual(meta["batch"], "0")
        self.assertEqual(meta["optimizer_step"], "24")
        self.assertEqual(meta["model_widths"], "[4, 16, 1]")
        self.assertEqual(meta["world_size"], "2")
        self.assertRegex(meta["fingerprint"], r"^[0-9a-f]{16}$")
        self.assertEqual(len(json.loads(meta["epoch_losses"])), 4)
        expected = {"params/layers.0.kernel", "params/layers.0.bias", "params/layers.1.kernel",
                    "params/layers.1.bias"}
        self.assertEqual({k for k in tensors if k.startswith("params/")}, expected)
        self.assertEqual(len(tensors["params/layers.0.kernel"]), 4 * 16 * 4)
        self.assertEqual({k for k in tensors if k.startswith("adam/")},
                         {k.replace("params/", "adam/mu/") for k in expected} |
                         {k.replace("params/", "adam/nu/") for k in expected})

    def test_metrics_files(self):
        with open(run_dir(self.config, "out", "metrics.csv")) as f:
            rows = list(csv.reader(f))
        self.assertEqual(rows[0], CSV_COLUMNS)
        self.assertEqual([r[0] for r in rows[1:]], ["1", "2", "3", "4"])
        self.assertEqual([r[4] for r in rows[1:]], ["6", "12", "18", "24"])
        self.assertEqual([r[3] for r in rows[1:]], ["", "", "", ""])  # no test set
        self.assertEqual([r[9] for r in rows[1:]], ["0.01"] * 4)  # constant schedule
        self.assertEqual([r[10] for r in rows[1:]], [""] * 4)  # no clipping: no norm computed
        with open(run_dir(self.config, "out", "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        self.assertEqual([r["epoch"] for r in records], [1, 2, 3, 4])
        for record, row in zip(records, rows[1:]):
            # metrics.jsonl also has the epoch's straggler (the CSV's columns are unchanged).
            self.assertEqual(sorted(record), sorted(CSV_COLUMNS + ["straggler_rank",
                                                                   "straggler_behind_seconds"]))
            self.assertIn(record["straggler_rank"], (0, 1))
            self.assertGreaterEqual(record["straggler_behind_seconds"], 0)
            self.assertEqual(record["train_loss"], float(row[1]))
            self.assertEqual(record["val_loss"], float(row[2]))
            self.assertGreater(record["val_loss"], 0)
            self.assertIsNone(record["test_loss"])
            self.assertIsNone(record["grad_norm"])
        # The losses in the checkpoint are the ones in the metrics.
        meta, _ = read_safetensors(run_dir(self.config, "ckpt", "ckpt-24.safetensors"))
        self.assertEqual(json.loads(meta["epoch_losses"]), [r["train_loss"] for r in records])

    def test_plot_draws_a_png(self):
        png = os.path.join(WORK, "loss.png")
        r = subprocess.run([BINARY, "plot", run_dir(self.config, "out", "metrics.csv"), "-o", png],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertGreater(os.path.getsize(png), 2000)

    def test_plot_refuses_an_unwritable_output_without_writing_to_stdout(self):
        metrics = run_dir(self.config, "out", "metrics.csv")
        r = subprocess.run([BINARY, "plot", metrics, "-o", os.path.join(WORK, "no", "such", "x.png")],
                           capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stdout, b"")
        self.assertIn(b"cannot write the plot", r.stderr)

    def test_plot_title_is_one_line_and_never_a_command(self):
        metrics = run_dir(self.config, "out", "metrics.csv")
        marker = os.path.join(WORK, "title-ran-a-command")
        for title in [f"x'\n!touch {marker}\n'", f"x\nsystem('touch {marker}')", "tab\there"]:
            r = subprocess.run([BINARY, "plot", metrics, "-o", os.path.join(WORK, "t.png"),
                                "--title", title], capture_output=True, text=True, timeout=60)
            one_error_line(self, r, "--title")
            self.assertIn("contains a control character", r.stderr)
        self.assertFalse(os.path.exists(marker))
        r = subprocess.run([BINARY, "plot", metrics, "-o", os.path.join(WORK, "t.png"),
                            "--title", "it's fine; $(echo) `too`"], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_plot_refuses_a_foreign_csv(self):
        bogus = os.path.join(WORK, "bogus.csv")
        with open(bogus, "w") as f:
            f.write("a,b\n1,2\n")
        r = subprocess.run([BINARY, "plot", bogus], capture_output=True, text=True, timeout=60)
        one_error_line(self, r, "not a meshtrain metrics.csv")


def file_crc_is_valid(path):
    """The whole-file CRC-32 (zlib's) over the file with its own 8 digits as '0's."""
    with open(path, "rb") as f:
        blob = f.read()
    m = re.search(rb'"meshtrain\.file_crc32":"([0-9a-f]{8})"', blob)
    assert m, path
    blanked = blob[:m.start(1)] + b"00000000" + blob[m.end(1):]
    return int(m.group(1), 16) == zlib.crc32(blanked)


def rewrite_safetensors(source, target, edit_metadata):
    """Copies a checkpoint with its metadata changed by edit_metadata(dict), re-serialised as
    another writer would (json.dumps, padded to 8 bytes); the tensor bytes are unchanged."""
    with open(source, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    edit_metadata(header["__metadata__"])
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(target, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob[8 + n:])


class Resume(unittest.TestCase):
    def setUp(self):
        self.straight = STRAIGHT
        if not os.path.exists(run_dir(self.straight, "ckpt", "ckpt-24.safetensors")):
            self.skipTest("the straight run failed")
        self.middle = run_dir(self.straight, "ckpt", "ckpt-18.safetensors")  # after epoch 3

    def test_from_a_middle_checkpoint_is_bit_identical(self):
        config = make_run("resume-path")
        r = launch(2, "train", "--config", config, "--resume", self.middle)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Resumed:", r.stdout)
        self.assertEqual(re.findall(r"^epoch (\d+)/4", r.stdout, re.M), ["4"])
        final = run_dir(config, "ckpt", "ckpt-24.safetensors")
        self.assertEqual(params_of(final), params_of(run_dir(self.straight, "ckpt", "ckpt-24.safetensors")))
        a, _ = read_safetensors(final)
        b, _ = read_safetensors(run_dir(self.straight, "ckpt", "ckpt-24.safetensors"))
        self.assertEqual(a["epoch_losses"], b["epoch_losses"])
        self.assertEqual(a["validation_losses"], b["validation_losses"])

    def test_on_another_rank_count(self):
        config = make_run("resume-np3")
        r = launch(3, "train", "--config", config, "--resume", self.middle)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Ranks:       3", r.stdout)
        resumed = params_of(run_dir(config, "ckpt", "ckpt-24.safetensors"))
        straight = params_of(run_dir(self.straight, "ckpt", "ckpt-24.safetensors"))
        self.assertEqual(sorted(resumed), sorted(straight))
        for name in straight:  # the sums run in another order: equal to float precision
            for a, b in zip(floats(resumed[name]), floats(straight[name])):
                self.assertLessEqual(abs(a - b), 1e-4 * max(1.0, abs(b)), name)

    def test_resharded_onto_every_strategy_and_rank_count(self):
        """A chain of resumes, one epoch each, every run under another layout than the run
        whose sharded checkpoint it continues: data parallel on 2 ranks -> data on 1 ->
        FSDP on 3 -> hybrid FSDP on 4 -> tensor parallel on 2 -> data x tensor parallel on 4
        -> FSDP on 2 -> data on 3 -> tensor parallel on 2 -> data on 1. Each run's checkpoint equals, to float rounding (the sums
        run in other orders), the one an uninterrupted 2-rank run wrote at the same step."""
        long_run = make_run("reshard-straight", BASE_CONFIG.replace("num_epochs = 4", "num_epochs = 12")
                            .replace("keep_last = 2", "keep_last = 0"))
        r = launch(2, "train", "--config", long_run)
        self.assertEqual(r.returncode, 0, r.stderr)
        layouts = [(1, "data", "[1]", '["data"]'), (3, "fsdp", "[3]", '["fsdp"]'),
                   (4, "fsdp", "[2, 2]", '["data", "fsdp"]'), (2, "data", "[1, 2]", '["data", "model"]'),
                   (4, "data", "[2, 2]", '["data", "model"]'), (2, "fsdp", "[2]", '["fsdp"]'),
                   (3, "data", "[3]", '["data"]'), (2, "data", "[1, 2]", '["data", "model"]'),
                   (1, "data", "[1]", '["data"]')]
        previous = run_dir(long_run, "ckpt", "ckpt-18.safetensors")  # after epoch 3
        for i, (np_, strategy, shape, axes) in enumerate(layouts):
            epochs = 4 + i
            config = make_run(f"reshard-{i}", BASE_CONFIG.replace("num_epochs = 4", f"num_epochs = {epochs}"))
            r = launch(np_, "train", "--config", config, "--resume", previous,
                       "--set", f"distributed.strategy={strategy}", "--set", f"distributed.mesh_shape={shape}",
                       "--set", f"distributed.mesh_axis_names={axes}")
            layout = f"{strategy} {shape} {axes} on {np_}"
            self.assertEqual(r.returncode, 0, layout + ": " + r.stderr)
            self.assertIn(f"Ranks:       {np_}", r.stdout)
            self.assertEqual(re.findall(rf"^epoch (\d+)/{epochs}", r.stdout, re.M), [str(epochs)], layout)
            written = run_dir(config, "ckpt", f"ckpt-{6 * epochs}.safetensors")
            self.assertEqual(read_safetensors(written)[0]["shard_count"], str(np_), layout)
            resumed = params_of(written)
            expected = params_of(run_dir(long_run, "ckpt", f"ckpt-{6 * epochs}.safetensors"))
            self.assertEqual(sorted(resumed), sorted(expected))
            for name in expected:
                for a, b in zip(floats(resumed[name]), floats(expected[name])):
                    self.assertLessEqual(abs(a - b), 1e-4 * max(1.0, abs(b)), f"{layout}: {name}")
            previous = written

    def test_latest_picks_the_highest_step(self):
        config = make_run("resume-latest")
        shutil.copytree(run_dir(self.straight, "ckpt"), run_dir(config, "ckpt"))
        os.remove(run_dir(config, "ckpt", "ckpt-24.safetensors"))
        shutil.copy(self.middle, run_dir(config, "ckpt", "ckpt-6.safetensors"))  # lower step
        r = launch(2, "train", "--config", config, "--resume", "latest")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ckpt-18.safetensors at epoch 4, batch 0", r.stdout)


def straight_checkpoint(test, step=24):
    path = run_dir(STRAIGHT, "ckpt", f"ckpt-{step}.safetensors")
    if not os.path.exists(path):
        test.skipTest("the straight run failed")
    return path


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


class RunDirectory(unittest.TestCase):
    """A run never prunes, resumes or overwrites another run's checkpoints: runs are
    identified (run_id), a fresh run refuses a directory that holds another run's
    checkpoints unless told to set them aside, --resume auto continues or starts fresh."""

    def with_straight_checkpoints(self, name, config_text=BASE_CONFIG):
        config = make_run(name, config_text)
        shutil.copytree(run_dir(STRAIGHT, "ckpt"), run_dir(config, "ckpt"))
        return config

    def test_a_fresh_run_refuses_another_runs_checkpoints(self):
        straight_checkpoint(self)
        config = self.with_straight_checkpoints("fresh-over-old")
        before = {n: file_bytes(run_dir(config, "ckpt", n)) for n in checkpoints_in(run_dir(config, "ckpt"))}
        r = launch(2, "train", "--config", config, "--set", "training.num_epochs=1", timeout=30)
        one_error_line(self, r, f"{config}:19: checkpoint.dir: {run_dir(config, 'ckpt')}: holds 2 "
                                "checkpoint(s) of another run (ckpt-18.safetensors, ckpt-24.safetensors); "
                                "continue that run with --resume auto (or latest), or set "
                                "checkpoint.overwrite = true to move them to ")
        self.assertEqual(r.returncode, 2)
        self.assertNotIn("epoch 1/", r.stdout)
        after = {n: file_bytes(run_dir(config, "ckpt", n)) for n in checkpoints_in(run_dir(config, "ckpt"))}
        self.assertEqual(after, before)  # nothing written, nothing pruned
        self.assertFalse(os.path.exists(run_dir(config, "out", "metrics.csv")))

    def test_overwrite_sets_them_aside_and_the_new_run_keeps_its_own(self):
        straight_checkpoint(self)
        config = self.with_straight_checkpoints("overwrite")
        old = {n: file_bytes(run_dir(config, "ckpt", n)) for n in checkpoints_in(run_dir(config, "ckpt"))}
        r = launch(2, "train", "--config", config, "--set", "training.num_epochs=1",
                   "--set", "checkpoint.overwrite=true")
        self.assertEqual(r.returncode, 0, r.stderr)
        aside = field(r.stdout, "Set aside:")
        m = re.search(r"moved to (\S+) \(checkpoint\.overwrite\)", aside)
        self.assertIsNotNone(m, aside)
        self.assertEqual(os.path.dirname(m.group(1)), run_dir(config, "ckpt"))
        self.assertRegex(os.path.basename(m.group(1)), r"^replaced-\d{8}T\d{6}Z$")
        self.assertEqual({n: file_bytes(os.path.join(m.group(1), n)) for n in checkpoints_in(m.group(1))}, old)
        for name in old:  # the shards went along
            self.assertEqual(read_state(os.path.join(m.group(1), name))[1],
                             read_state(run_dir(STRAIGHT, "ckpt", name))[1])
        self.assertEqual(checkpoints_in(run_dir(config, "ckpt")), ["ckpt-6.safetensors"])
        printed = field(r.stdout, "Checkpoint:")
        self.assertTrue(os.path.exists(printed), printed)
        # --resume latest continues the new run, not the old one.
        resumed = launch(2, "train", "--config", config, "--resume", "latest", "--set", "training.num_epochs=2")
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        self.assertIn("ckpt-6.safetensors at epoch 2, batch 0", resumed.stdout)
        self.assertEqual(checkpoints_in(run_dir(config, "ckpt")), ["ckpt-6.safetensors", "ckpt-12.safetensors"])

    def test_starting_over_keeps_the_earlier_runs_files(self):
        config = make_run("start-over", BASE_CONFIG.replace("num_epochs = 4", "num_epochs = 1"))
        first = launch(2, "train", "--config", config)
        self.assertEqual(first.returncode, 0, first.stderr)
        metrics = {n: file_bytes(run_dir(config, "out", n)) for n in ("metrics.csv", "metrics.jsonl")}
        checkpoint = file_bytes(run_dir(config, "ckpt", "ckpt-6.safetensors"))
        again = launch(2, "train", "--config", config, "--set", "checkpoint.overwrite=true")
        self.assertEqual(again.returncode, 0, again.stderr)
        lines = re.findall(r"^Set aside:   (.*)$", again.stdout, re.M)
        self.assertEqual(len(lines), 2, again.stdout)
        ckpt_aside = re.search(r"moved to (\S+) \(checkpoint\.overwrite\)$", lines[0]).group(1)
        out_aside = re.search(r"^the earlier metrics, moved to (\S+)$", lines[1]).group(1)
        self.assertEqual(os.path.dirname(out_aside), run_dir(config, "out"))
        self.assertEqual(file_bytes(os.path.join(ckpt_aside, "ckpt-6.safetensors")), checkpoint)
        for name, blob in metrics.items():
            self.assertEqual(file_bytes(os.path.join(out_aside, name)), blob, name)
        with open(run_dir(config, "out", "metrics.csv")) as f:
            self.assertEqual(len(f.read().splitlines()), 2)  # the new run's header and epoch

    def test_resume_auto_starts_fresh_then_continues(self):
        straight = straight_checkpoint(self)
        config = make_run("auto")
        first = launch(2, "train", "--config", config, "--resume", "auto", "--set", "training.num_epochs=2")
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertNotIn("Resumed:", first.stdout)
        self.assertEqual(checkpoints_in(run_dir(config, "ckpt")), ["ckpt-6.safetensors", "ckpt-12.safetensors"])
        second = launch(2, "train", "--config", config, "--resume", "auto")
        self.assertEqual(second.returncode, 0, second.stderr)
        self.assertIn("ckpt-12.safetensors at epoch 3, batch 0", second.stdout)
        self.assertEqual(params_of(run_dir(config, "ckpt", "ckpt-24.safetensors")), params_of(straight))
        meta = [read_safetensors(run_dir(config, "ckpt", n))[0]["run_id"] for n in checkpoints_in(run_dir(config, "ckpt"))]
        self.assertEqual(len(set(meta)), 1, meta)  # the resumed run kept its id

    def test_resume_auto_needs_a_checkpoint_dir(self):
        config = make_run("auto-no-dir", BASE_CONFIG.replace('[checkpoint]\ndir = "ckpt"\n', "[checkpoint]\n"))
        one_error_line(self, launch(2, "train", "--config", config, "--resume", "auto", timeout=30),
                       f"--resume auto: checkpoint.dir is not set in {config}")

    def test_resume_latest_refuses_a_directory_shared_with_another_run(self):
        straight_checkpoint(self)
        config = self.with_straight_checkpoints("mixed")
        other = make_run("mixed-other")
        r = launch(2, "train", "--config", other, "--set", "training.num_epochs=1")
        self.assertEqual(r.returncode, 0, r.stderr)
        shutil.copy(run_dir(other, "ckpt", "ckpt-6.safetensors"), run_dir(config, "ckpt"))
        r = launch(2, "train", "--config", config, "--resume", "latest", timeout=30)
        one_error_line(self, r, f"checkpoint.dir: {run_dir(config, 'ckpt')}: holds 1 checkpoint(s) of "
                                "another run (ckpt-6.safetensors); resume the newest with --resume latest, or "
                                "set checkpoint.overwrite = true")
        self.assertEqual(r.returncode, 2)

    def test_resuming_before_this_runs_later_checkpoints(self):
        straight = straight_checkpoint(self)
        config = self.with_straight_checkpoints("rewind")
        middle = run_dir(config, "ckpt", "ckpt-18.safetensors")
        r = launch(2, "train", "--config", config, "--resume", middle, timeout=30)
        one_error_line(self, r, "holds 1 checkpoint(s) of this run beyond the one resumed (step 18) "
                                "(ckpt-24.safetensors)")
        self.assertEqual(r.returncode, 2)
        r = launch(2, "train", "--config", config, "--resume", middle, "--set", "checkpoint.overwrite=true")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(params_of(run_dir(config, "ckpt", "ckpt-24.safetensors")), params_of(straight))

    def test_unwritable_or_impossible_directories_fail_before_training(self):
        blocker = os.path.join(WORK, "blocker-file")
        with open(blocker, "w") as f:
            f.write("not a directory\n")
        cases = [
            (f"{blocker}/ckpt", "cannot create the directory: Not a directory"),
            (blocker, "cannot create the directory"),
            ("/proc/self", "cannot create a file in the directory"),  # read-only, even for root
            ("/proc/meshtrain-ckpt", "cannot create the directory"),
        ]
        for key in ("checkpoint.dir", "output.dir"):
            for path, expected in cases:
                with self.subTest(key=key, path=path):
                    config = make_run("bad-dir", BASE_CONFIG.replace("every_epochs = 1", "every_epochs = 0"))
                    r = launch(2, "train", "--config", config, "--set", f"{key}={path}", timeout=30)
                    one_error_line(self, r, f"--set: {key}: {path}: {expected}")
                    self.assertEqual(r.returncode, 2)
                    self.assertNotIn("epoch 1/", r.stdout)

    def test_a_directory_in_use_by_another_run_is_refused(self):
        config = make_run("locked")
        os.makedirs(run_dir(config, "ckpt"))
        lock = run_dir(config, "ckpt", ".ckpt.lock")
        with open(lock, "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running meshtrain holds it
            r = launch(2, "train", "--config", config, timeout=30)
        one_error_line(self, r, f"checkpoint.dir: {run_dir(config, 'ckpt')}: another meshtrain run is using "
                                f"it (it holds {lock})")
        self.assertEqual(r.returncode, 2)
        # Released with the process: the next run goes ahead, and another prefix never waited.
        r = launch(2, "train", "--config", config, "--set", "training.num_epochs=1")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_a_checkpoint_that_cannot_be_written_mid_run_is_one_line(self):
        config = make_run("write-fails", BASE_CONFIG.replace("num_epochs = 4", "num_epochs = 2"))
        os.makedirs(run_dir(config, "ckpt", "ckpt-12.safetensors"))  # where epoch 2's must go
        r = launch(2, "train", "--config", config, timeout=60)
        one_error_line(self, r, f"checkpoint.dir: {run_dir(config, 'ckpt', 'ckpt-12.safetensors')}: cannot "
                                "write checkpoint (renaming ")
        self.assertIn(f"the run's checkpoint {run_dir(config, 'ckpt', 'ckpt-6.safetensors')} is intact", r.stderr)
        self.assertEqual(r.returncode, 2)
        # No temporary file left, and the failed write's shards removed.
        self.assertEqual(sorted(n for n in os.listdir(run_dir(config, "ckpt"))
                                if not n.startswith(".") and not n.startswith("flight-")),
                         ["ckpt-12.safetensors", "ckpt-6.safetensors",
                          read_safetensors(run_dir(config, "ckpt", "ckpt-6.safetensors"))[0]["shards_dir"]])
        self.assertTrue(os.path.isdir(run_dir(config, "ckpt", "ckpt-12.safetensors")))

    def test_metrics_that_cannot_be_written_mid_run_are_one_line(self):
        config = make_run("metrics-full")
        os.makedirs(run_dir(config, "out"))
        os.symlink("/dev/full", run_dir(config, "out", "metrics.csv"))  # every write: ENOSPC
        r = launch(2, "train", "--config", config, timeout=60)
        one_error_line(self, r, f"{config}:24: output.dir: {run_dir(config, 'out', 'metrics.csv')}: cannot write "
                                "the metrics: No space left on device")
        self.assertEqual(r.returncode, 2)
        self.assertNotIn("epoch 2/", r.stdout)  # stopped after the first epoch, on every rank

    def test_a_full_file_system_fails_before_training(self):
        mount = os.path.join(WORK, "small-fs")
        os.makedirs(mount, exist_ok=True)
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mount],
                              capture_output=True, text=True)
        if made.returncode != 0:
            self.skipTest(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
        try:
            config = make_run("full", BASE_CONFIG.replace("widths = [4, 16, 1]", "widths = [4, 128, 128, 1]"))
            r = launch(2, "train", "--config", config, "--set", f"checkpoint.dir={mount}/ckpt", timeout=30)
            one_error_line(self, r, f"--set: checkpoint.dir: {mount}/ckpt: only ")
            self.assertIn("free, but this run needs about", r.stderr)
            self.assertIn("3 more checkpoint(s) of about", r.stderr)
            self.assertEqual(r.returncode, 2)
            self.assertNotIn("epoch 1/", r.stdout)
        finally:
            subprocess.run(["umount", mount], capture_output=True)


class CheckpointIntegrity(unittest.TestCase):
    """The whole file is checked (header, metadata, data), old checkpoints still load, and a
    checkpoint made from other training data is refused."""

    def test_an_edited_metadata_value_is_refused_naming_the_file(self):
        straight = straight_checkpoint(self)
        for old, new in ((b'"optimizer_step":"24"', b'"optimizer_step":"25"'),
                         (b'"epoch":"4"', b'"epoch":"3"'),
                         (b'"epoch_losses":"[', b'"epoch_losses":" ')):
            with self.subTest(edit=new):
                blob = file_bytes(straight)
                self.assertIn(old, blob)
                edited = os.path.join(WORK, "edited.safetensors")
                with open(edited, "wb") as f:
                    f.write(blob.replace(old, new, 1))
                config = make_run("edited")
                r = launch(2, "train", "--config", config, "--resume", edited, timeout=30)
                one_error_line(self, r, f"--resume {edited}: {edited}: corrupt: checksum mismatch over the "
                                        "header, metadata and data")
                self.assertEqual(r.returncode, 2)

    def test_a_rewritten_header_without_the_checksum_is_refused(self):
        straight = straight_checkpoint(self)
        stripped = os.path.join(WORK, "stripped.safetensors")

        def drop(meta):
            del meta["meshtrain.file_crc32"]
            meta["optimizer_step"] = "25"
        rewrite_safetensors(straight, stripped, drop)
        r = launch(2, "train", "--config", make_run("stripped"), "--resume", stripped, timeout=30)
        one_error_line(self, r, f"checkpoint {stripped}: format version 2 but no whole-file checksum")

    def test_checkpoints_of_the_previous_format_still_load(self):
        straight = run_dir(SINGLE, "ckpt", "ckpt-18.safetensors")
        if not os.path.exists(straight):
            self.skipTest("the single-file run failed")
        old = os.path.join(WORK, "format1.safetensors")

        def as_format_1(meta):
            for key in ("meshtrain.file_crc32", "run_id", "data_crc32", "data"):
                del meta[key]
            meta["meshtrain.format_version"] = "1"
        rewrite_safetensors(straight, old, as_format_1)
        config = make_run("format1")
        r = launch(2, "train", "--config", config, "--resume", old)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(params_of(run_dir(config, "ckpt", "ckpt-24.safetensors")),
                         params_of(straight_checkpoint(self)))
        # Its data checksum is still checked.
        blob = bytearray(file_bytes(old))
        blob[-10] ^= 0x40
        with open(old, "wb") as f:
            f.write(blob)
        one_error_line(self, launch(2, "train", "--config", make_run("format1-bad"), "--resume", old, timeout=30),
                       "corrupt: checksum mismatch (the header records")

    def test_other_training_data_is_refused(self):
        straight = straight_checkpoint(self, 18)
        config = make_run("other-data")
        other_x = os.path.join(WORK, "data", "other_x.npy")
        other_y = os.path.join(WORK, "data", "other_y.npy")
        r = launch(2, "train", "--config", config, "--resume", straight,
                   "--set", f"data.train_x={other_x}", "--set", f"data.train_y={other_y}", timeout=30)
        meta, _ = read_safetensors(straight)
        one_error_line(self, r, f"checkpoint {straight}: made with other training data (its data_crc32 "
                                f"{meta['data_crc32']}, this run's data.train_x = {other_x}, "
                                f"data.train_y = {other_y} hash to ")
        self.assertEqual(r.returncode, 2)


class KilledRank(unittest.TestCase):
    """A rank killed with SIGKILL mid-run (injected at step 9 of 24): the job ends non-zero
    at once naming the rank, the last complete checkpoint is intact, and --resume latest
    finishes exactly like the uninterrupted run."""

    def test_kill_then_resume(self):
        straight = run_dir(STRAIGHT, "ckpt", "ckpt-24.safetensors")
        if not os.path.exists(straight):
            self.skipTest("the straight run failed")
        config = make_run("killed")
        env = dict(os.environ, MESHTRAIN_FAULT_INJECT="kill:1:15")
        r = subprocess.run([LAUNCH, "-np", "2", BINARY, "train", "--config", config],
                           capture_output=True, text=True, timeout=180, cwd=WORK, env=env)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("process rank 1", r.stderr)
        # Epoch 1's checkpoint (step 6) was published before epoch 2's began to be written
        # (each write waits for the one before); epoch 2's, written in the background while
        # epoch 3 trained, may or may not have been when rank 1 died at step 15. Whatever is
        # listed is complete; an unpublished write's shards are removed by the next run.
        listed = checkpoints_in(run_dir(config, "ckpt"))
        self.assertIn(listed, (["ckpt-6.safetensors"], ["ckpt-6.safetensors", "ckpt-12.safetensors"]))
        for name in listed:
            read_state(run_dir(config, "ckpt", name))
        resumed = launch(2, "train", "--config", config, "--resume", "latest")
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        referenced = {read_safetensors(run_dir(config, "ckpt", n))[0]["shards_dir"]
                      for n in checkpoints_in(run_dir(config, "ckpt"))}
        self.assertEqual({n for n in os.listdir(run_dir(config, "ckpt")) if ".shards-" in n}, referenced)
        self.assertEqual(params_of(run_dir(config, "ckpt", "ckpt-24.safetensors")),
                         params_of(straight))


class Preemption(unittest.TestCase):
    """The slow run stopped by SIGTERM, resubmitted with --resume latest (and cut to 6
    epochs, which the fingerprint allows), against a 6-epoch run that was never stopped."""

    @classmethod
    def setUpClass(cls):
        cls.config = make_run("preempted", SLOW_CONFIG)
        cls.stopped = preempt_at_step(cls.config, STOP_STEP)
        cls.after_stop = checkpoints_in(run_dir(cls.config, "ckpt"))
        cls.finish = launch(2, "train", "--config", cls.config, "--resume", "latest",
                            "--set", "training.num_epochs=6")
        cls.straight = make_run("preempted-straight", SLOW_CONFIG)
        cls.ref = launch(2, "train", "--config", cls.straight, "--set", "training.num_epochs=6")
        m = re.search(r"^meshtrain: preempted at epoch (\d+) batch (\d+); checkpoint (\S+); "
                      r"resubmit with --resume latest$", cls.stopped.stdout, re.M)
        cls.stopped_epoch, cls.stopped_batch, cls.checkpoint = (
            (int(m.group(1)), int(m.group(2)), m.group(3)) if m else (None, None, None))

    def metrics_rows(self, config):
        with open(run_dir(config, "out", "metrics.csv")) as f:
            rows = list(csv.reader(f))
        self.assertEqual(rows[0], CSV_COLUMNS)
        return rows[1:]

    def test_sigterm_checkpoints_and_exits_75(self):
        r = self.stopped
        self.assertEqual(r.returncode, PREEMPTED, r.stdout + r.stderr)
        self.assertIsNotNone(self.stopped_epoch, r.stdout)
        # Step 150 is batch 23 of epoch 3 (64 batches an epoch), counted from 1.
        self.assertEqual((self.stopped_epoch, self.stopped_batch), (3, 23), r.stdout)
        self.assertEqual(os.path.dirname(self.checkpoint), run_dir(self.config, "ckpt"))
        self.assertIn(os.path.basename(self.checkpoint), self.after_stop)
        self.assertEqual(self.after_stop[-1], os.path.basename(self.checkpoint))  # the newest

    def test_resubmitted_run_matches_the_uninterrupted_one_exactly(self):
        self.assertEqual(self.finish.returncode, 0, self.finish.stderr)
        self.assertEqual(self.ref.returncode, 0, self.ref.stderr)
        final = "ckpt-384.safetensors"  # 6 epochs of 64 steps
        self.assertEqual(params_of(run_dir(self.config, "ckpt", final)),
                         params_of(run_dir(self.straight, "ckpt", final)))
        self.assertEqual(field(self.finish.stdout, "Final loss:"), field(self.ref.stdout, "Final loss:"))
        self.assertEqual(checkpoints_in(run_dir(self.config, "ckpt")),
                         ["ckpt-320.safetensors", "ckpt-384.safetensors"])

    def test_metrics_hold_one_row_per_epoch_of_the_run(self):
        rows = self.metrics_rows(self.config)
        ref_rows = self.metrics_rows(self.straight)
        self.assertEqual([r[0] for r in rows], [str(e) for e in range(1, 7)])
        for got, want in zip(rows, ref_rows):
            self.assertEqual(got[4], want[4], f"step of epoch {got[0]}")
            self.assertEqual(got[1], want[1], f"train loss of epoch {got[0]}")

    def test_resumed_epoch_loss_is_exact(self):
        # The interrupted epoch's loss combines the batches before and after the resume.
        if self.finish.returncode != 0 or self.ref.returncode != 0:
            self.skipTest("the runs failed; see the other tests")
        rows = self.metrics_rows(self.config)
        ref_rows = self.metrics_rows(self.straight)
        self.assertEqual([r[1] for r in rows], [r[1] for r in ref_rows])

    def test_sigusr1_to_the_launcher_is_forwarded(self):
        config = make_run("preempted-usr1", SLOW_CONFIG)
        r = preempt_by_launcher(config)
        self.assertEqual(r.returncode, PREEMPTED, r.stdout + r.stderr)
        self.assertIn("meshtrain: preempted at epoch", r.stdout)
        self.assertTrue(checkpoints_in(run_dir(config, "ckpt")))


class ReferenceExample(unittest.TestCase):
    def test_same_losses_as_distributed_pde(self):
        if not DISTRIBUTED_PDE:
            self.skipTest("--distributed-pde not given")
        out = os.path.join(WORK, "reference")
        r = launch(2, "train", "--config", os.path.join(ROOT, "examples", "reference.toml"),
                   "--set", f"checkpoint.dir={out}/ckpt", "--set", f"output.dir={out}")
        self.assertEqual(r.returncode, 0, r.stderr)
        ref = subprocess.run([LAUNCH, "-np", "2", DISTRIBUTED_PDE], capture_output=True, text=True,
                             timeout=60)
        self.assertEqual(ref.returncode, 0, ref.stderr)
        for name in ("Initial loss:", "Final loss:"):
            self.assertEqual(field(r.stdout, name), field(ref.stdout, name))
        self.assertEqual(len(re.findall(r"^epoch \d+/20:", r.stdout, re.M)), 20)
        self.assertIn("Model:       widths [4, 64, 1], relu, 385 parameters", r.stdout)


class Display(unittest.TestCase):
    def test_progress_bar_or_lines(self):
        config = make_run("display", BASE_CONFIG.replace("num_epochs = 4", "num_epochs = 1"))
        bar = launch(1, "train", "--config", config, "--progress", "bar")
        self.assertEqual(bar.returncode, 0, bar.stderr)
        self.assertIn("] 1/1 epochs", bar.stdout)
        lines = launch(1, "train", "--config", config, "--progress", "lines",
                       "--set", "checkpoint.overwrite=true")  # the first run's are there
        self.assertEqual(lines.returncode, 0, lines.stderr)
        self.assertNotIn("] 1/1 epochs", lines.stdout)
        self.assertRegex(lines.stdout, r"(?m)^epoch 1/1: train loss")


class Help(unittest.TestCase):
    def test_help_documents_subcommands_keys_and_exit_codes(self):
        top = launch(2, "--help")
        self.assertEqual(top.returncode, 0, top.stderr)
        for word in ("train", "plot", "75"):
            self.assertIn(word, top.stdout)
        r = launch(2, "train", "--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.count("--config"), 1)  # rank 0 only
        for word in ("--set", "--resume", "[training]", "[distributed]", "[model]", "[data]",
                     "[checkpoint]", "[output]", "num_epochs", "learning_rate", "batch_size",
                     "seed", "optimizer", "bucket_mb", "bucket_bytes", "overlap_communication", "progress",
                     "grad_comm_dtype", "compute_dtype",
                     "shuffle", "validation_every", "nonfinite", "mesh_shape", "mesh_axis_names",
                     "strategy", "comm", "widths", "activation", "train_x", "val_y", "synthetic",
                     "every_epochs", "keep_last", "prefix", "EXIT CODES"):
            self.assertIn(word, r.stdout)
        # The choices' types and defaults, from the library's tables.
        for line in ('optimizer = "adam"', '"adam" | "adamw" | "sgd"', 'progress = "auto"',
                     '"auto" | "thread" | "poll"', 'nonfinite = "abort"', '"abort" | "skip"',
                     'grad_comm_dtype = "fp32"', '"fp32" | "bf16"',
                     'strategy = "data"', '"data" | "fsdp"', 'comm = "auto"',
                     '"auto" | "mpi" | "nccl"', 'activation = "relu"',
                     '"relu" | "tanh" | "gelu" | "identity"'):
            self.assertIn(line, r.stdout)


class Schedules(unittest.TestCase):
    """The learning rate of each epoch's last step in the metrics, as optax computes it."""

    def test_warmup_cosine_rates_in_the_metrics(self):
        config = make_run("warmup-cosine")
        r = launch(2, "train", "--config", config, "--set", "training.schedule=warmup_cosine",
                   "--set", "training.warmup_steps=6", "--set", "training.min_learning_rate=0.001")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("lr 0.01, warmup_cosine (warmup 6 steps from 0, cosine to 0.001 at the "
                      "run's end)", r.stdout)
        with open(run_dir(config, "out", "metrics.csv")) as f:
            rows = list(csv.reader(f))[1:]
        # 4 epochs of 6 steps; epoch e ends with step 6 e - 1 (counted from 0).
        def rate(t):
            if t < 6:
                return 0.01 * t / 6
            return 0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * (t - 6) / 18))
        for e, row in enumerate(rows, start=1):
            self.assertAlmostEqual(float(row[CSV_COLUMNS.index("learning_rate")]),
                                   rate(6 * e - 1), delta=1e-12)
        lines = re.findall(r"^epoch \d+/4: .*, lr (\S+), ", r.stdout, re.M)
        self.assertEqual([float(v) for v in lines], [float("%.6g" % rate(6 * e - 1))
                                                     for e in range(1, 5)])


class Clipping(unittest.TestCase):
    def test_the_norm_before_clipping_is_reported(self):
        config = make_run("clipped")
        r = launch(2, "train", "--config", config, "--set", "training.clip_grad_norm=0.05")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("lr 0.01, clip grad norm 0.05, shuffle on", r.stdout)
        norms = re.findall(r"^epoch \d+/4: .*, lr 0\.01, grad norm (\S+), ", r.stdout, re.M)
        self.assertEqual(len(norms), 4, r.stdout)
        with open(run_dir(config, "out", "metrics.csv")) as f:
            rows = list(csv.reader(f))[1:]
        self.assertEqual(["%.6g" % float(row[CSV_COLUMNS.index("grad_norm")]) for row in rows],
                         norms)
        self.assertTrue(all(float(n) > 0 for n in norms))
        # Clipping changed the run.
        self.assertNotEqual(field(r.stdout, "Final loss:"), field(STRAIGHT_RESULT.stdout, "Final loss:"))


class BadInput(unittest.TestCase):
    """One line on stderr from rank 0 naming the file, line and key (or the .npy problem),
    and a non-zero exit, before any training."""

    def check(self, expected, *args, config_text=BASE_CONFIG, code=2):
        config = make_run("bad", config_text)
        r = launch(2, "train", "--config", config, *args, timeout=30)
        one_error_line(self, r, expected.replace("CONFIG", config))
        self.assertEqual(r.returncode, code)
        self.assertNotIn("epoch 1/", r.stdout)

    def data(self, name):
        return os.path.join(WORK, "data", name)

    def test_a_directory_is_not_a_config(self):
        one_error_line(self, launch(2, "train", "--config", WORK),
                       f"{WORK}: is a directory, not a config file")

    def test_config_errors_name_file_line_and_key(self):
        cases = [
            ("batch_size = 16\n", "batch_size = 16\nbatchsize = 3\n",
             "CONFIG:4: training.batchsize: unknown key"),
            ("[training]\n", "[trainig]\n", "CONFIG:1: trainig: unknown section"),
            ("batch_size = 16\n", "batch_size = \"16\"\n",
             "CONFIG:3: training.batch_size: expected an integer, got string"),
            ("learning_rate = 0.01\n", "learning_rate = -0.01\n",
             "CONFIG:4: training.learning_rate: -0.01 is out of range (greater than 0)"),
            ("num_epochs = 4\n", "num_epochs = 0\n",
             "CONFIG:2: training.num_epochs: 0 is out of range (at least 1)"),
            ("widths = [4, 16, 1]\n", "widths = [4, 16, 1.5]\n",
             "CONFIG:9: model.widths[2]: expected an integer, got float"),
            ("activation = \"tanh\"\n", "activation = \"swish\"\n",
             "CONFIG:10: model.activation: 'swish' is not one of relu, tanh, gelu, identity"),
            ("keep_last = 2\n", "keep_last = 2\nkeep = 2\n", "CONFIG:22: checkpoint.keep: unknown key"),
            ("shuffle = true\n", "shuffle = yes\n", "CONFIG:5: invalid TOML"),
            ("[model]\n", "[distributed]\nmesh_shape = [3]\n\n[model]\n",
             "CONFIG:9: distributed.mesh_shape (3,): describes 3 devices but the job has 2 ranks"),
            ("batch_size = 16\n", "batch_size = 1\n",
             "CONFIG:3: training.batch_size 1: smaller than the 2 shards"),
            # The library's errors, located by their field: the Trainer's backend check, and
            # the mesh's axis names.
            ("[model]\n", "[distributed]\ncomm = \"nccl\"\n\n[model]\n",
             "CONFIG:9: distributed.comm 'nccl': "),
            ("[model]\n",
             "[distributed]\nmesh_shape = [1, 2]\nmesh_axis_names = [\"data\"]\n\n[model]\n",
             "CONFIG:10: distributed.mesh_axis_names ('data',): 1 name(s) for a 2-D mesh (1, 2)"),
        ]
        for old, new, expected in cases:
            with self.subTest(expected=expected):
                self.assertIn(old, BASE_CONFIG)
                self.check(expected, config_text=BASE_CONFIG.replace(old, new, 1))

    def test_set_errors(self):
        cases = [
            (["--set", "training.bogus=1"], "--set: training.bogus: unknown key"),
            (["--set", "nosuch.key=1"], "--set: nosuch.key: unknown section"),
            (["--set", "training.batch_size=abc"], "--set: training.batch_size: expected an integer, got string"),
            (["--set", "training.learning_rate=0"], "--set: training.learning_rate: 0 is out of range"),
            (["--set", "training.optimizer=lbfgs"], "--set: training.optimizer: 'lbfgs' is not one of adam, adamw, sgd"),
            (["--set", "training.progress=sometimes"], "--set: training.progress: 'sometimes' is not one of auto, thread, poll"),
            (["--set", "training.grad_comm_dtype=fp16"],
             "--set: training.grad_comm_dtype: 'fp16' is not one of fp32, bf16"),
            (["--set", "training.grad_comm_dtype=bf16", "--set", "distributed.strategy=fsdp"],
             "--set: training.grad_comm_dtype bf16: only with strategy data (this run's is fsdp"),
            (["--set", "training.compute_dtype=fp8"],
             "--set: training.compute_dtype: 'fp8' is not one of fp32, bf16"),
            (["--set", "training.batch_size"], "--set 'training.batch_size': expected SECTION.KEY=VALUE"),
            (["--no-such-flag"], "--no-such-flag"),
            (["--progress", "sometimes"], "--progress: sometimes not in {auto,bar,lines}"),
            (["--set", "training.schedule=linear"], "--set: training.schedule: 'linear' is not "
             "one of constant, warmup_cosine, step, warmup_constant"),
            (["--set", "training.warmup_steps=3"], "--set: training.warmup_steps 3: only with "
             "schedule warmup_cosine or warmup_constant (this run's is constant)"),
            (["--set", "training.schedule=step"], "CONFIG: training.step_size 0: must be at least 1"),
            (["--set", "training.schedule=warmup_cosine", "--set", "training.warmup_steps=24"],
             "--set: training.warmup_steps 24: not fewer than the schedule's 24 optimizer steps"),
            (["--set", "training.gamma=0"], "--set: training.gamma: 0 is out of range"),
            (["--set", "training.accumulation_steps=0"],
             "--set: training.accumulation_steps: 0 is out of range (at least 1)"),
            (["--set", "training.accumulation_steps=9"], "--set: training.accumulation_steps 9: "
             "a micro-batch of 16 / 9 = 1 sample(s) is smaller than the 2 shards"),
            (["--set", "training.clip_grad_norm=-1"],
             "--set: training.clip_grad_norm: -1 is out of range (at least 0)"),
        ]
        for args, expected in cases:
            with self.subTest(args=args):
                self.check(expected, *args)

    def test_data_errors(self):
        cases = [
            ("nope.npy", "train_x", "cannot open"),
            ("bad-wrong-magic.npy", "train_x", "not a .npy file"),
            ("bad-truncated.npy", "train_x", "truncated"),
            ("bad-fortran.npy", "train_x", "Fortran order"),
            ("bad-f2.npy", "train_x", "unsupported dtype '<f2'"),
            ("bad-nan.npy", "train_x", "holds nan"),
            ("short_y.npy", "train_y", "50 samples, but data.train_x has 96"),
            ("val_x.npy", "val_y", "shape (32, 4) has 4 targets per sample, but the model has 1 outputs"),
        ]
        for name, key, expected in cases:
            with self.subTest(file=name):
                path = self.data(name)
                self.check(f"--set: data.{key}: {path}: {expected}", "--set", f"data.{key}={path}")

    def test_data_error_in_the_file_names_its_line(self):
        self.check(f"CONFIG:13: data.train_x: {self.data('bad-nan.npy')}: holds nan",
                   config_text=BASE_CONFIG.replace("../data/train_x.npy", "../data/bad-nan.npy"))

    def test_a_model_too_large_for_memory_is_one_line(self):
        self.check("--set: model.widths [4, 2000000, 2000000, 1]: training needs about ",
                   "--set", "model.widths=[4, 2000000, 2000000, 1]")
        self.check("--set: model.hidden [4, 3000000, 3000000, 1]: training needs about ",
                   "--set", "model.hidden=3000000", "--set", "model.layers=2",
                   config_text=BASE_CONFIG.replace("widths = [4, 16, 1]\n", ""))
        # Synthetic data, checked before it is generated; a batch whose activations do not fit.
        synthetic = BASE_CONFIG[:BASE_CONFIG.index("[data]")] + "[data]\nsynthetic = \"reference\"\n"
        self.check("--set: data.samples 2000000000: training needs about ",
                   "--set", "data.samples=2000000000", config_text=synthetic)
        self.check("--set: training.batch_size 200000000: training needs about ",
                   "--set", "data.samples=200000000", "--set", "training.batch_size=200000000",
                   "--set", "model.widths=[4, 1000, 1]", config_text=synthetic)
        r = launch(2, "train", "--config", make_run("huge"), "--set", "model.widths=[4, 2000000, 2000000, 1]",
                   timeout=30)
        self.assertIn(" per rank, more than the ", r.stderr)
        self.assertIn("of memory available to each of this node's 2 rank(s)", r.stderr)

    def test_checkpoint_errors(self):
        straight = run_dir(STRAIGHT, "ckpt", "ckpt-24.safetensors")
        if not os.path.exists(straight):
            self.skipTest("the straight run failed")
        corrupt = os.path.join(WORK, "corrupt.safetensors")
        with open(run_dir(SINGLE, "ckpt", "ckpt-24.safetensors"), "rb") as f:
            blob = bytearray(f.read())
        blob[-10] ^= 0x40  # a byte of tensor data
        with open(corrupt, "wb") as f:
            f.write(blob)
        self.check("checksum", "--resume", corrupt)
        # A byte of one shard of a sharded checkpoint: the shard is named.
        copy = os.path.join(WORK, "corrupt-sharded")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(os.path.dirname(straight), copy)
        shards = os.path.join(copy, read_safetensors(straight)[0]["shards_dir"])
        shard = os.path.join(shards, "shard-00001-of-00002.safetensors")
        blob = bytearray(file_bytes(shard))
        blob[-10] ^= 0x40
        with open(shard, "wb") as f:
            f.write(blob)
        self.check(f"{shard}: corrupt: checksum mismatch", "--resume", os.path.join(copy, "ckpt-24.safetensors"))
        self.check("one rank's shard of a sharded checkpoint: resume from its index", "--resume",
                   os.path.join(shards, "shard-00000-of-00002.safetensors"))
        os.remove(shard)
        self.check(f"{shard}: cannot open: no such file", "--resume", os.path.join(copy, "ckpt-24.safetensors"))
        self.check(f"checkpoint {straight}: made for a different run", "--resume", straight,
                   "--set", "model.widths=[4, 8, 1]")
        self.check("differs in learning_rate (checkpoint 0.01, this run 0.02)", "--resume", straight,
                   "--set", "training.learning_rate=0.02")
        self.check("--resume latest: no checkpoints ckpt-<step>.safetensors in", "--resume", "latest")
        self.check("cannot open: no such file", "--resume", os.path.join(WORK, "none.safetensors"))


def read_npy(path):
    """(shape, float32 values) of a '<f4' C-order .npy file as meshtrain writes it."""
    with open(path, "rb") as f:
        blob = f.read()
    assert blob[:8] == b"\x93NUMPY\x01\x00", blob[:8]
    (n,) = struct.unpack("<H", blob[8:10])
    header = blob[10:10 + n].decode("latin1")
    assert "'descr': '<f4'" in header and "'fortran_order': False" in header, header
    dims = re.search(r"'shape': \(([^)]*)\)", header).group(1).split(",")
    shape = tuple(int(d) for d in dims if d.strip())
    return shape, floats(blob[10 + n:])


class DarcyData(unittest.TestCase):
    """meshtrain data darcy: the files, their values, the same bytes from 1 and 3 ranks."""

    ARGS = ["data", "darcy", "--samples", "7", "--resolution", "16"]

    @classmethod
    def setUpClass(cls):
        cls.dir = os.path.join(WORK, "darcy")
        shutil.rmtree(cls.dir, ignore_errors=True)
        cls.runs = {}
        for name, np_, seed in (("np1", 1, "5"), ("np3", 3, "5"), ("seed6", 2, "6")):
            out = os.path.join(cls.dir, name, "made", "here")  # created with its parents
            cls.runs[name] = (out, launch(np_, *cls.ARGS, "--seed", seed, "-o", out))

    def run_of(self, name):
        out, result = self.runs[name]
        self.assertEqual(result.returncode, 0, result.stderr)
        return out, result

    def test_one_and_three_ranks_write_the_same_bytes(self):
        one, _ = self.run_of("np1")
        three, _ = self.run_of("np3")
        for name in ("x.npy", "y.npy"):
            with open(os.path.join(one, name), "rb") as f1:
                with open(os.path.join(three, name), "rb") as f3:
                    self.assertEqual(f1.read(), f3.read(), name)

    def test_fewer_samples_than_ranks_are_the_first_samples_of_a_larger_set(self):
        out = os.path.join(self.dir, "two")
        r = launch(3, "data", "darcy", "--samples", "2", "--resolution", "16", "--seed", "5",
                   "-o", out)
        self.assertEqual(r.returncode, 0, r.stderr)  # the third rank has no sample
        seven, _ = self.run_of("np1")
        for name in ("x.npy", "y.npy"):
            shape, values = read_npy(os.path.join(out, name))
            self.assertEqual(shape, (2, 16, 16, 1))
            self.assertEqual(values, read_npy(os.path.join(seven, name))[1][:2 * 16 * 16], name)

    def test_another_seed_gives_other_data(self):
        one, _ = self.run_of("np1")
        other, _ = self.run_of("seed6")
        for name in ("x.npy", "y.npy"):
            self.assertNotEqual(read_npy(os.path.join(one, name))[1],
                                read_npy(os.path.join(other, name))[1])

    def test_coefficient_and_solution(self):
        out, _ = self.run_of("np3")
        x_shape, a = read_npy(os.path.join(out, "x.npy"))
        y_shape, u = read_npy(os.path.join(out, "y.npy"))
        self.assertEqual(x_shape, (7, 16, 16, 1))
        self.assertEqual(y_shape, (7, 16, 16, 1))
        s = 16
        for n in range(7):
            sample_a = a[n * s * s:(n + 1) * s * s]
            self.assertEqual(set(sample_a), {3.0, 12.0}, n)
            for i in range(s):
                for j in range(s):
                    v = u[n * s * s + i * s + j]
                    if i in (0, s - 1) or j in (0, s - 1):
                        self.assertEqual(v, 0.0, (n, i, j))
                    else:
                        self.assertGreater(v, 0.0, (n, i, j))

    def test_summary_line(self):
        _, result = self.run_of("np3")
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 1, result.stdout)  # rank 0 only
        self.assertRegex(lines[0], r"^meshtrain: darcy: 7 samples at 16 x 16 on 3 rank\(s\) in "
                         r"[0-9.e+-]+ s: a in \[3, 12\], u in \[0, 0\.0[0-9]+\], "
                         r"CG iterations [0-9]+ to [0-9]+ "
                         r"\(relative residual <= [0-9.e+-]+\); wrote .*/x\.npy and .*/y\.npy$")

    def test_train_reads_the_files_flattened(self):
        out = os.path.join(self.dir, "small")
        made = launch(2, "data", "darcy", "--samples", "8", "--resolution", "5", "-o", out)
        self.assertEqual(made.returncode, 0, made.stderr)
        config = make_run("darcy-train", f"""\
[training]
num_epochs = 1
batch_size = 4

[model]
widths = [25, 8, 25]

[data]
train_x = "{out}/x.npy"
train_y = "{out}/y.npy"
""")
        r = launch(2, "train", "--config", config, "--progress", "lines")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"(?m)^epoch 1/1: train loss")

    def test_help(self):
        r = launch(2, "data", "darcy", "--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        for word in ("--samples", "--resolution", "--seed", "--tolerance", "--output",
                     "(N, S, S, 1)", "EXIT CODES"):
            self.assertIn(word, r.stdout)
        self.assertEqual(r.stdout.count("--resolution"), 1)  # rank 0 only
        self.assertIn("data", launch(1, "--help").stdout)

    def test_bad_input(self):
        blocker = os.path.join(WORK, "a-file")
        with open(blocker, "w") as f:
            f.write("not a directory\n")
        good = ["--samples", "3", "--resolution", "8"]
        out = ["-o", os.path.join(WORK, "darcy-bad")]
        cases = [
            (["--samples", "0", "--resolution", "8", *out], "--samples 0: must be at least 1"),
            (["--samples", "-2", "--resolution", "8", *out], "--samples -2: must be at least 1"),
            (["--samples", "x3", "--resolution", "8", *out], "--samples 'x3': not an integer"),
            (["--samples", "3", "--resolution", "2", *out], "--resolution 2: must be at least 3"),
            (["--samples", "3", "--resolution", "8.5", *out], "--resolution '8.5': not an integer"),
            ([*good, "--seed", "-1", *out], "--seed '-1': must not be negative"),
            ([*good, "--tolerance", "0", *out], "--tolerance 0: must be in (0, 1)"),
            ([*good], "--output is required"),
            (["--resolution", "8", *out], "--samples is required"),
            ([*good, "-o", os.path.join(blocker, "sub")],
             f"-o '{os.path.join(blocker, 'sub')}': cannot create the directory: Not a directory"),
            ([*good, "-o", blocker], f"-o '{blocker}': "),
            (["--samples", "2000000000", "--resolution", "40000", *out], "GiB, more than the"),
            (["--samples", "2000000000", "--resolution", "100000", *out],
             "--samples 2000000000: 2000000000 x 100000^2 values are too many"),
            ([*good, *out, "--bogus"], "--bogus"),
        ]
        for args, expected in cases:
            with self.subTest(args=args):
                r = launch(2, "data", "darcy", *args, timeout=30)
                one_error_line(self, r, expected)
                self.assertEqual(r.returncode, 2)
                self.assertEqual(r.stdout, "")
        self.assertFalse(os.path.exists(os.path.join(WORK, "darcy-bad", "x.npy")))
        r = launch(2, "data", timeout=30)
        one_error_line(self, r, "A subcommand is required")


FNO_CONFIG = """\
[training]
num_epochs = 2
batch_size = 6
loss = "relative_l2"

[model]
type = "fno"
modes = 4
width = 8
layers = 2
projection = 16

[data]
train_x = "../fno-fields/train/x.npy"
train_y = "../fno-fields/train/y.npy"
val_x = "../fno-fields/val/x.npy"
val_y = "../fno-fields/val/y.npy"

[checkpoint]
dir = "ckpt"
"""


class FnoTraining(unittest.TestCase):
    """A Fourier Neural Operator trained on generated Darcy flow: one rank, data parallel and
    FSDP on two agree, its checkpoint describes it, and FNO-specific input errors."""

    @classmethod
    def setUpClass(cls):
        data = os.path.join(WORK, "fno-fields")
        shutil.rmtree(data, ignore_errors=True)
        cls.made = [launch(2, "data", "darcy", "--samples", n, "--resolution", "16", "--seed", seed,
                           "-o", os.path.join(data, part))
                    for part, n, seed in (("train", "15", "1"), ("val", "5", "2"), ("test", "4", "3"))]
        cls.runs = {}
        for name, np_, strategy in (("one", 1, "data"), ("data", 2, "data"), ("fsdp", 2, "fsdp")):
            config = make_run("fno-" + name, FNO_CONFIG)
            cls.runs[name] = (config, launch(np_, "train", "--config", config, "--progress", "lines",
                                             "--set", f"distributed.strategy={strategy}"))
        # Normalised data and a test set, on one rank and on two (fsdp).
        normalized = FNO_CONFIG.replace(
            'val_y = "../fno-fields/val/y.npy"',
            'val_y = "../fno-fields/val/y.npy"\ntest_x = "../fno-fields/test/x.npy"\n'
            'test_y = "../fno-fields/test/y.npy"\nnormalize = "pointwise"').replace(
            '[checkpoint]', '[output]\ndir = "out"\n\n[checkpoint]')
        for name, np_, strategy in (("norm-one", 1, "data"), ("norm-fsdp", 2, "fsdp")):
            config = make_run("fno-" + name, normalized)
            cls.runs[name] = (config, launch(np_, "train", "--config", config, "--progress", "lines",
                                             "--set", f"distributed.strategy={strategy}"))

    def test_data_was_generated(self):
        for r in self.made:
            self.assertEqual(r.returncode, 0, r.stderr)

    def test_every_layout_trains_to_the_same_losses(self):
        losses = {}
        for name, (_, r) in self.runs.items():
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("fno on a 16 x 16 grid, modes 4, width 8, 2 Fourier layers", r.stdout)
            self.assertIn("loss relative_l2", r.stdout)
            losses[name] = [float(field(r.stdout, "Initial loss:")),
                            float(field(r.stdout, "Final loss:"))]
        for name in ("data", "fsdp"):
            for got, want in zip(losses[name], losses["one"]):
                self.assertLessEqual(abs(got - want), 1e-4 * want, name)
        self.assertLess(losses["one"][1], losses["one"][0])

    def test_normalized_with_a_test_set(self):
        """data.normalize = "pointwise" and a test set: the test loss is printed and written
        every epoch, one rank and two agree, and the checkpoint's run names the decoder."""
        test_losses = {}
        for name in ("norm-one", "norm-fsdp"):
            config, r = self.runs[name]
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("; test (4, 256); normalized pointwise", r.stdout)
            printed = re.findall(r"^epoch \d+/2: .*, test loss ([0-9.]+),", r.stdout, re.M)
            self.assertEqual(len(printed), 2, r.stdout)
            with open(run_dir(config, "out", "metrics.csv")) as f:
                rows = list(csv.reader(f))
            self.assertEqual(rows[0], CSV_COLUMNS)
            test_losses[name] = [float(row[3]) for row in rows[1:]]
            self.assertEqual([f"{v:.6f}" for v in test_losses[name]], printed)
            meta, _ = read_safetensors(os.path.join(run_dir(config, "ckpt"), "ckpt-6.safetensors"))
            self.assertEqual(json.loads(meta["test_losses"]), test_losses[name])
            self.assertIn("|affine(256);", meta["run"])
        for got, want in zip(test_losses["norm-fsdp"], test_losses["norm-one"]):
            self.assertLessEqual(abs(got - want), 1e-4 * want)

    def test_checkpoint_describes_the_operator(self):
        config, r = self.runs["data"]
        self.assertEqual(r.returncode, 0, r.stderr)
        meta, _ = read_safetensors(os.path.join(run_dir(config, "ckpt"), "ckpt-6.safetensors"))
        self.assertTrue(meta["run"].startswith("layers=grid2d(16, 16, 1)|pointwise(3, 8, 256, "
                                               "identity)|fourier2d(spectral_conv2d(8, 8, 16, 16, "
                                               "4, 4), gelu)|"), meta["run"])
        self.assertIn(";loss=relative_l2;", meta["run"])
        resumed = launch(2, "train", "--config", config, "--resume", "latest",
                         "--set", "training.num_epochs=3")
        self.assertEqual(resumed.returncode, 0, resumed.stderr)

    def test_errors_name_the_key(self):
        config = make_run("fno-bad", FNO_CONFIG)
        cases = [
            (["--set", "model.modes=9"], "model.modes 9: SpectralConv2d on a 16 x 16 grid"),
            (["--set", "model.hidden=9"], "model.hidden: only with type = \"mlp\""),
            (["--set", "model.layers=0"], "model.layers: 0 is out of range"),
            (["--set", "model.width=100000"], "--set: model.width 100000: training needs about "),
            (["--set", "model.type=transformer"], "model.type"),
            (["--set", "data.test_x='../fno-fields/test/x.npy'"],
             "data.test_x: give test_x and test_y together"),
            (["--set", "data.normalize='global'"], "data.normalize: 'global' is not one of none, pointwise"),
            (["--set", "data.train_x=data/train_x.npy", "--set", "data.train_y=data/train_y.npy"],
             "data.train_x: data/train_x.npy: samples of shape (4,); type = \"fno\""),
        ]
        for args, expected in cases:
            one_error_line(self, launch(2, "train", "--config", config, *args), expected)
        mlp = make_run("mlp-with-fno-keys", BASE_CONFIG.replace("[model]", "[model]\nwidth = 8"))
        one_error_line(self, launch(2, "train", "--config", mlp), "model.width: only with type = \"fno\"")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--distributed-pde")
    args, rest = parser.parse_known_args()
    BINARY = os.path.realpath(args.binary)
    DISTRIBUTED_PDE = os.path.realpath(args.distributed_pde) if args.distributed_pde else None
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
