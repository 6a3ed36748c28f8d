"""Matplotlib figures of a trained classifier, for `densa report`; each one rendered to PNG bytes.

Figures are built on matplotlib.figure.Figure (the Agg renderer, no pyplot and no global state) and
have a fixed size in pixels. Image grids are one mosaic drawn with nearest-neighbour scaling at a whole
number of screen pixels per image pixel, so digits stay crisp. matplotlib is the optional `report` extra:
without it, importing this module raises densa's one-line error with the install command.
"""

from __future__ import annotations

import io

import numpy as np

from ..core.extras import require

require("matplotlib", "report", "the report")
from matplotlib import rc_context  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

PLAIN = FuncFormatter(lambda v, _: f"{v:g}")  # 1, 10, 100 on log axes (no mathtext: easier to read)
DPI = 100  # pixels per inch: a figure of (w, h) inches is a PNG of (w * DPI, h * DPI) pixels
TILE_PX = 84  # screen pixels for one tile's longer side (28 x 28 digits: 3 pixels each)


def require_matplotlib() -> None:
    require("matplotlib", "report", "the report")


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def margins(fig: Figure, left: float, right: float, bottom: float, top: float, **space) -> None:
    """Place the subplots by margins in inches (a layout engine would cost more than the drawing)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h, **space)


def class_label(i: int, name: str) -> str:
    return name if str(name) == str(i) else f"{i} {name}"


# --------------------------------------------------------------------------- curves and matrices


# Okabe-Ito colours: told apart with any colour vision, and in greyscale by their markers and dashes
COLOURS = {"train": "#0072B2", "val": "#E69F00", "test": "#D55E00", "other": "#009E73"}
LARGE = {"font.size": 13, "axes.titlesize": 14, "legend.fontsize": 12}  # still legible at phone width


def split_of(key: str) -> str:
    """metrics.jsonl field -> split: 'loss'/'acc' are training, 'val_loss' is 'val', and so on."""
    return "train" if key in ("loss", "acc") else key.rsplit("_", 1)[0]


SPLIT_LABELS = {"train": "train", "val": "validation"}


def curves(
    records: list[dict],
    best_epoch: int | None = None,
    test: dict | None = None,
    train_label: str = "train",
) -> Figure | None:
    """Loss above accuracy, per epoch: 'loss'/'acc' are training, 'val_loss'/'val_acc' etc. other splits.

    `best_epoch` draws a dashed line there (pass it only when validation chose it); `test` is
    {"epoch": E, "loss": L, "acc": A}, drawn as one marked point per panel at the epoch it measured.
    """
    keys = list(dict.fromkeys(k for r in records for k in r))
    panels = {
        "loss": [k for k in keys if k == "loss" or k.endswith("_loss")],
        "accuracy": [k for k in keys if k == "acc" or k.endswith("_acc")],
    }
    panels = {name: ks for name, ks in panels.items() if ks}
    if not panels:
        return None
    with rc_context(LARGE):
        fig = Figure(figsize=(5.6, 0.6 + 3.3 * len(panels)), dpi=DPI)
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        margins(fig, 0.95, 0.2, 0.65, 0.4, hspace=0.3)
        for ax, (name, ks) in zip(axes, panels.items()):
            for k in ks:
                _series(ax, records, k, train_label)
            point = test and test.get("loss" if name == "loss" else "acc")
            if isinstance(point, (int, float)):
                ax.plot(
                    [test["epoch"]],
                    [point],
                    linestyle="none",
                    marker="*",
                    markersize=16,
                    color=COLOURS["test"],
                    markeredgecolor="black",
                    zorder=5,
                    label=f"test {point:.4f}",
                )
            if best_epoch is not None:
                ax.axvline(
                    best_epoch, color="0.35", linestyle="--", linewidth=1.2, label=f"best epoch {best_epoch}"
                )
            ax.set_ylabel(name)
            ax.tick_params(labelsize=LARGE["font.size"])
            ax.set_title(name.capitalize() + " per epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(loc="best")
        axes[-1].set_xlabel("epoch")
    return fig


def _series(ax, records: list[dict], key: str, train_label: str) -> None:
    pts = [
        (r.get("epoch", i + 1), r[key]) for i, r in enumerate(records) if isinstance(r.get(key), (int, float))
    ]
    if not pts:
        return
    x, y = zip(*pts)
    split = split_of(key)
    style = {"train": ("o", "-"), "val": ("s", "--")}.get(split, ("^", ":"))
    label = train_label if split == "train" else SPLIT_LABELS.get(split, split)
    ax.plot(
        x,
        y,
        marker=style[0],
        linestyle=style[1],
        linewidth=2,
        color=COLOURS.get(split, COLOURS["other"]),
        label=label,
    )


def confusion(cm, classes, title: str) -> Figure:
    """Heatmap of counts (log colour scale, so a few mistakes still show) with each count written in."""
    cm = np.asarray(cm)
    k = len(classes)
    labels = [class_label(i, c) for i, c in enumerate(classes)]
    longest = max(map(len, labels))
    side = max(6.0, 0.55 * k + 2.5)
    fig = Figure(figsize=(side + 1.4, side), dpi=DPI)
    ax = fig.subplots()
    under = 0.65 + (0.06 * longest if longest > 2 else 0.1)  # rotated tick labels need room
    margins(fig, 0.7 + 0.08 * longest, 1.0, under, 0.45)
    norm = LogNorm(vmin=1, vmax=max(int(cm.max()), 2))
    im = ax.imshow(np.ma.masked_equal(cm, 0), cmap=_cmap("Blues", bad="white"), norm=norm)
    size = 9 if k <= 12 else 7
    for (t, p), v in np.ndenumerate(cm):
        if v:
            color = "white" if norm(v) > 0.6 else "black"
            ax.text(p, t, str(int(v)), ha="center", va="center", fontsize=size, color=color)
    if longest > 2:
        ax.set_xticks(range(k), labels, rotation=45, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(range(k), labels)
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="images (log scale)")
    bar.ax.yaxis.set_major_formatter(PLAIN)
    bar.ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    return fig


def reliability(cal: dict) -> Figure:
    """Accuracy vs mean confidence per confidence bin (the gap to the diagonal is miscalibration).

    Accuracy bars are filled; the gap from each bar's top to its mean confidence is an outlined,
    hatched box (vermillion where the model is over-confident, bluish green where it is under-confident),
    so neither colour is mixed with the other where they overlap.
    """
    bins = cal["bins"]
    lo = np.array([b["lo"] for b in bins])
    width = np.array([b["hi"] - b["lo"] for b in bins])
    count = np.array([b["count"] for b in bins])
    acc = np.array([b["accuracy"] for b in bins])
    conf = np.array([b["confidence"] for b in bins])
    with rc_context(LARGE):
        fig = Figure(figsize=(6, 6.5), dpi=DPI)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        margins(fig, 0.9, 0.2, 0.7, 0.45, hspace=0.08)
        used = count > 0
        top.bar(
            lo[used],
            acc[used],
            width=width[used],
            align="edge",
            color="#9CC9E8",
            edgecolor="white",
            label="accuracy",
        )
        for mask, colour, label in (
            (used & (conf > acc), COLOURS["test"], "over-confident gap"),
            (used & (conf < acc), COLOURS["other"], "under-confident gap"),
        ):
            if mask.any():
                top.bar(
                    lo[mask],
                    conf[mask] - acc[mask],
                    bottom=acc[mask],
                    width=width[mask],
                    align="edge",
                    facecolor="none",
                    edgecolor=colour,
                    hatch="///",
                    linewidth=1.5,
                    label=label,
                )
        top.plot([0, 1], [0, 1], linestyle="--", color="0.2", label="perfectly calibrated")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy in bin")
        for ax in (top, bottom):
            ax.tick_params(labelsize=LARGE["font.size"])
        top.set_title(f"Reliability diagram · ECE = {100 * cal['ece']:.2f}% ({len(bins)} bins)")
        top.legend(loc="best")
        top.grid(alpha=0.3)
        bottom.bar(lo[used], count[used], width=width[used], align="edge", color="0.5", edgecolor="white")
        bottom.set_yscale("log")
        bottom.yaxis.set_major_formatter(PLAIN)
        bottom.set_xlabel("confidence (probability of the predicted class)")
        bottom.set_ylabel("images")
        bottom.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------- image grids


def _cmap(name: str, bad: str):
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad=bad)


def mosaic(tiles: np.ndarray, ncols: int, gap_x: int, gap_y: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(n, h, w) tiles -> one float canvas with NaN between tiles, and each tile's (row, col) top-left."""
    n, h, w = tiles.shape
    nrows = max(1, -(-n // ncols))
    canvas = np.full((nrows * (h + gap_y), ncols * (w + gap_x) - gap_x), np.nan)
    corners = []
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        y, x = r * (h + gap_y) + gap_y, c * (w + gap_x)  # the gap above a tile holds its caption
        canvas[y : y + h, x : x + w] = tile
        corners.append((y, x))
    return canvas, corners


def grid(
    tiles: np.ndarray,
    ncols: int,
    title: str,
    captions: list[str] | None = None,
    row_labels: list[str] | None = None,
    cmap: str = "gray_r",
    norm: Normalize | None = None,
    caption_lines: int = 2,
) -> Figure:
    """Tiles in rows of `ncols`, each scaled by a whole number of pixels, optional captions above each."""
    tiles = np.asarray(tiles, dtype=np.float64)
    n, h, w = tiles.shape
    scale = max(1, round(TILE_PX / max(h, w)))  # screen pixels per tile pixel
    gap_y = -(-(12 * caption_lines + 6) // scale) if captions else max(1, 6 // scale)
    text_px = 6 * max(len(line) for c in captions for line in c.split("\n")) if captions else 0
    gap_x = max(1, -(-max(20, text_px - w * scale + 10) // scale)) if captions else max(1, 6 // scale)
    canvas, corners = mosaic(tiles, ncols, gap_x, gap_y)
    overhang = max(0, text_px - w * scale) // 2  # captions wider than the first and last tiles
    left = 12 + overhang + (7 * max(map(len, row_labels)) if row_labels else 0)
    top, right, bottom = 34, 12 + overhang, 8
    width_px, height_px = left + right + canvas.shape[1] * scale, top + bottom + canvas.shape[0] * scale
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    ax = fig.add_axes(
        (
            left / width_px,
            bottom / height_px,
            canvas.shape[1] * scale / width_px,
            canvas.shape[0] * scale / height_px,
        )
    )
    norm = norm or Normalize(0, 255)
    ax.imshow(canvas, cmap=_cmap(cmap, bad="0.85"), norm=norm, interpolation="nearest", aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if captions:
        for (y, x), text in zip(corners, captions):
            ax.text(
                x + w / 2, y - 0.5 - 2 / scale, text, ha="center", va="bottom", fontsize=7.5, linespacing=1.1
            )
    if row_labels:
        centers = [i * (h + gap_y) + gap_y + h / 2 - 0.5 for i in range(len(row_labels))]
        ax.set_yticks(centers, row_labels, fontsize=9)
        ax.tick_params(axis="y", length=0)
    fig.suptitle(title, x=0.5, y=1 - 6 / height_px, va="top", fontsize=11)
    return fig


def weights(w: np.ndarray, title: str, captions: list[str] | None = None, ncols: int = 16) -> Figure:
    """Weight tiles (n, h, w), each scaled to its own largest |weight|: red positive, blue negative."""
    w = np.asarray(w, dtype=np.float64)
    peak = np.abs(w).reshape(len(w), -1).max(axis=1)
    scaled = w / np.where(peak > 0, peak, 1)[:, None, None]
    return grid(
        scaled,
        min(ncols, len(w)),
        title,
        captions=captions,
        cmap="RdBu_r",
        norm=Normalize(-1, 1),
        caption_lines=1,
    )
