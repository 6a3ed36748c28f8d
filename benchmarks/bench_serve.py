"""Prediction latency in-process, and the HTTP API under an open-loop load (fixed arrival rates).

    python benchmarks/bench_serve.py [RUN] [--rates 100 200 400] [--seconds 3] [--workers 1 2]

(a) in-process, one image, torch at 1 thread: the predictor on a 28x28 input (baseline: the bare
    nn.Module forward + softmax), and the whole path from the page's 140x140 PNG (decode, prepare, predict);
(b) `densa serve RUN --workers N` in a subprocess on a free loopback port, driven open-loop: request i is
    sent at t0 + i/rate whether or not earlier ones were answered, and its latency is counted from that
    scheduled time (so a stalled server cannot hide its queue by slowing the sender: no coordinated
    omission). POST /api/predict with the page's canvas at each of --rates, then a bounded search for the
    highest rate whose p99 stays <= --p99-ms; beside it the same on GET /api/health, the web stack's own
    ceiling. The load generator is one asyncio process (uvloop when installed) writing HTTP/1.1 by hand
    over a bounded pool of keep-alive connections; it shares the machine's cores with the server.
Without RUN, trains the default recipe first (needs the MNIST files: DENSA_DATA_DIR or the cache).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def canvas_png() -> bytes:
    """What the page sends: its 280x280 drawing pad scaled to 140x140 RGBA, here a 7 in black on white."""
    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (280, 280), "white")
    ImageDraw.Draw(im).line([(75, 60), (205, 60), (130, 235)], fill="black", width=19, joint="curve")
    im = im.resize((140, 140), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def machine() -> str:
    """One line: CPU model, cores, the SIMD features that matter to torch, OS, Python, load average."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    found = [f for f in FEATURES if f in flags] or ["none of " + ", ".join(FEATURES)]
    load = " · load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return (
        f"{model} · {os.cpu_count()} CPUs · features: {' '.join(found)} · {platform.system()} "
        f"{platform.release()} · Python {platform.python_version()}{load}"
    )


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
    print(f"(a) in-process, 1 image, 1 torch thread, torch {torch.__version__}, {p.model_id}:")
    print(f"    bare module forward+softmax: median {b:.3f} ms")
    print(
        f"    predictor.predict_proba    : median {m:.3f} ms, "
        f"p99 {pct(model, 99) * 1e3:.3f} ms ({m / b:.2f}x bare)"
    )
    print(
        f"    PNG canvas -> answer       : median {w:.3f} ms, p99 {pct(whole, 99) * 1e3:.3f} ms "
        f"({w / b:.1f}x bare) — target <= 2 ms"
    )


# --------------------------------------------------------------------------- open-loop load


@dataclass
class Phase:
    """One rate held for a while: each request's latency from its scheduled send time."""

    rate: float
    lat: list[float] = field(default_factory=list)  # seconds; inf for a request never answered
    errors: list[str] = field(default_factory=list)
    send_lag: list[float] = field(default_factory=list)  # how late the generator itself wrote each one
    connections: int = 0

    def p(self, q: float) -> float:
        return pct(self.lat, q) if self.lat else math.inf

    def ok(self, p99_ms: float) -> bool:
        return not self.errors and self.p(99) * 1e3 <= p99_ms

    def line(self) -> str:
        answered = sum(math.isfinite(x) for x in self.lat)
        lag = pct(self.send_lag, 99) * 1e3 if self.send_lag else 0.0
        return (
            f"{self.rate:7.0f}/s: p50 {ms(self.p(50))}, p99 {ms(self.p(99))}, max {ms(max(self.lat))}; "
            f"{answered}/{len(self.lat)} answered, errors {len(self.errors)}"
            + (f" (first: {self.errors[0]})" if self.errors else "")
            + f"; {self.connections} connections; sender p99 lag {lag:.1f} ms"
        )


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:6.1f} ms" if math.isfinite(seconds) else "     n/a"


async def exchange(reader, writer, request: bytes) -> bytes:
    """One request on a keep-alive connection; returns the status line."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return head.split(b"\r\n", 1)[0]


async def open_loop(port: int, request: bytes, rate: float, seconds: float, pool: int, drain: float) -> Phase:
    """`rate` requests a second for `seconds`, each sent at its scheduled time, over <= `pool` connections.

    A request that finds every connection busy opens another (up to `pool`), else waits for one; that
    wait counts in its latency. Requests not answered `drain` seconds after the last send count as inf.
    """
    phase = Phase(rate)
    idle: asyncio.Queue = asyncio.Queue()
    writers = []  # every connection opened, closed at the end whatever became of it
    live = 0

    async def connect():
        nonlocal live
        live += 1
        phase.connections += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        return reader, writer

    for _ in range(min(pool, max(4, int(rate * 0.01)))):  # a few ready before the clock starts
        idle.put_nowait(await connect())

    async def one(i: int, due: float) -> None:
        nonlocal live
        phase.send_lag.append(time.perf_counter() - due)
        try:
            conn = await connect() if idle.empty() and live < pool else await idle.get()
            status = await exchange(*conn, request)
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            phase.errors.append(repr(e))  # its latency stays inf; the connection is dropped
            live -= 1
            return
        phase.lat[i] = time.perf_counter() - due
        if not status.startswith(b"HTTP/1.1 200"):
            phase.errors.append(status.decode(errors="replace"))
        idle.put_nowait(conn)

    n = max(1, round(rate * seconds))
    phase.lat = [math.inf] * n
    tasks = []
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        await asyncio.sleep(max(0.0, delay))  # behind schedule: still let the answers in between sends
        tasks.append(asyncio.ensure_future(one(i, due)))
    _, late = await asyncio.wait(tasks, timeout=drain)
    for t in late:
        t.cancel()
    if late:
        phase.errors.append(f"{len(late)} not answered {drain:.0f} s after the last send")
    for writer in writers:
        writer.close()
    return phase


def new_loop():
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def measure(port: int, request: bytes, rate: float, args) -> Phase:
    loop = new_loop()
    try:
        return loop.run_until_complete(open_loop(port, request, rate, args.seconds, args.pool, args.drain))
    finally:
        loop.close()


def ceiling(port: int, request: bytes, known: dict[float, Phase], args, log) -> tuple[float, float]:
    """(highest rate seen to keep p99 <= --p99-ms, lowest seen to break it): doubling, then bisection.

    Starts from the rates already measured; at most --search-steps more phases (geometric midpoints).
    """
    good = [r for r, ph in known.items() if ph.ok(args.p99_ms)]
    bad = [r for r, ph in known.items() if not ph.ok(args.p99_ms)]
    lo, hi = max(good, default=0.0), min(bad, default=math.inf)
    for _ in range(args.search_steps):
        if hi <= lo * 1.1 or lo >= args.max_rate:
            break
        rate = lo * 2 if math.isinf(hi) else (math.sqrt(lo * hi) if lo else hi / 2)
        rate = float(min(round(rate), args.max_rate))
        phase = measure(port, request, rate, args)
        log("      search " + phase.line())
        if phase.ok(args.p99_ms):
            lo = rate
        else:
            hi = rate
    return lo, hi


@contextmanager
def serving(run: Path, workers: int = 1):
    """`densa serve RUN` on a free loopback port, up and answering /api/health; yields the port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "densa", "serve", str(run), "--port", str(port), "--workers", str(workers)]
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


def requests_for(png: bytes) -> dict[str, bytes]:
    host = b"Host: 127.0.0.1\r\n"
    return {
        "POST /api/predict": b"POST /api/predict HTTP/1.1\r\n"
        + host
        + b"Content-Type: image/png\r\n"
        + f"Content-Length: {len(png)}\r\n\r\n".encode()
        + png,
        "GET /api/health": b"GET /api/health HTTP/1.1\r\n" + host + b"\r\n",
    }


def serve_open_loop(run: Path, png: bytes, workers: int, args) -> dict[str, tuple[float, float]]:
    """Fixed rates, then the search, for predict and health against one `densa serve --workers N`."""
    found = {}
    with serving(run, workers) as (_, port):
        print(
            f"(b) densa serve --workers {workers}, open loop, {args.seconds:g} s per rate, "
            f"<= {args.pool} connections, target p99 <= {args.p99_ms:g} ms:"
        )
        requests = requests_for(png)
        measure(port, requests["POST /api/predict"], 100, argparse.Namespace(**{**vars(args), "seconds": 1}))
        for name, request in requests.items():
            print(f"    {name}")
            known = {}
            for rate in args.rates:
                known[rate] = measure(port, request, rate, args)
                print("      " + known[rate].line())
            lo, hi = ceiling(port, request, known, args, print)
            above = "" if math.isinf(hi) else f" (p99 over {args.p99_ms:g} ms at {hi:.0f}/s)"
            print(f"      highest rate with p99 <= {args.p99_ms:g} ms: {lo:.0f}/s{above}")
            found[name] = (lo, hi)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", help="run folder (default: train the default recipe now)")
    ap.add_argument("--rates", type=float, nargs="+", default=[100, 200, 400], help="requests/s, fixed")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each rate's phase")
    ap.add_argument("--p99-ms", type=float, default=50.0, help="the latency goal of the search")
    ap.add_argument("--search-steps", type=int, default=5, help="extra phases for the ceiling search")
    ap.add_argument("--max-rate", type=float, default=6400, help="the search goes no higher")
    ap.add_argument("--pool", type=int, default=64, help="most keep-alive connections the client opens")
    ap.add_argument(
        "--drain", type=float, default=5.0, help="seconds to wait for answers after the last send"
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="server processes; one run each")
    ap.add_argument("--skip-in-process", action="store_true")
    args = ap.parse_args()
    print(f"densa serve benchmarks · {time.strftime('%Y-%m-%d %H:%M %Z')} · loopback only")
    print(f"machine: {machine()} (the load generator shares these cores with the server)")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else Path(tmp) / "run"
        if not args.run:
            subprocess.run(
                [sys.executable, "-m", "densa", "train", "--out", str(run)], check=True, capture_output=True
            )
        png = canvas_png()
        if not args.skip_in_process:
            in_process(run, png)
        results = {w: serve_open_loop(run, png, w, args) for w in args.workers}
    print(f"summary: highest rate with p99 <= {args.p99_ms:g} ms")
    for w, found in results.items():
        (p, _), (h, _) = found["POST /api/predict"], found["GET /api/health"]
        print(f"    --workers {w}: predict {p:.0f}/s, health (web stack alone) {h:.0f}/s")


if __name__ == "__main__":
    main()
