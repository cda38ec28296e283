"""Sweep report on hand-made results: statistics, counts of runs that never reach a target, plots, files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from simulations import report as rp
from simulations import sweep as sw
from tests.test_sweep import FakeRunner, write_fake_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HANDSHAKE = 1000
T975_2 = 4.302652729749464  # Student-t 0.975 quantile, 2 degrees of freedom


def ramp(hit: int | None, plateau: float, rounds: int) -> list[float]:
    """Accuracies that stay below 0.97 until round ``hit`` and are ``plateau`` from then on."""
    return [plateau if hit is not None and r >= hit else 0.1 + 0.86 * r / rounds for r in range(rounds + 1)]


# per (preset, partition, seed): (first round at the plateau, plateau accuracy); None = never
PLAN = {
    "fedavg-fp32": {0: (10, 0.99), 1: (12, 0.99), 2: (14, 0.99)},
    "q8": {0: (10, 0.985), 1: (12, 0.985), 2: (14, 0.985)},
    "stc": {0: (20, 0.98), 1: (22, 0.98), 2: (None, 0.96)},
}
ROUNDS = 30


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A sweep of 3 presets x 2 partitions x 3 seeds, written by hand; part of `shards2` is missing."""
    root = tmp_path_factory.mktemp("sweep")
    spec = sw.parse_sweep({
        "name": "handmade", "description": "Hand-made results for the report tests.",
        "presets": list(PLAN), "seeds": [0, 1, 2], "num-supernodes": 100,
        "overrides": {"num-server-rounds": ROUNDS},
        "partitions": [{"label": "iid", "partition": "iid"},
                       {"label": "shards2", "partition": "shards", "shards-per-client": 2}],
    })
    runs = sw.expand(spec)
    sw.write_sweep_json(root, spec, runs)
    for run in runs:
        run_dir = root / "runs" / run.id
        if run.partition == "shards2" and run.seed == 2:
            continue  # not run yet
        if run.id == "stc__shards2__seed1":
            run_dir.mkdir(parents=True)
            (run_dir / sw.STATUS_FILE).write_text(json.dumps({"status": "failed", "error": "RunFailed: exploded"}))
            continue
        hit, plateau = PLAN[run.preset][run.seed]
        write_fake_run(run_dir, run.config, ramp(hit, plateau, ROUNDS), handshake=HANDSHAKE)
        (run_dir / sw.STATUS_FILE).write_text(json.dumps({
            "status": "completed", "duration_s": 60.0,
            "machine": {"nproc": 2, "platform": "Linux-test", "machine": "x86_64"}}))
    sw.write_index(root, runs)
    return root


@pytest.fixture(scope="module")
def written(sweep_dir) -> list[Path]:
    return rp.write_report(sweep_dir)


@pytest.fixture(scope="module")
def table(written, sweep_dir) -> pd.DataFrame:
    return pd.read_csv(sweep_dir / "table.csv")


def cell(table: pd.DataFrame, preset: str, partition: str, target: float) -> pd.Series:
    rows = table[(table["preset"] == preset) & (table["partition"] == partition) & (table["target"] == target)]
    assert len(rows) == 1
    return rows.iloc[0]


# ---------------------------------------------------------------- statistics

@pytest.mark.parametrize("p, df, expected", [
    (0.975, 1, 12.706204736174704), (0.975, 2, T975_2), (0.975, 10, 2.2281388519649385),
    (0.975, 30, 2.0422724563012373), (0.995, 5, 4.032142983557536), (0.95, 4, 2.1318467863266495),
    (0.975, 1000, 1.9623390808264078),
])
def test_student_t_quantiles_match_tables(p, df, expected):
    assert rp.student_t_ppf(p, df) == pytest.approx(expected, rel=1e-9)
    assert rp.student_t_ppf(1 - p, df) == pytest.approx(-expected, rel=1e-9)
    assert rp.student_t_cdf(expected, df) == pytest.approx(p, abs=1e-12)


def test_mean_ci_of_three_seeds():
    mean, half, n = rp.mean_ci([10, 12, 14])
    assert (mean, n) == (12.0, 3)
    assert half == pytest.approx(T975_2 * 2 / math.sqrt(3)) and half == pytest.approx(4.968, abs=5e-4)
    assert rp.mean_ci([7.0])[:1] == (7.0,) and math.isnan(rp.mean_ci([7.0])[1])
    assert all(math.isnan(v) for v in rp.mean_ci([])[:2])
    with pytest.raises(ValueError):
        rp.student_t_ppf(1.0, 3)


def test_formatting_of_cells():
    assert rp.fmt_mean_ci(12.0, 4.9683, decimals=1) == "12.0 ± 5.0"
    assert rp.fmt_mean_ci(48_001_000.0, 9_936_000.0, rp.MB) == "48.0 ± 9.9"
    assert rp.fmt_mean_ci(7.0, math.nan, decimals=1) == "7.0"
    assert rp.fmt_mean_ci(math.nan, math.nan) == "—"


# ---------------------------------------------------------------- tables

def test_rounds_bytes_and_wall_time_to_target_with_ci(table):
    r = cell(table, "fedavg-fp32", "iid", 0.97)
    assert (r["runs_expected"], r["runs_completed"], r["runs_reached"]) == (3, 3, 3)
    assert r["rounds_mean"] == pytest.approx(12.0)
    assert r["rounds_ci95"] == pytest.approx(4.968, abs=5e-4)
    per_round = 4_000_000  # fp32 bytes per round in write_fake_run
    assert r["uplink_bytes_mean"] == pytest.approx(HANDSHAKE + 12 * per_round)
    assert r["uplink_bytes_ci95"] == pytest.approx(T975_2 * 2 * per_round / math.sqrt(3), rel=1e-5)
    assert r["total_bytes_mean"] == pytest.approx(2 * (HANDSHAKE + 12 * per_round))
    assert r["wall_s_mean"] == pytest.approx(5.0 + 2.0 * 12)
    assert r["uplink_factor"] == 1.0 and not r["partial"]


def test_factors_are_ratios_of_mean_bytes_to_target(table):
    r = cell(table, "q8", "iid", 0.98)
    fp32_up, q8_up = HANDSHAKE + 12 * 4_000_000, HANDSHAKE + 12 * 1_000_000
    assert r["uplink_factor"] == pytest.approx(fp32_up / q8_up, rel=1e-5)
    assert r["downlink_factor"] == pytest.approx(fp32_up / q8_up, rel=1e-5)
    assert r["total_factor"] == pytest.approx(2 * fp32_up / (2 * q8_up), rel=1e-5)
    # q8 never reaches 0.99: no mean, no factor, and the count says so
    never = cell(table, "q8", "iid", 0.99)
    assert never["runs_reached"] == 0 and math.isnan(never["rounds_mean"]) and math.isnan(never["uplink_factor"])


def test_runs_that_never_reach_a_target_are_counted_not_hidden(table, sweep_dir):
    r = cell(table, "stc", "iid", 0.97)
    assert (r["runs_completed"], r["runs_reached"]) == (3, 2) and r["partial"] and r["factor_partial"]
    assert r["rounds_mean"] == pytest.approx(21.0)
    assert r["rounds_ci95"] == pytest.approx(rp.student_t_ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2))
    md = (sweep_dir / "table.md").read_text()
    assert "| 0.97 | stc | 2/3 † | 21.0 ± 12.7 |" in md
    assert "| 0.99 | q8 | 0/3 | — |" in md
    assert "not** averaged in" in md


def test_partially_complete_partitions_are_reported_as_such(table, sweep_dir):
    r = cell(table, "fedavg-fp32", "shards2", 0.97)
    assert (r["runs_expected"], r["runs_completed"], r["runs_reached"]) == (3, 2, 2)
    assert r["rounds_mean"] == pytest.approx(11.0)
    failed = cell(table, "stc", "shards2", 0.97)
    assert (failed["runs_completed"], failed["runs_reached"]) == (1, 1) and math.isnan(failed["rounds_ci95"])
    md = (sweep_dir / "table.md").read_text()
    assert "| 0.97 | fedavg-fp32 | 2/2 (1 not run) | 11.0 ± 12.7 |" in md
    assert "| 0.97 | stc | 1/1 (2 not run) | 20.0 |" in md


def test_csv_has_one_row_per_partition_preset_and_target(table):
    assert len(table) == 2 * 3 * 4
    assert {"rounds_mean", "rounds_ci95", "uplink_bytes_mean", "downlink_bytes_ci95", "total_bytes_mean",
            "wall_s_mean", "uplink_factor", "downlink_factor", "total_factor", "runs_reached"} <= set(table.columns)


# ---------------------------------------------------------------- files

def test_all_outputs_are_written_and_plots_are_nonempty_pngs(written, sweep_dir):
    names = {p.name for p in written}
    assert names == {"accuracy_vs_uplink.png", "accuracy_vs_total.png", "accuracy_vs_round.png", "table.csv",
                     "table.md", "report.md"}
    for name in ("accuracy_vs_uplink.png", "accuracy_vs_total.png", "accuracy_vs_round.png"):
        data = (sweep_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 20_000


def test_report_states_settings_embeds_plots_and_lists_missing_runs(written, sweep_dir):
    md = (sweep_dir / "report.md").read_text()
    for name in ("accuracy_vs_uplink.png", "accuracy_vs_total.png", "accuracy_vs_round.png"):
        assert f"]({name})" in md
    assert "Hand-made results" in md
    assert "`mcmahan-cnn` (1,663,370 parameters)" in md
    assert "100 simulated, 10 sampled per round" in md
    assert "`iid`: 30, `shards2`: 30" in md and "**Seeds**: 0, 1, 2" in md
    assert "nproc = 2" in md and "torch 2.14.1" in md and "flwr 1.42.0" in md
    assert "`stc` (up `spec-of-stc`" in md
    assert "14 completed, 1 failed, 3 pending of 18" in md
    assert "| `stc__shards2__seed1` | failed | RunFailed: exploded |" in md
    assert "| `q8__shards2__seed2` | pending |" in md
    assert "| 0.97 | stc | 2/3 † |" in md  # the table is embedded
    assert "| `iid` | fedavg-fp32 | 3/3 | 30 | 0.9900 ± 0.0000 |" in md


def test_report_on_a_sweep_without_completed_runs(tmp_path):
    spec = sw.parse_sweep({"presets": ["q8"], "seeds": [0], "partitions": [{"partition": "iid"}]})
    sw.write_sweep_json(tmp_path, spec, sw.expand(spec))
    rp.write_report(tmp_path)
    assert (tmp_path / "accuracy_vs_uplink.png").read_bytes().startswith(PNG_MAGIC)
    assert "0 completed" not in (tmp_path / "report.md").read_text()
    assert "1 pending of 1" in (tmp_path / "report.md").read_text()


def test_report_end_to_end_after_a_fake_sweep_via_cli(tmp_path, capsys):
    spec = sw.parse_sweep({"name": "e2e", "presets": ["fedavg-fp32", "stc"], "seeds": [0, 1],
                           "overrides": {"num-server-rounds": 6},
                           "partitions": [{"partition": "dirichlet", "dirichlet-alpha": 0.3}]})
    sw.run_sweep(spec, tmp_path, runner=FakeRunner(), progress_interval=None, echo=lambda _: None)
    out = tmp_path / "report"
    assert rp.main([str(tmp_path), "--out", str(out), "--targets", "0.95,0.99"]) == 0
    assert "report.md" in capsys.readouterr().out
    table = pd.read_csv(out / "table.csv")
    assert sorted(table["target"].unique()) == [0.95, 0.99]
    stc = table[(table["preset"] == "stc") & (table["target"] == 0.95)].iloc[0]
    assert stc["partition"] == "dirichlet0.3" and stc["uplink_factor"] == pytest.approx(
        (HANDSHAKE + 3 * 4_000_000) / (HANDSHAKE + 3 * 30_000), rel=1e-6)


def test_report_on_a_folder_of_runs_without_sweep_json(tmp_path):
    config = sw.expand(sw.parse_sweep({"presets": ["q8"], "seeds": [0],
                                       "partitions": [{"partition": "shards"}]}))[0].config
    write_fake_run(tmp_path / "runs" / "anything", config, ramp(3, 0.98, 5))
    rp.write_report(tmp_path)
    table = pd.read_csv(tmp_path / "table.csv")
    assert set(table["partition"]) == {"shards2"} and set(table["preset"]) == {"q8"}


def test_cli_errors_on_an_empty_folder(tmp_path, capsys):
    assert rp.main([str(tmp_path)]) == 2
    assert "no sweep.json" in capsys.readouterr().err


def test_simulated_time_table_and_plot_when_runs_simulated_a_network(tmp_path):
    """Runs with a network simulation get a time-to-target table and an accuracy-vs-simulated-time plot."""
    spec = sw.parse_sweep({"name": "timed", "presets": ["fedavg-fp32", "stc"], "seeds": [0, 1],
                           "num-supernodes": 100, "overrides": {"num-server-rounds": 10, "network": "mobile-4g"},
                           "partitions": [{"label": "iid", "partition": "iid"}]})
    runs = sw.expand(spec)
    sw.write_sweep_json(tmp_path, spec, runs)
    # fp32: 97 % at round 4, 60 s per round; stc: 97 % at round 8 (seed 0) / 6 (seed 1), 10 s per round
    plan = {("fedavg-fp32", 0): (4, 60.0), ("fedavg-fp32", 1): (4, 60.0), ("stc", 0): (8, 10.0), ("stc", 1): (6, 10.0)}
    for run in runs:
        hit, sim = plan[(run.preset, run.seed)]
        write_fake_run(tmp_path / "runs" / run.id, run.config, ramp(hit, 0.98, 10), sim_round_s=sim)
        (tmp_path / "runs" / run.id / sw.STATUS_FILE).write_text(json.dumps({"status": "completed"}))
    sw.write_index(tmp_path, runs)
    written = rp.write_report(tmp_path)
    assert (tmp_path / "accuracy_vs_sim_time.png").read_bytes()[:8] == PNG_MAGIC
    assert tmp_path / "accuracy_vs_sim_time.png" in written
    table = pd.read_csv(tmp_path / "table.csv")
    assert cell(table, "fedavg-fp32", "iid", 0.97)["sim_s_mean"] == 240.0
    stc = cell(table, "stc", "iid", 0.97)
    # 80 s and 60 s: sd 14.14, standard error 10, t(0.975, 1 df) = 12.706
    assert stc["sim_s_mean"] == 70.0 and stc["sim_s_ci95"] == pytest.approx(12.706204736174698 * 10, rel=1e-5)
    text = (tmp_path / "report.md").read_text()
    assert "## Simulated time to each target accuracy" in text and "| 0.97 | stc | 2/2 | 7.0 ± 12.7 | 1.2 ± 2.1 |" in text


def test_no_simulated_time_section_without_a_network(written, sweep_dir):
    assert not (sweep_dir / "accuracy_vs_sim_time.png").exists()
    assert "Simulated time" not in (sweep_dir / "report.md").read_text()
