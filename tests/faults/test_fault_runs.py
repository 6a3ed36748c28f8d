"""Faults around a run folder: two runs at once, crashes while saving, full and read-only disks.

Every case ends in one line that names the folder and what to do, with nothing lost: a folder is
owned by one process, no state of it is a dead end, and the last good checkpoint stays usable.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from densa_synth import wait_for_files

from densa.cli import main
from densa.core import data
from densa.core.checkpoint import load_state

TESTS = Path(__file__).parent.parent
FLAGS = ["train", "--dataset", "synth", "--hidden", "32", "--threads", "1"]


def one_line_error(capsys, argv, *match) -> str:
    assert main(argv) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.startswith("densa: error: "), err
    for m in match:
        assert m in err, err
    return err


def child(root: Path, *args: str, **env: str) -> subprocess.Popen:
    """`densa train` in its own process, with densa_synth.py's test hooks set by `env`."""
    cmd = [sys.executable, str(TESTS / "densa_synth.py"), str(root), *args, "--data-dir", str(root)]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_second_run_into_a_held_folder_is_refused_and_touches_nothing(synth, tmp_path, capsys):
    root, run, hold = tmp_path / "data", tmp_path / "R", tmp_path / "hold"
    hold.mkdir()
    first = child(root, *FLAGS, "--epochs", "2", "--seed", "0", "--out", str(run),
                  DENSA_TEST_HOLD_STEP="10", DENSA_TEST_HOLD_DIR=str(hold))  # fmt: skip
    try:
        wait_for_files(first, hold / "held-0")  # epoch 2 of the first run is under way (8 steps an epoch)
        before = snapshot(run)
        err = one_line_error(capsys, [*FLAGS, "--seed", "1", "--out", str(run)], f"{run} is in use")
        assert f"pid {first.pid} on " in err and "choose another folder" in err
        one_line_error(capsys, ["train", "--resume", str(run)], f"{run} is in use", f"pid {first.pid}")
        assert snapshot(run) == before
        (hold / "release").touch()
        out, err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    assert load_state(run)["train_config"]["seed"] == 0  # every file is the first run's
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["checkpoint.pt", "metrics.jsonl", "model.safetensors", "summary.json"]
    )


def test_a_killed_runs_lock_does_not_block_the_next_run(synth, tmp_path, capsys):
    root, run, hold = tmp_path / "data", tmp_path / "R", tmp_path / "hold"
    hold.mkdir()
    proc = child(root, *FLAGS, "--out", str(run), DENSA_TEST_HOLD_STEP="3", DENSA_TEST_HOLD_DIR=str(hold))
    try:
        wait_for_files(proc, hold / "held-0")
        assert (run / ".densa-run.lock").exists()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert main([*FLAGS, "--out", str(run)]) == 0  # the kernel dropped the dead process's lock
    assert not (run / ".densa-run.lock").exists()


@pytest.mark.parametrize("rename", [1, 2, 3], ids=["metrics", "model", "checkpoint"])
def test_a_crash_while_saving_epoch_1_leaves_no_dead_end(synth, tmp_path, capsys, rename):
    root, run = tmp_path / "data", tmp_path / "R"
    proc = child(root, *FLAGS, "--epochs", "2", "--out", str(run), DENSA_TEST_KILL_AT_RENAME=str(rename))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, err
    assert [p.name for p in run.glob(".*.tmp")], "the crash left a temp file, as a real one would"
    assert not (run / "checkpoint.pt").exists()

    # --resume sends the user to --out, and --out starts the run again: no loop between the two
    one_line_error(capsys, ["train", "--resume", str(run)], "never finished its first epoch",
                   f"densa train --out {run}")  # fmt: skip
    assert main([*FLAGS, "--epochs", "2", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "temp file(s)" in out or rename == 1
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["checkpoint.pt", "metrics.jsonl", "model.safetensors", "summary.json"]
    )
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_crash_while_saving_epoch_2_resumes_from_epoch_1(synth, tmp_path, capsys):
    root, run = tmp_path / "data", tmp_path / "R"
    proc = child(root, *FLAGS, "--epochs", "2", "--out", str(run), DENSA_TEST_KILL_AT_RENAME="6")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, err
    assert load_state(run)["epoch"] == 1
    one_line_error(capsys, [*FLAGS, "--out", str(run)], "already holds a run (unfinished", f"--resume {run}")
    assert main(["train", "--resume", str(run)]) == 0
    assert not list(run.glob(".*"))
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_files_that_are_not_a_run_are_never_removed(synth, tmp_path, capsys):
    run = tmp_path / "R"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')  # someone's notes, not epoch 1
    one_line_error(capsys, [*FLAGS, "--out", str(run)], "not an unfinished densa run")
    assert (run / "metrics.jsonl").read_text() == '{"epoch": 1}\n{"epoch": 2}\n'


def test_a_finished_run_trains_further_on_a_constant_learning_rate(synth, tmp_path, capsys):
    two, three, straight = tmp_path / "two", tmp_path / "three", tmp_path / "straight"
    assert main([*FLAGS, "--epochs", "2", "--out", str(two)]) == 0
    shutil.copytree(two, three)
    one_line_error(capsys, ["train", "--resume", str(two)], "is a finished run (2 epochs)", "--epochs N")
    again = f"--resume {two} --epochs N"
    one_line_error(capsys, [*FLAGS, "--out", str(two)], "already holds a run (finished)", again)
    one_line_error(capsys, ["train", "--resume", str(two), "--epochs", "2"], "is a finished run")
    one_line_error(capsys, ["train", "--resume", str(two), "--epochs", "1"], "has trained 2 epochs")

    assert main(["train", "--resume", str(three), "--epochs", "3"]) == 0
    assert "training " in capsys.readouterr().out
    assert main([*FLAGS, "--epochs", "3", "--out", str(straight)]) == 0
    # the same bits as a run asked for 3 epochs from the start (the seed recipe: constant LR)
    assert (three / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()
    a, b = load_state(three)["model"], load_state(straight)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((three / "summary.json").read_text())["epochs"] == 3


def test_a_finished_run_with_a_schedule_says_why_it_cannot_go_on(synth, tmp_path, capsys):
    run = tmp_path / "R"
    assert main([*FLAGS, "--epochs", "2", "--schedule", "cosine", "--out", str(run)]) == 0
    before = snapshot(run)
    one_line_error(capsys, ["train", "--resume", str(run), "--epochs", "4"], "cosine learning-rate schedule",
                   "planned for 2 epochs", "start a new run")  # fmt: skip
    assert snapshot(run) == before


def enospc_at(monkeypatch, run: Path, n: int) -> None:
    """The Nth flush of a file in `run` to the disk fails as on a full disk (the ones before succeed)."""
    fsync, calls = os.fsync, []

    def full(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).parent == run:  # not the dataset cache's files
            calls.append(fd)
        if len(calls) >= n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return fsync(fd)

    monkeypatch.setattr(data.os, "fsync", full)


def test_a_full_disk_in_epoch_2_keeps_epoch_1_and_resume_goes_on(synth, tmp_path, capsys, monkeypatch):
    run = tmp_path / "R"
    with monkeypatch.context() as m:  # epoch 1: metrics, model, checkpoint; epoch 2: metrics, model fails
        enospc_at(m, run, 5)
        err = one_line_error(capsys, [*FLAGS, "--epochs", "3", "--out", str(run)],
                             f"cannot write {run}/model.safetensors: No space left on device",
                             f"keeps the checkpoint of epoch 1: `densa train --resume {run}`")  # fmt: skip
    assert ".tmp" not in err
    assert not list(run.glob(".*"))
    assert load_state(run)["epoch"] == 1
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_a_full_disk_in_epoch_1_says_to_run_again(synth, tmp_path, capsys, monkeypatch):
    run = tmp_path / "R"
    with monkeypatch.context() as m:
        enospc_at(m, run, 2)
        one_line_error(capsys, [*FLAGS, "--epochs", "2", "--out", str(run)], "No space left on device",
                       "no epoch was saved: run the same command again")  # fmt: skip
    assert main([*FLAGS, "--epochs", "2", "--out", str(run)]) == 0


# ---------------------------------------------------------------------------- real small file systems

NS = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--mount"]


def in_tmpfs(script: str, size: str, root: Path) -> subprocess.CompletedProcess:
    """Run `script` (bash, with $MNT a fresh tmpfs of `size`) in a private mount namespace."""
    mnt = root / "mnt"
    mnt.mkdir(exist_ok=True)
    setup = f"set -e; mount -t tmpfs -o size={size} tmpfs {mnt}; export MNT={mnt}; "
    return subprocess.run([*NS, "bash", "-c", setup + script], capture_output=True, text=True, timeout=600)


@pytest.fixture
def tmpfs_ok(tmp_path):
    probe = in_tmpfs("true", "1m", tmp_path) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        message = "cannot mount a tmpfs in a private namespace here (needs root or user namespaces)"
        if os.environ.get("DENSA_REQUIRE_TMPFS"):
            pytest.fail(message)
        pytest.skip(message)


def synth_cli(root: Path, *args: str) -> str:
    return f"{sys.executable} {TESTS / 'densa_synth.py'} {root} {' '.join(args)}"


@pytest.mark.parametrize("size", ["1m", "2m"])
def test_train_onto_a_small_disk_is_refused_before_training(synth, tmp_path, tmpfs_ok, size):
    root = tmp_path / "data"
    cmd = synth_cli(root, "train", "--dataset", "synth", "--hidden", "512,512", "--out", "$MNT/run",
                    "--data-dir", str(root))  # fmt: skip
    r = in_tmpfs(cmd, size, tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("densa: error: "), r.stderr
    assert "MB free on its disk" in r.stderr and "choose another --out" in r.stderr
    assert "Epoch 1" not in r.stdout  # refused before any training


def test_train_onto_a_read_only_folder_is_refused_before_training(synth, tmp_path, tmpfs_ok):
    root = tmp_path / "data"
    cmd = "mount -o remount,ro $MNT; " + synth_cli(
        root, "train", "--dataset", "synth", "--out", "$MNT/run", "--data-dir", str(root)
    )
    r = in_tmpfs(cmd, "4m", tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert "Read-only file system; the file system is read-only; choose a writable folder" in r.stderr
    assert "/run" in r.stderr and ".tmp" not in r.stderr and "Epoch" not in r.stdout


def test_export_and_report_onto_a_full_disk_name_the_file(synth, tmp_path, tmpfs_ok, capsys):
    root, run = tmp_path / "data", tmp_path / "run"
    assert main([*FLAGS, "--epochs", "1", "--out", str(run)]) == 0
    fill = "cat /dev/zero > $MNT/filler 2>/dev/null || true; "  # the disk is full
    for args, name in [
        (["export", str(run), "--onnx", "$MNT/model.onnx"], "model.onnx"),
        (["report", str(run), "--out", "$MNT/report", "--data-dir", str(root)], "report"),
    ]:
        r = in_tmpfs(fill + synth_cli(root, *args), "4m", tmp_path)
        assert r.returncode == 1, r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("densa: error: "), r.stderr
        assert "No space left on device" in r.stderr and name in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
