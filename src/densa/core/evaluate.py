"""The one input rule and the one evaluator: images -> floats in [0, 1], logits + labels -> loss and accuracy.

`scale_images` is the only place uint8 pixels become float32 (/ 255), for numpy arrays and torch tensors.
`score(logits, labels)` is the only place logits become {"loss", "acc", "correct", "n"} (mean
cross-entropy in float64); `score_parts` gives the summable {"loss_sum", "correct", "n"} that shards add
up before `summarize`. `evaluate`, `predict_proba` and `predict` run a torch model over every image (the
last partial batch is never dropped) and hand its logits on. No torch import at module level: the ONNX
backend uses this module in processes without torch.
"""

from __future__ import annotations

import sys

import numpy as np

from .errors import DensaError


def _torch_tensor(x) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    return torch is not None and isinstance(x, torch.Tensor)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if _torch_tensor(x) else np.asarray(x)


def scale_images(images):
    """uint8 pixels -> float32 / 255; float images must already lie in [0, 1] and become float32.

    Takes and returns a torch tensor (on its device) or a numpy array; any shape."""
    if _torch_tensor(images):
        import torch

        if images.dtype == torch.uint8:
            return images.float().div_(255)
        x = images.float() if images.is_floating_point() else None
    else:
        x = np.asarray(images)
        if x.dtype == np.uint8:
            return x.astype(np.float32) / np.float32(255)
        x = np.ascontiguousarray(x, dtype=np.float32) if np.issubdtype(x.dtype, np.floating) else None
    if x is None:
        raise DensaError(f"images must be uint8 pixels or floats in [0, 1], got dtype {images.dtype}")
    size = x.numel() if _torch_tensor(x) else x.size
    lo, hi = (float(x.min()), float(x.max())) if size else (0.0, 0.0)
    if not (lo >= 0 and hi <= 1):
        raise DensaError(
            f"image values must lie in [0, 1] (pixels / 255), got {lo:g} to {hi:g}; "
            "pass uint8 pixels or divide by 255"
        )
    return x


def softmax(logits) -> np.ndarray:
    """(N, K) logits -> float32 probabilities, each row summing to 1 (computed in float64)."""
    z = _numpy(logits).astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True, initial=-np.inf))
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def score_parts(logits, labels) -> dict:
    """The sums behind a score: {"loss_sum" (float64 cross-entropy summed), "correct", "n"}.

    `logits` (N, K) and `labels` (N,), numpy or torch; parts of disjoint shards add up field by field."""
    z, y = _numpy(logits).astype(np.float64), _numpy(labels).astype(np.int64)
    if len(y) == 0:
        return {"loss_sum": 0.0, "correct": 0, "n": 0}
    top = z.max(axis=1)
    log_norm = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    loss_sum = float((log_norm - z[np.arange(len(y)), y]).sum())
    return {"loss_sum": loss_sum, "correct": int((z.argmax(axis=1) == y).sum()), "n": len(y)}


def summarize(parts: dict) -> dict:
    """score_parts (or their sums over shards) -> {"loss": mean cross-entropy, "acc", "correct", "n"}."""
    n, correct = int(parts["n"]), int(parts["correct"])
    return {"loss": parts["loss_sum"] / max(n, 1), "acc": correct / max(n, 1), "correct": correct, "n": n}


def score(logits, labels) -> dict:
    """Mean cross-entropy and accuracy of (N, K) logits vs (N,) labels: {"loss", "acc", "correct", "n"}."""
    return summarize(score_parts(logits, labels))


# --------------------------------------------------------------------------- torch models


def forward(model, x, batch_size: int = 2000):
    """(N, classes) float32 CPU logits of `model` (eval mode, no grad) on float inputs `x`, batch by batch."""
    import torch

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            out = [
                model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)
            ]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def logits_of(model, images, batch_size: int = 2000):
    """(N, classes) float32 logits of a torch `model` on uint8 or [0, 1] float images (a torch tensor)."""
    return forward(model, scale_images(images), batch_size)


def predict_proba(model, images, batch_size: int = 2000):
    """(N, classes) probabilities, columns in class order (a torch tensor)."""
    import torch

    return torch.softmax(logits_of(model, images, batch_size), dim=1)


def predict(model, images, batch_size: int = 2000):
    """(N,) predicted class indices (a torch tensor)."""
    return logits_of(model, images, batch_size).argmax(dim=1)


def evaluate_parts(model, images, labels, batch_size: int = 2000) -> dict:
    """score_parts of a torch model over these images: what a data-parallel rank sums over its shard."""
    return score_parts(logits_of(model, images, batch_size), labels)


def evaluate(model, images, labels, batch_size: int = 2000) -> dict:
    """Mean cross-entropy and accuracy over every image: {"loss", "acc", "correct", "n"}."""
    return summarize(evaluate_parts(model, images, labels, batch_size))


def format_prediction(probs, index: int, label: int | None = None, classes=None) -> str:
    """The tutorial's quick look at one test image: probabilities, argmax, its probability, true label."""
    p = _numpy(probs)
    k = int(p.argmax())

    def name(c: int) -> str:
        return f" ({classes[c]})" if classes is not None and classes[c] != str(c) else ""

    lines = [
        f"predictions[{index}] = {p}",
        f"predictions[{index}].argmax() = {k}{name(k)}",
        f"predictions[{index}][{k}] = {float(p[k])}",
    ]
    if label is not None:
        lines.append(f"test_labels[{index}] = {label}{name(label)}")
    return "\n".join(lines)
