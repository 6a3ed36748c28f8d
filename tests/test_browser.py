"""The drawing page in real headless Chromium: `densa serve` in a subprocess, digits drawn with the mouse,
a line and a letter it refuses, a multi-MB photo and an SVG from the file chooser, the keyboard.

Needs Debian's chromium at /usr/bin/chromium (.ci/run installs it; Playwright cannot download browsers
here). Without it the test skips, unless DENSA_REQUIRE_BROWSER=1 (CI) turns that into a failure.
A screenshot of each drawing is saved in test-artifacts/.
"""

import math
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from chromium import ARTIFACTS, launched

pytestmark = [pytest.mark.browser, pytest.mark.realdata, pytest.mark.slow]

# strokes in the 280x280 pad's own coordinates
SEVEN = [[(75, 60), (205, 60), (185, 110), (155, 170), (130, 235)]]
ZERO = [
    [
        (140 + 55 * math.sin(t / 20 * 2 * math.pi), 145 - 90 * math.cos(t / 20 * 2 * math.pi))
        for t in range(22)
    ]
]


LINE = [[(50, 150), (230, 146)]]
# an M and an A: refused by the seed recipe's detector. Not every letter is (a drawn H still passes for
# a 4): docs/abstain.md gives the measured shares
LETTER_M = [[(40, 240), (40, 50), (140, 200), (240, 50), (240, 240)]]
LETTER_A = [[(50, 250), (140, 30), (230, 250)], [(85, 165), (195, 165)]]
SETTLED = "document.body.dataset.pending === '0' && document.querySelector('#guess').dataset.status !== ''"


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
    with launched() as browser:
        # bypass_csp: the page forbids eval, which Playwright's wait_for_function needs
        page = browser.new_page(viewport={"width": 800, "height": 640}, bypass_csp=True)
        page.set_default_timeout(20_000)
        page.failed = []  # every response of 400 or more (a missing favicon would be one)
        page.on("response", lambda r: page.failed.append((r.status, r.url)) if r.status >= 400 else None)
        page.goto(server + "/")
        page.wait_for_selector("body[data-ready='1']")
        yield page


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
    # settled: no request in flight or queued, and a decision on the page
    page.wait_for_function(SETTLED)


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
    page.wait_for_function(SETTLED)
    page.wait_for_timeout(200)
    page.screenshot(path=str(ARTIFACTS / "browser-file-2.png"))
    p = bars(page)
    assert int(ds.test_labels[1]) == 2 and max(p, key=p.get) == "2", p


def status(page) -> str:
    return page.locator("#guess").get_attribute("data-status")


def test_refuses_a_line_and_a_letter(page):
    """What is not a digit gets "that doesn't look like a digit — best guess ..." and no answer."""
    for name, strokes in (("line", LINE), ("letter-M", LETTER_M), ("letter-A", LETTER_A)):
        page.click("#clear")
        draw(page, strokes)
        page.wait_for_timeout(200)
        page.screenshot(path=str(ARTIFACTS / f"browser-refuse-{name}.png"))
        assert status(page) in ("unknown", "not_sure"), (name, status(page))
        assert page.locator("#guess").text_content() == "?"
        said = page.locator("#status").text_content()
        assert re.fullmatch(r"(that doesn't look like a digit|not sure: .*) — best guess \d, \d+%", said), (
            said
        )
        assert page.locator("#status.refused").count() == 1
        assert page.locator("#confidence").text_content() in ("not a digit", "not sure")
    page.click("#clear")
    draw(page, SEVEN)
    assert status(page) == "answer" and page.locator("#guess").text_content() == "7"
    assert page.locator("#status").text_content() == ""


def test_no_broken_image_no_layout_jump_and_no_404(page):
    box = page.locator(".seen-box")
    before = {sel: page.locator(sel).bounding_box() for sel in (".seen-box", "#bars", "figcaption")}
    assert page.locator("#seen").is_hidden() and before[".seen-box"]["width"] == 112
    draw(page, SEVEN)
    assert page.locator("#seen").is_visible()
    after = {sel: page.locator(sel).bounding_box() for sel in before}
    page.click("#clear")
    cleared = {sel: page.locator(sel).bounding_box() for sel in before}
    assert before == after == cleared  # nothing moved when the answer came, nor after Clear
    assert page.locator("#seen").is_hidden() and box.bounding_box()["height"] == 112
    assert page.failed == [], page.failed  # the favicon is there: no 404 on load


def test_file_chooser_is_reachable_with_the_keyboard(page):
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "file":
            break
    assert page.evaluate("document.activeElement.id") == "file"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press(" ")  # Space opens a focused file input
    assert not chooser.value.is_multiple()


def test_a_phone_photo_of_several_megabytes_is_scaled_down_in_the_page(page, mnist_run, tmp_path):
    """A 3000x2400 JPEG of a 2 (MNIST test digit 1) on grainy paper, several MB: over the server's 1 MB."""
    import numpy as np
    from PIL import Image

    _, ds = mnist_run
    rng = np.random.default_rng(3)
    ink = Image.fromarray(ds.test_images[1].numpy()).resize((1300, 1300), Image.Resampling.BICUBIC)
    paper = np.full((2400, 3000), 225.0) + rng.normal(0, 9, (2400, 3000))
    paper[500:1800, 800:2100] -= np.asarray(ink, np.float64) / 255 * 190
    path = tmp_path / "phone-photo.jpg"
    Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)).convert("RGB").save(path, quality=95)
    assert path.stat().st_size > 2 << 20
    sent = []
    page.on("request", lambda r: sent.append(len(r.post_data_buffer or b"")) if r.method == "POST" else None)
    page.set_input_files("#file", str(path))
    page.wait_for_function(SETTLED)
    page.wait_for_timeout(200)
    page.screenshot(path=str(ARTIFACTS / "browser-photo-2.png"))
    assert sent and max(sent) <= 1 << 20, sent  # the page sent a smaller JPEG, not the file
    assert status(page) == "answer" and page.locator("#guess").text_content() == "2"
    assert page.failed == [], page.failed


def test_an_svg_is_rasterised_in_the_page(page, tmp_path):
    path = tmp_path / "seven.svg"
    path.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="280" height="280"><rect width="280" height="280" '
        'fill="white"/><path d="M75 60 L205 60 L185 110 L155 170 L130 235" fill="none" stroke="black" '
        'stroke-width="19" stroke-linecap="round" stroke-linejoin="round"/></svg>'
    )
    page.set_input_files("#file", str(path))
    page.wait_for_function(SETTLED)
    assert status(page) == "answer" and page.locator("#guess").text_content() == "7"
