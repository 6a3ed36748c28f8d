"""The IDX reader against hand-built bytes, and where/how dataset files are found and verified."""

import gzip
import os
import stat
import struct

import numpy as np
import pytest
import torch
from synthetic import FILE_NAMES, idx_bytes, make_images, spec_for, write_dataset

from densa.core import data
from densa.core.data import DataError, load_dataset, read_idx


def test_read_idx_hand_built_images():
    payload = bytes([i % 256 for i in range(2 * 28 * 28)])
    raw = struct.pack(">IIII", 2051, 2, 28, 28) + payload
    arr = read_idx(raw, "x", data.IMAGE_MAGIC)
    assert arr.shape == (2, 28, 28) and arr.dtype == np.uint8
    assert arr[0, 0, 0] == 0 and arr[0, 0, 5] == 5 and arr[1, 27, 27] == (2 * 784 - 1) % 256


def test_read_idx_hand_built_labels():
    raw = bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])
    assert read_idx(raw, "x", data.LABEL_MAGIC).tolist() == [7, 2, 1]


@pytest.mark.parametrize(
    "raw, message",
    [
        (struct.pack(">II", 2049, 3) + b"\x07\x02\x01", "wrong magic number 2049"),
        (struct.pack(">IIII", 2051, 2, 28, 28) + bytes(100), "truncated or corrupt"),
        (struct.pack(">IIII", 2051, 1, 32, 32) + bytes(1024), "32x32"),
        (b"\x00\x00", "too short"),
    ],
)
def test_read_idx_rejects_bad_images(raw, message):
    with pytest.raises(DataError, match=message):
        read_idx(raw, "bad-file", data.IMAGE_MAGIC)


def test_load_synthetic_gz_and_raw(tmp_path, monkeypatch):
    for gz in (True, False):
        root = tmp_path / f"gz{gz}"
        spec = write_dataset(root, "synth", n_train=50, n_test=20, gz=gz)
        monkeypatch.setitem(data.DATASETS, "synth", spec)
        ds = load_dataset("synth", data_dir=root)
        x, y = make_images(50, 0)
        assert ds.train_images.dtype == torch.uint8 and ds.train_images.shape == (50, 28, 28)
        assert ds.train_labels.dtype == torch.int64
        assert torch.equal(ds.train_images, torch.from_numpy(x))
        assert ds.train_labels.tolist() == y.tolist()
        assert ds.sources["train_images"].startswith(str(root))


def test_gz_is_decompressed_once_into_the_cache(synth, isolated):
    load_dataset("synth")
    memo = isolated / "densa" / "synth" / "train-images-idx3-ubyte"
    assert memo.is_file()
    assert data.checksum_ok(memo.read_bytes(), synth.train_images.checksum)
    # a corrupt cached copy is not trusted: it is rebuilt from the source
    memo.write_bytes(b"garbage")
    ds = load_dataset("synth")
    assert len(ds.train_images) == 1000 and data.checksum_ok(memo.read_bytes(), synth.train_images.checksum)


def test_lookup_order(tmp_path, monkeypatch, isolated):
    """--data-dir / DENSA_DATA_DIR, then the user cache, then the system folders."""
    explicit, system = tmp_path / "explicit", tmp_path / "system"
    spec = write_dataset(system, "synth", n_train=40, n_test=10)
    monkeypatch.setitem(data.DATASETS, "synth", spec)
    monkeypatch.setattr(data, "SYSTEM_DIRS", (system,))
    assert load_dataset("synth").sources["test_labels"].startswith(str(system))
    # decompressed copies are now cached: the cache comes before the system folder
    assert load_dataset("synth").sources["test_labels"].startswith(str(isolated))
    write_dataset(explicit, "synth", n_train=40, n_test=10)
    monkeypatch.setenv("DENSA_DATA_DIR", str(explicit))
    assert load_dataset("synth").sources["test_labels"].startswith(str(explicit))
    assert load_dataset("synth", data_dir=system).sources["test_labels"].startswith(str(system))


def test_read_only_data_dir_is_not_written(synth, tmp_path):
    folder = tmp_path / "data" / "synth"
    before = sorted(os.listdir(folder))
    os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR)
    try:
        load_dataset("synth")
        assert sorted(os.listdir(folder)) == before
    finally:
        os.chmod(folder, stat.S_IRWXU)


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("mnist", data_dir=tmp_path / "nope")


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'cifar'.*mnist"):
        load_dataset("cifar")


def _corrupt(tmp_path, monkeypatch, key, content: bytes, gz=True):
    spec = write_dataset(tmp_path, "synth", n_train=30, n_test=10)
    monkeypatch.setitem(data.DATASETS, "synth", spec)
    path = tmp_path / "synth" / (FILE_NAMES[key] + ".gz")
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def test_truncated_gz(tmp_path, monkeypatch, isolated):
    good = gzip.compress(idx_bytes(make_images(30, 0)[0]))
    _corrupt(tmp_path, monkeypatch, "train_images", good[:500], gz=False)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: not a complete gzip file"):
        load_dataset("synth", data_dir=tmp_path)
    assert not (isolated / "densa" / "synth" / "train-images-idx3-ubyte").exists()


def test_not_gzip(tmp_path, monkeypatch):
    _corrupt(tmp_path, monkeypatch, "test_labels", b"<html>404 Not Found</html>", gz=False)
    with pytest.raises(DataError, match="not a complete gzip file"):
        load_dataset("synth", data_dir=tmp_path)


def test_checksum_mismatch(tmp_path, monkeypatch, isolated):
    other = idx_bytes(make_images(30, 99)[0])  # a valid IDX file, but not the one the table names
    _corrupt(tmp_path, monkeypatch, "train_images", other)
    with pytest.raises(DataError, match="checksum mismatch.*replace it with a good copy"):
        load_dataset("synth", data_dir=tmp_path)
    assert not (isolated / "densa" / "synth" / "train-images-idx3-ubyte").exists()


def test_wrong_magic_and_count_mismatch(tmp_path, monkeypatch):
    x, y = make_images(30, 0)
    raw = {
        "train_images": idx_bytes(x, magic=2049),
        "train_labels": idx_bytes(y),
        "test_images": idx_bytes(x[:10]),
        "test_labels": idx_bytes(y[:10]),
    }
    folder = tmp_path / "bad"
    folder.mkdir()
    for k, b in raw.items():
        (folder / FILE_NAMES[k]).write_bytes(b)
    monkeypatch.setitem(data.DATASETS, "bad", spec_for("bad", raw))
    with pytest.raises(DataError, match="wrong magic number 2049"):
        load_dataset("bad", data_dir=tmp_path)

    raw["train_images"] = idx_bytes(x[:29])
    (folder / FILE_NAMES["train_images"]).write_bytes(raw["train_images"])
    monkeypatch.setitem(data.DATASETS, "bad", spec_for("bad", raw))
    with pytest.raises(DataError, match="train has 29 images but 30 labels"):
        load_dataset("bad", data_dir=tmp_path)


def test_cache_dir_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.cache_dir() == tmp_path / "densa"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "densa"


# --------------------------------------------------------------------------- the real files


@pytest.mark.realdata
def test_real_mnist_known_facts(real_mnist):
    ds = real_mnist
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert torch.bincount(ds.train_labels).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert torch.bincount(ds.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    x = ds.train_images.double() / 255
    assert round(x.mean().item(), 4) == ds.spec.mean == 0.1307
    assert round(x.std().item(), 4) == ds.spec.std == 0.3081


def test_write_atomic_leaves_a_normal_file_or_nothing(tmp_path):
    from densa.core import _io

    _io.write_atomic(tmp_path / "a" / "f.txt", "hello")
    assert (tmp_path / "a" / "f.txt").read_text() == "hello"
    mask = os.umask(0o022)
    os.umask(mask)
    assert _io._umask() == mask  # read without changing it
    assert stat.S_IMODE((tmp_path / "a" / "f.txt").stat().st_mode) == 0o666 & ~mask
    with pytest.raises(ZeroDivisionError), _io.atomic_path(tmp_path / "a" / "g.bin") as tmp:
        tmp.write_bytes(b"half")
        raise ZeroDivisionError
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["f.txt"]


@pytest.mark.realdata
def test_real_fashion_mnist_known_facts(real_fashion):
    ds = real_fashion
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert torch.bincount(ds.train_labels).tolist() == [6000] * 10
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    assert ds.test_labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    x = ds.train_images.double() / 255
    assert round(x.mean().item(), 4) == ds.spec.mean == 0.2860
    assert round(x.std().item(), 4) == ds.spec.std == 0.3530
