"""reply-format = "packed": a train reply's metrics in 21 bytes in front of the payload, one record on the wire."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Message, MetricRecord, RecordDict

import compression
from fedsqueeze.config import ConfigError, RunConfig, load_preset
from fedsqueeze.protocol.instructions import TrainInstruction
from fedsqueeze.protocol.messages import (METRICS, UPDATE, ProtocolError, pack_reply, packed_record, payloads_record,
                                         record_packed, unpack_reply)
from server.accounting import message_bytes
from server.replies import Accepted, Rejected, reply_payload_bytes, screen_reply
from tests.federation_harness import SMALL, read_rows, run_direct

METRICS_IN = {"num-examples": 600, "train-loss": 0.25, "rel-distortion": 0.5, "train-s": 17.0, "encode-s": 0.125}
SHAPES = {"w": (8, 16), "b": (8,)}
SPEC = compression.parse_spec("prune=topk,keep=0.1,quant=ternary,coder=golomb")


def test_the_frame_is_version_count_and_four_float32_before_the_payload():
    frame = pack_reply(b"\xaa\xbb", METRICS_IN)
    # worked by hand: version 1; 600 = 0x0258 little-endian in 4 bytes; 0.25 = 0x3e800000, 0.5 = 0x3f000000,
    # 17.0 = 0x41880000, 0.125 = 0x3e000000, each little-endian
    assert frame == bytes.fromhex("01" "58020000" "0000803e" "0000003f" "00008841" "0000003e" "aabb")
    assert unpack_reply(frame) == (b"\xaa\xbb", METRICS_IN)


def test_values_travel_as_float32():
    payload, metrics = unpack_reply(pack_reply(b"", {**METRICS_IN, "train-loss": 0.1}))
    assert payload == b"" and metrics["train-loss"] == float(np.float32(0.1)) != 0.1
    _, metrics = unpack_reply(pack_reply(b"x", {**METRICS_IN, "train-loss": float("nan")}))
    assert np.isnan(metrics["train-loss"])  # passed on; the server's screen decides what a NaN costs


@pytest.mark.parametrize("metrics, match", [
    ({k: v for k, v in METRICS_IN.items() if k != "encode-s"}, "exactly the metrics"),
    ({**METRICS_IN, "extra": 1.0}, "exactly the metrics"),
    ({**METRICS_IN, "num-examples": 600.0}, "num-examples"),
    ({**METRICS_IN, "num-examples": -1}, "num-examples"),
    ({**METRICS_IN, "num-examples": 2**32}, "num-examples"),
    ({**METRICS_IN, "train-s": "17"}, "float32"),
    ({**METRICS_IN, "train-loss": 1e300}, "float32"),
])
def test_metrics_that_do_not_fit_the_frame_are_refused(metrics, match):
    with pytest.raises(ValueError, match=match):
        pack_reply(b"", metrics)


def test_every_truncated_header_and_other_versions_are_protocol_errors():
    frame = pack_reply(b"", METRICS_IN)
    for n in range(len(frame)):
        with pytest.raises(ProtocolError, match="shorter"):
            unpack_reply(frame[:n])
    for version in (0, 2, 255):
        with pytest.raises(ProtocolError, match=f"version {version}"):
            unpack_reply(bytes([version]) + frame[1:])


def _update() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}


def _screen(msg: Message, packed: bool) -> Accepted | Rejected:
    return screen_reply(msg, SPEC, SHAPES, max_payload_bytes=10_000, max_examples=60_000, packed=packed)


def test_the_server_reads_a_packed_reply_and_refuses_a_reply_in_the_other_format(instruction):
    payload = compression.encode(_update(), SPEC)
    packed = Message(RecordDict({UPDATE: packed_record(pack_reply(payload, METRICS_IN))}), reply_to=instruction)
    records = Message(RecordDict({UPDATE: payloads_record([payload], ["payload"]), METRICS: MetricRecord(METRICS_IN)}),
                      reply_to=instruction)
    a, b = _screen(packed, True), _screen(records, False)
    assert isinstance(a, Accepted) and isinstance(b, Accepted)
    assert (a.num_examples, a.train_loss, a.rel_distortion, a.train_s, a.encode_s, a.payload_bytes) == \
        (b.num_examples, b.train_loss, b.rel_distortion, b.train_s, b.encode_s, b.payload_bytes) == \
        (600, 0.25, 0.5, 17.0, 0.125, len(payload))
    assert all(torch.equal(a.update[k], b.update[k]) for k in SHAPES)
    assert reply_payload_bytes(packed, True) == reply_payload_bytes(records) == len(payload)
    # one Flower object instead of five (MetricRecord, ArrayRecord, Array, ArrayChunk), 21 bytes of metrics
    assert message_bytes(records) - message_bytes(packed) > 500
    # a records reply where packed ones were announced, or a packed frame in an array record
    for msg in (records, Message(RecordDict({UPDATE: payloads_record([pack_reply(payload, METRICS_IN)], ["payload"])}),
                                 reply_to=instruction)):
        wrong = _screen(msg, True)
        assert isinstance(wrong, Rejected) and wrong.tag == "protocol" and "config record" in wrong.reason
    # a packed reply where records were announced has no metrics record
    wrong = _screen(packed, False)
    assert isinstance(wrong, Rejected) and wrong.tag == "protocol" and "metrics" in wrong.reason
    short = Message(RecordDict({UPDATE: packed_record(b"\x01\x02")}), reply_to=instruction)
    wrong = _screen(short, True)
    assert isinstance(wrong, Rejected) and wrong.tag == "protocol" and "shorter" in wrong.reason
    assert reply_payload_bytes(short, True) == 0
    zero = Message(RecordDict({UPDATE: packed_record(pack_reply(payload, {**METRICS_IN, "num-examples": 0}))}),
                   reply_to=instruction)
    wrong = _screen(zero, True)
    assert isinstance(wrong, Rejected) and wrong.tag == "examples"


def test_a_packed_record_holds_one_bytes_value():
    from flwr.app import ConfigRecord

    assert record_packed(packed_record(b"abc")) == b"abc"
    for bad in (ConfigRecord({"payload": "abc"}), ConfigRecord({"payload": b"a", "x": 1}), ConfigRecord({"p": b"a"}),
                ConfigRecord({})):
        with pytest.raises(ProtocolError, match="one bytes value"):
            record_packed(bad)


def test_the_format_is_announced_only_when_it_is_not_the_default():
    ins = dict(round=1, seed=0, model="seed-cnn", partition="iid", dirichlet_alpha=0.5, shards_per_client=2,
               local_epochs=1, batch_size=10, lr=0.05, momentum=0.0, weight_decay=0.0, client_threads=1,
               data_dir="", uplink="stc", downlink_mode="delta", base_version=0, target_version=0)
    assert "reply-format" not in TrainInstruction(**ins).to_record()  # existing runs keep their message bytes
    record = TrainInstruction(**ins, reply_format="packed").to_record()
    assert record["reply-format"] == "packed"
    assert TrainInstruction.from_record(record).reply_format == "packed"


def test_an_unknown_reply_format_is_a_config_error():
    with pytest.raises(ConfigError, match="reply-format"):
        RunConfig.from_mapping({**SMALL, "reply-format": "msgpack"})


def test_a_packed_federation_learns_the_same_model_with_fewer_bytes_both_ways(tmp_path):
    # one federation packs both directions (tests/test_packed_instruction.py has the instruction's unit tests)
    rows = {}
    for fmt in ("records", "packed"):
        summary, _ = run_direct({**SMALL, "num-server-rounds": 2, "reply-format": fmt, "instruction-format": fmt},
                                tmp_path / fmt)
        assert summary["status"] == "completed"
        rows[fmt] = read_rows(tmp_path / fmt)
    rec, pak = rows["records"], rows["packed"]
    assert all(r["failures"] == "" for r in pak)
    # the metrics do not enter the model: the same updates, the same accuracy, the same payloads
    for key in ("test_accuracy", "clients_ok", "uplink_payload_bytes", "downlink_payload_bytes"):
        assert [r[key] for r in pak] == [r[key] for r in rec], key
    assert rec[0]["round"] == "0"  # the handshake is not a train reply: its format does not change
    assert abs(int(rec[0]["uplink_bytes"]) - int(pak[0]["uplink_bytes"])) < 20 * int(rec[0]["clients_ok"])
    for r, p in zip(rec[1:], pak[1:]):
        # Flower's envelopes carry random ids, so the wire bytes are compared with a margin
        assert int(r["uplink_bytes"]) - int(p["uplink_bytes"]) > 500 * int(p["clients_ok"])
        assert int(r["downlink_bytes"]) - int(p["downlink_bytes"]) > 400 * int(p["clients_sampled"])
        # the client's reported distortion arrives as a float32
        assert float(p["mean_rel_distortion"]) == pytest.approx(float(r["mean_rel_distortion"]), rel=1e-6)
    clients = {fmt: read_rows(tmp_path / fmt, "clients.csv") for fmt in rows}
    assert [c["num_examples"] for c in clients["packed"]] == [c["num_examples"] for c in clients["records"]]


def test_stc_p400_union_ctx_grid_packed_differs_from_its_parent_only_in_the_reply_format():
    packed, parent = load_preset("stc-p400-union-ctx-grid-packed"), load_preset("stc-p400-union-ctx-grid")
    assert packed.pop("reply-format") == "packed" and "reply-format" not in parent
    assert {k: v for k, v in packed.items() if k != "name"} == {k: v for k, v in parent.items() if k != "name"}


def test_hostile_packed_replies_are_accepted_or_rejected_and_never_raise(instruction):
    rng = np.random.default_rng(0)
    frame = pack_reply(compression.encode(_update(), SPEC), METRICS_IN)
    outcomes = set()
    for i in range(400):
        f = bytearray(frame)
        if i % 4 == 0:
            f = f[:int(rng.integers(0, len(f)))]
        elif i % 4 == 1:  # the metrics header: any version, count or float bits
            f[int(rng.integers(0, 21))] = int(rng.integers(0, 256))
        elif i % 4 == 2:
            f = bytearray(rng.bytes(int(rng.integers(0, 80))))
        else:
            f[int(rng.integers(0, len(f)))] ^= 1 << int(rng.integers(0, 8))
        res = _screen(Message(RecordDict({UPDATE: packed_record(bytes(f))}), reply_to=instruction), True)
        if isinstance(res, Accepted):
            assert 0 < res.num_examples <= 60_000 and res.train_s >= 0 and res.encode_s >= 0
            assert all(bool(torch.isfinite(v).all()) for v in res.update.values())
            outcomes.add("Accepted")
        else:
            assert isinstance(res, Rejected), res
            outcomes.add(res.tag)
    assert {"Accepted", "protocol", "examples", "payload"} <= outcomes
