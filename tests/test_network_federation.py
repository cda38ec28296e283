"""The network simulation inside a real federation: a trace, a deadline, over-selection."""

from __future__ import annotations

import pytest

from fedsqueeze import netsim
from fedsqueeze.models import build_model
from tests.federation_harness import SMALL, read_rows, run_direct


def test_deadline_and_over_selection_in_a_federation(tmp_path):
    # Five clients on identical fast links (1 Gbit/s, no latency: transfers take under a millisecond);
    # partition 2 trains 10 % slower and partition 4 twenty times slower than the reference host.
    flops = netsim.train_flops_per_example(build_model("seed-cnn"), (1, 28, 28))
    fast_s = 12_000 * 1 * flops / netsim.HOST_1THREAD_TRAIN_FLOPS  # 5 IID partitions of 12,000, E = 1
    trace = tmp_path / "trace.csv"
    trace.write_text("client_id,down_mbps,up_mbps,rtt_ms,compute_factor,availability\n" + "".join(
        f"{pid},1000,1000,0,{ {2: 1 / 1.1, 4: 0.05}.get(pid, 1.0) },1.0\n" for pid in range(5)))
    deadline = 3 * fast_s  # partition 4 needs 20x fast_s: always late
    cfg = {**SMALL, "num-server-rounds": 2, "fraction-train": 0.6, "min-train-nodes": 1,  # K = 3
           "network": f"trace:{trace}", "round-deadline": deadline, "over-select": 0.67}  # ceil(3 * 1.67) = 5
    summary, _ = run_direct(cfg, tmp_path / "run")
    rows = read_rows(tmp_path / "run")
    clients = read_rows(tmp_path / "run", "clients.csv")
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    for row in rows[1:]:
        mine = {int(c["partition_id"]): c for c in clients if c["round"] == row["round"]}
        assert sorted(mine) == [0, 1, 2, 3, 4]
        # ties (0, 1, 3 arrive together) go to the lower id; 2 is in time but fourth; 4 misses the deadline
        assert {p: c["status"] for p, c in mine.items()} == {0: "ok", 1: "ok", 2: "overselected", 3: "ok",
                                                             4: "straggler"}
        assert (int(row["clients_ok"]), int(row["stragglers"]), int(row["overselected"])) == (3, 1, 1)
        for c in mine.values():
            expected = netsim.client_timing(int(c["partition_id"]), netsim.ClientProfile(1e9, 1e9, 0.0, 1.0, 1.0),
                                            int(c["downlink_bytes"]), int(c["uplink_bytes"]), 0.0)
            assert float(c["download_s"]) == pytest.approx(expected.download_s, abs=1e-6)
            assert float(c["upload_s"]) == pytest.approx(expected.upload_s, abs=1e-6)
        assert float(mine[4]["compute_s"]) == pytest.approx(20 * fast_s, rel=1e-5)
        assert float(mine[4]["arrival_s"]) > deadline >= float(mine[2]["arrival_s"])
        # the round closes at the third kept arrival, not at the deadline
        assert float(row["sim_round_s"]) == pytest.approx(max(float(mine[p]["arrival_s"]) for p in (0, 1, 3)),
                                                          abs=1e-5)
        assert int(row["applied"]) == 1
    assert float(rows[-1]["cum_sim_s"]) == pytest.approx(sum(float(r["sim_round_s"]) for r in rows[1:]), abs=1e-5)
    assert summary["network"]["train_flops_per_example"] == flops
    assert summary["cum_sim_s"] == pytest.approx(float(rows[-1]["cum_sim_s"]))
    assert float(rows[-1]["test_accuracy"]) > float(rows[0]["test_accuracy"])


def test_simulated_times_and_straggler_decisions_are_deterministic(tmp_path):
    """A profile set, a deadline and over-selection: two runs give the same times, statuses and metrics."""
    cfg = {**SMALL, "num-server-rounds": 2, "fraction-train": 0.6, "network": "mobile-3g", "round-deadline": 30.0,
           "over-select": 0.4}
    runs = [run_direct(cfg, tmp_path / name)[0] for name in ("a", "b")]
    a, b = (read_rows(tmp_path / name, "clients.csv") for name in ("a", "b"))
    keys = ("round", "partition_id", "status", "downlink_payload_bytes", "uplink_payload_bytes", "compute_s")
    assert [tuple(r[k] for k in keys) for r in a] == [tuple(r[k] for k in keys) for r in b]
    for x, y in zip(a, b):  # wire bytes differ by Flower's random ids (a few bytes): times by microseconds at most
        assert abs(float(x["arrival_s"]) - float(y["arrival_s"])) < 1e-3
    ma, mb = read_rows(tmp_path / "a"), read_rows(tmp_path / "b")
    assert [r["test_accuracy"] for r in ma] == [r["test_accuracy"] for r in mb]
    assert [r["stragglers"] for r in ma] == [r["stragglers"] for r in mb]
    assert runs[0]["cum_sim_s"] == pytest.approx(runs[1]["cum_sim_s"], abs=1e-2)
    statuses = {r["status"] for r in a}
    assert statuses & {"straggler", "overselected"}, statuses  # the decisions were really exercised
