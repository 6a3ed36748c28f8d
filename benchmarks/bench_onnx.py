"""ONNX benchmarks: export time, file size, and onnxruntime vs torch measured side by side in this run.

    python benchmarks/bench_onnx.py [--run RUN] [--rounds 10] [--calls 200]

(a) export: `export_onnx` of the model, first in this process (cold: loads the exporter) and again
    (warm); file size against the weights' size;
(b) single-image latency, warm, median of rounds x calls: onnxruntime's session.run vs torch's
    softmax(model(x)) under inference_mode, and densa's APIs (OnnxPredictor.predict_proba vs
    densa.predict_proba), calls interleaved round by round; at 1 thread (ORT intra_op_num_threads=1,
    torch.set_num_threads(1)) and at each library's default thread count;
(c) one batch of 10,000 images, same settings (median of 5 per round);
(d) a fresh process that loads the model and predicts one image: OnnxPredictor (no torch) vs
    densa.load + densa.predict_proba; wall time and the child's own peak RSS (VmHWM).
The model is RUN's, else the default 784-512-10 MLP with seeded untrained weights (timing does not
depend on weight values). Needs no dataset.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = {
    "onnxruntime": (
        "import numpy as np; from densa.inference.onnx_file import OnnxPredictor; "
        "p = OnnxPredictor({onnx!r}); p.predict_proba(np.zeros((1, 28, 28), np.float32))"
    ),
    "torch": (
        "import numpy as np, densa, torch; c = densa.load({run!r}); "
        "densa.predict_proba(c.model, torch.zeros(1, 28, 28))"
    ),
}
REPORT = (
    "; import sys; hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
    "print(int(hwm) / 1024, 'torch' in sys.modules)"
)


def per_call(fn, x, calls: int) -> list[int]:
    out = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        fn(x)
        out.append(time.perf_counter_ns() - t)
    return out


def interleaved(fns: dict, inputs: dict, rounds: int, calls: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each function, measured in alternating rounds after a warm-up."""
    for k, f in fns.items():
        per_call(f, inputs[k], warmup)
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            samples[k] += per_call(f, inputs[k], calls)
    return {k: statistics.median(v) / 1e9 for k, v in samples.items()}


def child(kind: str, **paths) -> tuple[float, float, bool]:
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", CHILD[kind].format(**paths) + REPORT], capture_output=True, text=True
    )
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{kind} child failed:\n{r.stderr}")
    rss, has_torch = r.stdout.split()
    return wall, float(rss), has_torch == "True"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--run", help="run folder or .safetensors to export (default: an untrained 784-512-10 MLP)"
    )
    ap.add_argument("--rounds", type=int, default=10, help="alternating rounds for (b)")
    ap.add_argument("--calls", type=int, default=200, help="timed calls per round and function in (b)")
    args = ap.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    import densa
    from densa.core.checkpoint import build_meta, dataset_meta
    from densa.core.config import ModelConfig
    from densa.core.data import DATASETS
    from densa.core.models import build_model, count_parameters
    from densa.inference.onnx_file import OnnxPredictor, export_onnx

    default_threads = torch.get_num_threads()
    print(
        f"densa ONNX benchmarks · {platform.machine()} · {os.cpu_count()} CPUs · torch {torch.__version__} "
        f"({default_threads} threads by default) · onnxruntime {ort.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.run:
            ckpt = densa.load(args.run)
            model, meta, run = ckpt.model, ckpt.meta, ckpt.path
        else:
            torch.manual_seed(0)
            model = build_model(ModelConfig()).eval()
            meta = build_meta(ModelConfig(), dataset_meta(DATASETS["mnist"]))
            run = densa.save(model, tmp / "model.safetensors", meta)
        n_params = count_parameters(model)
        print(
            f"model: {meta['model'].get('model')} {meta['model'].get('hidden', '')}, {n_params:,} parameters"
        )

        # (a) export, cold then warm
        times = []
        for name in ("cold.onnx", "warm.onnx"):
            t = time.perf_counter()
            summary = export_onnx(model, tmp / name, meta)
            times.append((time.perf_counter() - t, summary["seconds"]))
        size = summary["bytes"]
        print(
            f"(a) export: cold {times[0][0]:.2f}s (torch exporter {times[0][1]:.2f}s), "
            f"warm {times[1][0]:.2f}s (exporter {times[1][1]:.2f}s), with check + write; "
            f"file {size / 1e6:.2f} MB = {size / (4 * n_params):.3f}x the float32 weights "
            f"(max abs diff at export {summary['max_abs_diff']:.1e})"
        )
        onnx_path = tmp / "warm.onnx"

        # (b) + (c) onnxruntime vs torch, 1 thread and each library's default
        x1 = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
        xb = np.random.default_rng(1).random((10_000, 28, 28), dtype=np.float32)
        for threads in (1, None):
            torch.set_num_threads(threads or default_threads)
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            predictor = OnnxPredictor(onnx_path, threads=threads)

            def raw_torch(x):
                with torch.inference_mode():
                    return torch.softmax(model(x), dim=1)

            def raw_ort(x, session=session):
                return session.run(["probabilities"], {"images": x})[0]

            fns = {
                "ort": raw_ort,
                "torch": raw_torch,
                "ort_api": predictor.predict_proba,
                "torch_api": lambda x: densa.predict_proba(model, x),
            }
            ins = {"ort": x1, "torch": torch.from_numpy(x1), "ort_api": x1, "torch_api": torch.from_numpy(x1)}
            m = interleaved(fns, ins, args.rounds, args.calls, warmup=100)
            label = (
                f"{threads} thread" if threads else f"default threads (torch {default_threads}, ORT its own)"
            )
            print(
                f"(b) 1 image, {label}: onnxruntime {m['ort'] * 1e6:.1f} us, "
                f"torch {m['torch'] * 1e6:.1f} us -> ratio {m['ort'] / m['torch']:.2f}; "
                f"APIs: OnnxPredictor {m['ort_api'] * 1e6:.1f} us, densa.predict_proba "
                f"{m['torch_api'] * 1e6:.1f} us -> ratio {m['ort_api'] / m['torch_api']:.2f}"
            )
            big = {"ort": raw_ort, "torch": raw_torch}
            m = interleaved(big, {"ort": xb, "torch": torch.from_numpy(xb)}, rounds=3, calls=5, warmup=1)
            print(
                f"(c) 10,000 images, {label}: onnxruntime {m['ort'] * 1e3:.1f} ms, "
                f"torch {m['torch'] * 1e3:.1f} ms -> ratio {m['ort'] / m['torch']:.2f}"
            )
        torch.set_num_threads(default_threads)

        # (d) a fresh process: load and predict one image
        res = {k: child(k, onnx=str(onnx_path), run=str(run)) for k in ("onnxruntime", "torch")}
        (ow, orss, ot), (tw, trss, _) = res["onnxruntime"], res["torch"]
        print(
            f"(d) fresh process, load + 1 prediction: OnnxPredictor {ow:.2f}s / {orss:.0f} MB peak "
            f"(torch imported: {ot}); densa.load + predict_proba {tw:.2f}s / {trss:.0f} MB "
            f"-> {ow / tw:.2f}x time, {orss / trss:.2f}x memory"
        )


if __name__ == "__main__":
    main()
