"""Sweep report: ``python -m simulations.report SWEEP_DIR [--out DIR] [--targets ...] [--baseline PRESET]``.

Reads a sweep folder written by :mod:`simulations.sweep` (``sweep.json`` and
``runs/<id>/{metrics.csv,summary.json}``) and writes, into the sweep folder
unless ``--out`` says otherwise:

- ``accuracy_vs_uplink.png``, ``accuracy_vs_total.png``, ``accuracy_vs_round.png``:
  test accuracy against cumulative uplink MB / uplink + downlink MB (log x) and
  against the round; one subplot per partition, one line per preset (mean over
  seeds, shaded min–max over seeds);
- ``table.csv`` and ``table.md``: per partition, preset and target accuracy the
  rounds, cumulative uplink / downlink / total bytes and wall time to reach the
  target, mean ± 95 % CI half-width over seeds (Student-t), the number of runs
  that reached it, and the byte factors against the baseline preset;
- ``report.md``: the settings, run status, plots and tables.

Only completed runs (``summary.json`` status ``"completed"`` with the config
the sweep defines) enter plots and tables; a partially complete sweep is
reported as far as it goes, and every missing, failed or stale run is listed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on the machines sweeps run on

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fedsqueeze.config import TARGETS  # noqa: E402
from simulations.sweep import RunSpec, default_partition_label, read_json, run_state, short_error  # noqa: E402

__all__ = ["student_t_ppf", "mean_ci", "SweepResults", "load_results", "reach_values", "target_table",
           "markdown_target_table", "final_table", "plot_accuracy", "write_report", "main"]

BASELINE = "fedavg-fp32"
MB = 1e6
PLOTS = {
    "accuracy_vs_uplink.png": ("uplink", "cumulative uplink (MB, log scale)"),
    "accuracy_vs_total.png": ("total", "cumulative uplink + downlink (MB, log scale)"),
    "accuracy_vs_round.png": ("round", "round"),
}
# drawn when the runs simulated client networks (``network`` set)
SIM_PLOT = {"accuracy_vs_sim_time.png": ("sim", "simulated time (min, log scale)")}
# settings that identify a run rather than describe the experiment
_IDENTITY_KEYS = {"name", "seed", "out-dir", "data-dir", "preset"}
PARTIAL_MARK = "†"


# ---------------------------------------------------------------- statistics

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for aa in (m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # the continued fraction converges fast only on this side of the mean
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t distribution (scipy is not a dependency).

    Bisection on :func:`student_t_cdf`; accurate to ~1e-10, e.g.
    ``student_t_ppf(0.975, 2) = 4.3027``.
    """
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -student_t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if student_t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, int]:
    """Mean and half-width of the two-sided Student-t confidence interval.

    Returns ``(mean, half_width, n)``; the half-width is NaN for fewer than two
    values and the mean is NaN for none.
    """
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    half = student_t_ppf(0.5 + confidence / 2.0, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return float(x.mean()), half, n


# ---------------------------------------------------------------- loading

@dataclass
class SweepResults:
    """Everything the report needs from a sweep folder.

    Attributes
    ----------
    runs
        One row per run the sweep defines: id, preset, partition, seed, grid,
        variant, status, error.
    curves
        Run id → its ``metrics.csv`` (completed runs only).
    summaries
        Run id → its ``summary.json`` (completed runs only).
    specs
        Run id → :class:`~simulations.sweep.RunSpec`.
    """

    sweep_dir: Path
    meta: dict[str, Any]
    runs: pd.DataFrame
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    specs: dict[str, RunSpec] = field(default_factory=dict)
    machines: list[dict[str, Any]] = field(default_factory=list)

    def completed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "completed"]

    def partitions(self) -> list[str]:
        return list(dict.fromkeys(self.runs["partition"]))

    def variants(self) -> list[str]:
        return list(dict.fromkeys(self.runs["variant"]))


def _variant(preset: str, grid: Mapping[str, Any]) -> str:
    return preset if not grid else f"{preset} [{', '.join(f'{k}={v}' for k, v in grid.items())}]"


def _grid_key(grid: Mapping[str, Any]) -> str:
    return ";".join(f"{k}={v}" for k, v in grid.items())


def _discover_specs(sweep_dir: Path) -> tuple[dict[str, Any], list[RunSpec]]:
    """Runs of a folder without ``sweep.json``: every ``runs/*/summary.json`` as it is."""
    specs = []
    for path in sorted((sweep_dir / "runs").glob("*/summary.json")):
        summary = read_json(path) or {}
        config = {k: v for k, v in summary.get("config", {}).items() if k != "out-dir"}
        if not config:
            continue
        specs.append(RunSpec(id=path.parent.name, preset=str(summary.get("name", path.parent.name)),
                             preset_ref=str(summary.get("name", "")), partition=default_partition_label(config),
                             seed=int(summary.get("seed", config.get("seed", 0))), grid={}, config=config,
                             num_supernodes=0))
    return {"name": sweep_dir.name, "runs": [s.to_json() for s in specs]}, specs


def load_results(sweep_dir: str | Path) -> SweepResults:
    """Read a sweep folder; runs that are not complete keep their status and no data.

    Raises
    ------
    FileNotFoundError
        Neither ``sweep.json`` nor any ``runs/*/summary.json`` exists.
    """
    sweep_dir = Path(sweep_dir).resolve()
    meta = read_json(sweep_dir / "sweep.json")
    if meta and meta.get("runs"):
        specs = [RunSpec(**r) for r in meta["runs"]]
    else:
        meta, specs = _discover_specs(sweep_dir)
    if not specs:
        raise FileNotFoundError(f"{sweep_dir}: no sweep.json and no runs/*/summary.json")
    res = SweepResults(sweep_dir=sweep_dir, meta=meta, runs=pd.DataFrame())
    rows = []
    for spec in specs:
        run_dir = sweep_dir / "runs" / spec.id
        state = run_state(run_dir, spec)
        res.specs[spec.id] = spec
        if state.status == "completed":
            res.curves[spec.id] = _read_metrics(run_dir / "metrics.csv", spec)
            res.summaries[spec.id] = state.summary or {}
            if state.machine:
                res.machines.append(state.machine)
        rows.append({"id": spec.id, "preset": spec.preset, "partition": spec.partition, "seed": spec.seed,
                     "grid": _grid_key(spec.grid), "variant": _variant(spec.preset, spec.grid),
                     "status": state.status, "error": state.error})
    res.runs = pd.DataFrame(rows)
    return res


def _read_metrics(path: Path, spec: RunSpec) -> pd.DataFrame:
    df = pd.read_csv(path)
    df = df[df["round"] <= int(spec.config.get("num-server-rounds", df["round"].max()))]
    # Rounds skipped by eval-every have bytes but no accuracy; the cumulative byte
    # columns of the evaluated rounds already include them.
    df = df.dropna(subset=["test_accuracy"]).copy()
    df["cum_total_bytes"] = df["cum_uplink_bytes"] + df["cum_downlink_bytes"]
    if "cum_sim_s" not in df:  # ledgers before the network simulation, or runs without one
        df["cum_sim_s"] = math.nan
    return df.sort_values("round").reset_index(drop=True)


# ---------------------------------------------------------------- tables

def reach_values(curve: pd.DataFrame, target: float) -> dict[str, float] | None:
    """Round, cumulative bytes and wall time at the first round with accuracy >= target."""
    hit = curve[curve["test_accuracy"] >= target]
    if hit.empty:
        return None
    row = hit.iloc[0]
    return {"rounds": float(row["round"]), "uplink_bytes": float(row["cum_uplink_bytes"]),
            "downlink_bytes": float(row["cum_downlink_bytes"]), "total_bytes": float(row["cum_total_bytes"]),
            "wall_s": float(row["wall_s"]), "sim_s": float(row["cum_sim_s"])}


_QUANTITIES = ("rounds", "uplink_bytes", "downlink_bytes", "total_bytes", "wall_s", "sim_s")
_FACTORS = {"uplink_factor": "uplink_bytes", "downlink_factor": "downlink_bytes", "total_factor": "total_bytes"}


def target_table(res: SweepResults, targets: Sequence[float] = TARGETS, baseline: str = BASELINE) -> pd.DataFrame:
    """One row per (partition, variant, target) with means, CI half-widths, counts and factors.

    ``runs_reached`` / ``runs_completed`` says how many runs reached the target;
    the means and CIs cover only the runs that did, which ``partial`` flags.
    Factors are ``mean baseline bytes / mean preset bytes`` for the baseline
    preset with the same partition and grid values (NaN without one).
    """
    rows = []
    for (part, variant), group in res.runs.groupby(["partition", "variant"], sort=False):
        done = group[group["status"] == "completed"]
        for target in targets:
            hits = [reach_values(res.curves[i], target) for i in done["id"]]
            hits = [h for h in hits if h is not None]
            row: dict[str, Any] = {"partition": part, "preset": group["preset"].iloc[0], "variant": variant,
                                   "grid": group["grid"].iloc[0], "target": target,
                                   "runs_expected": len(group), "runs_completed": len(done),
                                   "runs_reached": len(hits)}
            for q in _QUANTITIES:
                row[f"{q}_mean"], row[f"{q}_ci95"], _ = mean_ci([h[q] for h in hits if not math.isnan(h[q])])
            row["partial"] = 0 < len(hits) < len(done)
            rows.append(row)
    table = pd.DataFrame(rows)
    return _add_factors(table, baseline) if not table.empty else table


def _add_factors(table: pd.DataFrame, baseline: str) -> pd.DataFrame:
    base = table[table["preset"] == baseline].set_index(["partition", "grid", "target"])
    for name, q in _FACTORS.items():
        values, partial = [], []
        for _, row in table.iterrows():
            key = (row["partition"], row["grid"], row["target"])
            b = base.loc[key] if key in base.index else None
            values.append(b[f"{q}_mean"] / row[f"{q}_mean"] if b is not None and row[f"{q}_mean"] > 0 else math.nan)
            partial.append(bool(row["partial"] or (b is not None and b["partial"])))
        table[name] = values
    table["factor_partial"] = partial
    return table


def final_table(res: SweepResults) -> pd.DataFrame:
    """Per (partition, variant): final and best accuracy, total bytes and wall time (mean, CI)."""
    rows = []
    for (part, variant), group in res.runs.groupby(["partition", "variant"], sort=False):
        ids = list(group[group["status"] == "completed"]["id"])
        last = [res.curves[i].iloc[-1] for i in ids]
        row: dict[str, Any] = {"partition": part, "variant": variant, "runs_expected": len(group),
                               "runs_completed": len(ids),
                               "rounds": sorted({int(r["round"]) for r in last})}
        series = {"final_accuracy": [float(r["test_accuracy"]) for r in last],
                  "best_accuracy": [float(res.curves[i]["test_accuracy"].max()) for i in ids],
                  "uplink_bytes": [float(r["cum_uplink_bytes"]) for r in last],
                  "downlink_bytes": [float(r["cum_downlink_bytes"]) for r in last],
                  "wall_s": [float(r["wall_s"]) for r in last]}
        for name, values in series.items():
            row[f"{name}_mean"], row[f"{name}_ci95"], _ = mean_ci(values)
        rows.append(row)
    return pd.DataFrame(rows)


def _decimals(x: float) -> int:
    ax = abs(x)
    return 0 if ax >= 100 else 1 if ax >= 10 else 2 if ax >= 1 else 3 if ax >= 0.01 else 5


def fmt_mean_ci(mean: float, half: float, scale: float = 1.0, decimals: int | None = None) -> str:
    """``12.0 ± 4.97`` (or just the mean when there is no CI; ``—`` when no data)."""
    if math.isnan(mean):
        return "—"
    m = mean / scale
    d = _decimals(m) if decimals is None else decimals
    return f"{m:.{d}f}" if math.isnan(half) else f"{m:.{d}f} ± {half / scale:.{d}f}"


def _fmt_factor(value: float, partial: bool) -> str:
    if math.isnan(value):
        return "—"
    return f"×{value:.{_decimals(value) if value < 100 else 0}f}" + (f" {PARTIAL_MARK}" if partial else "")


def _fmt_reached(row: Mapping[str, Any]) -> str:
    text = f"{row['runs_reached']}/{row['runs_completed']}"
    if row["partial"]:
        text += f" {PARTIAL_MARK}"
    missing = row["runs_expected"] - row["runs_completed"]
    return text + (f" ({missing} not run)" if missing else "")


TABLE_NOTE = (
    "Mean ± half-width of the 95 % confidence interval over seeds (Student-t, n − 1 degrees of freedom; "
    "no ± when only one run is in the cell). MB = 10⁶ bytes. *reached* = runs that reached the target / "
    "completed runs; runs that never reached it are **not** averaged in: where some did not "
    f"({PARTIAL_MARK}), the statistics cover only the runs that did and are optimistic. "
    "*(k not run)*: runs of the sweep that have not completed (yet); such cells, and factors built on them, "
    "cover fewer seeds than planned. "
    "Factor = mean bytes of {baseline} to reach the target ÷ mean bytes of the preset "
    "(same partition; higher = fewer bytes); wall time depends on the machine and its load."
)


def markdown_target_table(table: pd.DataFrame, baseline: str = BASELINE, heading_level: int = 2) -> str:
    """The target table as Markdown, one table per partition."""
    if table.empty:
        return "_No runs._\n"
    out = [TABLE_NOTE.replace("{baseline}", f"`{baseline}`"), ""]
    header = ("| target | preset | reached | rounds | uplink MB | downlink MB | total MB | wall min "
              "| × uplink | × downlink | × total |")
    for part, group in table.groupby("partition", sort=False):
        out += [f"{'#' * heading_level} Partition `{part}`", "", header, "|" + "---|" * 11]
        for _, r in group.sort_values("target", kind="stable").iterrows():
            cells = [f"{r['target']:g}", r["variant"], _fmt_reached(r),
                     fmt_mean_ci(r["rounds_mean"], r["rounds_ci95"], decimals=1),
                     fmt_mean_ci(r["uplink_bytes_mean"], r["uplink_bytes_ci95"], MB),
                     fmt_mean_ci(r["downlink_bytes_mean"], r["downlink_bytes_ci95"], MB),
                     fmt_mean_ci(r["total_bytes_mean"], r["total_bytes_ci95"], MB),
                     fmt_mean_ci(r["wall_s_mean"], r["wall_s_ci95"], 60.0, decimals=1)]
            cells += [_fmt_factor(r[f], bool(r["factor_partial"])) for f in _FACTORS]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def has_sim_time(table: pd.DataFrame) -> bool:
    """True if any run of the table had a simulated network (``network`` set)."""
    return not table.empty and bool(table["sim_s_mean"].notna().any())


def markdown_time_table(table: pd.DataFrame, heading_level: int = 2) -> str:
    """Simulated time to each target (network simulation), beside the bytes table; empty without one."""
    if not has_sim_time(table):
        return ""
    out = ["Simulated time (docs/network.md): download + local training + upload on each sampled client's "
           "profile, the round closing when the server has what it waits for; mean ± 95 % CI over the runs "
           "that reached the target.", ""]
    for part, group in table.groupby("partition", sort=False):
        out += [f"{'#' * heading_level} Partition `{part}`", "", "| target | preset | reached | rounds "
                "| simulated time (min) |", "|" + "---|" * 5]
        for _, r in group.sort_values("target", kind="stable").iterrows():
            out.append("| " + " | ".join([f"{r['target']:g}", r["variant"], _fmt_reached(r),
                                          fmt_mean_ci(r["rounds_mean"], r["rounds_ci95"], decimals=1),
                                          fmt_mean_ci(r["sim_s_mean"], r["sim_s_ci95"], 60.0, decimals=1)]) + " |")
        out.append("")
    return "\n".join(out)


def markdown_final_table(table: pd.DataFrame) -> str:
    """Final accuracy and total bytes per partition and preset, as Markdown."""
    if table.empty:
        return "_No runs._\n"
    out = ["| partition | preset | runs | rounds | final acc | best acc | uplink MB | downlink MB | wall min |",
           "|" + "---|" * 9]
    for _, r in table.iterrows():
        rounds = ", ".join(map(str, r["rounds"])) or "—"
        out.append("| " + " | ".join([
            f"`{r['partition']}`", r["variant"], f"{r['runs_completed']}/{r['runs_expected']}", rounds,
            fmt_mean_ci(r["final_accuracy_mean"], r["final_accuracy_ci95"], decimals=4),
            fmt_mean_ci(r["best_accuracy_mean"], r["best_accuracy_ci95"], decimals=4),
            fmt_mean_ci(r["uplink_bytes_mean"], r["uplink_bytes_ci95"], MB),
            fmt_mean_ci(r["downlink_bytes_mean"], r["downlink_bytes_ci95"], MB),
            fmt_mean_ci(r["wall_s_mean"], r["wall_s_ci95"], 60.0, decimals=1)]) + " |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- plots

def _mean_curve(curves: Sequence[pd.DataFrame], axis: str) -> pd.DataFrame:
    """Per round: mean x, and mean / min / max accuracy over the runs that have the round."""
    x_col = {"uplink": "cum_uplink_bytes", "total": "cum_total_bytes", "round": "round", "sim": "cum_sim_s"}[axis]
    both = pd.concat([c[["round", "test_accuracy"]].assign(x=c[x_col]) for c in curves])
    agg = both.groupby("round").agg(x=("x", "mean"), acc=("test_accuracy", "mean"),
                                    lo=("test_accuracy", "min"), hi=("test_accuracy", "max"))
    agg = agg.reset_index()
    if axis != "round":
        # round 0 is the initial model plus the handshake: it carries no update
        # bytes and would stretch the log axis over decades of nothing
        agg = agg[agg["round"] > 0].copy()
        agg["x"] = agg["x"] / (60.0 if axis == "sim" else MB)
    return agg


def _y_bottom(res: SweepResults) -> float:
    finals = [c["test_accuracy"].iloc[-1] for c in res.curves.values()]
    if not finals:
        return 0.0
    lo = min(finals)
    # zoom on the targets when every run ends near them; otherwise show the spread
    return 0.9 if lo >= 0.95 else max(0.0, math.floor((lo - 0.1) * 20) / 20)


def plot_accuracy(res: SweepResults, axis: str, path: Path, xlabel: str,
                  targets: Sequence[float] = TARGETS) -> Path:
    """Accuracy vs ``axis`` (uplink, total or round); one subplot per partition, one line per preset."""
    parts = res.partitions()
    colors = {v: plt.cm.tab10(i % 10) for i, v in enumerate(res.variants())}
    fig, axes = plt.subplots(1, len(parts), figsize=(6.4 * len(parts), 4.8), sharey=True, squeeze=False)
    bottom = _y_bottom(res)
    for ax, part in zip(axes[0], parts):
        runs = res.runs[res.runs["partition"] == part]
        drawn = False
        for variant, group in runs.groupby("variant", sort=False):
            ids = [i for i in group["id"] if i in res.curves]
            if not ids:
                continue
            agg = _mean_curve([res.curves[i] for i in ids], axis)
            label = f"{variant} (n={len(ids)}" + (f" of {len(group)})" if len(ids) < len(group) else ")")
            ax.plot(agg["x"], agg["acc"], color=colors[variant], lw=1.8, marker="." if len(agg) < 40 else None,
                    label=label)
            if len(ids) > 1:
                ax.fill_between(agg["x"], agg["lo"], agg["hi"], color=colors[variant], alpha=0.18, lw=0)
            drawn = True
        for t in targets:
            if t > bottom:
                ax.axhline(t, color="0.5", ls=":", lw=0.8)
        if axis != "round" and drawn:
            ax.set_xscale("log")
        if not drawn:
            ax.text(0.5, 0.5, "no completed runs yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"partition: {part}")
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
        if drawn:
            ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("test accuracy (line: mean over seeds; band: min–max)")
    axes[0][0].set_ylim(bottom, 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- report.md

def _common_and_varying(configs: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    keys = sorted({k for c in configs for k in c} - _IDENTITY_KEYS)
    common, varying = {}, []
    for k in keys:
        values = {repr(c.get(k)) for c in configs}
        if len(values) == 1:
            common[k] = configs[0].get(k)
        else:
            varying.append(k)
    return common, varying


def _distinct(items: Sequence[Mapping[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    out: list[tuple[dict[str, Any], int]] = []
    for item in items:
        for i, (seen, n) in enumerate(out):
            if seen == item:
                out[i] = (seen, n + 1)
                break
        else:
            out.append((dict(item), 1))
    return out


def _settings_lines(res: SweepResults) -> list[str]:
    configs = [s.config for s in res.specs.values()]
    common, varying = _common_and_varying(configs)
    first = configs[0]
    supernodes = res.meta.get("num_supernodes") or "?"
    per_round = "?"
    if isinstance(supernodes, int) and "fraction-train" in common and "min-train-nodes" in common:
        per_round = min(supernodes, max(common["min-train-nodes"], round(common["fraction-train"] * supernodes)))
    lines = [
        f"- **Model**: `{first.get('model')}`"
        + (f" ({next(iter(res.summaries.values()))['num_params']:,} parameters)" if res.summaries else ""),
        f"- **Clients**: {supernodes} simulated, {per_round} sampled per round (fraction-train "
        f"{common.get('fraction-train', 'varies')}); local epochs {common.get('local-epochs', 'vary')}, "
        f"batch size {common.get('batch-size', 'varies')}, lr {common.get('lr', 'varies')}",
        "- **Rounds**: " + ", ".join(f"`{p}`: {r}" for p, r in _per_partition(res, "num-server-rounds").items()),
        "- **Seeds**: " + ", ".join(map(str, sorted({s.seed for s in res.specs.values()}))),
        "- **Partitions**: " + "; ".join(f"`{label}` = {desc}" for label, desc in _partition_desc(res).items()),
        "- **Presets**: " + "; ".join(_preset_desc(res)),
    ]
    shown = {"model", "fraction-train", "local-epochs", "batch-size", "lr", "num-server-rounds", "partition",
             "dirichlet-alpha", "shards-per-client", "uplink", "downlink", "downlink-mode"}
    rest = {k: v for k, v in common.items() if k not in shown}
    lines.append("- **Other settings shared by all runs**: " + ", ".join(f"{k}={v}" for k, v in rest.items()))
    other_varying = [k for k in varying if k not in shown]
    if other_varying:
        lines.append(f"- **Settings that differ between runs** (beyond preset and partition): "
                     f"{', '.join(other_varying)} — see `sweep.json`")
    return lines


def _per_partition(res: SweepResults, key: str) -> dict[str, str]:
    out: dict[str, set[str]] = {}
    for s in res.specs.values():
        out.setdefault(s.partition, set()).add(str(s.config.get(key)))
    return {p: "/".join(sorted(v)) for p, v in out.items()}


def _partition_desc(res: SweepResults) -> dict[str, str]:
    out = {}
    for s in res.specs.values():
        c = s.config
        extra = {"dirichlet": f" (α = {c.get('dirichlet-alpha')})",
                 "shards": f" ({c.get('shards-per-client')} shards per client)"}.get(c.get("partition"), "")
        out.setdefault(s.partition, f"{c.get('partition')}{extra}")
    return out


def _preset_desc(res: SweepResults) -> list[str]:
    out = {}
    for rid, s in res.specs.items():
        summ = res.summaries.get(rid, {})
        up = summ.get("pipeline_up") or s.config.get("uplink")
        down = summ.get("pipeline_down") or s.config.get("downlink")
        out.setdefault(s.preset, f"`{s.preset}` (up `{up}`, down `{down}`, downlink-mode "
                                 f"{s.config.get('downlink-mode')})")
    return list(out.values())


def _machine_lines(res: SweepResults) -> list[str]:
    if res.machines:
        desc = "; ".join(f"nproc = {m.get('nproc')}, {m.get('platform')} ({n} runs)"
                         for m, n in _distinct(res.machines))
    else:
        desc = f"nproc = {os.cpu_count()} (the machine writing this report; the runs did not record theirs)"
    versions = _distinct([s.get("versions", {}) for s in res.summaries.values()])
    vtext = "; ".join(", ".join(f"{k} {v}" for k, v in ver.items()) + (f" ({n} runs)" if len(versions) > 1 else "")
                      for ver, n in versions) or "—"
    revs = sorted({str(s.get("git_revision")) for s in res.summaries.values()})
    return [f"- **Machine**: {desc}. Runs share the machine with whatever else runs there, so wall times "
            "are indicative only.",
            f"- **Package versions** (from summary.json): {vtext}",
            f"- **Git revision(s)**: {', '.join(f'`{r}`' for r in revs) or '—'}"]


def _status_lines(res: SweepResults) -> list[str]:
    counts = res.runs["status"].value_counts()
    lines = ["Runs: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in
                                  ("completed", "running", "interrupted", "failed", "stale", "pending")
                                  if counts.get(s, 0)) + f" of {len(res.runs)}."]
    missing = res.runs[res.runs["status"] != "completed"]
    if missing.empty:
        return lines + ["Every run of the sweep completed."]
    lines += ["", "Not in the plots and tables:", "", "| run | status | error |", "|---|---|---|"]
    for _, r in missing.iterrows():
        lines.append(f"| `{r['id']}` | {r['status']} | {short_error(r['error'] or '', 200).replace('|', '/')} |")
    return lines


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None, *,
                 targets: Sequence[float] = TARGETS, baseline: str = BASELINE,
                 results: SweepResults | None = None) -> list[Path]:
    """Write plots, ``table.csv``, ``table.md`` and ``report.md``; return the paths written.

    ``results``: the sweep already loaded by the caller (:func:`load_results`
    of ``sweep_dir``), so that it is not read twice.

    Raises
    ------
    FileNotFoundError
        The folder holds no sweep (see :func:`load_results`).
    """
    res = results if results is not None else load_results(sweep_dir)
    out = Path(out_dir) if out_dir else res.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    table = target_table(res, targets, baseline)
    plots = {**PLOTS, **(SIM_PLOT if has_sim_time(table) else {})}
    written = [plot_accuracy(res, axis, out / name, label, targets) for name, (axis, label) in plots.items()]
    table.to_csv(out / "table.csv", index=False, float_format="%.6g")
    name = res.meta.get("name", res.sweep_dir.name)
    md_table = markdown_target_table(table, baseline, heading_level=3)
    (out / "table.md").write_text(f"# Cost to reach target accuracy — sweep `{name}`\n\n"
                                  + markdown_target_table(table, baseline) + "\n")
    written += [out / "table.csv", out / "table.md"]
    md_time = markdown_time_table(table, heading_level=3)
    (out / "report.md").write_text(_report_text(res, name, md_table, markdown_final_table(final_table(res)), md_time))
    written.append(out / "report.md")
    return written


def _report_text(res: SweepResults, name: str, md_table: str, md_final: str, md_time: str = "") -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"# Sweep `{name}`", ""]
    if res.meta.get("description"):
        parts += [res.meta["description"], ""]
    parts += [f"Generated {stamp} by `python -m simulations.report` from `{res.sweep_dir}`.", "",
              "## Settings", "", *_settings_lines(res), *_machine_lines(res), "",
              "## Run status", "", *_status_lines(res), ""]
    for file, (axis, _) in {**PLOTS, **(SIM_PLOT if md_time else {})}.items():
        title = {"uplink": "Accuracy vs cumulative uplink bytes", "total": "Accuracy vs cumulative total bytes",
                 "round": "Accuracy vs round", "sim": "Accuracy vs simulated time"}[axis]
        parts += [f"## {title}", "", f"![{title}]({file})", ""]
    parts += ["Lines: mean test accuracy over the completed seeds at each round (x: mean cumulative bytes); "
              "band: min–max over seeds; dotted: target accuracies; n = completed runs.", "",
              "## Cost to reach each target accuracy", "", md_table,
              "Machine-readable: [table.csv](table.csv) (bytes, seconds; `*_ci95` = CI half-width).", "",
              *(["## Simulated time to each target accuracy", "", md_time] if md_time else []),
              "## Final accuracy and total traffic", "", md_final]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="sweep folder (e.g. runs/sweeps/mcmahan-iid-shards)")
    parser.add_argument("--out", help="where to write the report (default: the sweep folder)")
    parser.add_argument("--targets", default=",".join(f"{t:g}" for t in TARGETS),
                        help="comma-separated target accuracies (default: %(default)s)")
    parser.add_argument("--baseline", default=BASELINE, help="preset the factors compare against (%(default)s)")
    args = parser.parse_args(argv)
    try:
        targets = [float(t) for t in args.targets.split(",") if t.strip()]
        paths = write_report(args.sweep_dir, args.out, targets=targets, baseline=args.baseline)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
