"""The downlink as currently documented (server/downlink.py, client.local_round.received_model).

``full`` mode: one encoded model for everyone. ``delta`` mode: a history of
encoded deltas (server error feedback), a version per node, chains
``base_version -> target_version``, and the float32 model (``base_version
= -1``) when a node failed or its chain would cost more than float32.

These tests pin that behaviour so that the planned rewrite (catch-up instead
of chains) changes them deliberately; everything about versions and chains is
in this file.
"""

from __future__ import annotations

import pytest
import torch

import compression
from client.local_round import ClientState, StaleBroadcast, received_model
from fedsqueeze.protocol.instructions import FULL_MODEL, TrainInstruction
from fedsqueeze.models import initial_state
from server.downlink import Broadcaster

MODEL, SEED = "seed-cnn", 3
W0 = initial_state(MODEL, SEED)
SHAPES = {k: tuple(v.shape) for k, v in W0.items()}
FP32_LEN = len(compression.encode(W0, "fp32"))


def weights_at(r: int) -> dict[str, torch.Tensor]:
    """A global model that drifts away from W0 round by round (deterministic)."""
    g = torch.Generator().manual_seed(100 + r)
    return {k: v + 0.02 * r * torch.randn(v.shape, generator=g) for k, v in W0.items()}


def broadcaster(mode: str = "delta", spec: str = "stc") -> Broadcaster:
    return Broadcaster(mode, compression.parse_spec(spec), SEED, {k: v.clone() for k, v in W0.items()})


def snapshot(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in t.items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def instruction(base: int, target: int, mode: str = "delta") -> TrainInstruction:
    return TrainInstruction(round=1, seed=SEED, model=MODEL, partition="iid", dirichlet_alpha=0.5,
                            shards_per_client=2, local_epochs=1, batch_size=10, lr=0.05, momentum=0.0,
                            weight_decay=0.0, client_threads=1, data_dir="", uplink="fp32", downlink_mode=mode,
                            base_version=base, target_version=target)


# ---------------------------------------------------------------- server side

def test_full_mode_sends_everyone_the_encoded_model_and_keeps_no_versions():
    b = broadcaster("full", "q8")
    w = weights_at(1)
    b.advance(w, 1)
    bc = b.for_node(5)
    assert bc.payloads == [compression.encode(w, "q8", round=1, seed=SEED)]
    assert bc.base_version == bc.target_version == FULL_MODEL
    assert same(b.broadcast, compression.decode(bc.payloads[0]))  # what clients decode, lossy
    assert not same(b.broadcast, w)
    assert b.for_node(6).payloads[0] is bc.payloads[0]  # one payload shared by every message
    b.confirm(5, False)
    b.confirm(6, True)
    assert b.node_version == {} and b.history == [] and b.version == 0


def test_delta_history_versions_and_server_error_feedback():
    b = broadcaster()
    assert b.version == 0
    before = snapshot(b.broadcast)
    for r in (1, 2, 3):
        w = weights_at(r)
        b.advance(w, r)
        assert b.version == r == len(b.history)
        # the payload compresses what the clients' model still lacks, w - b (seeded by seed + round)...
        residual = {k: w[k] - before[k] for k in w}
        assert b.history[-1] == compression.encode(residual, "stc", round=r, seed=SEED + r)
        # ...and b advances by exactly what the clients decode
        decoded = compression.decode(b.history[-1])
        assert same(b.broadcast, {k: before[k] + decoded[k] for k in before})
        before = snapshot(b.broadcast)


def test_error_feedback_brings_the_broadcast_model_to_a_fixed_target():
    b = broadcaster(spec="prune=topk,keep=0.25,quant=none")
    w = weights_at(5)
    gaps = []
    for r in range(1, 6):
        b.advance(w, r)
        gaps.append(sum(float((w[k] - b.broadcast[k]).norm() ** 2) for k in w) ** 0.5)
    assert gaps[0] > gaps[1] > gaps[2] > 0
    assert gaps[3] == gaps[4] == 0.0  # 4 rounds of 25 % carry every coordinate over, exactly


def test_new_node_gets_the_whole_chain_from_version_0():
    b = broadcaster()
    for r in (1, 2):
        b.advance(weights_at(r), r)
    bc = b.for_node(7)
    assert (bc.base_version, bc.target_version) == (0, 2)
    assert bc.payloads == b.history and bc.payloads is not b.history  # a copy: later advances don't leak in


def test_confirmed_node_gets_only_the_rest_of_the_chain():
    b = broadcaster()
    b.advance(weights_at(1), 1)
    b.for_node(7)
    b.confirm(7, True)
    assert b.node_version[7] == 1
    b.advance(weights_at(2), 2)
    b.advance(weights_at(3), 3)
    bc = b.for_node(7)
    assert (bc.base_version, bc.target_version) == (1, 3) and bc.payloads == b.history[1:3]


def test_failed_node_gets_the_float32_model_then_chains_again():
    b = broadcaster()
    b.advance(weights_at(1), 1)
    b.confirm(7, False)
    assert b.node_version[7] == -1
    b.advance(weights_at(2), 2)
    bc = b.for_node(7)
    assert (bc.base_version, bc.target_version) == (FULL_MODEL, 2) and len(bc.payloads) == 1
    assert compression.peek_spec(bc.payloads[0]) == compression.parse_spec("fp32")
    assert same(compression.decode(bc.payloads[0]), b.broadcast)  # lossless: exactly version 2
    b.confirm(7, True)
    b.advance(weights_at(3), 3)
    bc = b.for_node(7)
    assert (bc.base_version, bc.target_version) == (2, 3) and bc.payloads == [b.history[2]]


def test_float32_fallback_is_rebuilt_after_every_advance():
    b = broadcaster()
    b.confirm(7, False)
    b.advance(weights_at(1), 1)
    first = b.for_node(7).payloads[0]
    b.advance(weights_at(2), 2)
    second = b.for_node(7).payloads[0]
    assert first != second and same(compression.decode(second), b.broadcast)


def test_chain_dearer_than_float32_falls_back_to_the_full_model():
    # fp16 deltas: one costs about half a float32 model, three cost more than one
    b = broadcaster(spec="fp16")
    b.advance(weights_at(1), 1)
    one = b.for_node(7)
    assert (one.base_version, one.target_version) == (0, 1) and sum(map(len, one.payloads)) <= FP32_LEN
    b.confirm(8, True)  # node 8 holds version 1
    for r in (2, 3):
        b.advance(weights_at(r), r)
    assert sum(map(len, b.history)) > FP32_LEN
    new = b.for_node(7)
    assert (new.base_version, new.target_version) == (FULL_MODEL, 3)
    assert len(new.payloads[0]) == FP32_LEN and same(compression.decode(new.payloads[0]), b.broadcast)
    assert sum(map(len, b.history[1:])) > FP32_LEN  # two fp16 deltas + headers: also dearer
    assert b.for_node(8).base_version == FULL_MODEL
    b.confirm(9, True)  # version 3
    b.advance(weights_at(4), 4)
    assert (b.for_node(9).base_version, b.for_node(9).target_version) == (3, 4)


def test_no_message_costs_more_than_the_float32_model():
    b = broadcaster(spec="fp16")
    for r in range(1, 6):
        b.advance(weights_at(r), r)
        for node in range(4):
            assert sum(map(len, b.for_node(node).payloads)) <= FP32_LEN
        b.confirm(r % 4, r % 3 != 0)


# ---------------------------------------------------------------- client side

@pytest.mark.parametrize("spec", ["stc", "fp16", "q8"])
def test_client_reconstructs_the_broadcast_model_exactly(spec):
    """Two clients follow the broadcaster for 6 rounds; one misses rounds. Every received model equals b."""
    b = broadcaster(spec=spec)
    states = {1: ClientState(), 2: ClientState()}
    for r in range(1, 7):
        b.advance(weights_at(r), r)
        for node, state in states.items():
            bc = b.for_node(node)
            if node == 2 and r in (2, 3):  # the node crashes before replying: nothing applied, nothing kept
                b.confirm(node, False)
                continue
            model, new_state, _ = received_model(instruction(bc.base_version, bc.target_version), bc.payloads, state)
            assert same(model, b.broadcast), (spec, r, node)
            assert new_state.version == b.version and same(new_state.broadcast, b.broadcast)
            assert new_state.broadcast["fc.weight"] is not model["fc.weight"]  # training must not alter it
            states[node] = new_state
            b.confirm(node, True)


def test_stale_or_missing_broadcast_model_is_refused():
    b = broadcaster()
    b.advance(weights_at(1), 1)
    b.advance(weights_at(2), 2)
    b.confirm(7, True)
    b.advance(weights_at(3), 3)
    bc = b.for_node(7)  # chain 2 -> 3
    assert bc.base_version == 2
    with pytest.raises(StaleBroadcast, match="holds version 1, chain starts at 2"):
        received_model(instruction(2, 3), bc.payloads, ClientState(None, snapshot(W0), 1))
    with pytest.raises(StaleBroadcast, match="holds version -1"):
        received_model(instruction(2, 3), bc.payloads, ClientState())  # a node that lost its state
    # version 0 needs no stored model: every client rebuilds the seeded initial model
    model, state, _ = received_model(instruction(0, 3), b.history, ClientState(None, snapshot(W0), 1))
    assert same(model, b.broadcast) and state.version == 3


def test_chain_length_must_match_the_announced_versions():
    b = broadcaster()
    for r in (1, 2, 3):
        b.advance(weights_at(r), r)
    with pytest.raises(compression.PayloadError, match="2 payloads for versions 0->3"):
        received_model(instruction(0, 3), b.history[:2], ClientState())
    with pytest.raises(compression.PayloadError, match="2 payloads for versions 0->1"):
        received_model(instruction(0, 1), b.history[:2], ClientState())
    full = compression.encode(b.broadcast, "fp32")
    with pytest.raises(compression.PayloadError, match="a full model is 1 payload"):
        received_model(instruction(FULL_MODEL, 3), [full, full], ClientState())


def test_full_model_payload_in_each_mode():
    w = weights_at(2)
    payload = compression.encode(w, "fp32")
    old = ClientState(residual={"x": torch.ones(1)}, broadcast=snapshot(W0), version=1)
    model, state, _ = received_model(instruction(FULL_MODEL, FULL_MODEL, mode="full"), [payload], old)
    assert same(model, w) and state is old  # full mode keeps nothing
    model, state, _ = received_model(instruction(FULL_MODEL, 4), [payload], old)
    assert same(model, w) and state.version == 4 and same(state.broadcast, w)
    assert state.residual is old.residual  # the uplink residual is not the downlink's business


def test_payload_for_another_model_is_refused():
    other = {k: v for k, v in W0.items() if k != "fc.bias"}
    with pytest.raises(compression.PayloadError, match="differ from expected"):
        received_model(instruction(FULL_MODEL, 1), [compression.encode(other, "fp32")], ClientState())


def test_a_context_coded_uplink_gets_the_support_of_the_received_deltas():
    from dataclasses import replace

    from fedsqueeze.protocol.reference import uplink_reference

    b = broadcaster()
    for r in (1, 2, 3):
        b.advance(weights_at(r), r)
    context = "prune=topk,keep=0.1,quant=ternary,coder=context"
    got = received_model(replace(instruction(0, 3), uplink=context), b.history, ClientState()).reference
    # by hand: where any of the three deltas is non-zero
    nonzero = {k: sum(compression.decode(p)[k].abs() for p in b.history).reshape(-1) != 0 for k in SHAPES}
    assert {k: v.tolist() for k, v in got.items()} == {k: torch.nonzero(m).flatten().tolist() for k, m in nonzero.items()}
    assert sum(map(len, got.values())) > 0
    # the server's side of the same rule, from the payloads it sent
    server = uplink_reference(0, [compression.support(compression.decode(p)) for p in b.history])
    assert {k: v.tolist() for k, v in server.items()} == {k: v.tolist() for k, v in got.items()}
    full = compression.encode(b.broadcast, "fp32")
    assert received_model(replace(instruction(FULL_MODEL, 3), uplink=context), [full], ClientState()).reference == {}
    assert received_model(instruction(0, 3), b.history, ClientState()).reference is None  # other coders: none
