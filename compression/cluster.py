"""Weight sharing: a small 1-D k-means codebook per tensor (as in FedZip)."""

from __future__ import annotations

import numpy as np

__all__ = ["kmeans_1d", "assign"]


def kmeans_1d(x: np.ndarray, k: int, iters: int = 12) -> np.ndarray:
    """Lloyd's algorithm on scalars, deterministic quantile initialisation.

    Parameters
    ----------
    x : numpy.ndarray
        Flat values.
    k : int
        Number of centroids.
    iters : int
        Lloyd iterations; 1-D k-means converges in a handful.

    Returns
    -------
    numpy.ndarray
        ``k`` sorted float32 centroids (duplicates possible when ``x`` has
        fewer than ``k`` distinct values; zeros if ``x`` is empty).
    """
    if x.size == 0:
        return np.zeros(k, np.float32)
    x64 = x.astype(np.float64)
    c = np.quantile(x64, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        a = assign(x64, c)
        sums = np.bincount(a, weights=x64, minlength=k)
        counts = np.bincount(a, minlength=k)
        new = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), c))
        if np.array_equal(new, c):
            break
        c = new
    return c.astype(np.float32)


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centroids`` for each value (``int64``)."""
    c = centroids.astype(np.float64)
    return np.searchsorted((c[1:] + c[:-1]) / 2, x, side="left").astype(np.int64)
