"""A client's persistent state on disk, so that a resumed run continues exactly.

Flower keeps a node's ``Context.state`` in memory only: when a run is stopped
and resumed, every client starts again without its error-feedback residual,
its broadcast model or its codec state, and the resumed run's bytes and
accuracy drift from the uninterrupted run's. With ``client-state-dir`` set,
each client writes what it keeps to ``<dir>/p<partition>.npz`` after every
round it trains, and a client whose ``Context.state`` is empty reads it back.

Which file is the right one: the server checkpoints after every round, so at
most the round in flight when a run died is lost. A client that trained in
that lost round has written a file the resumed run must not see; the resumed
run samples the same clients in the same rounds (sampling is seeded by round),
so that client's first call after the resume is for that same round. Hence
the rule: use the newest saved state from a round *before* the current one.
Two files per client suffice (``p<id>.npz`` and the one before it,
``p<id>.prev.npz``).

Files are plain ``.npz`` (never pickle): one array per tensor under
``<group>/<name>`` plus a ``__meta__`` JSON document (format, partition,
round, integer fields). A file that cannot be read, or that belongs to another
partition, is a :class:`ClientStateError`.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["ClientStateError", "SavedState", "save_state", "load_state", "state_paths"]

_FORMAT = 1
_META = "__meta__"

#: ``groups``: group name -> (tensor name -> array); ``meta``: integer fields.
SavedState = tuple[dict[str, dict[str, np.ndarray]], dict[str, int]]


class ClientStateError(RuntimeError):
    """A saved client state file is unreadable or not this client's."""


def state_paths(directory: str | Path, partition_id: int) -> tuple[Path, Path]:
    """``(latest, previous)`` state files of ``partition_id`` in ``directory``."""
    d = Path(directory)
    return d / f"p{partition_id}.npz", d / f"p{partition_id}.prev.npz"


def save_state(directory: str | Path, partition_id: int, round_: int,
               groups: Mapping[str, Mapping[str, np.ndarray] | None], meta: Mapping[str, int]) -> None:
    """Write the state a client holds after training in ``round_``.

    Mutates ``directory``: the latest file becomes the previous one, then the
    new file is swapped in atomically (a crash leaves either the old pair or
    the new pair, never a partial file under a final name).
    """
    latest, prev = state_paths(directory, partition_id)
    latest.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for group, tensors in groups.items():
        for name, value in (tensors or {}).items():
            arrays[f"{group}/{name}"] = np.ascontiguousarray(value)
    header = {"format": _FORMAT, "partition": int(partition_id), "round": int(round_),
              "groups": sorted(g for g, t in groups.items() if t is not None),
              "meta": {k: int(v) for k, v in meta.items()}}
    arrays[_META] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    staging = latest.with_name(f".{latest.name}.new")
    with open(staging, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    if latest.exists():
        os.replace(latest, prev)
    os.replace(staging, latest)


def _read(path: Path, partition_id: int) -> tuple[int, SavedState]:
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data[_META]).decode())
            if header.get("format") != _FORMAT:
                raise ClientStateError(f"{path}: client state format {header.get('format')!r} != {_FORMAT}")
            if header.get("partition") != partition_id:
                raise ClientStateError(f"{path}: saved by partition {header.get('partition')!r}, "
                                       f"read by partition {partition_id}")
            groups: dict[str, dict[str, np.ndarray]] = {g: {} for g in header["groups"]}
            for key in data.files:
                if key == _META:
                    continue
                group, _, name = key.partition("/")
                if group not in groups or not name:
                    raise ClientStateError(f"{path}: array {key!r} belongs to no declared group")
                groups[group][name] = data[key].copy()
            return int(header["round"]), (groups, {k: int(v) for k, v in header["meta"].items()})
    except ClientStateError:
        raise
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise ClientStateError(f"unreadable client state {path}: {exc}") from exc


def load_state(directory: str | Path, partition_id: int, before_round: int) -> SavedState | None:
    """The newest state ``partition_id`` saved in a round before ``before_round``.

    Returns ``None`` when there is none (the client never trained in this run
    before that round).

    Raises
    ------
    ClientStateError
        If a file that would be used is unreadable or belongs to another partition.
    """
    for path in state_paths(directory, partition_id):
        if not path.exists():
            continue
        round_, saved = _read(path, partition_id)
        if round_ < before_round:
            return saved
    return None
