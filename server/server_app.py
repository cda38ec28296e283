"""ServerApp: thin glue from Flower's ``Context`` to :func:`server.federation.run_federation`.

Before the federation starts it expands the ``preset`` run-config key, warns
when the simulation runs Flower's default federation of 2 SuperNodes, and
logs where the run's dataset comes from.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# torchao registers an Enum as a pytree constant at import; torch logs a deprecation
# warning about it in every process. Not actionable here, so silenced before the import.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsqueeze.config import ConfigError, RunConfig, expand_preset
from fedsqueeze.data import MnistUnavailable
from fedsqueeze.datasets import DatasetError, dataset_provenance
from fedsqueeze.log import configure as configure_logging
from fedsqueeze.log import get_logger
from server.federation import run_federation

__all__ = ["app", "resolve_config", "explicit_keys", "federation_size", "default_federation_warning",
           "resolve_out_dir", "FLOWER_DEFAULT_SUPERNODES", "FEDERATION_CONFIG_HINT"]

app = ServerApp()
log = get_logger(__name__)

#: What ``flwr run`` simulates without ``--federation-config`` (flwr >= 1.32).
FLOWER_DEFAULT_SUPERNODES = 2
#: The federation the presets are written for (McMahan et al.: 100 clients, 10 per round).
FEDERATION_CONFIG_HINT = "num-supernodes=100 client-resources-num-cpus=1 init-args-num-cpus=<your CPU cores>"


def resolve_out_dir(cfg: RunConfig, run_id: int) -> Path:
    """``out-dir`` if set, else ``$FEDSQUEEZE_RUNS`` (or ``~/fedsqueeze-runs``)/<name>-seed<seed>-<stamp>."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    root = Path(os.environ.get("FEDSQUEEZE_RUNS", Path.home() / "fedsqueeze-runs"))
    return root / f"{cfg.name}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}-{run_id}"


def explicit_keys(grid: Grid) -> dict[str, Any] | None:
    """The run-config keys given for this run (Flower's ``Run.override_config``), or None if unknown.

    An empty override table is reported as unknown: Flower's in-process
    simulation API does not fill it in.
    """
    try:
        given = getattr(grid.run, "override_config", None)
    except Exception:  # noqa: BLE001 - a grid without a run (tests) simply has no overrides
        return None
    return dict(given) if given else None


def resolve_config(run_config: Mapping[str, Any], explicit: Mapping[str, Any] | None = None) -> RunConfig:
    """The validated config of a run: defaults < ``preset`` file < keys given explicitly.

    Raises
    ------
    ConfigError
        Unknown preset or key, wrong type, impossible value.
    """
    return RunConfig.from_mapping(expand_preset(run_config, explicit))


def federation_size(grid: Grid, *, settle_s: float = 0.5, timeout_s: float = 60.0,
                    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> int:
    """The number of nodes once they stop appearing (the simulation registers them in one burst)."""
    deadline = clock() + timeout_s
    count = len(list(grid.get_node_ids()))
    while count == 0 and clock() < deadline:
        sleep(0.2)
        count = len(list(grid.get_node_ids()))
    while True:
        sleep(settle_s)
        again = len(list(grid.get_node_ids()))
        if again == count or clock() >= deadline:
            return again
        count = again


def _is_simulation(grid: Grid) -> bool:
    try:
        from flwr.superlink.grid.inmemory_grid import InMemoryGrid
    except ImportError:  # pragma: no cover - a Flower without this module has no such simulation grid
        return False
    return isinstance(grid, InMemoryGrid)


def default_federation_warning(grid: Grid, **size_kwargs: Any) -> str | None:
    """A warning if this is a simulation of exactly Flower's default 2 SuperNodes, else None.

    In a deployment (SuperNodes started by hand) any size is deliberate, so
    only the simulation engine's grid is checked.
    """
    if not _is_simulation(grid):
        return None
    size = federation_size(grid, **size_kwargs)
    if size != FLOWER_DEFAULT_SUPERNODES:
        return None
    return (f"this simulation has {size} SuperNodes, Flower's default when `flwr run` gets no "
            "--federation-config. MNIST is split in 2 partitions of 30,000 images, so each client round is "
            "slow and this is not the 100-client setting of the presets. For that setting pass: "
            f'--federation-config "{FEDERATION_CONFIG_HINT}". '
            "Ignore this if 2 clients is what you want.")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Read the run config once (expanding ``preset``), check the federation and data, then run.

    Progress goes to the ``fedsqueeze`` logger, printed on standard output in
    the form ``$FEDSQUEEZE_LOG_FORMAT`` names (:mod:`fedsqueeze.log`).
    """
    logging.getLogger("flwr").setLevel(logging.WARNING)
    configure_logging()
    try:
        cfg = resolve_config(context.run_config, explicit_keys(grid))
    except ConfigError as exc:
        log.error(f"run config: {exc}")
        raise
    if cfg.preset:
        given = sorted(set(explicit_keys(grid) or ()) - {"preset"})
        log.info(f"preset {cfg.preset!r} applied" + (f"; given explicitly: {', '.join(given)}" if given else ""))
    warning = default_federation_warning(grid)
    if warning:
        log.warning(warning)
    try:
        provenance = dataset_provenance(cfg.dataset, cfg.data_dir or None)
    except (MnistUnavailable, DatasetError) as exc:
        log.error(f"dataset {cfg.dataset!r}: {exc}")
        raise
    log.info(f"data: {cfg.dataset} {provenance.get('how', 'loaded')} (SHA-256 verified)")
    run_federation(grid, cfg, resolve_out_dir(cfg, grid.run.run_id))
