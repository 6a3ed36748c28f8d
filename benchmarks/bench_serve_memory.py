"""Peak memory of `densa serve` while clients send small PNGs that decode to huge images.

    python benchmarks/bench_serve_memory.py [RUN] [--clients 4] [--requests 3] [--side 4096]

Starts `densa serve RUN` in a subprocess on a free loopback port (without RUN: an untrained 784-128-10
MLP saved to a temp folder; the model does not matter here, the image decoding does), reads its RSS
once it answers, then lets N clients (threads, one connection each) POST a `side` x `side` RGBA PNG
(a transparent page with one stroke: tens of KB on the wire, the most costly kind to prepare) R times
each, all at once. Prints the server's RSS before the load and its peak (the kernel's VmHWM, so no
sample is missed), and how the answers were spread over status codes. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import http.client
import io
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench_serve import serving


def big_png(side: int) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    ImageDraw.Draw(im).line(
        [
            (side // 4, side // 5),
            (side * 3 // 4, side // 5),
            (side // 2, side * 4 // 5),
        ],
        fill="black",
        width=max(1, side // 14),
    )
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def tiny_model(folder: Path) -> Path:
    import torch

    from densa.core import data
    from densa.core.checkpoint import build_meta, dataset_meta, save
    from densa.core.config import ModelConfig
    from densa.core.models import build_model

    torch.manual_seed(0)
    config = ModelConfig(hidden=(128,))
    save(
        build_model(config),
        folder / "model.safetensors",
        build_meta(config, dataset_meta(data.DATASETS["mnist"])),
    )
    return folder


def mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def post(port: int, png: bytes, n: int, codes: Counter, lock: threading.Lock) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    for _ in range(n):
        conn.request("POST", "/api/predict", body=png, headers={"Content-Type": "image/png"})
        r = conn.getresponse()
        r.read()
        with lock:
            codes[r.status] += 1
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", help="run folder (default: an untrained MLP)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=3, help="requests per client")
    ap.add_argument("--side", type=int, default=4096, help="the PNG's width and height in pixels")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else tiny_model(Path(tmp) / "run")
        png = big_png(args.side)
        with serving(run) as (proc, port):
            before = mib(proc.pid, "VmRSS")
            codes: Counter = Counter()
            lock = threading.Lock()
            threads = [
                threading.Thread(target=post, args=(port, png, args.requests, codes, lock))
                for _ in range(args.clients)
            ]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t
            peak = mib(proc.pid, "VmHWM")
            after = mib(proc.pid, "VmRSS")
    print(
        f"densa serve, {args.clients} clients x {args.requests} POSTs of a {args.side}x{args.side} RGBA PNG "
        f"({len(png) / 1024:.0f} KiB) in {wall:.1f} s; answers {dict(sorted(codes.items()))}"
    )
    print(f"server RSS: {before:.0f} MiB before, peak {peak:.0f} MiB, {after:.0f} MiB after")


if __name__ == "__main__":
    main()
