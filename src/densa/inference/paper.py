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
LINE_RUN = 0.25  # ink running along this share of a row (column), or covering it, is a line, not a stroke
BOX_NEAR = 0.15  # a box's side lies within this share of the ink's extent from its edge
BOX_THIN = 0.15  # ... and is at most this share of the box's other side thick


def running(a: np.ndarray, k: int, axis: int, op) -> np.ndarray:
    """op (np.maximum or np.minimum) over a centred window of k (odd) along axis, edges repeated.

    van Herk / Gil-Werman: two scans in blocks of k, so the cost does not grow with k."""
    if k <= 1:
        return a
    a = np.ascontiguousarray(np.moveaxis(a, axis, -1))
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
    paper around it each pixel is (0 = paper, 1 = black), the most in any channel.

    The paper is first estimated over a quarter of the image, then again over about three stroke widths:
    a shadow's edge or corner is then mistaken for ink only within that small distance."""
    h, w = px.shape[:2]
    widest = 2 * (min(h, w) // 8) + 1
    k = min(widest, max(9, 2 * round(1.5 * stroke(darkness_over(px.min(axis=2, keepdims=True), widest))) + 1))
    return darkness_over(px, k)


def stroke(d: np.ndarray) -> float:
    """A typical pen stroke's width in pixels: the shorter of the horizontal and vertical run of ink
    through each pixel above half (and above 60%) of the strokes' darkness, at its 30th percentile (blobs
    count less); the larger of the two readings. Pixels of lines across the page (long runs, or rows and
    columns a quarter covered) do not count: a grid's or ruled paper's thin lines are not the pen. A
    grid's lines can reach half the strokes' darkness, in fragments (the higher threshold leaves them
    out); a pencil's grainy strokes break up at the higher threshold (the lower one reads them)."""
    top = float(np.percentile(d, 99.9))
    if top < 0.1:
        return 1.0
    widths = [1.0]
    for level in (0.5, 0.6):
        m = d > level * top
        rows, cols = run_lengths(m), run_lengths(m.T).T
        line = (rows >= LINE_RUN * m.shape[1]) | (cols >= LINE_RUN * m.shape[0])
        line |= (m.mean(axis=1, keepdims=True) >= LINE_RUN) | (m.mean(axis=0, keepdims=True) >= LINE_RUN)
        across = np.minimum(rows, cols)[m & ~line]
        if across.size:
            widths.append(float(np.percentile(across, 30)))
    return max(widths)


def run_lengths(m: np.ndarray) -> np.ndarray:
    """For each True pixel, the length of the horizontal run of True it lies in (0 elsewhere)."""
    h, w = m.shape
    edges = np.diff(np.pad(m, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    (r0, c0), (r1, c1) = np.nonzero(edges == 1), np.nonzero(edges == -1)  # row-major: paired in order
    step = np.zeros((h, w + 1), np.int32)
    step[r0, c0] = c1 - c0
    step[r1, c1] -= c1 - c0
    return np.cumsum(step, axis=1)[:, :w] * m


def darkness_over(px: np.ndarray, k: int) -> np.ndarray:
    """darkness() with the paper estimated by a k x k closing."""
    out = np.zeros(px.shape[:2], np.float32)
    for c in range(px.shape[2]):
        channel = px[..., c]
        # the closing takes the brightest pixel around: average out the sensor's noise first
        paper = np.maximum(closing(box_mean(channel, 5).astype(np.float32), k), 1 / 255)
        np.maximum(out, 1 - channel / paper, out=out)
    return np.clip(out, 0, 1)


def box_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over a centred k x k window (k odd), edges repeated."""
    r = k // 2
    for axis in (0, 1):
        p = np.pad(a, [(r + 1, r) if i == axis else (0, 0) for i in range(2)], mode="edge")
        c = np.cumsum(p, axis=axis, dtype=np.float64)
        n = a.shape[axis]
        a = (np.take(c, np.arange(k, k + n), axis=axis) - np.take(c, np.arange(n), axis=axis)) / k
    return a


def dark_ink(grey: np.ndarray) -> bool:
    """Whether the marks are darker than the paper: they stand out from their surroundings further on one
    side than on the other (a shadow's edge stands out equally on both sides, so it cannot decide)."""
    f = max(2, min(grey.shape) // 128)  # averages, so one hot pixel can't decide
    small = grey[: grey.shape[0] // f * f, : grey.shape[1] // f * f]
    small = small.reshape(small.shape[0] // f, f, small.shape[1] // f, f).mean(axis=(1, 3))
    r = small - box_mean(small, 2 * (min(small.shape) // 8) + 1)
    darker, lighter = float(np.percentile(-r, 99.9)), float(np.percentile(r, 99.9))
    if lighter < 0.05 or darker >= 1.25 * lighter:
        return True  # nothing clearly lighter (paper is usually the light side), or clearly darker
    # the paper is most of the image: the marks are the side further from the median (paper left inside
    # a thick loop stands out as lighter than the ink around it, yet is paper)
    paper = float(np.median(small))
    if paper - float(small.min()) >= float(small.max()) - paper:
        return True
    if lighter >= 2 * darker:
        return False
    # not much further either way (a shadow's edge beside the marks, lit paper inside a loop in the
    # shade, with most of the page shaded): the marks are the side with more thin features (narrower
    # than k, so a shadow's edge counts on neither side; pen strokes outweigh what they enclose)
    k = 2 * (min(small.shape) // 16) + 1
    dark_thin = float((closing(small, k) - small).sum())  # what a closing fills: narrow dark marks
    light_thin = float((small + closing(-small, k)).sum())  # what an opening removes: narrow light ones
    return dark_thin >= light_thin


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


def inpaint(ink: np.ndarray, a: int, b: int, axis: int, pen: float = 1.0) -> None:
    """Replace rows (axis 0) or columns a..b-1, widened by a margin, by a blend of the rows just outside:
    a line is gone, a stroke crossing it stays whole, and ink clearly darker than the line (a stroke
    running along it) is kept: as the share of the way from the line's darkness to the pen's (`pen`, the
    strokes' darkness) that it goes, times the pen's (a pen drawn over the line covers it), so a stroke
    along a dark line is not left faint."""
    view = ink if axis == 0 else ink.T
    margin = 2 + (b - a) // 2
    a, b = max(a - margin, 0), min(b + margin, view.shape[0])
    level = np.median(view[a:b], axis=1, keepdims=True)  # the line's own darkness, row by row
    before = view[a - 1] if a > 0 else np.zeros_like(view[0])
    after = view[b] if b < view.shape[0] else np.zeros_like(view[0])
    w = (np.arange(a, b, dtype=np.float32) - (a - 1))[:, None] / (b - (a - 1))
    blend = (1 - w) * before + w * after
    band = view[a:b]
    over = (band - level) / np.maximum(pen - level, 0.1) * pen
    view[a:b] = np.where(band > level + 0.15, np.maximum(blend, over), blend)


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
    removed = 0
    marks = ink[ink > floor]
    pen = float(np.percentile(marks, 99)) if marks.size else 1.0  # the strokes' core (lines are fainter)
    for axis in (0, 1):  # printed lines can be faint: anything above the noise counts
        for a, b in across(ink, floor, axis):
            inpaint(ink, a, b, axis, pen)
            removed += 1
    if removed:  # what is left of faint lines: a level along nearly all of a row or column
        for axis in (0, 1):
            ink = np.maximum(ink - np.percentile(ink, 20, axis=axis, keepdims=True).astype(np.float32), 0)
    strong = ink[ink > floor]
    if strong.size:  # a box is drawn: well above the noise (and specks cannot stretch its extent)
        floor = max(floor, 0.25 * float(np.percentile(strong, 90)))
    sides = box_sides(ink, floor)
    for axis, a, b in sides or []:
        lo, hi = max(a - 2, 0), b + 2
        if axis == 0:
            ink[lo:hi] = 0
        else:
            ink[:, lo:hi] = 0
        removed += 1
    return ink, removed


# --------------------------------------------------------------------------- stray marks


def labels(m: np.ndarray) -> np.ndarray:
    """Connected components (8-neighbours) of a boolean image: int32 labels, 0 = background."""
    h, w = m.shape
    lab = np.where(m, np.arange(1, h * w + 1, dtype=np.int32).reshape(h, w), 0)
    while True:
        p = np.pad(lab, 1)
        grown = lab.copy()
        for i, j in ((i, j) for i in range(3) for j in range(3) if (i, j) != (1, 1)):
            np.maximum(grown, p[i : i + h, j : j + w], out=grown)  # the largest label among the neighbours
        grown *= m
        flat = grown.ravel()
        grown = np.where(m, np.maximum(grown, flat[np.maximum(grown, 1) - 1]), 0)  # jump to the label's label
        if np.array_equal(grown, lab):
            return lab
        lab = grown


def keep_main(ink: np.ndarray, share: float = 0.1) -> np.ndarray:
    """The ink without stray marks: parts (joined across small gaps) with under `share` of the largest
    part's ink are dropped (a speck of dirt), so they cannot move the crop; so are parts touching the
    image's edge (a shadow's corner, the table) when a large enough part lies inside it, and faint marks
    away from every part (even when there is only one)."""
    f = max(1, max(ink.shape) // 96)
    h, w = -(-ink.shape[0] // f), -(-ink.shape[1] // f)
    p = np.pad(ink, ((0, h * f - ink.shape[0]), (0, w * f - ink.shape[1])))
    mass = p.reshape(h, f, w, f).sum(axis=(1, 3))
    m = np.pad(mass > 0.3 * f, 1)
    joined = np.max([m[i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)  # across gaps
    lab = labels(joined)
    totals = np.bincount(lab.ravel(), weights=mass.ravel())
    totals[0] = 0
    if not totals.any():
        return ink
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    inside = totals.copy()
    inside[edge] = 0
    if inside.max() >= share * totals.max():
        totals = inside
    keep = totals >= share * totals.max()
    keep[0] = False
    cells = keep[lab]
    return ink * np.repeat(np.repeat(cells, f, axis=0), f, axis=1)[: ink.shape[0], : ink.shape[1]]
