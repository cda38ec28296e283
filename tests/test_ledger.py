"""fedsqueeze.ledger: unevaluated rounds (eval-every > 1), the handshake row, payload bytes, clients.csv."""

import csv
from types import SimpleNamespace

from fedsqueeze.ledger import CLIENT_COLUMNS, ClientRow, Ledger, RoundRow, accuracy, evaluated, targets_reached
from simulations.report import _read_metrics


def test_unevaluated_rounds_keep_their_bytes_and_are_skipped_by_targets(tmp_path):
    ledger = Ledger(tmp_path, "up", "down")
    for rnd, acc in [(0, 0.1), (1, None), (2, 0.96), (3, 0.99)]:
        ledger.append(RoundRow(rnd, acc, None if acc is None else 1 - acc, uplink_bytes=100, downlink_bytes=10,
                               uplink_dense_bytes=400, downlink_dense_bytes=40), wall_s=float(rnd))
    rows = ledger.rows
    assert rows[1]["test_accuracy"] == "" and rows[1]["test_loss"] == "" and rows[1]["cum_uplink_bytes"] == 200
    assert [r["round"] for r in evaluated(rows)] == [0, 2, 3]
    assert accuracy(rows[1]) is None and accuracy(rows[2]) == 0.96
    hit = targets_reached(rows, (0.05, 0.95, 0.99, 0.999))
    assert hit["0.05"]["round"] == 0
    assert hit["0.95"] == {"round": 2, "cum_uplink_bytes": 300, "cum_downlink_bytes": 30,
                           "cum_uplink_dense_bytes": 1200, "cum_downlink_dense_bytes": 120,
                           "cum_uplink_payload_bytes": 0, "cum_downlink_payload_bytes": 0, "cum_sim_s": None,
                           "wall_s": 2.0}
    assert hit["0.99"]["round"] == 3 and hit["0.999"] is None
    # the sweep report reads the same file: curves hold evaluated rounds, cumulative bytes intact
    curve = _read_metrics(tmp_path / "metrics.csv", SimpleNamespace(config={}))
    assert curve["round"].tolist() == [0, 2, 3] and curve["cum_uplink_bytes"].tolist() == [100, 300, 400]


def test_handshake_is_shown_but_not_accumulated_and_ratios_compare_training_rounds(tmp_path):
    ledger = Ledger(tmp_path, "up", "down")
    hs = ledger.append(RoundRow(0, 0.1, 2.3, uplink_bytes=5_000, downlink_bytes=7_000, handshake=True), wall_s=0.0)
    assert (hs["uplink_bytes"], hs["downlink_bytes"]) == (5_000, 7_000)
    assert (hs["cum_uplink_bytes"], hs["cum_downlink_bytes"]) == (0, 0)
    assert hs["uplink_ratio"] == "" and hs["downlink_ratio"] == ""
    r1 = ledger.append(RoundRow(1, 0.5, 1.0, uplink_bytes=100, downlink_bytes=200, uplink_dense_bytes=3_670,
                                downlink_dense_bytes=4_000, uplink_payload_bytes=60, downlink_payload_bytes=150),
                       wall_s=1.0)
    assert (r1["cum_uplink_bytes"], r1["cum_downlink_bytes"]) == (100, 200)
    assert r1["uplink_ratio"] == 36.7 and r1["downlink_ratio"] == 20.0
    assert (r1["cum_uplink_payload_bytes"], r1["cum_downlink_payload_bytes"]) == (60, 150)
    # 36.7x per training round stays 36.7x cumulatively: the handshake does not dilute it
    assert r1["cum_uplink_dense_bytes"] / r1["cum_uplink_bytes"] == 36.7


def test_clients_csv_rows_and_resume_truncation(tmp_path):
    ledger = Ledger(tmp_path, "up", "down")
    ledger.append(RoundRow(0, 0.1, 2.3, handshake=True), wall_s=0.0)
    for rnd in (1, 2, 3):
        ledger.append(RoundRow(rnd, 0.5, 1.0, clients_sampled=2, sim_round_s=1.5, clients=[
            ClientRow(partition_id=p, node_id=100 + p, num_examples=600, local_epochs=5, downlink_bytes=10 * rnd,
                      uplink_bytes=7, uplink_payload_bytes=5, status="ok" if p else "straggler", arrival_s=1.5)
            for p in (0, 1)]), wall_s=float(rnd))
    assert [r["cum_sim_s"] for r in ledger.rows[1:]] == [1.5, 3.0, 4.5]
    with open(tmp_path / "clients.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CLIENT_COLUMNS and len(rows) == 6
    assert rows[0]["status"] == "straggler" and rows[5]["downlink_bytes"] == "30" and rows[5]["download_s"] == ""
    # resume after round 2: the rows of round 3 go, in both files
    resumed = Ledger(tmp_path, "up", "down", keep_rows=3)
    assert [int(r["round"]) for r in resumed.rows] == [0, 1, 2]
    with open(tmp_path / "clients.csv", newline="") as fh:
        assert [int(r["round"]) for r in csv.DictReader(fh)] == [1, 1, 2, 2]
    row = resumed.append(RoundRow(3, 0.6, 0.9, sim_round_s=0.5), wall_s=3.0)
    assert row["cum_sim_s"] == 3.5


def test_run_summary_totals_come_from_the_ledger_rows(tmp_path):
    from fedsqueeze.config import RunConfig
    from fedsqueeze.ledger import run_summary

    cfg = RunConfig.from_mapping({"name": "t", "seed": 3, "network": "mobile-3g"})
    ledger = Ledger(tmp_path, "up", "down")
    ledger.append(RoundRow(0, 0.1, 2.0, uplink_bytes=50, downlink_bytes=60, handshake=True), wall_s=0.5)
    for rnd, acc in [(1, 0.6), (2, None), (3, 0.5)]:
        ledger.append(RoundRow(rnd, acc, None if acc is None else 1 - acc, uplink_bytes=100, downlink_bytes=300,
                               uplink_dense_bytes=400, downlink_dense_bytes=600, uplink_payload_bytes=80,
                               downlink_payload_bytes=250), wall_s=float(rnd))
    common = dict(data={"source": "x"}, pipeline_up="fp32", pipeline_down="q8", num_params=7,
                  handshake_bytes=(50, 60), resumed_at=None, resume_handshake_bytes=0, model_stages=None)
    s = run_summary("running", cfg, ledger.rows, network={"reference_flops": 1e9, "train_flops_per_example": 5},
                    **common)
    assert (s["status"], s["name"], s["seed"], s["rounds_completed"]) == ("running", "t", 3, 3)
    assert (s["final_accuracy"], s["best_accuracy"]) == (0.5, 0.6)  # round 2 was not evaluated
    # training rounds only: the handshake row's bytes are reported apart
    assert (s["cum_uplink_bytes"], s["cum_downlink_bytes"]) == (300, 900)
    assert (s["cum_uplink_payload_bytes"], s["cum_downlink_payload_bytes"]) == (240, 750)
    assert (s["uplink_vs_float32"], s["downlink_vs_float32"], s["total_vs_float32"]) == (4.0, 2.0, 2.5)
    assert s["handshake"] == {"uplink_bytes": 50, "downlink_bytes": 60} and s["wall_s"] == 3.0
    assert s["network"]["profiles"] == "mobile-3g" and s["network"]["train_flops_per_example"] == 5
    assert s["config"] == cfg.to_mapping() and s["targets"]["0.99"] is None
    empty = run_summary("completed", cfg, [], network=None, **common)
    assert empty["final_accuracy"] is None and empty["total_vs_float32"] is None and empty["network"] is None
