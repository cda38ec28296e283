"""Write the golden payloads: ``python -m tests.golden.regenerate [PRESET ...]``.

Files in ``tests/golden/``:

``input.bin``
    The fixed update, raw little-endian tensors in manifest order (written
    once from a closed formula and then only read, so a platform's last-ulp
    ``sin`` cannot change it).
``<preset>.bin``
    ``compression.encode(input, PRESET_SPECS[preset], round=ROUND, seed=SEED)``.
``manifest.json``
    ``golden_format`` (this layout), ``wire_format_version``
    (``compression.FORMAT_VERSION`` the payloads were made with), round,
    seed, and per preset the canonical spec, size, SHA-256 of the payload and
    SHA-256 of its decoded float32 tensors.

``tests/test_golden.py`` decodes every stored payload to the recorded values
and re-encodes the input to the same bytes. When that fails:

- the encoder changed but old payloads still decode (e.g. a different
  k-means init): regenerate the presets concerned, say so in the commit;
- old payloads no longer decode the same (a stream reordered, a field
  moved): bump ``compression.wire.FORMAT_VERSION`` and regenerate all
  presets in the same commit.

Without arguments every preset is regenerated; naming presets regenerates
only those (refused when the wire format version changed: then all must be).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

import compression

GOLDEN_DIR = Path(__file__).resolve().parent
MANIFEST = GOLDEN_DIR / "manifest.json"
INPUT = GOLDEN_DIR / "input.bin"
GOLDEN_FORMAT = 1
ROUND, SEED = 3, 7
REGENERATE = "python -m tests.golden.regenerate"

# name, dtype, shape: conv and fc weights above min-numel (pruned/quantized), a raw bias,
# and a float16 tensor (its dtype code travels in the header)
TENSORS = [("conv.weight", "float32", (16, 1, 5, 5)), ("fc.weight", "float32", (10, 200)),
           ("fc.bias", "float32", (10,)), ("half", "float16", (300,))]
_NP = {"float32": "<f4", "float16": "<f2"}
_TORCH = {"float32": torch.float32, "float16": torch.float16}

log = logging.getLogger("tests.golden")


def _formula(i: int, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    x = np.arange(n, dtype=np.float64)
    v = 0.05 * np.sin(0.37 * x + 0.5 + i) * (1 + (x % 7) / 3)
    v[(x * 7919) % 53 == 0] += 0.3 * (-1) ** i  # a few large entries for top-k to find
    return v.reshape(shape)


def write_input() -> None:
    """Create ``input.bin`` from the formula (only when it does not exist yet)."""
    INPUT.write_bytes(b"".join(_formula(i, shape).astype(_NP[dt]).tobytes() for i, (_, dt, shape) in
                               enumerate(TENSORS)))


def read_input(tensors: list[dict] | None = None) -> dict[str, torch.Tensor]:
    """The golden update as torch tensors, from ``input.bin``."""
    specs = [(t["name"], t["dtype"], tuple(t["shape"])) for t in tensors] if tensors else TENSORS
    blob, pos, out = INPUT.read_bytes(), 0, {}
    for name, dt, shape in specs:
        n = int(np.prod(shape)) * np.dtype(_NP[dt]).itemsize
        arr = np.frombuffer(blob[pos:pos + n], dtype=_NP[dt]).reshape(shape)
        out[name] = torch.from_numpy(arr.astype(_NP[dt]).copy()).to(_TORCH[dt])
        pos += n
    if pos != len(blob):
        raise ValueError(f"{INPUT} has {len(blob)} bytes, the manifest describes {pos}")
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decoded_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over each decoded tensor's name, shape and float32 little-endian values, in order."""
    h = hashlib.sha256()
    for name, t in tensors.items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        h.update(t.numpy().astype("<f4").tobytes())
    return h.hexdigest()


def entry(preset: str, update: dict[str, torch.Tensor]) -> tuple[dict, bytes]:
    """The manifest entry and payload bytes of one preset."""
    spec = compression.parse_spec(compression.PRESET_SPECS[preset])
    payload = compression.encode(update, spec, round=ROUND, seed=SEED)
    return {"spec": str(spec), "file": f"{preset}.bin", "bytes": len(payload), "sha256": sha256(payload),
            "decoded_sha256": decoded_digest(compression.decode(payload))}, payload


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", help="presets to regenerate (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.presets) - set(compression.PRESET_SPECS))
    if unknown:
        parser.error(f"unknown presets {unknown}; known: {sorted(compression.PRESET_SPECS)}")
    old = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    if old and args.presets and old.get("wire_format_version") != compression.FORMAT_VERSION:
        parser.error(f"wire format {old.get('wire_format_version')} -> {compression.FORMAT_VERSION}: "
                     "regenerate every preset (no arguments)")
    if not INPUT.exists():
        write_input()
        log.info("wrote %s", INPUT.name)
    update = read_input()
    chosen = args.presets or sorted(compression.PRESET_SPECS)
    payloads = {k: v for k, v in old.get("payloads", {}).items() if k in compression.PRESET_SPECS}
    for preset in chosen:
        new, payload = entry(preset, update)
        before = payloads.get(preset, {})
        (GOLDEN_DIR / new["file"]).write_bytes(payload)
        payloads[preset] = new
        what = "unchanged" if before.get("sha256") == new["sha256"] else (
            f"changed ({before.get('bytes')} B -> {new['bytes']} B)" if before else f"new ({new['bytes']} B)")
        log.info("%-18s %s", preset, what)
    for stale in set(old.get("payloads", {})) - set(compression.PRESET_SPECS):
        (GOLDEN_DIR / f"{stale}.bin").unlink(missing_ok=True)
        log.info("%-18s removed (no longer a preset)", stale)
    manifest = {
        "golden_format": GOLDEN_FORMAT,
        "wire_format_version": compression.FORMAT_VERSION,
        "regenerate": REGENERATE,
        "round": ROUND,
        "seed": SEED,
        "input": {"file": INPUT.name, "sha256": sha256(INPUT.read_bytes()),
                  "tensors": [{"name": n, "dtype": dt, "shape": list(s)} for n, dt, s in TENSORS]},
        "payloads": dict(sorted(payloads.items())),
    }
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
