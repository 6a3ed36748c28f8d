"""The `densa train` job: load data, build the model, train, evaluate on the test split, write a run folder.

A run folder holds model.safetensors (the weights to use: the best epoch by val loss with --val-split,
else the last), metrics.jsonl (one record per epoch and no wall-clock times, so the same seed and thread
count give the same bytes), summary.json (test metrics and timings) and checkpoint.pt (everything needed
to continue, rewritten after each epoch; `densa train --resume RUN`). Ctrl-C saves it between two steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..core._io import WriteError, write_atomic
from ..core.checkpoint import RUN_FILES
from ..core.config import ModelConfig, TrainConfig
from ..core.errors import DensaError
from .distributed import LocalGroup, error_of
from .loop import Interrupted, NonFiniteLoss, check_early_stop, epoch_line, holdout, train


def default_out(config: TrainConfig, model: str = "mlp") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / f"{config.dataset}-{model}-{stamp}"
    k = 2
    while out.exists():
        out = Path("runs") / f"{config.dataset}-{model}-{stamp}-{k}"
        k += 1
    return out


def open_resume(run: Path) -> None:
    """Before loading a run's checkpoint: a folder without one is a run that never finished epoch 1."""
    from ..core.checkpoint import STATE_FILE

    if run.is_dir() and not (run / STATE_FILE).exists():
        raise DensaError(
            f"{run} has no {STATE_FILE} to resume from: it never finished its first epoch; start it again "
            f"with `densa train --out {run}` and the flags it was started with"
        )


def _extendable(run: Path, state: dict, config: TrainConfig, epochs: int) -> None:
    """Can the saved run (`config`, `state`) go on to `epochs` epochs as if it had been asked for them?"""
    done = state["epoch"]
    if epochs <= done:
        raise DensaError(f"{run} has trained {done} epochs already; pass --epochs N with N > {done}")
    if state.get("stopped"):
        raise DensaError(
            f"{run} stopped early (its val loss did not improve for {config.early_stop} epochs), so more "
            f"epochs would not follow its own rule; start a new run with --out"
        )
    if config.schedule != "constant":
        raise DensaError(
            f"{run} used the {config.schedule} learning-rate schedule, planned for {config.epochs} epochs "
            f"(each step's rate depends on the total): it cannot be stretched to {epochs}; start a new run "
            f"with --out and --epochs {epochs}"
        )
    if state["step"]:  # stopped mid-epoch: that epoch's permutation gives the steps per epoch
        per_epoch = math.ceil(len(state["perm"]) / config.batch_size)
    else:
        per_epoch = state["global_step"] // done
    if config.warmup and int(config.warmup * per_epoch * epochs) > state["global_step"]:
        raise DensaError(
            f"{run}'s warm-up is a share ({config.warmup}) of all steps: with --epochs {epochs} it would "
            f"not be over yet; start a new run with --out"
        )


def resume_configs(run: Path, state: dict, given: dict) -> tuple[ModelConfig, TrainConfig, str]:
    """The configs saved in `state`; `given` (settings passed again on the command line) must agree."""
    from ..core.checkpoint import CheckpointError, read_meta

    model_config = ModelConfig.from_dict(state["model_config"])
    config = TrainConfig.from_dict(state["train_config"])
    preset = state.get("preset", "seed")
    more = given.pop("epochs", config.epochs)
    if (run / "summary.json").exists() and more == config.epochs:
        raise DensaError(
            f"{run} is a finished run ({state['epoch']} epochs); to train it further pass --epochs N "
            f"(more than {state['epoch']}), or start a new run with --out"
        )
    if more != config.epochs:
        _extendable(run, state, config, more)
        config = replace(config, epochs=more)
    if (run / "model.safetensors").exists():
        saved = read_meta(run)["model"]
        if ModelConfig.from_dict(saved) != model_config:
            raise CheckpointError(
                f"{run}/checkpoint.pt is from a different architecture ({model_config.model} "
                f"{list(model_config.hidden)}) than {run}/model.safetensors ({saved['model']} "
                f"{saved['hidden']}); it does not belong to this run"
            )
    if "device" in given:  # the one setting that may change: where the rest of the run computes
        config = replace(config, device=given.pop("device"))
    for key, value in given.items():
        if key == "preset":
            have = preset
        else:
            have = getattr(model_config if key in ModelConfig.__dataclass_fields__ else config, key)
        if value != have:
            what = (
                "a different architecture"
                if key in ModelConfig.__dataclass_fields__
                else "a different recipe"
            )
            raise CheckpointError(
                f"{run} was trained with {key}={have!r} but {key}={value!r} was given: that is {what}; "
                f"--resume continues the saved run as it was (drop the flag, or start a new run with --out)"
            )
    return model_config, config, preset


def run_training(
    model_config: ModelConfig,
    config: TrainConfig,
    out: Path | None = None,
    data_dir=None,
    log=print,
    progress: bool = False,
    *,
    preset: str = "seed",
    state: dict | None = None,
    ranks=None,
    lock=None,
) -> dict:
    """Train and write the run folder `out`; with `state` (from checkpoint.load_state), continue it.

    With `ranks` (distributed.Group) this is one process of a data-parallel run: all ranks train
    and evaluate, rank 0 alone logs and writes the folder. The folder is held (runfolder.RunLock) from
    before anything is loaded until the run ends; pass `lock` when the caller took it already.
    """
    from .runfolder import RunLock

    ranks = ranks or LocalGroup()
    out = Path(out) if out is not None else default_out(config, model_config.model)
    out = ranks.broadcast(out)  # a default folder's name holds rank 0's clock
    own = ranks.rank == 0 and lock is None
    if own:
        lock = RunLock(out)
    ranks.check(error_of(lock.acquire) if own else None)  # every rank stops if rank 0 could not take it
    try:
        run = prepare(model_config, config, out, data_dir, log, preset, state, ranks)
        history = train_run(run, progress)
        return finish(run, history)
    except WriteError as e:
        if e.path.parent != out:
            raise
        raise DensaError(f"{e}; {kept(out)}") from None
    finally:
        if own:
            lock.release()


def kept(out: Path) -> str:
    """What a run folder still holds after a failed write, and the command that goes on from there."""
    from ..core.checkpoint import load_state

    try:
        epoch = load_state(out)["epoch"]
    except DensaError:
        return f"no epoch was saved: run the same command again once it can write to {out}"
    return f"{out}/ keeps the checkpoint of epoch {epoch}: `densa train --resume {out}` goes on from there"


@dataclass
class Run:
    """A prepared run: its folder, data, model and metadata; rank 0 writes its files after each epoch."""

    out: Path
    model_config: ModelConfig
    config: TrainConfig
    preset: str
    state: dict | None  # the saved state it continues from
    ranks: object  # distributed.Group, or LocalGroup
    log: Callable[[str], None]
    ds: object  # core.data.Dataset
    model: torch.nn.Module
    x: torch.Tensor  # the training images and labels (the val split held out)
    y: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor] | None
    device: str
    precision: str
    threads: int
    times: dict[str, float]  # perf_counter at "start", "loaded", "trained", "evaluated"
    history: list[dict] = field(default_factory=list)  # the records of every epoch, saved ones included

    @property
    def rank0(self) -> bool:
        return self.ranks.rank == 0

    def train_meta(self) -> dict:
        meta = {
            **self.config.to_dict(),
            "preset": self.preset,
            "threads": self.threads,
            "device": self.device,
            "precision_used": self.precision,
        }
        return {**meta, "world_size": self.ranks.world} if self.ranks.world > 1 else meta

    def save_model(self, metrics: dict, detector=None) -> None:
        from ..core.checkpoint import build_meta, dataset_meta, save

        meta = build_meta(self.model_config, dataset_meta(self.ds.spec), self.train_meta(), metrics)
        save(self.model, self.out / "model.safetensors", meta, detector=detector)

    def fit_detector(self):
        """The detector of images unlike the training digits (core.detector): statistics from training
        images, threshold from the val split when there is one. Fitted after training, on the final
        weights; it changes neither them nor anything printed."""
        from ..core.detector import fit_detector

        t0 = time.perf_counter()
        calibration = None if self.val is None else self.val[0]
        detector = fit_detector(self.model, self.x, self.y, calibration, seed=self.config.seed)
        self.times["detector"] = time.perf_counter() - t0
        return detector

    def write_epoch(self, record: dict) -> None:
        """metrics.jsonl with every epoch so far; model.safetensors when this epoch is the best (or last)."""
        self.log(epoch_line(record))
        self.history.append(record)
        lines = [json.dumps({k: v for k, v in r.items() if k != "time"}) + "\n" for r in self.history]
        write_atomic(self.out / "metrics.jsonl", "".join(lines))
        if self.val is None or record["best_epoch"] == record["epoch"]:
            self.save_model({k: v for k, v in record.items() if k != "time"})

    def write_state(self, state: dict) -> None:
        """checkpoint.pt: the loop's state with what resuming needs to rebuild the run."""
        from ..core.checkpoint import STATE_FILE, save_state

        extra = {
            "model_config": self.model_config.to_dict(),
            "train_config": self.config.to_dict(),
            "preset": self.preset,
        }
        save_state(
            self.out / STATE_FILE, {**state, **extra, "threads": self.threads, "dataset": self.ds.name}
        )


def prepare(model_config, config, out, data_dir, log, preset, state, ranks) -> Run:
    """Check the folder, load the data, build the model (with the saved weights when resuming)."""
    from ..core.data import load_dataset
    from ..core.device import resolve_device, resolve_precision
    from ..core.models import build_model

    if ranks.rank:
        log = _quiet
    check_early_stop(config, bool(config.val_split), "--val-split F (e.g. 0.1)")  # before loading data
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    _check_folder(out, state, ranks, log)
    times = {"start": time.perf_counter()}
    ds = load_dataset(config.dataset, data_dir)
    times["loaded"] = time.perf_counter()
    log(
        f"data: {ds.name}, {len(ds.train_images):,} train / {len(ds.test_images):,} test images "
        f"({times['loaded'] - times['start']:.2f}s, from {Path(ds.sources['train_images']).parent})"
    )
    model_config = replace(model_config, num_classes=len(ds.classes))
    torch.manual_seed(config.seed)
    model = build_model(model_config).to(device)
    x, y, val = ds.train_images, ds.train_labels, None
    run = Run(
        out, model_config, config, preset, state, ranks, log, ds, model, x, y, val, device, precision,
        torch.get_num_threads(), times, history=list(state["history"]) if state else [],
    )  # fmt: skip
    _describe(run)
    if state is not None:
        _load_weights(run)
    if config.val_split:
        tr, va = holdout(len(x), config.val_split, config.seed)
        run.x, run.y, run.val = x[tr], y[tr], (x[va], y[va])
        log(f"val split: {len(va):,} of {len(tr) + len(va):,} training images held out (seed {config.seed})")
    if run.rank0:
        _make_room(run)
    return run


def _quiet(*args, **kwargs) -> None:
    pass


def _check_folder(out: Path, state: dict | None, ranks, log) -> None:
    """Rank 0 checks the folder (a new run may start there, or the saved one goes on); all ranks agree."""
    from .runfolder import check_new_run, remove_temp_files

    if state is not None:
        if ranks.rank == 0:
            remove_temp_files(out)
        return
    ranks.check(error_of(check_new_run, out, log) if ranks.rank == 0 else None)


def _describe(run: Run) -> None:
    from ..core.models import count_parameters

    run.log(str(run.model))
    threads, seed = run.threads, run.config.seed
    run.log(f"parameters: {count_parameters(run.model):,} · threads: {threads} · seed: {seed}")
    if run.preset != "seed" or run.device != "cpu" or run.precision != "fp32":
        run.log(f"preset: {run.preset} · device: {run.device} · precision: {run.precision}")
    if run.ranks.world > 1:
        world, bs = run.ranks.world, run.config.batch_size
        run.log(
            f"data-parallel: {world} processes ({run.ranks.backend}), {threads} threads each; each takes "
            f"1/{world} of every batch of {bs}"
        )


def _load_weights(run: Run) -> None:
    """The saved weights into the new model: they must fit the architecture the checkpoint describes."""
    from ..core.checkpoint import STATE_FILE, CheckpointError

    state = run.state
    try:
        run.model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{run.out}/{STATE_FILE}: its weights do not match the architecture it describes "
            f"({' '.join(str(e).split())[:100]}...); it was modified or belongs to another run"
        ) from None
    if state.get("threads") != run.threads:
        run.log(f"warning: the run used {state.get('threads')} threads, now {run.threads}: not bit-identical")
    step = f", step {state['step']}" if state["step"] else ""
    run.log(f"resuming {run.out} after epoch {state['epoch']}{step}")


def _make_room(run: Run) -> None:
    """Refuse a disk too small for the run; a finished run asked for more epochs is unfinished again."""
    from ..core.models import count_parameters
    from .runfolder import check_space

    # the model file, and the checkpoint with the optimiser's state and one epoch's order, each
    # twice while a new copy replaces the old one; checked now rather than after an epoch
    check_space(run.out, 2 * (4 * count_parameters(run.model) * 4 + 8 * len(run.x)) + 1_000_000)
    if run.state is not None and (run.out / "summary.json").exists():
        (run.out / "summary.json").unlink()
        run.log(f"training {run.out} further: epochs {run.state['epoch'] + 1} to {run.config.epochs}")


def train_run(run: Run, progress: bool) -> list[dict]:
    """The loop, with Ctrl-C saving between two steps; rank 0 writes the run's files after each epoch."""
    writes = {"on_epoch": run.write_epoch, "on_state": run.write_state} if run.rank0 else {}
    try:
        with ctrl_c() as interrupted:
            history = train(
                run.model, run.x, run.y, run.config, val=run.val, state=run.state, **writes,
                stop=interrupted.is_set, progress=progress and run.rank0, ranks=run.ranks,
            )  # fmt: skip
    except Interrupted as e:
        e.out = run.out
        raise
    except NonFiniteLoss as e:
        if e.epoch > 1 or run.state is not None:
            raise DensaError(f"{e} ({run.out}/ keeps the checkpoint of epoch {e.epoch - 1})") from None
        raise DensaError(f"{e} (no epoch finished, nothing was saved)") from None
    run.times["trained"] = time.perf_counter()
    return history


@contextlib.contextmanager
def ctrl_c():
    """An Event that Ctrl-C (SIGINT) sets instead of raising KeyboardInterrupt (in the main thread)."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # only it may handle signals
        yield interrupted
        return
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def finish(run: Run, history: list[dict]) -> dict:
    """The best epoch's weights, evaluated on the test split; rank 0 writes the model and summary.json."""
    from ..core.evaluate import format_prediction, predict_proba

    best_epoch = _best_weights(run, history)
    ds = run.ds
    result = run.ranks.evaluate(run.model, ds.test_images, ds.test_labels)  # sharded: every image once
    run.times["evaluated"] = time.perf_counter()
    if not run.rank0:
        return {"out": run.out, "model": run.model, "history": history, "summary": None}
    run.log(f"test_loss: {result['loss']:.4f}")
    run.log(f"test_acc: {result['acc']:.4f}")
    probs = predict_proba(run.model, ds.test_images[:1])[0]
    run.log(format_prediction(probs, 0, int(ds.test_labels[0]), ds.classes))
    metrics = {
        "test_loss": result["loss"],
        "test_acc": result["acc"],
        "test_correct": result["correct"],
        "test_n": result["n"],
        "train_loss": history[-1]["loss"],
        "train_acc": history[-1]["acc"],
        "epochs": len(history),
        "best_epoch": best_epoch,
    }
    if run.val is not None:
        best = history[best_epoch - 1]
        metrics.update(val_loss=best["val_loss"], val_acc=best["val_acc"])
    run.save_model(metrics, run.fit_detector())
    summary = _summary(run, metrics, history)
    write_atomic(run.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    run.log(f"saved run to {run.out}/ ({', '.join(RUN_FILES)})")
    return {"out": run.out, "model": run.model, "history": history, "summary": summary}


def _best_weights(run: Run, history: list[dict]) -> int:
    """The best epoch (by val loss, else the last), whose weights (in model.safetensors) go into the model."""
    last = history[-1]
    best_epoch = last.get("best_epoch", last["epoch"])
    if best_epoch != last["epoch"]:
        from safetensors.torch import load_file

        if run.rank0:
            run.model.load_state_dict(load_file(str(run.out / "model.safetensors"), device=str(run.device)))
        run.ranks.broadcast_weights(run.model)
        run.log(f"best val loss in epoch {best_epoch}: model.safetensors holds that epoch's weights")
    return best_epoch


def _summary(run: Run, metrics: dict, history: list[dict]) -> dict:
    from ..core.models import count_parameters

    t = run.times
    summary = {
        **metrics,
        "dataset": run.ds.name,
        "preset": run.preset,
        "parameters": count_parameters(run.model),
        "device": run.device,
        "precision": run.precision,
        "threads": run.threads,
        "stopped_early": len(history) < run.config.epochs,
        "epoch_times_s": [round(r["time"], 3) for r in history],
        "load_time_s": round(t["loaded"] - t["start"], 3),
        "train_time_s": round(t["trained"] - t["loaded"], 3),
        "eval_time_s": round(t["evaluated"] - t["trained"], 3),
        "detector_time_s": round(t["detector"], 3),
        "total_time_s": round(time.perf_counter() - t["start"], 3),
    }
    if run.state is not None:
        summary["resumed"] = True
    if run.ranks.world > 1:
        summary.update(world_size=run.ranks.world, backend=run.ranks.backend)
    return summary
