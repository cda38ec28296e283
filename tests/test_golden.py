"""Golden payloads of every named preset: stored bytes still decode to the recorded values, and the
fixed input still encodes to the stored bytes. A change made symmetrically in encoder and decoder (a
stream reordered, a field shifted) passes every round-trip test but fails here.

When a test here fails on purpose, see ``tests/golden/regenerate.py`` (``python -m tests.golden.regenerate``):
an encoder change regenerates the presets concerned; a wire change also bumps ``FORMAT_VERSION``.
"""

from __future__ import annotations

import json

import pytest

import compression
from tests.golden.regenerate import (GOLDEN_DIR, GOLDEN_FORMAT, MANIFEST, REGENERATE, decoded_digest, read_input,
                                     sha256)

MANIFEST_DATA = json.loads(MANIFEST.read_text())
PAYLOADS = MANIFEST_DATA["payloads"]
HINT = f"if the change is deliberate, run `{REGENERATE}` (see its docstring for when to bump FORMAT_VERSION)"


@pytest.fixture(scope="module")
def golden_input():
    assert sha256((GOLDEN_DIR / MANIFEST_DATA["input"]["file"]).read_bytes()) == MANIFEST_DATA["input"]["sha256"]
    return read_input(MANIFEST_DATA["input"]["tensors"])


def stored(preset: str) -> bytes:
    data = (GOLDEN_DIR / PAYLOADS[preset]["file"]).read_bytes()
    assert sha256(data) == PAYLOADS[preset]["sha256"] and len(data) == PAYLOADS[preset]["bytes"], \
        f"{preset}.bin does not match manifest.json"
    return data


def test_manifest_is_for_this_wire_format_and_every_preset():
    assert MANIFEST_DATA["golden_format"] == GOLDEN_FORMAT
    assert MANIFEST_DATA["wire_format_version"] == compression.FORMAT_VERSION, (
        f"FORMAT_VERSION is {compression.FORMAT_VERSION} but the goldens were made with "
        f"{MANIFEST_DATA['wire_format_version']}: {HINT}")
    assert set(PAYLOADS) == set(compression.PRESET_SPECS), f"presets without goldens (or stale goldens): {HINT}"
    for preset, entry in PAYLOADS.items():
        assert entry["spec"] == str(compression.parse_spec(compression.PRESET_SPECS[preset])), \
            f"preset {preset!r} now means another pipeline: {HINT}"


@pytest.mark.parametrize("preset", sorted(PAYLOADS))
def test_stored_payload_decodes_to_the_recorded_values(preset, golden_input):
    data = stored(preset)
    assert data[:4] == compression.MAGIC and data[4] == MANIFEST_DATA["wire_format_version"]
    assert str(compression.peek_spec(data)) == PAYLOADS[preset]["spec"]
    shapes = {k: tuple(v.shape) for k, v in golden_input.items()}
    decoded = compression.decode(data, expected=shapes)
    assert list(decoded) == list(golden_input)  # tensor order is part of the format
    assert decoded_digest(decoded) == PAYLOADS[preset]["decoded_sha256"], \
        f"the stored {preset} payload decodes to different values: {HINT}"
    if preset == "fp32":  # lossless: the recorded values are the input itself
        assert all(decoded[k].equal(golden_input[k].float()) for k in decoded)


@pytest.mark.parametrize("preset", sorted(PAYLOADS))
def test_input_encodes_to_the_stored_bytes(preset, golden_input):
    got = compression.encode(golden_input, compression.PRESET_SPECS[preset], round=MANIFEST_DATA["round"],
                             seed=MANIFEST_DATA["seed"])
    want = stored(preset)
    if got != want:
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        pytest.fail(f"{preset}: encoder output changed ({len(want)} B stored, {len(got)} B now, first difference "
                    f"at byte {first}): {HINT}")
