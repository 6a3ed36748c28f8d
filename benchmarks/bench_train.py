"""Core speed and memory benchmarks; every ratio is against a baseline measured in this same run.

    python benchmarks/bench_train.py [--epochs 3] [--skip-e2e]

(a) densa's epoch vs the tutorial's loop (DataLoader(TensorDataset(...), batch_size=128, shuffle=True),
    same model and optimiser), epochs interleaved so both see the same machine;
(b) densa's epoch vs the compute limit: FLOPs per epoch / the best matmul rate measured now;
(c) loading the four MNIST files, warm;
(d) end to end: `densa train` vs the tutorial script (benchmarks/tutorial_seed.py), wall time and
    peak RSS of each process.
Needs the MNIST files (DENSA_DATA_DIR or the cache) and pillow for (d).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def mlp_flops_per_sample(sizes: list[int]) -> int:
    """Forward (2*in*out per layer) + backward (weight grad 2*in*out; input grad 2*in*out except layer 1)."""
    flops = 0
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        flops += 2 * a * b * (2 if i == 0 else 3)
    return flops


def matmul_rate(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """FLOP/s of an (m, k) @ (k, n) float32 matmul, best of repeated timings."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(5):
        a @ b
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 10 * 2 * m * k * n / (time.perf_counter() - t))
    return best


def tutorial_epoch(model, opt, loader) -> float:
    import torch.nn.functional as F

    t = time.perf_counter()
    model.train()
    for xb, yb in loader:
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        (logits.argmax(1) == yb).sum().item()
    return time.perf_counter() - t


def peak_run(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB, and output of one process."""
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        log.seek(0)
        out = log.read()
    if status != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out}")
    return wall, usage.ru_maxrss / 1024, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="epochs timed for each loop in (a)")
    ap.add_argument("--skip-e2e", action="store_true", help="skip (d)")
    args = ap.parse_args()
    print(f"densa core benchmarks · {platform.machine()} · {os.cpu_count()} CPUs")

    # (d) first, while this process is small: a child's peak RSS starts at its parent's size
    if not args.skip_e2e:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with tempfile.TemporaryDirectory() as tmp:
            seed_wall, seed_rss, _ = peak_run([sys.executable, str(HERE / "tutorial_seed.py")], env)
            cmd = [sys.executable, "-m", "densa", "train", "--out", str(Path(tmp) / "run")]
            densa_wall, densa_rss, text = peak_run(cmd, env)
        acc = [line for line in text.splitlines() if line.startswith("test_acc")]
        print(
            f"(d) end to end: tutorial script {seed_wall:.1f}s / {seed_rss:.0f} MB peak; "
            f"densa train {densa_wall:.1f}s / {densa_rss:.0f} MB peak ({acc[0] if acc else '?'}) "
            f"-> {densa_wall / seed_wall:.2f}x time (target <= 0.5), {densa_rss / seed_rss:.2f}x memory "
            f"(target < 620 MB)"
        )

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from densa.core.data import load_dataset
    from densa.core.models import MLP
    from densa.training.loop import train

    print(f"torch {torch.__version__} · {torch.get_num_threads()} threads")
    loads = []
    for _ in range(6):
        t = time.perf_counter()
        ds = load_dataset("mnist")
        loads.append(time.perf_counter() - t)
    print(f"(c) load four files, warm: {statistics.median(loads[1:]):.3f}s median of 5 (target <= 0.3)")

    # (a) + (b): interleave epochs so both loops see the same machine state
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    x = ds.train_images.reshape(-1, 784).float() / 255
    loader = DataLoader(TensorDataset(x, ds.train_labels), batch_size=128, shuffle=True)
    torch.manual_seed(0)
    model = MLP([784, 512, 10])
    t_ref, t_densa = [], []
    for e in range(args.epochs):
        t_ref.append(tutorial_epoch(ref, ref_opt, loader))
        t_densa.append(train(model, ds.train_images, ds.train_labels, epochs=1, seed=e)[0]["time"])
    ref_s, densa_s = statistics.median(t_ref), statistics.median(t_densa)
    print(
        f"(a) epoch: tutorial loop {ref_s:.2f}s, densa {densa_s:.2f}s (medians of {args.epochs}) "
        f"-> ratio {densa_s / ref_s:.2f} (target <= 0.85)"
    )

    flops = mlp_flops_per_sample([784, 512, 10]) * len(ds.train_images)
    rates = {
        "128x784 @ 784x512 (the training shape)": matmul_rate(128, 784, 512),
        "2048x2048 @ 2048x2048": matmul_rate(2048, 2048, 2048),
    }
    best = max(rates.values())
    for name, r in rates.items():
        print(f"    matmul {name}: {r / 1e9:.0f} GFLOP/s")
    limit = flops / best
    print(
        f"(b) compute limit: {flops / 1e9:.1f} GFLOP/epoch at {best / 1e9:.0f} GFLOP/s = {limit:.2f}s; "
        f"densa epoch {densa_s:.2f}s -> {densa_s / limit:.2f}x the limit (aim <= 1.3)"
    )


if __name__ == "__main__":
    main()
