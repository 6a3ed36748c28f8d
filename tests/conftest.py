"""Shared fixtures: an isolated user cache for every test, synthetic datasets, the real data when present.

Every test gets its own XDG_CACHE_HOME and no DENSA_DATA_DIR or system dataset folders, so nothing
leaks between tests or from the machine. Tests marked `realdata` get the real files back; CI sets
DENSA_REQUIRE_REAL_DATA=1 so that missing data fails them instead of skipping.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from synthetic import write_dataset  # noqa: E402

from densa.core import data  # noqa: E402

REAL_DATA_DIR = os.environ.get("DENSA_DATA_DIR")
REAL_SYSTEM_DIRS = data.SYSTEM_DIRS


@pytest.fixture(scope="session")
def outlier_file(tmp_path_factory) -> Path:
    """The detector's generated non-digits (core.outliers), drawn once per session: every test's own
    cache gets a link to them, as a user's cache holds them after the first `densa train`."""
    from densa.core import detector, outliers

    folder = tmp_path_factory.mktemp("outliers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(folder))
        outliers.cached_outliers(detector.OUTLIERS)
    (path,) = (folder / "densa" / "outliers").iterdir()
    return path


def link_outliers(cache: Path, outlier_file: Path) -> None:
    (cache / "densa" / "outliers").mkdir(parents=True, exist_ok=True)
    link = cache / "densa" / "outliers" / outlier_file.name
    if not link.exists():
        link.symlink_to(outlier_file)


def use_cache(mp, cache: Path, outlier_file: Path) -> None:
    """Make `cache` the user cache (XDG_CACHE_HOME) for `mp`'s scope, holding the session's outliers."""
    link_outliers(cache, outlier_file)
    mp.setenv("XDG_CACHE_HOME", str(cache))


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory, monkeypatch, outlier_file):
    cache = tmp_path_factory.mktemp("cache")
    use_cache(monkeypatch, cache, outlier_file)
    monkeypatch.delenv("DENSA_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIRS", ())
    return cache


@pytest.fixture
def synth(tmp_path, monkeypatch):
    """A small learnable dataset named 'synth' in tmp_path/data (gzip'd), found through DENSA_DATA_DIR."""
    root = tmp_path / "data"
    spec = write_dataset(root, "synth")
    monkeypatch.setitem(data.DATASETS, "synth", spec)
    monkeypatch.setenv("DENSA_DATA_DIR", str(root))
    return spec


def _real(name: str, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DIRS", REAL_SYSTEM_DIRS)
    if REAL_DATA_DIR:
        monkeypatch.setenv("DENSA_DATA_DIR", REAL_DATA_DIR)
    spec = data.DATASETS[name]
    if data.locate(spec, spec.train_images, data.search_dirs()) is None:
        message = f"real {name} files not found (set DENSA_DATA_DIR to the folder holding {name}/)"
        if os.environ.get("DENSA_REQUIRE_REAL_DATA"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory, outlier_file):
    cache = tmp_path_factory.mktemp("real-cache")
    link_outliers(cache, outlier_file)
    return cache


@pytest.fixture
def real_mnist(monkeypatch, real_cache):
    """The real MNIST files; one shared cache so they are decompressed once per session."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(real_cache))
    _real("mnist", monkeypatch)
    return data.load_dataset("mnist")


@pytest.fixture(scope="session")
def mnist_run(tmp_path_factory, real_cache):
    """(run folder, dataset): `densa train` with no flags, once per session, on the real MNIST files.

    What the command printed is kept beside the run folder, in train-stdout.txt.
    """
    import contextlib
    import io

    from densa.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(real_cache))
        _real("mnist", mp)
        # DENSA_TEST_MNIST_RUN=DIR reuses a run trained by `densa train` (a shortcut while developing)
        out = os.environ.get("DENSA_TEST_MNIST_RUN")
        if not out:
            out = tmp_path_factory.mktemp("mnist-run") / "run"
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                assert main(["train", "--out", str(out)]) == 0
            (out.parent / "train-stdout.txt").write_text(printed.getvalue())
        return Path(out), data.load_dataset("mnist")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """An untrained 784-16-10 MLP saved as an MNIST checkpoint: for API and CLI tests that need any model."""
    import torch

    from densa.core.checkpoint import build_meta, dataset_meta, save
    from densa.core.config import ModelConfig
    from densa.core.models import build_model

    torch.manual_seed(0)
    config = ModelConfig(hidden=(16,))
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    save(
        build_model(config),
        out / "model.safetensors",
        build_meta(config, dataset_meta(data.DATASETS["mnist"])),
    )
    return out


@pytest.fixture
def real_fashion(monkeypatch, real_cache):
    """The real Fashion-MNIST files (Debian's dataset-fashion-mnist: /usr/share/datasets/fashion-mnist)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(real_cache))
    _real("fashion-mnist", monkeypatch)
    return data.load_dataset("fashion-mnist")


@pytest.fixture
def restore_threads():
    """Puts torch's thread count back after a test that trains in-process with --threads."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
