"""downlink-cost = "golomb": a lossless position coder changes the bytes sent, never which message a client gets."""

from __future__ import annotations

import pytest
import torch

import compression
from fedsqueeze.config import ConfigError, RunConfig, load_preset
from fedsqueeze.models import initial_state
from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.downlink import Broadcaster
from tests.federation_harness import SMALL

W0 = initial_state("seed-cnn", 3)
DOWN = "prune=topk,keep=0.01,quant=ternary,ef=true"
CATCHUP = "prune=threshold,threshold=1e-12,quant=kmeans,clusters=8,entropy=huffman"


def _weights(r: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + r)
    return {k: v + 0.02 * r * torch.randn(v.shape, generator=g) for k, v in W0.items()}


def _broadcaster(coder: str, cost_coder: str = "") -> Broadcaster:
    extra = f",coder={coder},header=compact" if coder != "golomb" else ""
    return Broadcaster("delta", compression.parse_spec(DOWN + extra), 3, {k: v.clone() for k, v in W0.items()},
                       catchup=compression.parse_spec(CATCHUP + extra), cost_coder=cost_coder)


def _run(b: Broadcaster, rounds: int = 12) -> tuple[list[tuple[int, str, int, int]], int]:
    """Nodes 1-6 take part in a fixed irregular pattern; returns every (round, kind, base, target) and the bytes."""
    choices, sent = [], 0
    for r in range(1, rounds + 1):
        b.advance(_weights(r), r)
        for node in range(1, 7):
            if (r * node) % 5 in (0, 1) or r == 1:
                bc = b.for_node(node)
                choices.append((r, bc.kind, bc.base_version, bc.target_version))
                sent += sum(map(len, bc.payloads))
                b.confirm(node, True)
    return choices, sent


def test_grid_coded_messages_costed_as_golomb_make_the_golomb_choices_with_fewer_bytes():
    golomb, grid = _broadcaster("golomb"), _broadcaster("grid", cost_coder="golomb")
    (want, golomb_bytes), (got, grid_bytes) = _run(golomb), _run(grid)
    assert got == want
    assert {kind for _, kind, _, _ in want} >= {"chain", "catchup"}  # both kinds were chosen
    assert grid_bytes < golomb_bytes
    # and so the same models and the same per-client errors, bit for bit
    assert all(torch.equal(grid.broadcast[k], golomb.broadcast[k]) for k in W0)
    assert grid.node_error.keys() == golomb.node_error.keys()
    assert all(torch.equal(grid.node_error[n][k], golomb.node_error[n][k]) for n in grid.node_error for k in W0)
    # the costs are the golomb broadcasts' sizes
    assert grid.history_costs == [len(p) for p in golomb.history] != [len(p) for p in grid.history]


def test_history_costs_survive_a_checkpoint(tmp_path):
    b = _broadcaster("grid", cost_coder="golomb")
    _run(b, rounds=3)
    ckpt = Checkpoint(round=3, ledger_rows=4, config={"a": 1}, weights=W0, broadcast=b.broadcast,
                      optimizer_state={}, history=b.history, history_costs=b.history_costs)
    save_checkpoint(tmp_path, ckpt)
    back = load_checkpoint(tmp_path, {"a": 1})
    assert back is not None and back.history == b.history and back.history_costs == b.history_costs


@pytest.mark.parametrize("overrides", [
    {"downlink-cost": "grid", "downlink-catchup": CATCHUP},
    {"downlink-cost": "golomb"},  # no catch-up: nothing to choose between but chain and float32
])
def test_downlink_cost_is_refused_where_it_cannot_apply(overrides):
    with pytest.raises(ConfigError, match="downlink-cost"):
        RunConfig.from_mapping({**SMALL, "downlink-mode": "delta", **overrides})


def test_the_fixed_preset_differs_from_the_packed_one_only_in_the_cost():
    fixed, packed = load_preset("stc-p400-union-ctx-grid-packed-fixed"), load_preset("stc-p400-union-ctx-grid-packed")
    assert fixed.pop("downlink-cost") == "golomb" and "downlink-cost" not in packed
    assert {k: v for k, v in fixed.items() if k != "name"} == {k: v for k, v in packed.items() if k != "name"}


def test_a_lossless_federation_resumed_midway_learns_exactly_like_golomb(tmp_path, stc_like_whole):
    """Grid/compact downlink costed as golomb and a context-coded uplink, stopped after round 2 and
    resumed: the uninterrupted golomb run's accuracy and choices, message for message, in fewer bytes.
    (The checkpointed costs keep the choices across the resume; the client builds its uplink
    reference from grid-coded chains and catch-ups.)"""
    from tests.federation_harness import read_rows, run_direct
    from tests.test_exact_resume import NODES, STC_LIKE, _config

    golomb, _ = stc_like_whole
    lossless = {"uplink": STC_LIKE["uplink"] + ",coder=context,header=compact",
                "downlink": STC_LIKE["downlink"] + ",coder=grid,header=compact",
                "downlink-catchup": STC_LIKE["downlink-catchup"] + ",coder=grid,header=compact",
                "downlink-cost": "golomb"}
    cut = tmp_path / "cut"
    run_direct(_config(tmp_path / "cs", **lossless, **{"num-server-rounds": 2}), cut, NODES)
    run_direct(_config(tmp_path / "cs", **lossless, resume=True), cut, NODES)
    a, b = read_rows(golomb), read_rows(cut)
    assert [r["test_accuracy"] for r in a] == [r["test_accuracy"] for r in b]
    assert all(r["failures"] == "" for r in b) and [r["clients_ok"] for r in a] == [r["clients_ok"] for r in b]
    ca, cb = read_rows(golomb, "clients.csv"), read_rows(cut, "clients.csv")
    keys = ("round", "partition_id", "downlink_kind", "base_version", "target_version")
    assert [[r[k] for k in keys] for r in ca] == [[r[k] for k in keys] for r in cb]
    assert {r["downlink_kind"] for r in cb} >= {"chain", "catchup"}
    assert sum(int(r["downlink_payload_bytes"]) for r in b) < sum(int(r["downlink_payload_bytes"]) for r in a)
    # round 1 starts from the seeded model (empty reference); later rounds code against the deltas received
    for ra, rb in zip(a[2:], b[2:]):
        assert int(rb["uplink_payload_bytes"]) < int(ra["uplink_payload_bytes"])
