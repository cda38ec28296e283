"""Value blocks: the transmitted values of one tensor, quantized and coded.

One registry entry per ``quant`` stage maps float32 values (with their
parameter groups) to bytes and back.  Layout, after which the codes follow
either bit-packed (``entropy=none``) or as a Huffman section::

    none            count * f32
    fp16 / bf16     count * 2 bytes
    uniform         G * f32 scale [+ G * f32 offset if affine], codes
    qsgd            G * f32 L2 norm, codes
    sign / ternary  G * f32 mean |x|, 1-bit codes
    kmeans          clusters * f32 centroid, ceil(log2 clusters)-bit codes
    drive / eden    u64 rotation seed, per-block f32 scale, codes of the
                    rotated, padded vector (see :mod:`compression.rotation`)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import cast, cluster, lowrank, quantize as q, rotation, sketch
from .bitpack import pack_codes, unpack_codes
from .entropy import decode_huffman, encode_huffman
from .errors import PayloadError
from .quantize import Groups
from .spec import PipelineSpec
from .wire import Reader

__all__ = ["ValueCodec", "VALUE_CODECS", "encode_values", "decode_values"]


@dataclass(frozen=True)
class ValueCodec:
    """Encoder/decoder pair registered for a ``quant`` stage name.

    Attributes
    ----------
    encode, decode
        ``encode(x, spec, groups, rng) -> bytes`` and
        ``decode(reader, count, spec, groups) -> values``.  A ``shaped`` codec
        is instead called as ``encode(x, spec, groups, rng, shape, state)
        -> (bytes, new_state)`` and ``decode(reader, count, spec, groups,
        shape)``: it sees the tensor's shape and may keep per-tensor state
        on the client between rounds (``state`` is its previous
        ``new_state`` for this tensor, or ``None``).
    shaped : bool
        See above.
    min_ndim : int
        Tensors with fewer dimensions bypass the stage (sent as raw float32).
    aggregator : callable or None
        ``aggregator(spec, shapes)``: a server-side aggregation object for
        stages whose payloads the server combines in the compressed domain
        (FetchSGD's sketches); see :func:`compression.server_aggregator`.
        ``None``: the server averages decoded updates.
    values_sent : callable or None
        ``values_sent(shape, spec)``: values a dense block transmits, when
        not one per element (for the report's ``nnz``).  A codec that sends
        fewer than one bit per element must check its block length itself,
        before allocating, since the codec's generic one-bit-per-value
        check is skipped for it.
    """

    encode: Callable[..., Any]
    decode: Callable[..., np.ndarray]
    shaped: bool = False
    min_ndim: int = 0
    values_sent: Callable[[tuple[int, ...], PipelineSpec], int] | None = None
    aggregator: Callable[..., Any] | None = None


def _f32(a: np.ndarray) -> bytes:
    return np.asarray(a, dtype="<f4").tobytes()


def _read_f32(r: Reader, n: int, what: str, nonneg: bool = False) -> np.ndarray:
    a = np.frombuffer(r.take(4 * n, what), dtype="<f4").astype(np.float32)
    if not np.isfinite(a).all() or (nonneg and (a < 0).any()):
        raise PayloadError(f"{what}: non-finite{' or negative' if nonneg else ''} value")
    return a


def _codes_out(codes: np.ndarray, bits: int, alphabet: int, spec: PipelineSpec) -> bytes:
    if spec.entropy == "huffman":
        return encode_huffman(codes, alphabet)
    return pack_codes(codes, bits)


def _codes_in(r: Reader, count: int, bits: int, alphabet: int, max_code: int, spec: PipelineSpec) -> np.ndarray:
    if spec.entropy == "huffman":
        codes = decode_huffman(r, count, alphabet)
    else:
        codes = unpack_codes(r.take((count * bits + 7) // 8, "codes"), count, bits)
    if codes.size and int(codes.max()) > max_code:
        raise PayloadError(f"quantization code {int(codes.max())} exceeds {max_code}")
    return codes.astype(np.uint8)


# ---------------------------------------------------------------- float stages

def _enc_none(x, spec, groups, rng):
    return _f32(x)


def _dec_none(r, count, spec, groups):
    return np.frombuffer(r.take(4 * count, "float32 values"), dtype="<f4").astype(np.float32)


def _enc_fp16(x, spec, groups, rng):
    return cast.to_fp16(x)


def _dec_fp16(r, count, spec, groups):
    return cast.from_fp16(r.take(2 * count, "float16 values"), count)


def _enc_bf16(x, spec, groups, rng):
    return cast.to_bf16(x)


def _dec_bf16(r, count, spec, groups):
    return cast.from_bf16(r.take(2 * count, "bfloat16 values"), count)


# ---------------------------------------------------------------- uniform

def _enc_uniform(x, spec, groups, rng):
    sym = spec.mode == "symmetric"
    params = q.choose_qparams(x, groups, spec.bits, sym)
    codes = q.quantize(x, params, groups, spec.bits, sym, spec.rounding, rng)
    head = _f32(params.scale) + (b"" if sym else _f32(params.offset))
    return head + _codes_out(codes, spec.bits, 1 << spec.bits, spec)


def _dec_uniform(r, count, spec, groups):
    sym = spec.mode == "symmetric"
    scale = _read_f32(r, groups.count, "scales", nonneg=True)
    offset = None if sym else _read_f32(r, groups.count, "offsets")
    codes = _codes_in(r, count, spec.bits, 1 << spec.bits, q.max_uniform_code(spec.bits, sym), spec)
    return q.dequantize(codes, q.UniformParams(scale, offset), groups, spec.bits, sym)


# ---------------------------------------------------------------- QSGD

def _enc_qsgd(x, spec, groups, rng):
    norms, codes = q.qsgd_quantize(x, groups, spec.bits, rng)
    return _f32(norms) + _codes_out(codes, spec.bits, 1 << spec.bits, spec)


def _dec_qsgd(r, count, spec, groups):
    norms = _read_f32(r, groups.count, "norms", nonneg=True)
    codes = _codes_in(r, count, spec.bits, 1 << spec.bits, q.max_uniform_code(spec.bits, True), spec)
    return q.qsgd_dequantize(codes, norms, groups, spec.bits)


# ---------------------------------------------------------------- sign / ternary

def _enc_sign(x, spec, groups, rng):
    scales, codes = q.sign_quantize(x, groups)
    return _f32(scales) + _codes_out(codes, 1, 2, spec)


def _dec_sign(r, count, spec, groups):
    scales = _read_f32(r, groups.count, "scales", nonneg=True)
    return q.sign_dequantize(_codes_in(r, count, 1, 2, 1, spec), scales, groups)


# ---------------------------------------------------------------- k-means

def _enc_kmeans(x, spec, groups, rng):
    c = cluster.kmeans_1d(x, spec.clusters)
    codes = cluster.assign(x, c).astype(np.uint8)
    return _f32(c) + _codes_out(codes, q.code_bits(spec.clusters), spec.clusters, spec)


def _dec_kmeans(r, count, spec, groups):
    c = _read_f32(r, spec.clusters, "centroids")
    codes = _codes_in(r, count, q.code_bits(spec.clusters), spec.clusters, spec.clusters - 1, spec)
    return c[codes]


# ---------------------------------------------------------------- rotation (DRIVE / EDEN)

def _rotation_seed(rng: np.random.Generator) -> int:
    # drawn from the encoder's (seed, round) stream, so payloads stay deterministic
    return int(rng.integers(0, 1 << 63))


def _enc_drive(x, spec, groups, rng):
    return rotation.drive_encode(x, _rotation_seed(rng), unbiased=spec.unbiased, rot_block=spec.rot_block)


def _dec_drive(r, count, spec, groups):
    return rotation.drive_decode(r, count, rot_block=spec.rot_block)


def _enc_eden(x, spec, groups, rng):
    return rotation.eden_encode(x, _rotation_seed(rng), bits=spec.bits, unbiased=spec.unbiased,
                                rot_block=spec.rot_block, huffman=spec.entropy == "huffman")


def _dec_eden(r, count, spec, groups):
    return rotation.eden_decode(r, count, bits=spec.bits, rot_block=spec.rot_block,
                                huffman=spec.entropy == "huffman")


# ---------------------------------------------------------------- low rank (PowerSGD)

def _enc_powersgd(x, spec, groups, rng, shape, state):
    warm = state if spec.warm_start else None
    return lowrank.powersgd_encode(x, shape, spec.rank, warm, rng)


def _dec_powersgd(r, count, spec, groups, shape):
    return lowrank.powersgd_decode(r, shape, spec.rank)


# ---------------------------------------------------------------- count sketch (FetchSGD)

def _enc_fetchsgd(x, spec, groups, rng):
    return sketch.sketch_encode(x, rows=spec.rows, size=spec.sketch_size)


def _dec_fetchsgd(r, count, spec, groups):
    return sketch.sketch_decode(r, count, rows=spec.rows, size=spec.sketch_size, keep=spec.keep)


def _fetchsgd_cells(shape, spec):
    rows, cols = sketch.table_shape(math.prod(shape), spec.rows, spec.sketch_size)
    return rows * cols


#: Registry: ``quant`` stage name -> value codec.
VALUE_CODECS: dict[str, ValueCodec] = {
    "none": ValueCodec(_enc_none, _dec_none),
    "fp16": ValueCodec(_enc_fp16, _dec_fp16),
    "bf16": ValueCodec(_enc_bf16, _dec_bf16),
    "uniform": ValueCodec(_enc_uniform, _dec_uniform),
    "qsgd": ValueCodec(_enc_qsgd, _dec_qsgd),
    "sign": ValueCodec(_enc_sign, _dec_sign),
    "ternary": ValueCodec(_enc_sign, _dec_sign),
    "kmeans": ValueCodec(_enc_kmeans, _dec_kmeans),
    "drive": ValueCodec(_enc_drive, _dec_drive),
    "eden": ValueCodec(_enc_eden, _dec_eden),
    "powersgd": ValueCodec(_enc_powersgd, _dec_powersgd, shaped=True, min_ndim=2,
                           values_sent=lambda shape, spec: lowrank.values_sent(shape, spec.rank)),
    "fetchsgd": ValueCodec(_enc_fetchsgd, _dec_fetchsgd, values_sent=_fetchsgd_cells,
                           aggregator=sketch.FetchSGDAggregator),
}


def encode_values(x: np.ndarray, spec: PipelineSpec, groups: Groups, rng: np.random.Generator) -> bytes:
    """Quantize and code the float32 values ``x`` with the spec's ``quant`` stage."""
    return VALUE_CODECS[spec.quant].encode(x, spec, groups, rng)


def decode_values(r: Reader, count: int, spec: PipelineSpec, groups: Groups) -> np.ndarray:
    """Read ``count`` values coded by :func:`encode_values` (float32, finiteness unchecked)."""
    return VALUE_CODECS[spec.quant].decode(r, count, spec, groups)
