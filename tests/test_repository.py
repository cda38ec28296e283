"""What the repository tracks: sources, docs, benchmark ledgers and plots, golden payloads; no build artefacts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Built or downloaded things, which a clone recreates (wheels, compiled modules, exported models, caches).
ARTEFACTS = (".whl", ".so", ".pyc", ".pyd", ".egg", ".tar.gz", ".zip", ".pt", ".pt2", ".pth", ".npz", ".npy", ".gz")
MAX_BYTES = 1_000_000  # the largest tracked file is a plot of a few hundred kB


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.stdout.decode().split("\0") if p]


def test_no_build_artefacts_are_tracked():
    tracked = _tracked()
    assert "pyproject.toml" in tracked
    assert [p for p in tracked if p.endswith(ARTEFACTS)] == []


def test_no_large_files_are_tracked():
    big = [(p, (ROOT / p).stat().st_size) for p in _tracked() if (ROOT / p).is_file()]
    assert [(p, n) for p, n in big if n > MAX_BYTES] == []
