"""What a densa model file says about itself, checked in one place before anything is built from it.

checkpoint.read_meta (model.safetensors), export.OnnxPredictor (.onnx) and checkpoint.load_state
(checkpoint.pt) pass the decoded metadata through `check_meta` / `check_state`: types, counts and sizes
(config.ModelConfig.from_dict's limits) are checked on the JSON values, so a hostile file is refused with
one line naming the file and the field before a tensor is allocated. Imports no torch (ONNX runs without).
"""

from __future__ import annotations

import os

from .config import MAX_CLASSES, MIN_CLASSES, PRESETS, FieldError, ModelConfig, TrainConfig, is_int, is_number
from .errors import DensaError

META_KEYS = ("model", "dataset", "input", "train", "metrics", "versions")  # each a JSON object
MAX_NAME = 100  # characters in a class or dataset name


class MetadataError(DensaError):
    pass


def refuse(file: str | os.PathLike, field: str, what: str, value=None, *, shown: str | None = None):
    """The one-line error for a metadata field that is not what densa writes."""
    from .config import shown as show

    got = shown if shown is not None else show(value)
    return MetadataError(
        f"{file}: metadata field {field} must be {what} (got {got}); "
        "the file is damaged or not written by densa"
    )


def field(file, prefix: str, parse, value):
    """parse(value) (a config's from_dict), its FieldError turned into the one-line error for `prefix`."""
    try:
        return parse(value)
    except FieldError as e:
        raise refuse(file, ".".join(p for p in (prefix, e.field) if p), e.what, e.value) from None


def check_classes(file, name: str, classes, count: int) -> list[str]:
    """A list of `count` class names (MIN_CLASSES..MAX_CLASSES strings), one per output of the model."""
    ok = isinstance(classes, list) and MIN_CLASSES <= len(classes) <= MAX_CLASSES
    if not (ok and all(isinstance(c, str) and 0 < len(c) <= MAX_NAME for c in classes)):
        what = f"a list of {MIN_CLASSES}..{MAX_CLASSES} class names (strings of 1..{MAX_NAME} characters)"
        raise refuse(file, name, what, classes)
    if len(classes) != count:
        what = f"{count} class names, one per output of the model"
        raise refuse(file, name, what, shown=f"{len(classes)} names")
    return classes


def check_rule(file, name: str, rule) -> str:
    """A preprocessing rule's name (data.PREPROCESS_RULES); none given (older files) means 'mnist'."""
    from .data import PREPROCESS_RULES as RULES

    if rule is None or rule == "":
        return "mnist"
    if rule not in RULES:
        raise refuse(file, name, f"a preprocessing rule: one of {', '.join(RULES)}", rule)
    return rule


def check_meta(meta, file, prefix: str = "", outputs: int | None = None) -> dict:
    """Decoded metadata (one value per META_KEYS) -> the same, checked, with dataset.preprocess filled in.

    A checkpoint's "model" is the ModelConfig its weights are built from; an ONNX file's graph is the
    model (any nn.Module can be exported), so there `outputs` (the graph's class count) is given and
    "model" only describes it. `prefix` is how the file spells the keys ('densa.model', ... in ONNX).
    """
    for key in META_KEYS:
        if not isinstance(meta.get(key), dict):
            raise refuse(file, prefix + key, "a JSON object", meta.get(key))
    if outputs is None:
        outputs = field(file, prefix + "model", ModelConfig.from_dict, meta["model"]).num_classes
    kind = meta["model"].get("model", "")
    if not (isinstance(kind, str) and len(kind) <= MAX_NAME):
        raise refuse(file, f"{prefix}model.model", f"a model name of at most {MAX_NAME} characters", kind)
    ds = meta["dataset"]
    if not (isinstance(ds.get("name"), str) and 0 < len(ds["name"]) <= MAX_NAME):
        raise refuse(
            file, f"{prefix}dataset.name", f"a dataset name of 1..{MAX_NAME} characters", ds.get("name")
        )
    check_classes(file, f"{prefix}dataset.classes", ds.get("classes"), outputs)
    for key in ("mean", "std"):
        if key in ds and not is_number(ds[key]):
            raise refuse(file, f"{prefix}dataset.{key}", "a finite number", ds[key])
    rule = check_rule(file, f"{prefix}dataset.preprocess", ds.get("preprocess"))
    return {**meta, "dataset": {**ds, "preprocess": rule}}


# the resume state's own fields (besides model_config, train_config and the tensors): name -> (check, what)
STATE_FIELDS = {
    "epoch": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "step": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "global_step": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "loss_sum": (is_number, "a finite number"),
    "correct": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of records"),
    "best_val_loss": (lambda v: isinstance(v, float) and v == v, "a number (inf before any val loss)"),
    "best_epoch": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "bad_epochs": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "stopped": (lambda v: isinstance(v, bool), "true or false"),
    "preset": (lambda v: v in PRESETS, f"a preset: one of {', '.join(PRESETS)}"),
    "dataset": (lambda v: isinstance(v, str) and 0 < len(v) <= MAX_NAME, "a dataset name"),
    "threads": (lambda v: v is None or (is_int(v) and v > 0), "a positive int"),
    "model": (lambda v: isinstance(v, dict), "the model's state dict"),
    "optimizer": (
        lambda v: (
            isinstance(v, dict)
            and isinstance(v.get("state"), dict)
            and isinstance(v.get("param_groups"), list)
        ),
        "an optimizer state dict",
    ),
}


def check_state(state, file) -> tuple[ModelConfig, TrainConfig]:
    """The fields of a resume state (checkpoint.save_state) that do not need torch to check; its configs."""
    if not isinstance(state, dict):
        raise refuse(file, "state", "a dict of the training loop's state", shown=type(state).__name__)
    model_config = field(file, "model_config", ModelConfig.from_dict, state.get("model_config"))
    values = field(file, "train_config", TrainConfig.typed, state.get("train_config"))
    try:
        config = TrainConfig(**values)  # each value of the right type; now the values themselves
    except DensaError as e:
        raise MetadataError(
            f"{file}: metadata field train_config is invalid ({e}); the file is damaged"
        ) from None
    for name, (ok, what) in STATE_FIELDS.items():
        if name not in state and name != "threads":
            raise refuse(file, name, what, shown="nothing")
        if not ok(state.get(name)):
            raise refuse(file, name, what, state[name])
    if state["epoch"] > config.epochs or len(state["history"]) != state["epoch"]:
        what = f"at most train_config.epochs ({config.epochs}), with one history record per epoch"
        raise refuse(file, "epoch", what, shown=f"{state['epoch']}, {len(state['history'])} records")
    return model_config, config


class Described:
    """What a model file's metadata (`.meta`) says about it, for core.checkpoint.Checkpoint and
    inference's TrainedModel alike (no torch needed: ONNX files use it too)."""

    meta: dict  # the decoded metadata: one dict per key of META_KEYS

    @property
    def config(self) -> ModelConfig:
        """The ModelConfig the metadata describes."""
        return ModelConfig.from_dict(self.meta["model"])

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of the model's outputs."""
        return list(self.meta["dataset"]["classes"])

    @property
    def dataset(self) -> str:
        """The name of the dataset the model was trained on."""
        return self.meta["dataset"]["name"]
