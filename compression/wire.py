"""Byte-level framing: a strict little-endian reader/writer and the header.

Payload layout (all integers little-endian)::

    magic  b"FSQZ"                      4 bytes
    version                             u8   (FORMAT_VERSION)
    flags                               u8   (reserved, must be 0)
    spec length, canonical spec UTF-8   u16 + bytes (<= MAX_SPEC_CHARS)
    tensor count                        u32  (<= MAX_TENSORS)
    per tensor: name length u8, name (printable ASCII), dtype code u8,
                ndim u8 (<= MAX_NDIM), dims u32 * ndim
    body: per tensor a u32-length-prefixed section (zstd-compressed as a
          whole when the spec says zstd=true)
    crc32 of everything above           u32

With ``header=compact`` in the spec the version byte is ``COMPACT_VERSION``
and the tensor table (count and per-tensor entries, 150-250 bytes for a small
CNN) is replaced by its 8-byte BLAKE2b digest; every tensor must be float32.
Such a payload is no longer self-describing: the decoder is given the names
and shapes it expects, rebuilds the table and checks the digest, so a payload
encoded for other tensors is still refused.

The reader raises :class:`PayloadError` on every short read and the caller
checks that every section is consumed exactly.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .errors import PayloadError, SpecError, UpdateError
from .spec import MAX_SPEC_CHARS, PipelineSpec, parse_spec

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "COMPACT_VERSION",
    "MAX_TENSORS",
    "MAX_NAME_BYTES",
    "MAX_NDIM",
    "MAX_TENSOR_NUMEL",
    "DTYPES",
    "TensorInfo",
    "Writer",
    "Reader",
    "write_header",
    "read_header",
    "read_spec",
    "seal",
    "unseal",
]

MAGIC = b"FSQZ"
FORMAT_VERSION = 1
#: Version byte of a compact header (``header=compact``: the tensor table travels as a digest).
COMPACT_VERSION = 2
_DIGEST_BYTES = 8
MAX_TENSORS = 65_535
MAX_NAME_BYTES = 255
MAX_NDIM = 8
#: Per-tensor element limit; keeps every index and gap sum inside int64.
MAX_TENSOR_NUMEL = (1 << 31) - 1

#: dtype code -> original torch dtype (decoding always yields float32).
DTYPES: dict[int, torch.dtype] = {0: torch.float32, 1: torch.float16, 2: torch.bfloat16, 3: torch.float64}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Name, original dtype and shape of one tensor in a payload."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Writer:
    """Append-only little-endian byte builder."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def u8(self, v: int) -> None:
        self.buf += v.to_bytes(1, "little")

    def u16(self, v: int) -> None:
        self.buf += v.to_bytes(2, "little")

    def u32(self, v: int) -> None:
        self.buf += v.to_bytes(4, "little")

    def u64(self, v: int) -> None:
        self.buf += v.to_bytes(8, "little")

    def raw(self, b: bytes) -> None:
        self.buf += b

    def section(self, b: bytes) -> None:
        """Write ``b`` prefixed by its u32 length."""
        if len(b) >= 1 << 32:
            raise ValueError("section longer than 4 GiB")
        self.u32(len(b))
        self.buf += b

    def getvalue(self) -> bytes:
        return bytes(self.buf)


class Reader:
    """Strict cursor over a bytes-like object; every overrun is a :class:`PayloadError`."""

    def __init__(self, data: bytes | memoryview, what: str = "payload") -> None:
        self._mv = memoryview(data)
        self._pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self._mv) - self._pos

    def take(self, n: int, what: str = "data") -> memoryview:
        if n < 0 or n > self.remaining:
            raise PayloadError(f"{self.what}: truncated while reading {what} "
                               f"({n} bytes needed, {self.remaining} left)")
        out = self._mv[self._pos:self._pos + n]
        self._pos += n
        return out

    def _int(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "little")

    def u8(self, what: str = "u8") -> int:
        return self._int(1, what)

    def u16(self, what: str = "u16") -> int:
        return self._int(2, what)

    def u32(self, what: str = "u32") -> int:
        return self._int(4, what)

    def u64(self, what: str = "u64") -> int:
        return self._int(8, what)

    def section(self, what: str) -> "Reader":
        """Read a u32-length-prefixed section as a sub-reader."""
        n = self.u32(f"{what} length")
        return Reader(self.take(n, what), what)

    def take_all(self) -> memoryview:
        """Consume and return every remaining byte."""
        return self.take(self.remaining, "rest")

    def finish(self) -> None:
        """Require that every byte has been consumed."""
        if self.remaining:
            raise PayloadError(f"{self.what}: {self.remaining} trailing bytes")


def _table(infos: Sequence[TensorInfo]) -> bytes:
    """The tensor table: count, then name, dtype code and dims of every tensor."""
    if len(infos) > MAX_TENSORS:
        raise ValueError(f"at most {MAX_TENSORS} tensors per payload")
    w = Writer()
    w.u32(len(infos))
    for info in infos:
        name = info.name.encode("ascii")
        w.u8(len(name))
        w.raw(name)
        w.u8(DTYPE_CODES[info.dtype])
        w.u8(len(info.shape))
        for d in info.shape:
            w.u32(d)
    return w.getvalue()


def _digest(table: bytes) -> bytes:
    return hashlib.blake2b(table, digest_size=_DIGEST_BYTES).digest()


def write_header(spec: PipelineSpec, infos: list[TensorInfo]) -> bytes:
    """Serialise magic, version, canonical spec and the tensor table (or its digest under ``header=compact``).

    Raises
    ------
    UpdateError
        A compact header over a tensor that is not float32 (the decoder assumes float32).
    ValueError
        Too many tensors.
    """
    compact = spec.header == "compact"
    wide = [i.name for i in infos if i.dtype != torch.float32] if compact else []
    if wide:
        raise UpdateError(f"header=compact needs float32 tensors; {wide[0]!r} is not")
    w = Writer()
    w.raw(MAGIC)
    w.u8(COMPACT_VERSION if compact else FORMAT_VERSION)
    w.u8(0)
    s = spec.to_string().encode("utf-8")
    w.u16(len(s))
    w.raw(s)
    table = _table(infos)
    w.raw(_digest(table) if compact else table)
    return w.getvalue()


def _valid_name(raw: bytes) -> bool:
    return 0 < len(raw) <= MAX_NAME_BYTES and all(0x21 <= b <= 0x7E for b in raw)


def read_spec(r: Reader) -> tuple[int, PipelineSpec]:
    """Parse magic, version and flags and the spec: ``(version, spec)``, the reader left at the table."""
    if bytes(r.take(4, "magic")) != MAGIC:
        raise PayloadError("bad magic: not a FedSqueeze payload")
    version = r.u8("version")
    if version not in (FORMAT_VERSION, COMPACT_VERSION):
        raise PayloadError(f"unsupported format version {version} (expected {FORMAT_VERSION} or {COMPACT_VERSION})")
    if r.u8("flags") != 0:
        raise PayloadError("reserved header flags are set")
    n = r.u16("spec length")
    if n > MAX_SPEC_CHARS:
        raise PayloadError(f"spec string of {n} bytes exceeds {MAX_SPEC_CHARS}")
    try:
        text = bytes(r.take(n, "spec")).decode("ascii")
        spec = parse_spec(text, strict_registry=False)
    except (UnicodeDecodeError, SpecError) as e:
        raise PayloadError(f"invalid pipeline spec in header: {e}") from None
    if spec.to_string() != text:
        raise PayloadError("pipeline spec in header is not in canonical form")
    if (version == COMPACT_VERSION) != (spec.header == "compact"):
        raise PayloadError(f"format version {version} does not match header={spec.header} in the spec")
    return version, spec


def read_header(r: Reader, max_numel: int,
                expected: Mapping[str, tuple[int, ...]] | None = None) -> tuple[PipelineSpec, list[TensorInfo]]:
    """Parse and validate the header; no allocation depends on unchecked counts.

    A compact header needs ``expected`` (tensor names and shapes, in payload
    order): the table is rebuilt from it (float32) and its digest checked.
    """
    version, spec = read_spec(r)
    if version == COMPACT_VERSION:
        return spec, _expected_infos(r, max_numel, expected)
    count = r.u32("tensor count")
    if count > MAX_TENSORS:
        raise PayloadError(f"tensor count {count} exceeds {MAX_TENSORS}")
    infos: list[TensorInfo] = []
    names: set[str] = set()
    total = 0
    for i in range(count):
        raw = bytes(r.take(r.u8("name length"), "tensor name"))
        if not _valid_name(raw):
            raise PayloadError(f"tensor {i}: name must be 1-{MAX_NAME_BYTES} printable ASCII characters")
        name = raw.decode("ascii")
        if name in names:
            raise PayloadError(f"duplicate tensor name {name!r}")
        names.add(name)
        code = r.u8("dtype")
        if code not in DTYPES:
            raise PayloadError(f"tensor {name!r}: unknown dtype code {code}")
        ndim = r.u8("ndim")
        if ndim > MAX_NDIM:
            raise PayloadError(f"tensor {name!r}: ndim {ndim} exceeds {MAX_NDIM}")
        shape = tuple(r.u32("dim") for _ in range(ndim))
        numel = math.prod(shape)
        if numel > MAX_TENSOR_NUMEL:
            raise PayloadError(f"tensor {name!r}: {numel} elements exceed the per-tensor limit")
        total += numel
        if total > max_numel:
            raise PayloadError(f"payload declares more than max_numel={max_numel} elements")
        infos.append(TensorInfo(name, DTYPES[code], shape))
    return spec, infos


def _expected_infos(r: Reader, max_numel: int,
                    expected: Mapping[str, tuple[int, ...]] | None) -> list[TensorInfo]:
    digest = bytes(r.take(_DIGEST_BYTES, "tensor table digest"))
    if expected is None:
        raise PayloadError("compact header (header=compact): decoding needs the expected tensor names and shapes")
    try:
        infos = [TensorInfo(str(name), torch.float32, tuple(int(d) for d in shape)) for name, shape in expected.items()]
        table = _table(infos)
    except (ValueError, TypeError, UnicodeEncodeError, OverflowError) as e:
        raise PayloadError(f"compact header: the expected tensors cannot form a table: {e}") from None
    if sum(i.numel for i in infos) > max_numel:
        raise PayloadError(f"expected tensors hold more than max_numel={max_numel} elements")
    if _digest(table) != digest:
        raise PayloadError("compact header: tensor table digest mismatch (the payload was encoded for other "
                           "tensor names or shapes than expected)")
    return infos


def seal(body: bytes) -> bytes:
    """Append the CRC32 trailer."""
    return body + (zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "little")


def unseal(payload: bytes | bytearray | memoryview) -> memoryview:
    """Check the CRC32 trailer and return the covered bytes.

    The CRC makes every accidental truncation and every single-byte
    corruption a :class:`PayloadError` before any parsing; the parser is still
    fully strict because a hostile sender can recompute the CRC.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise PayloadError(f"payload must be bytes, not {type(payload).__name__}")
    mv = memoryview(payload).cast("B") if isinstance(payload, memoryview) else memoryview(payload)
    if len(mv) < 4 + 4:
        raise PayloadError("payload too short")
    body, tail = mv[:-4], mv[-4:]
    if (zlib.crc32(body) & 0xFFFFFFFF) != int.from_bytes(tail, "little"):
        raise PayloadError("CRC mismatch: payload truncated or corrupted")
    return body
