"""Uplinks coded with coder=context: both sides derive the same reference, the model is unchanged."""

import pytest

import compression
from fedsqueeze.config import ConfigError, RunConfig, load_preset
from tests.federation_harness import SMALL

GOLOMB = "prune=topk,keep=0.01,quant=ternary,ef=true,coder=golomb"
CONTEXT = GOLOMB.replace("golomb", "context")
DELTA = {"downlink": GOLOMB, "downlink-mode": "delta",
         "downlink-catchup": "prune=threshold,threshold=1e-12,quant=kmeans,clusters=8,entropy=huffman,coder=golomb"}


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


# A context-coded uplink under a grid-coded, compact-header downlink, in a federation stopped and
# resumed midway (the same accuracy every round as golomb coding, fewer bytes both ways): tests/test_downlink_cost.py::test_a_lossless_federation_resumed_midway_learns_exactly_like_golomb
