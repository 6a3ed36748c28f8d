"""The decision beside every prediction: a model refuses what is unlike its training images and answers
what is like them, in the Python API, `densa predict` (text and --json), the ONNX export and old files."""

import io
import json
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import densa
from densa.cli import main
from densa.core.detector import FORMATS, NET_ARRAYS, PARTS, QUANTILE, Detector, DetectorError
from densa.inference.decision import STATUSES, decide

FIELDS = {"status", "accepted", "answer", "label", "reason", "best_guess", "probability", "score"}
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    """`densa train` on the synthetic bars (each class a bar at its own place), with its detector."""
    from synthetic import write_dataset

    from densa.core import data

    root = tmp_path_factory.mktemp("abstain")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(data.DATASETS, "synth", write_dataset(root / "data", "synth", n_train=2000))
        mp.setenv("DENSA_DATA_DIR", str(root / "data"))
        run = root / "run"
        assert main(["train", "--dataset", "synth", "--epochs", "4", "--lr", "3e-3", "--out", str(run)]) == 0
        ds = data.load_dataset("synth")
        yield run, ds.test_images.numpy(), ds.test_labels.numpy()


def strangers() -> dict[str, np.ndarray]:
    """Things that are not one of the synthetic classes: uint8 (28, 28) each."""
    rng = np.random.default_rng(7)
    line = np.zeros((28, 28), np.uint8)
    line[13:16, 2:26] = 255
    im = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(im).text((14, 14), "A", fill=255, font=ImageFont.truetype(FONT, 24), anchor="mm")
    return {"noise": rng.integers(0, 256, (28, 28), dtype=np.uint8), "line": line, "letter A": np.asarray(im)}


def test_refuses_strangers_and_answers_its_own_images(synth_run):
    run, images, labels = synth_run
    model = densa.load(run)
    assert model.detector is not None and model.detector.info["quantile"] == QUANTILE
    assert model.detector.has_net and set(model.detector.scales) == {*PARTS, "outlier"}
    decisions = model.decide(images)
    answered = np.array([d.accepted for d in decisions])
    said = np.array([int(d.answer) if d.accepted else -1 for d in decisions])
    assert answered.mean() >= 0.9 and (said[answered] == labels[answered]).mean() >= 0.95
    for name, x in strangers().items():
        (d,) = model.decide(x[None])
        assert d.status == "unknown" and not d.accepted and d.answer is None, (name, d)
        assert d.label == "not a digit" and d.reason.startswith("that doesn't look like a digit — best guess")
        assert d.score > 1 and d.detector_score > 1 and d.method == "detector"
    # the probabilities are the model's own: a decision changes no number
    probs, _ = model.assess(images[:50])
    assert np.allclose(probs, model.predict_proba(images[:50]), atol=1e-6)


def test_decisions_follow_the_score_and_the_confidence():
    probs = np.array([[0.9, 0.1], [0.45, 0.55], [0.3, 0.7], [0.99, 0.01]])
    out = decide(probs, np.array([0.2, 0.3, 1.5, 0.99]), ["0", "1"])
    assert [d.status for d in out] == ["answer", "answer", "unknown", "answer"]
    out = decide(np.array([[0.4, 0.35, 0.25]]), np.array([0.1]), ["a", "b", "c"], "other")
    assert out[0].status == "not_sure" and out[0].label == "not sure" and out[0].score > 1
    assert all(d.status in STATUSES and d.accepted == (d.score <= 1) for d in out)
    (d,) = decide(np.array([[0.3, 0.7]]), None, ["0", "1"])  # an old file: confidence only
    assert d.accepted and d.detector_score is None and d.method == "confidence only"
    assert set(d.to_dict()) >= FIELDS


def test_cli_predict_says_not_a_digit(synth_run, tmp_path, capsys):
    run, images, _ = synth_run
    files = []
    for name, x in (("digit", images[0]), *strangers().items()):
        files.append(tmp_path / f"{name.replace(' ', '-')}.png")
        # light ink on black, as the dataset: the preparation keeps it as is
        Image.fromarray(np.pad(x, 10)).resize((96, 96)).save(files[-1])
    assert main(["predict", str(run), *map(str, files), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(set(r["decision"]) >= FIELDS for r in rows)
    assert [r["decision"]["status"] for r in rows[1:]] == ["unknown"] * 3
    assert main(["predict", str(run), *map(str, files)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(re.search(r": not a digit \(best guess \d, \d\.\d{3}\)  top-3: ", line) for line in lines[1:])


def test_onnx_export_decides_as_torch_does(synth_run, tmp_path):
    run, images, _ = synth_run
    out = tmp_path / "model.onnx"
    assert main(["export", str(run), "--onnx", str(out)]) == 0
    torch_model, onnx_model = densa.load(run), densa.load(out)
    assert onnx_model.detector is not None
    x = np.concatenate([images[:200], np.stack(list(strangers().values()))])
    a, b = torch_model.decide(x), onnx_model.decide(x)
    assert [d.status for d in a] == [d.status for d in b]
    diff = np.abs(np.subtract([d.score for d in a], [d.score for d in b]))
    assert diff.max() < 1e-3, diff.max()


def test_old_files_without_a_detector_still_predict(tiny_run, tmp_path, capsys):
    model = densa.load(tiny_run)
    assert model.detector is None
    (d,) = model.decide(np.zeros((1, 28, 28), np.uint8))
    assert d.method == "confidence only" and d.detector_score is None
    im = tmp_path / "x.png"
    Image.fromarray(np.pad(np.full((20, 4), 255, np.uint8), ((4, 4), (12, 12)))).save(im)
    assert main(["predict", str(tiny_run), str(im), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["decision"]["method"] == "confidence only"
    assert "has no detector" in err and "train it again" in err


def test_a_damaged_detector_is_refused(synth_run):
    run, _, _ = synth_run
    det = densa.load(run).detector
    text = det.to_json()
    again = Detector.from_json(text, "f", features=det.arrays["means"].shape[1], classes=10)
    assert again.threshold == det.threshold and np.array_equal(
        again.arrays["precision"], det.arrays["precision"]
    )
    with pytest.raises(DetectorError, match="detector does not fit the model"):
        Detector.from_json(text, "f", features=3)
    with pytest.raises(DetectorError, match="detector metadata is damaged"):
        Detector.from_json(text[:-40], "f")
    bad = json.loads(text)
    bad["threshold"] = -1
    with pytest.raises(DetectorError, match="does not fit"):
        Detector.from_json(json.dumps(bad), "f")
    bad = json.loads(text)
    bad["arrays"]["w2"] = bad["arrays"]["b1"]  # the network's output layer has the wrong shape
    with pytest.raises(DetectorError, match="does not fit"):
        Detector.from_json(json.dumps(bad), "f")
    bad = json.loads(text)
    bad["format"] = "densa.detector.v9"
    with pytest.raises(DetectorError, match=r"\(densa.detector.v9\) was written by a newer densa; upgrade"):
        Detector.from_json(json.dumps(bad), "f")
    bad = json.loads(text)
    del bad["arrays"]["w1"]
    with pytest.raises(DetectorError, match="damaged"):
        Detector.from_json(json.dumps(bad), "f")


def test_a_detector_from_before_the_outlier_network_still_scores(synth_run):
    """A file written by densa before the network (format v1: the three distances) loads and scores
    with the distances alone, as it did."""
    run, images, _ = synth_run
    det = densa.load(run).detector
    old = json.loads(det.to_json())
    old["format"] = FORMATS[0]
    for k in NET_ARRAYS:
        del old["arrays"][k]
    del old["scales"]["outlier"]
    v1 = Detector.from_json(json.dumps(old), "f", features=det.arrays["means"].shape[1], classes=10)
    assert not v1.has_net and set(v1.scales) == set(PARTS)
    feats = np.random.default_rng(0).normal(size=(5, det.arrays["means"].shape[1])).astype(np.float32)
    parts = v1.parts(feats, images[:5] / 255.0)
    assert set(parts) == set(PARTS)
    expected = np.maximum.reduce([(parts[k] - m) / s for k, (m, s) in v1.scales.items()]) / v1.threshold
    assert np.allclose(v1.score(feats, images[:5] / 255.0), expected)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_the_cnn_preset_gets_a_detector_and_its_export_agrees(tmp_path):
    from synthetic import write_dataset

    from densa.core import data

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(data.DATASETS, "synth", write_dataset(tmp_path / "data", "synth"))
        mp.setenv("DENSA_DATA_DIR", str(tmp_path / "data"))
        run, out = tmp_path / "cnn", tmp_path / "cnn.onnx"
        argv = ["train", "--dataset", "synth", "--preset", "cnn", "--epochs", "1", "--out", str(run)]
        assert main(argv) == 0
        assert main(["export", str(run), "--onnx", str(out)]) == 0
        images = data.load_dataset("synth").test_images.numpy()[:100]
    torch_model, onnx_model = densa.load(run), densa.load(out)
    assert torch_model.config.model == "cnn" and torch_model.detector.arrays["means"].shape == (10, 128)
    x = np.concatenate([images, np.stack(list(strangers().values()))])
    a, b = torch_model.decide(x), onnx_model.decide(x)
    assert [d.status for d in a] == [d.status for d in b] and a[-1].status == "unknown"
    diff = np.abs(np.subtract([d.score for d in a], [d.score for d in b]))
    assert diff.max() < 1e-3, diff.max()
