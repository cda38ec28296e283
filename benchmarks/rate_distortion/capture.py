"""Real client updates of the McMahan CNN, reproducible from a seed.

An in-process FedAvg run with float32 uplink and downlink (the math of
``fedavg-fp32``: same partitions, client sampling rule, client seeds and
local training as the Flower federation, without the wire) records the
update of the first client sampled in each capture round, before
compression.  The captured round numbers are the atlas's "early / middle /
late" rounds.  It samples 5 clients per round (C = 0.05) rather than the
benchmark's 10, to keep the capture cheap on shared machines: the global
model after round ``r`` differs from the benchmark's, the kind of update
(one client's E = 5 local epochs from a partly trained model) does not.

Captures are written as ``.npz`` (float32, one array per tensor) to a cache
folder that is not committed; the same seed, settings and code give the
same arrays, so the atlas regenerates them when they are missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.local_round import client_data, client_seed
from fedsqueeze.config import RunConfig
from fedsqueeze.models import build_model, initial_state
from fedsqueeze.protocol.instructions import TrainInstruction
from fedsqueeze.train import state_delta, train
from server.aggregate import weighted_mean
from server.rounds import sample_partitions

log = logging.getLogger(__name__)

__all__ = ["CaptureSpec", "capture", "load_or_capture"]


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture: the run (seed, partition) and the rounds whose first client update is kept."""

    partition: str = "iid"
    shards_per_client: int = 2
    seed: int = 0
    rounds: tuple[int, ...] = (1, 3, 6)
    num_clients: int = 100
    fraction: float = 0.05
    local_epochs: int = 5
    batch_size: int = 10
    lr: float = 0.05
    model: str = "mcmahan-cnn"

    @property
    def label(self) -> str:
        part = "iid" if self.partition == "iid" else f"shards{self.shards_per_client}"
        return f"{self.model}__{part}__seed{self.seed}__e{self.local_epochs}"


def _instruction(spec: CaptureSpec, round_: int) -> TrainInstruction:
    return TrainInstruction(
        round=round_, seed=spec.seed, model=spec.model, partition=spec.partition, dirichlet_alpha=0.5,
        shards_per_client=spec.shards_per_client, local_epochs=spec.local_epochs, batch_size=spec.batch_size,
        lr=spec.lr, momentum=0.0, weight_decay=0.0, client_threads=1, data_dir="", uplink="fp32",
        downlink_mode="full", base_version=-1, target_version=round_)


def capture(spec: CaptureSpec) -> dict[int, dict[str, torch.Tensor]]:
    """Run FedAvg to ``max(spec.rounds)``; return ``{round: update of its first sampled client}``."""
    cfg = RunConfig.from_mapping({"seed": spec.seed, "fraction-train": spec.fraction,
                                  "min-available-nodes": spec.num_clients})
    weights = initial_state(spec.model, spec.seed)
    model = build_model(spec.model)
    out = {}
    for rnd in range(1, max(spec.rounds) + 1):
        ins = _instruction(spec, rnd)
        sampled = sample_partitions(list(range(spec.num_clients)), cfg, rnd)
        updates, sizes = [], []
        for pid in sampled:
            x, y = client_data(ins, pid, spec.num_clients)
            model.load_state_dict(weights)
            train(model, x, y, epochs=spec.local_epochs, batch_size=spec.batch_size, lr=spec.lr,
                  seed=client_seed(spec.seed, rnd, pid))
            trained = model.state_dict()
            updates.append(state_delta({k: trained[k] for k in weights}, weights))
            sizes.append(len(y))
            if rnd in spec.rounds and pid == sampled[0]:
                out[rnd] = {k: v.clone() for k, v in updates[-1].items()}
        delta = weighted_mean(updates, sizes)
        weights = {k: weights[k] + delta[k] for k in weights}
        log.info("capture %s: round %d done", spec.label, rnd)
    return out


def load_or_capture(spec: CaptureSpec, cache: Path) -> dict[int, dict[str, torch.Tensor]]:
    """The captured updates from ``cache/<label>/round<r>.npz``, capturing (and saving) missing ones."""
    folder = Path(cache) / spec.label
    files = {r: folder / f"round{r}.npz" for r in spec.rounds}
    if not all(f.exists() for f in files.values()):
        folder.mkdir(parents=True, exist_ok=True)
        got = capture(spec)
        for r, upd in got.items():
            with open(files[r], "wb") as fh:
                np.savez(fh, **{k: v.numpy() for k, v in upd.items()})
    out = {}
    for r, f in files.items():
        with np.load(f, allow_pickle=False) as data:
            out[r] = {k: torch.from_numpy(data[k].copy()) for k in data.files}
    return out
