"""Hostile or inconsistent metadata in model files ends in one line naming the file and the field.

Each case rewrites a real file with edited metadata: model.safetensors (safetensors' save_file on the
tiny_run checkpoint's tensors), an export by `densa export --onnx` (onnx's metadata_props) and a
checkpoint.pt from `densa train` (save_state, so its digest is valid). Every command that opens such a
file, and the Python API, must refuse it with one line and exit 1, before building a model.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from PIL import Image, ImageDraw

import densa
from densa.cli import main
from densa.core import data
from densa.core.checkpoint import load_state, save_state
from densa.core.errors import DensaError

TAIL = "the file is damaged or not written by densa"

# (case id, key of the safetensors metadata, new raw JSON text or a function of the decoded value, field)
SAFETENSORS_CASES = [
    ("model-not-object", "model", "5", "model"),
    ("hidden-string", "model", lambda m: {**m, "hidden": "abc"}, "model.hidden"),
    ("hidden-huge", "model", lambda m: {**m, "hidden": [10**12]}, "model.hidden"),
    ("hidden-too-many", "model", lambda m: {**m, "hidden": [16] * 17}, "model.hidden"),
    ("classes-huge-count", "model", lambda m: {**m, "num_classes": 10**9}, "model.num_classes"),
    ("dropout-nan", "model", lambda m: {**m, "dropout": math.nan}, "model.dropout"),
    ("normalize-string", "model", lambda m: {**m, "normalize": "ab"}, "model.normalize"),
    ("normalize-zero-std", "model", lambda m: {**m, "normalize": [0.1, 0]}, "model.normalize"),
    ("dataset-empty", "dataset", "{}", "dataset.name"),
    ("dataset-null", "dataset", "null", "dataset"),
    ("classes-not-list", "dataset", lambda d: {**d, "classes": "0123456789"}, "dataset.classes"),
    ("three-classes", "dataset", lambda d: {**d, "classes": ["a", "b", "c"]}, "dataset.classes"),
    ("unknown-rule", "dataset", lambda d: {**d, "preprocess": "nope"}, "dataset.preprocess"),
    ("versions-list", "versions", "[]", "versions"),
]


def errors_with(capsys, argv, *parts):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("densa: error: "), err
    for part in parts:
        assert part in err, err
    return err


def edit(meta: dict, key: str, change) -> None:
    meta[key] = change if isinstance(change, str) else json.dumps(change(json.loads(meta[key])))


def safetensors_with(src, dst, key, change):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata())
    edit(meta, key, change)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "seven.png"
    im = Image.new("RGB", (200, 240), (245, 240, 225))
    ImageDraw.Draw(im).line([(40, 40), (160, 40), (90, 210)], fill=(20, 20, 60), width=14)
    im.save(path)
    return path


@pytest.fixture
def no_server(monkeypatch):
    """`densa serve` must fail while opening the file: reaching uvicorn.run is a failure, not a hang."""
    import uvicorn

    def refuse(*args, **kwargs):
        raise AssertionError("densa serve started a server on a bad file")

    monkeypatch.setattr(uvicorn, "run", refuse)


def commands(path, image, tmp_path) -> dict[str, list[str]]:
    return {
        "predict": ["predict", str(path), str(image)],
        "evaluate": ["evaluate", str(path)],
        "export": ["export", str(path), "--onnx", str(tmp_path / "out.onnx")],
        "report": ["report", str(path), "--out", str(tmp_path / "report")],
        "serve": ["serve", str(path), "--port", "1"],
    }


@pytest.mark.parametrize("case", SAFETENSORS_CASES, ids=[c[0] for c in SAFETENSORS_CASES])
def test_safetensors_metadata_is_refused_by_every_command(case, tiny_run, image, tmp_path, capsys, no_server):
    _, key, change, name = case
    bad = safetensors_with(
        tiny_run / "model.safetensors", tmp_path / "run" / "model.safetensors", key, change
    )
    line = f"{bad}: metadata field {name} must be "
    with pytest.raises(DensaError) as e:
        densa.load(bad)
    assert str(e.value).startswith(line) and str(e.value).endswith(TAIL) and "\n" not in str(e.value)
    for command, argv in commands(bad, image, tmp_path).items():
        errors_with(capsys, argv, line, TAIL)
        assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "report").exists(), command
    errors_with(capsys, ["report", str(bad.parent)], line)  # the run folder, as `densa report RUN` takes it


def test_weights_unlike_their_metadata_are_refused_before_the_model_is_built(tiny_run, tmp_path, capsys):
    """Within the limits, but 2 x 65536 units would be 17 GB of floats: the header's shapes say no first."""
    change = lambda m: {**m, "hidden": [65536, 65536]}  # noqa: E731
    bad = safetensors_with(tiny_run / "model.safetensors", tmp_path / "m.safetensors", "model", change)
    for argv in (["evaluate", str(bad)], ["export", str(bad), "--onnx", str(tmp_path / "m.onnx")]):
        errors_with(
            capsys,
            argv,
            f"{bad}: its weights do not match the architecture its metadata describes",
            "net.0.weight is [16, 784]",
        )
    with pytest.raises(DensaError, match=r"net\.0\.weight is \[16, 784\], not \[65536, 784\]"):
        densa.load(bad)


def test_unedited_copy_still_loads(tiny_run, tmp_path):
    copy = safetensors_with(tiny_run / "model.safetensors", tmp_path / "m.safetensors", "train", lambda t: t)
    ckpt = densa.load(copy)
    assert len(ckpt.classes) == 10 and ckpt.config.hidden == (16,)
    assert ckpt.meta["dataset"]["preprocess"] == "mnist"


# --------------------------------------------------------------------------- ONNX

ONNX_CASES = [
    ("classes-not-list", "densa.classes", '"0123456789"', "densa.classes"),
    ("classes-dict", "densa.classes", '{"a": 1}', "densa.classes"),
    ("three-classes", "densa.classes", '["a", "b", "c"]', "densa.classes"),
    ("classes-disagree", "densa.classes", json.dumps([str(9 - i) for i in range(10)]), "densa.classes"),
    ("unknown-rule", "densa.preprocess", "nope", "densa.preprocess"),
    ("model-not-object", "densa.model", "5", "densa.model"),
    ("model-name-number", "densa.model", '{"model": 5}', "densa.model.model"),
    ("dataset-null", "densa.dataset", "null", "densa.dataset"),
    ("dataset-empty", "densa.dataset", "{}", "densa.dataset.name"),
    ("model-id-empty", "densa.model_id", "", "densa.model_id"),
]


@pytest.fixture(scope="module")
def onnx_file(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert main(["export", str(tiny_run), "--onnx", str(out)]) == 0
    return out


def onnx_with(src, dst, key, value):
    import onnx

    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    props[key] = value
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize("case", ONNX_CASES, ids=[c[0] for c in ONNX_CASES])
def test_onnx_metadata_is_refused_by_every_command(case, onnx_file, image, tmp_path, capsys, no_server):
    _, key, value, name = case
    bad = onnx_with(onnx_file, tmp_path / "bad.onnx", key, value)
    line = f"{bad}: metadata field {name} must be "
    with pytest.raises(DensaError) as e:
        densa.OnnxPredictor(bad)
    assert str(e.value).startswith(line) and "\n" not in str(e.value)
    for command in ("predict", "evaluate", "serve"):
        errors_with(capsys, commands(bad, image, tmp_path)[command], line, TAIL)


def test_unedited_onnx_copy_still_opens(onnx_file, tmp_path):
    copy = onnx_with(onnx_file, tmp_path / "copy.onnx", "densa.preprocess", "mnist")
    predictor = densa.OnnxPredictor(copy)
    assert len(predictor.classes) == 10 and predictor.preprocess == "mnist"


# --------------------------------------------------------------------------- checkpoint.pt (resume state)


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """The resume state `densa train` saved after one epoch on the synthetic dataset."""
    from synthetic import write_dataset

    root = tmp_path_factory.mktemp("state")
    out = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(data.DATASETS, "synth", write_dataset(root / "data", "synth"))
        mp.setenv("DENSA_DATA_DIR", str(root / "data"))
        assert (
            main(["train", "--dataset", "synth", "--epochs", "1", "--hidden", "16", "--out", str(out)]) == 0
        )
    return load_state(out)


def _without(name):
    return lambda s: {k: v for k, v in s.items() if k != name}


STATE_CASES = [
    ("no-model-config", _without("model_config"), "metadata field model_config must be"),
    ("model-config-list", lambda s: {**s, "model_config": [1]}, "metadata field model_config must be"),
    (
        "hidden-string",
        lambda s: {**s, "model_config": {**s["model_config"], "hidden": "abc"}},
        "metadata field model_config.hidden must be",
    ),
    (
        "hidden-huge",
        lambda s: {**s, "model_config": {**s["model_config"], "hidden": [10**12]}},
        "metadata field model_config.hidden must be",
    ),
    (
        "lr-string",
        lambda s: {**s, "train_config": {**s["train_config"], "lr": "fast"}},
        "metadata field train_config.lr must be",
    ),
    (
        "epochs-zero",
        lambda s: {**s, "train_config": {**s["train_config"], "epochs": 0}},
        "metadata field train_config is invalid",
    ),
    ("no-epoch", _without("epoch"), "metadata field epoch must be"),
    ("epoch-string", lambda s: {**s, "epoch": "1"}, "metadata field epoch must be"),
    ("epoch-ahead", lambda s: {**s, "epoch": 7}, "metadata field epoch must be"),
    ("history-none", lambda s: {**s, "history": None}, "metadata field history must be"),
    ("unknown-preset", lambda s: {**s, "preset": "huge"}, "metadata field preset must be"),
    ("no-optimizer", _without("optimizer"), "metadata field optimizer must be"),
    ("generator-short", lambda s: {**s, "generator": torch.zeros(3, dtype=torch.uint8)}, "field generator"),
    ("perm-missing", lambda s: {**s, "step": 3, "perm": None}, "metadata field perm must be"),
    ("perm-repeats", lambda s: {**s, "step": 3, "perm": torch.zeros(100, dtype=torch.int64)}, "field perm"),
    (
        "weights-other-model",
        lambda s: {**s, "model_config": {**s["model_config"], "hidden": [32]}},
        "its weights do not match the architecture its metadata describes",
    ),
    (
        "optimizer-other-model",
        lambda s: {**s, "optimizer": {**s["optimizer"], "param_groups": []}},
        "metadata field optimizer must be",
    ),
    # weights_only refuses to unpickle anything but tensors and plain containers
    ("pickled-object", lambda s: {**s, "preset": argparse.Namespace(x=1)}, "holds a state densa cannot read"),
]


@pytest.mark.parametrize("case", STATE_CASES, ids=[c[0] for c in STATE_CASES])
def test_resume_state_with_wrong_fields_is_refused(case, state, tmp_path, capsys):
    _, change, message = case
    run = tmp_path / "run"
    run.mkdir()
    save_state(run / "checkpoint.pt", change(dict(state)))  # a valid digest: only the fields are wrong
    with pytest.raises(DensaError) as e:
        load_state(run)
    assert str(e.value).startswith(f"{run / 'checkpoint.pt'}") and message in str(e.value)
    errors_with(capsys, ["train", "--resume", str(run)], f"{run / 'checkpoint.pt'}", message)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]  # nothing written, nothing removed


def test_unedited_state_still_loads(state, tmp_path):
    save_state(tmp_path / "checkpoint.pt", state)
    again = load_state(tmp_path / "checkpoint.pt")
    assert again["epoch"] == 1 and list(again["model_config"]["hidden"]) == [16]
    mid_epoch = {**state, "step": 3, "perm": torch.randperm(100)}  # as Ctrl-C saves it mid-epoch
    save_state(tmp_path / "checkpoint.pt", mid_epoch)
    assert load_state(tmp_path / "checkpoint.pt")["step"] == 3


def test_states_of_other_recipes_still_load(synth, tmp_path, capsys):
    """A CNN (BatchNorm buffers), SGD with momentum, a val split and early stopping: all pass the checks."""
    out = tmp_path / "cnn"
    argv = [
        "train",
        "--dataset",
        "synth",
        "--model",
        "cnn",
        "--channels",
        "4",
        "--hidden",
        "8",
        "--epochs",
        "2",
    ]
    argv += ["--optimizer", "sgd", "--momentum", "0.9", "--val-split", "0.2", "--early-stop", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    state = load_state(out)
    assert state["model_config"]["model"] == "cnn" and state["optimizer"]["state"]
    assert densa.load(out).config.channels == (4,)
