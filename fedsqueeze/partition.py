"""Seeded, reproducible partitions of a labelled dataset across clients.

Three schemes, all pure functions of ``(labels, num_partitions, seed, ...)``:

* ``iid``: a seeded permutation cut into equal parts;
* ``dirichlet``: per class, proportions drawn from ``Dir(alpha)`` across
  clients (Hsu et al., 2019), redrawn until every client has at least
  ``min_size`` samples;
* ``shards``: McMahan et al.'s pathological split: sort by label, cut into
  ``num_partitions * shards_per_client`` equal shards, deal each client
  ``shards_per_client`` random shards (200 shards of 300 for 100 clients).
"""

from __future__ import annotations

import numpy as np

__all__ = ["SCHEMES", "partition", "label_counts", "describe"]

SCHEMES = ("iid", "dirichlet", "shards")


def _iid(labels: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), n)]


def _dirichlet(
    labels: np.ndarray, n: int, rng: np.random.Generator, alpha: float, min_size: int
) -> list[np.ndarray]:
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    for _ in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for idx in by_class:
            props = rng.dirichlet(np.full(n, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        merged = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in merged) >= min_size:
            return merged
    raise ValueError(
        f"dirichlet: could not give all {n} clients >= {min_size} samples with alpha={alpha}; "
        "raise alpha or lower the number of clients"
    )


def _shards(
    labels: np.ndarray, n: int, rng: np.random.Generator, shards_per_client: int
) -> list[np.ndarray]:
    num_shards = n * shards_per_client
    if num_shards > len(labels):
        raise ValueError(f"shards: {num_shards} shards for {len(labels)} samples")
    # Stable sort keeps the original order within a label, as in the paper.
    order = np.argsort(labels, kind="stable")
    shard_size = len(labels) // num_shards
    shards = order[: shard_size * num_shards].reshape(num_shards, shard_size)
    dealt = rng.permutation(num_shards).reshape(n, shards_per_client)
    return [np.sort(shards[row].ravel()) for row in dealt]


def partition(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str = "iid",
    *,
    seed: int = 0,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_size: int = 10,
) -> list[np.ndarray]:
    """Split sample indices ``0..len(labels)-1`` into ``num_partitions`` parts.

    Returns
    -------
    list of np.ndarray
        Sorted int64 index arrays, disjoint; together they cover the dataset
        (``shards`` drops the remainder when ``len(labels)`` is not a multiple
        of the shard count).

    Raises
    ------
    ValueError
        Unknown scheme or impossible parameters.
    """
    labels = np.asarray(labels)
    if num_partitions < 1 or num_partitions > len(labels):
        raise ValueError(f"num_partitions must be in [1, {len(labels)}], got {num_partitions}")
    rng = np.random.default_rng([seed, 0x5EED])
    if scheme == "iid":
        return _iid(labels, num_partitions, rng)
    if scheme == "dirichlet":
        if not alpha > 0:
            raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
        return _dirichlet(labels, num_partitions, rng, alpha, min_size)
    if scheme == "shards":
        if shards_per_client < 1:
            raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client}")
        return _shards(labels, num_partitions, rng, shards_per_client)
    raise ValueError(f"unknown partition scheme {scheme!r}; choose one of {SCHEMES}")


def label_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int | None = None) -> np.ndarray:
    """``(num_partitions, num_classes)`` matrix of label counts per partition.

    ``num_classes`` defaults to ``max(labels) + 1``; give the dataset's when a class may be absent.
    """
    n = int(labels.max()) + 1 if num_classes is None else num_classes
    return np.stack([np.bincount(labels[p], minlength=n) for p in parts])


def describe(labels: np.ndarray, parts: list[np.ndarray], limit: int = 10, num_classes: int | None = None) -> str:
    """A short human-readable summary: sizes and label counts per client (see :func:`label_counts`)."""
    counts = label_counts(labels, parts, num_classes)
    sizes = counts.sum(axis=1)
    lines = [
        f"{len(parts)} partitions, sizes min/median/max = "
        f"{sizes.min()}/{int(np.median(sizes))}/{sizes.max()}, "
        f"labels per client (>0) median = {int(np.median((counts > 0).sum(axis=1)))}"
    ]
    for i in range(min(limit, len(parts))):
        lines.append(f"  client {i:3d}: n={sizes[i]:5d} labels={counts[i].tolist()}")
    if len(parts) > limit:
        lines.append(f"  ... {len(parts) - limit} more")
    return "\n".join(lines)
