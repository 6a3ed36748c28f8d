"""`densa evaluate`'s per-class output, `densa report`'s figures and page, and `train --report/--tensorboard`.

One weak run (2 epochs at a tiny learning rate, so it makes plenty of mistakes) on a synthetic dataset
is trained once for the module; the numbers are checked against scikit-learn on the model's own
predictions, the PNGs are opened with Pillow and the HTML is read back.
"""

import base64
import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import use_cache
from PIL import Image
from sklearn.metrics import classification_report, confusion_matrix
from synthetic import write_dataset
from torch import nn

import densa
from densa.apps.plots import curves
from densa.apps.report import (
    first_layer,
    read_run,
    recorded_test,
    reliability_caption,
    smoothing_floor,
    val_best_epoch,
    write_report,
)
from densa.cli import main
from densa.core import data

# PNG sizes for a 10-class dataset; they follow from the figure sizes and DPI in densa/plots.py
SIZES = {
    "curves": (560, 720),  # loss above accuracy, narrow enough to stay legible on a phone
    "confusion": (940, 800),
    "mistakes": (1053, 384),  # 30 tiles, 10 per row, 2 caption lines
    "correct": (925, 942),  # 10 classes x 10 images, one-character row labels
    "first_layer": (1458, 402),  # 64 units, 16 per row
    "reliability": (600, 650),
}


@pytest.fixture(scope="module")
def weak(tmp_path_factory, outlier_file):
    """(run folder, data root) of a 2-epoch run at lr 5e-5 on dataset 'synthw': about half right."""
    root = tmp_path_factory.mktemp("weak")
    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, root / "cache", outlier_file)
        spec = write_dataset(root / "data", "synthw", gz=False)
        mp.setitem(data.DATASETS, "synthw", spec)
        out = root / "run"
        argv = ["train", "--dataset", "synthw", "--data-dir", str(root / "data"), "--epochs", "2"]
        assert main([*argv, "--lr", "5e-5", "--out", str(out)]) == 0
        yield out, root / "data"


def test_evaluate_json_agrees_with_sklearn(weak, capsys):
    run, root = weak
    assert main(["evaluate", str(run), "--json", "--data-dir", str(root)]) == 0
    r = json.loads(capsys.readouterr().out)
    ds = data.load_dataset("synthw", root)
    preds = densa.predict(densa.load(run).model, ds.test_images).numpy()
    y = ds.test_labels.numpy()
    assert 0.2 < r["acc"] < 0.95, "the weak run should be partly right"
    assert r["confusion"] == confusion_matrix(y, preds, labels=range(10)).tolist()
    ref = classification_report(
        y, preds, labels=range(10), target_names=list(ds.classes), output_dict=True, zero_division=0
    )
    for row in r["per_class"]:
        assert row["precision"] == pytest.approx(ref[row["class"]]["precision"], abs=1e-12)
        assert row["recall"] == pytest.approx(ref[row["class"]]["recall"], abs=1e-12)
        assert row["f1"] == pytest.approx(ref[row["class"]]["f1-score"], abs=1e-12)
        assert row["support"] == ref[row["class"]]["support"]
    assert r["macro_avg"]["f1"] == pytest.approx(ref["macro avg"]["f1-score"], abs=1e-12)
    assert r["weighted_avg"]["recall"] == pytest.approx(ref["weighted avg"]["recall"], abs=1e-12)
    assert r["correct"] == int((preds == y).sum()) and r["n"] == 300 and r["split"] == "test"
    assert 0 <= r["calibration"]["ece"] <= 1 and sum(b["count"] for b in r["calibration"]["bins"]) == 300


def test_evaluate_text_shows_table_and_matrix(weak, capsys):
    run, root = weak
    assert main(["evaluate", str(run), "--json", "--data-dir", str(root)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(run), "--data-dir", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"test_loss: {r['loss']:.4f}" in lines
    assert f"test_acc: {r['acc']:.4f} ({r['correct']}/300)" in lines
    head = [line.split() for line in lines].index(["class", "precision", "recall", "f1-score", "support"])
    for i, row in enumerate(r["per_class"]):
        assert lines[head + 1 + i].split() == [
            row["class"],
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            str(row["support"]),
        ]
    top = lines.index("confusion matrix (rows: true class, columns: predicted class)")
    assert lines[top + 1].split()[-10:] == [str(k) for k in range(10)]
    matrix = [[int(v) for v in line.split()[1:]] for line in lines[top + 2 : top + 12]]
    assert matrix == r["confusion"]


def test_evaluate_other_split_and_dataset(weak, tmp_path, monkeypatch, capsys):
    run, root = weak
    assert main(["evaluate", str(run), "--split", "train", "--json", "--data-dir", str(root)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["split"] == "train" and r["n"] == 1000 and sum(map(sum, r["confusion"])) == 1000
    other = write_dataset(tmp_path, "synth2", n_train=50, n_test=40, seed=7)
    monkeypatch.setitem(data.DATASETS, "synth2", other)
    assert main(["evaluate", str(run), "--dataset", "synth2", "--json", "--data-dir", str(tmp_path)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["dataset"] == "synth2" and r["n"] == 40
    monkeypatch.setitem(data.DATASETS, "synth3", replace(other, name="synth3", classes=("a", "b", "c")))
    shutil.copytree(tmp_path / "synth2", tmp_path / "synth3")
    assert main(["evaluate", str(run), "--dataset", "synth3", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "predicts 10 classes but dataset 'synth3' has 3" in err
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(run), "--split", "val"])
    assert e.value.code == 2


def check_png(path, size):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size, (path.name, im.size)
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.var() > 200, f"{path.name} looks blank (pixel variance {pixels.var():.0f})"


def check_html(page, pngs):
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text.lower()
    sources = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', text)
    anchors = [s for s in sources if s.startswith("#")]  # the table of contents, into the page itself
    ids = set(re.findall(r"<section id='([^']+)'", text))
    assert anchors and {a[1:] for a in anchors} == ids, "one contents entry per section, each one found"
    sources = [s for s in sources if not s.startswith("#")]
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert embedded == {p.read_bytes() for p in pngs}, "every figure, and only those, is in the page"
    return text


def test_report_figures_and_page(weak, tmp_path, capsys):
    run, root = weak
    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out), "--data-dir", str(root)]) == 0
    assert "wrote report to" in capsys.readouterr().out
    pngs = sorted(out.glob("*.png"))
    assert {p.stem for p in pngs} == set(SIZES)
    for p in pngs:
        check_png(p, SIZES[p.stem])
    text = check_html(out / "index.html", pngs)
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in pngs), "index.html"])
    meta = densa.load(run).meta
    assert f"<td>{meta['versions']['torch']}</td>" in text and "Linear(in_features=784" in text
    assert "expected calibration error" in text and "<div class='note'>" not in text
    # an MLP's settings without the CNN's channels or SGD's momentum; no smoothing, so nothing about it
    assert "<th>hidden</th>" in text and "<th>optimizer</th>" in text
    assert "<th>channels</th>" not in text and "<th>momentum</th>" not in text
    assert "id='smoothing'" not in text and "best epoch" not in text
    # the default folder is RUN/report/
    write_report(run, data_dir=root, log=lambda s: None)
    assert (run / "report" / "index.html").is_file()


def test_report_of_an_interrupted_run(weak, tmp_path, capsys):
    run, root = weak
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(run / "metrics.jsonl", part)  # training stopped before the model was saved
    assert main(["report", str(part), "--data-dir", str(root)]) == 0
    pngs = list((part / "report").glob("*.png"))
    assert [p.stem for p in pngs] == ["curves"]
    check_png(pngs[0], SIZES["curves"])
    text = check_html(part / "report" / "index.html", pngs)
    assert "model.safetensors is missing" in text and "summary.json is missing" in text

    nometrics = tmp_path / "nometrics"
    nometrics.mkdir()
    shutil.copy(run / "model.safetensors", nometrics)
    assert main(["report", str(nometrics), "--data-dir", str(root)]) == 0
    pngs = sorted((nometrics / "report").glob("*.png"))
    assert {p.stem for p in pngs} == set(SIZES) - {"curves"}
    text = check_html(nometrics / "report" / "index.html", pngs)
    assert "metrics.jsonl is missing: no training curves" in text

    shutil.copy(run / "model.safetensors", tmp_path / "loose.safetensors")
    assert main(["report", str(tmp_path / "loose.safetensors"), "--data-dir", str(root)]) == 0
    pngs = sorted((tmp_path / "loose-report").glob("*.png"))
    assert {p.stem for p in pngs} == set(SIZES) - {"curves"}
    assert (
        "only the checkpoint loose.safetensors was given"
        in (tmp_path / "loose-report/index.html").read_text()
    )

    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a densa run folder" in err


def test_missing_extras_say_how_to_install(weak, tmp_path, monkeypatch, capsys):
    run, root = weak
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'densa[report]'" in err
    assert not (tmp_path / "r").exists()
    for flag, extra in (("--report", "report"), ("--tensorboard", "tensorboard")):
        argv = ["train", "--dataset", "synthw", "--data-dir", str(root), flag, "--out", str(tmp_path / "t")]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pip install 'densa[{extra}]'" in err
        assert not (tmp_path / "t").exists(), "checked before training, not after"


def test_train_with_report_and_tensorboard(weak, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, root = weak
    out = tmp_path / "run"
    argv = ["train", "--dataset", "synthw", "--data-dir", str(root), "--epochs", "2", "--out", str(out)]
    assert main([*argv, "--report", "--tensorboard"]) == 0
    assert "wrote report to" in capsys.readouterr().out
    assert (out / "report" / "index.html").is_file() and len(list((out / "report").glob("*.png"))) >= 5
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert {"train/loss", "train/acc", "test/loss", "test/acc"} <= set(acc.Tags()["scalars"])
    for tag, key in (("train/loss", "loss"), ("train/acc", "acc")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([r[key] for r in records], rel=1e-6)
    assert acc.Scalars("test/acc")[0].value == pytest.approx(summary["test_acc"], rel=1e-6)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temp files left behind"


def test_curves_read_metrics_generically():
    records = [
        {"epoch": 1, "loss": 0.9, "acc": 0.7, "val_loss": 1.0, "val_acc": 0.65, "lr": 1e-3},
        {"epoch": 2, "loss": 0.5, "acc": 0.85, "val_loss": 0.7, "val_acc": 0.8, "lr": 5e-4},
        {"epoch": 3, "loss": 0.3, "acc": 0.9, "val_loss": 0.8, "val_acc": 0.78},
    ]
    fig = curves(records, best_epoch=2)
    loss_ax, acc_ax = fig.axes
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["train", "validation", "best epoch 2"]
    assert list(acc_ax.lines[1].get_ydata()) == [0.65, 0.8, 0.78]
    assert curves([{"epoch": 1, "time": 2.0}]) is None
    fig = curves(
        records, test={"epoch": 2, "loss": 0.75, "acc": 0.79}, train_label="train (smoothed targets)"
    )
    loss_ax, acc_ax = fig.axes
    legend = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert legend == ["train (smoothed targets)", "validation", "test 0.7900"], "no best-epoch line"
    star = acc_ax.lines[-1]
    assert star.get_marker() == "*" and list(star.get_xdata()) == [2] and list(star.get_ydata()) == [0.79]
    assert list(loss_ax.lines[-1].get_ydata()) == [0.75]


def test_best_epoch_only_when_validation_chose_it(weak):
    """Without a validation split summary.json still says best_epoch (the last one): no line for it."""
    run, _ = weak
    files, ckpt = read_run(run), densa.load(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == 2 and "val_loss" not in files.records[0]
    assert val_best_epoch(files, ckpt) is None
    assert recorded_test(files, ckpt) == {
        "epoch": 2,
        "loss": summary["test_loss"],
        "acc": summary["test_acc"],
    }
    files.records = [
        {**r, "val_loss": 1.0 - r["epoch"] / 10, "best_epoch": r["epoch"]} for r in files.records
    ]
    assert val_best_epoch(files, ckpt) == 2


def calibration_of(pairs):
    """A calibration dict like core.metrics.calibration's from (confidence, accuracy, count) per bin."""
    bins = [
        {"lo": i / len(pairs), "hi": (i + 1) / len(pairs), "confidence": c, "accuracy": a, "count": n}
        for i, (c, a, n) in enumerate(pairs)
    ]
    return {"ece": sum(n * abs(a - c) for c, a, n in pairs) / sum(n for *_, n in pairs), "bins": bins}


def test_reliability_caption_follows_the_measured_gap():
    under = calibration_of([(0.55, 0.9, 30), (0.75, 0.97, 60), (0.95, 0.94, 10)])
    text = reliability_caption(under, 0.1)
    assert "under-confident: 90% of the images fall in bins whose bars rise above the diagonal" in text
    assert "label smoothing 0.1" in text and "this under-confidence is expected" in text
    over = calibration_of([(0.6, 0.4, 20), (0.99, 0.9, 80)])
    text = reliability_caption(over)
    assert "over-confident: 100% of the images fall in bins whose bars stay below the diagonal" in text
    assert "smoothing" not in text
    close = calibration_of([(0.5, 0.505, 50), (0.9, 0.895, 50)])
    assert "close to calibrated" in reliability_caption(close, 0.1)
    assert "under-confidence is expected" not in reliability_caption(close, 0.1)


def test_smoothing_floor_is_the_entropy_of_the_targets():
    t, floor = smoothing_floor(0.1, 10)
    targets = torch.full((1, 10), 0.01)
    targets[0, 3] = t
    assert t == pytest.approx(0.91)
    logits = targets.log()  # predicting the targets exactly reaches the floor
    assert nn.functional.cross_entropy(
        logits, torch.tensor([3]), label_smoothing=0.1
    ).item() == pytest.approx(floor, rel=1e-6)
    assert smoothing_floor(0.0, 10) == (1.0, 0.0)


class TinyCNN(nn.Module):
    """Stands in for a CNN: its first layer is a Conv2d."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 5)
        self.fc = nn.Linear(8 * 12 * 12, 10)

    def forward(self, x):
        x = x.reshape(-1, 1, 28, 28)
        return self.fc(torch.relu(nn.functional.max_pool2d(self.conv(x), 2)).flatten(1))


def test_first_layer_of_mlp_linear_and_conv():
    torch.manual_seed(0)
    mlp = densa.MLP([784, 100, 10])
    tiles, caps, title = first_layer(mlp, list("0123456789"))
    assert tiles.shape == (64, 28, 28) and caps is None and "units 0-63 of 100" in title
    assert np.array_equal(tiles[5].reshape(-1), mlp.net[0].weight[5].detach().numpy())
    linear = densa.MLP([784, 10])
    tiles, caps, _ = first_layer(linear, list("0123456789"))
    assert tiles.shape == (10, 28, 28) and caps == list("0123456789")
    cnn = TinyCNN()
    tiles, caps, title = first_layer(cnn, list("0123456789"))
    assert tiles.shape == (8, 5, 5) and caps == [str(i) for i in range(8)] and "8 filters, 5x5" in title
    assert np.array_equal(tiles, cnn.conv.weight[:, 0].detach().numpy())


def test_report_of_a_cnn_run(weak, tmp_path, monkeypatch):
    """The whole report for a model whose first layer is a Conv2d (a stand-in for densa's CNN)."""
    from densa.core import checkpoint
    from densa.core.checkpoint import build_meta, dataset_meta

    run, root = weak
    torch.manual_seed(0)
    cnn = TinyCNN()
    monkeypatch.setattr(checkpoint, "build_model", lambda config: TinyCNN())
    monkeypatch.setattr("densa.core.config.MODELS", ("mlp", "cnn", "tinycnn"))  # a model name load accepts
    cfg = densa.ModelConfig(model="tinycnn", hidden=())
    densa.save(
        cnn, tmp_path / "cnn" / "model.safetensors", build_meta(cfg, dataset_meta(data.DATASETS["synthw"]))
    )
    shutil.copy(run / "metrics.jsonl", tmp_path / "cnn")
    page = write_report(tmp_path / "cnn", data_dir=root, log=lambda s: None)
    pngs = sorted(page.parent.glob("*.png"))
    assert {p.stem for p in pngs} == set(SIZES)
    # 8 filters of 5x5 in one row, 17 screen pixels per weight, 2-weight gaps (room for a caption),
    # plus the margins: 12 + 12 across, 34 + 8 down
    check_png(page.parent / "first_layer.png", ((8 * 7 - 2) * 17 + 24, 7 * 17 + 42))
    text = check_html(page, pngs)
    assert "<td>tinycnn</td>" in text and "Conv2d(1, 8, kernel_size=(5, 5)" in text
    assert "<th>channels</th>" in text, "a model other than the MLP may read channels"


def test_report_of_a_smoothed_run_with_validation(weak, tmp_path):
    """--val-split and --label-smoothing: validation curves, the chosen epoch, what smoothing does."""
    _, root = weak
    out = tmp_path / "run"
    argv = ["train", "--dataset", "synthw", "--data-dir", str(root), "--epochs", "2", "--lr", "5e-5"]
    assert main([*argv, "--val-split", "0.2", "--label-smoothing", "0.1", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all({"val_loss", "val_acc", "best_epoch"} <= set(r) for r in records)
    page = write_report(out, data_dir=root, log=lambda s: None)
    text = check_html(page, sorted(page.parent.glob("*.png")))
    best = records[-1]["best_epoch"]
    assert f"The dashed line marks epoch {best}, the lowest validation loss" in text
    assert "The star is the test split" in text and "validation (chosen epoch)" in text
    assert "id='smoothing'" in text and "cannot fall below their entropy, 0.500" in text
    assert "It was trained with label smoothing 0.1" in text


def test_import_densa_loads_no_extras():
    code = (
        "import sys, densa, densa.cli; densa.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'matplotlib', 'tensorboard') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]", r.stderr


@pytest.mark.realdata
@pytest.mark.slow
def test_report_on_a_real_mnist_run(real_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--report"]) == 0
    capsys.readouterr()
    pngs = sorted((out / "report").glob("*.png"))
    assert {p.stem for p in pngs} == set(SIZES)
    for p in pngs:
        check_png(p, SIZES[p.stem])
    text = check_html(out / "report" / "index.html", pngs)
    assert "mnist test split (10,000 images)" in text
    assert main(["evaluate", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (
        r["n"] == 10000
        and r["acc"] > 0.9
        and [row["support"] for row in r["per_class"]]
        == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
