"""Aggregation of decoded updates and the server optimizer (FedAvg / FedAvgM / FedAdam).

Pure functions over explicit state, so a checkpoint can save and restore the
optimizer exactly. Flower's own ``FedAvgM``/``FedAdam`` keep their moments in
private attributes and aggregate whole models, not compressed deltas; the
update rules here follow the same papers (Hsu et al. 2019; Reddi et al. 2021).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["weighted_mean", "ServerOptimizer"]

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


@dataclass
class ServerOptimizer:
    """Applies the averaged client update to the global model.

    ``fedavg``: ``w += lr * d``; ``fedavgm``: ``m = beta*m + d; w += lr * m``;
    ``fedadam``: Adam moments on ``d`` with ``tau`` in the denominator.
    ``state`` holds the moment tensors (mutated by :meth:`step`).
    """

    kind: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    state: dict[str, Tensors] = field(default_factory=dict)

    def step(self, weights: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> Tensors:
        """Return the new global weights; updates ``self.state`` in place."""
        if self.kind == "fedavg":
            direction = dict(delta)
        elif self.kind == "fedavgm":
            m = self.state.setdefault("m", {k: torch.zeros_like(v) for k, v in delta.items()})
            for k, d in delta.items():
                m[k].mul_(self.momentum).add_(d)
            direction = m
        elif self.kind == "fedadam":
            m = self.state.setdefault("m", {k: torch.zeros_like(v) for k, v in delta.items()})
            v2 = self.state.setdefault("v", {k: torch.zeros_like(v) for k, v in delta.items()})
            direction = {}
            for k, d in delta.items():
                m[k].mul_(self.beta1).add_(d, alpha=1 - self.beta1)
                v2[k].mul_(self.beta2).addcmul_(d, d, value=1 - self.beta2)
                direction[k] = m[k] / (v2[k].sqrt() + self.tau)
        else:
            raise ValueError(f"unknown server optimizer {self.kind!r}")
        return {k: weights[k] + self.lr * direction[k] for k in weights}
