"""Low-rank compression: PowerSGD (Vogels, Karimireddy & Jaggi, NeurIPS 2019).

A tensor with at least two dimensions is viewed as a matrix ``M`` of shape
``out_channels x rest`` (a conv kernel ``(o, i, kh, kw)`` becomes
``o x (i*kh*kw)``, as in the paper's implementation).  One step of subspace
(power) iteration from a warm-start factor ``Q`` (``rest x r``) gives::

    P = orthonormalize(M Q)        (out x r, Gram-Schmidt)
    Q' = M^T P                     (rest x r)
    M ~= P Q'^T

``P`` and ``Q'`` are sent as float32 (``4 (out + rest) r`` bytes instead of
``4 out rest``); ``Q'`` becomes the next warm start.  Vectors (biases) are
sent as raw float32 inside the stage's block (and tensors below
``min-numel`` elements as RAW sections, as with every stage).  With ``ef=true``
the client's error-feedback residual (the codec's generic one) carries
what the rank-``r`` approximation missed into the next round, as the paper
requires for convergence.

Warm start under partial participation
--------------------------------------
In the paper every worker joins every step and ``Q`` is all-reduced, so all
workers share it.  Here a client is sampled in some rounds only, and
clients' ``P`` / ``Q`` are not averaged (the server averages the decoded
products ``P Q^T``, one per client: the server is not linear in ``P`` and
``Q`` separately across clients).  Each client therefore keeps **its own**
last ``Q'`` per tensor in its persistent state (Flower ``Context.state``,
``ClientState.codec_state``, handed to the codec as the ``state`` of
:func:`compression.encode_with_feedback`; the stage keeps ``Q'`` under the
key ``q`` of each tensor's ``ValueContext.state``) and starts the next power step from it, however
many rounds it missed: a stale subspace is still a better start than a
random one, because consecutive updates of one client share their dominant
directions (its data does not change), and one power step corrects it.  A
client that has no stored factor (first participation, or after a server
resume without ``client-state-dir``) starts from a Gaussian ``Q``
drawn from the encoder's seeded stream, so payloads stay deterministic.
(With ``client-state-dir`` the client also saves its factors to disk with
its residual, so a resumed run continues with them: see
``client/state_store.py``.)
The warm start changes only where the power step starts, never the wire
format: the decoder needs nothing but ``P`` and ``Q'``.

Value-block layout (after the codec's layout byte)::

    P as out * r f32 (row-major) | Q' as rest * r f32 (row-major)

with ``r = min(rank, out, rest)`` (implied by the spec and the shape, so
not sent).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import PayloadError, SpecError
from .registry import Key, QuantStage, ValueContext, register_stage

__all__ = [
    "PowerSGD",
    "effective_rank",
    "matrix_shape",
    "orthonormalize",
    "powersgd_decode",
    "powersgd_encode",
    "values_sent",
]

_EPS = 1e-12


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(out, rest)``: the matrix view of a tensor with at least two dimensions."""
    if len(shape) < 2:
        raise ValueError(f"low-rank compression needs a tensor with >= 2 dimensions, not shape {shape}")
    return shape[0], math.prod(shape[1:])


def effective_rank(shape: tuple[int, ...], rank: int) -> int:
    """``min(rank, out, rest)``."""
    n, m = matrix_shape(shape)
    return min(rank, n, m)


def values_sent(shape: tuple[int, ...], rank: int) -> int:
    """Float32 values in one tensor's block: ``(out + rest) * r``."""
    n, m = matrix_shape(shape)
    return (n + m) * effective_rank(shape, rank)


def orthonormalize(p: np.ndarray) -> np.ndarray:
    """Gram-Schmidt on the columns of ``p`` (float64, new array).

    A column that is (numerically) in the span of the previous ones becomes
    zero rather than noise, so a rank-deficient update stays exact.
    """
    out = np.array(p, dtype=np.float64, copy=True)
    scale = max(float(np.abs(out).max(initial=0.0)), 1.0)
    for j in range(out.shape[1]):
        col = out[:, j]
        for i in range(j):
            col -= (out[:, i] @ col) * out[:, i]
        norm = float(np.linalg.norm(col))
        out[:, j] = col / norm if norm > _EPS * scale else 0.0
    return out


def powersgd_encode(x: np.ndarray, shape: tuple[int, ...], rank: int, warm: np.ndarray | None,
                    rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """One PowerSGD step on a tensor; returns the value block and the new warm-start ``Q'``.

    Parameters
    ----------
    x : numpy.ndarray
        Flat float32 values of a tensor of ``shape`` (>= 2 dimensions).
    rank : int
        Target rank ``r`` (capped at ``min(out, rest)``).
    warm : numpy.ndarray or None
        The client's previous ``Q'`` for this tensor (``rest x r``); ``None``
        (or a factor of another shape) starts from a Gaussian drawn from ``rng``.
    rng : numpy.random.Generator
        Seeded stream for a cold start.

    Returns
    -------
    block : bytes
    q : numpy.ndarray
        ``Q'`` as sent (float32, ``rest x r``).
    """
    n, m = matrix_shape(shape)
    r = effective_rank(shape, rank)
    mat = np.asarray(x, dtype=np.float64).reshape(n, m)
    if warm is not None and warm.shape == (m, r) and np.isfinite(warm).all():
        q = np.asarray(warm, dtype=np.float64)
    else:
        q = rng.standard_normal((m, r))
    p = orthonormalize(mat @ q).astype(np.float32)
    q_new = (mat.T @ p.astype(np.float64)).astype(np.float32)
    return p.astype("<f4").tobytes() + q_new.astype("<f4").tobytes(), q_new


def powersgd_decode(r, shape: tuple[int, ...], rank: int) -> np.ndarray:
    """Read a PowerSGD block; returns the flat float32 product ``P Q'^T``.

    The block must hold exactly ``(out + rest) * r`` float32 values, checked
    before the product is allocated.
    """
    n, m = matrix_shape(shape)
    k = effective_rank(shape, rank)
    if r.remaining != 4 * (n + m) * k:
        raise PayloadError(f"low-rank block: {r.remaining} bytes, expected {4 * (n + m) * k} "
                           f"for rank {k} factors of a {n} x {m} matrix")
    p = np.frombuffer(r.take(4 * n * k, "P factor"), dtype="<f4").astype(np.float64).reshape(n, k)
    q = np.frombuffer(r.take(4 * m * k, "Q factor"), dtype="<f4").astype(np.float64).reshape(m, k)
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise PayloadError("low-rank factors: non-finite value")
    return (p @ q.T).astype(np.float32).reshape(-1)


# ------------------------------------------------------------------ stage (registered through the public API)

class PowerSGD(QuantStage):
    """``quant=powersgd``: rank-``rank`` factors of every matrix; vectors as float32.

    Stateful on the client: ``ctx.state["q"]`` holds this tensor's last
    ``Q'`` (read when ``warm-start=true``, always written when the caller
    keeps state).
    """

    name = "powersgd"
    summary = "PowerSGD: rank-r factors P, Q of each matrix (conv kernels as out x rest); vectors raw"
    options = {
        "rank": Key(int, None, lo=1, hi=256, doc="powersgd: rank r of the factors"),
        "warm-start": Key(bool, True, doc="powersgd: start the power step from the client's last Q "
                                          "(else a fresh Gaussian)"),
    }
    required = ("rank",)
    # (out + rest) * r floats for out * rest values: the block length is checked exactly instead
    min_bits_per_value = 0.0

    def validate(self, values) -> None:
        if values["prune"] != "none":
            raise SpecError(f"quant=powersgd compresses whole matrices; it needs prune=none, not prune={values['prune']}")

    def encode(self, x, ctx: ValueContext) -> bytes:
        if len(ctx.shape) < 2:  # biases: the paper sends them uncompressed
            return np.asarray(x, dtype="<f4").tobytes()
        warm = ctx.state.get("q") if ctx.state is not None and ctx.spec.get("warm-start") else None
        block, q = powersgd_encode(x, ctx.shape, ctx.spec.get("rank"), warm, ctx.rng)
        if ctx.state is not None:
            ctx.state["q"] = q
        return block

    def decode(self, r, ctx: ValueContext) -> np.ndarray:
        if len(ctx.shape) < 2:
            if r.remaining != 4 * ctx.count:
                raise PayloadError(f"powersgd vector block: {r.remaining} bytes, expected {4 * ctx.count}")
            return np.frombuffer(r.take(4 * ctx.count, "float32 vector"), dtype="<f4").astype(np.float32)
        return powersgd_decode(r, ctx.shape, ctx.spec.get("rank"))


register_stage(PowerSGD)
