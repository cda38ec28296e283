"""Sweep runner: expansion, selection, resume, failure handling — with a fake runner, never Flower."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from fedsqueeze.config import ConfigError
from fedsqueeze.ledger import COLUMNS
from simulations import sweep as sw
from simulations.run import RunFailed

REPO = Path(__file__).resolve().parent.parent
MCMAHAN = REPO / "simulations" / "sweeps" / "mcmahan-iid-shards.toml"

# bytes per round by uplink / downlink preset: enough to tell schemes apart in a report
BYTES_PER_ROUND = {"fp32": 4_000_000, "q8": 1_000_000, "topk-1pct-q8-ef": 80_000, "stc": 30_000}

SMALL = {
    "name": "small",
    "presets": ["fedavg-fp32", "q8"],
    "seeds": [0, 1],
    "num-supernodes": 10,
    "overrides": {"num-server-rounds": 3},
    "partitions": [{"label": "iid", "partition": "iid"},
                   {"label": "shards2", "partition": "shards", "shards-per-client": 2, "num-server-rounds": 5}],
}


def write_fake_run(out_dir: Path, config: Mapping[str, Any], accuracies: Sequence[float], *,
                   up: int | None = None, down: int | None = None, status: str = "completed",
                   handshake: int = 1000, round_s: float = 2.0, sim_round_s: float | None = None) -> dict[str, Any]:
    """Write a ledger (metrics.csv) and summary.json as the real server would, from given accuracies."""
    out_dir.mkdir(parents=True, exist_ok=True)
    up = BYTES_PER_ROUND.get(config.get("uplink"), 500_000) if up is None else up
    down = BYTES_PER_ROUND.get(config.get("downlink"), 500_000) if down is None else down
    rows, cum_up, cum_down = [], 0, 0
    for r, acc in enumerate(accuracies):
        u, d = (handshake, handshake) if r == 0 else (up, down)
        cum_up, cum_down = cum_up + u, cum_down + d
        dense = 0 if r == 0 else 4_000_000
        rows.append({"round": r, "test_accuracy": acc, "test_loss": 1 - acc, "uplink_bytes": u,
                     "downlink_bytes": d, "cum_uplink_bytes": cum_up, "cum_downlink_bytes": cum_down,
                     "uplink_dense_bytes": dense, "downlink_dense_bytes": dense,
                     "cum_uplink_dense_bytes": dense * r, "cum_downlink_dense_bytes": dense * r,
                     "uplink_ratio": "", "downlink_ratio": "", "mean_bits_per_param": "", "mean_rel_distortion": "",
                     "clients_sampled": 10, "clients_ok": 10, "clients_failed": 0, "failures": "",
                     "applied": int(r > 0), "pipeline_up": config.get("uplink"),
                     "pipeline_down": config.get("downlink"), "round_s": 0.0 if r == 0 else round_s,
                     "wall_s": 5.0 + round_s * r,
                     "sim_round_s": "" if sim_round_s is None or r == 0 else sim_round_s,
                     "cum_sim_s": "" if sim_round_s is None else sim_round_s * r})
    with open(out_dir / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "status": status, "name": config.get("name"), "seed": config.get("seed"),
        "config": {**config, "out-dir": str(out_dir.resolve())},
        "pipeline_up": f"spec-of-{config.get('uplink')}", "pipeline_down": f"spec-of-{config.get('downlink')}",
        "num_params": 1_663_370, "rounds_completed": len(rows) - 1,
        "final_accuracy": accuracies[-1], "best_accuracy": max(accuracies),
        "cum_uplink_bytes": cum_up, "cum_downlink_bytes": cum_down,
        "cum_uplink_dense_bytes": rows[-1]["cum_uplink_dense_bytes"],
        "cum_downlink_dense_bytes": rows[-1]["cum_downlink_dense_bytes"],
        "wall_s": rows[-1]["wall_s"], "targets": {},
        "versions": {"python": "3.11.7", "torch": "2.14.1", "flwr": "1.42.0"}, "git_revision": "abc123",
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


class FakeRunner:
    """Stands in for ``run_experiment``: writes a synthetic run at once and records the call.

    ``fail`` ids raise :class:`RunFailed`; ``interrupt_at`` (1-based call
    number) leaves a half-written run and raises ``KeyboardInterrupt``.
    """

    def __init__(self, fail: Sequence[str] = (), interrupt_at: int | None = None):
        self.calls: list[str] = []
        self.kwargs: list[dict[str, Any]] = []
        self.fail = set(fail)
        self.interrupt_at = interrupt_at

    def __call__(self, config: Mapping[str, Any], out_dir: Path, **kwargs: Any) -> dict[str, Any]:
        out_dir = Path(out_dir)
        self.calls.append(out_dir.name)
        self.kwargs.append(kwargs)
        rounds = int(config["num-server-rounds"])
        accs = [0.1] + [min(0.995, 0.9 + 0.02 * r + 0.001 * config["seed"]) for r in range(1, rounds + 1)]
        if self.interrupt_at == len(self.calls):
            write_fake_run(out_dir, config, accs[:2], status="running")
            raise KeyboardInterrupt
        if out_dir.name in self.fail:
            write_fake_run(out_dir, config, accs[:2], status="running")
            raise RunFailed("run did not complete (summary status 'running'); last output:\nboom")
        return write_fake_run(out_dir, config, accs)


def small_spec(**changes: Any) -> sw.SweepSpec:
    return sw.parse_sweep({**SMALL, **changes})


def index_rows(sweep_dir: Path) -> dict[str, dict[str, str]]:
    with open(sweep_dir / "index.csv", newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def run(spec: sw.SweepSpec, sweep_dir: Path, runner: FakeRunner, lines: list[str] | None = None, **kw: Any):
    echo = (lines.append if lines is not None else lambda _: None)
    return sw.run_sweep(spec, sweep_dir, runner=runner, progress_interval=None, echo=echo, **kw)


# ---------------------------------------------------------------- expansion

def test_expansion_is_the_cross_product_seed_major_with_precedence():
    runs = sw.expand(small_spec(grid={"lr": [0.05, 0.1]}))
    assert len(runs) == 2 * 2 * 2 * 2  # seeds x partitions x grid x presets
    assert [r.id for r in runs[:4]] == ["fedavg-fp32__iid__seed0__lr=0.05", "q8__iid__seed0__lr=0.05",
                                        "fedavg-fp32__iid__seed0__lr=0.1", "q8__iid__seed0__lr=0.1"]
    assert all(r.seed == 0 for r in runs[:8]) and all(r.seed == 1 for r in runs[8:])
    by_id = {r.id: r for r in runs}
    iid = by_id["q8__iid__seed1__lr=0.1"].config
    shards = by_id["q8__shards2__seed1__lr=0.1"].config
    assert (iid["seed"], iid["lr"], iid["uplink"], iid["partition"]) == (1, 0.1, "q8", "iid")
    # sweep overrides beat the preset's 50 rounds; the partition's own budget beats the overrides
    assert iid["num-server-rounds"] == 3 and shards["num-server-rounds"] == 5
    assert shards["partition"] == "shards" and shards["shards-per-client"] == 2
    assert "out-dir" not in iid and by_id["q8__iid__seed1__lr=0.1"].grid == {"lr": 0.1}


def test_expansion_without_grid_has_plain_ids_and_default_labels():
    spec = small_spec(partitions=[{"partition": "dirichlet", "dirichlet-alpha": 0.1}])
    assert [r.id for r in sw.expand(spec)] == ["fedavg-fp32__dirichlet0.1__seed0", "q8__dirichlet0.1__seed0",
                                               "fedavg-fp32__dirichlet0.1__seed1", "q8__dirichlet0.1__seed1"]


@pytest.mark.parametrize("changes, message", [
    ({"typo": 1}, "unknown sweep keys"),
    ({"seeds": []}, "non-empty list"),
    ({"seeds": [0, 0]}, "duplicate seeds"),
    ({"presets": ["q8", "q8"]}, "duplicate presets"),
    ({"overrides": {"seed": 3}}, "sets ['seed']"),
    ({"grid": {"out-dir": ["/x"]}}, "sets ['out-dir']"),
    ({"grid": {"shards-per-client": [1, 2]}}, "both set ['shards-per-client']"),
    ({"partitions": [{"label": "a", "partition": "iid"}, {"label": "a", "partition": "shards"}]},
     "duplicate partition labels"),
    ({"partitions": [{"label": "x"}]}, "needs a 'partition' key"),
    ({"partitions": [{"label": "bad label", "partition": "iid"}]}, "must match"),
])
def test_malformed_sweeps_are_rejected(changes, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        small_spec(**changes)


@pytest.mark.parametrize("changes, message", [
    ({"presets": ["no-such-preset"]}, "unknown preset"),
    ({"overrides": {"no-such-key": 1}}, "unknown config key"),
    ({"grid": {"lr": [0.1, -1.0]}}, "lr"),
])
def test_invalid_run_configs_fail_the_expansion(changes, message):
    with pytest.raises(ConfigError, match=message):
        sw.expand(small_spec(**changes))


def test_select_by_field_values_globs_and_intersection():
    runs = sw.expand(small_spec(grid={"lr": [0.05, 0.1]}))
    assert {r.preset for r in sw.select(runs, ["preset=q8"])} == {"q8"}
    assert len(sw.select(runs, ["preset=q8,fedavg-fp32", "seed=1"])) == 8
    assert len(sw.select(runs, ["partition=shards*", "lr=0.1", "seed=0"])) == 2
    assert [r.id for r in sw.select(runs, ["*iid__seed1__lr=0.05"])] == ["fedavg-fp32__iid__seed1__lr=0.05",
                                                                        "q8__iid__seed1__lr=0.05"]
    with pytest.raises(ConfigError, match="unknown field"):
        sw.select(runs, ["colour=red"])


def test_mcmahan_sweep_file_expands_to_the_requested_runs():
    spec = sw.load_sweep(MCMAHAN)
    runs = sw.expand(spec)
    assert spec.name == "mcmahan-iid-shards" and spec.num_supernodes == 100
    assert len(runs) == 4 * 2 * 3
    assert {r.preset for r in runs} == {"fedavg-fp32", "q8", "topk-1pct-q8-ef", "stc"}
    for r in runs:
        c = r.config
        assert (c["model"], c["fraction-train"], c["local-epochs"], c["batch-size"], c["lr"]) == \
            ("mcmahan-cnn", 0.1, 1, 10, 0.05)
        if r.partition == "iid":
            assert (c["partition"], c["num-server-rounds"]) == ("iid", 20)
        else:
            assert (c["partition"], c["shards-per-client"], c["num-server-rounds"]) == ("shards", 2, 20)


# ---------------------------------------------------------------- running

def test_sweep_runs_everything_writes_index_and_a_rerun_repeats_nothing(tmp_path):
    spec, runner, lines = small_spec(), FakeRunner(), []
    result = run(spec, tmp_path, runner, lines)
    assert result.executed == 8 and not result.failed and len(runner.calls) == 8
    assert runner.kwargs[0] == {"num_supernodes": 10, "quiet": True}
    rows = index_rows(tmp_path)
    assert set(rows) == {r.id for r in sw.expand(spec)}
    assert {r["status"] for r in rows.values()} == {"completed"}
    assert float(rows["q8__shards2__seed1"]["final_accuracy"]) == pytest.approx(0.995)  # capped
    assert rows["q8__iid__seed0"]["run_dir"] == "runs/q8__iid__seed0"
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert len(saved["runs"]) == 8 and saved["num_supernodes"] == 10
    assert any(line.startswith("[1/8] fedavg-fp32__iid__seed0 ... done in") and "ETA sweep" in line
               for line in lines)
    again = FakeRunner()
    result = run(spec, tmp_path, again)
    assert again.calls == [] and result.skipped == 8


def test_interrupted_sweep_resumes_without_repeating_completed_runs(tmp_path):
    spec = small_spec()
    first = FakeRunner(interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run(spec, tmp_path, first)
    done, cut = first.calls[:2], first.calls[2]
    rows = index_rows(tmp_path)
    assert [rows[i]["status"] for i in done] == ["completed", "completed"]
    assert rows[cut]["status"] == "interrupted"
    assert sum(r["status"] == "pending" for r in rows.values()) == 5
    second = FakeRunner()
    result = run(spec, tmp_path, second)
    assert not set(second.calls) & set(done)
    assert second.calls[0] == cut and len(second.calls) == 6 and result.skipped == 2
    assert {r["status"] for r in index_rows(tmp_path).values()} == {"completed"}
    # the interrupted attempt's half ledger was replaced, not appended to
    rounds = next(r for r in sw.expand(spec) if r.id == cut).config["num-server-rounds"]
    with open(tmp_path / "runs" / cut / "metrics.csv") as fh:
        assert sum(1 for _ in fh) == 1 + (rounds + 1)  # header + rounds 0..R


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    spec, lines = small_spec(), []
    runner = FakeRunner(fail=["q8__iid__seed0"])
    result = run(spec, tmp_path, runner, lines)
    assert result.failed == ["q8__iid__seed0"] and len(runner.calls) == 8
    rows = index_rows(tmp_path)
    assert rows["q8__iid__seed0"]["status"] == "failed"
    assert "RunFailed" in rows["q8__iid__seed0"]["error"] and "boom" in rows["q8__iid__seed0"]["error"]
    assert sum(r["status"] == "completed" for r in rows.values()) == 7
    assert "boom" in (tmp_path / "runs" / "q8__iid__seed0" / "error.txt").read_text()
    assert any("FAILED" in line for line in lines)
    skipping = FakeRunner()
    run(spec, tmp_path, skipping, retry_failed=False)
    assert skipping.calls == []
    retrying = FakeRunner()
    run(spec, tmp_path, retrying)
    assert retrying.calls == ["q8__iid__seed0"]
    assert index_rows(tmp_path)["q8__iid__seed0"]["status"] == "completed"


def test_runner_that_returns_without_a_completed_summary_counts_as_failed(tmp_path):
    def lazy(config, out_dir, **_):
        return {}

    result = sw.run_sweep(small_spec(seeds=[0], presets=["q8"]), tmp_path, runner=lazy, progress_interval=None,
                          echo=lambda _: None)
    assert len(result.failed) == 2
    assert {r["status"] for r in index_rows(tmp_path).values()} == {"failed"}


def test_results_under_a_changed_config_are_rerun_and_kept_aside(tmp_path):
    run(small_spec(), tmp_path, FakeRunner())
    changed = small_spec(overrides={"num-server-rounds": 3, "lr": 0.1})
    assert {s.status for s in (sw.run_state(tmp_path / "runs" / r.id, r) for r in sw.expand(changed))} == {"stale"}
    runner, lines = FakeRunner(), []
    run(changed, tmp_path, runner, lines, only=["preset=q8", "partition=iid", "seed=0"])
    assert runner.calls == ["q8__iid__seed0"]
    assert (tmp_path / "runs" / "q8__iid__seed0.stale-1" / "summary.json").exists()
    assert any("different config (keys lr)" in line for line in lines)
    rows = index_rows(tmp_path)
    assert rows["q8__iid__seed0"]["status"] == "completed" and rows["q8__iid__seed1"]["status"] == "stale"


def test_moving_the_sweep_folder_keeps_runs_complete(tmp_path):
    spec = small_spec(seeds=[0])
    run(spec, tmp_path / "a", FakeRunner())
    os.rename(tmp_path / "a", tmp_path / "b")
    runner = FakeRunner()
    run(spec, tmp_path / "b", runner)
    assert runner.calls == []


def test_only_runs_the_selection_but_indexes_everything(tmp_path):
    runner = FakeRunner()
    result = run(small_spec(), tmp_path, runner, only=["preset=q8"])
    assert sorted(runner.calls) == sorted(["q8__iid__seed0", "q8__shards2__seed0", "q8__iid__seed1",
                                           "q8__shards2__seed1"])
    assert result.selected == 4 and result.total == 8
    statuses = {i: r["status"] for i, r in index_rows(tmp_path).items()}
    assert len(statuses) == 8 and statuses["fedavg-fp32__iid__seed0"] == "pending"


def test_a_live_running_run_is_not_started_twice(tmp_path):
    spec = small_spec(seeds=[0], presets=["q8"])
    run_dir = tmp_path / "runs" / "q8__iid__seed0"
    run_dir.mkdir(parents=True)
    (run_dir / sw.STATUS_FILE).write_text(json.dumps({"status": "running", "pid": os.getpid()}))
    runner = FakeRunner()
    run(spec, tmp_path, runner)
    assert runner.calls == ["q8__shards2__seed0"]
    # a "running" record whose process is gone is an interrupted run
    (run_dir / sw.STATUS_FILE).write_text(json.dumps({"status": "running", "pid": 2**22 + 12345}))
    assert sw.run_state(run_dir, sw.expand(spec)[0]).status == "interrupted"


def test_config_differences_ignore_where_and_how_a_run_was_written():
    assert sw.config_differences({"lr": 0.1, "out-dir": ""}, {"lr": 0.1, "out-dir": "/x"}) == []
    assert sw.config_differences({"lr": 0.1}, {"lr": 0.1, "client-state-dir": "/x/client-state", "resume": True}) == []
    assert sw.config_differences({"lr": 0.1}, {"lr": 0.2, "seed": 1}) == ["lr", "seed"]
    # a run recorded before a key existed: the key counts at its default, and only then
    assert sw.config_differences({"lr": 0.1, "bf16-autocast": False}, {"lr": 0.1}) == []
    assert sw.config_differences({"lr": 0.1, "bf16-autocast": True}, {"lr": 0.1}) == ["bf16-autocast"]


def test_eta_uses_the_median_of_completed_durations():
    progress = sw._Progress([10.0, 1000.0, 30.0], total=5, echo=lambda _: None, interval=None)
    assert progress.median() == 30.0
    assert progress.sweep_eta(2, current_remaining=5.0, current_total=None) == 5.0 + 30.0 * 3
    empty = sw._Progress([], total=3, echo=lambda _: None, interval=None)
    assert empty.sweep_eta(1, None, None) is None
    assert empty.sweep_eta(1, 4.0, 10.0) == 4.0 + 10.0 * 2
    assert [sw.fmt_duration(s) for s in (None, 42, 600, 7200)] == ["?", "42 s", "10.0 min", "2.0 h"]


def test_round_level_progress_is_reported_while_a_run_is_going(tmp_path):
    import threading

    spec = small_spec(seeds=[0], presets=["q8"], partitions=[{"label": "iid", "partition": "iid"}])
    release = threading.Event()

    def slow(config, out_dir, **_):
        write_fake_run(Path(out_dir), config, [0.1, 0.95], status="running")
        release.wait(5)
        return write_fake_run(Path(out_dir), config, [0.1, 0.95, 0.96, 0.97])

    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if "round 1/3" in line:
            release.set()

    sw.run_sweep(spec, tmp_path, runner=slow, progress_interval=0.05, echo=echo)
    assert any(line.startswith("[1/1] q8__iid__seed0: round 1/3, run ETA 4 s") for line in lines)


def test_cli_dry_run_lists_runs_and_writes_nothing(tmp_path, capsys):
    assert sw.main([str(MCMAHAN), "--out", str(tmp_path / "s"), "--dry-run", "--only", "preset=stc"]) == 0
    out = capsys.readouterr().out
    assert "24 runs, 6 selected" in out and "stc__shards2__seed2" in out and "6 to run" in out
    assert not (tmp_path / "s").exists()


def test_cli_reports_bad_sweep_files(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('presets = ["q8"]\nseeds = [0]\n[[partitions]]\npartition = "iid"\n[overrides]\nlrr = 1\n')
    assert sw.main([str(bad), "--out", str(tmp_path / "s")]) == 2
    assert "unknown config key 'lrr'" in capsys.readouterr().err
