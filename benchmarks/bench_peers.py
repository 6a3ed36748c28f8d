"""densa against its peers on the same recipe, as whole processes: wall time, peak memory, test accuracy.

    python benchmarks/bench_peers.py [--runs 3] [--keras-python PATH]

Three programs train the seed recipe (784 -> 512 -> ReLU -> 10, Adam 1e-3, batch 128, 5 epochs) on the
same MNIST files (DENSA_DATA_DIR) and print their test accuracy: `densa train`, the tutorial's own code
(benchmarks/tutorial_seed.py) and the same network in Keras 3 (benchmarks/keras_seed.py); on a CPU with
native bf16 (AVX512-BF16 or AMX) also `densa train --precision bf16`. Each is run --runs times,
alternated round by round (the order rotating) so all see the same machine, after one untimed warm-up
run each. Wall time is the whole process (start-up, loading, training, testing); peak RSS is the
process's ru_maxrss from os.wait4, CPU time its user + system time from the same call (on a busy machine
the wall time depends on what else runs; the CPU time much less so). This process imports no torch, so
that it stays small: a child's peak RSS counts from its parent's size.

Keras runs in a venv of its own (it brings TensorFlow; densa's venv stays free of it):

    python3 -m venv ~/.cache/densa-bench/keras-venv
    ~/.cache/densa-bench/keras-venv/bin/pip install keras tensorflow-cpu

Without it (or --keras-python elsewhere) Keras is skipped with a note. Targets: densa's median wall
<= 0.4x Keras' and <= 0.35x the tutorial's (bf16 on native-bf16 CPUs: <= 0.3x Keras), test accuracy
within 0.3 points of each.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERAS_PYTHON = Path.home() / ".cache" / "densa-bench" / "keras-venv" / "bin" / "python"
FAST_BF16 = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def run(cmd: list[str], env: dict) -> tuple[float, float, float, float]:
    """Wall s, peak RSS in MB, printed test accuracy and CPU s (user + system) of one process, or exit."""
    with tempfile.TemporaryFile("w+") as log:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=HERE.parent)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        log.seek(0)
        out = log.read()
    found = re.findall(r"^test_acc: ([0-9.]+)", out, re.M)
    if status != 0 or not found:
        sys.exit(f"{' '.join(cmd)} failed (status {status}):\n{out[-3000:]}")
    return wall, usage.ru_maxrss / 1024, float(found[-1]), usage.ru_utime + usage.ru_stime


def contenders(args, tmp: Path) -> dict[str, list[str]]:
    py = sys.executable
    densa = [py, "-m", "densa", "train", "--out"]
    cmds = {"densa train": [*densa, str(tmp / "fp32-{round}")]}
    keras = Path(args.keras_python).expanduser()
    if keras.exists():
        cmds["Keras 3"] = [str(keras), str(HERE / "keras_seed.py")]
    else:
        print(f"note: no Keras venv at {keras}: Keras is skipped (see this file's docstring to create it)")
    cmds["tutorial script"] = [py, str(HERE / "tutorial_seed.py")]
    if FAST_BF16[0] in cpu_flags() or FAST_BF16[1] in cpu_flags():
        cmds["densa train --precision bf16"] = [*densa, str(tmp / "bf16-{round}"), "--precision", "bf16"]
    else:
        print("note: no AVX512-BF16/AMX here: densa refuses bf16, so its run is skipped")
    return cmds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each program (medians reported)")
    ap.add_argument("--keras-python", default=str(KERAS_PYTHON), help="the Keras venv's python")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed first run of each")
    args = ap.parse_args()
    if "DENSA_DATA_DIR" not in os.environ:
        sys.exit("set DENSA_DATA_DIR to the folder holding mnist/ (every program reads the same files)")
    flags = sorted(f for f in ("avx2", "avx512f", *FAST_BF16) if f in cpu_flags())
    print(f"densa vs peers · {platform.machine()} · {os.cpu_count()} CPUs · CPU features: {', '.join(flags)}")
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    results: dict[str, list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cmds = contenders(args, Path(tmp))
        names = list(cmds)
        for r in range(args.runs + (0 if args.no_warmup else 1)):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                cmd = [a.replace("{round}", str(r)) for a in cmds[name]]  # a new run folder each round
                wall, rss, acc, cpu = run(cmd, env)
                warm = " (warm-up)" if r == 0 and not args.no_warmup else ""
                print(f"  round {r}{warm}: {name}: {wall:.1f}s, {cpu:.1f} CPU s, {rss:.0f} MB, "
                      f"test_acc {acc:.4f}", flush=True)  # fmt: skip
                if r or args.no_warmup:
                    results.setdefault(name, []).append((wall, rss, acc, cpu))

    med = {}
    print(f"\n| program | wall, median of {args.runs} (min-max) | CPU time | peak RSS | test acc |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        walls = [w for w, *_ in rows]
        wall, rss, cpu = (statistics.median(row[i] for row in rows) for i in (0, 1, 3))
        med[name] = wall, rss, rows[-1][2], cpu
        accs = ", ".join(f"{a:.4f}" for a in sorted({row[2] for row in rows}))
        print(
            f"| {name} | {wall:.1f} s ({min(walls):.1f}-{max(walls):.1f}) | {cpu:.1f} s | {rss:.0f} MB "
            f"| {accs} |"
        )
    print()
    targets = [("densa train", "Keras 3", 0.4), ("densa train", "tutorial script", 0.35)]
    targets.append(("densa train --precision bf16", "Keras 3", 0.3))
    for mine, peer, target in targets:
        if mine in med and peer in med:
            ratio = med[mine][0] / med[peer][0]
            gap = 100 * (med[mine][2] - med[peer][2])
            met = "met" if ratio <= target else "missed"
            print(
                f"{mine} / {peer}: wall {ratio:.2f}x (target <= {target}: {met}), "
                f"CPU time {med[mine][3] / med[peer][3]:.2f}x, peak RSS {med[mine][1] / med[peer][1]:.2f}x, "
                f"test acc {gap:+.2f} points "
                f"({'within' if abs(gap) <= 0.3 else 'outside'} 0.3)"
            )


if __name__ == "__main__":
    main()
