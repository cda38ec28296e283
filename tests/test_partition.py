import numpy as np
import pytest

from fedsqueeze.partition import label_counts, partition


@pytest.fixture(scope="module")
def labels(mnist):
    return np.asarray(mnist.train_labels)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_same_seed_same_partition_other_seed_differs(labels, scheme):
    a = partition(labels, 100, scheme, seed=3)
    b = partition(labels, 100, scheme, seed=3)
    c = partition(labels, 100, scheme, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partitions_are_disjoint_and_cover(labels, scheme):
    parts = partition(labels, 100, scheme, seed=0)
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx) == 60000


def test_iid_is_balanced(labels):
    counts = label_counts(labels, partition(labels, 100, "iid", seed=0))
    assert (counts.sum(1) == 600).all()
    assert (counts > 0).all()  # every client sees every digit


def test_shards_is_mcmahan_pathological(labels):
    parts = partition(labels, 100, "shards", seed=0, shards_per_client=2)
    counts = label_counts(labels, parts)
    assert (counts.sum(1) == 600).all()
    labels_per_client = (counts > 0).sum(1)
    # A 300-sample shard of label-sorted data holds one digit, rarely two at a boundary.
    assert labels_per_client.max() <= 4 and np.median(labels_per_client) <= 2


def test_dirichlet_skew_grows_as_alpha_shrinks(labels):
    def mean_max_share(alpha):
        counts = label_counts(labels, partition(labels, 100, "dirichlet", seed=0, alpha=alpha))
        return float((counts.max(1) / counts.sum(1)).mean())

    assert mean_max_share(0.1) > mean_max_share(1.0) > mean_max_share(100.0)
    assert mean_max_share(100.0) < 0.2  # near-IID: no digit dominates


def test_bad_arguments_raise(labels):
    with pytest.raises(ValueError, match="unknown partition scheme"):
        partition(labels, 10, "zipf")
    with pytest.raises(ValueError, match="alpha"):
        partition(labels, 10, "dirichlet", alpha=0)
    with pytest.raises(ValueError, match="num_partitions"):
        partition(labels, 0, "iid")
