"""Atomic per-round checkpoints of everything the server needs to continue a run.

Layout under ``<out-dir>/checkpoint/``::

    state.json       round, ledger rows, config, downlink version, optimizer kind
    weights.npz      the global model w
    broadcast.npz    the model clients reconstruct (downlink state)
    optimizer.npz    server optimizer moments (FedAvgM / FedAdam), if any
    aggregator.npz   state of a compressed-domain aggregator, if the uplink stage has one
                     (FetchSGD: momentum and error count sketches, see compression.sketch)
    history.bin      delta-downlink payloads, concatenated (lengths in state.json)
    node-errors.npz  per-partition catch-up errors (``downlink-catchup``), ``<partition>/<tensor>``

``state.json`` also holds the downlink version each partition holds and the
tag of the run's saved client states.

A new checkpoint is written to a fresh directory and swapped in with
``os.replace``, so a crash at any instant leaves either the previous or the
new checkpoint, never a mix. RNG state needs no saving: every random choice
(sampling, fault plan, client shuffles, stochastic codecs) is drawn from a
generator seeded by ``(seed, round, ...)``.

Client-side state (error-feedback residuals, the clients' broadcast models,
codec state such as PowerSGD's warm-start factors) lives in Flower's
``Context.state``, which a restarted simulation does not have. With
``client-state-dir`` set, clients also save it to disk
(:mod:`client.state_store`, under ``<client-state-dir>/<client_state_tag>``)
and a resumed run continues exactly: same payload bytes, same metrics.
Without it, every client starts again with a zero residual and no model: the
server then forgets the versions they held (each gets the delta chain from
version 0, or the float32 model if that is cheaper).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsqueeze.config import RunConfig

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "read_checkpoint", "CheckpointError"]

_DIR, _FORMAT = "checkpoint", 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or from a different configuration."""


@dataclass
class Checkpoint:
    round: int
    ledger_rows: int
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    broadcast: dict[str, torch.Tensor]
    optimizer_state: dict[str, dict[str, torch.Tensor]]
    history: list[bytes]
    #: What each history payload costs when the server picks a message (``downlink-cost``);
    #: empty when it is the payload's length.
    history_costs: list[int] = field(default_factory=list)
    #: Downlink version each partition holds (absent = never contacted, -1 = unknown).
    node_versions: dict[int, int] = field(default_factory=dict)
    #: Catch-up error each partition carries (``downlink-catchup``).
    node_errors: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    #: Names this run's folder of saved client states (``client-state-dir``); fixed at round 0.
    client_state_tag: str = ""
    aggregator_state: dict[str, torch.Tensor] | None = None


def _save_npz(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **{k: v.detach().cpu().numpy() for k, v in tensors.items()})


def _load_npz(path: Path) -> dict[str, torch.Tensor]:
    with np.load(path, allow_pickle=False) as data:
        return {k: torch.from_numpy(data[k].copy()) for k in data.files}


def _node_errors(path: Path) -> dict[int, dict[str, torch.Tensor]]:
    """``node-errors.npz`` by partition; a checkpoint written before it existed has none."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    if not path.exists():
        return out
    for key, value in _load_npz(path).items():
        pid, _, name = key.partition("/")
        out.setdefault(int(pid), {})[name] = value
    return out


def save_checkpoint(out_dir: Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` atomically to ``out_dir/checkpoint``."""
    final = Path(out_dir) / _DIR
    staging = Path(out_dir) / f".{_DIR}.new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _save_npz(staging / "weights.npz", ckpt.weights)
    _save_npz(staging / "broadcast.npz", ckpt.broadcast)
    for name, tensors in ckpt.optimizer_state.items():
        _save_npz(staging / f"optimizer-{name}.npz", tensors)
    if ckpt.aggregator_state:
        _save_npz(staging / "aggregator.npz", ckpt.aggregator_state)
    (staging / "history.bin").write_bytes(b"".join(ckpt.history))
    _save_npz(staging / "node-errors.npz",
              {f"{pid}/{k}": v for pid, err in ckpt.node_errors.items() for k, v in err.items()})
    state = {
        "format": _FORMAT,
        "round": ckpt.round,
        "ledger_rows": ckpt.ledger_rows,
        "config": ckpt.config,
        "history_lengths": [len(p) for p in ckpt.history],
        "history_costs": list(ckpt.history_costs),
        "optimizer_moments": sorted(ckpt.optimizer_state),
        "node_versions": {str(pid): v for pid, v in sorted(ckpt.node_versions.items())},
        "client_state_tag": ckpt.client_state_tag,
    }
    (staging / "state.json").write_text(json.dumps(state, indent=1))
    for f in staging.iterdir():  # durable before the swap
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = Path(out_dir) / f".{_DIR}.old"
    if final.exists():
        # Only now: without ``final``, ``old`` is the recovered checkpoint and must outlive the swap.
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def read_checkpoint(out_dir: Path) -> Checkpoint | None:
    """The checkpoint in ``out_dir`` as it was written, whatever its config (None if there is none).

    For readers of a finished run (its broadcast history, its weights); a run
    that continues uses :func:`load_checkpoint`, which also checks the config.

    Raises
    ------
    CheckpointError
        If it is unreadable.
    """
    root = Path(out_dir) / _DIR
    if not root.exists():
        old = Path(out_dir) / f".{_DIR}.old"  # crashed between the two renames
        if not old.exists():
            return None
        root = old
    try:
        state = json.loads((root / "state.json").read_text())
        if state.get("format") != _FORMAT:
            raise CheckpointError(f"checkpoint format {state.get('format')} != {_FORMAT}")
        blob = (root / "history.bin").read_bytes()
        history, pos = [], 0
        for n in state["history_lengths"]:
            history.append(blob[pos : pos + n])
            pos += n
        if pos != len(blob):
            raise CheckpointError("history.bin length does not match state.json")
        return Checkpoint(
            round=int(state["round"]),
            ledger_rows=int(state["ledger_rows"]),
            config=state["config"],
            weights=_load_npz(root / "weights.npz"),
            broadcast=_load_npz(root / "broadcast.npz"),
            optimizer_state={m: _load_npz(root / f"optimizer-{m}.npz") for m in state["optimizer_moments"]},
            history=history,
            history_costs=[int(c) for c in state.get("history_costs", [])],
            node_versions={int(pid): int(v) for pid, v in state.get("node_versions", {}).items()},
            node_errors=_node_errors(root / "node-errors.npz"),
            client_state_tag=str(state.get("client_state_tag", "")),
            aggregator_state=_load_npz(root / "aggregator.npz") if (root / "aggregator.npz").exists() else None,
        )
    except (OSError, KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"unreadable checkpoint in {root}: {exc}") from exc


def load_checkpoint(out_dir: Path, config: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint in ``out_dir`` to continue a run with ``config`` (None if there is none).

    Raises
    ------
    CheckpointError
        If it is unreadable or was made with a different configuration
        (``resume`` and ``out-dir`` aside).
    """
    ckpt = read_checkpoint(out_dir)
    if ckpt is None:
        return None
    # preset: how the keys were given, not what they are (the expanded keys are compared)
    ignored = {"resume", "out-dir", "num-server-rounds", "preset", "client-state-dir"}
    # a key newer than the checkpoint was at its default when it was written
    defaults = RunConfig().to_mapping()
    mine = {k: v for k, v in config.items() if k not in ignored}
    theirs = {k: ckpt.config.get(k, defaults.get(k)) for k in mine}
    theirs.update({k: v for k, v in ckpt.config.items() if k not in ignored})
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise CheckpointError(f"checkpoint in {out_dir} was made with a different config (keys {diff})")
    return ckpt
