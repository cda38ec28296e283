"""The committed standard benchmark is derived from committed ledgers only (issue 13)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.standard import HERE, LEDGER_FILES, SWEEP, TARGETS
from simulations import report

pytestmark = pytest.mark.skipif(not (HERE / "table.csv").exists(), reason="no standard benchmark committed yet")


def test_every_table_row_has_ledgers_behind_it():
    res = report.load_results(SWEEP)
    committed = pd.read_csv(HERE / "table.csv")
    fresh = report.target_table(res, TARGETS)
    assert len(committed) == len(fresh)
    for (_, a), (_, b) in zip(committed.iterrows(), fresh.iterrows()):
        assert (a["partition"], a["variant"], a["target"]) == (b["partition"], b["variant"], b["target"])
        assert (a["runs_completed"], a["runs_reached"]) == (b["runs_completed"], b["runs_reached"])
        for col in ("rounds_mean", "uplink_bytes_mean", "downlink_bytes_mean", "total_bytes_mean"):
            assert (math.isnan(a[col]) and math.isnan(b[col])) or a[col] == pytest.approx(b[col], rel=1e-5), col


def test_completed_runs_carry_their_whole_ledger():
    meta = json.loads((SWEEP / "sweep.json").read_text())
    done = 0
    for run in meta["runs"]:
        run_dir = SWEEP / "runs" / run["id"]
        if not run_dir.exists():
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed", run["id"]
        assert all((run_dir / name).exists() for name in LEDGER_FILES), run["id"]
        assert not (run_dir / "checkpoint").exists()
        done += 1
    assert done >= 1


def test_only_completed_runs_are_copied(tmp_path):
    """A half-run ledger must never stand behind a table row (standard and families benchmarks)."""
    from benchmarks.families import collect as collect_families
    from benchmarks.standard import copy_completed_runs

    src = tmp_path / "sweep" / "runs"
    for run, status in (("done", "completed"), ("midway", "running"), ("broken", None), ("lossy", "completed")):
        (src / run).mkdir(parents=True)
        (src / run / "metrics.csv").write_text("round,failures\n0,\n1,\n")
        if status:
            (src / run / "summary.json").write_text(json.dumps({"status": status}))
    # completed, but clients crashed in round 2: it measured a smaller federation
    (src / "lossy" / "metrics.csv").write_text("round,failures\n0,\n1,\n2,crash:21;crash:30\n3,\n")
    (src / "done" / "checkpoint").mkdir()  # not a ledger file: stays behind
    assert copy_completed_runs(src, tmp_path / "a") == ["done"]
    assert sorted(p.name for p in (tmp_path / "a" / "done").iterdir()) == ["metrics.csv", "summary.json"]
    assert collect_families(tmp_path / "sweep", tmp_path / "b") == ["done"]
    assert not (tmp_path / "b" / "midway").exists() and not (tmp_path / "b" / "lossy").exists()


def test_collecting_a_second_folder_keeps_the_runs_the_first_brought(tmp_path):
    """A preset run into its own folder, then the rest of the grid: both stay in sweep.json."""
    from benchmarks.standard import collect

    def sweep(folder: str, presets: list[str]) -> Path:
        src = tmp_path / folder
        runs = [{"id": f"{p}__iid__seed0", "preset": p} for p in presets]
        (src / "runs").mkdir(parents=True)
        (src / "sweep.json").write_text(json.dumps({"name": "standard", "presets": presets, "runs": runs}))
        for r in runs:
            (src / "runs" / r["id"]).mkdir()
            (src / "runs" / r["id"] / "summary.json").write_text(json.dumps({"status": "completed"}))
        return src

    dest = tmp_path / "dest"
    assert collect(sweep("extra", ["a", "new"]), dest) == ["a__iid__seed0", "new__iid__seed0"]
    assert collect(sweep("grid", ["a", "b"]), dest) == ["a__iid__seed0", "b__iid__seed0"]
    meta = json.loads((dest / "sweep.json").read_text())
    assert meta["presets"] == ["a", "new", "b"]
    assert sorted(r["id"] for r in meta["runs"]) == ["a__iid__seed0", "b__iid__seed0", "new__iid__seed0"]
    other = sweep("other", ["z"])
    (other / "sweep.json").write_text(json.dumps({"name": "families", "presets": ["z"], "runs": []}))
    collect(other, dest)  # a different sweep replaces the description
    assert json.loads((dest / "sweep.json").read_text())["presets"] == ["z"]


def test_readme_headline_is_generated_from_the_committed_ledgers():
    from benchmarks.standard import README, headline

    res = report.load_results(SWEEP)
    block = headline(res, report.target_table(res, TARGETS))
    assert block in README.read_text(), "README headline is stale: run python -m benchmarks.standard"


def _goal_rows(best: dict, base: dict) -> pd.DataFrame:
    rows = []
    for preset, values in (("stc-p400", best), ("fedavg-fp32", base)):
        rows.append({"preset": preset, "runs_expected": 3, "runs_completed": 3, "runs_reached": 3,
                     "uplink_factor": 1.0, "total_factor": 1.0, **values})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("best", "base", "verdict"), [
    ({"uplink_factor": 510.0, "total_factor": 160.0}, {}, "**met** (×510 uplink, ×160 total)"),
    ({"uplink_factor": 510.0, "total_factor": 149.0}, {}, "**not met** (×510 uplink, ×149 total)"),
    ({"runs_reached": 2, "uplink_factor": 900.0, "total_factor": 900.0}, {},
     "**not met**: 1 of its completed seeds did not reach the target"),
    ({"runs_completed": 2, "runs_reached": 2, "uplink_factor": 900.0, "total_factor": 900.0}, {},
     "**open**: 2 of 3 seeds reached so far (×900 uplink, ×900 total)"),
    ({"uplink_factor": 900.0, "total_factor": 900.0}, {"runs_completed": 2, "runs_reached": 2}, "**open**"),
])
def test_goal_is_met_only_on_every_seed_of_both_presets(best, base, verdict):
    from benchmarks.standard import _verdict

    assert _verdict(_goal_rows(best, base), "stc-p400", 500.0, 150.0).startswith(verdict)


def test_update_readme_replaces_only_the_block(tmp_path):
    from benchmarks.standard import README_BEGIN, README_END, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold\n{README_END}\noutro\n")
    update_readme(f"{README_BEGIN}\nnew\n{README_END}", readme)
    assert readme.read_text() == f"intro\n{README_BEGIN}\nnew\n{README_END}\noutro\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no .* block"):
        update_readme("x", readme)
