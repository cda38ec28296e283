"""The models, registered by name; each is built for a dataset's input shape and number of classes.

* ``seed-cnn``: the ConvNet of the original brief (20,490 parameters on MNIST).
* ``mcmahan-cnn``: the CNN of McMahan et al. 2017 (1,663,370 parameters on MNIST).
* ``mlp-2nn``: the 784-200-200-10 MLP of the same paper (199,210 parameters on MNIST).

A registered factory is called as ``factory(input_shape=(C, H, W), num_classes=K)``
with the values of the run's dataset (:mod:`fedsqueeze.datasets`); the models take
``(N, *input_shape)`` float input and return ``K`` logits. On MNIST,
``(1, 28, 28)`` and 10 classes, they are exactly the models of the papers (same
layers, same initial weights for a seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .datasets import DEFAULT_DATASET, get_dataset

__all__ = ["MODELS", "build_model", "initial_state", "num_parameters"]


class SeedCNN(nn.Module):
    """The brief's ConvNet: conv C→16, conv 16→32 (3×3, pad 1), each with a 2×2 max-pool, fc →classes."""

    def __init__(self, *, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = _image_shape(input_shape)
        self.conv1 = nn.Conv2d(channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * (height // 4) * (width // 4), num_classes)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class McMahanCNN(nn.Module):
    """FedAvg paper CNN: two 5×5 convs (32, 64) with 2×2 max-pool, fc 512, fc →classes."""

    def __init__(self, *, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = _image_shape(input_shape)
        self.conv1 = nn.Conv2d(channels, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * (height // 4) * (width // 4), 512)
        self.fc2 = nn.Linear(512, num_classes)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class MLP2NN(nn.Module):
    """FedAvg paper 2NN: inputs-200-200-classes with ReLU (784-200-200-10 on MNIST)."""

    def __init__(self, *, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(math.prod(input_shape), 200)
        self.fc2 = nn.Linear(200, 200)
        self.fc3 = nn.Linear(200, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3 or min(input_shape[1:]) < 4:
        raise ValueError(f"this CNN needs (channels, height, width) input with height, width >= 4, got {input_shape}")
    return input_shape[0], input_shape[1], input_shape[2]


#: name -> ``factory(input_shape=..., num_classes=...)``; add an entry to register a model.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "seed-cnn": SeedCNN,
    "mcmahan-cnn": McMahanCNN,
    "mlp-2nn": MLP2NN,
}


def build_model(name: str, dataset: str = DEFAULT_DATASET) -> nn.Module:
    """Instantiate a registered model by name, for ``dataset``'s input shape and classes.

    Raises
    ------
    ValueError
        If ``name`` is not registered (or cannot take the dataset's input shape).
    fedsqueeze.datasets.DatasetError
        If ``dataset`` is not registered.
    """
    spec = get_dataset(dataset)
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return factory(input_shape=tuple(spec.input_shape), num_classes=spec.num_classes)


def initial_state(name: str, seed: int, dataset: str = DEFAULT_DATASET) -> dict[str, torch.Tensor]:
    """The model's initial weights for ``seed`` (and ``dataset``), identical in every process.

    Clients can rebuild the starting point from the run config instead of
    downloading it (used by delta downlinks).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name, dataset)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def num_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
