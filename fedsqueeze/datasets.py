"""Datasets, registered by name: arrays, classes, input shape, normalisation and checksums.

Everything that depends on the data asks the dataset the run names (run-config
key ``dataset``, default ``mnist``): the server (partitions, label columns,
test set, the bound on a client's example count, FLOP counts, summary
provenance), the clients (their partition's tensors) and the models (input
shape and number of classes). A dataset is a :class:`Dataset` registered with
:func:`register_dataset`; :class:`fedsqueeze.config.RunConfig` validates the
``dataset`` key against this registry when a config is parsed, so a dataset
registered at run time (a plugin) is accepted.

:func:`load_dataset` calls the dataset's loader once per process and
arguments, then verifies what it returned before anyone sees it: four arrays,
labels in ``[0, num_classes)``, images that reshape to ``input_shape``, and the
SHA-256 of each array equal to the digest the dataset declares
(:attr:`Dataset.checksums`). Unverified data never reaches a run.

The built-in ``mnist`` reads MNIST through :func:`fedsqueeze.data.load_mnist`;
its declared digests are those of the original IDX files (its
:attr:`Dataset.digest` rebuilds each file's bytes from the array).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ARRAY_KEYS", "DATASETS", "DEFAULT_DATASET", "Dataset", "DatasetArrays", "DatasetError", "array_sha256",
           "dataset_names", "dataset_provenance", "get_dataset", "load_dataset", "register_dataset", "test_tensors",
           "to_input"]

#: The four arrays every dataset provides.
ARRAY_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
#: The dataset a run uses unless its config says otherwise.
DEFAULT_DATASET = "mnist"


class DatasetError(ValueError):
    """A dataset is unknown, badly declared, or its loader returned arrays that fail verification."""


@dataclass(frozen=True)
class DatasetArrays:
    """What a dataset's loader returns.

    Attributes
    ----------
    train_images, test_images : numpy.ndarray
        ``(N, ...)`` with ``prod(shape[1:]) == prod(input_shape)``; typically uint8.
    train_labels, test_labels : numpy.ndarray
        ``(N,)`` integer class ids.
    provenance : Mapping
        JSON-ready description of where the arrays came from (recorded in
        ``summary.json["data"]``).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    provenance: Mapping[str, Any] = field(default_factory=dict)


def array_sha256(key: str, array: np.ndarray) -> str:
    """Default digest of an array: SHA-256 of ``"<dtype>|<shape>|"`` followed by its C-order bytes.

    ``key`` is unused; it lets a dataset's own digest depend on which array it hashes.
    """
    arr = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{arr.dtype.str}|{','.join(map(str, arr.shape))}|".encode())
    h.update(arr.data)
    return h.hexdigest()


@dataclass(frozen=True)
class Dataset:
    """A registered dataset.

    Parameters
    ----------
    name : str
        The value of the ``dataset`` run-config key.
    load : callable
        ``load(data_dir: str | None) -> DatasetArrays``. ``data_dir`` is the
        run's ``data-dir`` key (``None`` when empty); a loader may ignore it or
        read its own setting. It runs once per process (memoized) on the server
        and on every client, so it must return the same arrays everywhere.
    num_classes : int
        Labels are ``0 .. num_classes - 1``; models get this many outputs.
    input_shape : tuple of int
        One example as the models take it, without the batch dimension, e.g. ``(1, 28, 28)``.
    mean, std : float or tuple of float
        Normalisation after scaling: ``x = (images / scale - mean) / std``; a tuple is per
        channel (the first axis of ``input_shape``).
    checksums : Mapping[str, str]
        The expected ``digest(key, array)`` of each of :data:`ARRAY_KEYS`.
    digest : callable
        ``digest(key, array) -> str`` (default :func:`array_sha256`).
    scale : float
        Divides the raw images first (255 for uint8 pixels).
    description : str
        One line for logs and listings.
    """

    name: str
    load: Callable[[str | None], DatasetArrays]
    num_classes: int
    input_shape: tuple[int, ...]
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    checksums: Mapping[str, str]
    digest: Callable[[str, np.ndarray], str] = array_sha256
    scale: float = 255.0
    description: str = ""

    def check(self) -> None:
        """Validate the declaration itself.

        Raises
        ------
        DatasetError
            Naming the field that is wrong.
        """
        def bad(what: str) -> DatasetError:
            return DatasetError(f"dataset {self.name!r}: {what}")

        if not isinstance(self.name, str) or not self.name or any(c.isspace() or c in ",'\"" for c in self.name):
            raise DatasetError(f"dataset name must be a non-empty string without spaces, commas or quotes, "
                               f"got {self.name!r}")
        if not callable(self.load) or not callable(self.digest):
            raise bad("load and digest must be callable")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise bad(f"num_classes must be an int >= 2, got {self.num_classes!r}")
        shape = tuple(self.input_shape)
        if not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise bad(f"input_shape must be positive ints, got {self.input_shape!r}")
        for what, value in (("mean", self.mean), ("std", self.std)):
            values = value if isinstance(value, tuple) else (value,)
            if isinstance(value, tuple) and len(value) != shape[0]:
                raise bad(f"per-channel {what} needs {shape[0]} values (input_shape[0]), got {len(value)}")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise bad(f"{what} must be finite numbers, got {value!r}")
        stds = self.std if isinstance(self.std, tuple) else (self.std,)
        if not all(s > 0 for s in stds) or not (math.isfinite(self.scale) and self.scale > 0):
            raise bad("std and scale must be > 0")
        if set(self.checksums) != set(ARRAY_KEYS):
            raise bad(f"checksums must name exactly {list(ARRAY_KEYS)}, got {sorted(self.checksums)}")


#: name -> dataset; read live by config validation and everything below.
DATASETS: dict[str, Dataset] = {}


def register_dataset(dataset: Dataset, *, replace: bool = False) -> Dataset:
    """Register ``dataset`` under ``dataset.name``.

    Parameters
    ----------
    dataset : Dataset
        The declaration; checked with :meth:`Dataset.check`.
    replace : bool
        Allow re-registering an existing name (otherwise an error).

    Returns
    -------
    Dataset
        ``dataset``, so the call can be used as an expression.

    Raises
    ------
    DatasetError
        A bad declaration, or the name is taken and ``replace`` is false.
    """
    if not isinstance(dataset, Dataset):
        raise DatasetError(f"register_dataset takes a fedsqueeze.datasets.Dataset, got {type(dataset).__name__}")
    dataset.check()
    if dataset.name in DATASETS and not replace:
        raise DatasetError(f"dataset {dataset.name!r} is already registered (pass replace=True to override it)")
    DATASETS[dataset.name] = dataset
    for key in [k for k in _LOADED if k[0] == dataset.name]:  # a replaced dataset must be loaded afresh
        del _LOADED[key]
    for key in [k for k in _TEST_TENSORS if k[0] == dataset.name]:
        del _TEST_TENSORS[key]
    return dataset


def dataset_names() -> list[str]:
    """The registered names, sorted."""
    return sorted(DATASETS)


def get_dataset(name: str) -> Dataset:
    """The dataset registered as ``name``.

    Raises
    ------
    DatasetError
        Not registered (the message lists what is).
    """
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise DatasetError(f"unknown dataset {name!r}; registered: {', '.join(dataset_names())}") from None


_LOADED: dict[tuple[str, ...], DatasetArrays] = {}


def _verify(ds: Dataset, arrays: DatasetArrays) -> None:
    if not isinstance(arrays, DatasetArrays):
        raise DatasetError(f"dataset {ds.name!r}: load() returned {type(arrays).__name__}, not DatasetArrays")
    per_example = math.prod(ds.input_shape)
    for split in ("train", "test"):
        images, labels = getattr(arrays, f"{split}_images"), getattr(arrays, f"{split}_labels")
        if not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray):
            raise DatasetError(f"dataset {ds.name!r}: {split} images and labels must be numpy arrays")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) == 0:
            raise DatasetError(f"dataset {ds.name!r}: {split}_labels must be a non-empty 1-D integer array, "
                               f"got {labels.dtype} {labels.shape}")
        if len(images) != len(labels) or math.prod(images.shape[1:]) != per_example:
            raise DatasetError(f"dataset {ds.name!r}: {split}_images {images.shape} do not hold {len(labels)} "
                               f"examples of input_shape {ds.input_shape}")
        if labels.min() < 0 or labels.max() >= ds.num_classes:
            raise DatasetError(f"dataset {ds.name!r}: {split} labels span [{labels.min()}, {labels.max()}], "
                               f"outside [0, {ds.num_classes})")
    for key in ARRAY_KEYS:
        got = ds.digest(key, getattr(arrays, key))
        if got != ds.checksums[key]:
            raise DatasetError(f"dataset {ds.name!r}: {key} has SHA-256 {got}, the dataset declares "
                               f"{ds.checksums[key]}; the data differs from what the dataset was defined on")


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> DatasetArrays:
    """The verified arrays of dataset ``name`` (loaded once per process and arguments).

    Parameters
    ----------
    name : str
        A registered dataset.
    data_dir : path-like, optional
        The run's ``data-dir``; empty means "not configured".

    Raises
    ------
    DatasetError
        Unknown dataset, or arrays that fail verification (shape, labels, checksums).
    Exception
        Whatever the loader raises when the data cannot be found (MNIST:
        :class:`fedsqueeze.data.MnistUnavailable`).
    """
    ds = get_dataset(name)
    data_dir = str(data_dir) if data_dir else None
    # The environment picks MNIST's directory and cache when data-dir is empty, so it is part of the key.
    key = (name, str(data_dir), os.environ.get("FEDSQUEEZE_DATA_DIR", ""), os.environ.get("FEDSQUEEZE_CACHE", ""))
    if key not in _LOADED:
        arrays = ds.load(data_dir)
        _verify(ds, arrays)
        _LOADED[key] = arrays
    return _LOADED[key]


def to_input(images: np.ndarray, dataset: str | Dataset = DEFAULT_DATASET):
    """Raw images ``(N, ...)`` → normalised float32 tensor ``(N, *input_shape)`` of ``dataset``."""
    import torch

    ds = dataset if isinstance(dataset, Dataset) else get_dataset(dataset)
    x = torch.from_numpy(np.array(images, dtype=np.float32))  # a copy: caches may be read-only memory maps
    if isinstance(ds.mean, tuple) or isinstance(ds.std, tuple):
        x = (x / ds.scale).reshape(len(x), *ds.input_shape)
        view = (-1,) + (1,) * (len(ds.input_shape) - 1)
        mean = torch.tensor(ds.mean if isinstance(ds.mean, tuple) else (ds.mean,), dtype=torch.float32).view(view)
        std = torch.tensor(ds.std if isinstance(ds.std, tuple) else (ds.std,), dtype=torch.float32).view(view)
        return (x - mean) / std
    # Scalar statistics: the same float operations, in the same order, as fedsqueeze.data.to_input.
    return ((x / ds.scale - ds.mean) / ds.std).reshape(len(x), *ds.input_shape)


_TEST_TENSORS: dict[tuple[str, ...], tuple] = {}


def test_tensors(name: str = DEFAULT_DATASET, data_dir: str | os.PathLike[str] | None = None):
    """The dataset's whole test split as ``(x, y)`` tensors, memoized per process."""
    import torch

    data_dir = str(data_dir) if data_dir else None
    key = (name, str(data_dir), os.environ.get("FEDSQUEEZE_DATA_DIR", ""), os.environ.get("FEDSQUEEZE_CACHE", ""))
    if key not in _TEST_TENSORS:
        arrays = load_dataset(name, data_dir)
        _TEST_TENSORS[key] = (to_input(arrays.test_images, name),
                              torch.from_numpy(np.asarray(arrays.test_labels, dtype=np.int64)))
    return _TEST_TENSORS[key]


test_tensors.__test__ = False  # not a pytest test, whatever its name


def dataset_provenance(name: str = DEFAULT_DATASET, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Where the dataset's arrays came from (JSON-ready, for ``summary.json["data"]``).

    The loader's own provenance, plus ``dataset`` (the name) and, unless the
    loader already records them, the verified digests (``sha256``,
    ``sha256_verified``).
    """
    ds = get_dataset(name)
    prov = dict(load_dataset(name, data_dir).provenance)
    prov.setdefault("sha256_verified", True)
    prov.setdefault("sha256", dict(ds.checksums))
    prov = {"dataset": name, **prov}
    return json.loads(json.dumps(prov))


def _load_mnist(data_dir: str | None) -> DatasetArrays:
    from .data import load_mnist

    mnist = load_mnist(data_dir)
    return DatasetArrays(mnist.train_images, mnist.train_labels, mnist.test_images, mnist.test_labels,
                         mnist.provenance)


def _mnist_digest(key: str, array: np.ndarray) -> str:
    """SHA-256 of the original IDX file that decodes to ``array`` (what LeCun's digests are of)."""
    from .data import _CACHE_FILES, _idx_digest

    return _idx_digest(array, _CACHE_FILES[key][1])


def _mnist() -> Dataset:
    from .data import _CACHE_FILES, MNIST_FILES, MNIST_MEAN, MNIST_STD

    return Dataset(name="mnist", load=_load_mnist, num_classes=10, input_shape=(1, 28, 28), mean=MNIST_MEAN,
                   std=MNIST_STD, checksums={key: MNIST_FILES[file] for key, (file, _) in _CACHE_FILES.items()},
                   digest=_mnist_digest, description="MNIST (LeCun et al.): 60,000 + 10,000 28x28 grey digits")


register_dataset(_mnist())
