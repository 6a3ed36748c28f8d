"""MkDocs hooks (mkdocs.yml `hooks:`): the parts of the site that are made from the code at build time.

- reference/cli.md: `densa --help` and every subcommand's help, from densa.cli.build_parser();
- reference/api.md: every name densa exports (densa._EXPORTS), documented from its docstring by mkdocstrings;
- tutorial/es.ipynb, tutorial/en.ipynb: the committed notebooks (no outputs), copied into a scratch folder
  that mkdocs-jupyter executes them in, so their runs/ never land in the checkout. With
  DENSA_DOCS_EXECUTED=DIR, already executed copies of the same code (DIR/tutorial_<lang>.ipynb, e.g. the
  ones tests/test_notebooks.py writes to test-artifacts/notebooks/) are shown instead of running them again;
- learned/example-report/: `densa train --report` on a short real run (3 epochs of the seed recipe with a
  validation split), so the report's figures on the site are those the current code draws;
- mkdocs-jupyter's cache of executed notebooks is kept per version of densa's source;
- notebook pages: nbconvert's MathJax and mermaid <script>s are removed (the notebooks have neither math
  nor diagrams, and the site loads nothing from the network; tools/check_offline.py checks that).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
LANGS = ("es", "en")
REPORT_RUN = ["train", "--epochs", "3", "--val-split", "0.1", "--seed", "0", "--report"]
EXECUTED_DIR = "executed"  # mkdocs.yml's execute_ignore names this folder: its notebooks already ran

_scratch: tempfile.TemporaryDirectory | None = None


def on_config(config):
    """mkdocs-jupyter caches a rendered notebook by the notebook's own bytes; key its cache folder by
    densa's source as well, so a change to the package runs the notebooks again."""
    jupyter = config.plugins["mkdocs-jupyter"].config
    digest = hashlib.sha256()
    for path in sorted((ROOT / "src" / "densa").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    jupyter["cache_dir"] = str(Path(jupyter["cache_dir"]) / digest.hexdigest()[:16])
    return config


def on_pre_build(config):
    global _scratch
    _scratch = tempfile.TemporaryDirectory(prefix="densa-docs-")


def on_post_build(config):
    if _scratch is not None:
        _scratch.cleanup()


def on_build_error(error):
    on_post_build(None)


@event_priority(100)  # before mkdocs-jupyter's on_files, which claims the .ipynb files it is given
def on_files(files, config):
    scratch = Path(_scratch.name)
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    files.append(File.generated(config, "reference/api.md", content=api_reference()))
    for lang in LANGS:
        files.append(notebook(lang, scratch, config))
    for path in example_report(scratch / "report-run"):
        files.append(File.generated(config, f"learned/example-report/{path.name}", abs_src_path=str(path)))
    return files


# --------------------------------------------------------------------------- the CLI reference


def cli_reference() -> str:
    """One section per subcommand: its one-line summary, then its --help exactly as `densa` prints it."""
    from densa.cli import build_parser

    parser = build_parser()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"  # argparse wraps help to the terminal's width: the page's code width
    try:
        return "\n".join(cli_sections(parser))
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def cli_sections(parser: argparse.ArgumentParser) -> list[str]:
    out = [
        "# Command line reference\n",
        "Generated from `densa`'s own argument parser when this site was built: each section is what "
        "`densa COMMAND --help` prints.\n",
        "```text\n" + parser.format_help().rstrip() + "\n```\n",
    ]
    for name, summary, sub in subcommands(parser):
        out.append(f"## `densa {name}`\n")
        if summary:
            out.append(summary[0].upper() + summary[1:] + ".\n")
        out.append("```text\n" + sub.format_help().rstrip() + "\n```\n")
    return out


def subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name) or "", sub


# --------------------------------------------------------------------------- the API reference

API_INTRO = """# Python API reference

Everything `import densa` offers, generated from the docstrings when this site was built. Each name is
importable from `densa` itself (`densa.load`, `densa.MLP`, ...); the heading's module is where it is
defined. `import densa` is fast: torch is imported when a name that needs it is first used.
"""


def api_reference() -> str:
    import densa

    out = [API_INTRO]
    for name, module in densa._EXPORTS.items():
        out.append(f"::: densa.{module}.{name}\n")
    return "\n".join(out)


# --------------------------------------------------------------------------- the tutorial notebooks


def notebook(lang: str, scratch: Path, config) -> File:
    """The notebook page: an executed copy of the same code when DENSA_DOCS_EXECUTED has one, else a copy
    of the committed notebook (mkdocs-jupyter runs it with the scratch folder as its working folder).
    A plain File whose src_dir is the scratch folder: mkdocs-jupyter cannot render generated Files."""
    source = ROOT / "notebooks" / f"tutorial_{lang}.ipynb"
    executed = os.environ.get("DENSA_DOCS_EXECUTED")
    if executed:
        ran = Path(executed) / source.name
        check_executed(ran, source)
        source, scratch = ran, scratch / EXECUTED_DIR
    src_uri = f"tutorial/{lang}.ipynb"
    (scratch / "tutorial").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, scratch / src_uri)
    return File(src_uri, str(scratch), config["site_dir"], config["use_directory_urls"])


def check_executed(ran: Path, source: Path) -> None:
    if not ran.is_file():
        raise PluginError(f"DENSA_DOCS_EXECUTED: {ran} does not exist; run tests/test_notebooks.py first")
    code = [code_cells(json.loads(p.read_text(encoding="utf-8"))) for p in (ran, source)]
    if code[0] != code[1]:
        raise PluginError(f"{ran} is not an executed copy of {source}: their code differs")
    cells = [c for c in json.loads(ran.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    if any(c.get("execution_count") is None for c in cells):
        raise PluginError(f"{ran} was not run to the end")
    if any(o.get("output_type") == "error" for c in cells for o in c.get("outputs", [])):
        raise PluginError(f"{ran} has an error in its outputs")


def code_cells(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


# --------------------------------------------------------------------------- the example report


def example_report(run: Path) -> list[Path]:
    """A short real training run with --report; returns its report's files (PNGs and index.html)."""
    cmd = [sys.executable, "-m", "densa", *REPORT_RUN, "--out", str(run)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=run.parent)
    if done.returncode != 0:
        raise PluginError(f"{' '.join(cmd[1:])} failed: {done.stderr.strip() or done.stdout[-2000:]}")
    return sorted(p for p in (run / "report").iterdir() if p.suffix in (".png", ".html"))


# --------------------------------------------------------------------------- offline notebook pages

_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", flags=re.S)


def _offline(script: re.Match) -> str:
    """Drop MathJax's loader (an empty or CDN src) and config, and the module that imports mermaid."""
    tag = script.group(0)
    mathjax = re.match(r'<script src="(https?://[^"]*)?">', tag) or "text/x-mathjax-config" in tag
    return "" if mathjax or "mermaid" in tag else tag


def on_page_content(html, page, config, files):
    if page.file.src_uri.endswith(".ipynb"):
        return _SCRIPT.sub(_offline, html)
    return html
