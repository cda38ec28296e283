"""Reply screening: the per-pipeline size bound holds for real updates and stops oversized payloads."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Message, MetricRecord, RecordDict

import compression
from fedsqueeze.data import to_input
from fedsqueeze.models import build_model, initial_state
from fedsqueeze.train import state_delta, train
from server.protocol import METRICS, UPDATE, payloads_record
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
