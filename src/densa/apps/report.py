"""`densa report RUN`: PNG figures and one self-contained HTML page about a trained run.

write_report(run) reads what the run folder holds (model.safetensors, metrics.jsonl, summary.json),
assesses the model on a split (core.metrics.assess), draws the figures (apps.plots) and writes them,
plus index.html with every image embedded as a data: URI, into RUN/report/. Whatever is missing (an
interrupted run has no model yet, an old one no metrics) is left out with a note saying so.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core._io import write_atomic
from ..core.checkpoint import RUN_FILES
from ..core.errors import DensaError
from ..core.extras import require
from .page import page_html

MISTAKES = 30  # most confident mistakes shown, 10 per row
PER_CLASS = 10  # correctly classified examples per class
UNITS = 64  # first-layer units or filters shown


@dataclass
class RunFiles:
    """What a run folder holds; `notes` says what is missing or unreadable."""

    folder: Path
    checkpoint: Path | None
    records: list[dict]  # metrics.jsonl, one dict per epoch, fields as written
    summary: dict | None
    notes: list[str]


def read_run(run: Path) -> RunFiles:
    """A run folder, or a checkpoint file (its folder's metrics count only if it is model.safetensors)."""
    if not run.exists():
        raise DensaError(f"{run} does not exist; pass a run folder written by `densa train`")
    if run.is_dir():
        folder, ckpt = run, run / "model.safetensors"
        if not any((folder / n).is_file() for n in RUN_FILES):
            raise DensaError(f"{run} is not a densa run folder (none of {', '.join(RUN_FILES)} in it)")
    else:
        folder, ckpt = run.parent, run
    files = RunFiles(folder, ckpt, [], None, [])
    if not ckpt.is_file():
        files.checkpoint = None
        files.notes.append(
            f"{ckpt.name} is missing (was training interrupted?): no evaluation, confusion matrix, "
            "example grids, weights or calibration"
        )
    if ckpt.name != "model.safetensors":  # a loose checkpoint: the files beside it need not be its own
        files.notes.append(f"only the checkpoint {ckpt.name} was given: no training curves or run summary")
        return files
    read_metrics(folder / "metrics.jsonl", files)
    read_summary(folder / "summary.json", files)
    return files


def read_metrics(path: Path, files: RunFiles) -> None:
    """metrics.jsonl's records into `files.records`; a line that is not a JSON object is noted, skipped."""
    if not path.is_file():
        files.notes.append("metrics.jsonl is missing: no training curves")
        return
    for i, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and record:
            files.records.append(record)
        elif line.strip():
            files.notes.append(f"metrics.jsonl line {i} is not a JSON object; skipped")


def read_summary(path: Path, files: RunFiles) -> None:
    if not path.is_file():
        files.notes.append("summary.json is missing: no timings or final training numbers")
        return
    try:
        files.summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        files.notes.append("summary.json is not valid JSON; left out")


def first_layer(model, classes) -> tuple[np.ndarray, list[str] | None, str] | None:
    """The first Linear (each unit's 784 weights as 28x28) or Conv2d (its filters), whichever comes first."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach().cpu().float().numpy()  # (out, in, kh, kw)
            o, c = w.shape[:2]
            tiles = w.reshape(o * c, *w.shape[2:])[:UNITS]
            caps = [f"{i // c}" if c == 1 else f"{i // c}.{i % c}" for i in range(len(tiles))]
            what = f"{o} filters" if c == 1 else f"{o} filters x {c} input channels"
            return tiles, caps, f"First conv layer: {what}, {w.shape[2]}x{w.shape[3]}"
        if isinstance(m, nn.Linear):
            if m.in_features != 784:
                return None
            w = m.weight.detach().cpu().float().numpy()
            tiles = w[:UNITS].reshape(-1, 28, 28)
            linears = sum(isinstance(x, nn.Linear) for x in model.modules())
            if linears == 1 and m.out_features == len(classes):  # a linear classifier: class templates
                return tiles, list(classes), "Weights of the linear classifier, one 28x28 template per class"
            shown = f"units 0-{len(tiles) - 1} of {m.out_features}" if m.out_features > UNITS else "all units"
            return tiles, None, f"First layer: each hidden unit's 784 input weights as 28x28 ({shown})"
    return None


CAPTIONS = {
    "curves": "Per epoch. 'train' is averaged over the epoch while the weights change; other splits "
    "are measured after it.",
    "confusion": "Rows are the true class, columns the predicted one; the diagonal is correct. The colour "
    "scale is logarithmic so that single mistakes still show.",
    "mistakes": "Misclassified images the model was surest about: true label, predicted label and the "
    "probability it gave that prediction.",
    "correct": "A random sample (seed 0) of correctly classified images of each class; a short or empty "
    "row means few or none of that class were recognised.",
    "first_layer": "Red: positive weight, blue: negative, white: zero. Each tile is scaled to its own "
    "largest |weight|.",
    "reliability": "Accuracy against confidence in equal-width bins: bars below the diagonal mean the model "
    "is over-confident there (its confidence is higher than its accuracy), bars above it under-confident. "
    "The lower panel counts images per bin; the expected calibration error (ECE) weights each bin's gap "
    "by its share of the images.",
}
CALIBRATED = 0.01  # a mean gap (accuracy - confidence) within 1 point is called calibrated


def smoothing_of(ckpt) -> float:
    """The label smoothing the model was trained with (0 when unknown)."""
    value = ckpt.meta.get("train", {}).get("label_smoothing", 0.0) if ckpt is not None else 0.0
    return float(value) if isinstance(value, (int, float)) else 0.0


def smoothing_floor(eps: float, k: int) -> tuple[float, float]:
    """(target probability of the true class, lowest possible training loss) with smoothing eps, k classes.

    Smoothed targets give the true class 1 - eps + eps/k and every other class eps/k; cross-entropy
    against them is at least their entropy, reached only when the model predicts exactly those targets.
    """
    t, o = 1 - eps + eps / k, eps / k
    return t, float(-t * np.log(t) - (k - 1) * o * np.log(o)) if eps > 0 else 0.0


def smoothing_note(eps: float, k: int) -> str:
    """What label smoothing does to the loss curves and to calibration, for the Training section."""
    t, floor = smoothing_floor(eps, k)
    return (
        f"Label smoothing {eps:g} is on: each training target gives the true class {t:.3g} and every other "
        f"class {eps / k:.3g}, instead of 1 and 0. The training loss is measured against those targets, "
        f"so it cannot fall below their entropy, {floor:.3f}; the validation and test losses are plain "
        "cross-entropy against the true labels, so compare them with each other, not with the training "
        f"loss. Smoothing also caps the confidence the model is trained towards at about {t:.0%}: a "
        "smoothed model is often under-confident (right more often than its confidence says), which the "
        "reliability diagram shows as bars above the diagonal and the ECE counts as miscalibration."
    )


def calibration_gap(cal: dict) -> tuple[float, float]:
    """(mean of accuracy - confidence over the images, share of images in bins where accuracy is higher)."""
    bins = [b for b in cal["bins"] if b["count"]]
    n = sum(b["count"] for b in bins) or 1
    gap = sum(b["count"] * (b["accuracy"] - b["confidence"]) for b in bins) / n
    above = sum(b["count"] for b in bins if b["accuracy"] > b["confidence"]) / n
    return gap, above


def reliability_caption(cal: dict, eps: float = 0.0) -> str:
    """The reliability diagram's caption: how to read it, then which way this model is off (measured)."""
    gap, above = calibration_gap(cal)
    if abs(gap) < CALIBRATED:
        verdict = (
            f"This model is close to calibrated: its accuracy and confidence differ by {100 * gap:+.1f} "
            "points on average."
        )
    elif gap > 0:
        verdict = (
            f"This model is under-confident: {above:.0%} of the images fall in bins whose bars rise above "
            f"the diagonal, and it is right {100 * gap:.1f} points more often than its confidence says."
        )
    else:
        verdict = (
            f"This model is over-confident: {1 - above:.0%} of the images fall in bins whose bars stay "
            f"below the diagonal, and its confidence exceeds its accuracy by {-100 * gap:.1f} points."
        )
    if eps > 0:
        verdict += f" It was trained with label smoothing {eps:g}, which pulls confidence down on purpose" + (
            ", so this under-confidence is expected." if gap >= CALIBRATED else "."
        )
    return f"{CAPTIONS['reliability']} {verdict}"


def curves_caption(val: bool, best: int | None, test: dict | None, eps: float) -> str:
    parts = [CAPTIONS["curves"]]
    if val:
        parts.append("'validation' is a part of the training set held out from training.")
    if test:
        parts.append(
            f"The star is the test split, measured once when training ended, on the weights of epoch "
            f"{test['epoch']}."
        )
    if best is not None:
        parts.append(
            f"The dashed line marks epoch {best}, the lowest validation loss: its weights were kept."
        )
    if eps > 0:
        parts.append(f"Training loss is against smoothed targets (label smoothing {eps:g}); see below.")
    return " ".join(parts)


def recorded_test(files: RunFiles, ckpt) -> dict | None:
    """{"epoch", "loss", "acc"}: the test numbers training recorded, at the epoch whose weights it tested."""
    for source in (files.summary, ckpt.meta.get("metrics") if ckpt is not None else None):
        if isinstance(source, dict) and isinstance(source.get("test_acc"), (int, float)):
            epoch = source.get("best_epoch")
            if not isinstance(epoch, int) or isinstance(epoch, bool):
                epoch = files.records[-1].get("epoch", len(files.records)) if files.records else None
            if isinstance(epoch, int):
                return {"epoch": epoch, "loss": source.get("test_loss"), "acc": source["test_acc"]}
    return None


def val_best_epoch(files: RunFiles, ckpt) -> int | None:
    """The epoch chosen on the validation loss, or None when the run had no validation split.

    Without validation, summary.json's best_epoch is simply the last epoch: nothing chose it, so no line.
    """
    if not any("val_loss" in r for r in files.records):
        return None
    for d in (files.records[-1], files.summary, ckpt.meta.get("metrics") if ckpt is not None else None):
        if isinstance(d, dict) and isinstance(d.get("best_epoch"), int) and d["best_epoch"] > 0:
            return d["best_epoch"]
    return None


def figures_for(ckpt, result, images, ds, split) -> dict[str, tuple[object, str]]:
    """name -> (matplotlib Figure, caption) for everything that needs the model and its predictions."""
    from . import plots

    classes = [str(c) for c in ds.classes]
    probs, preds, labels = result["probs"], result["preds"], result["labels"]
    conf = probs.max(axis=1)
    figs = {}
    title = f"Confusion matrix · {ds.name} {split} · {result['n']:,} images · accuracy {result['acc']:.2%}"
    figs["confusion"] = plots.confusion(result["confusion"], classes, title)
    wrong = np.flatnonzero(preds != labels)
    if len(wrong):
        top = wrong[np.argsort(-conf[wrong], kind="stable")][:MISTAKES]
        caps = [f"true {classes[labels[i]]}\npred {classes[preds[i]]} ({conf[i]:.2f})" for i in top]
        title = f"The {len(top)} most confident mistakes (of {len(wrong):,})"
        figs["mistakes"] = plots.grid(images[top].numpy(), min(10, len(top)), title, captions=caps)
    rng = np.random.default_rng(0)
    tiles = np.full((len(classes), PER_CLASS, 28, 28), np.nan)
    row_labels = []
    for k, name in enumerate(classes):
        ok = np.flatnonzero((labels == k) & (preds == k))
        pick = np.sort(rng.choice(ok, size=min(PER_CLASS, len(ok)), replace=False))
        tiles[k, : len(pick)] = images[pick].numpy()
        row_labels.append(plots.class_label(k, name) + ("" if len(ok) else " (none)"))
    title = f"Correctly classified {split} images, up to {PER_CLASS} per class"
    figs["correct"] = plots.grid(tiles.reshape(-1, 28, 28), PER_CLASS, title, row_labels=row_labels)
    layer = first_layer(ckpt.model, classes)
    if layer is not None:
        tiles, caps, title = layer
        figs["first_layer"] = plots.weights(tiles, title, captions=caps, ncols=16 if caps is None else 10)
    figs["reliability"] = plots.reliability(result["calibration"])
    captions = {**CAPTIONS, "reliability": reliability_caption(result["calibration"], smoothing_of(ckpt))}
    return {name: (fig, captions[name]) for name, fig in figs.items()}


def training_curves(files: RunFiles, ckpt) -> dict[str, tuple[object, str]]:
    """{"curves": (figure, caption)} from metrics.jsonl: validation, the test point, the best epoch."""
    from . import plots

    best, test, eps = val_best_epoch(files, ckpt), recorded_test(files, ckpt), smoothing_of(ckpt)
    label = "train (smoothed targets)" if eps > 0 else "train"
    fig = plots.curves(files.records, best, test, train_label=label)
    if fig is None:
        files.notes.append("metrics.jsonl has no loss or accuracy fields: no training curves")
        return {}
    val = any("val_loss" in r for r in files.records)
    return {"curves": (fig, curves_caption(val, best, test, eps))}


def write_report(run, out=None, *, dataset=None, split="test", data_dir=None, log=print) -> Path:
    """Write RUN/report/ (or `out`): one PNG per figure and index.html with all of them embedded."""
    require("matplotlib", "report", "the report")  # before any work
    from . import plots

    t0 = time.perf_counter()
    run = Path(run)
    files = read_run(run)
    if out is None:
        whole_run = run.is_dir() or run.name == "model.safetensors"
        out = files.folder / ("report" if whole_run else f"{run.stem}-report")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DensaError(f"--out {out} is a file; pass a folder for the report")
    ckpt = ds = result = None
    figs: dict[str, tuple[object, str]] = {}
    if files.checkpoint is not None:
        from ..core.checkpoint import load
        from ..core.metrics import assess
        from ..inference.model import load_split

        ckpt = load(files.checkpoint)
        ds, images, labels = load_split(ckpt, dataset, split, data_dir)
        result = assess(ckpt.model, images, labels, ds.classes)
        figs = figures_for(ckpt, result, images, ds, split)
        if "first_layer" not in figs:
            files.notes.append("the first layer is neither a Linear on 784 pixels nor a Conv2d: no weights")
        if "mistakes" not in figs:
            files.notes.append(f"no mistakes on the {split} split: no mistakes grid")
    if files.records:
        figs = {**training_curves(files, ckpt), **figs}
    pngs = {name: (plots.png_bytes(fig), caption) for name, (fig, caption) in figs.items()}
    for name in CAPTIONS:  # each file written whole; none left over from an earlier report
        if name in pngs:
            write_atomic(out / f"{name}.png", pngs[name][0])
        else:
            (out / f"{name}.png").unlink(missing_ok=True)
    page = out / "index.html"
    eps = smoothing_of(ckpt)
    note = smoothing_note(eps, len(ds.classes)) if eps > 0 else None  # eps > 0 only with a checkpoint
    write_atomic(page, page_html(files, ckpt, ds, split, result, pngs, smoothing=note))
    log(f"wrote report to {page} ({len(pngs)} figures, {time.perf_counter() - t0:.1f}s)")
    return page
