"""Pruning masks on the wire: one bit per weight, versioned header, CRC32. Never pickle.

Layout (little-endian)::

    b"FSQM" | u8 version | u16 entries
    per entry: u16 name length | name (UTF-8) | u8 ndim | u32 dims... | packed bits
    u32 CRC32 of everything before it

Bits are ``np.packbits(mask.flatten(), bitorder="little")``: a 1.66 M-weight
model's mask is 208 KB, 1/32 of its float32 weights.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["MaskError", "pack_masks", "unpack_masks", "mask_state"]

MAGIC, VERSION = b"FSQM", 1


class MaskError(ValueError):
    """A mask payload is malformed or does not fit the model."""


def pack_masks(masks: Mapping[str, torch.Tensor]) -> bytes:
    """Serialize 0/1 masks ``{parameter name: tensor}``.

    Raises
    ------
    MaskError
        If a mask holds a value other than 0 or 1, or a name is too long.
    """
    out = bytearray(MAGIC + struct.pack("<BH", VERSION, len(masks)))
    for name, mask in masks.items():
        m = mask.detach().cpu()
        if not bool(((m == 0) | (m == 1)).all()):
            raise MaskError(f"mask {name!r} holds values other than 0 and 1")
        raw = name.encode()
        if len(raw) > 0xFFFF or m.dim() > 255:
            raise MaskError(f"mask {name!r}: name or rank too large")
        out += struct.pack("<H", len(raw)) + raw + struct.pack(f"<B{m.dim()}I", m.dim(), *m.shape)
        out += np.packbits(m.flatten().numpy().astype(bool), bitorder="little").tobytes()
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def unpack_masks(payload: bytes, expected: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_masks`: float32 0/1 tensors by parameter name.

    Parameters
    ----------
    payload : bytes
        What :func:`pack_masks` produced.
    expected : mapping of name to shape, optional
        The model's parameter shapes; every mask must name one of them and
        match its shape.

    Raises
    ------
    MaskError
        Bad magic, version or CRC, truncation, trailing bytes, unknown
        parameter or wrong shape.
    """
    buf = memoryview(bytes(payload))
    if len(buf) < 11 or bytes(buf[:4]) != MAGIC:
        raise MaskError("not a mask payload (bad magic or too short)")
    if zlib.crc32(buf[:-4]) != struct.unpack_from("<I", buf, len(buf) - 4)[0]:
        raise MaskError("mask payload CRC32 mismatch (corrupted in transit)")
    version, count = struct.unpack_from("<BH", buf, 4)
    if version != VERSION:
        raise MaskError(f"mask payload version {version}, this build reads {VERSION}")
    pos, end, masks = 7, len(buf) - 4, {}
    try:
        for _ in range(count):
            (name_len,) = struct.unpack_from("<H", buf, pos)
            name = bytes(buf[pos + 2 : pos + 2 + name_len]).decode()
            pos += 2 + name_len
            (ndim,) = struct.unpack_from("<B", buf, pos)
            shape = struct.unpack_from(f"<{ndim}I", buf, pos + 1)
            pos += 1 + 4 * ndim
            numel = int(np.prod(shape, dtype=np.int64))
            nbytes = (numel + 7) // 8
            if pos + nbytes > end:
                raise MaskError(f"mask {name!r} is truncated")
            bits = np.frombuffer(buf[pos : pos + nbytes], dtype=np.uint8)
            pos += nbytes
            flat = np.unpackbits(bits, count=numel, bitorder="little").astype(np.float32)
            masks[name] = torch.from_numpy(flat.reshape(shape))
    except (struct.error, UnicodeDecodeError) as exc:
        raise MaskError(f"mask payload is truncated or garbled: {exc}") from None
    if pos != end:
        raise MaskError(f"mask payload has {end - pos} unexpected trailing bytes")
    if expected is not None:
        for name, mask in masks.items():
            if name not in expected:
                raise MaskError(f"mask names unknown parameter {name!r}")
            if tuple(mask.shape) != tuple(expected[name]):
                raise MaskError(f"mask {name!r} has shape {tuple(mask.shape)}, parameter has {tuple(expected[name])}")
    return masks


def mask_state(tensors: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy of ``tensors`` with the entries at pruned positions (mask 0) set to exactly 0.

    The clients (their update and error-feedback residual) and the server
    (decoded updates and the aggregate) apply the same masks this way, so a
    pruned weight stays exactly zero on both sides.

    Parameters
    ----------
    tensors : mapping of name to tensor
        Model-shaped tensors (weights, an update, a residual).
    masks : mapping of name to tensor
        0/1 masks of the pruned parameters (:func:`unpack_masks`); entries
        without a mask are returned unchanged.
    """
    return {k: v * masks[k] if k in masks else v for k, v in tensors.items()}
