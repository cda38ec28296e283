"""What a round deadline costs, with and without over-selection, at a fixed simulated time.

Three federations of the same preset on the same simulated client network:

1. ``no-deadline``: the server waits for every reply (the baseline);
2. ``deadline``: replies later than ``D`` are stragglers, dropped from the aggregate;
3. ``deadline+over-select``: ``ceil(K * (1 + o))`` clients are sampled and the
   first K replies in time are kept (Bonawitz et al., "Towards Federated
   Learning at Scale", SysML 2019).

``D`` is read off run 1: the ``1 - drop`` quantile of its clients' simulated
arrival times, so that the deadline drops about ``drop`` of the sampled
clients. The table compares the runs at a fixed simulated time ``T`` (the
shortest of the three runs' total simulated time): the accuracy of the last
evaluated round finished by ``T``, and the time each run needs to reach the
accuracy targets.

Usage::

    python benchmarks/deadlines.py --runs /abs/runs/deadlines --out benchmarks/deadlines \\
        [--preset stc] [--network mobile-4g] [--rounds 40] [--local-epochs 1] [--drop 0.25] [--over-select 0.3]

Finished runs (``summary.json`` completed with the same config) are reused, so
an interrupted benchmark resumes at the first unfinished run.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fedsqueeze.ledger import accuracy, evaluated

log = logging.getLogger("deadlines")

TARGETS = (0.95, 0.97, 0.98)


def _rows(run_dir: Path, name: str) -> list[dict[str, str]]:
    with open(run_dir / name, newline="") as fh:
        return list(csv.DictReader(fh))


def _run(label: str, config: dict[str, Any], runs: Path, supernodes: int) -> Path:
    """Run (or reuse) one federation; return its directory."""
    from simulations.run import run_experiment
    from simulations.sweep import config_differences

    out = runs / label
    summary_path = out / "summary.json"
    if summary_path.exists():
        old = json.loads(summary_path.read_text())
        if old.get("status") == "completed" and not config_differences(config, old["config"]):
            log.info("%s: reusing the finished run in %s", label, out)
            return out
    log.info("%s: running (%s)", label, " ".join(f"{k}={config[k]}" for k in ("round-deadline", "over-select")))
    run_experiment(config, out, num_supernodes=supernodes)
    return out


def deadline_for(run_dir: Path, drop: float) -> float:
    """The ``1 - drop`` quantile of the simulated arrival times of a run's replies (rounds >= 1)."""
    arrivals = [float(c["arrival_s"]) for c in _rows(run_dir, "clients.csv")
                if c["status"] == "ok" and c["arrival_s"] not in ("", None)]
    if not arrivals:
        raise ValueError(f"{run_dir}: no simulated arrival times in clients.csv (was 'network' set?)")
    return float(np.quantile(arrivals, 1.0 - drop))


def at_time(rows: list[dict[str, str]], t: float) -> dict[str, Any]:
    """The last evaluated round finished by simulated time ``t``."""
    done = [r for r in evaluated(rows) if float(r["cum_sim_s"] or 0.0) <= t + 1e-9]
    last = done[-1]
    return {"round": int(last["round"]), "accuracy": accuracy(last)}


def summarise(label: str, run_dir: Path, t_fixed: float) -> dict[str, Any]:
    rows = _rows(run_dir, "metrics.csv")
    train = [r for r in rows if int(r["round"]) > 0]
    sampled = sum(int(r["clients_sampled"]) for r in train)
    first = {}
    for target in TARGETS:
        hit = next((r for r in evaluated(train) if accuracy(r) >= target), None)
        first[target] = None if hit is None else float(hit["cum_sim_s"])
    fixed = at_time(rows, t_fixed)
    return {
        "label": label, "rounds": len(train), "sim_s": float(train[-1]["cum_sim_s"]),
        "sampled": sampled, "stragglers": sum(int(r["stragglers"]) for r in train),
        "overselected": sum(int(r["overselected"]) for r in train),
        "aggregated": sum(int(r["clients_ok"]) for r in train),
        "bytes": int(train[-1]["cum_uplink_bytes"]) + int(train[-1]["cum_downlink_bytes"]),
        "acc_at_t": fixed["accuracy"], "round_at_t": fixed["round"], "time_to": first,
        "final_accuracy": accuracy(evaluated(train)[-1]), "final_round": int(train[-1]["round"]),
    }


def write_report(out: Path, results: list[dict[str, Any]], t_fixed: float, deadline: float,
                 args: argparse.Namespace, dirs: dict[str, Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, run_dir in dirs.items():
        rows = evaluated(_rows(run_dir, "metrics.csv"))
        ax.plot([float(r["cum_sim_s"] or 0) / 60 for r in rows], [accuracy(r) for r in rows], marker=".", label=label)
    ax.axvline(t_fixed / 60, color="grey", ls=":", lw=1)
    ax.set_xlabel(f"simulated time (min), network {args.network}")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.8, 1.0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{args.preset}, E={args.local_epochs}: deadline {deadline:.1f} s, over-select {args.over_select:g}")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_sim_time.png", dpi=120)
    plt.close(fig)

    def fmt_t(v: float | None) -> str:
        return "not reached" if v is None else f"{v / 60:.1f} min"

    lines = [
        "# Deadlines and over-selection at a fixed simulated time",
        "",
        f"Regenerate: `python benchmarks/deadlines.py --runs {args.runs} --out {out} --preset {args.preset} "
        f"--network {args.network} --rounds {args.rounds} --local-epochs {args.local_epochs} --drop {args.drop} "
        f"--over-select {args.over_select}`",
        "",
        f"McMahan CNN, IID, 100 clients, K = 10 per round, E = {args.local_epochs}, B = 10, seed 0, preset "
        f"`{args.preset}`, network `{args.network}` (docs/network.md), deterministic FLOP-based compute time. "
        f"Deadline D = {deadline:.2f} simulated s: the {1 - args.drop:.0%} quantile of the no-deadline run's "
        f"arrival times. Fixed time T = {t_fixed / 60:.2f} min (the shortest run's total simulated time).",
        "",
        "| run | rounds | simulated time | stragglers / sampled | over-selected | aggregated | accuracy at T "
        "(round) | accuracy after the last round | " + " | ".join(f"time to {t:g}" for t in TARGETS)
        + " | total bytes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(TARGETS) + "---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['rounds']} | {r['sim_s'] / 60:.1f} min | {r['stragglers']} / {r['sampled']} "
            f"({r['stragglers'] / r['sampled']:.0%}) | {r['overselected']} | {r['aggregated']} | "
            f"{r['acc_at_t']:.4f} ({r['round_at_t']}) | {r['final_accuracy']:.4f} ({r['final_round']}) | "
            + " | ".join(fmt_t(r["time_to"][t]) for t in TARGETS) + f" | {r['bytes'] / 1e6:.1f} MB |")
    base = results[0]
    lines += ["", "Accuracy at T against the no-deadline run (negative = a cost): " + ", ".join(
        f"{r['label']} {100 * (r['acc_at_t'] - base['acc_at_t']):+.2f} points" for r in results[1:]) + "; "
        "after the same number of rounds: " + ", ".join(
        f"{r['label']} {100 * (r['final_accuracy'] - base['final_accuracy']):+.2f} points" for r in results[1:])
        + ".", ""]
    (out / "deadlines.md").write_text("\n".join(lines))
    (out / "deadlines.json").write_text(json.dumps({"deadline_s": deadline, "t_fixed_s": t_fixed,
                                                     "runs": results}, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="where the three run directories go (absolute)")
    parser.add_argument("--out", type=Path, required=True, help="report directory")
    parser.add_argument("--preset", default="stc")
    parser.add_argument("--network", default="mobile-4g")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--drop", type=float, default=0.25, help="fraction of replies the deadline should drop")
    parser.add_argument("--over-select", type=float, default=0.3)
    parser.add_argument("--supernodes", type=int, default=100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[deadlines] %(message)s")
    from simulations.run import resolve_overrides

    base = {"model": "mcmahan-cnn", "partition": "iid", "num-server-rounds": args.rounds,
            "local-epochs": args.local_epochs, "batch-size": 10, "fraction-train": 0.1, "seed": 0,
            "network": args.network, "compute-time": "flops"}
    runs = args.runs.resolve()
    dirs = {"no-deadline": _run("no-deadline", resolve_overrides(args.preset, base), runs, args.supernodes)}
    deadline = round(deadline_for(dirs["no-deadline"], args.drop), 3)
    dirs["deadline"] = _run("deadline", resolve_overrides(args.preset, {**base, "round-deadline": deadline}), runs,
                            args.supernodes)
    dirs["deadline+over-select"] = _run("deadline+over-select", resolve_overrides(
        args.preset, {**base, "round-deadline": deadline, "over-select": args.over_select}), runs, args.supernodes)
    t_fixed = min(float(_rows(d, "metrics.csv")[-1]["cum_sim_s"]) for d in dirs.values())
    results = [summarise(label, d, t_fixed) for label, d in dirs.items()]
    write_report(args.out, results, t_fixed, deadline, args, dirs)
    log.info("\n%s", (args.out / "deadlines.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
