"""The compression stage registry: one place that says which stages and keys exist.

A pipeline has one *prune* stage (which positions are sent) and one *quant*
stage (how the sent values become bytes).  Each is a :class:`Stage` object
registered under its ``kind`` and ``name`` with :func:`register_stage`; the
built-in stages (``compression.builtin``) are registered through the same
call.  A stage declares everything the rest of the library needs to know:

* the spec keys it reads (existing ones by name, new ones as :class:`Key`
  objects with type, default, bounds or allowed words, and a doc line), the
  keys that must be given, and cross-key checks (:meth:`Stage.validate`);
* its encoder and decoder: a :class:`QuantStage` maps values to bytes and
  back (:meth:`QuantStage.encode` / :meth:`QuantStage.decode`), a
  :class:`PruneStage` picks the kept positions (:meth:`PruneStage.select`);
* how large an honest payload can be, for the server's screening
  (:meth:`Stage.max_payload_bytes`).

Validation reads :data:`STAGES` and :data:`KEYS` when a spec is parsed, never
a copy made at import, so a stage registered at run time (a plugin, see
``docs/extending.md``) is accepted from then on, by the encoder and by the
decoder alike.

Canonical order of keys (the canonical spec string travels in every payload
header): the built-in keys in the order of :data:`KEYS` as defined here,
then keys declared by registered stages in alphabetical order, whatever the
order of registration.  Pipelines that use no plugin key therefore keep the
exact strings (and payload bytes) they had before this registry existed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .errors import RegistrationError, SpecError
from .prune import IMPORTANCE, Selection
from .quantize import Groups

# compression.spec and compression.wire import this module, so their types are not imported here
# (the import graph stays acyclic): annotations name them through these aliases.
PipelineSpec = Any  # compression.PipelineSpec
Reader = Any  # compression.wire.Reader

__all__ = [
    "Key",
    "Stage",
    "PruneStage",
    "QuantStage",
    "ValueContext",
    "PruneContext",
    "STAGES",
    "KEYS",
    "RAW",
    "DENSE",
    "SPARSE",
    "register_stage",
    "unregister_stage",
    "get_stage",
    "pipeline_stages",
    "builtin_keys",
    "iter_stages",
]

#: Section layouts of a tensor (see :mod:`compression.codec`).
RAW, DENSE, SPARSE = 0, 1, 2

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_BOOL_TRUE = {"true", "1", "yes", "on"}
_BOOL_FALSE = {"false", "0", "no", "off"}
_KINDS = ("prune", "quant")


@dataclass(frozen=True)
class Key:
    """A spec key: its type, default, admissible values and documentation.

    Parameters
    ----------
    kind : type
        ``bool``, ``int``, ``float`` or ``str``.
    default : Any
        Value when the key is not given; ``None`` means "no default" (then
        the key must be listed in a stage's ``required`` to be usable).
    allowed : tuple of str, or callable returning them, optional
        Admissible words of a ``str`` key.  A callable is called at every
        validation, so the set may grow at run time (``prune`` and ``quant``
        list the registered stages this way).
    lo, hi : float, optional
        Inclusive bounds of a number (``lo`` exclusive when ``lo_open``).
    lo_open : bool, default False
        ``lo`` itself is not allowed (e.g. ``keep > 0``).
    doc : str
        One line for error messages and documentation.
    field : str
        Attribute name on :class:`~compression.PipelineSpec` for built-in
        keys; filled in by :func:`register_stage` for keys a stage declares
        (they are read with :meth:`PipelineSpec.get`).
    """

    kind: type
    default: Any = None
    allowed: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    doc: str = ""
    field: str = ""

    def words(self) -> tuple[str, ...] | None:
        """The admissible words now (``None``: any well-formed word)."""
        if self.allowed is None:
            return None
        return tuple(self.allowed()) if callable(self.allowed) else tuple(self.allowed)

    def describe(self) -> str:
        """What a valid value looks like, for error messages."""
        words = self.words()
        if words is not None:
            return "one of " + "|".join(words)
        if self.field == "importance":
            return "one of " + "|".join(sorted(IMPORTANCE))
        if self.kind is bool:
            return "true|false"
        rng = []
        if self.lo is not None:
            rng.append(f"> {self.lo}" if self.lo_open else f">= {self.lo}")
        if self.hi is not None:
            rng.append(f"<= {self.hi}")
        return f"{self.kind.__name__} " + " and ".join(rng)

    def coerce(self, name: str, v: Any) -> Any:
        """Return ``v`` converted to this key's type, or raise :class:`SpecError` naming ``name``."""
        bad = SpecError(f"invalid value {v!r} for key {name!r}: expected {self.describe()}")
        if self.kind is bool:
            if isinstance(v, bool):
                return v
            if isinstance(v, str) and v.strip().lower() in _BOOL_TRUE | _BOOL_FALSE:
                return v.strip().lower() in _BOOL_TRUE
            raise bad
        if self.kind is int:
            if isinstance(v, bool):
                raise bad
            if isinstance(v, str):
                try:
                    v = int(v.strip(), 10)
                except ValueError:
                    raise bad from None
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not isinstance(v, (int, np.integer)):
                raise bad
            v = int(v)
            if not self._in_range(v):
                raise bad
            return v
        if self.kind is float:
            if isinstance(v, bool):
                raise bad
            if isinstance(v, str):
                try:
                    v = float(v.strip())
                except ValueError:
                    raise bad from None
            if not isinstance(v, (int, float, np.integer, np.floating)):
                raise bad
            v = float(v)
            if not math.isfinite(v) or not self._in_range(v):
                raise bad
            return v
        if not isinstance(v, str):
            raise bad
        v = v.strip().lower()
        words = self.words()
        if words is not None and v not in words:
            raise bad
        if words is None and not _WORD_RE.match(v):
            raise bad
        return v

    def _in_range(self, v: float) -> bool:
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return self.hi is None or v <= self.hi


# A free-form word value (e.g. an importance name): it must not break the "k=v,k=v" grammar.
_WORD_RE = re.compile(r"^[a-z][a-z0-9_-]*$")


# ------------------------------------------------------------------ contexts

@dataclass
class ValueContext:
    """What a :class:`QuantStage` knows about the values it codes.

    Attributes
    ----------
    spec : PipelineSpec
        The whole pipeline; read options with ``spec.get("my-key")``.
    name : str
        Tensor name.
    shape : tuple of int
        Shape of the whole tensor (e.g. to view a conv kernel as a matrix).
    count : int
        Number of values coded (``prod(shape)`` when dense).
    elements : numpy.ndarray or None
        Sorted flat element index of each value (pruned tensor), or ``None``
        when every element is coded in row-major order.
    groups : Groups
        Parameter groups of the values (``granularity``/``block`` keys; one
        group unless the stage reads those keys).
    rng : numpy.random.Generator or None
        Encoder only: a generator seeded from ``(seed, round)`` and shared by
        the tensors of one payload in payload order.  ``None`` when decoding:
        a decoder knows only the bytes, so anything random it must repeat
        (e.g. rotation signs) needs a seed the encoder wrote into the block.
    round, seed : int or None
        Encoder only (``None`` when decoding).
    state : MutableMapping or None
        Encoder only: this tensor's persistent client state (see
        :func:`compression.encode_with_feedback`'s ``state``), a mapping from
        str to numpy arrays that the stage may read and update; ``None`` when
        the caller keeps no state (a stateful stage must then start fresh).
    """

    spec: PipelineSpec
    name: str
    shape: tuple[int, ...]
    count: int
    elements: np.ndarray | None
    groups: Groups
    rng: np.random.Generator | None = None
    round: int | None = None
    seed: int | None = None
    state: MutableMapping[str, np.ndarray] | None = None

    @property
    def decoding(self) -> bool:
        """True when this context is handed to a decoder."""
        return self.rng is None


@dataclass
class PruneContext:
    """What a :class:`PruneStage` knows when it selects positions.

    Attributes
    ----------
    spec : PipelineSpec
    names : list of str
        Names of the tensors to select in (those above ``min-numel``, whose
        layout the stage declared sparse), in payload order.
    shapes : list of tuple of int
        Their shapes.
    keep : float or None
        The ``keep`` fraction for this round after the ``schedule`` key
        (``None`` if the spec has no ``keep``).
    round : int
    rng : numpy.random.Generator
        Seeded from ``(seed, round)``, independent of the value coder's.
    """

    spec: PipelineSpec
    names: list[str]
    shapes: list[tuple[int, ...]]
    keep: float | None
    round: int
    rng: np.random.Generator


# ------------------------------------------------------------------ stages

class Stage:
    """Base class of a registered pipeline stage (use :class:`PruneStage` or :class:`QuantStage`).

    Subclass, set the class attributes, override what the kind needs, and
    register an instance (or the class) with :func:`register_stage`.

    Attributes
    ----------
    kind : str
        ``"prune"`` or ``"quant"`` (set by the two subclasses).
    name : str
        Value that selects the stage (``quant=<name>``): lower case letters,
        digits and ``-``, at most 32 characters.
    summary : str
        One line for error messages and documentation.
    keys : tuple of str
        Existing spec keys the stage reads (e.g. ``"keep"``, ``"bits"``,
        ``"granularity"``); any other key given with this stage is rejected
        as having no effect, which keeps canonical strings unique.
    options : Mapping of str to Key
        New keys the stage declares (names as in the spec, e.g.
        ``"rotation-seed"``).  A name already registered must come with an
        identical :class:`Key`.
    required : tuple of str
        Keys (of ``keys`` or ``options``) that must be given; their
        :class:`Key` must have no default.
    """

    kind: ClassVar[str] = ""
    name: str = ""
    summary: str = ""
    keys: tuple[str, ...] = ()
    options: Mapping[str, Key] = {}
    required: tuple[str, ...] = ()

    def validate(self, values: Mapping[str, Any]) -> None:
        """Cross-key checks, after every key has been type-checked.

        Parameters
        ----------
        values : Mapping of str to Any
            Every key's value (defaults filled in), by spec key name.

        Raises
        ------
        SpecError
            Naming the key and what is wrong.
        """

    def max_payload_bytes(self, spec: PipelineSpec, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
        """An upper bound on an honest payload for ``shapes``, if the probe is not one.

        The server rejects a payload longer than its bound before decoding.
        Its bound is the pipeline's own encoding of a dense standard-normal
        update of the model's shapes, raised to every registered stage's
        ``max_payload_bytes`` that is not ``None``, plus 50 % and 4 KiB of
        slack.  Return ``None`` (the default) when the probe's size is
        representative (fixed-size output, or only coding variance); return
        a bound when the size depends on the data, e.g. pruning by threshold
        can keep every value.
        """
        return None

    def all_keys(self) -> tuple[str, ...]:
        """``keys`` followed by the declared ``options``."""
        return tuple(dict.fromkeys(tuple(self.keys) + tuple(self.options)))

    def relevant_keys(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        """The keys that have an effect given every key's value (default: all of :meth:`all_keys`).

        Override to make an option conditional on another key, as ``block``
        is on ``granularity=block``: a key given without effect is rejected,
        so each pipeline keeps a single canonical string.
        """
        return self.all_keys()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind}={self.name}>"


class QuantStage(Stage):
    """A value coder: the transmitted float32 values of one tensor to bytes and back.

    Override :meth:`encode` and :meth:`decode`.  The decoder reads from a
    strict :class:`~compression.wire.Reader` (every short read is a
    :class:`~compression.PayloadError`) and must raise ``PayloadError`` for
    any bytes its encoder cannot have produced: the codec checks that the
    tensor's section is consumed exactly and that the values are finite.

    Attributes
    ----------
    min_bits_per_value : float
        Fewest bits the coder ever spends per value (1 for every built-in
        coder).  The decoder refuses a section too short for that before
        building any per-value array, so a tiny hostile payload cannot claim
        a huge tensor.  Set 0 for coders whose size does not grow with the
        number of values (low rank, sketches): the header's element limit
        then bounds the work.
    drop_kept_zeros : bool
        Send no position for kept values that are exactly zero (they decode
        to zero anyway); only sensible when a kept zero would cost the coder
        something (k-means weight sharing).
    """

    kind: ClassVar[str] = "quant"
    min_bits_per_value: float = 1.0
    drop_kept_zeros: bool = False

    def encode(self, x: np.ndarray, ctx: ValueContext) -> bytes:
        """Code ``x`` (float32, ``ctx.count`` values, finite) as bytes."""
        raise NotImplementedError(f"quant={self.name} has no encoder")

    def decode(self, r: Reader, ctx: ValueContext) -> np.ndarray:
        """Read ``ctx.count`` values written by :meth:`encode` (float32 array of that length)."""
        raise NotImplementedError(f"quant={self.name} has no decoder")

    def server_aggregator(self, spec: "PipelineSpec", shapes: Mapping[str, tuple[int, ...]]) -> Any:
        """A server-side aggregation object, for stages the server combines in the compressed domain.

        ``None`` (the default): the server averages the decoded updates.
        Otherwise an object with ``aggregate(payloads, weights) -> delta``
        (screened payloads, example weights; returns ``{name: tensor}``), a
        ``state`` mapping of tensors that the server checkpoints and
        ``load_state(state)`` to restore it (FetchSGD sums count sketches
        and keeps momentum and error in sketch space, see
        :mod:`compression.sketch`).  See :func:`compression.server_aggregator`.
        """
        return None


class PruneStage(Stage):
    """A sparsifier: which positions of each tensor are sent.

    Override :meth:`select`; override :meth:`layout` and :meth:`units` for a
    stage that keeps whole rows or leaves some tensors dense.  Positions are
    coded by the codec (``coder`` key) and values by the quant stage.
    """

    kind: ClassVar[str] = "prune"

    def layout(self, spec: PipelineSpec, shape: tuple[int, ...]) -> int:
        """:data:`SPARSE` (positions and kept values) or :data:`DENSE` (every value) for a tensor of ``shape``.

        Depends on the spec and the shape only, so the decoder can insist on it.
        """
        return SPARSE

    def units(self, spec: PipelineSpec, shape: tuple[int, ...]) -> tuple[int, int]:
        """``(position slots, elements per slot)`` of a sparse tensor: ``(numel, 1)`` element-wise."""
        return math.prod(shape), 1

    def select(self, arrays: Sequence[np.ndarray], ctx: PruneContext) -> list[Selection]:
        """One :class:`~compression.prune.Selection` per flat float32 array, with :meth:`units`' unit.

        Indices are sorted, unique ``int64`` slot numbers below the slot
        count; the codec checks this and raises ``ValueError`` naming the stage.
        """
        raise NotImplementedError(f"prune={self.name} has no selector")


# ------------------------------------------------------------------ registry

#: ``STAGES[kind][name]``: the live stage registry (read at every parse).
STAGES: dict[str, dict[str, Stage]] = {"prune": {}, "quant": {}}


def _k(field: str, kind: type, default: Any, allowed: Any = None, **kw: Any) -> Key:
    return Key(kind, default, allowed, field=field, **kw)


#: Every spec key in canonical order: built-in keys first (this table), then
#: keys declared by registered stages (see :func:`register_stage`).
KEYS: dict[str, Key] = {
    "prune": _k("prune", str, "none", lambda: tuple(STAGES["prune"]), doc="pruning stage"),
    "keep": _k("keep", float, None, lo=0.0, hi=1.0, lo_open=True,
               doc="fraction kept, 0 < keep <= 1 (target for schedules)"),
    "threshold": _k("threshold", float, None, lo=0.0, doc="importance threshold (>= 0)"),
    "scope": _k("scope", str, "global", ("global", "layer"), doc="top-k/random-k over the whole model or per tensor"),
    "importance": _k("importance", str, "magnitude", None, doc="registered importance score"),
    "rescale": _k("rescale", bool, False, doc="random-k: multiply kept values by n/k (unbiased)"),
    "norm": _k("norm", str, "l2", ("l1", "l2"), doc="structured: row norm"),
    "schedule": _k("schedule", str, "constant", ("constant", "warmup"), doc="keep schedule over rounds"),
    "warmup-rounds": _k("warmup_rounds", int, 5, lo=1, hi=100_000, doc="rounds to reach target keep"),
    "warmup-start": _k("warmup_start", float, 0.25, lo=0.0, hi=1.0, lo_open=True, doc="keep fraction in round 1"),
    "quant": _k("quant", str, "none", lambda: tuple(STAGES["quant"]), doc="quantization stage"),
    "bits": _k("bits", int, 8, lo=1, hi=8, doc="bits per code (uniform 1-8, symmetric/qsgd 2-8)"),
    "mode": _k("mode", str, "symmetric", ("symmetric", "affine"), doc="uniform grid through 0 or min..max"),
    "granularity": _k("granularity", str, "tensor", ("tensor", "channel", "block"),
                      doc="one scale per tensor, per output channel (row) or per block of values"),
    "block": _k("block", int, 256, lo=1, hi=1 << 20, doc="values per block (granularity=block)"),
    "rounding": _k("rounding", str, "nearest", ("nearest", "stochastic"), doc="uniform rounding"),
    "clusters": _k("clusters", int, 3, lo=2, hi=256, doc="k-means centroids per tensor"),
    "min-numel": _k("min_numel", int, 256, lo=0, hi=(1 << 31) - 1,
                    doc="tensors with fewer elements are sent as raw float32"),
    "coder": _k("coder", str, "golomb", ("golomb", "elias", "bitmap", "context", "grid"),
                doc="position gap code; the cheaper of it and a bitmap is used per tensor (grid: also the rows "
                    "and columns hit, then Rice gaps inside them; context: Rice codes per class of slots given "
                    "positions the decoder also knows, encode/decode reference=)"),
    "entropy": _k("entropy", str, "none", ("none", "huffman"), doc="entropy coding of quantization codes"),
    "zstd": _k("zstd", bool, False, doc="zstd over all tensor sections"),
    "zstd-level": _k("zstd_level", int, 3, lo=1, hi=22, doc="zstd level"),
    "ef": _k("ef", bool, False, doc="error feedback (residual accumulation) on the client"),
    "header": _k("header", str, "full", ("full", "compact"),
                 doc="tensor table in every payload (full) or only its 8-byte digest (compact: the decoder "
                     "must be given the expected names and shapes)"),
}

_BUILTIN_KEYS = tuple(KEYS)


def builtin_keys() -> tuple[str, ...]:
    """Names of the keys defined by the library itself, in canonical order."""
    return _BUILTIN_KEYS


def _owners(key: str, skip: Stage | None = None) -> list[Stage]:
    return [s for kind in _KINDS for s in STAGES[kind].values() if s is not skip and key in s.options]


def register_stage(stage: Stage | type[Stage], *, replace: bool = False) -> Stage:
    """Register a pipeline stage; usable as a class decorator.

    Parameters
    ----------
    stage : Stage instance or subclass
        A :class:`PruneStage` or :class:`QuantStage` (a class is instantiated
        without arguments).
    replace : bool, default False
        Allow replacing a different stage registered under the same name.
        Registering an instance of the class already registered under the
        name replaces it silently, so re-importing a plugin is harmless.

    Returns
    -------
    Stage
        The registered instance (the class itself when used as a decorator).

    Raises
    ------
    RegistrationError
        Bad kind or name, a name taken by another stage, an unknown key in
        ``keys``/``required``, a declared key that clashes with an existing
        one, a required key with a default, or a declared default that fails
        its own validation.  Nothing is registered then.
    """
    as_class = isinstance(stage, type)
    obj = stage() if as_class else stage
    where = f"stage {type(obj).__name__}"
    if not isinstance(obj, (PruneStage, QuantStage)):
        raise RegistrationError(f"{where}: must be a PruneStage or QuantStage, not {type(obj).__mro__[1].__name__}")
    kind, name = obj.kind, obj.name
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RegistrationError(f"{where}: name {name!r} must be 1-32 lower-case letters, digits or '-', "
                                "starting with a letter")
    where = f"{kind}={name}"
    old = STAGES[kind].get(name)
    if old is not None and not replace and type(old) is not type(obj):
        raise RegistrationError(f"{where} is already registered ({type(old).__module__}.{type(old).__qualname__}); "
                                "pass replace=True to replace it")
    if not isinstance(obj.keys, tuple) or not all(isinstance(k, str) for k in obj.keys):
        raise RegistrationError(f"{where}: keys must be a tuple of key names")
    new_keys: dict[str, Key] = {}
    for key_name, key in dict(obj.options).items():
        if not isinstance(key_name, str) or not _NAME_RE.match(key_name):
            raise RegistrationError(f"{where}: option name {key_name!r} must be 1-32 lower-case letters, digits or '-'")
        if not isinstance(key, Key) or key.kind not in (bool, int, float, str):
            raise RegistrationError(f"{where}: option {key_name!r} must be a Key of bool, int, float or str")
        key = Key(key.kind, key.default, key.allowed, key.lo, key.hi, key.lo_open, key.doc,
                  key.field or key_name.replace("-", "_"))
        if key_name in _BUILTIN_KEYS:
            raise RegistrationError(f"{where}: option {key_name!r} is a built-in key; list it in `keys` to read it")
        if key_name in KEYS and _owners(key_name, old) and KEYS[key_name] != key:
            raise RegistrationError(f"{where}: option {key_name!r} is already declared differently by "
                                    f"{', '.join(f'{s.kind}={s.name}' for s in _owners(key_name, old))}")
        if key.default is not None:
            try:
                if key.coerce(key_name, key.default) != key.default:
                    raise SpecError("not in canonical form")
            except SpecError as exc:
                raise RegistrationError(f"{where}: default of option {key_name!r} is invalid: {exc}") from None
        new_keys[key_name] = key
    known = set(KEYS) | set(new_keys)
    unknown = [k for k in obj.keys if k not in known]
    if unknown:
        raise RegistrationError(f"{where}: unknown keys {unknown}; declare new keys in `options`")
    for req in obj.required:
        if req not in obj.keys and req not in new_keys:
            raise RegistrationError(f"{where}: required key {req!r} is not among its keys or options")
        if (new_keys.get(req) or KEYS[req]).default is not None:
            raise RegistrationError(f"{where}: required key {req!r} has a default; a required key has none")
    # All checks passed: now mutate.
    if old is not None:
        _drop_orphan_keys(old, keep=set(new_keys))
    KEYS.update(new_keys)
    obj.options = new_keys
    STAGES[kind][name] = obj
    return stage if as_class else obj


def _drop_orphan_keys(stage: Stage, keep: set[str] = frozenset()) -> None:
    for key_name in stage.options:
        if key_name not in keep and key_name not in _BUILTIN_KEYS and not _owners(key_name, stage):
            KEYS.pop(key_name, None)


def unregister_stage(kind: str, name: str) -> Stage:
    """Remove a registered stage (and the keys only it declared); returns it.

    Mostly for tests.  Payloads naming the stage can no longer be decoded.

    Raises
    ------
    KeyError
        No such stage.
    """
    stage = STAGES[kind].pop(name)
    _drop_orphan_keys(stage)
    return stage


def get_stage(kind: str, name: str) -> Stage:
    """The registered stage ``kind=name``.

    Raises
    ------
    SpecError
        Unknown kind or name (the message lists the registered names).
    """
    if kind not in STAGES:
        raise SpecError(f"unknown stage kind {kind!r}; expected prune or quant")
    if name not in STAGES[kind]:
        raise SpecError(f"unknown stage {kind}={name}; registered: {'|'.join(STAGES[kind])}")
    return STAGES[kind][name]


def pipeline_stages(spec: PipelineSpec) -> tuple[PruneStage, QuantStage]:
    """The ``(prune, quant)`` stages a spec uses."""
    return STAGES["prune"][spec.prune], STAGES["quant"][spec.quant]  # type: ignore[return-value]


def iter_stages() -> Iterator[Stage]:
    """Every registered stage, prune stages first, in registration order."""
    for kind in _KINDS:
        yield from STAGES[kind].values()

