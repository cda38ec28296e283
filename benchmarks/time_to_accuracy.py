"""Simulated time to accuracy of finished runs under client-network profiles, and the bandwidth crossover.

Offline: replays each run's per-client bytes (``clients.csv``) through
:mod:`fedsqueeze.netsim` under each profile set, so one set of runs answers
"how long would this take on 4G / 3G / home broadband" without re-running the
federation (the accuracy of a round does not depend on the network when no
deadline or over-selection is used; runs with either are refused).

For each profile set it writes

* the simulated time to each target accuracy (``--targets``) at bandwidth scale 1;
* a plot of accuracy against simulated time (``accuracy_vs_sim_time_<set>.png``);
* a sweep of a bandwidth scale (both links of every client multiplied by it,
  ``--scales``): time to target per run, and the **crossover** scale at which a
  compressed run's time to target equals the baseline (float32) run's, found
  by bracketing on the sweep grid and bisecting in log2(scale) on the replay
  itself (exact up to 1e-9 in log2 scale, not a linear interpolation).

Each run directory needs ``metrics.csv`` (the ledger), ``clients.csv`` (one row
per sampled client per round: ``fedsqueeze.netsim.CLIENT_COLUMNS``) and
``summary.json`` (``config`` with ``model``, ``seed``, ``local-epochs``).

Usage::

    python benchmarks/time_to_accuracy.py --baseline RUNS/fedavg-fp32 RUNS/q8 RUNS/stc \\
        --out benchmarks/time-to-accuracy [--profiles mobile-4g,mobile-3g,home-broadband] \\
        [--targets 0.97,0.99] [--scales=-6:8] [--compute flops|measured] [--profile-seed 0]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsqueeze import netsim
from fedsqueeze.ledger import accuracy, evaluated

log = logging.getLogger("time_to_accuracy")


class RunError(ValueError):
    """A run directory that cannot be analysed (missing or malformed files)."""


@dataclass
class Run:
    """A finished run's ledger, per-client rows and config."""

    path: Path
    name: str
    metrics: list[dict[str, str]]
    clients: list[dict[str, str]]
    config: dict[str, Any]
    flops_per_example: float | None = None
    _base: dict[tuple[str, int], list[netsim.ClientProfile]] = field(default_factory=dict, repr=False)


def load_run(path: Path) -> Run:
    """Read ``metrics.csv``, ``clients.csv`` and ``summary.json`` of a run directory.

    Raises
    ------
    RunError
        A file is missing, or ``clients.csv`` lacks a column of ``netsim.CLIENT_COLUMNS``.
    """
    path = Path(path)
    files = {n: path / n for n in ("metrics.csv", "clients.csv", "summary.json")}
    for name, f in files.items():
        if not f.is_file():
            hint = " (runs before issue 16 wrote no per-client rows)" if name == "clients.csv" else ""
            raise RunError(f"{path}: no {name}{hint}")
    with open(files["metrics.csv"], newline="") as fh:
        metrics = list(csv.DictReader(fh))
    with open(files["clients.csv"], newline="") as fh:
        reader = csv.DictReader(fh)
        absent = [c for c in netsim.CLIENT_COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise RunError(f"{files['clients.csv']}: missing columns {absent}")
        clients = list(reader)
    summary = json.loads(files["summary.json"].read_text())
    config = summary.get("config") or {}
    if not metrics or not evaluated(metrics):
        raise RunError(f"{files['metrics.csv']}: no evaluated rounds")
    return Run(path, summary.get("name") or path.name, metrics, clients, config)


def num_partitions(runs: Sequence[Run]) -> int:
    """Profiles are drawn for partitions 0 .. max id seen in any run (the same clients for every run)."""
    ids = [int(r["partition_id"]) for run in runs for r in run.clients]
    return max(ids) + 1 if ids else 0


@dataclass(frozen=True)
class Setting:
    """How simulated time is computed: profile spec, client count, seed, compute mode."""

    spec: str
    num_clients: int
    seed: int = 0
    compute: str = "flops"
    reference_flops: float | None = None  # None: netsim.reference_flops(spec)

    def reference(self) -> float | None:
        if self.compute != "flops":
            return None
        return netsim.reference_flops(self.spec, self.reference_flops)


def _flops(run: Run) -> float:
    if run.flops_per_example is None:
        from fedsqueeze.datasets import DEFAULT_DATASET, get_dataset
        from fedsqueeze.models import build_model

        model = run.config.get("model")
        if not model:
            raise RunError(f"{run.path}/summary.json: config has no 'model' (needed for FLOP-based compute)")
        dataset = run.config.get("dataset", DEFAULT_DATASET)  # runs older than the key are MNIST runs
        run.flops_per_example = float(netsim.train_flops_per_example(build_model(model, dataset),
                                                                     get_dataset(dataset).input_shape))
    return run.flops_per_example


def sim_times(run: Run, setting: Setting, scale: float = 1.0) -> dict[int, float]:
    """Cumulative simulated seconds after each ledger round at bandwidth ``scale``.

    A ledger round with no client rows (round 0: the handshake and first
    evaluation) adds no simulated time.
    """
    key = (setting.spec, setting.seed)
    if key not in run._base:
        base = netsim.resolve_profiles(setting.spec, setting.num_clients, setting.seed)
        if base is None:
            raise RunError("an empty profile spec has no simulated time")
        run._base[key] = base
    profiles = [p.scaled(scale) for p in run._base[key]] if scale != 1.0 else run._base[key]
    replay = netsim.replay_rounds(
        run.clients, profiles, compute=setting.compute,
        flops_per_example=_flops(run) if setting.compute == "flops" else None,
        reference_flops=setting.reference(), run_config=run.config)
    out, cum, i = {}, 0.0, 0
    for row in run.metrics:
        rnd = int(row["round"])
        while i < len(replay) and replay[i].round <= rnd:
            cum = replay[i].cum_sim_s
            i += 1
        out[rnd] = cum
    return out


def time_to_target(run: Run, setting: Setting, target: float, scale: float = 1.0) -> tuple[int, float] | None:
    """(round, simulated seconds) when the run first reaches ``target``, or None if it never does."""
    hit = next((r for r in evaluated(run.metrics) if accuracy(r) >= target), None)
    if hit is None:
        return None
    rnd = int(hit["round"])
    return rnd, sim_times(run, setting, scale)[rnd]


def crossovers(baseline: Run, run: Run, setting: Setting, target: float,
               scales: Sequence[float]) -> list[float] | None:
    """Bandwidth scales in ``[min(scales), max(scales)]`` where both runs reach ``target`` at the same time.

    Returns None when either run never reaches the target, else the (possibly
    empty) ascending list of crossings, each bracketed on the ``scales`` grid
    and refined by bisection in log2(scale).
    """
    if time_to_target(baseline, setting, target) is None or time_to_target(run, setting, target) is None:
        return None

    def diff(log2s: float) -> float:
        s = 2.0 ** log2s
        return time_to_target(run, setting, target, s)[1] - time_to_target(baseline, setting, target, s)[1]

    grid = sorted(math.log2(s) for s in scales)
    values = [diff(x) for x in grid]
    out: list[float] = []
    for (x0, d0), (x1, d1) in zip(zip(grid, values), zip(grid[1:], values[1:])):
        if d0 == 0:
            out.append(2.0 ** x0)
            continue
        if d0 * d1 < 0:
            lo, hi, dlo = x0, x1, d0
            for _ in range(80):
                mid = (lo + hi) / 2
                dm = diff(mid)
                if dm == 0 or hi - lo < 1e-12:
                    lo = hi = mid
                    break
                if (dm < 0) == (dlo < 0):
                    lo, dlo = mid, dm
                else:
                    hi = mid
            out.append(2.0 ** ((lo + hi) / 2))
    if values and values[-1] == 0:
        out.append(2.0 ** grid[-1])
    return out


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "not reached"
    if seconds >= 3600:
        return f"{seconds:,.0f} s ({seconds / 3600:.2f} h)"
    return f"{seconds:,.1f} s"


def _label(run: Run) -> str:
    return run.name


def report(baseline: Run, runs: Sequence[Run], specs: Sequence[str], targets: Sequence[float],
           scales: Sequence[float], out: Path, *, seed: int = 0, compute: str = "flops",
           reference_flops: float | None = None, plots: bool = True) -> dict[str, Any]:
    """Write ``report.md``, ``sweep.csv``, ``crossover.json`` and the plots to ``out``; return the results."""
    out.mkdir(parents=True, exist_ok=True)
    every = [baseline, *[r for r in runs if r.path != baseline.path]]
    n = num_partitions(every)
    results: dict[str, Any] = {"baseline": baseline.name, "num_clients": n, "seed": seed, "compute": compute,
                               "sets": {}}
    md = ["# Simulated time to accuracy\n",
          f"Replayed with `fedsqueeze.netsim` (docs/network.md): profiles of partitions 0..{n - 1}, seed {seed}, "
          f"compute `{compute}`"
          + ("" if compute != "flops" else ", FLOPs per example: "
             + ", ".join(f"{r.name} {_flops(r):,.0f}" for r in every))
          + f". Baseline for the crossover: **{baseline.name}**. Bandwidth scales "
          f"{min(scales):g}..{max(scales):g} multiply both links of every client; RTT and compute are unchanged.\n"]
    sweep_rows = []
    for spec in specs:
        setting = Setting(spec, n, seed, compute, reference_flops)
        res: dict[str, Any] = {"time_to_target": {}, "sweep": {}, "crossover": {}}
        md.append(f"\n## {spec}\n")
        if not spec.startswith("trace:"):
            md.append(f"{netsim.get_profile_set(spec).description}.\n")
        md.append("| run | " + " | ".join(f"round to {t:g}" for t in targets) + " | "
                  + " | ".join(f"sim time to {t:g}" for t in targets) + " | sim time, all rounds |")
        md.append("|---|" + "---:|" * (2 * len(targets) + 1))
        for run in every:
            hits = [time_to_target(run, setting, t) for t in targets]
            total = sim_times(run, setting)[int(run.metrics[-1]["round"])]
            res["time_to_target"][run.name] = {f"{t:g}": (None if h is None else {"round": h[0], "sim_s": h[1]})
                                               for t, h in zip(targets, hits)}
            md.append(f"| {_label(run)} | " + " | ".join("—" if h is None else str(h[0]) for h in hits) + " | "
                      + " | ".join(_fmt_s(None if h is None else h[1]) for h in hits) + f" | {_fmt_s(total)} |")
        for t in targets:
            md.append(f"\n**Bandwidth sweep, target {t:g}** (simulated time to target; scale 1 = the profile set)\n")
            md.append("| scale | " + " | ".join(_label(r) for r in every) + " |")
            md.append("|---:|" + "---:|" * len(every))
            for s in scales:
                cells = []
                for run in every:
                    h = time_to_target(run, setting, t, s)
                    cells.append(_fmt_s(None if h is None else h[1]))
                    sweep_rows.append({"profile_set": spec, "target": t, "scale": s, "run": run.name,
                                       "round": "" if h is None else h[0],
                                       "sim_s": "" if h is None else round(h[1], 6)})
                    res["sweep"].setdefault(f"{t:g}", {}).setdefault(run.name, []).append(
                        None if h is None else h[1])
                md.append(f"| {s:g} | " + " | ".join(cells) + " |")
            md.append("")
            for run in every[1:]:
                xs = crossovers(baseline, run, setting, t, scales)
                res["crossover"].setdefault(f"{t:g}", {})[run.name] = xs
                if xs is None:
                    md.append(f"- {run.name} vs {baseline.name}: no crossover — a run does not reach {t:g}.")
                elif not xs:
                    s0 = min(scales)
                    faster = time_to_target(run, setting, t, s0)[1] < time_to_target(baseline, setting, t, s0)[1]
                    md.append(f"- {run.name} vs {baseline.name}: none in range {min(scales):g}..{max(scales):g} "
                              f"({run.name} is {'faster' if faster else 'slower'} throughout).")
                else:
                    parts = []
                    for x in xs:
                        base_s = time_to_target(baseline, setting, t, x)[1]
                        links = ""
                        if not spec.startswith("trace:"):
                            ps = netsim.get_profile_set(spec)
                            links = (f", median links {ps.down_median_mbps * x:.3g} down / "
                                     f"{ps.up_median_mbps * x:.3g} up Mbit/s")
                        parts.append(f"scale **{x:.4g}** (both {_fmt_s(base_s)}{links})")
                    lo = time_to_target(run, setting, t, min(scales))[1] < \
                        time_to_target(baseline, setting, t, min(scales))[1]
                    md.append(f"- {run.name} vs {baseline.name}: crossover at " + ", ".join(parts)
                              + f"; {run.name} is {'faster' if lo else 'slower'} below it.")
        results["sets"][spec] = res
        if plots:
            _plot(every, setting, out / f"accuracy_vs_sim_time_{_slug(spec)}.png", targets)
            md.append(f"\n![accuracy vs simulated time, {spec}](accuracy_vs_sim_time_{_slug(spec)}.png)\n")
    (out / "report.md").write_text("\n".join(md) + "\n")
    with open(out / "sweep.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["profile_set", "target", "scale", "run", "round", "sim_s"])
        w.writeheader()
        w.writerows(sweep_rows)
    (out / "crossover.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in spec)


def _plot(runs: Sequence[Run], setting: Setting, path: Path, targets: Sequence[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        times = sim_times(run, setting)
        pts = [(times[int(r["round"])], accuracy(r)) for r in evaluated(run.metrics) if times[int(r["round"])] > 0]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=run.name)
    for t in targets:
        ax.axhline(t, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel(f"simulated time (s), profile {setting.spec}")
    ax.set_ylabel("test accuracy")
    lows = [min(accuracy(r) for r in evaluated(run.metrics)[1:]) for run in runs if len(evaluated(run.metrics)) > 1]
    ax.set_ylim(max(0.0, min(lows, default=0.0) - 0.01), 1.0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_scales(text: str) -> list[float]:
    """``"-6:8"`` = powers of two 2^-6 .. 2^8; otherwise a comma list of positive scales."""
    text = text.strip()
    if ":" in text:
        a, b = (int(x) for x in text.split(":"))
        if a > b:
            raise argparse.ArgumentTypeError(f"empty scale range {text!r}")
        return [2.0 ** k for k in range(a, b + 1)]
    scales = sorted(float(x) for x in text.split(","))
    if not scales or any(not (math.isfinite(s) and s > 0) for s in scales):
        raise argparse.ArgumentTypeError(f"scales must be positive numbers, got {text!r}")
    return scales


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="*", help="compressed runs to compare with the baseline")
    ap.add_argument("--baseline", type=Path, required=True, help="the float32 run")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--profiles", default=",".join(netsim.PROFILE_SETS),
                    help="comma list of profile-set names or trace:<path>")
    ap.add_argument("--targets", default="0.97,0.99")
    ap.add_argument("--scales", type=parse_scales, default=parse_scales("-6:8"),
                    help="'a:b' = 2^a..2^b, or a comma list")
    ap.add_argument("--compute", choices=("flops", "measured"), default="flops")
    ap.add_argument("--profile-seed", type=int, default=0)
    ap.add_argument("--reference-flops", type=float, default=None,
                    help="reference device FLOP/s (default: the profile set's; for traces the benchmark host)")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        baseline = load_run(args.baseline)
        runs = [load_run(p) for p in args.runs]
        targets = [float(t) for t in args.targets.split(",")]
        specs = [s.strip() for s in args.profiles.split(",") if s.strip()]
        res = report(baseline, runs, specs, targets, args.scales, args.out, seed=args.profile_seed,
                     compute=args.compute, reference_flops=args.reference_flops, plots=not args.no_plots)
    except (RunError, netsim.ReplayError, netsim.ProfileSetError, netsim.TraceError) as e:
        log.error("error: %s", e)
        return 2
    for spec, r in res["sets"].items():
        log.info("%s: crossover %s", spec, json.dumps(r["crossover"]))
    log.info("wrote %s", args.out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
