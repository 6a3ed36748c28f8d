"""Check that a built site loads nothing from the network: `python tools/check_offline.py site/`.

Reads every .html and .css file under the folder and lists each external resource: an http(s) or
protocol-relative URL in the src/href/srcset/data/poster of a script, link, img, iframe, source, video,
audio, embed or object tag, in a CSS url(...) or @import (style sheets, style blocks and style
attributes), or in a module script's `import ... from "https://..."`. Plain links a reader clicks
(<a href>) are not resources and are allowed. Exits 1 and prints `FILE: TAG URL` for each one found,
else prints how many files it read. `make docs` and CI run it on site/.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

EXTERNAL = re.compile(r"^\s*(https?:)?//", re.I)
RESOURCE_TAGS = {"script", "link", "img", "iframe", "source", "video", "audio", "embed", "object", "track"}
RESOURCE_ATTRS = {"src", "href", "srcset", "data", "poster"}
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""", re.I)
JS_IMPORT = re.compile(  # `import x from "URL"` and `import("URL")` in a module script
    r"""\bimport\b[^'"]*?['"]((?:https?:)?//[^'"]+)['"]|\bimport\(\s*['"]((?:https?:)?//[^'"]+)"""
)


def css_urls(css: str) -> list[str]:
    return [a or b for a, b in CSS_URL.findall(css) if EXTERNAL.match(a or b)]


class Scanner(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str]] = []
        self._in: str | None = None  # "style" or "script" while inside one

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if tag in RESOURCE_TAGS and name in RESOURCE_ATTRS:
                urls = [u.split()[0] for u in value.split(",") if u.strip()] if name == "srcset" else [value]
                self.found += [(tag, u) for u in urls if EXTERNAL.match(u)]
            if name == "style":
                self.found += [(f"{tag} style", u) for u in css_urls(value)]
        self._in = tag if tag in ("style", "script") else None

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "style":
            self.found += [("style", u) for u in css_urls(data)]
        elif self._in == "script":
            self.found += [("script import", a or b) for a, b in JS_IMPORT.findall(data)]


def scan_html(text: str) -> list[tuple[str, str]]:
    scanner = Scanner()
    scanner.feed(text)
    scanner.close()
    return scanner.found


def scan(folder: Path) -> tuple[int, list[str]]:
    """(files read, problems as 'FILE: TAG URL')."""
    problems, n = [], 0
    for path in sorted(folder.rglob("*")):
        if path.suffix not in (".html", ".css"):
            continue
        n += 1
        text = path.read_text(encoding="utf-8", errors="replace")
        found = scan_html(text) if path.suffix == ".html" else [("css", u) for u in css_urls(text)]
        problems += [f"{path.relative_to(folder)}: {tag} {url}" for tag, url in found]
    return n, problems


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python tools/check_offline.py SITE_DIR (a built site, e.g. site/)", file=sys.stderr)
        return 2
    n, problems = scan(Path(argv[0]))
    if n == 0:
        print(f"check_offline: no .html or .css files in {argv[0]}: build the site first", file=sys.stderr)
        return 1
    for p in problems:
        print(p)
    if problems:
        print(f"check_offline: {len(problems)} external resources in {argv[0]}: the site must work offline")
        return 1
    print(f"check_offline: {n} files in {argv[0]}, no external resources")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
