"""How long `densa report` takes on a finished MNIST run (target: under 10 s), against baselines.

    python benchmarks/bench_report.py [--run RUN] [--repeats 3]

Without --run it first trains the default recipe (5 epochs) into a temporary folder. Then, as separate
processes, interleaved so all see the same machine: `python -c "import torch"` (the floor every command
pays), `densa evaluate RUN` (load + one pass over the test set + the text tables) and `densa report RUN`.
It prints medians of wall and CPU time, the report's ratio to evaluate, and where the report's own
time goes (in process).
Needs the MNIST files (DENSA_DATA_DIR or the cache) and the report extra.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one process.

    On a busy machine the wall time stretches with the load; the CPU time much less so, which makes it
    the better estimate of the wall time on a quiet machine (these commands run mostly on one core).
    """
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(cmd)} failed")
    return time.perf_counter() - t, usage.ru_utime + usage.ru_stime


def stages(run: Path, out: Path) -> None:
    """Time the report's steps in this process (imports already paid)."""
    import matplotlib  # noqa: F401
    import torch  # noqa: F401

    from densa.apps import plots
    from densa.apps.report import figures_for, write_report
    from densa.core.checkpoint import load
    from densa.core.metrics import assess
    from densa.inference.model import load_split

    t = {}
    t0 = time.perf_counter()
    ckpt = load(run)
    ds, x, y = load_split(ckpt)
    t["load model + test split"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = assess(ckpt.model, x, y, ds.classes)
    t["assess (forward pass, metrics)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    figs = figures_for(ckpt, result, x, ds, "test")
    t["build figures"] = time.perf_counter() - t0
    for name, (fig, _) in figs.items():
        t0 = time.perf_counter()
        plots.png_bytes(fig)
        t[f"render {name}.png"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_report(run, out, log=lambda s: None)
    t["whole write_report, warm"] = time.perf_counter() - t0
    for k, v in t.items():
        print(f"    {k:<32} {v:6.2f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a finished MNIST run folder (default: train one now)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    densa = [sys.executable, "-m", "densa"]
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "run"
            print("training the default recipe for a finished run ...")
            subprocess.run([*densa, "train", "--out", str(run)], check=True, stdout=subprocess.DEVNULL)
        out = Path(tmp) / "report"
        cmds = {
            "import torch": [sys.executable, "-c", "import torch"],
            "densa evaluate RUN": [*densa, "evaluate", str(run)],
            "densa report RUN": [*densa, "report", str(run), "--out", str(out)],
        }
        times = {k: [] for k in cmds}
        timed(cmds["densa report RUN"])  # warm the file cache and matplotlib's font cache
        for _ in range(args.repeats):
            for k, cmd in cmds.items():
                times[k].append(timed(cmd))
        print(f"densa report benchmark · {os.cpu_count()} CPUs · medians of {args.repeats}")
        med = {}
        for k, v in times.items():
            med[k] = statistics.median(w for w, _ in v), statistics.median(c for _, c in v)
            walls = ", ".join(f"{w:.2f}" for w, _ in v)
            print(f"  {k:<20} wall {med[k][0]:6.2f}s  cpu {med[k][1]:6.2f}s   (walls: {walls})")
        (rep, rep_cpu), (ev, _) = med["densa report RUN"], med["densa evaluate RUN"]
        print(
            f"  report / evaluate = {rep / ev:.2f}x (wall); report - evaluate = {rep - ev:.2f}s; "
            f"report = {rep:.2f}s wall, {rep_cpu:.2f}s cpu (target < 10 s)"
        )
        size = sum(p.stat().st_size for p in out.iterdir())
        print(f"  report folder: {len(list(out.iterdir()))} files, {size / 1e6:.1f} MB")
        print("  in process:")
        stages(run, Path(tmp) / "report2")


if __name__ == "__main__":
    main()
