"""PowerSGD: hand-computed power step, conv reshaping, warm start, error feedback, wire format."""

import math

import numpy as np
import pytest
import torch

import compression
from compression import PayloadError, SpecError, lowrank, wire
from compression.wire import Reader, seal


def test_power_step_by_hand():
    # M = diag(3, 1), Q0 = (1, 1): P = MQ = (3, 1)/sqrt(10); Q' = M^T P = (9, 1)/sqrt(10);
    # P Q'^T = [[27, 3], [9, 1]] / 10
    m = np.array([3.0, 0.0, 0.0, 1.0], dtype=np.float32)
    block, q = lowrank.powersgd_encode(m, (2, 2), 1, np.array([[1.0], [1.0]]), np.random.default_rng(0))
    assert len(block) == 4 * (2 + 2) * 1
    assert np.allclose(q.ravel(), np.array([9.0, 1.0]) / math.sqrt(10), atol=1e-6)
    out = lowrank.powersgd_decode(Reader(block), (2, 2), 1)
    assert np.allclose(out, np.array([27.0, 3.0, 9.0, 1.0]) / 10, atol=1e-6)


def test_rank_one_matrix_exact_and_deficient_rank_stays_exact():
    u, v = np.array([1.0, 2.0, 3.0]), np.array([1.0, -1.0, 0.5, 2.0])
    m = np.outer(u, v).astype(np.float32).ravel()
    for rank in (1, 3):  # rank 3 > rank(M): extra columns orthonormalize to zero, not to noise
        block, _ = lowrank.powersgd_encode(m, (3, 4), rank, None, np.random.default_rng(1))
        assert np.allclose(lowrank.powersgd_decode(Reader(block), (3, 4), rank), m, atol=1e-5)


def test_conv_kernel_is_out_by_rest_and_bias_raw():
    shapes = {"conv.weight": (8, 3, 5, 5), "conv.bias": (8,)}
    g = torch.Generator().manual_seed(0)
    upd = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    spec = compression.parse_spec("quant=powersgd,rank=2,min-numel=0")
    payload, rep = compression.encode_with_report(upd, spec)
    fp32 = compression.encode(upd, "fp32")
    head = len(fp32) - 4 - sum(4 + 1 + 4 * math.prod(s) for s in shapes.values()) - len("prune=none,quant=none")
    head += len(str(spec))
    # conv: u32 length, DENSE byte, (8 + 75) * 2 f32; bias: u32 length, DENSE byte, 8 f32 (raw values); CRC
    assert len(payload) == head + (4 + 1 + 4 * 83 * 2) + (4 + 1 + 4 * 8) + 4
    assert rep.payload_bytes == len(payload) and rep.bits_per_param == 8 * len(payload) / (8 * 75 + 8)
    out = compression.decode(payload)
    assert torch.equal(out["conv.bias"], upd["conv.bias"])
    assert torch.linalg.matrix_rank(out["conv.weight"].reshape(8, 75)) == 2


def _spectrum_matrix(n=64, m=96, seed=0):
    rng = np.random.default_rng(seed)
    a, _ = np.linalg.qr(rng.standard_normal((n, n)))
    b, _ = np.linalg.qr(rng.standard_normal((m, n)))
    s = 0.7 ** np.arange(n)
    return (a * s) @ b.T, s


def test_warm_start_converges_to_best_rank_r():
    mat, s = _spectrum_matrix()
    x = mat.astype(np.float32).ravel()
    best = math.sqrt(float(np.sum(s[2:] ** 2)))      # Eckart-Young error of rank 2
    q, errs = None, []
    for i in range(15):
        block, q = lowrank.powersgd_encode(x, mat.shape, 2, q, np.random.default_rng(i))
        errs.append(float(np.linalg.norm(lowrank.powersgd_decode(Reader(block), mat.shape, 2) - x)))
    assert errs[-1] < best * 1.01
    cold = []
    for i in range(15):
        block, _ = lowrank.powersgd_encode(x, mat.shape, 2, None, np.random.default_rng(i))
        cold.append(float(np.linalg.norm(lowrank.powersgd_decode(Reader(block), mat.shape, 2) - x)))
    assert min(cold) > errs[-1] * 1.05                # one cold power step is worse than the warm one


def test_state_threads_through_encode_with_feedback():
    mat, _ = _spectrum_matrix()
    upd = {"w": torch.from_numpy(mat.astype(np.float32)), "b": torch.zeros(64)}
    spec = "quant=powersgd,rank=2,ef=true,min-numel=0"
    state: dict = {}
    p1, r1, _ = compression.encode_with_feedback(upd, None, spec, round=1, seed=3, state=state)
    assert set(state) == {"w/q"} and state["w/q"].shape == (96, 2)   # the 1-D bias keeps no state
    # error feedback: update == decoded + residual
    dec = compression.decode(p1)
    assert torch.allclose(dec["w"] + r1["w"], upd["w"], atol=1e-5)
    assert torch.equal(dec["b"], upd["b"])
    st1 = {k: v.copy() for k, v in state.items()}
    p2, _, rep2 = compression.encode_with_feedback(upd, None, spec, round=2, seed=3, state=state)
    p2_cold, _, rep2_cold = compression.encode_with_feedback(upd, None, spec, round=2, seed=3)
    assert p2 != p2_cold and rep2.rel_distortion < rep2_cold.rel_distortion
    # deterministic given the state, and warm-start=false ignores it
    assert compression.encode(upd, spec, round=2, seed=3, state=dict(st1)) == p2
    nowarm = "quant=powersgd,rank=2,warm-start=false,min-numel=0"
    assert compression.encode(upd, nowarm, round=2, seed=3, state=dict(st1)) == compression.encode(upd, nowarm,
                                                                                                  round=2, seed=3)


def test_stateless_stages_ignore_state():
    g = torch.Generator().manual_seed(0)
    upd = {"w": torch.randn(50, 40, generator=g)}
    for spec in ("stc", "q8", "sign-ef", "drive"):
        state: dict = {}
        a = compression.encode_with_feedback(upd, None, spec, round=2, seed=1)
        b = compression.encode_with_feedback(upd, None, spec, round=2, seed=1, state=state)
        assert a[0] == b[0] and state == {}


def test_block_length_checked_before_product():
    spec = compression.parse_spec("quant=powersgd,rank=1")
    header = wire.write_header(spec, [wire.TensorInfo("w", torch.float32, (300, 400))])
    for n_floats in (0, 699, 701, 1):  # (300 + 400) * 1 is right
        section = bytes([1]) + b"\0" * (4 * n_floats)
        payload = seal(header + len(section).to_bytes(4, "little") + section)
        with pytest.raises(PayloadError, match="low-rank block"):
            compression.decode(payload)
    ok = bytes([1]) + b"\0" * (4 * 700)
    assert compression.decode(seal(header + len(ok).to_bytes(4, "little") + ok))["w"].abs().sum() == 0


def test_spec_rules():
    with pytest.raises(SpecError, match="rank"):
        compression.parse_spec("quant=powersgd")
    with pytest.raises(SpecError, match="prune=none"):
        compression.parse_spec("prune=topk,keep=0.1,quant=powersgd,rank=2")
    assert str(compression.parse_spec("quant=powersgd,rank=2,ef=true")) == "prune=none,quant=powersgd,ef=true,rank=2"
