"""Downlink catch-up: one accumulated update for a returning client, with per-client error feedback."""

from __future__ import annotations

import pytest
import torch

import compression
from client.local_round import ClientState, StaleBroadcast, received_model
from fedsqueeze.protocol.instructions import TrainInstruction
from server.downlink import CATCHUP, CHAIN, FULL, Broadcaster

SHAPES = {"w": (200, 100), "b": (200,)}
CATCHUP_SPEC = "prune=topk,keep=0.03,quant=ternary,coder=golomb"


def walk(rounds: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Global models w_0..w_rounds: a seeded random walk."""
    gen = torch.Generator().manual_seed(seed)
    w = {k: torch.randn(s, generator=gen) for k, s in SHAPES.items()}
    out = [{k: v.clone() for k, v in w.items()}]
    for _ in range(rounds):
        w = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in w.items()}
        out.append({k: v.clone() for k, v in w.items()})
    return out


def broadcaster(catchup: str | None = CATCHUP_SPEC, w0=None) -> Broadcaster:
    w0 = w0 if w0 is not None else walk(0)[0]
    return Broadcaster("delta", compression.parse_spec("stc"), 0, {k: v.clone() for k, v in w0.items()},
                       catchup=compression.parse_spec(catchup) if catchup else None)


def apply(held: dict[str, torch.Tensor], payloads: list[bytes]) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in held.items()}
    for p in payloads:
        for k, v in compression.decode(p).items():
            out[k] += v
    return out


def test_returning_client_gets_one_cheaper_payload_and_model_plus_error_is_the_broadcast():
    ws = walk(8)
    bc = broadcaster(w0=ws[0])
    held = {k: v.clone() for k, v in ws[0].items()}  # version 0: every client can rebuild it
    bc.advance(ws[1], 1)
    first = bc.for_node(7)
    assert first.kind == CHAIN and (first.base_version, first.target_version) == (0, 1)  # 1 round: chain is cheaper
    held = apply(held, first.payloads)
    bc.confirm(7, True)
    assert 7 not in bc.node_error  # a chain is exact
    for r in range(2, 8):  # node 7 misses rounds 2..7
        bc.advance(ws[r], r)
    got = bc.for_node(7)
    chain_bytes = sum(map(len, bc.history[1:]))
    assert got.kind == CATCHUP and len(got.payloads) == 1 and (got.base_version, got.target_version) == (1, 7)
    assert len(got.payloads[0]) < chain_bytes / 1.5
    held = apply(held, got.payloads)
    bc.confirm(7, True)
    # invariant: what the client holds + its catch-up error == the broadcast model (nothing is lost)
    err = bc.node_error[7]
    for k in SHAPES:
        torch.testing.assert_close(held[k] + err[k], bc.broadcast[k], rtol=0, atol=1e-5)
    # a second catch-up folds the error in, and the invariant still holds
    for r in range(8, 12):
        bc.advance(ws[min(r, 8)] if r <= 8 else {k: v * 1.01 for k, v in ws[8].items()}, r)
    again = bc.for_node(7)
    assert again.kind == CATCHUP
    held = apply(held, again.payloads)
    bc.confirm(7, True)
    for k in SHAPES:
        torch.testing.assert_close(held[k] + bc.node_error[7][k], bc.broadcast[k], rtol=0, atol=1e-5)


def test_exact_clients_at_one_version_share_one_payload_and_a_failure_means_the_full_model():
    ws = walk(6)
    bc = broadcaster(w0=ws[0])
    for r in range(1, 6):
        bc.advance(ws[r], r)
    a, b = bc.for_node(1), bc.for_node(2)  # both never contacted: version 0, no error
    assert a.kind == b.kind == CATCHUP and a.payloads[0] is b.payloads[0]
    bc.confirm(1, True)
    bc.confirm(2, False)
    assert bc.node_version[2] == -1 and 2 not in bc.node_error and 1 in bc.node_error
    bc.advance(ws[5], 6)
    full = bc.for_node(2)
    assert full.kind == FULL and full.base_version == -1
    bc.confirm(2, True)
    assert 2 not in bc.node_error  # the float32 model is exact


def test_without_a_catchup_codec_the_downlink_is_unchanged():
    ws = walk(4)
    plain, with_codec = broadcaster(None, ws[0]), broadcaster(CATCHUP_SPEC, ws[0])
    for r in range(1, 5):
        plain.advance(ws[r], r)
        with_codec.advance(ws[r], r)
    assert plain.history == with_codec.history  # the per-round deltas do not depend on catch-ups
    got = plain.for_node(3)
    assert got.kind == CHAIN and got.payloads == plain.history and not plain.node_error


def instruction(base: int, target: int, catchup: bool) -> TrainInstruction:
    return TrainInstruction(round=target, seed=0, model="seed-cnn", partition="iid", dirichlet_alpha=0.5,
                            shards_per_client=2, local_epochs=1, batch_size=10, lr=0.05, momentum=0.0,
                            weight_decay=0.0, client_threads=1, data_dir="", uplink="stc", downlink_mode="delta",
                            base_version=base, target_version=target, catchup=catchup)


def test_client_applies_a_catchup_to_the_version_it_holds():
    from fedsqueeze.models import initial_state

    w0 = initial_state("seed-cnn", 0)
    delta = {k: 0.01 * torch.ones_like(v) for k, v in w0.items()}
    payload = compression.encode(delta, "fp32")
    model, state, _ = received_model(instruction(0, 5, True), [payload], ClientState())
    assert state.version == 5
    for k in w0:
        torch.testing.assert_close(model[k], w0[k] + 0.01)
    with pytest.raises(compression.PayloadError, match="catch-up is 1 payload"):
        received_model(instruction(5, 9, True), [payload, payload], state)
    with pytest.raises(StaleBroadcast):
        received_model(instruction(4, 9, True), [payload], state)


def test_catchup_in_a_federation(tmp_path):
    """seed-cnn, 5 nodes, 2 per round: returning clients get catch-ups, the ledger counts them exactly."""
    from tests.federation_harness import SMALL, read_rows, run_direct
    from tests.test_federation import per_round_bytes

    cfg = {**SMALL, "num-server-rounds": 5, "uplink": "stc", "downlink": "stc", "downlink-mode": "delta",
           "downlink-catchup": CATCHUP_SPEC}
    summary, grid = run_direct(cfg, tmp_path)
    rows, clients = read_rows(tmp_path), read_rows(tmp_path, "clients.csv")
    assert summary["status"] == "completed" and all(int(r["clients_failed"]) == 0 for r in rows)
    for row, (down, up) in zip(rows, per_round_bytes(grid)):
        assert int(row["downlink_bytes"]) == down and int(row["uplink_bytes"]) == up
    kinds = {c["downlink_kind"] for c in clients}
    assert CATCHUP in kinds, kinds
    for c in clients:
        if c["downlink_kind"] == CATCHUP:  # one payload spanning every missed version
            assert int(c["target_version"]) - int(c["base_version"]) >= 2
    assert float(rows[-1]["test_accuracy"]) > float(rows[0]["test_accuracy"]) + 0.3


def test_union_catchup_of_the_bundled_preset_is_nearly_exact_and_far_below_the_chain():
    """stc-p400-union: the whole support of the missed deltas, 8-level k-means values.

    Consecutive sparse deltas with server error feedback overlap, so their union costs less than
    the chain; 8 levels fit the few distinct sums of per-round ternary values.
    """
    from fedsqueeze.config import load_preset

    spec = load_preset("stc-p400-union")["downlink-catchup"]
    ws = walk(21)
    bc = broadcaster(spec, w0=ws[0])
    bc.advance(ws[1], 1)
    held = apply(ws[0], bc.for_node(7).payloads)
    bc.confirm(7, True)
    for r in range(2, 22):  # node 7 misses 20 rounds
        bc.advance(ws[r], r)
    got = bc.for_node(7)
    chain_bytes = sum(map(len, bc.history[1:]))
    assert got.kind == CATCHUP and len(got.payloads[0]) * 3 < chain_bytes
    missed = {k: bc.broadcast[k] - held[k] for k in SHAPES}
    held = apply(held, got.payloads)
    bc.confirm(7, True)
    left = sum(float(((bc.broadcast[k] - held[k]) ** 2).sum()) for k in SHAPES)
    assert left < 0.02 * sum(float((missed[k] ** 2).sum()) for k in SHAPES)
    for k in SHAPES:  # what it leaves is its error, sent with its next catch-up
        torch.testing.assert_close(held[k] + bc.node_error[7][k], bc.broadcast[k], rtol=0, atol=1e-5)


def test_p1000_union_preset_sparsifies_every_tensor_and_halves_the_p400_message():
    """stc-p1000-union: top 1/1000 over the whole McMahan CNN, biases included (min-numel=0), compact header.

    No tensor travels as raw float32, exactly ceil(n/1000) values are kept across the model,
    the message is well under half of stc-p400-union's on the same update, and error feedback
    loses nothing: compensated update == decoded + residual.
    """
    import math

    from compression.wire import Reader, read_header, unseal
    from fedsqueeze.config import load_preset
    from fedsqueeze.models import initial_state

    shapes = {k: tuple(v.shape) for k, v in initial_state("mcmahan-cnn", 0).items()}
    gen = torch.Generator().manual_seed(3)
    update = {k: torch.randn(s, generator=gen) * (1 + 9 * (len(s) == 1)) for k, s in shapes.items()}
    spec = load_preset("stc-p1000-union")["uplink"]
    payload, residual, _ = compression.encode_with_feedback(update, None, spec, round=1, seed=0)
    decoded = compression.decode(payload, expected=shapes)
    n = sum(math.prod(s) for s in shapes.values())
    assert sum(int((v != 0).sum()) for v in decoded.values()) == math.ceil(n / 1000)
    assert all(float(decoded[k].abs().sum()) > 0 for k in shapes if len(shapes[k]) == 1)  # large biases get in
    r = Reader(unseal(payload))
    _, infos = read_header(r, n, shapes)
    body = Reader(r.take_all())
    layouts = [body.section(i.name).u8() for i in infos]
    assert layouts == [compression.codec.SPARSE] * len(shapes)
    assert compression.peek_spec(payload).header == "compact"  # the tensor table travels as a digest
    p400, _ = compression.encode_with_report(update, load_preset("stc-p400-union")["uplink"], round=1, seed=0)
    assert 2 * len(payload) < len(p400)
    for k in shapes:
        torch.testing.assert_close(decoded[k] + residual[k], update[k], rtol=0, atol=1e-5)
