"""Exact resume: with ``client-state-dir``, a stopped run continues to the uninterrupted run's ledger.

The in-process harness (tests.federation_harness.DirectGrid) gives every node a fresh
``Context`` per run, exactly as a restarted Flower simulation does, so "resume" here loses
every client's in-memory state: only what the clients saved to disk can bring it back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from simulations.run import CLIENT_STATE_DIR
from client.state_store import ClientStateError, load_state, save_state, state_paths
from tests.federation_harness import VOLATILE, assert_same_ledgers, read_rows, run_direct

# Error feedback on the uplink (client residuals), a lossy delta downlink with catch-ups
# (client broadcast models and versions, server-side per-client catch-up errors): every
# piece of state a resume can lose.
STC_LIKE = {
    "model": "seed-cnn", "seed": 4, "partition": "iid", "num-server-rounds": 5, "fraction-train": 0.3,
    "min-train-nodes": 3, "min-available-nodes": 10, "local-epochs": 1, "batch-size": 50, "lr": 0.05,
    "uplink": "prune=topk,keep=0.05,quant=ternary,ef=true", "downlink": "prune=topk,keep=0.05,quant=ternary,ef=true",
    "downlink-mode": "delta", "downlink-catchup": "prune=topk,keep=0.1,quant=ternary",
}
NODES = 10


def _config(state_dir, **extra):
    return {**STC_LIKE, "client-state-dir": str(state_dir), **extra}


@pytest.fixture
def state_dir(tmp_path_factory):
    # mktemp numbers its folders (cs0, cs1, ...): the same length for every run, and the
    # instruction carries the folder's path, so wire bytes compare exactly
    return tmp_path_factory.mktemp("cs")


@pytest.fixture
def whole(stc_like_whole):
    return stc_like_whole  # tests/conftest.py: run once a session


def _assert_same(a, b, jitter=0):
    """Equal ledgers; ``jitter``: wire bytes a message may differ by (state folders of other path lengths)."""
    assert_same_ledgers(read_rows(a), read_rows(b), envelope_jitter=jitter)
    ca, cb = read_rows(a, "clients.csv"), read_rows(b, "clients.csv")
    assert len(ca) == len(cb)
    wire = {"downlink_bytes", "uplink_bytes"}
    for ra, rb in zip(ca, cb):  # every client's payload bytes, versions and status; not its wall time
        assert {k: v for k, v in ra.items() if k not in VOLATILE | wire} == \
            {k: v for k, v in rb.items() if k not in VOLATILE | wire}
        assert all(abs(int(ra[k]) - int(rb[k])) <= jitter for k in wire)


def test_resumed_run_equals_the_uninterrupted_one(tmp_path, whole, state_dir):
    a, summary_a = whole
    cut = tmp_path / "cut"
    run_direct(_config(state_dir, **{"num-server-rounds": 2}), cut, NODES)
    summary_b, _ = run_direct(_config(state_dir, resume=True), cut, NODES)
    assert summary_b["resumed_at_round"] == 2
    _assert_same(a, cut)
    for key in ("cum_uplink_payload_bytes", "cum_downlink_payload_bytes", "final_accuracy"):
        assert summary_a[key] == summary_b[key], key


def test_a_round_lost_in_flight_is_redone_from_the_state_before_it(tmp_path, whole, state_dir):
    """Clients that trained in a round the server never checkpointed must not use that round's state."""
    a, _ = whole
    cut = tmp_path / "lost"
    run_direct(_config(state_dir, **{"num-server-rounds": 2}), cut, NODES)
    saved_ckpt = tmp_path / "ckpt-round2"
    shutil.copytree(cut / "checkpoint", saved_ckpt)
    run_direct(_config(state_dir, **{"num-server-rounds": 3}, resume=True), cut, NODES)
    (states,) = state_dir.iterdir()
    rounds = [load_state(states, int(p.name[1:].split(".")[0]), before_round=99) for p in states.glob("p*.npz")]
    assert any(meta["version"] == 3 for _, meta in filter(None, rounds))  # some clients saved round 3
    shutil.rmtree(cut / "checkpoint")
    shutil.copytree(saved_ckpt, cut / "checkpoint")  # the server died before checkpointing round 3
    run_direct(_config(state_dir, resume=True), cut, NODES)
    _assert_same(a, cut)


def test_without_client_state_dir_a_resume_still_runs_but_drifts(tmp_path, whole):
    a, _ = whole
    cut = tmp_path / "cut"
    config = {k: v for k, v in STC_LIKE.items()}
    run_direct({**config, "num-server-rounds": 2}, cut, NODES)
    run_direct({**config, "resume": True}, cut, NODES)
    ra, rb = read_rows(a), read_rows(cut)
    assert [r["uplink_payload_bytes"] for r in ra[:3]] == [r["uplink_payload_bytes"] for r in rb[:3]]
    # round 3 onwards: residuals restarted from zero, every client got the model again from version 0
    drifted = ("test_accuracy", "uplink_payload_bytes", "downlink_payload_bytes")
    assert [[r[k] for k in drifted] for r in ra[3:]] != [[r[k] for k in drifted] for r in rb[3:]]


# ------------------------------------------------------------------ the store itself

def _groups(x: float):
    return {"residual": {"w": np.full(3, x, np.float32)}, "broadcast": None}


def test_store_keeps_the_newest_state_before_the_round(tmp_path):
    assert load_state(tmp_path, 7, before_round=9) is None
    save_state(tmp_path, 7, 2, _groups(2.0), {"version": 2})
    save_state(tmp_path, 7, 5, _groups(5.0), {"version": 5})
    groups, meta = load_state(tmp_path, 7, before_round=6)
    assert meta == {"version": 5} and groups["residual"]["w"].tolist() == [5.0] * 3 and "broadcast" not in groups
    groups, meta = load_state(tmp_path, 7, before_round=5)  # round 5 was lost: the one before it
    assert meta == {"version": 2} and groups["residual"]["w"].tolist() == [2.0] * 3
    assert load_state(tmp_path, 7, before_round=2) is None


def test_store_rejects_damaged_or_foreign_files(tmp_path):
    save_state(tmp_path, 1, 1, _groups(1.0), {"version": 1})
    latest, _ = state_paths(tmp_path, 1)
    shutil.copy(latest, state_paths(tmp_path, 2)[0])
    with pytest.raises(ClientStateError, match="saved by partition 1"):
        load_state(tmp_path, 2, before_round=3)
    latest.write_bytes(latest.read_bytes()[:40])
    with pytest.raises(ClientStateError, match="unreadable client state"):
        load_state(tmp_path, 1, before_round=3)


# ------------------------------------------------------------------ the sweep continues exactly

def _sweep_runner(rounds_before_interrupt: int | None = None):
    """An in-process runner that, like ``simulations.run``, gives the clients ``<out>/client-state``."""
    calls = []

    def runner(config, out_dir, *, num_supernodes, quiet=True):
        calls.append(dict(config))
        config = {**config, "client-state-dir": str(Path(out_dir) / CLIENT_STATE_DIR)}
        if rounds_before_interrupt is not None:  # the session ends after this round
            run_direct({**config, "num-server-rounds": rounds_before_interrupt}, Path(out_dir), num_supernodes)
            summary = Path(out_dir) / "summary.json"  # as a killed run leaves it: still running
            summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "running"}))
            raise KeyboardInterrupt
        return run_direct(config, Path(out_dir), num_supernodes)[0]

    runner.calls = calls
    return runner


def test_an_interrupted_sweep_run_continues_exactly_from_its_checkpoint(tmp_path, whole):
    from simulations import sweep as sw

    a, _ = whole
    overrides = {k: v for k, v in STC_LIKE.items() if k not in ("seed", "partition")}
    spec = sw.parse_sweep({"name": "exact", "presets": ["stc"], "seeds": [STC_LIKE["seed"]], "num-supernodes": NODES,
                           "overrides": overrides, "partitions": [{"label": "iid", "partition": "iid"}]})
    (run,) = sw.expand(spec)
    first = _sweep_runner(rounds_before_interrupt=2)
    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(spec, tmp_path, runner=first, progress_interval=None, echo=lambda _: None)
    run_dir = tmp_path / "runs" / run.id
    assert sw.run_state(run_dir, run).status == "interrupted" and sw.resumable(run_dir)

    second, lines = _sweep_runner(), []
    result = sw.run_sweep(spec, tmp_path, runner=second, progress_interval=None, echo=lines.append)
    assert result.executed == 1 and not result.failed
    assert second.calls[0]["resume"] is True and any("continuing exactly" in line for line in lines)
    assert sw.run_state(run_dir, run).status == "completed"  # resume=True does not make the result stale
    # rounds 1-2 from the first session, 3-5 from the second: the uninterrupted run, payload byte for byte
    _assert_same(a, run_dir, jitter=len(str(run_dir / CLIENT_STATE_DIR)) + 64)


def test_without_saved_client_state_an_interrupted_run_starts_again(tmp_path):
    from simulations import sweep as sw

    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text("{}")
    assert not sw.resumable(tmp_path)  # a continuation would drift: start again
    (tmp_path / CLIENT_STATE_DIR).mkdir()
    assert sw.resumable(tmp_path)
