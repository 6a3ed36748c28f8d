"""Damaged, hostile or misplaced dataset files: each ends in one line naming the file, never a traceback.

`densa data verify --data-dir D` must judge the files in D, not the verified copy in the cache; a file
is read no further than the size the dataset table gives it (gzip bombs, huge sparse files); folders,
unreadable files and an unwritable cache are refused with what to do.
"""

import dataclasses
import gzip
import io
import os
import subprocess
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from synthetic import FILE_NAMES, write_dataset

from densa.cli import main
from densa.core import data
from densa.core.data import DataError, load_dataset

TESTS = Path(__file__).resolve().parent.parent
OK_LINE = " ok  sha256:"


def one_error_line(capsys) -> tuple[str, str]:
    """(stdout, stderr) of a failed command; asserts stderr is exactly one `densa: error:` line."""
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("densa: error: "), err
    return out, err.strip()


def line_of(out: str, name: str) -> str:
    (line,) = [ln for ln in out.splitlines() if ln.strip().startswith(name + " ")]
    return line


def verify(root: Path) -> int:
    return main(["data", "verify", "--dataset", "synth", "--data-dir", str(root)])


@pytest.fixture
def cached(tmp_path, monkeypatch, isolated):
    """(D, D/synth): a small .gz dataset 'synth' in D, loaded once so the cache holds verified copies."""
    root = tmp_path / "d"
    spec = write_dataset(root, "synth", n_train=60, n_test=20)
    monkeypatch.setitem(data.DATASETS, "synth", spec)
    load_dataset("synth", data_dir=root)
    for name in FILE_NAMES.values():
        assert (isolated / "densa" / "synth" / name).is_file()  # the good copy verify used to check instead
    return root, root / "synth"


def _gz(folder: Path, key: str) -> Path:
    return folder / (FILE_NAMES[key] + ".gz")


# Each damages D's files and returns (the damaged file names, the reason their line must give).


def truncated(folder):
    p = _gz(folder, "train_images")
    p.write_bytes(p.read_bytes()[:300])
    return ["train-images-idx3-ubyte"], "not a complete gzip file"


def empty(folder):
    _gz(folder, "train_labels").write_bytes(b"")
    return ["train-labels-idx1-ubyte"], "is empty (0 bytes)"


def bad_crc(folder):
    p = _gz(folder, "test_images")
    b = bytearray(p.read_bytes())
    b[-8] ^= 0xFF  # the gzip trailer's CRC-32
    p.write_bytes(b)
    return ["t10k-images-idx3-ubyte"], "CRC check failed"


def bad_body(folder):
    p = _gz(folder, "test_images")
    b = bytearray(p.read_bytes())
    for i in range(len(b) // 2, len(b) // 2 + 16):
        b[i] ^= 0x55
    p.write_bytes(b)
    return ["t10k-images-idx3-ubyte"], "not a complete gzip file"


def swapped(folder):
    a, b = _gz(folder, "train_images"), _gz(folder, "test_images")
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    return ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"], "is not"


@pytest.mark.parametrize("damage", [truncated, empty, bad_crc, bad_body, swapped])
def test_verify_judges_the_file_in_data_dir_not_the_cache_copy(cached, capsys, damage):
    root, folder = cached
    bad, reason = damage(folder)
    assert verify(root) == 1
    out, err = one_error_line(capsys)
    assert f"{len(bad)} file(s) missing or bad" in err
    for name in FILE_NAMES.values():
        line = line_of(out, name)
        if name in bad:
            assert " FAILED  " + str(folder / (name + ".gz")) in line and reason in line, line
            assert "replace it with a good copy" in line
        else:
            assert OK_LINE in line and str(folder / (name + ".gz")) in line, line
    # loading still works: the verified cache copy has the right content, whatever happened to D
    assert len(load_dataset("synth", data_dir=root).train_images) == 60


def test_swapped_files_say_which_sizes(cached, capsys):
    root, folder = cached
    swapped(folder)
    verify(root)
    out = capsys.readouterr().out
    # the small file in the big one's place fails its checksum; the big one in the small one's place
    # is refused as soon as it grows past the small file's size
    assert (
        "checksum mismatch, this is not synth's train-images-idx3-ubyte (15,696 bytes decompressed, "
        "expected 47,056)" in line_of(out, "train-images-idx3-ubyte")
    )
    assert "decompresses to more than 15,696 bytes" in line_of(out, "t10k-images-idx3-ubyte")


# ------------------------------------------------------------------------- bounded reads


def gz_bomb(n_bytes: int) -> bytes:
    """A valid gzip of n_bytes zeros (about n_bytes / 1000 bytes compressed)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    block = bytes(1 << 20)
    return b"".join(c.compress(block) for _ in range(n_bytes >> 20)) + c.flush()


class Counting(io.RawIOBase):
    """Wraps a stream; counts the bytes it hands out and the largest single request."""

    def __init__(self, inner):
        self.inner, self.delivered, self.largest = inner, 0, 0

    def readable(self):
        return True

    def readinto(self, b):
        self.largest = max(self.largest, len(b))
        n = self.inner.readinto(b)
        self.delivered += n
        return n


def test_read_bounded_never_holds_more_than_the_limit(tmp_path):
    bomb = tmp_path / "bomb.gz"
    bomb.write_bytes(gz_bomb(64 << 20))
    limit = 40_000
    with gzip.GzipFile(bomb) as g:
        src = Counting(g)
        got = data.read_bounded(src, limit)
    assert len(got) == limit + 1  # one byte too many: enough to refuse it
    assert src.delivered == limit + 1  # the other ~64 MB were never decompressed into memory
    assert src.largest <= data.CHUNK
    # a stream no longer than the limit comes back whole
    assert data.read_bounded(io.BytesIO(b"abc"), 10) == b"abc"
    assert data.read_bounded(io.BytesIO(b"abc"), 3) == b"abc"
    assert data.read_bounded(io.BytesIO(b""), 10) == b""


def test_gz_bomb_is_refused_at_the_expected_size(cached, capsys):
    root, folder = cached
    f = data.DATASETS["synth"].train_images
    bomb = gz_bomb(64 << 20)
    assert len(bomb) < data.gz_limit(f.size)  # passes the size check: only bounded decompression stops it
    _gz(folder, "train_images").write_bytes(bomb)
    expected = f"decompresses to more than {f.size:,} bytes, the size of synth's train-images-idx3-ubyte"
    with pytest.raises(DataError, match=expected):
        data.read_file(
            data.DATASETS["synth"], f, "--data-dir", _gz(folder, "train_images"), verify_source=True
        )
    assert verify(root) == 1
    out, _ = one_error_line(capsys)
    assert expected in line_of(out, "train-images-idx3-ubyte")


def test_oversized_gz_is_refused_without_reading(cached, capsys):
    root, folder = cached
    f = data.DATASETS["synth"].train_labels
    os.truncate(_gz(folder, "train_labels"), 1 << 30)  # sparse: costs no disk
    assert verify(root) == 1
    out, _ = one_error_line(capsys)
    line = line_of(out, "train-labels-idx1-ubyte")
    assert f"1,073,741,824 bytes, more than any gzip of synth's train-labels-idx1-ubyte ({f.size:,}" in line
    assert "(not read)" in line


def test_huge_sparse_raw_file_is_one_line_not_a_memory_error(tmp_path):
    """In a process limited to 1 GiB of address space: reading the 20 GB file whole was a MemoryError."""
    good = tmp_path / "good"
    write_dataset(good, "synth", n_train=60, n_test=20, gz=False)
    root = tmp_path / "d"
    write_dataset(root, "synth", n_train=60, n_test=20, gz=False)
    big = root / "synth" / FILE_NAMES["train_images"]
    os.truncate(big, 20 << 30)  # sparse: costs no disk
    script = (
        "import resource, sys; from pathlib import Path\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from synthetic import spec_from_dir\n"
        "from densa.core import data\n"
        "from densa.cli import main\n"
        f"data.DATASETS['synth'] = spec_from_dir(Path({str(good / 'synth')!r}))\n"
        f"sys.exit(main(['data', 'verify', '--dataset', 'synth', '--data-dir', {str(root)!r}]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("densa: error: "), r.stderr
    line = line_of(r.stdout, "train-images-idx3-ubyte")
    assert f"{big}: 21,474,836,480 bytes, but synth's train-images-idx3-ubyte is 47,056 bytes" in line
    assert "(not read); replace it with a good copy" in line
    assert OK_LINE in line_of(r.stdout, "t10k-images-idx3-ubyte")


# ------------------------------------------------------------------------- not files, not readable


def test_a_folder_in_place_of_a_file(cached, capsys):
    root, folder = cached
    _gz(folder, "test_labels").unlink()
    (folder / FILE_NAMES["test_labels"]).mkdir()
    assert verify(root) == 1
    out, _ = one_error_line(capsys)
    where = folder / FILE_NAMES["test_labels"]
    assert f"FAILED  {where}: is a folder, not synth's t10k-labels-idx1-ubyte" in line_of(
        out, "t10k-labels-idx1-ubyte"
    )
    # loading says so too, instead of quietly taking the cache's copy
    with pytest.raises(DataError, match="is a folder"):
        load_dataset("synth", data_dir=root)


def test_unreadable_file(cached, capsys, monkeypatch):
    root, folder = cached
    target = _gz(folder, "train_labels")
    real_open = open

    def deny(path, *args, **kwargs):
        # root reads mode-000 files anyway: here opening it fails as it does for anyone else
        if isinstance(path, (str, os.PathLike)) and Path(path) == target:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    target.chmod(0)
    try:
        with monkeypatch.context() as m:
            if os.geteuid() == 0:
                m.setattr("builtins.open", deny)
            assert verify(root) == 1
    finally:
        target.chmod(0o644)
    out, _ = one_error_line(capsys)
    assert f"FAILED  {target}: cannot be read (Permission denied); replace it" in line_of(
        out, "train-labels-idx1-ubyte"
    )
    assert OK_LINE in line_of(out, "train-images-idx3-ubyte")


def test_unwritable_cache_on_download(tmp_path, monkeypatch, capsys):
    spec = write_dataset(tmp_path / "src", "synth", n_train=10, n_test=5)
    monkeypatch.setitem(data.DATASETS, "synth", dataclasses.replace(spec, mirrors=("https://127.0.0.1:9/",)))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert main(["data", "download", "--dataset", "synth"]) == 1
    out, _ = one_error_line(capsys)
    line = line_of(out, "train-images-idx3-ubyte")
    assert f"FAILED  cannot write {blocker / 'densa' / 'synth'} (Not a directory)" in line
    assert "XDG_CACHE_HOME" in line
    with pytest.raises(data.DensaError, match="cannot write"):
        load_dataset("synth")


# ------------------------------------------------------------------------- mirrors


@pytest.fixture
def server():
    """(base URL, routes): serves routes[path] = body on 127.0.0.1, 404 otherwise."""
    routes: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = routes.get(self.path)
            self.send_response(404 if body is None else 200)
            body = b"not found" if body is None else body
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", routes
    httpd.shutdown()
    httpd.server_close()


def test_mirror_serving_a_bomb_or_too_much_is_cut_off(tmp_path, monkeypatch, server, isolated):
    url, routes = server
    spec = write_dataset(tmp_path / "src", "synth", n_train=60, n_test=20)
    spec = dataclasses.replace(spec, mirrors=(url + "/a/", url + "/b/"))
    monkeypatch.setitem(data.DATASETS, "synth", spec)
    name, limit = FILE_NAMES["train_images"], data.gz_limit(spec.train_images.size)
    routes[f"/a/{name}.gz"] = gz_bomb(64 << 20)
    routes[f"/b/{name}.gz"] = bytes(limit + 1)
    with pytest.raises(DataError) as e:
        data.download(spec, spec.train_images)
    message = str(e.value)
    assert f"/a/{name}.gz: decompresses to more than {spec.train_images.size:,} bytes" in message
    assert f"/b/{name}.gz: {limit + 1:,} bytes, more than a .gz of {name}" in message
    assert not list((isolated / "densa" / "synth").iterdir())  # no temp files left


def test_every_mirror_is_https():
    plain = [
        (n, m) for n, spec in data.DATASETS.items() for m in spec.mirrors if not m.startswith("https://")
    ]
    assert plain == []
