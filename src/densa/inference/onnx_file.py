"""ONNX export, checked against torch, and the onnxruntime predictor that runs the file without torch.

`export_run(RUN, "model.onnx")` (what `densa export RUN --onnx model.onnx` calls) loads a run and hands
its model to `export_onnx(model, out, meta)`, which works for any nn.Module: torch's exporter writes the
graph, onnxruntime must then match torch before the file is written, and the classes, preprocessing
rule and provenance travel in the file's metadata. `OnnxPredictor(path)` (what densa.load returns for a
.onnx file: the trained-model object, inference.model) needs onnxruntime and numpy only: this module
imports torch inside the export functions and nowhere else.

The file's contract: input "images", float32 (batch, 28, 28), pixels scaled to [0, 1] (uint8 / 255);
outputs "probabilities" (softmax, columns in class order) and "logits", both (batch, classes), and, in
files exported from densa's MLP or CNN with a detector (core.detector), "features" (batch, d): what the
last layer sees, which the detector in the "densa.detector" property scores (older files: no detector).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np

from .._version import __version__
from ..core.errors import DensaError
from ..core.extras import require
from .model import TrainedModel

FORMAT = "densa.onnx.v1"
OPSET = 20  # ai.onnx opset; torch 2.13's own default, so its exporter needs no version conversion
INPUT = "images"
OUTPUTS = ("probabilities", "logits")  # the first is what a plain `session.run(None, ...)[0]` returns
FEATURES = "features"  # a third output when the file carries a detector
TOLERANCE = 1e-5  # largest |onnxruntime - torch| difference of probabilities accepted at export
CHECK_BATCHES = (1, 7)  # batch sizes compared at export time (the batch dimension is dynamic)
META_KEYS = ("model", "dataset", "input", "train", "metrics", "versions", "export")


class OnnxError(DensaError):
    pass


def is_onnx(path: str | os.PathLike) -> bool:
    """densa tells an ONNX file from a run folder or .safetensors file by its suffix."""
    return str(path).lower().endswith(".onnx")


def _require(*names: str) -> list:
    return [require(n, "onnx", "ONNX support") for n in names]


def check_out(out: str | os.PathLike, force: bool = False) -> Path:
    """The path to export to, refused before any slow work if it is unusable or taken."""
    out = Path(out)
    if not is_onnx(out):
        raise OnnxError(
            f"{out}: the exported file's name must end in .onnx (densa recognises ONNX files by it)"
        )
    if out.is_dir():
        raise OnnxError(f"{out} is a folder; pass a file name ending in .onnx")
    if out.exists() and not force:
        raise OnnxError(f"{out} already exists; pass --force to replace it")
    return out


# --------------------------------------------------------------------------- export (torch)


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the exporter's progress chatter (torchvision ops it skips, deprecations inside torch)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _to_onnx(model, sample, features: bool = False):
    """torch's exporter on `model` + softmax: input "images" with a dynamic batch, outputs OUTPUTS (and
    FEATURES, the input of the model's last layer, when `features`: densa's MLP and CNN have one)."""
    import torch

    class WithProbabilities(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, images):
            if features:
                f = self.net.body(images)
                logits = self.net.last(f)
                return torch.softmax(logits, dim=1), logits, f
            logits = self.net(images)
            return torch.softmax(logits, dim=1), logits

    try:
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                WithProbabilities(model).eval(),
                (sample,),
                dynamo=True,
                input_names=[INPUT],
                output_names=[*OUTPUTS, FEATURES] if features else list(OUTPUTS),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                opset_version=OPSET,
                verbose=False,
            )
    except torch.onnx.errors.OnnxExporterError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxError(f"torch could not export this model to ONNX: {first}") from None
    return program.model_proto


def _max_difference(model, proto, n_classes: int, g) -> float:
    """The check that makes an export worth having: onnxruntime vs torch on the same images."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    diff = 0.0
    for n in CHECK_BATCHES:
        x = torch.rand(n, 28, 28, generator=g)
        with torch.no_grad():
            want = torch.softmax(model(x), dim=1).numpy()
        got = session.run([OUTPUTS[0]], {INPUT: x.numpy()})[0]
        if want.shape != (n, n_classes) or got.shape != want.shape:
            raise OnnxError(
                f"the model gives {tuple(want.shape)} outputs for {n} images but its metadata lists "
                f"{n_classes} classes; export a model whose last layer has one output per class"
            )
        diff = max(diff, float(np.abs(got - want).max()))
    return diff


def export_onnx(
    model,
    out: str | os.PathLike,
    meta: dict,
    *,
    force: bool = False,
    source: dict | None = None,
    detector=None,
) -> dict:
    """Export `model` to `out` with a dynamic batch dimension, verified by onnxruntime; returns a summary.

    `model` is any nn.Module mapping float32 (N, 28, 28) in [0, 1] to logits (N, classes); it is exported
    in eval mode (its mode is restored afterwards). `meta` is checkpoint metadata (checkpoint.build_meta):
    meta["dataset"] must hold "classes" and "preprocess". `source` ({"file", "sha256"}) names the
    checkpoint it came from. `detector` (core.detector.Detector, which densa.load gives a trained model)
    travels in the file with a FEATURES output for it to score, so the file refuses what is not a digit
    as the checkpoint does. Nothing is written unless onnxruntime matches torch within TOLERANCE.
    """
    out = check_out(out, force)
    import torch

    onnx, onnxscript, ort = _require("onnx", "onnxscript", "onnxruntime")
    classes = [str(c) for c in meta["dataset"]["classes"]]
    g = torch.Generator().manual_seed(0)
    was_training = model.training
    model.eval()
    try:
        t0 = time.perf_counter()
        proto = _to_onnx(model, torch.rand(2, 28, 28, generator=g), features=detector is not None)
        seconds = time.perf_counter() - t0
        diff = _max_difference(model, proto, len(classes), g)
    finally:
        model.train(was_training)
    if not diff <= TOLERANCE:
        raise OnnxError(
            f"onnxruntime's probabilities differ from torch's by {diff:.2e} (> {TOLERANCE:g}); not writing "
            f"{out}: this model uses an operation the exporter does not translate faithfully"
        )

    export = {
        "format": FORMAT,
        "opset": OPSET,
        "outputs": [*OUTPUTS, FEATURES] if detector is not None else list(OUTPUTS),
        "exporter": "torch.onnx.export(dynamo=True)",
        "source": source,
        "seconds": round(seconds, 3),
        "versions": {
            "densa": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
        },
        "verified": {
            "onnxruntime": ort.__version__,
            "max_abs_diff": diff,
            "batch_sizes": list(CHECK_BATCHES),
        },
    }
    digest = (source or {}).get("sha256") or _weights_digest(model)
    model_name = (meta.get("model") or {}).get("model", type(model).__name__.lower())
    dataset = meta["dataset"].get("name", "unknown")
    full = {k: meta.get(k) or {} for k in META_KEYS}
    full["input"] = {
        **full["input"],
        "name": INPUT,
        "shape": ["batch", 28, 28],
        "dtype": "float32",
        "range": [0, 1],
    }
    full["export"] = export
    props = {  # flat keys that any runtime can read, then the run's metadata as JSON
        "densa.format": FORMAT,
        "densa.version": __version__,
        "densa.classes": json.dumps(classes),
        "densa.preprocess": str(meta["dataset"].get("preprocess", "")),
        # a run and its export answer with the same id (see core.checkpoint.file_id)
        "densa.model_id": (source or {}).get("model_id") or f"{dataset}-{model_name}@{digest[:12]}",
        **{f"densa.{k}": json.dumps(v) for k, v in full.items()},
    }
    if detector is not None:
        props["densa.detector"] = detector.to_json()
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = (
        f"densa {model_name} trained on {dataset}: {INPUT} float32 (batch, 28, 28) in [0, 1] -> "
        f"{' and '.join(OUTPUTS)} (batch, {len(classes)}); classes {', '.join(classes)}"
    )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise OnnxError(f"the exported graph fails onnx's checker: {str(e).splitlines()[0]}") from None

    from ..core._io import write_atomic

    data = proto.SerializeToString()
    write_atomic(out, data)
    return {
        "path": out,
        "bytes": len(data),
        "seconds": seconds,
        "opset": OPSET,
        "max_abs_diff": diff,
        "detector": detector is not None,
    }


def export_run(run: str | os.PathLike, out: str | os.PathLike, *, force: bool = False) -> dict:
    """Export a run folder or .safetensors checkpoint to `out` (see export_onnx)."""
    from ..core.checkpoint import load

    out = check_out(out, force)
    _require("onnx", "onnxscript", "onnxruntime")
    ckpt = load(run)
    from ..core.checkpoint import checkpoint_name, file_id

    sha = hashlib.sha256(ckpt.path.read_bytes()).hexdigest()
    model_id = file_id(ckpt.path, checkpoint_name(ckpt.path), sha)
    source = {"file": str(ckpt.path), "sha256": sha, "model_id": model_id}
    summary = export_onnx(ckpt.model, out, ckpt.meta, force=force, source=source, detector=ckpt.detector)
    return {**summary, "source": ckpt.path}


# --------------------------------------------------------------------------- inference (no torch)


class OnnxPredictor(TrainedModel):
    """A file written by `densa export`, run by onnxruntime: the trained-model object without torch.

    The interface is TrainedModel's (predict_proba, predict, evaluate, logits, classes, preprocess);
    .model_id is the source run's "<run name>@<12 hex of its model.safetensors' sha256>", .meta the run's
    metadata plus "export", .module None. `threads` sets onnxruntime's intra-op threads (None: its default).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        (ort,) = _require("onnxruntime")
        from onnxruntime.capi.onnxruntime_pybind11_state import (
            Fail,
            InvalidArgument,
            InvalidGraph,
            InvalidProtobuf,
            NoSuchFile,
            NotImplemented,
        )

        self.path = Path(path)
        if not self.path.is_file():
            what = "is a folder" if self.path.is_dir() else "does not exist"
            raise OnnxError(
                f"{self.path} {what}; pass a .onnx file written by `densa export RUN --onnx OUT.onnx`"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except (InvalidProtobuf, InvalidArgument, InvalidGraph, Fail, NoSuchFile, NotImplemented) as e:
            reason = " ".join(str(e).rsplit("failed:", 1)[-1].split())
            raise OnnxError(
                f"{self.path} is not a readable ONNX model ({reason}); the file is truncated or not ONNX: "
                f"export it again with `densa export RUN --onnx {self.path} --force`"
            ) from None
        props = self.session.get_modelmeta().custom_metadata_map
        if props.get("densa.format") != FORMAT:
            raise OnnxError(
                f"{self.path} is an ONNX model but not a densa export (no '{FORMAT}' metadata); "
                "write one with `densa export RUN --onnx OUT.onnx`"
            )
        try:
            meta = {k: json.loads(props[f"densa.{k}"]) for k in META_KEYS}
            classes = json.loads(props["densa.classes"])
            rule = props["densa.preprocess"]
            self.model_id = props["densa.model_id"]
        except (KeyError, json.JSONDecodeError) as e:
            raise OnnxError(f"{self.path}: densa metadata is damaged ({e}); export it again") from None
        names = [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]
        if names[1] == [*OUTPUTS, FEATURES] and "densa.detector" in props:
            names = names[0], names[1][:-1]
            self.detector = self._detector(props["densa.detector"])
        if names != ([INPUT], list(OUTPUTS)):
            raise OnnxError(
                f"{self.path}: expected input {INPUT!r} and outputs {list(OUTPUTS)}, found {names[0]} and "
                f"{names[1]}; export it again"
            )
        super().__init__(
            self._checked(meta, classes, rule), self.path, detector=getattr(self, "detector", None)
        )

    def _detector(self, text: str):
        from ..core.detector import Detector

        out = self.session.get_outputs()
        width = out[-1].shape[-1] if isinstance(out[-1].shape[-1], int) else None
        classes = out[0].shape[-1] if isinstance(out[0].shape[-1], int) else None
        return Detector.from_json(text, self.path, features=width, classes=classes)

    def _features_logits(self, x) -> tuple[np.ndarray, np.ndarray]:
        logits, feats = self.session.run(
            [OUTPUTS[1], FEATURES], {INPUT: np.ascontiguousarray(x, dtype=np.float32)}
        )
        return feats, logits

    def _checked(self, meta: dict, classes, rule) -> dict:
        """The metadata checked as a checkpoint's is, and the flat properties against it and the graph."""
        from ..core.metadata import check_classes, check_meta, check_rule, refuse

        if not isinstance(meta["export"], dict):
            raise refuse(self.path, "densa.export", "a JSON object", meta["export"])
        n = self.session.get_outputs()[0].shape[-1]  # an int, unless the graph left it symbolic
        if not isinstance(n, int):
            n = self.session.run([OUTPUTS[1]], {INPUT: np.zeros((1, 28, 28), np.float32)})[0].shape[-1]
        meta = check_meta(meta, self.path, prefix="densa.", outputs=n)
        classes = check_classes(self.path, "densa.classes", classes, n)
        if classes != meta["dataset"]["classes"]:
            raise refuse(self.path, "densa.classes", "the class names of densa.dataset", classes)
        rule = check_rule(self.path, "densa.preprocess", rule)
        if not (isinstance(self.model_id, str) and 0 < len(self.model_id) <= 200):
            raise refuse(self.path, "densa.model_id", "a model id of 1..200 characters", self.model_id)
        # the flat property is what other runtimes read: it decides how people's images are prepared
        return {**meta, "dataset": {**meta["dataset"], "preprocess": rule}}

    def _logits(self, x) -> np.ndarray:
        return self.session.run([OUTPUTS[1]], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]
