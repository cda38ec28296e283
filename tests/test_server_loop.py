"""The real server loop and ClientApp in this process (tests.federation_harness.DirectGrid): fast enough for
the quick loop, and every message is recorded, so the aggregation can be recomputed independently.

* unequal (Dirichlet) partitions, FedAvgM with server-lr != 1, injected crashes and ``min-train-results``:
  each round's global model is rebuilt from the recorded replies with the paper's rule, in float64;
* an independent downlink byte bound;
* resume in delta-downlink mode with FedAdam: history, broadcast model, node versions and moments;
* the sweep report on ledgers and summaries that real federations wrote.
"""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
import torch

import compression
from fedsqueeze.config import RunConfig
from fedsqueeze.models import initial_state
from fedsqueeze.protocol.messages import CONFIG, METRICS, MODEL, UPDATE, record_payloads
from server.checkpoint import load_checkpoint
from server.federation import plan_injections
from server.rounds import sample_partitions
from tests.federation_harness import direct_runner, read_rows, run_direct

NUM_PARAMS = sum(v.numel() for v in initial_state("seed-cnn", 0).values())

# Seed 58 crashes 1, 2 and 1 of the 4 clients sampled in rounds 1-3 (checked below): with
# min-train-results = 3, rounds 1 and 3 are applied with exactly 3 replies, round 2 is not.
WEIGHTED = {
    "model": "seed-cnn", "seed": 58, "partition": "dirichlet", "dirichlet-alpha": 0.3, "num-server-rounds": 3,
    "fraction-train": 0.2, "min-train-nodes": 4, "min-available-nodes": 20, "local-epochs": 1, "batch-size": 32,
    "lr": 0.05, "uplink": "q8", "downlink": "fp32", "downlink-mode": "full", "server-optimizer": "fedavgm",
    "server-lr": 0.7, "server-momentum": 0.5, "min-train-results": 3, "fail-crash": 0.3,
}
NODES = 20


@pytest.fixture(scope="module")
def weighted_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("weighted")
    summary, grid = run_direct(WEIGHTED, out, num_supernodes=NODES)
    return summary, grid, read_rows(out), out


def _tensors64(t: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy().astype(np.float64) for k, v in t.items()}


def _broadcast_weights(sent) -> dict[str, torch.Tensor]:
    """The float32 global model every train message of a full-fp32-downlink round carries (all identical)."""
    payloads = {record_payloads(m.content[MODEL])[0] for m in sent}
    assert len(payloads) == 1
    return compression.decode(payloads.pop())


def test_crash_plan_gives_one_skipped_round_between_two_applied_ones():
    cfg = RunConfig.from_mapping(WEIGHTED)
    crashes = [sum(v == "crash" for v in plan_injections(sample_partitions(list(range(NODES)), cfg, r), cfg,
                                                        r).values()) for r in (1, 2, 3)]
    assert crashes == [1, 2, 1]


def test_partitions_are_unequal_enough_to_show_the_weighting(weighted_run):
    _, _, _, out = weighted_run
    with open(out / "partitions.csv", newline="") as fh:
        sizes = [int(r["num_examples"]) for r in csv.DictReader(fh)]
    assert len(sizes) == NODES and sum(sizes) == 60_000 and max(sizes) > 2 * min(sizes)


def test_global_model_follows_fedavgm_on_example_weighted_means(weighted_run):
    """Rebuild w_r from the recorded replies: d = sum n_i u_i / sum n_i; m = beta m + d; w += lr m."""
    summary, grid, rows, out = weighted_run
    lr, beta = WEIGHTED["server-lr"], WEIGHTED["server-momentum"]
    train = [ex for ex in grid.exchanges if ex[0][0].metadata.message_type == "train"]
    assert len(train) == 3 and [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    w = _tensors64(initial_state("seed-cnn", WEIGHTED["seed"]))
    m = None
    unweighted_gap = 0.0
    for r, (sent, replies) in enumerate(train, start=1):
        got = _tensors64(_broadcast_weights(sent))
        for k in w:  # the model sent in round r is w_{r-1}
            np.testing.assert_allclose(got[k], w[k], rtol=0, atol=2e-6, err_msg=f"round {r} {k}")
        ok = [rep for rep in replies if not rep.has_error()]
        row = rows[r]
        assert int(row["clients_sampled"]) == 4 and int(row["clients_ok"]) == len(ok)
        assert sorted(f.split(":")[0] for f in row["failures"].split(";") if f) == ["crash"] * (4 - len(ok))
        applied = len(ok) >= WEIGHTED["min-train-results"]
        assert int(row["applied"]) == applied
        if not applied:
            continue  # keep the previous global model, momentum untouched
        counts = [int(rep.content[METRICS]["num-examples"]) for rep in ok]
        updates = [_tensors64(compression.decode(record_payloads(rep.content[UPDATE])[0])) for rep in ok]
        assert len(set(counts)) == len(counts)  # unequal partitions
        d = {k: sum(n * u[k] for n, u in zip(counts, updates)) / sum(counts) for k in w}
        plain = {k: sum(u[k] for u in updates) / len(updates) for k in w}
        unweighted_gap = max(unweighted_gap, max(float(np.abs(d[k] - plain[k]).max()) for k in w))
        m = d if m is None else {k: beta * m[k] + d[k] for k in w}
        w = {k: w[k] + lr * m[k] for k in w}
    ckpt = load_checkpoint(out, RunConfig.from_mapping({**WEIGHTED, "out-dir": str(out)}).to_mapping())
    for k in w:
        np.testing.assert_allclose(ckpt.weights[k].numpy(), w[k], rtol=0, atol=2e-6, err_msg=k)
        np.testing.assert_allclose(ckpt.optimizer_state["m"][k].numpy(), m[k], rtol=0, atol=2e-6, err_msg=k)
    assert unweighted_gap > 1e-3  # 500x the tolerance: equal weights would have been caught
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3


def test_a_round_below_min_train_results_keeps_the_model(weighted_run):
    _, grid, rows, _ = weighted_run
    train = [ex for ex in grid.exchanges if ex[0][0].metadata.message_type == "train"]
    assert [int(r["applied"]) for r in rows[1:]] == [1, 0, 1]
    before, after = _broadcast_weights(train[1][0]), _broadcast_weights(train[2][0])
    assert all(torch.equal(before[k], after[k]) for k in before)  # round 2 changed nothing
    assert rows[2]["test_accuracy"] == rows[1]["test_accuracy"]  # same model, same evaluation


def test_downlink_bytes_within_an_independent_bound(weighted_run):
    """Each train message carries the float32 model: at least 4 B a parameter, plus a bounded envelope.

    Independent of server/accounting.py: the lower bound is the dense model, the upper one a fixed
    allowance (payload header, the instruction's config record, Flower's object envelope) per message.
    """
    _, grid, rows, _ = weighted_run
    for row in rows[1:]:
        msgs = int(row["clients_sampled"])
        down = int(row["downlink_bytes"])
        assert int(row["downlink_dense_bytes"]) == 4 * NUM_PARAMS * msgs
        assert 4 * NUM_PARAMS * msgs <= down <= msgs * (4 * NUM_PARAMS + 4096), (row["round"], down)
    # the uplink of q8: one byte a parameter plus scales, never the float32 size
    for row in rows[1:]:
        ok = int(row["clients_ok"])
        assert ok * NUM_PARAMS <= int(row["uplink_bytes"]) <= ok * (1.1 * NUM_PARAMS + 4096) + 4 * 2048


# ---------------------------------------------------------------- resume in delta mode

DELTA = {
    "model": "seed-cnn", "seed": 2, "partition": "iid", "num-server-rounds": 3, "fraction-train": 0.15,
    "min-train-nodes": 3, "min-available-nodes": 20, "local-epochs": 1, "batch-size": 50, "lr": 0.05,
    "uplink": "q8", "downlink": "stc", "downlink-mode": "delta", "server-optimizer": "fedadam", "server-lr": 0.01,
}


def _versions(sent) -> dict[int, tuple[int, int]]:
    return {m.metadata.dst_node_id: (int(m.content[CONFIG]["base-version"]), int(m.content[CONFIG]["target-version"]))
            for m in sent}


def test_resume_in_delta_mode_with_fedadam_continues_the_same_run(tmp_path):
    whole, grid_a = run_direct(DELTA, tmp_path / "whole", num_supernodes=20)
    run_direct({**DELTA, "num-server-rounds": 2}, tmp_path / "cut", num_supernodes=20)
    resumed, grid_b = run_direct({**DELTA, "resume": True}, tmp_path / "cut", num_supernodes=20)
    assert resumed["resumed_at_round"] == 2

    cfg = lambda out: RunConfig.from_mapping({**DELTA, "out-dir": str(out)}).to_mapping()  # noqa: E731
    a, b = load_checkpoint(tmp_path / "whole", cfg(tmp_path / "whole")), load_checkpoint(tmp_path / "cut",
                                                                                         cfg(tmp_path / "cut"))
    assert a.round == b.round == 3 and len(a.history) == len(b.history) == 3
    assert a.history == b.history  # the downlink deltas: same broadcast model and residual after the resume
    for part in ("weights", "broadcast"):
        for k, v in getattr(a, part).items():
            assert torch.equal(v, getattr(b, part)[k]), (part, k)
    assert sorted(a.optimizer_state) == ["m", "v"]
    for name, moments in a.optimizer_state.items():
        for k, v in moments.items():
            assert torch.equal(v, b.optimizer_state[name][k]), (name, k)

    # versions: uninterrupted, a node seen before continues from its version; after the resume the
    # server knows no node, so every chain starts at 0 (or is the float32 model), and all end at 3
    round3_a = _versions([ex for ex in grid_a.exchanges if ex[0][0].metadata.message_type == "train"][2][0])
    round3_b = _versions([ex for ex in grid_b.exchanges if ex[0][0].metadata.message_type == "train"][0][0])
    # seed 2 samples partitions [7, 15, 18], [9, 13, 15], [3, 7, 13] in rounds 1-3 (node id = 1001 + partition)
    assert round3_a == {1004: (0, 3), 1008: (1, 3), 1014: (2, 3)}
    assert round3_b == {1004: (0, 3), 1008: (0, 3), 1014: (0, 3)}

    rows_a, rows_b = read_rows(tmp_path / "whole"), read_rows(tmp_path / "cut")
    assert len(rows_a) == len(rows_b) == 4
    for ra, rb in zip(rows_a, rows_b):
        for key in ("test_accuracy", "test_loss", "uplink_bytes", "clients_ok", "applied", "mean_rel_distortion"):
            assert ra[key] == rb[key], (ra["round"], key)
    # the resumed round re-sends the longer chains: more downlink bytes, never more than float32 each
    assert int(rows_b[3]["downlink_bytes"]) > int(rows_a[3]["downlink_bytes"])
    assert int(rows_b[3]["downlink_bytes"]) <= int(rows_b[3]["clients_sampled"]) * (4 * NUM_PARAMS + 4096)


# ---------------------------------------------------------------- the report on real ledgers

@pytest.fixture(scope="session")
def real_sweep(tmp_path_factory):
    """A sweep folder written by real (in-process) federations: fedavg-fp32 and stc, 1 seed, 2 rounds."""
    from simulations import sweep as sw

    root = tmp_path_factory.mktemp("real-sweep")
    spec = sw.parse_sweep({
        "name": "tiny-real", "presets": ["fedavg-fp32", "stc"], "seeds": [0], "num-supernodes": 20,
        "overrides": {"model": "seed-cnn", "num-server-rounds": 2, "fraction-train": 0.1, "min-available-nodes": 20,
                      "local-epochs": 1, "batch-size": 20},
        "partitions": [{"label": "iid", "partition": "iid"}],
    })
    result = sw.run_sweep(spec, root, runner=direct_runner, progress_interval=None, echo=lambda _: None)
    assert result.executed == 2 and not result.failed
    return root


def test_report_on_ledgers_written_by_real_federations(real_sweep):
    from simulations import report as rp

    written = rp.write_report(real_sweep, targets=[0.5])
    assert {p.name for p in written} >= {"table.csv", "report.md", "accuracy_vs_uplink.png"}
    table = pd.read_csv(real_sweep / "table.csv")
    final = rp.final_table(rp.load_results(real_sweep)).set_index("variant")
    for preset in ("fedavg-fp32", "stc"):
        run_dir = real_sweep / "runs" / f"{preset}__iid__seed0"
        rows = read_rows(run_dir)
        summary = rp.read_json(run_dir / "summary.json")
        assert summary["status"] == "completed" and len(rows) == 3
        hit = next(r for r in rows if r["test_accuracy"] and float(r["test_accuracy"]) >= 0.5)
        t = table[(table["preset"] == preset) & (table["target"] == 0.5)].iloc[0]
        assert t["runs_reached"] == 1 and t["rounds_mean"] == int(hit["round"])
        assert t["uplink_bytes_mean"] == int(hit["cum_uplink_bytes"])
        assert t["downlink_bytes_mean"] == int(hit["cum_downlink_bytes"])
        assert final.loc[preset, "final_accuracy_mean"] == pytest.approx(summary["final_accuracy"])
        assert final.loc[preset, "uplink_bytes_mean"] == summary["cum_uplink_bytes"]
    fp32 = table[(table["preset"] == "fedavg-fp32") & (table["target"] == 0.5)].iloc[0]
    stc = table[(table["preset"] == "stc") & (table["target"] == 0.5)].iloc[0]
    assert stc["uplink_factor"] == pytest.approx(fp32["uplink_bytes_mean"] / stc["uplink_bytes_mean"])
    assert stc["uplink_factor"] > 10  # stc really is far below float32 on the real ledger
    text = (real_sweep / "report.md").read_text()
    assert "Runs: 2 completed of 2." in text
    assert f"`seed-cnn` ({NUM_PARAMS:,} parameters)" in text and "flwr 1.42.0" in text  # read from summary.json
