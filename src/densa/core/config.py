"""Defaults in one place: the frozen dataclasses that describe a model and a training run, and presets.

They import nothing heavy, so the CLI reads its defaults (and `--help` shows them) without loading
torch. Checkpoints store them as plain dicts (to_dict / from_dict). A preset is a named dict of field
overrides on top of the dataclass defaults; explicit flags override the preset (see `resolve`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from .errors import DensaError

MODELS = ("mlp", "cnn")
ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "silu": "SiLU", "tanh": "Tanh"}  # name -> torch.nn class
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "onecycle", "cosine")
PRECISIONS = ("fp32", "bf16", "auto")
DEVICES = ("auto", "cpu", "cuda", "mps")


# Limits on what a file may describe: checked on its metadata before any tensor is allocated.
MAX_LAYERS = 16  # dense hidden layers
MAX_WIDTH = 65536  # units in one dense hidden layer
MAX_CONV_BLOCKS = 4
MAX_CHANNELS = 4096  # channels of one conv block
MIN_CLASSES, MAX_CLASSES = 2, 1000


class FieldError(DensaError):
    """A setting is not what densa accepts: `field` must be `what`, got `value`."""

    def __init__(self, field: str, what: str, value):
        self.field, self.what, self.value = field, what, value
        super().__init__(f"{field or 'the value'} must be {what} (got {shown(value)})")


def shown(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Rule:
    """What one setting must be: `test(value)` holds; said as "<field> must be <what>"."""

    what: str
    test: Callable[[object], bool]

    def check(self, field: str, value) -> None:
        if not self.test(value):
            raise FieldError(field, self.what, value)


def one_of(names) -> Rule:
    return Rule(f"one of {', '.join(names)}", lambda v: isinstance(v, str) and v in names)


def int_list(least: int, most: int, top: int) -> Rule:
    def test(v) -> bool:
        ok = isinstance(v, (list, tuple)) and least <= len(v) <= most
        return ok and all(is_int(x) and 1 <= x <= top for x in v)

    return Rule(f"a list of {least}..{most} positive ints <= {top}", test)


# the vocabulary of the rules below; the CLI checks its other flags with the same ones
POSITIVE_INT = Rule("a positive integer", lambda v: is_int(v) and v >= 1)
NONNEG_INT = Rule("an integer >= 0", lambda v: is_int(v) and v >= 0)
POSITIVE = Rule("a positive number", lambda v: is_number(v) and v > 0)
NONNEG = Rule("a number >= 0", lambda v: is_number(v) and v >= 0)
PROBABILITY = Rule("a number in [0, 1)", lambda v: is_number(v) and 0 <= v < 1)
FRACTION = Rule("a fraction in (0, 1), e.g. 0.1", lambda v: is_number(v) and 0 < v < 1)
BOOL = Rule("true or false", lambda v: isinstance(v, bool))
NAME = Rule("a name of 1..100 characters", lambda v: isinstance(v, str) and 0 < len(v) <= 100)


def _normalize_ok(v) -> bool:
    if v is None:
        return True
    ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(map(is_number, v))
    return ok and abs(v[0]) <= 1e3 and 1e-6 <= v[1] <= 1e3


MODEL_RULES = {
    # MODELS read when checking, not when this table is built: a test adds a model name for a while
    "model": Rule(one_of(MODELS).what, lambda v: isinstance(v, str) and v in MODELS),
    "hidden": int_list(0, MAX_LAYERS, MAX_WIDTH),
    "activation": one_of(ACTIVATIONS),
    "dropout": PROBABILITY,
    "channels": int_list(1, MAX_CONV_BLOCKS, MAX_CHANNELS),
    "in_features": Rule("784 (28 x 28 pixels)", lambda v: is_int(v) and v == 784),
    "num_classes": Rule(
        f"an int in {MIN_CLASSES}..{MAX_CLASSES}", lambda v: is_int(v) and MIN_CLASSES <= v <= MAX_CLASSES
    ),
    "normalize": Rule("null or [mean, std]: finite numbers with 0 < std <= 1000", _normalize_ok),
}


@dataclass(frozen=True)
class ModelConfig:
    model: str = "mlp"  # architecture: mlp | cnn
    hidden: tuple[int, ...] = (512,)  # dense hidden widths (mlp: all layers; cnn: the head after the convs)
    activation: str = "relu"  # relu | gelu | silu | tanh
    dropout: float = 0.0  # probability in [0, 1), after each dense hidden activation; 0 = none
    channels: tuple[int, ...] = (32, 64)  # cnn only: conv widths, one block (conv-BN-act-pool) each
    in_features: int = 784  # 28 x 28 pixels
    num_classes: int = 10
    normalize: tuple[float, float] | None = None  # (mean, std) applied inside the model; None = x/255 only

    def __post_init__(self):
        """Each field checked (type, range, size) against MODEL_RULES; lists become tuples."""
        for name, rule in MODEL_RULES.items():
            rule.check(name, getattr(self, name))
        normalize = None if self.normalize is None else tuple(map(float, self.normalize))
        tidy = {"hidden": tuple(self.hidden), "channels": tuple(self.channels), "normalize": normalize}
        for name, value in {**tidy, "dropout": float(self.dropout)}.items():
            object.__setattr__(self, name, value)  # frozen: the one place a field is set after init

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> ModelConfig:
        """The config a file describes, each field checked (type, range, size) before anything is built.

        Missing fields take their defaults and unknown ones are ignored; a bad one raises FieldError."""
        if not isinstance(d, dict):
            raise FieldError("", "a JSON object of model settings", d)
        return cls(**{k: v for k, v in d.items() if k in MODEL_RULES})


def _typed(name: str, value, default) -> None:
    """A setting read from a file must have its default's type (FieldError otherwise)."""
    if isinstance(default, (bool, str)):
        ok = type(value) is type(default) and len(str(value)) <= 100
    elif isinstance(default, int):
        ok = is_int(value) and abs(value) <= 2**62
    else:
        ok = is_number(value)
    if not ok:
        kinds = {bool: "true or false", str: "a string", int: "an int", float: "a finite number"}
        raise FieldError(name, kinds[type(default)], value)


TRAIN_RULES = {
    "dataset": NAME,
    "epochs": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "lr": POSITIVE,
    "seed": NONNEG_INT,
    "optimizer": one_of(OPTIMIZERS),
    "momentum": NONNEG,
    "nesterov": BOOL,
    "weight_decay": NONNEG,
    "schedule": one_of(SCHEDULES),
    "warmup": PROBABILITY,
    "label_smoothing": PROBABILITY,
    "shift": NONNEG_INT,
    "flip": BOOL,
    "rotate": Rule("a number of degrees in [0, 45]", lambda v: is_number(v) and 0 <= v <= 45),
    "scale": Rule("a number in [0, 0.5]", lambda v: is_number(v) and 0 <= v <= 0.5),
    "val_split": Rule("a fraction in [0, 1) (0 = none)", PROBABILITY.test),
    "early_stop": NONNEG_INT,
    "precision": one_of(PRECISIONS),
    "device": one_of(DEVICES),
}


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "mnist"  # a name from densa.core.data.DATASETS
    epochs: int = 5  # passes over the training set
    batch_size: int = 128  # images per optimiser step
    lr: float = 1e-3  # peak learning rate
    seed: int = 0  # seeds the weight init (torch.manual_seed), shuffling, augmentation and the val split
    optimizer: str = "adam"  # adam | adamw | sgd
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0  # L2 (adam, sgd) or decoupled (adamw) decay
    schedule: str = "constant"  # constant | onecycle (linear up, linear down to 0) | cosine (to 0)
    warmup: float = 0.0  # fraction of all steps spent ramping the LR linearly up from 0
    label_smoothing: float = 0.0  # in [0, 1)
    shift: int = 0  # augmentation: random translation of each training image by up to +-shift pixels
    flip: bool = False  # augmentation: mirror each training image left-right with probability 1/2
    rotate: float = 0.0  # augmentation: random rotation of each training image by up to +-rotate degrees
    scale: float = 0.0  # augmentation: random zoom of each training image by a factor in [1-scale, 1+scale]
    val_split: float = 0.0  # fraction of the training set held out for validation; 0 = none
    early_stop: int = 0  # stop after this many epochs without a lower val loss; 0 = never
    precision: str = "fp32"  # fp32 | bf16 (autocast) | auto (bf16 only where it is fast, else fp32)
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | mps

    def __post_init__(self):
        """Each field checked against TRAIN_RULES (FieldError), then the rules between fields."""
        for name, rule in TRAIN_RULES.items():
            rule.check(name, getattr(self, name))
        if self.nesterov and not (self.optimizer == "sgd" and self.momentum > 0):
            raise DensaError("Nesterov needs --optimizer sgd with a --momentum above 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def typed(cls, d) -> dict:
        """The fields a file gives (unknown ones dropped), each of its default's type (FieldError)."""
        if not isinstance(d, dict):
            raise FieldError("", "a JSON object of training settings", d)
        known = {k: v for k, v in d.items() if k in TRAIN_RULES}
        for k, v in known.items():
            _typed(k, v, getattr(cls, k))
        return known

    @classmethod
    def from_dict(cls, d) -> TrainConfig:
        """The config a file describes: types checked by `typed`, values by the constructor."""
        return cls(**cls.typed(d))


# The tutorial's recipe is the dataclass defaults; the others were chosen with --val-split 0.1 only
# (the test set was never used for the choice). Results and timings: docs/benchmarks/presets.md.
# fast: the most val accuracy for about two epochs of the seed network's arithmetic (seed 0, val acc after
# the last epoch): 784-256-256-10 x 3 epochs 0.9802, 784-384-10 x 3 0.9802 (dearer), 784-512-10 x 2
# 0.9760-0.9772 (peak LR 4e-3..8e-3), 784-256-10 x 3 0.9782. Label smoothing 0.1 was worth +0.3 (256-256 x 3
# without it: 0.9772), standardising the input +0.9 (512 x 2: 0.9623 -> 0.9715); the seed recipe: 0.9725.
# mlp: random rotations (+-10 degrees) and zooms (+-10%) on top of its shifts lowered the val acc after its
# 8 epochs (0.9890 -> 0.9873): too much augmentation for so few epochs.
PRESETS: dict[str, dict] = {
    "seed": {},
    "fast": {
        "hidden": (256, 256),
        "normalize": (0.1307, 0.3081),
        "optimizer": "adam",
        "lr": 4e-3,
        "batch_size": 256,
        "schedule": "onecycle",
        "warmup": 0.1,
        "label_smoothing": 0.1,
        "epochs": 3,
    },
    "mlp": {
        "hidden": (1024, 1024),
        "dropout": 0.1,
        "optimizer": "adamw",
        "weight_decay": 0.05,
        "lr": 4e-3,
        "batch_size": 256,
        "schedule": "onecycle",
        "warmup": 0.2,
        "label_smoothing": 0.1,
        "shift": 2,
        "epochs": 8,
    },
    "cnn": {
        "model": "cnn",
        "channels": (16, 32, 64),
        "hidden": (128,),
        "dropout": 0.2,
        "optimizer": "adamw",
        "weight_decay": 0.05,
        "lr": 3e-3,
        "batch_size": 256,
        "schedule": "onecycle",
        "warmup": 0.2,
        "label_smoothing": 0.1,
        "shift": 2,
        "epochs": 10,
    },
}


# A preset's values that differ by dataset (chosen the same way, on a 10% validation split). Fashion-MNIST's
# clothes fill the frame: random shifts of 2 px cost the MLP more than they help it, and it does better at a
# lower peak LR (val acc 0.905 at 4e-3 vs 0.911 at 1e-3; 30 epochs or more dropout did not help). The CNN
# gains from 1 px shifts, left-right mirroring and 15 epochs (val acc 0.922 -> 0.926).
PRESET_DATASET_TWEAKS: dict[tuple[str, str], dict] = {
    ("mlp", "fashion-mnist"): {"shift": 0, "lr": 1e-3, "epochs": 15},
    ("cnn", "fashion-mnist"): {"shift": 1, "flip": True, "epochs": 15},
}


def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


# what `densa train` takes as flags: a preset's name and every field of the two configs
SETTINGS = ("preset", *field_names(ModelConfig), *field_names(TrainConfig))


def resolve(preset: str = "seed", **overrides) -> tuple[ModelConfig, TrainConfig]:
    """The preset's values (with its tweaks for the dataset) on top of the defaults, then `overrides`.

    None values in `overrides` are ignored, so CLI flags that were not given can be passed as None.
    """
    if preset not in PRESETS:
        raise DensaError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    dataset = given.get("dataset", TrainConfig.dataset)
    values = {**PRESETS[preset], **PRESET_DATASET_TWEAKS.get((preset, dataset), {}), **given}
    model_keys, train_keys = field_names(ModelConfig), field_names(TrainConfig)
    unknown = sorted(set(values) - set(model_keys) - set(train_keys))
    if unknown:
        raise DensaError(f"unknown setting(s) {', '.join(unknown)}")
    model = ModelConfig(**{k: v for k, v in values.items() if k in model_keys})
    config = TrainConfig(**{k: v for k, v in values.items() if k in train_keys})
    return model, config


@dataclass(frozen=True)
class SweepConfig:
    """`densa sweep`: the settings every trial of a study shares, and how a worker searches."""

    dataset: str = "mnist"
    model: str = "mlp"  # mlp | cnn: picks the search space and the base preset of the same name
    epochs: int = 0  # per trial; 0 = the base preset's
    val_split: float = 0.1  # the held-out fraction of the training set whose accuracy is maximised
    seed: int = 0  # every trial's training seed (init, shuffling, the val split)
    precision: str = "fp32"  # fixed for the whole study
    pruner: str = "median"  # median | halving | none
    startup_trials: int = 5  # median pruner: trials that must complete before any is pruned
    heartbeat: int = 60  # seconds between a running trial's heartbeats; silent for 2x this = FAIL

    def __post_init__(self):
        for name, rule in SWEEP_RULES.items():
            rule.check(name, getattr(self, name))


PRUNERS = ("median", "halving", "none")
SWEEP_RULES = {
    "dataset": NAME,
    "model": one_of(MODELS),
    "epochs": Rule("an integer >= 0 (0 = the preset's)", NONNEG_INT.test),
    "val_split": FRACTION,
    "seed": NONNEG_INT,
    "precision": one_of(PRECISIONS),
    "pruner": one_of(PRUNERS),
    "startup_trials": NONNEG_INT,
    "heartbeat": POSITIVE_INT,
}
