"""Quantization: mergeable ranges, int8 fidelity, QAT, dynamic int8, casts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze import modelzip as mz
from fedsqueeze.train import evaluate, train


def _agreement(a, b, x) -> float:
    with torch.no_grad():
        return float((a(x).argmax(1) == b(x).argmax(1)).float().mean())


_range = st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)).map(sorted).map(tuple)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.fixed_dictionaries({"x": _range, "relu": _range}), min_size=1, max_size=6))
def test_merge_ranges_is_min_of_mins_max_of_maxes(dicts):
    merged = mz.merge_ranges(dicts)
    for key in ("x", "relu"):
        assert merged[key] == (min(d[key][0] for d in dicts), max(d[key][1] for d in dicts))


def test_merge_ranges_rejects_mismatched_or_empty():
    with pytest.raises(ValueError):
        mz.merge_ranges([])
    with pytest.raises(ValueError):
        mz.merge_ranges([{"x": (0.0, 1.0)}, {"y": (0.0, 1.0)}])


def test_client_ranges_merge_to_the_pooled_ranges(trained, tensors):
    x, _, _, _ = tensors
    a, b = x[:500], x[500:1000]
    merged = mz.merge_ranges([mz.observe_ranges(trained, a), mz.observe_ranges(trained, b)])
    assert merged == mz.observe_ranges(trained, x[:1000])
    assert merged and all(lo <= hi for lo, hi in merged.values())


@pytest.mark.slow  # PT2E export / int8 lowering: tens of seconds
def test_static_int8_agrees_with_float(trained, tensors):
    x, _, xt, yt = tensors
    ranges = mz.merge_ranges([mz.observe_ranges(trained, x[:1000]), mz.observe_ranges(trained, x[1000:2000])])
    int8 = mz.quantize_static_int8(trained, ranges)
    assert _agreement(int8, trained, xt) >= 0.99
    _, acc_float = evaluate(trained, xt, yt)
    _, acc_int8 = evaluate(int8, xt, yt)
    assert acc_int8 >= acc_float - 0.005
    # Weights are really stored as int8, and the float originals are gone.
    dtypes = [t.dtype for t in int8.state_dict().values()]
    assert dtypes.count(torch.int8) == 3
    assert sum(t.numel() for t in int8.state_dict().values() if t.dtype == torch.float32) < 200


def test_static_int8_from_ranges_equals_from_data(trained, tensors):
    x, _, xt, _ = tensors
    from_data = mz.quantize_static_int8(trained, x[:1000])
    from_ranges = mz.quantize_static_int8(trained, mz.observe_ranges(trained, x[:1000]))
    with torch.no_grad():
        assert torch.equal(from_data(xt[:500]), from_ranges(xt[:500]))
    with pytest.raises(KeyError):
        mz.quantize_static_int8(trained, {"x": (0.0, 1.0)})


def test_static_int8_keeps_pruned_weights_zero(trained, tensors):
    x, _, _, _ = tensors
    mz.prune_global_l1(trained, 0.5)
    int8 = mz.quantize_static_int8(trained, x[:500])
    assert mz.count_nonzero(int8) == mz.count_nonzero(trained)


def test_lowered_int8_matches_reference(trained, tensors):
    x, _, xt, _ = tensors
    int8 = mz.quantize_static_int8(trained, x[:1000])
    for batch in (64, 1):
        lowered = mz.lower_int8_x86(int8, batch)
        assert _agreement(lowered, int8, xt[:batch]) == 1.0


@pytest.mark.slow  # PT2E export / int8 lowering: tens of seconds
def test_qat_trains_and_converts_with_masks(trained, tensors):
    x, y, xt, yt = tensors
    masks = mz.prune_global_l1(trained, 0.5)
    prepared = mz.prepare_qat(trained)
    with mz.single_thread():
        train(prepared, x[:1000], y[:1000], epochs=1, batch_size=64, lr=0.005, momentum=0.9, masks=masks)
    params = dict(prepared.named_parameters())
    assert all(torch.all(params[n][m == 0] == 0) for n, m in masks.items())
    int8 = mz.convert_qat(prepared)
    _, acc_float = evaluate(trained, xt, yt)
    _, acc_qat = evaluate(int8, xt, yt)
    assert acc_qat >= acc_float - 0.01
    assert mz.count_nonzero(int8) <= mz.count_nonzero(trained)
    assert [t.dtype for t in int8.state_dict().values()].count(torch.int8) == 3


def test_dynamic_int8_agrees_and_leaves_input_alone(trained, tensors):
    _, _, xt, _ = tensors
    dynamic = mz.quantize_dynamic_int8(trained)
    assert type(trained.fc.weight) is torch.nn.Parameter
    assert _agreement(dynamic, trained, xt) >= 0.99


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cast_model(trained, tensors, dtype):
    _, _, xt, _ = tensors
    cast = mz.cast_model(trained, dtype)
    assert all(p.dtype == dtype for p in cast.parameters())
    assert cast(xt[:4]).dtype == torch.float32
    assert _agreement(cast, trained, xt[:2000]) >= 0.99
    with pytest.raises(ValueError):
        mz.cast_model(trained, torch.int8)
