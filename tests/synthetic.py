"""Small synthetic datasets in the real IDX format, for fast tests of the whole pipeline.

Each class is a bright bar at its own place on a noisy background, so a model learns it in an epoch.
`write_dataset` writes the four files and returns a DatasetSpec whose checksums match them;
`register` adds such specs to densa.core.data.DATASETS (tests use monkeypatch; scripts call it directly).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

from densa.core.data import DataFile, DatasetSpec

FILE_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    magic = magic if magic is not None else (2051 if arr.ndim == 3 else 2049)
    return (
        struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    )


def make_images(n: int, seed: int, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 4)
        y, x = 3 + 8 * r + rng.integers(-1, 2), 3 + 6 * c + rng.integers(-1, 2)
        images[i, y : y + 6, x : x + 4] = rng.integers(180, 256, (6, 4))
    return images, labels


def spec_for(name: str, raw: dict[str, bytes], classes=tuple("0123456789")) -> DatasetSpec:
    files = {
        k: DataFile(FILE_NAMES[k], len(b), "sha256:" + hashlib.sha256(b).hexdigest()) for k, b in raw.items()
    }
    return DatasetSpec(
        name=name, **files, mirrors=(), classes=tuple(classes), mean=0.2, std=0.3, preprocess="mnist"
    )


def write_dataset(
    root: Path, name: str = "synth", n_train: int = 1000, n_test: int = 300, gz: bool = True, seed: int = 0
) -> DatasetSpec:
    """Write <root>/<name>/ with the four IDX files (.gz unless gz=False); return the matching spec."""
    xtr, ytr = make_images(n_train, seed)
    xte, yte = make_images(n_test, seed + 1)
    raw = {
        "train_images": idx_bytes(xtr),
        "train_labels": idx_bytes(ytr),
        "test_images": idx_bytes(xte),
        "test_labels": idx_bytes(yte),
    }
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    for key, b in raw.items():
        if gz:
            (folder / (FILE_NAMES[key] + ".gz")).write_bytes(gzip.compress(b, mtime=0))
        else:
            (folder / FILE_NAMES[key]).write_bytes(b)
    return spec_for(name, raw)


def spec_from_dir(folder: Path) -> DatasetSpec:
    """The spec of a dataset folder written by write_dataset (checksums read back from the files)."""
    raw = {}
    for key, fname in FILE_NAMES.items():
        p = folder / fname
        raw[key] = p.read_bytes() if p.exists() else gzip.decompress((folder / (fname + ".gz")).read_bytes())
    return spec_for(folder.name, raw)


def register(root: Path) -> None:
    """Add every dataset folder under `root` to DATASETS (for scripts run in a subprocess)."""
    from densa.core import data

    for folder in sorted(Path(root).iterdir()):
        if folder.is_dir():
            data.DATASETS[folder.name] = spec_from_dir(folder)


def seven_png(fmt: str = "PNG", size: int = 280) -> bytes:
    """A person's "7" (dark pen on white paper) as an encoded image file, for the serving tests."""
    import io

    from PIL import Image, ImageDraw

    im = Image.new("L", (size, size), 255)
    ImageDraw.Draw(im).line([(70, 60), (200, 60), (120, 230)], fill=0, width=size // 14)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()
