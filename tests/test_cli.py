"""The real `densa` command end to end on a small synthetic dataset, and its answers to bad input."""

import json
import re
import subprocess
import sys

import pytest
import torch

import densa
from densa.cli import main
from densa.core.data import load_dataset

RUN_FILES = ["checkpoint.pt", "metrics.jsonl", "model.safetensors", "summary.json"]
EPOCH_LINE = re.compile(r"^Epoch (\d+) - loss: \d+\.\d{4} - acc: [01]\.\d{4}( - .+)?$")


@pytest.fixture
def run(synth, tmp_path, capsys):
    """A finished 2-epoch run on the synthetic dataset."""
    out = tmp_path / "run"
    assert main(["train", "--dataset", "synth", "--epochs", "2", "--out", str(out)]) == 0
    return out, capsys.readouterr().out


def test_train_prints_the_tutorial_flow(run):
    out, text = run
    lines = text.splitlines()
    epochs = [m.group(1) for m in map(EPOCH_LINE.match, lines) if m]
    assert epochs == ["1", "2"]
    assert "Linear(in_features=784, out_features=512, bias=True)" in text
    assert "parameters: 407,050" in text
    test_acc = [line for line in lines if line.startswith("test_acc: ")]
    assert len(test_acc) == 1 and re.fullmatch(r"test_acc: [01]\.\d{4}", test_acc[0])
    assert float(test_acc[0].split()[1]) > 0.9  # the synthetic classes are easy
    assert re.search(r"^predictions\[0\]\.argmax\(\) = \d$", text, re.M)
    assert re.search(r"^test_labels\[0\] = \d$", text, re.M)


def test_run_folder_is_self_describing(run, synth):
    out, _ = run
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # no wall-clock times in metrics.jsonl (they would break bit-identical reruns): summary.json has them
    assert [r["epoch"] for r in records] == [1, 2] and all(
        r.keys() == {"epoch", "loss", "acc"} for r in records
    )
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["epoch_times_s"]) == 2 and summary["preset"] == "seed"
    ckpt = densa.load(out)
    assert ckpt.meta["model"]["hidden"] == [512] and ckpt.meta["dataset"]["name"] == "synth"
    assert ckpt.classes == list("0123456789")
    assert ckpt.meta["train"]["epochs"] == 2 and ckpt.meta["train"]["lr"] == 1e-3
    assert ckpt.meta["versions"]["torch"] == torch.__version__
    assert ckpt.meta["metrics"]["test_acc"] == summary["test_acc"]
    assert densa.load(out / "model.safetensors").meta == ckpt.meta


def test_evaluate_matches_brute_force(run, synth, capsys):
    out, _ = run
    assert main(["evaluate", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    model = densa.load(out).model
    ds = load_dataset("synth")
    correct = sum(
        int(model(ds.test_images[i : i + 1].float() / 255).argmax()) == int(ds.test_labels[i])
        for i in range(len(ds.test_images))
    )
    assert result["n"] == len(ds.test_images) == 300  # no dropped last batch
    assert result["correct"] == correct and result["acc"] == correct / 300
    assert main(["evaluate", str(out)]) == 0
    assert f"test_acc: {correct / 300:.4f} ({correct}/300)" in capsys.readouterr().out


def test_predict_test_index(run, capsys):
    out, _ = run
    assert main(["predict", str(out), "--test-index", "5", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["index"] == 5 and abs(sum(r["probabilities"].values()) - 1) < 1e-5
    assert r["predicted"] == max(range(10), key=lambda k: r["probabilities"][str(k)])
    assert main(["predict", str(out), "--test-index", "5"]) == 0
    text = capsys.readouterr().out
    assert f"predictions[5].argmax() = {r['predicted']}" in text and f"test_labels[5] = {r['label']}" in text


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--epochs", "-1"], r"--epochs: expected a positive integer, got '-1'"),
        (["train", "--epochs", "0"], r"--epochs: expected a positive integer"),
        (["train", "--batch-size", "0"], r"--batch-size: expected a positive integer"),
        (["train", "--lr", "abc"], r"--lr: expected a positive number"),
        (["train", "--hidden", "512,x"], r"--hidden: expected comma-separated layer widths"),
        (["predict", "r", "--test-index", "-3"], r"--test-index: expected an integer >= 0"),
        (["train", "--hidden", "64,,32"], r"--hidden: expected comma-separated layer widths"),
        (["train", "--hidden", "0"], r"--hidden: layer widths must be positive"),
        (["train", "--channels", "none"], r"--channels: expected comma-separated conv widths"),
        (["train", "--dropout", "1"], r"--dropout: expected a number in \[0, 1\), got '1'"),
        (["train", "--dropout", "-0.1"], r"--dropout: expected a number in \[0, 1\)"),
        (["train", "--val-split", "0"], r"--val-split: expected a fraction in \(0, 1\)"),
        (["train", "--val-split", "1.5"], r"--val-split: expected a fraction in \(0, 1\)"),
        (["train", "--val-split", "nan"], r"--val-split: expected a fraction in \(0, 1\)"),
        (
            ["train", "--preset", "best"],
            r"--preset: invalid choice: 'best' \(choose from '?seed'?, '?fast'?, '?mlp'?, '?cnn'?\)",
        ),
        (["train", "--activation", "softmax"], r"--activation: invalid choice: 'softmax'"),
        (["train", "--optimizer", "rmsprop"], r"--optimizer: invalid choice: 'rmsprop'"),
        (["train", "--device", "tpu"], r"--device: invalid choice: 'tpu'"),
        (["train", "--precision", "fp8"], r"--precision: invalid choice: 'fp8'"),
        (["train", "--model", "resnet"], r"--model: invalid choice: 'resnet'"),
        (["train", "--weight-decay", "-1"], r"--weight-decay: expected a number >= 0"),
        (["data", "nonsense"], r"invalid choice: 'nonsense'"),
    ],
)
def test_nonsense_flags(capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err), err


def errors_with(capsys, argv, match):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("densa: error: ") and re.search(match, err), err


def test_bad_runs_and_indices(run, tmp_path, capsys):
    out, _ = run
    errors_with(capsys, ["evaluate", str(tmp_path / "nope")], r"nope does not exist")
    (tmp_path / "empty").mkdir()
    errors_with(
        capsys, ["evaluate", str(tmp_path / "empty")], r"not a densa run folder \(no model.safetensors"
    )
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    errors_with(
        capsys,
        ["predict", str(tmp_path / "junk.safetensors"), "--test-index", "0"],
        r"not a safetensors file",
    )
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    errors_with(capsys, ["evaluate", str(tmp_path / "other.safetensors")], r"not a densa checkpoint")
    errors_with(
        capsys, ["predict", str(out), "--test-index", "300"], r"--test-index 300 is out of range.*300 images"
    )
    errors_with(capsys, ["train", "--dataset", "synth", "--out", str(out)], r"already holds a run")
    errors_with(capsys, ["train", "--dataset", "nope"], r"unknown dataset 'nope'")
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES


def test_tampered_checkpoint(run, tmp_path, capsys):
    out, _ = run
    blob = (out / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
    errors_with(capsys, ["evaluate", str(tmp_path / "cut.safetensors")], r"not a safetensors file")


def test_data_info_and_verify(synth, capsys):
    assert main(["data", "info", "--dataset", "synth"]) == 0
    out = capsys.readouterr().out
    assert out.count("DENSA_DATA_DIR") == 4
    assert main(["data", "verify", "--dataset", "synth"]) == 0
    assert capsys.readouterr().out.count(" ok ") == 4


def test_help_is_fast_and_shows_defaults():
    r = subprocess.run([sys.executable, "-m", "densa", "train", "--help"], capture_output=True, text=True)
    assert "(default: 128)" in r.stdout and "(default: 0.001)" in r.stdout and "(default: 5)" in r.stdout
    assert "(default: 512)" in r.stdout and "(default: seed)" in r.stdout
    assert re.search(r"^  mlp   hidden=1024,1024 ", r.stdout, re.M) and re.search(
        r"^  cnn   model=cnn", r.stdout, re.M
    )
    code = "import sys, densa, densa.cli; densa.cli.build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr


def test_console_script_and_module(tmp_path):
    r = subprocess.run([sys.executable, "-m", "densa", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"densa {densa.__version__}"


def test_train_option_errors(synth, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "synth", "--out", str(out)]
    errors_with(capsys, [*argv, "--early-stop", "2"], r"early stopping watches the val loss; add --val-split")
    errors_with(capsys, [*argv, "--optimizer", "sgd", "--nesterov", "--momentum", "0"], r"Nesterov needs")
    if not torch.cuda.is_available():
        errors_with(
            capsys, [*argv, "--device", "cuda"], r"--device cuda is not available here .*--device cpu"
        )
    from densa.core import device

    monkeypatch.setattr(device, "cpu_flags", lambda *a: {"avx2", "fma"})
    monkeypatch.delenv(device.FORCE_BF16_ENV, raising=False)
    errors_with(
        capsys, [*argv, "--precision", "bf16", "--device", "cpu"], r"--precision bf16 is not supported here"
    )
    assert not out.exists()  # refused before anything was written


def test_preset_values_and_explicit_flags(synth, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "synth", "--preset", "mlp", "--hidden", "32", "--epochs", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "preset: mlp · device: cpu · precision: fp32" in capsys.readouterr().out
    meta = densa.load(out).meta
    assert meta["model"]["hidden"] == [32] and meta["train"]["epochs"] == 1  # the flags
    preset = densa.PRESETS["mlp"]  # the preset's values
    assert meta["model"]["dropout"] == preset["dropout"] and meta["train"]["optimizer"] == preset["optimizer"]
    assert meta["train"]["batch_size"] == preset["batch_size"]
    assert meta["train"]["preset"] == "mlp" and meta["train"]["precision_used"] == "fp32"
