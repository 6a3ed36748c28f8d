"""ONNX export: onnxruntime against torch (the oracle), the torch-free predictor, the CLI, bad files."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import densa
from densa.cli import main
from densa.core.checkpoint import build_meta, dataset_meta
from densa.core.config import ModelConfig
from densa.core.data import DATASETS
from densa.core.models import build_model
from densa.inference.onnx_file import TOLERANCE, OnnxPredictor, export_onnx

ONNX_PAGE = Path(__file__).resolve().parent.parent / "docs" / "onnx.md"


def mnist_meta(config: ModelConfig | None = None) -> dict:
    return build_meta(config or ModelConfig(), dataset_meta(DATASETS["mnist"]))


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 28, 28, generator=torch.Generator().manual_seed(seed))


def assert_parity(model: nn.Module, predictor: OnnxPredictor, sizes=(1, 7, 10_000)):
    """onnxruntime's probabilities vs torch's, each batch in one call, within TOLERANCE."""
    model.eval()
    for n in sizes:
        x = images(n, seed=n)
        with torch.no_grad():
            want = torch.softmax(model(x), dim=1).numpy()
        got = predictor.predict_proba(x.numpy())
        assert got.shape == want.shape == (n, 10) and got.dtype == np.float32
        assert np.abs(got - want).max() <= TOLERANCE, (n, np.abs(got - want).max())
        assert np.array_equal(got.argmax(1), want.argmax(1))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small MLP exported once for the tests that only read the file."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=(32,)))
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    export_onnx(model, path, mnist_meta(ModelConfig(hidden=(32,))))
    return path, model.eval()


def test_mlp_parity_eval_mode_and_options(tmp_path):
    """GELU, dropout and in-model normalisation; exported from training mode, which comes back after."""
    config = ModelConfig(hidden=(64, 32), activation="gelu", dropout=0.5, normalize=(0.1307, 0.3081))
    torch.manual_seed(1)
    model = build_model(config).train()
    summary = export_onnx(model, tmp_path / "m.onnx", mnist_meta(config))
    assert model.training  # restored
    assert summary["bytes"] == (tmp_path / "m.onnx").stat().st_size and summary["max_abs_diff"] <= TOLERANCE
    predictor = OnnxPredictor(tmp_path / "m.onnx")
    assert_parity(model, predictor)  # dropout active in the file would break this
    x = (images(5) * 255).to(torch.uint8)
    assert np.array_equal(
        predictor.predict_proba(x.numpy()), predictor.predict_proba(x.numpy() / np.float32(255))
    )
    assert np.array_equal(predictor.predict(x.numpy()), densa.predict(model, x).numpy())


class SmallCNN(nn.Module):
    """The layer kinds of densa's CNN: Conv2d, BatchNorm, ReLU, MaxPool, Linear on 1x28x28."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        return self.head(self.features(x.reshape(-1, 1, 28, 28)).flatten(1))


def test_conv_parity(tmp_path):
    torch.manual_seed(2)
    model = SmallCNN()
    with torch.no_grad():  # give BatchNorm running statistics that are not the identity
        for seed in range(3):
            model(images(64, seed) * 2 + 0.5)
    meta = mnist_meta()
    meta["model"] = {"model": "smallcnn"}
    export_onnx(model.eval(), tmp_path / "cnn.onnx", meta)
    assert not torch.allclose(model.features[1].running_var, torch.ones(8))
    predictor = OnnxPredictor(tmp_path / "cnn.onnx")
    assert predictor.model_id.startswith("mnist-smallcnn@")
    assert_parity(model, predictor)


def test_metadata_and_dynamic_batch(small):
    path, _ = small
    p = OnnxPredictor(path)
    assert p.classes == list("0123456789") and p.preprocess == "mnist"
    assert re.fullmatch(r"mnist-mlp@[0-9a-f]{12}", p.model_id)
    assert p.meta["model"]["hidden"] == [32] and p.meta["dataset"]["name"] == "mnist"
    assert p.meta["export"]["opset"] == 20 and p.meta["export"]["versions"]["densa"] == densa.__version__
    assert p.meta["input"]["dtype"] == "float32" and p.meta["input"]["range"] == [0, 1]
    proto = onnx.load(str(path))
    props = {m.key: m.value for m in proto.metadata_props}
    assert props["densa.version"] == densa.__version__ and json.loads(props["densa.classes"]) == p.classes
    assert props["densa.preprocess"] == "mnist" and props["densa.format"] == "densa.onnx.v1"
    assert [(o.domain, o.version) for o in proto.opset_import if o.domain == ""] == [("", 20)]
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "images" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [28, 28]
    assert [o.name for o in proto.graph.output] == ["probabilities", "logits"]
    assert not any(n.op_type == "Dropout" for n in proto.graph.node)
    assert p.predict_proba(np.zeros((0, 28, 28), np.float32)).shape == (0, 10)


def test_wrong_class_count_writes_nothing(tmp_path):
    model = densa.MLP([784, 16, 5])
    with pytest.raises(densa.DensaError, match=r"gives \(1, 5\) outputs .* lists 10 classes"):
        export_onnx(model, tmp_path / "m.onnx", mnist_meta())
    assert list(tmp_path.iterdir()) == []


def test_cli_help_imports_no_onnx_packages():
    code = "import sys, densa, densa.cli; densa.cli.build_parser(); densa.OnnxPredictor; "
    code += "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'onnxscript') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stderr


def test_predictor_rejects_bad_arrays(small):
    p = OnnxPredictor(small[0])
    with pytest.raises(densa.DensaError, match=r"shape \(N, 28, 28\), got \(3, 784\)"):
        p.predict_proba(np.zeros((3, 784), np.float32))
    with pytest.raises(densa.DensaError, match=r"\[0, 1\].*0 to 255"):
        p.predict_proba(np.full((2, 28, 28), 255.0, np.float32) * (np.arange(2) > 0)[:, None, None])
    with pytest.raises(densa.DensaError, match="dtype int32"):
        p.predict_proba(np.zeros((1, 28, 28), np.int32))


def test_predictor_needs_no_torch(small, tmp_path):
    """The deployment promise: densa.export + OnnxPredictor in a process that never imports torch."""
    path, model = small
    x = images(7).numpy()
    np.save(tmp_path / "x.npy", x)
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from densa.inference.onnx_file import OnnxPredictor
        p = OnnxPredictor({str(path)!r})
        np.save({str(tmp_path / "p.npy")!r}, p.predict_proba(np.load({str(tmp_path / "x.npy")!r})))
        print(sorted(m for m in ("torch", "onnx", "onnxscript") if m in sys.modules))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    assert np.abs(np.load(tmp_path / "p.npy") - want).max() <= TOLERANCE


def readme_snippet() -> str:
    text = ONNX_PAGE.read_text()
    m = re.search(r"<!-- onnx-snippet -->\s*```python\n(.*?)```", text, re.S)
    assert m, "docs/onnx.md lost its onnxruntime snippet (after <!-- onnx-snippet -->)"
    return m.group(1)


def test_readme_snippet_runs_as_written(small, tmp_path):
    """The three lines of docs/onnx.md, pasted into a torch-free process with a model.onnx beside it."""
    path, model = small
    snippet = readme_snippet()
    assert len(snippet.strip().splitlines()) == 3
    (tmp_path / "model.onnx").write_bytes(path.read_bytes())
    x = images(4).numpy()
    np.save(tmp_path / "images.npy", x)
    code = "import numpy as np\nimages = np.load('images.npy')\n" + snippet + "np.save('probs.npy', probs)\n"
    code += "import sys\nassert 'torch' not in sys.modules\n"
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    assert np.abs(np.load(tmp_path / "probs.npy") - want).max() <= TOLERANCE


# --------------------------------------------------------------------------- the command line


def errors_with(capsys, argv, match):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("densa: error: ") and re.search(match, err), err


@pytest.fixture
def exported(synth, tmp_path, capsys):
    """A 1-epoch synthetic run and its export through the CLI."""
    run, out = tmp_path / "run", tmp_path / "model.onnx"
    assert main(["train", "--dataset", "synth", "--epochs", "1", "--out", str(run)]) == 0
    assert main(["export", str(run), "--onnx", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(
        r"^exported .*model\.safetensors -> .*model\.onnx \(\d+\.\d\d MB, opset 20, ", text, re.M
    )
    assert re.search(r"^verified: onnxruntime matches torch within \d\.\de-\d\d", text, re.M)
    return run, out


def test_cli_evaluate_and_predict_match_the_run(exported, capsys):
    run, out = exported
    results = []
    for path in (run, out):
        assert main(["evaluate", str(path), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    torch_r, onnx_r = results
    assert onnx_r["n"] == torch_r["n"] == 300 and onnx_r["correct"] == torch_r["correct"]
    assert abs(onnx_r["loss"] - torch_r["loss"]) < 1e-5 and onnx_r["run"] == str(out)
    assert main(["evaluate", str(out)]) == 0
    assert "(mlp via onnxruntime, trained on synth; synth test split)" in capsys.readouterr().out

    for i in (0, 5, 299):
        preds = []
        for path in (run, out):
            assert main(["predict", str(path), "--test-index", str(i), "--json"]) == 0
            preds.append(json.loads(capsys.readouterr().out))
        a, b = preds
        assert a["predicted"] == b["predicted"] and a["label"] == b["label"]
        assert (
            max(abs(a["probabilities"][c] - b["probabilities"][c]) for c in a["probabilities"]) <= TOLERANCE
        )
    assert main(["predict", str(out), "--test-index", "299"]) == 0
    text = capsys.readouterr().out
    assert (
        f"predictions[299].argmax() = {b['predicted']}" in text and f"test_labels[299] = {b['label']}" in text
    )
    errors_with(capsys, ["predict", str(out), "--test-index", "300"], r"--test-index 300 is out of range")


def test_cli_export_refuses_to_overwrite(exported, tmp_path, capsys):
    run, out = exported
    before = out.read_bytes()
    errors_with(
        capsys, ["export", str(run), "--onnx", str(out)], rf"{re.escape(str(out))} already exists; .*--force"
    )
    assert out.read_bytes() == before
    assert main(["export", str(run), "--onnx", str(out), "--force"]) == 0
    assert OnnxPredictor(out).model_id == OnnxPredictor(tmp_path / "model.onnx").model_id
    errors_with(
        capsys, ["export", str(run), "--onnx", str(tmp_path / "m.txt")], r"m\.txt: .*must end in \.onnx"
    )
    errors_with(
        capsys, ["export", str(tmp_path / "nope"), "--onnx", str(tmp_path / "n.onnx")], r"nope does not exist"
    )
    (tmp_path / "dir.onnx").mkdir()
    errors_with(capsys, ["export", str(run), "--onnx", str(tmp_path / "dir.onnx")], r"dir\.onnx is a folder")
    assert sorted(p.name for p in tmp_path.glob("*.onnx*")) == ["dir.onnx", "model.onnx"]  # no temp files


def test_cli_bad_onnx_files(small, tmp_path, capsys):
    blob = small[0].read_bytes()
    bad = {
        "half.onnx": blob[: len(blob) // 2],
        "head.onnx": blob[:100],
        "tail.onnx": blob[:-7],
        "text.onnx": b"this is not an onnx model\n" * 20,
        "empty.onnx": b"",
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        for argv in (
            ["evaluate", str(tmp_path / name)],
            ["predict", str(tmp_path / name), "--test-index", "0"],
        ):
            errors_with(
                capsys, argv, rf"{re.escape(str(tmp_path / name))}.*(not a readable ONNX|not a densa)"
            )
    errors_with(capsys, ["evaluate", str(tmp_path / "missing.onnx")], r"missing\.onnx does not exist")
    # a valid ONNX model that densa did not write
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [x],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "other.onnx"))
    errors_with(
        capsys,
        ["evaluate", str(tmp_path / "other.onnx")],
        r"other\.onnx is an ONNX model but not a densa export",
    )


def test_missing_extra_names_the_install_command(small, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(densa.DensaError, match=r"onnxruntime is not installed.*pip install 'densa\[onnx\]'"):
        OnnxPredictor(small[0])
    errors_with(capsys, ["predict", str(small[0]), "--test-index", "0"], r"pip install 'densa\[onnx\]'")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    errors_with(
        capsys, ["export", str(tmp_path), "--onnx", str(tmp_path / "o.onnx")], r"onnxscript is not installed"
    )


# --------------------------------------------------------------------------- the real data


@pytest.mark.realdata
@pytest.mark.slow
def test_parity_on_real_mnist(real_mnist, tmp_path):
    """The default recipe for one epoch: onnxruntime gives torch's probabilities on the whole test set."""
    ds = real_mnist
    torch.manual_seed(0)
    model = build_model(ModelConfig())
    densa.train(model, ds.train_images, ds.train_labels, epochs=1, seed=0)
    export_onnx(model, tmp_path / "mnist.onnx", build_meta(ModelConfig(), dataset_meta(ds.spec)))
    predictor = OnnxPredictor(tmp_path / "mnist.onnx")
    x = ds.test_images.float() / 255
    with torch.no_grad():
        want = torch.softmax(model(x), dim=1).numpy()
    worst = {}
    for n in (1, 7, 10_000):
        got = predictor.predict_proba(ds.test_images[:n].numpy())  # uint8 in, one call of n images
        worst[n] = float(np.abs(got - want[:n]).max())
        assert worst[n] <= TOLERANCE, worst
    assert np.array_equal(got.argmax(1), want.argmax(1))  # all 10,000 test images
    r_onnx = predictor.evaluate(ds.test_images.numpy(), ds.test_labels.numpy())
    r_torch = densa.evaluate(model, ds.test_images, ds.test_labels)
    assert r_onnx["correct"] == r_torch["correct"] and abs(r_onnx["loss"] - r_torch["loss"]) < 1e-5
    assert r_torch["acc"] > 0.95
    print(f"onnx parity on MNIST test: max abs diff {worst}, acc {r_onnx['acc']:.4f}")


def test_predict_images_and_serve_an_onnx_file_without_torch(exported, tmp_path, capsys):
    """A deployed service can drop torch: `densa predict IMAGE` and `densa serve` take the .onnx file."""
    from PIL import Image, ImageDraw

    run, out = exported
    img = tmp_path / "seven.png"
    im = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(im).line([(70, 60), (200, 60), (120, 230)], fill=0, width=20)
    im.save(img)
    answers = []
    for path in (run, out):
        assert main(["predict", str(path), str(img), "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    torch_a, onnx_a = answers
    assert onnx_a["model"] == torch_a["model"] == f"run@{torch_a['model'].split('@')[1]}"
    assert onnx_a["predicted"] == torch_a["predicted"]
    for c, p in torch_a["probabilities"].items():
        assert abs(onnx_a["probabilities"][c] - p) <= TOLERANCE

    code = f"""
import sys
from starlette.testclient import TestClient
from densa.inference.predictor import open_predictor
from densa.apps.serve import create_app
with TestClient(create_app(open_predictor({str(out)!r}))) as c:
    body = open({str(img)!r}, "rb").read()
    r = c.post("/api/predict", content=body, headers={{"content-type": "image/png"}})
    health = c.get("/api/health")
print(r.status_code, r.json()["model"], r.json()["predicted"], health.status_code, "torch" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["200", torch_a["model"], str(torch_a["predicted"]), "200", "False"]
