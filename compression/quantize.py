"""Scalar quantizers as small pure functions (torchao style).

Each scheme is ``choose_qparams -> quantize -> dequantize`` over a flat
float32 vector whose values are assigned to *groups* that share parameters
(one per tensor, per output channel or per block: see :func:`make_groups`).
Codes are unsigned integers below ``2**bits`` so that the bit packer and the
entropy coder never need to know which scheme produced them.  Arithmetic is
done in float64 and parameters are rounded to float32 *before* quantizing, so
the encoder quantizes with exactly the parameters the decoder will read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Groups",
    "make_groups",
    "group_reduce",
    "UniformParams",
    "choose_qparams",
    "quantize",
    "dequantize",
    "qsgd_quantize",
    "qsgd_dequantize",
    "sign_quantize",
    "sign_dequantize",
    "code_bits",
]


@dataclass(frozen=True)
class Groups:
    """Assignment of values to parameter groups.

    Attributes
    ----------
    count : int
        Number of groups ``G`` (parameters stored per group, even if empty).
    ids : numpy.ndarray or None
        Non-decreasing ``int64`` group id per value; ``None`` means every
        value is in group 0 (``count == 1``).
    """

    count: int
    ids: np.ndarray | None = None

    def expand(self, per_group: np.ndarray) -> np.ndarray:
        """Broadcast a per-group array to one entry per value."""
        return per_group[0] if self.ids is None else per_group[self.ids]


def make_groups(granularity: str, block: int, n_values: int, shape: tuple[int, ...],
                elements: np.ndarray | None) -> Groups:
    """Build the group assignment for the values of one tensor.

    Parameters
    ----------
    granularity : {"tensor", "channel", "block"}
        ``channel`` groups by dim 0 (rows); tensors with fewer than two
        dimensions form a single channel.  ``block`` groups consecutive
        transmitted values, ``block`` at a time.
    block : int
        Block length for ``granularity="block"``.
    n_values : int
        Number of transmitted values.
    shape : tuple of int
        Tensor shape.
    elements : numpy.ndarray or None
        Sorted element index of each value, or ``None`` for a dense tensor.
    """
    if granularity == "block":
        g = -(-n_values // block)
        return Groups(g, np.arange(n_values, dtype=np.int64) // block if g > 1 else None)
    if granularity == "channel" and len(shape) >= 2 and shape[0] > 1:
        numel = math.prod(shape)
        row = numel // shape[0]
        if elements is None:
            ids = np.repeat(np.arange(shape[0], dtype=np.int64), row)
        else:
            ids = elements // row
        return Groups(shape[0], ids)
    return Groups(1, None)


def group_reduce(op: str, x: np.ndarray, groups: Groups, empty: float = 0.0) -> np.ndarray:
    """Per-group reduction (``"min"``, ``"max"``, ``"sum"``) in float64; empty groups get ``empty``."""
    out = np.full(groups.count, empty, dtype=np.float64)
    if x.size == 0:
        return out
    x = x.astype(np.float64, copy=False)
    if groups.ids is None:
        out[0] = {"min": np.min, "max": np.max, "sum": np.sum}[op](x)
        return out
    starts = np.searchsorted(groups.ids, np.arange(groups.count), side="left")
    ends = np.searchsorted(groups.ids, np.arange(groups.count), side="right")
    nonempty = ends > starts
    ufunc = {"min": np.minimum, "max": np.maximum, "sum": np.add}[op]
    # Ids are sorted, so each non-empty group is one contiguous reduceat segment.
    out[nonempty] = ufunc.reduceat(x, starts[nonempty])
    return out


def code_bits(n_codes: int) -> int:
    """Bits needed to write codes ``0 .. n_codes-1`` (at least 1)."""
    return max(1, (n_codes - 1).bit_length())


# --------------------------------------------------------------------------- uniform

@dataclass(frozen=True)
class UniformParams:
    """Per-group parameters of a uniform grid (float32 as on the wire).

    ``value = (code - qmax) * scale`` (symmetric) or
    ``value = offset + code * scale`` (affine).
    """

    scale: np.ndarray
    offset: np.ndarray | None = None


def _qmax(bits: int, symmetric: bool) -> int:
    return (1 << (bits - 1)) - 1 if symmetric else (1 << bits) - 1


def choose_qparams(x: np.ndarray, groups: Groups, bits: int, symmetric: bool) -> UniformParams:
    """Choose scales (and offsets) so each group's range maps onto the grid.

    Symmetric uses ``2**(bits-1) - 1`` levels each side of zero
    (``bits >= 2``); affine spans ``[min, max]`` with ``2**bits`` levels.
    """
    if symmetric:
        amax = np.maximum(group_reduce("max", x, groups), -group_reduce("min", x, groups))
        return UniformParams((amax / _qmax(bits, True)).astype(np.float32))
    lo = group_reduce("min", x, groups).astype(np.float32)
    hi = group_reduce("max", x, groups)
    scale = ((hi - lo.astype(np.float64)) / _qmax(bits, False)).astype(np.float32)
    return UniformParams(scale, lo)


def _round(t: np.ndarray, rounding: str, rng: np.random.Generator | None) -> np.ndarray:
    if rounding == "nearest":
        return np.rint(t)
    if rng is None:
        raise ValueError("stochastic rounding needs a random generator")
    # floor(t + u), u ~ U[0, 1): E = t, i.e. unbiased.
    return np.floor(t + rng.random(t.shape))


def quantize(x: np.ndarray, params: UniformParams, groups: Groups, bits: int, symmetric: bool,
             rounding: str = "nearest", rng: np.random.Generator | None = None) -> np.ndarray:
    """Map values to unsigned codes in ``[0, 2**bits)`` (``uint8``)."""
    scale = groups.expand(params.scale.astype(np.float64))
    safe = np.where(scale > 0, scale, 1.0)
    qmax = _qmax(bits, symmetric)
    if symmetric:
        q = np.clip(_round(x / safe, rounding, rng), -qmax, qmax) + qmax
        q = np.where(scale > 0, q, qmax)
    else:
        off = groups.expand(params.offset.astype(np.float64))
        q = np.clip(_round((x - off) / safe, rounding, rng), 0, qmax)
        q = np.where(scale > 0, q, 0)
    return q.astype(np.uint8)


def dequantize(codes: np.ndarray, params: UniformParams, groups: Groups, bits: int, symmetric: bool) -> np.ndarray:
    """Inverse of :func:`quantize` (float32)."""
    scale = groups.expand(params.scale.astype(np.float64))
    if symmetric:
        return ((codes.astype(np.float64) - _qmax(bits, True)) * scale).astype(np.float32)
    off = groups.expand(params.offset.astype(np.float64))
    return (off + codes.astype(np.float64) * scale).astype(np.float32)


def max_uniform_code(bits: int, symmetric: bool) -> int:
    """Largest valid code (the decoder rejects larger ones)."""
    return 2 * _qmax(bits, True) if symmetric else _qmax(bits, False)


# --------------------------------------------------------------------------- QSGD

def qsgd_quantize(x: np.ndarray, groups: Groups, bits: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """QSGD (Alistarh et al., 2017): ``s = 2**(bits-1) - 1`` levels of ``|x| / ||x||_2``.

    Rounding between levels is stochastic, so the estimate is unbiased.

    Returns
    -------
    norms : numpy.ndarray
        Per-group L2 norms (float32).
    codes : numpy.ndarray
        ``sign * level + s`` as ``uint8`` in ``[0, 2 s]``.
    """
    s = _qmax(bits, True)
    x64 = x.astype(np.float64)
    norms = np.sqrt(group_reduce("sum", x64 * x64, groups)).astype(np.float32)
    n = groups.expand(norms.astype(np.float64))
    safe = np.where(n > 0, n, 1.0)
    level = np.clip(np.floor(np.abs(x64) / safe * s + rng.random(x.shape)), 0, s)
    q = np.where(n > 0, np.sign(x64) * level, 0) + s
    return norms, q.astype(np.uint8)


def qsgd_dequantize(codes: np.ndarray, norms: np.ndarray, groups: Groups, bits: int) -> np.ndarray:
    """Inverse of :func:`qsgd_quantize` (float32)."""
    s = _qmax(bits, True)
    return ((codes.astype(np.float64) - s) * groups.expand(norms.astype(np.float64)) / s).astype(np.float32)


# --------------------------------------------------------------------------- sign / ternary

def sign_quantize(x: np.ndarray, groups: Groups) -> tuple[np.ndarray, np.ndarray]:
    """Scaled sign: ``sign(x) * mean|x|`` per group (1-bit codes, ``x >= 0`` -> 1).

    Applied to the values kept by top-k this is Sparse Ternary Compression's
    ``{-mu, 0, +mu}`` (Sattler et al., 2019) with ``mu = mean |kept|``.

    Returns
    -------
    scales : numpy.ndarray
        Per-group ``mean |x|`` (float32).
    codes : numpy.ndarray
        ``uint8`` in ``{0, 1}``.
    """
    sums = group_reduce("sum", np.abs(x), groups)
    counts = group_reduce("sum", np.ones_like(x), groups)
    scales = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32)
    return scales, (x >= 0).astype(np.uint8)


def sign_dequantize(codes: np.ndarray, scales: np.ndarray, groups: Groups) -> np.ndarray:
    """Inverse of :func:`sign_quantize` (float32)."""
    return ((codes.astype(np.float64) * 2 - 1) * groups.expand(scales.astype(np.float64))).astype(np.float32)
