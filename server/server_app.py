"""ServerApp: thin glue from Flower's ``Context`` to :func:`server.federation.run_federation`."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsqueeze.config import RunConfig
from server.federation import run_federation

app = ServerApp()


def resolve_out_dir(cfg: RunConfig, run_id: int) -> Path:
    """``out-dir`` if set, else ``$FEDSQUEEZE_RUNS`` (or ``~/fedsqueeze-runs``)/<name>-seed<seed>-<stamp>."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    root = Path(os.environ.get("FEDSQUEEZE_RUNS", Path.home() / "fedsqueeze-runs"))
    return root / f"{cfg.name}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}-{run_id}"


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Read the run config once, then run the federation."""
    logging.getLogger("flwr").setLevel(logging.WARNING)
    cfg = RunConfig.from_mapping(context.run_config)
    run_federation(grid, cfg, resolve_out_dir(cfg, grid.run.run_id))
