"""Self-describing checkpoints: safetensors weights with everything needed to use them in the metadata.

`save(model, path, dataset="mnist")` writes model.safetensors atomically, the metadata built from the
model's own config; `load(path)` takes a run folder or a .safetensors file and rebuilds the model with no
other flags or files (densa.load wraps it in the trained-model object, inference.model).
Metadata values are JSON strings under the keys of META_KEYS.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._version import __version__
from ._io import write_atomic
from .config import ModelConfig
from .metadata import META_KEYS, Described, MetadataError, check_meta, check_state, refuse
from .models import build_model

FORMAT = "densa.checkpoint.v1"


class CheckpointError(MetadataError):
    pass


@dataclass
class Checkpoint(Described):
    model: nn.Module
    meta: dict
    path: Path
    detector: object = None  # core.detector.Detector; None in files written before densa fitted one


def dataset_meta(spec) -> dict:
    return {
        "name": spec.name,
        "classes": list(spec.classes),
        "mean": spec.mean,
        "std": spec.std,
        "preprocess": spec.preprocess,
    }


def build_meta(
    model_config: ModelConfig, dataset: dict, train: dict | None = None, metrics: dict | None = None
) -> dict:
    return {
        "model": model_config.to_dict(),
        "dataset": dataset,
        # what the model expects: uint8 pixels / 255, then (if set) the model normalises itself
        "input": {"shape": [28, 28], "scale": 1 / 255, "normalize": model_config.normalize},
        "train": train or {},
        "metrics": metrics or {},
        "versions": {"densa": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def save(
    model: nn.Module,
    path: str | os.PathLike,
    meta: dict | None = None,
    *,
    dataset=None,
    train: dict | None = None,
    metrics: dict | None = None,
    detector=None,
) -> Path:
    """Write the weights and their metadata to `path` (a .safetensors file), atomically.

    Without `meta` the metadata is built here (build_meta): the architecture from the model itself
    (`model.config`, which MLP, CNN and build_model set), the classes and preprocessing rule of `dataset`
    (a name from DATASETS, a Dataset from load_dataset or its spec; "mnist" if not given), and the
    optional `train` settings (a dict or TrainConfig) and `metrics`. `meta` is complete metadata that a
    caller built already (the run job does). `detector` (core.detector.fit, which `densa train` runs)
    travels in the metadata too, under "detector": the model then refuses images that are not digits.
    """
    from safetensors.torch import save as to_bytes

    if meta is None:
        meta = meta_for(model, dataset, train, metrics)
    elif dataset is not None or train is not None or metrics is not None:
        raise CheckpointError("pass either meta or dataset/train/metrics to save, not both")
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, **{k: json.dumps(meta.get(k)) for k in META_KEYS}}
    if detector is not None:
        metadata["detector"] = detector.to_json()
    # serialised in memory, then written by plain OS calls: a full disk is an OSError naming the file
    write_atomic(path, to_bytes(tensors, metadata=metadata))
    return path


def meta_for(model: nn.Module, dataset=None, train=None, metrics: dict | None = None) -> dict:
    """The metadata densa.save writes for a model that remembers its config (see save)."""
    from .data import get_spec

    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise CheckpointError(
            f"cannot save a {type(model).__name__} without its architecture: build it with densa.MLP, "
            "densa.CNN or densa.build_model (they record model.config)"
        )
    dataset = "mnist" if dataset is None else dataset
    spec = get_spec(dataset) if isinstance(dataset, str) else getattr(dataset, "spec", dataset)
    if len(spec.classes) != config.num_classes:
        raise CheckpointError(
            f"the model has {config.num_classes} outputs but dataset {spec.name!r} has "
            f"{len(spec.classes)} classes; save it with the dataset it was trained on"
        )
    train = train.to_dict() if hasattr(train, "to_dict") else train
    return build_meta(config, dataset_meta(spec), train, metrics)


def model_file(path: str | os.PathLike, name: str = "model.safetensors") -> Path:
    """A run folder -> its model.safetensors; a file -> itself; with clear errors for anything else."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist; pass a run folder written by `densa train` or its model.safetensors"
        )
    if path.is_dir():
        if not (path / name).is_file():
            raise CheckpointError(
                f"{path} is not a densa run folder (no {name} in it); pass the folder `densa train` wrote"
            )
        return path / name
    return path


def read_meta(path: str | os.PathLike) -> dict:
    """The decoded metadata of a densa checkpoint, without loading weights."""
    return _read_header(model_file(path))[0]


def _read_header(file: Path) -> tuple[dict, str | None]:
    """(the checked metadata, the detector's JSON or None) of a .safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as fh:
            raw = fh.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for garbage input
        raise CheckpointError(
            f"{file} is not a safetensors file ({e}); pass a model.safetensors written by densa"
        ) from None
    if raw.get("format") != FORMAT:
        raise CheckpointError(
            f"{file} is a safetensors file but not a densa checkpoint (no '{FORMAT}' metadata)"
        )
    try:
        meta = {k: json.loads(raw[k]) for k in META_KEYS}
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{file}: densa metadata is damaged ({e}); retrain or restore the file"
        ) from None
    return check_meta(meta, file), raw.get("detector")


def expected_shapes(config: ModelConfig) -> tuple[dict, list]:
    """The state dict's tensor shapes and the parameter shapes of build_model(config); allocates nothing."""
    with torch.device("meta"):
        model = build_model(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, [
        tuple(p.shape) for p in model.parameters()
    ]


def check_shapes(file, config: ModelConfig, shapes: dict, what: str) -> None:
    """`shapes` (name -> shape of each saved tensor) must be those of the model `config` describes."""
    want, _ = expected_shapes(config)
    if shapes == want:
        return
    missing, extra = sorted(want.keys() - shapes.keys()), sorted(shapes.keys() - want.keys())
    wrong = [k for k in want if k in shapes and want[k] != shapes[k]]
    why = (
        f"{wrong[0]} is {list(shapes[wrong[0]])}, not {list(want[wrong[0]])}"
        if wrong
        else f"no tensor {missing[0]}"
        if missing
        else f"an extra tensor {extra[0]}"
    )
    raise CheckpointError(
        f"{file}: {what} do not match the architecture its metadata describes ({config.model} "
        f"{list(config.hidden)}: {why}); the file is damaged or not written by densa"
    )


def load(path: str | os.PathLike, map_location: str = "cpu") -> Checkpoint:
    """Rebuild a trained model from a run folder or .safetensors file; the model is in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .detector import Detector

    file = model_file(path)
    meta, detector = _read_header(file)
    config = ModelConfig.from_dict(meta["model"])
    with safe_open(str(file), framework="pt") as fh:
        names = fh.keys()  # the header's shapes: nothing is read or allocated yet
        check_shapes(file, config, {k: tuple(fh.get_slice(k).get_shape()) for k in names}, "its weights")
    model = build_model(config)
    try:
        state = load_file(str(file), device=map_location)
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise CheckpointError(
            f"{file}: weights do not match the model described in its metadata ({e})"
        ) from None
    model.eval()
    if detector is not None:
        width = model.last.in_features
        detector = Detector.from_json(detector, file, features=width, classes=config.num_classes)
    return Checkpoint(model=model, meta=meta, path=file, detector=detector)


# --------------------------------------------------------------------------- resume state

STATE_FORMAT = "densa.state.v1"
STATE_FILE = "checkpoint.pt"
# what `densa train` writes into a run folder (model first: the one file other commands need)
RUN_FILES = ("model.safetensors", "metrics.jsonl", "summary.json", STATE_FILE)


def save_state(path: str | os.PathLike, state: dict) -> Path:
    """Write the training loop's state (plain tensors, numbers, lists and dicts) atomically.

    The file is a torch.save of {"format", "sha256", "state"}: "state" holds the bytes of torch.save(state)
    as a uint8 tensor, so a truncated or modified file is caught by its digest before anything is used.
    """
    import hashlib
    import io

    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    raw = buf.getvalue()
    blob = {
        "format": STATE_FORMAT,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "state": torch.frombuffer(bytearray(raw), dtype=torch.uint8),
    }
    out = io.BytesIO()
    torch.save(blob, out)
    write_atomic(path, out.getbuffer())
    return path


def load_state(run: str | os.PathLike) -> dict:
    """The state saved by save_state in a run folder (or a checkpoint.pt path), loaded with weights_only."""
    import hashlib
    import io

    run = Path(run)
    file = run / STATE_FILE if run.is_dir() else run
    if not run.exists():
        raise CheckpointError(f"{run} does not exist; pass the run folder `densa train` wrote")
    if not file.is_file():
        raise CheckpointError(
            f"{run} has no {STATE_FILE} to resume from (densa train writes one after each epoch); "
            f"start a new run instead"
        )
    damaged = f"{file} is damaged (truncated or modified"
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a file that is not a complete torch.save zip
        raise CheckpointError(f"{damaged}: {' '.join(str(e).split())[:120]}); start a new run") from None
    if not isinstance(blob, dict) or blob.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{file} is not a densa training checkpoint (no '{STATE_FORMAT}' format)")
    raw = blob["state"].numpy().tobytes()
    if hashlib.sha256(raw).hexdigest() != blob.get("sha256"):
        raise CheckpointError(f"{damaged}: its sha256 does not match); start a new run")
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # an object that weights_only refuses, or bytes torch cannot read
        raise CheckpointError(
            f"{file} holds a state densa cannot read ({' '.join(str(e).split())[:120]}); start a new run"
        ) from None
    check_tensors(state, file, check_state(state, file)[0])
    return state


def check_tensors(state: dict, file, config: ModelConfig) -> None:
    """The tensors of a resume state: RNG states, the epoch's permutation, weights and optimiser state."""
    from .config import is_int

    for name, want in (("generator", torch.Generator().get_state()), ("torch_rng", torch.get_rng_state())):
        got = state.get(name)
        if not (isinstance(got, torch.Tensor) and got.dtype == want.dtype and got.shape == want.shape):
            raise refuse(
                file, name, f"a uint8 tensor of {want.numel()} bytes (an RNG state)", shown=_kind(got)
            )
    perm = state.get("perm")
    is_perm = isinstance(perm, torch.Tensor) and perm.dtype == torch.int64 and perm.dim() == 1
    if state["step"] and not (is_perm and torch.equal(perm.sort().values, torch.arange(len(perm)))):
        raise refuse(file, "perm", "the int64 permutation of the interrupted epoch", shown=_kind(perm))
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise refuse(file, "model", "a state dict of tensors", shown="other values")
    check_shapes(file, config, {k: tuple(v.shape) for k, v in state["model"].items()}, "its weights")
    _, params = expected_shapes(config)
    opt = state["optimizer"]
    ids = [i for g in opt["param_groups"] if isinstance(g, dict) for i in g.get("params", [])]
    if len(ids) != len(params) or not all(is_int(i) for i in ids):
        raise refuse(
            file, "optimizer", f"the state of an optimiser over {len(params)} parameters", shown="other"
        )
    for i, shape in zip(ids, params):
        entry = opt["state"].get(i, {})
        bad = not isinstance(entry, dict) or any(
            isinstance(v, torch.Tensor) and v.dim() and tuple(v.shape) != shape for v in entry.values()
        )
        if bad:
            raise refuse(
                file, f"optimizer.state.{i}", f"tensors of shape {list(shape)}", shown="other shapes"
            )


def _kind(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {list(value.shape)}"
    return type(value).__name__


# --------------------------------------------------------------------------- model ids


def file_id(path: Path, name: str, sha256: str | None = None) -> str:
    """'<name>@<first 12 hex of the file's sha256>': names a model and pins its exact bytes."""
    if sha256 is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        sha256 = h.hexdigest()
    return f"{name}@{sha256[:12]}"


def checkpoint_name(path: Path) -> str:
    """A run folder's name for its model.safetensors, else the file's stem."""
    path = Path(path)
    return path.parent.name if path.name == "model.safetensors" else path.stem
