"""The standard benchmark (``simulations/sweeps/standard.toml``): collect finished runs, write the report.

The grid takes many hours on 2 cores, so it is run one selection at a time
(``python -m simulations.sweep simulations/sweeps/standard.toml --out RUNS --only ...``)
and every finished run's ledger is committed under ``benchmarks/standard/sweep/runs/<id>/``
(``metrics.csv``, ``clients.csv``, ``summary.json``, ``partitions.csv``, ``sweep_status.json``;
never the checkpoint). The report is then derived from those committed ledgers alone, so
anyone can regenerate it offline:

    python benchmarks/standard.py --collect RUNS    # copy finished runs in, then report
    python benchmarks/standard.py                   # report from the committed ledgers

Writes ``benchmarks/standard/{report.md, table.md, table.csv, *.png}`` with
``simulations.report`` (mean ± 95 % CI over seeds, reached counts, factors against
``fedavg-fp32`` at the same target).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from simulations import report

log = logging.getLogger("standard")

HERE = Path(__file__).resolve().parent / "standard"
SWEEP = HERE / "sweep"
LEDGER_FILES = ("metrics.csv", "clients.csv", "summary.json", "partitions.csv", "sweep_status.json")
TARGETS = (0.97, 0.98, 0.99)


def collect(source: Path, dest: Path = SWEEP) -> list[str]:
    """Copy the sweep description and every *completed* run's ledger files from ``source``.

    Returns the ids copied. Runs still in progress or failed are left out: a half-run
    ledger must never stand behind a table row.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("sweep.json",):
        shutil.copy2(source / name, dest / name)
    copied = []
    for run_dir in sorted((source / "runs").iterdir()):
        summary = run_dir / "summary.json"
        if not summary.exists() or json.loads(summary.read_text()).get("status") != "completed":
            continue
        target = dest / "runs" / run_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for name in LEDGER_FILES:
            if (run_dir / name).exists():
                shutil.copy2(run_dir / name, target / name)
        copied.append(run_dir.name)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", type=Path, metavar="RUNS",
                        help="sweep output folder to copy finished runs from before reporting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[standard] %(message)s")
    if args.collect:
        log.info("collected %s", ", ".join(collect(args.collect)) or "nothing")
    from simulations.sweep import write_index, RunSpec

    meta = json.loads((SWEEP / "sweep.json").read_text())
    write_index(SWEEP, [RunSpec(**r) for r in meta["runs"]])
    for path in report.write_report(SWEEP, HERE, targets=TARGETS):
        log.info("wrote %s", path.relative_to(HERE.parent.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
