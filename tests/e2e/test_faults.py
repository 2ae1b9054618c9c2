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
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCH = os.path.join(HERE, "..", "..", "launch", "mpirun.sh")
BINARY = None
LONG_RUN = ["--epochs", "1000000"]  # would run for minutes if nothing stopped it


def run(np_, *args, env=None, timeout=180):
    """The job's CompletedProcess. A job that does not end within `timeout` (it would run for
    minutes otherwise: LONG_RUN) fails the test with TimeoutExpired: the check that a fault
    ends the job, with no bound on how fast a loaded machine gets there."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([LAUNCH, "-np", str(np_), BINARY, *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


class Faults(unittest.TestCase):
    def test_killed_rank_ends_the_job_and_is_named(self):
        r = run(2, *LONG_RUN, env={"MESHTRAIN_FAULT_INJECT": "kill:1:30"})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("process rank 1", r.stderr)
        self.assertIn("signal 9", r.stderr)

    def test_stuck_rank_is_reported_by_the_watchdog(self):
        r = run(3, *LONG_RUN, "--collective-timeout", "2",
                         env={"MESHTRAIN_FAULT_INJECT": "hang:2:30"})
        self.assertNotEqual(r.returncode, 0)
        self.assertRegex(r.stderr, r"rank [01]: watchdog: collective #31 \(allreduce")
        self.assertIn("on 'data'", r.stderr)

    def test_watchdog_timeout_from_the_environment(self):
        r = run(2, *LONG_RUN, env={"MESHTRAIN_FAULT_INJECT": "hang:0:5",
                                            "MESHTRAIN_COLLECTIVE_TIMEOUT": "1.5"})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("rank 1: watchdog: collective #6", r.stderr)

    def test_debug_mode_names_mismatched_collectives(self):
        r = run(2, *LONG_RUN, "--debug-collectives", "--collective-timeout", "10",
                         env={"MESHTRAIN_FAULT_INJECT": "extra:1:20"})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("collective mismatch on 'data'", r.stderr)
        self.assertRegex(r.stderr, r"calls #21 barrier .* calls #21 allreduce_async of 386 float32|"
                                   r"calls #21 allreduce_async of 386 float32, but rank 1 calls #21 barrier")

    def test_debug_mode_changes_no_result(self):
        plain = run(2, "--epochs", "2")
        debug = run(2, "--epochs", "2", "--debug-collectives")
        self.assertEqual(plain.returncode, 0, plain.stderr)
        self.assertEqual(debug.returncode, 0, debug.stderr)
        final = [l for l in plain.stdout.splitlines() if l.startswith("Final loss:")]
        self.assertEqual(final, [l for l in debug.stdout.splitlines() if l.startswith("Final loss:")])

    def test_nonfinite_loss_aborts_cleanly_by_default(self):
        r = run(2, "--optimizer", "sgd", "--lr", "1e6")
        self.assertEqual(r.returncode, 3, r.stderr)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertRegex(lines[0], r"^distributed_pde: error: step \d+ \(epoch 0, batch \d+\): "
                                   r"the loss .* is NaN or Inf")

    def test_nonfinite_skip_finishes(self):
        r = run(2, "--optimizer", "sgd", "--lr", "1e6", "--nonfinite", "skip", "--epochs", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("RESULTS", r.stdout)

    def test_malformed_fault_spec_is_a_config_error(self):
        for spec in ["explode:1", "explode:1:3", "hang:x:3", "term:*:", "kill:1:-2", "kill:1:2:3"]:
            r = run(2, env={"MESHTRAIN_FAULT_INJECT": spec})
            self.assertEqual(r.returncode, 2, spec)
            self.assertIn(f"MESHTRAIN_FAULT_INJECT '{spec}'", r.stderr)

    def test_device_buffer_choice_is_checked_in_every_build(self):
        # Host builds never stage, but a bad value is refused wherever it is set; 'direct' is
        # refused where the MPI library says it is not CUDA-aware (Debian's Open MPI).
        r = run(2, env={"MESHTRAIN_MPI_DEVICE_BUFFERS": "yes"})
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("MESHTRAIN_MPI_DEVICE_BUFFERS 'yes': unknown (choose auto, stage or direct)",
                      r.stderr)
        for value in ["auto", "stage"]:
            r = run(1, "--epochs", "1", env={"MESHTRAIN_MPI_DEVICE_BUFFERS": value})
            self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    args, rest = parser.parse_known_args()
    BINARY = os.path.abspath(args.binary)
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
