"""`densa serve`: a page to draw digits on and a JSON API, over any predictor (see densa.predictor).

`create_app(predictor)` builds the FastAPI app: GET / (the page, served from densa/web/ in memory, no
CDN), POST /api/predict (image bytes or a data URL -> probabilities), GET /api/health, /openapi.json.
Bad input gets a 4xx with {"error", "detail"}, never a 5xx; nothing is written to disk. Inference runs
in the threadpool, off the event loop, with one torch thread per request.
"""

import base64
import binascii
import os
import re
from pathlib import Path

from . import __version__
from .extras import require

MAX_BODY = 1 << 20  # bytes; larger bodies get 413
BODY_TIMEOUT = 10.0  # seconds to receive a whole body before 408
WEB = Path(__file__).parent / "web"
PAGES = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/app.css": ("app.css", "text/css"),
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


def image_bytes(body: bytes, content_type: str) -> bytes:
    """The image inside a request body: raw bytes, or the payload of a base64 data URL."""
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


def create_app(predictor, *, max_body: int = MAX_BODY, body_timeout: float = BODY_TIMEOUT, top_k: int = 3):
    """The FastAPI app serving `predictor` (an object with the predictor interface)."""
    require("fastapi", "serve", "densa serve")
    import anyio
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel

    from .images import ImageError, NoInk, UnsupportedImage, to_png
    from .predictor import classify

    pages = {path: (WEB.joinpath(name).read_bytes(), media) for path, (name, media) in PAGES.items()}
    # inference threads: more than the cores only fight over the GIL; requests beyond wait their turn
    workers = anyio.CapacityLimiter(max(1, min(4, os.cpu_count() or 1)))

    class Prediction(BaseModel):
        predicted: int
        predicted_class: str
        probability: float
        top_k: list[dict[str, str | float]]  # [{"class": "7", "probability": 0.99}, ...], best first
        probabilities: dict[str, float]
        model: str
        input_image: str  # data:image/png;base64 of the 28x28 the model saw

    class Problem(BaseModel):
        error: str  # too_large unsupported_format bad_image bad_data_url no_digit timeout bad_request
        detail: str

    class Health(BaseModel):
        status: str
        model: str
        classes: list[str]
        preprocess: str
        densa: str

    app = FastAPI(
        title="densa",
        version=__version__,
        description="Draw or upload a digit; densa prepares it the way the model's dataset was made and "
        "answers with every class's probability.",
        docs_url=None,
        redoc_url=None,
    )

    def problem(status: int, code: str, detail: str):
        return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=SECURITY_HEADERS)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request, exc):
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return problem(422, "bad_request", where)

    def infer(data: bytes, k: int) -> dict:
        answer, pixels = classify(predictor, data, "image", k)
        answer["input_image"] = "data:image/png;base64," + base64.b64encode(to_png(pixels)).decode()
        return answer

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body):
            raise RequestError(413, "too_large", f"body over {max_body:,} bytes; send a smaller image")
        chunks, size = [], 0
        with anyio.fail_after(body_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_body:
                    raise RequestError(
                        413, "too_large", f"body over {max_body:,} bytes; send a smaller image"
                    )
                chunks.append(chunk)
        return b"".join(chunks)

    image_body = {
        "required": True,
        "content": {
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "text/plain": {
                "schema": {"type": "string", "description": "a data URL: data:image/png;base64,..."}
            },
        },
    }
    errors = {s: {"model": Problem} for s in (408, 413, 415, 422)}

    @app.post(
        "/api/predict",
        response_model=Prediction,
        responses=errors,
        openapi_extra={"requestBody": image_body},
        summary="Classify one image (raw bytes or a data URL, at most 1 MiB)",
    )
    async def predict(request: Request, top_k: int = Query(top_k, ge=1, le=1000)):
        try:
            body = await read_body(request)
            data = image_bytes(body, request.headers.get("content-type", ""))
            answer = await anyio.to_thread.run_sync(infer, data, top_k, limiter=workers)
        except RequestError as e:
            return problem(e.status, e.code, e.detail)
        except TimeoutError:
            return problem(408, "timeout", f"the body did not arrive within {body_timeout:g} s")
        except NoInk as e:
            return problem(422, "no_digit", str(e).replace("image: ", "", 1))
        except UnsupportedImage as e:
            return problem(415, "unsupported_format", str(e).replace("image: ", "", 1))
        except ImageError as e:
            return problem(422, "bad_image", str(e).replace("image: ", "", 1))
        return JSONResponse(answer, headers=SECURITY_HEADERS)

    @app.get("/api/health", response_model=Health)
    def health():
        return {
            "status": "ok",
            "model": predictor.model_id,
            "classes": list(predictor.classes),
            "preprocess": predictor.preprocess,
            "densa": __version__,
        }

    def page(path: str):
        body, media = pages[path]

        def handler():
            return Response(body, media_type=media, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

        return handler

    for path in pages:
        app.add_api_route(path, page(path), methods=["GET"], include_in_schema=False)
    return app


def app_from_env():
    """The app for uvicorn's worker processes (`densa serve --workers N`): the run comes from the env."""
    from .predictor import open_predictor

    threads = int(os.environ.get("DENSA_SERVE_THREADS", "1"))
    return create_app(open_predictor(os.environ["DENSA_SERVE_RUN"], threads=threads))


def serve(path, host: str = "127.0.0.1", port: int = 8000, threads: int = 1, workers: int = 1) -> None:
    """Load the model at `path` and serve it until interrupted (in `workers` processes if > 1)."""
    for module in ("fastapi", "uvicorn", "PIL"):  # before the model is loaded
        require(module, "serve", "densa serve")
    import uvicorn

    from .predictor import open_predictor

    # fails here, with one line, on a bad RUN; an .onnx file is served without importing torch
    predictor = open_predictor(path, threads=threads)
    print(
        f"densa serve: {predictor.model_id} ({predictor.preprocess}) on http://{host}:{port}/"
        + (f" ({workers} worker processes)" if workers > 1 else ""),
        flush=True,
    )
    options = dict(host=host, port=port, log_level="warning", server_header=False)
    if workers > 1:
        os.environ["DENSA_SERVE_RUN"] = str(Path(path).resolve())
        os.environ["DENSA_SERVE_THREADS"] = str(threads)
        uvicorn.run("densa.serve:app_from_env", factory=True, workers=workers, **options)
    else:
        uvicorn.run(create_app(predictor), **options)
