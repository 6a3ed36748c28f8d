"""A realistic test set made from MNIST's test split: digits as a person would photograph or scan them.

Each digit is rendered as dark ink on light paper, its 28x28 frame scaled to 60-400 px, placed
off-centre on a larger canvas; some blurred, some noisy, some saved as JPEG, some RGB with a tinted
paper and coloured ink. Deterministic for a seed. `naive(data)` is what most tutorials do with such a
file (grey, resize the whole picture to 28x28) and the baseline densa's preparation must beat.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

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
