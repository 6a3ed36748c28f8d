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
    "is over-confident there. The lower panel counts images per bin; the expected calibration error "
    "(ECE) weights each bin's gap by its share of the images.",
}


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
    return {name: (fig, CAPTIONS[name]) for name, fig in figs.items()}


def best_epoch(*sources) -> int | None:
    for d in sources:
        if isinstance(d, dict) and isinstance(d.get("best_epoch"), int):
            return d["best_epoch"]
    return None


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
        best = best_epoch(files.summary, ckpt.meta["metrics"] if ckpt else None)
        fig = plots.curves(files.records, best)
        if fig is None:
            files.notes.append("metrics.jsonl has no loss or accuracy fields: no training curves")
        else:
            figs = {"curves": (fig, CAPTIONS["curves"]), **figs}
    pngs = {name: (plots.png_bytes(fig), caption) for name, (fig, caption) in figs.items()}
    for name in CAPTIONS:  # each file written whole; none left over from an earlier report
        if name in pngs:
            write_atomic(out / f"{name}.png", pngs[name][0])
        else:
            (out / f"{name}.png").unlink(missing_ok=True)
    page = out / "index.html"
    write_atomic(page, page_html(files, ckpt, ds, split, result, pngs))
    log(f"wrote report to {page} ({len(pngs)} figures, {time.perf_counter() - t0:.1f}s)")
    return page
