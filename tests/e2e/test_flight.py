#!/usr/bin/env python3
"""The flight recorder end to end, through launch/mpirun.sh and `meshtrain train`: the fault
drills (a rank that hangs, a rank killed with SIGKILL, a rank that calls an extra collective,
with and without the debug comparison) each leave one flight-rank<R>.bin per rank in the run
directory, and `meshtrain triage DIR` names the collective and the culprit rank. Also: a
consistent run, SIGUSR2 (raised at a known step), the straggler line, the Chrome trace, and
the errors.

Faults arrive at a known optimizer step through MESHTRAIN_FAULT_INJECT; the watchdog timeout
only ends the jobs that would otherwise hang, and no assertion depends on timing.

Usage: test_flight.py --binary PATH [unittest args]
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCH = os.path.join(HERE, "..", "..", "launch", "mpirun.sh")
BINARY = None

CONFIG = """[training]
num_epochs = {epochs}
batch_size = 32
[distributed]
collective_timeout = {timeout}
debug_collectives = {debug}
[data]
synthetic = "reference"
samples = 256
[output]
dir = "{out}"
"""


class Flight(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="meshtrain-flight-e2e-")
        self.out = os.path.join(self.tmp, "run")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def train(self, np_, *args, epochs=1000000, timeout=3, debug=False, env=None, limit=180):
        """A `meshtrain train` job. LONG runs (the default epochs) would go on for minutes if
        the fault did not end them; `limit` fails the test if nothing ends the job."""
        path = os.path.join(self.tmp, "run.toml")
        with open(path, "w") as f:
            f.write(CONFIG.format(epochs=epochs, timeout=timeout, out=self.out,
                                  debug="true" if debug else "false"))
        full_env = dict(os.environ)
        full_env.update(env or {})
        return subprocess.run([LAUNCH, "-np", str(np_), BINARY, "train", "--config", path,
                               "--progress", "lines", *args],
                              capture_output=True, text=True, timeout=limit, env=full_env)

    def triage(self, *args):
        return subprocess.run([BINARY, "triage", self.out, *args], capture_output=True,
                              text=True, timeout=60)

    def dumps(self):
        return sorted(f for f in os.listdir(self.out) if f.startswith("flight-rank"))

    def test_hung_rank_is_named(self):
        r = self.train(3, env={"MESHTRAIN_FAULT_INJECT": "hang:2:30"})
        self.assertNotEqual(r.returncode, 0)
        self.assertRegex(r.stderr, r"rank [01]: watchdog: collective #31 \(allreduce_async")
        # The watchdog dumped before ending its rank.
        self.assertRegex(r.stderr, r"rank [01]: flight recorder \(watchdog\): \d+ collectives")
        self.assertEqual(self.dumps(), ["flight-rank0.bin", "flight-rank1.bin", "flight-rank2.bin"])
        t = self.triage()
        self.assertEqual(t.returncode, 1, t.stdout + t.stderr)
        first = t.stdout.splitlines()[0]
        self.assertRegex(first, r"^collective #31 on 'data': ranks 0,1 entered allreduce_async of "
                                r"386 float32 at data_parallel\.gradients \(step 30\); rank 2 "
                                r"never reached it \(its last: #30 allreduce_async of 386 "
                                r"float32 at data_parallel\.gradients \(step 29\), completed\)$")
        # Whichever watchdog fired first dumped (mpirun may end the other rank before its own).
        self.assertRegex(t.stdout, r"\n  rank [01]: watchdog, \d+ collectives")
        self.assertIn("\n  rank 2: live, ", t.stdout)  # the hung rank never dumped: its mapping

    def test_killed_rank_is_named(self):
        # mpirun kills the other ranks as soon as one dies (launch/mpirun.sh sets no delay),
        # possibly before they reach the collective rank 1 never called, which would make
        # them look as far behind as rank 1. With a delay (SIGCONT, 10 s, SIGTERM, 10 s,
        # SIGKILL) they reach it and wait there until their watchdogs (3 s) end them: the
        # delay is only a guard, as the watchdog is.
        r = self.train(3, env={"MESHTRAIN_FAULT_INJECT": "kill:1:30",
                               "OMPI_MCA_odls_base_sigkill_timeout": "10"})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("signal 9", r.stderr)
        # The ring is a mapped file: the killed rank's is on disk without any dump.
        t = self.triage()
        self.assertEqual(t.returncode, 1, t.stdout + t.stderr)
        self.assertRegex(t.stdout.splitlines()[0],
                         r"^collective #31 on 'data': ranks 0,2 entered allreduce_async .*; "
                         r"rank 1 never reached it \(its last: #30 ")

    def test_extra_collective_is_named(self):
        r = self.train(3, env={"MESHTRAIN_FAULT_INJECT": "extra:1:20"})
        self.assertNotEqual(r.returncode, 0)
        t = self.triage("--quiet")
        self.assertEqual(t.returncode, 1, t.stdout + t.stderr)
        lines = t.stdout.splitlines()
        self.assertEqual(len(lines), 1, t.stdout)
        self.assertRegex(lines[0], r"^collective #21 on 'data': the ranks called different "
                                   r"collectives: ")
        self.assertIn("ranks 0,2 called allreduce_async of 386 float32", lines[0])
        self.assertIn("rank 1 called barrier", lines[0])

    def test_debug_mode_abort_dumps_and_is_named(self):
        r = self.train(3, debug=True, timeout=30, env={"MESHTRAIN_FAULT_INJECT": "extra:1:20"})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("collective mismatch on 'data'", r.stderr)
        self.assertRegex(r.stderr, r"rank \d: flight recorder \(abort\)")
        t = self.triage()
        self.assertEqual(t.returncode, 1, t.stdout + t.stderr)
        self.assertIn("rank 1 called barrier", t.stdout.splitlines()[0])

    def test_consistent_run_triages_clean(self):
        r = self.train(2, epochs=2)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Flight:", r.stdout)
        t = self.triage()
        self.assertEqual(t.returncode, 0, t.stdout + t.stderr)
        self.assertTrue(t.stdout.startswith("consistent: the 2 ranks"), t.stdout)
        self.assertIn("rank 1: exit,", t.stdout)

    def test_sigusr2_dumps_at_the_next_step(self):
        r = self.train(2, epochs=4, env={"MESHTRAIN_FAULT_INJECT": "usr2:*:5"})
        self.assertEqual(r.returncode, 0, r.stderr)
        for rank in (0, 1):
            self.assertRegex(r.stderr, rf"rank {rank}: flight recorder \(SIGUSR2\): \d+ collectives")
        t = self.triage()
        self.assertEqual(t.returncode, 0, t.stdout + t.stderr)
        self.assertIn("rank 0: SIGUSR2,", t.stdout)  # the last dump's reason stays

    def test_recorder_off_leaves_no_file(self):
        r = self.train(2, "--set", "distributed.flight_records=0", epochs=1)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.dumps(), [])
        with open(os.path.join(self.out, "metrics.jsonl")) as f:
            record = json.loads(f.readline())
        self.assertIsNone(record["straggler_rank"])  # nothing measured the waits
        self.assertIsNone(record["straggler_behind_seconds"])
        t = self.triage()
        self.assertEqual(t.returncode, 2)
        self.assertEqual(t.stdout, "")
        self.assertRegex(t.stderr, r"^meshtrain: error: .*holds no flight recorder dumps "
                                   r"\(flight-rank\*\.bin\)\n$")

    def test_bad_settings_are_one_line(self):
        r = self.train(2, "--set", "distributed.flight_records=-1", epochs=1)
        self.assertEqual(r.returncode, 2)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn("distributed.flight_records", lines[0])
        self.assertIn("-1", lines[0])
        r = self.train(2, epochs=1, env={"MESHTRAIN_FLIGHT_RECORDS": "many"})
        self.assertEqual(r.returncode, 2)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn("MESHTRAIN_FLIGHT_RECORDS 'many'", lines[0])

    def test_straggler_line_each_epoch(self):
        r = self.train(2, epochs=3)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        epochs = [i for i, l in enumerate(lines) if l.startswith("epoch ")]
        self.assertEqual(len(epochs), 3, r.stdout)
        for i in epochs:  # each epoch line is followed by its straggler line
            self.assertRegex(lines[i + 1], r"^  straggler: rank ([01]), [0-9.]+ ms behind rank "
                                           r"(?!\1)[01] \(computed [0-9.]+ ms against [0-9.]+ ms; "
                                           r"waited in collectives [0-9.]+ ms against [0-9.]+ ms\)$")
        with open(os.path.join(self.out, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        self.assertEqual(len(records), 3)
        for record in records:
            self.assertIn(record["straggler_rank"], (0, 1))
            self.assertGreaterEqual(record["straggler_behind_seconds"], 0.0)
        # Without the recorder there is nothing to measure the waits with: no line.
        r = self.train(2, "--set", "distributed.flight_records=0", epochs=1)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("straggler", r.stdout)

    def test_chrome_trace_per_rank(self):
        trace = os.path.join(self.tmp, "trace.json")
        r = self.train(2, "--trace", trace, epochs=2)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Trace:", r.stdout)
        for rank in (0, 1):
            with open(os.path.join(self.tmp, f"trace.rank{rank}.json")) as f:
                doc = json.load(f)
            events = [e for e in doc["traceEvents"] if e["ph"] == "X"]
            self.assertTrue(all(e["pid"] == rank for e in events))
            self.assertTrue(all(e["dur"] >= 0 and e["ts"] > 0 for e in events))
            steps = [e for e in events if e["name"] == "step"]
            self.assertEqual([e["args"]["n"] for e in steps], list(range(16)))  # 2 x 256/32
            # The reference MLP's two layers, forward and backward, in every step.
            for kind in ("forward", "backward"):
                layers = [e["args"]["n"] for e in events if e["name"] == kind]
                self.assertEqual(sorted(layers), sorted([0, 1] * 16), kind)
            grads = [e for e in events if e["name"] == "allreduce_async" and e["cat"] == "data"]
            self.assertEqual(len(grads), 16)
            self.assertEqual(len([e for e in events if e["name"] == "allreduce"
                                  and e["cat"] == "world"]), 16)  # the step flags
            # Collectives and layers nest inside their step.
            for g in grads:
                self.assertTrue(any(s["ts"] <= g["ts"] and g["ts"] <= s["ts"] + s["dur"]
                                    for s in steps), g)
        r = self.train(2, "--trace", os.path.join(self.tmp, "no", "such", "t.json"), epochs=1)
        self.assertEqual(r.returncode, 2)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn("--trace", lines[0])

    def test_triage_of_a_missing_directory(self):
        t = subprocess.run([BINARY, "triage", os.path.join(self.tmp, "nowhere")],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(t.returncode, 2)
        self.assertEqual(len(t.stderr.splitlines()), 1, t.stderr)
        self.assertIn("not a directory", t.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    args, rest = parser.parse_known_args()
    BINARY = os.path.abspath(args.binary)
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
