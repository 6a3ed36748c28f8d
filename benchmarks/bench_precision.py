"""bf16 autocast vs fp32: epoch time of densa's loop in both precisions, measured in the same run.

    python benchmarks/bench_precision.py [--steps 10] [--rounds 3]

For each model (the seed MLP, the mlp preset's MLP, the cnn preset's CNN) the same number of training
steps runs in fp32 and in bf16, interleaved round by round so both see the same machine; the epoch time
is extrapolated from the median step time. Also prints each precision's matmul rate and where bf16
autocast is considered fast (densa.device). bf16 is forced on (DENSA_FORCE_BF16=1) so it is measured
even where densa would refuse it. Target (issue 3): bf16 epoch <= 0.45x fp32. Needs the MNIST files.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time


def matmul_rate(dtype, n: int = 1024, seconds: float = 1.0) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="training steps timed per precision and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    args = ap.parse_args()
    os.environ["DENSA_FORCE_BF16"] = "1"

    import torch

    from densa.core.config import resolve
    from densa.core.data import load_dataset
    from densa.core.device import cpu_bf16_is_fast
    from densa.core.models import build_model
    from densa.training.loop import train

    print(f"bf16 vs fp32 · {platform.machine()} · {os.cpu_count()} CPUs · torch {torch.__version__}")
    print(f"{torch.get_num_threads()} threads · AVX512-BF16 or AMX here: {cpu_bf16_is_fast()}")
    fp32_rate, bf16_rate = matmul_rate(torch.float32), matmul_rate(torch.bfloat16)
    print(
        f"matmul 1024^3: fp32 {fp32_rate / 1e9:.1f} GFLOP/s, bf16 {bf16_rate / 1e9:.2f} GFLOP/s "
        f"-> bf16/fp32 rate {bf16_rate / fp32_rate:.3f}"
    )
    ds = load_dataset("mnist")
    for preset in ("seed", "mlp", "cnn"):
        model_config, config = resolve(preset)
        times = {"fp32": [], "bf16": []}
        for r in range(args.rounds + 1):  # round 0 (two steps) warms up both
            steps = args.steps if r else 2
            x, y = ds.train_images[: config.batch_size * steps], ds.train_labels[: config.batch_size * steps]
            for precision in times:
                torch.manual_seed(0)
                model = build_model(model_config)
                t = train(model, x, y, config, epochs=1, precision=precision)[0]["time"]
                if r:
                    times[precision].append(t / steps)
        steps = -(-len(ds.train_images) // config.batch_size)
        fp32, bf16 = (statistics.median(times[p]) * steps for p in ("fp32", "bf16"))
        print(
            f"{preset:>4}: epoch fp32 {fp32:.1f}s, bf16 {bf16:.1f}s -> bf16/fp32 {bf16 / fp32:.2f}x "
            f"(target <= 0.45x; {args.steps} steps x {args.rounds} rounds, batch {config.batch_size})"
        )


if __name__ == "__main__":
    main()
