"""Defaults in one place: the frozen dataclasses that describe a model and a training run.

They import nothing heavy, so the CLI reads its defaults (and `--help` shows them) without loading
torch. Checkpoints store them as plain dicts (to_dict / from_dict).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import DensaError


@dataclass(frozen=True)
class ModelConfig:
    model: str = "mlp"  # architecture: mlp
    hidden: tuple[int, ...] = (512,)  # widths of the hidden layers, input to output
    activation: str = "relu"  # relu | gelu | silu | tanh
    dropout: float = 0.0  # probability, after each hidden activation; 0 = none
    in_features: int = 784  # 28 x 28 pixels
    num_classes: int = 10
    normalize: tuple[float, float] | None = None  # (mean, std) applied inside the model; None = x/255 only

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "hidden" in known:
            known["hidden"] = tuple(known["hidden"])
        if known.get("normalize") is not None:
            known["normalize"] = tuple(known["normalize"])
        return cls(**known)


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "mnist"  # a name from densa.data.DATASETS
    epochs: int = 5  # passes over the training set
    batch_size: int = 128  # images per optimiser step
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0  # seeds the weight init (torch.manual_seed) and the shuffling generator

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def check(self) -> None:
        if self.epochs < 1:
            raise DensaError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise DensaError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise DensaError(f"learning rate must be positive, got {self.lr}")
