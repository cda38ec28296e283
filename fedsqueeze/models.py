"""The three MNIST models, registered by name.

* ``seed-cnn``: the ConvNet of the original brief (20,490 parameters).
* ``mcmahan-cnn``: the CNN of McMahan et al. 2017 (1,663,370 parameters).
* ``mlp-2nn``: the 784-200-200-10 MLP of the same paper (199,210 parameters).

All take ``(N, 1, 28, 28)`` float input and return logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["MODELS", "build_model", "initial_state", "num_parameters"]


class SeedCNN(nn.Module):
    """The brief's ConvNet: conv 1→16, conv 16→32 (3×3, pad 1), fc 1568→10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 7 * 7, 10)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class McMahanCNN(nn.Module):
    """FedAvg paper CNN: two 5×5 convs (32, 64) with 2×2 max-pool, fc 512, fc 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, 512)
        self.fc2 = nn.Linear(512, 10)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class MLP2NN(nn.Module):
    """FedAvg paper 2NN: 784-200-200-10 with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 200)
        self.fc2 = nn.Linear(200, 200)
        self.fc3 = nn.Linear(200, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "seed-cnn": SeedCNN,
    "mcmahan-cnn": McMahanCNN,
    "mlp-2nn": MLP2NN,
}


def build_model(name: str) -> nn.Module:
    """Instantiate a registered model by name.

    Raises
    ------
    ValueError
        If ``name`` is not registered.
    """
    try:
        return MODELS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None


def initial_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """The model's initial weights for ``seed``, identical in every process.

    Clients can rebuild the starting point from the run config instead of
    downloading it (used by delta downlinks).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def num_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
