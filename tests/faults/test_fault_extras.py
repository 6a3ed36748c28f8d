"""Missing extras: each optional feature, with its extra blocked, ends in one line with the install
command, before any work (`densa report` without matplotlib ended in a ModuleNotFoundError traceback).

`block` makes `import X` raise ModuleNotFoundError in this process (sys.modules[X] = None), and drops the
densa modules that imported X at their top, so they import again as in a fresh process.
"""

import sys
import types

import pytest

from densa.cli import main


def block(monkeypatch, *names: str) -> None:
    for mod in [*names, *(m for m in sys.modules if m.split(".")[0] in names)]:
        monkeypatch.setitem(sys.modules, mod, None)

    def origin(value) -> str:
        name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        return name.split(".")[0] if isinstance(name, str) else ""

    for name, mod in list(sys.modules.items()):
        if (
            name.startswith("densa.")
            and mod is not None
            and any(origin(v) in names for v in vars(mod).values())
        ):
            monkeypatch.delitem(sys.modules, name)


def hint(capsys, argv, extra):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("densa: error: "), err
    assert f"pip install 'densa[{extra}]'" in err, err


def test_report(tiny_run, tmp_path, capsys, monkeypatch):
    block(monkeypatch, "matplotlib")
    hint(capsys, ["report", str(tiny_run), "--out", str(tmp_path / "r")], "report")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "flag, module, extra",
    [("--report", "matplotlib", "report"), ("--tensorboard", "tensorboard", "tensorboard")],
)
def test_train_fails_before_training(synth, tmp_path, capsys, monkeypatch, flag, module, extra):
    block(monkeypatch, module)
    out = tmp_path / "run"
    hint(
        capsys,
        ["train", "--dataset", "synth", "--epochs", "1", "--hidden", "8", "--out", str(out), flag],
        extra,
    )
    assert not out.exists()


@pytest.mark.parametrize("module", ["onnx", "onnxscript", "onnxruntime"])
def test_export_onnx(tiny_run, tmp_path, capsys, monkeypatch, module):
    block(monkeypatch, module)
    hint(capsys, ["export", str(tiny_run), "--onnx", str(tmp_path / "m.onnx")], "onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("command", [["predict", "--test-index", "0"], ["evaluate"]])
def test_an_onnx_model(tmp_path, capsys, monkeypatch, command):
    block(monkeypatch, "onnxruntime")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not looked at")
    hint(capsys, [command[0], str(model), *command[1:]], "onnx")


def test_predict_on_images(tiny_run, tmp_path, capsys, monkeypatch):
    block(monkeypatch, "PIL")
    (tmp_path / "digit.png").write_bytes(b"not looked at")
    hint(capsys, ["predict", str(tiny_run), str(tmp_path / "digit.png")], "images")
    # --save-input writes PNGs: checked before the test image is looked up
    hint(
        capsys, ["predict", str(tiny_run), "--test-index", "0", "--save-input", str(tmp_path / "s")], "images"
    )
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("module", ["fastapi", "uvicorn", "PIL"])
def test_serve(tmp_path, capsys, monkeypatch, module):
    block(monkeypatch, module)  # checked before the model is loaded: this one does not even exist
    hint(capsys, ["serve", str(tmp_path / "no-run"), "--port", "0"], "serve")


@pytest.mark.parametrize("action", [["--trials", "1"], ["--show"]])
def test_sweep(tmp_path, capsys, monkeypatch, action):
    block(monkeypatch, "optuna")
    hint(capsys, ["sweep", "--out", str(tmp_path / "s"), *action], "sweep")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("action", [["--trials", "1"], ["--show"]])
def test_sweep_on_postgresql(capsys, monkeypatch, action):
    block(monkeypatch, "psycopg")
    hint(capsys, ["sweep", "--storage", "postgresql://densa@127.0.0.1:1/db", *action], "sweep")
