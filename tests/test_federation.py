"""End-to-end federations on real MNIST (small budgets), through Flower's simulation engine."""

from __future__ import annotations

import csv

import pytest
from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from tests.federation_harness import SMALL, assert_same_ledgers, read_rows, run_inprocess

pytestmark = pytest.mark.slow  # Flower's simulation engine: Ray worker processes

def reserialized_bytes(msg: Message) -> int:
    """Deflate every object, rebuild the message from those bytes alone, deflate again."""
    objects = get_all_nested_objects(msg)
    contents = {oid: obj.deflate() for oid, obj in objects.items()}
    rebuilt = inflate_object_from_contents(msg.object_id, dict(contents))  # it consumes its input
    again = {oid: obj.deflate() for oid, obj in get_all_nested_objects(rebuilt).items()}
    assert again == contents  # the bytes alone carry the whole message
    return sum(len(b) for b in contents.values())


def per_round_bytes(grid):
    """(downlink, uplink) bytes per exchange, recomputed from the recorded messages."""
    out = []
    for sent, replies in grid.exchanges:
        out.append((sum(reserialized_bytes(m) for m in sent), sum(reserialized_bytes(r) for r in replies)))
    return out


def test_fp32_ledger_equals_reserialized_messages(tmp_path):
    cfg = {**SMALL, "uplink": "fp32", "downlink": "fp32", "downlink-mode": "full"}
    summary, grid = run_inprocess(cfg, tmp_path)
    rows = read_rows(tmp_path)
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    recomputed = per_round_bytes(grid)  # exchange 0 is the handshake = round 0
    for row, (down, up) in zip(rows, recomputed):
        assert int(row["downlink_bytes"]) == down and int(row["uplink_bytes"]) == up
    # float32 replies carry at least the dense update, and not much more.
    for row in rows[1:]:
        assert int(row["uplink_dense_bytes"]) <= int(row["uplink_bytes"]) <= 1.02 * int(row["uplink_dense_bytes"])
    # ... and every train message carries the float32 model plus a bounded envelope (config record, header)
    for row in rows[1:]:
        msgs, dense = int(row["clients_sampled"]), int(row["downlink_dense_bytes"])
        assert dense == 4 * summary["num_params"] * msgs
        assert dense <= int(row["downlink_bytes"]) <= dense + 4096 * msgs
    assert float(rows[-1]["test_accuracy"]) > float(rows[0]["test_accuracy"]) + 0.5
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    # the summary's totals and ratios are training rounds only; the handshake stands apart
    assert summary["cum_uplink_bytes"] == sum(up for _, up in recomputed[1:])
    assert summary["handshake"] == {"uplink_bytes": recomputed[0][1], "downlink_bytes": recomputed[0][0]}
    assert summary["uplink_vs_float32"] == round(summary["cum_uplink_dense_bytes"] / summary["cum_uplink_bytes"], 3)
    # clients.csv: one row per sampled client, its wire bytes add up to the round's, its sizes are the server's
    clients = read_rows(tmp_path, "clients.csv")
    for row in rows[1:]:
        mine = [c for c in clients if c["round"] == row["round"]]
        assert len(mine) == int(row["clients_sampled"]) and all(c["status"] == "ok" for c in mine)
        assert sum(int(c["uplink_bytes"]) for c in mine) == int(row["uplink_bytes"])
        assert sum(int(c["downlink_bytes"]) for c in mine) == int(row["downlink_bytes"])
        assert all(int(c["num_examples"]) == 12_000 for c in mine)
        # an fp32 payload is the dense update plus a small header
        for c in mine:
            assert 4 * 20_490 < int(c["uplink_payload_bytes"]) < 4 * 20_490 + 1_024 < int(c["uplink_bytes"])
    assert summary["versions"]["flwr"] == "1.42.0" and set(summary["targets"]) == {"0.97", "0.98", "0.985", "0.99"}
    with open(tmp_path / "partitions.csv", newline="") as fh:
        parts = list(csv.DictReader(fh))
    assert len(parts) == 5 and sum(int(p["num_examples"]) for p in parts) == 60000


def test_same_seed_gives_identical_metrics(tmp_path):
    """Same config and seed: same ledger (wall time and id-varint jitter aside; measured 1-2 B)."""
    cfg = {**SMALL, "uplink": "stc", "downlink": "stc", "downlink-mode": "delta", "num-server-rounds": 2}
    run_inprocess(cfg, tmp_path / "a")
    run_inprocess(cfg, tmp_path / "b")
    a, b = read_rows(tmp_path / "a"), read_rows(tmp_path / "b")
    assert len(a) == 3
    assert_same_ledgers(a, b, envelope_jitter=4)  # payload bytes: exactly equal
    assert int(a[-1]["cum_uplink_payload_bytes"]) > 0 and int(a[-1]["cum_downlink_payload_bytes"]) > 0
    ca, cb = read_rows(tmp_path / "a", "clients.csv"), read_rows(tmp_path / "b", "clients.csv")
    assert len(ca) == len(cb) > 0
    for x, y in zip(ca, cb):
        for key in ("partition_id", "status", "uplink_payload_bytes", "downlink_payload_bytes", "base_version",
                    "target_version"):
            assert x[key] == y[key], key


@pytest.mark.parametrize("preset", ["stc", "q8"])
def test_compressed_federation_end_to_end(tmp_path, preset):
    """mcmahan-cnn, a corrupted upload every round: accuracy rises, bytes are exact, bad clients are dropped."""
    from simulations.run import resolve_overrides

    cfg = resolve_overrides(preset, {
        "model": "mcmahan-cnn", "num-server-rounds": 3, "fraction-train": 0.06, "min-train-nodes": 3,
        "min-available-nodes": 50, "local-epochs": 1, "batch-size": 20, "fail-corrupt": 0.34, "seed": 1,
    })
    summary, grid = run_inprocess(cfg, tmp_path, num_supernodes=50)
    rows = read_rows(tmp_path)
    recomputed = per_round_bytes(grid)
    for row, (down, up) in zip(rows, recomputed):
        assert int(row["uplink_bytes"]) == up and int(row["downlink_bytes"]) == down
    assert float(rows[-1]["test_accuracy"]) > float(rows[0]["test_accuracy"]) + 0.3
    for row in rows[1:]:  # the downlink never costs more than float32 (plus a bounded envelope) per message
        assert int(row["downlink_bytes"]) <= int(row["downlink_dense_bytes"]) + 4096 * int(row["clients_sampled"])
    failed = sum(int(r["clients_failed"]) for r in rows[1:])
    assert failed >= 1 and all("payload:" in r["failures"] for r in rows[1:] if r["failures"])
    assert summary["status"] == "completed"
    up, dense = summary["cum_uplink_bytes"], summary["cum_uplink_dense_bytes"]
    if preset == "stc":
        assert dense / up >= 50, f"stc uplink only {dense / up:.1f}x below float32"
    else:
        assert 3.5 <= dense / up <= 4.0  # 8-bit codes + per-channel scales


def test_eval_every_skips_evaluation_but_not_the_last_round(tmp_path):
    summary, _ = run_inprocess({**SMALL, "eval-every": 2, "stop-at-accuracy": 0.999}, tmp_path)
    rows = read_rows(tmp_path)
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]  # 0.999 is never reached
    assert rows[1]["test_accuracy"] == "" and rows[1]["test_loss"] == "" and float(rows[1]["eval_s"]) == 0
    assert int(rows[1]["uplink_bytes"]) > 0 and int(rows[1]["applied"]) == 1  # the round itself happened
    evaluated = [rows[0], rows[2], rows[3]]  # every 2nd round, and the last
    assert all(r["test_accuracy"] != "" for r in evaluated)
    assert float(rows[2]["eval_s"]) > 0 and float(rows[3]["eval_s"]) > 0
    assert summary["final_accuracy"] == float(rows[3]["test_accuracy"])
    assert summary["best_accuracy"] == max(float(r["test_accuracy"]) for r in evaluated)


def test_stop_at_accuracy_looks_only_at_evaluated_rounds(tmp_path):
    summary, _ = run_inprocess({**SMALL, "num-server-rounds": 5, "eval-every": 2, "stop-at-accuracy": 0.5},
                               tmp_path)
    rows = read_rows(tmp_path)
    # round 1 (not evaluated) cannot stop the run; round 2 reaches 0.5 and is the last
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert rows[1]["test_accuracy"] == "" and float(rows[2]["test_accuracy"]) >= 0.5
    assert summary["rounds_completed"] == 2
