"""Pruning: exact amounts, fixed masks through fine-tuning, structure, scores."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze.models import build_model
from fedsqueeze import modelzip as mz
from fedsqueeze.train import train


def _prunable(model):
    params = dict(model.named_parameters())
    return {n: params[n] for n in mz.prunable_names(model)}


def test_global_l1_hits_amount_exactly():
    torch.manual_seed(0)
    model = build_model("seed-cnn")
    total = sum(p.numel() for p in _prunable(model).values())
    masks = mz.prune_global_l1(model, 0.5)
    zeros = sum(int((p == 0).sum()) for p in _prunable(model).values())
    assert zeros == round(0.5 * total) == total // 2
    assert sum(int((m == 0).sum()) for m in masks.values()) == zeros
    assert mz.sparsity(model) == 0.5
    # Permanent: no prune hooks or *_orig parameters remain.
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in build_model("seed-cnn").named_parameters()}


def test_global_l1_removes_smallest_magnitudes():
    torch.manual_seed(1)
    model = build_model("seed-cnn")
    before = torch.cat([p.detach().abs().flatten() for p in _prunable(model).values()])
    masks = mz.prune_global_l1(model, 0.3)
    kept = torch.cat([m.flatten() for m in masks.values()]).bool()
    assert before[~kept].max() <= before[kept].min()


def test_layer_l1_hits_amount_in_every_layer():
    torch.manual_seed(0)
    model = build_model("mlp-2nn")
    mz.prune_layer_l1(model, 0.7)
    for name, p in _prunable(model).items():
        assert int((p == 0).sum()) == round(0.7 * p.numel()), name


def test_masks_stay_zero_through_fine_tuning(trained, tensors):
    x, y, _, _ = tensors
    masks = mz.prune_global_l1(trained, 0.5)
    before = {n: p.detach().clone() for n, p in trained.named_parameters()}
    with mz.single_thread():
        train(trained, x[:2000], y[:2000], epochs=1, batch_size=64, lr=0.05, momentum=0.9, masks=masks)
    params = dict(trained.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][mask == 0] == 0), name
        assert not torch.equal(params[name][mask == 1], before[name][mask == 1]), f"{name} did not train"
    assert mz.sparsity(trained) == 0.5
    assert all(torch.equal(mz.masks_of(trained)[n], m) for n, m in masks.items())


def test_cumulative_prune_keeps_earlier_zeros(trained):
    first = mz.prune_global_l1(trained, 0.5)
    second = mz.prune_global_l1(trained, 0.8)
    for name in first:
        assert torch.all(second[name][first[name] == 0] == 0), name
    assert mz.sparsity(trained) == pytest.approx(0.8, abs=1e-4)


def test_structured_ln_zeros_whole_output_channels(tensors):
    x, _, _, _ = tensors
    torch.manual_seed(0)
    model = build_model("seed-cnn").eval()
    masks = mz.prune_structured_ln(model, 0.25, n=2, dim=0)
    assert set(masks) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"}
    for conv in (model.conv1, model.conv2):
        per_channel = conv.weight.detach().flatten(1).abs().sum(1)
        dead = per_channel == 0
        assert int(dead.sum()) == round(0.25 * conv.out_channels)
        assert torch.all(conv.bias[dead] == 0)
    with torch.no_grad():
        act = torch.relu(model.conv1(x[:8]))
    dead1 = model.conv1.weight.detach().flatten(1).abs().sum(1) == 0
    assert torch.all(act[:, dead1] == 0)
    assert torch.any(act[:, ~dead1] != 0)


def test_taylor_scores_are_additive_and_read_only(trained, tensors):
    x, y, _, _ = tensors
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    whole = mz.taylor_scores(trained, x[:512], y[:512], batch_size=256)
    parts = mz.add_scores([
        mz.taylor_scores(trained, x[:256], y[:256], batch_size=256),
        mz.taylor_scores(trained, x[256:512], y[256:512], batch_size=256),
    ])
    assert set(whole) == set(mz.prunable_names(trained))
    for name in whole:
        assert whole[name].shape == dict(trained.named_parameters())[name].shape
        assert torch.all(whole[name] >= 0)
        torch.testing.assert_close(whole[name], parts[name])
    assert all(torch.equal(v, state[k]) for k, v in trained.state_dict().items())
    assert all(p.grad is None for p in trained.parameters())


def test_prune_by_scores_removes_lowest_scores(trained, tensors):
    x, y, _, _ = tensors
    scores = mz.taylor_scores(trained, x[:512], y[:512])
    masks = mz.prune_by_scores(trained, scores, 0.6)
    flat_scores = torch.cat([scores[n].flatten() for n in masks])
    kept = torch.cat([masks[n].flatten() for n in masks]).bool()
    assert int((~kept).sum()) == round(0.6 * kept.numel())
    assert flat_scores[~kept].max() <= flat_scores[kept].min()
    assert mz.sparsity(trained) == pytest.approx(0.6, abs=1e-4)


def test_prune_rejects_bad_input():
    model = build_model("seed-cnn")
    with pytest.raises(ValueError):
        mz.prune_global_l1(model, 1.5)
    with pytest.raises(KeyError):
        mz.prune_global_l1(model, 0.5, params=["nope.weight"])
    with pytest.raises(ValueError):
        mz.prune_by_scores(model, {"fc.weight": torch.ones(3)}, 0.5)


@settings(max_examples=50, deadline=None)
@given(target=st.floats(0.0, 0.99), steps=st.integers(1, 8))
def test_iterative_schedule_is_geometric_in_density(target, steps):
    amounts = mz.iterative_schedule(target, steps)
    assert len(amounts) == steps and amounts[-1] == target
    assert all(a <= b + 1e-12 for a, b in zip(amounts, amounts[1:]))
    densities = [1.0] + [1.0 - a for a in amounts]
    ratios = [b / a for a, b in zip(densities, densities[1:])]
    assert all(math.isclose(r, ratios[0], rel_tol=1e-9, abs_tol=1e-12) for r in ratios)
