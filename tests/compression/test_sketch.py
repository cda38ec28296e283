"""Count sketch and FetchSGD: hand-computed tables, linearity, heavy hitters, the server's sketch-space state."""

import math

import numpy as np
import pytest
import torch

import compression
from compression import PayloadError, SpecError, sketch, wire
from compression.wire import seal


def test_table_by_hand():
    x = np.array([1.0, -2.0, 0.5, 4.0])
    buckets, signs = sketch.hashes(4, 2, 3)
    want = np.zeros((2, 3))
    for j in range(2):
        for i in range(4):
            want[j, buckets[j, i]] += signs[j, i] * x[i]
    assert np.allclose(sketch.sketch(x, 2, 3), want)
    # unsketch: median over rows (2 rows: their mean) of s_j(i) T[j, h_j(i)]
    est = [np.median([signs[j, i] * want[j, buckets[j, i]] for j in range(2)]) for i in range(4)]
    assert np.allclose(sketch.unsketch(want, 4), est)


def test_hashes_are_shared_and_deterministic():
    a, b = sketch.hashes(1000, 5, 77), sketch.hashes(1000, 5, 77)
    assert a[0] is b[0]
    sketch._CACHE.clear()
    c = sketch.hashes(1000, 5, 77)
    assert np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1])
    assert set(np.unique(c[1])) == {-1, 1} and c[0].min() >= 0 and c[0].max() < 77


def test_linearity():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(5000), rng.standard_normal(5000)
    assert np.allclose(sketch.sketch(a, 5, 100) + 0.3 * sketch.sketch(b, 5, 100), sketch.sketch(a + 0.3 * b, 5, 100))


def test_heavy_hitters_recovered():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(100_000) * 0.01
    # recovery needs cols >> heavy hitters: a coordinate is misread when most rows put it in a spike's bucket
    spikes = rng.choice(100_000, 10, replace=False)
    x[spikes] = rng.choice([-1.0, 1.0], 10) * rng.uniform(1, 2, 10)
    est = sketch.unsketch(sketch.sketch(x, 5, 2000), x.size)   # 10 % of the size, 200 columns per spike
    assert set(sketch.top_k(est, 10)) == set(spikes)
    assert np.allclose(est[spikes], x[spikes], atol=0.05)


def test_top_k_ties_by_index():
    assert list(sketch.top_k(np.array([1.0, -3.0, 3.0, 0.0, 3.0]), 2)) == [1, 2]


def test_payload_bytes_and_single_decode():
    shapes = {"w": (40, 50), "b": (40,)}
    g = torch.Generator().manual_seed(0)
    upd = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    spec = compression.parse_spec("quant=fetchsgd,keep=0.1,rows=3,sketch-size=0.3")
    payload, rep = compression.encode_with_report(upd, spec)
    fp32 = compression.encode(upd, "fp32")
    head = len(fp32) - 4 - (4 + 1 + 8000) - (4 + 1 + 160) - len("prune=none,quant=none") + len(str(spec))
    cols = math.ceil(0.3 * 2000 / 3)
    assert cols == 200 and len(payload) == head + (4 + 1 + 4 * 3 * cols) + (4 + 1 + 160) + 4
    assert rep.payload_bytes == len(payload) and rep.bits_per_param == 8 * len(payload) / 2040
    out = compression.decode(payload)
    assert int((out["w"] != 0).sum()) == 200 and torch.equal(out["b"], upd["b"])


def test_block_length_checked():
    spec = compression.parse_spec("quant=fetchsgd,keep=0.1,rows=2,sketch-size=0.5")
    header = wire.write_header(spec, [wire.TensorInfo("w", torch.float32, (1000,))])
    for cells in (0, 499, 501):
        section = bytes([1]) + b"\0" * (4 * cells)
        with pytest.raises(PayloadError, match="sketch block"):
            compression.decode(seal(header + len(section).to_bytes(4, "little") + section))


def _agg(spec, shapes):
    return compression.server_aggregator(spec, shapes)


def test_aggregator_sums_sketches_and_applies_top_k():
    shapes = {"w": (64,)}
    spec = "quant=fetchsgd,keep=0.02,rows=5,sketch-size=4,sketch-momentum=0,min-numel=0"  # k = 2
    a = np.zeros(64, dtype=np.float32)
    b = np.zeros(64, dtype=np.float32)
    a[3], a[10], b[3], b[20] = 4.0, 3.0, 2.0, -9.0
    pa = compression.encode({"w": torch.from_numpy(a)}, spec)
    pb = compression.encode({"w": torch.from_numpy(b)}, spec)
    agg = _agg(spec, shapes)
    delta = agg.aggregate([pa, pb], [1, 3])          # mean: 0.25 a + 0.75 b
    mean = 0.25 * a + 0.75 * b                        # [3] = 2.5, [10] = 0.75, [20] = -6.75
    d = delta["w"].numpy()
    assert set(np.flatnonzero(d)) == {3, 20}
    assert np.allclose(d[[3, 20]], mean[[3, 20]], atol=1e-5)
    # error accumulation: the unapplied 0.75 at [10] stays in S_e; applied coordinates' cells are zeroed
    err = agg.state["error/w"].numpy()
    assert np.isclose(sketch.unsketch(err.astype(np.float64), 64)[10], 0.75, atol=1e-5)
    buckets, _ = sketch.hashes(64, *err.shape)
    assert all(err[j, buckets[j, i]] == 0 for j in range(err.shape[0]) for i in (3, 20))


def test_error_accumulation_applies_a_persistent_small_coordinate():
    shapes = {"w": (64,)}
    spec = "quant=fetchsgd,keep=0.01,rows=5,sketch-size=4,sketch-momentum=0,min-numel=0"  # k = 1
    agg = _agg(spec, shapes)
    applied = []
    for rnd in range(3):
        x = np.zeros(64, dtype=np.float32)
        x[7] = 1.0                                   # small but every round
        x[40 + rnd] = 1.5                            # larger, new each round
        d = agg.aggregate([compression.encode({"w": torch.from_numpy(x)}, spec)], [1])["w"].numpy()
        applied.append({int(i): round(float(d[i]), 4) for i in np.flatnonzero(d)})
    # round 1 applies the 1.5; by round 2 coordinate 7 has accumulated 2.0 > 1.5 and is applied whole;
    # round 3: the 1.5 at [41] left over from round 2 ties with the new one at [42] (lower index wins)
    assert applied[0] == {40: 1.5} and applied[1] == {7: 2.0} and applied[2] == {41: 1.5}


def test_momentum_in_sketch_space():
    shapes = {"w": (64,)}
    spec = "quant=fetchsgd,keep=0.01,rows=5,sketch-size=4,sketch-momentum=0.5,min-numel=0"
    agg = _agg(spec, shapes)
    x = np.zeros(64, dtype=np.float32)
    x[5] = 1.0
    p = compression.encode({"w": torch.from_numpy(x)}, spec)
    d1 = agg.aggregate([p], [1])["w"].numpy()
    # applied coordinate: its momentum cells were zeroed, so round 2 sees only the new 1.0
    d2 = agg.aggregate([p], [1])["w"].numpy()
    assert np.isclose(d1[5], 1.0) and np.isclose(d2[5], 1.0)
    y = np.zeros(64, dtype=np.float32)
    y[9], y[5] = 1.0, 2.0                            # [9] loses to [5]: its momentum survives
    agg.aggregate([compression.encode({"w": torch.from_numpy(y)}, spec)], [1])
    d4 = agg.aggregate([compression.encode({"w": torch.zeros(64)}, spec)], [1])["w"].numpy()
    # u = 0.5 * 1.0 + 0 = 0.5 added to e = 1.0 -> 1.5 at [9]
    assert list(np.flatnonzero(d4)) == [9] and np.isclose(d4[9], 1.5, atol=1e-5)


def test_state_reload_checks_shapes():
    shapes = {"w": (64,)}
    agg = _agg("quant=fetchsgd,keep=0.1,min-numel=0", shapes)
    agg.aggregate([compression.encode({"w": torch.randn(64)}, "quant=fetchsgd,keep=0.1,min-numel=0")], [1])
    other = _agg("quant=fetchsgd,keep=0.1,min-numel=0", shapes)
    other.load_state(agg.state)
    assert all(torch.equal(agg.state[k], other.state[k]) for k in agg.state)
    with pytest.raises(ValueError, match="shape"):
        other.load_state({"error/w": torch.zeros(2, 2)})


def test_stateless_stages_have_no_aggregator():
    assert compression.server_aggregator("stc", {"w": (10, 10)}) is None


def test_spec_rules():
    with pytest.raises(SpecError, match="keep"):
        compression.parse_spec("quant=fetchsgd")
    with pytest.raises(SpecError):
        compression.parse_spec("quant=fetchsgd,keep=0.1,sketch-size=0")
    with pytest.raises(SpecError, match="prune=none"):
        compression.parse_spec("prune=topk,keep=0.1,quant=fetchsgd")


def test_federation_resume_keeps_sketch_state(tmp_path):
    """A FetchSGD run cut after round 2 and resumed equals the uninterrupted run (no client state)."""
    from fedsqueeze.config import RunConfig
    from server.checkpoint import load_checkpoint
    from tests.federation_harness import SMALL, read_rows, run_direct

    cfg = {**SMALL, "uplink": "quant=fetchsgd,keep=0.05,sketch-size=0.5", "downlink": "fp32",
           "downlink-mode": "full", "seed": 1}
    run_direct(cfg, tmp_path / "whole", num_supernodes=5)
    run_direct({**cfg, "num-server-rounds": 2}, tmp_path / "cut", num_supernodes=5)
    resumed, _ = run_direct({**cfg, "resume": True}, tmp_path / "cut", num_supernodes=5)
    assert resumed["resumed_at_round"] == 2
    rows_a, rows_b = read_rows(tmp_path / "whole"), read_rows(tmp_path / "cut")
    for ra, rb in zip(rows_a, rows_b):
        for key in ("test_accuracy", "test_loss", "uplink_bytes", "uplink_payload_bytes", "applied"):
            assert ra[key] == rb[key], (ra["round"], key)

    def c(out):
        return RunConfig.from_mapping({**cfg, "out-dir": str(out)}).to_mapping()

    a, b = load_checkpoint(tmp_path / "whole", c(tmp_path / "whole")), load_checkpoint(tmp_path / "cut", c(tmp_path / "cut"))
    assert sorted(a.aggregator_state) == sorted(b.aggregator_state)
    assert {k.split("/")[0] for k in a.aggregator_state} == {"momentum", "error"}
    assert all(torch.equal(a.aggregator_state[k], b.aggregator_state[k]) for k in a.aggregator_state)
    # ledger bytes: payload bytes are the exact lengths of the sketches each client sent
    spec = compression.parse_spec(cfg["uplink"])
    shapes = {k: tuple(v.shape) for k, v in a.weights.items()}
    probe = compression.encode({k: torch.zeros(s) for k, s in shapes.items()}, spec)
    for r in rows_a[1:]:
        assert int(r["uplink_payload_bytes"]) == int(r["clients_ok"]) * len(probe)
