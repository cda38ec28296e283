import pytest

import compression
from compression import PRESET_SPECS, PipelineSpec, SpecError, parse_spec


def test_interface_example_parses():
    s = parse_spec("prune=topk,keep=0.01,quant=ternary,ef=true,coder=golomb")
    assert s.prune == "topk" and s.keep == 0.01 and s.quant == "ternary" and s.error_feedback
    assert str(s) == "prune=topk,keep=0.01,quant=ternary,ef=true"
    assert parse_spec(s.to_string()) == s


def test_mapping_and_aliases():
    a = parse_spec({"prune": "topk", "keep": 0.01, "quant": "ternary", "error_feedback": True})
    b = parse_spec(" prune = topk , keep=1e-2,quant=TERNARY, error-feedback=yes ")
    assert a == b == parse_spec("stc")


@pytest.mark.parametrize("name", list(PRESET_SPECS))
def test_presets_canonical_roundtrip(name):
    s = parse_spec(PRESET_SPECS[name])
    assert parse_spec(name) == s
    assert parse_spec(s.to_string()) == s
    assert parse_spec(s.as_dict()) == s


def test_required_preset_semantics():
    assert parse_spec("fp32").is_identity
    q8 = parse_spec("q8")
    assert (q8.quant, q8.bits, q8.granularity, q8.rounding) == ("uniform", 8, "channel", "nearest")
    assert parse_spec("q4-stochastic").rounding == "stochastic"
    assert parse_spec("sign-ef").ef and parse_spec("topk-1pct-q8-ef").ef and parse_spec("stc").ef
    r = parse_spec("randk-1pct")
    assert r.prune == "randk" and r.rescale and r.keep == 0.01
    f = parse_spec("fedzip-like")
    assert (f.quant, f.clusters, f.entropy) == ("kmeans", 3, "huffman")
    st = parse_spec("structured-50pct")
    assert (st.prune, st.keep, st.norm) == ("structured", 0.5, "l2")


def test_defaults():
    s = parse_spec("")
    assert s == PipelineSpec() and s.to_string() == "prune=none,quant=none"
    assert s.min_numel == 256 and s.coder == "golomb" and not s.zstd


@pytest.mark.parametrize("text, words", [
    ("prune=topk,keep=0.01,bogus=1", ["bogus", "allowed keys"]),
    ("prune=magic", ["prune", "topk"]),
    ("quant=uniform,bits=9", ["bits"]),
    ("quant=uniform,bits=1", ["bits", "affine"]),
    ("quant=qsgd,bits=1", ["bits"]),
    ("prune=topk", ["keep", "requires"]),
    ("prune=topk,keep=0", ["keep"]),
    ("prune=topk,keep=1.5", ["keep"]),
    ("prune=topk,keep=nan", ["keep"]),
    ("quant=uniform,rounding=up", ["rounding", "nearest|stochastic"]),
    ("quant=fp16,bits=4", ["bits", "no effect"]),
    ("quant=uniform,block=64", ["block", "no effect"]),
    ("prune=topk,keep=0.1,warmup-rounds=3", ["warmup-rounds", "no effect"]),
    ("quant=uniform,bits=4,bits=5", ["duplicate"]),
    ("ef=maybe", ["ef", "true|false"]),
    ("prune=topk,keep=0.1,importance=nope", ["importance", "magnitude"]),
    ("stcx", ["malformed", "preset"]),
])
def test_spec_errors_name_key(text, words):
    with pytest.raises(SpecError) as e:
        parse_spec(text)
    for w in words:
        assert w in str(e.value)
    assert isinstance(e.value, ValueError)


def test_direct_construction_validated():
    with pytest.raises(SpecError):
        PipelineSpec(prune="topk")
    with pytest.raises(SpecError):
        PipelineSpec(quant="none", bits=4)
    assert PipelineSpec(prune="topk", keep=0.5) == parse_spec("prune=topk,keep=0.5")


def test_registry_lists_stages():
    assert set(compression.STAGES["prune"]) == {"none", "topk", "threshold", "randk", "structured"}
    assert {"uniform", "qsgd", "sign", "ternary", "fp16", "bf16", "kmeans"} <= set(compression.STAGES["quant"])


def test_register_importance(monkeypatch):
    """A registered importance is what top-k ranks by: here the *smallest* magnitudes are kept."""
    import numpy as np
    import torch

    from compression import prune

    monkeypatch.setitem(prune.IMPORTANCE, "smallest", None)  # so that teardown removes the name again
    calls = []

    def smallest_first(x):
        calls.append(x.size)
        return -np.abs(x)

    compression.register_importance("smallest", smallest_first)
    s = parse_spec("prune=topk,keep=0.25,quant=none,min-numel=0,importance=smallest")
    assert s.importance == "smallest"
    x = torch.tensor([0.5, -0.01, 3.0, 0.02, -2.0, 0.9, 0.03, -0.04])
    out = compression.decode(compression.encode({"w": x}, s))["w"]
    assert out.tolist() == pytest.approx([0, -0.01, 0, 0.02, 0, 0, 0, 0])  # 2 of 8, the two smallest |x|
    assert calls == [8]
    default = compression.decode(compression.encode({"w": x}, "prune=topk,keep=0.25,quant=none,min-numel=0"))["w"]
    assert default.tolist() == pytest.approx([0, 0, 3.0, 0, -2.0, 0, 0, 0])  # magnitude keeps the largest
    with pytest.raises(ValueError, match="invalid importance name"):
        compression.register_importance("Not OK", smallest_first)
