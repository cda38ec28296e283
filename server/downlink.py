"""What the server sends each client: the global model, full or as deltas.

``full`` mode: every sampled client gets ``encode(w, spec)`` (float32, fp16,
8-bit, ...), and trains from its decoded value.

``delta`` mode (Sparse Ternary Compression style): the server keeps the
*broadcast model* ``b`` that clients hold. Each round it compresses
``w - b`` (the server's error feedback: what earlier broadcasts left out is
still in ``w - b``), appends the payload to a history and advances
``b += decode(payload)`` (version ``t``). A client at version ``s`` gets the
chain of payloads ``s+1..t``; a client never seen before starts from version
0, the seeded initial model it can rebuild itself. When the chain would cost
more than a lossless float32 model, or the client's version is unknown (it
failed), it gets the full float32 model of version ``t`` instead
(``base_version = -1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import compression

__all__ = ["Broadcast", "Broadcaster"]

FULL_MODEL = -1  # base_version meaning "payload is the whole model"


@dataclass(frozen=True)
class Broadcast:
    """The payload(s) for one client and the versions they span."""

    payloads: list[bytes]
    base_version: int
    target_version: int


@dataclass
class Broadcaster:
    """Server-side downlink state; mutated by :meth:`advance` and :meth:`confirm`.

    Attributes
    ----------
    broadcast : dict
        The model clients reconstruct (``b``); equals ``w`` in lossless full mode.
    history : list of bytes
        Delta payloads; ``history[i]`` takes version ``i`` to ``i + 1``.
    node_version : dict
        Last version each node confirmed (absent = never contacted = 0,
        -1 = unknown after a failure).
    """

    mode: str
    spec: compression.PipelineSpec
    seed: int
    broadcast: dict[str, torch.Tensor]
    history: list[bytes] = field(default_factory=list)
    node_version: dict[int, int] = field(default_factory=dict)
    _full: bytes | None = None
    _full_fp32: bytes | None = None

    @property
    def version(self) -> int:
        return len(self.history)

    def advance(self, weights: dict[str, torch.Tensor], round_: int) -> None:
        """Prepare this round's broadcast of the global ``weights``."""
        self._full_fp32 = None
        if self.mode == "full":
            self._full = compression.encode(weights, self.spec, round=round_, seed=self.seed)
            self.broadcast = compression.decode(self._full)
            return
        delta = {k: weights[k] - self.broadcast[k] for k in weights}
        payload = compression.encode(delta, self.spec, round=round_, seed=self.seed + round_)
        for k, v in compression.decode(payload).items():
            self.broadcast[k] += v
        self.history.append(payload)

    def for_node(self, node_id: int) -> Broadcast:
        """The cheapest exact way to bring ``node_id`` to the current broadcast model."""
        if self.mode == "full":
            assert self._full is not None, "advance() first"
            return Broadcast([self._full], FULL_MODEL, FULL_MODEL)
        start = self.node_version.get(node_id, 0)
        chain = self.history[start:] if start >= 0 else None
        if self._full_fp32 is None:
            self._full_fp32 = compression.encode(self.broadcast, compression.parse_spec("fp32"))
        if chain is None or sum(map(len, chain)) > len(self._full_fp32):
            return Broadcast([self._full_fp32], FULL_MODEL, self.version)
        return Broadcast(list(chain), start, self.version)

    def confirm(self, node_id: int, ok: bool) -> None:
        """Record whether ``node_id`` applied its broadcast (delta mode only)."""
        if self.mode == "delta":
            self.node_version[node_id] = self.version if ok else -1
