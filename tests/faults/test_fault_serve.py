"""Faults of `densa serve`: a model it cannot serve, errors outside the API, clients that go away, slow or
huge request heads, images that decode to huge pixel counts, and requests for a foreign Host.

Servers bind to 127.0.0.1 on a free port, in a thread; every wait is for an explicit event (an answer,
a closed socket, a log record), with a generous deadline only as a safety net.
"""

import contextlib
import io
import logging
import socket
import threading
import time

import anyio
import numpy as np
import pytest
from PIL import Image, ImageDraw
from synthetic import seven_png as seven

from densa.apps.serve import PixelBudget, allowed_hosts, create_app
from densa.apps.serve_http import HeadGuard
from densa.cli import main
from densa.core import data
from densa.core.checkpoint import build_meta, dataset_meta, save
from densa.core.config import ModelConfig
from densa.core.errors import DensaError
from densa.inference.predictor import open_predictor

DEADLINE = 60.0  # seconds; a safety net only, never what a test measures


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("densa: error: "), err
    return err


@pytest.fixture
def no_server(monkeypatch):
    """uvicorn.run fails the test: a model that must be refused never gets a server."""
    import uvicorn

    def run(*args, **kwargs):
        raise AssertionError("densa serve started a server")

    monkeypatch.setattr(uvicorn, "run", run)


# --------------------------------------------------------------------------- models it cannot serve


@pytest.mark.parametrize(
    "change, words",
    [
        ({"preprocess": "bogus"}, "bogus"),
        ({"classes": ["a", "b", "c"]}, "class"),  # before: every prediction a plain-text 500 (IndexError)
        ({"classes": [str(i) for i in range(12)]}, "class"),  # before: 200s naming 10 of the 12 classes
    ],
)
def test_serve_refuses_a_model_whose_metadata_does_not_fit(tmp_path, capsys, no_server, change, words):
    """Before: the server started and answered every prediction with a plain-text 500."""
    import torch

    from densa.core.models import build_model

    torch.manual_seed(0)
    config = ModelConfig(hidden=(16,))
    ds = {**dataset_meta(data.DATASETS["mnist"]), **change}
    save(build_model(config), tmp_path / "run" / "model.safetensors", build_meta(config, ds))
    err = one_line_error(capsys, ["serve", str(tmp_path / "run"), "--port", "0"])
    assert "model.safetensors" in err and words in err, err


class Broken:
    """A real predictor with one thing changed."""

    def __init__(self, inner, **changes):
        self.inner, self.changes = inner, changes

    def __getattr__(self, name):
        return self.changes[name] if name in self.changes else getattr(self.inner, name)


def test_create_app_runs_one_prediction_first(tiny_run):
    p = open_predictor(tiny_run)

    def crash(x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\n(second line)")

    for broken, words in (
        (Broken(p, preprocess="nope"), "unknown preprocessing rule 'nope'"),
        (Broken(p, classes=list("abc")), "10 probabilities for 3 class names"),
        (Broken(p, assess=crash), "RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
        (Broken(p, assess=lambda x: (np.full((1, 10), np.nan), p.assess(x)[1])), "not finite"),
    ):
        with pytest.raises(DensaError, match="cannot serve this model") as e:
            create_app(broken)
        assert words in str(e.value) and "\n" not in str(e.value), e.value


# --------------------------------------------------------------------------- errors outside the API


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return open_predictor(tiny_run)


def client_for(app):
    from starlette.testclient import TestClient

    return TestClient(app, raise_server_exceptions=True)


def is_problem(r, status, code):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json", r.headers
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == code and body["detail"], body
    return body["detail"]


def test_404_and_405_have_the_error_shape(predictor):
    """Before: {"detail": "Not Found"} and {"detail": "Method Not Allowed"}."""
    with client_for(create_app(predictor)) as c:
        assert "/api/predict" in is_problem(c.get("/nope"), 404, "not_found")
        r = c.get("/api/predict")
        assert "use POST" in is_problem(r, 405, "method_not_allowed") and r.headers["allow"] == "POST"
        is_problem(c.delete("/api/health"), 405, "method_not_allowed")


def test_an_unexpected_exception_is_a_json_500_and_one_log_line(predictor):
    """A bug after start-up (here the model starts failing) gives JSON, never a plain-text 500."""
    calls = []

    def flaky(x):
        calls.append(1)
        if len(calls) > 1:  # the self-check at start-up passes, the next call fails
            raise ValueError("boom")
        return predictor.assess(x)

    log = Log()
    logging.getLogger("uvicorn.error").addHandler(log)
    try:
        with client_for(create_app(Broken(predictor, assess=flaky))) as c:
            r = c.post("/api/predict", content=seven(), headers={"content-type": "image/png"})
            assert "ValueError" in is_problem(r, 500, "internal")
    finally:
        logging.getLogger("uvicorn.error").removeHandler(log)
    errors = [rec for rec in log.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1 and "boom" in errors[0].getMessage() and not errors[0].exc_info


# --------------------------------------------------------------------------- live servers


class Log(logging.Handler):
    """uvicorn.error's records, with a way to wait for one."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records, self.changed = [], threading.Condition()

    def emit(self, record):
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()

    def wait_for(self, test) -> logging.LogRecord:
        with self.changed:
            assert self.changed.wait_for(lambda: any(test(r) for r in self.records), DEADLINE), self.lines()
            return next(r for r in self.records if test(r))

    def lines(self) -> list[str]:
        return [r.getMessage() for r in self.records]


class Strict(HeadGuard):
    """Short bounds, used only where the bound firing is the expected outcome, whenever it fires: the
    head's clock starts at its first byte, so a slow machine cannot make a complete head late."""

    head_timeout = 0.5
    idle_timeout = DEADLINE  # a client is never too slow to send its first byte
    max_head = 4096


class Idle(Strict):
    idle_timeout = 0.5


def start(app, protocol):
    import uvicorn

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_config=None,
        log_level="info",
        http=protocol,
        timeout_keep_alive=int(DEADLINE),  # a kept-alive test connection is never closed for idling
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + DEADLINE
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    return server, thread, server.servers[0].sockets[0].getsockname()[1]


@pytest.fixture(scope="module")
def servers(predictor):
    """Servers of one app: with densa's head bounds (10 s, 64 KiB), strict ones (0.5 s from the head's
    first byte, 4 KiB), and closing connections that send nothing for 0.5 s."""
    log = Log()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(log)
    app = create_app(predictor, hosts=allowed_hosts("127.0.0.1"))
    running = [start(app, HeadGuard), start(app, Strict), start(app, Idle)]
    yield log, *(port for _, _, port in running)
    for server, thread, _ in running:
        server.should_exit = True
        thread.join(timeout=DEADLINE)
    logger.removeHandler(log)


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    return s


def read_all(s) -> bytes:
    """Everything until the server closes the connection (a reset counts as closed)."""
    out = b""
    try:
        while data := s.recv(65536):
            out += data
    except ConnectionResetError:
        pass
    return out


def send(s, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.sendall(data)  # the server may refuse and close before it has read everything


HEAD = b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.mark.parametrize(
    "request_bytes",
    [
        HEAD + b"Content-Length: 5000\r\n\r\n\x89PNG",  # then the client goes away
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\n\x89PNG\x00\r\nzz\r\n",  # a malformed chunk
    ],
    ids=["gone-mid-body", "malformed-chunk"],
)
def test_a_client_that_goes_away_mid_body_is_one_log_line(servers, request_bytes):
    """Before: `ERROR: Exception in ASGI application` and a ClientDisconnect traceback."""
    log, port, _, _ = servers
    done = len(log.records)
    with connect(port) as s:
        send(s, request_bytes)
        if b"chunked" in request_bytes:  # the server refuses it and closes the connection
            answer = read_all(s)
            assert answer.startswith(b"HTTP/1.1 400") and b'"error": "bad_request"' in answer, answer
    # the app's record about this request: ours ("went away") or, before, uvicorn's traceback
    new = lambda r: log.records.index(r) >= done  # noqa: E731
    rec = log.wait_for(lambda r: new(r) and ("went away" in r.getMessage() or "ASGI" in r.getMessage()))
    assert "went away" in rec.getMessage() and not rec.exc_info, log.lines()[done:]
    assert not any(r.exc_info for r in log.records[done:]), log.lines()[done:]


def test_a_huge_head_is_refused(servers):
    """Before: a 1 MB header was read whole and answered 200."""
    log, port, strict, _ = servers
    for p, size in ((port, 1 << 20), (strict, 5000)):
        with connect(p) as s:
            send(s, b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
            answer = read_all(s)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]
        if answer:
            assert b'"error": "head_too_large"' in answer, answer


def test_heads_within_the_bound_and_big_bodies_pass(servers):
    """A head under the bound is served; a body arriving with its head in one read is not counted as head."""
    _, port, _, _ = servers
    with connect(port) as s:
        send(s, b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + b"c" * 30_000 + b"\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    body = np.random.default_rng(0).integers(0, 256, 900_000, dtype=np.uint8).tobytes()
    with connect(port) as s:
        send(s, HEAD + b"Content-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 415"), answer[:300]  # read whole, then refused as not an image


def test_a_slow_head_is_closed_by_the_server(servers):
    """Before: a connection sending its head slowly (or nothing) was held as long as the client liked."""
    _, _, strict, idle = servers
    with connect(strict) as s:
        send(s, b"GET /api/health HTTP/1.1\r\nHo")  # then silence
        answer = read_all(s)  # returns only once the server closes the connection
    assert answer.startswith(b"HTTP/1.1 408") and b'"error": "timeout"' in answer, answer
    with connect(idle) as s:  # a connection that never sends a byte is closed without an answer
        assert read_all(s) == b""
    with connect(strict) as s:  # the bound applies to each request on a kept-alive connection
        send(s, b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        send(s, b"GET /api/health HTTP/1.1\r\nHost: 1")
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_foreign_host_is_refused_on_a_real_socket(servers):
    """Before: bound to loopback, `Host: attacker.example` got 200 (DNS rebinding)."""
    _, port, _, _ = servers
    for host, status in ((b"attacker.example", b"400"), (b"localhost:8000", b"200")):
        with connect(port) as s:
            send(s, b"GET /api/health HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
            answer = read_all(s)
        assert answer.startswith(b"HTTP/1.1 " + status), answer
    assert b'"error":"bad_host"' in read_host(port, b"attacker.example")


def read_host(port, host):
    with connect(port) as s:
        send(s, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        return read_all(s)


# --------------------------------------------------------------------------- hosts


def test_allowed_hosts():
    loop = allowed_hosts("127.0.0.1")
    assert loop == {"127.0.0.1", "localhost", "::1"} and allowed_hosts("::1") == loop
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("::") is None
    assert allowed_hosts("0.0.0.0", ["densa.example"]) == loop | {"densa.example"}
    assert allowed_hosts("127.0.0.1", ["*"]) is None
    assert allowed_hosts("192.168.1.5") == {"192.168.1.5"}


def test_host_header_is_checked(predictor):
    with client_for(create_app(predictor, hosts=allowed_hosts("127.0.0.1", ["Proxy.Example"]))) as c:
        for host in ("127.0.0.1", "127.0.0.1:8000", "localhost", "LOCALHOST.", "[::1]:8000", "proxy.example"):
            assert c.get("/api/health", headers={"host": host}).status_code == 200, host
        for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.nip.io", "localhost.evil", ""):
            r = c.get("/api/health", headers={"host": host})
            assert "--allow-host" in is_problem(r, 400, "bad_host"), host
        r = c.post("/api/predict", content=seven(), headers={"host": "attacker.example"})
        is_problem(r, 400, "bad_host")


def test_cli_passes_hosts_and_head_bounds_to_uvicorn(tiny_run, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(app=app, **options))
    assert main(["serve", str(tiny_run), "--port", "0", "--allow-host", "densa.example"]) == 0
    assert seen["http"] == "densa.apps.serve_http:HeadGuard" and seen["host"] == "127.0.0.1"
    with client_for(seen["app"]) as c:
        assert c.get("/api/health", headers={"host": "densa.example"}).status_code == 200
        assert c.get("/api/health", headers={"host": "localhost:8000"}).status_code == 200
        is_problem(c.get("/api/health", headers={"host": "attacker.example"}), 400, "bad_host")
    assert main(["serve", str(tiny_run), "--port", "0", "--host", "0.0.0.0"]) == 0
    with client_for(seen["app"]) as c:
        assert c.get("/api/health", headers={"host": "any.example"}).status_code == 200


# --------------------------------------------------------------------------- decoded size


def png_of_side(side: int) -> bytes:
    im = Image.new("L", (side, side), 255)
    ImageDraw.Draw(im).line([(side // 4, side // 5), (side // 2, side * 4 // 5)], fill=0, width=side // 14)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_pixel_cap_is_checked_from_the_header_before_decoding(predictor, monkeypatch):
    """Before: a 25 KB PNG of 4096x4096 cost ~160 MB per request, 4 at once took RSS to 2.7 GB."""
    import densa.inference.images

    with client_for(create_app(predictor, max_pixels=200 * 200)) as c:
        assert c.post("/api/predict", content=png_of_side(200)).status_code == 200

        def no_decoding(*args, **kwargs):
            raise AssertionError("decoded an image over the pixel cap")

        monkeypatch.setattr(densa.inference.images, "prepare", no_decoding)
        detail = is_problem(c.post("/api/predict", content=png_of_side(201)), 413, "too_large")
        assert "201x201 = 40,401 pixels" in detail and "up to 40,000 pixels (e.g. 200x200)" in detail, detail


def test_pixel_budget_bounds_decodes_in_flight_first_come_first_served():
    """Whatever the mix, the pixels held at once never exceed the budget, and a large image queued
    behind small ones is not overtaken by later ones."""
    budget = PixelBudget(10)
    held, peak, entered = [], [0], []

    async def job(i, n):
        async with budget.hold(n):
            entered.append(i)
            held.append(min(n, 10))
            peak[0] = max(peak[0], sum(held))
            for _ in range(3):
                await anyio.sleep(0)  # let every other task run while this one holds pixels
            held.remove(min(n, 10))

    async def run():
        async with anyio.create_task_group() as tg:
            for i, n in enumerate([6, 6, 3, 10, 1, 20, 2]):
                tg.start_soon(job, i, n)
                for _ in range(10_000):  # until job i holds its pixels or waits in the queue
                    if len(entered) + len(budget.queue) > i:
                        break
                    await anyio.sleep(0)

    anyio.run(run)
    assert peak[0] <= 10 and held == [] and budget.free == 10
    assert entered == list(range(7)), entered  # first come, first served
