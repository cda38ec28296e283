"""Canonical Huffman coding of small-alphabet codes (quantizer outputs).

Code lengths are limited to :data:`MAX_CODE_BITS` so the decoder's lookup
table stays small.  Decoding is vectorised: a table lookup on the
``MAX``-bit window at *every* bit position gives "codeword length if a
codeword started here", and the chain of real codeword starts from bit 0 is
found by pointer doubling (``O(T log k)`` for ``T`` bits and ``k`` codes)
instead of a per-symbol Python loop.

Section layout::

    code lengths  ceil(A/2) bytes, 4 bits per symbol (0 = unused)
    bit count T   u32
    bits          ceil(T/8) bytes, zero padded
"""

from __future__ import annotations

import heapq

import numpy as np

from .bitpack import pack_bits, scatter_fields, unpack_bits
from .errors import PayloadError
from .wire import Reader, Writer

__all__ = ["MAX_CODE_BITS", "code_lengths", "canonical_codes", "encode_huffman", "decode_huffman"]

MAX_CODE_BITS = 15


def code_lengths(freq: np.ndarray, max_bits: int = MAX_CODE_BITS) -> np.ndarray:
    """Huffman code lengths for symbol frequencies, limited to ``max_bits``.

    The limit is enforced by halving frequencies (keeping them >= 1) and
    rebuilding, which is slightly suboptimal only for extremely skewed inputs.
    A single used symbol gets length 1.
    """
    freq = np.asarray(freq, dtype=np.int64).copy()
    lengths = np.zeros(freq.size, dtype=np.int64)
    used = np.flatnonzero(freq)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used] = 1
        return lengths
    while True:
        heap = [(int(freq[s]), int(s), [int(s)]) for s in used]
        heapq.heapify(heap)
        depth = dict.fromkeys(used.tolist(), 0)
        tie = freq.size
        while len(heap) > 1:
            fa, _, a = heapq.heappop(heap)
            fb, _, b = heapq.heappop(heap)
            for s in a + b:
                depth[s] += 1
            heapq.heappush(heap, (fa + fb, tie, a + b))
            tie += 1
        for s, d in depth.items():
            lengths[s] = d
        if lengths.max() <= max_bits:
            return lengths
        freq[used] = np.maximum(1, freq[used] >> 1)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codewords for the given lengths (shorter first, then by symbol)."""
    codes = np.zeros(lengths.size, dtype=np.int64)
    code = 0
    prev = 0
    for s in sorted(np.flatnonzero(lengths).tolist(), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        codes[s] = code
        prev = int(lengths[s])
        code += 1
    return codes


def encode_huffman(symbols: np.ndarray, alphabet: int) -> bytes:
    """Encode ``symbols`` (ints in ``[0, alphabet)``) as a self-describing section."""
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    codes = canonical_codes(lengths)
    w = Writer()
    nib = np.zeros(alphabet + (alphabet & 1), dtype=np.uint8)
    nib[:alphabet] = lengths
    w.raw(((nib[0::2] << 4) | nib[1::2]).astype(np.uint8).tobytes())
    bits = scatter_fields(codes[symbols], lengths[symbols])
    w.u32(bits.size)
    w.raw(pack_bits(bits))
    return w.getvalue()


def decode_huffman(r: Reader, count: int, alphabet: int) -> np.ndarray:
    """Decode exactly ``count`` symbols; returns ``int64`` symbols.

    Raises
    ------
    PayloadError
        Over-subscribed code lengths, invalid or unused codewords, a bit
        count inconsistent with ``count``, or bits left over.
    """
    packed = np.frombuffer(r.take((alphabet + 1) // 2, "huffman lengths"), dtype=np.uint8)
    lengths = np.empty(packed.size * 2, dtype=np.int64)
    lengths[0::2] = packed >> 4
    lengths[1::2] = packed & 15
    if alphabet & 1 and lengths[-1]:
        raise PayloadError("huffman lengths: non-zero padding")
    lengths = lengths[:alphabet]
    used = lengths > 0
    if int((np.int64(1) << (MAX_CODE_BITS - lengths[used])).sum()) > (1 << MAX_CODE_BITS):
        raise PayloadError("huffman lengths over-subscribe the code space")
    total = r.u32("huffman bit count")
    bits = unpack_bits(r.take((total + 7) // 8, "huffman bits"), total, "huffman bits")
    if count == 0:
        if total:
            raise PayloadError("huffman bits present for zero symbols")
        return np.zeros(0, dtype=np.int64)
    if not used.any():
        raise PayloadError("huffman table is empty")
    if not count * int(lengths[used].min()) <= total <= count * int(lengths.max()):
        raise PayloadError("huffman bit count inconsistent with symbol count")

    width = int(lengths.max())
    codes = canonical_codes(lengths)
    tab_len = np.zeros(1 << width, dtype=np.int64)
    tab_sym = np.zeros(1 << width, dtype=np.int64)
    for s in np.flatnonzero(used).tolist():
        lo = int(codes[s]) << (width - int(lengths[s]))
        hi = (int(codes[s]) + 1) << (width - int(lengths[s]))
        tab_len[lo:hi] = lengths[s]
        tab_sym[lo:hi] = s

    padded = np.concatenate([bits, np.zeros(width, dtype=np.uint8)])
    window = np.zeros(total, dtype=np.int64)
    for j in range(width):
        window = (window << 1) | padded[j:j + total]
    step = tab_len[window]
    # Jump table over bit positions plus two absorbing sinks: total (exact
    # end of stream) and total + 1 (error: invalid codeword or overrun).
    nxt = np.arange(total, dtype=np.int64) + step
    nxt[(step == 0) | (nxt > total)] = total + 1
    jump = np.concatenate([nxt, [total, total + 1]])
    first = jump
    starts = np.zeros(1, dtype=np.int64)
    while starts.size < count:
        starts = np.concatenate([starts, jump[starts]])
        if starts.size < count:
            jump = jump[jump]
    starts = starts[:count]
    if int(starts.max()) >= total or int(first[starts[-1]]) != total:
        raise PayloadError("huffman stream does not decode to the declared symbol count")
    return tab_sym[window[starts]]
