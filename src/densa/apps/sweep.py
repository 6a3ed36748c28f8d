"""Hyper-parameter search with Optuna: `densa sweep` runs trials of densa's training loop in one study.

A study lives in a database: an SQLite file in the sweep folder by default, or any SQLAlchemy URL
(`--storage postgresql://...`) that many `densa sweep` workers on many machines share. Each trial trains
on the training set minus a seeded validation split and reports its val accuracy after every epoch, so
a pruner stops weak trials early; the test set is never looked at. `densa sweep --show` prints the
leaderboard and the `densa train` command that retrains the best trial on the whole training set.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from urllib.parse import quote

from ..core.errors import DensaError
from ..core.extras import require

ATTR = "densa_sweep"  # study user attr holding the sweep's definition; workers with another are refused
BEAT = "densa_heartbeat"  # study user attr: seconds between heartbeats, fixed when the study is created
INSTALL = "pip install 'densa[sweep]'"

# The search space: what "training" exposes. Precision stays fixed (--precision); the rest of the recipe
# (optimiser, warm-up, label smoothing, shifts) comes from the base preset, "mlp" or "cnn".
COMMON = {
    "activation": ["categorical", ["relu", "gelu", "silu"]],
    "dropout": ["float", 0.0, 0.5],
    "weight_decay": ["float", 1e-4, 0.3, "log"],
    "lr": ["float", 3e-4, 1e-2, "log"],
    "schedule": ["categorical", ["constant", "onecycle", "cosine"]],
    "batch_size": ["categorical", [64, 128, 256, 512]],
}
SPACES = {
    "mlp": {"depth": ["int", 1, 3], "width": ["categorical", [128, 256, 512, 1024]], **COMMON},
    "cnn": {  # conv blocks of width, 2 x width (, 4 x width) channels, then a dense head
        "blocks": ["int", 2, 3],
        "width": ["categorical", [8, 16, 32]],
        "head": ["categorical", [64, 128, 256]],
        **COMMON,
    },
}
FIXED = ("dataset", "model", "epochs", "val_split", "seed", "precision")  # one value for the whole study


def definition(dataset, model, epochs, val_split, seed, precision) -> dict:
    """What a study means: the fixed settings and the search space, as JSON values (stored in the study)."""
    from ..core.config import resolve

    if model not in SPACES:
        raise DensaError(f"unknown model {model!r}; choose one of: {', '.join(SPACES)}")
    epochs = epochs or resolve(model, dataset=dataset)[1].epochs
    fixed = dict(zip(FIXED, (dataset, model, epochs, val_split, seed, precision)))
    return json.loads(json.dumps({**fixed, "preset": model, "space": SPACES[model]}))


def suggest(trial, space: dict) -> dict:
    params = {}
    for name, (kind, *spec) in space.items():
        if kind == "categorical":
            params[name] = trial.suggest_categorical(name, spec[0])
        elif kind == "int":
            params[name] = trial.suggest_int(name, spec[0], spec[1])
        else:
            params[name] = trial.suggest_float(name, spec[0], spec[1], log=spec[2:] == ["log"])
    return params


def fixed_flags(d: dict) -> list[str]:
    """The `densa train` flags every trial of study `d` shares (no val split: that trains on all of train)."""
    flags = ["--preset", d["preset"], "--dataset", d["dataset"], "--epochs", str(d["epochs"])]
    return flags + ["--seed", str(d["seed"]), "--precision", d["precision"]]


def searched_flags(model: str, params: dict) -> list[str]:
    """The `densa train` flags of one trial's suggested values."""
    if model == "mlp":
        flags = ["--hidden", ",".join([str(params["width"])] * params["depth"])]
    else:
        channels = ",".join(str(params["width"] * 2**i) for i in range(params["blocks"]))
        flags = ["--channels", channels, "--hidden", str(params["head"])]
    flags += ["--activation", params["activation"], "--dropout", f"{params['dropout']:.3g}"]
    flags += ["--weight-decay", f"{params['weight_decay']:.3g}", "--lr", f"{params['lr']:.3g}"]
    return flags + ["--schedule", params["schedule"], "--batch-size", str(params["batch_size"])]


def trial_settings(d: dict, params: dict) -> dict:
    """One trial's `densa train` settings as values: the study's fixed ones, then the searched ones
    rounded as searched_flags prints them, so that the printed command trains this very trial."""
    settings = {k: d[k] for k in ("dataset", "epochs", "seed", "precision")}
    if d["model"] == "mlp":
        settings["hidden"] = (params["width"],) * params["depth"]
    else:
        settings["channels"] = tuple(params["width"] * 2**i for i in range(params["blocks"]))
        settings["hidden"] = (params["head"],)
    three = {k: float(f"{params[k]:.3g}") for k in ("dropout", "weight_decay", "lr")}
    return {**settings, "activation": params["activation"], **three, "schedule": params["schedule"],
            "batch_size": params["batch_size"]}  # fmt: skip


def configs(d: dict, params: dict, val_split: float = 0.0):
    """(ModelConfig, TrainConfig) of one trial of study `d`, as `densa train` builds them from its flags."""
    from ..core.config import resolve

    return resolve(d["preset"], **trial_settings(d, params), val_split=val_split)


# --------------------------------------------------------------------------- storage and study


def shown(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL is shown as given (ArgumentError and friends)
        return url


def open_storage(url: str, heartbeat: int | None = None, create: bool = True):
    """Optuna's RDBStorage for `url`; with `heartbeat` (seconds), trials of workers that die end as FAIL.

    With create=False (`--show`) nothing is written: the database must already hold Optuna's tables.
    """
    given = url
    optuna = require("optuna", "sweep", "densa sweep")
    import sqlalchemy.exc

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # densa prints its own line per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    engine = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}  # seconds to wait for another worker's write lock
    elif url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 10}  # seconds, for a server that does not answer
    if url.startswith(("postgresql://", "postgresql+psycopg://")):
        require("psycopg", "sweep", f"the study storage {shown(given)}")
    if url.startswith("postgresql://"):  # the driver densa[sweep] installs, whatever SQLAlchemy's default
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    try:
        if not create:
            check_tables(url, given, engine)
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=heartbeat,
            grace_period=2 * heartbeat if heartbeat else None,
            skip_table_creation=not create,
        )
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.DBAPIError, ImportError, RuntimeError) as e:
        why = " ".join(str(getattr(e, "orig", None) or e).split())[:200]
        raise DensaError(
            f"cannot use the study storage {shown(given)}: {why}; check the URL (e.g. "
            f"postgresql://USER:PASSWORD@HOST:5432/DB or sqlite:///PATH), that the server is running, and "
            f"that its driver is installed ({INSTALL})"
        ) from None
    return storage


def check_tables(url: str, given: str, engine: dict) -> None:
    """Refuse a database that holds no Optuna study (an SQLite file must exist), writing nothing to it."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if path in ("", ":memory:") or not Path(path).is_file():
            raise DensaError(
                f"no study database at {path or shown(given)}; start a sweep with `densa sweep --trials N`"
            )
        # read-only: SQLite must not create or touch the file (mode=ro), whatever it holds
        parsed = parsed.set(database=f"file:{quote(path)}", query={"mode": "ro", "uri": "true"})
    e = sqlalchemy.create_engine(parsed, **engine)
    try:
        tables = set(sqlalchemy.inspect(e).get_table_names())
    finally:
        e.dispose()
    if not {"studies", "trials", "version_info"} <= tables:
        raise DensaError(
            f"{shown(given)} holds no Optuna study (no study tables); pass the --storage or --out of a "
            f"sweep, or start one with `densa sweep --trials N`"
        )


def open_study(storage, url: str, name: str, given: dict, pruner=None, create: bool = True):
    """Load study `name`, or create it from `given` (SweepConfig fields); return (study, definition).

    An existing study keeps its definition and its heartbeat: settings given explicitly must agree with
    them, and a study made with another search space is refused before anything is written to it.
    """
    import optuna

    where = f"in {shown(url)}"
    try:
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    except KeyError:
        if not create:
            names = optuna.get_all_study_names(storage)
            have = f"it holds: {', '.join(names)}" if names else "it holds no study"
            raise DensaError(f"no study {name!r} {where} ({have}); pass --study NAME") from None
        study = None
    stored = study.user_attrs.get(ATTR) if study is not None else None
    if study is not None and stored is None and (study.trials or not create):
        raise DensaError(f"study {name!r} {where} was not made by densa sweep; use another --study")
    if study is not None and study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise DensaError(
            f"study {name!r} {where} minimises its objective; densa sweep maximises val accuracy"
        )
    if stored is None:
        return _create_study(optuna, study, storage, name, given, pruner, where)
    if create:  # --show reads any densa study as it is
        _check_joining(study, stored, given, name, where)
    return study, stored


def _check_joining(study, stored: dict, given: dict, name: str, where: str) -> None:
    """A worker joining an existing study: the settings it was given explicitly must be the study's."""
    mine = definition(**{k: given.get(k, stored.get(k)) for k in FIXED})
    diff = [
        f"{k}: {stored.get(k)!r} in the study, {v!r} here" if k in FIXED else f"its {k} is another densa's"
        for k, v in mine.items()
        if v != stored.get(k)
    ]
    beat = heartbeat_of(study)
    if given.get("heartbeat", beat) != beat:
        diff.append(f"heartbeat: {beat!r} in the study, {given['heartbeat']!r} here")
    if diff:
        raise DensaError(
            f"study {name!r} {where} was made with other settings ({'; '.join(diff)}); drop the "
            f"differing flags to join it as it is, or start another study with --study NEW"
        )


def _create_study(optuna, study, storage, name: str, given: dict, pruner, where: str):
    """A new study (or an empty one without densa's definition) stamped with the definition and heartbeat."""
    from ..core.config import SweepConfig

    defaults = SweepConfig()
    d = definition(**{k: given.get(k, getattr(defaults, k)) for k in FIXED})
    if study is None:
        study = optuna.create_study(
            study_name=name, storage=storage, direction="maximize", pruner=pruner, load_if_exists=True
        )
    beat = given.get("heartbeat", defaults.heartbeat)
    study.set_user_attr(BEAT, beat)
    study.set_user_attr(ATTR, d)
    attrs = study.user_attrs  # read back from the database
    if (attrs.get(ATTR), attrs.get(BEAT)) != (d, beat):  # another worker created it at the same moment
        raise DensaError(f"study {name!r} {where} was just created by another worker with other settings")
    return study, d


def heartbeat_of(study) -> int:
    """The study's heartbeat in seconds (studies made before it was stored: SweepConfig's default)."""
    from ..core.config import SweepConfig

    return study.user_attrs.get(BEAT, SweepConfig.heartbeat)


def make_pruner(name: str, startup: int):
    import optuna

    if name == "median":  # prune a trial whose best val acc is below the median of finished trials
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0)
    if name == "halving":  # successive halving: keep the top third at epochs 1, 3, 9, ...
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


# --------------------------------------------------------------------------- the worker


def run_sweep(
    storage_url: str,
    name: str,
    given: dict,
    trials: int,
    timeout: float | None = None,
    pruner: str = "median",
    startup: int = 5,
    data_dir=None,
    log=print,
) -> dict:
    """Run `trials` trials (or until `timeout` seconds) in study `name`; returns a few counts.

    `given` holds the SweepConfig fields passed explicitly (the study's settings and its heartbeat).
    """
    import optuna

    from ..core.data import get_spec

    if "dataset" in given:
        get_spec(given["dataset"])  # an unknown name is refused before a study is made for it
    study, d = open_study(open_storage(storage_url), storage_url, name, given)
    beat = heartbeat_of(study)  # every worker beats and judges others' trials by the study's heartbeat
    storage = open_storage(storage_url, beat)
    study = optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(pruner, startup))
    before = len(study.trials)
    log(f"study {name} in {shown(storage_url)}: {before} trials so far; this worker runs {trials} more")
    log(f"searching {d['model']} on {d['dataset']}: {', '.join(d['space'])} ({d['epochs']} epochs per trial)")
    data = trial_data(d, data_dir, log)
    counts = {"complete": 0, "pruned": 0, "fail": 0}  # TrialState names
    interrupted = threading.Event()
    attempt = partial(run_trial, study=study, d=d, data=data, stop=interrupted.is_set)

    # study.optimize's loop, written out: a trial that another worker marked FAIL under this one (this
    # worker was silent for 2 x the heartbeat: suspended, or its database unreachable) is one line here
    # Ctrl-C stops the trial between two steps (never inside a database call): it is told FAIL, then
    # the worker ends as `densa train` does
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set()) if main_thread else None
    try:
        _work(study, storage, beat, attempt, trials, timeout, interrupted, counts, log)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    log(f"this worker: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed")
    return counts


def trial_data(d: dict, data_dir, log) -> tuple:
    """(train images, train labels, (val images, val labels), classes) of the study's seeded val split."""
    from ..core.data import load_dataset
    from ..training.loop import holdout

    ds = load_dataset(d["dataset"], data_dir)
    tr, va = holdout(len(ds.train_images), d["val_split"], d["seed"])
    log(f"val split: {len(va):,} of {len(tr) + len(va):,} training images held out (seed {d['seed']})")
    val = (ds.train_images[va], ds.train_labels[va])
    return ds.train_images[tr], ds.train_labels[tr], val, ds.classes


def run_trial(trial, study, d: dict, data: tuple, stop):
    """Train one trial: (state, value, what to log)."""
    import optuna
    import torch
    from optuna.trial import TrialState

    from ..core.device import resolve_device
    from ..core.models import build_model
    from ..training.loop import Interrupted, NonFiniteLoss, train

    x, y, val, classes = data
    params = suggest(trial, d["space"])
    flags = searched_flags(d["model"], params)
    model_config, config = configs(d, params, d["val_split"])
    trial.set_user_attr("args", flags)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr("threads", torch.get_num_threads())
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)  # as `densa train` does, so its val split reproduces the trial
    model = build_model(replace(model_config, num_classes=len(classes))).to(device)
    t0 = time.perf_counter()
    last = {}

    def on_epoch(record):
        last.update(record)
        trial.report(record["val_acc"], record["epoch"])
        trial.set_user_attr("time_s", round(time.perf_counter() - t0, 2))
        if trial.should_prune():
            raise optuna.TrialPruned()

    try:
        history = train(model, x, y, config, val=val, on_epoch=on_epoch, stop=stop)
    except Interrupted:
        return TrialState.FAIL, None, "interrupted (Ctrl-C)"
    except optuna.TrialPruned:
        return TrialState.PRUNED, None, f"pruned after epoch {last['epoch']} (val_acc {last['val_acc']:.4f})"
    except NonFiniteLoss as e:
        trial.set_user_attr("error", str(e))
        return TrialState.FAIL, None, f"failed: {e}"
    acc = history[-1]["val_acc"]
    done = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
    best = max([(t.value, -t.number) for t in done] + [(acc, -trial.number)])  # ties: the earliest
    said = (
        f"val_acc {acc:.4f} ({time.perf_counter() - t0:.1f}s) · best: trial {-best[1]} {best[0]:.4f} · "
        f"{shlex.join(flags)}"
    )
    return TrialState.COMPLETE, acc, said


def _work(study, storage, beat, attempt, trials, timeout, interrupted, counts, log) -> None:
    """Up to `trials` trials, each asked, trained under a heartbeat and told."""
    import optuna
    from optuna.trial import TrialState

    start = time.monotonic()
    for _ in range(trials):
        if interrupted.is_set():
            raise KeyboardInterrupt
        if timeout is not None and time.monotonic() - start > timeout:
            break
        optuna.storages.fail_stale_trials(study)  # RUNNING trials whose worker went silent end as FAIL
        trial = ask(study, storage.url)
        try:
            with beating(storage, trial, beat):
                wanted, value, said = attempt(trial)
            state = study.tell(trial, value, state=wanted, skip_if_finished=True).state
        except optuna.exceptions.UpdateFinishedTrialError:  # a report or a tell on a trial failed under us
            wanted, state = None, TrialState.FAIL
        except BaseException:  # Ctrl-C, or a bug: the trial ends as FAIL, the error goes on to main()
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        if state != wanted:
            said = (
                f"marked FAIL by another worker, which heard no heartbeat from this one for {2 * beat}s "
                "(twice the study's --heartbeat); going on with the next trial"
            )
        counts[state.name.lower()] += 1
        log(f"trial {trial.number}: {said}")
    if interrupted.is_set():
        raise KeyboardInterrupt


def ask(study, url: str):
    """study.ask(); on a SQLite file, one worker of this machine at a time: SQLite has no row locks, so two
    workers could otherwise both take the same enqueued trial (each would run trial 0)."""
    with warnings.catch_warnings():  # "Heartbeat ... supposed to be used with Study.optimize": it is, here
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        try:
            import fcntl
        except ImportError:  # Windows
            fcntl = None
        if fcntl is None or not url.startswith("sqlite:///"):
            return study.ask()
        with open(url[len("sqlite:///") :], "rb") as fh:  # flock: apart from SQLite's own fcntl locks
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file is closed
            return study.ask()


@contextmanager
def beating(storage, trial, seconds: int):
    """Record `trial`'s heartbeat every `seconds` while the block runs, as study.optimize does."""
    stop = threading.Event()

    def beat():
        while True:
            storage.record_heartbeat(trial._trial_id)  # Trial has no public id; optimize uses this one
            if stop.wait(seconds):
                return

    thread = threading.Thread(target=beat, name="densa-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --------------------------------------------------------------------------- the leaderboard


def show(storage_url: str, name: str, top: int = 10, data_dir=None, log=print) -> dict:
    """Print the leaderboard and the command that retrains the best trial; returns the best trial's data.

    It only reads: a database that holds no study is refused untouched, and the trial of a worker that
    died stays RUNNING here until the next worker marks it FAIL (after twice the study's heartbeat).
    """
    from optuna.trial import TrialState

    storage = open_storage(storage_url, create=False)
    study, d = open_study(storage, storage_url, name, {}, create=False)
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state == s for t in trials) for s in TrialState}
    counts = ", ".join(f"{n} {s.name.lower()}" for s, n in states.items() if n)
    log(f"study {name} in {shown(storage_url)}: {len(trials)} trials ({counts or 'none yet'})")
    log(
        f"{d['model']} on {d['dataset']}, {d['epochs']} epochs per trial, objective: val_acc on "
        f"{d['val_split']:.0%} of the training set held out (seed {d['seed']})"
    )

    def score(t):
        if t.state == TrialState.COMPLETE:
            return t.value
        return max(t.intermediate_values.values()) if t.intermediate_values else float("-inf")

    ranked = sorted(
        (t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
        key=lambda t: (t.state == TrialState.COMPLETE, score(t)),
        reverse=True,
    )
    if ranked:
        log(f"{'rank':>4} {'trial':>5}  {'state':<8} {'val_acc':>7} {'epochs':>6} {'time':>7}  settings")
    for i, t in enumerate(ranked[:top], 1):
        flags = t.user_attrs.get("args", [])
        secs = t.user_attrs.get("time_s", 0.0)
        log(
            f"{i:>4} {t.number:>5}  {t.state.name:<8} {score(t):>7.4f} {len(t.intermediate_values):>6} "
            f"{secs:>6.1f}s  {shlex.join(flags)}"
        )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        log("no complete trial yet")
        return {"best": None}
    best = study.best_trial
    command = ["densa", "train", *fixed_flags(d), *best.user_attrs["args"]]
    command += ["--data-dir", str(data_dir)] if data_dir else []
    log(f"best: trial {best.number}, val_acc {best.value:.4f}")
    log("retrain it on the whole training set (it prints the test accuracy):")
    log(f"  {shlex.join(command)}")
    return {"best": best.number, "value": best.value, "command": command}


def default_storage(out: Path) -> str:
    return f"sqlite:///{Path(out).resolve() / 'study.db'}"
