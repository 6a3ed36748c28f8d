"""Opening a trained model (`load`, which is densa.load) and asking it about people's images.

`load(path)` opens a run folder, .safetensors or .onnx file as the trained-model object (inference.model).
What `densa predict` and `densa serve` need of it (a "predictor") is `classes` (names in column order),
`preprocess` (a rule name from images.RULES), `model_id` (a short stable id of the weights), `meta` and
`predict_proba(images)`: uint8 (N, 28, 28), light ink on black -> float32 (N, classes). `classify` and
`result` turn an image's bytes into the JSON-ready answer both commands print or send; `predict_files`
does it for `densa predict`'s files and folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def load(path: str | os.PathLike, threads: int | None = None):
    """A run folder, .safetensors checkpoint or .onnx export as a TrainedModel (ONNX needs no torch).

    `threads` sets torch's (or onnxruntime's) CPU threads; None keeps the default."""
    from .onnx_file import OnnxPredictor, is_onnx

    if is_onnx(path):
        return OnnxPredictor(path, threads=threads)
    import torch

    from ..core.checkpoint import load as load_checkpoint
    from .model import TrainedModel

    if threads:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(path)
    return TrainedModel(ckpt.meta, ckpt.path, module=ckpt.model, detector=ckpt.detector)


def open_predictor(path: str | os.PathLike, threads: int | None = None):
    """The name `densa predict` and `densa serve` know load by."""
    return load(path, threads)


def result(predictor, probs: np.ndarray, top_k: int = 3, decision=None) -> dict:
    """One image's answer: predicted class, its probability, the top k, every class's probability and
    the decision (inference.decision.Decision.to_dict(): the answer, or "not sure" / "not a digit" and
    why); without `decision` it is worked out from `probs` alone (confidence only)."""
    if decision is None:
        from .decision import decide

        decision = decide(probs[None], None, predictor.classes, predictor.dataset)[0]
    order = np.argsort(-probs, kind="stable")[: max(1, min(top_k, len(probs)))]
    best = int(order[0])
    return {
        "predicted": best,
        "predicted_class": predictor.classes[best],
        "probability": float(probs[best]),
        "top_k": [{"class": predictor.classes[int(k)], "probability": float(probs[k])} for k in order],
        "probabilities": {c: float(p) for c, p in zip(predictor.classes, probs)},
        "decision": decision.to_dict(),
        "model": predictor.model_id,
    }


def classify(predictor, data: bytes, name: str = "image", top_k: int = 3) -> tuple[dict, np.ndarray]:
    """Image bytes -> (answer, the uint8 28x28 the model saw). Raises densa.inference.images.ImageError."""
    from .images import prepare

    pixels = prepare(data, predictor.preprocess, name)
    probs, decisions = predictor.assess(pixels[None])
    return result(predictor, probs[0], top_k, decisions[0]), pixels


def image_files(paths: list[str]) -> list[tuple[str, str | None]]:
    """Each argument, or the images in each folder argument (sorted), as (path, error or None)."""
    from .images import EXTENSIONS

    out = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in EXTENSIONS)
            if not found:
                out.append((arg, f"{arg}: folder has no {'/'.join(EXTENSIONS)} files"))
            out += [(str(f), None) for f in found]
        else:
            out.append((arg, None if p.exists() else f"{arg}: no such file"))
    return out


def predict_files(predictor, paths: list[str], top_k: int = 3) -> list[tuple]:
    """(path, answer, uint8 28x28, None) or (path, None, None, one-line error) per image, in order.

    A bad file never stops the others; the good ones are classified in one batch."""
    from .images import ImageError, prepare, read_image_file

    entries = []
    for path, error in image_files(paths):
        pixels = None
        if error is None:
            try:
                pixels = prepare(read_image_file(path), predictor.preprocess, path)
            except ImageError as e:
                error = str(e)
            except OSError as e:
                error = f"{path}: {e.strerror or e}"
        entries.append((path, pixels, None if error is None else " ".join(error.split())))
    ok = [pixels for _, pixels, error in entries if error is None]
    probs, decisions = predictor.assess(np.stack(ok)) if ok else ([], [])
    answers = iter(result(predictor, p, top_k, d) for p, d in zip(probs, decisions))
    return [
        (path, None, None, error) if error else (path, next(answers), pixels, None)
        for path, pixels, error in entries
    ]


def save_inputs(folder: str | os.PathLike, items: list[tuple[str, np.ndarray]]) -> None:
    """Write each (name, uint8 28x28) as FOLDER/<stem>.28x28.png, atomically; repeated stems get -2, -3."""
    from ..core._io import write_atomic
    from .images import to_png

    used: set[str] = set()
    for name, pixels in items:
        stem, k = Path(name).stem, 2
        target = f"{stem}.28x28.png"
        while target in used:
            target, k = f"{stem}-{k}.28x28.png", k + 1
        used.add(target)
        write_atomic(Path(folder) / target, to_png(pixels))
