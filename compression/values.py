"""Value blocks: the transmitted values of one tensor, quantized and coded.

The built-in ``quant`` stages' coders: each pair maps float32 values (with
their parameter groups) to bytes and back; :mod:`compression.builtin`
registers them as :class:`~compression.QuantStage` objects.  Layout, after
which the codes follow either bit-packed (``entropy=none``) or as a Huffman
section::

    none            count * f32
    fp16 / bf16     count * 2 bytes
    uniform         G * f32 scale [+ G * f32 offset if affine], codes
    qsgd            G * f32 L2 norm, codes
    sign / ternary  G * f32 mean |x|, 1-bit codes
    kmeans          clusters * f32 centroid, ceil(log2 clusters)-bit codes
"""

from __future__ import annotations

import numpy as np

from . import cast, cluster, quantize as q
from .bitpack import pack_codes, unpack_codes
from .entropy import decode_huffman, encode_huffman
from .errors import PayloadError
from .registry import STAGES, QuantStage, ValueContext
from .spec import PipelineSpec
from .wire import Reader

__all__ = ["encode_values", "decode_values"]


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


def encode_values(x: np.ndarray, ctx: ValueContext) -> bytes:
    """Quantize and code the float32 values ``x`` with the spec's registered ``quant`` stage."""
    stage = STAGES["quant"][ctx.spec.quant]
    out = stage.encode(x, ctx)
    if not isinstance(out, (bytes, bytearray)):
        raise TypeError(f"quant={stage.name}: encode returned {type(out).__name__}, expected bytes")
    return bytes(out)


def decode_values(r: Reader, ctx: ValueContext) -> np.ndarray:
    """Read ``ctx.count`` values coded by :func:`encode_values` (float32, finiteness unchecked)."""
    stage: QuantStage = STAGES["quant"][ctx.spec.quant]  # type: ignore[assignment]
    out = stage.decode(r, ctx)
    if not isinstance(out, np.ndarray) or out.shape != (ctx.count,):
        raise PayloadError(f"quant={stage.name}: decoded {getattr(out, 'shape', type(out).__name__)} values, "
                           f"expected ({ctx.count},)")
    return out.astype(np.float32, copy=False)
