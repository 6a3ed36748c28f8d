"""The networks: an MLP built from a list of layer sizes, a small CNN, and build_model(config).

Models take images scaled to [0, 1] — (N, 28, 28), (N, 1, 28, 28) or (N, 784) — and return logits
(N, classes). Softmax and the loss live outside the model, which keeps export and predict_proba simple.
Each model remembers the ModelConfig that rebuilds it (`model.config`), so densa.save needs no
architecture spelled out; an MLP that does not start at 784 pixels (a CNN's head) has config None.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ACTIVATIONS, MODEL_RULES, ModelConfig
from .errors import DensaError

MONOTONE = {"relu", "tanh"}  # non-decreasing: act(max(x)) == max(act(x))


class MLP(nn.Module):
    """Linear layers of the given sizes with an activation (and optional dropout) between them.

    MLP([784, 512, 10]) is the tutorial's network: Linear(784, 512) -> ReLU -> Linear(512, 10).
    """

    def __init__(self, sizes=(784, 512, 10), activation: str = "relu", dropout: float = 0.0, normalize=None):
        super().__init__()
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise DensaError(f"MLP sizes must be two or more positive integers, got {list(sizes)}")
        check_layer_options(activation, dropout)
        self.sizes = [int(s) for s in sizes]
        self.normalize = tuple(normalize) if normalize is not None else None
        self.config = None
        if self.sizes[0] == 784:
            hidden, n = tuple(self.sizes[1:-1]), self.sizes[-1]
            self.config = ModelConfig(
                "mlp", hidden, activation, float(dropout), num_classes=n, normalize=self.normalize
            )
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(self.sizes) - 2:
                layers.append(getattr(nn, ACTIVATIONS[activation])())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.normalize is not None:
            mean, std = self.normalize
            x = (x - mean) / std
        return self.net(x)

    @property
    def last(self) -> nn.Linear:
        """The output layer: `forward(x) == last(body(x))`."""
        return self.net[-1]

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """What the last layer sees: `forward(x) == net[-1](body(x))`. (N, last hidden width) features."""
        x = x.flatten(1)
        if self.normalize is not None:
            mean, std = self.normalize
            x = (x - mean) / std
        return self.net[:-1](x)


class CNN(nn.Module):
    """Conv blocks, then a dense head: the image is reshaped to (N, 1, 28, 28) first.

    CNN(channels=(16, 32, 64), hidden=(128,)) (the cnn preset) is
        Conv2d(1, 16, 3, padding=1) -> BatchNorm2d -> ReLU -> MaxPool2d(2)    28x28 -> 14x14
        Conv2d(16, 32, 3, padding=1) -> BatchNorm2d -> ReLU -> MaxPool2d(2)   14x14 -> 7x7
        Conv2d(32, 64, 3, padding=1) -> BatchNorm2d -> ReLU -> MaxPool2d(2)   7x7 -> 3x3
        Flatten -> Linear(64*3*3, 128) -> ReLU -> Dropout -> Linear(128, classes)
    (the convolutions have no bias: the BatchNorm after each one has its own). For relu and tanh the
    modules run MaxPool2d before the activation, which computes the same function more cheaply.
    """

    def __init__(
        self,
        channels=(32, 64),
        hidden=(128,),
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
        normalize=None,
    ):
        super().__init__()
        check_layer_options(activation, dropout)
        if not 1 <= len(channels) <= 4 or any(int(c) < 1 for c in channels):
            raise DensaError(f"CNN channels must be 1 to 4 positive integers, got {list(channels)}")
        self.normalize = tuple(normalize) if normalize is not None else None
        self.config = ModelConfig(
            "cnn",
            tuple(int(h) for h in hidden),
            activation,
            float(dropout),
            tuple(int(c) for c in channels),
            num_classes=int(num_classes),
            normalize=self.normalize,
        )
        layers: list[nn.Module] = []
        c_in, side = 1, 28
        for c in channels:
            act, pool = getattr(nn, ACTIVATIONS[activation])(), nn.MaxPool2d(2)
            # max-pooling commutes with a non-decreasing activation (relu, tanh): pooling first computes
            # the same function with the activation on a quarter of the values (~10% faster steps)
            pair = [pool, act] if activation in MONOTONE else [act, pool]
            layers += [
                nn.Conv2d(c_in, int(c), kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(int(c)),
                *pair,
            ]
            c_in, side = int(c), side // 2
        self.features = nn.Sequential(*layers)
        self.head = MLP([c_in * side * side, *hidden, num_classes], activation, dropout)
        # channels-last (NHWC) weights and inputs let oneDNN skip its layout conversions: measured ~30%
        # faster training steps on this project's CPU. Saved tensors are made contiguous again.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        if self.normalize is not None:
            mean, std = self.normalize
            x = (x - mean) / std
        return self.head(self.features(x))

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """What the last layer sees: `forward(x) == head.net[-1](body(x))`. (N, last hidden width)."""
        x = x.reshape(-1, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        if self.normalize is not None:
            mean, std = self.normalize
            x = (x - mean) / std
        return self.head.body(self.features(x))

    @property
    def last(self) -> nn.Linear:
        return self.head.last


def check_layer_options(activation: str, dropout: float) -> None:
    """The layer options by the same rules a ModelConfig is checked with (config.MODEL_RULES)."""
    for name, value in (("activation", activation), ("dropout", dropout)):
        MODEL_RULES[name].check(name, value)


def build_model(config: ModelConfig) -> nn.Module:
    """The network `config` describes; it keeps `config` itself as `.config`."""
    if config.model == "mlp":
        sizes = [config.in_features, *config.hidden, config.num_classes]
        model = MLP(sizes, config.activation, config.dropout, config.normalize)
    elif config.model == "cnn":
        model = CNN(
            config.channels,
            config.hidden,
            config.num_classes,
            config.activation,
            config.dropout,
            config.normalize,
        )
    else:
        raise DensaError(f"unknown model {config.model!r}; choose mlp or cnn")
    model.config = config
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
