"""Coding of sparse positions: a bitmap or gap codes, whichever is cheaper.

For ``k`` sorted positions out of ``n`` the gaps ``g_i = p_i - p_{i-1} - 1``
(with ``p_{-1} = -1``) are coded either with Golomb-Rice (parameter ``r``
chosen per tensor by exact cost over candidates near ``log2`` of the mean gap)
or with Elias gamma on ``g + 1``.  To keep both vectorised the unary parts
(quotients / lengths) are written as one stream, where each value ends with a
``1`` bit so ``np.flatnonzero`` finds every boundary, and the fixed or
variable-width low bits as a second stream.

Section layout::

    tag u8: 0 = bitmap   -> ceil(n/8) bytes, bit i set iff position i kept
            1 = Rice     -> r u8, unary length u32, unary bytes, ceil(k*r/8) bytes
            2 = Elias    -> unary length u32, unary bytes, ceil(sum(N)/8) bytes
"""

from __future__ import annotations

import numpy as np

from .bitpack import gather_fields, pack_bits, scatter_fields, unpack_bits
from .errors import PayloadError
from .wire import Reader, Writer

__all__ = ["BITMAP", "RICE", "ELIAS", "encode_positions", "decode_positions", "rice_parameter"]

BITMAP, RICE, ELIAS = 0, 1, 2
_ALLOWED = {"bitmap": {BITMAP}, "golomb": {BITMAP, RICE}, "elias": {BITMAP, ELIAS}}
_MAX_RICE = 30


def _gaps(idx: np.ndarray) -> np.ndarray:
    return np.diff(idx, prepend=-1) - 1


def rice_parameter(gaps: np.ndarray) -> tuple[int, int]:
    """Golomb-Rice parameter with the fewest bits for ``gaps``.

    Returns
    -------
    r : int
    bits : int
        Total bits (unary quotients with terminators plus ``r``-bit remainders).
    """
    k = gaps.size
    if k == 0:
        return 0, 0
    mean = float(gaps.mean())
    r0 = int(np.floor(np.log2(mean * np.log(2) + 1.0)))
    best = None
    for r in range(max(0, r0 - 2), min(_MAX_RICE, r0 + 2) + 1):
        bits = int((gaps >> r).sum()) + k * (r + 1)
        if best is None or bits < best[1]:
            best = (r, bits)
    return best


def _elias_lengths(v: np.ndarray) -> np.ndarray:
    # frexp is exact for integers below 2**53: v = m * 2**e with m in [0.5, 1).
    return (np.frexp(v.astype(np.float64))[1] - 1).astype(np.int64)


def _unary(q: np.ndarray) -> bytes:
    ends = np.cumsum(q + 1) - 1
    bits = np.zeros(int(ends[-1]) + 1 if ends.size else 0, dtype=np.uint8)
    bits[ends] = 1
    return pack_bits(bits)


def encode_positions(idx: np.ndarray, n: int, coder: str = "golomb") -> bytes:
    """Encode sorted unique positions ``idx`` (``int64``) out of ``n``.

    Parameters
    ----------
    idx : numpy.ndarray
        Sorted, unique positions in ``[0, n)``.
    n : int
        Domain size.
    coder : {"golomb", "elias", "bitmap"}
        Gap code compared against the bitmap; ``bitmap`` forces the bitmap.

    Returns
    -------
    bytes
    """
    k = idx.size
    w = Writer()
    bitmap_bytes = (n + 7) // 8
    gaps = _gaps(idx)
    if coder == "golomb":
        r, bits = rice_parameter(gaps)
        cost = 5 + (bits - k * r + 7) // 8 + (k * r + 7) // 8
    elif coder == "elias":
        lengths = _elias_lengths(gaps + 1)
        cost = 4 + (int(lengths.sum()) + k + 7) // 8 + (int(lengths.sum()) + 7) // 8
    else:
        cost = bitmap_bytes + 1
    if bitmap_bytes <= cost:
        w.u8(BITMAP)
        bits = np.zeros(n, dtype=np.uint8)
        bits[idx] = 1
        w.raw(pack_bits(bits))
    elif coder == "golomb":
        w.u8(RICE)
        w.u8(r)
        w.section(_unary(gaps >> r))
        rem = gaps & ((1 << r) - 1)
        w.raw(pack_bits(scatter_fields(rem, np.full(k, r))) if r else b"")
    else:
        w.u8(ELIAS)
        w.section(_unary(lengths))
        w.raw(pack_bits(scatter_fields(gaps + 1 - (np.int64(1) << lengths), lengths)))
    return w.getvalue()


def _read_unary(r: Reader, k: int, what: str) -> np.ndarray:
    data = r.section(what).take_all()
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    ones = np.flatnonzero(bits)
    if ones.size != k:
        raise PayloadError(f"{what}: {ones.size} terminators for {k} values")
    if len(data) != ((int(ones[-1]) + 8) // 8 if k else 0):
        raise PayloadError(f"{what}: wrong stream length")
    return np.diff(ones, prepend=-1) - 1


def decode_positions(r: Reader, n: int, k: int, coder: str = "golomb") -> np.ndarray:
    """Decode ``k`` positions out of ``n``, checking sortedness and range.

    Raises
    ------
    PayloadError
        Unknown or disallowed tag, wrong stream lengths, non-zero padding,
        wrong count, or positions outside ``[0, n)``.
    """
    tag = r.u8("position coder")
    if tag not in _ALLOWED[coder]:
        raise PayloadError(f"position coder tag {tag} not allowed for coder={coder}")
    if tag == BITMAP:
        bits = unpack_bits(r.take((n + 7) // 8, "position bitmap"), n, "position bitmap")
        idx = np.flatnonzero(bits).astype(np.int64)
        if idx.size != k:
            raise PayloadError(f"position bitmap has {idx.size} bits set, header says {k}")
        return idx
    if tag == RICE:
        rp = r.u8("rice parameter")
        if rp > _MAX_RICE:
            raise PayloadError(f"rice parameter {rp} exceeds {_MAX_RICE}")
        q = _read_unary(r, k, "rice quotients")
        if k and int(q.max()) > (n >> rp):
            raise PayloadError("position gap out of range")
        nb = k * rp
        rem_bits = unpack_bits(r.take((nb + 7) // 8, "rice remainders"), nb, "rice remainders")
        rem = gather_fields(rem_bits, np.arange(k, dtype=np.int64) * rp, np.full(k, rp)) if rp else 0
        steps = (q << rp) + rem + 1
    else:
        lengths = _read_unary(r, k, "elias lengths")
        if k and int(lengths.max()) > 31:
            raise PayloadError("elias gamma length out of range")
        nb = int(lengths.sum())
        low_bits = unpack_bits(r.take((nb + 7) // 8, "elias low bits"), nb, "elias low bits")
        starts = np.cumsum(lengths) - lengths
        steps = (np.int64(1) << lengths) + gather_fields(low_bits, starts, lengths)
    # Every step is >= 1, so the positions are strictly increasing.
    idx = np.cumsum(steps, dtype=np.int64) - 1
    if k and int(idx[-1]) >= n:
        raise PayloadError(f"position {int(idx[-1])} out of range for {n} slots")
    return idx
