"""Sweep faults: the heartbeat belongs to the study, a trial failed under its worker is one line, --show
only reads, and a sweep without Optuna is one line.

Nothing here waits on the clock: the test plays the other worker itself (it marks the running trial
FAIL, as a heartbeat check does) and waits for explicit states in the database.
"""

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
from optuna.trial import TrialState

from densa.apps.sweep import open_storage, open_study
from densa.cli import main

TESTS = Path(__file__).parent.parent
SETTINGS = {"dataset": "synth", "model": "mlp", "epochs": 3, "val_split": 0.1, "seed": 0, "precision": "fp32"}
GOOD = dict(
    depth=1, width=64, activation="relu", dropout=0.0, weight_decay=1e-4, lr=3e-3, schedule="constant",
    batch_size=64,
)  # fmt: skip
LONG = 100_000  # epochs: a trial that never ends while a test watches it


def new_study(url: str, **settings):
    name = f"test-{uuid.uuid4().hex[:8]}"
    study, _ = open_study(open_storage(url), url, name, {**SETTINGS, **settings})
    return name, study


def worker(root: Path, url: str, study: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(TESTS / "densa_synth.py"), str(root), "sweep", "--data-dir", str(root)]
    cmd += ["--storage", url, "--study", study, "--threads", "1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(what: str, test, procs=(), seconds: float = 180):
    """Poll until test() is true; a generous deadline only as a safety net, and no worker may die."""
    end = time.monotonic() + seconds
    while not test():
        for p in procs:
            assert p.poll() is None, p.communicate()
        assert time.monotonic() < end, f"{what}: not within {seconds} s"
        time.sleep(0.1)


def one_line(capsys, argv, match):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("densa: error: "), err
    assert match in err, err


def test_a_worker_with_another_heartbeat_is_refused_untouched(synth, tmp_path, capsys):
    # before: a worker with --heartbeat 1 joined a study whose workers beat every 60 s and marked their
    # live trials FAIL (they then died with `ValueError: Cannot tell a FAIL trial.`)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    name, study = new_study(url)
    assert study.user_attrs["densa_heartbeat"] == 60  # fixed when the study was created
    study.enqueue_trial(GOOD)
    before = (tmp_path / "study.db").read_bytes()
    argv = ["sweep", "--storage", url, "--study", name, "--trials", "1", "--heartbeat", "1"]
    one_line(capsys, argv, "heartbeat: 60 in the study, 1 here")
    assert (tmp_path / "study.db").read_bytes() == before


def test_a_trial_failed_under_its_worker_is_one_line_and_the_worker_goes_on(synth, tmp_path):
    root, url = tmp_path / "data", f"sqlite:///{tmp_path / 'study.db'}"
    name, study = new_study(url, epochs=LONG, heartbeat=1)
    a = worker(root, url, name, "--trials", "2")  # joins with the study's heartbeat
    try:
        wait_for(
            "trial 0 reports an epoch", lambda: study.trials and study.trials[0].intermediate_values, [a]
        )
        # what another worker's heartbeat check does to a trial whose worker was silent too long
        storage = open_storage(url)
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name), 0)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        pid = str(a.pid)
        wait_for(
            "the worker goes on with another trial",
            lambda: any(t.user_attrs.get("worker", "").endswith(f":{pid}") for t in study.trials[1:]),
            [a],
        )
        a.send_signal(signal.SIGINT)  # Ctrl-C: ends the worker and flushes what it printed
        out, err = a.communicate(timeout=600)  # a safety net; it ends at the next step
    finally:
        if a.poll() is None:
            a.kill()
            a.communicate()
    assert "trial 0: marked FAIL by another worker, which heard no heartbeat from this one for 2s" in out
    assert "going on with the next trial" in out
    assert a.returncode == 130 and "Traceback" not in err and "Cannot tell" not in err, err
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]  # the second by Ctrl-C


def test_show_on_an_empty_file_refuses_it_untouched(tmp_path, capsys):
    # before: `densa sweep --show` wrote Optuna's schema (115 KB) into a 0-byte study.db
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "study.db").write_bytes(b"")
    one_line(capsys, ["sweep", "--out", str(out), "--show"], "holds no Optuna study")
    assert (out / "study.db").read_bytes() == b""
    # and a --storage file that does not exist is not created
    missing = tmp_path / "none.db"
    one_line(
        capsys, ["sweep", "--storage", f"sqlite:///{missing}", "--show"], f"no study database at {missing}"
    )
    assert not missing.exists()
    # nor is a file that is no database touched
    notes = tmp_path / "notes.db"
    notes.write_text("not a database\n")
    one_line(capsys, ["sweep", "--storage", f"sqlite:///{notes}", "--show"], "file is not a database")
    assert notes.read_text() == "not a database\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db", "sweep"]


def test_show_writes_nothing_to_a_study(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    name, study = new_study(url, heartbeat=1)
    study.enqueue_trial(GOOD)
    study.ask()  # a RUNNING trial without heartbeats: --show leaves failing it to the next worker
    before = (tmp_path / "study.db").read_bytes()
    assert main(["sweep", "--storage", url, "--study", name, "--show"]) == 0
    assert f"study {name} in {url}: 1 trials (1 running)" in capsys.readouterr().out
    assert (tmp_path / "study.db").read_bytes() == before
    assert optuna.load_study(study_name=name, storage=url).trials[0].state == TrialState.RUNNING


def test_a_worker_without_optuna_makes_no_sweep_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    out = tmp_path / "s"
    one_line(capsys, ["sweep", "--trials", "1", "--out", str(out)], "pip install 'densa[sweep]'")
    assert not out.exists() and list(tmp_path.iterdir()) == []
