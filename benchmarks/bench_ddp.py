"""Data-parallel vs one process: wall time and accuracy of the same `densa train` run, measured in one go.

    python benchmarks/bench_ddp.py [--nproc 2] [--preset seed] [--epochs 5] [--rounds 1] [-- more flags]

Runs the real command line as subprocesses, interleaved round by round so all see the same machine:
`densa train` in one process with torch's default threads (the baseline), one process with 1 thread,
and `densa train --nproc K` (K gloo processes, cores split between them) with the same global batch.
Reports the wall time of each whole command (all K processes together for DDP: start-up, data loading,
training and evaluation), densa's own train time, and the test accuracy of each. Needs the MNIST
files (DENSA_DATA_DIR or --data-dir). On a 2-core machine expect little or no gain from K=2.
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


def run(flags: list[str], out: Path) -> dict:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "densa", "train", *flags, "--out", str(out)], capture_output=True, text=True
    )
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"densa train {' '.join(flags)} failed:\n{proc.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    return {"wall": wall, "train": summary["train_time_s"], "acc": summary["test_acc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run")
    ap.add_argument("--preset", default="seed", help="densa train --preset")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds (medians are reported)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("extra", nargs="*", help="more densa train flags (after --)")
    args = ap.parse_args()

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = ["--preset", args.preset, "--epochs", str(args.epochs), "--device", "cpu", *args.extra]
    flags += ["--data-dir", args.data_dir] if args.data_dir else []
    variants = {
        f"1 process, {torch.get_num_threads()} threads (baseline)": flags,
        "1 process, 1 thread": [*flags, "--threads", "1"],
        f"{args.nproc} processes (gloo), {max(1, cores // args.nproc)} thread(s) each": [
            *flags,
            "--nproc",
            str(args.nproc),
        ],
    }
    print(f"data-parallel vs one process · {platform.machine()} · {cores} cores · torch {torch.__version__}")
    print(f"densa train {' '.join(flags)} (same global batch in every variant)")
    results: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, f) in enumerate(variants.items()):
                results[name].append(run(f, Path(tmp) / f"r{r}-{i}"))
    base = None
    for name, rs in results.items():
        wall = statistics.median(x["wall"] for x in rs)
        train = statistics.median(x["train"] for x in rs)
        acc = ", ".join(f"{x['acc']:.4f}" for x in rs)
        base = base or (wall, train)
        print(
            f"{name:<40} wall {wall:6.1f}s ({wall / base[0]:.2f}x)  train {train:6.1f}s "
            f"({train / base[1]:.2f}x)  test_acc {acc}"
        )


if __name__ == "__main__":
    main()
