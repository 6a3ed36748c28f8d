"""The report's HTML page: one file, figures embedded as data: URIs, no scripts and no links.

page_html(...) lays out what densa.report gathered: notes on what is missing, the headline numbers,
training curves and the per-epoch table, per-class metrics, the figures, the configuration and the
environment. Everything from the run is escaped.
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


def page_html(files, ckpt, ds, split: str, result: dict | None, pngs: dict) -> str:
    """The whole page: sections in reading order, figures as data: URIs, no scripts, no links."""

    def fig(name):
        return figure_html(name, *pngs[name]) if name in pngs else ""

    title = f"densa report · {files.folder.resolve().name}"
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>",
        f"<p class='sub'>{esc(files.folder.resolve())} · written {esc(time.strftime('%Y-%m-%d %H:%M:%S'))} "
        f"by densa {esc(__version__)}</p>",
        *(f"<div class='note'>{esc(n)}</div>" for n in files.notes),
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
    parts += [fig("curves"), rows_table(files.records)] if files.records else ["<p>No per-epoch metrics.</p>"]
    if result is not None:
        parts += ["<h2>Per-class metrics</h2>", class_table_html(result), fig("confusion")]
        parts += ["<h2>Calibration</h2>", fig("reliability")]
        parts += ["<h2>Mistakes and examples</h2>", fig("mistakes"), fig("correct")]
        parts += ["<h2>What the first layer looks at</h2>", fig("first_layer")]
    parts.append("<h2>Configuration</h2>")
    tables = []
    if ckpt is not None:
        from ..core.models import count_parameters

        parts.append(f"<pre>{esc(ckpt.model)}</pre><p>parameters: {count_parameters(ckpt.model):,}</p>")
        keys = ("model", "train", "dataset", "input") + (("metrics",) if files.summary is None else ())
        tables += [(k, ckpt.meta[k]) for k in keys]
    if files.summary is not None:
        tables.append(("summary.json", files.summary))
    parts.append(cols(tables))
    parts.append("<h2>Environment</h2>")
    parts.append(
        cols(([("training", ckpt.meta["versions"])] if ckpt else []) + [("this report", environment())])
    )
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)


def cols(tables: list[tuple[str, dict]]) -> str:
    """Key-value tables side by side, each under its name."""
    return (
        "<div class='cols'>"
        + "".join(f"<div><h3>{esc(k)}</h3>{kv_table(d)}</div>" for k, d in tables)
        + "</div>"
    )
