"""header=compact: the tensor table travels as an 8-byte digest, checked against what the decoder expects."""

import pytest
import torch

import compression
from compression import PayloadError, UpdateError
from compression.wire import COMPACT_VERSION, FORMAT_VERSION, seal
from fedsqueeze.models import initial_state
from tests.compression.test_robustness import check_every_resealed_corruption, check_every_truncation

SPEC = "prune=topk,keep=0.05,quant=ternary,ef=true,min-numel=0"
COMPACT = SPEC + ",header=compact"
# The McMahan CNN's tensor table, by hand: u32 count, then per tensor a length byte, the name,
# a dtype byte, an ndim byte and 4 bytes a dim.
CNN = {"conv1.weight": (32, 1, 5, 5), "conv1.bias": (32,), "conv2.weight": (64, 32, 5, 5), "conv2.bias": (64,),
       "fc1.weight": (512, 3136), "fc1.bias": (512,), "fc2.weight": (10, 512), "fc2.bias": (10,)}
CNN_TABLE = 4 + sum(3 + len(name) + 4 * len(shape) for name, shape in CNN.items())


def update(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def test_compact_payload_decodes_to_the_same_tensors_and_is_the_table_minus_its_digest_shorter():
    assert CNN_TABLE == 172
    u = update(CNN)
    full, compact = compression.encode(u, SPEC), compression.encode(u, COMPACT)
    assert compact[4] == COMPACT_VERSION and full[4] == FORMAT_VERSION
    assert len(full) - len(compact) == CNN_TABLE - 8 - len(",header=compact")  # 149 bytes a payload
    a, b = compression.decode(full), compression.decode(compact, expected=CNN)
    assert list(b) == list(CNN) and all(torch.equal(a[k], b[k]) for k in CNN)
    assert compression.peek_spec(compact).header == "compact"  # the spec is still in the header


def test_compact_payload_refuses_a_decoder_that_does_not_say_what_it_expects():
    shapes = {"w": (6, 5), "b": (4,)}
    p = compression.encode(update(shapes), COMPACT)
    with pytest.raises(PayloadError, match="needs the expected tensor names and shapes"):
        compression.decode(p)
    for wrong in ({"w": (5, 6), "b": (4,)}, {"b": (4,), "w": (6, 5)}, {"w": (6, 5), "c": (4,)}, {"w": (6, 5)}):
        with pytest.raises(PayloadError, match="digest mismatch"):
            compression.decode(p, expected=wrong)
    with pytest.raises(PayloadError, match="digest mismatch"):
        compression.read_blocks(p, expected={"w": (30,), "b": (4,)})
    with pytest.raises(PayloadError, match="max_numel"):
        compression.decode(p, expected=shapes, max_numel=20)


def test_version_byte_and_spec_must_agree():
    shapes = {"w": (6, 5)}
    compact, full = compression.encode(update(shapes), COMPACT), compression.encode(update(shapes), SPEC)
    for payload, version in ((compact, FORMAT_VERSION), (full, COMPACT_VERSION)):
        body = bytearray(payload[:-4])
        body[4] = version
        with pytest.raises(PayloadError, match="does not match header="):
            compression.decode(seal(bytes(body)), expected=shapes)


def test_compact_header_needs_float32_tensors():
    with pytest.raises(UpdateError, match="float32"):
        compression.encode({"w": torch.ones(4, dtype=torch.float16)}, COMPACT)


def test_every_truncation_and_corruption_of_a_compact_payload_is_refused_or_decodes_to_the_expected_shapes():
    shapes = {"w": (16, 20), "v": (300,), "b": (3,)}
    p = compression.encode(update(shapes, seed=3), COMPACT)
    check_every_truncation(p)  # without expected: PayloadError for every prefix, whole or not
    check_every_resealed_corruption(p, shapes, expected=shapes)


def test_a_federation_with_compact_headers_learns_identically_with_fewer_bytes(tmp_path):
    from tests.federation_harness import SMALL, read_rows, run_direct

    runs = {}
    for name, spec in (("full", SPEC), ("compact", COMPACT)):
        summary, _ = run_direct({**SMALL, "uplink": spec, "downlink": spec, "downlink-mode": "delta",
                                 "downlink-catchup": "prune=threshold,threshold=1e-12,quant=kmeans,clusters=8,"
                                                     "min-numel=0" + (",header=compact" if name == "compact" else "")},
                                tmp_path / name)
        assert summary["status"] == "completed"
        runs[name] = read_rows(tmp_path / name)
    full, compact = runs["full"], runs["compact"]
    # the decoded updates are the same, so the run learns the same; only the headers shrink
    assert [r["test_accuracy"] for r in full] == [r["test_accuracy"] for r in compact]
    assert float(compact[-1]["test_accuracy"]) > float(compact[0]["test_accuracy"]) + 0.2
    table = 4 + sum(3 + len(k) + 4 * v.dim() for k, v in initial_state("seed-cnn", 0).items())
    saved = table - 8 - len(",header=compact")
    for a, b in zip(full[1:], compact[1:]):
        assert int(a["uplink_payload_bytes"]) - int(b["uplink_payload_bytes"]) == saved * int(a["clients_ok"])
        assert int(b["downlink_payload_bytes"]) < int(a["downlink_payload_bytes"])
