"""Datasets as rows of a table: where their files live, how they are fetched and verified, and the IDX reader.

`load_dataset("mnist")` looks for each file in --data-dir / DENSA_DATA_DIR, the user cache
(~/.cache/densa), the system dataset folders (/usr/share/datasets, where Debian's dataset packages
install), and finally downloads it into the cache. Every file is checked against the checksum of its
*decompressed* content; the result is uint8 images (N, 28, 28) and int64 labels as torch tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import stat
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ._io import write_atomic
from .errors import DensaError

SYSTEM_DIRS = (Path("/usr/share/datasets"),)
DOWNLOAD_TIMEOUT = 30.0  # seconds without data before a mirror is given up
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


class DataError(DensaError):
    pass


# The ways a person's image is made to look like a dataset's 28x28 (inference.images.RULES implements them)
PREPROCESS_RULES = ("mnist", "fashion", "kmnist")


@dataclass(frozen=True)
class DataFile:
    name: str  # decompressed file name; mirrors serve name + ".gz"
    size: int  # bytes, decompressed
    checksum: str | None  # "sha256:<hex>" or "md5:<hex>" of the decompressed bytes; None = unpublished
    # Only where the decompressed checksum is unknown: the checksum of the .gz exactly as the mirrors
    # serve it. Such a file is downloaded, kept and verified as that .gz (a recompressed copy fails).
    gz_checksum: str | None = None

    @property
    def gz_only(self) -> bool:
        return self.checksum is None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    train_images: DataFile
    train_labels: DataFile
    test_images: DataFile
    test_labels: DataFile
    mirrors: tuple[str, ...]  # base URLs, tried in order
    classes: tuple[str, ...]
    mean: float  # of the training pixels scaled to [0, 1]
    std: float
    preprocess: str  # how a person's image is turned into this dataset's 28x28: one of PREPROCESS_RULES

    @property
    def files(self) -> dict[str, DataFile]:
        return {
            "train_images": self.train_images,
            "train_labels": self.train_labels,
            "test_images": self.test_images,
            "test_labels": self.test_labels,
        }


def _idx_files(checksums: dict[str, str], gz: bool = False) -> dict[str, DataFile]:
    """The four canonical IDX files of a 60k/10k, 28x28 dataset, with their (gz=True: .gz) checksums."""
    names = {
        "train_images": ("train-images-idx3-ubyte", 16 + 60000 * 784),
        "train_labels": ("train-labels-idx1-ubyte", 8 + 60000),
        "test_images": ("t10k-images-idx3-ubyte", 16 + 10000 * 784),
        "test_labels": ("t10k-labels-idx1-ubyte", 8 + 10000),
    }
    if gz:
        return {k: DataFile(name, size, None, checksums[k]) for k, (name, size) in names.items()}
    return {k: DataFile(name, size, checksums[k]) for k, (name, size) in names.items()}


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        **_idx_files(
            {
                "train_images": "sha256:ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "train_labels": "sha256:65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "test_images": "sha256:0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "test_labels": "sha256:ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            }
        ),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        classes=tuple("0123456789"),
        mean=0.1307,
        std=0.3081,
        preprocess="mnist",
    ),
    # sha256 computed here from Debian's dataset-fashion-mnist files after checking that their
    # decompressed md5s equal the ones zalandoresearch/fashion-mnist publishes for the raw files
    # (f4a8712d..., 9018921c..., 8181f547..., 15d48437...).
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        **_idx_files(
            {
                "train_images": "sha256:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "train_labels": "sha256:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "test_images": "sha256:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "test_labels": "sha256:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            }
        ),
        # The project's own copies in its GitHub repository (its S3 website mirror serves only plain http).
        mirrors=("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=0.2860,
        std=0.3530,
        preprocess="fashion",
    ),
    # Kuzushiji-MNIST (rois-codh/kmnist): only the md5s of the .gz files are published (the same values
    # torchvision's KMNIST uses), so those files are verified as served and kept compressed. mean/std:
    # the values quoted for its training set (not recomputed here: the files are not on this machine).
    "kmnist": DatasetSpec(
        name="kmnist",
        **_idx_files(
            {
                "train_images": "md5:bdb82020997e1d708af4cf47b453dcf7",
                "train_labels": "md5:e144d726b3acfaa3e44228e80efcd344",
                "test_images": "md5:5c965bf0a639b31b8f53240b1b52f4d7",
                "test_labels": "md5:7320c461ea6c1c855c0b718fb2a4b134",
            },
            gz=True,
        ),
        mirrors=("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        mean=0.1918,
        std=0.3483,
        preprocess="mnist",
    ),
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None


# --------------------------------------------------------------------------- where files live


def cache_dir() -> Path:
    """densa's user cache: $XDG_CACHE_HOME/densa, else ~/.cache/densa."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "densa"


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """Folders holding <dataset>/ subfolders, in lookup order, each with a label for messages."""
    dirs = []
    explicit = data_dir if data_dir is not None else os.environ.get("DENSA_DATA_DIR") or None
    if explicit is not None:
        where = "--data-dir" if data_dir is not None else "DENSA_DATA_DIR"
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise DataError(f"{where} {path} is not a folder; point it at the folder that holds mnist/ etc.")
        dirs.append((where, path))
    dirs.append(("cache", cache_dir()))
    dirs += [("system", d) for d in SYSTEM_DIRS]
    return dirs


def locate(spec: DatasetSpec, f: DataFile, dirs: list[tuple[str, Path]]) -> tuple[str, Path] | None:
    """The first copy of `f` (decompressed or .gz) in `dirs`, as (label, path).

    Where a folder has no real copy but a folder (or other non-file) under the file's name, that is
    returned, so that reading it says what is wrong instead of quietly using a copy further down.
    """
    for label, d in dirs:
        candidates = (d / spec.name / f.name, d / spec.name / (f.name + ".gz"))
        for candidate in candidates:
            if candidate.is_file():
                return label, candidate
        for candidate in candidates:
            if candidate.exists():
                return label, candidate
    return None


# --------------------------------------------------------------------------- bytes in, verified

CHUNK = 1 << 20  # bytes read at a time: the most a bounded read holds beyond a file's expected size


def checksum_ok(data: bytes | bytearray | memoryview, checksum: str) -> bool:
    algo, expected = checksum.split(":", 1)
    return hashlib.new(algo, data).hexdigest() == expected


def gz_limit(size: int) -> int:
    """The most bytes a .gz of a `size`-byte file can take (deflate's stored blocks add 5 bytes per
    64 KiB, gzip a header that may hold a name); a bigger .gz is not that file."""
    return size + size // 1000 + (1 << 16)


def read_bounded(stream, limit: int) -> bytearray:
    """Read `stream` to its end, but never more than limit + 1 bytes (a result that long is refused).

    One buffer of limit + 1 bytes is filled at most CHUNK bytes at a time, so a gzip bomb or a huge
    file costs no more memory than the file it claims to be.
    """
    buf = bytearray(limit + 1)
    n = 0
    with memoryview(buf) as view:
        while n <= limit and (got := stream.readinto(view[n : n + CHUNK])):
            n += got
    del buf[n:]
    return buf


def gunzip(path: Path, size: int, raw: bytes | None = None, hint: str = "") -> bytearray:
    """The decompressed content of the gzip file at `path` (or of its bytes `raw`, already read).

    Decompression stops past `size` bytes, the most the file may hold: the result is then
    size + 1 bytes long, which callers refuse.
    """
    try:
        with gzip.GzipFile(path) if raw is None else gzip.GzipFile(fileobj=io.BytesIO(raw)) as src:
            return read_bounded(src, size)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a complete gzip file ({e}){'; ' + hint if hint else ''}") from None


def _fix_hint(spec: DatasetSpec, label: str) -> str:
    if label == "cache":
        return f"delete it and run `densa data download --dataset {spec.name}`"
    return "replace it with a good copy (or remove it to let densa use the cache or download)"


@contextmanager
def _reading(path: Path, hint: str):
    """Turn a failed read (no permission, I/O error, vanished file) into one line naming the file."""
    try:
        yield
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e}); {hint}") from None


def _check_size(spec: DatasetSpec, f: DataFile, path: Path, hint: str) -> None:
    """Refuse, before reading a byte, what is not a file or cannot be `f` by its size."""
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise DataError(f"{path}: is {what}, not {spec.name}'s {f.name}; {hint}")
    if st.st_size == 0:
        raise DataError(f"{path}: is empty (0 bytes), not {spec.name}'s {f.name}; {hint}")
    if path.suffix == ".gz" and st.st_size > gz_limit(f.size):
        raise DataError(
            f"{path}: {st.st_size:,} bytes, more than any gzip of {spec.name}'s {f.name} "
            f"({f.size:,} bytes) can take, so it is not that file (not read); {hint}"
        )
    if path.suffix != ".gz" and st.st_size != f.size:
        raise DataError(
            f"{path}: {st.st_size:,} bytes, but {spec.name}'s {f.name} is {f.size:,} bytes, so it is "
            f"cut short or another file (not read); {hint}"
        )


def read_file(
    spec: DatasetSpec, f: DataFile, label: str, path: Path, verify_source: bool = False
) -> bytearray:
    """The verified, decompressed bytes of `f` found at `path`.

    A .gz is decompressed once; the verified result is kept in the user cache, where later loads
    find it without unpacking again (the cache copy is itself re-verified each time: hashing is cheap).
    verify_source=True reads and checks the file at `path` itself, even when that cache copy is good.
    Nothing is read past the size the table gives, so a huge file or a gzip bomb is refused cheaply.
    """
    if f.gz_only:
        return _read_gz_only(spec, f, label, path)
    memo = cache_dir() / spec.name / f.name
    gz = path.suffix == ".gz"
    if gz and not verify_source and memo != path and (data := _cached_copy(f, memo)) is not None:
        return data
    hint = _fix_hint(spec, label)
    with _reading(path, hint):
        _check_size(spec, f, path, hint)
        if gz:
            data = gunzip(path, f.size, hint=hint)
        else:
            with open(path, "rb") as src:
                data = read_bounded(src, f.size)
    if len(data) > f.size:
        raise DataError(
            f"{path}: decompresses to more than {f.size:,} bytes, the size of {spec.name}'s {f.name}, "
            f"so it is not that file (stopped reading there); {hint}"
        )
    if not checksum_ok(data, f.checksum):
        raise DataError(
            f"{path}: checksum mismatch, this is not {spec.name}'s {f.name} "
            f"({len(data):,} bytes decompressed, expected {f.size:,}); {hint}"
        )
    if gz:
        try:
            write_atomic(memo, data)
        except (OSError, DensaError) as e:  # a read-only or full cache only costs speed
            print(
                f"densa: warning: could not cache {memo} ({getattr(e, 'strerror', None) or e})",
                file=sys.stderr,
            )
    return data


def _cached_copy(f: DataFile, memo: Path) -> bytearray | None:
    """The cache's decompressed copy of `f` if it is there and verified, else None (it is rebuilt)."""
    try:
        if not memo.is_file() or memo.stat().st_size != f.size:
            return None
        with open(memo, "rb") as src:
            data = read_bounded(src, f.size)
    except OSError:
        return None
    return data if checksum_ok(data, f.checksum) else None


def _read_gz_only(spec: DatasetSpec, f: DataFile, label: str, path: Path) -> bytearray:
    """A file known only by the checksum of its .gz: verify that .gz, then decompress it (no cache copy)."""
    algo = f.gz_checksum.split(":", 1)[0]
    if path.suffix != ".gz":
        raise DataError(
            f"{path}: densa cannot verify a decompressed {spec.name} file (only the {algo} of "
            f"{f.name}.gz is published); put the original {f.name}.gz there instead"
        )
    hint = _fix_hint(spec, label)
    with _reading(path, hint):
        _check_size(spec, f, path, hint)
        with open(path, "rb") as src:
            raw = read_bounded(src, gz_limit(f.size))
    if not checksum_ok(raw, f.gz_checksum):
        raise DataError(
            f"{path}: checksum mismatch, this is not {spec.name}'s {f.name}.gz as published "
            f"({f.gz_checksum}); {hint}"
        )
    data = gunzip(path, f.size, raw, hint)
    if len(data) != f.size:
        raise DataError(f"{path}: decompresses to {len(data):,} bytes, expected {f.size:,}")
    return data


@contextmanager
def _writing(path: Path):
    """Turn a failed write into the cache (full disk, read-only folder) into one line naming the path.

    It raises a DensaError, not a DataError: download() must not take it for a bad mirror and try the next.
    """
    try:
        yield
    except OSError as e:
        raise DensaError(
            f"cannot write {path} ({e.strerror or e}); make room there or make it writable, or set "
            "XDG_CACHE_HOME to another folder"
        ) from None


def download(spec: DatasetSpec, f: DataFile, timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Fetch f.name + '.gz' from the first mirror that serves a verified copy; returns the cached file.

    The cache keeps the decompressed file, or for a gz-only file (see DataFile) the verified .gz.
    """
    dest = cache_dir() / spec.name / f.name
    failures = []
    for mirror in spec.mirrors:
        url = mirror.rstrip("/") + "/" + f.name + ".gz"
        with _writing(dest.parent):
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{f.name}.", suffix=".part")
        try:
            try:
                data = _fetch(url, fd, Path(tmp), f, timeout)
            except urllib.error.HTTPError as e:
                failures.append(f"{url}: HTTP {e.code}")
                continue
            except urllib.error.URLError as e:
                failures.append(f"{url}: {e.reason}")
                continue
            except (OSError, http.client.HTTPException, DataError) as e:
                failures.append(f"{url}: {str(e) or type(e).__name__}")
                continue
            if f.gz_only:
                with _writing(dest.parent):
                    os.replace(tmp, dest.with_name(f.name + ".gz"))
                return dest.with_name(f.name + ".gz")
            write_atomic(dest, data)
            return dest
        finally:
            Path(tmp).unlink(missing_ok=True)
    raise DataError(
        f"{spec.name}: {f.name} is not on this machine and no mirror served a good copy "
        f"({'; '.join(failures)}); without network, put the files in DIR/{spec.name}/ and pass "
        f"--data-dir DIR or set DENSA_DATA_DIR=DIR"
    )


def _fetch(url: str, fd: int, tmp: Path, f: DataFile, timeout: float) -> bytearray:
    """Stream `url` (f's .gz) into the open temp file `fd`, verify it; the decompressed bytes.

    A mirror that sends more than any .gz of the file can take is cut off there.
    """
    from tqdm import tqdm

    limit = gz_limit(f.size)
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
        total = int(r.headers.get("Content-Length") or 0) or None
        if total is not None and total > limit:
            raise DataError(f"{total:,} bytes, more than a .gz of {f.name} ({f.size:,} bytes) can take")
        got = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=f.name + ".gz", leave=False) as bar:
            while chunk := r.read(1 << 16):
                got += len(chunk)
                if got > limit:
                    raise DataError(f"sent more than {limit:,} bytes, more than a .gz of {f.name} can take")
                with _writing(tmp):
                    out.write(chunk)
                bar.update(len(chunk))
        if total is not None and got != total:
            raise DataError(f"connection closed after {got:,} of {total:,} bytes")
        with _writing(tmp):
            out.flush()
    if f.gz_only and not checksum_ok(tmp.read_bytes(), f.gz_checksum):  # at most `limit` bytes
        raise DataError(f"checksum mismatch of the .gz (expected {f.gz_checksum})")
    data = gunzip(tmp, f.size)
    if len(data) != f.size:
        more = "more than " if len(data) > f.size else ""
        raise DataError(f"decompresses to {more}{min(len(data), f.size):,} bytes, expected {f.size:,}")
    if not f.gz_only and not checksum_ok(data, f.checksum):
        raise DataError("checksum mismatch after decompressing")
    return data


def read_idx(data: bytes | bytearray, source: str, magic: int):
    """Parse an IDX file: big-endian magic (2051 images, 2049 labels), dimensions, then uint8 payload."""
    import numpy as np

    if len(data) < 8:
        raise DataError(f"{source}: too short to be an IDX file ({len(data)} bytes)")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        kind = "images" if magic == IMAGE_MAGIC else "labels"
        raise DataError(
            f"{source}: wrong magic number {found} (IDX {kind} start with {magic}); not an IDX file"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: header cut short ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if ndim == 3 and dims[1:] != (28, 28):
        raise DataError(f"{source}: images are {dims[1]}x{dims[2]}, densa expects 28x28")
    expected = 1
    for d in dims:
        expected *= d
    if len(data) - header != expected:
        raise DataError(
            f"{source}: payload is {len(data) - header:,} bytes but the header promises "
            f"{' x '.join(map(str, dims))} = {expected:,}; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


# --------------------------------------------------------------------------- the public loader


@dataclass
class Dataset:
    spec: DatasetSpec
    train_images: object  # torch.uint8 (N, 28, 28)
    train_labels: object  # torch.int64 (N,)
    test_images: object
    test_labels: object
    sources: dict[str, str]  # file key -> where it was found

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    def split(self, split: str):
        """(images, labels) of "train" or "test"."""
        if split not in ("train", "test"):
            raise DataError(f"unknown split {split!r}; choose train or test")
        return getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")


def load_file(
    spec: DatasetSpec, key: str, data_dir=None, allow_download: bool = True, verify_source: bool = False
) -> tuple[bytearray, str]:
    """Verified bytes of one of the dataset's files, and a description of where they came from.

    verify_source=True checks the file found itself, not the cache's decompressed copy of it.
    """
    f = spec.files[key]
    found = locate(spec, f, search_dirs(data_dir))
    if found is None:
        if not allow_download:
            raise DataError(
                f"{spec.name}: {f.name} not found; run `densa data download --dataset {spec.name}`"
            )
        path = download(spec, f)
        return read_file(spec, f, "cache", path), f"downloaded to {path}"
    label, path = found
    return read_file(spec, f, label, path, verify_source), str(path)


def load_dataset(
    name: str = "mnist", data_dir: str | os.PathLike | None = None, allow_download: bool = True
) -> Dataset:
    """Load a dataset from the table as torch tensors: uint8 images (N, 28, 28), int64 labels."""
    import torch

    spec = get_spec(name)
    arrays, sources = {}, {}
    for key, f in spec.files.items():
        data, sources[key] = load_file(spec, key, data_dir, allow_download)
        magic = IMAGE_MAGIC if key.endswith("images") else LABEL_MAGIC
        arrays[key] = read_idx(data, f"{sources[key]} ({f.name})", magic)
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise DataError(f"{spec.name}: {split} has {n_img} images but {n_lab} labels; mismatched files")
    return Dataset(
        spec=spec,
        train_images=torch.from_numpy(arrays["train_images"]),
        train_labels=torch.from_numpy(arrays["train_labels"].astype("int64")),
        test_images=torch.from_numpy(arrays["test_images"]),
        test_labels=torch.from_numpy(arrays["test_labels"].astype("int64")),
        sources=sources,
    )
