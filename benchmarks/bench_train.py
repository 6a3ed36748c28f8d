"""Training speed against its floor: densa's epoch vs the bare matrix products of the same shapes.

    python benchmarks/bench_train.py [--rounds 3] [--images 60000] [--threads N] [--no-tutorial] [--autograd]

Floor: one epoch of the seed recipe's matrix products alone (784->512->10 MLP, batch 128, 469 steps, the
last of 96 images): forward x@W1.T and h@W2.T, backward dW2 = g.T@h, dh = g@W2 and dW1 = dh.T@x, in
the layouts torch.nn.Linear and autograd use, with no autograd, loss, optimiser or batch gathering.
densa's epoch is the real loop (densa.train, one epoch). Each round times the floor, then densa, then
(fp32 only) the tutorial's DataLoader loop, so all see the same machine; the figures are medians over
rounds. Targets: fp32 epoch <= 1.15x the fp32 floor; where the CPU multiplies bf16 natively
(AVX512-BF16 or AMX) also bf16 epoch <= 1.3x the bf16 floor and <= 0.5x densa's fp32 epoch (without
it densa refuses bf16, and so does this benchmark). Also: an epoch's worth of densa's Adam updates
alone (the fp32 master weights, the same in both precisions), against what each target leaves for
everything but the products; and loading the four MNIST files, warm.
--images N times the first N training images only (a busy machine; the ratios are per step anyway).
--autograd also times densa's loop with its direct MLP step turned off (every step through autograd,
as for any other model) in the same rounds: on a shared machine, where two processes' figures differ
more than the change itself, that in-process comparison is the fair one.
Each figure is given as wall time and as this process's CPU time (user + system, all threads): on a
machine shared with other work the wall time mostly measures the others, the CPU time much less so
(with --threads 1 it has no threads waiting on each other either).
Needs the MNIST files (DENSA_DATA_DIR or the cache).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def floor_epoch(x, dtype, batch_size: int = 128, seed: int = 0) -> float:
    """Seconds for one epoch of the MLP's forward and backward products on the float images `x` (N, 784)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    w1 = (torch.randn(512, 784, generator=g) * 0.03).to(dtype)
    w2 = (torch.randn(10, 512, generator=g) * 0.03).to(dtype)
    grad = torch.randn(batch_size, 10, generator=g).to(dtype)  # d loss / d logits
    x = x.to(dtype)
    return timed(_products, x, w1, w2, grad, batch_size)


def _products(x, w1, w2, grad, batch_size: int) -> None:
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        gb = grad[: len(xb)]
        h = xb @ w1.t()
        h @ w2.t()
        gb.t() @ h  # dW2
        dh = gb @ w2
        dh.t() @ xb  # dW1 (no dx: the images need no gradient)


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn(*args, **kwargs)."""
    t, c = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return time.perf_counter() - t, time.process_time() - c


def adam_epoch(model, steps: int, seed: int) -> tuple[float, float]:
    """An epoch's worth of densa's Adam updates alone (the seed recipe's, lr 1e-3) on the model's weights,
    with fixed gradients: what the optimiser costs however lean the rest of the step becomes."""
    import torch

    from densa.core.config import TrainConfig
    from densa.training.optim import make_optimizer

    opt = make_optimizer(model, TrainConfig())
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return timed(_adam_steps, opt, steps, torch.zeros(()))


def _adam_steps(opt, steps: int, skip) -> None:
    for _ in range(steps):
        opt.step(1e-3, skip)


def autograd_train(*args, **kwargs):
    """densa.train with the direct MLP step (densa.training.direct) turned off: gradients via autograd."""
    from densa.training import loop

    real = loop.direct_step
    loop.direct_step = lambda *a: None
    try:
        return loop.train(*args, **kwargs)
    finally:
        loop.direct_step = real


def tutorial_epoch(model, opt, loader) -> None:
    import torch.nn.functional as F

    model.train()
    for xb, yb in loader:
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        (logits.argmax(1) == yb).sum().item()


def cpu_features() -> list[str]:
    from densa.core.device import cpu_flags

    flags = cpu_flags()
    return [f for f in FEATURES if f in flags]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    ap.add_argument("--images", type=int, default=60000, help="train on the first N images (a part epoch)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-tutorial", action="store_true", help="skip the tutorial's DataLoader loop")
    ap.add_argument("--autograd", action="store_true", help="also time densa's loop without its direct step")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from densa.core.data import load_dataset
    from densa.core.device import cpu_bf16_is_fast
    from densa.core.models import MLP
    from densa.training.loop import train

    features = ", ".join(cpu_features()) or f"none of {', '.join(FEATURES)}"
    bf16 = cpu_bf16_is_fast()
    print(
        f"densa training benchmark · {platform.machine()} · {os.cpu_count()} CPUs · torch {torch.__version__}"
    )
    print(f"{torch.get_num_threads()} threads · CPU features: {features}")
    if not bf16:
        print("no AVX512-BF16/AMX: bf16 would be emulated (densa refuses it), so its ratios are skipped")

    loads = []
    for _ in range(6):
        t = time.perf_counter()
        ds = load_dataset("mnist")
        loads.append(time.perf_counter() - t)
    print(f"load four files, warm: {statistics.median(loads[1:]):.3f}s median of 5 (target <= 0.3)")

    images, labels = ds.train_images[: args.images], ds.train_labels[: args.images]
    x = images.reshape(-1, 784).float() / 255
    precisions = ("fp32", "bf16") if bf16 else ("fp32",)
    ways = ("floor", "densa", "autograd")
    times = {k: [] for k in ("tutorial", "adam", *(f"{p} {w}" for p in precisions for w in ways))}
    models, adam_model = {}, MLP([784, 512, 10])
    steps = -(-len(x) // 128)
    for p in precisions:
        for way in ways[1:]:
            torch.manual_seed(0)
            models[p, way] = MLP([784, 512, 10])
    if not args.no_tutorial:
        from torch.utils.data import DataLoader, TensorDataset

        torch.manual_seed(0)
        ref = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
        ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
        loader = DataLoader(TensorDataset(x, labels), batch_size=128, shuffle=True)
    for r in range(args.rounds + 1):  # round 0 warms everything up and is not counted
        for p in precisions:
            dtype = torch.bfloat16 if p == "bf16" else torch.float32
            floor = floor_epoch(x, dtype, seed=r)
            run = {"epochs": 1, "seed": r, "precision": p}
            epoch = timed(train, models[p, "densa"], images, labels, **run)
            if args.autograd:
                t = timed(autograd_train, models[p, "autograd"], images, labels, **run)
            if r:
                times[f"{p} floor"].append(floor)
                times[f"{p} densa"].append(epoch)
                if args.autograd:
                    times[f"{p} autograd"].append(t)
        adam = adam_epoch(adam_model, steps, r)
        if r:
            times["adam"].append(adam)
        if not args.no_tutorial:
            t = timed(tutorial_epoch, ref, ref_opt, loader)
            if r:
                times["tutorial"].append(t)
    print(f"one epoch of the seed recipe ({len(x)} images, {steps} steps), medians of {args.rounds} rounds:")
    for clock, c in (("wall", 0), ("CPU", 1)):
        med = {k: statistics.median(t[c] for t in v) for k, v in times.items() if v}
        for p in precisions:
            floor, epoch = med[f"{p} floor"], med[f"{p} densa"]
            target = 1.15 if p == "fp32" else 1.3
            print(
                f"  {clock:>4} {p}: floor {floor:.3f}s, densa {epoch:.3f}s -> {epoch / floor:.2f}x the floor "
                f"(target <= {target}); overhead {(epoch - floor) / steps * 1e6:.0f} us/step"
            )
            allowed = (target - 1) * floor
            print(
                f"  {clock:>4} {p}: Adam's updates alone {med['adam']:.3f}s = {med['adam'] / floor:.2f}x the "
                f"floor; the target leaves {allowed:.3f}s ({(target - 1):.2f}x) for all but the products"
            )
            if f"{p} autograd" in med:
                slow = med[f"{p} autograd"]
                print(
                    f"  {clock:>4} {p}: densa via autograd {slow:.3f}s -> {slow / floor:.2f}x the floor; "
                    f"the direct step saves {(slow - epoch) / steps * 1e6:.0f} us/step"
                )
        if bf16:
            ratio = med["bf16 densa"] / med["fp32 densa"]
            print(f"  {clock:>4} bf16 epoch / fp32 epoch: {ratio:.2f}x (target <= 0.5)")
        if "tutorial" in med:
            ratio = med["fp32 densa"] / med["tutorial"]
            tutorial = med["tutorial"]
            print(f"  {clock:>4} tutorial's DataLoader loop {tutorial:.3f}s -> densa/tutorial {ratio:.2f}x")


if __name__ == "__main__":
    main()
