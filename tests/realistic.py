"""A realistic test set made from MNIST's test split: digits as a person would photograph or scan them.

Each digit is rendered as dark ink on light paper, its 28x28 frame scaled to 60-400 px, placed
off-centre on a larger canvas; some blurred, some noisy, some saved as JPEG, some RGB with a tinted
paper and coloured ink. Deterministic for a seed. `naive(data)` is what most tutorials do with such a
file (grey, resize the whole picture to 28x28) and the baseline densa's preparation must beat.
`photo(digit, condition, rng)` renders one digit under one of CONDITIONS, `photo_set` a sample of them;
`photo_and_ink` / `photo_and_ink_set` also give each photo's ink alone (black on white, no paper or
light), the benchmark's measure of what a model can read once preparation has nothing to undo.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TINTS = [(1.0, 0.96, 0.86), (0.93, 0.97, 1.0), (1.0, 0.93, 0.93), (0.95, 1.0, 0.92)]  # paper colours
INKS = [(0.05, 0.05, 0.08), (0.08, 0.12, 0.45), (0.2, 0.2, 0.2), (0.35, 0.05, 0.05)]  # pen colours


def render(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """One MNIST digit (uint8 28x28, light on dark) as image file bytes, and a short description."""
    size = int(rng.integers(60, 401))  # the 28x28 frame, in pixels; the ink is ~5/7 of it
    ink = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
    ink = np.clip(ink, 0, 1)
    w, h = (int(size * rng.uniform(1.2, 2.5)) for _ in range(2))
    canvas = np.zeros((h, w), np.float32)
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    canvas[y : y + size, x : x + size] = ink
    parts = [f"{size}px on {w}x{h}"]
    if rng.random() < 0.35:
        radius = float(rng.uniform(0.5, 2.0)) * size / 100
        grey = Image.fromarray(np.round(canvas * 255).astype(np.uint8))
        canvas = np.asarray(grey.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255
        parts.append(f"blur {radius:.1f}")
    paper_level = float(rng.uniform(0.72, 0.98))
    ink_level = float(rng.uniform(0.0, 0.25))
    if rng.random() < 0.4:
        paper = np.array(TINTS[rng.integers(len(TINTS))], np.float32) * paper_level
        pen = np.array(INKS[rng.integers(len(INKS))], np.float32)
        pixels = paper[None, None] - canvas[..., None] * (paper - pen)[None, None]
        parts.append("rgb tint")
    else:
        pixels = paper_level - canvas * (paper_level - ink_level)
    sigma = float(rng.uniform(0.0, 0.03))
    pixels = pixels + sigma * rng.standard_normal(pixels.shape, dtype=np.float32)
    im = Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    if rng.random() < 0.35:
        quality = int(rng.integers(40, 91))
        im.save(buf, format="JPEG", quality=quality)
        parts.append(f"jpeg q{quality}")
    else:
        im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), ", ".join(parts)


def make_set(images: np.ndarray, labels: np.ndarray, n: int = 400, seed: int = 0):
    """n rendered test digits: (list of file bytes, list of descriptions, labels, indices used)."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(images), size=n, replace=False))
    files, notes = [], []
    for i in idx:
        data, note = render(np.asarray(images[i]), rng)
        files.append(data)
        notes.append(note)
    return files, notes, np.asarray(labels)[idx], idx


def naive(data: bytes) -> np.ndarray:
    """The usual tutorial code: open, grey, resize the whole picture to 28x28. uint8 (28, 28)."""
    im = Image.open(io.BytesIO(data)).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


# --------------------------------------------------------------------------- photos of paper, by condition
#
# The conditions people bring: each renders MNIST test digits as a phone photo (uint8 H x W x 3,
# 200-600 px a side) of paper under one condition, plus a negative set of things that are not digits.
#
#   conditions()                      names, "clean" first (the reference)
#   photo(digit, condition, rng)      one MNIST digit (uint8 28x28, light on dark) -> RGB uint8 (H, W, 3)
#   photo_set(images, labels, condition, n, seed) -> (list of RGB arrays, labels, indices used)
#   negative_kinds()                  the kinds of not-a-digit
#   negatives(kind, n, rng)           n RGB uint8 arrays of that kind
#   encode(pixels, fmt)               PNG or JPEG file bytes, as a phone or a browser would send them
#   fonts() / missing_fonts()         the Debian font files the letters come from (FONT_PACKAGES)
#
# Letters that ARE digits in handwriting or print (NOT_NEGATIVE_LETTERS: O o D Q -> 0, I l i j J -> 1,
# Z z -> 2, S s -> 5, b G -> 6, B -> 8, g q -> 9) are left out of the negatives: no model reading
# 28x28 digits can, or should, tell "O" from "0". Near-vertical lines (a 1) and circles/ellipses (a 0)
# are left out of the lines and shapes for the same reason.

CONDITIONS = (
    "clean",  # dark pen, white paper, even light: the reference
    "shadow",  # a soft-edged shadow across the digit, 30-60% darker
    "gradient",  # light falling off across the page by 30-60%
    "ruled",  # notebook paper: coloured horizontal lines
    "squared",  # graph paper: a grid of light lines
    "pencil",  # grey, grainy, thinner strokes
    "thin-pen",  # a fine pen: strokes a few pixels wide
    "box",  # a box drawn around the digit (a form field)
    "margin",  # a notebook's red margin line beside the digit
    "rotation",  # written or photographed at up to +-20 degrees
    "perspective",  # a phone held at an angle: foreshortened and skewed
    "coloured",  # coloured ink on coloured paper
)
NEGATIVE_KINDS = (
    "letter",
    "line",
    "scribble",
    "dot",
    "shape",
    "crossed-out",
    "lined-paper",
    "empty",
    "noise",
)
FONT_PACKAGES = ("fonts-dejavu-core", "fonts-liberation")  # Debian packages holding FONT_FILES
FONT_DIR = "/usr/share/fonts/truetype"
FONT_FILES = (
    "dejavu/DejaVuSans.ttf",
    "dejavu/DejaVuSans-Bold.ttf",
    "dejavu/DejaVuSerif.ttf",
    "dejavu/DejaVuSansMono.ttf",
    "liberation/LiberationSans-Regular.ttf",
    "liberation/LiberationSerif-Regular.ttf",
    "liberation/LiberationSerif-Italic.ttf",
    "liberation/LiberationMono-Regular.ttf",
)
NOT_NEGATIVE_LETTERS = "OoDQIlijJZzSsbGBgq"
NEGATIVE_LETTERS = "".join(
    c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in NOT_NEGATIVE_LETTERS
)
PAPERS = [(0.99, 0.98, 0.95), (0.95, 0.96, 0.98), (0.97, 0.97, 0.97), (1.0, 0.98, 0.92)]  # off-white
PENS = [(0.05, 0.05, 0.08), (0.08, 0.1, 0.35), (0.15, 0.15, 0.15)]  # black, blue-black, grey-black
COLOURED_PAPERS = [(1.0, 0.92, 0.55), (0.75, 0.88, 1.0), (1.0, 0.8, 0.86), (0.8, 1.0, 0.8), (1.0, 0.85, 0.7)]
COLOURED_INKS = [(0.1, 0.2, 0.75), (0.75, 0.1, 0.1), (0.1, 0.45, 0.15), (0.45, 0.1, 0.55)]


def conditions() -> tuple[str, ...]:
    return CONDITIONS


def negative_kinds() -> tuple[str, ...]:
    return NEGATIVE_KINDS


def fonts() -> list[str]:
    """The font files the negative letters are drawn in (all of FONT_FILES; see missing_fonts)."""
    return [f"{FONT_DIR}/{f}" for f in FONT_FILES]


def missing_fonts() -> list[str]:
    import os

    return [f for f in fonts() if not os.path.exists(f)]


def _grey(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(a, np.float32), mode="F")


def _arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.float32)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float (H, W) array (separable, edges repeated)."""
    r = max(1, int(3 * sigma))
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    w /= w.sum()
    for axis in (0, 1):
        p = np.pad(a, [(r, r) if i == axis else (0, 0) for i in range(2)], mode="edge")
        n = a.shape[axis]
        a = sum(wk * np.take(p, np.arange(k, k + n), axis=axis) for k, wk in enumerate(w))
    return a.astype(np.float32)


def _digit_frame(digit: np.ndarray, size: int) -> np.ndarray:
    """MNIST's 28x28 frame scaled to size x size: ink coverage in [0, 1]."""
    a = _arr(_grey(np.asarray(digit, np.float32) / 255).resize((size, size), Image.Resampling.BICUBIC))
    return np.clip(a, 0, 1)


def _skeleton(b: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a boolean image to one-pixel-wide centre lines (connectivity kept)."""
    b = np.pad(b, 1).astype(np.uint8)
    while True:
        changed = False
        for step in (0, 1):
            p = [
                np.roll(np.roll(b, -dy, 0), -dx, 1)
                for dy, dx in ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))
            ]
            n = sum(p)
            a = sum((p[i] == 0) & (p[(i + 1) % 8] == 1) for i in range(8))
            if step == 0:
                c = (p[0] * p[2] * p[4] == 0) & (p[2] * p[4] * p[6] == 0)
            else:
                c = (p[0] * p[2] * p[6] == 0) & (p[0] * p[4] * p[6] == 0)
            kill = (b == 1) & (n >= 2) & (n <= 6) & (a == 1) & c
            if kill.any():
                b[kill] = 0
                changed = True
        if not changed:
            return b[1:-1, 1:-1].astype(bool)


def _thin(digit: np.ndarray, size: int, width: float) -> np.ndarray:
    """The digit redrawn with a pen `width` pixels wide: its centre lines, thickened, at size x size."""
    big = np.asarray(Image.fromarray(digit).resize((112, 112), Image.Resampling.BICUBIC)) > 127
    line = _skeleton(big).astype(np.float32)
    a = _arr(_grey(line).resize((size, size), Image.Resampling.BILINEAR)) * (size / 112)
    a = _blur(np.clip(a, 0, 1), max(0.5, width / 2.5))
    return np.clip(a / max(float(a.max()), 1e-6) * 1.3, 0, 1)


def _perspective_coeffs(src, dst) -> list[float]:
    """PIL's 8 perspective coefficients mapping output points `dst` to input points `src`."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.linalg.solve(np.array(rows, np.float64), np.array(rhs, np.float64)).tolist()


def _tilt(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A phone held at an angle: the far edge shrinks by 15-40%, the page foreshortens, turns a little."""
    h, w = a.shape
    pad = w // 3
    a = np.pad(a, pad)
    n = a.shape[0]
    far = float(rng.uniform(0.15, 0.4)) * w / 2  # how much each end of the far edge moves in
    fore = float(rng.uniform(0.0, 0.25)) * h  # foreshortening
    quad = np.array(
        [[pad + far, pad + fore], [pad + w - far, pad + fore], [pad + w, pad + h], [pad, pad + h]]
    )
    side = int(rng.integers(4))  # which edge is far: top, right, bottom, left
    centre = np.array([n / 2, n / 2])
    quad = _turn(quad - centre, 90 * side) + centre
    quad = _turn(quad - centre, float(rng.uniform(-8, 8))) + centre
    square = [(pad, pad), (pad + w, pad), (pad + w, pad + h), (pad, pad + h)]
    square = _turn(np.array(square, np.float64) - centre, 90 * side) + centre
    coeffs = _perspective_coeffs([tuple(p) for p in square], [tuple(p) for p in quad])
    out = _grey(a).transform((n, n), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    return _arr(out)


def _turn(points: np.ndarray, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return points @ rot.T


def _crop_to_ink(a: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(a.max(1) > 0.02), np.flatnonzero(a.max(0) > 0.02)
    if rows.size == 0:
        return a
    return a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _ink_shape(digit: np.ndarray, condition: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """The digit's ink coverage (cropped to the ink) for a condition's pen and geometry."""
    a = _digit_frame(digit, size)
    if condition == "thin-pen":
        a = _thin(digit, size, float(rng.uniform(1.5, 3.5)))
    elif condition == "pencil":
        a = _thin(digit, size, 2.2 * size / 28 * float(rng.uniform(0.4, 0.7)))
        grain = rng.uniform(0.45, 1.0, a.shape).astype(np.float32)
        a = a * _blur(grain, 0.5)
    elif condition == "rotation":
        a = _arr(_grey(a).rotate(float(rng.uniform(-20, 20)), Image.Resampling.BILINEAR, expand=True))
    elif condition == "perspective":
        a = _tilt(a, rng)
    return _crop_to_ink(np.clip(a, 0, 1))


def _canvas(ink: np.ndarray, rng: np.random.Generator, fill: tuple[float, float] = (0.3, 0.75)):
    """A phone-photo canvas (200-600 px a side) with the ink placed in it: (coverage, (top, left))."""
    h, w = ink.shape
    scale = float(rng.uniform(*fill)) * 0.714  # MNIST's ink is 20/28 of its frame
    side = max(h, w) / scale
    W = int(np.clip(side * rng.uniform(0.9, 1.4), 200, 600))
    H = int(np.clip(side * rng.uniform(0.9, 1.4), 200, 600))
    if h > H - 8 or w > W - 8:  # too large for the canvas: shrink the ink
        f = min((H - 8) / h, (W - 8) / w)
        ink = _arr(_grey(ink).resize((max(1, int(w * f)), max(1, int(h * f))), Image.Resampling.BILINEAR))
        h, w = ink.shape
    my, mx = max(4, (H - h) // 8), max(4, (W - w) // 8)  # a margin: the ink is not cut off
    top, left = int(rng.integers(my, H - h - my + 1)), int(rng.integers(mx, W - w - mx + 1))
    cover = np.zeros((H, W), np.float32)
    cover[top : top + h, left : left + w] = np.clip(ink, 0, 1)
    return cover, (top, left, h, w)


def _lines(shape, spacing: float, width: float, axis: int, rng: np.random.Generator) -> np.ndarray:
    """Coverage of evenly spaced lines across the page (axis 0: horizontal lines)."""
    n = shape[axis]
    pos = np.arange(n, dtype=np.float32) - float(rng.uniform(0, spacing))
    d = np.abs((pos + spacing / 2) % spacing - spacing / 2)  # distance to the nearest line
    profile = np.clip(width / 2 + 0.5 - d, 0, 1)
    return np.broadcast_to(profile[:, None] if axis == 0 else profile[None, :], shape).astype(np.float32)


def _rect(shape, box, width: float) -> np.ndarray:
    """Coverage of a rectangle's outline: box = (top, left, bottom, right), pixels."""
    im = Image.new("L", (shape[1] * 2, shape[0] * 2), 0)
    t, lft, b, r = (2 * v for v in box)
    ImageDraw.Draw(im).rectangle([lft, t, r, b], outline=255, width=max(1, round(2 * width)))
    return _arr(im.resize((shape[1], shape[0]), Image.Resampling.BOX)) / 255


def _layers(cover, where, condition: str, rng: np.random.Generator):
    """(list of (coverage, colour) drawn on the paper in order, paper colour)."""
    top, left, h, w = where
    H, W = cover.shape
    paper = np.array(PAPERS[rng.integers(len(PAPERS))]) * rng.uniform(0.88, 1.0)
    pen = np.array(PENS[rng.integers(len(PENS))])
    thick = max(1.0, min(H, W) / 200) * float(rng.uniform(1.0, 2.0))
    layers = []
    if condition == "ruled":
        blue = np.array([rng.uniform(0.35, 0.65), rng.uniform(0.55, 0.8), rng.uniform(0.85, 1.0)])
        layers.append(
            (_lines(cover.shape, max(h, w) * float(rng.uniform(0.5, 1.1)), thick, 0, rng), blue * paper)
        )
    elif condition == "squared":
        tone = np.array([0.55, 0.7, 0.9]) if rng.random() < 0.6 else np.full(3, 0.65)
        step = max(h, w) * float(rng.uniform(0.22, 0.45))
        grid = np.maximum(
            _lines(cover.shape, step, thick * 0.8, 0, rng), _lines(cover.shape, step, thick * 0.8, 1, rng)
        )
        layers.append((grid, tone * paper))
    elif condition == "margin":
        gap = max(h, w) * float(rng.uniform(0.08, 0.35))
        x = (
            left - gap
            if (rng.random() < 0.5 and left - gap > 2) or left + w + gap > W - 3
            else left + w + gap
        )
        col = np.clip(1 - np.abs(np.arange(W) - x) + thick / 2 - 0.5, 0, 1)
        red = np.array([0.9, rng.uniform(0.2, 0.45), rng.uniform(0.25, 0.45)])
        layers.append((np.broadcast_to(col[None, :], cover.shape).astype(np.float32), red * paper))
    elif condition == "box":
        gx, gy = (max(h, w) * float(rng.uniform(0.1, 0.35)) for _ in range(2))
        box = (max(1, top - gy), max(1, left - gx), min(H - 2, top + h + gy), min(W - 2, left + w + gx))
        layers.append((_rect(cover.shape, box, thick), pen))
    elif condition == "coloured":
        paper = np.array(COLOURED_PAPERS[rng.integers(len(COLOURED_PAPERS))]) * rng.uniform(0.85, 1.0)
        pen = np.array(COLOURED_INKS[rng.integers(len(COLOURED_INKS))])
    elif condition == "pencil":
        pen = paper * (1 - float(rng.uniform(0.45, 0.7)))
    layers.append((cover, pen))
    return layers, paper


def _light(shape, condition: str, rng: np.random.Generator, where=None) -> np.ndarray:
    """Illumination (H, W) in (0, 1]: even, a soft shadow edge, or a gradient, each 30-60% deep."""
    H, W = shape
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    t = float(rng.uniform(0, 2 * np.pi))
    n = (np.cos(t) * x + np.sin(t) * y) / max(H, W)
    if condition == "gradient":
        ramp = (n - n.min()) / max(float(n.max() - n.min()), 1e-6)
        return 1 - float(rng.uniform(0.3, 0.6)) * ramp
    if condition == "shadow":
        top, left, h, w = where if where is not None else (0, 0, H, W)
        cy = top + h * float(rng.uniform(0.2, 0.8))
        cx = left + w * float(rng.uniform(0.2, 0.8))
        c = (np.cos(t) * cx + np.sin(t) * cy) / max(H, W)
        soft = float(rng.uniform(0.005, 0.08))
        edge = 1 / (1 + np.exp(-(n - c) / soft))
        return 1 - float(rng.uniform(0.3, 0.6)) * edge
    return 1 - float(rng.uniform(0.0, 0.08)) * (n - n.min()) / max(float(n.max() - n.min()), 1e-6)


def _finish(layers, paper, light, rng: np.random.Generator) -> np.ndarray:
    """Paint the layers on the paper, light it, blur and noise it like a phone camera: uint8 (H, W, 3)."""
    H, W = light.shape
    px = np.broadcast_to(np.asarray(paper, np.float32), (H, W, 3)).copy()
    light = light.astype(np.float32)
    for cover, colour in layers:
        c = cover[..., None]
        px = px * (1 - c) + np.asarray(colour, np.float32) * c
    px *= light[..., None]
    if rng.random() < 0.5:
        px = np.stack(
            [_blur(px[..., i], float(rng.uniform(0.3, 1.0))) for i in range(3)],
            -1,
        )
    px += float(rng.uniform(0.003, 0.02)) * rng.standard_normal(px.shape, dtype=np.float32)
    return np.round(np.clip(px, 0, 1) * 255).astype(np.uint8)


def photo(digit: np.ndarray, condition: str, rng: np.random.Generator) -> np.ndarray:
    """One MNIST digit (uint8 28x28, light on dark) as a phone photo of paper: uint8 (H, W, 3)."""
    return photo_and_ink(digit, condition, rng)[0]


def photo_and_ink(digit: np.ndarray, condition: str, rng: np.random.Generator):
    """The photo, and its ink alone: the same strokes and geometry (pen, turn, tilt) as black ink on
    white, uint8 (h, w), at the size they were drawn (before any shrink to fit the canvas) with a white
    border a quarter of their height wide, and no paper, lines, light, blur or noise: what a perfect
    scanner would see."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose one of {CONDITIONS}")
    size = int(rng.integers(120, 400))
    ink = _ink_shape(digit, condition, size, rng)
    cover, where = _canvas(ink, rng)
    layers, paper = _layers(cover, where, condition, rng)
    alone = np.round(255 * (1 - np.pad(ink, ink.shape[0] // 4))).astype(np.uint8)
    return _finish(layers, paper, _light(cover.shape, condition, rng, where), rng), alone


def photo_set(images: np.ndarray, labels: np.ndarray, condition: str, n: int = 500, seed: int = 0):
    """n test digits photographed under one condition: (list of RGB uint8 arrays, labels, indices).

    The same seed picks the same digits for every condition; the rendering draws from its own stream."""
    photos, labels, idx, _ = photo_and_ink_set(images, labels, condition, n, seed)
    return photos, labels, idx


def photo_and_ink_set(images: np.ndarray, labels: np.ndarray, condition: str, n: int = 500, seed: int = 0):
    """photo_set's photos, labels and indices, and each photo's ink alone (photo_and_ink)."""
    idx = np.sort(np.random.default_rng(seed).choice(len(images), size=n, replace=False))
    rng = np.random.default_rng([seed, CONDITIONS.index(condition)])
    pairs = [photo_and_ink(np.asarray(images[i]), condition, rng) for i in idx]
    return [p for p, _ in pairs], np.asarray(labels)[idx], idx, [a for _, a in pairs]


def encode(pixels: np.ndarray, fmt: str = "PNG", quality: int = 90) -> bytes:
    """RGB uint8 (H, W, 3) -> PNG or JPEG file bytes."""
    buf = io.BytesIO()
    im = Image.fromarray(pixels)
    im.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {"compress_level": 1}))
    return buf.getvalue()


# --------------------------------------------------------------------------- not digits


def _stroke_canvas(rng: np.random.Generator):
    """A blank 2x supersampled stroke canvas: (PIL 'L' image, drawer, size (W, H), pen width in 2x pixels)."""
    W, H = int(rng.integers(200, 601)), int(rng.integers(200, 601))
    im = Image.new("L", (2 * W, 2 * H), 0)
    return im, ImageDraw.Draw(im), (W, H), max(2, round(2 * min(W, H) * float(rng.uniform(0.012, 0.05))))


def _down(im: Image.Image, size) -> np.ndarray:
    return _arr(im.resize(size, Image.Resampling.BOX)) / 255


def _letter(rng: np.random.Generator, text: str | None = None) -> np.ndarray:
    from PIL import ImageFont

    missing = missing_fonts()
    if missing:
        raise FileNotFoundError(f"fonts missing: {missing}; apt-get install {' '.join(FONT_PACKAGES)}")
    text = text or NEGATIVE_LETTERS[rng.integers(len(NEGATIVE_LETTERS))]
    font = ImageFont.truetype(fonts()[rng.integers(len(FONT_FILES))], int(rng.integers(80, 300)))
    left, top, right, bottom = font.getbbox(text)
    im = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(im).text((4 - left, 4 - top), text, fill=255, font=font)
    a = _arr(im) / 255
    if rng.random() < 0.5:
        a = _arr(_grey(a).rotate(float(rng.uniform(-12, 12)), Image.Resampling.BILINEAR, expand=True))
    return _crop_to_ink(np.clip(a, 0, 1))


def _line(rng: np.random.Generator) -> np.ndarray:
    """A straight stroke at least 35 degrees from vertical (a vertical stroke is a 1)."""
    im, d, size, pen = _stroke_canvas(rng)
    W, H = im.size
    angle = np.deg2rad(float(rng.uniform(-55, 55)))  # from horizontal
    length = min(W, H) * float(rng.uniform(0.3, 0.8))
    cx, cy = W * float(rng.uniform(0.35, 0.65)), H * float(rng.uniform(0.35, 0.65))
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=pen)
    return _down(im, size)


def _scribble(rng: np.random.Generator) -> np.ndarray:
    im, d, size, pen = _stroke_canvas(rng)
    W, H = im.size
    n = int(rng.integers(12, 40))
    steps = rng.normal(0, 1, (n, 2)).cumsum(0)
    steps = (steps - steps.min(0)) / np.maximum(np.ptp(steps, 0), 1e-6)
    pts = steps * np.array([W, H]) * float(rng.uniform(0.3, 0.7)) + np.array([W, H]) * 0.2
    d.line([tuple(p) for p in pts], fill=255, width=max(2, pen // 2), joint="curve")
    return _down(im, size)


def _dot(rng: np.random.Generator) -> np.ndarray:
    im, d, size, _ = _stroke_canvas(rng)
    W, H = im.size
    for _ in range(int(rng.integers(1, 4))):
        r = min(W, H) * float(rng.uniform(0.01, 0.05))
        x, y = W * float(rng.uniform(0.2, 0.8)), H * float(rng.uniform(0.2, 0.8))
        d.ellipse([x - r, y - r, x + r, y + r], fill=255)
    return _down(im, size)


def _shape(rng: np.random.Generator) -> np.ndarray:
    """A triangle, rectangle, star, arrow or plus sign, outlined or filled (no circles: a circle is a 0)."""
    im, d, size, pen = _stroke_canvas(rng)
    W, H = im.size
    r = min(W, H) * float(rng.uniform(0.2, 0.4))
    cx, cy = W / 2 + float(rng.uniform(-0.1, 0.1)) * W, H / 2 + float(rng.uniform(-0.1, 0.1)) * H
    kind = int(rng.integers(5))
    t0 = float(rng.uniform(0, 2 * np.pi))
    if kind == 0:  # triangle
        pts = [
            (cx + r * np.cos(t0 + k * 2 * np.pi / 3), cy + r * np.sin(t0 + k * 2 * np.pi / 3))
            for k in range(3)
        ]
    elif kind == 1:  # rectangle
        a, b = r, r * float(rng.uniform(0.5, 1.0))
        pts = [(cx - a, cy - b), (cx + a, cy - b), (cx + a, cy + b), (cx - a, cy + b)]
    elif kind == 2:  # five-pointed star
        pts = [
            (
                cx + (r if k % 2 == 0 else r * 0.4) * np.cos(t0 + k * np.pi / 5),
                cy + (r if k % 2 == 0 else r * 0.4) * np.sin(t0 + k * np.pi / 5),
            )
            for k in range(10)
        ]
    elif kind == 3:  # arrow, pointing right
        s = r / 2
        pts = [
            (cx - r, cy - s / 2),
            (cx + s, cy - s / 2),
            (cx + s, cy - s),
            (cx + r, cy),
            (cx + s, cy + s),
            (cx + s, cy + s / 2),
            (cx - r, cy + s / 2),
        ]
    else:  # plus sign
        d.line([(cx - r, cy), (cx + r, cy)], fill=255, width=pen)
        d.line([(cx, cy - r), (cx, cy + r)], fill=255, width=pen)
        return _down(im, size)
    if rng.random() < 0.5:
        d.polygon(pts, fill=255)
    else:
        d.line([*pts, pts[0]], fill=255, width=pen, joint="curve")
    return _down(im, size)


def _crossed_out(rng: np.random.Generator) -> np.ndarray:
    """A short word (2-3 letters that are not digit look-alikes) struck through with a zigzag."""
    k = int(rng.integers(2, 4))
    word = "".join(NEGATIVE_LETTERS[i] for i in rng.integers(len(NEGATIVE_LETTERS), size=k))
    a = _letter(rng, word)
    h, w = a.shape
    im = Image.fromarray(np.round(a * 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    n = int(rng.integers(3, 8))
    xs = np.linspace(0, w - 1, n)
    ys = np.where(np.arange(n) % 2 == 0, h * 0.15, h * 0.85) + rng.normal(0, h * 0.05, n)
    d.line(list(zip(xs.tolist(), ys.tolist())), fill=255, width=max(2, h // 12), joint="curve")
    return _arr(im) / 255


def negatives(kind: str, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n phone photos (RGB uint8 (H, W, 3)) of something that is not a digit, on paper like the digits'."""
    if kind not in NEGATIVE_KINDS:
        raise ValueError(f"unknown negative kind {kind!r}; choose one of {NEGATIVE_KINDS}")
    return [_negative(kind, rng) for _ in range(n)]


def _negative(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "noise":
        return _noise(rng)
    if kind in ("lined-paper", "empty"):
        H, W = int(rng.integers(200, 601)), int(rng.integers(200, 601))
        cover, where = np.zeros((H, W), np.float32), (H // 3, W // 3, H // 3, W // 3)
        condition = (
            ("ruled", "squared", "margin")[rng.integers(3)]
            if kind == "lined-paper"
            else ("shadow", "gradient", "coloured")[rng.integers(3)]
        )
    else:
        draw = {
            "letter": _letter,
            "line": _line,
            "scribble": _scribble,
            "dot": _dot,
            "shape": _shape,
            "crossed-out": _crossed_out,
        }[kind]
        a = draw(rng)
        cover, where = (
            _canvas(_crop_to_ink(a), rng) if kind in ("letter", "crossed-out") else (a, (0, 0) + a.shape)
        )
        condition = ("clean", "shadow", "gradient", "ruled", "squared", "coloured")[rng.integers(6)]
    layers, paper = _layers(cover, where, condition, rng)
    return _finish(layers, paper, _light(cover.shape, condition, rng, where), rng)


def _noise(rng: np.random.Generator) -> np.ndarray:
    """Sensor-like noise, or a blotchy texture (blurred noise), grey or coloured."""
    H, W = int(rng.integers(200, 601)), int(rng.integers(200, 601))
    px = rng.uniform(0, 1, (H, W, 3 if rng.random() < 0.5 else 1)).astype(np.float32)
    if rng.random() < 0.5:
        r = float(rng.uniform(1, 6))
        px = np.stack([_blur(px[..., i], r) for i in range(px.shape[2])], -1)
        px = (px - px.mean()) / max(float(px.std()), 1e-6) * 0.2 + 0.5
    return np.round(np.clip(np.broadcast_to(px, (H, W, 3)), 0, 1) * 255).astype(np.uint8)
