"""tools/check_offline.py, the check `make docs` runs on the built site: it finds every kind of external
resource a page can load (and only those), so an offline reader's browser never reaches the network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("check_offline", ROOT / "tools" / "check_offline.py")
check_offline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_offline)

EXTERNAL = {
    '<script src="https://cdn.example/mathjax.js"></script>': ("script", "https://cdn.example/mathjax.js"),
    '<link rel="stylesheet" href="//fonts.example/css?family=Roboto">': (
        "link",
        "//fonts.example/css?family=Roboto",
    ),
    '<img src="http://example.org/a.png">': ("img", "http://example.org/a.png"),
    '<iframe src="https://example.org/embed"></iframe>': ("iframe", "https://example.org/embed"),
    '<img srcset="a.png 1x, https://example.org/b.png 2x">': ("img", "https://example.org/b.png"),
    "<style>@import 'https://fonts.example/x.css';</style>": ("style", "https://fonts.example/x.css"),
    '<style>@font-face { src: url("https://fonts.example/r.woff2") }</style>': (
        "style",
        "https://fonts.example/r.woff2",
    ),
    '<div style="background: url(https://example.org/bg.png)"></div>': (
        "div style",
        "https://example.org/bg.png",
    ),
    '<script type="module">import mermaid from "https://cdn.example/mermaid.mjs";</script>': (
        "script import",
        "https://cdn.example/mermaid.mjs",
    ),
}

LOCAL = [
    '<script src="../assets/javascripts/bundle.js"></script>',
    '<link rel="stylesheet" href="assets/stylesheets/main.css">',
    '<img src="data:image/png;base64,iVBORw0KGgo=">',
    '<a href="https://pytorch.org/">a link a reader clicks</a>',
    "<p>https://example.org/ written in the text</p>",
    '<style>.x { background: url("data:image/svg+xml;charset=utf-8,<svg/>") }</style>',
    '<script>var u = "https://example.org/"; fetch(u)</script>',
]


def test_every_kind_of_external_resource_is_found():
    for html, found in EXTERNAL.items():
        assert check_offline.scan_html(html) == [found], html


def test_local_files_data_uris_and_plain_links_pass():
    for html in LOCAL:
        assert check_offline.scan_html(html) == [], html


def test_a_site_folder_fails_with_the_file_named_and_passes_when_clean(tmp_path, capsys):
    (tmp_path / "index.html").write_text("\n".join(LOCAL))
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "main.css").write_text("body { background: url(img/a.png) }")
    assert check_offline.main([str(tmp_path)]) == 0
    assert "2 files" in capsys.readouterr().out

    (tmp_path / "assets" / "fonts.css").write_text("@import url(https://fonts.example/css2?family=Inter);")
    assert check_offline.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "assets/fonts.css: css https://fonts.example/css2?family=Inter" in out


def test_an_empty_folder_is_an_error_not_a_pass(tmp_path):
    assert check_offline.main([str(tmp_path)]) == 1
