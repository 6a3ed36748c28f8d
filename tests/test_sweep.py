"""`densa sweep`: workers sharing one Optuna study in SQLite and in a real PostgreSQL server.

Two worker processes run at once on one study: the trial count adds up, no trial runs twice, clearly
bad trials (enqueued after good ones) are pruned, and the best trial is recorded. A killed worker's
trial ends as FAIL through the heartbeat, marked by the next worker. `--show` prints a command that
reproduces the best trial.
CI starts PostgreSQL (.ci/postgres.sh) and sets DENSA_TEST_POSTGRES_URL; DENSA_REQUIRE_POSTGRES=1 turns
a missing server into a failure instead of a skip.
"""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from densa.apps.sweep import open_storage, open_study
from densa.cli import main

HERE = Path(__file__).parent
SETTINGS = {"dataset": "synth", "model": "mlp", "epochs": 3, "val_split": 0.1, "seed": 0, "precision": "fp32"}
GOOD = [
    dict(depth=1, width=256, activation="relu", dropout=0.0, weight_decay=1e-4, lr=3e-3, schedule="constant"),
    dict(depth=2, width=128, activation="gelu", dropout=0.0, weight_decay=1e-4, lr=5e-3, schedule="constant"),
]
# two optimiser steps per epoch at a tiny, warming-up learning rate: ~0.3 val acc after epoch 1 (good: >0.8)
BAD = dict(
    depth=1, width=128, activation="relu", dropout=0.5, weight_decay=1e-4, lr=3e-4, schedule="onecycle"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    url = os.environ.get("DENSA_TEST_POSTGRES_URL")
    if not url:
        message = "no PostgreSQL server: set DENSA_TEST_POSTGRES_URL (.ci/postgres.sh start DIR prints one)"
        if os.environ.get("DENSA_REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message)
    return url


def worker(root: Path, url: str, study: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(HERE / "densa_synth.py"), str(root), "sweep", "--data-dir", str(root)]
    cmd += ["--storage", url, "--study", study, "--threads", "1", *extra]  # the study holds the rest
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def new_study(url: str, **settings):
    name = f"test-{uuid.uuid4().hex[:8]}"  # the PostgreSQL database is shared by all tests
    study, _ = open_study(open_storage(url, 60), url, name, {**SETTINGS, **settings})
    return name, study


def trial_numbers(output: str) -> list[int]:
    return [int(n) for n in re.findall(r"^trial (\d+): ", output, re.M)]


def test_two_workers_share_one_study(synth, tmp_path, storage_url, capsys):
    root = tmp_path / "data"
    name, study = new_study(storage_url)
    for params in [*GOOD, BAD, BAD]:  # taken in this order: each bad trial starts after a good one ended
        study.enqueue_trial({**params, "batch_size": 64 if params in GOOD else 512}, skip_if_exists=False)

    procs = [worker(root, storage_url, name, "--trials", "3", "--startup-trials", "1") for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "this worker: " in out

    numbers = [trial_numbers(out) for out, _ in outs]
    assert len(numbers[0]) == len(numbers[1]) == 3  # each worker ran its 3 trials...
    assert sorted(numbers[0] + numbers[1]) == list(range(6))  # ...and none was run by both
    trials = optuna.load_study(study_name=name, storage=storage_url).get_trials()
    assert [t.number for t in trials] == list(range(6))
    workers = [{t.user_attrs["worker"] for t in trials if t.number in ns} for ns in numbers]
    assert all(len(w) == 1 for w in workers) and workers[0] != workers[1]
    assert {t.user_attrs["worker"].split(":")[1] for t in trials} == {str(p.pid) for p in procs}

    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    bad = [t for t in trials if t.params["lr"] == BAD["lr"] and t.params["batch_size"] == 512]
    assert len(bad) >= 2 and all(t.state == TrialState.PRUNED for t in bad)
    assert all(len(t.intermediate_values) == 1 for t in bad)  # pruned after their first epoch
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and all(len(t.intermediate_values) == 3 for t in complete)
    assert all(t.value == t.intermediate_values[3] for t in complete)  # the objective: last epoch's val acc
    pruned = sum(": pruned after epoch" in line for out, _ in outs for line in out.splitlines())
    assert pruned == sum(t.state == TrialState.PRUNED for t in trials)

    best = max(complete, key=lambda t: (t.value, -t.number))
    assert optuna.load_study(study_name=name, storage=storage_url).best_trial.number == best.number
    assert main(["sweep", "--storage", storage_url, "--study", name, "--show"]) == 0
    text = capsys.readouterr().out
    assert f"{len(complete)} complete, {6 - len(complete)} pruned" in text
    assert f"best: trial {best.number}, val_acc {best.value:.4f}" in text


def test_show_prints_a_command_that_reproduces_the_best_trial(synth, tmp_path, capsys, restore_threads):
    root, out = tmp_path / "data", tmp_path / "sweep"
    cmd = [sys.executable, str(HERE / "densa_synth.py"), str(root), "sweep", "--data-dir", str(root)]
    cmd += ["--dataset", "synth", "--epochs", "2", "--trials", "2", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (out / "study.db").is_file()

    assert main(["sweep", "--dataset", "synth", "--out", str(out), "--show"]) == 0
    text = capsys.readouterr().out
    command = text.splitlines()[-1].split()
    assert command[:2] == ["densa", "train"] and "--val-split" not in command
    storage = f"sqlite:///{out.resolve() / 'study.db'}"
    best = optuna.load_study(study_name="synth-mlp", storage=storage).best_trial
    assert f"best: trial {best.number}, val_acc {best.value:.4f}" in text

    # the same recipe with the sweep's val split retrains the trial bit for bit: the same val accuracy
    check = tmp_path / "check"
    assert main([*command[1:], "--val-split", "0.1", "--threads", "1", "--out", str(check)]) == 0
    last = (check / "metrics.jsonl").read_text().splitlines()[-1]
    assert f'"val_acc": {best.value!r}' in last
    # and as printed, it trains on the whole training set and reports test accuracy
    full = tmp_path / "full"
    capsys.readouterr()
    assert main([*command[1:], "--out", str(full)]) == 0
    printed = capsys.readouterr().out
    assert "val split" not in printed and re.search(r"^test_acc: [01]\.\d{4}$", printed, re.M)


def test_a_killed_worker_leaves_its_trial_failed(synth, tmp_path, storage_url, capsys):
    root, url = tmp_path / "data", storage_url
    name, study = new_study(url, epochs=500, heartbeat=1)  # a trial far longer than the test waits
    study.enqueue_trial({**GOOD[0], "batch_size": 64})
    proc = worker(root, url, name, "--trials", "1")  # beats every second: the study's heartbeat
    try:
        end = time.monotonic() + 120
        while not any(t.intermediate_values for t in study.get_trials(states=[TrialState.RUNNING])):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < end, "the trial did not start within 120 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    dead = time.monotonic()  # no heartbeat after this
    assert study.trials[0].state == TrialState.RUNNING  # the dead worker could not tell anyone
    show = ["sweep", "--storage", url, "--study", name, "--show"]
    assert main(show) == 0  # --show only reads: the trial stays RUNNING until a worker checks it
    assert f"{name} in {url}: 1 trials (1 running)" in capsys.readouterr().out

    # stale once 2 x 1 s pass without a beat; +2 s as SQLite's timestamps are whole seconds. This wait
    # is the definition of stale, not a guess at how long something takes.
    time.sleep(max(0.0, dead + 4 - time.monotonic()))
    nxt = worker(root, url, name, "--trials", "1")  # checks the heartbeats before it starts its trial
    try:
        end = time.monotonic() + 120
        while study.trials[0].state == TrialState.RUNNING or len(study.trials) < 2:  # then its own
            assert nxt.poll() is None, nxt.communicate()
            assert time.monotonic() < end, "no FAIL for the dead worker's trial and a new trial in 120 s"
            time.sleep(0.2)
    finally:
        nxt.kill()
        nxt.communicate()
    assert study.trials[0].state == TrialState.FAIL
    assert main(show) == 0
    assert f"{name} in {url}: 2 trials (1 running, 1 fail)" in capsys.readouterr().out


def test_a_study_with_other_settings_is_refused_untouched(synth, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    name, study = new_study(url)
    study.enqueue_trial({**GOOD[0], "batch_size": 64})
    before = (study.user_attrs, len(study.trials), (tmp_path / "study.db").read_bytes())
    for flags in (["--model", "cnn"], ["--epochs", "5"], ["--val-split", "0.2"], ["--dataset", "mnist"]):
        assert main(["sweep", "--storage", url, "--study", name, "--trials", "1", *flags]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"study {name!r} in {url} was made with other settings" in err
        assert "drop the differing flags" in err
    assert (study.user_attrs, len(study.trials), (tmp_path / "study.db").read_bytes()) == before


def test_joining_without_flags_uses_the_studys_settings(synth, tmp_path, capsys, restore_threads):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    name, study = new_study(url, epochs=1)
    study.enqueue_trial({**GOOD[0], "batch_size": 64})
    assert main(["sweep", "--storage", url, "--study", name, "--trials", "1", "--threads", "1"]) == 0
    assert "searching mlp on synth: " in capsys.readouterr().out
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE and list(trial.intermediate_values) == [1]
    assert trial.user_attrs["args"][:2] == ["--hidden", "256"]


@pytest.mark.parametrize(
    "url, why",
    [
        ("bogus://x", "Can't load plugin"),
        ("postgresql://densa:secret@127.0.0.1:1/db", "Connection refused"),
        ("sqlite:////nonexistent/folder/study.db", "unable to open database file"),
    ],
)
def test_a_bad_storage_url_is_one_line(synth, url, why, capsys):
    assert main(["sweep", "--storage", url, "--trials", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("densa: error: cannot use the study storage ")
    assert why in err and "secret" not in err


def test_a_file_that_is_no_database_is_left_alone(synth, tmp_path, capsys):
    f = tmp_path / "notes.db"
    f.write_text("not a database\n")
    assert main(["sweep", "--storage", f"sqlite:///{f}", "--trials", "1"]) == 1
    assert "file is not a database" in capsys.readouterr().err
    assert f.read_text() == "not a database\n"


def test_show_needs_a_sweep_and_a_known_study(synth, tmp_path, capsys):
    assert main(["sweep", "--out", str(tmp_path / "none"), "--show"]) == 1
    assert "no sweep in" in capsys.readouterr().err and not (tmp_path / "none").exists()
    url = f"sqlite:///{tmp_path / 'study.db'}"
    name, _ = new_study(url)
    assert main(["sweep", "--storage", url, "--study", "other", "--show"]) == 1
    assert f"no study 'other' in {url} (it holds: {name})" in capsys.readouterr().err
    assert main(["sweep", "--storage", url, "--study", name, "--show"]) == 0
    assert "no complete trial yet" in capsys.readouterr().out
    assert main(["sweep", "--storage", url]) == 1
    assert "--trials N" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_every_point_of_the_space_is_a_densa_train_command(model):
    from densa.apps.sweep import SPACES, configs, definition, searched_flags, suggest
    from densa.core.config import resolve
    from densa.core.models import build_model

    d = definition("mnist", model, 0, 0.1, 0, "fp32")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        params = suggest(trial, SPACES[model])
        model_config, config = configs(d, params)
        assert searched_flags(model, params)[0] in ("--hidden", "--channels")
        assert model_config.model == model and config.epochs == d["epochs"] == resolve(model)[1].epochs
        assert (
            config.lr == pytest.approx(params["lr"], rel=1e-2) and config.batch_size == params["batch_size"]
        )
        assert config.val_split == 0 and config.optimizer == "adamw"  # the rest from the base preset
        build_model(model_config)
        study.tell(trial, 0.5)


def test_a_misspelt_dataset_makes_no_sweep(tmp_path, capsys):
    assert main(["sweep", "--dataset", "minst", "--trials", "1", "--out", str(tmp_path / "s")]) == 1
    assert "unknown dataset 'minst'" in capsys.readouterr().err and not (tmp_path / "s").exists()
