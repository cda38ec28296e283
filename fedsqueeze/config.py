"""The run configuration: every knob, typed and validated, read once.

Keys are the kebab-case names of ``[tool.flwr.app.config]`` in
``pyproject.toml``; :meth:`RunConfig.from_mapping` maps them onto the fields
below (``-`` → ``_``), rejects unknown keys and wrong types, and checks ranges.

Run presets (``fedsqueeze/presets/*.toml``) are flat tables of the same keys.
Both entry points use them: ``python -m simulations.run stc`` and the
``preset`` key of ``flwr run . --run-config "preset='stc' ..."``, which the
ServerApp expands with :func:`expand_preset` (explicit keys win).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedsqueeze.protocol.instructions import INSTRUCTION_FORMATS, REPLY_FORMATS

__all__ = ["ConfigError", "RunConfig", "PRESET_DIR", "expand_preset", "load_preset", "load_toml_overrides",
           "parse_value", "preset_names", "preset_path", "resolve_pipeline"]

TARGETS = (0.97, 0.98, 0.985, 0.99)
PRUNE_METHODS = ("global-l1", "layer-l1", "structured-l2", "taylor")
QUANT_STAGES = ("static-int8", "qat-int8", "dynamic-int8", "bf16", "fp16")
#: The bundled run presets; package data, and inside the FAB (fab-include fedsqueeze/**).
PRESET_DIR = Path(__file__).resolve().parent / "presets"


class ConfigError(ValueError):
    """A run-config key is unknown, mistyped or out of range."""


@dataclass(frozen=True)
class RunConfig:
    """All settings of one federated run (see README "Configuration")."""

    # experiment identity
    name: str = "stc"
    preset: str = ""
    seed: int = 0
    out_dir: str = ""
    resume: bool = False
    client_state_dir: str = ""
    # data and model
    data_dir: str = ""
    dataset: str = "mnist"
    model: str = "mcmahan-cnn"
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    shards_per_client: int = 2
    # federation
    num_server_rounds: int = 10
    stop_at_accuracy: float = 0.0
    fraction_train: float = 0.1
    min_train_nodes: int = 2
    min_available_nodes: int = 2
    round_timeout: float = 0.0
    min_train_results: int = 1
    # local training
    local_epochs: int = 5
    batch_size: int = 10
    lr: float = 0.05
    lr_decay: float = 1.0
    momentum: float = 0.0
    weight_decay: float = 0.0
    client_threads: int = 1
    device: str = "cpu"
    # compression
    uplink: str = "stc"
    downlink: str = "stc"
    downlink_mode: str = "delta"
    downlink_catchup: str = ""
    downlink_cost: str = "sent"  # server.downlink: what a message costs when the server picks one
    reply_format: str = "records"  # fedsqueeze.protocol.instructions.REPLY_FORMATS
    instruction_format: str = "records"  # fedsqueeze.protocol.instructions.INSTRUCTION_FORMATS
    # server optimizer (fedsqueeze.optimizers registry; each reads the server-* keys it names)
    server_optimizer: str = "fedavg"
    server_lr: float = 1.0
    server_momentum: float = 0.9
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 1e-3
    # robustness
    max_update_norm: float = 0.0
    fail_crash: float = 0.0
    fail_corrupt: float = 0.0
    fail_hang: float = 0.0
    eval_batch_size: int = 250
    eval_every: int = 1
    # simulated client networks and devices (fedsqueeze.netsim, docs/network.md); "" = off
    network: str = ""
    network_scale: float = 1.0
    compute_time: str = "flops"
    round_deadline: float = 0.0
    over_select: float = 0.0
    # mixed precision local training
    bf16_autocast: bool = False
    # model-level compression of the global model after the last round (off when both lists are empty)
    prune_targets: str = ""
    prune_method: str = "global-l1"
    finetune_rounds: int = 2
    finetune_lr: float = 0.0
    qat_rounds: int = 0
    model_quant: str = ""
    stage_clients: int = 10
    calibration_images: int = 600
    # extensions: comma list of modules imported before anything is parsed (fedsqueeze.plugins)
    plugins: str = ""

    @property
    def prune_levels(self) -> tuple[float, ...]:
        """``prune-targets`` as floats: cumulative sparsity after each prune step."""
        return tuple(float(v) for v in self.prune_targets.split(",") if v.strip())

    @property
    def quant_stages(self) -> tuple[str, ...]:
        """``model-quant`` as a tuple of stage names."""
        return tuple(v.strip() for v in self.model_quant.split(",") if v.strip())

    @property
    def model_stages(self) -> bool:
        """True if the run ends with the model-compression stages."""
        return bool(self.prune_targets.strip() or self.model_quant.strip() or self.qat_rounds)

    @classmethod
    def keys(cls) -> list[str]:
        """The accepted run-config keys (kebab-case)."""
        return [f.name.replace("_", "-") for f in fields(cls)]

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> RunConfig:
        """Build and validate a config from kebab-case keys; missing keys keep defaults.

        Raises
        ------
        ConfigError
            On unknown keys, wrong types or impossible values.
        """
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            attr = key.replace("-", "_")
            if attr not in types:
                raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(cls.keys())}")
            values[attr] = _coerce(key, value, types[attr])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with ``changes`` (snake_case field names)."""
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def to_mapping(self) -> dict[str, Any]:
        """Kebab-case mapping, the inverse of :meth:`from_mapping`."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def validate(self) -> None:
        """Check ranges and names; raise :class:`ConfigError` naming the key."""
        from compression import SpecError

        from . import netsim
        from .datasets import DATASETS, dataset_names
        from .device import DEVICE_CHOICES, check_device
        from .models import MODELS
        from .optimizers import SERVER_OPTIMIZERS, server_optimizer_names
        from .partition import SCHEMES
        from .plugins import PluginError, load_plugins

        try:  # first: plugins may register the stages, datasets and optimizers checked below
            load_plugins(self.plugins)
        except PluginError as exc:
            raise ConfigError(f"config key 'plugins': {exc}") from exc

        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"config key {key!r}: {what} (got {getattr(self, key.replace('-', '_'))!r})")

        need(self.dataset in DATASETS, "dataset", f"must be a registered dataset: {dataset_names()}")
        need(self.model in MODELS, "model", f"must be one of {sorted(MODELS)}")
        need(self.partition in SCHEMES, "partition", f"must be one of {SCHEMES}")
        need(self.dirichlet_alpha > 0, "dirichlet-alpha", "must be > 0")
        need(self.shards_per_client >= 1, "shards-per-client", "must be >= 1")
        need(self.num_server_rounds >= 0, "num-server-rounds", "must be >= 0")
        need(0 <= self.stop_at_accuracy <= 1, "stop-at-accuracy", "must be in [0, 1] (0 = run every round)")
        need(0 < self.fraction_train <= 1, "fraction-train", "must be in (0, 1]")
        need(self.min_train_nodes >= 1, "min-train-nodes", "must be >= 1")
        need(self.min_available_nodes >= 1, "min-available-nodes", "must be >= 1")
        need(self.round_timeout >= 0, "round-timeout", "must be >= 0 (0 = no timeout)")
        need(self.min_train_results >= 1, "min-train-results", "must be >= 1")
        need(self.local_epochs >= 1, "local-epochs", "must be >= 1")
        need(self.batch_size >= 1, "batch-size", "must be >= 1")
        need(self.lr > 0, "lr", "must be > 0")
        need(0 < self.lr_decay <= 1, "lr-decay", "must be in (0, 1] (1 = constant learning rate)")
        need(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        need(self.weight_decay >= 0, "weight-decay", "must be >= 0")
        need(self.client_threads >= 1, "client-threads", "must be >= 1")
        try:
            check_device(self.device)
        except ValueError:
            need(False, "device", f"must be one of {DEVICE_CHOICES}")
        need(self.downlink_mode in ("full", "delta"), "downlink-mode", "must be 'full' or 'delta'")
        need(self.downlink_cost in ("sent", "golomb"), "downlink-cost", "must be 'sent' or 'golomb'")
        need(self.downlink_cost == "sent" or self.downlink_catchup != "", "downlink-cost",
             "only steers the chain-or-catch-up choice: needs downlink-catchup")
        need(self.reply_format in REPLY_FORMATS, "reply-format", f"must be one of {REPLY_FORMATS}")
        need(self.instruction_format in INSTRUCTION_FORMATS, "instruction-format",
             f"must be one of {INSTRUCTION_FORMATS}")
        need(self.server_optimizer in SERVER_OPTIMIZERS, "server-optimizer",
             f"must be a registered server optimizer: {server_optimizer_names()}")
        unknown = [k for k in SERVER_OPTIMIZERS[self.server_optimizer].keys if k not in self.keys()]
        need(not unknown, "server-optimizer", f"the registered optimizer reads run-config key(s) {unknown}, "
             "which do not exist (hyper-parameters are RunConfig fields)")
        need(self.server_lr > 0, "server-lr", "must be > 0")
        need(0 <= self.server_momentum < 1, "server-momentum", "must be in [0, 1)")
        need(0 <= self.server_beta1 < 1, "server-beta1", "must be in [0, 1)")
        need(0 <= self.server_beta2 < 1, "server-beta2", "must be in [0, 1)")
        need(self.server_tau > 0, "server-tau", "must be > 0")
        need(self.max_update_norm >= 0, "max-update-norm", "must be >= 0 (0 = no bound)")
        for key in ("fail-crash", "fail-corrupt", "fail-hang"):
            need(0 <= getattr(self, key.replace("-", "_")) <= 1, key, "must be a fraction in [0, 1]")
        need(self.fail_crash + self.fail_corrupt + self.fail_hang <= 1, "fail-crash",
             "fail-crash + fail-corrupt + fail-hang must be <= 1")
        need(self.fail_hang == 0 or self.round_timeout > 0, "fail-hang", "needs round-timeout > 0")
        need(self.eval_batch_size >= 1, "eval-batch-size", "must be >= 1")
        need(self.eval_every >= 1, "eval-every", "must be >= 1")
        need(not self.network.strip() or self.network.startswith("trace:") or self.network in netsim.PROFILE_SETS,
             "network", f"must be '' (off), a profile set {sorted(netsim.PROFILE_SETS)} or 'trace:<path>'")
        need(math.isfinite(self.network_scale) and self.network_scale > 0, "network-scale", "must be > 0")
        need(self.compute_time in ("flops", "measured"), "compute-time", "must be 'flops' or 'measured'")
        need(math.isfinite(self.round_deadline) and self.round_deadline >= 0, "round-deadline",
             "must be >= 0 simulated seconds (0 = none)")
        need(math.isfinite(self.over_select) and self.over_select >= 0, "over-select",
             "must be >= 0 (extra fraction of clients sampled; 0 = none)")
        need(bool(self.network.strip()) or (self.round_deadline == 0 and self.over_select == 0), "round-deadline",
             "round-deadline and over-select act on simulated arrival times: set 'network' too")
        try:
            levels = self.prune_levels
        except ValueError:
            raise ConfigError(f"config key 'prune-targets': {self.prune_targets!r} is not a comma list of numbers") from None
        need(all(0 < a < 1 for a in levels) and list(levels) == sorted(set(levels)), "prune-targets",
             "must be increasing sparsity levels in (0, 1), e.g. \"0.5,0.8\"")
        need(self.prune_method in PRUNE_METHODS, "prune-method", f"must be one of {PRUNE_METHODS}")
        need(self.finetune_rounds >= 0, "finetune-rounds", "must be >= 0")
        need(self.finetune_lr >= 0, "finetune-lr", "must be >= 0 (0 = lr)")
        need(self.qat_rounds >= 0, "qat-rounds", "must be >= 0")
        unknown = [q for q in self.quant_stages if q not in QUANT_STAGES]
        need(not unknown, "model-quant", f"unknown stage(s) {unknown}; choose from {QUANT_STAGES}")
        need("qat-int8" not in self.quant_stages or self.qat_rounds >= 1, "model-quant", "qat-int8 needs qat-rounds >= 1")
        need(self.stage_clients >= 1, "stage-clients", "must be >= 1")
        need(self.calibration_images >= 1, "calibration-images", "must be >= 1")
        if self.preset:
            preset_path(self.preset)  # raises ConfigError naming the bundled presets
        need(not self.out_dir or Path(self.out_dir).is_absolute(), "out-dir",
             "must be an absolute path (the ServerApp runs in the SuperLink's directory)")
        need(not self.downlink_catchup or self.downlink_mode == "delta", "downlink-catchup",
             "needs downlink-mode = 'delta'")
        for key in ("uplink", "downlink") + (("downlink-catchup",) if self.downlink_catchup else ()):
            try:
                spec = resolve_pipeline(getattr(self, key.replace("-", "_")))
            except SpecError as exc:
                raise ConfigError(f"config key {key!r}: {exc}") from exc
            # the reference of coder=context is what one client received; a broadcast has no such thing
            need(key == "uplink" or spec.coder != "context", key,
                 "coder=context codes positions against what a client received: uplink only")
            need(key != "uplink" or spec.coder != "context" or self.downlink_mode == "delta", key,
                 "coder=context needs downlink-mode = 'delta' (its reference is the deltas a client received)")


def resolve_pipeline(text: str):
    """A compression pipeline from a preset name (``stc``) or a spec string."""
    import compression

    return compression.parse_spec(compression.PRESET_SPECS.get(text, text))


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    kind = {"str": str, "int": int, "float": float, "bool": bool}[str(annotation)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key!r} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def parse_value(text: str) -> Any:
    """Parse a ``key=value`` override value the way ``flwr run --run-config`` does (TOML)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # bare words are strings, e.g. uplink=stc


def load_toml_overrides(path: str | Path) -> dict[str, Any]:
    """Read a preset / override TOML file (a flat table of run-config keys)."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(f"{path}: expected a flat table of config keys, found tables {nested}")
    return data


def preset_names() -> list[str]:
    """Names of the bundled presets (``fedsqueeze/presets/*.toml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def preset_path(preset: str | Path) -> Path:
    """The TOML file of a bundled preset name (``stc``) or of a path ending in ``.toml``.

    Raises
    ------
    ConfigError
        No such bundled preset or file; the message lists the bundled ones.
    """
    text = str(preset)
    path = Path(text) if text.endswith(".toml") else PRESET_DIR / f"{text}.toml"
    if not text.strip() or not path.is_file():
        raise ConfigError(f"unknown preset {text!r}; bundled presets: {', '.join(preset_names())}"
                          + (" (a preset file must be an existing .toml path; the ServerApp resolves relative "
                             "paths from the SuperLink's directory, so give an absolute one)"
                             if text.endswith(".toml") else ""))
    return path


def load_preset(preset: str | Path) -> dict[str, Any]:
    """The run-config keys of a preset (name or ``.toml`` path), not yet validated.

    Raises
    ------
    ConfigError
        Unknown preset, a nested table, or a ``preset`` key inside the preset.
    """
    values = load_toml_overrides(preset_path(preset))
    if "preset" in values:
        raise ConfigError(f"preset {str(preset)!r} sets 'preset' itself; presets do not nest")
    return values


def expand_preset(run_config: Mapping[str, Any], explicit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Apply a run config's ``preset`` key: defaults < preset file < explicitly given keys.

    Parameters
    ----------
    run_config
        The full run config Flower hands the ServerApp (``[tool.flwr.app.config]``
        with the run's overrides applied).
    explicit
        The keys the user gave for this run (Flower's ``Run.override_config``).
        ``None`` when unknown: then every key whose value differs from
        :class:`RunConfig`'s default counts as given.

    Returns
    -------
    dict
        ``run_config`` with the preset's keys filled in where the user did not set them;
        ``preset`` keeps its value so the summary records it. Without ``preset``, a copy.

    Raises
    ------
    ConfigError
        Unknown preset (the message lists the bundled ones).
    """
    preset = run_config.get("preset", "")
    if not preset:
        return dict(run_config)
    if explicit is None:
        defaults = RunConfig().to_mapping()
        explicit = {k: v for k, v in run_config.items() if defaults.get(k, object()) != v}
    given = {k: run_config[k] for k in explicit if k in run_config}
    return {**run_config, **load_preset(preset), **given}
