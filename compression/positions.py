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
            4 = grid     -> rows hit u32, columns hit u32, then three sections
                            as above (tag 0 or 1): the rows hit of the
                            ``(rows, n // rows)`` view, the columns hit, and
                            the positions in the grid of those rows and columns
            3 = context  -> reference digest (4 bytes), kept count of classes 0-3
                            (LEB128; class 4 has the rest), r u8 of every class with
                            kept positions, unary length u32, unary bytes (all
                            classes' quotients), remainder bits (r_c bits each)

Grid coding (``coder=grid``) needs nothing but the payload: when a tensor's
positions fill only some rows and columns of its ``(shape[0], rest)`` view
(dead input features, the output units that moved), naming those rows and
columns once and coding positions inside the smaller grid costs fewer bits.
The encoder keeps the cheapest of bitmap, Rice gaps and grid per tensor.

Context coding (``coder=context``) uses positions both sides already know, the
*reference* (in a federation: the support of the downlink deltas the client
received this round, :func:`compression.union_support`). A client's top-k tends
to fall where the global model just moved and in the rows and columns (output
units, input features) that moved: on the McMahan CNN at p = 1/400 about half
of a client's positions lie in the reference, which is a few times k. The slots
of the tensor's ``(shape[0], rest)`` view are split into five classes: in the
reference; not in it, with its row and column touched by it; row only; column
only; neither. Each class's positions are Rice-coded as gaps between ranks in
that class, with the class's own parameter, so dense classes cost few bits a
position. The digest makes a decoder holding another reference fail instead of
decoding wrong positions.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .bitpack import gather_fields, pack_bits, scatter_fields, unpack_bits
from .errors import PayloadError, UpdateError
from .wire import Reader, Writer

__all__ = ["BITMAP", "RICE", "ELIAS", "CONTEXT", "GRID", "encode_positions", "decode_positions", "rice_parameter",
           "context_classes", "NO_REFERENCE"]

BITMAP, RICE, ELIAS, CONTEXT, GRID = 0, 1, 2, 3, 4
_ALLOWED = {"bitmap": {BITMAP}, "golomb": {BITMAP, RICE}, "elias": {BITMAP, ELIAS}, "context": {BITMAP, CONTEXT},
            "grid": {BITMAP, RICE, GRID}}
_MAX_RICE = 30
_CLASSES = 5
NO_REFERENCE = np.empty(0, dtype=np.int64)


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


def encode_positions(idx: np.ndarray, n: int, coder: str = "golomb", reference: np.ndarray | None = None,
                     rows: int = 1) -> bytes:
    """Encode sorted unique positions ``idx`` (``int64``) out of ``n``.

    Parameters
    ----------
    idx : numpy.ndarray
        Sorted, unique positions in ``[0, n)``.
    n : int
        Domain size.
    coder : {"golomb", "elias", "bitmap", "context", "grid"}
        Gap code compared against the bitmap; ``bitmap`` forces the bitmap;
        ``grid`` also compares the row/column grid code.
    reference : numpy.ndarray, optional
        ``coder="context"`` only: sorted unique positions in ``[0, n)`` the
        decoder also knows (see the module docstring).
    rows : int, default 1
        ``coder="context"`` and ``"grid"``: rows of the ``(rows, n // rows)``
        view whose rows and columns they look at.

    Returns
    -------
    bytes
    """
    k = idx.size
    w = Writer()
    bitmap_bytes = (n + 7) // 8
    if coder == "context":
        body = _encode_context(idx, n, reference, rows)
        if len(body) < bitmap_bytes + 1:
            return body
        coder = "bitmap"
    if coder == "grid":
        plain = encode_positions(idx, n, "golomb")
        if rows < 2 or rows == n or not k:
            return plain
        body = _encode_grid(idx, n, rows)
        return body if len(body) < len(plain) else plain
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


def decode_positions(r: Reader, n: int, k: int, coder: str = "golomb", reference: np.ndarray | None = None,
                     rows: int = 1) -> np.ndarray:
    """Decode ``k`` positions out of ``n``, checking sortedness and range.

    ``reference`` and ``rows`` must be those the encoder was given
    (``coder="context"``; see :func:`encode_positions`).

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
    if tag == CONTEXT:
        return _decode_context(r, n, k, reference, rows)
    if tag == GRID:
        return _decode_grid(r, n, k, rows)
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


# ------------------------------------------------------------------ grid coding

def _encode_grid(idx: np.ndarray, n: int, rows: int) -> bytes:
    cols = n // rows
    row_of, col_of = np.divmod(idx, cols)
    hit_rows, hit_cols = np.unique(row_of), np.unique(col_of)
    # row-major ranks in the grid of hit rows x hit columns keep the positions' order
    ranks = np.searchsorted(hit_rows, row_of) * hit_cols.size + np.searchsorted(hit_cols, col_of)
    w = Writer()
    w.u8(GRID)
    w.u32(hit_rows.size)
    w.u32(hit_cols.size)
    w.raw(encode_positions(hit_rows, rows, "golomb"))
    w.raw(encode_positions(hit_cols, cols, "golomb"))
    w.raw(encode_positions(ranks.astype(np.int64), hit_rows.size * hit_cols.size, "golomb"))
    return w.getvalue()


def _decode_grid(r: Reader, n: int, k: int, rows: int) -> np.ndarray:
    if rows < 2 or n % rows:
        raise PayloadError(f"grid-coded positions for a view of {rows} rows of {n} slots")
    cols = n // rows
    n_rows, n_cols = r.u32("rows hit"), r.u32("columns hit")
    if not (0 < n_rows <= min(rows, k) and 0 < n_cols <= min(cols, k) and k <= n_rows * n_cols):
        raise PayloadError(f"grid of {n_rows} x {n_cols} hit rows and columns cannot hold {k} positions")
    hit_rows = decode_positions(r, rows, n_rows, "golomb")
    hit_cols = decode_positions(r, cols, n_cols, "golomb")
    ranks = decode_positions(r, n_rows * n_cols, k, "golomb")
    i, j = np.divmod(ranks, n_cols)
    # one encoding per position set: every row and column named must hold a position
    if np.unique(i).size != n_rows or np.unique(j).size != n_cols:
        raise PayloadError("grid names a row or column that holds no position")
    return hit_rows[i] * cols + hit_cols[j]


# ------------------------------------------------------------------ context coding

def context_classes(reference: np.ndarray, n: int, rows: int = 1) -> np.ndarray:
    """The class (0-4) of every slot given the known ``reference`` positions.

    0: in the reference; 1: not in it, its row and its column of the
    ``(rows, n // rows)`` view hold reference positions; 2: only its row does;
    3: only its column; 4: neither.
    """
    cols = n // rows
    known = np.zeros(n, dtype=bool)
    known[reference] = True
    grid = known.reshape(rows, cols)
    row_miss = ~grid.any(axis=1)
    col_miss = ~grid.any(axis=0)
    cls = (1 + 2 * row_miss.astype(np.int8)[:, None] + col_miss.astype(np.int8)[None, :]).reshape(-1)
    cls[known] = 0
    return cls


def _reference_digest(reference: np.ndarray, n: int) -> bytes:
    return hashlib.blake2b(n.to_bytes(8, "little") + reference.astype("<i8").tobytes(), digest_size=4).digest()


def _check_reference(reference: np.ndarray | None, n: int, rows: int, error: type[ValueError] = UpdateError
                     ) -> np.ndarray:
    """The reference as int64; ``error`` when it does not fit ``n`` slots (a decoder passes
    PayloadError: the payload's shapes are then not those the reference was taken from)."""
    if reference is None:
        raise UpdateError("coder=context needs the reference positions both sides know")
    ref = np.asarray(reference)
    if (ref.ndim != 1 or (ref.size and (ref.dtype.kind not in "iu" or int(ref[0]) < 0 or int(ref[-1]) >= n
                                        or not (np.diff(ref) > 0).all())) or rows < 1 or n % rows):
        raise error(f"context reference must be sorted unique integer positions in [0, {n}) "
                    f"and rows ({rows}) must divide {n}")
    return ref.astype(np.int64, copy=False) if ref.size else NO_REFERENCE


def _class_domains(reference: np.ndarray, n: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class of every slot, slots sorted by class then position, first index of each class in that order)."""
    cls = context_classes(reference, n, rows)
    order = np.argsort(cls, kind="stable")
    starts = np.concatenate(([0], np.cumsum(np.bincount(cls, minlength=_CLASSES))))
    return cls, order, starts


def _leb128(v: int) -> bytes:
    out = bytearray()
    while True:
        byte, v = v & 0x7F, v >> 7
        out.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _read_leb128(r: Reader, what: str) -> int:
    v = shift = 0
    for i in range(5):
        byte = r.u8(what)
        v |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if byte == 0 and i:  # one encoding per value: no overlong zero groups
                raise PayloadError(f"{what}: overlong varint")
            return v
    raise PayloadError(f"{what}: varint longer than 5 bytes")


def _encode_context(idx: np.ndarray, n: int, reference: np.ndarray | None, rows: int) -> bytes:
    ref = _check_reference(reference, n, rows)
    cls, order, starts = _class_domains(ref, n, rows)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64) - starts[:-1][cls[order]]
    of = cls[idx]
    w = Writer()
    w.u8(CONTEXT)
    w.raw(_reference_digest(ref, n))
    quotients, remainders, widths, params = [], [], [], []
    for c in range(_CLASSES):
        ranks = rank[idx[of == c]]
        if c < _CLASSES - 1:
            w.raw(_leb128(int(ranks.size)))
        if not ranks.size:
            continue
        gaps = _gaps(ranks)
        rp, _ = rice_parameter(gaps)
        params.append(rp)
        quotients.append(gaps >> rp)
        remainders.append(gaps & ((1 << rp) - 1))
        widths.append(np.full(ranks.size, rp))
    w.raw(bytes(params))
    if params:
        w.section(_unary(np.concatenate(quotients)))
        w.raw(pack_bits(scatter_fields(np.concatenate(remainders), np.concatenate(widths))))
    else:
        w.section(b"")
    return w.getvalue()


def _decode_context(r: Reader, n: int, k: int, reference: np.ndarray | None, rows: int) -> np.ndarray:
    if reference is None:
        raise PayloadError("positions coded with coder=context: the decoder must be given the reference")
    ref = _check_reference(reference, n, rows, PayloadError)
    if bytes(r.take(4, "reference digest")) != _reference_digest(ref, n):
        raise PayloadError("positions were coded against another reference than the decoder's")
    cls, order, starts = _class_domains(ref, n, rows)
    sizes = np.diff(starts)
    counts = [_read_leb128(r, f"kept count of position class {c}") for c in range(_CLASSES - 1)]
    if sum(counts) > k:
        raise PayloadError(f"position classes hold {sum(counts)} of {k} kept positions")
    counts.append(k - sum(counts))
    if any(cnt > int(size) for cnt, size in zip(counts, sizes)):
        raise PayloadError("a position class keeps more positions than it has slots")
    present = [c for c in range(_CLASSES) if counts[c]]
    params = list(r.take(len(present), "rice parameters"))
    if any(rp > _MAX_RICE for rp in params):
        raise PayloadError(f"rice parameter exceeds {_MAX_RICE}")
    q = _read_unary(r, k, "context quotients")
    widths = np.concatenate([np.full(counts[c], rp, dtype=np.int64) for c, rp in zip(present, params)]) \
        if present else np.empty(0, dtype=np.int64)
    nb = int(widths.sum())
    bits = unpack_bits(r.take((nb + 7) // 8, "context remainders"), nb, "context remainders")
    rem = gather_fields(bits, np.cumsum(widths) - widths, widths) if nb else np.zeros(k, dtype=np.int64)
    out, at = [], 0
    for c, rp in zip(present, params):
        qc = q[at:at + counts[c]]
        if int(qc.max()) > (int(sizes[c]) >> rp):
            raise PayloadError("position gap out of range")
        ranks = np.cumsum((qc << rp) + rem[at:at + counts[c]] + 1, dtype=np.int64) - 1
        if int(ranks[-1]) >= int(sizes[c]):
            raise PayloadError(f"position rank {int(ranks[-1])} out of range for class {c} of {int(sizes[c])} slots")
        out.append(order[starts[c] + ranks])
        at += counts[c]
    # classes partition the slots and ranks increase within a class: the union is unique
    return np.sort(np.concatenate(out)) if out else np.empty(0, dtype=np.int64)
