"""The message schema both apps speak. Payloads travel as raw uint8 Arrays.

Train instruction (server → client), ``message_type="train"``:
    ``config``  ConfigRecord: round, training hyper-parameters, the uplink
                pipeline, downlink mode and versions, fault injection.
    ``model``   ArrayRecord of compressed payloads ``p0, p1, ...``: one full
                model, or a chain of model deltas to apply in order.
    ``mask``    (fine-tune / QAT rounds of a pruned model) ArrayRecord with
                one payload: the masks, one bit per weight.
Train instruction, ``instruction-format = "packed"``:
    ``config``  one ConfigRecord: the same keys, plus ``payloads`` (the model
                payloads as one list of bytes) and ``mask`` (bytes, when
                sent) (:func:`packed_instruction`). The ArrayRecord, one Array
                and one chunk per payload go, each with its header and
                SHA-256 name: ~470 bytes saved for one payload and ~300 for
                each further payload of a chain. Flower splits an Array into
                5 MB chunks but ships a ConfigRecord as one object: packed
                suits sparse payloads of kilobytes, not dense models of
                hundreds of MB.
Train reply (client → server), ``reply-format = "records"`` (the default):
    ``update``  ArrayRecord ``{"payload": uint8}``: the compressed update.
    ``metrics`` MetricRecord: num-examples, train-loss, rel-distortion, ...
                (names in :mod:`fedsqueeze.protocol.instructions`)
Train reply, ``reply-format = "packed"``:
    ``update``  ConfigRecord ``{"payload": bytes}``: a frame
                (:func:`pack_reply`), the five metrics in 21 bytes, then the
                payload. One Flower object instead of five: a MetricRecord,
                an ArrayRecord, its Array and the Array's chunk each carry a
                header and the RecordDict names each record by its SHA-256;
                this saves ~550 bytes a reply, 10 % of a ~5.4 KB sparse
                update's message (``tests/test_packed_reply.py``).
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

import struct
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedsqueeze.protocol.instructions import ENCODE_S, NUM_EXAMPLES, REL_DISTORTION, TRAIN_LOSS, TRAIN_S

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
    "pack_reply",
    "unpack_reply",
    "packed_record",
    "record_packed",
    "PAYLOADS",
    "packed_instruction",
    "train_content",
    "TrainParts",
    "train_parts",
]

CONFIG, MODEL, UPDATE, METRICS, PAYLOAD = "config", "model", "update", "metrics", "payload"
MASK = "mask"  # optional on train messages: the pruned model's masks (fedsqueeze.modelzip.masks)
PAYLOADS = "payloads"  # a packed train instruction's model payloads, a list of bytes in its config record
_RAW = "raw"
_FRAME_VERSION = 1
# version, num-examples, then train-loss, rel-distortion, train-s, encode-s as float32
_FRAME = struct.Struct("<BIffff")
_FRAME_FLOATS = (TRAIN_LOSS, REL_DISTORTION, TRAIN_S, ENCODE_S)


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


def pack_reply(payload: bytes, metrics: Mapping[str, float | int]) -> bytes:
    """A packed train reply: a 21-byte versioned metrics header, then ``payload`` untouched.

    ``metrics`` must hold exactly the train-reply metrics (``num-examples``
    an int in [0, 2**32), the four others numbers, sent as float32: about
    7 significant digits, plenty for a loss or a duration).

    Raises
    ------
    ValueError
        Other metric names, or a value that does not fit its field.
    """
    want = {NUM_EXAMPLES, *_FRAME_FLOATS}
    if set(metrics) != want:
        raise ValueError(f"a packed reply carries exactly the metrics {sorted(want)}, got {sorted(metrics)}")
    n = metrics[NUM_EXAMPLES]
    if not isinstance(n, int) or not 0 <= n < 2**32:
        raise ValueError(f"num-examples {n!r} is not an int in [0, 2**32)")
    floats = [metrics[k] for k in _FRAME_FLOATS]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in floats):
        raise ValueError(f"metrics {list(_FRAME_FLOATS)} must be numbers to fit a float32, got {floats!r}")
    try:
        head = _FRAME.pack(_FRAME_VERSION, n, *floats)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"a metric does not fit a float32: {exc}") from None
    return head + bytes(payload)


def unpack_reply(frame: bytes) -> tuple[bytes, dict[str, float | int]]:
    """Inverse of :func:`pack_reply`: ``(payload, metrics)``.

    Raises
    ------
    ProtocolError
        The frame is shorter than its header or has another version.
    """
    if len(frame) < _FRAME.size:
        raise ProtocolError(f"packed reply of {len(frame)} bytes is shorter than its {_FRAME.size}-byte header")
    version, n, *floats = _FRAME.unpack_from(frame)
    if version != _FRAME_VERSION:
        raise ProtocolError(f"packed reply version {version}, expected {_FRAME_VERSION}")
    # a NaN or Inf metric is passed on as such: the server screens the values it uses
    metrics: dict[str, float | int] = {NUM_EXAMPLES: n, **dict(zip(_FRAME_FLOATS, floats))}
    return bytes(frame[_FRAME.size:]), metrics


def packed_record(frame: bytes) -> ConfigRecord:
    """The ``update`` record of a packed reply: the frame as the one bytes value ``payload``."""
    return ConfigRecord({PAYLOAD: bytes(frame)})


def record_packed(record: ConfigRecord) -> bytes:
    """The frame a record built by :func:`packed_record` carries.

    Raises
    ------
    ProtocolError
        The record holds anything but one bytes value named ``payload``.
    """
    if list(record.keys()) != [PAYLOAD] or not isinstance(record[PAYLOAD], bytes):
        raise ProtocolError(f"a packed reply's record holds one bytes value {PAYLOAD!r}, got {list(record.keys())}")
    return record[PAYLOAD]


def packed_instruction(config: Mapping[str, Any], payloads: Sequence[bytes], mask: bytes | None = None
                       ) -> ConfigRecord:
    """A packed train instruction's one record: ``config``, the model payloads and the mask, if any.

    Raises
    ------
    ValueError
        ``config`` already uses the key ``payloads`` or ``mask``.
    """
    taken = [k for k in (PAYLOADS, MASK) if k in config]
    if taken:
        raise ValueError(f"a packed instruction's config cannot use the keys {taken}: they carry the payloads")
    record: dict[str, Any] = {**config, PAYLOADS: [bytes(p) for p in payloads]}
    if mask is not None:
        record[MASK] = bytes(mask)
    return ConfigRecord(record)


def train_content(config: Mapping[str, Any], payloads: Sequence[bytes], mask: bytes | None = None, *,
                  packed: bool = False, model_record: ArrayRecord | None = None) -> RecordDict:
    """A train instruction's content, packed (:func:`packed_instruction`) or in records; :func:`train_parts` reads either.

    ``model_record``: the payloads' ArrayRecord, when already built; messages
    that carry the same payloads can share one, which Flower then hashes once.
    """
    if packed:
        return RecordDict({CONFIG: packed_instruction(config, payloads, mask)})
    content = RecordDict({CONFIG: ConfigRecord(dict(config)),
                          MODEL: payloads_record(payloads) if model_record is None else model_record})
    if mask:
        content[MASK] = payloads_record([mask])
    return content


class TrainParts(NamedTuple):
    """What a train instruction carries, in either format."""

    config: ConfigRecord
    payloads: list[bytes]
    mask: bytes | None


def train_parts(content: RecordDict, max_items: int = 100_000) -> TrainParts:
    """The config, model payloads and mask of a train instruction, packed or in records.

    A packed instruction (:func:`packed_instruction`) is one ConfigRecord whose
    ``payloads`` key holds the payloads; otherwise the payloads are the
    ``model`` ArrayRecord (:func:`payloads_record`) and the mask the ``mask`` one.

    Raises
    ------
    ProtocolError
        No config record, a packed instruction that also has array records or
        whose payloads are not a list of bytes, or a records instruction
        without its ``model`` record.
    """
    if CONFIG not in content.config_records:
        raise ProtocolError(f"a train instruction needs a {CONFIG!r} ConfigRecord")
    config = content.config_records[CONFIG]
    if PAYLOADS not in config:
        if MODEL not in content.array_records:
            raise ProtocolError(f"a train instruction needs a {MODEL!r} ArrayRecord or packed {PAYLOADS!r}")
        masks = record_payloads(content.array_records[MASK], max_items=1) if MASK in content.array_records else [None]
        if not masks:
            raise ProtocolError(f"the {MASK!r} record holds no payload")
        return TrainParts(config, record_payloads(content.array_records[MODEL], max_items), masks[0])
    if len(content) != 1:
        raise ProtocolError(f"a packed train instruction is one record, got {list(content.keys())}")
    payloads, mask = config[PAYLOADS], config[MASK] if MASK in config else None
    if not isinstance(payloads, list) or not all(isinstance(p, bytes) for p in payloads):
        raise ProtocolError(f"a packed instruction's {PAYLOADS!r} must be a list of bytes")
    if len(payloads) > max_items:
        raise ProtocolError(f"{len(payloads)} payloads, at most {max_items} expected")
    if mask is not None and not isinstance(mask, bytes):
        raise ProtocolError(f"a packed instruction's {MASK!r} must be bytes")
    return TrainParts(config, list(payloads), mask)
