"""Prediction latency in-process and the HTTP API under load; ratios against baselines from this run.

    python benchmarks/bench_serve.py [RUN] [--clients 32] [--seconds 10] [--think-ms 0]

(a) in-process, one image, torch at 1 thread: the predictor on a 28x28 input (baseline: the bare
    nn.Module forward + softmax), and the whole path from the page's 140x140 PNG (decode, prepare, predict);
(b) `densa serve RUN` in a subprocess on a free loopback port; N clients (asyncio, one keep-alive
    HTTP/1.1 connection each, closed loop: the next request as soon as the answer arrives, plus
    --think-ms) POST that canvas to /api/predict for a bounded time. Baseline: the same clients on
    GET /api/health (the web stack alone). The load generator shares the machine's cores with the server.
Without RUN, trains the default recipe first (needs the MNIST files: DENSA_DATA_DIR or the cache).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def canvas_png() -> bytes:
    """What the page sends: its 280x280 drawing pad scaled to 140x140 RGBA, here a 7 in black on white."""
    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (280, 280), "white")
    ImageDraw.Draw(im).line([(75, 60), (205, 60), (130, 235)], fill="black", width=19, joint="curve")
    im = im.resize((140, 140), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def timed(fn, n: int) -> list[float]:
    for _ in range(min(50, n)):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


def in_process(run: Path, png: bytes) -> None:
    import numpy as np
    import torch

    from densa.inference.predictor import classify, open_predictor

    torch.set_num_threads(1)
    p = open_predictor(run)
    x = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
    xt = torch.from_numpy(x)

    def bare():
        with torch.inference_mode():
            torch.softmax(p.model(xt), dim=1).numpy()

    base = timed(bare, 2000)
    model = timed(lambda: p.predict_proba(x), 2000)
    whole = timed(lambda: classify(p, png), 500)
    b, m, w = (statistics.median(v) * 1e3 for v in (base, model, whole))
    print(f"(a) in-process, 1 image, 1 torch thread, {p.model_id}:")
    print(f"    bare module forward+softmax: median {b:.3f} ms")
    print(
        f"    predictor.predict_proba    : median {m:.3f} ms, "
        f"p99 {pct(model, 99) * 1e3:.3f} ms ({m / b:.2f}x bare)"
    )
    print(
        f"    PNG canvas -> answer       : median {w:.3f} ms, p99 {pct(whole, 99) * 1e3:.3f} ms "
        f"({w / b:.1f}x bare) — target <= 2 ms"
    )


async def client(port: int, request: bytes, until: float, think: float, lat: list, errors: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            t = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head.split(b"\r\n")[0])
            if think:
                await asyncio.sleep(think)
    except (OSError, asyncio.IncompleteReadError) as e:
        errors.append(repr(e))
    finally:
        writer.close()


def load(port: int, request: bytes, clients: int, seconds: float, think: float) -> tuple[list, list, float]:
    lat: list[float] = []
    errors: list = []

    async def go():
        until = time.perf_counter() + seconds
        await asyncio.gather(*(client(port, request, until, think, lat, errors) for _ in range(clients)))

    t = time.perf_counter()
    asyncio.run(go())
    return lat, errors, time.perf_counter() - t


def report(name: str, lat: list, errors: list, wall: float) -> float:
    rate = len(lat) / wall
    print(
        f"    {name}: {len(lat):,} requests in {wall:.1f}s = {rate:,.0f}/s; latency p50 "
        f"{pct(lat, 50) * 1e3:.1f} ms, p99 {pct(lat, 99) * 1e3:.1f} ms, max {max(lat) * 1e3:.1f} ms; "
        f"errors {len(errors)}" + (f" (first: {errors[0]})" if errors else "")
    )
    return rate


@contextmanager
def serving(run: Path, workers: int = 1):
    """`densa serve RUN` on a free loopback port, up and answering /api/health; yields the port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "densa",
        "serve",
        str(run),
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit("densa serve did not start")
                time.sleep(0.2)
        yield proc, port
    finally:
        proc.terminate()
        proc.wait()


def serve_and_load(
    run: Path, png: bytes, clients: int, seconds: float, think_ms: float, workers: int
) -> None:
    with serving(run, workers) as (_, port):
        health = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        predict = (
            b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {len(png)}\r\n\r\n".encode()
            + png
        )
        think = think_ms / 1000
        print(
            f"(b) densa serve --workers {workers} on loopback, {clients} clients, {seconds:.0f}s each, "
            f"think {think_ms:.0f} ms:"
        )
        load(port, predict, clients, 1.0, think)  # warm up
        base = report("GET /api/health (baseline)", *load(port, health, clients, seconds, think))
        rate = report("POST /api/predict (canvas)", *load(port, predict, clients, seconds, think))
        print(f"    predict throughput = {rate / base:.2f}x health's; target p99 <= 50 ms with 0 errors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", help="run folder (default: train the default recipe now)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each load phase")
    ap.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="pause after each answer, per client",
    )
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="server processes; one phase each",
    )
    ap.add_argument("--skip-in-process", action="store_true")
    args = ap.parse_args()
    print(f"densa serve benchmarks · {os.cpu_count()} CPUs (shared with the load generator)")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else Path(tmp) / "run"
        if not args.run:
            subprocess.run(
                [sys.executable, "-m", "densa", "train", "--out", str(run)],
                check=True,
                capture_output=True,
            )
        png = canvas_png()
        if not args.skip_in_process:
            in_process(run, png)
        for workers in args.workers:
            serve_and_load(run, png, args.clients, args.seconds, args.think_ms, workers)


if __name__ == "__main__":
    main()
