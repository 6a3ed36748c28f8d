"""The `densa train` job: load data, build the model, train, evaluate on the test split, write a run folder.

A run folder holds model.safetensors (the weights to use: the best epoch by val loss with --val-split,
else the last), metrics.jsonl (one record per epoch and no wall-clock times, so the same seed and thread
count give the same bytes), summary.json (test metrics and timings) and checkpoint.pt (everything needed
to continue, rewritten after each epoch; `densa train --resume RUN`). Ctrl-C saves it between two steps.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..core.checkpoint import RUN_FILES
from ..core.config import ModelConfig, TrainConfig
from ..core.data import WriteError
from ..core.errors import DensaError
from .loop import Interrupted, NonFiniteLoss, epoch_line, holdout, train


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

    rank0 = ranks is None or ranks.rank == 0
    out = Path(out) if out is not None else default_out(config, model_config.model)
    if ranks is not None:
        out = ranks.broadcast(out)  # a default folder's name holds rank 0's clock
    own = rank0 and lock is None
    error = None
    if own:
        try:
            lock = RunLock(out).acquire()
        except DensaError as e:
            if ranks is None:
                raise
            error = str(e)
    if ranks is not None:
        ranks.check(error)  # every rank stops if rank 0 could not take the folder
    try:
        return _run(model_config, config, out, data_dir, log, progress, preset, state, ranks)
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


def _run(model_config, config, out, data_dir, log, progress, preset, state, ranks) -> dict:
    from ..core.checkpoint import STATE_FILE, CheckpointError, build_meta, dataset_meta, save, save_state
    from ..core.data import load_dataset, write_atomic
    from ..core.device import resolve_device, resolve_precision
    from ..core.evaluate import evaluate, format_prediction, predict_proba
    from ..core.models import build_model, count_parameters
    from .runfolder import check_new_run, check_space, remove_temp_files

    rank0 = ranks is None or ranks.rank == 0
    if not rank0:
        log, progress = (lambda *a, **k: None), False
    config.check()
    if config.early_stop and not config.val_split:
        raise DensaError("early stopping watches the val loss; add --val-split F (e.g. 0.1)")
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    if ranks is not None:
        from .distributed import error_of

        if state is None:
            ranks.check(error_of(check_new_run, out, log) if rank0 else None)
    elif state is None:
        check_new_run(out, log)
    else:
        remove_temp_files(out)
    t_start = time.perf_counter()
    ds = load_dataset(config.dataset, data_dir)
    t_loaded = time.perf_counter()
    log(
        f"data: {ds.name}, {len(ds.train_images):,} train / {len(ds.test_images):,} test images "
        f"({t_loaded - t_start:.2f}s, from {Path(ds.sources['train_images']).parent})"
    )
    model_config = replace(model_config, num_classes=len(ds.classes))
    torch.manual_seed(config.seed)
    model = build_model(model_config).to(device)
    log(str(model))
    threads = torch.get_num_threads()
    log(f"parameters: {count_parameters(model):,} · threads: {threads} · seed: {config.seed}")
    if preset != "seed" or device != "cpu" or precision != "fp32":
        log(f"preset: {preset} · device: {device} · precision: {precision}")
    if ranks is not None:
        log(
            f"data-parallel: {ranks.world} processes ({ranks.backend}), {threads} threads each; each takes "
            f"1/{ranks.world} of every batch of {config.batch_size}"
        )

    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(
                f"{out}/{STATE_FILE}: its weights do not match the architecture it describes "
                f"({' '.join(str(e).split())[:100]}...); it was modified or belongs to another run"
            ) from None
        if state.get("threads") != threads:
            log(f"warning: the run used {state.get('threads')} threads, now {threads}: not bit-identical")
        log(
            f"resuming {out} after epoch {state['epoch']}"
            + (f", step {state['step']}" if state["step"] else "")
        )

    x, y, val = ds.train_images, ds.train_labels, None
    if config.val_split:
        tr, va = holdout(len(x), config.val_split, config.seed)
        x, y, val = x[tr], y[tr], (x[va], y[va])
        log(f"val split: {len(va):,} of {len(tr) + len(va):,} training images held out (seed {config.seed})")
    if rank0:
        # the model file, and the checkpoint with the optimiser's state and one epoch's order, each
        # twice while a new copy replaces the old one; checked now rather than after an epoch
        check_space(out, 2 * (4 * count_parameters(model) * 4 + 8 * len(x)) + 1_000_000)
        if state is not None and (out / "summary.json").exists():  # a finished run asked for more epochs
            (out / "summary.json").unlink()
            log(f"training {out} further: epochs {state['epoch'] + 1} to {config.epochs}")
    ds_meta = dataset_meta(ds.spec)
    train_meta = {
        **config.to_dict(),
        "preset": preset,
        "threads": threads,
        "device": device,
        "precision_used": precision,
    }
    if ranks is not None:
        train_meta["world_size"] = ranks.world

    def on_epoch(record):
        log(epoch_line(record))
        history = [*(state["history"] if state else []), *records, record]
        records.append(record)
        lines = [json.dumps({k: v for k, v in r.items() if k != "time"}) + "\n" for r in history]
        write_atomic(out / "metrics.jsonl", "".join(lines))
        if val is None or record["best_epoch"] == record["epoch"]:
            epoch_metrics = {k: v for k, v in record.items() if k != "time"}
            save(
                model, out / "model.safetensors", build_meta(model_config, ds_meta, train_meta, epoch_metrics)
            )

    def on_state(s):
        extra = {"model_config": model_config.to_dict(), "train_config": config.to_dict(), "preset": preset}
        save_state(out / STATE_FILE, {**s, **extra, "threads": threads, "dataset": ds.name})

    records: list[dict] = []
    interrupted = threading.Event()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set()) if main_thread else None
    try:
        history = train(
            model, x, y, config, val=val, state=state, on_epoch=on_epoch if rank0 else None,
            on_state=on_state if rank0 else None, stop=interrupted.is_set, progress=progress, ranks=ranks,
        )  # fmt: skip
    except Interrupted as e:
        e.out = out
        raise
    except NonFiniteLoss as e:
        if e.epoch > 1 or state is not None:
            raise DensaError(f"{e} ({out}/ keeps the checkpoint of epoch {e.epoch - 1})") from None
        raise DensaError(f"{e} (no epoch finished, nothing was saved)") from None
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    t_trained = time.perf_counter()
    last = history[-1]
    best_epoch = last.get("best_epoch", last["epoch"])
    if best_epoch != last["epoch"]:
        from safetensors.torch import load_file

        if rank0:
            model.load_state_dict(load_file(str(out / "model.safetensors"), device=str(device)))
        if ranks is not None:
            ranks.broadcast_weights(model)
        log(f"best val loss in epoch {best_epoch}: model.safetensors holds that epoch's weights")
    if ranks is None:
        result = evaluate(model, ds.test_images, ds.test_labels)
    else:  # each rank its shard of the test set, the counts summed: every image once
        result = ranks.evaluate(model, ds.test_images, ds.test_labels)
        if not rank0:
            return {"out": out, "model": model, "history": history, "summary": None}
    t_evaluated = time.perf_counter()
    log(f"test_loss: {result['loss']:.4f}")
    log(f"test_acc: {result['acc']:.4f}")
    probs = predict_proba(model, ds.test_images[:1])[0]
    log(format_prediction(probs, 0, int(ds.test_labels[0]), ds.classes))

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
    if val is not None:
        metrics.update(
            val_loss=history[best_epoch - 1]["val_loss"], val_acc=history[best_epoch - 1]["val_acc"]
        )
    save(model, out / "model.safetensors", build_meta(model_config, ds_meta, train_meta, metrics))
    summary = {
        **metrics,
        "dataset": ds.name,
        "preset": preset,
        "parameters": count_parameters(model),
        "device": device,
        "precision": precision,
        "threads": threads,
        "stopped_early": len(history) < config.epochs,
        "epoch_times_s": [round(r["time"], 3) for r in history],
        "load_time_s": round(t_loaded - t_start, 3),
        "train_time_s": round(t_trained - t_loaded, 3),
        "eval_time_s": round(t_evaluated - t_trained, 3),
        "total_time_s": round(time.perf_counter() - t_start, 3),
    }
    if state is not None:
        summary["resumed"] = True
    if ranks is not None:
        summary.update(world_size=ranks.world, backend=ranks.backend)
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    log(f"saved run to {out}/ ({', '.join(RUN_FILES)})")
    return {"out": out, "model": model, "history": history, "summary": summary}
