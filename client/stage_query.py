"""Model-compression queries a client answers with its local data (Flower-free).

After the federation the server compresses the global model; two of its
stages need statistics only the clients' data can give:

* ``calibrate``: activation ``(min, max)`` ranges of the float model, for
  static int8 quantization (the server merges them: min of mins, max of maxes);
* ``scores``: first-order Taylor importance ``sum |w * dL/dw|`` per weight,
  for importance-based pruning (the server adds them).

Only these small summaries leave the client, never data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import compression
from client.local_round import client_data, client_seed
from client.records import OMIT_DEFAULT, from_record, to_record
from fedsqueeze.datasets import DEFAULT_DATASET
from fedsqueeze.device import resolve_device
from fedsqueeze.models import build_model
from fedsqueeze.train import on_device
from fedsqueeze.modelzip import observe_ranges, taylor_scores

__all__ = ["StageQuery", "OPS", "answer_calibrate", "answer_scores", "ranges_to_metrics", "metrics_to_ranges"]

OPS = ("calibrate", "scores")
_QUERY_STREAM = 2**31 - 1  # a "round" no training round uses: stage queries get their own random stream


@dataclass(frozen=True)
class StageQuery:
    """What the server asks (the ``config`` record of a stage query)."""

    op: str
    seed: int
    model: str
    partition: str
    dirichlet_alpha: float
    shards_per_client: int
    data_dir: str
    calibration_images: int
    dataset: str = field(default=DEFAULT_DATASET, metadata=OMIT_DEFAULT)
    device: str = field(default="cpu", metadata=OMIT_DEFAULT)  # Taylor scores; calibration observes on the CPU

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> StageQuery:
        """Build from a ConfigRecord mapping with kebab-case keys."""
        query = from_record(cls, record, "stage query")
        if query.op not in OPS:
            raise ValueError(f"unknown stage query op {query.op!r}; expected one of {OPS}")
        return query

    def to_record(self) -> dict[str, Any]:
        """Kebab-case mapping for a ConfigRecord."""
        return to_record(self)


def _local_sample(q: StageQuery, partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``calibration_images`` of this client's examples, in a seeded order."""
    x, y = client_data(q, partition_id, num_partitions)
    gen = torch.Generator().manual_seed(client_seed(q.seed, _QUERY_STREAM, partition_id))
    idx = torch.randperm(len(y), generator=gen)[: q.calibration_images]
    return x[idx], y[idx]


def _float_model(q: StageQuery, model_payload: bytes) -> torch.nn.Module:
    model = build_model(q.model, q.dataset)
    template = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(compression.decode(model_payload, expected=template))
    return model.eval()


def answer_calibrate(q: StageQuery, model_payload: bytes, partition_id: int, num_partitions: int) -> dict[str, float]:
    """Activation ranges of the received model on local data, flattened for a MetricRecord."""
    x, _ = _local_sample(q, partition_id, num_partitions)
    ranges = observe_ranges(_float_model(q, model_payload), x)
    return {**ranges_to_metrics(ranges), "num-images": len(x)}


def answer_scores(q: StageQuery, model_payload: bytes, partition_id: int, num_partitions: int) -> bytes:
    """Taylor scores of the received model on local data (computed on ``q.device``), as a lossless fp32 payload."""
    device = resolve_device(q.device)
    x, y = _local_sample(q, partition_id, num_partitions)
    model = _float_model(q, model_payload)
    with on_device(model, device):
        scores = taylor_scores(model, x.to(device), y.to(device))
    return compression.encode({k: v.cpu() for k, v in scores.items()}, "fp32")


def ranges_to_metrics(ranges: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """``{node: (lo, hi)}`` → ``{"node.min": lo, "node.max": hi}``."""
    out: dict[str, float] = {}
    for name, (lo, hi) in ranges.items():
        out[f"{name}.min"], out[f"{name}.max"] = float(lo), float(hi)
    return out


def metrics_to_ranges(metrics: Mapping[str, Any], keys: Sequence[str] | None = None) -> dict[str, tuple[float, float]]:
    """Inverse of :func:`ranges_to_metrics` (ignores other keys).

    Raises
    ------
    ValueError
        A range is missing its min or max, is not finite, or has min > max.
    """
    names = sorted({k.rsplit(".", 1)[0] for k in metrics if k.endswith((".min", ".max"))})
    out = {}
    for name in names:
        lo, hi = metrics.get(f"{name}.min"), metrics.get(f"{name}.max")
        if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)):
            raise ValueError(f"range {name!r} lacks a numeric min or max")
        if not (float("-inf") < lo <= hi < float("inf")):
            raise ValueError(f"range {name!r} = ({lo}, {hi}) is not a finite interval")
        out[name] = (float(lo), float(hi))
    if keys is not None and set(out) != set(keys):
        raise ValueError(f"ranges name {sorted(out)}, expected {sorted(keys)}")
    return out
