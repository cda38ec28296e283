"""The standard benchmark (``simulations/sweeps/standard.toml``): collect finished runs, write the report.

The grid takes many hours on 2 cores, so it is run one selection at a time
(``python -m simulations.sweep simulations/sweeps/standard.toml --out RUNS --only ...``)
and every finished run's ledger is committed under ``benchmarks/standard/sweep/runs/<id>/``
(``metrics.csv``, ``clients.csv``, ``summary.json``, ``partitions.csv``, ``sweep_status.json``;
never the checkpoint). The report is then derived from those committed ledgers alone, so
anyone can regenerate it offline:

    python benchmarks/standard.py --collect RUNS    # copy finished runs in, then report
    python benchmarks/standard.py                   # report from the committed ledgers

Writes ``benchmarks/standard/{report.md, table.md, table.csv, downlink.md, *.png}`` with
``simulations.report`` (mean ± 95 % CI over seeds, reached counts, factors against
``fedavg-fp32`` at the same target).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import Counter
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


def copy_completed_runs(source_runs: Path, dest_runs: Path) -> list[str]:
    """Copy the ledger files of every *completed* run folder in ``source_runs`` to ``dest_runs``.

    Returns the ids copied. Runs still in progress or failed are left out: a half-run
    ledger must never stand behind a table row.
    """
    copied = []
    for run_dir in sorted(Path(source_runs).iterdir()):
        summary = run_dir / "summary.json"
        if not summary.exists() or json.loads(summary.read_text()).get("status") != "completed":
            continue
        target = Path(dest_runs) / run_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for name in LEDGER_FILES:
            if (run_dir / name).exists():
                shutil.copy2(run_dir / name, target / name)
        copied.append(run_dir.name)
    return copied


def collect(source: Path, dest: Path = SWEEP) -> list[str]:
    """Copy the sweep description and every completed run's ledger files from ``source``."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "sweep.json", dest / "sweep.json")
    return copy_completed_runs(source / "runs", dest / "runs")


def downlink_table(sweep: Path = SWEEP, partition: str = "iid", seed: int = 0) -> str:
    """Mean downlink bytes per client message of each delta-downlink run, over the rounds they all ran.

    Compares chains with catch-ups on the same seed (issue 13): every run is cut to the
    shortest run's last round, so each is measured on the same rounds.
    """
    runs = {}
    for run_dir in sorted((sweep / "runs").glob(f"*__{partition}__seed{seed}")):
        summary = json.loads((run_dir / "summary.json").read_text())
        if summary["config"].get("downlink-mode") != "delta":
            continue
        with open(run_dir / "clients.csv", newline="") as fh:
            runs[run_dir.name.split("__")[0]] = list(csv.DictReader(fh))
    if not runs:
        return ""
    last = min(max(int(r["round"]) for r in rows) for rows in runs.values())
    lines = [f"# Downlink bytes per client message, {partition} seed {seed}, rounds 1..{last}", "",
             "Every delta-downlink run of the grid, cut to the rounds they all ran. `gap` = versions a client "
             "was behind; `kinds` = how it was brought up to date (chain of per-round deltas, one catch-up "
             "payload, or the float32 model).", "",
             "| preset | messages | mean wire bytes | mean payload bytes | mean gap | kinds | vs `stc` chain |",
             "|---|---:|---:|---:|---:|---|---:|"]
    means = {}
    for name, rows in runs.items():
        rows = [r for r in rows if int(r["round"]) <= last]
        means[name] = statistics.mean(int(r["downlink_bytes"]) for r in rows)
    for name, rows in runs.items():
        rows = [r for r in rows if int(r["round"]) <= last]
        kinds = Counter(r.get("downlink_kind") or "chain" for r in rows)
        gaps = [int(r["target_version"]) - int(r["base_version"]) for r in rows if int(r["base_version"]) >= 0]
        ratio = f"{means['stc'] / means[name]:.2f}×" if "stc" in means else "—"
        lines.append(f"| `{name}` | {len(rows)} | {means[name]:,.0f} | "
                     f"{statistics.mean(int(r['downlink_payload_bytes']) for r in rows):,.0f} | "
                     f"{statistics.mean(gaps):.1f} | "
                     + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


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
    (HERE / "downlink.md").write_text(downlink_table())
    log.info("wrote benchmarks/standard/downlink.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
