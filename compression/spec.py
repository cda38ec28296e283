"""Pipeline specification: a compression pipeline declared as data.

A pipeline is a frozen :class:`PipelineSpec`, parsed from a string such as
``"prune=topk,keep=0.01,quant=ternary,ef=true,coder=golomb"`` or from a
mapping.  Every key is checked against the live registry of named stages
and keys (:data:`STAGES`, :data:`KEYS`, see :mod:`compression.registry`),
so stages registered at run time are accepted: unknown keys, unknown stage names, impossible values and
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

from dataclasses import dataclass
from typing import Any, Mapping, Union

from .errors import SpecError
from .prune import IMPORTANCE
from .registry import KEYS, STAGES, Key, Stage, builtin_keys

__all__ = [
    "PipelineSpec",
    "parse_spec",
    "PRESET_SPECS",
    "STAGES",
    "Stage",
    "Key",
    "KEYS",
    "MAX_SPEC_CHARS",
]

#: Longest canonical spec string accepted (it travels in every header).
MAX_SPEC_CHARS = 1024


_ALIASES = {"error-feedback": "ef", "quantize": "quant", "quantization": "quant", "sparsity-coder": "coder"}
_BUILTIN = frozenset(builtin_keys())


def _key_name(k: str) -> str:
    name = k.strip().lower().replace("_", "-")
    return _ALIASES.get(name, name)


def _relevant(values: Mapping[str, Any]) -> set[str]:
    """Keys that have an effect given the stage choices in ``values``."""
    keys = {"prune", "quant", "min-numel", "zstd", "ef", "header"}
    keys.update(STAGES["prune"][values["prune"]].relevant_keys(values))
    keys.update(STAGES["quant"][values["quant"]].relevant_keys(values))
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
        A registered prune stage: built in ``none | topk | threshold | randk | structured``.
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
        A registered quant stage: built in ``none | fp16 | bf16 | uniform | qsgd | sign | ternary | kmeans``.
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
    header : str
        ``full``: every payload carries its tensor table (names, dtypes,
        shapes); ``compact``: only an 8-byte digest of it, checked against the
        names and shapes the decoder is given (see :mod:`compression.wire`).
    extra : tuple of (str, Any)
        Keys declared by registered (plugin) stages that differ from their
        defaults, sorted by name; read any key with :meth:`get`.  A mapping
        is accepted on construction.
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
    header: str = "full"
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        given = self._plugin_values()
        values = {}
        for name, key in list(KEYS.items()):
            v = getattr(self, key.field) if name in _BUILTIN else given.pop(name, key.default)
            if v is None and key.default is None:
                values[name] = None
                continue
            v = key.coerce(name, v)
            if name in _BUILTIN:
                object.__setattr__(self, key.field, v)
            values[name] = v
        if given:
            raise SpecError(f"unknown key {sorted(given)[0]!r}; allowed keys: {', '.join(KEYS)}")
        _validate(values)
        # Canonical form: only non-default plugin keys, in alphabetical order.
        extra = tuple(sorted((n, values[n]) for n in KEYS
                             if n not in _BUILTIN and values[n] is not None and values[n] != KEYS[n].default))
        object.__setattr__(self, "extra", extra)

    def _plugin_values(self) -> dict[str, Any]:
        extra = self.extra
        if isinstance(extra, Mapping):
            extra = list(extra.items())
        try:
            pairs = [(k, v) for k, v in extra]
        except (TypeError, ValueError):
            raise SpecError("extra must be a mapping or (key, value) pairs of plugin keys") from None
        out: dict[str, Any] = {}
        for k, v in pairs:
            name = _key_name(k) if isinstance(k, str) else k
            if name in _BUILTIN:
                raise SpecError(f"built-in key {name!r} given in extra; pass it as an argument")
            if name not in KEYS:
                raise SpecError(f"unknown key {k!r}; allowed keys: {', '.join(KEYS)}")
            if name in out:
                raise SpecError(f"duplicate key {name!r}")
            out[name] = v
        return out

    def get(self, key: str) -> Any:
        """The value of any key, built-in or declared by a registered stage (its default if not given).

        Raises
        ------
        SpecError
            Unknown key.
        """
        name = _key_name(key)
        if name in _BUILTIN:
            return getattr(self, KEYS[name].field)
        if name not in KEYS:
            raise SpecError(f"unknown key {key!r}; allowed keys: {', '.join(KEYS)}")
        return dict(self.extra).get(name, KEYS[name].default)

    @property
    def error_feedback(self) -> bool:
        """Whether the pipeline asks for client-side error feedback."""
        return self.ef

    @property
    def is_identity(self) -> bool:
        """True if the pipeline sends every tensor as raw float32."""
        return self.prune == "none" and self.quant == "none"

    def to_string(self) -> str:
        """Return the canonical string.

        Built-in keys in their fixed order (``prune`` and ``quant`` always,
        others only when not at their default), then the non-default keys
        declared by registered stages, alphabetically.
        """
        parts = []
        for name in builtin_keys():
            key = KEYS[name]
            v = getattr(self, key.field)
            if name not in ("prune", "quant") and (v is None or v == key.default):
                continue
            parts.append(f"{name}={_format(v)}")
        parts.extend(f"{name}={_format(v)}" for name, v in self.extra)
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
    for stage in (STAGES["prune"][values["prune"]], STAGES["quant"][values["quant"]]):
        stage.validate(values)


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
    extra: dict[str, Any] = {}
    seen: set[str] = set()
    for k, v in items:
        if not isinstance(k, str):
            raise SpecError(f"spec keys must be strings, got {k!r}")
        name = _key_name(k)
        if name not in KEYS:
            raise SpecError(f"unknown key {k.strip()!r}; allowed keys: {', '.join(KEYS)}")
        if name in seen:
            raise SpecError(f"duplicate key {name!r}")
        seen.add(name)
        if name in _BUILTIN:
            kwargs[KEYS[name].field] = v
        else:
            extra[name] = v

    # Explicit keys must be effective (defaults never are checked twice).
    given = {KEYS[name].field if name in _BUILTIN else name: name for name in seen}
    values = {name: key.default for name, key in KEYS.items()}
    for name in seen:
        values[name] = KEYS[name].coerce(name, kwargs[KEYS[name].field] if name in _BUILTIN else extra[name])
    relevant = _relevant(values)
    for name in given.values():
        if name not in relevant:
            raise SpecError(f"key {name!r} has no effect with prune={values['prune']}, quant={values['quant']}"
                            f" (granularity={values['granularity']}, schedule={values['schedule']},"
                            f" zstd={_format(values['zstd'])}); remove it")
    out = PipelineSpec(**kwargs, extra=tuple(extra.items()))
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
