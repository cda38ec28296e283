"""instruction-format = "packed": a train instruction's payloads as one bytes list in its config record."""

from __future__ import annotations

import os

import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedsqueeze.config import ConfigError, RunConfig, load_preset
from fedsqueeze.protocol.instructions import TrainInstruction
from fedsqueeze.protocol.messages import (CONFIG, MASK, MODEL, PAYLOADS, ProtocolError, packed_instruction,
                                         payloads_record, train_content, train_parts)
from server.accounting import message_bytes
from tests.federation_harness import SMALL

INS = TrainInstruction(round=3, seed=0, model="mcmahan-cnn", partition="iid", dirichlet_alpha=0.5, shards_per_client=2,
                       local_epochs=5, batch_size=10, lr=0.05, momentum=0.0, weight_decay=0.0, client_threads=1,
                       data_dir="/data/mnist", uplink="prune=topk,keep=0.0025,quant=ternary,ef=true",
                       downlink_mode="delta", base_version=1, target_version=3)


def test_the_record_is_the_config_plus_a_bytes_list_and_the_mask():
    record = packed_instruction({"round": 3, "lr": 0.05}, [b"ab", b""], mask=b"m")
    assert dict(record) == {"round": 3, "lr": 0.05, "payloads": [b"ab", b""], "mask": b"m"}
    parts = train_parts(RecordDict({CONFIG: record}))
    assert (parts.payloads, parts.mask, parts.config["round"]) == ([b"ab", b""], b"m", 3)
    assert "mask" not in packed_instruction({"round": 3}, [b"ab"])
    assert train_parts(RecordDict({CONFIG: packed_instruction({}, [])})).payloads == []


def test_either_format_gives_the_client_the_same_instruction_and_packed_is_smaller(instruction):
    # `instruction` sets Flower's task identity, which Message needs outside the runtime
    gaps = []
    for k in (1, 2, 3):
        payloads, mask = [os.urandom(9000) for _ in range(k)], os.urandom(300)
        records = RecordDict({CONFIG: ConfigRecord(INS.to_record()), MODEL: payloads_record(payloads),
                              MASK: payloads_record([mask])})
        packed = RecordDict({CONFIG: packed_instruction(INS.to_record(), payloads, mask)})
        for form, built in ((records, train_content(INS.to_record(), payloads, mask)),
                            (packed, train_content(INS.to_record(), payloads, mask, packed=True))):
            assert built.object_id == form.object_id  # what the server sends: the same objects, byte for byte
        a, b = train_parts(records), train_parts(packed)
        assert (a.payloads, a.mask) == (b.payloads, b.mask) == (payloads, mask)
        assert TrainInstruction.from_record(a.config) == TrainInstruction.from_record(b.config) == INS
        gaps.append(message_bytes(Message(records, 5, "train", group_id="3"))
                    - message_bytes(Message(packed, 5, "train", group_id="3")))
    # an ArrayRecord, an Array and a chunk per payload (and the mask's own three) each carry a header
    # and a SHA-256 name; a bytes list carries a length per item
    assert gaps[0] > 600 and gaps[1] - gaps[0] > 250 and gaps[2] - gaps[1] > 250, gaps


def test_a_config_that_uses_the_payload_keys_is_refused():
    for key in (PAYLOADS, MASK):
        with pytest.raises(ValueError, match=key):
            packed_instruction({key: 1}, [b"a"])


@pytest.mark.parametrize("content, match", [
    (RecordDict({MODEL: payloads_record([b"a"])}), "'config' ConfigRecord"),
    (RecordDict({CONFIG: ConfigRecord({"round": 1})}), "'model' ArrayRecord"),
    (RecordDict({CONFIG: ConfigRecord({"payloads": [b"a"]}), MODEL: payloads_record([b"a"])}), "one record"),
    (RecordDict({CONFIG: ConfigRecord({"payloads": b"a"})}), "list of bytes"),
    (RecordDict({CONFIG: ConfigRecord({"payloads": ["a"]})}), "list of bytes"),
    (RecordDict({CONFIG: ConfigRecord({"payloads": [1, 2]})}), "list of bytes"),
    (RecordDict({CONFIG: ConfigRecord({"payloads": [b"a"], "mask": "m"})}), "'mask' must be bytes"),
    (RecordDict({CONFIG: ConfigRecord({"payloads": [b"a"] * 3})}), "at most 2"),
    (RecordDict({CONFIG: ConfigRecord({}), MODEL: payloads_record([b"a"]), MASK: ArrayRecord({})}), "no payload"),
    (RecordDict({CONFIG: ConfigRecord({}), MODEL: ArrayRecord({"p0": Array(dtype="float32", shape=(1,), stype="raw",
                                                                          data=b"abcd")})}), "raw uint8"),
])
def test_a_malformed_instruction_is_a_protocol_error_naming_the_problem(content, match):
    with pytest.raises(ProtocolError, match=match):
        train_parts(content, max_items=2)


def test_the_client_refuses_a_malformed_packed_instruction(instruction):
    from flwr.app import Context

    from client.client_app import train

    bad = Message(RecordDict({CONFIG: ConfigRecord({**INS.to_record(), PAYLOADS: "not a list"})}), 5, "train",
                  group_id="3")
    ctx = Context(run_id=1, node_id=5, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                  run_config={})
    # raised before any training: Flower turns it into an error reply, which the server screens
    with pytest.raises(ProtocolError, match="list of bytes"):
        train(bad, ctx)


def test_an_unknown_instruction_format_is_a_config_error():
    assert RunConfig.from_mapping({**SMALL, "instruction-format": "packed"}).instruction_format == "packed"
    with pytest.raises(ConfigError, match="instruction-format"):
        RunConfig.from_mapping({**SMALL, "instruction-format": "protobuf"})


def test_the_lean_preset_is_the_fixed_one_with_packed_instructions():
    lean, fixed = load_preset("stc-p400-union-lean"), load_preset("stc-p400-union-ctx-grid-packed-fixed")
    assert lean.pop("instruction-format") == "packed" and "instruction-format" not in fixed
    assert {k: v for k, v in lean.items() if k != "name"} == {k: v for k, v in fixed.items() if k != "name"}
