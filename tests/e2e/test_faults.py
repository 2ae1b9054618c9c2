#!/usr/bin/env python3
"""Fault handling end to end, through launch/mpirun.sh and distributed_pde:
a rank killed with SIGKILL, a rank that stops calling collectives (watchdog), mismatched
collectives (debug mode), and NaN/Inf steps (abort or skip).

Usage: test_faults.py --binary PATH [unittest args]
"""
import argparse
import os
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCH = os.path.join(HERE, "..", "..", "launch", "mpirun.sh")
BINARY = None
LONG_RUN = ["--epochs", "1000000"]  # would run for minutes if nothing stopped it


def run(np_, *args, env=None, timeout=60):
    full_env = dict(os.environ)
    full_env.update(env or {})
    start = time.monotonic()
    r = subprocess.run([LAUNCH, "-np", str(np_), BINARY, *args], capture_output=True,
                       text=True, timeout=timeout, env=full_env)
    return r, time.monotonic() - start


class Faults(unittest.TestCase):
    def test_killed_rank_ends_the_job_and_is_named(self):
        r, seconds = run(2, *LONG_RUN, env={"MESHTRAIN_FAULT_INJECT": "kill:1:30"})
        self.assertNotEqual(r.returncode, 0)
        self.assertLess(seconds, 15)
        self.assertIn("process rank 1", r.stderr)
        self.assertIn("signal 9", r.stderr)

    def test_stuck_rank_is_reported_by_the_watchdog(self):
        r, seconds = run(3, *LONG_RUN, "--collective-timeout", "2",
                         env={"MESHTRAIN_FAULT_INJECT": "hang:2:30"})
        self.assertNotEqual(r.returncode, 0)
        self.assertLess(seconds, 15)
        self.assertRegex(r.stderr, r"rank [01]: watchdog: collective #31 \(allreduce")
        self.assertIn("on 'data'", r.stderr)

    def test_watchdog_timeout_from_the_environment(self):
        r, seconds = run(2, *LONG_RUN, env={"MESHTRAIN_FAULT_INJECT": "hang:0:5",
                                            "MESHTRAIN_COLLECTIVE_TIMEOUT": "1.5"})
        self.assertNotEqual(r.returncode, 0)
        self.assertLess(seconds, 15)
        self.assertIn("rank 1: watchdog: collective #6", r.stderr)

    def test_debug_mode_names_mismatched_collectives(self):
        r, seconds = run(2, *LONG_RUN, "--debug-collectives", "--collective-timeout", "10",
                         env={"MESHTRAIN_FAULT_INJECT": "extra:1:20"})
        self.assertNotEqual(r.returncode, 0)
        self.assertLess(seconds, 15)
        self.assertIn("collective mismatch on 'data'", r.stderr)
        self.assertRegex(r.stderr, r"calls #21 barrier .* calls #21 allreduce_async of 386 float32|"
                                   r"calls #21 allreduce_async of 386 float32, but rank 1 calls #21 barrier")

    def test_debug_mode_changes_no_result(self):
        plain, _ = run(2, "--epochs", "2")
        debug, _ = run(2, "--epochs", "2", "--debug-collectives")
        self.assertEqual(plain.returncode, 0, plain.stderr)
        self.assertEqual(debug.returncode, 0, debug.stderr)
        final = [l for l in plain.stdout.splitlines() if l.startswith("Final loss:")]
        self.assertEqual(final, [l for l in debug.stdout.splitlines() if l.startswith("Final loss:")])

    def test_nonfinite_loss_aborts_cleanly_by_default(self):
        r, _ = run(2, "--optimizer", "sgd", "--lr", "1e6")
        self.assertEqual(r.returncode, 3, r.stderr)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertRegex(lines[0], r"^distributed_pde: error: step \d+ \(epoch 0, batch \d+\): "
                                   r"the loss .* is NaN or Inf")

    def test_nonfinite_skip_finishes(self):
        r, _ = run(2, "--optimizer", "sgd", "--lr", "1e6", "--nonfinite", "skip", "--epochs", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("RESULTS", r.stdout)

    def test_malformed_fault_spec_is_a_config_error(self):
        r, _ = run(2, env={"MESHTRAIN_FAULT_INJECT": "explode:1"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("MESHTRAIN_FAULT_INJECT 'explode:1'", r.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    args, rest = parser.parse_known_args()
    BINARY = os.path.abspath(args.binary)
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
