"""Reply screening: the per-pipeline size bound holds for real updates, and each rejection tag (crash,
protocol, size, pipeline, payload, examples, norm) comes from the input that must produce it."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

import compression
from fedsqueeze.data import to_input
from fedsqueeze.models import build_model, initial_state
from fedsqueeze.protocol.messages import METRICS, UPDATE, payloads_record
from fedsqueeze.train import state_delta, train
from server.replies import Accepted, Rejected, payload_bound, screen_reply

SHAPES = {k: tuple(v.shape) for k, v in initial_state("seed-cnn", 0).items()}


@pytest.fixture(scope="module")
def real_delta(mnist):
    torch.set_num_threads(1)
    w0 = initial_state("seed-cnn", 0)
    model = build_model("seed-cnn")
    model.load_state_dict(w0)
    x, y = to_input(mnist.train_images[:600]), torch.from_numpy(mnist.train_labels[:600].astype("int64"))
    train(model, x, y, epochs=1, batch_size=10, lr=0.05)
    return state_delta(model.state_dict(), w0)




def _reply(instruction, payload: bytes) -> Message:
    return Message(RecordDict({UPDATE: payloads_record([payload], ["payload"]),
                               METRICS: MetricRecord({"num-examples": 600})}), reply_to=instruction)


@pytest.mark.parametrize("name", sorted(compression.PRESET_SPECS))
def test_real_updates_fit_the_bound_and_are_accepted(name, real_delta, instruction):
    spec = compression.parse_spec(compression.PRESET_SPECS[name])
    bound = payload_bound(spec, SHAPES)
    for rnd in (1, 2, 3):
        payload = compression.encode(real_delta, spec, round=rnd, seed=rnd)
        assert len(payload) <= bound
        result = screen_reply(_reply(instruction, payload), spec, SHAPES, max_payload_bytes=bound, max_examples=60_000)
        assert isinstance(result, Accepted)


def test_oversized_payload_is_rejected_before_decoding(real_delta, instruction):
    spec = compression.parse_spec("stc")
    bound = payload_bound(spec, SHAPES)
    assert bound < 4 * sum(v.numel() for v in real_delta.values())  # much tighter than float32
    bloated = compression.encode(real_delta, compression.parse_spec("fp32"))
    result = screen_reply(_reply(instruction, bloated), spec, SHAPES, max_payload_bytes=bound, max_examples=60_000)
    assert isinstance(result, Rejected) and result.tag == "size"


def test_other_pipeline_and_wrong_shapes_are_rejected(real_delta, instruction):
    stc = compression.parse_spec("stc")
    q8 = compression.encode(real_delta, compression.parse_spec("q8"))
    got = screen_reply(_reply(instruction, q8), stc, SHAPES, max_payload_bytes=10**8, max_examples=60_000)
    assert isinstance(got, Rejected) and got.tag == "pipeline"
    wrong = dict(real_delta, **{"fc.bias": torch.zeros(11)})
    payload = compression.encode(wrong, stc)
    got = screen_reply(_reply(instruction, payload), stc, SHAPES, max_payload_bytes=10**8, max_examples=60_000)
    assert isinstance(got, Rejected) and got.tag == "payload"


# ---------------------------------------------------------------- one test per rejection reason

def _small_update(scale: float = 0.01) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {k: scale * torch.randn(shape, generator=g) for k, shape in SHAPES.items()}


def _screen(msg, spec="stc", *, max_payload_bytes=10**8, max_examples=60_000, max_update_norm=0.0):
    return screen_reply(msg, compression.parse_spec(spec), SHAPES, max_payload_bytes=max_payload_bytes,
                        max_examples=max_examples, max_update_norm=max_update_norm)


def _message(instruction, payloads=None, metrics=None) -> Message:
    content = RecordDict()
    if payloads is not None:
        content[UPDATE] = payloads if isinstance(payloads, ArrayRecord) else payloads_record(payloads, None)
    if metrics is not None:
        content[METRICS] = MetricRecord(metrics)
    return Message(content, reply_to=instruction)


def _assert_rejected(result, tag, reason_part):
    assert isinstance(result, Rejected), result
    assert result.tag == tag, (result.tag, result.reason)
    assert reason_part in result.reason, result.reason
    assert result.node_id == 7 and str(result) == f"{tag}@7"  # the node the instruction went to


def test_valid_reply_is_accepted_with_its_metrics(instruction):
    payload = compression.encode(_small_update(), "stc")
    got = _screen(_message(instruction, [payload], {"num-examples": 321, "train-loss": 0.5, "rel-distortion": 0.25,
                                                    "train-s": 1.5, "encode-s": -1.0}))
    assert isinstance(got, Accepted) and got.node_id == 7 and got.num_examples == 321
    assert got.payload_bytes == len(payload) and got.train_loss == 0.5 and got.rel_distortion == 0.25
    assert got.train_s == 1.5 and got.encode_s == 0.0  # a negative duration is not believed
    assert {k: tuple(v.shape) for k, v in got.update.items()} == SHAPES


def test_crash_is_a_client_error_reply(instruction):
    from flwr.app import Error

    got = _screen(Message(Error(code=2, reason="<class 'InjectedCrash'>:<'boom'>"), reply_to=instruction))
    _assert_rejected(got, "crash", "client error 2")
    assert "boom" in got.reason


@pytest.mark.parametrize("case", ["no-metrics", "no-update", "two-payloads", "float-array", "no-payload"])
def test_protocol_violations(instruction, case):
    import numpy as np
    from flwr.app import Array

    payload = compression.encode(_small_update(), "stc")
    ok_metrics = {"num-examples": 600}
    msg = {
        "no-metrics": lambda: _message(instruction, [payload]),
        "no-update": lambda: _message(instruction, None, ok_metrics),
        "two-payloads": lambda: _message(instruction, [payload, payload], ok_metrics),
        "float-array": lambda: _message(instruction, ArrayRecord({"payload": Array(np.zeros(8, np.float32))}),
                                        ok_metrics),
        "no-payload": lambda: _message(instruction, [], ok_metrics),
    }[case]()
    want = {"no-metrics": "needs records", "no-update": "needs records", "two-payloads": "at most 1",
            "float-array": "not a raw uint8 payload", "no-payload": "expected one payload, got 0"}[case]
    _assert_rejected(_screen(msg), "protocol", want)


def test_size_is_checked_before_decoding(instruction):
    payload = compression.encode(_small_update(), "stc")
    msg = _message(instruction, [payload], {"num-examples": 600})
    _assert_rejected(_screen(msg, max_payload_bytes=len(payload) - 1), "size", f"payload {len(payload)} B")
    assert isinstance(_screen(msg, max_payload_bytes=len(payload)), Accepted)  # the bound itself is allowed


def test_pipeline_other_than_announced(instruction):
    msg = _message(instruction, [compression.encode(_small_update(), "q8")], {"num-examples": 600})
    _assert_rejected(_screen(msg, "stc"), "pipeline", "announced prune=topk")
    assert isinstance(_screen(msg, "q8"), Accepted)


@pytest.mark.parametrize("damage", ["crc", "shapes", "truncated"])
def test_payload_that_does_not_decode(instruction, damage):
    good = compression.encode(_small_update(), "stc")
    payload = {
        "crc": good[:-1] + bytes([good[-1] ^ 1]),
        "shapes": compression.encode({**_small_update(), "fc.bias": torch.zeros(11)}, "stc"),
        "truncated": good[:40],
    }[damage]
    want = {"crc": "CRC", "shapes": "differ from expected", "truncated": ""}[damage]
    _assert_rejected(_screen(_message(instruction, [payload], {"num-examples": 600})), "payload", want)


@pytest.mark.parametrize("metrics", [{"num-examples": 0}, {"num-examples": -5}, {"num-examples": 60_001},
                                     {"num-examples": 600.0}, {}, {"num-examples": [600]}],
                         ids=["zero", "negative", "too-many", "float", "missing", "list"])
def test_examples_out_of_range_or_not_an_int(instruction, metrics):
    payload = compression.encode(_small_update(), "stc")
    _assert_rejected(_screen(_message(instruction, [payload], metrics)), "examples", "num-examples")


def test_examples_bound_is_inclusive(instruction):
    payload = compression.encode(_small_update(), "stc")
    got = _screen(_message(instruction, [payload], {"num-examples": 60_000}))
    assert isinstance(got, Accepted) and got.num_examples == 60_000


def test_norm_above_the_bound(instruction):
    update = {k: torch.zeros(shape) for k, shape in SHAPES.items()}
    update["fc.weight"][0, 0], update["fc.bias"][3] = 3.0, -4.0  # L2 norm exactly 5 over the whole update
    msg = _message(instruction, [compression.encode(update, "fp32")], {"num-examples": 600})
    _assert_rejected(_screen(msg, "fp32", max_update_norm=4.999), "norm", "update norm 5 > bound 4.999")
    assert isinstance(_screen(msg, "fp32", max_update_norm=5.0), Accepted)  # at the bound: accepted
    assert isinstance(_screen(msg, "fp32", max_update_norm=0.0), Accepted)  # 0 = no bound
