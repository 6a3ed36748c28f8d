"""The results table: each preset on each dataset over several seeds, one run at a time.

    python benchmarks/bench_presets.py                   # the table in docs/benchmarks/presets.md
    python benchmarks/bench_presets.py --runs mnist:fast,mnist:mlp --seeds 3
    python benchmarks/bench_presets.py --collect RUNS_DIR   # only summarise finished runs

Each run is a real `densa train --preset P --dataset D --seed S` process (full training set, no val
split, so the test set is read once per run: at its end). For each preset x dataset the table gives the
test accuracy mean ± std and each seed's; the training time densa records (`train_time_s` in
summary.json: building the model and optimiser, the epochs, the per-epoch checkpoints); the wall time of
the whole command (Python and torch start-up, loading, training, the test evaluation, saving) and its CPU
time (user + system, all threads), each the mean over the seeds; and the goal beside the measurement
(met or missed). A busy machine shows as CPU time well below threads x wall. Each run's output is
kept in RUNS_DIR/<dataset>-<preset>-s<seed>.log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = "mnist:seed,mnist:fast,mnist:mlp,mnist:cnn,fashion-mnist:seed,fashion-mnist:mlp,fashion-mnist:cnn"

# (dataset, preset) -> (test accuracy %, which time: "train" or "wall", seconds)
GOALS = {
    ("mnist", "seed"): (97.8, None, None),
    ("mnist", "fast"): (98.0, "train", 2.5),
    ("mnist", "mlp"): (99.2, "wall", 60),
    ("mnist", "cnn"): (99.65, "wall", 180),
    ("fashion-mnist", "mlp"): (90.0, None, None),
    ("fashion-mnist", "cnn"): (93.0, "wall", 180),
}


def start(preset: str, dataset: str, seed: int, out: Path, threads: int | None):
    """A `densa train` process, started now; `finish` waits for it."""
    cmd = [sys.executable, "-m", "densa", "train", "--preset", preset, "--dataset", dataset]
    cmd += ["--seed", str(seed), "--out", str(out)]
    cmd += ["--threads", str(threads)] if threads else []
    log = open(out.parent / f"{out.name}.log", "w")  # noqa: SIM115 (closed in finish)
    return cmd, out, log, time.perf_counter(), subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def finish(cmd, out: Path, log, t: float, p: subprocess.Popen) -> None:
    """Wait for the process; its own wall and CPU time (user + system, all threads) go to bench.json."""
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    log.close()
    if status:
        sys.exit(f"{' '.join(cmd)} failed:\n{Path(log.name).read_text()[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    (out / "bench.json").write_text(json.dumps({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}) + "\n")


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def verdict(dataset: str, preset: str, acc: float, train: float, wall: float | None) -> str:
    goal = GOALS.get((dataset, preset))
    if goal is None:
        return "—"
    least, which, limit = goal
    text = f"≥ {least}%: {'met' if acc >= least else 'missed'}"
    if which is not None:
        took = train if which == "train" else wall
        ok = took is not None and took <= limit
        shown = "n/a" if took is None else f"{took:.1f} s"
        text += f"; {which} ≤ {limit} s: {shown}, {'met' if ok else 'missed'}"
    return text


def row(runs: list[Path]) -> str:
    s = [json.loads((r / "summary.json").read_text()) for r in runs]
    b = [json.loads((r / "bench.json").read_text()) for r in runs if (r / "bench.json").exists()]
    acc = [x["test_acc"] * 100 for x in s]
    mean, std = statistics.mean(acc), (statistics.stdev(acc) if len(acc) > 1 else 0.0)
    train = statistics.mean(x["train_time_s"] for x in s)
    wall = statistics.mean(x["wall_s"] for x in b) if b else None
    cpu = statistics.mean(x["cpu_s"] for x in b) if b else None
    epoch = statistics.median(t for x in s for t in x["epoch_times_s"])
    dataset, preset = s[0]["dataset"], s[0]["preset"]
    shown = (lambda v: "n/a" if v is None else f"{v:.1f} s") if b else (lambda v: "n/a")
    return (
        f"| {dataset} | {preset} | {mean:.2f} ± {std:.2f}% ({', '.join(f'{a:.2f}' for a in acc)}) "
        f"| {s[0]['epochs']} | {epoch:.2f} s | {train:.1f} s | {shown(wall)} | {shown(cpu)} "
        f"| {s[0]['threads']} | {verdict(dataset, preset, mean, train, wall)} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--runs", default=RUNS, help="comma-separated dataset:preset pairs (default: %(default)s)"
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--jobs", type=int, default=1, help="seeds trained at once (>1: each run's times include the others')"
    )
    ap.add_argument("--threads", type=int, default=None, help="densa train --threads (default: torch's)")
    ap.add_argument("--out", metavar="DIR", help="keep the runs here (default: a new temp folder)")
    ap.add_argument("--collect", metavar="DIR", help="summarise DIR/<dataset>-<preset>-s<seed> runs only")
    args = ap.parse_args()
    root = Path(args.collect or args.out or tempfile.mkdtemp(prefix="densa-presets-"))
    root.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"runs in {root} · {cpu_name()} · {os.cpu_count()} CPUs · threads: {args.threads or 'default'}")
    print(f"start {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · load average {load[0]:.2f}")
    print("| dataset | preset | test accuracy, mean ± std (each seed) | epochs | epoch | train | wall | CPU "
          "| threads | goal |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pair in args.runs.split(","):
        dataset, preset = pair.split(":")
        runs = [root / f"{dataset}-{preset}-s{seed}" for seed in range(args.seeds)]
        todo = [(s, r) for s, r in enumerate(runs) if not args.collect and not (r / "summary.json").exists()]
        for i in range(0, len(todo), args.jobs):
            started = [start(preset, dataset, s, r, args.threads) for s, r in todo[i : i + args.jobs]]
            for process in started:
                finish(*process)
        runs = [r for r in runs if (r / "summary.json").exists()]
        if runs:
            print(row(runs), flush=True)
    load = os.getloadavg()
    print(f"end {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · load average {load[0]:.2f}")


if __name__ == "__main__":
    main()
