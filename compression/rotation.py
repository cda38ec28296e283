"""Rotation-based quantization: randomized Hadamard rotation, DRIVE and EDEN.

DRIVE (Vargaftik et al., NeurIPS 2021) and EDEN (Vargaftik et al., ICML 2022)
rotate a vector with a random orthogonal matrix shared by sender and
receiver, so that its coordinates become (close to) i.i.d. Gaussian whatever
the input looked like, quantize the rotated coordinates with a quantizer
designed for a Gaussian and send one scale per vector.  The receiver scales,
rotates back and obtains an estimate whose normalized error no longer
depends on the shape of the input distribution.

Rotation
    ``R = H D / sqrt(B)``: ``D`` a diagonal of random signs, ``H`` the
    ``B x B`` Sylvester-Hadamard matrix (fast Walsh-Hadamard transform,
    ``O(B log B)``).  A tensor of ``n`` values is zero-padded to ``nb * B``
    values, ``B = min(rot-block, next power of two >= n)``, and each block
    of ``B`` values is rotated, quantized and scaled on its own.  Padded
    coordinates are rotated like the others and are transmitted (they
    carry part of the signal after the rotation); their bits are in the
    payload and so in the ledger.  The signs ``D`` come from a 64-bit seed
    that travels in the value block; the rotated vector itself is never sent.
DRIVE (1 bit)
    Codes ``sign(Rx)``; scale ``S = ||Rx||_1 / B`` (biased: the MSE-optimal
    scale, normalized MSE ``-> 1 - 2/pi ~= 0.363`` for large ``B``) or
    ``S = ||x||_2^2 / ||Rx||_1`` (unbiased over the rotation, normalized
    MSE ``-> pi/2 - 1 ~= 0.571``).
EDEN (b bits, 1 <= b <= 4)
    The rotated block is normalized to unit variance (``Rx * sqrt(B) /
    ||x||``), each coordinate is mapped to the nearest of the ``2^b``
    Lloyd-Max centroids of the standard normal, and the scale is
    ``S = ||x||^2 / <Rx, c>`` (unbiased) or ``S = <Rx, c> / ||c||^2``
    (biased, MSE-optimal).  Normalized MSE of the unbiased variant
    ``-> 1/(1 - e_b) - 1`` with ``e_b`` the Lloyd-Max distortion
    (b = 1, 2, 3, 4: 0.571, 0.133, 0.0358, 0.00959); of the biased one,
    ``e_b`` (0.363, 0.117, 0.0345, 0.00950).  EDEN with ``b = 1`` is DRIVE.

Value-block layout (after the codec's layout byte)::

    seed u64 | nb * f32 scale | codes for nb * B coordinates
    (bit-packed, or Huffman-coded with ``entropy=huffman`` for EDEN)

Reference: the papers' algorithms and google-research/federated
``compressed_communication`` (its ``drive``/``eden`` aggregators use the
same rotation with per-chunk scales).
"""

from __future__ import annotations

import math

import numpy as np

from .bitpack import pack_codes, unpack_codes
from .entropy import decode_huffman, encode_huffman
from .errors import PayloadError, SpecError
from .registry import Key, QuantStage, ValueContext, register_stage

__all__ = [
    "LLOYD_MAX",
    "Drive",
    "Eden",
    "block_size",
    "drive_decode",
    "drive_encode",
    "eden_decode",
    "eden_encode",
    "fwht",
    "rotate",
    "rotated_length",
    "unrotate",
]

#: Positive Lloyd-Max centroids of N(0, 1) for 2^b levels (the negative ones
#: mirror them).  Computed by Lloyd's iteration to convergence (see
#: ``tests/compression/test_rotation.py::test_lloyd_max_table``); constants,
#: not measurements.
LLOYD_MAX: dict[int, tuple[float, ...]] = {
    1: (0.7978845608028654,),
    2: (0.4527800346364922, 1.5104176084990968),
    3: (0.24509417894422103, 0.7560052812058767, 1.343909278504998, 2.151945704536987),
    4: (0.12839502985114712, 0.3880482994902902, 0.6567591185324634, 0.9423404564869611,
        1.2562311973471756, 1.618046386021882, 2.069017226531381, 2.73258957099517),
}


def _centroids(bits: int) -> np.ndarray:
    pos = np.asarray(LLOYD_MAX[bits], dtype=np.float64)
    return np.concatenate([-pos[::-1], pos])


def block_size(n: int, rot_block: int) -> int:
    """Rotation block length for a tensor of ``n`` values: a power of two, at most ``rot_block``."""
    return min(rot_block, 1 << max(0, (n - 1).bit_length()))


def rotated_length(n: int, rot_block: int) -> int:
    """Number of coordinates transmitted for ``n`` values (``n`` plus the zero padding)."""
    b = block_size(n, rot_block)
    return -(-n // b) * b


def fwht(a: np.ndarray) -> np.ndarray:
    """Unnormalized fast Walsh-Hadamard transform along the last axis (Sylvester order).

    ``a`` has shape ``(m, B)`` with ``B`` a power of two; returns ``a @ H_B``
    (``H_B`` is symmetric) as a new float64 array.
    """
    m, b = a.shape
    if b & (b - 1):
        raise ValueError(f"Hadamard length {b} is not a power of two")
    out = np.asarray(a, dtype=np.float64)
    h = 1
    while h < b:
        v = out.reshape(m, b // (2 * h), 2, h)
        x, y = v[:, :, 0, :], v[:, :, 1, :]
        out = np.stack((x + y, x - y), axis=2).reshape(m, b)
        h *= 2
    return out.reshape(m, b)


def _signs(seed: int, total: int) -> np.ndarray:
    bits = np.random.default_rng(seed).integers(0, 2, size=total, dtype=np.int8)
    return (2 * bits - 1).astype(np.float64)


def rotate(x: np.ndarray, seed: int, rot_block: int) -> np.ndarray:
    """``R x`` per block: pad to whole blocks, flip signs from ``seed``, Hadamard, ``/ sqrt(B)``.

    Returns a float64 array of shape ``(nb, B)``.
    """
    n = x.size
    b = block_size(n, rot_block)
    padded = np.zeros(rotated_length(n, rot_block), dtype=np.float64)
    padded[:n] = x
    padded *= _signs(seed, padded.size)
    return fwht(padded.reshape(-1, b)) / math.sqrt(b)


def unrotate(y: np.ndarray, seed: int, n: int) -> np.ndarray:
    """Inverse of :func:`rotate` (``R^T = D H / sqrt(B)``), cropped to ``n`` values, float64."""
    nb, b = y.shape
    z = (fwht(y) / math.sqrt(b)).reshape(-1) * _signs(seed, nb * b)
    return z[:n]


def _block_norms2(x: np.ndarray, nb: int, b: int) -> np.ndarray:
    padded = np.zeros(nb * b, dtype=np.float64)
    padded[: x.size] = x
    return np.square(padded.reshape(nb, b)).sum(axis=1)


def _f32(a: np.ndarray) -> bytes:
    return np.asarray(a, dtype="<f4").tobytes()


def _read_scales(r, nb: int) -> np.ndarray:
    s = np.frombuffer(r.take(4 * nb, "rotation scales"), dtype="<f4").astype(np.float64)
    if not np.isfinite(s).all() or (s < 0).any():
        raise PayloadError("rotation scales: non-finite or negative value")
    return s


def _read_seed(r) -> int:
    return r.u64("rotation seed")


# ------------------------------------------------------------------ DRIVE

def drive_encode(x: np.ndarray, seed: int, *, unbiased: bool, rot_block: int) -> bytes:
    """DRIVE: 1 bit per rotated coordinate plus one float32 scale per block.

    Parameters
    ----------
    x : numpy.ndarray
        Flat float32 values of one tensor.
    seed : int
        Rotation seed (``0 <= seed < 2**64``), written into the block.
    unbiased : bool
        ``S = ||x||^2 / ||Rx||_1`` (unbiased) or ``S = ||Rx||_1 / B`` (biased).
    rot_block : int
        Largest rotation block (a power of two).
    """
    y = rotate(x, seed, rot_block)
    nb, b = y.shape
    l1 = np.abs(y).sum(axis=1)
    if unbiased:
        norms2 = _block_norms2(x, nb, b)
        scale = np.divide(norms2, l1, out=np.zeros(nb), where=l1 > 0)
    else:
        scale = l1 / b
    codes = (y >= 0).astype(np.uint8).reshape(-1)
    return seed.to_bytes(8, "little") + _f32(scale) + pack_codes(codes, 1)


def drive_decode(r, n: int, *, rot_block: int) -> np.ndarray:
    """Read a DRIVE value block for ``n`` values (float32)."""
    seed = _read_seed(r)
    b = block_size(n, rot_block)
    total = rotated_length(n, rot_block)
    nb = total // b
    scale = _read_scales(r, nb)
    codes = unpack_codes(r.take((total + 7) // 8, "sign bits"), total, 1)
    y = (2.0 * codes.reshape(nb, b) - 1.0) * scale[:, None]
    return unrotate(y, seed, n).astype(np.float32)


# ------------------------------------------------------------------ EDEN

def eden_encode(x: np.ndarray, seed: int, *, bits: int, unbiased: bool, rot_block: int,
                huffman: bool = False) -> bytes:
    """EDEN: ``bits`` bits per rotated coordinate (Lloyd-Max levels of N(0,1)) plus a scale per block.

    Parameters
    ----------
    x : numpy.ndarray
        Flat float32 values of one tensor.
    seed : int
        Rotation seed, written into the block.
    bits : int
        1 to 4.
    unbiased : bool
        ``S = ||x||^2 / <Rx, c>`` (unbiased) or ``S = <Rx, c> / ||c||^2`` (biased).
    rot_block : int
        Largest rotation block (a power of two).
    huffman : bool
        Huffman-code the level indices instead of bit-packing them.
    """
    if bits not in LLOYD_MAX:
        raise ValueError(f"EDEN supports 1-{max(LLOYD_MAX)} bits, not {bits}")
    y = rotate(x, seed, rot_block)
    nb, b = y.shape
    norms2 = _block_norms2(x, nb, b)
    norm = np.sqrt(norms2)
    # unit-variance coordinates: the Lloyd-Max levels are for N(0, 1)
    z = y * np.divide(math.sqrt(b), norm, out=np.zeros(nb), where=norm > 0)[:, None]
    cents = _centroids(bits)
    codes = np.searchsorted((cents[1:] + cents[:-1]) / 2, z, side="left").astype(np.uint8)
    c = cents[codes]
    dot = (y * c).sum(axis=1)
    if unbiased:
        scale = np.divide(norms2, dot, out=np.zeros(nb), where=dot > 0)
    else:
        cc = np.square(c).sum(axis=1)
        scale = np.divide(dot, cc, out=np.zeros(nb), where=cc > 0)
    flat = codes.reshape(-1)
    body = encode_huffman(flat, 1 << bits) if huffman else pack_codes(flat, bits)
    return seed.to_bytes(8, "little") + _f32(np.maximum(scale, 0.0)) + body


def eden_decode(r, n: int, *, bits: int, rot_block: int, huffman: bool = False) -> np.ndarray:
    """Read an EDEN value block for ``n`` values (float32)."""
    seed = _read_seed(r)
    b = block_size(n, rot_block)
    total = rotated_length(n, rot_block)
    nb = total // b
    scale = _read_scales(r, nb)
    if huffman:
        codes = decode_huffman(r, total, 1 << bits)
    else:
        codes = unpack_codes(r.take((total * bits + 7) // 8, "level codes"), total, bits)
    if codes.size and int(codes.max()) >= 1 << bits:
        raise PayloadError(f"EDEN level code {int(codes.max())} exceeds {(1 << bits) - 1}")
    y = _centroids(bits)[codes.astype(np.int64)].reshape(nb, b) * scale[:, None]
    return unrotate(y, seed, n).astype(np.float32)


# ------------------------------------------------------------------ stages (registered through the public API)

#: Keys both rotation stages declare (identical objects, as the registry requires for shared keys).
ROTATION_OPTIONS = {
    "unbiased": Key(bool, True, doc="drive/eden: unbiased scale (else the MSE-optimal, biased one)"),
    "rot-block": Key(int, 1 << 16, lo=2, hi=1 << 24,
                     doc="drive/eden: largest rotation block, a power of two (tensors are padded to whole blocks)"),
}


def _check_block(values) -> None:
    rb = values["rot-block"]
    if rb & (rb - 1):
        raise SpecError(f"invalid value {rb!r} for key 'rot-block': expected a power of two")


def _seed(ctx: ValueContext) -> int:
    # drawn from the encoder's (seed, round) stream, so payloads stay deterministic
    return int(ctx.rng.integers(0, 1 << 63))


class Drive(QuantStage):
    """``quant=drive``: DRIVE, 1 bit per rotated coordinate and one scale per block."""

    name = "drive"
    summary = "DRIVE: randomized Hadamard rotation, 1 bit per coordinate + a scale per block"
    options = ROTATION_OPTIONS

    def validate(self, values) -> None:
        _check_block(values)

    def encode(self, x, ctx):
        return drive_encode(x, _seed(ctx), unbiased=ctx.spec.get("unbiased"), rot_block=ctx.spec.get("rot-block"))

    def decode(self, r, ctx):
        return drive_decode(r, ctx.count, rot_block=ctx.spec.get("rot-block"))


class Eden(QuantStage):
    """``quant=eden``: EDEN, ``bits`` (1-4) per rotated coordinate and one scale per block."""

    name = "eden"
    summary = "EDEN: randomized Hadamard rotation, b-bit Lloyd-Max levels + a scale per block"
    keys = ("bits", "entropy")
    options = ROTATION_OPTIONS

    def validate(self, values) -> None:
        if values["bits"] > max(LLOYD_MAX):
            raise SpecError("key 'bits' must be 1-4 for quant=eden (Lloyd-Max levels are tabulated up to 4 bits)")
        _check_block(values)

    def encode(self, x, ctx):
        s = ctx.spec
        return eden_encode(x, _seed(ctx), bits=s.bits, unbiased=s.get("unbiased"), rot_block=s.get("rot-block"),
                           huffman=s.entropy == "huffman")

    def decode(self, r, ctx):
        s = ctx.spec
        return eden_decode(r, ctx.count, bits=s.bits, rot_block=s.get("rot-block"), huffman=s.entropy == "huffman")


register_stage(Drive)
register_stage(Eden)
