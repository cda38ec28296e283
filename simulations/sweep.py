"""Sweep runner: ``python -m simulations.sweep SWEEP.toml [--out DIR] [--only SEL] [--dry-run]``.

A sweep is the cross product seeds × partitions × grid × presets of complete
run configs. Every run gets its own folder ``<sweep-dir>/runs/<id>`` (the
runner's ``metrics.csv`` and ``summary.json`` plus the sweep's own
``sweep_status.json``); ``<sweep-dir>/sweep.json`` holds the expansion and
``<sweep-dir>/index.csv`` one row per run.

The run folders are the only source of truth: a run is complete when its
``summary.json`` says ``"completed"`` and records exactly the config the sweep
would run now. Re-running the same command therefore resumes an interrupted
sweep without repeating a finished run, and re-runs results made under a
config that has since changed (their folder is kept as ``<id>.stale-N``).

Sweep file (TOML)::

    name = "mcmahan-iid-shards"        # default sweep dir: runs/sweeps/<name>
    presets = ["fedavg-fp32", "q8"]    # names in fedsqueeze/presets or TOML paths
    seeds = [0, 1, 2]
    num-supernodes = 100               # simulated clients
    [overrides]                        # run-config keys applied to every run
    num-server-rounds = 30
    [[partitions]]                     # one entry per data partition
    label = "iid"                      # used in run ids and the report
    partition = "iid"                  # every other key is a run-config override
    [[partitions]]
    label = "shards2"
    partition = "shards"
    shards-per-client = 2
    num-server-rounds = 60             # per-partition budget beats [overrides]
    [grid]                             # optional: key -> values, crossed in
    lr = [0.05, 0.1]

Precedence, lowest first: preset, ``[overrides]``, partition entry, ``[grid]``,
seed. A key may not be set by both a partition entry and ``[grid]``; ``seed``
and ``out-dir`` belong to the sweep.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fnmatch
import itertools
import json
import os
import platform
import re
import shutil
import signal
import statistics
import sys
import threading
import time
import tomllib
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsqueeze.config import ConfigError
from simulations.run import CLIENT_STATE_DIR

__all__ = [
    "Partition",
    "SweepSpec",
    "RunSpec",
    "RunState",
    "load_sweep",
    "read_json",
    "default_partition_label",
    "parse_sweep",
    "expand",
    "select",
    "run_state",
    "write_index",
    "run_sweep",
    "main",
]

SWEEP_KEYS = {"name", "description", "presets", "seeds", "num-supernodes", "partitions", "overrides", "grid"}
RESERVED_KEYS = {"seed", "out-dir"}  # set by the sweep itself, per run
INDEX_COLUMNS = ("id", "preset", "partition", "seed", "overrides", "status", "error", "final_accuracy",
                 "best_accuracy", "rounds_completed", "wall_s", "duration_s", "run_dir")
STATUS_FILE = "sweep_status.json"
_FIELD_RE = re.compile(r"^[a-z][a-z0-9-]*$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

Runner = Callable[..., Mapping[str, Any]]


@dataclass(frozen=True)
class Partition:
    """One data partition of a sweep: a label and the run-config keys it sets."""

    label: str
    keys: dict[str, Any]


@dataclass(frozen=True)
class SweepSpec:
    """A parsed, not yet expanded sweep file (see the module docstring)."""

    name: str
    presets: list[str]
    seeds: list[int]
    partitions: list[Partition]
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    num_supernodes: int = 100
    description: str = ""
    source: str = ""


@dataclass(frozen=True)
class RunSpec:
    """One run of an expanded sweep.

    Attributes
    ----------
    id
        ``<preset>__<partition>__seed<seed>[__k=v...]``, also the folder name.
    preset
        Preset label (file stem); ``preset_ref`` is what ``resolve_overrides`` got.
    grid
        The ``[grid]`` values of this run (empty without a grid).
    config
        The full validated kebab-case run config, without ``out-dir``.
    """

    id: str
    preset: str
    preset_ref: str
    partition: str
    seed: int
    grid: dict[str, Any]
    config: dict[str, Any]
    num_supernodes: int

    def overrides_text(self) -> str:
        """The grid values as ``k=v;k=v`` (empty without a grid)."""
        return ";".join(f"{k}={v}" for k, v in self.grid.items())

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "preset": self.preset, "preset_ref": self.preset_ref, "partition": self.partition,
                "seed": self.seed, "grid": self.grid, "num_supernodes": self.num_supernodes, "config": self.config}


@dataclass
class RunState:
    """What a run folder says about a run: status and, if any, results.

    ``status`` is one of ``pending`` (nothing yet), ``running`` (a live sweep
    process is on it), ``interrupted`` (started, its process is gone),
    ``failed`` (the runner raised; ``error`` says why), ``stale`` (completed
    under a different config) and ``completed``.
    """

    status: str
    error: str = ""
    summary: dict[str, Any] | None = None
    duration_s: float | None = None
    machine: dict[str, Any] | None = None


# ---------------------------------------------------------------- sweep file

def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep TOML file.

    Raises
    ------
    ConfigError
        Unknown or missing sweep keys, malformed partitions or grid.
    """
    path = Path(path)
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return parse_sweep(data, default_name=path.stem, source=text)


def parse_sweep(data: Mapping[str, Any], *, default_name: str = "sweep", source: str = "") -> SweepSpec:
    """Check a sweep mapping (the parsed TOML) and build a :class:`SweepSpec`.

    Raises
    ------
    ConfigError
        See :func:`load_sweep`.
    """
    unknown = set(data) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"unknown sweep keys {sorted(unknown)}; valid: {sorted(SWEEP_KEYS)}")
    presets = _nonempty_list(data, "presets")
    seeds = _nonempty_list(data, "seeds")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"sweep key 'seeds' must be a list of integers, got {seeds!r}")
    overrides = dict(data.get("overrides", {}))
    grid = {k: list(v) if isinstance(v, list) else [v] for k, v in dict(data.get("grid", {})).items()}
    for key, values in grid.items():
        if not values:
            raise ConfigError(f"grid key {key!r} has no values")
    partitions = [_parse_partition(p, i) for i, p in enumerate(_nonempty_list(data, "partitions"))]
    for where, keys in [("[overrides]", overrides), ("[grid]", grid)] + [
            (f"partition {p.label!r}", p.keys) for p in partitions]:
        if RESERVED_KEYS & set(keys):
            raise ConfigError(f"{where} sets {sorted(RESERVED_KEYS & set(keys))}; the sweep sets these per run")
    for p in partitions:
        clash = set(p.keys) & set(grid)
        if clash:
            raise ConfigError(f"partition {p.label!r} and [grid] both set {sorted(clash)}; set it in one place")
    _unique("partition labels", [p.label for p in partitions])
    _unique("presets", [_preset_label(p) for p in presets])
    _unique("seeds", seeds)
    num_supernodes = data.get("num-supernodes", 100)
    if not isinstance(num_supernodes, int) or num_supernodes < 1:
        raise ConfigError(f"sweep key 'num-supernodes' must be a positive integer, got {num_supernodes!r}")
    name = str(data.get("name", default_name))
    if not _LABEL_RE.match(name):
        raise ConfigError(f"sweep name {name!r} must match {_LABEL_RE.pattern} (it names a folder)")
    return SweepSpec(name=name, presets=[str(p) for p in presets], seeds=list(seeds), partitions=partitions,
                     overrides=overrides, grid=grid, num_supernodes=num_supernodes,
                     description=str(data.get("description", "")), source=source)


def _nonempty_list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"sweep key {key!r} must be a non-empty list, got {value!r}")
    return value


def _unique(what: str, items: Sequence[Any]) -> None:
    dupes = sorted({str(x) for x in items if items.count(x) > 1})
    if dupes:
        raise ConfigError(f"duplicate {what}: {dupes}")


def _parse_partition(entry: Any, index: int) -> Partition:
    if not isinstance(entry, dict):
        raise ConfigError(f"partitions[{index}] must be a table, got {entry!r}")
    keys = {k: v for k, v in entry.items() if k != "label"}
    if "partition" not in keys:
        raise ConfigError(f"partitions[{index}] needs a 'partition' key (iid, dirichlet or shards)")
    label = str(entry.get("label") or default_partition_label(keys))
    if not _LABEL_RE.match(label):
        raise ConfigError(f"partition label {label!r} must match {_LABEL_RE.pattern}")
    return Partition(label=label, keys=keys)


def default_partition_label(keys: Mapping[str, Any]) -> str:
    """``iid``, ``dirichlet<alpha>`` or ``shards<k>`` from a partition's run-config keys."""
    scheme = keys["partition"]
    if scheme == "dirichlet":
        return f"dirichlet{keys.get('dirichlet-alpha', 0.5)}"
    if scheme == "shards":
        return f"shards{keys.get('shards-per-client', 2)}"
    return str(scheme)


def _preset_label(preset: str) -> str:
    return Path(preset).stem if Path(preset).suffix else preset


def _id_value(value: Any) -> str:
    # repr keeps floats round-trippable, so two grid values never share an id by rounding
    text = repr(value) if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9._,=+-]", "_", text)


# ---------------------------------------------------------------- expansion

def expand(spec: SweepSpec, resolve: Callable[..., dict[str, Any]] | None = None) -> list[RunSpec]:
    """All runs of a sweep, each with its validated config, seed-major.

    Seed-major order (all presets and partitions of seed 0 first) means a sweep
    stopped part way already holds complete comparisons for the first seeds.

    Parameters
    ----------
    resolve
        ``resolve_overrides(preset, overrides)``; defaults to
        :func:`simulations.run.resolve_overrides`.

    Raises
    ------
    ConfigError
        A run config is invalid (unknown preset or key, bad value) or two runs
        would share an id.
    """
    if resolve is None:
        from simulations.run import resolve_overrides as resolve
    grid_keys = list(spec.grid)
    runs: list[RunSpec] = []
    for seed, part, values, preset in itertools.product(
            spec.seeds, spec.partitions, itertools.product(*spec.grid.values()), spec.presets):
        grid = dict(zip(grid_keys, values))
        label = _preset_label(preset)
        if not _LABEL_RE.match(label):
            raise ConfigError(f"preset label {label!r} must match {_LABEL_RE.pattern}")
        overrides = {**spec.overrides, **part.keys, **grid, "seed": seed}
        try:
            config = resolve(preset, overrides)
        except ConfigError as exc:
            raise ConfigError(f"preset {preset!r}, partition {part.label!r}, grid {grid}: {exc}") from exc
        config.pop("out-dir", None)
        run_id = "__".join([label, part.label, f"seed{seed}"] + [f"{k}={_id_value(v)}" for k, v in grid.items()])
        runs.append(RunSpec(id=run_id, preset=label, preset_ref=preset, partition=part.label, seed=seed,
                            grid=grid, config=config, num_supernodes=spec.num_supernodes))
    _unique("run ids", [r.id for r in runs])
    return runs


def select(runs: Iterable[RunSpec], patterns: Sequence[str]) -> list[RunSpec]:
    """Runs matching every pattern.

    A pattern is ``field=v1,v2`` (field: ``preset``, ``partition``, ``seed``,
    ``id`` or a grid key; any listed value matches; values may be globs) or a
    bare glob matched against the run id, e.g. ``'*shards*'``.

    Raises
    ------
    ConfigError
        A pattern names a field no run has.
    """
    runs = list(runs)
    for pattern in patterns:
        runs = [r for r in runs if _matches(r, pattern)]
    return runs


def _matches(run: RunSpec, pattern: str) -> bool:
    key, sep, values = pattern.partition("=")
    # run ids contain '=' too (grid values); only a bare kebab-case word before it names a field
    if not sep or not _FIELD_RE.match(key):
        return fnmatch.fnmatchcase(run.id, pattern)
    fields = {"preset": run.preset, "partition": run.partition, "seed": run.seed, "id": run.id,
              **{k: v for k, v in run.grid.items()}}
    if key not in fields:
        raise ConfigError(f"--only {pattern!r}: unknown field {key!r}; use one of {sorted(fields)}")
    value = _id_value(fields[key]) if key in run.grid else str(fields[key])
    return any(fnmatch.fnmatchcase(value, v.strip()) for v in values.split(","))


# ---------------------------------------------------------------- run folders

def config_differences(expected: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ between two run configs, ignoring where it wrote.

    Keys missing from either side take their current defaults.

    ``out-dir`` and ``client-state-dir`` are where the run happened to write,
    and ``resume`` how it got there (an exact continuation, see
    :func:`resumable`); moving a sweep folder must not invalidate its results.
    """
    from fedsqueeze.config import RunConfig

    # A key added to RunConfig after a run was recorded counts as its default,
    # which by construction reproduces the behaviour before the key existed.
    defaults = RunConfig().to_mapping()
    expected, recorded = {**defaults, **expected}, {**defaults, **recorded}
    keys = (set(expected) | set(recorded)) - {"out-dir", "client-state-dir", "resume"}
    return sorted(k for k in keys if expected.get(k, "<unset>") != recorded.get(k, "<unset>"))


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when it is missing or unreadable (e.g. mid-write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_state(run_dir: Path, run: RunSpec) -> RunState:
    """Derive a run's state from its folder (see :class:`RunState`)."""
    summary = read_json(run_dir / "summary.json")
    status_file = read_json(run_dir / STATUS_FILE) or {}
    duration = status_file.get("duration_s")
    machine = status_file.get("machine")
    if summary and summary.get("status") == "completed":
        diff = config_differences(run.config, summary.get("config", {}))
        if not diff:
            return RunState("completed", summary=summary, duration_s=duration or summary.get("wall_s"),
                            machine=machine)
        return RunState("stale", error=f"completed under a different config (keys {', '.join(diff)})",
                        summary=summary, machine=machine)
    recorded = status_file.get("status")
    if recorded == "failed":
        return RunState("failed", error=status_file.get("error", ""), summary=summary, duration_s=duration,
                        machine=machine)
    if recorded == "running" and _pid_alive(status_file.get("pid")):
        return RunState("running", summary=summary, machine=machine)
    if recorded in ("running", "interrupted") or summary is not None or (run_dir / "metrics.csv").exists():
        return RunState("interrupted", error=status_file.get("error", ""), summary=summary, machine=machine)
    return RunState("pending")


def machine_info() -> dict[str, Any]:
    """What the report needs to say where a run ran."""
    return {"nproc": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine()}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _write_status(run_dir: Path, **fields: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / STATUS_FILE, {**fields, "pid": os.getpid(), "machine": machine_info()})


def short_error(error: str, limit: int = 300) -> str:
    """First and last line of an error (the exception and the end of the log tail), on one line."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def write_index(sweep_dir: Path, runs: Sequence[RunSpec]) -> Path:
    """Rewrite ``index.csv`` from the run folders (atomically); return its path."""
    path = sweep_dir / "index.csv"
    tmp = path.with_name("index.csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        for run in runs:
            run_dir = sweep_dir / "runs" / run.id
            state = run_state(run_dir, run)
            s = state.summary or {}
            done = state.status == "completed"
            writer.writerow({
                "id": run.id, "preset": run.preset, "partition": run.partition, "seed": run.seed,
                "overrides": run.overrides_text(), "status": state.status,
                "error": short_error(state.error),
                "final_accuracy": s.get("final_accuracy", "") if done else "",
                "best_accuracy": s.get("best_accuracy", "") if done else "",
                "rounds_completed": s.get("rounds_completed", ""),
                "wall_s": s.get("wall_s", "") if done else "",
                "duration_s": "" if state.duration_s is None else round(state.duration_s, 1),
                "run_dir": f"runs/{run.id}",
            })
    os.replace(tmp, path)
    return path


def write_sweep_json(sweep_dir: Path, spec: SweepSpec, runs: Sequence[RunSpec]) -> Path:
    """Record the sweep definition and its expansion (what the report reads)."""
    path = sweep_dir / "sweep.json"
    _write_json(path, {
        "name": spec.name, "description": spec.description, "presets": spec.presets, "seeds": spec.seeds,
        "partitions": [{"label": p.label, **p.keys} for p in spec.partitions], "overrides": spec.overrides,
        "grid": spec.grid, "num_supernodes": spec.num_supernodes, "source": spec.source,
        "runs": [r.to_json() for r in runs],
    })
    return path


def _set_aside(run_dir: Path) -> Path:
    """Move a stale run folder out of the way instead of overwriting its results."""
    n = 1
    while run_dir.with_name(f"{run_dir.name}.stale-{n}").exists():
        n += 1
    target = run_dir.with_name(f"{run_dir.name}.stale-{n}")
    run_dir.rename(target)
    return target


def _clear_partial(run_dir: Path) -> None:
    # a half-written ledger from an interrupted attempt must not be mistaken for this attempt's
    for name in ("metrics.csv", "summary.json", "error.txt"):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()
    shutil.rmtree(run_dir / CLIENT_STATE_DIR, ignore_errors=True)  # a fresh start never reads it


def resumable(run_dir: Path) -> bool:
    """Whether an interrupted run can continue exactly where it stopped.

    It can when the server left a checkpoint and the clients their saved state
    (``simulations.run`` gives them ``<run>/client-state``, see
    :mod:`client.state_store`): the continued run then has the same payload
    bytes and accuracies as an uninterrupted one, so hours of a long run are
    not redone. Without client state a continuation would drift (error-feedback
    residuals restart from zero), so such a run starts again from scratch.
    """
    checkpoint = any((run_dir / d / "state.json").is_file() for d in ("checkpoint", ".checkpoint.old"))
    return checkpoint and (run_dir / CLIENT_STATE_DIR).is_dir()


# ---------------------------------------------------------------- progress

def fmt_duration(seconds: float | None) -> str:
    """``42 s``, ``12.5 min`` or ``3.2 h``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _round_progress(run_dir: Path) -> tuple[int, list[float]]:
    """Last finished round and the durations of training rounds so far."""
    try:
        with open(run_dir / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return 0, []
    durations = [float(r["round_s"]) for r in rows if r.get("round_s") and int(r["round"]) > 0]
    return (int(rows[-1]["round"]) if rows else 0), durations


class _Progress:
    """Per-run and sweep ETAs; optionally polls the running ledger in a thread.

    The sweep ETA uses the median duration of completed runs (from this and
    earlier sessions), which is robust to one unusually slow run; before any run
    has completed it falls back to the current run's projected duration.
    """

    def __init__(self, durations: list[float], total: int, echo: Callable[[str], None], interval: float | None):
        self.durations = list(durations)
        self.total = total
        self.echo = echo
        self.interval = interval

    def median(self) -> float | None:
        return statistics.median(self.durations) if self.durations else None

    def sweep_eta(self, k: int, current_remaining: float | None, current_total: float | None) -> float | None:
        per_run = self.median() or current_total
        if per_run is None:
            return None
        return (current_remaining if current_remaining is not None else per_run) + per_run * (self.total - k)

    @contextlib.contextmanager
    def watch(self, k: int, run: RunSpec, run_dir: Path, started: float):
        if not self.interval:
            yield
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._poll, args=(k, run, run_dir, started, stop), daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)

    def _poll(self, k: int, run: RunSpec, run_dir: Path, started: float, stop: threading.Event) -> None:
        total_rounds = int(run.config.get("num-server-rounds", 0))
        seen = -1
        while not stop.wait(self.interval):
            done, round_s = _round_progress(run_dir)
            if done == seen or not round_s:
                continue
            seen = done
            elapsed = time.monotonic() - started
            remaining = statistics.mean(round_s) * max(total_rounds - done, 0)
            eta = self.sweep_eta(k, remaining, elapsed + remaining)
            self.echo(f"[{k}/{self.total}] {run.id}: round {done}/{total_rounds}, run ETA {fmt_duration(remaining)}"
                      f"; sweep ETA {fmt_duration(eta)}")


# ---------------------------------------------------------------- the sweep

@dataclass
class SweepResult:
    """Counts of one :func:`run_sweep` call; ``failed`` lists run ids."""

    total: int
    selected: int
    skipped: int
    executed: int
    failed: list[str]


def run_sweep(
    spec: SweepSpec,
    sweep_dir: str | Path,
    *,
    runner: Runner | None = None,
    only: Sequence[str] = (),
    retry_failed: bool = True,
    quiet: bool = True,
    progress_interval: float | None = 20.0,
    echo: Callable[[str], None] = print,
) -> SweepResult:
    """Run every selected run of ``spec`` that is not complete yet, one after another.

    Parameters
    ----------
    spec
        The parsed sweep.
    sweep_dir
        Results folder; ``runs/<id>``, ``sweep.json`` and ``index.csv`` go there.
    runner
        ``runner(config, out_dir, num_supernodes=..., quiet=...) -> summary``;
        defaults to :func:`simulations.run.run_experiment`. Any exception other
        than ``KeyboardInterrupt`` marks the run failed and the sweep goes on.
    only
        Selection patterns (see :func:`select`); the index still lists all runs.
    retry_failed
        Re-run runs recorded as failed (default) or leave them.
    progress_interval
        Seconds between polls of the running ledger for round-level ETAs;
        ``None`` disables polling.

    Returns
    -------
    SweepResult

    Raises
    ------
    ConfigError
        The sweep expands to an invalid config (nothing is run then).
    KeyboardInterrupt
        After recording the current run as interrupted and rewriting the index.
    """
    if runner is None:
        from simulations.run import run_experiment as runner
    sweep_dir = Path(sweep_dir).resolve()
    runs = expand(spec)
    chosen = select(runs, only)
    (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
    write_sweep_json(sweep_dir, spec, runs)
    states = {r.id: run_state(sweep_dir / "runs" / r.id, r) for r in runs}
    todo = [r for r in chosen if states[r.id].status not in ("completed", "running")
            and (retry_failed or states[r.id].status != "failed")]
    busy = [r.id for r in chosen if states[r.id].status == "running"]
    durations = [s.duration_s for s in states.values() if s.status == "completed" and s.duration_s]
    write_index(sweep_dir, runs)
    echo(f"sweep {spec.name!r}: {len(runs)} runs, {len(chosen)} selected, "
         f"{sum(states[r.id].status == 'completed' for r in chosen)} already complete, {len(todo)} to run"
         f" -> {sweep_dir}")
    for run_id in busy:
        echo(f"  {run_id}: another live sweep process is running it; skipped")
    progress = _Progress(durations, len(todo), echo, progress_interval)
    failed: list[str] = []
    for k, run in enumerate(todo, start=1):
        try:
            if not _execute(k, run, sweep_dir, states[run.id], runner, quiet, progress, echo):
                failed.append(run.id)
        finally:
            write_index(sweep_dir, runs)
    final = {r.id: run_state(sweep_dir / "runs" / r.id, r).status for r in chosen}
    echo(f"sweep {spec.name!r}: {sum(s == 'completed' for s in final.values())}/{len(chosen)} selected runs "
         f"complete, {len(failed)} failed this session; index: {sweep_dir / 'index.csv'}")
    return SweepResult(total=len(runs), selected=len(chosen), skipped=len(chosen) - len(todo),
                       executed=len(todo), failed=failed)


def _execute(k: int, run: RunSpec, sweep_dir: Path, state: RunState, runner: Runner, quiet: bool,
             progress: _Progress, echo: Callable[[str], None]) -> bool:
    """Run one run, recording its outcome in its folder; True when it completed."""
    run_dir = sweep_dir / "runs" / run.id
    if state.status == "stale":
        moved = _set_aside(run_dir)
        echo(f"[{k}/{progress.total}] {run.id}: {state.error}; old results moved to {moved.name}, re-running")
    resume = state.status == "interrupted" and resumable(run_dir)
    if resume:
        echo(f"[{k}/{progress.total}] {run.id}: previous attempt interrupted; continuing exactly from its "
             "checkpoint and client states")
    elif state.status in ("interrupted", "failed"):
        echo(f"[{k}/{progress.total}] {run.id}: previous attempt {state.status}; re-running from scratch")
        _clear_partial(run_dir)
    expected = progress.median()
    echo(f"[{k}/{progress.total}] {run.id}: starting (expected {fmt_duration(expected)}; "
         f"sweep ETA {fmt_duration(progress.sweep_eta(k, None, None))})")
    started_at, started = time.time(), time.monotonic()
    _write_status(run_dir, status="running", started_at=started_at)
    try:
        with progress.watch(k, run, run_dir, started):
            runner({**run.config, "resume": True} if resume else dict(run.config), run_dir,
                   num_supernodes=run.num_supernodes, quiet=quiet)
    except KeyboardInterrupt:
        _write_status(run_dir, status="interrupted", started_at=started_at, error="interrupted by the user")
        echo(f"[{k}/{progress.total}] {run.id}: interrupted; re-run the sweep to resume")
        raise
    except Exception as exc:  # noqa: BLE001 -- one broken run must not end the sweep
        elapsed = time.monotonic() - started
        error = f"{type(exc).__name__}: {exc}"
        (run_dir / "error.txt").write_text(error + "\n\n" + traceback.format_exc())
        _write_status(run_dir, status="failed", started_at=started_at, duration_s=elapsed, error=error[-4000:])
        echo(f"[{k}/{progress.total}] {run.id}: FAILED after {fmt_duration(elapsed)}: "
             f"{error.strip().splitlines()[0][:200]} (details in runs/{run.id}/error.txt)")
        return False
    elapsed = time.monotonic() - started
    verdict = run_state(run_dir, run)
    if verdict.status != "completed":
        # the runner returned but its folder disagrees (e.g. wrote another config): not a result
        error = f"runner returned but the run folder says {verdict.status!r} {verdict.error}".strip()
        _write_status(run_dir, status="failed", started_at=started_at, duration_s=elapsed, error=error)
        echo(f"[{k}/{progress.total}] {run.id}: FAILED: {error}")
        return False
    _write_status(run_dir, status="completed", started_at=started_at, duration_s=elapsed)
    progress.durations.append(elapsed)
    acc = (verdict.summary or {}).get("final_accuracy")
    echo(f"[{k}/{progress.total}] {run.id} ... done in {fmt_duration(elapsed)} (final acc "
         f"{acc if acc is None else f'{acc:.4f}'}); ETA sweep {fmt_duration(progress.sweep_eta(k, 0.0, None))}")
    return True


# ---------------------------------------------------------------- CLI

def default_sweep_dir(spec: SweepSpec) -> Path:
    """``runs/sweeps/<name>`` under the current directory."""
    return Path("runs") / "sweeps" / spec.name


def dry_run(spec: SweepSpec, sweep_dir: Path, only: Sequence[str], echo: Callable[[str], None] = print) -> int:
    """Print the expansion with each run's current status; write nothing. Returns the count to run."""
    runs = expand(spec)
    chosen = select(runs, only)
    sweep_dir = Path(sweep_dir).resolve()
    echo(f"sweep {spec.name!r} -> {sweep_dir}: {len(runs)} runs, {len(chosen)} selected")
    to_run = 0
    for k, run in enumerate(chosen, start=1):
        state = run_state(sweep_dir / "runs" / run.id, run)
        to_run += state.status not in ("completed", "running")
        rounds = run.config.get("num-server-rounds")
        echo(f"{k:4d}  {state.status:<11} {run.id}  (rounds={rounds}, uplink={run.config.get('uplink')}, "
             f"downlink={run.config.get('downlink')})" + (f"  [{state.error}]" if state.error else ""))
    echo(f"{to_run} to run")
    return to_run


def _sigterm_to_interrupt(signum: int, frame: Any) -> None:
    # turns `kill <pid>` into the same clean stop as Ctrl-C: the runner's
    # finally-blocks stop the SuperLink it started and the index is rewritten
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.sweep", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("sweep", help="sweep definition (TOML), e.g. simulations/sweeps/mcmahan-iid-shards.toml")
    parser.add_argument("--out", help="sweep folder (default: runs/sweeps/<name>)")
    parser.add_argument("--only", action="append", default=[], metavar="SEL",
                        help="run only matching runs: field=v1,v2 (preset, partition, seed, id, a grid key; globs "
                             "allowed) or a glob on the run id; repeat to intersect")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their status; run nothing")
    parser.add_argument("--skip-failed", action="store_true", help="do not retry runs recorded as failed")
    parser.add_argument("--verbose", action="store_true", help="show Flower's full output, not only FedSqueeze's")
    parser.add_argument("--progress-interval", type=float, default=20.0,
                        help="seconds between round-level progress checks (0 = off)")
    args = parser.parse_args(argv)
    try:
        spec = load_sweep(args.sweep)
        sweep_dir = Path(args.out) if args.out else default_sweep_dir(spec)
        if args.dry_run:
            dry_run(spec, sweep_dir, args.only)
            return 0
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
        result = run_sweep(spec, sweep_dir, only=args.only, retry_failed=not args.skip_failed,
                           quiet=not args.verbose, progress_interval=args.progress_interval or None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed runs are kept, re-run the same command to resume", file=sys.stderr)
        return 130
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
