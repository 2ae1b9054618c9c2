#!/usr/bin/env python3
"""Strong and weak scaling of build/bin/distributed_pde, launched through launch/mpirun.sh.

    python3 benchmarks/scaling.py                      # ranks 1,2,4, both modes, overlap off and on
    python3 benchmarks/scaling.py --ranks 1,2 --hidden 256 --layers 2 --batch 256 --repeat 1

Strong scaling keeps the global batch fixed (--batch); weak scaling keeps the batch per rank
fixed (--batch-per-rank, so the global batch is that times the ranks). Every run trains on
exactly --steps batches per epoch (--samples = global batch * steps) for --epochs epochs, and
its step time is the binary's "Training time" (the training loop only: process start-up, MPI
initialisation, data generation and model set-up are excluded) divided by the steps it took.
No step is dropped as warm-up: the first steps of the first epoch are amortised over the
--epochs * --steps steps of the run, so raise --epochs to push that cost towards zero.
Each point is run --repeat times, repeats interleaved with the other points, and the median
is reported.

With --overlap both (the default) each point runs twice: with --overlap off, where the time
the ranks are blocked on the gradient all-reduce is the whole communication time ("comm"),
and with --overlap on, where it is only the part backward could not hide ("exposed"). Step
time, samples/s and efficiency come from the overlap-on run (the binary's default), or from
the only run there is with --overlap on/off.

Every run also records how much CPU the rest of the machine used while it went on (busy
time from /proc/stat less the run's own CPU time); the report warns where that, or the spread
of the repeats, says the figures are disturbed. On a shared machine --wait-idle waits for
idle CPUs before each run and redoes disturbed runs.

Efficiency uses the step time T1 of the smallest rank count n1 of the same sweep (1 rank by
default): strong T1*n1 / (N*TN), weak T1 / TN. Communication figures are rank 0's.

Writes every raw measurement and the summary to --json and a two-panel plot (samples/s
against ranks, with ideal scaling) to --png through gnuplot; without gnuplot the plot is
skipped with a message. Python 3 standard library only.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "launch", "mpirun.sh")

RE_PARAMS = re.compile(r"^Model parameters:\s*(\d+)", re.M)
RE_DEVICES = re.compile(r"^Devices used:\s*(\d+)", re.M)
RE_TRAIN = re.compile(r"^Training time:\s*([0-9.eE+-]+) s \((\d+) steps,", re.M)
RE_COMM = re.compile(
    r"^Communication:\s*([0-9.eE+-]+) s blocked on the gradient all-reduce \((\d+) buckets?, overlap (on|off)(?:, progress (\w+))?\)",
    re.M)


BUSY_WARN = 0.15    # warn when the CPUs are busier than this before the sweep
SPREAD_WARN = 0.10  # warn when a point's repeats differ by more than this (max/min - 1)
FOREIGN_WARN = 0.2  # warn when other processes used more cores than this during a run
MAX_RETRIES = 3     # --wait-idle: runs of one measurement disturbed by other processes


class RunError(Exception):
    pass


def parse_ranks(text):
    try:
        ranks = sorted({int(r) for r in text.split(",") if r.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("--ranks: comma-separated positive integers, e.g. 1,2,4")
    if not ranks or ranks[0] < 1:
        raise argparse.ArgumentTypeError("--ranks: comma-separated positive integers, e.g. 1,2,4")
    return ranks


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not an integer" % text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1, got %d" % v)
    return v


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Strong and weak scaling of distributed_pde through launch/mpirun.sh; "
                    "see the top of this file for the method.")
    p.add_argument("--binary", default=os.path.join(REPO, "build", "bin", "distributed_pde"),
                   help="the distributed_pde binary (default: build/bin/distributed_pde of "
                        "this repository)")
    p.add_argument("--ranks", type=parse_ranks, default=parse_ranks("1,2,4"),
                   help="comma-separated rank counts (default: 1,2,4)")
    p.add_argument("--mode", choices=["strong", "weak", "both"], default="both",
                   help="default: %(default)s")
    p.add_argument("--hidden", type=positive_int, default=1024,
                   help="width of each hidden layer (default: %(default)s)")
    p.add_argument("--layers", type=int, default=3,
                   help="number of hidden layers (default: %(default)s)")
    p.add_argument("--batch", type=positive_int, default=1024,
                   help="strong scaling: the global batch (default: %(default)s)")
    p.add_argument("--batch-per-rank", type=positive_int, default=None,
                   help="weak scaling: the batch per rank (default: --batch / the largest rank "
                        "count, so both modes meet at the largest point)")
    p.add_argument("--steps", type=positive_int, default=8,
                   help="steps (batches) per epoch (default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=3,
                   help="epochs per run; step time = training time / (epochs * steps) "
                        "(default: %(default)s)")
    p.add_argument("--repeat", type=positive_int, default=3,
                   help="runs per point; the median is reported (default: %(default)s)")
    p.add_argument("--overlap", choices=["both", "on", "off"], default="both",
                   help="both: run every point with --overlap off (total communication) and on "
                        "(exposed communication) (default: %(default)s)")
    p.add_argument("--progress", choices=["auto", "thread", "poll"], default=None,
                   help="passed to the binary as --progress: how overlapped all-reduces "
                        "advance (default: the binary's, auto)")
    p.add_argument("--bucket-mb", type=float, default=None,
                   help="passed to the binary as --bucket-mb (default: the binary's)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--timeout", type=positive_int, default=600,
                   help="seconds allowed per run (default: %(default)s)")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="for shared machines: before each run wait up to SECONDS for the CPUs "
                        "to go idle, and redo (up to %d times) a run during which other "
                        "processes used more than %.1f cores (default: 0, off)"
                        % (MAX_RETRIES, FOREIGN_WARN))
    p.add_argument("--json", default="scaling.json",
                   help="raw and summary results (default: %(default)s)")
    p.add_argument("--png", default="scaling.png",
                   help="plot; needs gnuplot (default: %(default)s)")
    args = p.parse_args(argv)
    if args.layers < 0:
        p.error("--layers must be at least 0")
    if args.batch_per_rank is None:
        args.batch_per_rank = max(1, args.batch // args.ranks[-1])
    if args.batch < args.ranks[-1] and args.mode in ("strong", "both"):
        p.error("--batch %d is smaller than %d ranks" % (args.batch, args.ranks[-1]))
    return args


def machine_info():
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    except (OSError, ValueError, subprocess.CalledProcessError):
        nproc = os.cpu_count() or 1
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/loadavg") as f:
            load = [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        load = None
    return {"host": platform.node(), "cpu": cpu, "nproc": nproc, "loadavg_at_start": load,
            "os": platform.platform(), "python": platform.python_version()}


def cpu_ticks():
    """(total, busy) clock ticks of all CPUs from /proc/stat, or None. Busy counts steal."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]  # user .. steal; guest is in user
    except (OSError, ValueError):
        return None
    if len(v) < 5:
        return None
    return sum(v), sum(v) - v[3] - v[4]  # idle and iowait are not busy


def cpu_busy_fraction(seconds=1.0):
    """Fraction of all CPUs busy over `seconds` (None where /proc/stat is unreadable)."""
    a = cpu_ticks()
    time.sleep(seconds)
    b = cpu_ticks()
    if a is None or b is None or b[0] == a[0]:
        return None
    return (b[1] - a[1]) / (b[0] - a[0])


def wait_idle(limit_s):
    """Waits until the CPUs are under BUSY_WARN busy over a second, at most limit_s seconds.
    Returns the seconds waited."""
    start = time.monotonic()
    while True:
        busy = cpu_busy_fraction(1.0)
        waited = time.monotonic() - start
        if busy is None or busy <= BUSY_WARN or waited >= limit_s:
            if busy is not None and busy > BUSY_WARN:
                print("      CPUs still %.0f%% busy after %.0f s; running anyway"
                      % (busy * 100, waited), file=sys.stderr, flush=True)
            return waited


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def git_commit():
    try:
        r = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                           text=True, timeout=10)
        d = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return r.stdout.strip() + ("-dirty" if d.stdout.strip() else "")


def build_command(args, ranks, global_batch, overlap):
    cmd = [LAUNCHER, "-np", str(ranks), args.binary,
           "--hidden", str(args.hidden), "--layers", str(args.layers),
           "--batch-size", str(global_batch), "--samples", str(global_batch * args.steps),
           "--epochs", str(args.epochs), "--overlap", overlap, "--seed", str(args.seed)]
    if args.bucket_mb is not None:
        cmd += ["--bucket-mb", repr(args.bucket_mb)]
    if args.progress is not None and overlap == "on":
        cmd += ["--progress", args.progress]
    return cmd


def display(cmd):
    """The command relative to the repository root, as you would type it there."""
    return shlex.join(os.path.relpath(c, REPO) if os.path.isabs(c) and c.startswith(REPO + os.sep)
                      else c for c in cmd)


def kill_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def run_once(cmd, timeout):
    ticks0, own0, wall0 = cpu_ticks(), children_cpu_s(), time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The whole process group: mpirun and its ranks. SIGTERM first lets mpirun clean up.
        kill_group(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        raise RunError("timed out after %d s: %s\n--- stdout ---\n%s--- stderr ---\n%s"
                       % (timeout, display(cmd), out, err))
    if proc.returncode != 0:
        raise RunError("exit status %d: %s\n--- stdout ---\n%s--- stderr ---\n%s"
                       % (proc.returncode, display(cmd), out, err))
    wall = time.monotonic() - wall0
    ticks1, own = cpu_ticks(), children_cpu_s() - own0
    # CPU time the rest of the machine used while this run went on (the driver's own few ms
    # included), in cores: a check that nothing else competed for the cores.
    foreign = None
    if ticks0 and ticks1 and wall > 0:
        busy_s = (ticks1[1] - ticks0[1]) / os.sysconf("SC_CLK_TCK")
        foreign = max(0.0, busy_s - own) / wall
    m_params, m_dev = RE_PARAMS.search(out), RE_DEVICES.search(out)
    m_train, m_comm = RE_TRAIN.search(out), RE_COMM.search(out)
    if not (m_params and m_dev and m_train and m_comm):
        raise RunError("could not parse the output of: %s\n--- stdout ---\n%s--- stderr ---\n%s"
                       % (display(cmd), out, err))
    return {"parameters": int(m_params.group(1)), "devices": int(m_dev.group(1)),
            "training_s": float(m_train.group(1)), "steps": int(m_train.group(2)),
            "comm_s": float(m_comm.group(1)), "buckets": int(m_comm.group(2)),
            "overlap_reported": m_comm.group(3), "progress_reported": m_comm.group(4),
            "process_wall_s": wall, "process_cpu_s": own,
            "foreign_cpu_cores": foreign}


def model_widths(args):
    return "-".join(["4"] + [str(args.hidden)] * args.layers + ["1"])


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def summarise(args, runs, modes, overlaps):
    primary = "on" if "on" in overlaps else "off"
    summary = []
    for mode in modes:
        rows = []
        for n in args.ranks:
            gb = args.batch if mode == "strong" else args.batch_per_rank * n
            med = {}
            for ov in overlaps:
                rs = [r for r in runs if r["mode"] == mode and r["ranks"] == n and r["overlap"] == ov]
                steps = [r["step_s"] for r in rs]
                med[ov] = {"step_s": statistics.median(steps),
                           "comm_per_step_s": statistics.median(r["comm_per_step_s"] for r in rs),
                           "spread": max(steps) / min(steps) - 1}
            step = med[primary]["step_s"]
            comm = med["off"]["comm_per_step_s"] if "off" in med else None
            exposed = med["on"]["comm_per_step_s"] if "on" in med else None
            rows.append({
                "mode": mode, "ranks": n, "global_batch": gb, "batch_per_rank": gb / n,
                "step_s": step, "samples_per_s": gb / step,
                "step_s_overlap_off": med["off"]["step_s"] if "off" in med else None,
                "step_s_overlap_on": med["on"]["step_s"] if "on" in med else None,
                "comm_per_step_s": comm, "exposed_comm_per_step_s": exposed,
                "exposed_fraction": (exposed / comm if n > 1 and comm and exposed is not None
                                     else None),
                "step_spread": max(v["spread"] for v in med.values()),
                "oversubscribed": n > args.machine["nproc"],
            })
        base = rows[0]
        for r in rows:
            if mode == "strong":
                r["efficiency"] = base["step_s"] * base["ranks"] / (r["ranks"] * r["step_s"])
            else:
                r["efficiency"] = base["step_s"] / r["step_s"]
            r["ideal_samples_per_s"] = base["samples_per_s"] * r["ranks"] / base["ranks"]
        summary.extend(rows)
    return summary, primary


def print_report(args, summary, primary, commands, params, runs, discarded):
    m = args.machine
    print("meshtrain scaling: distributed_pde, ReLU MLP %s (%d hidden layer%s of width %d), "
          "%d parameters"
          % (model_widths(args), args.layers, "" if args.layers == 1 else "s", args.hidden,
             params))
    busy = m.get("cpu_busy_at_start")
    print("machine: %s, nproc %d, host %s; CPUs %s busy just before the sweep"
          % (m["cpu"], m["nproc"], m["host"], "?" if busy is None else "%.0f%%" % (busy * 100)))
    if args.wait_idle:
        print("--wait-idle %g: each run waited for idle CPUs (%.0f s in all); %d disturbed "
              "run%s redone" % (args.wait_idle, sum(r["waited_for_idle_s"] for r in runs + discarded),
                               len(discarded), "" if len(discarded) == 1 else "s"))
    elif busy is not None and busy > BUSY_WARN:
        print("WARNING: the machine was busy when the sweep started; other work distorts these "
              "timings")
    print("runs: %d epochs x %d steps each, median of %d repeat%s; strong: global batch %d; "
          "weak: %d per rank"
          % (args.epochs, args.steps, args.repeat, "" if args.repeat == 1 else "s", args.batch,
             args.batch_per_rank))
    progress = sorted({"%s at %d rank%s" % (r["progress_reported"], r["ranks"],
                                              "" if r["ranks"] == 1 else "s")
                       for r in runs if r.get("progress_reported")},
                      key=lambda s: int(s.split(" at ")[1].split()[0]))
    if progress:
        print("overlap-on runs advanced their all-reduces by: " + ", ".join(progress))
    print("commands (run from the repository root, each %d time%s):"
          % (args.repeat, "" if args.repeat == 1 else "s"))
    for mode, c in commands:
        print("  %-6s %s" % (mode, c))
    print()
    cols = [("mode", "<6"), ("ranks", ">5"), ("global batch", ">12"), ("step ms", ">9"),
            ("samples/s", ">10"), ("efficiency", ">10"), ("comm ms", ">8"), ("exposed ms", ">10"),
            ("exposed/comm", ">12"), ("step ms off", ">11")]
    header = "  ".join(format(name, spec) for name, spec in cols)
    print(header)
    print("-" * len(header))
    for r in summary:
        cells = [r["mode"], str(r["ranks"]) + ("*" if r["oversubscribed"] else ""),
                 str(r["global_batch"]), fmt(r["step_s"] * 1e3, ".2f"),
                 fmt(r["samples_per_s"], ".0f"), fmt(r["efficiency"] * 100, ".1f") + "%",
                 fmt(None if r["comm_per_step_s"] is None else r["comm_per_step_s"] * 1e3, ".2f"),
                 fmt(None if r["exposed_comm_per_step_s"] is None
                     else r["exposed_comm_per_step_s"] * 1e3, ".2f"),
                 "-" if r["exposed_fraction"] is None else "%.0f%%" % (r["exposed_fraction"] * 100),
                 fmt(None if r["step_s_overlap_off"] is None
                     else r["step_s_overlap_off"] * 1e3, ".2f")]
        print("  ".join(format(c, spec) for c, (_, spec) in zip(cells, cols)))
    print("-" * len(header))
    print("step ms, samples/s, efficiency: from the overlap-%s runs; per step = training time "
          "(setup excluded) / steps, warm-up included." % primary)
    n1 = args.ranks[0]
    print("efficiency: strong T%d%s/(N*TN), weak T%d/TN, T%d = step time at %d rank%s of the same "
          "mode." % (n1, "" if n1 == 1 else "*%d" % n1, n1, n1, n1, "" if n1 == 1 else "s"))
    print("comm ms: rank 0 blocked on the gradient all-reduce per step with --overlap off (all "
          "of it); exposed ms: the same with --overlap on (what backward did not hide).")
    if any(r["exposed_fraction"] is not None and r["exposed_fraction"] > 1 for r in summary):
        print("exposed/comm over 100%: the overlap-on runs were blocked longer than the "
              "overlap-off ones (ranks waiting on each other mid-backward, or noise).")
    print("step ms off: the step time of the --overlap off runs, for comparison.")
    over = [n for n in args.ranks if n > m["nproc"]]
    if over:
        print("* oversubscribed: %s ranks on %d core%s share the cores (launch/mpirun.sh "
              "--oversubscribe --bind-to none); these rows measure time-sharing, not scaling."
              % (" and ".join(map(str, over)), m["nproc"], "" if m["nproc"] == 1 else "s"))
    noisy = [r for r in runs if r["foreign_cpu_cores"] is not None
             and r["foreign_cpu_cores"] > FOREIGN_WARN]
    if noisy:
        print("WARNING: other processes used up to %.2f cores during %d of the %d runs; their "
              "times are not clean%s." % (max(r["foreign_cpu_cores"] for r in noisy), len(noisy),
                                          len(runs), "" if args.wait_idle else
                                          " (--wait-idle 300 waits for a quiet machine)"))
    spread = max(summary, key=lambda r: r["step_spread"])
    if args.repeat > 1 and spread["step_spread"] > SPREAD_WARN:
        print("WARNING: noisy: the repeats of a point differ by up to %.0f%% (%s, %d ranks); "
              "see the raw runs in %s." % (spread["step_spread"] * 100, spread["mode"],
                                           spread["ranks"], args.json))


def gnuplot_terminal(gnuplot):
    for term in ("pngcairo", "png"):
        r = subprocess.run([gnuplot, "-e", "set terminal %s" % term], capture_output=True,
                           text=True)
        if r.returncode == 0 and not r.stderr.strip():
            return term
    return None


def plot(args, summary, modes, params):
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        print("\nplot skipped: gnuplot not found (apt-get install gnuplot-nox); the results are "
              "in %s" % args.json)
        return None
    term = gnuplot_terminal(gnuplot)
    if not term:
        print("\nplot skipped: this gnuplot has neither the pngcairo nor the png terminal")
        return None
    png = os.path.abspath(args.png)
    tmp = tempfile.mkdtemp(prefix="meshtrain-scaling-")
    xtics = ", ".join('"%d" %d' % (n, n) for n in args.ranks)
    pad = max(0.5, 0.08 * (args.ranks[-1] - args.ranks[0]))
    xmin, xmax = max(0, args.ranks[0] - pad), args.ranks[-1] + pad
    font = 'font "Sans,10"' if term == "pngcairo" else "font \"\" 10"
    lines = [
        "set terminal %s size %d,480 noenhanced %s" % (term, 560 * len(modes), font),
        "set output %s" % json.dumps(png),
        "set multiplot layout 1,%d title %s" % (
            len(modes), json.dumps("distributed_pde: MLP %s (%d parameters), %d-core %s"
                                   % (model_widths(args), params, args.machine["nproc"],
                                      args.machine["cpu"]))),
        "set xtics (%s)" % xtics, "set xrange [%g:%g]" % (xmin, xmax),
        "set yrange [0:*]", "set offsets 0, 0, graph 0.15, 0", "set format y '%.0f'", "set grid", "set key top left Left reverse",
        "set xlabel 'ranks'", "set ylabel 'samples/s'",
    ]
    if any(n > args.machine["nproc"] for n in args.ranks):
        lines.append("set arrow from %g, graph 0 to %g, graph 1 nohead dt 3 lc rgb 'gray40'"
                     % (args.machine["nproc"], args.machine["nproc"]))
        lines.append("set label 'nproc' at %g, graph 0.04 offset 0.5,0 tc rgb 'gray40'"
                     % args.machine["nproc"])
    for mode in modes:
        data = os.path.join(tmp, "%s.dat" % mode)
        with open(data, "w") as f:
            f.write("# ranks samples_per_s ideal_samples_per_s efficiency global_batch\n")
            for r in summary:
                if r["mode"] == mode:
                    f.write("%d %.6g %.6g %.6g %d\n" % (r["ranks"], r["samples_per_s"],
                                                        r["ideal_samples_per_s"], r["efficiency"],
                                                        r["global_batch"]))
        title = ("strong scaling: global batch %d" % args.batch if mode == "strong"
                 else "weak scaling: batch %d per rank" % args.batch_per_rank)
        lines += [
            "set title %s" % json.dumps(title),
            "plot %s using 1:3 with lines dt 2 lw 2 lc rgb 'gray50' title 'ideal', \\" % json.dumps(data),
            "     '' using 1:2 with linespoints lw 2 pt 7 ps 1.2 lc rgb '#1f77b4' title 'measured (efficiency)', \\",
            "     '' using 1:2:(sprintf('%.0f%%', 100*$4)) with labels offset 0,1.2 "
            "tc rgb '#1f77b4' notitle",
        ]
    lines.append("unset multiplot")
    script = os.path.join(tmp, "scaling.gp")
    with open(script, "w") as f:
        f.write("\n".join(lines) + "\n")
    r = subprocess.run([gnuplot, script], capture_output=True, text=True)
    if r.returncode != 0:
        print("\nplot failed (gnuplot exit status %d); script and data in %s:\n%s"
              % (r.returncode, tmp, r.stderr), file=sys.stderr)
        return None
    print("\nplot: %s (gnuplot %s; script and data in %s)" % (args.png, term, tmp))
    return {"png": png, "gnuplot_script": script, "dir": tmp}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not os.path.isfile(args.binary) or not os.access(args.binary, os.X_OK):
        print("scaling.py: %s is not an executable; build it with\n  cmake --preset release && "
              "cmake --build --preset release --target distributed_pde" % args.binary,
              file=sys.stderr)
        return 2
    args.binary = os.path.abspath(args.binary)
    args.machine = machine_info()
    modes = ["strong", "weak"] if args.mode == "both" else [args.mode]
    overlaps = ["off", "on"] if args.overlap == "both" else [args.overlap]
    busy = args.machine["cpu_busy_at_start"] = cpu_busy_fraction()
    if busy is not None and busy > BUSY_WARN and not args.wait_idle:
        print("scaling.py: warning: the CPUs were %.0f%% busy before starting; other work on "
              "this machine will distort the timings" % (busy * 100), file=sys.stderr)

    points = []
    for mode in modes:
        for n in args.ranks:
            gb = args.batch if mode == "strong" else args.batch_per_rank * n
            for ov in overlaps:
                points.append((mode, n, gb, ov, build_command(args, n, gb, ov)))
    commands = [(p[0], display(p[4])) for p in points]

    runs, discarded = [], []  # discarded: --wait-idle's disturbed runs, kept for the record
    total = len(points) * args.repeat
    k = 0
    try:
        # Repeats outermost: a slow spell on the machine spreads over all the points instead of
        # landing on one.
        for rep in range(args.repeat):
            for mode, n, gb, ov, cmd in points:
                k += 1
                print("[%d/%d] %s" % (k, total, display(cmd)), file=sys.stderr, flush=True)
                retries = 0
                while True:
                    waited = wait_idle(args.wait_idle) if args.wait_idle else 0.0
                    res = run_once(cmd, args.timeout)
                    res["waited_for_idle_s"], res["retries"] = waited, retries
                    if (not args.wait_idle or retries >= MAX_RETRIES
                            or res["foreign_cpu_cores"] is None
                            or res["foreign_cpu_cores"] <= FOREIGN_WARN):
                        break
                    retries += 1
                    discarded.append(dict(res, mode=mode, ranks=n, global_batch=gb, overlap=ov,
                                          repeat=rep, command=display(cmd)))
                    print("      other processes used %.2f cores; running it again (%d/%d)"
                          % (res["foreign_cpu_cores"], retries, MAX_RETRIES),
                          file=sys.stderr, flush=True)
                if res["devices"] != n:
                    raise RunError("%s reported %d devices, expected %d" % (display(cmd),
                                                                          res["devices"], n))
                if res["steps"] < 1 or res["training_s"] <= 0:
                    raise RunError("%s reported %d steps in %.4f s; raise --steps or --epochs"
                                   % (display(cmd), res["steps"], res["training_s"]))
                res.update({"mode": mode, "ranks": n, "global_batch": gb, "overlap": ov,
                            "repeat": rep, "command": display(cmd),
                            "step_s": res["training_s"] / res["steps"],
                            "comm_per_step_s": res["comm_s"] / res["steps"]})
                print("      %.2f ms/step, %.2f ms/step blocked on all-reduce%s"
                      % (res["step_s"] * 1e3, res["comm_per_step_s"] * 1e3,
                         "" if res["foreign_cpu_cores"] is None else
                         "; other processes: %.2f cores" % res["foreign_cpu_cores"]),
                      file=sys.stderr, flush=True)
                runs.append(res)
    except RunError as e:
        print("scaling.py: run failed, %s" % e, file=sys.stderr)
        return 1

    params = {r["parameters"] for r in runs}
    if len(params) != 1:
        print("scaling.py: runs disagree on the parameter count: %s" % sorted(params),
              file=sys.stderr)
        return 1
    params = params.pop()

    summary, primary = summarise(args, runs, modes, overlaps)
    print_report(args, summary, primary, commands, params, runs, discarded)
    short = min(r["training_s"] for r in runs)
    if short < 0.2:
        print("WARNING: the shortest run trained for %.4f s; the binary prints its times to "
              "0.1 ms, so raise --steps or --epochs for figures worth quoting." % short)
    sys.stdout.flush()
    plot_info = plot(args, summary, modes, params)

    result = {
        "metadata": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": args.machine, "git_commit": git_commit(),
            "binary": args.binary, "script_argv": sys.argv[1:] if argv is None else argv,
            "model": {"inputs": 4, "hidden": args.hidden, "layers": args.layers, "outputs": 1,
                      "parameters": params},
            "settings": {"ranks": args.ranks, "modes": modes, "overlap": overlaps,
                         "strong_global_batch": args.batch,
                         "weak_batch_per_rank": args.batch_per_rank, "steps_per_epoch": args.steps,
                         "epochs": args.epochs, "repeat": args.repeat, "seed": args.seed,
                         "bucket_mb": args.bucket_mb, "timeout_s": args.timeout,
                         "wait_idle_s": args.wait_idle},
            "method": "step_s = training time / steps (setup excluded, warm-up included); "
                      "median over repeats; efficiency vs the smallest rank count; comm from "
                      "overlap off, exposed from overlap on; step time from overlap %s"
                      % primary,
            "commands": [{"mode": m, "command": c} for m, c in commands],
            "plot": plot_info,
        },
        "runs": runs,
        "discarded_runs": discarded,
        "summary": summary,
    }
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print("results: %s" % args.json, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
