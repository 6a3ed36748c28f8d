"""Data-parallel training: two gloo processes (`densa train --nproc 2`, i.e. torchrun) on synthetic data.

Each rank records a sha256 of its weights after every epoch (DENSA_DIST_DIGESTS), so the test sees
from both processes that the replicas stayed identical; the run matches a one-process run with the same
global batch, rank 0 alone prints and writes the run folder, and the test set is counted once. Bad
launches (mismatched arguments across ranks, too many processes) end in one line on every rank.
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from densa_synth import wait_for_files
from safetensors.torch import load_file

import densa
from densa.cli import main
from densa.core.checkpoint import load_state
from densa.core.config import ModelConfig
from densa.core.data import load_dataset
from densa.core.models import build_model

HERE = Path(__file__).parent
RUN_FILES = ["checkpoint.pt", "metrics.jsonl", "model.safetensors", "summary.json"]
# shifts (drawn for the whole global batch), a val split, and a last batch of 11 that splits 6 + 5
RECIPE = ["--hidden", "64", "--epochs", "3", "--batch-size", "127", "--shift", "2", "--val-split", "0.1"]


def densa_synth(root: Path, *args: str, env=None, **kw) -> subprocess.Popen:
    cmd = [sys.executable, str(HERE / "densa_synth.py"), str(root), *args]
    env = {**os.environ, "DENSA_DIST_TIMEOUT": "60", **(env or {})}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def weights_digest(state: dict, model_config: ModelConfig) -> str:
    """sha256 over the parameters in model order, as each rank computes it."""
    model = build_model(model_config)
    model.load_state_dict(state)
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_two_processes_keep_identical_weights_and_match_one(synth, tmp_path, capsys, restore_threads):
    root, out, digests = tmp_path / "data", tmp_path / "ddp", tmp_path / "digests"
    digests.mkdir()
    proc = densa_synth(
        root, "train", "--dataset", "synth", "--data-dir", str(root), *RECIPE, "--nproc", "2",
        "--out", str(out), env={"DENSA_DIST_DIGESTS": str(digests)},
    )  # fmt: skip
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr

    # both ranks wrote a digest per epoch: the same on both, and the last one is the saved weights
    lines = [(digests / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert [line.split()[0] for line in lines[0]] == ["1", "2", "3"]
    assert lines[0] == lines[1]
    state = load_state(out)
    model_config = ModelConfig.from_dict(state["model_config"])
    assert lines[0][-1].split()[1] == weights_digest(state["model"], model_config)

    # rank 0 alone printed and wrote a complete run folder
    assert sum(line.startswith("Epoch ") for line in stdout.splitlines()) == 3
    assert stdout.count("test_acc: ") == 1 and "data-parallel: 2 processes (gloo), 1 threads each" in stdout
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo" and summary["threads"] == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]

    # the sharded test evaluation counted each of the 300 test images once: same as one process
    ds = load_dataset("synth")
    r = densa.evaluate(densa.load(out).model, ds.test_images, ds.test_labels)
    assert summary["test_n"] == 300 and summary["test_correct"] == r["correct"]
    assert summary["test_loss"] == pytest.approx(r["loss"], rel=1e-6)

    # one process with the same global batch takes the same steps: equal up to float rounding
    one = tmp_path / "one"
    assert main(["train", "--dataset", "synth", *RECIPE, "--threads", "1", "--out", str(one)]) == 0
    single = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(records, single):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["acc"] == b["acc"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
    w2, w1 = load_state(out)["model"], load_state(one)["model"]
    assert max((w2[k] - w1[k]).abs().max().item() for k in w1) < 1e-4
    assert not torch.equal(w2["net.0.weight"], build_model(model_config).state_dict()["net.0.weight"])
    best = load_file(out / "model.safetensors")
    assert best.keys() == w1.keys()  # saved from the plain module, not the DDP wrapper ("module." keys)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_started_with_different_arguments_all_refuse(synth, tmp_path):
    root, port = tmp_path / "data", str(free_port())
    procs = []
    for rank, lr in ((0, "0.001"), (1, "0.01")):  # as if torchrun had been run twice, differently
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        env.update(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
        args = [
            "train",
            "--dataset",
            "synth",
            "--data-dir",
            str(root),
            "--lr",
            lr,
            "--out",
            str(tmp_path / "run"),
        ]
        procs.append(densa_synth(root, *args, env=env))
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 1, stderr
        assert stderr == (
            "densa: error: rank 1 was started with lr=0.01 but rank 0 with lr=0.001: "
            "start every rank with the same `densa train` arguments\n"
        )
        assert "Epoch" not in stdout
    assert not (tmp_path / "run").exists()


def test_nproc_beyond_the_cores_is_one_line(synth, tmp_path, capsys):
    assert main(["train", "--dataset", "synth", "--nproc", "4096", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--nproc 4096 is more than this machine's" in err and "CPU cores" in err
    assert not (tmp_path / "r").exists()


def test_a_rank_without_torchrun_environment_is_one_line(synth, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert main(["train", "--dataset", "synth", "--threads", "1", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rank 1 could not join the other 1 ranks" in err


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_at_one_step_and_resume_continues(
    tmp_path, monkeypatch, capsys, restore_threads
):
    from synthetic import write_dataset

    from densa.core import data

    root = tmp_path / "data"  # 225 steps of 8 images per epoch: time to interrupt one in the middle
    monkeypatch.setitem(data.DATASETS, "synth", write_dataset(root, "synth", n_train=2000, n_test=100))
    monkeypatch.setenv("DENSA_DATA_DIR", str(root))
    recipe = [
        "--dataset",
        "synth",
        "--hidden",
        "64",
        "--batch-size",
        "8",
        "--epochs",
        "3",
        "--val-split",
        "0.1",
    ]
    run, hold = tmp_path / "run", tmp_path / "hold"
    hold.mkdir()  # each rank stops before global step 265 (epoch 2, step 41) until released (densa_synth.py)
    env = {**os.environ, "DENSA_TEST_HOLD_STEP": "265", "DENSA_TEST_HOLD_DIR": str(hold)}
    proc = densa_synth(root, "train", *recipe, "--nproc", "2", "--out", str(run), env=env)
    try:
        wait_for_files(proc, hold / "held-0", hold / "held-1")  # epoch 1 is saved, both ranks are in epoch 2
        proc.send_signal(signal.SIGINT)  # to the launcher, as Ctrl-C would; torchrun passes it on
        wait_for_files(proc, hold / "sigint-0", hold / "sigint-1")
        (hold / "release").touch()
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.count("densa: interrupted") == 1  # rank 0 alone says so
    assert f"resume with: densa train --resume {run} --nproc 2" in stderr
    assert stdout.count("Epoch ") == 1 and not (run / "summary.json").exists()
    assert load_state(run)["step"] == 41

    resumed = densa_synth(root, "train", "--resume", str(run), "--nproc", "2")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "resuming " in stdout and (run / "summary.json").exists()

    # the same as one process that was never interrupted: the steps, and the epochs' summed metrics
    one = tmp_path / "one"
    assert main(["train", *recipe, "--threads", "1", "--out", str(one)]) == 0
    a = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in a] == [1, 2, 3]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5) and x["acc"] == y["acc"]
    w2, w1 = load_state(run)["model"], load_state(one)["model"]
    assert max((w2[k] - w1[k]).abs().max().item() for k in w1) < 1e-4
