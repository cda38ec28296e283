"""Bit packing: fixed-width codes and variable-width fields, MSB first.

All readers check the exact byte length and that padding bits are zero, so
each bit string has exactly one valid encoding.
"""

from __future__ import annotations

import numpy as np

from .errors import PayloadError

__all__ = ["pack_bits", "unpack_bits", "pack_codes", "unpack_codes", "scatter_fields", "gather_fields"]


def pack_bits(bits: np.ndarray) -> bytes:
    """Pack a 0/1 ``uint8`` array into bytes (zero padded)."""
    return np.packbits(bits).tobytes()


def unpack_bits(data: bytes | memoryview, nbits: int, what: str = "bit stream") -> np.ndarray:
    """Unpack exactly ``nbits`` bits from exactly ``ceil(nbits / 8)`` bytes."""
    if len(data) != (nbits + 7) // 8:
        raise PayloadError(f"{what}: {len(data)} bytes for {nbits} bits")
    raw = np.frombuffer(data, dtype=np.uint8)
    if nbits % 8 and raw.size and int(raw[-1]) & ((1 << (8 - nbits % 8)) - 1):
        raise PayloadError(f"{what}: non-zero padding bits")
    return np.unpackbits(raw, count=nbits)


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack unsigned codes (each ``< 2**bits``, ``bits`` in 1..8) ``bits`` at a time."""
    codes = np.asarray(codes, dtype=np.uint8)
    if bits == 8:
        return codes.tobytes()
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint8)
    return pack_bits(((codes[:, None] >> shifts) & 1).ravel())


def unpack_codes(data: bytes | memoryview, count: int, bits: int, what: str = "codes") -> np.ndarray:
    """Inverse of :func:`pack_codes`; returns ``uint8`` codes."""
    if bits == 8:
        if len(data) != count:
            raise PayloadError(f"{what}: {len(data)} bytes for {count} 8-bit codes")
        return np.frombuffer(data, dtype=np.uint8).copy()
    b = unpack_bits(data, count * bits, what).reshape(count, bits)
    out = np.zeros(count, dtype=np.uint8)
    for j in range(bits):
        out = (out << 1) | b[:, j]
    return out


def scatter_fields(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Concatenate variable-width binary fields into a 0/1 ``uint8`` array.

    Loops over the distinct widths (at most 64), not over values.
    """
    values = values.astype(np.uint64)
    widths = widths.astype(np.int64)
    ends = np.cumsum(widths)
    out = np.zeros(int(ends[-1]) if ends.size else 0, dtype=np.uint8)
    starts = ends - widths
    for w in np.unique(widths):
        if w == 0:
            continue
        sel = widths == w
        pos = starts[sel][:, None] + np.arange(w)
        out[pos] = ((values[sel][:, None] >> np.arange(w - 1, -1, -1, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return out


def gather_fields(bits: np.ndarray, starts: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Read variable-width fields (``widths`` <= 63, in range) as ``int64``."""
    out = np.zeros(starts.size, dtype=np.int64)
    for w in np.unique(widths):
        if w == 0:
            continue
        sel = widths == w
        pos = starts[sel][:, None] + np.arange(w)
        weights = np.left_shift(np.int64(1), np.arange(w - 1, -1, -1, dtype=np.int64))
        out[sel] = bits[pos].astype(np.int64) @ weights
    return out
