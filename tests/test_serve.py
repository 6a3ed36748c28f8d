"""The HTTP API in-process (Starlette's TestClient): answers, bad input, a hypothesis fuzz, the page."""

import base64
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from synthetic import seven_png as seven

from densa.apps.serve import create_app
from densa.inference.predictor import open_predictor


@pytest.fixture(scope="module")
def client(tiny_run):
    from starlette.testclient import TestClient

    predictor = open_predictor(tiny_run)
    with TestClient(create_app(predictor)) as c:
        c.predictor = predictor
        yield c


def test_predict_raw_bytes_and_data_url(client):
    p = client.predictor
    r = client.post("/api/predict?top_k=4", content=seven(), headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    a = r.json()
    assert list(a["probabilities"]) == p.classes and abs(sum(a["probabilities"].values()) - 1) < 1e-5
    assert a["predicted_class"] == p.classes[a["predicted"]] == a["top_k"][0]["class"]
    assert [t["probability"] for t in a["top_k"]] == sorted(a["probabilities"].values(), reverse=True)[:4]
    assert a["model"] == p.model_id and a["model"].startswith("run@")
    # the input image is the 28x28 the model saw, and the probabilities are the model's on it
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(a["input_image"].split(",", 1)[1]))))
    assert seen.shape == (28, 28)
    expected = p.predict_proba(seen[None].astype(np.float32) / 255)[0]
    assert np.allclose(list(a["probabilities"].values()), expected, atol=1e-6)
    url = b"data:image/jpeg;base64," + base64.b64encode(seven("JPEG"))
    for body, ctype in ((url, "text/plain"), (url, None), (seven("WEBP"), "application/octet-stream")):
        r = client.post("/api/predict", content=body, headers={"content-type": ctype} if ctype else {})
        assert r.status_code == 200 and r.json()["top_k"][0]["class"] == r.json()["predicted_class"], r.text


def problem(client, body, status, code, headers=None):
    r = client.post("/api/predict", content=body, headers=headers or {"content-type": "image/png"})
    assert r.status_code == status, r.text
    assert r.json()["error"] == code and r.json()["detail"], r.json()
    return r.json()["detail"]


def test_bad_input_gets_4xx_with_a_reason(client):
    detail = problem(client, b"\x89PNG" + b"\x00" * (1 << 20), 413, "too_large")
    assert detail.startswith("the image is too big (1 MB)") and "up to 1 MB" in detail, detail
    problem(client, b"hello", 415, "unsupported_format")
    problem(client, b"", 415, "unsupported_format")
    problem(client, seven(), 415, "unsupported_format", {"content-type": "image/svg+xml"})
    problem(client, b"data:image/tiff;base64,SUkqAA==", 415, "unsupported_format")
    problem(client, b"data:image/png;base64,*not base64*", 422, "bad_data_url")
    problem(client, b"data:image/png,rawbytes", 422, "bad_data_url")
    problem(client, seven()[:300], 422, "bad_image")
    buf = io.BytesIO()
    Image.new("L", (4097, 8)).save(buf, format="PNG")
    assert "4097x8" in problem(client, buf.getvalue(), 422, "bad_image")
    buf = io.BytesIO()
    Image.new("RGB", (280, 280), "white").save(buf, format="PNG")  # a blank canvas
    assert problem(client, buf.getvalue(), 422, "no_digit").startswith("no digit found")
    r = client.post("/api/predict?top_k=0", content=seven())
    assert r.status_code == 422 and r.json()["error"] == "bad_request" and "top_k" in r.json()["detail"]


def test_content_length_is_checked_before_reading(client):
    """A client announcing a huge body is answered 413 without the body being read."""

    def endless():
        yield b"x" * 1024
        raise AssertionError("the server read past the announced size check")

    r = client.post("/api/predict", content=endless(), headers={"content-length": str(50 << 20)})
    assert r.status_code == 413


@pytest.fixture(scope="module")
def live(tiny_run):
    """The app under uvicorn on a free loopback port, in a thread: for tests that need real sockets."""
    import threading
    import time

    import uvicorn

    from densa.apps.serve_http import HeadGuard  # what densa serve runs: bounded request heads

    app = create_app(open_predictor(tiny_run), body_timeout=1.0)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", http=HeadGuard)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def raw_request(port: int, head: bytes, chunks, pause: float = 0.0) -> bytes:
    """Send a request by hand; stop sending as soon as the server answers. Returns the answer's bytes."""
    import select
    import socket
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        for chunk in chunks:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(pause)
        s.settimeout(10)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                data = s.recv(65536)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass
        return answer


def test_chunked_body_is_cut_at_the_limit(live):
    head = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"10000\r\n" + b"\x00" * 0x10000 + b"\r\n"  # 64 KiB chunks, 64 MiB offered
    answer = raw_request(live, head, (chunk for _ in range(1024)), pause=0.002)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_stalled_body_times_out(live):
    """The 1 s bound is on the whole body: a body trickling in (one byte per 0.1 s, far short of the
    5,000 announced) is answered 408, on any machine; the byte count is only a safety net."""
    head = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    answer = raw_request(live, head, [b"\x00"] * 600, pause=0.1)  # stops as soon as the server answers
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_health_page_and_schema(client):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["classes"] == list("0123456789") and h["preprocess"] == "mnist"
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/app.js", "/app.css"):
        body = client.get(asset).text
        assert client.get(asset).status_code == 200 and "cdn" not in body.lower() and "https://" not in body
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/api/predict"]["post"]
    assert {"image/png", "text/plain"} <= set(post["requestBody"]["content"])
    assert {"200", "413", "415", "422"} <= set(post["responses"])
    assert "/api/health" in schema["paths"] and "/" not in schema["paths"]


# --------------------------------------------------------------------------- fuzz

image_formats = st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "ICO"])


@st.composite
def bodies(draw):
    kind = draw(st.sampled_from(["bytes", "image", "mutated", "data_url"]))
    if kind == "bytes":
        return draw(st.binary(max_size=2048))
    w, h = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "1", "P", "LA"]))
    pixels = draw(st.binary(min_size=w * h, max_size=w * h))
    im = Image.frombytes("L", (w, h), pixels).convert(mode)
    buf = io.BytesIO()
    fmt = draw(image_formats)
    try:
        im.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        im.convert("RGB").save(buf, format="PNG")
    data = buf.getvalue()
    if kind == "mutated" and data:
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "data_url":
        mime = draw(
            st.sampled_from(["image/png", "image/jpeg", "image/gif", "text/html", "", "image/x-icon"])
        )
        data = f"data:{mime};base64,".encode() + base64.b64encode(data)
    return data


content_types = st.sampled_from(
    [
        None,
        "image/png",
        "image/jpeg",
        "application/octet-stream",
        "text/plain",
        "image/tiff",
        "multipart/form-data",
        "x",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=bodies(), ctype=content_types, top_k=st.one_of(st.none(), st.integers(-2, 20), st.text(max_size=4))
)
def test_fuzz_predict_never_5xx(client, body, ctype, top_k):
    params = {} if top_k is None else {"top_k": top_k}
    headers = {} if ctype is None else {"content-type": ctype}
    r = client.post("/api/predict", content=body, headers=headers, params=params)
    assert r.status_code < 500, r.text
    answer = r.json()
    if r.status_code == 200:
        assert abs(sum(answer["probabilities"].values()) - 1) < 1e-4
    else:
        assert r.status_code in (413, 415, 422) and answer["error"] and answer["detail"]
        json.dumps(answer)
