"""Things that are not digits, drawn at 28x28 the way densa places ink: the detector's counter-examples.

`outliers(n, seed)` -> uint8 (n, 28, 28): handwritten capital and small letters (jittered strokes of a
built-in stroke alphabet), printed letters (Pillow's own built-in font), scribbles, straight lines,
dots and blobs, shapes (triangles, boxes, stars, arrows, plus signs), hatching and crossed-out words. Each
is drawn on a 2x supersampled canvas, cropped to its ink, scaled so its longer side is 20 pixels and
centred by its centre of mass, as `densa.images` prepares a photo and as MNIST was made.

Letters that are digits in handwriting (O o D Q I l i j J Z z S s b G B g q) are never drawn, and
neither are circles (a 0). The detector (core.detector) learns from these what a digit is *not*; the
threshold that decides is still set on held-out digits only. Pure numpy and Pillow, no files: the set
for a seed is the same on every machine.
"""

from __future__ import annotations

import numpy as np

NOT_OUTLIER_LETTERS = "OoDQIlijJZzSsbGBgq"
PRINTED = "".join(
    c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in NOT_OUTLIER_LETTERS
)
VERSION = 3  # of the drawings: a change to them changes this, so a cached set is never stale
CANVAS = 96  # drawing canvas (pixels, before 2x supersampling)
BOX = 20  # the longer side of the ink in the 28x28 frame, as MNIST

# a stroke alphabet: each letter is strokes of (x, y) points in a unit box (y down); arcs as polylines
_ARC = [(0.5 + 0.5 * np.cos(t), 0.5 + 0.5 * np.sin(t)) for t in np.linspace(0.25 * np.pi, 1.75 * np.pi, 9)]
STROKES: dict[str, list[list[tuple[float, float]]]] = {
    "A": [[(0, 1), (0.5, 0), (1, 1)], [(0.22, 0.6), (0.78, 0.6)]],
    "C": [[(x, y) for x, y in reversed(_ARC)]],
    "E": [[(1, 0), (0, 0), (0, 1), (1, 1)], [(0, 0.5), (0.75, 0.5)]],
    "F": [[(1, 0), (0, 0), (0, 1)], [(0, 0.5), (0.75, 0.5)]],
    "H": [[(0, 0), (0, 1)], [(1, 0), (1, 1)], [(0, 0.5), (1, 0.5)]],
    "K": [[(0, 0), (0, 1)], [(1, 0), (0, 0.55), (1, 1)]],
    "L": [[(0, 0), (0, 1), (0.8, 1)]],
    "M": [[(0, 1), (0, 0), (0.5, 0.6), (1, 0), (1, 1)]],
    "N": [[(0, 1), (0, 0), (1, 1), (1, 0)]],
    "P": [[(0, 1), (0, 0), (0.7, 0), (0.95, 0.15), (0.95, 0.35), (0.7, 0.5), (0, 0.5)]],
    "R": [[(0, 1), (0, 0), (0.7, 0), (0.95, 0.15), (0.95, 0.35), (0.7, 0.5), (0, 0.5)], [(0.4, 0.5), (1, 1)]],
    "T": [[(0, 0), (1, 0)], [(0.5, 0), (0.5, 1)]],
    "U": [[(0, 0), (0, 0.7), (0.2, 1), (0.8, 1), (1, 0.7), (1, 0)]],
    "V": [[(0, 0), (0.5, 1), (1, 0)]],
    "W": [[(0, 0), (0.25, 1), (0.5, 0.35), (0.75, 1), (1, 0)]],
    "X": [[(0, 0), (1, 1)], [(1, 0), (0, 1)]],
    "Y": [[(0, 0), (0.5, 0.5), (1, 0)], [(0.5, 0.5), (0.5, 1)]],
    "e": [
        [(0, 0.55), (1, 0.55), (0.9, 0.25), (0.5, 0.1), (0.1, 0.3), (0, 0.6), (0.2, 0.9), (0.6, 1), (1, 0.85)]
    ],
    "h": [[(0, 0), (0, 1)], [(0, 0.6), (0.4, 0.4), (0.9, 0.45), (1, 0.6), (1, 1)]],
    "k": [[(0, 0), (0, 1)], [(0.9, 0.35), (0, 0.7), (1, 1)]],
    "m": [
        [(0, 1), (0, 0.3)],
        [(0, 0.45), (0.25, 0.3), (0.5, 0.45), (0.5, 1)],
        [(0.5, 0.45), (0.75, 0.3), (1, 0.45), (1, 1)],
    ],
    "n": [[(0, 1), (0, 0.3)], [(0, 0.5), (0.4, 0.3), (0.9, 0.35), (1, 0.55), (1, 1)]],
    "r": [[(0, 1), (0, 0.3)], [(0, 0.6), (0.35, 0.35), (0.9, 0.3)]],
    "t": [[(0.4, 0), (0.4, 0.85), (0.55, 1), (0.85, 0.95)], [(0, 0.3), (0.9, 0.3)]],
    "u": [[(0, 0.3), (0, 0.8), (0.3, 1), (0.7, 0.95), (1, 0.75)], [(1, 0.3), (1, 1)]],
    "w": [[(0, 0.3), (0.25, 1), (0.5, 0.5), (0.75, 1), (1, 0.3)]],
    "x": [[(0, 0.3), (1, 1)], [(1, 0.3), (0, 1)]],
    "y": [[(0, 0.3), (0.5, 0.7)], [(1, 0.3), (0.3, 1.2)]],
    "f": [[(0.9, 0.05), (0.6, 0), (0.4, 0.15), (0.4, 1)], [(0.1, 0.4), (0.8, 0.4)]],
    "a": [
        [(0.95, 0.35), (0.5, 0.3), (0.1, 0.5), (0.1, 0.85), (0.5, 1), (0.95, 0.8)],
        [(0.95, 0.3), (0.95, 1)],
    ],
}
KINDS = ("handwritten", "printed", "scribble", "line", "dots", "shape", "hatch", "crossed-out")
WEIGHTS = (0.2, 0.15, 0.25, 0.1, 0.1, 0.1, 0.05, 0.05)  # how often each kind is drawn


def outliers(n: int, seed: int = 0) -> np.ndarray:
    """n images of things that are not digits, uint8 (n, 28, 28), light ink on black; the same for a seed."""
    rng = np.random.default_rng([seed, 0x0D1])
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):  # one at a time: the first k of n images are outliers(k, seed)
        a, thin = draw(KINDS[rng.choice(len(KINDS), p=WEIGHTS)], rng)
        out[i] = np.round(place(a) * 255)
        if thin:
            out[i] = thicken(out[i])
    return out


def thicken(x: np.ndarray) -> np.ndarray:
    """A 3x3 grey dilation of a 28x28 image: what the preparation does to a fine pen's strokes."""
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(x).filter(ImageFilter.MaxFilter(3)))


def draw(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """One drawing of `kind` on the canvas: float32 (H, W) in [0, 1], ink high; and whether the pen was
    fine."""
    from PIL import Image, ImageDraw

    s = 2 * CANVAS
    im = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(im)
    # a fine pen (thickened after placing, as the preparation thickens a photo's): scribbles mostly
    thin = rng.random() < (0.7 if kind == "scribble" else 0.3)
    pen = max(2, round(s * float(rng.uniform(0.02, 0.05) if thin else rng.uniform(0.05, 0.13))))
    if kind == "printed":
        im = _printed(im, d, rng, pen)
    elif kind == "crossed-out":
        _word(d, rng, pen, s)
        _polyline(d, _zigzag(rng), s, pen, rng, margin=0.05)
    else:
        for stroke in _strokes(kind, rng):
            _polyline(d, stroke, s, pen, rng)
    a = np.asarray(im.resize((CANVAS, CANVAS), Image.Resampling.BOX), dtype=np.float32) / 255
    return a, thin


def _strokes(kind: str, rng: np.random.Generator) -> list[np.ndarray]:
    if kind == "handwritten":
        letter = list(STROKES)[rng.integers(len(STROKES))]
        return _jitter(STROKES[letter], rng)
    if kind == "scribble":
        pts = rng.normal(0, 1, (int(rng.integers(6, 45)), 2)).cumsum(0)
        return [_unit(pts)]
    if kind == "line":
        a = np.deg2rad(rng.uniform(-55, 55))  # at least 35 degrees from vertical (a vertical line is a 1)
        lines = [np.array([[0, 0], [np.cos(a), np.sin(a)]])]
        for _ in range(int(rng.integers(0, 3))):  # sometimes two or three, roughly parallel
            off = rng.uniform(0.15, 0.5) * len(lines)
            lines.append(lines[0] + [[-np.sin(a) * off, np.cos(a) * off]] + rng.normal(0, 0.03, (2, 2)))
        return _fit_all(lines)
    if kind == "dots":
        c = rng.uniform(0, 1, (int(rng.integers(1, 7)), 2))
        return [np.array([p, p + rng.normal(0, 0.005, 2)]) for p in c]
    if kind == "shape":
        return _shape(rng)
    if kind == "hatch":
        k, a = int(rng.integers(3, 7)), np.deg2rad(rng.uniform(0, 180))
        u, v = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
        lines = [np.array([v * j - u, v * j + u]) * 0.5 for j in np.linspace(-1, 1, k)]
        if rng.random() < 0.4:  # a grid
            lines += [np.array([u * j - v, u * j + v]) * 0.5 for j in np.linspace(-1, 1, k)]
        return _fit_all(lines)
    raise ValueError(f"unknown kind {kind!r}")


def _shape(rng: np.random.Generator) -> list[np.ndarray]:
    t0, kind = rng.uniform(0, 2 * np.pi), int(rng.integers(5))
    if kind == 0:  # triangle
        t = t0 + np.arange(4) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif kind == 1:  # box
        b = rng.uniform(0.4, 1)
        pts = np.array([[-1, -b], [1, -b], [1, b], [-1, b], [-1, -b]])
    elif kind == 2:  # star
        t = t0 + np.arange(11) * np.pi / 5
        r = np.where(np.arange(11) % 2 == 0, 1, 0.4)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif kind == 3:  # arrow
        pts = np.array([[-1, 0], [1, 0], [0.5, -0.4], [1, 0], [0.5, 0.4]])
    else:  # plus sign
        return _fit_all([np.array([[-1, 0], [1, 0]]), np.array([[0, -1], [0, 1]])])
    return _fit_all([pts + rng.normal(0, 0.04, pts.shape)])


def _jitter(strokes, rng: np.random.Generator) -> list[np.ndarray]:
    """A letter as a hand writes it: wobbly points, a random width, slant and tilt."""
    width, slant, tilt = rng.uniform(0.55, 1.15), rng.uniform(-0.35, 0.35), np.deg2rad(rng.uniform(-12, 12))
    m = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]]) @ np.array(
        [[width, slant], [0, 1]]
    )
    return _fit_all([(np.asarray(st, float) + rng.normal(0, 0.045, (len(st), 2))) @ m.T for st in strokes])


def _word(d, rng: np.random.Generator, pen: int, s: int) -> None:
    """Two or three handwritten letters side by side."""
    k = int(rng.integers(2, 4))
    for j in range(k):
        letter = list(STROKES)[rng.integers(len(STROKES))]
        for st in _jitter(STROKES[letter], rng):
            st = st * [1 / k, 0.6] + [j / k, 0.2]
            _polyline(d, st, s, max(2, pen // 2), rng, margin=0.05)


def _zigzag(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(3, 8))
    ys = np.where(np.arange(n) % 2 == 0, 0.2, 0.8) + rng.normal(0, 0.05, n)
    return np.stack([np.linspace(0, 1, n), ys], 1)


def _unit(pts: np.ndarray) -> np.ndarray:
    lo, span = pts.min(0), np.maximum(np.ptp(pts, 0), 1e-6)
    return (pts - lo) / span.max()


def _fit_all(strokes: list[np.ndarray]) -> list[np.ndarray]:
    """All strokes scaled together into the unit box (keeping their aspect ratio)."""
    allp = np.concatenate(strokes)
    lo, span = allp.min(0), max(float(np.ptp(allp, 0).max()), 1e-6)
    return [(st - lo) / span for st in strokes]


def _polyline(d, pts, s: int, pen: int, rng: np.random.Generator, margin: float = 0.15) -> None:
    xy = [(float(x), float(y)) for x, y in np.asarray(pts) * s * (1 - 2 * margin) + s * margin]
    if len(xy) == 2 and np.hypot(xy[1][0] - xy[0][0], xy[1][1] - xy[0][1]) < pen:  # a dot
        x, y = xy[0]
        r = pen * float(rng.uniform(0.3, 1.5))
        d.ellipse([x - r, y - r, x + r, y + r], fill=255)
        return
    d.line(xy, fill=255, width=pen, joint="curve")
    for x, y in (xy[0], xy[-1]):  # round ends, as a pen leaves them
        d.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=255)


def _printed(im, d, rng: np.random.Generator, pen: int):
    """A letter in Pillow's built-in font, sometimes slanted (italic) or turned a little."""
    from PIL import Image, ImageFont

    text = PRINTED[rng.integers(len(PRINTED))]
    font = ImageFont.load_default(size=int(im.size[1] * 0.6))
    left, top, right, bottom = font.getbbox(text)
    x, y = (im.size[0] - (right - left)) / 2 - left, (im.size[1] - (bottom - top)) / 2 - top
    d.text(
        (x, y), text, fill=255, font=font, stroke_width=int(rng.integers(0, 1 + pen // 4)), stroke_fill=255
    )
    shear = float(rng.uniform(-0.35, 0.35)) if rng.random() < 0.5 else 0.0
    c = im.size[1] / 2
    im = im.transform(
        im.size, Image.Transform.AFFINE, (1, shear, -shear * c, 0, 1, 0), Image.Resampling.BILINEAR
    )
    return im.rotate(float(rng.uniform(-12, 12)), Image.Resampling.BILINEAR)


def place(a: np.ndarray) -> np.ndarray:
    """Crop to the ink, scale its longer side to BOX pixels, centre its mass on (14, 14): float32 28x28."""
    from PIL import Image

    rows, cols = np.flatnonzero(a.max(1) > 0.05), np.flatnonzero(a.max(0) > 0.05)
    if not len(rows):
        return np.zeros((28, 28), np.float32)
    crop = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    f = BOX / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    small = np.asarray(Image.fromarray(crop, mode="F").resize(size, Image.Resampling.BOX), dtype=np.float32)
    small = np.clip(small / max(float(small.max()), 1e-6), 0, 1)
    total = small.sum()
    cy = small.sum(1) @ np.arange(size[1]) / total
    cx = small.sum(0) @ np.arange(size[0]) / total
    top = min(max(round(14 - cy), 0), 28 - size[1])
    left = min(max(round(14 - cx), 0), 28 - size[0])
    out = np.zeros((28, 28), np.float32)
    out[top : top + size[1], left : left + size[0]] = small
    return out


def cached_outliers(n: int, seed: int = 0) -> np.ndarray:
    """outliers(n, seed), kept in densa's user cache (drawn once per machine, a few seconds); drawn afresh
    when the cache cannot be read or written."""
    from ._io import write_atomic
    from .data import cache_dir

    path = cache_dir() / "outliers" / f"v{VERSION}-{seed}-{n}.npy"
    try:
        x = np.load(path, allow_pickle=False)
        if x.shape == (n, 28, 28) and x.dtype == np.uint8:
            return x
    except (OSError, ValueError):
        pass
    x = outliers(n, seed)
    try:
        import io

        buf = io.BytesIO()
        np.save(buf, x, allow_pickle=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buf.getvalue())
    except OSError:
        pass  # a read-only home: the next run draws them again
    return x
