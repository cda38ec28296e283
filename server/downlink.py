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

**Catch-up** (``delta`` mode with a ``catchup`` pipeline): a client that
missed rounds may instead get *one* payload, the compressed accumulated update
``C(b_t - m)`` from the model ``m`` it holds, coded once rather than as a chain
of per-round payloads. The accumulated update is exactly ``b_t - b_s`` (the
sum of the chain it replaces) plus the client's catch-up error ``e``; what
``C`` leaves out becomes the client's new error ``e' = (b_t - b_s + e) -
decode(C(...))`` (per-client downlink error feedback: nothing is lost, it is
sent later), so the client holds ``m = b_t - e'``. Each client gets the
cheapest of its chain (which keeps its error as it is), its catch-up payload
and the float32 model (error 0); exact clients (``e = 0``) at the same
version share one encoded catch-up payload per round.

**What a message costs** when the server picks: by default the bytes of the payloads as sent.
With ``cost_coder`` (``downlink-cost = "golomb"``) it is the bytes they would have with that
position coder and a full header: a lossless position code (``coder=grid``,
``header=compact``) then changes what is sent, never which message a client gets, so the run
learns round for round like the same pipelines with golomb positions. (Without it, a coder that
makes catch-ups relatively cheaper tips a few clients from an exact chain to a nearly exact
catch-up, and the run departs from the golomb one.)

Server memory: one float32 copy of the model per client whose error is not
zero. Not checkpointed, like the clients' own state: after a resume every
client is treated as never contacted.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

import compression
from fedsqueeze.protocol.instructions import FULL_MODEL

__all__ = ["Broadcast", "Broadcaster", "CHAIN", "CATCHUP", "FULL"]

CHAIN, CATCHUP, FULL = "chain", "catchup", "full"  # how a client is brought to the broadcast model


@dataclass(frozen=True)
class Broadcast:
    """The payload(s) for one client and the versions they span."""

    payloads: list[bytes]
    base_version: int
    target_version: int
    kind: str = CHAIN  # CHAIN (deltas applied in order), CATCHUP (one accumulated update) or FULL


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
    catchup : PipelineSpec or None
        Codec of the accumulated catch-up update; ``None``: chains and full models only.
    node_error : dict
        Catch-up error ``e`` of each node (``b_version - model it holds``); absent = 0.
    cost_coder : str
        ``""``: messages cost the bytes sent; a position coder's name: the bytes they would
        have with that coder and a full header (see the module docstring).
    history_costs : list of int
        What ``history[i]`` costs in that sense (checkpointed with the history: with a
        ``cost_coder`` it cannot be recomputed exactly from the payload alone).
    """

    mode: str
    spec: compression.PipelineSpec
    seed: int
    broadcast: dict[str, torch.Tensor]
    history: list[bytes] = field(default_factory=list)
    node_version: dict[int, int] = field(default_factory=dict)
    catchup: compression.PipelineSpec | None = None
    node_error: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    cost_coder: str = ""
    history_costs: list[int] = field(default_factory=list)
    _full: bytes | None = None
    _full_fp32: bytes | None = None
    _round: int = 0
    _shared: dict[int, tuple[bytes, dict[str, torch.Tensor], int]] = field(default_factory=dict)
    _accumulated: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    _pending: dict[int, dict[str, torch.Tensor] | None] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return len(self.history)

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        # payloads with a compact header (header=compact) decode only against the tensors they were made for
        return {k: tuple(v.shape) for k, v in self.broadcast.items()}

    def advance(self, weights: dict[str, torch.Tensor], round_: int) -> None:
        """Prepare this round's broadcast of the global ``weights``."""
        self._full_fp32 = None
        self._round = round_
        self._shared.clear()
        self._accumulated.clear()
        self._pending.clear()
        if self.mode == "full":
            self._full = compression.encode(weights, self.spec, round=round_, seed=self.seed)
            self.broadcast = compression.decode(self._full, expected=self._shapes())
            return
        delta = {k: weights[k] - self.broadcast[k] for k in weights}
        payload = compression.encode(delta, self.spec, round=round_, seed=self.seed + round_)
        for k, v in compression.decode(payload, expected=self._shapes()).items():
            self.broadcast[k] += v
        self.history.append(payload)
        self.history_costs.append(self._cost(payload, delta, self.spec, round_, self.seed + round_))

    def _cost(self, payload: bytes, update: dict[str, torch.Tensor], spec: compression.PipelineSpec,
              round_: int, seed: int) -> int:
        """What ``payload`` (``update`` encoded with ``spec``) costs when the server picks a message."""
        if not self.cost_coder:
            return len(payload)
        # the same selection and values (same round and seed), only positions and header coded otherwise
        yardstick = replace(spec, coder=self.cost_coder, header="full")
        if yardstick == spec:  # already coded that way: encoding again would give the same bytes
            return len(payload)
        return len(compression.encode(update, yardstick, round=round_, seed=seed))

    def for_node(self, node_id: int) -> Broadcast:
        """The cheapest way to bring ``node_id`` to the current broadcast model.

        With a ``catchup`` codec the result may be lossy for the client (see the module
        docstring); the error it would leave is applied by :meth:`confirm`.
        """
        if self.mode == "full":
            assert self._full is not None, "advance() first"
            return Broadcast([self._full], FULL_MODEL, FULL_MODEL, FULL)
        start = self.node_version.get(node_id, 0)
        if self._full_fp32 is None:
            self._full_fp32 = compression.encode(self.broadcast, compression.parse_spec("fp32"))
        full = Broadcast([self._full_fp32], FULL_MODEL, self.version, FULL)
        self._pending[node_id] = None
        if start < 0:
            return full
        chain = self.history[start:]
        best, cost = Broadcast(list(chain), start, self.version, CHAIN), sum(self.history_costs[start:])
        error = self.node_error.get(node_id)
        self._pending[node_id] = error
        if self.catchup is not None and start < self.version:
            payload, left, catchup_cost = self._catchup_payload(start, error)
            if catchup_cost < cost:
                best, cost = Broadcast([payload], start, self.version, CATCHUP), catchup_cost
                self._pending[node_id] = left
        if cost > len(self._full_fp32):
            self._pending[node_id] = None
            return full
        return best

    def _catchup_payload(self, start: int, error: dict[str, torch.Tensor] | None
                         ) -> tuple[bytes, dict[str, torch.Tensor], int]:
        """``C(b_t - b_start + error)``, the error it leaves and its cost; shared by exact clients at ``start``."""
        if error is None and start in self._shared:
            return self._shared[start]
        if start not in self._accumulated:  # b_t - b_start: the sum of the chain it replaces, once per round
            total = {k: torch.zeros_like(v) for k, v in self.broadcast.items()}
            shapes = self._shapes()
            for p in self.history[start:]:
                for k, v in compression.decode(p, expected=shapes).items():
                    total[k] += v
            self._accumulated[start] = total
        total = self._accumulated[start]
        target = {k: v + error[k] for k, v in total.items()} if error is not None else total
        assert self.catchup is not None
        payload = compression.encode(target, self.catchup, round=self._round, seed=self.seed + self._round)
        left = {k: target[k] - v for k, v in compression.decode(payload, expected=self._shapes()).items()}
        out = payload, left, self._cost(payload, target, self.catchup, self._round, self.seed + self._round)
        if error is None:
            self._shared[start] = out
        return out

    def confirm(self, node_id: int, ok: bool) -> None:
        """Record whether ``node_id`` applied its broadcast (delta mode only).

        Mutates ``node_version`` and ``node_error``: on success the node holds this
        round's version with the error its broadcast left; on failure its state is
        unknown (it will get the float32 model).
        """
        if self.mode != "delta":
            return
        self.node_version[node_id] = self.version if ok else -1
        error = self._pending.pop(node_id, None) if ok else None
        if error is None:
            self.node_error.pop(node_id, None)
        else:
            self.node_error[node_id] = error
