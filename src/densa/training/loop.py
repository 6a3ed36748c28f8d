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
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import TrainConfig
from ..core.errors import DensaError
from ..core.evaluate import scale_images
from .augment import random_affine
from .direct import DirectStep, direct_step
from .distributed import LocalGroup
from .optim import Optimizer, make_optimizer

CHECK_EVERY = 64  # steps between two host reads of the non-finite flag (and at each epoch's end)


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


@dataclass
class LoopState:
    """The loop's own counters; with model, optimiser and RNG states they make a resumable state.

    Saved flat into checkpoint.pt under these names (core.metadata.check_state reads them back).
    """

    epoch: int = 0  # epochs completed
    step: int = 0  # steps done in the epoch after `epoch` (non-zero only when stopped mid-epoch)
    global_step: int = 0
    perm: torch.Tensor | None = None  # that epoch's permutation, when stopped mid-epoch
    loss_sum: float = 0.0  # of that epoch's steps so far (summed over all ranks)
    correct: int = 0
    history: list[dict] = field(default_factory=list)  # one record per completed epoch
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the val loss last improved
    stopped: bool = False  # early stopping ended the run

    @classmethod
    def from_state(cls, state: dict) -> LoopState:
        loop = cls(**{f.name: state[f.name] for f in fields(cls)})
        loop.history = list(loop.history)  # appended to here; the caller's list stays as it was
        return loop

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def note_val_loss(self, epoch: int, loss: float, patience: int) -> None:
        """The early-stop rule: stop after `patience` epochs (0 = never) without a lower val loss."""
        if loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch, self.bad_epochs = loss, epoch, 0
        else:
            self.bad_epochs += 1
        self.stopped = bool(patience) and self.bad_epochs >= patience


def check_early_stop(
    config: TrainConfig, has_val: bool, remedy: str = "--val-split F (e.g. 0.1) or pass val="
) -> None:
    """Early stopping watches the val loss: without val images there is nothing to watch."""
    if config.early_stop and not has_val:
        raise DensaError(f"early stopping watches the val loss; add {remedy}")


@dataclass
class Setup:
    """What train() prepared once: data on the model's device, optimiser, generator, the rank's view."""

    model: nn.Module
    net: nn.Module  # what computes the forward pass: the model, or its data-parallel replica
    opt: Optimizer
    g: torch.Generator  # shuffling and augmentation
    config: TrainConfig
    images: torch.Tensor
    labels: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor] | None
    ranks: object  # distributed.Group, or LocalGroup for one process
    autocast: contextlib.AbstractContextManager
    direct: DirectStep | None  # forward + gradients without autograd (a plain MLP on one process)
    stop: Callable[[], bool]  # true on every rank at the same step once it is true on one
    on_state: Callable[[dict], None]
    progress: bool
    buffers: dict = field(default_factory=dict)  # batch tensors reused from step to step (see batch())

    @property
    def n(self) -> int:
        return len(self.images)

    @property
    def steps(self) -> int:  # per epoch
        return math.ceil(self.n / self.config.batch_size)


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
    then raises Interrupted); `state` is such a state to continue from. A non-finite loss is never
    applied: no step from it on changes the weights, and NonFiniteLoss names it within CHECK_EVERY
    steps. `ranks` (distributed.Group) makes this one rank of a data-parallel run: each rank trains on
    its slice of every global batch and all ranks agree on sums.
    """
    config = replace(config or TrainConfig(), **overrides)
    check_early_stop(config, val is not None)
    s, loop = setup(
        model, images, labels, config, val, state, ranks or LocalGroup(), stop, on_state, progress
    )
    on_epoch = on_epoch or _ignore
    while loop.epoch < config.epochs and not loop.stopped:
        epoch = loop.epoch + 1
        t0 = time.perf_counter()
        loss_sum, correct = train_epoch(s, loop, epoch)
        s.ranks.check_weights(model, epoch)
        record = {"epoch": epoch, "loss": loss_sum.item() / s.n, "acc": correct.item() / s.n}
        if val is not None:
            record.update(validate(s, loop, epoch))
        record["time"] = time.perf_counter() - t0  # of this process's part of the epoch; not in metrics.jsonl
        loop.epoch, loop.step, loop.perm = epoch, 0, None
        loop.history.append(record)
        on_epoch(record)
        s.on_state(snapshot(s, loop))
        if s.stop() and loop.epoch < config.epochs:
            raise Interrupted(epoch + 1, 0, s.steps)
    model.eval()
    return loop.history


def setup(
    model, images, labels, config, val, state, ranks, stop, on_state, progress
) -> tuple[Setup, LoopState]:
    """Data on the model's device, the optimiser and generator; with `state`, everything as it was saved."""
    from ..core.device import resolve_precision

    device = next(model.parameters()).device
    if val is not None:
        val = (val[0].to(device), val[1].to(device))
    opt = make_optimizer(model, config)
    g = torch.Generator().manual_seed(config.seed)
    loop = LoopState() if state is None else restore(state, model, opt, g, device)
    if ranks.rank:  # rank 0 alone carries the saved partial sums of the epoch
        loop.loss_sum, loop.correct = 0.0, 0
    net = ranks.wrap(model, config.seed, loop.global_step)  # after restoring: rank 0's weights, RNG
    bf16 = resolve_precision(config.precision, device.type) == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    direct = direct_step(model, ranks, bf16, config.label_smoothing)
    s = Setup(
        model, net, opt, g, config, images.to(device), labels.to(device), val, ranks, autocast, direct,
        stop=ranks.agreed(stop or _never), on_state=on_state or _ignore, progress=progress,
    )  # fmt: skip
    return s, loop


def restore(state: dict, model: nn.Module, opt, g: torch.Generator, device: torch.device) -> LoopState:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    g.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return LoopState.from_state(state)


def snapshot(s: Setup, loop: LoopState) -> dict:
    """The full resumable state (the keys of checkpoint.pt, before the run's own)."""
    device = s.images.device
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {
        "model": s.model.state_dict(),
        "optimizer": s.opt.state_dict(),
        "generator": s.g.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": cuda,
        **loop.to_dict(),
    }


def train_epoch(s: Setup, loop: LoopState, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch, or its rest when resuming mid-epoch; the summed loss and correct count over all ranks.

    No step waits for the host: the loss and accuracy sums stay on the device, and a non-finite loss
    reaches the optimiser as a flag (Guard) that makes it skip the step, read every CHECK_EVERY steps.
    """
    s.model.train()
    perm, loss_sum, correct = start_epoch(s, loop)
    bs = s.config.batch_size
    guard = Guard(s, epoch, loss_sum)
    with progress_bar(s, loop.step, epoch) as bar:
        for k in range(loop.step, s.steps):
            idx = perm[k * bs : (k + 1) * bs]
            xb, yb = batch(s, idx)
            lr = lr_at(loop.global_step, s.steps * s.config.epochs, s.config)
            if s.direct is not None:  # a plain MLP: the same gradients without autograd's graph
                loss, logits = s.direct(xb, yb)
                skip = guard.add(loss, len(yb), lr, k + 1)
            else:
                with s.autocast:
                    logits = s.net(xb)
                    loss = F.cross_entropy(logits, yb, label_smoothing=s.config.label_smoothing)
                skip = guard.add(loss, len(yb), lr, k + 1)  # before backward: a bad step is never applied
                s.ranks.scale(loss, len(yb), len(idx)).backward()
            s.opt.step(lr, skip)
            s.opt.zero_grad()
            loop.global_step += 1
            correct += (logits.argmax(dim=1) == yb).sum()
            bar.update()
            if (k + 1) % CHECK_EVERY == 0:
                guard.check()
            if s.stop() and k + 1 < s.steps:
                guard.check()
                pause(s, loop, epoch, k + 1, perm, loss_sum, correct)
    guard.check()
    return s.ranks.sum(loss_sum, correct)


def start_epoch(s: Setup, loop: LoopState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The epoch's permutation and running sums: drawn and zero, or as saved when resuming mid-epoch."""
    device = s.images.device
    if loop.step:
        perm = loop.perm.to(device)
    else:
        perm = torch.randperm(s.n, generator=s.g).to(device)
        loop.loss_sum, loop.correct = 0.0, 0
    loss_sum = torch.tensor(loop.loss_sum, dtype=torch.float64, device=device)
    correct = torch.tensor(loop.correct, dtype=torch.int64, device=device)
    return perm, loss_sum, correct


def progress_bar(s: Setup, done: int, epoch: int):
    from tqdm import tqdm

    return tqdm(
        total=s.steps, initial=done, desc=f"Epoch {epoch}", unit="batch", leave=False, disable=not s.progress
    )


def batch(s: Setup, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's images in [0, 1] and labels of the global batch `idx`, augmented as configured.

    The gathered and the scaled images go into buffers reused from step to step (each step is done
    with them before the next batch is drawn), so no batch-sized tensor is allocated per step.
    """
    gathered = reuse(s, "gathered", idx, s.images)
    xb = torch.index_select(s.images, 0, idx, out=gathered)  # images[idx], ~5x as fast for uint8 rows
    if s.config.shift:
        xb = random_shift(xb.reshape(-1, 28, 28), s.config.shift, s.g)
    if s.config.flip:
        xb = random_flip(xb.reshape(-1, 28, 28), s.g)
    if s.config.rotate or s.config.scale:
        xb = random_affine(xb.reshape(-1, 28, 28), s.config.rotate, s.config.scale, s.g)
    xb, idx = s.ranks.part(xb), s.ranks.part(idx)  # augmentation was drawn for the whole batch
    if xb.dtype != torch.uint8:
        return scale_images(xb), s.labels.index_select(0, idx)  # floats: checked to lie in [0, 1]
    scaled = reuse(s, "scaled", xb, xb, torch.float32)
    return torch.div(xb, 255, out=scaled), s.labels.index_select(0, idx)  # scale_images's uint8 / 255


def reuse(s: Setup, name: str, rows: torch.Tensor, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """s's buffer `name`: len(rows) rows shaped as `like`'s, made anew only when that shape changes."""
    shape = (len(rows), *like.shape[1:])
    buf = s.buffers.get(name)
    if buf is None or buf.shape != shape:
        buf = s.buffers[name] = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    return buf


class Guard:
    """Adds each step's loss to the epoch's sum and keeps a non-finite one from reaching the weights.

    One process: `skip` (0-d float32 on the device) turns 1.0 once the running sum is not finite and
    stays so; the optimiser's kernel reads it and leaves weights and state as they were, so every step
    from the bad one on is dropped without the host waiting on the device. check() reads it and raises
    NonFiniteLoss naming the first bad step. Data-parallel ranks must agree before DDP averages the
    gradients and already talk once per step (stop() rides on it), so there the check runs every step.
    """

    def __init__(self, s: Setup, epoch: int, loss_sum: torch.Tensor):
        self.s, self.epoch, self.loss_sum = s, epoch, loss_sum
        self.every_step = s.ranks.world > 1
        self.skip = torch.zeros((), device=loss_sum.device)
        self.skipped = torch.zeros((), device=loss_sum.device)  # steps dropped since the first bad one
        self.seen: list[tuple[int, float]] = []  # (step, lr) of each step added since the last check

    def add(self, loss: torch.Tensor, n: int, lr: float, step: int) -> torch.Tensor | None:
        if self.every_step:
            if self.s.ranks.any(not torch.isfinite(loss)):
                raise self.error(loss.item(), step, lr)
            self.loss_sum.add_(loss.detach(), alpha=n)
            return None
        self.loss_sum.add_(loss.detach(), alpha=n)
        torch.ne(self.loss_sum * 0, 0, out=self.skip)  # x * 0 is 0 for a finite x, else nan
        self.skipped.add_(self.skip)
        self.seen.append((step, lr))
        return self.skip

    def check(self) -> None:
        if self.every_step or not self.skip.item():
            self.seen.clear()
            return
        step, lr = self.seen[len(self.seen) - int(self.skipped.item())]
        raise self.error(self.loss_sum.item(), step, lr)

    def error(self, loss: float, step: int, lr: float) -> NonFiniteLoss:
        return NonFiniteLoss(
            f"the loss became {loss} in epoch {self.epoch}, step {step} of {self.s.steps} (learning rate "
            f"{lr:.3g}): the learning rate is probably too high; try --lr {self.s.config.lr / 10:g}",
            self.epoch,
        )


def pause(s: Setup, loop: LoopState, epoch: int, step: int, perm, loss_sum, correct) -> None:
    """stop() turned true after `step` steps of `epoch`: hand the state to on_state and raise Interrupted."""
    loss_sum, correct = s.ranks.sum(loss_sum, correct)
    loop.step, loop.perm, loop.loss_sum, loop.correct = step, perm.cpu(), loss_sum.item(), correct.item()
    s.on_state(snapshot(s, loop))
    raise Interrupted(epoch, step, s.steps)


def validate(s: Setup, loop: LoopState, epoch: int) -> dict:
    """The val metrics of the epoch's weights, and the early-stop rule applied to them."""
    r = s.ranks.evaluate(s.model, *s.val)
    loop.note_val_loss(epoch, r["loss"], s.config.early_stop)
    return {"val_loss": r["loss"], "val_acc": r["acc"], "best_epoch": loop.best_epoch}


def _never() -> bool:
    return False


def _ignore(_) -> None:
    pass


def epoch_line(record: dict) -> str:
    """The tutorial's line, `Epoch 1 - loss: 0.3141 - acc: 0.9131`, then extra fields."""
    line = f"Epoch {record['epoch']} - loss: {record['loss']:.4f} - acc: {record['acc']:.4f}"
    if "val_loss" in record:
        line += f" - val_loss: {record['val_loss']:.4f} - val_acc: {record['val_acc']:.4f}"
    return f"{line} - time: {record['time']:.2f}s" if "time" in record else line
