"""Aggregation of decoded updates: the example-weighted mean the server optimizer steps with.

The server optimizers themselves (FedAvg / FedAvgM / FedAdam and any
registered by a plugin) live in :mod:`fedsqueeze.optimizers`, where the run
config can validate their names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["weighted_mean"]

Tensors = dict[str, torch.Tensor]


def weighted_mean(updates: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> Tensors:
    """Example-weighted mean of updates, summed in the given order (determinism)."""
    if not updates or len(updates) != len(weights):
        raise ValueError("weighted_mean needs as many weights as updates, at least one")
    total = float(sum(weights))
    if not total > 0:
        raise ValueError("weighted_mean: weights must sum to > 0")
    out = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in updates[0].items()}
    for upd, w in zip(updates, weights):
        for k in out:
            out[k].add_(upd[k], alpha=w / total)
    return out
