"""`densa report RUN`: PNG figures and one self-contained HTML page about a trained run.

write_report(run) reads what the run folder holds (model.safetensors, metrics.jsonl, summary.json),
assesses the model on a split (densa.metrics.assess), draws the figures (densa.plots) and writes them,
plus index.html with every image embedded as a data: URI, into RUN/report/. Whatever is missing (an
interrupted run has no model yet, an old one no metrics) is left out with a note saying so.
"""

from __future__ import annotations

import base64
import html
import json
import platform
import time
from pathlib import Path

import numpy as np

from . import __version__
from .data import write_atomic
from .errors import DensaError

RUN_FILES = ("model.safetensors", "metrics.jsonl", "summary.json")
MISTAKES = 30  # most confident mistakes shown, 10 per row
PER_CLASS = 10  # correctly classified examples per class
UNITS = 64  # first-layer units or filters shown


def read_run(run: Path) -> tuple[Path, Path | None, list[dict], dict | None, list[str]]:
    """(run folder, checkpoint or None, metrics records, summary or None, notes on what is missing)."""
    notes = []
    if not run.exists():
        raise DensaError(f"{run} does not exist; pass a run folder written by `densa train`")
    folder, ckpt = (run, run / "model.safetensors") if run.is_dir() else (run.parent, run)
    if not any((folder / n).is_file() for n in RUN_FILES) and not run.is_file():
        raise DensaError(f"{run} is not a densa run folder (none of {', '.join(RUN_FILES)} in it)")
    if not ckpt.is_file():
        notes.append(
            f"{ckpt.name} is missing (was training interrupted?): no evaluation, confusion matrix, "
            "example grids, weights or calibration"
        )
        ckpt = None
    records = []
    metrics = folder / "metrics.jsonl"
    if metrics.is_file():
        for i, line in enumerate(metrics.read_text().splitlines(), 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                notes.append(f"metrics.jsonl line {i} is not JSON; skipped")
    else:
        notes.append("metrics.jsonl is missing: no training curves")
    summary = None
    if (folder / "summary.json").is_file():
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except json.JSONDecodeError:
            notes.append("summary.json is not valid JSON; left out")
    else:
        notes.append("summary.json is missing: no timings or final training numbers")
    return folder, ckpt, records, summary, notes


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


# --------------------------------------------------------------------------- the page

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
.note { background: #fff5d6; border-left: 4px solid #e0b000; padding: 0.4em 0.8em; margin: 0.3em 0; }
.sub { color: #666; } figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
.cols { display: flex; flex-wrap: wrap; gap: 2em; }
"""


def esc(x) -> str:
    return html.escape(str(x))


def kv_table(d: dict) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"<td>{v:.6g}</td>"
        if isinstance(v, (dict, list)):
            return f"<td><code>{esc(json.dumps(v))}</code></td>"
        return f"<td>{esc(v)}</td>"

    return "<table>" + "".join(f"<tr><th>{esc(k)}</th>{cell(v)}</tr>" for k, v in d.items()) + "</table>"


def rows_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        if isinstance(v, float):
            return f'<td class="n">{v:.4f}</td>'
        return f'<td class="n">{esc(v)}</td>' if isinstance(v, int) else f"<td>{esc(v)}</td>"

    head = "".join(f"<th>{esc(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(cell(r.get(k, "")) for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure_html(name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="fig-{name}"><img src="data:image/png;base64,{data}" alt="{esc(name)}">'
        f"<figcaption>{esc(caption)} <span class='sub'>({esc(name)}.png)</span></figcaption></figure>"
    )


def environment() -> dict:
    import matplotlib
    import torch

    return {
        "densa": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
        "torch threads": torch.get_num_threads(),
    }


def class_table_html(result: dict) -> str:
    rows = [dict(r) for r in result["per_class"]]
    for name in ("macro_avg", "weighted_avg"):
        rows.append({"class": name.replace("_", " "), **result[name]})
    return rows_table(rows)


def best_epoch(*sources) -> int | None:
    for d in sources:
        if isinstance(d, dict) and isinstance(d.get("best_epoch"), int):
            return d["best_epoch"]
    return None


def write_report(run, out=None, *, dataset=None, split="test", data_dir=None, log=print) -> Path:
    """Write RUN/report/ (or `out`): one PNG per figure and index.html with all of them embedded."""
    from .plots import require_matplotlib

    require_matplotlib()
    from . import plots

    t0 = time.perf_counter()
    folder, ckpt_path, records, summary, notes = read_run(Path(run))
    out = Path(out) if out is not None else folder / "report"
    if out.exists() and not out.is_dir():
        raise DensaError(f"--out {out} is a file; pass a folder for the report")
    ckpt = result = None
    figs: dict[str, tuple[object, str]] = {}
    if ckpt_path is not None:
        from .checkpoint import load
        from .metrics import assess, load_split

        ckpt = load(ckpt_path)
        ds, images, labels = load_split(ckpt, dataset, split, data_dir)
        result = assess(ckpt.model, images, labels, ds.classes)
        figs = figures_for(ckpt, result, images, ds, split)
        if "first_layer" not in figs:
            notes.append("the first layer is neither a Linear on 784 pixels nor a Conv2d: no weights picture")
        if "mistakes" not in figs:
            notes.append(f"no mistakes on the {split} split: no mistakes grid")
    best = best_epoch(summary, ckpt.meta["metrics"] if ckpt else None)
    if records:
        fig = plots.curves(records, best)
        if fig is None:
            notes.append("metrics.jsonl has no loss or accuracy fields: no training curves")
        else:
            figs = {"curves": (fig, CAPTIONS["curves"]), **figs}
    pngs = {name: (plots.png_bytes(fig), caption) for name, (fig, caption) in figs.items()}
    for name, (png, _) in pngs.items():
        write_atomic(out / f"{name}.png", png)

    def fig(name):
        return figure_html(name, *pngs[name]) if name in pngs else ""

    title = f"densa report · {folder.resolve().name}"
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>",
        f"<p class='sub'>{esc(folder.resolve())} · written {esc(time.strftime('%Y-%m-%d %H:%M:%S'))} "
        f"by densa {esc(__version__)}</p>",
        *(f"<div class='note'>{esc(n)}</div>" for n in notes),
    ]
    if result is not None:
        headline = {
            "evaluated on": f"{ds.name} {split} split ({result['n']:,} images)",
            "accuracy": f"{result['acc']:.4f} ({result['correct']:,}/{result['n']:,})",
            "loss (cross-entropy)": f"{result['loss']:.4f}",
            "macro F1": f"{result['macro_avg']['f1']:.4f}",
            "expected calibration error": f"{result['calibration']['ece']:.4f}",
        }
        parts += ["<h2>Summary</h2>", kv_table(headline)]
    parts.append("<h2>Training</h2>")
    parts += [fig("curves"), rows_table(records)] if records else ["<p>No per-epoch metrics.</p>"]
    if result is not None:
        parts += ["<h2>Per-class metrics</h2>", class_table_html(result), fig("confusion")]
        parts += ["<h2>Calibration</h2>", fig("reliability")]
        parts += ["<h2>Mistakes and examples</h2>", fig("mistakes"), fig("correct")]
        parts += ["<h2>What the first layer looks at</h2>", fig("first_layer")]
    parts.append("<h2>Configuration</h2>")
    if ckpt is not None:
        from .models import count_parameters

        parts += [f"<pre>{esc(ckpt.model)}</pre><p>parameters: {count_parameters(ckpt.model):,}</p>"]
    parts.append("<div class='cols'>")
    if ckpt is not None:
        keys = ("model", "train", "dataset", "input") + (("metrics",) if summary is None else ())
        parts += [f"<div><h3>{esc(k)}</h3>{kv_table(ckpt.meta[k])}</div>" for k in keys]
    if summary is not None:
        parts.append(f"<div><h3>summary.json</h3>{kv_table(summary)}</div>")
    parts.append("</div>")
    parts.append("<h2>Environment</h2><div class='cols'>")
    if ckpt is not None:
        parts.append(f"<div><h3>training</h3>{kv_table(ckpt.meta['versions'])}</div>")
    parts.append(f"<div><h3>this report</h3>{kv_table(environment())}</div></div></body></html>\n")
    page = out / "index.html"
    write_atomic(page, "\n".join(p for p in parts if p))
    log(f"wrote report to {page} ({len(pngs)} figures, {time.perf_counter() - t0:.1f}s)")
    return page
