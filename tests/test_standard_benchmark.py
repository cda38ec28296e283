"""The committed standard benchmark is derived from committed ledgers only (issue 13)."""

from __future__ import annotations

import json
import math

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
    for run, status in (("done", "completed"), ("midway", "running"), ("broken", None)):
        (src / run).mkdir(parents=True)
        (src / run / "metrics.csv").write_text("round\n0\n")
        if status:
            (src / run / "summary.json").write_text(json.dumps({"status": status}))
    (src / "done" / "checkpoint").mkdir()  # not a ledger file: stays behind
    assert copy_completed_runs(src, tmp_path / "a") == ["done"]
    assert sorted(p.name for p in (tmp_path / "a" / "done").iterdir()) == ["metrics.csv", "summary.json"]
    assert collect_families(tmp_path / "sweep", tmp_path / "b") == ["done"]
    assert not (tmp_path / "b" / "midway").exists()
