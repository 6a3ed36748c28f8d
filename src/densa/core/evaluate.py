"""Using a trained model: class probabilities, predictions, and loss/accuracy over a whole split.

Inputs are uint8 images (scaled by 1/255 here) or floats already in [0, 1]. Every image counts:
the last partial batch is never dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def as_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]; floats pass through."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def logits_of(model: nn.Module, images: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = [
            model(as_input(images[i : i + batch_size]).to(device)).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def predict_proba(model: nn.Module, images: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """(N, classes) probabilities, columns in class order."""
    return F.softmax(logits_of(model, images, batch_size), dim=1)


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """(N,) predicted class indices."""
    return logits_of(model, images, batch_size).argmax(dim=1)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 2000) -> dict:
    """Mean cross-entropy and accuracy over every image: {"loss", "acc", "correct", "n"}."""
    logits = logits_of(model, images, batch_size)
    labels = labels.long().cpu()
    loss = F.cross_entropy(logits, labels, reduction="sum").item() / max(len(labels), 1)
    correct = int((logits.argmax(dim=1) == labels).sum())
    return {"loss": loss, "acc": correct / max(len(labels), 1), "correct": correct, "n": len(labels)}


def format_prediction(probs: torch.Tensor, index: int, label: int | None = None, classes=None) -> str:
    """The tutorial's quick look at one test image: probabilities, argmax, its probability, true label."""
    p = probs.detach().cpu().numpy()
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
