"""The detector's counter-examples (core.outliers): drawn like a prepared photo, the same on every run,
never a digit look-alike, and cached in the user cache."""

import numpy as np
import pytest

from densa.core import outliers
from densa.core.detector import OUTLIERS, shape_stats


def test_same_images_for_a_seed_and_placed_as_mnist_digits():
    a, b, c = outliers.outliers(60, 0), outliers.outliers(60, 0), outliers.outliers(60, 1)
    assert a.shape == (60, 28, 28) and a.dtype == np.uint8
    assert (
        np.array_equal(a, b) and not np.array_equal(a, c) and np.array_equal(outliers.outliers(7, 0), a[:7])
    )
    for x in a:
        rows, cols = np.flatnonzero(x.max(1) > 12), np.flatnonzero(x.max(0) > 12)
        assert (
            x.max() == 255 and max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= outliers.BOX + 2
        )  # + a thin pen thickened
        total = x.sum()
        cy, cx = x.sum(1) @ np.arange(28) / total, x.sum(0) @ np.arange(28) / total
        assert abs(cy - 14) <= 1.5 and abs(cx - 14) <= 1.5, (cy, cx)  # centred by mass, as MNIST


@pytest.mark.parametrize("kind", outliers.KINDS)
def test_each_kind_draws_ink(kind):
    rng = np.random.default_rng(3)
    for _ in range(5):
        a, thin = outliers.draw(kind, rng)
        placed = outliers.place(a)
        assert placed.shape == (28, 28) and placed.max() == pytest.approx(1.0) and isinstance(thin, bool)


def test_no_digit_look_alikes_and_no_circles():
    drawn = set(outliers.PRINTED) | set(outliers.STROKES)
    assert not drawn & set(outliers.NOT_OUTLIER_LETTERS)
    assert {"A", "H", "M", "K", "x", "e"} <= drawn  # what used to pass for a 4 or an 8
    # a one-stroke letter's ink is not a filled disk: no drawn kind is mostly a blob
    stats = shape_stats(outliers.outliers(300, 2) / 255.0)
    assert (stats[:, 3] < 0.6).mean() > 0.9  # how much of its box the ink fills


def test_cached_once_and_redrawn_when_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    x = outliers.cached_outliers(40)
    (path,) = (tmp_path / "densa" / "outliers").iterdir()
    assert path.name == f"v{outliers.VERSION}-0-40.npy" and np.array_equal(np.load(path), x)
    path.write_bytes(b"not an array")
    assert np.array_equal(outliers.cached_outliers(40), x)
    assert np.array_equal(np.load(path), x)  # written again, whole


def test_an_unwritable_cache_still_works(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # the cache's parent is a file: nothing can be written under it
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    x = outliers.cached_outliers(10)
    assert x.shape == (10, 28, 28) and np.array_equal(x, outliers.outliers(10, 0))


def test_the_session_cache_is_the_detectors_set(outlier_file):
    x = np.load(outlier_file)
    assert x.shape == (OUTLIERS, 28, 28)
    assert np.array_equal(x[:20], outliers.outliers(20, 0))
