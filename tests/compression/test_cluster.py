"""Optimal 1-D k-means (weight sharing): optimality, exactness, no wasted centroids, top-k zeros."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import compression
from compression import cluster

SETTINGS = settings(deadline=None)  # examples: the profile's (tests/conftest.py)


def _sse(x, c):
    x = np.asarray(x, np.float64)
    return float(((x - c.astype(np.float64)[cluster.assign(x, c)]) ** 2).sum())


def _brute_force(x, k):
    """Least squared error over every split of the sorted values into k contiguous runs."""
    v = np.sort(np.asarray(x, np.float64))
    return min(sum(float(((p - p.mean()) ** 2).sum()) for p in np.split(v, cuts))
               for cuts in itertools.combinations(range(1, v.size), k - 1))


def _lloyd_from_quantiles(x, k, iters=12):
    """The k-means used before issue 19, kept here as the distortion baseline."""
    x64 = x.astype(np.float64)
    c = np.quantile(x64, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        a = cluster.assign(x64, c)
        sums = np.bincount(a, weights=x64, minlength=k)
        counts = np.bincount(a, minlength=k)
        new = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), c))
        if np.array_equal(new, c):
            break
        c = new
    return c.astype(np.float32)


# Values drawn from a small pool, so repeats (the case Lloyd got stuck on) are common.
pooled = st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=6).flatmap(
    lambda pool: arrays(np.float32, st.integers(1, 9), elements=st.sampled_from(pool)))
mixed = st.one_of(pooled, arrays(np.float32, st.integers(1, 9), elements=st.floats(-100, 100, width=32)))


@SETTINGS
@given(x=mixed, k=st.integers(1, 6))
@example(x=np.array([2.0, -3.5, -8.0, 0.0], np.float32), k=3)  # the issue's top-k values
@example(x=np.array([-5, -2, -1, 0, 0, 0], np.float32), k=5)
@example(x=np.array([-4, -1, 0] + [1] * 6, np.float32), k=4)
def test_kmeans_is_optimal(x, k):
    c = cluster.kmeans_1d(x, k)
    assert c.dtype == np.float32 and c.shape == (k,) and np.all(np.diff(c) >= 0)
    distinct = np.unique(x)
    if distinct.size <= k:
        # exact: every value decodes to itself
        assert np.array_equal(c[cluster.assign(x, c)], x)
        assert set(c.tolist()) == set(distinct.tolist())
        return
    best = _brute_force(x, k)
    assert _sse(x, c) <= best * (1 + 1e-6) + 1e-9 * float(np.abs(x).max()) ** 2
    assert _sse(x, c) <= _sse(x, _lloyd_from_quantiles(x, k)) * (1 + 1e-6) + 1e-12
    # no wasted centroid: with at least k distinct values every centroid is some value's nearest
    assert np.unique(cluster.assign(x, c)).size == k


@SETTINGS
@given(x=arrays(np.float32, st.integers(20, 300), elements=st.floats(-50, 50, width=32)), k=st.integers(2, 8),
       budget=st.sampled_from([8, 40, 200]))
def test_kmeans_above_budget_uses_every_centroid(x, k, budget):
    # Above DP_BUDGET runs of values are clustered exactly, then Lloyd polishes:
    # never worse than clustering whole runs, and no centroid left without values.
    old = cluster.DP_BUDGET
    cluster.DP_BUDGET = budget
    try:
        c = cluster.kmeans_1d(x, k)
    finally:
        cluster.DP_BUDGET = old
    assert c.shape == (k,) and np.all(np.diff(c) >= 0)
    distinct = np.unique(x).size
    assert np.unique(cluster.assign(x, c)).size == min(k, distinct)
    assert _sse(x, c) >= _sse(x, cluster.kmeans_1d(x, k)) * (1 - 1e-6) - 1e-9


def test_kmeans_above_budget_close_to_optimal():
    rng = np.random.default_rng(3)
    x = rng.standard_t(3, 20_000).astype(np.float32)  # heavy tails like model updates
    exact = cluster.kmeans_1d(x, 4)
    old = cluster.DP_BUDGET
    cluster.DP_BUDGET = 2_000
    try:
        approx = cluster.kmeans_1d(x, 4)
    finally:
        cluster.DP_BUDGET = old
    assert _sse(x, exact) <= _sse(x, approx) <= 1.01 * _sse(x, exact)
    assert _sse(x, exact) <= _sse(x, _lloyd_from_quantiles(x, 4))


def test_kmeans_rejects_k_below_one():
    with pytest.raises(ValueError, match="k >= 1"):
        cluster.kmeans_1d(np.ones(3, np.float32), 0)


def test_kmeans_empty_and_constant():
    assert cluster.kmeans_1d(np.zeros(0, np.float32), 3).tolist() == [0.0, 0.0, 0.0]
    assert cluster.kmeans_1d(np.full(5, -2.5, np.float32), 3).tolist() == [-2.5, -2.5, -2.5]


# ----------------------------------------------------------------- issue 19, through the codec

def _issue_update():
    u = np.zeros((16, 20), np.float32)
    u[0, :3] = [2.0, -3.5, -8.0]
    return {"w": torch.from_numpy(u), "v": torch.from_numpy(u[:, 0].copy())}


def test_issue_19_fedzip_like_reencodes_exactly():
    upd = _issue_update()
    d1 = compression.decode(compression.encode(upd, "fedzip-like"))
    d2 = compression.decode(compression.encode(d1, "fedzip-like"))
    # Before: d1["w"][0, :4] == [1, -3.5, -8, 1] (a kept zero clustered with 2.0) and
    # d2["w"][0, :4] == [1, -5.75, -5.75, 1] (one centroid wasted, -3.5 and -8 merged).
    assert d1["w"][0, :4].tolist() == [2.0, -3.5, -8.0, 0.0]
    for k in upd:
        assert torch.equal(d1[k], upd[k]) and torch.equal(d2[k], d1[k])


def test_topk_kmeans_does_not_send_zeros():
    # keep=0.01 of 320 values keeps 4 positions; only 3 are non-zero.
    payload, report = compression.encode_with_report(_issue_update(), "fedzip-like")
    assert report.nnz == 16 + 3  # the 16-value tensor is raw; no position or code spent on a zero
    with_zero = dict(_issue_update())
    with_zero["w"] = with_zero["w"].clone()
    with_zero["w"][5, 5] = 1e-3  # a 4th non-zero takes the 4th slot and is sent
    assert compression.encode_with_report(with_zero, "fedzip-like")[1].nnz == 16 + 4
    # Other quantizers keep today's bytes: the zero fills the 4th slot and is sent.
    assert compression.encode_with_report(_issue_update(), "stc")[1].nnz == 16 + 4


@SETTINGS
@given(pool=st.lists(st.floats(-10, 10, width=32).filter(lambda f: f != 0), min_size=1, max_size=3),
       picks=st.lists(st.tuples(st.integers(0, 319), st.integers(0, 2)), min_size=1, max_size=4))
def test_fedzip_like_exact_on_at_most_three_distinct_values(pool, picks):
    # fedzip-like keeps 4 of 320: an update with <= 4 non-zeros of <= 3 distinct values is sent exactly.
    u = np.zeros(320, np.float32)
    for pos, j in picks:
        u[pos] = pool[j % len(pool)]
    upd = {"w": torch.from_numpy(u.reshape(16, 20))}
    assert torch.equal(compression.decode(compression.encode(upd, "fedzip-like"))["w"], upd["w"])


@SETTINGS
@given(pool=st.lists(st.floats(-10, 10, width=32), min_size=1, max_size=4),
       idx=arrays(np.int64, 300, elements=st.integers(0, 3)))
def test_dense_kmeans_exact_on_at_most_k_distinct_values(pool, idx):
    u = np.array(pool, np.float32)[idx % len(pool)]
    upd = {"w": torch.from_numpy(u)}
    out = compression.decode(compression.encode(upd, "quant=kmeans,clusters=4,min-numel=0"))["w"]
    assert torch.equal(out, upd["w"])
