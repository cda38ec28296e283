"""Fixtures for the modelzip tests: MNIST tensors and a briefly trained seed-cnn."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fedsqueeze.data import to_input
from fedsqueeze.models import build_model
from fedsqueeze.modelzip import single_thread
from fedsqueeze.train import train

TRAIN_IMAGES = 10_000


@pytest.fixture(scope="session")
def tensors(mnist):
    """``(x_train[:10k], y_train[:10k], x_test, y_test)`` as model inputs."""
    return (
        to_input(mnist.train_images[:TRAIN_IMAGES]),
        torch.from_numpy(np.array(mnist.train_labels[:TRAIN_IMAGES])).long(),
        to_input(mnist.test_images),
        torch.from_numpy(np.array(mnist.test_labels)).long(),
    )


@pytest.fixture(scope="session")
def _trained_seed_cnn(tensors):
    x, y, _, _ = tensors
    torch.manual_seed(0)
    model = build_model("seed-cnn")
    with single_thread():  # the machine is shared; one core is plenty for 157 steps
        train(model, x, y, epochs=1, batch_size=64, lr=0.05, momentum=0.9, seed=0)
    return model.eval()


@pytest.fixture()
def trained(_trained_seed_cnn):
    """A fresh copy of seed-cnn trained 1 epoch on 10k images (tests may mutate it)."""
    return copy.deepcopy(_trained_seed_cnn)
