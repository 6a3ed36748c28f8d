"""The report's HTML page: one file, figures embedded as data: URIs, no scripts and no outside links.

page_html(...) lays out what densa.report gathered: a table of contents, notes on what is missing, the
headline numbers, training curves and the per-epoch table, per-class metrics, the figures, the settings
that apply to the model and the environment. Everything from the run is escaped. Wide tables scroll
inside their own box, so the page fits a phone's width.
"""

from __future__ import annotations

import base64
import html
import json
import platform
import time

import numpy as np

from .._version import __version__

CSS = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 1200px; margin: 1.5em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; overflow-wrap: anywhere; }
h2 { border-bottom: 1px solid #ddd; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td code { overflow-wrap: anywhere; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
.scroll { overflow-x: auto; max-width: 100%; }
.note { background: #fff5d6; border-left: 4px solid #e0b000; padding: 0.4em 0.8em; margin: 0.3em 0; }
.explain { background: #eef5fb; border-left: 4px solid #0072b2; padding: 0.4em 0.8em; margin: 0.8em 0; }
.sub { color: #666; overflow-wrap: anywhere; } figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.9em; }
.cols { display: flex; flex-wrap: wrap; gap: 0 2em; align-items: flex-start; }
.cols > * { min-width: 0; max-width: 100%; }
#fig-curves { max-width: 560px; }
nav.toc { background: #f6f6f6; padding: 0.2em 1em; margin: 1em 0; }
nav.toc ol { columns: 3 12em; margin: 0.4em 0; padding-left: 1.4em; }
nav.toc a { color: #0058a0; }
@media (max-width: 600px) {
  body { font-size: 15px; margin: 0.8em auto; padding: 0 0.6em; }
  h1 { font-size: 1.35em; }
  td, th { padding: 0.2em 0.35em; }
}
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

    rows = "".join(f"<tr><th>{esc(k)}</th>{cell(v)}</tr>" for k, v in d.items())
    return f"<div class='scroll'><table>{rows}</table></div>"


def rows_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        if isinstance(v, float):
            return f'<td class="n">{v:.4f}</td>'
        return f'<td class="n">{esc(v)}</td>' if isinstance(v, int) else f"<td>{esc(v)}</td>"

    head = "".join(f"<th>{esc(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(cell(r.get(k, "")) for k in keys) + "</tr>" for r in rows)
    return f"<div class='scroll'><table><tr>{head}</tr>{body}</table></div>"


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


# settings that only some models or optimisers read: listed only where they apply
APPLIES = {
    ("model", "channels"): lambda meta: meta["model"].get("model") != "mlp",  # the conv blocks of a cnn
    ("train", "momentum"): lambda meta: meta["train"].get("optimizer") == "sgd",
    ("train", "nesterov"): lambda meta: meta["train"].get("optimizer") == "sgd",
    ("train", "early_stop"): lambda meta: bool(meta["train"].get("val_split")),
}


def applicable(meta: dict, section: str) -> dict:
    """One section of a checkpoint's metadata without the settings this model or run never reads."""
    rule = APPLIES.get
    return {k: v for k, v in meta[section].items() if rule((section, k), lambda _: True)(meta)}


def toc(sections: list[tuple[str, str, list[str]]]) -> str:
    items = "".join(f"<li><a href='#{sid}'>{esc(title)}</a></li>" for sid, title, _ in sections)
    return f"<nav class='toc' aria-label='contents'><strong>Contents</strong><ol>{items}</ol></nav>"


def page_html(
    files, ckpt, ds, split: str, result: dict | None, pngs: dict, smoothing: str | None = None
) -> str:
    """The whole page: a table of contents, then sections in reading order; figures as data: URIs.

    `smoothing` is the paragraph that explains label smoothing, when the model was trained with it.
    """

    def fig(name):
        return figure_html(name, *pngs[name]) if name in pngs else ""

    title = f"densa report · {files.folder.resolve().name}"
    head = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><h1>{esc(title)}</h1>",
        f"<p class='sub'>{esc(files.folder.resolve())} · written {esc(time.strftime('%Y-%m-%d %H:%M:%S'))} "
        f"by densa {esc(__version__)}</p>",
    ]
    notes = [f"<div class='note'>{esc(n)}</div>" for n in files.notes]
    explain = [f"<p class='explain' id='smoothing'>{esc(smoothing)}</p>"] if smoothing else []
    sections = []
    if result is not None:
        sections.append(("summary", "Summary", [kv_table(headline(ds, split, result, files))]))
    if files.records:
        training = [
            f"<div class='cols'>{fig('curves')}<div>{rows_table(files.records)}</div></div>",
            *explain,
        ]
    else:
        training = ["<p>No per-epoch metrics.</p>", *explain]
    sections.append(("training", "Training", training))
    if result is not None:
        sections += [
            ("per-class", "Per-class metrics", [class_table_html(result), fig("confusion")]),
            ("calibration", "Calibration", [fig("reliability")]),
            ("examples", "Mistakes and examples", [fig("mistakes"), fig("correct")]),
            ("first-layer", "What the first layer looks at", [fig("first_layer")]),
        ]
    sections.append(("configuration", "Configuration", configuration(files, ckpt)))
    runs = ([("training", ckpt.meta["versions"])] if ckpt else []) + [("this report", environment())]
    sections.append(("environment", "Environment", [cols(runs)]))
    body = [
        f"<section id='{sid}'><h2>{esc(name)}</h2>" + "\n".join(p for p in parts if p) + "</section>"
        for sid, name, parts in sections
    ]
    return "\n".join([*head, toc(sections), *notes, *body, "</body></html>\n"])


def headline(ds, split: str, result: dict, files) -> dict:
    d = {
        "evaluated on": f"{ds.name} {split} split ({result['n']:,} images)",
        "accuracy": f"{result['acc']:.4f} ({result['correct']:,}/{result['n']:,})",
        "loss (cross-entropy)": f"{result['loss']:.4f}",
        "macro F1": f"{result['macro_avg']['f1']:.4f}",
        "expected calibration error": f"{result['calibration']['ece']:.4f}",
    }
    s = files.summary or {}
    if isinstance(s.get("val_acc"), (int, float)) and isinstance(s.get("best_epoch"), int):
        d["validation (chosen epoch)"] = (
            f"accuracy {s['val_acc']:.4f}, loss {s['val_loss']:.4f} (epoch {s['best_epoch']})"
        )
    return d


def configuration(files, ckpt) -> list[str]:
    """The model as torch prints it, then the settings that apply to it, the run summary beside them."""
    parts, tables = [], []
    if ckpt is not None:
        from ..core.models import count_parameters

        parts.append(f"<pre>{esc(ckpt.model)}</pre><p>parameters: {count_parameters(ckpt.model):,}</p>")
        tables += [(k, applicable(ckpt.meta, k)) for k in ("model", "train")]
        keys = ("dataset", "input") + (("metrics",) if files.summary is None else ())
        tables += [(k, ckpt.meta[k]) for k in keys]
    if files.summary is not None:
        tables.append(("summary.json", files.summary))
    return [*parts, cols(tables)]


def cols(tables: list[tuple[str, dict]]) -> str:
    """Key-value tables side by side, each under its name."""
    return (
        "<div class='cols'>"
        + "".join(f"<div><h3>{esc(k)}</h3>{kv_table(d)}</div>" for k, d in tables)
        + "</div>"
    )
