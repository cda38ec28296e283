"""Count sketches and FetchSGD (Rothchild et al., ICML 2020).

Count sketch
    A table of ``rows x cols`` float32 cells.  Row ``j`` has a bucket hash
    ``h_j(i) in [0, cols)`` and a sign hash ``s_j(i) in {-1, +1}``; value
    ``x_i`` is added as ``s_j(i) x_i`` to cell ``(j, h_j(i))`` of every row.
    The sketch is **linear**: the sketch of a sum is the sum of the sketches,
    so a server can add clients' tables without decoding them.  Coordinate
    ``i`` is estimated as ``median_j s_j(i) T[j, h_j(i)]`` (unsketch); heavy
    hitters (large ``|x_i|``) are recovered accurately.  The hashes are drawn
    from a fixed seed, the tensor's size and the table shape, so every client
    and the server use the same ones without sending them.

Client (stage ``quant=fetchsgd``)
    Each tensor with at least ``min-numel`` elements is sketched into a
    table with ``rows`` rows and ``cols = ceil(sketch-size * numel / rows)``
    columns; smaller tensors (biases) are sent raw.  No client state and
    no client error feedback: FetchSGD moves both to the server.
    Decoding one payload on its own (:func:`compression.decode`, used for
    screening and for the client's ``rel-distortion``) returns the top
    ``keep`` fraction of each tensor's unsketched estimates: what this
    sketch alone would give.

Server (:class:`FetchSGDAggregator`, returned by the stage's
:meth:`~compression.QuantStage.server_aggregator` hook)
    Per round, with ``S`` the example-weighted mean of the clients' tables::

        S_u = rho * S_u + S                 momentum, in sketch space
        S_e = S_e + S_u                     error accumulation, in sketch space
        D   = top-k(unsketch(S_e))          k = ceil(keep * sketched elements),
                                            one budget over all sketched tensors
        S_u[j, h_j(i)] = 0, S_e[j, h_j(i)] = 0   for every i in support(D), every row j

    ``D`` (plus the plain weighted mean of the raw tensors) is the delta the
    server optimizer applies (``server-optimizer=fedavg``: ``w += server-lr * D``;
    the learning rate is applied outside ``S_e``, which for a constant rate
    is the paper's ``S_e += lr * S_u``).  Zeroing the cells that the applied
    coordinates hash to is the reference implementation's way of removing
    what was applied from both accumulators (the paper's "zero out the
    coordinates of Delta" in sketch space).  The paper's optional second
    round trip (fetching exact values of the top-k from the clients) is not
    done: ``D`` holds the sketch estimates.

Server state and checkpoints
    ``FetchSGDAggregator.state`` maps ``"momentum/<tensor>"`` and
    ``"error/<tensor>"`` to the two ``rows x cols`` float32 tables of every
    sketched tensor.  :mod:`server.checkpoint` writes it as
    ``aggregator.npz`` with every round's checkpoint and a resumed run
    restores it before its first round, so a resumed FetchSGD run continues
    with the same momentum and error sketches (the clients hold no state).

Value-block layout (after the codec's layout byte): ``rows * cols`` float32,
row-major.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .errors import PayloadError, SpecError
from .registry import DENSE, Key, QuantStage, ValueContext, register_stage

__all__ = [
    "FetchSGD",
    "FetchSGDAggregator",
    "hashes",
    "sketch",
    "sketch_decode",
    "sketch_encode",
    "table_shape",
    "top_k",
    "unsketch",
]

_HASH_SEED = 0x5CE7C4
_CACHE: OrderedDict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
_CACHE_SIZE = 8


def table_shape(numel: int, rows: int, size: float) -> tuple[int, int]:
    """``(rows, cols)`` of the sketch of a tensor with ``numel`` elements."""
    return rows, max(1, math.ceil(size * numel / rows))


def hashes(numel: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket (``int64``, ``rows x numel``) and sign (``int8``, +-1) hashes, memoized.

    A fixed function of ``(numel, rows, cols)``: every party derives the same ones.
    """
    key = (numel, rows, cols)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    rng = np.random.default_rng([_HASH_SEED, numel, rows, cols])
    buckets = rng.integers(0, cols, size=(rows, numel), dtype=np.int64)
    signs = 2 * rng.integers(0, 2, size=(rows, numel), dtype=np.int8) - 1
    _CACHE[key] = (buckets, signs)
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return buckets, signs


def sketch(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Count sketch of the flat vector ``x``: a ``rows x cols`` float64 table."""
    buckets, signs = hashes(x.size, rows, cols)
    xd = np.asarray(x, dtype=np.float64)
    return np.stack([np.bincount(buckets[j], weights=signs[j] * xd, minlength=cols) for j in range(rows)])


def unsketch(table: np.ndarray, numel: int) -> np.ndarray:
    """Estimate every coordinate: median over rows of ``s_j(i) T[j, h_j(i)]`` (float64)."""
    rows, cols = table.shape
    buckets, signs = hashes(numel, rows, cols)
    est = np.take_along_axis(table, buckets, axis=1) * signs
    return est[0] if rows == 1 else np.median(est, axis=0)


def top_k(v: np.ndarray, k: int) -> np.ndarray:
    """Indices (sorted) of the ``k`` largest ``|v|``; ties broken by index, deterministically."""
    if k >= v.size:
        return np.arange(v.size)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    # stable sort of -|v| keeps the lower index first among equals
    return np.sort(np.argsort(-np.abs(v), kind="stable")[:k])


def sketch_encode(x: np.ndarray, *, rows: int, size: float) -> bytes:
    """Value block: the float32 count sketch of ``x``."""
    _, cols = table_shape(x.size, rows, size)
    return sketch(x, rows, cols).astype("<f4").tobytes()


def read_table(r, numel: int, *, rows: int, size: float) -> np.ndarray:
    """Read a sketch block (exactly ``rows * cols`` finite float32) as a float64 table."""
    _, cols = table_shape(numel, rows, size)
    if r.remaining != 4 * rows * cols:
        raise PayloadError(f"sketch block: {r.remaining} bytes, expected {4 * rows * cols} "
                           f"for a {rows} x {cols} table")
    t = np.frombuffer(r.take(4 * rows * cols, "sketch table"), dtype="<f4").astype(np.float64)
    if not np.isfinite(t).all():
        raise PayloadError("sketch table: non-finite value")
    return t.reshape(rows, cols)


def sketch_decode(r, numel: int, *, rows: int, size: float, keep: float) -> np.ndarray:
    """One payload's recovery: the top ``keep`` fraction of the unsketched estimates (float32)."""
    table = read_table(r, numel, rows=rows, size=size)
    est = unsketch(table, numel)
    out = np.zeros(numel, dtype=np.float32)
    idx = top_k(est, math.ceil(keep * numel))
    out[idx] = est[idx]
    return out


class FetchSGDAggregator:
    """Server side of FetchSGD: sums sketches, keeps momentum and error in sketch space.

    Parameters
    ----------
    spec : PipelineSpec
        The uplink pipeline (``quant=fetchsgd``): ``rows``, ``sketch-size``,
        ``keep`` and ``sketch-momentum`` are read from it.
    shapes : mapping of str to tuple of int
        The model's tensors, in payload order.

    Attributes
    ----------
    state : dict of str to torch.Tensor
        ``momentum/<name>`` and ``error/<name>`` tables per sketched tensor
        (created on the first round); what a checkpoint saves.
    """

    def __init__(self, spec, shapes: Mapping[str, tuple[int, ...]]) -> None:
        # lazy: the codec is imported after the stages register
        from .codec import _layout

        self.spec = spec
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.sketched = [k for k, s in self.shapes.items() if _layout(spec, s) == DENSE]
        self.state: dict[str, torch.Tensor] = {}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore :attr:`state` from a checkpoint (names and table shapes must match)."""
        for name in self.sketched:
            want = table_shape(math.prod(self.shapes[name]), self.spec.get("rows"), self.spec.get("sketch-size"))
            for kind in ("momentum", "error"):
                t = state.get(f"{kind}/{name}")
                if t is not None and tuple(t.shape) != want:
                    raise ValueError(f"checkpointed {kind} sketch of {name!r} has shape {tuple(t.shape)}, "
                                     f"expected {want}")
        self.state = {k: v.clone().to(torch.float32) for k, v in state.items()}

    def _tables(self, payload: bytes) -> dict[str, np.ndarray]:
        from .codec import read_blocks

        spec, blocks = read_blocks(payload, expected=self.shapes)
        out = {}
        for info, _layout, r in blocks:  # the layouts were checked when the payload was screened
            if info.name in self.sketched:
                out[info.name] = read_table(r, info.numel, rows=spec.get("rows"), size=spec.get("sketch-size"))
            else:
                out[info.name] = np.frombuffer(r.take_all(), dtype="<f4").astype(np.float64)
        return out

    def aggregate(self, payloads: Sequence[bytes], weights: Sequence[float]) -> dict[str, torch.Tensor]:
        """One FetchSGD server step over the accepted payloads; returns the delta to apply.

        Payloads must already have passed screening (same pipeline, the model's
        names and shapes); their tables are averaged with ``weights``
        (examples), in the given order.
        """
        if not payloads or len(payloads) != len(weights):
            raise ValueError("aggregate needs as many weights as payloads, at least one")
        total = float(sum(weights))
        mean: dict[str, np.ndarray] = {}
        for p, w in zip(payloads, weights):
            for name, t in self._tables(p).items():
                if name in mean:
                    mean[name] += t * (w / total)
                else:
                    mean[name] = t * (w / total)
        rho = self.spec.get("sketch-momentum")
        errors, estimates = {}, {}
        for name in self.sketched:
            u = self.state.get(f"momentum/{name}")
            e = self.state.get(f"error/{name}")
            u = mean[name] if u is None else rho * u.double().numpy() + mean[name]
            e = u.copy() if e is None else e.double().numpy() + u
            errors[name] = (u, e)
            estimates[name] = unsketch(e, math.prod(self.shapes[name]))
        delta: dict[str, torch.Tensor] = {}
        if self.sketched:
            flat = np.concatenate([estimates[n] for n in self.sketched])
            chosen = top_k(flat, math.ceil(self.spec.keep * flat.size))
            start = 0
            for name in self.sketched:
                numel = estimates[name].size
                lo, hi = np.searchsorted(chosen, [start, start + numel])
                idx = chosen[lo:hi] - start
                start += numel
                d = np.zeros(numel, dtype=np.float32)
                d[idx] = estimates[name][idx]
                delta[name] = torch.from_numpy(d).reshape(self.shapes[name])
                u, e = errors[name]
                buckets, _ = hashes(numel, u.shape[0], u.shape[1])
                for j in range(u.shape[0]):
                    u[j, buckets[j, idx]] = 0.0
                    e[j, buckets[j, idx]] = 0.0
                self.state[f"momentum/{name}"] = torch.from_numpy(u.astype(np.float32))
                self.state[f"error/{name}"] = torch.from_numpy(e.astype(np.float32))
        for name, shape in self.shapes.items():
            if name not in delta:
                delta[name] = torch.from_numpy(mean[name].astype(np.float32)).reshape(shape)
        return {name: delta[name] for name in self.shapes}


# ------------------------------------------------------------------ stage (registered through the public API)

class FetchSGD(QuantStage):
    """``quant=fetchsgd``: a count sketch per tensor on the client, FetchSGD on the server."""

    name = "fetchsgd"
    summary = ("FetchSGD: count sketch per tensor; the server sums sketches, keeps momentum and error in sketch "
               "space and applies the top-k")
    keys = ("keep",)
    options = {
        "rows": Key(int, 5, lo=1, hi=32, doc="fetchsgd: count-sketch rows"),
        # >= 1/64: a payload must hold >= numel/16 bytes per sketched tensor, which bounds the hashing
        # work and memory a (hostile) header can ask of the decoder relative to the payload's size
        "sketch-size": Key(float, 0.1, lo=1 / 64, hi=4.0,
                           doc="fetchsgd: sketch cells per tensor element (rows * cols ~ sketch-size * numel)"),
        "sketch-momentum": Key(float, 0.9, lo=0.0, hi=0.999, doc="fetchsgd: server momentum rho in sketch space"),
    }
    required = ("keep",)
    min_bits_per_value = 0.0  # rows * cols cells for numel values: the block length is checked exactly

    def validate(self, values) -> None:
        if values["prune"] != "none":
            raise SpecError(f"quant=fetchsgd sketches whole tensors; it needs prune=none, not prune={values['prune']}")

    def encode(self, x, ctx: ValueContext) -> bytes:
        return sketch_encode(x, rows=ctx.spec.get("rows"), size=ctx.spec.get("sketch-size"))

    def decode(self, r, ctx: ValueContext) -> np.ndarray:
        s = ctx.spec
        return sketch_decode(r, ctx.count, rows=s.get("rows"), size=s.get("sketch-size"), keep=s.keep)

    def server_aggregator(self, spec, shapes):
        return FetchSGDAggregator(spec, shapes)


register_stage(FetchSGD)
