"""Uplinks coded with coder=context: both sides derive the same reference, the model is unchanged."""

import pytest

import compression
from fedsqueeze.config import ConfigError, RunConfig, load_preset
from tests.federation_harness import SMALL, read_rows, run_direct

GOLOMB = "prune=topk,keep=0.01,quant=ternary,ef=true,coder=golomb"
CONTEXT = GOLOMB.replace("golomb", "context")
DELTA = {"downlink": GOLOMB, "downlink-mode": "delta",
         "downlink-catchup": "prune=threshold,threshold=1e-12,quant=kmeans,clusters=8,entropy=huffman,coder=golomb"}


def test_a_context_coded_uplink_changes_bytes_only(tmp_path):
    rows = {}
    for name, uplink in (("golomb", GOLOMB), ("context", CONTEXT)):
        summary, _ = run_direct({**SMALL, **DELTA, "num-server-rounds": 4, "uplink": uplink}, tmp_path / name)
        assert summary["status"] == "completed"
        rows[name] = read_rows(tmp_path / name)
    gol, ctx = rows["golomb"], rows["context"]
    # the server decoded every reply (same reference on both sides) to the same updates
    assert [r["test_accuracy"] for r in ctx] == [r["test_accuracy"] for r in gol]
    assert all(r["failures"] == "" for r in ctx) and [r["clients_ok"] for r in ctx] == [r["clients_ok"] for r in gol]
    assert float(ctx[-1]["test_accuracy"]) > float(ctx[0]["test_accuracy"]) + 0.2
    # round 1 starts from the seeded model (empty reference); later rounds code against the deltas received
    for g, c in zip(gol[2:], ctx[2:]):
        assert int(c["uplink_payload_bytes"]) < int(g["uplink_payload_bytes"])


@pytest.mark.parametrize("overrides, key", [
    ({"downlink": CONTEXT, **{k: v for k, v in DELTA.items() if k != "downlink"}}, "downlink"),
    ({**DELTA, "downlink-catchup": "prune=threshold,threshold=1e-12,quant=kmeans,coder=context"}, "downlink-catchup"),
    ({"uplink": CONTEXT, "downlink-mode": "full"}, "uplink"),
])
def test_context_coding_is_refused_where_there_is_no_reference(overrides, key):
    with pytest.raises(ConfigError, match=key):
        RunConfig.from_mapping({**SMALL, **overrides})


def test_stc_p400_union_ctx_is_stc_p400_union_but_for_the_uplink_code():
    ctx, union = load_preset("stc-p400-union-ctx"), load_preset("stc-p400-union")
    assert {k: v for k, v in ctx.items() if k not in ("name", "uplink")} == \
        {k: v for k, v in union.items() if k not in ("name", "uplink")}
    up_ctx, up_union = compression.parse_spec(ctx["uplink"]), compression.parse_spec(union["uplink"])
    # lossless differences only: the same selection and values reach the server
    assert (up_ctx.coder, up_ctx.header) == ("context", "compact")
    assert up_union.__class__(**{**up_union.__dict__, "coder": "context", "header": "compact"}) == up_ctx


def test_grid_coded_downlink_with_compact_headers_learns_like_golomb(tmp_path):
    grid = {"downlink": GOLOMB.replace("golomb", "grid") + ",header=compact",
            "downlink-catchup": DELTA["downlink-catchup"].replace("golomb", "grid") + ",header=compact"}
    rows = {}
    for name, down in (("golomb", {}), ("grid", grid)):
        summary, _ = run_direct({**SMALL, **DELTA, **down, "num-server-rounds": 4, "uplink": CONTEXT,
                                 "fraction-train": 0.6}, tmp_path / name)
        assert summary["status"] == "completed"
        rows[name] = read_rows(tmp_path / name)
    assert all(r["failures"] == "" for r in rows["grid"])
    # positions and headers are coded losslessly; which way a client catches up may differ with the sizes
    assert float(rows["grid"][-1]["test_accuracy"]) > float(rows["grid"][0]["test_accuracy"]) + 0.2
    assert sum(int(r["downlink_payload_bytes"]) for r in rows["grid"]) < \
        sum(int(r["downlink_payload_bytes"]) for r in rows["golomb"])
