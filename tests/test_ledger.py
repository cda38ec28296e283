"""fedsqueeze.ledger with rounds that were not evaluated (eval-every > 1)."""

from types import SimpleNamespace

from fedsqueeze.ledger import Ledger, RoundRow, accuracy, evaluated, targets_reached
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
                           "cum_uplink_dense_bytes": 1200, "wall_s": 2.0}
    assert hit["0.99"]["round"] == 3 and hit["0.999"] is None
    # the sweep report reads the same file: curves hold evaluated rounds, cumulative bytes intact
    curve = _read_metrics(tmp_path / "metrics.csv", SimpleNamespace(config={}))
    assert curve["round"].tolist() == [0, 2, 3] and curve["cum_uplink_bytes"].tolist() == [100, 300, 400]
