"""Training: the explicit loop.

The loop keeps the whole dataset as uint8 tensors; each epoch draws one seeded permutation and takes
batches by index slicing (no DataLoader): [shift] -> forward -> cross_entropy on logits -> backward ->
step. Randomness comes only from the seeded generator (shuffling, shifts) and torch's seeded global RNG
(init, dropout), and the loop's whole state can be saved after any step, so a resumed run ends with the
same bits as one that never stopped. densa.training.job wraps it the way `densa train` uses it.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import TrainConfig
from ..core.errors import DensaError


class NonFiniteLoss(DensaError):
    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch  # the epoch it happened in; the last good state is the end of the one before


class Interrupted(DensaError):
    """The loop stopped between two steps because `stop()` said so; its state was handed to on_state."""

    def __init__(self, epoch: int, step: int, steps: int):
        where = f"in epoch {epoch} after step {step} of {steps}" if step else f"after epoch {epoch - 1}"
        super().__init__(f"interrupted {where}")
        self.epoch, self.step, self.steps = epoch, step, steps


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = list(model.parameters())
    # The fused kernel updates all parameters in one pass: ~40% of the tutorial's epoch time on CPU.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params) or None
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            fused=fused,
        )
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """The learning rate of optimiser step `step` (0-based) of `total`: linear warm-up, then the schedule."""
    warm = int(config.warmup * total)
    if step < warm:
        return config.lr * (step + 1) / warm
    if config.schedule == "constant":
        return config.lr
    p = (step - warm) / max(total - warm, 1)  # 0 -> 1 over the steps after the warm-up
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * p))
    return config.lr * (1 - p)  # onecycle: straight down to 0


def random_shift(images: torch.Tensor, shift: int, g: torch.Generator) -> torch.Tensor:
    """Move each image (B, 28, 28) by its own (dy, dx) in [-shift, shift] pixels, filling with 0."""
    b, h, w = images.shape
    dev = images.device
    d = torch.randint(-shift, shift + 1, (2, b, 1), generator=g).to(dev)
    padded = F.pad(images, (shift, shift, shift, shift))
    rows = torch.arange(h, device=dev) + shift - d[0]  # (B, h): source row of each output row
    cols = torch.arange(w, device=dev) + shift - d[1]
    return padded[torch.arange(b, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_flip(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mirror each image (B, 28, 28) left-right with probability 1/2 (clothes, not digits)."""
    flip = (torch.rand(len(images), generator=g) < 0.5).to(images.device)
    return torch.where(flip[:, None, None], images.flip(-1), images)


def holdout(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of range(n) into (train, val) index tensors, each in ascending order."""
    n_val = round(n * fraction)
    if not 1 <= n_val < n:
        raise DensaError(f"--val-split {fraction} of {n:,} images leaves an empty train or val set")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))  # not the shuffle stream
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def new_loop() -> dict:
    """The loop's own counters; with model, optimiser and RNG states they make a resumable state."""
    return {
        "epoch": 0,  # epochs completed
        "step": 0,  # steps done in the epoch after `epoch` (non-zero only when stopped mid-epoch)
        "global_step": 0,
        "perm": None,  # that epoch's permutation, when stopped mid-epoch
        "loss_sum": 0.0,
        "correct": 0,
        "history": [],  # one record per completed epoch
        "best_val_loss": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,  # epochs since the val loss last improved
        "stopped": False,  # early stopping ended the run
    }


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig | None = None,
    *,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    state: dict | None = None,
    on_epoch=None,
    on_state=None,
    stop=None,
    progress: bool = False,
    ranks=None,
    **overrides,
) -> list[dict]:
    """Train `model` in place on uint8 `images` (N, 28, 28) and int64 `labels`; returns per-epoch records.

    `overrides` replace fields of `config` (e.g. `train(model, x, y, epochs=1)`). `val` = (images, labels)
    adds val_loss/val_acc/best_epoch to each record and enables early stopping; each record also has the
    epoch's wall "time". `on_epoch(record)` is called after each epoch; `on_state(state)` gets the full
    resumable state after each epoch and when `stop()` turns true (checked after every step; the loop
    then raises Interrupted); `state` is such a state to continue from. A non-finite loss raises
    NonFiniteLoss before that step is applied. `ranks` (distributed.Group) makes this one rank of a
    data-parallel run: each rank trains on its slice of every global batch and all ranks agree on sums.
    """
    from tqdm import tqdm

    from ..core.device import resolve_precision
    from ..core.evaluate import evaluate

    config = replace(config or TrainConfig(), **overrides)
    config.check()
    if config.early_stop and val is None:
        raise DensaError("early stopping watches the val loss; add --val-split F (e.g. 0.1) or pass val=")
    device = next(model.parameters()).device
    bf16 = resolve_precision(config.precision, device.type) == "bf16"
    images, labels = images.to(device), labels.to(device)
    if val is not None:
        val = (val[0].to(device), val[1].to(device))
    n, bs = len(images), config.batch_size
    steps = math.ceil(n / bs)
    total = steps * config.epochs
    g = torch.Generator().manual_seed(config.seed)
    opt = make_optimizer(model, config)
    loop = new_loop()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        loop.update({k: state[k] for k in loop})
        if ranks is not None and ranks.rank:  # rank 0 carries the saved partial sums of the epoch
            loop.update(loss_sum=0.0, correct=0)
    net, ev = model, evaluate  # what computes the forward pass, and evaluation
    if ranks is not None:
        net, ev = ranks.wrap(model, config.seed, loop["global_step"]), ranks.evaluate
        stop = ranks.agreed(stop) if stop is not None else None

    def snapshot() -> dict:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "generator": g.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda,
            **loop,
        }

    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    while loop["epoch"] < config.epochs and not loop["stopped"]:
        epoch = loop["epoch"] + 1
        model.train()
        t0 = time.perf_counter()
        if loop["step"]:  # resuming in the middle of this epoch
            perm = loop["perm"].to(device)
        else:
            perm = torch.randperm(n, generator=g).to(device)
            loop.update(loss_sum=0.0, correct=0)
        loss_sum = torch.tensor(loop["loss_sum"], dtype=torch.float64, device=device)
        correct = torch.tensor(loop["correct"], dtype=torch.int64, device=device)
        bar = tqdm(
            total=steps,
            initial=loop["step"],
            desc=f"Epoch {epoch}",
            unit="batch",
            leave=False,
            disable=not progress,
        )
        for k in range(loop["step"], steps):
            idx = perm[k * bs : (k + 1) * bs]
            xb = images[idx]
            if config.shift:
                xb = random_shift(xb.reshape(-1, 28, 28), config.shift, g)
            if config.flip:
                xb = random_flip(xb.reshape(-1, 28, 28), g)
            n_batch = len(idx)
            if ranks is not None:  # this rank's slice (augmentation was drawn for the whole batch)
                xb, idx = ranks.part(xb), ranks.part(idx)
            xb = xb.float().div_(255)  # uint8 -> [0, 1], as the tutorial's ToTensor
            yb = labels[idx]
            lr = lr_at(loop["global_step"], total, config)
            for group in opt.param_groups:
                group["lr"] = lr
            with autocast:
                logits = net(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing)
            bad = not torch.isfinite(loss)
            if bad if ranks is None else ranks.any(bad):
                bar.close()
                raise NonFiniteLoss(
                    f"the loss became {loss.item()} in epoch {epoch}, step {k + 1} of {steps} (learning rate "
                    f"{lr:.3g}): the learning rate is probably too high; try --lr {config.lr / 10:g}",
                    epoch,
                )
            (loss if ranks is None else loss * ranks.loss_scale(len(idx), n_batch)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loop["global_step"] += 1
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(dim=1) == yb).sum()
            bar.update()
            if stop is not None and stop() and k + 1 < steps:
                bar.close()
                if ranks is not None:
                    loss_sum, correct = ranks.sum(loss_sum, correct)
                loop.update(step=k + 1, perm=perm.cpu(), loss_sum=loss_sum.item(), correct=correct.item())
                if on_state is not None:
                    on_state(snapshot())
                raise Interrupted(epoch, k + 1, steps)
        bar.close()
        if ranks is not None:
            loss_sum, correct = ranks.sum(loss_sum, correct)
            ranks.check_weights(model, epoch)
        record = {"epoch": epoch, "loss": loss_sum.item() / n, "acc": correct.item() / n}
        if val is not None:
            r = ev(model, *val)
            if r["loss"] < loop["best_val_loss"]:
                loop.update(best_val_loss=r["loss"], best_epoch=epoch, bad_epochs=0)
            else:
                loop["bad_epochs"] += 1
            record.update(val_loss=r["loss"], val_acc=r["acc"], best_epoch=loop["best_epoch"])
            loop["stopped"] = bool(config.early_stop) and loop["bad_epochs"] >= config.early_stop
        record["time"] = time.perf_counter() - t0  # of this process's part of the epoch; not in metrics.jsonl
        loop.update(epoch=epoch, step=0, perm=None, history=[*loop["history"], record])
        if on_epoch is not None:
            on_epoch(record)
        if on_state is not None:
            on_state(snapshot())
        if stop is not None and stop() and loop["epoch"] < config.epochs:
            raise Interrupted(epoch + 1, 0, steps)
    model.eval()
    return loop["history"]


def epoch_line(record: dict) -> str:
    """The tutorial's line, `Epoch 1 - loss: 0.3141 - acc: 0.9131`, then extra fields."""
    line = f"Epoch {record['epoch']} - loss: {record['loss']:.4f} - acc: {record['acc']:.4f}"
    if "val_loss" in record:
        line += f" - val_loss: {record['val_loss']:.4f} - val_acc: {record['val_acc']:.4f}"
    return f"{line} - time: {record['time']:.2f}s" if "time" in record else line
