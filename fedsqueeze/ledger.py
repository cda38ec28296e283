"""The accuracy-vs-bytes ledger: ``metrics.csv`` row by row, ``clients.csv`` client by client.

Each round's row is appended and fsync'ed as soon as the round is evaluated,
so a crash loses at most the round in progress. A :class:`Ledger` opened on
an existing run (resume) keeps the first ``keep_rows`` rows and drops the rest.

Bytes are counted two ways per direction: ``*_bytes`` are Flower messages as
serialized on the wire (their envelopes carry random node and message ids, so
they vary by a few bytes between identical runs), ``*_payload_bytes`` are the
FedSqueeze payloads inside them (identical for the same config and seed).
Round 0 is the handshake (every node reports its partition id) plus the
initial evaluation: its traffic is in that row's ``uplink_bytes`` /
``downlink_bytes`` but not in the cumulative columns, so every cumulative
figure and ratio compares training rounds with training rounds.
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

from .config import TARGETS, RunConfig

__all__ = ["COLUMNS", "CLIENT_COLUMNS", "RoundRow", "ClientRow", "Ledger", "accuracy", "evaluated", "targets_reached", "package_versions",
           "git_revision", "run_summary", "write_summary"]

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
    "uplink_payload_bytes",
    "downlink_payload_bytes",
    "cum_uplink_payload_bytes",
    "cum_downlink_payload_bytes",
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
    "sim_round_s",
    "cum_sim_s",
    "stragglers",
    "overselected",
    "clients_unavailable",
)

CLIENT_COLUMNS = (
    "round",
    "phase",
    "partition_id",
    "node_id",
    "status",
    "num_examples",
    "local_epochs",
    "downlink_bytes",
    "uplink_bytes",
    "downlink_payload_bytes",
    "uplink_payload_bytes",
    "base_version",
    "target_version",
    "downlink_kind",
    "train_s",
    "download_s",
    "compute_s",
    "upload_s",
    "arrival_s",
)


@dataclass
class ClientRow:
    """One sampled client in one round: what it was sent, what it sent back, what became of it.

    ``status`` is ``ok`` (aggregated), a screening tag (``crash``, ``payload``,
    ...), ``timeout`` (no reply), ``straggler`` (arrived after the simulated
    deadline) or ``overselected`` (arrived in time, after the first K).
    The ``*_s`` network columns are simulated seconds, ``None`` when the
    network simulation is off; ``train_s`` is the client's own wall clock.
    """

    partition_id: int
    node_id: int
    status: str = "ok"
    num_examples: int = 0
    local_epochs: int = 0
    downlink_bytes: int = 0
    uplink_bytes: int = 0
    downlink_payload_bytes: int = 0
    uplink_payload_bytes: int = 0
    base_version: int = 0
    target_version: int = 0
    downlink_kind: str = ""  # chain | catchup | full (server.downlink)
    train_s: float = 0.0
    download_s: float | None = None
    compute_s: float | None = None
    upload_s: float | None = None
    arrival_s: float | None = None


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
    uplink_payload_bytes: int = 0
    downlink_payload_bytes: int = 0
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
    handshake: bool = False  # round 0: bytes shown in the row, kept out of the cumulative columns
    sim_round_s: float | None = None  # simulated network time of the round (None: simulation off)
    stragglers: int = 0
    overselected: int = 0
    clients_unavailable: int = 0
    clients: list[ClientRow] = field(default_factory=list)


def _mean(xs: Sequence[float]) -> float | str:
    return round(sum(xs) / len(xs), 6) if xs else ""


def _median(xs: Sequence[float]) -> float | str:
    return round(statistics.median(xs), 4) if xs else ""


def _ratio(dense: int, sent: int) -> float | str:
    return round(dense / sent, 3) if sent and dense else ""


def _opt(x: float | None, digits: int = 6) -> float | str:
    return "" if x is None else round(x, digits)


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]], mode: str) -> None:
    with open(path, mode, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        if mode == "w":
            writer.writeheader()
        writer.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())


class Ledger:
    """Append-only CSV ledgers with running totals: ``metrics.csv`` (rounds) and ``clients.csv``.

    Parameters
    ----------
    out_dir
        Run directory; ``metrics.csv``, ``clients.csv`` and ``summary.json`` go there.
    pipeline_up, pipeline_down
        Canonical pipeline strings written in every row.
    keep_rows
        On resume: how many existing round rows to keep (``None`` = start fresh);
        ``clients.csv`` keeps the clients of those rounds.
    """

    def __init__(self, out_dir: Path, pipeline_up: str, pipeline_down: str, keep_rows: int | None = None):
        self.path = Path(out_dir) / "metrics.csv"
        self.clients_path = Path(out_dir) / "clients.csv"
        self.pipeline_up, self.pipeline_down = pipeline_up, pipeline_down
        self.rows: list[dict[str, Any]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clients: list[dict[str, Any]] = []
        if keep_rows is not None and self.path.exists():
            with open(self.path, newline="") as fh:
                self.rows = list(csv.DictReader(fh))[:keep_rows]
            if self.rows and self.clients_path.exists():
                last = int(self.rows[-1]["round"])  # round numbers strictly increase, stage rounds included
                with open(self.clients_path, newline="") as fh:
                    clients = [c for c in csv.DictReader(fh) if int(c["round"]) <= last]
        self._rewrite(self.path, COLUMNS, self.rows)
        self._rewrite(self.clients_path, CLIENT_COLUMNS, clients)

    @staticmethod
    def _rewrite(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
        tmp = path.with_suffix(".csv.tmp")
        _write_csv(tmp, columns, rows, "w")
        os.replace(tmp, path)

    def _cum(self, column: str) -> int:
        return int(self.rows[-1].get(column) or 0) if self.rows else 0

    def _cum_float(self, column: str) -> float:
        return float(self.rows[-1].get(column) or 0.0) if self.rows else 0.0

    def append(self, r: RoundRow, wall_s: float) -> dict[str, Any]:
        """Add one round (durably) and return the full row written."""
        counted = 0 if r.handshake else 1  # the handshake is shown, not accumulated
        row = {
            "round": r.round,
            "test_accuracy": "" if r.test_accuracy is None else round(r.test_accuracy, 6),
            "test_loss": "" if r.test_loss is None else round(r.test_loss, 6),
            "uplink_bytes": r.uplink_bytes,
            "downlink_bytes": r.downlink_bytes,
            "cum_uplink_bytes": self._cum("cum_uplink_bytes") + counted * r.uplink_bytes,
            "cum_downlink_bytes": self._cum("cum_downlink_bytes") + counted * r.downlink_bytes,
            "uplink_dense_bytes": r.uplink_dense_bytes,
            "downlink_dense_bytes": r.downlink_dense_bytes,
            "cum_uplink_dense_bytes": self._cum("cum_uplink_dense_bytes") + r.uplink_dense_bytes,
            "cum_downlink_dense_bytes": self._cum("cum_downlink_dense_bytes") + r.downlink_dense_bytes,
            "uplink_payload_bytes": r.uplink_payload_bytes,
            "downlink_payload_bytes": r.downlink_payload_bytes,
            "cum_uplink_payload_bytes": self._cum("cum_uplink_payload_bytes") + r.uplink_payload_bytes,
            "cum_downlink_payload_bytes": self._cum("cum_downlink_payload_bytes") + r.downlink_payload_bytes,
            "uplink_ratio": "" if r.handshake else _ratio(r.uplink_dense_bytes, r.uplink_bytes),
            "downlink_ratio": "" if r.handshake else _ratio(r.downlink_dense_bytes, r.downlink_bytes),
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
            "sim_round_s": _opt(r.sim_round_s),
            "cum_sim_s": "" if r.sim_round_s is None else round(self._cum_float("cum_sim_s") + r.sim_round_s, 6),
            "stragglers": r.stragglers,
            "overselected": r.overselected,
            "clients_unavailable": r.clients_unavailable,
        }
        clients = [{
            "round": r.round, "phase": r.phase, "partition_id": c.partition_id, "node_id": c.node_id,
            "status": c.status, "num_examples": c.num_examples, "local_epochs": c.local_epochs,
            "downlink_bytes": c.downlink_bytes, "uplink_bytes": c.uplink_bytes,
            "downlink_payload_bytes": c.downlink_payload_bytes, "uplink_payload_bytes": c.uplink_payload_bytes,
            "base_version": c.base_version, "target_version": c.target_version, "downlink_kind": c.downlink_kind,
            "train_s": round(c.train_s, 4),
            "download_s": _opt(c.download_s), "compute_s": _opt(c.compute_s), "upload_s": _opt(c.upload_s),
            "arrival_s": _opt(c.arrival_s),
        } for c in r.clients]
        # clients first: a crash between the two writes leaves client rows of a round the ledger lacks,
        # which a resume drops, rather than a round whose clients are missing
        _write_csv(self.clients_path, CLIENT_COLUMNS, clients, "a")
        self.rows.append(row)
        _write_csv(self.path, COLUMNS, [row], "a")
        return row


def accuracy(row: Mapping[str, Any]) -> float | None:
    """A ledger row's test accuracy, or ``None`` if that round was not evaluated (``eval-every``)."""
    value = row["test_accuracy"]
    return None if value in ("", None) else float(value)


def evaluated(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows whose global model was evaluated (all of them unless ``eval-every`` > 1)."""
    return [r for r in rows if accuracy(r) is not None]


def targets_reached(rows: Sequence[Mapping[str, Any]], targets: Sequence[float] = TARGETS) -> dict[str, Any]:
    """First evaluated round reaching each target accuracy, with its cumulative bytes and times.

    ``cum_sim_s`` is the simulated network time (``None`` when the run had no network simulation).
    """
    out: dict[str, Any] = {}
    for t in targets:
        hit = next((r for r in evaluated(rows) if accuracy(r) >= t), None)
        out[f"{t:g}"] = None if hit is None else {
            "round": int(hit["round"]),
            "cum_uplink_bytes": int(hit["cum_uplink_bytes"]),
            "cum_downlink_bytes": int(hit["cum_downlink_bytes"]),
            "cum_uplink_dense_bytes": int(hit["cum_uplink_dense_bytes"]),
            "cum_downlink_dense_bytes": int(hit.get("cum_downlink_dense_bytes") or 0),
            "cum_uplink_payload_bytes": int(hit.get("cum_uplink_payload_bytes") or 0),
            "cum_downlink_payload_bytes": int(hit.get("cum_downlink_payload_bytes") or 0),
            "cum_sim_s": float(hit["cum_sim_s"]) if hit.get("cum_sim_s") not in ("", None) else None,
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


def run_summary(
    status: str,
    cfg: RunConfig,
    rows: Sequence[Mapping[str, Any]],
    *,
    data: Mapping[str, Any],
    pipeline_up: str,
    pipeline_down: str,
    num_params: int,
    handshake_bytes: tuple[int, int],
    network: Mapping[str, float] | None,
    resumed_at: int | None,
    resume_handshake_bytes: int,
    model_stages: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """The content of ``summary.json``: the run's config, provenance and totals from its ledger rows.

    Parameters
    ----------
    status : str
        ``running`` while the run goes on, ``completed`` at its end.
    cfg : RunConfig
        The run's validated config.
    rows : sequence of mapping
        The ledger rows written so far (:attr:`Ledger.rows`); the last one
        holds the cumulative byte counts.
    data : mapping
        Provenance of the data set (``fedsqueeze.data.data_provenance``).
    pipeline_up, pipeline_down : str
        The resolved uplink and downlink compression pipelines.
    num_params : int
        Parameters of the model.
    handshake_bytes : (int, int)
        (uplink, downlink) bytes of this process's round-0 handshake.
    network : mapping or None
        ``reference_flops`` and ``train_flops_per_example`` of the network
        simulation, None when it is off.
    resumed_at : int or None
        The checkpoint round a resumed run continued after.
    resume_handshake_bytes : int
        Handshake traffic of a resumed run (not part of the ledger).
    model_stages : list of dict or None
        The model-compression stage rows (``server.model_stages``).
    """
    accs = [accuracy(r) for r in evaluated(rows)]
    last = rows[-1] if rows else {}
    up, down = int(last.get("cum_uplink_bytes", 0)), int(last.get("cum_downlink_bytes", 0))
    up_dense, down_dense = int(last.get("cum_uplink_dense_bytes", 0)), int(last.get("cum_downlink_dense_bytes", 0))
    up_pl, down_pl = int(last.get("cum_uplink_payload_bytes") or 0), int(last.get("cum_downlink_payload_bytes") or 0)
    return {
        "status": status,
        "name": cfg.name,
        "seed": cfg.seed,
        "config": cfg.to_mapping(),
        "data": dict(data),
        "pipeline_up": pipeline_up,
        "pipeline_down": pipeline_down,
        "num_params": num_params,
        "rounds_completed": int(last.get("round", 0)),
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        # training rounds only (the handshake is below); wire = Flower messages, payload = FedSqueeze's
        "cum_uplink_bytes": up,
        "cum_downlink_bytes": down,
        "cum_uplink_payload_bytes": up_pl,
        "cum_downlink_payload_bytes": down_pl,
        "cum_uplink_dense_bytes": up_dense,
        "cum_downlink_dense_bytes": down_dense,
        "uplink_vs_float32": round(up_dense / up, 3) if up else None,
        "downlink_vs_float32": round(down_dense / down, 3) if down else None,
        "total_vs_float32": round((up_dense + down_dense) / (up + down), 3) if up + down else None,
        "handshake": {"uplink_bytes": handshake_bytes[0], "downlink_bytes": handshake_bytes[1]},
        "cum_sim_s": float(last["cum_sim_s"]) if last.get("cum_sim_s") not in ("", None) else None,
        "network": None if network is None else {
            "profiles": cfg.network, "bandwidth_scale": cfg.network_scale,
            "compute_time": cfg.compute_time, "round_deadline_s": cfg.round_deadline,
            "over_select": cfg.over_select, "reference_flops": network["reference_flops"],
            "train_flops_per_example": network["train_flops_per_example"]},
        "wall_s": float(last.get("wall_s", 0.0)),
        "targets": targets_reached(rows),
        "resumed_at_round": resumed_at,
        "resume_handshake_bytes": resume_handshake_bytes,
        "versions": package_versions(),
        "git_revision": git_revision(),
        "model_stages": model_stages,
    }


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary.json`` atomically."""
    path = Path(out_dir) / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path
