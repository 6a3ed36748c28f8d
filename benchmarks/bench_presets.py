"""The README's results table: each preset on each dataset over several seeds, one run at a time.

    python benchmarks/bench_presets.py [--presets mlp,cnn] [--datasets mnist,fashion-mnist] [--seeds 3]
    python benchmarks/bench_presets.py --collect RUNS_DIR   # only summarise finished runs

Each run is a real `densa train --preset P --dataset D --seed S` process (full training set, no val
split); the table gives test accuracy mean ± std over the seeds, the epochs, the median epoch time and
the wall time of the whole command (start-up, loading, training, test evaluation, saving).
Targets (issue 3): MNIST mlp >= 99.0% in <= 60 s, cnn >= 99.5% in <= 180 s; Fashion-MNIST mlp >= 90.0%,
cnn >= 92.5%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(preset: str, dataset: str, seed: int, out: Path) -> None:
    cmd = [sys.executable, "-m", "densa", "train", "--preset", preset, "--dataset", dataset]
    cmd += ["--seed", str(seed), "--out", str(out)]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    (out / "wall_s.txt").write_text(f"{time.perf_counter() - t:.2f}\n")


def row(runs: list[Path]) -> str:
    s = [json.loads((r / "summary.json").read_text()) for r in runs]
    acc = [x["test_acc"] * 100 for x in s]
    walls = [float((r / "wall_s.txt").read_text()) for r in runs if (r / "wall_s.txt").exists()]
    epoch = statistics.median(t for x in s for t in x["epoch_times_s"])
    std = statistics.stdev(acc) if len(acc) > 1 else 0.0
    wall = (
        f"{statistics.mean(walls):.0f} s"
        if walls
        else f"{statistics.mean(x['total_time_s'] for x in s):.0f} s*"
    )
    return (
        f"| {s[0]['dataset']} | {s[0]['preset']} | {statistics.mean(acc):.2f} ± {std:.2f}% "
        f"({', '.join(f'{a:.2f}' for a in acc)}) | {s[0]['epochs']} | {epoch:.1f} s | {wall} "
        f"| {s[0]['threads']} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="mlp,cnn")
    ap.add_argument("--datasets", default="mnist,fashion-mnist")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--collect", metavar="DIR", help="summarise DIR/<dataset>-<preset>-s<seed> runs only")
    args = ap.parse_args()
    root = Path(args.collect or tempfile.mkdtemp(prefix="densa-presets-"))
    print(f"runs in {root} · {os.cpu_count()} CPUs")
    print("| dataset | preset | test accuracy, mean ± std (each seed) | epochs | epoch | wall | threads |")
    print("|---|---|---|---|---|---|---|")
    for dataset in args.datasets.split(","):
        for preset in args.presets.split(","):
            runs = [root / f"{dataset}-{preset}-s{seed}" for seed in range(args.seeds)]
            for seed, out in enumerate(runs):
                if not args.collect and not (out / "summary.json").exists():
                    run(preset, dataset, seed, out)
            runs = [r for r in runs if (r / "summary.json").exists()]
            if runs:
                print(row(runs), flush=True)
    print("(* no wall_s.txt: the run's own total_time_s, without Python and torch start-up)")


if __name__ == "__main__":
    main()
