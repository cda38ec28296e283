"""The stage registry: stages and keys registered at run time are parsed, coded, decoded and bounded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import compression
from compression import Key, PayloadError, PruneStage, QuantStage, RegistrationError, SpecError, parse_spec
from compression.registry import KEYS, STAGES


class Halves(QuantStage):
    """Test stage: fp16 values of ``x * scale``, a u32 seed from the encoder's rng in front."""

    name = "halves"
    summary = "test: scaled fp16"
    keys = ("granularity",)
    options = {"scale": Key(float, 1.0, lo=0.0, lo_open=True, doc="multiplier"),
               "tag": Key(str, "a", ("a", "b"), doc="a word")}
    seen: list = []

    def encode(self, x, ctx):
        self.seen.append(ctx)
        seed = int(ctx.rng.integers(1 << 32))
        if ctx.state is not None:
            ctx.state["calls"] = ctx.state.get("calls", np.zeros(1, np.int64)) + 1
        return seed.to_bytes(4, "little") + (x.astype(np.float64) * ctx.spec.get("scale")).astype("<f2").tobytes()

    def decode(self, r, ctx):
        self.seen.append(ctx)
        r.u32("seed")
        raw = np.frombuffer(r.take(2 * ctx.count, "halves"), "<f2").astype(np.float32)
        return raw / np.float32(ctx.spec.get("scale"))


class EveryOther(PruneStage):
    name = "every-other"
    summary = "test: even positions"
    keys = ("coder",)

    def select(self, arrays, ctx):
        return [compression.Selection(1, np.arange(0, a.size, 2, dtype=np.int64)) for a in arrays]


@pytest.fixture
def registered():
    Halves.seen = []
    compression.register_stage(Halves)
    compression.register_stage(EveryOther())
    yield
    compression.unregister_stage("quant", "halves")
    compression.unregister_stage("prune", "every-other")
    assert "scale" not in KEYS and "tag" not in KEYS


def test_stage_registered_at_run_time_is_accepted_and_removed_again(registered):
    s = parse_spec("quant=halves,scale=2,prune=every-other")
    assert (s.prune, s.quant, s.get("scale"), s.get("tag")) == ("every-other", "halves", 2.0, "a")
    assert str(s) == "prune=every-other,quant=halves,scale=2.0" and parse_spec(str(s)) == s
    assert parse_spec({"quant": "halves", "scale": 2.0, "prune": "every-other"}) == s
    assert s.as_dict() == {"prune": "every-other", "quant": "halves", "scale": "2.0"}
    compression.unregister_stage("quant", "halves")
    with pytest.raises(SpecError, match="quant"):
        parse_spec("quant=halves")
    compression.register_stage(Halves)


def test_plugin_keys_follow_builtin_keys_alphabetically(registered):
    s = parse_spec("tag=b,scale=0.5,quant=halves,granularity=channel,ef=true,min-numel=0")
    assert str(s) == "prune=none,quant=halves,granularity=channel,min-numel=0,ef=true,scale=0.5,tag=b"
    assert s.extra == (("scale", 0.5), ("tag", "b"))
    assert parse_spec("quant=halves,tag=a") == parse_spec("quant=halves")  # defaults are not written


@pytest.mark.parametrize("text, words", [
    ("quant=halves,scale=0", ["scale", "> 0.0"]),
    ("quant=halves,tag=c", ["tag", "a|b"]),
    ("quant=fp16,scale=2", ["scale", "no effect"]),
    ("quant=halves,bits=4", ["bits", "no effect"]),
    ("quant=halves,scale=1,scale=2", ["duplicate"]),
])
def test_plugin_key_errors_name_the_key(registered, text, words):
    with pytest.raises(SpecError) as e:
        parse_spec(text)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_value_context_and_roundtrip(registered):
    x = torch.linspace(-1, 1, 600).reshape(20, 30)
    u = {"w": x, "b": torch.ones(10)}
    p = compression.encode(u, "quant=halves,scale=4", round=3, seed=5)
    assert p == compression.encode(u, "quant=halves,scale=4", round=3, seed=5)
    enc = Halves.seen[-1]
    assert (enc.name, enc.shape, enc.count, enc.elements, enc.round, enc.seed) == ("w", (20, 30), 600, None, 3, 5)
    assert not enc.decoding and enc.state is None
    out = compression.decode(p, expected={"w": (20, 30), "b": (10,)})
    assert torch.allclose(out["w"], x, atol=1e-3) and torch.equal(out["b"], u["b"])  # b: raw (min-numel)
    dec = Halves.seen[-1]
    assert dec.decoding and dec.rng is None and dec.shape == (20, 30)
    # sparse: the values of the even positions, with their element indices
    p = compression.encode({"w": x}, "prune=every-other,quant=halves")
    ctx = Halves.seen[-1]
    assert ctx.count == 300 and np.array_equal(ctx.elements, np.arange(0, 600, 2))
    out = compression.decode(p)["w"].reshape(-1)
    assert torch.allclose(out[::2], x.reshape(-1)[::2], atol=1e-3) and not out[1::2].any()


def test_state_is_per_tensor_and_mutated(registered):
    state: dict[str, np.ndarray] = {}
    u = {"w": torch.ones(300), "v": torch.ones(400)}
    for _ in range(2):
        compression.encode_with_feedback(u, None, "quant=halves,ef=true", state=state)
    assert sorted(state) == ["v/calls", "w/calls"] and int(state["w/calls"][0]) == 2
    compression.encode(u, "quant=halves")  # no state given: the stage starts fresh
    assert Halves.seen[-1].state is None


def test_hostile_payloads_of_a_plugin_stage_raise_payload_error(registered):
    p = compression.encode({"w": torch.randn(300)}, "quant=halves")
    body = p[:-4]
    for cut in range(len(body)):
        with pytest.raises(PayloadError):
            compression.decode(compression.wire.seal(body[:cut]))


def test_decoder_returning_the_wrong_length_is_a_payload_error(registered, monkeypatch):
    p = compression.encode({"w": torch.randn(300)}, "quant=halves")
    monkeypatch.setattr(Halves, "decode", lambda self, r, ctx: (r.take_all(), np.zeros(3, np.float32))[1])
    with pytest.raises(PayloadError, match="quant=halves"):
        compression.decode(p)


def test_bad_selection_names_the_stage(registered, monkeypatch):
    monkeypatch.setattr(EveryOther, "select", lambda self, arrays, ctx: [
        compression.Selection(1, np.array([4, 2], np.int64)) for _ in arrays])
    with pytest.raises(ValueError, match="prune=every-other"):
        compression.encode({"w": torch.randn(300)}, "prune=every-other")


def test_declared_payload_bound_raises_the_server_bound(registered, monkeypatch):
    from server.replies import payload_bound

    shapes = {"w": (20, 30)}
    spec = parse_spec("quant=halves")
    base = payload_bound(spec, shapes)
    monkeypatch.setattr(Halves, "max_payload_bytes", lambda self, spec, shapes: 10_000)
    assert base < 10_000 and payload_bound(spec, shapes) == 15_000 + 4096


def test_threshold_declares_the_float32_bound():
    shapes = {"w": (20, 30), "b": (10,)}
    spec = parse_spec("prune=threshold,threshold=0.5")
    fp32 = len(compression.encode({k: torch.zeros(s) for k, s in shapes.items()}, "fp32"))
    assert compression.get_stage("prune", "threshold").max_payload_bytes(spec, shapes) == fp32
    assert compression.get_stage("prune", "topk").max_payload_bytes(spec, shapes) is None


def test_builtin_stages_are_registry_entries():
    assert set(STAGES["prune"]) == {"none", "topk", "threshold", "randk", "structured"}
    assert all(isinstance(s, QuantStage) for s in STAGES["quant"].values())
    assert compression.get_stage("quant", "kmeans").drop_kept_zeros
    with pytest.raises(SpecError, match="registered"):
        compression.get_stage("quant", "nope")


class _Clash(QuantStage):
    name = "clash"


@pytest.mark.parametrize("attrs, words", [
    ({"name": "Bad Name"}, ["name"]),
    ({"name": "uniform"}, ["already registered", "replace=True"]),
    ({"options": {"bits": Key(int, 4)}}, ["bits", "built-in"]),
    ({"keys": ("nope",)}, ["unknown keys", "nope"]),
    ({"options": {"levels": Key(int, 4)}, "required": ("levels",)}, ["required", "default"]),
    ({"required": ("keep",)}, ["required", "keep"]),
    ({"options": {"levels": Key(int, 0, lo=1)}}, ["default", "levels"]),
    ({"options": {"levels": Key(list, None)}}, ["levels", "bool, int, float or str"]),
])
def test_bad_registrations_are_refused_and_leave_nothing(attrs, words):
    stage = type("Bad", (_Clash,), attrs)
    before = (dict(KEYS), {k: dict(v) for k, v in STAGES.items()})
    with pytest.raises(RegistrationError) as e:
        compression.register_stage(stage)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert (dict(KEYS), {k: dict(v) for k, v in STAGES.items()}) == before


def test_shared_option_must_be_identical(registered):
    twin = type("Twin", (_Clash,), {"name": "twin", "options": {"scale": Key(float, 1.0, lo=0.0, lo_open=True,
                                                                             doc="multiplier")}})
    compression.register_stage(twin)
    try:
        other = type("Other", (_Clash,), {"name": "other", "options": {"scale": Key(float, 2.0)}})
        with pytest.raises(RegistrationError, match="declared differently"):
            compression.register_stage(other)
    finally:
        compression.unregister_stage("quant", "twin")
    assert "scale" in KEYS  # still declared by quant=halves


def test_reregistering_the_same_class_is_harmless(registered):
    compression.register_stage(Halves)
    assert isinstance(STAGES["quant"]["halves"], Halves)


def test_relevant_keys_make_an_option_conditional():
    class Cond(QuantStage):
        name = "cond"
        options = {"variant": Key(str, "plain", ("plain", "fancy")), "fancy-level": Key(int, 1, lo=1, hi=9)}

        def relevant_keys(self, values):
            return ("variant", "fancy-level") if values["variant"] == "fancy" else ("variant",)

    compression.register_stage(Cond)
    try:
        assert parse_spec("quant=cond,variant=fancy,fancy-level=3").get("fancy-level") == 3
        with pytest.raises(SpecError, match="'fancy-level' has no effect"):
            parse_spec("quant=cond,fancy-level=3")
    finally:
        compression.unregister_stage("quant", "cond")
