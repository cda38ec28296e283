"""Natural compression as a FedSqueeze quant stage, written only against the public API.

Horváth, Ho, Horváth, Sahu, Canini and Richtárik, "Natural Compression for
Distributed Deep Learning" (2019, arXiv:1905.10988).  Each value ``x`` is
rounded to one of the two powers of two around it, ``2^a <= |x| < 2^(a+1)``,
up with probability ``(|x| - 2^a) / 2^a``, so that ``E[C(x)] = x``; only the
sign and the 8-bit float32 exponent of the result are sent: 9 bits per
value.  Its variance is at most ``x^2 / 8`` (the paper's ``omega = 1/8``),
reached at ``|x| = 4/3 * 2^a``.

Use it by naming the module in the ``plugins`` run-config key and the stage
in a pipeline::

    plugins = "examples.natural_compression"
    uplink = "quant=natural"                         # or e.g. "prune=topk,keep=0.1,quant=natural,ef=true"

Keys: ``natural-rounding`` = ``stochastic`` (default; the paper's unbiased
C_nat) or ``nearest`` (deterministic rounding to the nearer power of two in
value, biased, for comparison).

Block layout of one tensor's ``count`` values (all of it sent through the
stage's own encoder and read back by its decoder)::

    sign bits   ceil(count / 8) bytes, bit i of the stream = sign of value i
                (little bit order; padding bits are 0)
    exponents   count bytes: 0 = the value 0, e in 1..254 = 2^(e - 127);
                255 (inf/NaN in float32) never occurs

Edge cases: zeros are sent as exponent 0 (sign 0); ``|x| < 2^-126`` (below
the smallest normal float32) rounds between 0 and ``2^-126``, still
unbiased; ``|x| >= 2^127`` saturates at ``2^127`` (rounding up would be
infinity), the only biased case, irrelevant for model updates.
"""

from __future__ import annotations

import numpy as np

from compression import Key, PayloadError, QuantStage, Reader, ValueContext, register_stage

__all__ = ["NaturalCompression", "natural_round", "exponents_to_values"]

_MIN_E, _MAX_E = 1, 254  # float32 normal exponent field; 2^(e - 127)


def natural_round(x: np.ndarray, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Round ``x`` to signed powers of two: stochastically (``rng``) or to the nearer one (``rng=None``).

    Returns
    -------
    sign : numpy.ndarray of bool
        True for negative results.
    exponent : numpy.ndarray of uint8
        Float32 exponent field of ``|C(x)|``: 0 for zero, else 1..254.
    """
    a = np.abs(x.astype(np.float64))
    _, e2 = np.frexp(a)                    # a = m * 2^e2, 0.5 <= m < 1, so 2^(e2-1) <= a < 2^e2
    field = e2.astype(np.int64) - 1 + 127  # exponent field of the power of two just below a
    low = np.ldexp(1.0, np.clip(field, _MIN_E, _MAX_E) - 127)
    low = np.where(field < _MIN_E, 0.0, low)            # below 2^-126: the lower neighbour is 0
    gap = np.where(field < _MIN_E, np.ldexp(1.0, _MIN_E - 127), low)  # distance to the upper neighbour
    p_up = np.divide(a - low, gap, out=np.zeros_like(a), where=gap > 0)
    up = (rng.random(a.size) < p_up) if rng is not None else (p_up > 0.5)
    out = np.where(field < _MIN_E, 0, field) + up.astype(np.int64)
    out = np.where(a == 0, 0, np.clip(out, 0, _MAX_E))  # saturate at 2^127
    return (x < 0) & (out > 0), out.astype(np.uint8)


def exponents_to_values(sign: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """``±2^(e - 127)`` as float32 (0 where ``e == 0``)."""
    mag = np.where(exponent == 0, 0.0, np.ldexp(1.0, exponent.astype(np.int64) - 127))
    return np.where(sign, -mag, mag).astype(np.float32)


@register_stage
class NaturalCompression(QuantStage):
    """``quant=natural``: sign + 8-bit exponent per value (9 bits), unbiased stochastic rounding."""

    name = "natural"
    summary = "natural compression (Horvath et al. 2019): values to signed powers of two, 9 bits each"
    options = {"natural-rounding": Key(str, "stochastic", ("stochastic", "nearest"),
                                       doc="stochastic = unbiased C_nat; nearest = nearer power of two")}
    min_bits_per_value = 9.0

    def encode(self, x: np.ndarray, ctx: ValueContext) -> bytes:
        stochastic = ctx.spec.get("natural-rounding") == "stochastic"
        sign, exponent = natural_round(x, ctx.rng if stochastic else None)
        return np.packbits(sign, bitorder="little").tobytes() + exponent.tobytes()

    def decode(self, r: Reader, ctx: ValueContext) -> np.ndarray:
        n = ctx.count
        signs = np.frombuffer(r.take((n + 7) // 8, "natural: sign bits"), np.uint8)
        sign = np.unpackbits(signs, bitorder="little")
        if sign[n:].any():
            raise PayloadError("natural: padding bits of the sign stream are set")
        exponent = np.frombuffer(r.take(n, "natural: exponents"), np.uint8)
        if n and int(exponent.max()) > _MAX_E:
            raise PayloadError(f"natural: exponent {int(exponent.max())} is not a finite power of two")
        sign = sign[:n].astype(bool)
        if (sign & (exponent == 0)).any():
            raise PayloadError("natural: a zero value with its sign bit set")
        return exponents_to_values(sign, exponent)
