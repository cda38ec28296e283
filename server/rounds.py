"""What a federated round is, apart from the loop that runs it.

:mod:`server.federation` runs rounds; :mod:`server.model_stages` drives extra
rounds (fine-tune, QAT) and queries after training. Both depend on this
module and not on each other's internals: the stage runner receives a
:class:`RoundRunner` and sees the run through :class:`FederationRun`, so
``model_stages`` never imports ``federation`` (no import cycle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from fedsqueeze.config import RunConfig
from fedsqueeze.ledger import Ledger, RoundRow

__all__ = ["RoundMode", "RoundRunner", "FederationRun", "sample_size", "sample_partitions"]


@dataclass(frozen=True)
class RoundMode:
    """How a round differs from a plain training round (the model-compression stages).

    ``masks`` (with their packed ``mask_payload``) pin pruned weights at zero
    on every client, in every decoded update and in the aggregate; ``qat``
    makes clients train the fake-quantized int8 graph; ``lr`` overrides the
    clients' learning rate.
    """

    phase: str = "train"
    masks: dict[str, torch.Tensor] | None = None
    mask_payload: bytes = b""
    qat: bool = False
    lr: float | None = None


class RoundRunner(Protocol):
    """Runs one federated round of the current run and records it.

    The round loop hands an implementation to the model-compression stages,
    which run their fine-tune and QAT rounds through it.
    """

    def __call__(self, round_: int, mode: RoundMode) -> RoundRow:
        """Run round ``round_`` in ``mode`` on the current global model.

        Parameters
        ----------
        round_ : int
            The round number (continues the training rounds' numbering).
        mode : RoundMode
            Phase, masks, QAT and learning-rate override of the round.

        Returns
        -------
        RoundRow
            The round's ledger row, already appended to the ledger; the
            run's global weights are updated in place.
        """
        ...


class FederationRun(Protocol):
    """The state of a running federation that the model-compression stages read and update.

    Attributes
    ----------
    cfg : RunConfig
        The validated run config.
    out_dir : Path
        Results directory of the run.
    weights : dict of str to torch.Tensor
        The current global model; the stages replace it (pruning) and the
        :class:`RoundRunner` advances it.
    ledger : Ledger or None
        The run's ledger (its last row is the last round run).
    """

    cfg: RunConfig
    out_dir: Path
    weights: dict[str, torch.Tensor]
    ledger: Ledger | None


def sample_size(num_nodes: int, cfg: RunConfig) -> int:
    """K, the number of clients a round trains: ``fraction-train`` of the nodes, at least ``min-train-nodes``."""
    return min(num_nodes, max(cfg.min_train_nodes, int(round(cfg.fraction_train * num_nodes))))


def sample_partitions(partitions: list[int], cfg: RunConfig, round_: int, k: int | None = None) -> list[int]:
    """The partition ids trained in ``round_``: a function of (seed, round, candidates) only.

    ``k`` defaults to :func:`sample_size` of the candidates; it is capped at their number.
    """
    k = sample_size(len(partitions), cfg) if k is None else min(k, len(partitions))
    rng = np.random.default_rng([cfg.seed, round_, 0xC11E])
    return sorted(rng.choice(sorted(partitions), size=k, replace=False).tolist())
