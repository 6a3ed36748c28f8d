"""`densa predict RUN IMAGE...`: files and folders, one-line errors per bad file, --json, --save-input."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from densa.cli import main
from densa.inference.images import prepare
from densa.inference.predictor import open_predictor


def write_digit(path, fmt=None):
    im = Image.new("RGB", (200, 240), (245, 240, 225))
    ImageDraw.Draw(im).line([(40, 40), (160, 40), (90, 210)], fill=(20, 20, 60), width=14)
    im.save(path, format=fmt)
    return path


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "pics"
    d.mkdir()
    write_digit(d / "a.png")
    write_digit(d / "b.JPG", "JPEG")
    write_digit(d / "c.webp")
    (d / "notes.txt").write_text("not an image, not listed")
    return d


def test_files_and_folders(tiny_run, folder, tmp_path, capsys):
    extra = write_digit(tmp_path / "a.gif")
    saved = tmp_path / "seen"
    argv = [
        "predict",
        str(tiny_run),
        str(folder),
        str(extra),
        "--json",
        "--top-k",
        "2",
        "--save-input",
        str(saved),
    ]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in lines] == [str(folder / n) for n in ("a.png", "b.JPG", "c.webp")] + [
        str(extra)
    ]
    predictor = open_predictor(tiny_run)
    for r in lines:
        pixels = prepare(Path(r["file"]).read_bytes(), "mnist")
        probs = predictor.predict_proba(pixels[None].astype(np.float32) / 255)[0]
        assert r["predicted"] == int(probs.argmax()) and len(r["top_k"]) == 2
        assert r["probability"] == pytest.approx(float(probs.max()), abs=1e-6)
    assert sorted(p.name for p in saved.iterdir()) == [
        "a-2.28x28.png",
        "a.28x28.png",
        "b.28x28.png",
        "c.28x28.png",
    ]
    seen = np.asarray(Image.open(saved / "a.28x28.png"))
    assert seen.shape == (28, 28) and np.array_equal(seen, prepare((folder / "a.png").read_bytes()))
    assert main(["predict", str(tiny_run), str(folder / "a.png")]) == 0
    assert capsys.readouterr().out.startswith(f"{folder / 'a.png'}: ")


def test_bad_files_get_one_line_each_and_the_rest_still_predicted(tiny_run, folder, tmp_path, capsys):
    (tmp_path / "junk.png").write_bytes(b"not really a png")
    Image.new("L", (100, 100), 255).save(tmp_path / "blank.png")
    buf = io.BytesIO()
    Image.new("L", (5000, 10), 255).save(buf, format="PNG")
    (tmp_path / "huge.png").write_bytes(buf.getvalue())
    (tmp_path / "empty").mkdir()
    bad = ["junk.png", "blank.png", "huge.png", "missing.png", "empty"]
    argv = ["predict", str(tiny_run), str(folder / "a.png"), *(str(tmp_path / b) for b in bad)]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and out.startswith(str(folder / "a.png"))
    warning, *lines = err.splitlines()  # tiny_run predates the detector: one warning says so first
    assert warning.startswith("densa: warning: ") and "has no detector" in warning
    assert len(lines) == len(bad) + 1 and all(line.startswith("densa: error: ") for line in lines)
    for name, reason in zip(
        bad, ["not a PNG, JPEG", "no digit found", "5000x10 pixels", "no such file", "folder has no"]
    ):
        assert any(name in line and reason in line for line in lines), (name, reason, lines)
    assert "5 of 6 image(s) could not be read" in lines[-1]


def test_exactly_one_of_images_or_test_index(tiny_run, folder, capsys):
    for argv in (["predict", str(tiny_run)], ["predict", str(tiny_run), str(folder), "--test-index", "1"]):
        assert main(argv) == 1
        assert "exactly one of them" in capsys.readouterr().err


def test_serve_refuses_a_bad_run_in_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope does not exist" in err
