"""The built-in stages, registered through the public API like any plugin.

Prune stages wrap :mod:`compression.prune`; quant stages wrap the coders of
:mod:`compression.values`.  Nothing here is special-cased elsewhere: the
codec, the spec validation and the server's payload bound only ask the
registry (:mod:`compression.registry`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from . import prune as pr, values as v
from .errors import SpecError
from .registry import DENSE, SPARSE, PruneContext, PruneStage, QuantStage, ValueContext, register_stage

__all__ = ["TopK", "Threshold", "RandK", "Structured", "NoPrune", "FunctionQuant", "Uniform", "Qsgd"]

_QUANT_CODE_KEYS = ("granularity", "entropy")


# ------------------------------------------------------------------ prune

class NoPrune(PruneStage):
    name = "none"
    summary = "dense: send every value"

    def layout(self, spec, shape):
        return DENSE


class TopK(PruneStage):
    name = "topk"
    keys = ("keep", "scope", "importance", "schedule", "coder")
    required = ("keep",)
    summary = "keep the `keep` fraction with the largest importance"

    def select(self, arrays: Sequence[np.ndarray], ctx: PruneContext) -> list[pr.Selection]:
        return pr.topk(arrays, ctx.keep, scope=ctx.spec.scope, importance=ctx.spec.importance)


class Threshold(PruneStage):
    name = "threshold"
    keys = ("threshold", "importance", "coder")
    required = ("threshold",)
    summary = "keep values whose importance is >= `threshold`"

    def select(self, arrays, ctx):
        return pr.threshold(arrays, ctx.spec.threshold, importance=ctx.spec.importance)

    def max_payload_bytes(self, spec, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """Every value may pass the threshold: at least the float32 encoding of the shapes."""
        from .codec import encode  # lazy: the codec imports the registry this module fills

        return len(encode({k: np.zeros(s, np.float32) for k, s in shapes.items()}, "fp32"))


class RandK(PruneStage):
    name = "randk"
    keys = ("keep", "scope", "rescale", "schedule", "coder")
    required = ("keep",)
    summary = "keep a seeded uniformly random `keep` fraction"

    def select(self, arrays, ctx):
        return pr.randk(arrays, ctx.keep, ctx.rng, scope=ctx.spec.scope, rescale=ctx.spec.rescale)


class Structured(PruneStage):
    name = "structured"
    keys = ("keep", "norm", "schedule", "coder")
    required = ("keep",)
    summary = "keep the `keep` fraction of rows (output channels) with largest norm"

    def layout(self, spec, shape):
        return DENSE if len(shape) < 2 else SPARSE

    def units(self, spec, shape):
        numel = math.prod(shape)
        return shape[0], numel // shape[0]

    def select(self, arrays, ctx):
        return pr.structured(arrays, ctx.shapes, ctx.keep, norm=ctx.spec.norm)


# ------------------------------------------------------------------ quant

class FunctionQuant(QuantStage):
    """A quant stage from an encoder ``(x, spec, groups, rng) -> bytes`` and decoder ``(r, count, spec, groups)``."""

    def __init__(self, name: str, encode: Callable, decode: Callable, *, keys: tuple[str, ...] = (),
                 summary: str = "", drop_kept_zeros: bool = False) -> None:
        self.name, self.keys, self.summary = name, keys, summary
        self.drop_kept_zeros = drop_kept_zeros
        self._encode, self._decode = encode, decode

    def encode(self, x: np.ndarray, ctx: ValueContext) -> bytes:
        return self._encode(x, ctx.spec, ctx.groups, ctx.rng)

    def decode(self, r, ctx: ValueContext) -> np.ndarray:
        return self._decode(r, ctx.count, ctx.spec, ctx.groups)


class Uniform(FunctionQuant):
    def __init__(self) -> None:
        super().__init__("uniform", v._enc_uniform, v._dec_uniform,
                         keys=("bits", "mode", "rounding") + _QUANT_CODE_KEYS,
                         summary="uniform b-bit grid, symmetric or affine")

    def validate(self, values: Mapping[str, Any]) -> None:
        if values["mode"] == "symmetric" and values["bits"] < 2:
            raise SpecError("key 'bits' must be >= 2 for quant=uniform with mode=symmetric "
                            "(use mode=affine or quant=sign for 1 bit)")


class Qsgd(FunctionQuant):
    def __init__(self) -> None:
        super().__init__("qsgd", v._enc_qsgd, v._dec_qsgd, keys=("bits",) + _QUANT_CODE_KEYS,
                         summary="QSGD: norm-scaled levels, stochastic (unbiased) rounding")

    def validate(self, values: Mapping[str, Any]) -> None:
        if values["bits"] < 2:
            raise SpecError("key 'bits' must be >= 2 for quant=qsgd (one sign bit plus levels)")


def _register() -> None:
    for stage in (NoPrune(), TopK(), Threshold(), RandK(), Structured()):
        register_stage(stage)
    for stage in (
        FunctionQuant("none", v._enc_none, v._dec_none, summary="float32 values"),
        FunctionQuant("fp16", v._enc_fp16, v._dec_fp16, summary="IEEE half precision (saturating)"),
        FunctionQuant("bf16", v._enc_bf16, v._dec_bf16, summary="bfloat16 (round to nearest even)"),
        Uniform(),
        Qsgd(),
        FunctionQuant("sign", v._enc_sign, v._dec_sign, keys=_QUANT_CODE_KEYS,
                      summary="scaled sign: sign(x) * mean|x|"),
        FunctionQuant("ternary", v._enc_sign, v._dec_sign, keys=_QUANT_CODE_KEYS,
                      summary="STC ternary: kept values sent as sign * mean|kept|"),
        # A kept zero would cost a position and a code and take a centroid; unsent it decodes to 0 for free.
        FunctionQuant("kmeans", v._enc_kmeans, v._dec_kmeans, keys=("clusters", "entropy"),
                      summary="weight sharing: 1-D k-means codebook per tensor", drop_kept_zeros=True),
    ):
        register_stage(stage)


_register()
