"""Compressor families in a real federation: bytes to target beside ``stc`` and ``signsgd-ef``.

Runs come from ``simulations/sweeps/families.toml`` (McMahan CNN, 100 clients,
C = 0.1, E = 5, B = 10, lr = 0.05, IID, seed 0, a short round budget), run
with the sweep runner on Flower's simulation engine::

    python -m simulations.sweep simulations/sweeps/families.toml --out runs/families
    python -m benchmarks.families --collect runs/families   # copy finished ledgers in, write the table
    python -m benchmarks.families                           # the table from the committed ledgers

``stc`` and ``fedavg-fp32`` are read from the standard benchmark's committed
ledgers of the same setting and seed (``benchmarks/standard/sweep/runs``),
cut to the families' budget so every row covers the same rounds; their
rounds to 99 % over the full run are given beside.

Writes ``benchmarks/families/{table.md, table.csv}``; ledgers are committed
under ``benchmarks/families/runs/<id>/`` (never the checkpoint).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from benchmarks.standard import copy_completed_runs

log = logging.getLogger("families")

ROOT = Path(__file__).resolve().parent
HERE = ROOT / "families"
STANDARD = ROOT / "standard" / "sweep" / "runs"
FAMILIES = ("drive", "eden-2bit", "powersgd-r2", "fetchsgd", "signsgd-ef")
BASELINES = ("stc", "fedavg-fp32")
TARGETS = (0.95, 0.97, 0.98, 0.99)
MB = 1e6


def collect(source: Path, dest: Path = HERE / "runs") -> list[str]:
    """Copy every *completed* run's ledger files from a sweep folder; returns the ids copied."""
    return copy_completed_runs(Path(source) / "runs", dest)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _first(rows: list[dict[str, str]], target: float) -> dict[str, str] | None:
    for r in rows:
        if int(r["round"]) > 0 and r["test_accuracy"] and float(r["test_accuracy"]) >= target:
            return r
    return None


def summarize(preset: str, run_dir: Path, budget: int | None) -> dict[str, object]:
    """One table row: accuracy, bytes and bytes to each target within ``budget`` rounds (None: all)."""
    all_rows = _rows(run_dir)
    rows = [r for r in all_rows if budget is None or int(r["round"]) <= budget]
    summary = json.loads((run_dir / "summary.json").read_text())
    last = rows[-1]
    trained = [r for r in rows if int(r["round"]) > 0]
    bits = [float(r["mean_bits_per_param"]) for r in trained if r["mean_bits_per_param"]]
    dist = [float(r["mean_rel_distortion"]) for r in trained if r["mean_rel_distortion"]]
    out: dict[str, object] = {
        "preset": preset,
        "uplink": summary["pipeline_up"],
        "rounds": int(last["round"]),
        "final_acc": float(last["test_accuracy"]),
        "best_acc": max(float(r["test_accuracy"]) for r in trained),
        "bits_per_param": sum(bits) / len(bits) if bits else None,
        "rel_distortion": sum(dist) / len(dist) if dist else None,
        "uplink_MB": int(last["cum_uplink_bytes"]) / MB,
        "total_MB": (int(last["cum_uplink_bytes"]) + int(last["cum_downlink_bytes"])) / MB,
    }
    for t in TARGETS:
        hit = _first(rows, t)
        out[f"round@{t}"] = int(hit["round"]) if hit else None
        out[f"uplink_MB@{t}"] = int(hit["cum_uplink_bytes"]) / MB if hit else None
        out[f"total_MB@{t}"] = (int(hit["cum_uplink_bytes"]) + int(hit["cum_downlink_bytes"])) / MB if hit else None
    full = _first(all_rows, 0.99)
    out["full_run_round@0.99"] = int(full["round"]) if full else None
    out["full_run_rounds"] = int(all_rows[-1]["round"])
    return out


def _fmt(v: object, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def build_longer(runs: Path = HERE / "runs") -> list[dict[str, object]]:
    """Rows for the extra runs in ``runs/`` (ids ending in ``__long``), each over its own budget."""
    rows = []
    for d in sorted(runs.glob("*__long")):
        if (d / "summary.json").exists():
            rows.append(summarize(d.name.split("__")[0], d, None))
    return rows


def build(runs: Path = HERE / "runs") -> list[dict[str, object]]:
    """Rows for every family run present, then the baselines cut to the families' budget."""
    rows = []
    for preset in FAMILIES:
        d = runs / f"{preset}__iid__seed0"
        if (d / "summary.json").exists():
            rows.append(summarize(preset, d, None))
    budget = max((int(r["rounds"]) for r in rows), default=None)
    for preset in BASELINES:
        d = STANDARD / f"{preset}__iid__seed0"
        if (d / "metrics.csv").exists():
            rows.append(summarize(preset, d, budget))
    return rows


def _table(rows: list[dict[str, object]]) -> list[str]:
    lines = [
        "| preset | uplink pipeline | bits/param up | rel. distortion | acc @ budget | best | "
        + " | ".join(f"{t:.2f}: round / up MB / total MB" for t in TARGETS)
        + " | up MB @ budget | total MB @ budget | full run: round to 0.99 |",
        "|---|---|---:|---:|---:|---:|" + "---|" * len(TARGETS) + "---:|---:|---:|",
    ]
    for r in rows:
        cells = [f"{_fmt(r[f'round@{t}'])} / {_fmt(r[f'uplink_MB@{t}'])} / {_fmt(r[f'total_MB@{t}'])}"
                 if r[f"round@{t}"] is not None else "not reached" for t in TARGETS]
        full = (f"{r['full_run_round@0.99']} (of {r['full_run_rounds']})" if r["full_run_round@0.99"]
                else f"not in {r['full_run_rounds']}")
        lines.append(f"| {r['preset']} | `{r['uplink']}` | {_fmt(r['bits_per_param'])} | "
                     f"{_fmt(r['rel_distortion'])} | {r['final_acc']:.4f} | {r['best_acc']:.4f} | "
                     + " | ".join(cells)
                     + f" | {_fmt(r['uplink_MB'])} | {_fmt(r['total_MB'])} | {full} |")
    return lines


def write(rows: list[dict[str, object]], out: Path = HERE, longer: list[dict[str, object]] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0]) if rows else []
    with open(out / "table.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    budget = max((int(r["rounds"]) for r in rows), default=0)
    lines = [
        "# Compressor families in a federation: bytes to target beside stc and signsgd-ef", "",
        (f"McMahan CNN, 100 clients, 10 per round, E = 5, B = 10, lr = 0.05, IID, seed 0, float32 model "
        f"downlink for the families and signsgd-ef (stc: its own delta downlink), **budget {budget} rounds** "
        "(the 2 shared cores allowed no more this session; the lead runs the long version by raising "
        "`num-server-rounds` in `simulations/sweeps/families.toml`). `stc` and `fedavg-fp32` are the standard "
        "benchmark's seed-0 runs cut to the same rounds; their rounds to 99 % over the full run are in the "
        "last column. MB = 10⁶ bytes of Flower messages (uplink: client replies; total: both directions), as "
        "the ledger counts them."), "",
    ]
    lines += _table(rows)
    if longer:
        lines += ["", "## Longer runs (each over its own budget, same setting, stopping at 99 %)", ""]
        lines += _table(longer)
    (out / "table.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collect", metavar="SWEEP_DIR", help="copy completed runs of this sweep folder in first")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.collect:
        log.info("collected: %s", ", ".join(collect(Path(args.collect))) or "nothing")
    rows = build()
    write(rows, longer=build_longer())
    log.info("families: %d rows -> %s", len(rows), HERE / "table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
