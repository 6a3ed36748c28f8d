"""Photos of paper under each condition of tests/realistic.py, and the not-a-digit set, through densa.images.

Small samples: every condition and every negative kind appears here with assertions; the full
measurement (hundreds of MNIST test digits per condition, two models) is benchmarks/bench_photos.py.
"""

import io
import os

import numpy as np
import pytest
import realistic
from PIL import Image, ImageDraw

import densa
from densa.inference import paper
from densa.inference.images import NoInk, prepare

# prepared photo vs the prepared 28x28 original: Pearson correlation at least this (rotation and
# perspective change the digit's shape itself, so less is asked of them)
AGREE = {"rotation": 0.6, "perspective": 0.6}
AGREE_DEFAULT = 0.8


def digit_four() -> np.ndarray:
    """A synthetic MNIST-like 4 (uint8 28x28, light strokes on black, a 20x20 box), no dataset needed."""
    im = Image.new("L", (112, 112), 0)
    d = ImageDraw.Draw(im)
    d.line([(60, 18), (30, 70), (82, 70)], fill=255, width=11, joint="curve")
    d.line([(66, 40), (66, 96)], fill=255, width=11)
    return np.asarray(im.resize((28, 28), Image.Resampling.BOX))


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def reference(digit: np.ndarray) -> np.ndarray:
    """The digit itself, prepared: dark on white paper (enlarged to 280 px), no lines, even light."""
    big = Image.fromarray(255 - digit).resize((280, 280), Image.Resampling.BICUBIC)
    return prepare(realistic.encode(np.repeat(np.asarray(big)[..., None], 3, axis=2)))


def test_conditions_are_phone_photos_and_deterministic():
    assert realistic.conditions()[0] == "clean" and len(set(realistic.conditions())) == 12
    digit = digit_four()
    for condition in realistic.conditions():
        a = realistic.photo(digit, condition, np.random.default_rng(3))
        b = realistic.photo(digit, condition, np.random.default_rng(3))
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, condition
        assert min(a.shape[:2]) >= 200 and max(a.shape[:2]) <= 600, (condition, a.shape)
        assert np.array_equal(a, b), condition
    with pytest.raises(ValueError, match="unknown condition"):
        realistic.photo(digit, "fog", np.random.default_rng(0))


def test_ink_alone_is_the_photos_strokes_without_paper_or_light():
    """photo_and_ink's ink alone keeps the pen and geometry and drops the paper: ruled paper's and a
    shadow's ink alone are the clean photo's (same strokes), a turned digit's is not, a thin pen's is
    thinner."""
    digit = digit_four()
    inks = {}
    for condition in ("clean", "ruled", "shadow", "rotation", "thin-pen"):
        photo, ink = realistic.photo_and_ink(digit, condition, np.random.default_rng(3))
        assert photo.ndim == 3 and ink.dtype == np.uint8 and ink.ndim == 2, condition
        border = np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]])
        assert (border == 255).all() and ink.min() < 64, condition  # white around dark strokes
        inks[condition] = ink
    assert np.array_equal(inks["clean"], inks["ruled"]) and np.array_equal(inks["clean"], inks["shadow"])
    assert not np.array_equal(inks["rotation"], inks["clean"])
    dark = {c: float((inks[c] < 128).mean()) for c in ("clean", "thin-pen")}
    assert dark["thin-pen"] < 0.5 * dark["clean"], dark
    assert corr(prepare(realistic.encode(inks["clean"])), reference(digit)) >= AGREE_DEFAULT


@pytest.mark.parametrize("condition", realistic.CONDITIONS)
def test_each_condition_prepares_like_the_digit_itself(condition):
    """Shadow, ruled and squared paper, pencil, a box, ...: what the model sees matches the clean digit
    in at least 4 of 5 photos (a hard-edged shadow crossing the strokes can still defeat it)."""
    digit = digit_four()
    ref = reference(digit)
    rng = np.random.default_rng(11)
    scores = []
    for k in range(5):
        photo = realistic.photo(digit, condition, rng)
        scores.append(round(corr(prepare(realistic.encode(photo, "JPEG" if k % 2 else "PNG", 85)), ref), 3))
    agree = sum(r >= AGREE.get(condition, AGREE_DEFAULT) for r in scores)
    assert agree >= 4, (condition, scores)


def test_the_old_failures_shadow_fade_and_ruled_paper():
    """A 30-60% fade or shadow is not 'blank'; blue ruled lines are not ink."""
    digit = digit_four()
    ref = reference(digit)
    for condition in ("gradient", "shadow", "ruled"):
        seen = prepare(realistic.encode(realistic.photo(digit, condition, np.random.default_rng(5))))
        assert corr(seen, ref) >= AGREE_DEFAULT, condition


def ring(side: int = 300, width: int = 22) -> np.ndarray:
    """A thick 0 (an ellipse's outline) in the middle of a side x side page: ink coverage in [0, 1]."""
    im = Image.new("L", (2 * side, 2 * side), 0)
    box = [round(2 * side * f) for f in (0.37, 0.3, 0.63, 0.7)]
    ImageDraw.Draw(im).ellipse(box, outline=255, width=2 * width)
    return np.asarray(im.resize((side, side), Image.Resampling.BOX), np.float32) / 255


def page(cover: np.ndarray, lines=None, tone: float = 0.5, light=None) -> bytes:
    """Dark ink (coverage `cover`) on white paper, with lines `tone` as light as the paper under them,
    lit by `light` (H, W) in (0, 1]: PNG bytes of a grey photo."""
    px = np.full(cover.shape, 0.95, np.float32)
    if lines is not None:
        px = px * (1 - lines * (1 - tone))
    px = px * (1 - cover) + 0.08 * cover
    if light is not None:
        px = px * light
    px = px + 0.01 * np.random.default_rng(0).standard_normal(px.shape).astype(np.float32)
    grey = np.round(np.clip(px, 0, 1) * 255).astype(np.uint8)
    return realistic.encode(np.repeat(grey[..., None], 3, axis=2))


def test_a_shaded_page_with_lit_paper_inside_the_loop_keeps_dark_ink():
    """Most of the page in shadow, the paper inside a 0 lit: the lit paper is lighter than everything,
    yet the pen is the dark side (it was read as light ink on dark paper: the 0 became a filled blob)."""
    o = ring()
    light = np.full(o.shape, 0.5, np.float32)
    light[110:190, 135:165] = 1.0  # a window of light falling through the loop
    ref, seen = prepare(page(o)), prepare(page(o, light=light))
    assert corr(seen, ref) >= 0.95
    assert seen[12:17, 12:17].max() < 64  # the loop is open, not filled


def grid(side: int, step: int, width: int, columns: bool = True, start: int = 5) -> np.ndarray:
    """Lines `width` px wide every `step` px from `start`: rows, and columns too (squared paper)."""
    g = np.zeros((side, side), np.float32)
    for k in range(start, side, step):
        g[k : k + width] = 1
        if columns:
            g[:, k : k + width] = 1
    return g


@pytest.mark.parametrize("columns", [True, False], ids=["squared", "ruled"])
def test_the_pen_is_measured_on_the_digit_not_on_the_papers_lines(columns):
    """Many thin lines as dark as half the pen (a grid, ruled paper) once set the pen's width, so the
    paper was estimated over a few pixels and thick strokes were taken for paper: 0s vanished or broke."""
    o, lines = ring(), grid(300, 24, 3, columns)
    px = np.asarray(Image.open(io.BytesIO(page(o, lines))).convert("RGB"), np.float32) / 255
    coarse = paper.darkness_over(px.min(axis=2, keepdims=True), 2 * (300 // 8) + 1)
    assert paper.stroke(coarse) >= 15  # the ring's stroke is 22 px; the lines' 3 px
    assert corr(prepare(page(o, lines)), prepare(page(o))) >= 0.95


def seven(side: int = 300) -> np.ndarray:
    """A 7 whose top bar lies at rows 94-106 of a side x side page: ink coverage in [0, 1]."""
    im = Image.new("L", (2 * side, 2 * side), 0)
    ImageDraw.Draw(im).line([(220, 200), (380, 200), (280, 420)], fill=255, width=24, joint="curve")
    return np.asarray(im.resize((side, side), Image.Resampling.BOX), np.float32) / 255


def test_a_stroke_running_along_a_dark_ruled_line_stays_whole():
    """The 7's bar is drawn along a dark line (ruled paper's line through it): it was blended away with
    the line, or kept only as what it adds to the line's darkness (faint), and the 7 became a 1."""
    s, lines = seven(), grid(300, 60, 4, columns=False, start=98)
    assert lines[98:102].all()
    assert corr(prepare(page(s, lines, tone=0.3)), prepare(page(s))) >= 0.95


def test_a_faint_mark_away_from_the_only_digit_is_dropped():
    """One part (a 1) and a faint trace at the edge too weak to count as a part (a shadow's corner): the
    trace was kept whenever the digit was the only part, and widened the crop so the 1 sat off-centre."""
    ink = np.zeros((300, 300), np.float32)
    ink[80:220, 140:152] = 1.0
    ink[100:104, 297:300] = 0.08
    out = paper.keep_main(ink)
    assert out[:, 290:].max() == 0 and np.array_equal(out[80:220, 140:152], ink[80:220, 140:152])


# --------------------------------------------------------------------------- not digits


def require_fonts():
    missing = realistic.missing_fonts()
    if missing:
        message = f"fonts missing: {missing}; apt-get install {' '.join(realistic.FONT_PACKAGES)}"
        if os.environ.get("DENSA_REQUIRE_REAL_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)


def test_letters_exclude_digit_look_alikes():
    require_fonts()
    assert not set(realistic.NEGATIVE_LETTERS) & set("OoDQIlijJZzSsbGBgq0123456789")
    assert len(realistic.fonts()) >= 6 and {"A", "x", "K"} <= set(realistic.NEGATIVE_LETTERS)


@pytest.mark.parametrize("kind", realistic.NEGATIVE_KINDS)
def test_each_negative_kind(kind):
    """Photos of things that are not digits. Preparation refuses what has no digit-like ink at all
    (noise, empty or lined paper) and says why; marks (letters, lines, shapes, ...) it prepares, and
    deciding that they are not digits is left to the model's decision."""
    if kind in ("letter", "crossed-out"):
        require_fonts()
    photos = realistic.negatives(kind, 4, np.random.default_rng(21))
    assert len(photos) == 4
    reasons = []
    for p in photos:
        assert p.dtype == np.uint8 and p.shape[2] == 3 and 200 <= min(p.shape[:2]) <= max(p.shape[:2]) <= 600
        try:
            out = prepare(realistic.encode(p))
            assert out.shape == (28, 28) and out.max() == 255
            reasons.append("prepared")
        except NoInk as e:
            assert str(e).startswith("image: no digit found: ")
            reasons.append(e.reason)
    expected = {"noise": {"noise"}, "lined-paper": {"lines"}, "empty": {"blank", "faint", "prepared"}}
    allowed = expected.get(kind, {"prepared"})
    assert set(reasons) <= allowed, (kind, reasons)
    if kind == "empty":
        assert reasons.count("prepared") <= 1, reasons  # a shadow's corner may still pass as ink


def test_noise_is_reported_as_noise_not_blank():
    rng = np.random.default_rng(0)
    grain = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    with pytest.raises(NoInk, match="noise or texture") as e:
        prepare(realistic.encode(grain))
    assert e.value.reason == "noise"


# --------------------------------------------------------------------------- real digits, a real model


@pytest.mark.realdata
@pytest.mark.slow
def test_real_digits_under_each_condition(mnist_run):
    """30 MNIST test digits per condition, read by the default recipe: at least 27 right in each
    (the full measurement, 500 per condition, is benchmarks/bench_photos.py)."""
    run, ds = mnist_run
    model = densa.load(run)
    refused = 0
    for condition in realistic.conditions():
        photos, labels, _ = realistic.photo_set(
            ds.test_images.numpy(), ds.test_labels.numpy(), condition, 30, 7
        )
        x = np.stack(
            [prepare(realistic.encode(p, "JPEG" if i % 2 else "PNG", 85)) for i, p in enumerate(photos)]
        )
        right = int((model.predict(x) == labels).sum())
        refused += sum(not d.accepted for d in model.decide(x))
        print(condition, right, "/ 30")
        assert right >= 27, (condition, right)
    # of 360 photos: the decision refuses few. The same 30 digits appear under every condition, so one
    # ambiguous digit ("not sure") counts up to 12 times; one run refused 17 (the benchmark: 1.4%)
    assert refused <= 24, refused


@pytest.mark.realdata
@pytest.mark.slow
def test_real_model_refuses_things_that_are_not_digits(mnist_run):
    """20 photos of each kind of mark that preparation does not refuse itself (letters in the Debian
    fonts, lines, scribbles, dots, shapes, crossed-out words), decided by the default recipe: most are
    refused, letters included (before the detector learnt from counter-examples, 1 letter in 10 was)."""
    require_fonts()
    run, _ = mnist_run
    model = densa.load(run)
    rates = {}
    for kind in ("letter", "line", "scribble", "dot", "shape", "crossed-out"):
        photos = realistic.negatives(kind, 20, np.random.default_rng([31, len(kind)]))
        x = []
        for p in photos:
            try:
                x.append(prepare(realistic.encode(p)))
            except NoInk:
                x.append(None)  # refused by preparation: counted as refused
        kept = np.stack([a for a in x if a is not None])
        answered = sum(d.accepted for d in model.decide(kept))
        rates[kind] = 1 - answered / len(x)
    print(rates)
    assert np.mean(list(rates.values())) >= 0.7 and rates["letter"] >= 0.5, rates
