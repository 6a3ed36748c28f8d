"""The paper under a photographed digit: its light, its colour, and the lines printed or drawn on it.

`darkness(pixels)` divides each colour channel by a local estimate of the paper (a grey closing wider
than any pen stroke), so shadows and light falling off across the page cancel and coloured ink on
coloured paper stands out. `remove_lines(ink, floor)` takes out what is not the digit but looks like
ink: ruled and squared paper's lines and margin lines (thin, straight, across the whole page) and a box
drawn around the digit (four thin sides enclosing the rest). Used by densa.images.
"""

from __future__ import annotations

import numpy as np

LINE_COVER = 0.8  # a row (column) is a line when this share of it is ink
LINE_THIN = 0.025  # ... and its band is at most this share of the page thick (3 px at least)
BOX_NEAR = 0.15  # a box's side lies within this share of the ink's extent from its edge
BOX_THIN = 0.15  # ... and is at most this share of the box's other side thick


def running(a: np.ndarray, k: int, axis: int, op) -> np.ndarray:
    """op (np.maximum or np.minimum) over a centred window of k (odd) along axis, edges repeated.

    van Herk / Gil-Werman: two scans in blocks of k, so the cost does not grow with k."""
    if k <= 1:
        return a
    a = np.moveaxis(a, axis, -1)
    n, r = a.shape[-1], k // 2
    extra = -(n + 2 * r) % k
    p = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(r, r + extra)], mode="edge")
    blocks = p.reshape(*p.shape[:-1], -1, k)
    ahead = op.accumulate(blocks, axis=-1).reshape(p.shape)  # from each block's start
    behind = op.accumulate(blocks[..., ::-1], axis=-1)[..., ::-1].reshape(p.shape)  # to each block's end
    out = op(behind[..., :n], ahead[..., k - 1 : k - 1 + n])
    return np.moveaxis(out, -1, axis)


def closing(a: np.ndarray, k: int) -> np.ndarray:
    """Grey closing with a k x k square: dark features narrower than k are filled with their surroundings;
    wider regions, edges and gradients (a shadow, light falling off) are kept as they are."""
    for op in (np.maximum, np.minimum):
        a = running(running(a, k, 0, op), k, 1, op)
    return a


def darkness(px: np.ndarray) -> np.ndarray:
    """float (H, W, C) in [0, 1], dark ink on lighter paper -> float32 (H, W): how much darker than the
    paper around it each pixel is (0 = paper, 1 = black), the most in any channel."""
    h, w = px.shape[:2]
    k = 2 * (min(h, w) // 8) + 1  # a quarter of the short side: far wider than a pen stroke
    out = np.zeros((h, w), np.float32)
    for c in range(px.shape[2]):
        channel = px[..., c]
        paper = np.maximum(closing(channel, k), 1 / 255)
        np.maximum(out, 1 - channel / paper, out=out)
    return np.clip(out, 0, 1)


# --------------------------------------------------------------------------- lines and boxes


def bands(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True."""
    d = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def across(ink: np.ndarray, floor: float, axis: int) -> list[tuple[int, int]]:
    """Thin bands of rows (axis 0) or columns (axis 1) that are ink nearly all the way across."""
    cover = (ink > floor).mean(axis=1 - axis)
    thin = max(3, round(LINE_THIN * ink.shape[axis]))
    return [(a, b) for a, b in bands(cover >= LINE_COVER) if b - a <= thin]


def inpaint(ink: np.ndarray, a: int, b: int, axis: int, margin: int = 2) -> None:
    """Replace rows (axis 0) or columns a..b-1, widened by margin, by a blend of the rows just outside:
    a line is gone, a stroke crossing it stays whole."""
    a, b = max(a - margin, 0), min(b + margin, ink.shape[axis])
    view = ink if axis == 0 else ink.T
    before = view[a - 1] if a > 0 else None
    after = view[b] if b < view.shape[0] else None
    if before is None or after is None:
        view[a:b] = 0 if before is None and after is None else (before if after is None else after)
        return
    w = (np.arange(a, b, dtype=np.float32) - (a - 1))[:, None] / (b - (a - 1))
    view[a:b] = (1 - w) * before + w * after


def extent(counts: np.ndarray, eps: float = 0.002) -> tuple[int, int]:
    """[start, stop) of a profile of ink pixels, leaving out stray specks (eps of them on each side)."""
    c = np.cumsum(counts)
    return int(np.searchsorted(c, eps * c[-1], side="right")), int(np.searchsorted(c, (1 - eps) * c[-1])) + 1


def box_sides(ink: np.ndarray, floor: float) -> list[tuple[int, int, int]] | None:
    """(axis, start, stop) of the four sides of a box drawn around the rest of the ink, or None."""
    m = ink > floor
    if m.sum() < 64:
        return None
    (r0, r1), (c0, c1) = extent(m.sum(axis=1)), extent(m.sum(axis=0))
    if r1 - r0 < 8 or c1 - c0 < 8:
        return None
    inner = m[r0:r1, c0:c1]
    sides = []
    for axis, length, other in ((0, r1 - r0, c1 - c0), (1, c1 - c0, r1 - r0)):
        cover = inner.mean(axis=1 - axis)
        near = max(2, round(BOX_NEAR * length))
        found = [(a, b) for a, b in bands(cover >= LINE_COVER) if b - a <= BOX_THIN * other]
        first = [s for s in found if s[0] < near]
        last = [s for s in found if s[1] > length - near]
        if not first or not last or first[0] == last[-1]:
            return None
        start = r0 if axis == 0 else c0
        sides += [
            (axis, start + first[0][0], start + first[0][1]),
            (axis, start + last[-1][0], start + last[-1][1]),
        ]
    (_, t0, t1), (_, b0, _), (_, l0, l1), (_, rr0, _) = sides
    if not m[t1 + 1 : b0 - 1, l1 + 1 : rr0 - 1].any():
        return None  # an empty box: nothing inside it to read
    return sides


def remove_lines(ink: np.ndarray, floor: float) -> tuple[np.ndarray, int]:
    """Ink without the paper's lines (rows, then columns, across the page) and a box around the digit:
    (ink, how many lines and sides were removed)."""
    ink = ink.copy()
    strong = ink[ink > floor]
    if strong.size:  # lines and boxes are drawn or printed: well above the noise
        floor = max(floor, 0.25 * float(np.percentile(strong, 90)))
    removed = 0
    for axis in (0, 1):
        for a, b in across(ink, floor, axis):
            inpaint(ink, a, b, axis)
            removed += 1
    sides = box_sides(ink, floor)
    for axis, a, b in sides or []:
        lo, hi = max(a - 2, 0), b + 2
        if axis == 0:
            ink[lo:hi] = 0
        else:
            ink[:, lo:hi] = 0
        removed += 1
    return ink, removed
