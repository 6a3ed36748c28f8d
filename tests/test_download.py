"""The downloader against a real HTTP server on 127.0.0.1 serving files these tests make."""

import dataclasses
import gzip
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from synthetic import FILE_NAMES, idx_bytes, make_images, spec_for

from densa.cli import main
from densa.core import data
from densa.core.data import DataError, load_dataset


class Server:
    """Serves `routes[path] = (status, body, cut)`: `cut` closes the connection after that many bytes."""

    def __init__(self):
        self.routes: dict[str, tuple[int, bytes, int | None]] = {}
        self.hits: list[str] = []
        routes, hits = self.routes, self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                status, body, cut = routes.get(self.path, (404, b"<html>Not Found</html>", None))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if cut is None else body[:cut])
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def small_dataset_files() -> dict[str, bytes]:
    """The four IDX files of a 40 + 10 image dataset, by DataFile field name."""
    x, y = make_images(40, 0)
    xt, yt = make_images(10, 1)
    return {
        "train_images": idx_bytes(x),
        "train_labels": idx_bytes(y),
        "test_images": idx_bytes(xt),
        "test_labels": idx_bytes(yt),
    }


@pytest.fixture
def server():
    with Server() as s:
        yield s


@pytest.fixture
def remote(monkeypatch, server):
    """A dataset 'remote' that exists only on two mirrors of the local server."""
    raw = small_dataset_files()
    spec = dataclasses.replace(spec_for("remote", raw), mirrors=(server.url + "/a/", server.url + "/b/"))
    monkeypatch.setitem(data.DATASETS, "remote", spec)
    gz = {FILE_NAMES[k]: gzip.compress(b) for k, b in raw.items()}
    return spec, gz


def serve_all(server, mirror, gz, **overrides):
    for name, body in gz.items():
        server.routes[f"/{mirror}/{name}.gz"] = overrides.get(name, (200, body, None))


def leftovers(cache):
    folder = cache / "densa" / "remote"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_download_then_offline(remote, server, isolated):
    spec, gz = remote
    serve_all(server, "a", gz)
    ds = load_dataset("remote")
    assert len(ds.train_images) == 40 and ds.test_labels.tolist() == make_images(10, 1)[1].tolist()
    assert leftovers(isolated) == sorted(FILE_NAMES.values())  # decompressed, verified, no temp files
    hits = len(server.hits)
    load_dataset("remote")  # now served from the cache
    assert len(server.hits) == hits


def test_first_mirror_404_uses_second(remote, server, isolated):
    spec, gz = remote
    serve_all(server, "b", gz)
    load_dataset("remote")
    assert any(h.startswith("/a/") for h in server.hits) and any(h.startswith("/b/") for h in server.hits)
    assert leftovers(isolated) == sorted(FILE_NAMES.values())


@pytest.mark.parametrize(
    "bad, reason",
    [
        (lambda body: (200, body, len(body) // 2), "closed after"),  # cut short
        (lambda body: (200, b"<html><body>Access Denied</body></html>", None), "not a complete gzip file"),
        (lambda body: (200, gzip.compress(idx_bytes(make_images(40, 7)[0])), None), "checksum mismatch"),
        (lambda body: (500, b"oops", None), "HTTP 500"),
    ],
    ids=["cut-short", "html-as-gz", "wrong-checksum", "server-error"],
)
def test_bad_first_mirror_falls_back(remote, server, isolated, bad, reason):
    spec, gz = remote
    name = FILE_NAMES["train_images"]
    serve_all(server, "a", gz, **{name: bad(gz[name])})
    serve_all(server, "b", gz)
    load_dataset("remote")
    assert f"/b/{name}.gz" in server.hits
    assert leftovers(isolated) == sorted(FILE_NAMES.values())

    # with no good mirror the error names each failure, and nothing is left in the cache
    (isolated / "densa" / "remote" / name).unlink()
    server.routes.pop(f"/b/{name}.gz")
    with pytest.raises(DataError, match=reason) as err:
        load_dataset("remote")
    assert "HTTP 404" in str(err.value) and "--data-dir" in str(err.value)
    assert name not in leftovers(isolated)
    assert not [n for n in leftovers(isolated) if n.startswith(".")]


def test_no_network_cli_error(monkeypatch, capsys, isolated):
    # a port nobody listens on: connection refused, as on a machine without network
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()
    spec = dataclasses.replace(data.DATASETS["mnist"], mirrors=(f"http://127.0.0.1:{port}/",))
    monkeypatch.setitem(data.DATASETS, "mnist", spec)
    assert main(["train", "--epochs", "1", "--out", str(isolated / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(
        "densa: error: mnist: train-images-idx3-ubyte is not on this machine"
    )
    assert "DENSA_DATA_DIR" in err
    assert not (isolated / "run").exists()
    assert leftovers(isolated) == []


def test_data_download_command(remote, server, isolated, capsys):
    spec, gz = remote
    serve_all(server, "a", gz)
    assert main(["data", "info", "--dataset", "remote"]) == 0
    assert capsys.readouterr().out.count("missing") == 4
    assert main(["data", "download", "--dataset", "remote"]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok ") == 4 and "downloaded" in out
    assert main(["data", "verify", "--dataset", "remote"]) == 0
    assert capsys.readouterr().out.count(" ok ") == 4


# ------------------------------------------------------------------------- files known by their .gz checksum


@pytest.fixture
def gz_only(monkeypatch, server):
    """Like `remote`, but the table knows only the md5 of each .gz as served (as for KMNIST)."""
    raw = small_dataset_files()
    gz = {FILE_NAMES[k]: gzip.compress(b, mtime=0) for k, b in raw.items()}
    files = {
        k: data.DataFile(FILE_NAMES[k], len(b), None, "md5:" + hashlib.md5(gz[FILE_NAMES[k]]).hexdigest())
        for k, b in raw.items()
    }
    spec = dataclasses.replace(
        spec_for("remote", raw), **files, mirrors=(server.url + "/a/", server.url + "/b/")
    )
    monkeypatch.setitem(data.DATASETS, "remote", spec)
    return spec, gz


def test_gz_only_download_keeps_the_verified_gz(gz_only, server, isolated):
    spec, gz = gz_only
    name = FILE_NAMES["train_images"]
    recompressed = gzip.compress(gzip.decompress(gz[name]), compresslevel=1, mtime=0)
    serve_all(server, "a", gz, **{name: (200, recompressed, None)})  # same content, other .gz bytes
    serve_all(server, "b", gz)
    ds = load_dataset("remote")
    assert ds.train_labels.tolist() == make_images(40, 0)[1].tolist()
    assert f"/b/{name}.gz" in server.hits
    assert leftovers(isolated) == sorted(n + ".gz" for n in FILE_NAMES.values())
    assert (isolated / "densa" / "remote" / (name + ".gz")).read_bytes() == gz[name]
    hits = len(server.hits)
    load_dataset("remote")  # offline now: the cached .gz is re-verified and decompressed
    assert len(server.hits) == hits

    # a decompressed copy cannot be verified: refused, with what to do
    (isolated / "densa" / "remote" / (name + ".gz")).unlink()
    (isolated / "densa" / "remote" / name).write_bytes(gzip.decompress(gz[name]))
    with pytest.raises(DataError, match=r"cannot verify a decompressed remote file .*put the original"):
        load_dataset("remote")


def test_kmnist_row(monkeypatch, server, isolated):
    spec = data.DATASETS["kmnist"]
    assert spec.classes == ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
    assert spec.mirrors == ("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",)
    published = {  # rois-codh/kmnist's README (and ../shared/data/README.md)
        "train_images": "md5:bdb82020997e1d708af4cf47b453dcf7",
        "train_labels": "md5:e144d726b3acfaa3e44228e80efcd344",
        "test_images": "md5:5c965bf0a639b31b8f53240b1b52f4d7",
        "test_labels": "md5:7320c461ea6c1c855c0b718fb2a4b134",
    }
    assert {k: f.gz_checksum for k, f in spec.files.items()} == published
    assert all(f.checksum is None and f.gz_only for f in spec.files.values())
    assert [f.size for f in spec.files.values()] == [47040016, 60008, 7840016, 10008]

    # the row's own checksums against a mirror serving something else: refused, nothing kept
    monkeypatch.setitem(data.DATASETS, "kmnist", dataclasses.replace(spec, mirrors=(server.url + "/k/",)))
    fake = gzip.compress(idx_bytes(make_images(10, 0)[1]))
    server.routes["/k/train-labels-idx1-ubyte.gz"] = (200, fake, None)
    with pytest.raises(DataError, match=r"checksum mismatch of the .gz \(expected md5:e144d726"):
        data.download(data.DATASETS["kmnist"], spec.train_labels)
    assert not list((isolated / "densa" / "kmnist").iterdir())


def test_fashion_mnist_row():
    spec = data.DATASETS["fashion-mnist"]
    assert spec.classes[0] == "T-shirt/top" and spec.classes[9] == "Ankle boot" and len(spec.classes) == 10
    assert all(f.checksum.startswith("sha256:") for f in spec.files.values())
