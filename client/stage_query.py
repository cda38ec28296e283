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

import torch

import compression
from client.local_round import client_data, client_seed
from fedsqueeze.device import resolve_device
from fedsqueeze.models import build_model
from fedsqueeze.modelzip import observe_ranges, taylor_scores
from fedsqueeze.protocol.instructions import StageQuery, ranges_to_metrics
from fedsqueeze.train import on_device

__all__ = ["answer_calibrate", "answer_scores"]

_QUERY_STREAM = 2**31 - 1  # a "round" no training round uses: stage queries get their own random stream


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
