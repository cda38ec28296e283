"""The message schema both apps speak. Payloads travel as raw uint8 Arrays.

Train instruction (server → client), ``message_type="train"``:
    ``config``  ConfigRecord: round, training hyper-parameters, the uplink
                pipeline, downlink mode and versions, fault injection.
    ``model``   ArrayRecord of compressed payloads ``p0, p1, ...``: one full
                model, or a chain of model deltas to apply in order.
    ``mask``    (fine-tune / QAT rounds of a pruned model) ArrayRecord with
                one payload: the masks, one bit per weight.
Train reply (client → server):
    ``update``  ArrayRecord ``{"payload": uint8}``: the compressed update.
    ``metrics`` MetricRecord: num-examples, train-loss, rel-distortion, ...
                (names in :mod:`fedsqueeze.protocol.instructions`)
Handshake (round 0), ``message_type="query"``: the reply's ``metrics`` carry
the node's ``partition-id`` so the server can sample deterministically.
Stage queries, ``message_type="query"`` with ``config["op"]``
(:class:`fedsqueeze.protocol.instructions.StageQuery`): ``calibrate`` (reply ``metrics``: activation
``<node>.min`` / ``<node>.max``) and ``scores`` (reply ``update``: Taylor
importance scores as an fp32 payload); the ``model`` record carries the
float32 global model.

A raw ``Array`` (``stype="raw"``) carries the payload bytes untouched: no
numpy header, no pickle.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Array, ArrayRecord

__all__ = [
    "CONFIG",
    "MODEL",
    "UPDATE",
    "METRICS",
    "MASK",
    "PAYLOAD",
    "payloads_record",
    "record_payloads",
    "ProtocolError",
]

CONFIG, MODEL, UPDATE, METRICS, PAYLOAD = "config", "model", "update", "metrics", "payload"
MASK = "mask"  # optional on train messages: the pruned model's masks (fedsqueeze.modelzip.masks)
_RAW = "raw"


class ProtocolError(ValueError):
    """A message does not have the records / arrays the protocol requires."""


def payloads_record(payloads: Sequence[bytes], names: Sequence[str] | None = None) -> ArrayRecord:
    """Wrap payload byte strings as raw uint8 Arrays (keys ``p0, p1, ...`` by default)."""
    names = names or [f"p{i}" for i in range(len(payloads))]
    return ArrayRecord(
        {name: Array(dtype="uint8", shape=(len(p),), stype=_RAW, data=bytes(p)) for name, p in zip(names, payloads)}
    )


def record_payloads(record: ArrayRecord, max_items: int = 100_000) -> list[bytes]:
    """The payload byte strings of a record built by :func:`payloads_record`, in order.

    Raises
    ------
    ProtocolError
        If an entry is not a raw uint8 vector or there are too many.
    """
    if len(record) > max_items:
        raise ProtocolError(f"{len(record)} payload arrays, at most {max_items} expected")
    out = []
    for name, arr in record.items():
        if arr.stype != _RAW or arr.dtype != "uint8" or len(arr.shape) != 1 or arr.shape[0] != len(arr.data):
            raise ProtocolError(f"array {name!r} is not a raw uint8 payload")
        out.append(bytes(arr.data))
    return out
