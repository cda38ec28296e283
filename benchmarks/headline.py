"""Headline table: rounds and bytes to a target accuracy, and the factor against float32.

Reads the ledgers (``metrics.csv``) of finished or interrupted runs, so a run
stopped by hand at its target still counts up to its last written round.

Usage::

    python benchmarks/headline.py --target 0.99 --baseline RUN_DIR RUN_DIR ... > table.md

The first ``--baseline`` run is the float32 reference for the factors.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from fedsqueeze.ledger import accuracy, evaluated


def first_reaching(rows: list[dict[str, str]], target: float) -> dict[str, str] | None:
    """The first evaluated ledger row whose test accuracy reaches ``target``."""
    return next((r for r in evaluated(rows) if accuracy(r) >= target), None)


def describe(run: Path, target: float) -> dict:
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    cfg = summary.get("config", {})
    hit = first_reaching(rows, target)
    last = rows[-1]  # the last round is always evaluated
    return {
        "run": run.name,
        "preset": summary.get("name", run.name),
        "partition": cfg.get("partition", "?"),
        "rounds_run": int(last["round"]),
        "final_acc": accuracy(last),
        "best_acc": max(accuracy(r) for r in evaluated(rows)),
        "hit": hit,
        "at": hit or last,
        "round_s": statistics.median(float(r["round_s"]) for r in rows[1:]) if len(rows) > 1 else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, required=True)
    ap.add_argument("--baseline", type=Path, required=True, help="float32 run of the same partition")
    ap.add_argument("runs", type=Path, nargs="*")
    args = ap.parse_args()
    base = describe(args.baseline, args.target)
    print(f"Target test accuracy **{args.target:g}**; factors are float32 bytes / run bytes at the round each "
          f"run first reaches it (or at its last round, marked *not reached*).\n")
    print("| run | partition | round reached | final / best acc | cum uplink B | cum downlink B | "
          "uplink factor | downlink factor | total factor | median round s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    b_up, b_down = int(base["at"]["cum_uplink_bytes"]), int(base["at"]["cum_downlink_bytes"])
    for d in [base] + [describe(r, args.target) for r in args.runs]:
        up, down = int(d["at"]["cum_uplink_bytes"]), int(d["at"]["cum_downlink_bytes"])
        reached = d["hit"]["round"] if d["hit"] else f"not reached in {d['rounds_run']}"
        fac = (lambda a, b: f"{a / b:,.1f}x") if (d["hit"] and base["hit"]) else (lambda a, b: "—")
        print(f"| {d['run']} | {d['partition']} | {reached} | {d['final_acc']:.4f} / {d['best_acc']:.4f} | "
              f"{up:,} | {down:,} | {fac(b_up, up)} | {fac(b_down, down)} | {fac(b_up + b_down, up + down)} | "
              f"{d['round_s']:.1f} |")


if __name__ == "__main__":
    main()
