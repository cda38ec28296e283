"""Pipeline specification: a compression pipeline declared as data.

A pipeline is a frozen :class:`PipelineSpec`, parsed from a string such as
``"prune=topk,keep=0.01,quant=ternary,ef=true,coder=golomb"`` or from a
mapping.  Every key is checked against a registry of named stages
(:data:`STAGES`): unknown keys, unknown stage names, impossible values and
keys that have no effect with the chosen stages all raise :class:`SpecError`.
Rejecting ineffective keys keeps the canonical string unique, which matters
because the canonical string is written into every payload header and the
server compares it with the pipeline it announced.

Grammar::

    spec    := item ("," item)*   |   preset-name
    item    := key "=" value
    key     := [a-z][a-z0-9_-]*   (underscores are read as hyphens)

Whitespace around items, keys and values is ignored.  See :data:`KEYS` for
every key, its allowed values and its default.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Union

from .errors import SpecError
from .prune import IMPORTANCE

__all__ = [
    "PipelineSpec",
    "parse_spec",
    "PRESET_SPECS",
    "STAGES",
    "Stage",
    "KEYS",
    "MAX_SPEC_CHARS",
]

#: Longest canonical spec string accepted (it travels in every header).
MAX_SPEC_CHARS = 1024


@dataclass(frozen=True)
class Stage:
    """A named pipeline stage in the registry.

    Attributes
    ----------
    kind : str
        ``"prune"`` or ``"quant"``.
    name : str
        The value selecting it, e.g. ``prune=topk``.
    keys : tuple of str
        Spec keys this stage reads (any other stage-specific key is rejected).
    required : tuple of str
        Keys that must be given explicitly.
    summary : str
        One line for error messages and docs.
    """

    kind: str
    name: str
    keys: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    summary: str = ""


_QUANT_CODE_KEYS = ("granularity", "entropy")
#: quant stages that need the whole tensor (its shape, or every coordinate), so no pruning before them
_DENSE_ONLY = {"powersgd", "fetchsgd"}

#: Registry of stages, ``STAGES[kind][name]``.
STAGES: dict[str, dict[str, Stage]] = {
    "prune": {
        "none": Stage("prune", "none", (), (), "dense: send every value"),
        "topk": Stage("prune", "topk", ("keep", "scope", "importance", "schedule", "coder"), ("keep",),
                      "keep the `keep` fraction with the largest importance"),
        "threshold": Stage("prune", "threshold", ("threshold", "importance", "coder"), ("threshold",),
                           "keep values whose importance is >= `threshold`"),
        "randk": Stage("prune", "randk", ("keep", "scope", "rescale", "schedule", "coder"), ("keep",),
                       "keep a seeded uniformly random `keep` fraction"),
        "structured": Stage("prune", "structured", ("keep", "norm", "schedule", "coder"), ("keep",),
                            "keep the `keep` fraction of rows (output channels) with largest norm"),
    },
    "quant": {
        "none": Stage("quant", "none", (), (), "float32 values"),
        "fp16": Stage("quant", "fp16", (), (), "IEEE half precision (saturating)"),
        "bf16": Stage("quant", "bf16", (), (), "bfloat16 (round to nearest even)"),
        "uniform": Stage("quant", "uniform", ("bits", "mode", "rounding") + _QUANT_CODE_KEYS, (),
                         "uniform b-bit grid, symmetric or affine"),
        "qsgd": Stage("quant", "qsgd", ("bits",) + _QUANT_CODE_KEYS, (),
                      "QSGD: norm-scaled levels, stochastic (unbiased) rounding"),
        "sign": Stage("quant", "sign", _QUANT_CODE_KEYS, (), "scaled sign: sign(x) * mean|x|"),
        "ternary": Stage("quant", "ternary", _QUANT_CODE_KEYS, (),
                         "STC ternary: kept values sent as sign * mean|kept|"),
        "kmeans": Stage("quant", "kmeans", ("clusters", "entropy"), (),
                        "weight sharing: 1-D k-means codebook per tensor"),
        "drive": Stage("quant", "drive", ("unbiased", "rot-block"), (),
                       "DRIVE: randomized Hadamard rotation, 1 bit per coordinate + a scale per block"),
        "eden": Stage("quant", "eden", ("bits", "unbiased", "rot-block", "entropy"), (),
                      "EDEN: randomized Hadamard rotation, b-bit Lloyd-Max levels + a scale per block"),
        "powersgd": Stage("quant", "powersgd", ("rank", "warm-start"), ("rank",),
                          "PowerSGD: rank-r factors P, Q of each matrix (conv kernels as out x rest); vectors raw"),
        "fetchsgd": Stage("quant", "fetchsgd", ("rows", "sketch-size", "keep", "sketch-momentum"), ("keep",),
                          "FetchSGD: count sketch per tensor; the server sums sketches, keeps momentum and error "
                          "in sketch space and applies the top-k"),
    },
}

_BOOL_TRUE = {"true", "1", "yes", "on"}
_BOOL_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class _Key:
    field: str
    kind: type
    default: Any
    allowed: tuple[str, ...] | None = None
    lo: float | None = None
    hi: float | None = None
    doc: str = ""


#: Every spec key in canonical order: key -> description.  ``allowed`` lists
#: the admissible words for enumerated keys; ``lo``/``hi`` bound numbers.
KEYS: dict[str, _Key] = {
    "prune": _Key("prune", str, "none", tuple(STAGES["prune"]), doc="pruning stage"),
    "keep": _Key("keep", float, None, lo=0.0, hi=1.0, doc="fraction kept, 0 < keep <= 1 (target for schedules)"),
    "threshold": _Key("threshold", float, None, lo=0.0, doc="importance threshold (>= 0)"),
    "scope": _Key("scope", str, "global", ("global", "layer"), doc="top-k/random-k over the whole model or per tensor"),
    "importance": _Key("importance", str, "magnitude", None, doc="registered importance score"),
    "rescale": _Key("rescale", bool, False, doc="random-k: multiply kept values by n/k (unbiased)"),
    "norm": _Key("norm", str, "l2", ("l1", "l2"), doc="structured: row norm"),
    "schedule": _Key("schedule", str, "constant", ("constant", "warmup"), doc="keep schedule over rounds"),
    "warmup-rounds": _Key("warmup_rounds", int, 5, lo=1, hi=100_000, doc="rounds to reach target keep"),
    "warmup-start": _Key("warmup_start", float, 0.25, lo=0.0, hi=1.0, doc="keep fraction in round 1"),
    "quant": _Key("quant", str, "none", tuple(STAGES["quant"]), doc="quantization stage"),
    "bits": _Key("bits", int, 8, lo=1, hi=8, doc="bits per code (uniform 1-8, symmetric/qsgd 2-8, eden 1-4)"),
    "mode": _Key("mode", str, "symmetric", ("symmetric", "affine"), doc="uniform grid through 0 or min..max"),
    "granularity": _Key("granularity", str, "tensor", ("tensor", "channel", "block"),
                        doc="one scale per tensor, per output channel (row) or per block of values"),
    "block": _Key("block", int, 256, lo=1, hi=1 << 20, doc="values per block (granularity=block)"),
    "rounding": _Key("rounding", str, "nearest", ("nearest", "stochastic"), doc="uniform rounding"),
    "clusters": _Key("clusters", int, 3, lo=2, hi=256, doc="k-means centroids per tensor"),
    "min-numel": _Key("min_numel", int, 256, lo=0, hi=(1 << 31) - 1,
                      doc="tensors with fewer elements are sent as raw float32"),
    "coder": _Key("coder", str, "golomb", ("golomb", "elias", "bitmap"),
                  doc="position gap code; the cheaper of it and a bitmap is used per tensor"),
    "entropy": _Key("entropy", str, "none", ("none", "huffman"), doc="entropy coding of quantization codes"),
    "zstd": _Key("zstd", bool, False, doc="zstd over all tensor sections"),
    "zstd-level": _Key("zstd_level", int, 3, lo=1, hi=22, doc="zstd level"),
    "ef": _Key("ef", bool, False, doc="error feedback (residual accumulation) on the client"),
    "unbiased": _Key("unbiased", bool, True, doc="drive/eden: unbiased scale (else the MSE-optimal, biased one)"),
    "rot-block": _Key("rot_block", int, 1 << 16, lo=2, hi=1 << 24,
                      doc="drive/eden: largest rotation block, a power of two (tensors are padded to whole blocks)"),
    "rank": _Key("rank", int, None, lo=1, hi=256, doc="powersgd: rank r of the factors"),
    "warm-start": _Key("warm_start", bool, True,
                       doc="powersgd: start the power step from the client's last Q (else a fresh Gaussian)"),
    "rows": _Key("rows", int, 5, lo=1, hi=32, doc="fetchsgd: count-sketch rows"),
    # >= 1/64: a payload must hold >= numel/16 bytes per sketched tensor, which bounds the hashing
    # work and memory a (hostile) header can ask of the decoder relative to the payload's size
    "sketch-size": _Key("sketch_size", float, 0.1, lo=1 / 64, hi=4.0,
                        doc="fetchsgd: sketch cells per tensor element (rows * cols ~ sketch-size * numel), >= 1/64"),
    "sketch-momentum": _Key("sketch_momentum", float, 0.9, lo=0.0, hi=0.999,
                            doc="fetchsgd: server momentum rho in sketch space"),
}

_ALIASES = {"error-feedback": "ef", "quantize": "quant", "quantization": "quant", "sparsity-coder": "coder"}
_FIELD_TO_KEY = {k.field: name for name, k in KEYS.items()}
_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]*$")


def _relevant(values: Mapping[str, Any]) -> set[str]:
    """Keys that have an effect given the stage choices in ``values``."""
    keys = {"prune", "quant", "min-numel", "zstd", "ef"}
    keys.update(STAGES["prune"][values["prune"]].keys)
    keys.update(STAGES["quant"][values["quant"]].keys)
    if "granularity" in keys and values.get("granularity") == "block":
        keys.add("block")
    if "schedule" in keys and values.get("schedule") == "warmup":
        keys.update({"warmup-rounds", "warmup-start"})
    if values.get("zstd"):
        keys.add("zstd-level")
    return keys


@dataclass(frozen=True)
class PipelineSpec:
    """A validated, immutable compression pipeline.

    Construct it with :func:`parse_spec`; direct construction is validated the
    same way.  ``str(spec)`` is the canonical string and
    ``parse_spec(str(spec)) == spec``.

    Attributes
    ----------
    prune : str
        ``none | topk | threshold | randk | structured``.
    keep : float or None
        Target fraction of values (rows for ``structured``) kept.
    threshold : float or None
        Importance threshold for ``prune=threshold``.
    scope : str
        ``global`` (one budget over all compressible tensors) or ``layer``.
    importance : str
        Name of a registered importance score (see
        :func:`compression.prune.register_importance`).
    rescale : bool
        Random-k: scale kept values by ``n / k`` so the estimate is unbiased.
    norm : str
        Structured pruning row norm, ``l1`` or ``l2``.
    schedule, warmup_rounds, warmup_start
        Keep-fraction schedule over rounds (see :mod:`compression.schedule`).
    quant : str
        ``none | fp16 | bf16 | uniform | qsgd | sign | ternary | kmeans | drive | eden | powersgd | fetchsgd``.
    bits, mode, granularity, block, rounding, clusters
        Quantizer parameters (see :mod:`compression.quantize`).
    min_numel : int
        Tensors with fewer elements bypass pruning and quantization.
    coder : str
        Gap code for positions (``golomb`` = Golomb-Rice, ``elias`` = Elias
        gamma, ``bitmap`` = always bitmap).
    entropy : str
        ``huffman`` entropy-codes quantization codes; ``none`` bit-packs them.
    zstd, zstd_level
        Optional zstd stage over the coded sections.
    ef : bool
        Whether clients should run error feedback with this pipeline.
    unbiased, rot_block
        Rotation quantizers (``drive``, ``eden``; see :mod:`compression.rotation`).
    rank, warm_start
        Low-rank stage (``powersgd``; see :mod:`compression.lowrank`).
    rows, sketch_size, sketch_momentum
        Count-sketch stage (``fetchsgd``; see :mod:`compression.sketch`);
        it also reads ``keep``, the top-k fraction the server applies.
    """

    prune: str = "none"
    keep: float | None = None
    threshold: float | None = None
    scope: str = "global"
    importance: str = "magnitude"
    rescale: bool = False
    norm: str = "l2"
    schedule: str = "constant"
    warmup_rounds: int = 5
    warmup_start: float = 0.25
    quant: str = "none"
    bits: int = 8
    mode: str = "symmetric"
    granularity: str = "tensor"
    block: int = 256
    rounding: str = "nearest"
    clusters: int = 3
    min_numel: int = 256
    coder: str = "golomb"
    entropy: str = "none"
    zstd: bool = False
    zstd_level: int = 3
    ef: bool = False
    unbiased: bool = True
    rot_block: int = 1 << 16
    rank: int | None = None
    warm_start: bool = True
    rows: int = 5
    sketch_size: float = 0.1
    sketch_momentum: float = 0.9

    def __post_init__(self) -> None:
        values = {}
        for name, key in KEYS.items():
            v = getattr(self, key.field)
            if v is None and key.default is None:
                values[name] = None
                continue
            v = _coerce(name, key, v)
            object.__setattr__(self, key.field, v)
            values[name] = v
        _validate(values)

    @property
    def error_feedback(self) -> bool:
        """Whether the pipeline asks for client-side error feedback."""
        return self.ef

    @property
    def is_identity(self) -> bool:
        """True if the pipeline sends every tensor as raw float32."""
        return self.prune == "none" and self.quant == "none"

    def to_string(self) -> str:
        """Return the canonical string (stage keys first, defaults omitted)."""
        parts = []
        for name, key in KEYS.items():
            v = getattr(self, key.field)
            if name not in ("prune", "quant") and (v is None or v == key.default):
                continue
            parts.append(f"{name}={_format(v)}")
        return ",".join(parts)

    def __str__(self) -> str:
        return self.to_string()

    def as_dict(self) -> dict[str, Any]:
        """Return the non-default settings as a ``{key: value}`` mapping."""
        return {k: v for k, v in (p.split("=", 1) for p in self.to_string().split(","))}


def _format(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _describe(key: _Key) -> str:
    if key.allowed is not None:
        return "one of " + "|".join(key.allowed)
    if key.field == "importance":
        return "one of " + "|".join(sorted(IMPORTANCE))
    if key.kind is bool:
        return "true|false"
    rng = []
    if key.lo is not None:
        rng.append(f">= {key.lo}" if key.field != "keep" else f"> {key.lo}")
    if key.hi is not None:
        rng.append(f"<= {key.hi}")
    return f"{key.kind.__name__} " + " and ".join(rng)


def _coerce(name: str, key: _Key, v: Any) -> Any:
    bad = SpecError(f"invalid value {v!r} for key {name!r}: expected {_describe(key)}")
    if key.kind is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in _BOOL_TRUE | _BOOL_FALSE:
            return v.strip().lower() in _BOOL_TRUE
        raise bad
    if key.kind is int:
        if isinstance(v, bool):
            raise bad
        if isinstance(v, str):
            try:
                v = int(v.strip(), 10)
            except ValueError:
                raise bad from None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int):
            raise bad
        if (key.lo is not None and v < key.lo) or (key.hi is not None and v > key.hi):
            raise bad
        return v
    if key.kind is float:
        if isinstance(v, bool):
            raise bad
        if isinstance(v, str):
            try:
                v = float(v.strip())
            except ValueError:
                raise bad from None
        if not isinstance(v, (int, float)):
            raise bad
        v = float(v)
        if not math.isfinite(v):
            raise bad
        if key.field == "keep" and not 0.0 < v <= 1.0:
            raise bad
        if (key.lo is not None and v < key.lo) or (key.hi is not None and v > key.hi):
            raise bad
        if key.field == "warmup_start" and v <= 0.0:
            raise bad
        return v
    if not isinstance(v, str):
        raise bad
    v = v.strip().lower()
    if key.allowed is not None and v not in key.allowed:
        raise bad
    if key.field == "importance" and not _KEY_RE.match(v):
        raise bad
    return v


def _validate(values: Mapping[str, Any]) -> None:
    relevant = _relevant(values)
    for name, key in KEYS.items():
        v = values[name]
        if name not in relevant and v is not None and v != key.default:
            raise SpecError(
                f"key {name!r} has no effect with prune={values['prune']}, quant={values['quant']}"
                f"{', granularity=' + values['granularity'] if name == 'block' else ''}"
                f"{', schedule=' + values['schedule'] if name.startswith('warmup') else ''}"
                f"{', zstd=false' if name == 'zstd-level' else ''}; remove it"
            )
    for stage in (STAGES["prune"][values["prune"]], STAGES["quant"][values["quant"]]):
        for req in stage.required:
            if values[req] is None:
                raise SpecError(f"{stage.kind}={stage.name} requires key {req!r} ({KEYS[req].doc})")
    q = values["quant"]
    if q == "uniform" and values["mode"] == "symmetric" and values["bits"] < 2:
        raise SpecError("key 'bits' must be >= 2 for quant=uniform with mode=symmetric "
                        "(use mode=affine or quant=sign for 1 bit)")
    if q == "qsgd" and values["bits"] < 2:
        raise SpecError("key 'bits' must be >= 2 for quant=qsgd (one sign bit plus levels)")
    if q == "eden" and values["bits"] > 4:
        raise SpecError("key 'bits' must be 1-4 for quant=eden (Lloyd-Max levels are tabulated up to 4 bits)")
    if q in _DENSE_ONLY and values["prune"] != "none":
        raise SpecError(f"quant={q} compresses whole tensors; it needs prune=none, not prune={values['prune']}")
    rb = values["rot-block"]
    if rb is not None and rb & (rb - 1):
        raise SpecError(f"invalid value {rb!r} for key 'rot-block': expected a power of two")


def parse_spec(spec: Union[str, Mapping[str, Any], PipelineSpec], *, strict_registry: bool = True) -> PipelineSpec:
    """Parse and validate a pipeline description.

    Parameters
    ----------
    spec : str, Mapping or PipelineSpec
        ``"key=value,key=value"``, a preset name from :data:`PRESET_SPECS`, a
        ``{key: value}`` mapping (keys may use ``_`` or ``-``), or an existing
        spec (returned unchanged).
    strict_registry : bool, default True
        If False, ``importance`` need only be a well-formed name; the decoder
        uses this because importance only matters when encoding.

    Returns
    -------
    PipelineSpec

    Raises
    ------
    SpecError
        Unknown key or stage, malformed item, duplicate key, bad value, a key
        with no effect for the chosen stages, or a missing required key.  The
        message names the key and the allowed values.
    """
    if isinstance(spec, PipelineSpec):
        return spec
    if isinstance(spec, str):
        text = spec.strip()
        if len(text) > MAX_SPEC_CHARS:
            raise SpecError(f"spec string longer than {MAX_SPEC_CHARS} characters")
        if text in PRESET_SPECS:
            text = PRESET_SPECS[text]
        items: list[tuple[str, Any]] = []
        if text:
            for item in text.split(","):
                if "=" not in item:
                    raise SpecError(f"malformed item {item.strip()!r}: expected key=value "
                                    f"(or a preset name: {', '.join(PRESET_SPECS)})")
                k, v = item.split("=", 1)
                items.append((k, v))
    elif isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        raise SpecError(f"spec must be a string, mapping or PipelineSpec, not {type(spec).__name__}")

    kwargs: dict[str, Any] = {}
    for k, v in items:
        if not isinstance(k, str):
            raise SpecError(f"spec keys must be strings, got {k!r}")
        name = k.strip().lower().replace("_", "-")
        name = _ALIASES.get(name, name)
        if name not in KEYS:
            raise SpecError(f"unknown key {k.strip()!r}; allowed keys: {', '.join(KEYS)}")
        field = KEYS[name].field
        if field in kwargs:
            raise SpecError(f"duplicate key {name!r}")
        kwargs[field] = v

    # Explicit keys must be effective (defaults never are checked twice).
    values = {name: key.default for name, key in KEYS.items()}
    for field, v in kwargs.items():
        name = _FIELD_TO_KEY[field]
        values[name] = _coerce(name, KEYS[name], v)
    relevant = _relevant(values)
    for field in kwargs:
        name = _FIELD_TO_KEY[field]
        if name not in relevant:
            raise SpecError(f"key {name!r} has no effect with prune={values['prune']}, quant={values['quant']}"
                            f" (granularity={values['granularity']}, schedule={values['schedule']},"
                            f" zstd={_format(values['zstd'])}); remove it")
    out = PipelineSpec(**kwargs)
    if strict_registry and out.importance not in IMPORTANCE:
        raise SpecError(f"invalid value {out.importance!r} for key 'importance': "
                        f"expected one of {'|'.join(sorted(IMPORTANCE))}")
    return out


#: Named pipelines.  Values are spec strings (parse with :func:`parse_spec`,
#: which also accepts the names themselves).
PRESET_SPECS: dict[str, str] = {
    "fp32": "prune=none,quant=none",
    "fp16": "quant=fp16",
    "bf16": "quant=bf16",
    "q8": "quant=uniform,bits=8,granularity=channel",
    "q4-stochastic": "quant=uniform,bits=4,granularity=channel,rounding=stochastic",
    "sign-ef": "quant=sign,ef=true",
    "randk-1pct": "prune=randk,keep=0.01,rescale=true",
    "topk-1pct-q8-ef": "prune=topk,keep=0.01,quant=uniform,bits=8,ef=true",
    "stc": "prune=topk,keep=0.01,quant=ternary,ef=true,coder=golomb",
    "fedzip-like": "prune=topk,keep=0.01,quant=kmeans,clusters=3,entropy=huffman",
    "structured-50pct": "prune=structured,keep=0.5,norm=l2",
    "drive": "quant=drive",
    "eden-2bit": "quant=eden,bits=2",
    "powersgd-r2": "quant=powersgd,rank=2,ef=true",
    "fetchsgd": "quant=fetchsgd,keep=0.01,sketch-size=0.25",
}
