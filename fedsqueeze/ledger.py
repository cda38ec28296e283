"""The accuracy-vs-bytes ledger: ``metrics.csv`` row by row, ``summary.json`` at the end.

Each round's row is appended and fsync'ed as soon as the round is evaluated,
so a crash loses at most the round in progress. :meth:`Ledger.open` on an
existing file (resume) keeps the first ``keep_rows`` rows and drops the rest.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import TARGETS

__all__ = ["COLUMNS", "RoundRow", "Ledger", "accuracy", "evaluated", "targets_reached", "package_versions",
           "git_revision"]

COLUMNS = (
    "round",
    "test_accuracy",
    "test_loss",
    "uplink_bytes",
    "downlink_bytes",
    "cum_uplink_bytes",
    "cum_downlink_bytes",
    "uplink_dense_bytes",
    "downlink_dense_bytes",
    "cum_uplink_dense_bytes",
    "cum_downlink_dense_bytes",
    "uplink_ratio",
    "downlink_ratio",
    "mean_bits_per_param",
    "mean_rel_distortion",
    "clients_sampled",
    "clients_ok",
    "clients_failed",
    "failures",
    "applied",
    "pipeline_up",
    "pipeline_down",
    "round_s",
    "wall_s",
    "train_phase_s",
    "eval_s",
    "client_train_s",
    "client_encode_s",
    "phase",
)


@dataclass
class RoundRow:
    """The measurements of one round before cumulative columns are added."""

    round: int
    test_accuracy: float | None  # None: not evaluated this round (``eval-every``)
    test_loss: float | None
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    uplink_dense_bytes: int = 0
    downlink_dense_bytes: int = 0
    bits_per_param: list[float] = field(default_factory=list)
    rel_distortion: list[float] = field(default_factory=list)
    clients_sampled: int = 0
    clients_ok: int = 0
    failures: list[str] = field(default_factory=list)
    applied: bool = False
    round_s: float = 0.0
    train_phase_s: float = 0.0  # broadcast sent -> last reply in (server wall clock)
    eval_s: float = 0.0
    client_train_s: list[float] = field(default_factory=list)
    client_encode_s: list[float] = field(default_factory=list)
    phase: str = "train"  # or finetune-<sparsity> / qat (model-compression stages)


def _mean(xs: Sequence[float]) -> float | str:
    return round(sum(xs) / len(xs), 6) if xs else ""


def _median(xs: Sequence[float]) -> float | str:
    return round(statistics.median(xs), 4) if xs else ""


def _ratio(dense: int, sent: int) -> float | str:
    return round(dense / sent, 3) if sent and dense else ""


class Ledger:
    """Append-only CSV ledger with running totals.

    Parameters
    ----------
    out_dir
        Run directory; ``metrics.csv`` and ``summary.json`` go there.
    pipeline_up, pipeline_down
        Canonical pipeline strings written in every row.
    keep_rows
        On resume: how many existing data rows to keep (``None`` = start fresh).
    """

    def __init__(self, out_dir: Path, pipeline_up: str, pipeline_down: str, keep_rows: int | None = None):
        self.path = Path(out_dir) / "metrics.csv"
        self.pipeline_up, self.pipeline_down = pipeline_up, pipeline_down
        self.rows: list[dict[str, Any]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_rows is not None and self.path.exists():
            with open(self.path, newline="") as fh:
                self.rows = list(csv.DictReader(fh))[:keep_rows]
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _cum(self, column: str) -> int:
        return int(self.rows[-1][column]) if self.rows else 0

    def append(self, r: RoundRow, wall_s: float) -> dict[str, Any]:
        """Add one round (durably) and return the full row written."""
        row = {
            "round": r.round,
            "test_accuracy": "" if r.test_accuracy is None else round(r.test_accuracy, 6),
            "test_loss": "" if r.test_loss is None else round(r.test_loss, 6),
            "uplink_bytes": r.uplink_bytes,
            "downlink_bytes": r.downlink_bytes,
            "cum_uplink_bytes": self._cum("cum_uplink_bytes") + r.uplink_bytes,
            "cum_downlink_bytes": self._cum("cum_downlink_bytes") + r.downlink_bytes,
            "uplink_dense_bytes": r.uplink_dense_bytes,
            "downlink_dense_bytes": r.downlink_dense_bytes,
            "cum_uplink_dense_bytes": self._cum("cum_uplink_dense_bytes") + r.uplink_dense_bytes,
            "cum_downlink_dense_bytes": self._cum("cum_downlink_dense_bytes") + r.downlink_dense_bytes,
            "uplink_ratio": _ratio(r.uplink_dense_bytes, r.uplink_bytes),
            "downlink_ratio": _ratio(r.downlink_dense_bytes, r.downlink_bytes),
            "mean_bits_per_param": _mean(r.bits_per_param),
            "mean_rel_distortion": _mean(r.rel_distortion),
            "clients_sampled": r.clients_sampled,
            "clients_ok": r.clients_ok,
            "clients_failed": len(r.failures),
            "failures": ";".join(r.failures),
            "applied": int(r.applied),
            "pipeline_up": self.pipeline_up,
            "pipeline_down": self.pipeline_down,
            "round_s": round(r.round_s, 3),
            "wall_s": round(wall_s, 3),
            "train_phase_s": round(r.train_phase_s, 3),
            "eval_s": round(r.eval_s, 3),
            "client_train_s": _median(r.client_train_s),
            "client_encode_s": _median(r.client_encode_s),
            "phase": r.phase,
        }
        self.rows.append(row)
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=COLUMNS).writerow(row)
            fh.flush()
            os.fsync(fh.fileno())
        return row


def accuracy(row: Mapping[str, Any]) -> float | None:
    """A ledger row's test accuracy, or ``None`` if that round was not evaluated (``eval-every``)."""
    value = row["test_accuracy"]
    return None if value in ("", None) else float(value)


def evaluated(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows whose global model was evaluated (all of them unless ``eval-every`` > 1)."""
    return [r for r in rows if accuracy(r) is not None]


def targets_reached(rows: Sequence[Mapping[str, Any]], targets: Sequence[float] = TARGETS) -> dict[str, Any]:
    """First evaluated round reaching each target accuracy, with its cumulative bytes and wall time."""
    out: dict[str, Any] = {}
    for t in targets:
        hit = next((r for r in evaluated(rows) if accuracy(r) >= t), None)
        out[f"{t:g}"] = None if hit is None else {
            "round": int(hit["round"]),
            "cum_uplink_bytes": int(hit["cum_uplink_bytes"]),
            "cum_downlink_bytes": int(hit["cum_downlink_bytes"]),
            "cum_uplink_dense_bytes": int(hit["cum_uplink_dense_bytes"]),
            "wall_s": float(hit["wall_s"]),
        }
    return out


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine the results."""
    out = {"python": platform.python_version()}
    for pkg in ("fedsqueeze", "torch", "torchvision", "flwr", "numpy", "ray", "zstandard", "torchao"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def git_revision() -> str | None:
    """The project's git commit (``+dirty`` if modified), or None outside git.

    ``$FEDSQUEEZE_GIT_REV`` wins: under ``flwr run`` the ServerApp executes
    from an unpacked FAB, not from the checkout.
    """
    if os.environ.get("FEDSQUEEZE_GIT_REV"):
        return os.environ["FEDSQUEEZE_GIT_REV"]
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary.json`` atomically."""
    path = Path(out_dir) / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path
