"""The networks: an MLP built from a list of layer sizes, and build_model(config) for checkpoints.

Models take images scaled to [0, 1] — (N, 28, 28), (N, 1, 28, 28) or (N, 784) — and return logits
(N, classes). Softmax and the loss live outside the model, which keeps export and predict_proba simple.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .errors import DensaError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """Linear layers of the given sizes with an activation (and optional dropout) between them.

    MLP([784, 512, 10]) is the tutorial's network: Linear(784, 512) -> ReLU -> Linear(512, 10).
    """

    def __init__(self, sizes=(784, 512, 10), activation: str = "relu", dropout: float = 0.0, normalize=None):
        super().__init__()
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise DensaError(f"MLP sizes must be two or more positive integers, got {list(sizes)}")
        if activation not in ACTIVATIONS:
            raise DensaError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        self.sizes = [int(s) for s in sizes]
        self.normalize = tuple(normalize) if normalize is not None else None
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(self.sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.normalize is not None:
            mean, std = self.normalize
            x = (x - mean) / std
        return self.net(x)


def build_model(config: ModelConfig) -> nn.Module:
    if config.model == "mlp":
        sizes = [config.in_features, *config.hidden, config.num_classes]
        return MLP(sizes, config.activation, config.dropout, config.normalize)
    raise DensaError(f"unknown model {config.model!r}; choose mlp")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
