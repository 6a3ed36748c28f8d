"""The trained-model object `densa.load(path)` returns, the same for a run folder, .safetensors or .onnx.

    model = densa.load("runs/mnist-mlp")      # or "model.onnx": onnxruntime, no torch
    model.predict_proba(images)               # (N, classes) float32, columns in class order
    model.predict(images)                     # (N,) class indices
    model.evaluate(images, labels)            # {"loss", "acc", "correct", "n"}; or evaluate(split="test")
    model.decide(images)                      # [Decision]: the answer, or "not sure" / "not a digit", and why

Images are uint8 pixels (N, 28, 28) or floats in [0, 1], numpy arrays or torch tensors: core.evaluate's
scale_images turns them into floats for both backends, and core.evaluate's score scores the logits of
both. Outputs are numpy arrays. The torch backend is this class; the ONNX one (inference.onnx_file.
OnnxPredictor) subclasses it and replaces `_logits`; inference.predictor.load picks one by the path.
`densa predict`, `densa serve` and `densa evaluate` use the same object.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import numpy as np

from ..core.errors import DensaError
from ..core.evaluate import scale_images, score, softmax
from ..core.metadata import Described


class TrainedModel(Described):
    """A trained model and what its file says about it.

    .meta (the metadata: model, dataset, input, train, metrics, versions), .classes (names in column
    order), .path, .module (the torch nn.Module, in eval mode; None for an ONNX file), .preprocess (how a
    person's image becomes the 28x28 input), .model_id ('<name>@<12 hex of the file's sha256>'),
    .detector (core.detector.Detector, or None for a file written before densa fitted one).
    """

    def __init__(self, meta: dict, path: str | os.PathLike, module=None, detector=None):
        self.meta = meta
        self.path = Path(path)
        self.module = module
        self.detector = detector

    @property
    def preprocess(self) -> str:
        return self.meta["dataset"]["preprocess"]  # checked, and filled in, when the file was read

    @property
    def model(self):
        """The torch module (the name densa.load's Checkpoint used); None for an ONNX file."""
        return self.module

    @cached_property
    def model_id(self) -> str:
        from ..core.checkpoint import checkpoint_name, file_id

        return file_id(self.path, checkpoint_name(self.path))

    def __repr__(self) -> str:
        backend = "torch" if self.module is not None else "onnxruntime"
        kind = self.meta["model"].get("model", "model")
        return (
            f"TrainedModel({self.path}, {kind} via {backend}, {len(self.classes)} classes of {self.dataset})"
        )

    def logits(self, images) -> np.ndarray:
        """(N, classes) float32 logits for uint8 or [0, 1] float images (N, 28, 28)."""
        x = scale_images(images)
        if tuple(x.shape[1:]) != (28, 28) or x.ndim != 3:
            raise DensaError(f"images must have shape (N, 28, 28), got {tuple(x.shape)}")
        if len(x) == 0:
            return np.empty((0, len(self.classes)), dtype=np.float32)
        return self._logits(x)

    def _logits(self, x) -> np.ndarray:
        import torch

        from ..core.evaluate import forward

        with torch.inference_mode():
            return forward(self.module, torch.as_tensor(x)).numpy()

    def _features_logits(self, x) -> tuple[np.ndarray, np.ndarray]:
        from ..core.detector import features_and_logits

        return features_and_logits(self.module, x)

    def assess(self, images) -> tuple[np.ndarray, list]:
        """(probabilities (N, classes) float32, [Decision] one per image) from one pass of the model."""
        x = scale_images(images)
        if tuple(x.shape[1:]) != (28, 28) or x.ndim != 3:
            raise DensaError(f"images must have shape (N, 28, 28), got {tuple(x.shape)}")
        from .decision import decide

        if self.detector is None or len(x) == 0:
            probs, scores = self.predict_proba(x), None
        else:
            feats, logits = self._features_logits(x)
            probs, scores = softmax(logits), self.detector.score(feats, np.asarray(x))
        return probs, decide(probs, scores, self.classes, self.dataset)

    def decide(self, images) -> list:
        """One inference.decision.Decision per image: the answer, or "not sure" / "not a digit", and why.

        Its .accepted says whether the model answers; .score is refused above 1 (use it for ROC curves);
        .status is "answer", "not_sure" or "unknown". Without a detector in the file (older files) only
        a low top probability is refused: .method says "confidence only"."""
        return self.assess(images)[1]

    def predict_proba(self, images) -> np.ndarray:
        """(N, classes) float32 probabilities, columns in class order."""
        return softmax(self.logits(images))

    def predict(self, images) -> np.ndarray:
        """(N,) int64 predicted class indices."""
        return self.logits(images).argmax(axis=1)

    def evaluate(self, images=None, labels=None, *, dataset=None, split="test", data_dir=None) -> dict:
        """Mean cross-entropy and accuracy over every image: {"loss", "acc", "correct", "n"}.

        Pass images and labels, or neither: then a split of `dataset` (by default the one the model was
        trained on) is loaded, as `densa evaluate` does."""
        if images is None:
            _, images, labels = load_split(self, dataset, split, data_dir)
        elif labels is None:
            raise DensaError("evaluate needs the labels of these images: evaluate(images, labels)")
        return score(self.logits(images), labels)


def load_split(model, dataset: str | None = None, split: str = "test", data_dir=None):
    """The (dataset, images, labels) a model is assessed on: its own dataset unless one is named.

    `model` is a TrainedModel (or a core.checkpoint.Checkpoint). Any dataset with as many classes as the
    model has outputs will do; another count is an error.
    """
    from ..core.data import load_dataset

    ds = load_dataset(dataset or model.dataset, data_dir)
    k = len(model.classes)
    if len(ds.classes) != k:
        raise DensaError(
            f"{model.path} predicts {k} classes but dataset {ds.name!r} has {len(ds.classes)}; "
            f"pick a dataset with {k} classes (it was trained on {model.dataset!r})"
        )
    images, labels = ds.split(split)
    return ds, images, labels
