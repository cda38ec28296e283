"""Deployable artifacts: ``torch.export`` programs saved as ``.pt2`` archives.

Why ``.pt2`` for every stage (float32, float16/bfloat16, int8): the archive
holds the graph (JSON) plus each plain tensor as raw bytes in its own dtype,
so an int8 weight costs one byte per entry on disk, and reloading needs no
Python class of ours (``torch.export.load(path).module()`` rebuilds the exact
program that was evaluated before saving). Every stage is measured in the
same container, so size ratios compare like with like.

Safety: plain tensors are read from raw bytes, not unpickled. Two parts of an
archive do go through ``torch.load``: tensor-subclass weights (torchao's
dynamic int8 ``Int8Tensor``) and the example inputs; for those
``torch.export.load`` tries ``weights_only=True`` and falls back to
``weights_only=False``. Load only artifacts you produced or trust.

Caveat from the torch docs: ``.pt2`` files are not guaranteed to load in
other torch versions; re-export from the float checkpoint when upgrading.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchao.quantization.pt2e import allow_exported_model_train_eval

from .quantize import export_module

__all__ = ["save_artifact", "load_artifact", "file_size"]


def save_artifact(model: nn.Module, path: str | os.PathLike, input_shape: Sequence[int] | None = None) -> Path:
    """Export ``model`` (dynamic batch) and write it to ``path`` (``.pt2``).

    The model is not mutated. Parent directories are created. The example
    input stored in the archive is two zero images (6 KB on MNIST), not real
    data, of ``input_shape`` (one example; default the dataset the model was
    exported for, else :func:`~fedsqueeze.modelzip.quantize.default_input_shape`).

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"save_artifact writes .pt2 archives, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = export_module(model, input_shape=input_shape)
    torch.export.save(program, path)
    return path


def load_artifact(path: str | os.PathLike) -> nn.Module:
    """Reload a ``.pt2`` artifact as a callable module in eval mode.

    ``.eval()``/``.train()`` are re-enabled on the returned graph module so
    ``fedsqueeze.train.evaluate`` accepts it. Only load trusted files (see
    the module docstring).
    """
    module = torch.export.load(Path(path)).module()
    allow_exported_model_train_eval(module)
    module.eval()
    return module


def file_size(path: str | os.PathLike) -> int:
    """Size of ``path`` on disk in bytes."""
    return os.path.getsize(path)
