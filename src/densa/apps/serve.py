"""`densa serve`: a page to draw digits on and a JSON API, over any predictor (see densa.predictor).

`create_app(predictor)` builds the FastAPI app: GET / (the page, served from densa/web/ in memory, no
CDN), POST /api/predict (image bytes, a data URL or a multipart/form-data upload -> probabilities and a
decision: the answer, or "not sure" / "not a digit" and why), GET /api/health, /openapi.json.
Every error, 404s and protocol errors included, is JSON {"error", "detail"}; bad input gets a 4xx, never
a 5xx; nothing is written to disk. Inference runs in the threadpool, off the event loop, with one torch
thread per request; the pixels being decoded at once are bounded over all requests (see PixelBudget).
The app refuses to be built for a model that fails one test prediction (see self_check).
"""

import base64
import binascii
import io
import logging
import math
import os
import re
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path

from .._version import __version__
from ..core.errors import DensaError
from ..core.extras import require

MAX_BODY = 1 << 20  # bytes; larger bodies get 413
BODY_TIMEOUT = 10.0  # seconds to receive a whole body before 408
# an image costs up to ~30 bytes a pixel while prepared (RGBA, float copies): 4096x4096 ~ 500 MB
MAX_PIXELS = 4096 * 4096  # per image, read from its header before decoding; larger gets 413
DECODE_BUDGET = 4096 * 4096  # pixels being decoded at once, over all requests; the rest wait their turn
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WEB = Path(__file__).parent / "web"
PAGES = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/app.css": ("app.css", "text/css"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),  # what browsers ask for without a <link rel=icon>
}
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/gif", "image/webp")
DATA_URL = re.compile(rb"^\s*data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*)(;base64)?,", re.I)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class RequestError(Exception):
    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.I)
PART_NAME = re.compile(rb'\bname="([^"]*)"', re.I)
FILE_FIELDS = (b"file", b"image")  # the form field the image is looked for in first (curl -F file=@x.png)


def form_file(body: bytes, content_type: str) -> tuple[bytes, str]:
    """(the bytes, the Content-Type) of the uploaded file in a multipart/form-data body.

    The body is already in memory and at most max_body bytes, so the parts are found by slicing it: no
    temporary files, no copies beyond the file's own bytes. The part named "file" or "image" is taken,
    else the first part that carries a filename; a body that is not well-formed multipart is a 422."""
    m = BOUNDARY.search(content_type)
    if not m:
        raise RequestError(
            422,
            "bad_multipart",
            "multipart/form-data without a boundary: let the client set the Content-Type",
        )
    delimiter = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise RequestError(
            422,
            "bad_multipart",
            "the multipart/form-data body is cut short or malformed (no closing boundary)",
        )
    files = []
    for chunk in chunks[1:-1]:
        head, sep, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep or not data.endswith(b"\r\n"):
            raise RequestError(422, "bad_multipart", "a part of the multipart/form-data body is malformed")
        headers = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
        )
        disposition = headers.get(b"content-disposition", b"")
        name = PART_NAME.search(disposition)
        ctype = headers.get(b"content-type", b"application/octet-stream").decode("latin-1")
        files.append((name.group(1) if name else b"", b"filename=" in disposition.lower(), data[:-2], ctype))
    for name, has_file, data, ctype in sorted(files, key=lambda f: (f[0] not in FILE_FIELDS, not f[1])):
        if name in FILE_FIELDS or has_file:
            return data, ctype
    raise RequestError(
        422, "no_file", "the form has no file: send the image as a field named file (curl -F file=@photo.jpg)"
    )


def image_bytes(body: bytes, content_type: str) -> bytes:
    """The image inside a request body: raw bytes, the payload of a base64 data URL, or the file field of a
    multipart/form-data upload (see form_file)."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        body, content_type = form_file(body, content_type)
        ctype = content_type.split(";")[0].strip().lower()
    m = DATA_URL.match(body[:256])
    if m:
        mime = (m.group(1) or b"").decode().lower()
        if mime and mime not in IMAGE_TYPES:
            raise RequestError(
                415, "unsupported_format", f"data URL of type {mime}: send PNG, JPEG, BMP, GIF or WebP"
            )
        if not m.group(3):
            raise RequestError(422, "bad_data_url", "data URL is not base64-encoded (expected ';base64,')")
        try:
            return base64.b64decode(body[m.end() :].strip(), validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(422, "bad_data_url", "data URL payload is not valid base64") from None
    if ctype and ctype not in IMAGE_TYPES and ctype not in ("application/octet-stream", "text/plain"):
        raise RequestError(
            415,
            "unsupported_format",
            f"Content-Type {ctype} not accepted: send image bytes (PNG, JPEG, BMP, GIF, WebP)",
        )
    return body


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from an image's header, nothing decoded; (0, 0) if unreadable (decoding says why)."""
    from PIL import Image

    from ..inference.images import ALLOWED_FORMATS

    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
            w, h = im.size
    except Exception:  # Pillow raises many types for damaged headers; images.decode words them
        return 0, 0
    return w, h


class PixelBudget:
    """At most `total` pixels being decoded at once, over all requests, so that memory stays bounded
    under any mix of requests. Waiters go first come, first served: a large image is not starved by a
    stream of small ones."""

    def __init__(self, total: int):
        self.total = self.free = total
        self.queue: deque = deque()
        self.changed = None  # an anyio.Condition, made inside the event loop

    @asynccontextmanager
    async def hold(self, pixels: int):
        import anyio

        n = min(max(pixels, 1), self.total)
        if self.changed is None:
            self.changed = anyio.Condition()
        me = object()
        async with self.changed:
            self.queue.append(me)
            try:
                while self.queue[0] is not me or self.free < n:
                    await self.changed.wait()
            finally:
                self.queue.remove(me)
                self.changed.notify_all()
            self.free -= n
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self.changed:
                    self.free += n
                    self.changed.notify_all()


def self_check(predictor) -> None:
    """One prediction through the whole pipeline (PNG bytes -> prepare -> model -> answer) on a synthetic
    digit, so that a model whose metadata does not fit (an unknown preprocessing rule, a class list of
    the wrong length) refuses to start with one line instead of failing every request."""
    import numpy as np

    from ..core.evaluate import scale_images
    from ..inference.images import prepare, to_png
    from ..inference.predictor import result

    where = getattr(predictor, "path", None) or getattr(predictor, "model_id", "the model")
    x = np.zeros((28, 28), np.uint8)
    x[5:23, 12:16] = 255  # a "1"
    try:
        pixels = prepare(to_png(x), predictor.preprocess, "self-check")
        probs, decisions = predictor.assess(scale_images(pixels[None]))
        n = len(predictor.classes)
        if probs.shape != (1, n):
            raise DensaError(f"the model gives {probs.shape[-1]} probabilities for {n} class names")
        if not np.isfinite(probs).all() or not np.isfinite(decisions[0].score):
            raise DensaError("the model's probabilities or its detector's score are not finite numbers")
        result(predictor, probs[0], decision=decisions[0])
    except DensaError as e:
        raise DensaError(f"{where}: cannot serve this model: {e}") from None
    except Exception as e:  # anything else a test prediction hits is as fatal, and gets the same one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise DensaError(
            f"{where}: cannot serve this model: a test prediction failed ({type(e).__name__}: {first})"
        ) from None


def host_name(host: str) -> str:
    """The name in a Host header, without port or brackets, lower-case: '[::1]:8000' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":")[0]
    return host.rstrip(".")


def allowed_hosts(bind: str, extra=()) -> frozenset | None:
    """The Host names a server bound to `bind` answers to; None: any. A loopback bind answers to the
    loopback names; a wildcard bind (0.0.0.0, ::) to any name, unless `extra` names some; '*' means any."""
    extra = [host_name(h) for h in extra]
    if "*" in extra:
        return None
    name = host_name(f"[{bind}]" if ":" in bind else bind)
    if name in ("0.0.0.0", "::", ""):
        return frozenset((*LOOPBACK, *extra)) if extra else None
    loopback = name in LOOPBACK or name.startswith("127.")
    return frozenset((name, *(LOOPBACK if loopback else ()), *extra))


class Guard:
    """ASGI middleware: refuses requests for a Host the server does not answer to (DNS rebinding), logs
    a client that went away mid-body in one line, and turns any unexpected exception into a JSON 500."""

    def __init__(self, app, hosts: frozenset | None = None):
        self.app, self.hosts = app, hosts
        self.log = logging.getLogger("uvicorn.error")

    async def __call__(self, scope, receive, send):
        from starlette.requests import ClientDisconnect
        from starlette.responses import JSONResponse

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        where = f"{scope['method']} {scope['path']}"
        if self.hosts is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(host) not in self.hosts:
                names = ", ".join(sorted(self.hosts))
                detail = (
                    f"Host {host!r} is not a name this server answers to ({names}); "
                    "start it with --allow-host NAME to add one"
                )
                self.log.warning("%s refused: Host %r", where, host)
                response = JSONResponse({"error": "bad_host", "detail": detail}, 400, SECURITY_HEADERS)
                return await response(scope, receive, send)
        started = False

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except ClientDisconnect:
            self.log.warning("%s: the client went away before sending the whole body", where)
        except Exception as e:  # a bug: the client still gets JSON, the log one line (traceback at debug)
            self.log.error("%s failed: %s: %s", where, type(e).__name__, e)
            self.log.debug("%s failed", where, exc_info=True)
            if not started:
                detail = f"unexpected server error ({type(e).__name__}); the server's log says more"
                response = JSONResponse({"error": "internal", "detail": detail}, 500, SECURITY_HEADERS)
                await response(scope, receive, send)


# the OpenAPI description of /api/predict's body: image bytes, or a data URL as text
IMAGE_BODY = {
    "required": True,
    "content": {
        **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "text/plain": {"schema": {"type": "string", "description": "a data URL: data:image/png;base64,..."}},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
        },
    },
}


def create_app(
    predictor,
    *,
    max_body: int = MAX_BODY,
    body_timeout: float = BODY_TIMEOUT,
    top_k: int = 3,
    max_pixels: int = MAX_PIXELS,
    decode_budget: int = DECODE_BUDGET,
    hosts: frozenset | None = None,
):
    """The FastAPI app serving `predictor` (an object with the predictor interface). `hosts`: the Host
    names it answers to (see allowed_hosts; None: any). DensaError if the model fails self_check."""
    require("fastapi", "serve", "densa serve")
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    self_check(predictor)
    Prediction, Problem, Health = api_models()
    handler = PredictRoute(predictor, max_body, body_timeout, max_pixels, PixelBudget(decode_budget))
    app = FastAPI(
        title="densa",
        version=__version__,
        description="Draw or upload a digit; densa prepares it the way the model's dataset was made and "
        "answers with every class's probability.",
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(RequestValidationError, bad_parameters)
    app.add_exception_handler(HTTPException, http_error)

    @app.post(
        "/api/predict",
        response_model=Prediction,
        responses={s: {"model": Problem} for s in (408, 413, 415, 422)},
        openapi_extra={"requestBody": IMAGE_BODY},
        summary="Classify one image (raw bytes or a data URL, at most 1 MiB)",
    )
    async def predict(request: Request, top_k: int = Query(top_k, ge=1, le=1000)):
        return await handler(request, top_k)

    @app.get("/api/health", response_model=Health)
    def health():
        return health_of(predictor)

    for path, (name, media) in PAGES.items():
        app.add_api_route(
            path, page(WEB.joinpath(name).read_bytes(), media), methods=["GET"], include_in_schema=False
        )
    app.add_middleware(Guard, hosts=hosts)
    return app


def api_models():
    """The response schemas of the JSON API (pydantic models, made when an app is: serve is an extra)."""
    from pydantic import BaseModel

    class Decision(BaseModel):  # inference.decision.Decision: answer, or refuse and say why
        status: str  # "answer", "not_sure" (no class is likely enough) or "unknown" (not a digit)
        accepted: bool  # status == "answer"
        answer: str | None  # the class when accepted
        label: str  # what to show: "7", "not sure", "not a digit"
        reason: str  # why, in plain words
        best_guess: str
        probability: float
        score: float  # refused above 1
        detector_score: float | None  # None: the model file has no detector (confidence only)
        method: str  # "detector" or "confidence only"

    class Prediction(BaseModel):
        predicted: int
        predicted_class: str
        probability: float
        top_k: list[dict[str, str | float]]  # [{"class": "7", "probability": 0.99}, ...], best first
        probabilities: dict[str, float]
        decision: Decision
        model: str
        input_image: str  # data:image/png;base64 of the 28x28 the model saw

    class Problem(BaseModel):
        error: str  # too_large unsupported_format bad_image bad_data_url bad_multipart no_file no_digit
        # timeout bad_request
        # and, outside /api/predict: not_found method_not_allowed bad_host head_too_large internal
        detail: str

    class Health(BaseModel):
        status: str
        model: str
        classes: list[str]
        preprocess: str
        densa: str

    return Prediction, Problem, Health


def problem(status: int, code: str, detail: str):
    """Every error's answer: JSON {"error": code, "detail": detail}, with the security headers."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=SECURITY_HEADERS)


async def bad_parameters(request, exc):
    """A query parameter that does not fit (e.g. ?top_k=0): 422 bad_request naming it."""
    where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return problem(422, "bad_request", where)


async def http_error(request, exc):
    """Starlette's own errors (404, 405, ...) as JSON problems that say where to go instead."""
    path = request.url.path
    if exc.status_code == 404:
        detail = f"nothing at {path}: the page is at /, the API at POST /api/predict and GET /api/health"
        code = "not_found"
    elif exc.status_code == 405:
        allow = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow", "")
        code = "method_not_allowed"
        detail = f"{request.method} is not allowed on {path}" + (f"; use {allow}" if allow else "")
    else:
        code, detail = "bad_request", str(exc.detail)
    response = problem(exc.status_code, code, detail)
    response.headers.update(exc.headers or {})
    return response


def health_of(predictor) -> dict:
    return {
        "status": "ok",
        "model": predictor.model_id,
        "classes": list(predictor.classes),
        "preprocess": predictor.preprocess,
        "densa": __version__,
    }


def page(body: bytes, media: str):
    """A GET handler answering with one file of the web page, held in memory."""
    from fastapi.responses import Response

    def handler():
        return Response(body, media_type=media, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    return handler


async def read_body(request, max_body: int, timeout: float) -> bytes:
    """The whole body, refused (413) as soon as it is known to pass `max_body` bytes; TimeoutError if it
    takes over `timeout` seconds to arrive."""
    import anyio

    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_body):
        raise too_large(int(declared) if declared.isdigit() else None, max_body)
    chunks, size = [], 0
    with anyio.fail_after(timeout):
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise too_large(None, max_body)
            chunks.append(chunk)
    return b"".join(chunks)


def megabytes(n: int) -> str:
    """A byte count as people say it: '5.2 MB', '1 MB', '300 KB' (powers of 1024, as file browsers do)."""
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f}".removesuffix(".0") + " MB"
    return f"{max(1, round(n / 1024))} KB"


def too_large(size: int | None, max_body: int) -> RequestError:
    """413 in plain words: how big the image is (when the client said) and what this server takes."""
    what = (
        f"the image is too big ({megabytes(size)})"
        if size
        else f"the image is too big (over {megabytes(max_body)})"
    )
    return RequestError(
        413,
        "too_large",
        f"{what}; this server takes images of up to {megabytes(max_body)}: scale it down or save it as "
        "JPEG (the drawing page does this itself)",
    )


def pixels_of(data: bytes, max_pixels: int) -> int:
    """The image's pixel count from its header; 413 if over `max_pixels`, before anything is decoded."""
    w, h = image_size(data)
    if w * h > max_pixels:
        side = math.isqrt(max_pixels)
        raise RequestError(
            413,
            "too_large",
            f"the image is {w}x{h} = {w * h:,} pixels; this server reads images of up to "
            f"{max_pixels:,} pixels (e.g. {side}x{side}): scale it down",
        )
    return w * h


def image_problem(e: Exception):
    """The answer to an image the preparation refused: 422 no_digit / bad_image, 415 unsupported_format."""
    from ..inference.images import NoInk, UnsupportedImage

    code, status = ("no_digit", 422) if isinstance(e, NoInk) else ("bad_image", 422)
    if isinstance(e, UnsupportedImage):
        code, status = "unsupported_format", 415
    return problem(status, code, str(e).replace("image: ", "", 1))


class PredictRoute:
    """POST /api/predict: read the body, find the image in it, decode it within the pixel budget, classify
    it in the threadpool (a few inference threads; more only fight over the GIL), answer JSON."""

    def __init__(self, predictor, max_body: int, body_timeout: float, max_pixels: int, budget: PixelBudget):
        import anyio

        self.predictor, self.max_body, self.body_timeout = predictor, max_body, body_timeout
        self.max_pixels, self.budget = max_pixels, budget
        self.workers = anyio.CapacityLimiter(max(1, min(4, os.cpu_count() or 1)))

    async def __call__(self, request, top_k: int):
        import anyio
        from fastapi.responses import JSONResponse

        from ..inference.images import ImageError

        try:
            body = await read_body(request, self.max_body, self.body_timeout)
            data = image_bytes(body, request.headers.get("content-type", ""))
            async with self.budget.hold(pixels_of(data, self.max_pixels)):
                answer = await anyio.to_thread.run_sync(self.infer, data, top_k, limiter=self.workers)
        except RequestError as e:
            return problem(e.status, e.code, e.detail)
        except TimeoutError:
            return problem(408, "timeout", f"the body did not arrive within {self.body_timeout:g} s")
        except ImageError as e:
            return image_problem(e)
        return JSONResponse(answer, headers=SECURITY_HEADERS)

    def infer(self, data: bytes, k: int) -> dict:
        from ..inference.images import to_png
        from ..inference.predictor import classify

        answer, pixels = classify(self.predictor, data, "image", k)
        answer["input_image"] = "data:image/png;base64," + base64.b64encode(to_png(pixels)).decode()
        return answer


def app_from_env():
    """The app for uvicorn's worker processes (`densa serve --workers N`): the run comes from the env."""
    from ..inference.predictor import open_predictor

    threads = int(os.environ.get("DENSA_SERVE_THREADS", "1"))
    hosts = os.environ.get("DENSA_SERVE_HOSTS", "*")
    return create_app(
        open_predictor(os.environ["DENSA_SERVE_RUN"], threads=threads),
        hosts=None if hosts == "*" else frozenset(hosts.split(",")),
    )


def serve(
    path, host: str = "127.0.0.1", port: int = 8000, threads: int = 1, workers: int = 1, allow_hosts=()
) -> None:
    """Load the model at `path` and serve it until interrupted (in `workers` processes if > 1).

    `allow_hosts`: Host names to answer to besides those of `host` (see allowed_hosts)."""
    for module in ("fastapi", "uvicorn", "httptools", "PIL"):  # before the model is loaded
        require(module, "serve", "densa serve")
    import uvicorn

    from ..inference.predictor import open_predictor

    # fails here, with one line, on a bad RUN; an .onnx file is served without importing torch
    predictor = open_predictor(path, threads=threads)
    hosts = allowed_hosts(host, allow_hosts)
    app = create_app(predictor, hosts=hosts)  # fails with one line if a test prediction fails
    print(
        f"densa serve: {predictor.model_id} ({predictor.preprocess}) on http://{host}:{port}/"
        + (f" ({workers} worker processes)" if workers > 1 else ""),
        flush=True,
    )
    # the protocol by name, so that worker processes can import it: it bounds each request's head
    options = dict(
        host=host, port=port, log_level="warning", server_header=False, http="densa.apps.serve_http:HeadGuard"
    )
    if workers > 1:
        os.environ["DENSA_SERVE_RUN"] = str(Path(path).resolve())
        os.environ["DENSA_SERVE_THREADS"] = str(threads)
        os.environ["DENSA_SERVE_HOSTS"] = "*" if hosts is None else ",".join(sorted(hosts))
        uvicorn.run("densa.apps.serve:app_from_env", factory=True, workers=workers, **options)
    else:
        uvicorn.run(app, **options)
