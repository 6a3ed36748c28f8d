"""`densa report`'s page in real headless Chromium, at a desktop width (1280 px) and a phone's (390 px).

A small synthetic run with a validation split and label smoothing is trained and reported on; the page
is opened from its file and checked for horizontal overflow (only a table's own scroll box may be wider
than the screen), its table of contents, and the validation and test parts of its curves. Full-page
screenshots go to test-artifacts/report-1280.png and report-390.png. Needs Debian's chromium at
/usr/bin/chromium; without it the test skips, unless DENSA_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""

import pytest
from chromium import ARTIFACTS, launched
from conftest import use_cache
from synthetic import write_dataset

from densa.apps.report import write_report
from densa.cli import main
from densa.core import data

PHONE = 390

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# every element that sticks out of the viewport sideways, unless a scroll box (.scroll, <pre>) holds it
OVERFLOW = """() => {
  const w = window.innerWidth, out = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if ((r.right > w + 0.5 || r.left < -0.5) && !el.closest('.scroll, pre')) {
      const where = `${Math.round(r.left)}..${Math.round(r.right)}`;
      out.push(`${el.tagName.toLowerCase()}#${el.id}.${el.className} ${where}`);
    }
  }
  return out;
}"""


@pytest.fixture(scope="module")
def report(tmp_path_factory, outlier_file):
    """index.html of a 3-epoch run on 'synthr' with --val-split 0.2 --label-smoothing 0.1 (a weak model)."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, root / "cache", outlier_file)
        mp.setitem(data.DATASETS, "synthr", write_dataset(root / "data", "synthr", gz=False))
        out = root / "run"
        argv = ["train", "--dataset", "synthr", "--data-dir", str(root / "data"), "--epochs", "3"]
        argv += ["--lr", "5e-5", "--val-split", "0.2", "--label-smoothing", "0.1", "--out", str(out)]
        assert main(argv) == 0
        return write_report(out, data_dir=root / "data", log=lambda s: None)


@pytest.fixture(scope="module")
def browser():
    with launched() as browser:
        yield browser


@pytest.mark.parametrize("width", [1280, PHONE])
def test_report_fits_the_screen(report, browser, width):
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.set_default_timeout(20_000)
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    page.screenshot(path=str(ARTIFACTS / f"report-{width}.png"), full_page=True)

    scroll_width, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll_width <= inner, f"the page scrolls sideways at {width} px ({scroll_width} > {inner})"
    assert page.evaluate(OVERFLOW) == []
    for box in page.locator(".scroll").all():  # wide tables scroll inside a box that itself fits
        assert box.bounding_box()["width"] <= width

    # a table of contents at the top, one entry per section, each leading to it
    links = page.locator("nav.toc a")
    sections = page.locator("section[id]")
    assert links.count() == sections.count() >= 7
    assert [a.get_attribute("href") for a in links.all()] == [
        f"#{s.get_attribute('id')}" for s in sections.all()
    ]
    assert page.locator("nav.toc").bounding_box()["y"] < page.locator("#summary").bounding_box()["y"]

    # the curves: validation per epoch, the test point, the epoch validation chose; legible on a phone
    caption = page.locator("#fig-curves figcaption").text_content()
    assert "'validation' is a part of the training set" in caption
    assert "The star is the test split" in caption and "The dashed line marks epoch" in caption
    head = page.locator("#training table th").all_text_contents()
    assert {"val_loss", "val_acc", "best_epoch"} <= set(head)
    assert "validation (chosen epoch)" in page.locator("#summary").text_content()
    assert "cannot fall below their entropy" in page.locator("#smoothing").text_content()
    img = page.locator("#fig-curves img")
    natural, shown = img.evaluate("i => [i.naturalWidth, i.getBoundingClientRect().width]")
    assert natural > 0 and shown / natural >= (0.6 if width == PHONE else 1.0), (natural, shown)
    assert all(i.evaluate("i => i.complete && i.naturalWidth > 0") for i in page.locator("img").all())
    page.close()
