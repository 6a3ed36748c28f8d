"""POST /api/predict as a form upload (curl -F file=@photo.jpg), errors in plain words, the favicon."""

import pytest
from synthetic import seven_png as seven

from densa.apps.serve import create_app, form_file, megabytes
from densa.inference.predictor import open_predictor


@pytest.fixture(scope="module")
def client(tiny_run):
    from starlette.testclient import TestClient

    with TestClient(create_app(open_predictor(tiny_run))) as c:
        yield c


def test_multipart_upload_is_answered_like_raw_bytes(client):
    raw = client.post("/api/predict", content=seven(), headers={"content-type": "image/png"}).json()
    # what `curl -F file=@seven.jpg` sends: a form with the file and, here, another field before it
    r = client.post("/api/predict", files={"file": ("seven.png", seven(), "image/png")}, data={"note": "hi"})
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["probabilities"] == raw["probabilities"] and a["decision"] == raw["decision"]
    assert {"status", "accepted", "label", "reason", "score"} <= set(a["decision"])
    for name in ("image", "upload"):  # the usual field names, or any field with a filename
        r = client.post("/api/predict", files={name: ("x.jpg", seven("JPEG"), "image/jpeg")})
        assert r.status_code == 200 and r.json()["decision"]["best_guess"], r.text


def problem(r, status, code):
    assert r.status_code == status, r.text
    assert r.json()["error"] == code and r.json()["detail"], r.json()
    return r.json()["detail"]


def test_bad_multipart_gets_a_clear_4xx(client):
    form = "multipart/form-data; boundary=xyz"
    body = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + seven()
    post = client.post
    detail = problem(post("/api/predict", content=body, headers={"content-type": form}), 422, "bad_multipart")
    assert "cut short" in detail
    detail = problem(
        post("/api/predict", content=body, headers={"content-type": "multipart/form-data"}),
        422,
        "bad_multipart",
    )
    assert "boundary" in detail
    r = post("/api/predict", files={"file": ("notes.txt", b"hello", "text/plain")})
    problem(r, 415, "unsupported_format")
    r = post("/api/predict", data={"comment": "no file here"}, files={"other": ("", b"", "text/plain")})
    assert r.status_code in (415, 422), r.text
    only_text = b'--xyz\r\nContent-Disposition: form-data; name="comment"\r\n\r\nhello\r\n--xyz--\r\n'
    detail = problem(post("/api/predict", content=only_text, headers={"content-type": form}), 422, "no_file")
    assert "curl -F file=@" in detail
    big = b"\x00" * (5 << 20)
    r = post("/api/predict", files={"file": ("photo.jpg", big, "image/jpeg")})
    detail = problem(r, 413, "too_large")
    assert detail.startswith("the image is too big (5 MB); this server takes images of up to 1 MB"), detail


def test_form_file_slices_the_parts():
    body = (
        b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n'
        b'--b\r\nContent-Disposition: form-data; name="pic"; filename="p.png"\r\nContent-Type: image/png'
        b"\r\n\r\n\x89PNG\r\n\x00\r\n--b--\r\n"
    )
    assert form_file(body, "multipart/form-data; boundary=b") == (b"\x89PNG\r\n\x00", "image/png")
    assert form_file(body, 'multipart/form-data; boundary="b"')[0] == b"\x89PNG\r\n\x00"
    assert [megabytes(n) for n in (300_000, 1 << 20, 5_452_595)] == ["293 KB", "1 MB", "5.2 MB"]


def test_favicon_and_page(client):
    for path in ("/favicon.svg", "/favicon.ico"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
        assert r.content.startswith(b"<svg")
    page = client.get("/").text
    assert 'rel="icon" href="/favicon.svg"' in page and 'class="seen-box"' in page
