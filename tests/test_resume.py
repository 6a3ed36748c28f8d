"""Checkpoints and resume: a run killed (SIGKILL) or interrupted (SIGINT) mid-epoch and resumed ends with
the same bits as one that never stopped; bad checkpoints and mismatched flags are refused in one line."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from densa_synth import wait_for_files
from safetensors.torch import load_file
from synthetic import write_dataset

from densa.cli import main
from densa.core import data
from densa.core.checkpoint import load_state

HERE = Path(__file__).parent
# every random thing at once: dropout, shifts, the val split, a warm-up + one-cycle schedule
RECIPE = ["--preset", "mlp", "--hidden", "64,64", "--batch-size", "8", "--val-split", "0.1"]
RECIPE += ["--epochs", "3", "--threads", "1"]


@pytest.fixture
def big_synth(tmp_path, monkeypatch):
    """A synthetic dataset big enough that an epoch (225 steps) takes a noticeable time."""
    root = tmp_path / "data"
    spec = write_dataset(root, "synth", n_train=2000, n_test=100)
    monkeypatch.setitem(data.DATASETS, "synth", spec)
    monkeypatch.setenv("DENSA_DATA_DIR", str(root))
    return root


STEPS = 225  # steps per epoch of RECIPE on big_synth: 1,800 training images in batches of 8
HOLD = STEPS + 40  # the global step the child is held at: epoch 2, after its 40th step


def start(root: Path, out: Path, hold: Path, step_sleep: float = 0.0) -> subprocess.Popen:
    """`densa train` in a child process that stops before step HOLD until the test releases it."""
    cmd = [sys.executable, str(HERE / "densa_synth.py"), str(root), "train", "--dataset", "synth"]
    cmd += ["--data-dir", str(root), *RECIPE, "--out", str(out)]
    env = {**os.environ, "DENSA_TEST_HOLD_STEP": str(HOLD), "DENSA_TEST_HOLD_DIR": str(hold)}
    env["DENSA_TEST_STEP_SLEEP"] = str(step_sleep)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def same_run(a: Path, b: Path) -> None:
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
    final_a, final_b = load_state(a)["model"], load_state(b)["model"]
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    best_a, best_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    for s in (a, b):
        assert "time" not in (s / "metrics.jsonl").read_text()


# The signal lands mid-epoch because the child is held at a known step, whatever the machine's speed.
# To show it, each test also runs with the loop 20x slower (the child sleeps 19 step-times before every
# step) and 20x faster relative to the test (the test waits 20 epoch-times before it acts).
SPEEDS = ["normal", "loop-20x-slower", "loop-20x-faster"]


def pace(speed: str, whole: Path) -> tuple[float, float]:
    """(sleep before each step in the child, wait in the test before it signals) for `speed`."""
    epoch = json.loads((whole / "summary.json").read_text())["epoch_times_s"][0]
    if speed == "loop-20x-slower":
        return 19 * epoch / STEPS, 0.0
    if speed == "loop-20x-faster":
        return 0.0, 20 * epoch
    return 0.0, 0.0


@pytest.mark.slow
@pytest.mark.parametrize("speed", SPEEDS)
def test_sigkill_mid_epoch_then_resume_is_bit_identical(big_synth, tmp_path, capsys, restore_threads, speed):
    whole, killed, hold = tmp_path / "whole", tmp_path / "killed", tmp_path / "hold"
    assert main(["train", "--dataset", "synth", *RECIPE, "--out", str(whole)]) == 0
    capsys.readouterr()
    step_sleep, wait = pace(speed, whole)

    hold.mkdir()
    proc = start(big_synth, killed, hold, step_sleep)
    try:
        wait_for_files(proc, hold / "held-0")  # epoch 1 is saved; epoch 2 stands before step 41
        time.sleep(wait)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists()
    assert load_state(killed)["epoch"] == 1
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 1

    assert main(["train", "--resume", str(killed), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"resuming {killed} after epoch 1" in out
    assert [line.split(" - ")[0] for line in out.splitlines() if line.startswith("Epoch ")] == [
        "Epoch 2",
        "Epoch 3",
    ]
    same_run(whole, killed)
    assert json.loads((killed / "summary.json").read_text())["resumed"] is True


@pytest.mark.slow
@pytest.mark.parametrize("speed", SPEEDS)
def test_ctrl_c_saves_mid_epoch_and_says_how_to_resume(big_synth, tmp_path, capsys, restore_threads, speed):
    whole, stopped, hold = tmp_path / "whole", tmp_path / "stopped", tmp_path / "hold"
    assert main(["train", "--dataset", "synth", *RECIPE, "--out", str(whole)]) == 0
    capsys.readouterr()
    step_sleep, wait = pace(speed, whole)

    hold.mkdir()
    proc = start(big_synth, stopped, hold, step_sleep)
    try:
        wait_for_files(proc, hold / "held-0")
        time.sleep(wait)
        proc.send_signal(signal.SIGINT)
        wait_for_files(proc, hold / "sigint-0")  # densa's handler has run: the loop will stop after this step
        (hold / "release").touch()
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 130
    lines = err.strip().splitlines()
    assert lines == [
        f"densa: interrupted in epoch 2 after step 41 of {STEPS}; saved {stopped}/checkpoint.pt; "
        f"resume with: densa train --resume {stopped} --data-dir {big_synth} --threads 1"
    ], err
    state = load_state(stopped)
    assert state["epoch"] == 1 and state["step"] == 41 and state["perm"] is not None  # saved mid-epoch 2

    assert main(["train", "--resume", str(stopped), "--threads", "1"]) == 0
    assert "after epoch 1, step 41" in capsys.readouterr().out
    same_run(whole, stopped)


def test_same_seed_same_metrics_bytes(synth, tmp_path, capsys):
    flags = ["train", "--dataset", "synth", "--preset", "mlp", "--hidden", "32", "--epochs", "2"]
    for name in ("a", "b"):
        assert main([*flags, "--val-split", "0.2", "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
    assert load_file(a / "model.safetensors").keys() == load_file(b / "model.safetensors").keys()
    same_run(a, b)


@pytest.fixture
def finished(synth, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "synth", "--epochs", "1", "--hidden", "32", "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def errors_with(capsys, argv, match):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("densa: error: "), err
    assert match in err, err


def test_resume_refuses_bad_folders_and_checkpoints(finished, tmp_path, capsys):
    errors_with(capsys, ["train", "--resume", str(tmp_path / "nope")], "does not exist")
    (tmp_path / "empty").mkdir()
    errors_with(capsys, ["train", "--resume", str(tmp_path / "empty")], "has no checkpoint.pt to resume from")
    errors_with(capsys, ["train", "--resume", str(finished)], "is a finished run (1 epochs)")

    run = tmp_path / "copy"
    run.mkdir()
    (run / "model.safetensors").write_bytes((finished / "model.safetensors").read_bytes())
    blob = (finished / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(blob[: len(blob) // 2])
    errors_with(capsys, ["train", "--resume", str(run)], "checkpoint.pt is damaged (truncated or modified")
    tampered = bytearray(blob)
    tampered[len(blob) // 2] ^= 0xFF  # inside the saved tensors: only the digest can tell
    (run / "checkpoint.pt").write_bytes(bytes(tampered))
    errors_with(capsys, ["train", "--resume", str(run)], "its sha256 does not match")
    torch.save({"model": {}}, run / "checkpoint.pt")
    errors_with(capsys, ["train", "--resume", str(run)], "is not a densa training checkpoint")

    # a checkpoint of a different architecture than the run it sits in, and flags that disagree
    (run / "checkpoint.pt").write_bytes(blob)
    errors_with(capsys, ["train", "--resume", str(run), "--hidden", "64"], "different architecture")
    errors_with(capsys, ["train", "--resume", str(run), "--lr", "0.5"], "different recipe")
    errors_with(capsys, ["train", "--resume", str(run), "--out", str(tmp_path / "x")], "drop --out")
    other = tmp_path / "other"
    flags = ["train", "--dataset", "synth", "--epochs", "1", "--hidden", "16", "--out", str(other)]
    assert main(flags) == 0
    capsys.readouterr()
    (run / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    errors_with(capsys, ["train", "--resume", str(run)], "is from a different architecture")
    (run / "model.safetensors").unlink()  # no file to compare with: the weights must still fit the config
    state = load_state(other)
    state["model"]["net.0.weight"] = torch.zeros(3, 3)
    from densa.core.checkpoint import save_state

    save_state(run / "checkpoint.pt", state)
    errors_with(capsys, ["train", "--resume", str(run)], "weights do not match the architecture")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(synth, tmp_path, capsys, monkeypatch):
    loop = importlib.import_module("densa.training.loop")
    steps = 1000 // 128 + 1  # one epoch of the synthetic set at the default batch size
    real = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda s, t, c: real(s, t, c) if s < steps + 3 else float("nan"))
    out = tmp_path / "run"
    errors_with(
        capsys,
        ["train", "--dataset", "synth", "--epochs", "3", "--out", str(out)],
        "the learning rate is probably too high; try --lr 0.0001",
    )
    state = load_state(out)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (out / "summary.json").exists()
    assert not [p for p in os.listdir(out) if p.startswith(".")]

    # in the first epoch there is nothing to keep: no folder is left behind
    monkeypatch.setattr(loop, "lr_at", lambda s, t, c: float("nan"))
    errors_with(
        capsys,
        ["train", "--dataset", "synth", "--out", str(tmp_path / "run2")],
        "(no epoch finished, nothing was saved)",
    )
    assert not (tmp_path / "run2").exists()
