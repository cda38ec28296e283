"""server.aggregate's example-weighted mean and fedsqueeze.optimizers' built-in server optimizers, against
hand-computed values.

The update rules are those of the papers, written out here in plain float64
scalars (not with the module's tensor code):

* FedAvg (McMahan et al. 2017) with a server learning rate: ``w += lr * d``.
* FedAvgM (Hsu et al. 2019, "Measuring the effects of non-identical data
  distribution", Alg. FedAvgM): ``v = beta * v + d``; ``w += lr * v``.
* FedAdam (Reddi et al. 2021, "Adaptive federated optimization", Alg. 2):
  ``m = b1 * m + (1 - b1) * d``; ``v = b2 * v + (1 - b2) * d**2``;
  ``w += lr * m / (sqrt(v) + tau)`` (no bias correction).

``d`` is the example-weighted mean of the client deltas (client - global).
"""

from __future__ import annotations

import math

import pytest
import torch

from fedsqueeze.config import RunConfig
from fedsqueeze.optimizers import RESERVED_KEYS, build_server_optimizer, hyperparameter_argument
from server.aggregate import weighted_mean

#: The run config's defaults for every hyper-parameter key (declared there only).
DEFAULTS = {hyperparameter_argument(k): v for k, v in RunConfig().to_mapping().items()
            if k.startswith("server-") and k not in RESERVED_KEYS}


def make_optimizer(name, lr, state=None, **hyperparameters):
    return build_server_optimizer(name, lr, state, **{**DEFAULTS, **hyperparameters})


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# Three clients holding 100, 300 and 600 examples (weights 0.1, 0.3, 0.6).
COUNTS = [100, 300, 600]
UPDATES = [
    {"w": t(1.0, -2.0), "b": t(10.0)},
    {"w": t(3.0, 0.0), "b": t(-10.0)},
    {"w": t(-1.0, 4.0), "b": t(0.0)},
]
# 0.1*1 + 0.3*3 + 0.6*(-1) = 0.4;  0.1*(-2) + 0 + 0.6*4 = 2.2;  0.1*10 - 0.3*10 = -2.0
WEIGHTED = {"w": [0.4, 2.2], "b": [-2.0]}
UNWEIGHTED = {"w": [1.0, 2.0 / 3.0], "b": [0.0]}


def test_weighted_mean_uses_example_counts():
    got = weighted_mean(UPDATES, COUNTS)
    assert set(got) == {"w", "b"}
    for k, want in WEIGHTED.items():
        assert got[k].tolist() == pytest.approx(want, abs=1e-6)
        assert got[k].dtype == torch.float32 and got[k].shape == UPDATES[0][k].shape
    # the equal-weight mean is far from it: a weighting bug cannot hide
    assert abs(got["w"][1].item() - UNWEIGHTED["w"][1]) > 1.0


def test_weighted_mean_is_invariant_to_scaling_and_ignores_zero_weight():
    a = weighted_mean(UPDATES, COUNTS)
    b = weighted_mean(UPDATES, [c * 7 for c in COUNTS])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6)
    only_second = weighted_mean(UPDATES, [0, 5, 0])
    assert torch.equal(only_second["w"], UPDATES[1]["w"]) and torch.equal(only_second["b"], UPDATES[1]["b"])


def test_weighted_mean_of_one_update_is_that_update_and_inputs_are_untouched():
    before = [{k: v.clone() for k, v in u.items()} for u in UPDATES]
    out = weighted_mean(UPDATES[:1], [42])
    assert torch.equal(out["w"], UPDATES[0]["w"])
    out["w"].add_(1.0)  # the result is a fresh tensor
    for u, b in zip(UPDATES, before):
        assert all(torch.equal(u[k], b[k]) for k in u)
    weighted_mean(UPDATES, COUNTS)
    for u, b in zip(UPDATES, before):
        assert all(torch.equal(u[k], b[k]) for k in u)


@pytest.mark.parametrize("updates, weights, match", [
    ([], [], "as many weights"),
    (UPDATES, [1, 2], "as many weights"),
    (UPDATES, [0, 0, 0], "sum to > 0"),
    (UPDATES, [1, -1, 0], "sum to > 0"),
])
def test_weighted_mean_rejects_bad_weights(updates, weights, match):
    with pytest.raises(ValueError, match=match):
        weighted_mean(updates, weights)


# ---------------------------------------------------------------- server optimizers

W0 = {"w": t(0.5, -1.0), "b": t(2.0)}
DELTAS = [  # three rounds of averaged updates
    {"w": t(2.0, -1.0), "b": t(0.25)},
    {"w": t(-1.0, 0.5), "b": t(0.0)},
    {"w": t(0.5, 0.5), "b": t(-4.0)},
]


def scalars(tensors):
    return {k: [float(x) for x in v.tolist()] for k, v in tensors.items()}


def reference_fedavgm(w0, deltas, lr, beta):
    """Hsu et al. 2019: v <- beta v + d; w <- w + lr v (elementwise, float64)."""
    w, v, trace = scalars(w0), None, []
    for d in map(scalars, deltas):
        v = {k: [beta * vi + di for vi, di in zip(v[k], d[k])] for k in d} if v else d
        w = {k: [wi + lr * vi for wi, vi in zip(w[k], v[k])] for k in w}
        trace.append((w, v))
    return trace


def reference_fedadam(w0, deltas, lr, b1, b2, tau):
    """Reddi et al. 2021, Alg. 2 (FedAdam), elementwise in float64."""
    w = scalars(w0)
    m = {k: [0.0] * len(x) for k, x in w.items()}
    v = {k: [0.0] * len(x) for k, x in w.items()}
    trace = []
    for d in map(scalars, deltas):
        m = {k: [b1 * mi + (1 - b1) * di for mi, di in zip(m[k], d[k])] for k in d}
        v = {k: [b2 * vi + (1 - b2) * di * di for vi, di in zip(v[k], d[k])] for k in d}
        w = {k: [wi + lr * mi / (math.sqrt(vi) + tau) for wi, mi, vi in zip(w[k], m[k], v[k])] for k in w}
        trace.append((w, m, v))
    return trace


def close(got, want, rel=1e-5, abs_=1e-6):
    assert set(got) == set(want)
    for k in want:
        assert [float(x) for x in got[k].tolist()] == pytest.approx(want[k], rel=rel, abs=abs_), k


def test_fedavg_applies_the_server_learning_rate():
    opt = make_optimizer("fedavg", lr=0.5)
    w1 = opt.step(W0, DELTAS[0])
    close(w1, {"w": [1.5, -1.5], "b": [2.125]})  # by hand: w0 + 0.5 * d
    assert opt.state == {}  # nothing to checkpoint
    assert torch.equal(W0["w"], t(0.5, -1.0))  # the old weights are not modified in place


def test_fedavgm_matches_hsu_et_al_with_hand_values():
    opt = make_optimizer("fedavgm", lr=1.0, momentum=0.9)
    w = W0
    # by hand, coordinate w[0]: v = 2, 0.9*2-1 = 0.8, 0.9*0.8+0.5 = 1.22; w = 2.5, 3.3, 4.52
    expected_w0 = [2.5, 3.3, 4.52]
    for d, want in zip(DELTAS, expected_w0):
        w = opt.step(w, d)
        assert w["w"][0].item() == pytest.approx(want, abs=1e-6)
    assert opt.state["m"]["w"][0].item() == pytest.approx(1.22, abs=1e-6)


@pytest.mark.parametrize("lr, beta", [(1.0, 0.9), (0.3, 0.5), (2.0, 0.0)])
def test_fedavgm_trajectory_and_momentum_state(lr, beta):
    opt = make_optimizer("fedavgm", lr=lr, momentum=beta)
    w = W0
    for d, (want_w, want_v) in zip(DELTAS, reference_fedavgm(W0, DELTAS, lr, beta)):
        w = opt.step(w, d)
        close(w, want_w)
        close(opt.state["m"], want_v)
    assert set(opt.state) == {"m"}


def test_fedavgm_without_momentum_is_fedavg():
    a, b = make_optimizer("fedavgm", lr=0.7, momentum=0.0), make_optimizer("fedavg", lr=0.7)
    wa = wb = W0
    for d in DELTAS:
        wa, wb = a.step(wa, d), b.step(wb, d)
        close(wa, scalars(wb))


def test_fedadam_first_step_by_hand():
    opt = make_optimizer("fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    w1 = opt.step(W0, DELTAS[0])
    # w[0]: m = 0.1*2 = 0.2, v = 0.01*4 = 0.04, step = 0.1 * 0.2 / (0.2 + 0.001)
    assert w1["w"][0].item() == pytest.approx(0.5 + 0.1 * 0.2 / 0.201, rel=1e-6)
    # b: m = 0.025, v = 0.01*0.0625 = 0.000625 (sqrt 0.025): step = 0.1 * 0.025 / 0.026
    assert w1["b"][0].item() == pytest.approx(2.0 + 0.1 * 0.025 / 0.026, rel=1e-6)
    assert opt.state["m"]["w"].tolist() == pytest.approx([0.2, -0.1])
    assert opt.state["v"]["w"].tolist() == pytest.approx([0.04, 0.01])


@pytest.mark.parametrize("lr, b1, b2, tau", [(0.1, 0.9, 0.99, 1e-3), (1.0, 0.5, 0.9, 0.1), (0.01, 0.0, 0.0, 1e-2)])
def test_fedadam_trajectory_and_moments(lr, b1, b2, tau):
    opt = make_optimizer("fedadam", lr=lr, beta1=b1, beta2=b2, tau=tau)
    w = W0
    for d, (want_w, want_m, want_v) in zip(DELTAS, reference_fedadam(W0, DELTAS, lr, b1, b2, tau)):
        w = opt.step(w, d)
        close(w, want_w)
        close(opt.state["m"], want_m)
        close(opt.state["v"], want_v)
    assert set(opt.state) == {"m", "v"}


def test_fedadam_restored_moments_continue_the_same_trajectory():
    """What a checkpoint relies on: a new optimizer given the saved state takes the same next step."""
    a = make_optimizer("fedadam", lr=0.1)
    w = a.step(W0, DELTAS[0])
    w = a.step(w, DELTAS[1])
    b = make_optimizer("fedadam", lr=0.1, state={n: {k: v.clone() for k, v in s.items()} for n, s in a.state.items()})
    assert scalars(a.step(w, DELTAS[2])) == scalars(b.step(w, DELTAS[2]))
    fresh = make_optimizer("fedadam", lr=0.1).step(w, DELTAS[2])
    assert scalars(fresh) != scalars(b.step(w, DELTAS[2]))  # the moments matter


def test_unequal_counts_end_to_end_one_round():
    """Aggregate three unequal clients, then FedAvgM with server-lr 0.5: hand values."""
    opt = make_optimizer("fedavgm", lr=0.5, momentum=0.9)
    w = opt.step({"w": t(0.0, 0.0), "b": t(1.0)}, weighted_mean(UPDATES, COUNTS))
    close(w, {"w": [0.2, 1.1], "b": [0.0]})


def test_unknown_optimizer_is_an_error():
    with pytest.raises(ValueError, match="unknown server optimizer 'sgd'"):
        make_optimizer("sgd", lr=1.0)
