"""The tutorial notebooks (notebooks/tutorial_es.ipynb and tutorial_en.ipynb).

Fast checks read the committed JSON: no outputs, the seed tutorial's sections, every code cell after an
explanation, no measured numbers in the prose, and the same code in both languages. The slow check runs
each notebook top to bottom in a Jupyter kernel (nbclient + ipykernel, this interpreter) on the real MNIST
files and compares what it printed with the model it saved. The executed copies and their figures are
written to test-artifacts/notebooks/ for people to read.
"""

from __future__ import annotations

import base64
import io
import json
import re
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {lang: ROOT / "notebooks" / f"tutorial_{lang}.ipynb" for lang in ("es", "en")}
ARTIFACTS = ROOT / "test-artifacts" / "notebooks"
SECTIONS = {  # the seed tutorial's parts, in its order
    "es": (
        "Datos",
        "Modelo",
        "Compilación",
        "Entrenamiento",
        "Predicción rápida",
        "Evaluación",
        "Conclusiones",
    ),
    "en": ("Data", "Model", "Compile", "Training", "Quick prediction", "Evaluation", "Conclusions"),
}
SAME_PREDICTIONS = {"es": "mismas predicciones tras cargarlo:", "en": "same predictions after loading:"}
CELL_TIMEOUT = 900  # seconds for one cell: catches a hung kernel, not a slow machine (the CNN's is longest)


def read(lang: str) -> dict:
    return json.loads(NOTEBOOKS[lang].read_text(encoding="utf-8"))


def text(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def prose(cell: dict) -> str:
    """A markdown cell without its fenced code blocks."""
    return re.sub(r"```.*?```", "", text(cell), flags=re.S)


def code_shape(src: str) -> list[str]:
    """The names, operators and numbers of a code cell: comments and string literals (f-strings whole)
    left out, so the Spanish and English cells compare equal when only their words differ."""
    src = "\n".join("" if line.lstrip().startswith("%") else line for line in src.splitlines())  # magics
    out, depth = [], 0
    for tok in tokenize.generate_tokens(io.StringIO(src + "\n").readline):
        kind = tokenize.tok_name[tok.type]
        if kind == "FSTRING_START":  # Python >= 3.12 splits f-strings into parts
            depth += 1
            if depth == 1:
                out.append("<str>")
        elif kind == "FSTRING_END":
            depth -= 1
        elif depth:
            continue
        elif kind == "STRING":
            out.append("<str>")
        elif kind in ("NAME", "OP", "NUMBER"):
            out.append(tok.string)
    return out


@pytest.mark.parametrize("lang", NOTEBOOKS)
def test_committed_without_outputs(lang):
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.reads(NOTEBOOKS[lang].read_text(encoding="utf-8"), as_version=4))
    nb = read(lang)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {i} has outputs: clear them before committing"
            assert cell["execution_count"] is None, f"cell {i} has an execution count: clear outputs"
        assert "execution" not in cell.get("metadata", {}), f"cell {i} has execution timings in its metadata"


@pytest.mark.parametrize("lang", NOTEBOOKS)
def test_follows_the_seed_tutorial_and_explains_every_code_cell(lang):
    cells = read(lang)["cells"]
    headings = [line for c in cells if c["cell_type"] == "markdown" for line in text(c).splitlines()]
    headings = [h for h in headings if h.startswith("## ")]
    found = [next((i for i, h in enumerate(headings) if name in h), None) for name in SECTIONS[lang]]
    assert None not in found, f"missing sections: {[n for n, i in zip(SECTIONS[lang], found) if i is None]}"
    assert found == sorted(found), f"sections out of the tutorial's order: {headings}"
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            before = cells[i - 1] if i else None
            explained = before is not None and before["cell_type"] == "markdown"
            assert explained, f"code cell {i} has no explanation before it"
            assert len(prose(before).split()) >= 12, f"the explanation before code cell {i} is too short"


@pytest.mark.parametrize("lang", NOTEBOOKS)
def test_prose_states_no_measured_numbers(lang):
    """Accuracies, losses and differences come from the run: the prose has no 0.98 / 0,98 or 98 %."""
    for i, cell in enumerate(read(lang)["cells"]):
        if cell["cell_type"] == "markdown":
            found = re.findall(r"\b0[.,]\d+|\d\s?%", prose(cell))
            assert not found, f"markdown cell {i} states numbers {found}: print them from code instead"


def test_spanish_and_english_have_the_same_code():
    es, en = read("es")["cells"], read("en")["cells"]
    assert [c["cell_type"] for c in es] == [c["cell_type"] for c in en]
    for i, (a, b) in enumerate(zip(es, en)):
        if a["cell_type"] == "code":
            assert code_shape(text(a)) == code_shape(text(b)), f"code cell {i} differs beyond its words"


def test_code_shape_sees_code_but_not_words():
    a = 'x = f(1)  # uno\nprint(f"hola {x}", "mundo")'
    assert code_shape(a) == code_shape('x = f(1)  # one\nprint(f"hello {x}", "world")')
    assert code_shape(a) != code_shape('x = f(2)\nprint(f"hola {x}", "mundo")')
    assert code_shape(a) != code_shape('x = g(1)\nprint(f"hola {x}", "mundo")')


def save_artifacts(nb, lang: str) -> None:
    """The executed notebook, and each figure it drew as a PNG (tutorial_es-cell07-1.png)."""
    import nbformat

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob(f"tutorial_{lang}-*.png"):
        old.unlink()
    nbformat.write(nb, ARTIFACTS / f"tutorial_{lang}.ipynb")
    for i, cell in enumerate(nb.cells):
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        for k, png in enumerate(pngs, 1):
            (ARTIFACTS / f"tutorial_{lang}-cell{i:02d}-{k}.png").write_bytes(base64.b64decode(png))


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("lang", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(lang, real_mnist, tmp_path, monkeypatch):
    """Each cell runs without error in a kernel of this interpreter, where densa finds the data itself."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    import densa

    # A kernel spec of our own ("python3" = this interpreter, so the venv's densa and torch), and
    # Jupyter's and IPython's runtime files in tmp_path rather than the home folder.
    jupyter = tmp_path / "jupyter"
    spec = jupyter / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable

    nb = nbformat.read(NOTEBOOKS[lang], as_version=4)
    work = tmp_path / "work"  # the notebook's folder while it runs: it saves runs/tutorial/ there
    work.mkdir()
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        startup_timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(work)}},
    )
    try:
        client.execute()
    finally:
        save_artifacts(nb, lang)

    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
    outputs = [o for c in code_cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 8, f"only {len(figures)} figures were drawn"
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")

    # the seed tutorial's quick look: the first test images are 7 2 1 0 4 1 4 9 5 9
    assert "[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]" in printed
    assert "test_labels[0] = 7" in printed
    # the seed recipe's test accuracy, printed by the notebook, is the saved model's (an oracle run here)
    acc = re.search(r"^test_acc: (\d\.\d{4}) \((\d+)/10000\)$", printed, flags=re.M)
    assert acc, "the notebook did not print the tutorial's test_acc line"
    ckpt = densa.load(work / "runs" / "tutorial")
    result = densa.evaluate(ckpt.model, real_mnist.test_images, real_mnist.test_labels)
    assert int(acc.group(2)) == result["correct"]
    assert result["acc"] >= 0.97  # the seed recipe (README: 0.9776 for seed 0)
    assert f"{SAME_PREDICTIONS[lang]} True" in printed
