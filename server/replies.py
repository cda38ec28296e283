"""Screening of client replies before anything reaches the aggregate.

Every reply is checked in order — Flower error, records present, payload
size against the announced pipeline's bound, header pipeline equal to the
announced one, strict decode with the model's exact names and shapes (which
also rejects NaN/Inf), ``num-examples`` sane, update norm within the bound —
and either accepted or rejected with a short reason tag (``crash``,
``protocol``, ``size``, ``pipeline``, ``payload``, ``examples``, ``norm``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import Message

import compression
from fedsqueeze.protocol.instructions import ENCODE_S, NUM_EXAMPLES, REL_DISTORTION, TRAIN_LOSS, TRAIN_S
from fedsqueeze.protocol.messages import METRICS, UPDATE, ProtocolError, record_packed, record_payloads, unpack_reply

__all__ = ["Accepted", "Rejected", "screen_reply", "payload_bound", "reply_payload_bytes"]


def payload_bound(spec: compression.PipelineSpec, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> int:
    """Largest payload a client may send for ``spec`` and this model, in bytes.

    The pipeline's own output for a dense standard-normal update of the
    model's shapes, raised to the bound each of the pipeline's registered
    stages declares (:meth:`compression.Stage.max_payload_bytes`; e.g.
    pruning by threshold may keep every value, so at least the float32
    encoding), with 50 % + 4 KiB of slack for data-dependent coding (gap
    codes, Huffman). Checked before anything is decoded.
    """
    gen = torch.Generator().manual_seed(seed)
    probe = {k: torch.randn(shape, generator=gen) for k, shape in shapes.items()}
    size = len(compression.encode(probe, spec, round=1, seed=seed, reference={} if spec.coder == "context" else None))
    for stage in compression.pipeline_stages(spec):
        declared = stage.max_payload_bytes(spec, shapes)
        if declared is not None:
            size = max(size, int(declared))
    return int(size * 1.5) + 4096


@dataclass(frozen=True)
class Accepted:
    node_id: int
    update: dict[str, torch.Tensor]
    num_examples: int
    payload_bytes: int
    rel_distortion: float | None
    train_loss: float
    train_s: float = 0.0  # the client's own timings, for the ledger's time breakdown
    encode_s: float = 0.0
    payload: bytes = b""  # kept for stages the server aggregates in the compressed domain (FetchSGD)


@dataclass(frozen=True)
class Rejected:
    node_id: int
    tag: str
    reason: str

    def __str__(self) -> str:
        return f"{self.tag}@{self.node_id}"


def screen_reply(
    msg: Message,
    spec: compression.PipelineSpec,
    shapes: dict[str, tuple[int, ...]],
    *,
    max_payload_bytes: int,
    max_examples: int,
    max_update_norm: float = 0.0,
    reference: compression.Reference | None = None,
    packed: bool = False,
) -> Accepted | Rejected:
    """Validate and decode one train reply.

    Parameters
    ----------
    spec
        The pipeline the server announced; the payload header must carry it.
    shapes
        The model's parameter names and shapes; the update must match exactly.
    max_payload_bytes
        Upper bound on a well-formed payload (checked before decoding).
    max_examples
        Upper bound on the reported ``num-examples``.
    max_update_norm
        Reject updates whose global L2 norm exceeds this (0 = no bound).
    reference
        What a ``coder=context`` payload was coded against
        (:func:`fedsqueeze.protocol.reference.uplink_reference`).
    packed
        The run's ``reply-format`` is ``"packed"``: the metrics travel in
        front of the payload (:func:`fedsqueeze.protocol.messages.unpack_reply`).
    """
    node = msg.metadata.src_node_id
    if msg.has_error():
        return Rejected(node, "crash", f"client error {msg.error.code}: {msg.error.reason[:200]}")
    try:
        payload, metrics = _parts(msg, packed)
        num_examples = metrics.get(NUM_EXAMPLES)
    except (ProtocolError, KeyError, TypeError) as exc:
        return Rejected(node, "protocol", str(exc)[:200])
    if len(payload) > max_payload_bytes:
        return Rejected(node, "size", f"payload {len(payload)} B > bound {max_payload_bytes} B")
    if not isinstance(num_examples, int) or not 0 < num_examples <= max_examples:
        return Rejected(node, "examples", f"num-examples {num_examples!r} not in (0, {max_examples}]")
    try:
        sent_spec = compression.peek_spec(payload)
        if sent_spec != spec:
            return Rejected(node, "pipeline", f"payload uses {sent_spec}, announced {spec}")
        update = compression.decode(payload, expected=shapes, reference=reference)
    except compression.PayloadError as exc:
        return Rejected(node, "payload", str(exc)[:200])
    if max_update_norm > 0:
        norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in update.values()))
        if not norm <= max_update_norm:
            return Rejected(node, "norm", f"update norm {norm:.4g} > bound {max_update_norm:g}")
    distortion = metrics.get(REL_DISTORTION)
    loss = metrics.get(TRAIN_LOSS, float("nan"))
    return Accepted(
        node_id=node,
        update=update,
        num_examples=num_examples,
        payload_bytes=len(payload),
        rel_distortion=float(distortion) if isinstance(distortion, (int, float)) else None,
        train_loss=float(loss) if isinstance(loss, (int, float)) else float("nan"),
        train_s=_seconds(metrics.get(TRAIN_S)),
        encode_s=_seconds(metrics.get(ENCODE_S)),
        payload=payload,
    )


def _parts(msg: Message, packed: bool) -> tuple[bytes, Mapping[str, Any]]:
    """The reply's payload and metrics, in either reply format; ProtocolError if it has other records."""
    content = msg.content
    if packed:
        if UPDATE not in content.config_records:
            raise ProtocolError(f"a packed reply needs the config record {UPDATE!r}, has {list(content.keys())}")
        return unpack_reply(record_packed(content.config_records[UPDATE]))
    if UPDATE not in content.array_records or METRICS not in content.metric_records:
        raise ProtocolError(f"reply needs records {UPDATE!r} and {METRICS!r}, has {list(content.keys())}")
    payloads = record_payloads(content.array_records[UPDATE], max_items=1)
    if len(payloads) != 1:
        raise ProtocolError(f"expected one payload, got {len(payloads)}")
    return payloads[0], content.metric_records[METRICS]


def reply_payload_bytes(msg: Message, packed: bool = False) -> int:
    """Length of the FedSqueeze payload a reply carries (a packed reply's metrics header not counted), 0 if it
    has none that the protocol allows."""
    if msg.has_error():
        return 0
    try:
        if packed:
            return len(_parts(msg, True)[0])
        if UPDATE not in msg.content.array_records:
            return 0
        return sum(map(len, record_payloads(msg.content.array_records[UPDATE], max_items=1)))
    except ProtocolError:
        return 0


def _seconds(value: Any) -> float:
    """A client-reported duration, or 0.0 when missing or not a finite non-negative number."""
    return float(value) if isinstance(value, (int, float)) and 0.0 <= value < float("inf") else 0.0
