"""What the server announces and a client obeys, and the names of what a client reports (Flower-free).

Each instruction is a frozen dataclass that travels as the ``config``
``ConfigRecord`` of a message (kebab-case keys, :mod:`.records`); the client
never guesses a setting the server did not announce. The replies' metric
names are declared here once, for the client that writes them and the server
that reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedsqueeze.datasets import DEFAULT_DATASET
from fedsqueeze.protocol.records import OMIT_DEFAULT, from_record, to_record

__all__ = ["FULL_MODEL", "TrainInstruction", "StageQuery", "STAGE_OPS", "ranges_to_metrics", "metrics_to_ranges",
           "NUM_EXAMPLES", "TRAIN_LOSS", "REL_DISTORTION", "TRAIN_S", "ENCODE_S", "REPLY_FORMATS", "INSTRUCTION_FORMATS",
           "PARTITION_ID", "NUM_PARTITIONS"]

#: ``base_version`` of a train instruction whose model payload is one whole model,
#: not a chain of deltas (``server.downlink``).
FULL_MODEL = -1

#: The model-compression queries a client answers (``client.stage_query`` answers them).
STAGE_OPS = ("calibrate", "scores")

# Metrics of a train reply. The server weighs updates by NUM_EXAMPLES (Flower's convention)
# and screens it; the others are reported in the ledger.
NUM_EXAMPLES, TRAIN_LOSS, REL_DISTORTION = "num-examples", "train-loss", "rel-distortion"
TRAIN_S, ENCODE_S = "train-s", "encode-s"  # the client's own wall-clock seconds
#: How a train reply carries those metrics (``reply-format``): a MetricRecord, or packed in
#: 21 bytes in front of the payload (:func:`fedsqueeze.protocol.messages.pack_reply`).
REPLY_FORMATS = ("records", "packed")
#: How a train instruction carries its model payloads (``instruction-format``): an ArrayRecord
#: beside the config record, or packed into the config record as one list of bytes
#: (:func:`fedsqueeze.protocol.messages.packed_instruction`). The client reads either.
INSTRUCTION_FORMATS = ("records", "packed")
# Metrics of a handshake reply: which partition of how many the node holds.
PARTITION_ID, NUM_PARTITIONS = "partition-id", "num-partitions"


@dataclass(frozen=True)
class TrainInstruction:
    """What the server announced for this round (the ``config`` record)."""

    round: int
    seed: int
    model: str
    partition: str
    dirichlet_alpha: float
    shards_per_client: int
    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    client_threads: int
    data_dir: str
    uplink: str
    downlink_mode: str
    base_version: int
    target_version: int
    inject: str = ""
    hang_s: float = 0.0
    bf16_autocast: bool = False
    qat: bool = False  # train the fake-quantized (int8 QAT) graph of the received model
    catchup: bool = False  # delta downlink: one accumulated update from base to target, not a chain
    # Keys added later are sent only when not at their default, so existing runs keep their message bytes.
    state_dir: str = field(default="", metadata=OMIT_DEFAULT)  # exact resume: where the client saves its state
    dataset: str = field(default=DEFAULT_DATASET, metadata=OMIT_DEFAULT)  # fedsqueeze.datasets
    device: str = field(default="cpu", metadata=OMIT_DEFAULT)  # fedsqueeze.device
    reply_format: str = field(default="records", metadata=OMIT_DEFAULT)  # REPLY_FORMATS

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrainInstruction:
        """Build from a ConfigRecord mapping with kebab-case keys."""
        return from_record(cls, record, "train config")

    def to_record(self) -> dict[str, Any]:
        """Kebab-case mapping for a ConfigRecord."""
        return to_record(self)


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
        if query.op not in STAGE_OPS:
            raise ValueError(f"unknown stage query op {query.op!r}; expected one of {STAGE_OPS}")
        return query

    def to_record(self) -> dict[str, Any]:
        """Kebab-case mapping for a ConfigRecord."""
        return to_record(self)


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
