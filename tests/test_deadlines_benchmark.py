"""The committed deadline benchmark: its ledgers agree with the deadline rule they were made under."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from benchmarks.deadlines import deadline_for

RUNS = Path(__file__).resolve().parent.parent / "benchmarks" / "deadlines" / "runs"


def rows(label: str, name: str) -> list[dict[str, str]]:
    with open(RUNS / label / name, newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_deadline_is_the_quantile_of_the_baseline_arrivals_and_drops_exactly_the_late():
    report = json.loads((RUNS.parent / "deadlines.json").read_text())
    deadline = report["deadline_s"]
    assert deadline == round(deadline_for(RUNS / "no-deadline", 0.25), 3)
    for label in ("deadline", "deadline+over-select"):
        summary = json.loads((RUNS / label / "summary.json").read_text())
        assert summary["config"]["round-deadline"] == deadline
        clients = [c for c in rows(label, "clients.csv")]
        for c in clients:
            late = float(c["arrival_s"]) > deadline
            assert (c["status"] == "straggler") == late, c
        per_round = {}
        for c in clients:
            per_round[c["round"]] = per_round.get(c["round"], 0) + (c["status"] == "straggler")
        for r in rows(label, "metrics.csv")[1:]:
            assert int(r["stragglers"]) == per_round[r["round"]]
            assert float(r["sim_round_s"]) <= deadline + 1e-9


def test_over_selection_keeps_at_most_k_and_samples_ceil_k_times_1_3():
    for r in rows("deadline+over-select", "metrics.csv")[1:]:
        assert int(r["clients_sampled"]) == 13 and int(r["clients_ok"]) <= 10  # ceil(10 * 1.3)
    assert any(int(r["overselected"]) > 0 for r in rows("deadline+over-select", "metrics.csv")[1:])
    assert all(int(r["clients_sampled"]) == 10 for r in rows("deadline", "metrics.csv")[1:])
