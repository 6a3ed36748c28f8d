"""The drawing page in real headless Chromium: `densa serve` in a subprocess, digits drawn with the mouse.

Needs Debian's chromium at /usr/bin/chromium (.ci/run installs it; Playwright cannot download browsers
here). Without it the test skips, unless DENSA_REQUIRE_BROWSER=1 (CI) turns that into a failure.
A screenshot of each drawing is saved in test-artifacts/.
"""

import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = [pytest.mark.browser, pytest.mark.realdata, pytest.mark.slow]

# strokes in the 280x280 pad's own coordinates
SEVEN = [[(75, 60), (205, 60), (185, 110), (155, 170), (130, 235)]]
ZERO = [
    [
        (140 + 55 * math.sin(t / 20 * 2 * math.pi), 145 - 90 * math.cos(t / 20 * 2 * math.pi))
        for t in range(22)
    ]
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(mnist_run):
    run, _ = mnist_run
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "densa", "serve", str(run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # a safety net for a hung server; it says when it is up
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/api/health", timeout=2) as r:
                    assert r.status == 200
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"densa serve did not come up on {url}:\n{proc.communicate(timeout=10)[0]}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def page(server):
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found (apt-get install chromium)"
        if os.environ.get("DENSA_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, timeout=60_000)
        try:
            # bypass_csp: the page forbids eval, which Playwright's wait_for_function needs
            page = browser.new_page(viewport={"width": 800, "height": 640}, bypass_csp=True)
            page.set_default_timeout(20_000)
            page.goto(server + "/")
            page.wait_for_selector("body[data-ready='1']")
            yield page
        finally:
            browser.close()


def draw(page, strokes):
    box = page.locator("#pad").bounding_box()
    sx, sy = box["width"] / 280, box["height"] / 280
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * sx, box["y"] + y * sy)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * sx, box["y"] + y * sy, steps=6)
        page.mouse.up()
    # settled: no request in flight or queued, and an answer on the page
    page.wait_for_function(
        "document.body.dataset.pending === '0' && document.querySelector('#guess').dataset.class !== ''"
    )


def bars(page) -> dict[str, float]:
    rows = page.locator("#bars .row")
    return {
        rows.nth(i).get_attribute("data-class"): float(rows.nth(i).get_attribute("data-p"))
        for i in range(rows.count())
    }


def test_draw_digits_with_the_mouse(page):
    assert page.locator("#bars .row").count() == 10
    for name, strokes in (("7", SEVEN), ("0", ZERO)):
        page.click("#clear")
        assert page.locator("#guess").text_content() == "?"
        draw(page, strokes)
        page.wait_for_timeout(200)  # let the bars' 80 ms CSS transition finish before the picture
        page.screenshot(path=str(ARTIFACTS / f"browser-draw-{name}.png"))
        p = bars(page)
        assert max(p, key=p.get) == name, p
        assert abs(sum(p.values()) - 1) < 1e-3
        assert page.locator("#guess").text_content() == name
        assert page.locator("#bars .row.top").get_attribute("data-class") == name
        assert page.locator("#seen").get_attribute("src").startswith("data:image/png;base64,")
    page.click("#clear")
    assert page.locator("#guess").text_content() == "?" and max(bars(page).values()) == 0


def test_choose_an_image_file(page, mnist_run, tmp_path):
    """A photo-like file (MNIST test digit 1, a 2, as dark ink on tinted paper) through the file chooser."""
    import numpy as np
    from realistic import render

    _, ds = mnist_run
    data, _ = render(ds.test_images[1].numpy(), np.random.default_rng(7))
    path = tmp_path / "digit.png"
    path.write_bytes(data)
    page.set_input_files("#file", str(path))
    page.wait_for_function(
        "document.body.dataset.pending === '0' && document.querySelector('#guess').dataset.class !== ''"
    )
    page.wait_for_timeout(200)
    page.screenshot(path=str(ARTIFACTS / "browser-file-2.png"))
    p = bars(page)
    assert int(ds.test_labels[1]) == 2 and max(p, key=p.get) == "2", p
